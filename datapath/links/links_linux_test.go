//go:build linux

package links

import (
	"github.com/twill-net/twill/internal/testbed"

	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

// newTestLinks returns Links bound to a fresh namespace and a raw netlink
// handle on the same namespace for checking what the kernel holds.
func newTestLinks(t *testing.T) (*Links, *netlink.Handle) {
	t.Helper()
	testbed.RequireNetAdmin(t)
	_, ns := testbed.Netns(t, "twf-l")
	l, err := NewAt(nil, ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return l, h
}

func v4Addrs(t *testing.T, h *netlink.Handle, name string) []string {
	t.Helper()
	link, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := h.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	var s []string
	for _, a := range addrs {
		s = append(s, a.IPNet.String())
	}
	return s
}

func TestEnsureBridgeConverges(t *testing.T) {
	l, h := newTestLinks(t)
	ctx := context.Background()
	const br = "twfbr0"

	if err := l.EnsureBridge(ctx, br, netip.MustParsePrefix("10.77.1.1/24"), 1400); err != nil {
		t.Fatal(err)
	}
	link, err := h.LinkByName(br)
	if err != nil {
		t.Fatal(err)
	}
	if link.Type() != "bridge" || link.Attrs().MTU != 1400 || link.Attrs().Flags&net.FlagUp == 0 {
		t.Fatalf("bridge after first ensure: type %s mtu %d flags %v", link.Type(), link.Attrs().MTU, link.Attrs().Flags)
	}
	if got := v4Addrs(t, h, br); len(got) != 1 || got[0] != "10.77.1.1/24" {
		t.Fatalf("addresses %v, want [10.77.1.1/24]", got)
	}
	if v6, _ := h.AddrList(link, netlink.FAMILY_V6); len(v6) != 0 {
		t.Errorf("bridge has IPv6 addresses %v, want none", v6)
	}

	// A stale extra address, as a crashed earlier run might leave it.
	stale, _ := netlink.ParseAddr("10.78.9.9/16")
	if err := h.AddrAdd(link, stale); err != nil {
		t.Fatal(err)
	}
	for range 2 { // second run must be a no-op
		if err := l.EnsureBridge(ctx, br, netip.MustParsePrefix("10.77.2.1/24"), 1450); err != nil {
			t.Fatal(err)
		}
		if got := v4Addrs(t, h, br); len(got) != 1 || got[0] != "10.77.2.1/24" {
			t.Fatalf("addresses %v, want only [10.77.2.1/24]", got)
		}
		link, _ = h.LinkByName(br)
		if link.Attrs().MTU != 1450 || link.Attrs().Flags&net.FlagUp == 0 {
			t.Fatalf("bridge mtu %d flags %v, want 1450 and up", link.Attrs().MTU, link.Attrs().Flags)
		}
	}

	// Same address with another prefix length is replaced too.
	if err := l.EnsureBridge(ctx, br, netip.MustParsePrefix("10.77.2.1/16"), 0); err != nil {
		t.Fatal(err)
	}
	if got := v4Addrs(t, h, br); len(got) != 1 || got[0] != "10.77.2.1/16" {
		t.Fatalf("addresses %v, want only [10.77.2.1/16]", got)
	}

	if err := l.DeleteBridge(ctx, br); err != nil {
		t.Fatal(err)
	}
	if _, err := h.LinkByName(br); err == nil {
		t.Fatal("bridge still there after DeleteBridge")
	}
	if err := l.DeleteBridge(ctx, br); err != nil {
		t.Fatalf("deleting an absent bridge: %v", err)
	}
}

func TestWrongKindIsLeftAlone(t *testing.T) {
	l, h := newTestLinks(t)
	ctx := context.Background()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = "twfx0"
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "twfx1"}); err != nil {
		t.Fatal(err)
	}
	if err := l.EnsureBridge(ctx, "twfx0", netip.MustParsePrefix("10.77.1.1/24"), 0); !errors.Is(err, ErrWrongKind) {
		t.Errorf("EnsureBridge on a veth: %v, want ErrWrongKind", err)
	}
	if err := l.DeleteBridge(ctx, "twfx0"); !errors.Is(err, ErrWrongKind) {
		t.Errorf("DeleteBridge on a veth: %v, want ErrWrongKind", err)
	}
	if _, err := h.LinkByName("twfx0"); err != nil {
		t.Errorf("veth gone: %v", err)
	}
	if got := v4Addrs(t, h, "twfx0"); len(got) != 0 {
		t.Errorf("veth got addresses %v", got)
	}
	if err := l.EnsureBridge(ctx, "twfbr0", netip.MustParsePrefix("10.77.1.1/24"), 0); err != nil {
		t.Fatal(err)
	}
	if err := l.DeleteVeth(ctx, "twfbr0"); !errors.Is(err, ErrWrongKind) {
		t.Errorf("DeleteVeth on a bridge: %v, want ErrWrongKind", err)
	}
	if err := l.AddVeth(ctx, "twfbr0", "twfc0", "twfbr0", 0, nil); !errors.Is(err, ErrWrongKind) {
		t.Errorf("AddVeth named like the bridge: %v, want ErrWrongKind", err)
	}
	if err := l.AddVeth(ctx, "twfv0", "twfc0", "twfx0", 0, nil); !errors.Is(err, ErrWrongKind) {
		t.Errorf("AddVeth onto a veth as bridge: %v, want ErrWrongKind", err)
	}
	if _, err := h.LinkByName("twfbr0"); err != nil {
		t.Errorf("bridge gone: %v", err)
	}
}

