package wireguard

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
)

const (
	// maxSegments is the most datagrams in one UDP GSO train
	// (UDP_MAX_SEGMENTS) and in one UDP GRO receive (UDP_GRO_CNT_MAX).
	maxSegments = 64
	// maxPayload is the most a UDP/IPv4 datagram carries: the most a GSO
	// train sends and a GRO receive holds (GRO stops below 64 KiB for UDP).
	maxPayload = 1<<16 - 1 - 20 - 8
	// firstGuess is the segment size expected before a receive tells it: a
	// full WireGuard packet under a 1500-byte underlay (1420 + 32).
	firstGuess = 1452
	// socketBuffer is what StdNetBind asks for: the default 212 KB
	// overflows under GSO trains.
	socketBuffer = 7 << 20
	// maxEndpoints bounds the receiver's endpoints; past it they start over.
	maxEndpoints = 1024
)

// sendCtrlSpace is one train's control message: UDP_SEGMENT.
var sendCtrlSpace = unix.CmsgSpace(2)

// udpBind is the encrypted overlay's UDP socket, IPv4 only, as
// wireguard-go's StdNetBind without its two copies: a GSO train is sent
// from wireguard-go's buffers themselves, and a GRO receive is scattered
// by the kernel straight into one buffer per segment.
type udpBind struct {
	noGSO atomic.Bool // a train was refused (EIO): one datagram per buffer from then on
	sends sync.Pool   // *sendState

	mu   sync.Mutex
	conn *net.UDPConn // nil: closed
	rc   syscall.RawConn
	gso  bool // the socket takes UDP_SEGMENT

	// out is told of every packet sent, in of every packet received
	// (the TUN's Read and Write count the other ends); nil: none.
	out, in *backlog
}

var (
	_ conn.Bind     = (*udpBind)(nil)
	_ conn.Endpoint = (*endpoint)(nil)
)

func newUDPBind() *udpBind {
	b := &udpBind{}
	b.sends.New = func() any { return newSendState() }
	return b
}

// Open listens on 0.0.0.0:port (0: one the kernel picks) and returns the
// one ReceiveFunc reading it.
func (b *udpBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.conn != nil {
		return nil, 0, conn.ErrBindAlreadyOpen
	}
	var gro, gso bool
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		cerr := c.Control(func(fd uintptr) {
			s := int(fd)
			for _, o := range [][2]int{{unix.SO_RCVBUFFORCE, unix.SO_RCVBUF}, {unix.SO_SNDBUFFORCE, unix.SO_SNDBUF}} {
				if unix.SetsockoptInt(s, unix.SOL_SOCKET, o[0], socketBuffer) != nil {
					unix.SetsockoptInt(s, unix.SOL_SOCKET, o[1], socketBuffer) // without CAP_NET_ADMIN: up to the sysctl's max
				}
			}
			// The local address a peer reached, for the endpoint's SrcIP.
			err = unix.SetsockoptInt(s, unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
			gro = unix.SetsockoptInt(s, unix.SOL_UDP, unix.UDP_GRO, 1) == nil
			_, serr := unix.GetsockoptInt(s, unix.SOL_UDP, unix.UDP_SEGMENT)
			gso = serr == nil
		})
		return errors.Join(cerr, err)
	}}
	pc, err := lc.ListenPacket(context.Background(), "udp4", ":"+strconv.Itoa(int(port)))
	if err != nil {
		return nil, 0, fmt.Errorf("opening wireguard socket: %w", err)
	}
	uc := pc.(*net.UDPConn)
	rc, err := uc.SyscallConn()
	if err != nil {
		uc.Close()
		return nil, 0, fmt.Errorf("opening wireguard socket: %w", err)
	}
	b.conn, b.rc, b.gso = uc, rc, gso
	actual := uint16(uc.LocalAddr().(*net.UDPAddr).Port)
	r := newReceiver(rc, gro, "udp port "+strconv.Itoa(int(actual)))
	r.backlog = b.in
	return []conn.ReceiveFunc{r.receive}, actual, nil
}

