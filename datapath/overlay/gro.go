package overlay

import (
	"bytes"
	"encoding/binary"

	"github.com/twill-net/twill/internal/csum"
	"github.com/twill-net/twill/internal/tundev"
)

// maxRunSegments bounds one coalesced TUN write (iovecs per writev).
const maxRunSegments = 128

// coalescer merges consecutive in-order TCP segments of one flow, received
// from the UDP socket, into one TUN write: a virtio_net_hdr asking the
// kernel for GSO_TCPV4 with checksum offload, the first segment's header
// fixed up for the total length, and the payloads as iovecs pointing into
// the receive buffers (no copy). Everything else is written as it came.
type coalescer struct {
	write func(bufs [][]byte) // writes one packet to the TUN

	hdr   [vnetHdrLen + maxHeader]byte
	bufs  [][]byte // bufs[0] is the header, bufs[1:] the payloads
	zero  [vnetHdrLen]byte
	first []byte // the run's first segment (whole packet)
	ihl   int
	hl    int
	mss   int
	last  int // payload length of the run's last segment
	total int // payload bytes in the run
	seq   uint32
	n     int
	psh   bool
}

func newCoalescer(write func([][]byte)) *coalescer {
	return &coalescer{write: write, bufs: make([][]byte, 1+maxRunSegments)}
}

// coalescable reports whether d (a valid IPv4 packet) is a plain TCP data

// add takes d into the current run or starts a new one (flushing the old).
// It returns false when d cannot be coalesced at all; the caller then
// flushes and writes d by itself, keeping the order.
func (c *coalescer) add(d []byte) bool {
	hl, ok := tundev.Coalescable(d)
	if !ok {
		return false
	}
	if c.n > 0 && c.fits(d, hl) {
		p := d[hl:]
		c.n++
		c.bufs[c.n] = p
		c.total += len(p)
		c.last = len(p)
		c.seq += uint32(len(p))
		c.psh = d[ipv4MinHeader+13]&tcpFlagPSH != 0
		return true
	}
	c.flush()
	p := d[hl:]
	c.first, c.ihl, c.hl = d, ipv4MinHeader, hl
	c.mss, c.last, c.total = len(p), len(p), len(p)
	c.seq = binary.BigEndian.Uint32(d[ipv4MinHeader+4:]) + uint32(len(p))
	c.psh = d[ipv4MinHeader+13]&tcpFlagPSH != 0
	c.n = 1
	c.bufs[1] = p
	return true
}

// fits reports whether d continues the current run.
func (c *coalescer) fits(d []byte, hl int) bool {
	f := c.first
	plen := len(d) - hl
	switch {
	case c.psh, c.last != c.mss, plen > c.mss, hl != c.hl, c.n >= maxRunSegments,
		c.hl+c.total+plen > maxIPPacket:
		return false
	case d[1] != f[1], d[8] != f[8], d[6]&0x40 != f[6]&0x40: // TOS, TTL, DF
		return false
	case !bytes.Equal(d[12:20], f[12:20]): // addresses
		return false
	}
	t, ft := d[ipv4MinHeader:hl], f[ipv4MinHeader:hl]
	if binary.BigEndian.Uint32(t[4:8]) != c.seq {
		return false
	}
	// Ports, ack, window and options must match; seq, flags and checksum may differ.
	return bytes.Equal(t[0:4], ft[0:4]) && bytes.Equal(t[8:12], ft[8:12]) &&
		bytes.Equal(t[14:16], ft[14:16]) && bytes.Equal(t[20:], ft[20:])
}

// flush writes the current run, if any.
func (c *coalescer) flush() {
	switch c.n {
	case 0:
		return
	case 1:
		c.bufs[0] = c.zero[:]
		c.bufs[1] = c.first
		c.write(c.bufs[:2])
	default:
		h := c.hdr[:vnetHdrLen+c.hl]
		vnetHdr{
			flags: vnetFlagNeedCsum, gsoType: vnetGSOTCPv4, hdrLen: uint16(c.hl), gsoSize: uint16(c.mss),
			csumStart: uint16(c.ihl), csumOffset: 16,
		}.put(h)
		ip := h[vnetHdrLen:]
		copy(ip, c.first[:c.hl])
		binary.BigEndian.PutUint16(ip[2:4], uint16(c.hl+c.total))
		csum.SetIPv4(ip[:c.ihl])
		t := ip[c.ihl:]
		if c.psh {
			t[13] |= tcpFlagPSH
		}
		// With NEEDS_CSUM the kernel expects the folded, not inverted,
		// pseudo-header sum in the checksum field.
		binary.BigEndian.PutUint16(t[16:18], csum.Fold(csum.Pseudo(ip, protoTCP, c.hl-c.ihl+c.total)))
		c.bufs[0] = h
		c.write(c.bufs[:1+c.n])
	}
	c.n = 0
	c.first = nil
}

// segments returns how many packets the current run holds.
func (c *coalescer) segments() int { return c.n }
