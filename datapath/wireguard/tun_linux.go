package wireguard

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/twill-net/twill/internal/tundev"
)

const (
	maxPacket  = 65535
	ipv4Header = 20
	tcpHeader  = 20
	maxHeader  = 60 + 60
	// maxLayout bounds the header and segment a read expects (9000-byte
	// jumbo frames fit).
	maxLayout = 9216
)

// tunnel is an encrypted overlay's TUN as wireguard-go sees it, with the
// kernel's TCP segmentation and coalescing offloads and without the copies
// wireguard-go's own offloading TUN makes:
//
//   - Read scatters a TSO super-packet straight into wireguard-go's message
//     buffers (readv with one iovec per segment, laid out as the previous
//     super-packet was: the same header length and segment size), so only
//     each segment's header is written and its TCP checksum computed. A
//     packet laid out otherwise is gathered and split with copies.
//   - Write gathers consecutive in-order segments of one TCP flow into one
//     GSO write (writev: the first packet's header, then every payload where
//     it lies) and asks the kernel to trust the checksum, as kernel
//     WireGuard marks what it decrypts: the packets were authenticated
//     end to end, and their senders computed the checksums.
type tunnel struct {
	name   string
	file   *os.File
	rc     syscall.RawConn
	events chan tun.Event
	closed sync.Once

	// Read state: wireguard-go reads from one goroutine.
	vnet    [tundev.VnetHdrLen]byte
	slots   [][]byte // where the read's bytes go, in order
	riov    []unix.Iovec
	hl, mss int // the layout expected: the last super-packet's
	hdr     [maxHeader]byte
	scratch []byte // a packet gathered back together
	// pending is a gathered super-packet of more segments than the last
	// Read had buffers for: segments pendNext on go to the next Reads.
	pending           []byte
	pendMSS, pendNext int
	rn                int
	rerr              syscall.Errno
	block             bool
	readFn            func(fd uintptr) bool

	// Write state: every peer's receiver writes, one at a time through
	// the filter New puts in front.
	wiov    []unix.Iovec
	wcnt    int
	werr    syscall.Errno
	writeFn func(fd uintptr) bool

	malformed atomic.Uint64
	// out counts what Read hands wireguard-go until the bind sends it, in
	// what the bind received until Write delivers it; nil: unbounded.
	out, in *backlog
}

// openTunnel creates the TUN name with mtu and TSO/checksum offload; the
// error wraps tundev.ErrOffloadRefused when the kernel refuses those.
func openTunnel(name string, mtu int) (*tunnel, error) {
	d, err := tundev.Create(name, true, tundev.OffloadCsum|tundev.OffloadTSO4)
	if err != nil {
		return nil, err
	}
	t := &tunnel{
		name: d.Name, file: d.File, rc: d.RC, events: make(chan tun.Event, 1),
		hl: ipv4Header + tcpHeader + 12, mss: mtu - ipv4Header - tcpHeader - 12, // TCP with timestamps
		scratch: make([]byte, maxPacket), wiov: make([]unix.Iovec, 1+tundev.MaxRun),
	}
	t.readFn, t.writeFn = t.doRead, t.doWrite
	// No super-packet of more segments than wireguard-go reads at once.
	link, err := netlink.LinkByName(t.name)
	if err == nil {
		err = netlink.LinkSetMTU(link, mtu)
	}
	if err == nil {
		err = netlink.LinkSetGSOMaxSegs(link, conn.IdealBatchSize)
	}
	if err != nil {
		t.Close()
		return nil, fmt.Errorf("setting up tun %s (mtu %d): %w", t.name, mtu, err)
	}
	// routeTUN sets the link up; wireguard-go starts the device on this.
	t.events <- tun.EventUp
	return t, nil
}

func (t *tunnel) File() *os.File           { return t.file }
func (t *tunnel) Name() (string, error)    { return t.name, nil }
func (t *tunnel) Events() <-chan tun.Event { return t.events }
func (t *tunnel) BatchSize() int           { return conn.IdealBatchSize }

func (t *tunnel) MTU() (int, error) {
	link, err := netlink.LinkByName(t.name)
	if err != nil {
		return 0, fmt.Errorf("tun %s mtu: %w", t.name, err)
	}
	return link.Attrs().MTU, nil
}

// Close closes the fd (the kernel deletes the TUN) and the events.
func (t *tunnel) Close() error {
	var err error
	t.closed.Do(func() {
		if cerr := t.file.Close(); cerr != nil {
			err = fmt.Errorf("closing tun %s: %w", t.name, cerr)
		}
		close(t.events)
	})
	return err
}

func (t *tunnel) doRead(fd uintptr) bool {
	n, _, e := unix.RawSyscall(unix.SYS_READV, fd, uintptr(unsafe.Pointer(&t.riov[0])), uintptr(len(t.riov)))
	if e == unix.EAGAIN && t.block {
		return false // wait in the netpoller
	}
	t.rn, t.rerr = int(n), e
	return true
}