// Close closes the socket: its ReceiveFunc returns net.ErrClosed.
func (b *udpBind) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.conn == nil {
		return nil
	}
	err := b.conn.Close()
	b.conn, b.rc = nil, nil
	return err
}

// SetMark sets SO_MARK on the open socket; closed, it does nothing.
func (b *udpBind) SetMark(mark uint32) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.rc == nil {
		return nil
	}
	var serr error
	err := b.rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark)) })
	if err = errors.Join(err, serr); err != nil {
		return fmt.Errorf("setting mark %#x on wireguard socket: %w", mark, err)
	}
	return nil
}

func (b *udpBind) BatchSize() int { return conn.IdealBatchSize }

// ParseEndpoint reads a peer's ip:port; the underlay is IPv4 only.
func (b *udpBind) ParseEndpoint(s string) (conn.Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, fmt.Errorf("wireguard endpoint: %w", err)
	}
	a := ap.Addr().Unmap()
	if !a.Is4() {
		return nil, fmt.Errorf("wireguard endpoint %s: not IPv4 (the underlay is IPv4 only): %w", s, ErrInvalid)
	}
	return &endpoint{dst: netip.AddrPortFrom(a, ap.Port())}, nil
}

// Send sends bufs to ep, each run of equal lengths as one GSO train.
// It waits while the socket's buffer is full.
func (b *udpBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	e, ok := ep.(*endpoint)
	if !ok {
		return conn.ErrWrongEndpointType
	}
	b.mu.Lock()
	rc, gso := b.rc, b.gso
	b.mu.Unlock()
	if rc == nil {
		return fmt.Errorf("sending udp to %s: %w", e.dst, net.ErrClosed)
	}
	gso = gso && !b.noGSO.Load()
	defer b.out.sent(len(bufs))
	s := b.sends.Get().(*sendState)
	defer b.sends.Put(s)
	s.grow(len(bufs))
	for {
		s.pack(bufs, e, gso)
		err := s.send(rc)
		if err == nil {
			return nil
		}
		// UDP_SEGMENT needs checksum offload on the way out: a device
		// without it refuses every train with EIO.
		if gso && errors.Is(err, unix.EIO) && s.hdrs[s.next].Hdr.Iovlen > 1 {
			b.noGSO.Store(true)
			gso = false
			bufs = bufs[s.bufsSent():]
			continue
		}
		return fmt.Errorf("sending udp to %s: %w", e.dst, err)
	}
}

// sendState is one Send's messages: Sends to several peers run at once.
type sendState struct {
	hdrs []unix.Mmsghdr
	iovs []unix.Iovec // one per buffer: the buffer itself
	ctrl []byte       // sendCtrlSpace per message
	to   unix.RawSockaddrInet4

	next, count int // hdrs[next:count] are still to go
	sent        int // by the last sendmmsg
	errno       syscall.Errno
	write       func(fd uintptr) bool // s.sendmmsg, bound once: no allocation per Send
}

func newSendState() *sendState {
	s := &sendState{}
	s.grow(conn.IdealBatchSize)
	s.write = s.sendmmsg
	return s
}

func (s *sendState) grow(n int) {
	if n > len(s.iovs) {
		s.hdrs, s.iovs, s.ctrl = make([]unix.Mmsghdr, n), make([]unix.Iovec, n), make([]byte, n*sendCtrlSpace)
	}
}

