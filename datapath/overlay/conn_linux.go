package overlay

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

const (
	udpCtrlSpace = 64 // per received message, room for the UDP_GRO cmsg
	maxSendMsgs  = maxSegments
	maxSendIovs  = 2 * maxSegments
)

var (
	segCmsgSpace = unix.CmsgSpace(2)
	segCmsgLen   = unix.CmsgLen(2)
)

// udpConn is the kernel UDP socket, non-blocking in Go's netpoller, moving
// batches with sendmmsg/recvmmsg, with UDP_SEGMENT (GSO) on send and
// UDP_GRO on receive when the kernel accepts them.
type udpConn struct {
	file *os.File
	rc   syscall.RawConn
	gso  atomic.Bool
	gro  bool

	rhdrs  []unix.Mmsghdr
	riov   []unix.Iovec
	rnames []unix.RawSockaddrInet4
	rctrl  []byte
	rcnt   int
	rn     int
	rerr   syscall.Errno
	readFn func(fd uintptr)
	ready  readyWait
	waitFn func(fd uintptr) bool

	whdrs   []unix.Mmsghdr
	wiov    []unix.Iovec
	wnames  []unix.RawSockaddrInet4
	wctrl   []byte
	wcnt    int
	wn      int
	werr    syscall.Errno
	writeFn func(fd uintptr) bool
}

var _ PacketConn = (*udpConn)(nil)

// listenUDP opens the socket on addr:port with bufSize bytes of socket
// buffers; with offload it turns on UDP GRO and probes UDP GSO.
func listenUDP(addr netip.Addr, port uint16, bufSize int, offload bool) (*udpConn, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, fmt.Errorf("opening udp socket: %w", err)
	}
	where := netip.AddrPortFrom(addr, port)
	if !addr.IsValid() {
		addr = netip.IPv4Unspecified()
		where = netip.AddrPortFrom(addr, port)
	}
	fail := func(what string, err error) (*udpConn, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("%s on udp %s: %w", what, where, err)
	}
	if !addr.Is4() {
		return fail("binding", fmt.Errorf("address %s is not IPv4: %w", addr, ErrInvalid))
	}
	// Several MB: the receiver must absorb GSO trains; the default 212 KB overflows.
	for _, o := range [][2]int{{unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}, {unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}} {
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, o[0], bufSize) != nil {
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, o[1], bufSize); err != nil {
				return fail("setting socket buffer", err)
			}
		}
	}
	sa := &unix.SockaddrInet4{Port: int(port), Addr: addr.As4()}
	if err := unix.Bind(fd, sa); err != nil {
		return fail("binding", err)
	}
	c := &udpConn{
		rhdrs: make([]unix.Mmsghdr, groBatch+plainBatch), riov: make([]unix.Iovec, groBatch+plainBatch),
		rnames: make([]unix.RawSockaddrInet4, groBatch+plainBatch), rctrl: make([]byte, (groBatch+plainBatch)*udpCtrlSpace),
		whdrs: make([]unix.Mmsghdr, maxSendMsgs), wiov: make([]unix.Iovec, maxSendIovs),
		wnames: make([]unix.RawSockaddrInet4, maxSendMsgs), wctrl: make([]byte, maxSendMsgs*segCmsgSpace),
	}
	if offload {
		if _, err := unix.GetsockoptInt(fd, unix.SOL_UDP, unix.UDP_SEGMENT); err == nil {
			c.gso.Store(true)
		}
		c.gro = unix.SetsockoptInt(fd, unix.SOL_UDP, unix.UDP_GRO, 1) == nil
	}
	c.file = os.NewFile(uintptr(fd), "udp:"+where.String())
	if c.rc, err = c.file.SyscallConn(); err != nil {
		c.file.Close()
		return nil, fmt.Errorf("udp %s: %w", where, err)
	}
	c.readFn, c.waitFn, c.writeFn = c.doRead, c.ready.check, c.doWrite
	return c, nil
}

func (c *udpConn) GSO() bool { return c.gso.Load() }
func (c *udpConn) GRO() bool { return c.gro }

// The fd is non-blocking: these system calls never sleep in the kernel.
func (c *udpConn) doRead(fd uintptr) {
	n, _, e := unix.RawSyscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&c.rhdrs[0])), uintptr(c.rcnt), 0, 0, 0)
	c.rn, c.rerr = int(n), e
}

func (c *udpConn) WaitRead() error {
	c.ready.reset()
	if err := c.rc.Read(c.waitFn); err != nil {
		return fmt.Errorf("receiving udp: %w", err)
	}
	return nil
}