// Read reads packets into bufs[i][offset:]: one TUN read, then more while
// they come without waiting and bufs has room for another super-packet.
// Packets that cannot be used are counted and skipped, never an error: an
// error stops wireguard-go's device.
func (t *tunnel) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	t.out.admit()
	if t.pending != nil {
		n := t.splitPending(bufs, sizes, offset)
		t.out.read(n)
		return n, nil
	}
	n := 0
	defer func() { t.out.read(n) }()
	for len(bufs)-n >= t.room() || n == 0 {
		got, more, err := t.readPacket(bufs[n:], sizes[n:], offset, n == 0)
		n += got
		if err != nil {
			return n, err
		}
		if !more || t.pending != nil {
			break
		}
	}
	return n, nil
}

// splitPending splits what bufs takes of the pending super-packet.
func (t *tunnel) splitPending(bufs [][]byte, sizes []int, offset int) int {
	n := t.split(t.pending, t.pendMSS, t.pendNext, bufs, sizes, offset)
	t.pendNext += n
	if _, hl, _ := tundev.TCPHeaderLen(t.pending); t.pendNext*t.pendMSS >= len(t.pending)-hl {
		t.pending = nil
	}
	return n
}

// room is how many buffers a super-packet laid out as expected needs.
func (t *tunnel) room() int { return 1 + (maxPacket-t.hl+t.mss-1)/t.mss }

// readPacket reads one packet (a super-packet split into segments) into
// bufs. more is false when the TUN had nothing without waiting.
func (t *tunnel) readPacket(bufs [][]byte, sizes []int, offset int, block bool) (n int, more bool, err error) {
	// The layout: bufs[0] takes the header and the first segment, each
	// further buffer one segment after the header's room, the last buffer
	// everything left (so nothing is ever cut short).
	hl, mss := t.hl, t.mss
	slots := t.slots[:0]
	k := min(len(bufs), t.room())
	for i := range k {
		b := bufs[i][offset:]
		switch {
		case i == 0 && k == 1:
		case i == 0:
			b = b[:hl+mss]
		case i == k-1:
			b = b[hl:]
		default:
			b = b[hl : hl+mss]
		}
		slots = append(slots, b)
	}
	t.slots = slots
	iov := append(t.riov[:0], iovec(t.vnet[:]))
	for _, s := range slots {
		iov = append(iov, iovec(s))
	}
	t.riov = iov
	t.block = block
	if err := t.rc.Read(t.readFn); err != nil {
		return 0, false, fmt.Errorf("reading tun %s: %w", t.name, err)
	}
	switch t.rerr {
	case 0:
	case unix.EAGAIN, unix.EINTR:
		return 0, false, nil
	default:
		return 0, false, fmt.Errorf("reading tun %s: %w", t.name, t.rerr)
	}
	if t.rn <= tundev.VnetHdrLen {
		t.malformed.Add(1)
		return 0, true, nil
	}
	plen := t.rn - tundev.VnetHdrLen
	h := tundev.ParseVnetHdr(t.vnet[:])
	switch h.GSOType &^ tundev.VnetGSOECN {
	case tundev.VnetGSONone:
		if plen > len(bufs[0])-offset {
			t.malformed.Add(1)
			return 0, true, nil
		}
		pkt := bufs[0][offset : offset+plen]
		if plen > len(slots[0]) {
			copy(pkt, t.gather(plen)) // longer than the expected first segment
		}
		if h.Flags&tundev.VnetNeedsCsum != 0 && !tundev.CompleteChecksum(pkt, int(h.CsumStart), int(h.CsumOffset)) {
			t.malformed.Add(1)
			return 0, true, nil
		}
		sizes[0] = plen
		return 1, true, nil
	case tundev.VnetGSOTCPv4:
	default:
		t.malformed.Add(1) // never asked for (TSO6, USO)
		return 0, true, nil
	}
	ihl, phl, ok := tundev.TCPHeaderLen(slots[0][:min(plen, len(slots[0]))])
	gsoSize := int(h.GSOSize)
	if !ok || gsoSize == 0 || plen <= phl || phl+min(gsoSize, plen-phl) > len(bufs[0])-offset {
		t.malformed.Add(1)
		return 0, true, nil
	}
	segs := (plen - phl + gsoSize - 1) / gsoSize
	if phl != hl || gsoSize != mss || segs > len(slots) {
		// Laid out otherwise than expected: gather and split with copies,
		// and expect this layout next (a segment no larger than a TUN
		// packet could be: anything else is no flow's steady state).
		if phl+gsoSize <= maxLayout {
			t.hl, t.mss = phl, gsoSize
		}
		t.pending, t.pendMSS, t.pendNext = t.gather(plen), gsoSize, 0
		return t.splitPending(bufs, sizes, offset), true, nil
	}
	copy(t.hdr[:phl], slots[0][:phl])
	t.segment(ihl, phl, gsoSize, plen-phl, 0, segs, bufs, sizes, offset)
	return segs, true, nil
}

