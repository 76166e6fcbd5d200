package main

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// underlay is the interface peers' UDP arrives on.
type underlay struct {
	Name string
	Addr netip.Addr
	MTU  int
}

// findUnderlay resolves --iface (a name, an address, or empty for the
// interface of the default route) to its name, first IPv4 address and MTU.
func findUnderlay(iface string) (underlay, error) {
	var link netlink.Link
	var err error
	switch a, perr := netip.ParseAddr(iface); {
	case iface == "":
		link, err = defaultRouteLink()
	case perr == nil:
		link, err = linkWithAddr(a)
	default:
		link, err = netlink.LinkByName(iface)
		if err != nil {
			err = fmt.Errorf("underlay interface %q (TWILL_IFACE): %w; `ip -br link` lists this host's interfaces", iface, err)
		}
	}
	if err != nil {
		return underlay{}, err
	}
	u := underlay{Name: link.Attrs().Name, MTU: link.Attrs().MTU}
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return underlay{}, fmt.Errorf("listing addresses of %s: %w", u.Name, err)
	}
	if a, ok := netip.AddrFromSlice(firstIP(addrs)); ok {
		u.Addr = a.Unmap()
	}
	if a, perr := netip.ParseAddr(iface); perr == nil {
		u.Addr = a
	}
	return u, nil
}

func firstIP(addrs []netlink.Addr) []byte {
	for _, a := range addrs {
		if a.IP.To4() != nil && a.Scope == int(netlink.SCOPE_UNIVERSE) {
			return a.IP.To4()
		}
	}
	return nil
}

func defaultRouteLink() (netlink.Link, error) {
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("listing routes: %w", err)
	}
	for _, r := range routes {
		if (r.Dst == nil || r.Dst.IP.IsUnspecified() && isZeroMask(r.Dst.Mask)) && r.LinkIndex > 0 {
			l, err := netlink.LinkByIndex(r.LinkIndex)
			if err != nil {
				return nil, fmt.Errorf("default route's interface %d: %w", r.LinkIndex, err)
			}
			return l, nil
		}
	}
	return nil, fmt.Errorf("no default route to pick the underlay interface from: set TWILL_IFACE (or TWILL_PUBLIC_IP) to the interface other hosts reach this one on")
}

func isZeroMask(m []byte) bool {
	for _, b := range m {
		if b != 0 {
			return false
		}
	}
	return true
}

func linkWithAddr(a netip.Addr) (netlink.Link, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("listing links: %w", err)
	}
	for _, l := range links {
		addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			continue
		}
		for _, x := range addrs {
			if b, ok := netip.AddrFromSlice(x.IP.To4()); ok && b == a {
				return l, nil
			}
		}
	}
	return nil, fmt.Errorf("no interface holds %s (TWILL_IFACE): give an address of this host, or an interface name", a)
}
