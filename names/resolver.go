package names

import (
	"bytes"
	"context"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"time"

	"github.com/miekg/dns"
)

// DefaultTTL is the TTL of twill's answers: short, since names follow
// containers within seconds and Docker's resolver does not cache.
const DefaultTTL = 1

// Upstream is where the names twill does not hold go (a Forwarder).
type Upstream interface {
	// Exchange sends q and returns the answer.
	Exchange(ctx context.Context, q *dns.Msg, tcp bool) (*dns.Msg, error)
	// Relay sends a packed UDP query, which it keeps, and calls done once,
	// with the packed answer (valid during the call only) or an error.
	Relay(wire []byte, deadline time.Time, done func([]byte, error))
}

// Resolver is the DNS handler of one overlay's resolver address.
type Resolver struct {
	Table   *Table
	Overlay netip.Prefix          // queries from here are containers'
	IsHost  func(netip.Addr) bool // this host's own addresses (loopback is always the host)
	Forward Upstream              // nil: forwarded names fail with SERVFAIL
	Timeout time.Duration         // for a forwarded query; 0 = 5 s
	TTL     uint32
	Stats   *Stats
	Log     *slog.Logger
}

// querier is who asked.
type querier int

const (
	fromOutside querier = iota
	fromContainer
	fromHost
)

func (r *Resolver) who(src netip.Addr) querier {
	src = src.Unmap()
	switch {
	case src.IsLoopback() || (r.IsHost != nil && r.IsHost(src)):
		return fromHost
	case r.Overlay.Contains(src):
		return fromContainer
	}
	return fromOutside
}

// Answer answers q from the table for a querier at src, or returns nil
// when q is to be forwarded. It never touches a socket.
func (r *Resolver) Answer(src netip.Addr, q *dns.Msg) (*dns.Msg, Result) {
	return r.answer(src, r.who(src), q)
}

func (r *Resolver) answer(src netip.Addr, who querier, q *dns.Msg) (*dns.Msg, Result) {
	if who == fromOutside {
		return nil, Dropped
	}
	if q.Response || q.Opcode != dns.OpcodeQuery || len(q.Question) != 1 {
		m := new(dns.Msg)
		code := dns.RcodeFormatError
		if q.Opcode != dns.OpcodeQuery {
			code = dns.RcodeNotImplemented
		}
		m.SetRcode(q, code)
		return m, Malformed
	}
	question := q.Question[0]
	if question.Qclass != dns.ClassINET {
		return nil, Forwarded
	}
	name, ok := lookupName(question.Name)
	if !ok {
		return nil, Forwarded
	}
	addrs, known := r.Table.Lookup(src.Unmap(), who == fromHost, name)
	if !known {
		return nil, Forwarded
	}
	m := new(dns.Msg)
	m.SetReply(q)
	m.Authoritative = true
	m.RecursionAvailable = true
	if opt := q.IsEdns0(); opt != nil {
		m.SetEdns0(max(opt.UDPSize(), dns.MinMsgSize), false)
	}
	if question.Qtype != dns.TypeA && question.Qtype != dns.TypeANY {
		return m, Empty
	}
	// Rotate, as Docker's resolver does, so clients taking the first
	// address spread over the containers.
	start := 0
	if len(addrs) > 1 {
		start = rand.IntN(len(addrs))
	}
	for i := range addrs {
		a := addrs[(start+i)%len(addrs)]
		m.Answer = append(m.Answer, &dns.A{
			Hdr: dns.RR_Header{Name: question.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: r.TTL},
			A:   net.IP(a.AsSlice()),
		})
	}
	return m, Local
}

// ServeDNS answers one query: from the table, else through the forwarder.
// Queries from outside the overlay and the host get no answer at all.
func (r *Resolver) ServeDNS(w dns.ResponseWriter, q *dns.Msg) {
	src, tcp := peer(w.RemoteAddr())
	resp, res := r.Answer(src, q)
	if res == Dropped {
		r.Stats.count(Dropped)
		if tcp {
			w.Close()
		}
		return
	}
	if resp == nil {
		resp, res = r.forward(q, tcp)
	}
	r.Stats.count(res)
	if !tcp {
		resp.Truncate(udpSize(q))
	}
	if err := w.WriteMsg(resp); err != nil && r.Log != nil {
		r.Log.Debug("writing a DNS answer", "to", w.RemoteAddr(), "err", err)
	}
}

// PacketWriter sends a UDP answer (a *net.UDPConn).
type PacketWriter interface {
	WriteToUDPAddrPort(b []byte, to netip.AddrPort) (int, error)
}

// ServePacket answers one UDP datagram b from src through w: from the
// table at once, or relayed through the upstream as it came, the answer
// going back to src when it arrives. It does not keep b. Datagrams from
// outside the overlay and the host, and answers, get nothing; what does
// not unpack gets FORMERR.
func (r *Resolver) ServePacket(w PacketWriter, b []byte, src netip.AddrPort) {
	who := r.who(src.Addr())
	if who == fromOutside {
		r.Stats.count(Dropped)
		return
	}
	if len(b) < 12 || b[2]&0x80 != 0 { // no header, or an answer: never answered, so never a loop
		r.Stats.count(Malformed)
		return
	}
	if name, ok := plainQuestion(b); ok && !r.Table.mayHold(name) {
		r.relay(w, bytes.Clone(b), src) // no twill name: relayed unparsed
		return
	}
	q := new(dns.Msg)
	if err := q.Unpack(b); err != nil {
		r.Stats.count(Malformed)
		r.write(w, headerReply(b, dns.RcodeFormatError), src, dns.MinMsgSize)
		return
	}
	if resp, res := r.answer(src.Addr(), who, q); resp != nil {
		r.Stats.count(res)
		r.write(w, resp, src, udpSize(q))
		return
	}
	r.relay(w, bytes.Clone(b), src)
}