// gather copies the n bytes the last read spread over the slots into scratch.
func (t *tunnel) gather(n int) []byte {
	p := t.scratch[:0]
	for _, s := range t.slots {
		if len(p) == n {
			break
		}
		p = append(p, s[:min(len(s), n-len(p))]...)
	}
	return p
}

// split copies segments first, first+1, … of the TSO super-packet pkt
// (header and payload, cut at mss) into bufs, one each, as many as bufs
// takes, finishes their headers and returns how many it wrote.
func (t *tunnel) split(pkt []byte, mss, first int, bufs [][]byte, sizes []int, offset int) int {
	ihl, hl, _ := tundev.TCPHeaderLen(pkt)
	copy(t.hdr[:hl], pkt[:hl])
	payload := pkt[hl:]
	n := min(len(bufs), (len(payload)+mss-1)/mss-first)
	for j := range n {
		i := first + j
		copy(bufs[j][offset+hl:], payload[i*mss:min(len(payload), (i+1)*mss)])
	}
	t.segment(ihl, hl, mss, len(payload), first, n, bufs, sizes, offset)
	return n
}

// segment writes the headers of segments first … first+n-1 of a
// super-packet (payload bytes cut at mss) into bufs[0…n-1], whose
// payloads lie at offset+hl, from the super-packet's header in t.hdr, the
// way the kernel's TSO would: total length, IP id + i, seq + i*mss, FIN
// and PSH on the last segment only, CWR on the first only, checksums.
func (t *tunnel) segment(ihl, hl, mss, payload, first, n int, bufs [][]byte, sizes []int, offset int) {
	last := (payload+mss-1)/mss - 1
	for j := range n {
		i := first + j
		p := min(mss, payload-i*mss)
		s := bufs[j][offset : offset+hl+p]
		tundev.Segment(s[:hl], t.hdr[:hl], ihl, s[hl:], i, last, mss)
		sizes[j] = hl + p
	}
}

func iovec(b []byte) unix.Iovec {
	v := unix.Iovec{Base: &b[0]}
	v.SetLen(len(b))
	return v
}

func (t *tunnel) doWrite(fd uintptr) bool {
	_, _, e := unix.RawSyscall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&t.wiov[0])), uintptr(t.wcnt))
	if e == unix.EAGAIN {
		return false
	}
	t.werr = e
	return true
}

// Write writes bufs[i][offset:], coalescing runs of one TCP flow. It uses
// the offset bytes before each packet (wireguard-go's consumed message
// header) for the virtio_net_hdr.
func (t *tunnel) Write(bufs [][]byte, offset int) (int, error) {
	if offset < tundev.VnetHdrLen {
		return 0, fmt.Errorf("writing tun %s: offset %d leaves no room for the vnet header", t.name, offset)
	}
	defer t.in.sent(len(bufs))
	var (
		err   error
		start = 0 // bufs[start:start+r.Len()] are the run
		r     tundev.Run
	)
	flush := func() {
		if r.Len() > 0 {
			if werr := t.writeRun(bufs[start:start+r.Len()], offset, &r); werr != nil && err == nil {
				err = werr
			}
		}
		r = tundev.Run{}
	}
	for i, b := range bufs {
		pkt := b[offset:]
		hl, ok := tundev.Coalescable(pkt)
		if ok && r.Add(pkt, hl) {
			continue
		}
		flush()
		if ok {
			start = i
			r.Start(pkt, hl)
			continue
		}
		if werr := t.writeOne(b, offset); werr != nil && err == nil {
			err = werr
		}
	}
	flush()
	if err != nil {
		return 0, err
	}
	return len(bufs), nil
}

// writeRun writes a run as one GSO packet: the first packet's header fixed
// up for the whole, in place (the vnet header in the offset bytes before
// it), then every payload in place.
func (t *tunnel) writeRun(run [][]byte, offset int, r *tundev.Run) error {
	if len(run) == 1 {
		return t.writeOne(run[0], offset)
	}
	hl := r.HeaderLen()
	first := run[0][offset-tundev.VnetHdrLen:]
	r.Header(first[:tundev.VnetHdrLen+hl])
	t.wiov[0] = iovec(first[:tundev.VnetHdrLen+len(run[0])-offset])
	for i, b := range run[1:] {
		t.wiov[1+i] = iovec(b[offset+hl:])
	}
	return t.writev(len(run))
}

// writeOne writes one packet as it is, the kernel checking its checksum.
func (t *tunnel) writeOne(b []byte, offset int) error {
	v := b[offset-tundev.VnetHdrLen:]
	clear(v[:tundev.VnetHdrLen])
	t.wiov[0] = iovec(v)
	return t.writev(1)
}

func (t *tunnel) writev(n int) error {
	t.wcnt = n
	if err := t.rc.Write(t.writeFn); err != nil {
		return fmt.Errorf("writing tun %s: %w", t.name, err)
	}
	if t.werr != 0 {
		return fmt.Errorf("writing tun %s: %w", t.name, t.werr)
	}
	return nil
}

func (t *tunnel) drops() uint64 { return t.malformed.Load() }
