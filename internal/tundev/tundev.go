// Package tundev creates the Linux TUN devices the datapaths forward
// through: a non-blocking fd parked in Go's netpoller (so Close wakes a
// pending read), optionally with the virtio_net_hdr before every packet and
// the kernel's TCP segmentation and checksum offloads; and it splits and
// merges the TCP segments those offloads hand over and take.
package tundev

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/twill-net/twill/internal/csum"
)

// The virtio_net_hdr that precedes every packet on a TUN opened with vnet
// (include/uapi/linux/virtio_net.h; little endian on every platform twill
// runs on).
const (
	VnetHdrLen    = 10
	VnetNeedsCsum = 1 // flags: the checksum at CsumStart+CsumOffset is to be completed
	VnetGSONone   = 0
	VnetGSOTCPv4  = 1
	VnetGSOECN    = 0x80
)

// TUNSETOFFLOAD flags (include/uapi/linux/if_tun.h; not in x/sys/unix).
const (
	OffloadCsum = 0x01
	OffloadTSO4 = 0x02
)

// VnetHdr is a virtio_net_hdr.
type VnetHdr struct {
	Flags, GSOType                         uint8
	HdrLen, GSOSize, CsumStart, CsumOffset uint16
}

// ParseVnetHdr reads the virtio_net_hdr at the start of b (VnetHdrLen bytes).
func ParseVnetHdr(b []byte) VnetHdr {
	return VnetHdr{
		Flags:      b[0],
		GSOType:    b[1],
		HdrLen:     binary.LittleEndian.Uint16(b[2:4]),
		GSOSize:    binary.LittleEndian.Uint16(b[4:6]),
		CsumStart:  binary.LittleEndian.Uint16(b[6:8]),
		CsumOffset: binary.LittleEndian.Uint16(b[8:10]),
	}
}

// Put writes h at the start of b (VnetHdrLen bytes).
func (h VnetHdr) Put(b []byte) {
	b[0], b[1] = h.Flags, h.GSOType
	binary.LittleEndian.PutUint16(b[2:4], h.HdrLen)
	binary.LittleEndian.PutUint16(b[4:6], h.GSOSize)
	binary.LittleEndian.PutUint16(b[6:8], h.CsumStart)
	binary.LittleEndian.PutUint16(b[8:10], h.CsumOffset)
}

// ErrOffloadRefused is wrapped when the kernel refuses the vnet header or
// the offloads: a plain TUN still works.
var ErrOffloadRefused = errors.New("tun offloads refused")

// Device is an open TUN.
type Device struct {
	Name string // as the kernel named it
	File *os.File
	RC   syscall.RawConn
}

// Create creates (or attaches to a persistent) TUN name. With vnet it
// asks for the virtio_net_hdr and offloads (OffloadCsum, OffloadTSO4).
func Create(name string, vnet bool, offloads int) (Device, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return Device{}, fmt.Errorf("opening /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return Device{}, fmt.Errorf("tun name %q: %w", name, err)
	}
	flags := uint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if vnet {
		flags |= unix.IFF_VNET_HDR
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		if vnet {
			err = fmt.Errorf("%w (%w)", err, ErrOffloadRefused)
		}
		return Device{}, fmt.Errorf("creating tun %s: %w", name, err)
	}
	if vnet {
		if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, offloads); err != nil {
			unix.Close(fd)
			return Device{}, fmt.Errorf("enabling offloads on tun %s: %w (%w)", name, err, ErrOffloadRefused)
		}
	}
	f := os.NewFile(uintptr(fd), "/dev/net/tun")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return Device{}, fmt.Errorf("tun %s: %w", name, err)
	}
	return Device{Name: ifr.Name(), File: f, RC: rc}, nil
}

// Sizes of the headers a TUN's offloads deal in.
const (
	ipv4Header = 20 // without options
	tcpHeader  = 20 // without options
	maxPacket  = 65535
	// MaxRun is the most segments one coalesced write carries.
	MaxRun = 128
)

