package names

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"

	"github.com/twill-net/twill/internal/udpsock"
)

// DefaultResolvConf is where the host's resolvers are read from when no
// upstream is set.
const DefaultResolvConf = "/etc/resolv.conf"

// Forwarder sends queries twill does not answer to upstream resolvers, in
// order, the next one when one fails or times out, as Docker's resolver
// does; the first answer (NXDOMAIN included) ends the lookup. UDP queries
// are relayed as they came (their EDNS0 record included, so the upstream
// sizes its answer for the client) over one connected socket per upstream,
// under IDs of the forwarder's own so that clients' IDs never collide; the
// socket's reader hands an answer to its query's callback at once, and a
// sweeper resends and fails over. TCP queries go over a fresh connection
// each.
type Forwarder struct {
	upstreams []netip.AddrPort
	timeout   time.Duration // per upstream try
	stop      chan struct{}
	busy      chan struct{} // a query was sent: wakes an idle sweeper

	mu     sync.Mutex
	muxes  []*udpMux // per upstream, opened on first use
	closed bool
}

// NewForwarder forwards to upstreams, giving each try timeout (0 = 2 s).
// Close releases its sockets.
func NewForwarder(upstreams []netip.AddrPort, timeout time.Duration) *Forwarder {
	if timeout == 0 {
		timeout = 2 * time.Second
	}
	f := &Forwarder{upstreams: upstreams, timeout: timeout, muxes: make([]*udpMux, len(upstreams)),
		stop: make(chan struct{}), busy: make(chan struct{}, 1)}
	go f.sweep()
	return f
}

// Close closes the forwarder's sockets; queries in flight fail.
func (f *Forwarder) Close() {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return
	}
	f.closed = true
	close(f.stop)
	var orphans []*relayed
	for _, m := range f.muxes {
		if m != nil {
			orphans = append(orphans, m.close()...)
		}
	}
	f.mu.Unlock()
	for _, r := range orphans {
		r.finish(nil, errClosed)
	}
}

// Upstreams lists where queries go.
func (f *Forwarder) Upstreams() []netip.AddrPort { return f.upstreams }

// ErrNoUpstream is returned when no upstream resolver is configured.
var ErrNoUpstream = errors.New("no upstream resolver (set TWILL_DNS_UPSTREAM, or give the host a nameserver in /etc/resolv.conf)")

// Exchange forwards q and returns the first answer, with q's ID.
func (f *Forwarder) Exchange(ctx context.Context, q *dns.Msg, tcp bool) (*dns.Msg, error) {
	if len(f.upstreams) == 0 {
		return nil, ErrNoUpstream
	}
	if !tcp {
		return f.exchangeUDP(ctx, q)
	}
	var errs []error
	for _, up := range f.upstreams {
		if ctx.Err() != nil {
			break
		}
		resp, err := f.tcp(ctx, up, q)
		if err == nil {
			resp.Id = q.Id
			return resp, nil
		}
		errs = append(errs, fmt.Errorf("upstream %s: %w", up, err))
	}
	if len(errs) == 0 {
		return nil, ctx.Err()
	}
	return nil, errors.Join(errs...)
}

// exchangeUDP relays q and waits for the answer.
func (f *Forwarder) exchangeUDP(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
	wire, err := q.Pack()
	if err != nil {
		return nil, err
	}
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(f.timeout * time.Duration(len(f.upstreams)))
	}
	type answer struct {
		b   []byte
		err error
	}
	ch := make(chan answer, 1)
	f.Relay(wire, deadline, func(b []byte, err error) { ch <- answer{bytes.Clone(b), err} })
	var a answer
	select {
	case a = <-ch:
	case <-ctx.Done():
		return nil, ctx.Err() // the relayed query ends by its deadline
	}
	if a.err != nil {
		return nil, a.err
	}
	resp := new(dns.Msg)
	if err := resp.Unpack(a.b); err != nil {
		if a.b[2]&0x02 != 0 { // TC: a truncated answer may not unpack whole
			resp = new(dns.Msg)
			resp.SetReply(q)
			resp.Truncated = true
			return resp, nil
		}
		return nil, fmt.Errorf("unpacking the answer: %w", err)
	}
	return resp, nil
}

