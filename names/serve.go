package names

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/twill-net/twill/internal/udpsock"
)

// Listener is one resolver address served over UDP and TCP.
type Listener struct {
	Addr netip.AddrPort
	udp  *udpsock.Socket
	tcp  *dns.Server
	wg   sync.WaitGroup
}

// udpBuffer is the receive buffer of the UDP socket: room for a burst of
// thousands of queries while the reader is descheduled.
const udpBuffer = 4 << 20

// Sizes of the UDP reader's batches: a query over 4 KB is no query.
const (
	queryBatch = 32
	maxQuery   = 4096
)

// Listen binds addr over UDP and TCP (the address must be on the host
// already) and serves r on both until Close. UDP queries are read in
// batches by one reader, which answers in place: twill's names at once, the
// rest relayed upstream, the answer going back from the upstream socket's
// reader. No goroutine is started per query; one reader batching what
// queued while it worked costs less CPU than readers woken per query (two
// readers: 31 µs of twilld's CPU per local answer under dnsperf; one: 18).
func Listen(addr netip.AddrPort, r *Resolver) (*Listener, error) {
	us, err := udpsock.Listen(addr, udpBuffer)
	if err != nil {
		return nil, fmt.Errorf("resolver %s/udp: %w (binding port 53 needs CAP_NET_BIND_SERVICE)", addr, err)
	}
	addr = us.LocalAddr() // port 0 (tests): TCP takes the same
	ln, err := net.Listen("tcp", addr.String())
	if err != nil {
		us.Close()
		return nil, fmt.Errorf("resolver %s/tcp: %w", addr, err)
	}
	l := &Listener{Addr: addr, udp: us}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		us.Serve(queryBatch, maxQuery, func(b []byte, from netip.AddrPort) { r.ServePacket(us, b, from) },
			func(err error) {
				if errors.Is(err, udpsock.ErrOversize) {
					r.Stats.count(Malformed)
				}
			})
	}()
	// Idle TCP connections are closed after a few seconds; a client
	// sending nothing cannot hold one longer.
	l.tcp = &dns.Server{Listener: ln, Handler: r, ReadTimeout: 3 * time.Second,
		IdleTimeout: func() time.Duration { return 3 * time.Second }, MaxTCPQueries: 1000}
	started := make(chan struct{})
	l.tcp.NotifyStartedFunc = func() { close(started) }
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		l.tcp.ActivateAndServe()
	}()
	select {
	case <-started:
	case <-time.After(5 * time.Second):
	}
	return l, nil
}

// Close stops serving and waits for the serving goroutines.
func (l *Listener) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := errors.Join(l.tcp.ShutdownContext(ctx), l.udp.Close())
	l.wg.Wait()
	return err
}