// TCPHeaderLen returns the IPv4 header length and the IPv4+TCP header
// length of pkt, or false when pkt does not start with both.
func TCPHeaderLen(pkt []byte) (ihl, hl int, ok bool) {
	if len(pkt) < ipv4Header+tcpHeader || pkt[0]>>4 != 4 || pkt[9] != unix.IPPROTO_TCP {
		return 0, 0, false
	}
	ihl = int(pkt[0]&0x0f) * 4
	if ihl < ipv4Header || len(pkt) < ihl+tcpHeader {
		return 0, 0, false
	}
	thl := int(pkt[ihl+12]>>4) * 4
	if thl < tcpHeader || len(pkt) < ihl+thl {
		return 0, 0, false
	}
	return ihl, ihl + thl, true
}

// CompleteChecksum finishes the partial checksum (CHECKSUM_PARTIAL) of a
// packet read with VnetNeedsCsum: the field at start+off holds the
// pseudo-header sum, the packet from start on is summed over it. Small
// packets (ACKs, UDP) come so and would be dropped by their receiver
// unless completed. False: start or off lie outside pkt.
func CompleteChecksum(pkt []byte, start, off int) bool {
	if start < ipv4Header || start+off+2 > len(pkt) {
		return false
	}
	c := ^csum.Fold(csum.Add(pkt[start:], 0))
	if c == 0 {
		c = 0xffff // a zero UDP checksum means "none"; for TCP both are the same
	}
	binary.BigEndian.PutUint16(pkt[start+off:], c)
	return true
}

// Coalescable reports whether pkt is an IPv4 TCP data segment a GSO write
// to the TUN may merge with its neighbours: no IP options or fragments,
// flags ACK or ACK|PSH, some payload. hl is its IPv4+TCP header length.
func Coalescable(pkt []byte) (hl int, ok bool) {
	if len(pkt) < ipv4Header+tcpHeader || pkt[0] != 0x45 || pkt[9] != unix.IPPROTO_TCP {
		return 0, false
	}
	if binary.BigEndian.Uint16(pkt[6:8])&0x3fff != 0 { // MF or a fragment offset
		return 0, false
	}
	thl := int(pkt[ipv4Header+12]>>4) * 4
	hl = ipv4Header + thl
	if thl < tcpHeader || len(pkt) <= hl || pkt[ipv4Header+13]&^flagPSH != flagACK {
		return 0, false
	}
	return hl, true
}

// Run is a run of consecutive, in-order TCP segments of one flow
// (Coalescable, each with the first's addresses, ports, ack, window,
// options, TOS, TTL and DF) that one GSO write to the TUN can carry: the
// first segment's header fixed up for the whole (Header), then every
// segment's payload. The zero Run is empty.
type Run struct {
	first          []byte // the first segment, whole
	hl, mss        int    // its header length and payload length
	last, total, n int    // the last segment's payload, all payloads, segments
	seq            uint32 // the sequence number the next segment must have
	psh            bool   // the last segment has PSH
}

// Len is the number of segments in the run.
func (r *Run) Len() int { return r.n }

// First is the run's first segment.
func (r *Run) First() []byte { return r.first }

// HeaderLen is the IPv4+TCP header length every segment of the run has.
func (r *Run) HeaderLen() int { return r.hl }

// Start makes pkt, a Coalescable segment with header length hl, a run's
// first segment.
func (r *Run) Start(pkt []byte, hl int) {
	p := len(pkt) - hl
	*r = Run{first: pkt, hl: hl, mss: p, last: p, total: p, n: 1,
		seq: binary.BigEndian.Uint32(pkt[ipv4Header+4:]) + uint32(p), psh: pkt[ipv4Header+13]&flagPSH != 0}
}

// Add adds pkt (Coalescable, header length hl) to the run if it continues
// it, and reports whether it did.
func (r *Run) Add(pkt []byte, hl int) bool {
	if r.n == 0 || !r.fits(pkt, hl) {
		return false
	}
	p := len(pkt) - hl
	r.n++
	r.last = p
	r.total += p
	r.seq += uint32(p)
	r.psh = pkt[ipv4Header+13]&flagPSH != 0
	return true
}

