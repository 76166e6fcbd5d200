package names

import (
	"net/netip"
	"testing"

	"github.com/miekg/dns"
)

// FuzzRecord feeds ParseRecord what another writer may have put in etcd: a
// record read must round-trip and never break the table.
func FuzzRecord(f *testing.F) {
	dir := NamesDir("/p")
	f.Add(dir+"192.0.2.1/e1", []byte(`{"Network":"blue","Container":"c","Names":["web","a_b"],"IPv4":"10.96.3.5"}`))
	f.Add(dir+"192.0.2.1/e1", []byte(`{"Network":"","Names":null,"IPv4":"::1"}`))
	f.Add(dir+"x", []byte(`[]`))
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		r, err := ParseRecord(dir, key, value)
		if err != nil {
			return
		}
		back, err := ParseRecord(dir, r.Key("/p"), r.Marshal())
		if err != nil || !back.Equal(r) {
			t.Fatalf("round trip: %+v -> %+v (%v)", r, back, err)
		}
		tb := NewTable()
		tb.Put(key, r)
		tb.Lookup(r.Addr, false, "web")
		if _, ok := tb.Delete(key); !ok || tb.Len() != 0 {
			t.Fatal("delete")
		}
		if len(tb.byName) != 0 || len(tb.bySrc) != 0 {
			t.Fatalf("indexes left behind: %v %v", tb.byName, tb.bySrc)
		}
	})
}

// FuzzQuery sends arbitrary datagrams to the resolver from a container:
// a query gets one answer that unpacks, anything else nothing, never a
// crash; the relay's own question parser stays inside the datagram.
func FuzzQuery(f *testing.F) {
	for _, q := range []*dns.Msg{query("web", dns.TypeA), query("web.blue", dns.TypeAAAA), query("example.org", dns.TypeMX)} {
		b, _ := q.Pack()
		f.Add(b)
	}
	r := newResolver(&fakeUpstream{})
	src := netip.AddrPortFrom(blueCli.Addr, 40000)
	f.Fuzz(func(t *testing.T, b []byte) {
		w := &packets{}
		r.ServePacket(w, b, src)
		if len(b) < 12 || b[2]&0x80 != 0 {
			if len(w.got) != 0 {
				t.Fatalf("answered a non-query: %v", w.got)
			}
			return
		}
		if len(w.got) != 1 || w.got[0] == nil {
			t.Fatalf("%d answers to a query, %v", len(w.got), w.got)
		}
		if end, _, ok := question(b, true); ok && (end > len(b) || end < 17) {
			t.Fatalf("question section ends at %d of %d bytes", end, len(b))
		}
	})
}

// FuzzUpstreams: the upstream setting is refused or gives usable addresses.
func FuzzUpstreams(f *testing.F) {
	f.Add("10.0.0.2, 10.0.0.3:5353")
	f.Add("[fd00::1]:53")
	f.Fuzz(func(t *testing.T, s string) {
		ups, err := ParseUpstreams(s)
		if err != nil {
			return
		}
		for _, u := range ups {
			if !u.IsValid() || u.Port() == 0 {
				t.Fatalf("%q gave %v", s, u)
			}
			if _, err := netip.ParseAddrPort(u.String()); err != nil {
				t.Fatalf("%q gave %v", s, u)
			}
		}
	})
}
