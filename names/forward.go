package names

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// DefaultResolvConf is where the host's resolvers are read from when no
// upstream is set.
const DefaultResolvConf = "/etc/resolv.conf"

// Forwarder sends queries twill does not answer to upstream resolvers, in
// order, the next one when one fails or times out, as Docker's resolver
// does; the first answer (NXDOMAIN included) ends the lookup. UDP queries
// share a few connected sockets per upstream, each with one reader, under
// IDs of the forwarder's own (so clients' IDs never collide); TCP ones go
// over a fresh connection each.
type Forwarder struct {
	upstreams []netip.AddrPort
	timeout   time.Duration // per upstream try
	next      atomic.Uint32

	mu     sync.Mutex
	muxes  [][]*udpMux // per upstream, opened on first use
	closed bool
}

// muxPerUpstream is how many UDP sockets each upstream gets.
const muxPerUpstream = 4

// NewForwarder forwards to upstreams, giving each try timeout (0 = 2 s).
// Close releases its sockets.
func NewForwarder(upstreams []netip.AddrPort, timeout time.Duration) *Forwarder {
	if timeout == 0 {
		timeout = 2 * time.Second
	}
	f := &Forwarder{upstreams: upstreams, timeout: timeout, muxes: make([][]*udpMux, len(upstreams))}
	return f
}

// Close closes the forwarder's sockets; queries in flight fail.
func (f *Forwarder) Close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	for _, ms := range f.muxes {
		for _, m := range ms {
			m.close()
		}
	}
}

// Upstreams lists where queries go.
func (f *Forwarder) Upstreams() []netip.AddrPort { return f.upstreams }

// ErrNoUpstream is returned when no upstream resolver is configured.
var ErrNoUpstream = errors.New("no upstream resolver (set TWILL_DNS_UPSTREAM, or give the host a nameserver in /etc/resolv.conf)")

// Exchange forwards q as it is (its EDNS0 record included, so the upstream
// sizes its answer for the client) and returns the first answer, with q's ID.
func (f *Forwarder) Exchange(ctx context.Context, q *dns.Msg, tcp bool) (*dns.Msg, error) {
	if len(f.upstreams) == 0 {
		return nil, ErrNoUpstream
	}
	var errs []error
	for i, up := range f.upstreams {
		if ctx.Err() != nil {
			break
		}
		var resp *dns.Msg
		var err error
		if tcp {
			resp, err = f.tcp(ctx, up, q)
		} else {
			resp, err = f.udp(ctx, i, q)
		}
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

func (f *Forwarder) deadline(ctx context.Context) time.Time {
	d := time.Now().Add(f.timeout)
	if cd, ok := ctx.Deadline(); ok && cd.Before(d) {
		d = cd
	}
	return d
}

var errClosed = errors.New("forwarder closed")

// mux returns a socket to upstream i, opening the upstream's sockets on
// first use.
func (f *Forwarder) mux(i int) (*udpMux, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil, errClosed
	}
	if f.muxes[i] == nil {
		for range muxPerUpstream {
			m, err := dialMux(f.upstreams[i])
			if err != nil {
				for _, o := range f.muxes[i] {
					o.close()
				}
				f.muxes[i] = nil
				return nil, err
			}
			f.muxes[i] = append(f.muxes[i], m)
		}
	}
	ms := f.muxes[i]
	return ms[int(f.next.Add(1))%len(ms)], nil
}

func (f *Forwarder) udp(ctx context.Context, i int, q *dns.Msg) (*dns.Msg, error) {
	m, err := f.mux(i)
	if err != nil {
		return nil, err
	}
	return m.exchange(q, f.deadline(ctx))
}

// udpMux is one connected UDP socket to an upstream, shared by concurrent
// queries: each is sent under a free ID of the socket's and its answer is
// handed to the waiting query by that ID.
type udpMux struct {
	conn *net.UDPConn

	mu      sync.Mutex
	waiting map[uint16]chan []byte
	closed  bool
}

func dialMux(up netip.AddrPort) (*udpMux, error) {
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(up))
	if err != nil {
		return nil, err
	}
	c.SetReadBuffer(1 << 20)
	m := &udpMux{conn: c, waiting: map[uint16]chan []byte{}}
	go m.read()
	return m, nil
}

func (m *udpMux) read() {
	buf := make([]byte, dns.MaxMsgSize)
	for {
		n, err := m.conn.Read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // ICMP port unreachable and the like: the query times out or the next one fails
		}
		if n < 12 {
			continue
		}
		id := uint16(buf[0])<<8 | uint16(buf[1])
		m.mu.Lock()
		ch := m.waiting[id]
		delete(m.waiting, id)
		m.mu.Unlock()
		if ch != nil {
			ch <- append([]byte(nil), buf[:n]...)
		}
	}
}

func (m *udpMux) close() {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	m.conn.Close()
}

func (m *udpMux) exchange(q *dns.Msg, deadline time.Time) (*dns.Msg, error) {
	wire, err := q.Pack()
	if err != nil {
		return nil, err
	}
	ch := make(chan []byte, 1)
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil, errClosed
	}
	var id uint16
	for {
		id = uint16(rand.Uint32())
		if _, busy := m.waiting[id]; !busy {
			break
		}
	}
	m.waiting[id] = ch
	m.mu.Unlock()
	wire[0], wire[1] = byte(id>>8), byte(id)
	forget := func() {
		m.mu.Lock()
		delete(m.waiting, id)
		m.mu.Unlock()
	}
	if _, err := m.conn.Write(wire); err != nil {
		forget()
		return nil, err
	}
	// UDP loses datagrams (a full socket buffer on a busy upstream): like a
	// stub resolver, send the same query once more when a third of the
	// time has passed without an answer. The answer to either goes to ch;
	// a second one finds no waiter and is dropped by read.
	resend := time.NewTimer(time.Until(deadline) / 3)
	defer resend.Stop()
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	var b []byte
wait:
	for {
		select {
		case b = <-ch:
			break wait
		case <-resend.C:
			m.conn.Write(wire) // a failure here leaves the first try to time out
		case <-t.C:
			forget()
			return nil, errors.New("timeout")
		}
	}
	resp := new(dns.Msg)
	if err := resp.Unpack(b); err != nil {
		if len(b) > 2 && b[2]&0x02 != 0 { // TC: a truncated answer may not unpack whole
			resp = new(dns.Msg)
			resp.SetReply(q)
			resp.Truncated = true
			return resp, nil
		}
		return nil, fmt.Errorf("unpacking the answer: %w", err)
	}
	if len(resp.Question) != len(q.Question) || (len(q.Question) > 0 && !strings.EqualFold(resp.Question[0].Name, q.Question[0].Name)) {
		return nil, errors.New("answer to another question")
	}
	return resp, nil
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
