// Package udpsock is a UDP socket for servers that answer small datagrams
// at once (twill's resolver, the testbed's upstream stand-in): a reader
// takes every datagram queued with one recvmmsg, and answers go out with a
// sendto that never waits, from whichever goroutine holds them. The reader
// sleeps in Go's network poller between batches, so a busy socket costs one
// wake-up per batch rather than per datagram, and an idle one nothing.
// Measured under dnsperf on two vCPUs (README, "Names across hosts"): one
// reader batching beat two readers and a goroutine per datagram, and the
// poller beat blocking in recvmmsg on a thread (a reader coming back from
// the kernel then waits for a P that another sleeping reader still holds,
// for milliseconds at the 99th percentile). Linux only.
package udpsock

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Socket is one UDP socket. Its methods are safe for concurrent use.
type Socket struct {
	conn *net.UDPConn
	rc   syscall.RawConn
}

func newSocket(pc net.PacketConn, err error) (*Socket, error) {
	if err != nil {
		return nil, err
	}
	conn := pc.(*net.UDPConn)
	rc, err := conn.SyscallConn()
	if err != nil {
		conn.Close()
		return nil, err
	}
	return &Socket{conn: conn, rc: rc}, nil
}

// setsockopt returns a net.ListenConfig or net.Dialer Control function
// that applies set to the socket before it binds or connects.
func setsockopt(set func(fd int) error) func(string, string, syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = set(int(fd)) })
		return errors.Join(err, serr)
	}
}

// Listen binds addr (port 0: one the kernel picks), sharing the port with
// other sockets (SO_REUSEPORT: a restarted server binds while the old one
// closes), with a receive buffer of rcvbuf bytes (past rmem_max with
// CAP_NET_ADMIN, else what the kernel allows).
func Listen(addr netip.AddrPort, rcvbuf int) (*Socket, error) {
	lc := net.ListenConfig{Control: setsockopt(func(fd int) error {
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvbuf) != nil {
			unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf)
		}
		return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	})}
	return newSocket(lc.ListenPacket(context.Background(), "udp", addr.String()))
}

// Dial connects to a peer: only its datagrams are read.
func Dial(to netip.AddrPort) (*Socket, error) {
	d := net.Dialer{Control: setsockopt(func(fd int) error {
		return unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 1<<20)
	})}
	c, err := d.Dial("udp", to.String())
	if err != nil {
		return nil, err
	}
	return newSocket(c.(*net.UDPConn), nil)
}

// LocalAddr is the address the socket is bound to.
func (s *Socket) LocalAddr() netip.AddrPort {
	a := s.conn.LocalAddr().(*net.UDPAddr).AddrPort()
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
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
	return netip.AddrPortFrom(netip.AddrFrom16(r.Addr), p) // v4-mapped stays so: the answer goes back on an IPv6 socket
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
	var n uintptr
	var errno syscall.Errno
	// Never waiting (a full send buffer is EAGAIN: the datagram is lost, as
	// on the wire).
	err := s.rc.Write(func(fd uintptr) bool {
		n, _, errno = unix.RawSyscall6(unix.SYS_SENDTO, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), unix.MSG_DONTWAIT, sa, salen)
		return true
	})
	if err != nil {
		return 0, err
	}
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

// ErrOversize is what Serve reports for a datagram over its size, dropped.
var ErrOversize = errors.New("datagram over the reader's size, dropped")

// Serve reads datagrams in batches of up to batch until Close and hands
// each to fn with its sender, on the calling goroutine; b is valid during
// the call only. What is not a datagram goes to fail, if not nil, on the
// same goroutine: ErrOversize for a datagram over size bytes (dropped), or
// the read's error (syscall.ECONNREFUSED: an ICMP port unreachable from a
// connected socket's peer); reading goes on.
func (s *Socket) Serve(batch, size int, fn func(b []byte, from netip.AddrPort), fail func(error)) {
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
	errs := 0 // in a row
	for {
		for i := range hdrs {
			hdrs[i].Hdr.Namelen = uint32(unsafe.Sizeof(names[i]))
			hdrs[i].Hdr.Flags = 0
		}
		var n uintptr
		var errno syscall.Errno
		err := s.rc.Read(func(fd uintptr) bool {
			n, _, errno = unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&hdrs[0])), uintptr(batch), unix.MSG_DONTWAIT, 0, 0)
			return errno != unix.EAGAIN
		})
		if err != nil {
			return // closed
		}
		if errno != 0 {
			// A signal, an ICMP error on a connected socket: read on. One
			// that persists does not get to spin a CPU.
			if fail != nil && errno != unix.EINTR {
				fail(errno)
			}
			if errs++; errs > 100 {
				time.Sleep(10 * time.Millisecond)
			}
			continue
		}
		errs = 0
		for i := range int(n) {
			h := &hdrs[i]
			if h.Hdr.Flags&unix.MSG_TRUNC != 0 {
				if fail != nil {
					fail(ErrOversize)
				}
				continue
			}
			fn(bufs[i*size:i*size+int(h.Len)], names[i].addrPort())
		}
	}
}

// Close closes the socket; the readers return.
func (s *Socket) Close() error { return s.conn.Close() }
