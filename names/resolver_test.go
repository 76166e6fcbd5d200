package names

import (
	"bytes"
	"context"
	"errors"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

var (
	blueWeb1 = Record{Host: "192.0.2.1", Endpoint: "e1", Network: "blue", Container: "c1", Names: []string{"proj-web-1", "web", "c1short"}, Addr: netip.MustParseAddr("10.96.3.5")}
	blueWeb2 = Record{Host: "192.0.2.3", Endpoint: "e2", Network: "blue", Container: "c2", Names: []string{"proj-web-2", "Web"}, Addr: netip.MustParseAddr("10.96.9.7")}
	blueCli  = Record{Host: "192.0.2.2", Endpoint: "e3", Network: "blue", Container: "c3", Names: []string{"client"}, Addr: netip.MustParseAddr("10.96.5.2")}
	redDB    = Record{Host: "192.0.2.1", Endpoint: "e4", Network: "red", Container: "c4", Names: []string{"db", "my_db"}, Addr: netip.MustParseAddr("10.96.3.9")}
	redCli   = Record{Host: "192.0.2.2", Endpoint: "e5", Network: "red", Container: "c5", Names: []string{"redclient"}, Addr: netip.MustParseAddr("10.96.5.3")}
)

func testTable() *Table {
	t := NewTable()
	for _, r := range []Record{blueWeb1, blueWeb2, blueCli, redDB, redCli} {
		t.Put(r.Key("/p"), r)
	}
	return t
}

// fakeUpstream answers every query with one A record, or fails.
type fakeUpstream struct {
	err   error
	calls int
	tcp   bool
	pad   int // extra records in relayed answers, ignoring the client's size
}

func (f *fakeUpstream) Exchange(_ context.Context, q *dns.Msg, tcp bool) (*dns.Msg, error) {
	f.calls++
	f.tcp = tcp
	if f.err != nil {
		return nil, f.err
	}
	m := new(dns.Msg)
	m.SetReply(q)
	m.Id = 999 // the resolver must put the client's ID back
	rr, _ := dns.NewRR(q.Question[0].Name + " 60 IN A 198.51.100.7")
	m.Answer = append(m.Answer, rr)
	return m, nil
}

// Relay answers as Exchange does, at once, under the query's ID.
func (f *fakeUpstream) Relay(wire []byte, _ time.Time, done func([]byte, error)) {
	q := new(dns.Msg)
	if err := q.Unpack(wire); err != nil {
		done(nil, err)
		return
	}
	resp, err := f.Exchange(context.Background(), q, false)
	if err != nil {
		done(nil, err)
		return
	}
	for range f.pad {
		rr, _ := dns.NewRR(q.Question[0].Name + " 60 IN A 198.51.100.8")
		resp.Answer = append(resp.Answer, rr)
	}
	resp.Id = q.Id
	b, err := resp.Pack()
	done(b, err)
}

func newResolver(up Upstream) *Resolver {
	return &Resolver{
		Table: testTable(), Overlay: netip.MustParsePrefix("10.96.0.0/16"), TTL: 1, Forward: up, Stats: &Stats{},
		IsHost: func(a netip.Addr) bool { return a == netip.MustParseAddr("192.0.2.2") },
	}
}

func query(name string, qtype uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	return m
}

func answers(m *dns.Msg) []string {
	var out []string
	for _, rr := range m.Answer {
		if a, ok := rr.(*dns.A); ok {
			out = append(out, a.A.String())
		}
	}
	slices.Sort(out)
	return out
}

func TestAnswer(t *testing.T) {
	fromBlue := blueCli.Addr
	fromRed := redCli.Addr
	cases := []struct {
		name   string
		src    netip.Addr
		q      *dns.Msg
		result Result
		want   []string
		rcode  int
	}{
		{"service name on two hosts gives both", fromBlue, query("web", dns.TypeA), Local, []string{"10.96.3.5", "10.96.9.7"}, dns.RcodeSuccess},
		{"container name", fromBlue, query("proj-web-2", dns.TypeA), Local, []string{"10.96.9.7"}, dns.RcodeSuccess},
		{"case-insensitive", fromBlue, query("PROJ-WEB-1", dns.TypeA), Local, []string{"10.96.3.5"}, dns.RcodeSuccess},
		{"name.network", fromBlue, query("web.blue", dns.TypeA), Local, []string{"10.96.3.5", "10.96.9.7"}, dns.RcodeSuccess},
		{"AAAA of a twill name is empty NOERROR", fromBlue, query("web", dns.TypeAAAA), Empty, nil, dns.RcodeSuccess},
		{"MX of a twill name is empty NOERROR", fromBlue, query("web", dns.TypeMX), Empty, nil, dns.RcodeSuccess},
		{"another network's name is not visible", fromBlue, query("db", dns.TypeA), Forwarded, nil, 0},
		{"nor as name.network", fromBlue, query("db.red", dns.TypeA), Forwarded, nil, 0},
		{"red sees its own", fromRed, query("db", dns.TypeA), Local, []string{"10.96.3.9"}, dns.RcodeSuccess},
		{"underscore names as Docker answers them", fromRed, query("my_db", dns.TypeA), Local, []string{"10.96.3.9"}, dns.RcodeSuccess},
		{"the host sees every network", netip.MustParseAddr("192.0.2.2"), query("db", dns.TypeA), Local, []string{"10.96.3.9"}, dns.RcodeSuccess},
		{"loopback is the host", netip.MustParseAddr("127.0.0.1"), query("web", dns.TypeA), Local, []string{"10.96.3.5", "10.96.9.7"}, dns.RcodeSuccess},
		{"unknown container in the overlay only forwards", netip.MustParseAddr("10.96.7.7"), query("web", dns.TypeA), Forwarded, nil, 0},
		{"external name is forwarded", fromBlue, query("example.org", dns.TypeA), Forwarded, nil, 0},
		{"outsider gets nothing", netip.MustParseAddr("203.0.113.9"), query("web", dns.TypeA), Dropped, nil, 0},
		{"outsider gets nothing for external names either", netip.MustParseAddr("203.0.113.9"), query("example.org", dns.TypeA), Dropped, nil, 0},
	}
	r := newResolver(nil)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m, res := r.Answer(c.src, c.q)
			if res != c.result {
				t.Fatalf("result %v, want %v", res, c.result)
			}
			if c.result != Local && c.result != Empty {
				if m != nil {
					t.Fatalf("answered locally: %v", m)
				}
				return
			}
			if m.Rcode != c.rcode || m.Id != c.q.Id || !m.Response || !m.Authoritative {
				t.Fatalf("header %+v", m.MsgHdr)
			}
			if got := answers(m); !slices.Equal(got, c.want) {
				t.Fatalf("answers %v, want %v", got, c.want)
			}
			for _, rr := range m.Answer {
				if rr.Header().Ttl != 1 || rr.Header().Name != c.q.Question[0].Name {
					t.Fatalf("record header %+v", rr.Header())
				}
			}
		})
	}
}

