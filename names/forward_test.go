package names

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// upstream is a real DNS server on loopback standing in for the host's
// resolver: it answers NAME A 198.51.100.N for every name, with n records
// (large answers come truncated over UDP, whole over TCP).
type upstream struct {
	addr    netip.AddrPort
	n       int
	rude    atomic.Bool // answers whole over UDP, whatever the client's size
	queries atomic.Int64
	sawEDNS atomic.Int64
}

func startUpstream(t testing.TB, n int) *upstream {
	t.Helper()
	u := &upstream{n: n}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u.addr = pc.LocalAddr().(*net.UDPAddr).AddrPort()
	ln, err := net.Listen("tcp", u.addr.String())
	if err != nil {
		t.Fatal(err)
	}
	h := dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
		u.queries.Add(1)
		size := dns.MinMsgSize
		if o := q.IsEdns0(); o != nil {
			u.sawEDNS.Add(1)
			size = int(o.UDPSize())
		}
		m := new(dns.Msg)
		m.SetReply(q)
		if q.Question[0].Name == "nx.example." {
			m.Rcode = dns.RcodeNameError
		}
		for i := range u.n {
			rr, _ := dns.NewRR(q.Question[0].Name + " 60 IN A 198.51.100." + itoa(i+1))
			m.Answer = append(m.Answer, rr)
		}
		if _, udp := w.RemoteAddr().(*net.UDPAddr); udp && !u.rude.Load() {
			m.Truncate(size)
		}
		w.WriteMsg(m)
	})
	for _, s := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
		go s.ActivateAndServe()
		t.Cleanup(func() { s.Shutdown() })
	}
	return u
}

// listenForwarding serves testTable's names on a loopback Listener and
// forwards the rest through f; both close when the test ends. Queries from
// loopback count as the host's.
func listenForwarding(t testing.TB, f *Forwarder) (*Listener, *Resolver) {
	t.Helper()
	t.Cleanup(f.Close)
	r := &Resolver{Table: testTable(), Overlay: netip.MustParsePrefix("10.96.0.0/16"), TTL: 1, Stats: &Stats{}, Forward: f}
	l, err := Listen(netip.MustParseAddrPort("127.0.0.1:0"), r)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, r
}

func itoa(i int) string { return netip.AddrFrom4([4]byte{0, 0, 0, byte(i)}).String()[6:] }

func TestForwarder(t *testing.T) {
	big := startUpstream(t, 60)
	ctx := context.Background()
	f := NewForwarder([]netip.AddrPort{big.addr}, time.Second)
	defer f.Close()

	q := query("example.org", dns.TypeA)
	resp, err := f.Exchange(ctx, q, false)
	if err != nil {
		t.Fatal(err)
	}
	if !resp.Truncated || resp.Id != q.Id {
		t.Fatalf("plain UDP: TC %v, id %d want %d", resp.Truncated, resp.Id, q.Id)
	}
	resp, err = f.Exchange(ctx, q, true)
	if err != nil || resp.Truncated || len(resp.Answer) != 60 {
		t.Fatalf("TCP: %v, TC %v, %d answers", err, resp.Truncated, len(resp.Answer))
	}
	q.SetEdns0(4096, false)
	resp, err = f.Exchange(ctx, q, false)
	if err != nil || resp.Truncated || len(resp.Answer) != 60 || big.sawEDNS.Load() != 1 {
		t.Fatalf("EDNS0 UDP: %v, TC %v, %d answers, EDNS seen %d", err, resp.Truncated, len(resp.Answer), big.sawEDNS.Load())
	}
	resp, err = f.Exchange(ctx, query("nx.example", dns.TypeA), false)
	if err != nil || resp.Rcode != dns.RcodeNameError {
		t.Fatalf("NXDOMAIN must come back as it is: %v %v", err, resp)
	}
}