func TestAddVeth(t *testing.T) {
	l, h := newTestLinks(t)
	ctx := context.Background()
	const br, host, peer = "twfbr0", "twfv0123456789a", "twfc0123456789a" // 15 bytes each
	mac := net.HardwareAddr{0x02, 0x42, 0x0a, 0x4d, 0x01, 0x02}

	if err := l.AddVeth(ctx, host, peer, br, 1400, mac); !errors.Is(err, ErrNoBridge) {
		t.Fatalf("AddVeth without bridge: %v, want ErrNoBridge", err)
	}
	if err := l.EnsureBridge(ctx, br, netip.MustParsePrefix("10.77.1.1/24"), 1400); err != nil {
		t.Fatal(err)
	}
	check := func(mtu int, mac net.HardwareAddr) {
		t.Helper()
		bl, err := h.LinkByName(br)
		if err != nil {
			t.Fatal(err)
		}
		hl, err := h.LinkByName(host)
		if err != nil {
			t.Fatalf("host end: %v", err)
		}
		pl, err := h.LinkByName(peer)
		if err != nil {
			t.Fatalf("peer end: %v", err)
		}
		if hl.Type() != "veth" || pl.Type() != "veth" {
			t.Errorf("types %s/%s, want veth", hl.Type(), pl.Type())
		}
		if hl.Attrs().MasterIndex != bl.Attrs().Index {
			t.Errorf("host end master %d, want bridge %d", hl.Attrs().MasterIndex, bl.Attrs().Index)
		}
		if hl.Attrs().MTU != mtu || pl.Attrs().MTU != mtu {
			t.Errorf("mtu host %d peer %d, want %d on both", hl.Attrs().MTU, pl.Attrs().MTU, mtu)
		}
		if !bytes.Equal(pl.Attrs().HardwareAddr, mac) {
			t.Errorf("peer mac %v, want %v", pl.Attrs().HardwareAddr, mac)
		}
		if pi, err := h.LinkGetProtinfo(hl); err != nil || !pi.Hairpin {
			t.Errorf("host end hairpin mode off (%v), want on for published-port hairpin", err)
		}
		if hl.Attrs().Flags&net.FlagUp == 0 {
			t.Error("host end is down")
		}
		if pl.Attrs().ParentIndex != hl.Attrs().Index {
			t.Errorf("peer's peer is index %d, want host end %d", pl.Attrs().ParentIndex, hl.Attrs().Index)
		}
	}
	if err := l.AddVeth(ctx, host, peer, br, 1400, mac); err != nil {
		t.Fatal(err)
	}
	check(1400, mac)

	// A leftover pair of the same names is replaced.
	mac2 := net.HardwareAddr{0x02, 0x42, 0x0a, 0x4d, 0x01, 0x03}
	if err := l.AddVeth(ctx, host, peer, br, 1300, mac2); err != nil {
		t.Fatalf("replacing leftover veth: %v", err)
	}
	check(1300, mac2)

	names, err := l.LinkNames(ctx, "twf")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(names, ",") != br+","+peer+","+host {
		t.Errorf("LinkNames(twf) = %v", names)
	}
	if names, _ := l.LinkNames(ctx, "twfv"); len(names) != 1 || names[0] != host {
		t.Errorf("LinkNames(twfv) = %v", names)
	}

	if err := l.DeleteVeth(ctx, host); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{host, peer} {
		if _, err := h.LinkByName(n); err == nil {
			t.Errorf("%s still there after DeleteVeth", n)
		}
	}
	if err := l.DeleteVeth(ctx, host); err != nil {
		t.Fatalf("deleting an absent veth: %v", err)
	}
}

func TestLongNamesRefusedBeforeKernel(t *testing.T) {
	// Needs no privilege: validation happens before any netlink request.
	l, err := New(nil)
	if err != nil {
		t.Skipf("no netlink socket: %v", err)
	}
	defer l.Close()
	ctx := context.Background()
	long := "twv0123456789abcdef"
	for _, err := range []error{
		l.EnsureBridge(ctx, long, netip.MustParsePrefix("10.77.1.1/24"), 0),
		l.AddVeth(ctx, long, "twc0", "tw-0", 0, nil),
		l.AddVeth(ctx, "twv0", long, "tw-0", 0, nil),
		l.DeleteVeth(ctx, long),
		l.DeleteBridge(ctx, long),
	} {
		if !errors.Is(err, ErrInvalidName) || !strings.Contains(err.Error(), long) {
			t.Errorf("got %v, want ErrInvalidName naming %s", err, long)
		}
	}
	if err := l.AddVeth(ctx, "twv0", "twv0", "tw-0", 0, nil); !errors.Is(err, ErrInvalidName) {
		t.Errorf("same names: %v", err)
	}
}
