package wireguard

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"
)

// TunnelPrefix starts the name of every encrypted overlay's TUN device
// (the firewall matches them all as "twg+").
const TunnelPrefix = "twg"

// TunnelName is the TUN device of the encrypted overlay: "twg" and the
// overlay's address in hex, e.g. twg0a610000 for 10.97.0.0/16 (overlays
// never overlap, so the address alone tells them apart).
func TunnelName(overlay netip.Prefix) string {
	a := overlay.Addr().As4()
	return fmt.Sprintf("%s%02x%02x%02x%02x", TunnelPrefix, a[0], a[1], a[2], a[3])
}

// Open creates the overlay's TUN device (TunnelName) with mtu, with the
// TSO/GRO offloads wireguard-go's tun package negotiates itself, listens on
// cfg.Backend.ListenPort on every address, and routes the overlay into the
// device with this host's first address of cfg.Local on it, as flanneld
// sets up flannel-wg.
func Open(cfg Config, mtu int) (*Device, error) {
	name := TunnelName(cfg.Overlay)
	t, err := tun.CreateTUN(name, mtu)
	if err != nil {
		return nil, fmt.Errorf("creating tun %s for encrypted overlay %s: %w", name, cfg.Overlay, err)
	}
	d, err := New(cfg, t, conn.NewStdNetBind())
	if err != nil {
		return nil, err
	}
	if err := d.route(); err != nil {
		d.Close()
		return nil, err
	}
	return d, nil
}

func (d *Device) route() error {
	link, err := netlink.LinkByName(d.name)
	if err != nil {
		return fmt.Errorf("finding %s: %w", d.name, err)
	}
	addr := netip.PrefixFrom(d.cfg.Local.Addr(), 32)
	if err := netlink.AddrReplace(link, &netlink.Addr{IPNet: ipNet(addr)}); err != nil {
		return fmt.Errorf("adding address %s to %s: %w", addr, d.name, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("setting %s up: %w", d.name, err)
	}
	r := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: ipNet(d.cfg.Overlay), Src: d.cfg.Local.Addr().AsSlice(), Scope: netlink.SCOPE_LINK}
	if err := netlink.RouteReplace(r); err != nil {
		return fmt.Errorf("adding route %s dev %s: %w", d.cfg.Overlay, d.name, err)
	}
	return nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
