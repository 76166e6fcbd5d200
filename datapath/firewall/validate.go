package firewall

import (
	"fmt"
	"net/netip"
	"strings"
)

// validIface accepts interface names iptables takes literally: 1..15
// bytes of letters, digits, '-', '_' and '.'. A '+' would be a wildcard.
func validIface(name string) error {
	if name == "" || len(name) > 15 {
		return fmt.Errorf("%w: interface name %q must be 1..15 bytes", ErrInvalidArgument, name)
	}
	for _, r := range name {
		ok := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.'
		if !ok {
			return fmt.Errorf("%w: interface name %q holds %q", ErrInvalidArgument, name, r)
		}
	}
	return nil
}

func (f *Firewall) validNetwork(n Network) error {
	if err := validIface(n.Bridge); err != nil {
		return err
	}
	if n.Bridge == f.tunnel {
		return fmt.Errorf("%w: bridge named like the tunnel %s", ErrInvalidArgument, f.tunnel)
	}
	for _, p := range []netip.Prefix{n.Subnet, n.Overlay} {
		if !p.IsValid() || !p.Addr().Is4() || p.Masked() != p {
			return fmt.Errorf("%w: %v is not an IPv4 network prefix", ErrInvalidArgument, p)
		}
	}
	if n.Overlay.Bits() > n.Subnet.Bits() || !n.Overlay.Contains(n.Subnet.Addr()) {
		return fmt.Errorf("%w: subnet %v is not inside overlay %v", ErrInvalidArgument, n.Subnet, n.Overlay)
	}
	return nil
}

// portMap validates and normalises the arguments of AddPortMap and
// DeletePortMap: lower-case protocol, 0.0.0.0 and :: mean every address.
func (f *Firewall) portMap(bridge, proto string, hostIP netip.Addr, hostPort uint16, container netip.AddrPort) (PortMap, error) {
	if err := validIface(bridge); err != nil {
		return PortMap{}, err
	}
	proto = strings.ToLower(proto)
	if proto != "tcp" && proto != "udp" {
		return PortMap{}, fmt.Errorf("%w: protocol %q (want tcp or udp)", ErrInvalidArgument, proto)
	}
	if hostPort == 0 {
		return PortMap{}, fmt.Errorf("%w: host port 0", ErrInvalidArgument)
	}
	hostIP = hostIP.Unmap()
	if !hostIPSet(hostIP) {
		hostIP = netip.Addr{}
	} else if !hostIP.Is4() {
		return PortMap{}, fmt.Errorf("%w: host address %v is not IPv4", ErrInvalidArgument, hostIP)
	}
	c := netip.AddrPortFrom(container.Addr().Unmap(), container.Port())
	if !c.Addr().Is4() || c.Port() == 0 {
		return PortMap{}, fmt.Errorf("%w: container address %v is not IPv4 address:port", ErrInvalidArgument, container)
	}
	return PortMap{Bridge: bridge, Proto: proto, HostIP: hostIP, HostPort: hostPort, Container: c}, nil
}
