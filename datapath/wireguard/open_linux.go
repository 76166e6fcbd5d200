package wireguard

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/twill-net/twill/internal/tundev"
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

// Open creates the overlay's TUN device (TunnelName) with mtu and the
// kernel's TSO and checksum offloads (tunnel; wireguard-go's own TUN where
// the kernel refuses them), listens on
// cfg.Backend.ListenPort on every address, and routes the overlay into the
// device with this host's first address of cfg.Local on it, as flanneld
// sets up flannel-wg.
func Open(cfg Config, mtu int) (*Device, error) {
	name := TunnelName(cfg.Overlay)
	var (
		t   tun.Device
		tt  *tunnel
		err = tundev.ErrOffloadRefused
	)
	if !cfg.CopyingIO {
		tt, err = openTunnel(name, mtu)
	}
	switch {
	case err == nil:
		t = tt
	case errors.Is(err, tundev.ErrOffloadRefused):
		if !cfg.CopyingIO && cfg.Logger != nil {
			cfg.Logger.Warn("the kernel refused TUN offloads: the encrypted overlay runs on wireguard-go's own TUN, which copies every packet once more",
				"overlay", cfg.Overlay.String(), "err", err)
		}
		t, err = tun.CreateTUN(name, mtu) // wireguard-go's own: it copies, but copes
	}
	if err != nil {
		return nil, fmt.Errorf("creating tun %s for encrypted overlay %s: %w", name, cfg.Overlay, err)
	}
	if err := routeTUN(name, cfg.Overlay, cfg.Local); err != nil {
		t.Close()
		return nil, err
	}
	// wireguard-go takes the device down and up again as the TUN's link
	// state events say. The first check, at creation, saw the link still
	// down: that EventDown, handled after peers were added, would drop the
	// first handshakes (and WireGuard retries only after 5 s). So the
	// events are read here until the link is reported up.
	if err := waitUp(t, 3*time.Second); err != nil {
		t.Close()
		return nil, fmt.Errorf("tun %s: %w", name, err)
	}
	if cfg.CopyingIO {
		return New(cfg, t, conn.NewStdNetBind())
	}
	b := newUDPBind()
	if tt != nil { // bounded where both ends are twill's
		tt.out = newBacklog(backlogLimit, time.Millisecond)
		tt.in = newBacklog(backlogLimit, time.Millisecond)
		b.out, b.in = tt.out, tt.in
	}
	return New(cfg, t, b)
}

func waitUp(t tun.Device, d time.Duration) error {
	deadline := time.After(d)
	for {
		select {
		case ev, ok := <-t.Events():
			if !ok {
				return errors.New("closed")
			}
			if ev&tun.EventUp != 0 {
				return nil
			}
		case <-deadline:
			return fmt.Errorf("link not reported up within %v", d)
		}
	}
}

// routeTUN gives the TUN this host's first address of local as a /32, sets
// it up and routes the overlay through it.
func routeTUN(name string, overlay, local netip.Prefix) error {
	link, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("finding %s: %w", name, err)
	}
	addr := netip.PrefixFrom(local.Addr(), 32)
	if err := netlink.AddrReplace(link, &netlink.Addr{IPNet: ipNet(addr)}); err != nil {
		return fmt.Errorf("adding address %s to %s: %w", addr, name, err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return fmt.Errorf("setting %s up: %w", name, err)
	}
	r := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: ipNet(overlay), Src: local.Addr().AsSlice(), Scope: netlink.SCOPE_LINK}
	if err := netlink.RouteReplace(r); err != nil {
		return fmt.Errorf("adding route %s dev %s: %w", overlay, name, err)
	}
	return nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
