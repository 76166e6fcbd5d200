// Package links owns this host's twill bridges and veth pairs: one Linux
// bridge per Docker network (holding the network's gateway address) and one
// veth pair per endpoint, whose host end sits on the bridge. It implements
// the driver's Links interface with netlink, in the current network
// namespace or in one given to the constructor.
package links

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// MaxNameLen is the longest interface name Linux accepts (IFNAMSIZ - 1).
const MaxNameLen = 15

var (
	// ErrInvalidName is returned for an interface name Linux would refuse:
	// empty, longer than MaxNameLen, or holding '/', ':' or whitespace.
	ErrInvalidName = errors.New("invalid interface name")
	// ErrInvalidArgument is returned for an MTU, address or MAC that cannot
	// be applied (checked before anything is changed in the kernel).
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrWrongKind is returned when a link of the requested name exists but
	// is not what the call manages (e.g. EnsureBridge on a veth, or
	// DeleteVeth on a bridge); nothing is changed then.
	ErrWrongKind = errors.New("link exists with another kind")
	// ErrNoBridge is returned by AddVeth when the bridge does not exist.
	ErrNoBridge = errors.New("bridge not found")
)

// ValidName checks that name is usable as a Linux interface name.
func ValidName(name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty", ErrInvalidName)
	case len(name) > MaxNameLen:
		return fmt.Errorf("%w: %q is %d bytes, at most %d allowed", ErrInvalidName, name, len(name), MaxNameLen)
	case name == "." || name == "..":
		return fmt.Errorf("%w: %q", ErrInvalidName, name)
	case strings.ContainsAny(name, "/: \t\n\r\x00"):
		return fmt.Errorf("%w: %q holds '/', ':' or whitespace", ErrInvalidName, name)
	}
	return nil
}

// validMTU accepts 0 (keep the kernel's default) or a value Linux accepts
// for an Ethernet-like device carrying IPv4.
func validMTU(mtu int) error {
	if mtu != 0 && (mtu < 68 || mtu > 65535) {
		return fmt.Errorf("%w: mtu %d outside 68..65535", ErrInvalidArgument, mtu)
	}
	return nil
}

func validGateway(gw netip.Prefix) error {
	if !gw.IsValid() || !gw.Addr().Is4() {
		return fmt.Errorf("%w: gateway %v is not an IPv4 address with prefix length", ErrInvalidArgument, gw)
	}
	return nil
}

func validMAC(mac net.HardwareAddr) error {
	if mac == nil {
		return nil
	}
	if len(mac) != 6 {
		return fmt.Errorf("%w: mac %v is not 6 bytes", ErrInvalidArgument, mac)
	}
	if mac[0]&1 == 1 {
		return fmt.Errorf("%w: mac %v is a multicast address", ErrInvalidArgument, mac)
	}
	return nil
}