// A dead first upstream costs one timeout; the second answers.
func TestForwarderFailsOver(t *testing.T) {
	dead, err := net.ListenPacket("udp", "127.0.0.1:0") // never answers
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Close()
	live := startUpstream(t, 1)
	f := NewForwarder([]netip.AddrPort{dead.LocalAddr().(*net.UDPAddr).AddrPort(), live.addr}, 200*time.Millisecond)
	defer f.Close()
	// Twice, the second time after the sweeper found nothing in flight and
	// went to sleep: the query wakes it.
	for round := range 2 {
		if round == 1 {
			time.Sleep(300 * time.Millisecond)
		}
		t0 := time.Now()
		resp, err := f.Exchange(context.Background(), query("example.org", dns.TypeA), false)
		if err != nil || len(resp.Answer) != 1 {
			t.Fatalf("round %d: %v %v", round, err, resp)
		}
		if d := time.Since(t0); d < 200*time.Millisecond || d > time.Second {
			t.Fatalf("round %d took %v", round, d)
		}
	}
	none := NewForwarder(nil, 0)
	defer none.Close()
	if _, err := none.Exchange(context.Background(), query("x", dns.TypeA), false); err != ErrNoUpstream {
		t.Fatalf("no upstreams: %v", err)
	}
}

// Through a real forwarder over UDP, the client gets its own ID back on an
// answer, on an answer too large for it (truncated by twill) and on
// SERVFAIL when no upstream answers.
func TestListenerKeepsClientIDs(t *testing.T) {
	big := startUpstream(t, 60)
	big.rude.Store(true)
	dead, err := net.ListenPacket("udp", "127.0.0.1:0") // never answers
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Close()
	for _, c := range []struct {
		name string
		up   netip.AddrPort
		want func(*dns.Msg) bool
	}{
		{"an oversized answer", big.addr, func(m *dns.Msg) bool { return m.Truncated && m.Rcode == dns.RcodeSuccess }},
		{"no answer", dead.LocalAddr().(*net.UDPAddr).AddrPort(), func(m *dns.Msg) bool { return m.Rcode == dns.RcodeServerFailure }},
	} {
		l, _ := listenForwarding(t, NewForwarder([]netip.AddrPort{c.up}, 100*time.Millisecond))
		nc, err := net.Dial("udp", l.Addr.String())
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		q := query("example.org", dns.TypeA)
		q.Id = 0xbeef
		nc.Write(packed(q))
		nc.SetReadDeadline(time.Now().Add(2 * time.Second))
		b := make([]byte, 4096)
		n, err := nc.Read(b)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		m := new(dns.Msg)
		if err := m.Unpack(b[:n]); err != nil && !(n > 2 && b[2]&0x02 != 0) {
			t.Fatalf("%s: %v", c.name, err)
		}
		if m.Id != 0xbeef || n > 512 || !c.want(m) {
			t.Fatalf("%s: id %#x, %d bytes: %v", c.name, m.Id, n, m)
		}
	}
}

// An upstream whose port is closed answers with ICMP port unreachable: the
// query moves on to the next upstream at once, not after its try, and the
// socket's reader reads on.
func TestForwarderRefusedUpstream(t *testing.T) {
	closed, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := closed.LocalAddr().(*net.UDPAddr).AddrPort()
	closed.Close()
	live := startUpstream(t, 1)
	f := NewForwarder([]netip.AddrPort{port, live.addr}, 200*time.Millisecond)
	defer f.Close()
	for round := range 3 {
		t0 := time.Now()
		resp, err := f.Exchange(context.Background(), query("example.org", dns.TypeA), false)
		if err != nil || len(resp.Answer) != 1 {
			t.Fatalf("round %d: %v %v", round, err, resp)
		}
		if d := time.Since(t0); d > 150*time.Millisecond {
			t.Fatalf("round %d took %v: the refusal was not taken as an answer", round, d)
		}
	}
}