func TestAnswerMalformed(t *testing.T) {
	r := newResolver(nil)
	two := query("web", dns.TypeA)
	two.Question = append(two.Question, two.Question[0])
	m, res := r.Answer(blueCli.Addr, two)
	if res != Malformed || m.Rcode != dns.RcodeFormatError {
		t.Fatalf("two questions: %v %v", res, m)
	}
	upd := query("web", dns.TypeA)
	upd.Opcode = dns.OpcodeUpdate
	if m, res = r.Answer(blueCli.Addr, upd); res != Malformed || m.Rcode != dns.RcodeNotImplemented {
		t.Fatalf("update: %v %v", res, m)
	}
}

// recorder is a dns.ResponseWriter that keeps what is written.
type recorder struct {
	dns.ResponseWriter
	remote netAddr
	got    *dns.Msg
	closed bool
}

func (w *recorder) RemoteAddr() netAddr       { return w.remote }
func (w *recorder) WriteMsg(m *dns.Msg) error { w.got = m; return nil }
func (w *recorder) Close() error              { w.closed = true; return nil }

func TestServeDNS(t *testing.T) {
	up := &fakeUpstream{}
	r := newResolver(up)

	w := &recorder{remote: udpFrom(blueCli.Addr)}
	q := query("example.org", dns.TypeA)
	r.ServeDNS(w, q)
	if w.got == nil || w.got.Id != q.Id || answers(w.got)[0] != "198.51.100.7" || up.tcp {
		t.Fatalf("forwarded answer %v (tcp %v)", w.got, up.tcp)
	}
	w = &recorder{remote: tcpFrom(blueCli.Addr)}
	r.ServeDNS(w, query("example.org", dns.TypeA))
	if !up.tcp {
		t.Fatal("a query over TCP was not forwarded over TCP")
	}

	w = &recorder{remote: udpFrom(netip.MustParseAddr("203.0.113.9"))}
	r.ServeDNS(w, query("example.org", dns.TypeA))
	if w.got != nil || up.calls != 2 {
		t.Fatalf("outsider got %v, upstream called %d times", w.got, up.calls)
	}

	up.err = errors.New("timeout")
	w = &recorder{remote: udpFrom(blueCli.Addr)}
	r.ServeDNS(w, query("example.org", dns.TypeA))
	if w.got == nil || w.got.Rcode != dns.RcodeServerFailure {
		t.Fatalf("failed upstream: %v", w.got)
	}
	s := r.Stats.Snapshot()
	if s.Queries["forwarded"] != 2 || s.Queries["dropped"] != 1 || s.Queries["forward_failed"] != 1 {
		t.Fatalf("counters %v", s.Queries)
	}
	var n uint64
	for _, c := range s.ForwardCounts {
		n += c
	}
	if n != 2 {
		t.Fatalf("forward latency observations %d, want 2", n)
	}
}

