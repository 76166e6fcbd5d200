package firewall

import (
	"context"
	"errors"
	"net/netip"
	"testing"
)

func TestConntrackMatchers(t *testing.T) {
	ap := netip.MustParseAddrPort
	client, host := ap("198.51.100.2:40053"), ap("198.51.100.1:5353")
	dnat := Flow{Proto: "udp", OrigSrc: client, OrigDst: host, ReplySrc: ap("10.202.1.2:53"), ReplyDst: client}
	plain := Flow{Proto: "udp", OrigSrc: client, OrigDst: host, ReplySrc: host, ReplyDst: client}
	otherPort := Flow{Proto: "udp", OrigSrc: client, OrigDst: ap("198.51.100.1:53"), ReplySrc: ap("198.51.100.1:53"), ReplyDst: client}
	tcp := plain
	tcp.Proto = "tcp"
	// A container's masqueraded query out: translated source, not ours.
	masq := Flow{Proto: "udp", OrigSrc: ap("10.202.1.2:33000"), OrigDst: ap("192.0.2.53:5353"), ReplySrc: ap("192.0.2.53:5353"), ReplyDst: ap("198.51.100.1:33000")}

	pm := PortMap{Bridge: "tw-b", Proto: "udp", HostIP: netip.MustParseAddr("198.51.100.1"), HostPort: 5353, Container: ap("10.202.1.2:53")}
	anyIP := pm
	anyIP.HostIP = netip.Addr{}
	otherIP := pm
	otherIP.HostIP = netip.MustParseAddr("198.51.100.9")
	otherCtr := pm
	otherCtr.Container = ap("10.202.1.3:53")

	for _, tc := range []struct {
		name  string
		match func(Flow) bool
		flow  Flow
		want  bool
	}{
		{"publish: untranslated flow to the port", staleBeforePublish(pm), plain, true},
		{"publish: any address", staleBeforePublish(anyIP), plain, true},
		{"publish: another host address", staleBeforePublish(otherIP), plain, false},
		{"publish: already translated", staleBeforePublish(pm), dnat, false},
		{"publish: another port", staleBeforePublish(pm), otherPort, false},
		{"publish: tcp", staleBeforePublish(pm), tcp, false},
		{"publish: container's own flow out", staleBeforePublish(anyIP), masq, false},
		{"unpublish: translated to the container", staleAfterUnpublish(pm), dnat, true},
		{"unpublish: any address", staleAfterUnpublish(anyIP), dnat, true},
		{"unpublish: another container", staleAfterUnpublish(otherCtr), dnat, false},
		{"unpublish: untranslated", staleAfterUnpublish(pm), plain, false},
	} {
		if got := tc.match(tc.flow); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// fakeConntrack records which flows of a fixed table a call would delete.
type fakeConntrack struct {
	table   []Flow
	deleted []Flow
	err     error
}

func (c *fakeConntrack) DeleteFlows(_ context.Context, match func(Flow) bool) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n := 0
	for _, f := range c.table {
		if match(f) {
			c.deleted = append(c.deleted, f)
			n++
		}
	}
	return n, nil
}

func TestUDPPortMapsFlushConntrack(t *testing.T) {
	ap := netip.MustParseAddrPort
	client, host := ap("198.51.100.2:40053"), ap("198.51.100.1:5353")
	plain := Flow{Proto: "udp", OrigSrc: client, OrigDst: host, ReplySrc: host, ReplyDst: client}
	dnat := Flow{Proto: "udp", OrigSrc: client, OrigDst: host, ReplySrc: ap("10.96.3.2:53"), ReplyDst: client}
	ct := &fakeConntrack{table: []Flow{plain, dnat}}
	f, err := New(context.Background(), Options{Runner: &fakeRunner{}, Backend: BackendNFT, Conntrack: ct})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	c := ap("10.96.3.2:53")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(f.AddPortMap(ctx, "tw-blue", "tcp", netip.Addr{}, 5353, ap("10.96.3.2:80")))
	if len(ct.deleted) != 0 {
		t.Fatalf("tcp map flushed %v", ct.deleted)
	}
	must(f.AddPortMap(ctx, "tw-blue", "udp", netip.Addr{}, 5353, c))
	if len(ct.deleted) != 1 || ct.deleted[0] != plain {
		t.Fatalf("after publish deleted %v, want the untranslated flow", ct.deleted)
	}
	ct.deleted = nil
	must(f.DeletePortMap(ctx, "tw-blue", "udp", netip.Addr{}, 5353, c))
	if len(ct.deleted) != 1 || ct.deleted[0] != dnat {
		t.Fatalf("after unpublish deleted %v, want the translated flow", ct.deleted)
	}
	// Removing the network removes its UDP maps' flows too; a conntrack
	// failure does not fail the change (the rules are right already).
	must(f.AddPortMap(ctx, "tw-blue", "udp", netip.Addr{}, 5353, c))
	ct.deleted = nil
	must(f.DeleteNetwork(ctx, "tw-blue"))
	if len(ct.deleted) != 1 || ct.deleted[0] != dnat {
		t.Fatalf("after DeleteNetwork deleted %v", ct.deleted)
	}
	ct.err = errors.New("netlink: operation not permitted")
	must(f.AddPortMap(ctx, "tw-blue", "udp", netip.Addr{}, 5353, c))
}