var (
	errClosed   = errors.New("forwarder closed")
	errTimeout  = errors.New("no answer in time")
	errQuestion = errors.New("a query must have one question")
	errBusy     = errors.New("too many queries in flight")
	errRefused  = errors.New("port unreachable")
)

// Relay forwards wire, a packed UDP query that it keeps (writing IDs of its
// own into it, the query's own back before done), through the upstreams
// until deadline and calls done exactly once: with the answer under the
// query's own ID (valid only during the call), or with an error.
// done may run on Relay's caller or on a socket's reader; it must not block.
func (f *Forwarder) Relay(wire []byte, deadline time.Time, done func([]byte, error)) {
	if len(f.upstreams) == 0 {
		done(nil, ErrNoUpstream)
		return
	}
	qend, _, ok := question(wire, false)
	if !ok {
		done(nil, errQuestion)
		return
	}
	r := &relayed{wire: wire, qend: qend, id: uint16(wire[0])<<8 | uint16(wire[1]), deadline: deadline, done: done}
	f.try(r, 0, nil)
}

// relayed is a UDP query on its way through the upstreams. Whoever takes it
// out of a socket's waiting table (the reader, the sweeper, Close) owns it.
type relayed struct {
	wire     []byte    // the query; its ID is the current socket's
	qend     int       // end of its question section in wire
	id       uint16    // the asker's ID
	up       int       // the upstream being tried
	sent     time.Time // when it was first sent there
	resent   bool
	deadline time.Time
	errs     []error // of the upstreams tried before
	done     func([]byte, error)
}

// finish gives the query its asker's ID back and calls done.
func (r *relayed) finish(answer []byte, err error) {
	r.wire[0], r.wire[1] = byte(r.id>>8), byte(r.id)
	r.done(answer, err)
}

// try sends r to upstream up, or the first one after it that takes it;
// past the last, r fails with err and what the others said.
func (f *Forwarder) try(r *relayed, up int, err error) {
	if err != nil {
		r.errs = append(r.errs, fmt.Errorf("upstream %s: %w", f.upstreams[r.up], err))
	}
	for ; up < len(f.upstreams) && time.Now().Before(r.deadline); up++ {
		m, err := f.mux(up)
		if err == nil {
			err = m.send(r, up)
		}
		if err == nil {
			return
		}
		if err == errClosed {
			r.finish(nil, err)
			return
		}
		r.errs = append(r.errs, fmt.Errorf("upstream %s: %w", f.upstreams[up], err))
	}
	if len(r.errs) == 0 {
		r.errs = append(r.errs, errTimeout)
	}
	r.finish(nil, errors.Join(r.errs...))
}

// question walks the one question of the packed message b: where its
// section ends and, with wantName, the name asked, in lower case and without
// the final dot; the name is "" when it is not plain (a compression pointer,
// a byte a query would escape, over 255 bytes).
func question(b []byte, wantName bool) (end int, name string, ok bool) {
	if len(b) < 12 || b[4] != 0 || b[5] != 1 {
		return 0, "", false
	}
	var buf [255]byte
	n, plain := 0, wantName
	i := 12
	for {
		if i >= len(b) {
			return 0, "", false
		}
		l := int(b[i])
		if l&0xC0 == 0xC0 { // a compression pointer ends the name
			i += 2
			plain = false
			break
		}
		if l&0xC0 != 0 {
			return 0, "", false
		}
		i++
		if l == 0 {
			break
		}
		if i+l > len(b) {
			return 0, "", false
		}
		if plain && n+1+l > len(buf) {
			plain = false
		}
		if plain {
			if n > 0 {
				buf[n] = '.'
				n++
			}
			for _, c := range b[i : i+l] {
				if c == '.' || c == '\\' || c <= ' ' || c >= 0x7F {
					plain = false
					break
				}
				if 'A' <= c && c <= 'Z' {
					c += 'a' - 'A'
				}
				buf[n] = c
				n++
			}
		}
		i += l
	}
	if end = i + 4; end > len(b) {
		return 0, "", false
	}
	if plain && n > 0 {
		name = string(buf[:n])
	}
	return end, name, true
}