// The whole path over real sockets: a client queries a Listener, which
// answers twill names and forwards the rest to the upstream, UDP and TCP.
func TestListenerEndToEnd(t *testing.T) {
	up := startUpstream(t, 1)
	l, r := listenForwarding(t, NewForwarder([]netip.AddrPort{up.addr}, time.Second))
	for _, proto := range []string{"udp", "tcp"} {
		c := &dns.Client{Net: proto, Timeout: 2 * time.Second}
		resp, _, err := c.Exchange(query("web", dns.TypeA), l.Addr.String())
		if err != nil || !slices.Equal(answers(resp), []string{"10.96.3.5", "10.96.9.7"}) {
			t.Fatalf("%s twill name: %v %v", proto, err, resp)
		}
		resp, _, err = c.Exchange(query("example.org", dns.TypeA), l.Addr.String())
		if err != nil || !slices.Equal(answers(resp), []string{"198.51.100.1"}) {
			t.Fatalf("%s forwarded name: %v %v", proto, err, resp)
		}
		// Garbage gets no crash; the next query is answered.
		nc, err := net.Dial(proto, l.Addr.String())
		if err != nil {
			t.Fatal(err)
		}
		nc.Write([]byte{0, 3, 1, 2, 3})
		nc.Close()
	}
	// A datagram over 4 KB is no query: dropped and counted, not read in part.
	big := packed(query("example.org", dns.TypeA))
	big = append(big, make([]byte, 5000)...)
	nc, err := net.Dial("udp", l.Addr.String())
	if err != nil {
		t.Fatal(err)
	}
	nc.Write(big)
	nc.Close()
	c := &dns.Client{Net: "udp", Timeout: 2 * time.Second}
	if _, _, err := c.Exchange(query("web", dns.TypeA), l.Addr.String()); err != nil {
		t.Fatalf("after garbage: %v", err)
	}
	if m := r.Stats.Snapshot().Queries["malformed"]; m != 2 { // the UDP garbage and the oversized one
		t.Fatalf("malformed queries counted: %d, want 2", m)
	}
	if up.queries.Load() != 2 {
		t.Fatalf("upstream saw %d queries, want 2", up.queries.Load())
	}
}

// Many concurrent queries, all with the same client ID (two clients may
// well pick one), share the forwarder's sockets: each gets its own answer.
func TestForwarderConcurrent(t *testing.T) {
	up := startUpstream(t, 1)
	f := NewForwarder([]netip.AddrPort{up.addr}, 2*time.Second)
	defer f.Close()
	errs := make(chan error, 300)
	for i := range 300 {
		go func() {
			q := query(fmt.Sprintf("n%d.example.org", i), dns.TypeA)
			q.Id = 4242
			resp, err := f.Exchange(context.Background(), q, false)
			switch {
			case err != nil:
				errs <- err
			case resp.Id != 4242 || resp.Question[0].Name != q.Question[0].Name:
				errs <- fmt.Errorf("query %s got the answer to %s (id %d)", q.Question[0].Name, resp.Question[0].Name, resp.Id)
			default:
				errs <- nil
			}
		}()
	}
	for range 300 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	if _, err := f.Exchange(context.Background(), query("x.example.org", dns.TypeA), false); err == nil {
		t.Fatal("a closed forwarder answered")
	}
}

func TestParseUpstreams(t *testing.T) {
	got, err := ParseUpstreams(" 10.0.0.2, 10.0.0.3:5353,[fd00::1]:53 ,")
	want := []netip.AddrPort{netip.MustParseAddrPort("10.0.0.2:53"), netip.MustParseAddrPort("10.0.0.3:5353"), netip.MustParseAddrPort("[fd00::1]:53")}
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("%v %v", got, err)
	}
	for _, bad := range []string{"dns.google", "10.0.0.2:0", "10.0.0.2:99999", "10.0.0/24"} {
		if _, err := ParseUpstreams(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestParseResolvConf(t *testing.T) {
	got := parseResolvConf("# generated\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch example.com\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nnameserver bogus\n")
	want := []netip.AddrPort{netip.MustParseAddrPort("127.0.0.53:53"), netip.MustParseAddrPort("10.0.0.2:53"), netip.AddrPortFrom(netip.MustParseAddr("fe80::1%eth0"), 53)}
	if !slices.Equal(got, want) {
		t.Fatalf("%v", got)
	}
}
