package names

import (
	"net"
	"net/netip"
	"testing"
	"time"

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

// BenchmarkForwardUDP is one forwarded UDP query end to end on loopback:
// client, resolver, forwarder, upstream, back (all in this process; its CPU
// profile tells the resolver's and forwarder's share).
func BenchmarkForwardUDP(b *testing.B) {
	l, _ := listenForwarding(b, NewForwarder([]netip.AddrPort{startUpstream(b, 1).addr}, time.Second))
	b.ReportAllocs()
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		c, err := net.Dial("udp", l.Addr.String())
		if err != nil {
			b.Error(err)
			return
		}
		defer c.Close()
		q, _ := query("example.org", dns.TypeA).Pack()
		buf := make([]byte, 512)
		for pb.Next() {
			c.Write(q)
			c.SetReadDeadline(time.Now().Add(2 * time.Second))
			if _, err := c.Read(buf); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// nopWriter drops what is written.
type nopWriter struct{}

func (nopWriter) WriteToUDPAddrPort(b []byte, _ netip.AddrPort) (int, error) { return len(b), nil }

// instantUpstream answers every relayed query at once with a canned answer.
type instantUpstream struct {
	fakeUpstream
	answer []byte
}

func (u *instantUpstream) Relay(wire []byte, _ time.Time, done func([]byte, error)) {
	u.answer[0], u.answer[1] = wire[0], wire[1]
	done(u.answer, nil)
}

// BenchmarkServePacket is the resolver's own cost per UDP query, sockets
// and upstream aside: its allocations are what its garbage collector sees
// under load.
func BenchmarkServePacket(b *testing.B) {
	src := netip.AddrPortFrom(blueCli.Addr, 40000)
	b.Run("local", func(b *testing.B) {
		r := newResolver(nil)
		q, _ := query("web", dns.TypeA).Pack()
		b.ReportAllocs()
		for b.Loop() {
			r.ServePacket(nopWriter{}, q, src)
		}
	})
	b.Run("forwarded", func(b *testing.B) {
		m := query("example.org", dns.TypeA)
		resp := new(dns.Msg)
		resp.SetReply(m)
		rr, _ := dns.NewRR("example.org. 60 IN A 198.51.100.7")
		resp.Answer = append(resp.Answer, rr)
		a, _ := resp.Pack()
		r := newResolver(&instantUpstream{answer: a})
		q, _ := m.Pack()
		b.ReportAllocs()
		for b.Loop() {
			r.ServePacket(nopWriter{}, q, src)
		}
	})
}