func (c *udpConn) TryReadBatch(msgs []Message) (int, error) {
	n := min(len(msgs), len(c.rhdrs))
	for i := 0; i < n; i++ {
		b := msgs[i].Buffers[0]
		c.riov[i].Base = &b[0]
		c.riov[i].SetLen(len(b))
		h := &c.rhdrs[i].Hdr
		*h = unix.Msghdr{Name: (*byte)(unsafe.Pointer(&c.rnames[i])), Namelen: unix.SizeofSockaddrInet4, Iov: &c.riov[i]}
		h.SetIovlen(1)
		if c.gro {
			h.Control = &c.rctrl[i*udpCtrlSpace]
			h.SetControllen(udpCtrlSpace)
		}
	}
	c.rcnt = n
	// Control, not Read: it does not take the fd's read lock, which a
	// WaitRead in another goroutine holds while it sleeps.
	if err := c.rc.Control(c.readFn); err != nil {
		return 0, fmt.Errorf("receiving udp: %w", err)
	}
	switch c.rerr {
	case 0:
	case unix.EAGAIN, unix.EINTR:
		return 0, nil
	default:
		return 0, fmt.Errorf("receiving udp: %w", c.rerr)
	}
	for i := 0; i < c.rn; i++ {
		m := &msgs[i]
		m.N = int(c.rhdrs[i].Len)
		sa := &c.rnames[i]
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
		m.Addr = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port)
		m.Segment = 0
		if c.gro {
			m.Segment = groSegment(c.rctrl[i*udpCtrlSpace : i*udpCtrlSpace+int(c.rhdrs[i].Hdr.Controllen)])
		}
		// A datagram cut at the buffer's end (MSG_TRUNC) fills it: the caller
		// sizes buffers one byte above the MTU and drops it as oversize.
	}
	return c.rn, nil
}

// groSegment finds the UDP_GRO cmsg (an int: the segment size) in ctrl.
func groSegment(ctrl []byte) int {
	for len(ctrl) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&ctrl[0]))
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || l > len(ctrl) {
			return 0
		}
		if h.Level == unix.SOL_UDP && h.Type == unix.UDP_GRO && l >= unix.CmsgLen(4) {
			return int(*(*int32)(unsafe.Pointer(&ctrl[unix.CmsgLen(0)])))
		}
		sp := unix.CmsgSpace(l - unix.SizeofCmsghdr)
		if sp > len(ctrl) {
			return 0
		}
		ctrl = ctrl[sp:]
	}
	return 0
}

func (c *udpConn) doWrite(fd uintptr) bool {
	n, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&c.whdrs[0])), uintptr(c.wcnt), 0, 0, 0)
	if e == unix.EAGAIN || e == unix.EINTR {
		return false
	}
	c.wn, c.werr = int(n), e
	return true
}

var errNoSegmentation = fmt.Errorf("sending udp: %w", ErrNoSegmentation)

func (c *udpConn) WriteBatch(msgs []Message) (int, error) {
	n, iv := 0, 0
	for ; n < len(msgs) && n < len(c.whdrs); n++ {
		m := &msgs[n]
		if iv+len(m.Buffers) > len(c.wiov) {
			break
		}
		first := iv
		for _, b := range m.Buffers {
			if len(b) > 0 {
				c.wiov[iv].Base = &b[0]
				c.wiov[iv].SetLen(len(b))
				iv++
			}
		}
		sa := &c.wnames[n]
		sa.Family = unix.AF_INET
		binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:], m.Addr.Port())
		sa.Addr = m.Addr.Addr().As4()
		h := &c.whdrs[n].Hdr
		*h = unix.Msghdr{Name: (*byte)(unsafe.Pointer(sa)), Namelen: unix.SizeofSockaddrInet4}
		if iv > first {
			h.Iov = &c.wiov[first]
			h.SetIovlen(iv - first)
		}
		if m.Segment > 0 {
			ctrl := c.wctrl[n*segCmsgSpace : (n+1)*segCmsgSpace]
			ch := (*unix.Cmsghdr)(unsafe.Pointer(&ctrl[0]))
			ch.Level, ch.Type = unix.SOL_UDP, unix.UDP_SEGMENT
			ch.SetLen(segCmsgLen)
			*(*uint16)(unsafe.Pointer(&ctrl[unix.CmsgLen(0)])) = uint16(m.Segment)
			h.Control = &ctrl[0]
			h.SetControllen(segCmsgSpace)
		}
	}
	c.wcnt = n
	if err := c.rc.Write(c.writeFn); err != nil {
		return 0, fmt.Errorf("sending udp: %w", err)
	}
	if c.werr != 0 {
		if c.werr == unix.EIO && msgs[0].Segment > 0 {
			// No checksum offload on the way out: GSO is refused for good.
			c.gso.Store(false)
			return 0, errNoSegmentation
		}
		return 0, c.werr // counted by the caller; not wrapped to keep the hot path allocation-free
	}
	return c.wn, nil
}

func (c *udpConn) Close() error {
	if err := c.file.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("closing udp socket: %w", err)
	}
	return nil
}