// pack lays bufs out as messages to e: with gso, each run of bufs of one
// length (the last may be shorter) is one train, up to maxSegments and
// maxPayload; without, one datagram per buf.
func (s *sendState) pack(bufs [][]byte, e *endpoint, gso bool) {
	s.to = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: e.dst.Addr().As4()}
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&s.to.Port))[:], e.dst.Port())
	s.next, s.count = 0, 0
	for i := 0; i < len(bufs); {
		seg := len(bufs[i])
		j, size := i+1, seg
		for gso && seg > 0 && j < len(bufs) && j-i < maxSegments && len(bufs[j]) <= seg && size+len(bufs[j]) <= maxPayload {
			size += len(bufs[j])
			j++
			if len(bufs[j-1]) < seg {
				break // a shorter buffer ends a train
			}
		}
		for k := i; k < j; k++ {
			s.iovs[k] = unix.Iovec{Base: unsafe.SliceData(bufs[k])}
			s.iovs[k].SetLen(len(bufs[k]))
		}
		c, l := s.ctrl[s.count*sendCtrlSpace:(s.count+1)*sendCtrlSpace], 0
		if j-i > 1 {
			d, space := putCmsg(c, unix.SOL_UDP, unix.UDP_SEGMENT, 2)
			binary.NativeEndian.PutUint16(d, uint16(seg))
			l += space
		}
		h := &s.hdrs[s.count].Hdr
		*h = unix.Msghdr{Name: (*byte)(unsafe.Pointer(&s.to)), Namelen: unix.SizeofSockaddrInet4, Iov: &s.iovs[i]}
		h.SetIovlen(j - i)
		if l > 0 {
			h.Control = &c[0]
			h.SetControllen(l)
		}
		s.count++
		i = j
	}
}

// putCmsg writes a control message header at c for n bytes of data and
// returns the data and the message's space.
func putCmsg(c []byte, level, typ int32, n int) ([]byte, int) {
	h := (*unix.Cmsghdr)(unsafe.Pointer(&c[0]))
	h.Level, h.Type = level, typ
	h.SetLen(unix.CmsgLen(n))
	return c[unix.CmsgLen(0):unix.CmsgLen(n)], unix.CmsgSpace(n)
}

// send sends the packed messages, waiting while the socket is full; on an
// error, hdrs[next] is the message refused.
func (s *sendState) send(rc syscall.RawConn) error {
	for s.next < s.count {
		if err := rc.Write(s.write); err != nil {
			return err
		}
		if s.errno != 0 {
			return s.errno
		}
		s.next += s.sent
	}
	return nil
}

// The fd is non-blocking: sendmmsg never sleeps in the kernel.
func (s *sendState) sendmmsg(fd uintptr) bool {
	for {
		n, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&s.hdrs[s.next])), uintptr(s.count-s.next), 0, 0, 0)
		switch e {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false // the netpoller waits until the socket is writable
		}
		s.sent, s.errno = int(n), e
		return true
	}
}

// bufsSent is how many buffers the messages before hdrs[next] held.
func (s *sendState) bufsSent() int {
	n := 0
	for _, h := range s.hdrs[:s.next] {
		n += int(h.Hdr.Iovlen)
	}
	return n
}

// endpoint is a peer's address and, from its datagram, the local address
// and interface the datagram arrived on (SrcIP, for wireguard-go's logs).
// Replies leave from the address the kernel picks, as on udp overlays:
// pinning them to this source (IP_PKTINFO on send, as StdNetBind does) was
// seen to lose first handshakes between hosts in the multi-host tests, for
// reasons not found yet. Only ClearSrc changes an endpoint, so the
// receiver hands out one value for every datagram from a sender.
type endpoint struct {
	dst     netip.AddrPort
	src     netip.Addr // invalid: none, the kernel picks
	ifindex int32
	cleared atomic.Bool // ClearSrc was called: src and ifindex are not used
}

func (e *endpoint) source() (netip.Addr, int32) {
	if e.cleared.Load() {
		return netip.Addr{}, 0
	}
	return e.src, e.ifindex
}

func (e *endpoint) ClearSrc()           { e.cleared.Store(true) }
func (e *endpoint) SrcIP() netip.Addr   { a, _ := e.source(); return a }
func (e *endpoint) DstIP() netip.Addr   { return e.dst.Addr() }
func (e *endpoint) DstToString() string { return e.dst.String() }

