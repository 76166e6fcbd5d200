package names

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// DefaultResolvConf is where the host's resolvers are read from when no
// upstream is set.
const DefaultResolvConf = "/etc/resolv.conf"

// Forwarder sends queries twill does not answer to upstream resolvers, in
// order, the next one when one fails or times out, as Docker's resolver
// does; the first answer (NXDOMAIN included) ends the lookup. UDP queries go
// over a small pool of connected sockets per upstream (one query at a time
// each, so a late answer never meets another query), TCP ones over a fresh
// connection each.
type Forwarder struct {
	upstreams []netip.AddrPort
	timeout   time.Duration // per upstream try
	pools     []chan *dns.Conn
}

// poolSize is how many idle UDP sockets are kept per upstream.
const poolSize = 64

// NewForwarder forwards to upstreams, giving each try timeout (0 = 2 s).
func NewForwarder(upstreams []netip.AddrPort, timeout time.Duration) *Forwarder {
	if timeout == 0 {
		timeout = 2 * time.Second
	}
	f := &Forwarder{upstreams: upstreams, timeout: timeout}
	for range upstreams {
		f.pools = append(f.pools, make(chan *dns.Conn, poolSize))
	}
	return f
}

// Upstreams lists where queries go.
func (f *Forwarder) Upstreams() []netip.AddrPort { return f.upstreams }

// ErrNoUpstream is returned when no upstream resolver is configured.
var ErrNoUpstream = errors.New("no upstream resolver (set TWILL_DNS_UPSTREAM, or give the host a nameserver in /etc/resolv.conf)")

// Exchange forwards q as it is (its EDNS0 record included, so the upstream
// sizes its answer for the client) and returns the first answer.
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

func (f *Forwarder) udp(ctx context.Context, i int, q *dns.Msg) (*dns.Msg, error) {
	var c *dns.Conn
	select {
	case c = <-f.pools[i]:
	default:
		nc, err := net.Dial("udp", f.upstreams[i].String())
		if err != nil {
			return nil, err
		}
		c = &dns.Conn{Conn: nc, UDPSize: dns.MaxMsgSize}
	}
	c.SetDeadline(f.deadline(ctx))
	resp, err := exchangeOn(c, q)
	if err != nil {
		c.Close() // a late answer must not meet the next query
		return nil, err
	}
	select {
	case f.pools[i] <- c:
	default:
		c.Close()
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
