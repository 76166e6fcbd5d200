//go:build linux

package links

import (
	"context"
	"net/netip"
	"slices"
	"testing"

	"github.com/vishvananda/netlink"
)

func TestHoldAddress(t *testing.T) {
	l, h := newTestLinks(t)
	ctx := context.Background()
	a := netip.MustParseAddr("10.96.0.53")
	for range 2 { // holding twice is success
		if err := l.HoldAddress(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	if got := v4Addrs(t, h, "lo"); !slices.Contains(got, "10.96.0.53/32") {
		t.Fatalf("lo holds %v", got)
	}
	lo, _ := h.LinkByName("lo")
	if lo.Attrs().Flags&(1<<0) == 0 { // net.FlagUp
		t.Fatal("lo is not up")
	}
	addrs, _ := h.AddrList(lo, netlink.FAMILY_V4)
	labelled := false
	for _, x := range addrs {
		labelled = labelled || (x.IP.String() == "10.96.0.53" && x.Label == ServiceLabel)
	}
	if !labelled {
		t.Fatalf("no %s label: %+v", ServiceLabel, addrs)
	}
	for range 2 { // releasing what is gone is success
		if err := l.ReleaseAddress(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	if got := v4Addrs(t, h, "lo"); slices.Contains(got, "10.96.0.53/32") {
		t.Fatalf("lo still holds %v", got)
	}
	if err := l.HoldAddress(ctx, netip.MustParseAddr("fd00::53")); err == nil {
		t.Fatal("IPv6 accepted")
	}
}