// relay forwards the query wire (kept) from src and sends the answer back
// through w when it comes: as the upstream wrote it, unless it is larger
// than the client takes over UDP (then truncated), or SERVFAIL.
func (r *Resolver) relay(w PacketWriter, wire []byte, src netip.AddrPort) {
	if r.Forward == nil {
		r.fail(w, wire, src, nil)
		return
	}
	t0 := time.Now()
	r.Forward.Relay(wire, t0.Add(r.timeout()), func(a []byte, err error) {
		if err == nil && len(a) > dns.MinMsgSize { // perhaps over the client's size
			if q := new(dns.Msg); q.Unpack(wire) == nil && len(a) > udpSize(q) {
				// An upstream that ignored the client's size: truncate.
				m := new(dns.Msg)
				if err = m.Unpack(a); err == nil {
					m.Truncate(udpSize(q))
					a, err = m.Pack()
				}
			}
		}
		if err != nil {
			r.fail(w, wire, src, err)
			return
		}
		r.Stats.forwardTook(time.Since(t0))
		r.Stats.count(Forwarded)
		if _, err := w.WriteToUDPAddrPort(a, src); err != nil && r.Log != nil {
			r.Log.Debug("writing a DNS answer", "to", src, "err", err)
		}
	})
}

// fail answers the query wire with SERVFAIL.
func (r *Resolver) fail(w PacketWriter, wire []byte, src netip.AddrPort, err error) {
	r.Stats.count(ForwardFailed)
	if err != nil && r.Log != nil {
		r.Log.Debug("forwarding a DNS query", "err", err)
	}
	q := new(dns.Msg)
	if q.Unpack(wire) != nil {
		r.write(w, headerReply(wire, dns.RcodeServerFailure), src, dns.MinMsgSize)
		return
	}
	r.write(w, servfail(q), src, udpSize(q))
}

// headerReply is an answer with rcode to the query b that did not unpack:
// its ID and opcode, nothing else.
func headerReply(b []byte, rcode int) *dns.Msg {
	m := new(dns.Msg)
	m.Id = uint16(b[0])<<8 | uint16(b[1])
	m.Response = true
	m.Opcode = int(b[2]>>3) & 0xF
	m.Rcode = rcode
	return m
}

// plainQuestion returns the name asked by a plain query (opcode QUERY, one
// question, no answer or authority records, at most an OPT record), lower
// case and without the final dot, or false for anything else or a name
// that is not plain (a compression pointer, escapes).
func plainQuestion(b []byte) (string, bool) {
	if len(b) < 17 || b[2]&0xF8 != 0 || b[6]|b[7]|b[8]|b[9]|b[10] != 0 || b[11] > 1 {
		return "", false
	}
	_, name, ok := question(b, true)
	return name, ok && name != ""
}

// write sends m to a UDP client, truncated to size.
func (r *Resolver) write(w PacketWriter, m *dns.Msg, to netip.AddrPort, size int) {
	m.Truncate(size)
	b, err := m.Pack()
	if err == nil {
		_, err = w.WriteToUDPAddrPort(b, to)
	}
	if err != nil && r.Log != nil {
		r.Log.Debug("writing a DNS answer", "to", to, "err", err)
	}
}

func servfail(q *dns.Msg) *dns.Msg {
	m := new(dns.Msg)
	m.SetRcode(q, dns.RcodeServerFailure)
	m.RecursionAvailable = true
	return m
}

func (r *Resolver) timeout() time.Duration {
	if r.Timeout == 0 {
		return 5 * time.Second
	}
	return r.Timeout
}

func (r *Resolver) forward(q *dns.Msg, tcp bool) (*dns.Msg, Result) {
	if r.Forward == nil {
		return servfail(q), ForwardFailed
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout())
	defer cancel()
	t0 := time.Now()
	resp, err := r.Forward.Exchange(ctx, q, tcp)
	if err != nil {
		if r.Log != nil {
			r.Log.Debug("forwarding a DNS query", "name", q.Question[0].Name, "err", err)
		}
		return servfail(q), ForwardFailed
	}
	r.Stats.forwardTook(time.Since(t0))
	resp.Id = q.Id
	return resp, Forwarded
}

// udpSize is how large a UDP answer to q may be: 512 bytes, or what its
// EDNS0 record offers.
func udpSize(q *dns.Msg) int {
	if opt := q.IsEdns0(); opt != nil {
		return max(int(opt.UDPSize()), dns.MinMsgSize)
	}
	return dns.MinMsgSize
}

func peer(a net.Addr) (netip.Addr, bool) {
	switch a := a.(type) {
	case *net.UDPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap(), false
	case *net.TCPAddr:
		ip, _ := netip.AddrFromSlice(a.IP)
		return ip.Unmap(), true
	}
	return netip.Addr{}, false
}