// packets is a PacketWriter that keeps what is written.
type packets struct {
	got []*dns.Msg
	raw [][]byte
	to  []netip.AddrPort
}

func (p *packets) WriteToUDPAddrPort(b []byte, to netip.AddrPort) (int, error) {
	p.raw = append(p.raw, bytes.Clone(b))
	p.to = append(p.to, to)
	m := new(dns.Msg)
	if err := m.Unpack(b); err != nil {
		m = nil
	}
	p.got = append(p.got, m)
	return len(b), nil
}

func packed(m *dns.Msg) []byte { b, _ := m.Pack(); return b }

func TestPlainQuestion(t *testing.T) {
	for name, want := range map[string]string{"Web.Blue.": "web.blue", "example.org.": "example.org", "a\\.b.": "", ".": "", "x y.": ""} {
		q := new(dns.Msg)
		q.SetQuestion(name, dns.TypeA)
		q.SetEdns0(1232, false)
		b, err := q.Pack()
		if err != nil {
			t.Fatal(err)
		}
		got, ok := plainQuestion(b)
		if string(got) != want || ok != (want != "") {
			t.Errorf("%q: %q %v, want %q", name, got, ok, want)
		}
	}
	// An answer, a second question, or an update is not a plain query.
	q := query("web", dns.TypeA)
	q.Response = true
	if _, ok := plainQuestion(packed(q)); ok {
		t.Error("an answer taken for a query")
	}
	q = query("web", dns.TypeA)
	q.Opcode = dns.OpcodeUpdate
	if _, ok := plainQuestion(packed(q)); ok {
		t.Error("an update taken for a query")
	}
	b := packed(query("web", dns.TypeA))
	if _, ok := plainQuestion(b[:len(b)-1]); ok {
		t.Error("a question without its class taken")
	}
}

