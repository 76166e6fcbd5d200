// Package udpsock is a UDP socket served by blocking system calls: a reader
// sleeps in recvmmsg until the kernel wakes it with a batch of datagrams,
// and datagrams go out with sendto from whichever goroutine holds them.
// Go's network poller is not involved. For a server that answers each small
// datagram at once (twill's resolver, the testbed's upstream stand-in), the
// poller's wake-ups and hand-offs between threads cost more CPU than the
// answering: under dnsperf on two vCPUs they were most of twilld's time
// (README, "Names across hosts" benchmarks). Linux only.
package udpsock

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Socket is one UDP socket. Its methods are safe for concurrent use.
type Socket struct {
	fd     int
	closed atomic.Bool
	mu     sync.RWMutex // held for reading while fd is in use, for writing to close it
}

// readTimeout bounds a reader's sleep, so that it sees Close even where
// shutdown does not wake it.
const readTimeout = 200 * time.Millisecond

func newSocket(family int, setup func(fd int) error) (*Socket, error) {
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, err
	}
	tv := unix.NsecToTimeval(readTimeout.Nanoseconds())
	if err := errors.Join(unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv), setup(fd)); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return &Socket{fd: fd}, nil
}

func family(a netip.Addr) int {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

func sockaddr(a netip.AddrPort) unix.Sockaddr {
	if a.Addr().Is4() {
		return &unix.SockaddrInet4{Addr: a.Addr().As4(), Port: int(a.Port())}
	}
	sa := &unix.SockaddrInet6{Addr: a.Addr().As16(), Port: int(a.Port())}
	if z := a.Addr().Zone(); z != "" {
		if ifi, err := net.InterfaceByName(z); err == nil {
			sa.ZoneId = uint32(ifi.Index)
		}
	}
	return sa
}

// Listen binds addr (port 0: one the kernel picks), sharing the port with
// other sockets (SO_REUSEPORT: a restarted server binds while the old one
// closes), with a receive buffer of rcvbuf bytes (past rmem_max with
// CAP_NET_ADMIN, else what the kernel allows).
func Listen(addr netip.AddrPort, rcvbuf int) (*Socket, error) {
	return newSocket(family(addr.Addr()), func(fd int) error {
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvbuf) != nil {
			unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf)
		}
		return errors.Join(unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1), unix.Bind(fd, sockaddr(addr)))
	})
}

// Dial connects to a peer: only its datagrams are read.
func Dial(to netip.AddrPort) (*Socket, error) {
	return newSocket(family(to.Addr()), func(fd int) error {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 1<<20)
		return unix.Connect(fd, sockaddr(to))
	})
}

// LocalAddr is the address the socket is bound to.
func (s *Socket) LocalAddr() (netip.AddrPort, error) {
	sa, err := unix.Getsockname(s.fd)
	if err != nil {
		return netip.AddrPort{}, err
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)), nil
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port)), nil
	}
	return netip.AddrPort{}, fmt.Errorf("socket bound to %T", sa)
}

// rawSockaddr is room for an IPv4 or IPv6 socket address.
type rawSockaddr struct {
	unix.RawSockaddrInet6
}

func (r *rawSockaddr) set(a netip.AddrPort) uintptr {
	port := (*[2]byte)(unsafe.Pointer(&r.Port))
	port[0], port[1] = byte(a.Port()>>8), byte(a.Port())
	if a.Addr().Is4() {
		r4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(r))
		r4.Family = unix.AF_INET
		r4.Addr = a.Addr().As4()
		return unix.SizeofSockaddrInet4
	}
	r.Family = unix.AF_INET6
	r.Addr = a.Addr().As16()
	return unix.SizeofSockaddrInet6
}

func (r *rawSockaddr) addrPort() netip.AddrPort {
	port := (*[2]byte)(unsafe.Pointer(&r.Port))
	p := uint16(port[0])<<8 | uint16(port[1])
	if r.Family == unix.AF_INET {
		r4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(r))
		return netip.AddrPortFrom(netip.AddrFrom4(r4.Addr), p)
	}
	return netip.AddrPortFrom(netip.AddrFrom16(r.Addr).Unmap(), p)
}

// WriteToUDPAddrPort sends b to to.
func (s *Socket) WriteToUDPAddrPort(b []byte, to netip.AddrPort) (int, error) {
	var sa rawSockaddr
	n := sa.set(to)
	return s.send(b, uintptr(unsafe.Pointer(&sa)), n)
}

// Write sends b to the connected peer.
func (s *Socket) Write(b []byte) (int, error) { return s.send(b, 0, 0) }

func (s *Socket) send(b []byte, sa, salen uintptr) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed.Load() {
		return 0, net.ErrClosed
	}
	// Never blocking (a full send buffer is EAGAIN: the datagram is lost,
	// as on the wire), the call needs no hand-off of the thread's P to
	// another thread while the kernel delivers the datagram, which on a
	// veth or loopback it does within this call.
	n, _, errno := unix.RawSyscall6(unix.SYS_SENDTO, uintptr(s.fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), unix.MSG_DONTWAIT, sa, salen)
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// Serve reads datagrams in batches of up to batch until Close and hands
// each to fn with its sender, on the calling goroutine; b is valid during
// the call only. Datagrams over size bytes are dropped and counted by
// oversize (if not nil).
func (s *Socket) Serve(batch, size int, fn func(b []byte, from netip.AddrPort), oversize func()) {
	bufs := make([]byte, batch*size)
	names := make([]rawSockaddr, batch)
	iovs := make([]unix.Iovec, batch)
	hdrs := make([]unix.Mmsghdr, batch)
	for i := range hdrs {
		iovs[i].Base = &bufs[i*size]
		iovs[i].SetLen(size)
		hdrs[i].Hdr.Iov = &iovs[i]
		hdrs[i].Hdr.SetIovlen(1)
		hdrs[i].Hdr.Name = (*byte)(unsafe.Pointer(&names[i]))
	}
	for !s.closed.Load() {
		for i := range hdrs {
			hdrs[i].Hdr.Namelen = uint32(unsafe.Sizeof(names[i]))
			hdrs[i].Hdr.Flags = 0
		}
		s.mu.RLock()
		if s.closed.Load() {
			s.mu.RUnlock()
			return
		}
		// MSG_WAITFORONE: sleep until one datagram is there, then take
		// what else is queued without waiting.
		n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(s.fd), uintptr(unsafe.Pointer(&hdrs[0])), uintptr(batch), unix.MSG_WAITFORONE, 0, 0)
		s.mu.RUnlock()
		if errno != 0 {
			continue // the timeout, a signal, an ICMP error on a connected socket
		}
		for i := range int(n) {
			h := &hdrs[i]
			if h.Hdr.Flags&unix.MSG_TRUNC != 0 {
				if oversize != nil {
					oversize()
				}
				continue
			}
			fn(bufs[i*size:i*size+int(h.Len)], names[i].addrPort())
		}
	}
}

// Close wakes the readers (they return within readTimeout) and closes the
// socket once no call is using it.
func (s *Socket) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	unix.Shutdown(s.fd, unix.SHUT_RDWR) // wakes readers; ENOTCONN on an unconnected socket, but it does
	s.mu.Lock()
	defer s.mu.Unlock()
	return unix.Close(s.fd)
}
