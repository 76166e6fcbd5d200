//go:build linux

package links

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ServiceLabel marks the addresses twill holds on the loopback interface
// (`ip addr show label lo:twill`).
const ServiceLabel = "lo:twill"

// HoldAddress puts addr on the loopback interface as a /32, labelled
// ServiceLabel, and brings lo up. An address there is local on every host
// at once, reached from the host itself and from containers through their
// bridge gateway, whatever datapath carries the overlay: what a service
// address that every host answers (the overlay's resolver) needs. Holding
// it again is success.
func (l *Links) HoldAddress(ctx context.Context, addr netip.Addr) error {
	if !addr.Is4() {
		return fmt.Errorf("holding service address %v: not IPv4: %w", addr, ErrInvalidArgument)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	lo, err := l.h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("holding service address %s: %w", addr, err)
	}
	if err := l.h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("bringing lo up for service address %s: %w", addr, err)
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(32, 32)}, Label: ServiceLabel}
	if err := l.h.AddrAdd(lo, a); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("adding service address %s to lo: %w", addr, err)
	}
	return nil
}

// ReleaseAddress removes addr from the loopback interface; an address that
// is not there is success.
func (l *Links) ReleaseAddress(ctx context.Context, addr netip.Addr) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	lo, err := l.h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("releasing service address %s: %w", addr, err)
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(32, 32)}}
	if err := l.h.AddrDel(lo, a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("removing service address %s from lo: %w", addr, err)
	}
	return nil
}