// sameQuestion compares two question sections, names case-insensitively.
func sameQuestion(a, b []byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// mux returns the socket to upstream i, opening it on first use.
func (f *Forwarder) mux(i int) (*udpMux, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, errClosed
	}
	if f.muxes[i] == nil {
		m, err := f.dialMux(f.upstreams[i])
		if err != nil {
			return nil, err
		}
		f.muxes[i] = m
	}
	return f.muxes[i], nil
}

// sweep looks at the queries in flight a dozen times per try: UDP loses
// datagrams (a full socket buffer on a busy upstream), so, like a stub
// resolver, a query unanswered for a third of its try is sent once more;
// one unanswered for the whole try moves to the next upstream. With nothing
// in flight it sleeps until a query is sent.
func (f *Forwarder) sweep() {
	every := min(max(f.timeout/12, 5*time.Millisecond), 50*time.Millisecond)
	for {
		select {
		case <-f.stop:
			return
		case <-f.busy:
		}
		for inFlight := 1; inFlight > 0; {
			select {
			case <-f.stop:
				return
			case <-time.After(every):
			}
			f.mu.Lock()
			ms := slices.Clone(f.muxes)
			f.mu.Unlock()
			now := time.Now()
			inFlight = 0
			for _, m := range ms {
				if m == nil {
					continue
				}
				late, resend, left := m.due(now, f.timeout)
				for _, wire := range resend {
					m.conn.Write(wire) // a failure leaves the first try to time out
				}
				for _, r := range late {
					f.try(r, r.up+1, errTimeout)
				}
				inFlight += left + len(late) // the late ones may be on the next upstream now
			}
		}
	}
}

// udpMux is one connected UDP socket to an upstream, shared by concurrent
// queries: each is sent under a free ID of the socket's, and the answer
// with that ID and the query's question goes to the query's callback.
type udpMux struct {
	f    *Forwarder
	conn *udpsock.Socket

	mu      sync.Mutex
	waiting map[uint16]*relayed
	closed  bool
}

func (f *Forwarder) dialMux(up netip.AddrPort) (*udpMux, error) {
	c, err := udpsock.Dial(up)
	if err != nil {
		return nil, err
	}
	m := &udpMux{f: f, conn: c, waiting: map[uint16]*relayed{}}
	go c.Serve(answerBatch, dns.MaxMsgSize, m.answer, func(err error) {
		if errors.Is(err, syscall.ECONNREFUSED) {
			// The upstream's port is closed (ICMP port unreachable). It does
			// not say which query; every one waiting here went to that port,
			// so all move on to the next upstream now, as Docker's resolver
			// does, instead of waiting out their try.
			for _, r := range m.takeAll() {
				f.try(r, r.up+1, errRefused)
			}
		}
	})
	return m, nil
}

// answerBatch is how many answers an upstream socket's reader takes at once.
const answerBatch = 8

// send registers r under a free ID and sends it to the socket's upstream.
func (m *udpMux) send(r *relayed, up int) error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return errClosed
	}
	if len(m.waiting) > 1<<15 {
		m.mu.Unlock()
		return errBusy
	}
	var id uint16
	for {
		id = uint16(rand.Uint32())
		if _, busy := m.waiting[id]; !busy {
			break
		}
	}
	r.wire[0], r.wire[1] = byte(id>>8), byte(id)
	r.up, r.sent, r.resent = up, time.Now(), false
	m.waiting[id] = r
	m.mu.Unlock()
	select {
	case m.f.busy <- struct{}{}:
	default: // the sweeper is awake or already woken
	}
	if _, err := m.conn.Write(r.wire); err != nil {
		m.mu.Lock()
		mine := m.waiting[id] == r
		if mine {
			delete(m.waiting, id)
		}
		m.mu.Unlock()
		if mine {
			return err
		}
	}
	return nil
}

// due takes out the queries past their try or deadline and returns them,
// with the queries to send once more and how many stay waiting.
func (m *udpMux) due(now time.Time, try time.Duration) (late []*relayed, resend [][]byte, left int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for id, r := range m.waiting {
		age := now.Sub(r.sent)
		switch {
		case age >= try || !now.Before(r.deadline):
			delete(m.waiting, id)
			late = append(late, r)
		case !r.resent && age >= try/3:
			r.resent = true
			resend = append(resend, bytes.Clone(r.wire)) // its owner may rewrite the ID once it is taken out
		}
	}
	return late, resend, len(m.waiting)
}

