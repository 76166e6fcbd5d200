package names

import (
	"net/netip"
	"testing"

	"github.com/miekg/dns"
)

// BenchmarkServeLocal is the resolver's cost per answered twill name,
// without sockets.
func BenchmarkServeLocal(b *testing.B) {
	r := newResolver(nil)
	q := query("web", dns.TypeA)
	w := &recorder{remote: udpFrom(blueCli.Addr)}
	b.ReportAllocs()
	for b.Loop() {
		r.ServeDNS(w, q)
	}
}

// BenchmarkTable10k: lookups in a table of 10,000 names from 50 hosts.
func BenchmarkTable10k(b *testing.B) {
	tb := NewTable()
	for i := range 10000 {
		a := netip.AddrFrom4([4]byte{10, 96, byte(1 + i/200), byte(2 + i%200)})
		r := Record{Host: "h" + itoa(i/200), Endpoint: "e" + a.String(), Network: "blue", Names: []string{"svc-" + a.String(), "svc" + itoa(i%50)}, Addr: a}
		tb.Put(r.Key("/p"), r)
	}
	src := netip.MustParseAddr("10.96.1.2")
	b.Run("one-address", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			tb.Lookup(src, false, "svc-10.96.7.9")
		}
	})
	b.Run("200-replicas", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			tb.Lookup(src, false, "svc7")
		}
	})
}