func (e *endpoint) SrcToString() string {
	if a := e.SrcIP(); a.IsValid() {
		return a.String()
	}
	return ""
}

// DstToBytes is the peer's address as StdNetEndpoint encodes it: what the
// device's cookies (a handshake's mac2) are computed over.
func (e *endpoint) DstToBytes() []byte {
	b, _ := e.dst.MarshalBinary()
	return b
}

// receiver is the ReceiveFunc of one socket; wireguard-go calls it from
// one goroutine. It scatters each datagram across consecutive packets:
// with UDP_GRO the kernel hands over a train of up to maxSegments
// coalesced segments, copied in order across the iovecs, so iovecs of the
// segment size put each segment alone in its own packet. The size is
// guessed from the last train; a wrong guess is repaired by a copy.
type receiver struct {
	rc    syscall.RawConn
	gro   bool   // the socket coalesces: a datagram may need maxSegments packets
	seg   int    // the guess: the last train's segment size
	where string // for errors

	hdr   unix.Msghdr
	iovs  [maxSegments]unix.Iovec
	from  unix.RawSockaddrInet4
	ctrl  []byte // IP_PKTINFO and UDP_GRO
	wait  bool   // the read in progress waits for a datagram
	n     int
	errno syscall.Errno
	read  func(fd uintptr) bool // r.recvmsg, bound once: no allocation per call

	scratch []byte // repairs; allocated by the first
	eps     map[epKey]*endpoint
	backlog *backlog // received, not yet written to the TUN; nil: unbounded
}

// epKey is a sender and the local address and interface it reached.
type epKey struct {
	from    [4]byte
	port    uint16
	local   [4]byte
	ifindex int32
}

func newReceiver(rc syscall.RawConn, gro bool, where string) *receiver {
	r := &receiver{rc: rc, gro: gro, seg: firstGuess, where: where, ctrl: make([]byte, 64), eps: map[epKey]*endpoint{}}
	r.read = r.recvmsg
	return r
}

// receive waits for a datagram, then takes what else is queued while
// packets has room for the largest train.
func (r *receiver) receive(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
	need := 1
	if r.gro {
		need = maxSegments
	}
	r.backlog.admit()
	n := 0
	defer func() { r.backlog.read(n) }()
	for n == 0 || len(packets)-n >= need {
		r.wait = n == 0
		r.scatter(packets[n:min(len(packets), n+need)])
		err := r.rc.Read(r.read)
		if err == nil && r.errno == unix.EAGAIN {
			break
		}
		if err == nil && r.errno != 0 {
			err = r.errno
		}
		if err != nil {
			if n > 0 {
				break // the next call reports it
			}
			return 0, fmt.Errorf("receiving on wireguard %s: %w", r.where, err)
		}
		n += r.split(packets[n:], sizes[n:], eps[n:])
	}
	return n, nil
}

// scatter points the iovecs at packets: the guess's size of each, and all
// of the last, so that no datagram is ever cut.
func (r *receiver) scatter(packets [][]byte) {
	for i, p := range packets {
		if i < len(packets)-1 {
			p = p[:min(r.seg, len(p))]
		}
		r.iovs[i] = unix.Iovec{Base: unsafe.SliceData(p)}
		r.iovs[i].SetLen(len(p))
	}
	r.hdr = unix.Msghdr{Name: (*byte)(unsafe.Pointer(&r.from)), Namelen: unix.SizeofSockaddrInet4, Iov: &r.iovs[0], Control: &r.ctrl[0]}
	r.hdr.SetIovlen(len(packets))
	r.hdr.SetControllen(len(r.ctrl))
}