func TestServePacket(t *testing.T) {
	up := &fakeUpstream{}
	r := newResolver(up)
	cli := netip.AddrPortFrom(blueCli.Addr, 40000)
	last := func(w *packets) *dns.Msg {
		t.Helper()
		if len(w.got) != 1 || w.to[0] != cli {
			t.Fatalf("%d answers, to %v", len(w.got), w.to)
		}
		return w.got[0]
	}

	w := &packets{}
	q := query("web", dns.TypeA)
	r.ServePacket(w, packed(q), cli)
	if m := last(w); m.Id != q.Id || !slices.Equal(answers(m), []string{"10.96.3.5", "10.96.9.7"}) || up.calls != 0 {
		t.Fatalf("twill name: %v (upstream called %d times)", m, up.calls)
	}

	// Names of the querier's network in any case and as name.network are
	// twill's; a name held only on another network is forwarded.
	for _, n := range []string{"WEB", "web.Blue", "proj-web-2.blue"} {
		w = &packets{}
		r.ServePacket(w, packed(query(n, dns.TypeA)), cli)
		if m := last(w); len(answers(m)) == 0 || up.calls != 0 {
			t.Fatalf("%s: %v (upstream called %d times)", n, m, up.calls)
		}
	}
	w = &packets{}
	r.ServePacket(w, packed(query("db", dns.TypeA)), cli)
	if m := last(w); answers(m)[0] != "198.51.100.7" || up.calls != 1 {
		t.Fatalf("red's db asked from blue: %v", m)
	}

	w = &packets{}
	q = query("example.org", dns.TypeA)
	r.ServePacket(w, packed(q), cli)
	if m := last(w); m.Id != q.Id || answers(m)[0] != "198.51.100.7" || up.tcp {
		t.Fatalf("forwarded: %v", m)
	}

	// An upstream answer larger than the client's 512 bytes is truncated.
	up.pad = 60
	w = &packets{}
	r.ServePacket(w, packed(q), cli)
	if m := last(w); !m.Truncated || len(w.raw[0]) > 512 {
		t.Fatalf("oversized upstream answer: TC %v, %d bytes", m.Truncated, len(w.raw[0]))
	}
	up.pad = 0

	// Outsiders get nothing; answers and headerless bits get nothing.
	w = &packets{}
	r.ServePacket(w, packed(q), netip.MustParseAddrPort("203.0.113.9:53"))
	answer := query("example.org", dns.TypeA)
	answer.Response = true
	r.ServePacket(w, packed(answer), cli)
	r.ServePacket(w, []byte{0, 3, 1, 2, 3}, cli)
	if len(w.got) != 0 {
		t.Fatalf("answered %v", w.got)
	}

	// What does not unpack gets FORMERR under its ID.
	bad := packed(query("example.org", dns.TypeA))
	bad = bad[:len(bad)-3]
	w = &packets{}
	r.ServePacket(w, bad, cli)
	if m := last(w); m.Rcode != dns.RcodeFormatError || m.Id != uint16(bad[0])<<8|uint16(bad[1]) {
		t.Fatalf("truncated query: %v", m)
	}

	up.err = errors.New("timeout")
	w = &packets{}
	r.ServePacket(w, packed(q), cli)
	if m := last(w); m.Rcode != dns.RcodeServerFailure || m.Id != q.Id {
		t.Fatalf("failed upstream: %v", m)
	}
	s := r.Stats.Snapshot()
	want := map[string]uint64{"local": 4, "forwarded": 3, "dropped": 1, "malformed": 3, "forward_failed": 1, "empty": 0}
	if !maps.Equal(s.Queries, want) {
		t.Fatalf("counters %v, want %v", s.Queries, want)
	}
}