func (r *Run) fits(pkt []byte, hl int) bool {
	f := r.first
	p := len(pkt) - hl
	switch {
	case r.psh, r.last != r.mss, p > r.mss, hl != r.hl, r.n >= MaxRun, r.hl+r.total+p > maxPacket:
		return false
	case pkt[1] != f[1], pkt[8] != f[8], pkt[6]&0x40 != f[6]&0x40: // TOS, TTL, DF
		return false
	case string(pkt[12:20]) != string(f[12:20]): // addresses
		return false
	}
	t, ft := pkt[ipv4Header:hl], f[ipv4Header:hl]
	if binary.BigEndian.Uint32(t[4:8]) != r.seq {
		return false
	}
	// Ports, ack, window and options must match; seq, flags and checksum may differ.
	return string(t[0:4]) == string(ft[0:4]) && string(t[8:12]) == string(ft[8:12]) &&
		string(t[14:16]) == string(ft[14:16]) && string(t[20:]) == string(ft[20:])
}

// Header writes into h (VnetHdrLen+HeaderLen bytes; it may be where the
// first segment's header already lies, just before it) the virtio_net_hdr
// asking the kernel to segment the run again and the first segment's
// header fixed up for the whole run: total length, IPv4 checksum, PSH if
// the last segment had it, and the pseudo-header sum the kernel's checksum
// offload completes.
func (r *Run) Header(h []byte) {
	ip := h[VnetHdrLen : VnetHdrLen+r.hl]
	copy(ip, r.first[:r.hl])
	VnetHdr{Flags: VnetNeedsCsum, GSOType: VnetGSOTCPv4, HdrLen: uint16(r.hl), GSOSize: uint16(r.mss),
		CsumStart: ipv4Header, CsumOffset: 16}.Put(h)
	binary.BigEndian.PutUint16(ip[2:4], uint16(r.hl+r.total))
	csum.SetIPv4(ip[:ipv4Header])
	t := ip[ipv4Header:]
	if r.psh {
		t[13] |= flagPSH
	}
	// With NEEDS_CSUM the kernel wants the folded pseudo-header sum, not inverted.
	binary.BigEndian.PutUint16(t[16:18], csum.Fold(csum.Pseudo(ip, unix.IPPROTO_TCP, r.hl-ipv4Header+r.total)))
}

// TCP flags Segment and Coalescable look at.
const (
	flagFIN = 0x01
	flagPSH = 0x08
	flagACK = 0x10
	flagCWR = 0x80
)

// Segment writes into h the IPv4 and TCP headers of segment i of a TSO
// super-packet, as the kernel would: tmpl is the super-packet's headers
// (ihl bytes of IPv4, then TCP; h is as long), p segment i's payload, mss
// the payload of every segment before it and last the index of the last
// one. The IPv4 ID and the sequence number count on, CWR stays on the
// first segment and FIN and PSH on the last, and both checksums are
// complete (the TCP one over h and p).
func Segment(h, tmpl []byte, ihl int, p []byte, i, last, mss int) {
	copy(h, tmpl)
	binary.BigEndian.PutUint16(h[2:4], uint16(len(tmpl)+len(p)))
	binary.BigEndian.PutUint16(h[4:6], binary.BigEndian.Uint16(tmpl[4:6])+uint16(i))
	csum.SetIPv4(h[:ihl])
	t := h[ihl:]
	binary.BigEndian.PutUint32(t[4:8], binary.BigEndian.Uint32(tmpl[ihl+4:ihl+8])+uint32(i*mss))
	f := tmpl[ihl+13]
	if i > 0 {
		f &^= flagCWR
	}
	if i < last {
		f &^= flagFIN | flagPSH
	}
	t[13] = f
	t[16], t[17] = 0, 0
	s := csum.Pseudo(h, unix.IPPROTO_TCP, len(t)+len(p))
	s = csum.Add(p, csum.Add(t, s)) // t's length is a multiple of 4
	binary.BigEndian.PutUint16(t[16:18], ^csum.Fold(s))
}
