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
)

// Listener is one resolver address served over UDP and TCP.
type Listener struct {
	Addr netip.AddrPort
	udp  *dns.Server
	tcp  *dns.Server
	wg   sync.WaitGroup
}

// Listen binds addr over UDP and TCP (the address must be on the host
// already) and serves h on both until Close.
func Listen(addr netip.AddrPort, h dns.Handler) (*Listener, error) {
	pc, err := net.ListenPacket("udp", addr.String())
	if err != nil {
		return nil, fmt.Errorf("resolver %s/udp: %w (binding port 53 needs CAP_NET_BIND_SERVICE)", addr, err)
	}
	addr = pc.LocalAddr().(*net.UDPAddr).AddrPort() // port 0 (tests): TCP takes the same port
	ln, err := net.Listen("tcp", addr.String())
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("resolver %s/tcp: %w", addr, err)
	}
	l := &Listener{
		Addr: addr,
		udp:  &dns.Server{PacketConn: pc, Handler: h, UDPSize: dns.MaxMsgSize},
		// Idle TCP connections are closed after a few seconds; a client
		// sending nothing cannot hold one longer.
		tcp: &dns.Server{Listener: ln, Handler: h, ReadTimeout: 3 * time.Second, IdleTimeout: func() time.Duration { return 3 * time.Second }, MaxTCPQueries: 1000},
	}
	for _, s := range []*dns.Server{l.udp, l.tcp} {
		l.wg.Add(1)
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		go func() {
			defer l.wg.Done()
			s.ActivateAndServe()
		}()
		select {
		case <-started:
		case <-time.After(5 * time.Second):
		}
	}
	return l, nil
}

// Close stops serving and waits for the serving goroutines.
func (l *Listener) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := errors.Join(l.udp.ShutdownContext(ctx), l.tcp.ShutdownContext(ctx))
	l.wg.Wait()
	return err
}