// The fd is non-blocking: recvmsg never sleeps in the kernel.
func (r *receiver) recvmsg(fd uintptr) bool {
	for {
		n, _, e := unix.RawSyscall(unix.SYS_RECVMSG, fd, uintptr(unsafe.Pointer(&r.hdr)), 0)
		if e == unix.EINTR {
			continue
		}
		if e == unix.EAGAIN && r.wait {
			return false // the netpoller waits until the socket is readable
		}
		r.n, r.errno = int(n), e
		return true
	}
}

// split turns the datagram just read into messages, one per segment, each
// from the start of its packet, and returns how many.
func (r *receiver) split(packets [][]byte, sizes []int, eps []conn.Endpoint) int {
	n, gso := r.n, 0
	var info [unix.SizeofInet4Pktinfo]byte
	for c := r.ctrl[:r.hdr.Controllen]; len(c) >= unix.SizeofCmsghdr; {
		h, data, rest, err := unix.ParseOneSocketControlMessage(c)
		if err != nil {
			break
		}
		switch {
		case h.Level == unix.IPPROTO_IP && h.Type == unix.IP_PKTINFO && len(data) >= len(info):
			info = [unix.SizeofInet4Pktinfo]byte(data)
		case h.Level == unix.SOL_UDP && h.Type == unix.UDP_GRO && len(data) >= 4:
			gso = int(int32(binary.NativeEndian.Uint32(data))) // an int: the segment size
		}
		c = rest
	}
	if r.hdr.Flags&unix.MSG_TRUNC != 0 {
		n, gso = 0, 0 // never, with a whole last packet; else dropped as empty
	}
	slots := int(r.hdr.Iovlen)
	// Each segment starts its own packet when the guess was right, or when
	// a plain datagram fit the first iovec.
	fits := gso == r.seg || (gso == 0 && n <= int(r.iovs[0].Len))
	seg := gso
	if seg == 0 {
		seg = max(n, 1) // a plain datagram is one segment
	}
	count := max(1, min((n+seg-1)/seg, slots))
	if !fits {
		r.repair(packets[:slots], n, seg, count)
	}
	ep := r.endpoint(info)
	for i := range count {
		sizes[i] = min(seg, n-i*seg)
		eps[i] = ep
	}
	if gso > 0 {
		r.seg = gso
	} else if n > r.seg {
		r.seg = n // plain datagrams this large fit the next time
	}
	return count
}

// repair moves a datagram that the guess did not fit, whose n bytes the
// kernel wrote in order across the iovecs, to seg bytes per packet.
// Rare, so through a copy.
func (r *receiver) repair(packets [][]byte, n, seg, count int) {
	if r.scratch == nil {
		r.scratch = make([]byte, 0, 1<<16)
	}
	s := r.scratch[:0]
	for i := 0; len(s) < n; i++ {
		s = append(s, packets[i][:min(int(r.iovs[i].Len), n-len(s))]...)
	}
	for i := range count {
		copy(packets[i], s[i*seg:min(n, (i+1)*seg)])
	}
}

// endpoint is the sender of the datagram just read, with the local
// address and interface it reached (IP_PKTINFO: ifindex, ipi_spec_dst).
// A sender seen before gets the same value: no allocation per datagram.
func (r *receiver) endpoint(info [unix.SizeofInet4Pktinfo]byte) *endpoint {
	k := epKey{
		from:    r.from.Addr,
		port:    binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&r.from.Port))[:]),
		local:   [4]byte(info[4:8]),
		ifindex: int32(binary.NativeEndian.Uint32(info[:4])),
	}
	if e := r.eps[k]; e != nil && !e.cleared.Load() {
		return e
	}
	if len(r.eps) >= maxEndpoints {
		clear(r.eps)
	}
	e := &endpoint{dst: netip.AddrPortFrom(netip.AddrFrom4(k.from), k.port), ifindex: k.ifindex}
	if k.local != ([4]byte{}) {
		e.src = netip.AddrFrom4(k.local)
	}
	r.eps[k] = e
	return e
}