// A UDP answer larger than the client's buffer is truncated (TC set), so
// the client asks again over TCP; with EDNS0 the client's size holds.
func TestServeDNSTruncates(t *testing.T) {
	tb := NewTable()
	var want []string
	for i := range 60 {
		a := netip.AddrFrom4([4]byte{10, 96, 3, byte(10 + i)})
		tb.Put("/p/names/h/e"+a.String(), Record{Host: "h", Endpoint: "e" + a.String(), Network: "blue", Names: []string{"many-replicas-of-a-service"}, Addr: a})
		want = append(want, a.String())
	}
	tb.Put("/p/names/h/me", blueCli)
	r := &Resolver{Table: tb, Overlay: netip.MustParsePrefix("10.96.0.0/16"), Stats: &Stats{}}

	w := &recorder{remote: udpFrom(blueCli.Addr)}
	r.ServeDNS(w, query("many-replicas-of-a-service", dns.TypeA))
	b, _ := w.got.Pack()
	if !w.got.Truncated || len(b) > 512 {
		t.Fatalf("plain UDP answer: TC %v, %d bytes", w.got.Truncated, len(b))
	}
	q := query("many-replicas-of-a-service", dns.TypeA)
	q.SetEdns0(4096, false)
	w = &recorder{remote: udpFrom(blueCli.Addr)}
	r.ServeDNS(w, q)
	if w.got.Truncated || len(answers(w.got)) != 60 || w.got.IsEdns0() == nil {
		t.Fatalf("EDNS0 answer: TC %v, %d answers, OPT %v", w.got.Truncated, len(answers(w.got)), w.got.IsEdns0())
	}
	w = &recorder{remote: tcpFrom(blueCli.Addr)}
	r.ServeDNS(w, query("many-replicas-of-a-service", dns.TypeA))
	if got := answers(w.got); w.got.Truncated || !slices.Equal(got, sortedStrings(want)) {
		t.Fatalf("TCP answer: TC %v, %d answers", w.got.Truncated, len(got))
	}
	if !strings.EqualFold(w.got.Question[0].Name, "many-replicas-of-a-service.") {
		t.Fatal(w.got.Question)
	}
}

func sortedStrings(s []string) []string { s = slices.Clone(s); slices.Sort(s); return s }

func TestResolverAddr(t *testing.T) {
	a, err := ResolverAddr(netip.MustParsePrefix("10.96.0.0/16"), netip.MustParseAddr("10.96.1.0"))
	if err != nil || a.String() != "10.96.0.53" {
		t.Fatalf("%v %v", a, err)
	}
	if _, err := ResolverAddr(netip.MustParsePrefix("10.96.0.0/16"), netip.MustParseAddr("10.96.0.0")); !errors.Is(err, ErrResolverLeasable) || !strings.Contains(err.Error(), "SubnetMin") {
		t.Fatalf("SubnetMin at the network start: %v", err)
	}
	// /28 subnets: SubnetMin 10.97.0.16 would lease .53.
	if _, err := ResolverAddr(netip.MustParsePrefix("10.97.0.0/16"), netip.MustParseAddr("10.97.0.16")); !errors.Is(err, ErrResolverLeasable) {
		t.Fatalf("small subnets: %v", err)
	}
	var h HostAddrs
	if !h.Has(netip.MustParseAddr("127.0.0.1")) || h.Has(netip.MustParseAddr("203.0.113.77")) {
		t.Fatal("host addresses")
	}
}

// Docker allows container names DNS cannot carry as one label (over 63
// bytes): they are skipped, the record's other names still answer.
func TestTableSkipsUnaskableNames(t *testing.T) {
	long := strings.Repeat("x", 64)
	tb := NewTable()
	r := Record{Host: "h", Endpoint: "e", Network: "blue", Names: []string{long, "ok_name", "Mixed.Case"}, Addr: netip.MustParseAddr("10.96.3.3")}
	tb.Put("k", r)
	for name, want := range map[string]bool{"ok_name": true, "mixed.case": true, long: false} {
		if _, known := tb.Lookup(r.Addr, false, name); known != want {
			t.Errorf("%q known %v, want %v", name, known, want)
		}
	}
	if _, ok := lookupName(long + ".blue"); ok {
		t.Error("a 64-byte label was accepted")
	}
}