// answer hands an upstream's answer to the query waiting for it.
func (m *udpMux) answer(b []byte, _ netip.AddrPort) {
	if len(b) < 12 || b[2]&0x80 == 0 { // not an answer
		return
	}
	id := uint16(b[0])<<8 | uint16(b[1])
	m.mu.Lock()
	r := m.waiting[id]
	if r != nil && len(b) >= r.qend && b[4] == 0 && b[5] == 1 && sameQuestion(b[12:r.qend], r.wire[12:r.qend]) {
		delete(m.waiting, id)
	} else {
		r = nil // a late answer to a resent or failed-over query, or a forgery
	}
	m.mu.Unlock()
	if r != nil {
		b[0], b[1] = byte(r.id>>8), byte(r.id)
		r.finish(b, nil)
	}
}

// takeAll takes every waiting query out and returns them.
func (m *udpMux) takeAll() []*relayed {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []*relayed
	for id, r := range m.waiting {
		delete(m.waiting, id)
		out = append(out, r)
	}
	return out
}

// close closes the socket and returns the queries that were waiting.
func (m *udpMux) close() []*relayed {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	orphans := m.takeAll()
	m.conn.Close()
	return orphans
}

func (f *Forwarder) deadline(ctx context.Context) time.Time {
	d := time.Now().Add(f.timeout)
	if cd, ok := ctx.Deadline(); ok && cd.Before(d) {
		d = cd
	}
	return d
}

func (f *Forwarder) tcp(ctx context.Context, up netip.AddrPort, q *dns.Msg) (*dns.Msg, error) {
	d := net.Dialer{Deadline: f.deadline(ctx)}
	nc, err := d.DialContext(ctx, "tcp", up.String())
	if err != nil {
		return nil, err
	}
	c := &dns.Conn{Conn: nc}
	defer c.Close()
	c.SetDeadline(f.deadline(ctx))
	return exchangeOn(c, q)
}

// exchangeOn writes q and reads until the answer with q's ID and question.
func exchangeOn(c *dns.Conn, q *dns.Msg) (*dns.Msg, error) {
	if err := c.WriteMsg(q); err != nil {
		return nil, err
	}
	for {
		resp, err := c.ReadMsg()
		if err != nil {
			if resp != nil && resp.Truncated && resp.Id == q.Id {
				// A truncated answer may not unpack entirely; the header
				// and question are what the client needs to retry on TCP.
				return resp, nil
			}
			return nil, err
		}
		if resp.Id == q.Id && len(resp.Question) == len(q.Question) &&
			(len(q.Question) == 0 || strings.EqualFold(resp.Question[0].Name, q.Question[0].Name)) {
			return resp, nil
		}
	}
}

// ParseUpstreams reads the upstream setting: comma-separated addresses,
// each IP or IP:PORT ([IPv6]:PORT), port 53 by default.
func ParseUpstreams(s string) ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		if a, err := netip.ParseAddr(f); err == nil {
			out = append(out, netip.AddrPortFrom(a.Unmap(), 53))
			continue
		}
		ap, err := netip.ParseAddrPort(f)
		if err != nil || ap.Port() == 0 {
			return nil, fmt.Errorf("upstream resolver %q is not an IP or IP:PORT, e.g. 10.0.0.2 or 10.0.0.2:5353", f)
		}
		out = append(out, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
	}
	return out, nil
}

// ReadResolvConf returns the nameservers a resolv.conf lists (a loopback
// stub such as 127.0.0.53 included), port 53. Scoped IPv6 addresses
// ("fe80::1%eth0") are kept with their zone.
func ReadResolvConf(path string) ([]netip.AddrPort, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the host's resolvers: %w", err)
	}
	return parseResolvConf(string(b)), nil
}

func parseResolvConf(s string) []netip.AddrPort {
	var out []netip.AddrPort
	for _, line := range strings.Split(s, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		a, err := netip.ParseAddr(f[1])
		if err != nil {
			continue
		}
		out = append(out, netip.AddrPortFrom(a.Unmap(), 53))
	}
	return out
}
