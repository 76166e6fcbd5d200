package names

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// Listener is one resolver address served over UDP and TCP.
type Listener struct {
	Addr netip.AddrPort
	udp  []*net.UDPConn
	tcp  *dns.Server
	wg   sync.WaitGroup
}

// udpBuffer is the receive buffer of each UDP socket: room for a burst of
// thousands of queries while the readers are descheduled.
const udpBuffer = 4 << 20

// reusePort lets several UDP sockets share the resolver's port, so that
// the kernel spreads queries over one reader per CPU, and gives each a
// large receive buffer (past rmem_max with CAP_NET_ADMIN, else what the
// kernel allows).
func reusePort(network, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
		if network == "udp" || network == "udp4" || network == "udp6" {
			if unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, udpBuffer) != nil {
				unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, udpBuffer)
			}
		}
	})
	return errors.Join(err, serr)
}

// Listen binds addr over UDP (one socket per CPU, up to four) and TCP (the
// address must be on the host already) and serves r on all until Close.
// Each UDP socket has one reader that answers in place (no goroutine per
// query): twill's names at once, the rest relayed upstream, the answer
// going back from the upstream socket's reader.
func Listen(addr netip.AddrPort, r *Resolver) (*Listener, error) {
	lc := net.ListenConfig{Control: reusePort}
	ctx := context.Background()
	l := &Listener{}
	n := min(max(runtime.GOMAXPROCS(0), 1), 4)
	var pcs []net.PacketConn
	closeAll := func() {
		for _, pc := range pcs {
			pc.Close()
		}
	}
	for i := range n {
		pc, err := lc.ListenPacket(ctx, "udp", addr.String())
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("resolver %s/udp: %w (binding port 53 needs CAP_NET_BIND_SERVICE)", addr, err)
		}
		if i == 0 {
			addr = pc.LocalAddr().(*net.UDPAddr).AddrPort() // port 0 (tests): the others take the same port
		}
		pcs = append(pcs, pc)
	}
	ln, err := net.Listen("tcp", addr.String())
	if err != nil {
		closeAll()
		return nil, fmt.Errorf("resolver %s/tcp: %w", addr, err)
	}
	l.Addr = addr
	for _, pc := range pcs {
		c := pc.(*net.UDPConn)
		l.udp = append(l.udp, c)
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			serveUDP(c, r)
		}()
	}
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

func serveUDP(c *net.UDPConn, r *Resolver) {
	buf := make([]byte, dns.MaxMsgSize)
	for {
		n, src, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		r.ServePacket(c, buf[:n], src)
	}
}

// Close stops serving and waits for the serving goroutines.
func (l *Listener) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	errs := []error{l.tcp.ShutdownContext(ctx)}
	for _, c := range l.udp {
		errs = append(errs, c.Close())
	}
	l.wg.Wait()
	return errors.Join(errs...)
}
