package overlay

import (
	"errors"
	"net/netip"
)

// TUN is the tunnel device (twill0) as the forwarder uses it. The Linux
// implementation is *tunDevice; FakeTUN runs it in tests.
type TUN interface {
	// Name is the interface's name, e.g. "twill0".
	Name() string
	// VnetHdr reports whether every packet read or written is preceded by a
	// 10-byte virtio_net_hdr (IFF_VNET_HDR with TSO offloads accepted).
	// Reads may then return TCP super-packets of up to 64 KB.
	VnetHdr() bool
	// WaitRead blocks until a packet may be queued on the device, or
	// returns an error once the device is closed. A packet queued after
	// the last TryRead that found none always ends a wait, so a reader
	// that drains with TryRead and then waits misses nothing. It is called
	// from one goroutine only.
	WaitRead() error
	// TryRead reads one queued packet into b and returns its length, or 0
	// when none is queued; it never blocks. Calls must not overlap (the
	// forwarder serializes them) but may overlap a WaitRead.
	TryRead(b []byte) (int, error)
	// Write writes one packet gathered from bufs. It is called from one
	// goroutine only.
	Write(bufs [][]byte) error
	// AddOverlay gives the device local's first address as a /32 and routes
	// overlay through the device with that address as source. Idempotent.
	AddOverlay(overlay, local netip.Prefix) error
	// RemoveOverlay undoes AddOverlay; what is already gone is success.
	RemoveOverlay(overlay, local netip.Prefix) error
	// Close deletes the device and makes a pending Read return.
	Close() error
}

// PacketConn is the UDP socket towards the peers. The Linux implementation
// is *udpConn; FakeNetwork's conns run it in tests.
type PacketConn interface {
	// WaitRead blocks until a datagram may be queued, or returns an error
	// once the conn is closed; like TUN.WaitRead it misses nothing queued
	// after the last TryReadBatch that found none. Called from one
	// goroutine only.
	WaitRead() error
	// TryReadBatch receives up to len(msgs) queued datagrams into
	// msgs[i].Buffers[0], setting N, Addr and Segment (the GRO segment size
	// when several datagrams of one flow were merged into one buffer, else
	// 0), and returns 0 when none is queued; it never blocks. Calls must
	// not overlap but may overlap a WaitRead.
	TryReadBatch(msgs []Message) (int, error)
	// WriteBatch sends msgs, each gathered from its Buffers to Addr; a
	// message with Segment > 0 is cut into datagrams of Segment bytes (the
	// last may be shorter). It returns the number of messages handled, and
	// an error wrapping ErrNoSegmentation when the kernel refused Segment
	// (the caller resends without it). Called from one goroutine only.
	WriteBatch(msgs []Message) (int, error)
	// GSO reports whether WriteBatch currently honours Segment.
	GSO() bool
	// GRO reports whether ReadBatch may merge datagrams.
	GRO() bool
	// Close closes the socket and makes a pending ReadBatch return.
	Close() error
}

// Message is one datagram (or one GSO/GRO train of datagrams).
type Message struct {
	Buffers [][]byte
	Addr    netip.AddrPort
	N       int
	Segment int
}

// ErrNoSegmentation is returned by WriteBatch when the kernel refused UDP
// segmentation offload (EIO on devices without checksum offload); GSO then
// reports false.
var ErrNoSegmentation = errors.New("udp segmentation offload refused")

// ErrInvalid is wrapped by the update methods when an argument is unusable
// (not IPv4, not a network address, zero port).
var ErrInvalid = errors.New("invalid argument")

// ErrClosed is returned by updates after Close.
var ErrClosed = errors.New("forwarder closed")

// plainFrame gathers one packet that needs no offload for a TUN write,
// behind an all-zero virtio_net_hdr when the TUN has IFF_VNET_HDR. Each
// loop owns one, so framing allocates nothing.
type plainFrame struct {
	vnet bool
	zero [vnetHdrLen]byte
	bufs [2][]byte
}

func (p *plainFrame) of(pkt []byte) [][]byte {
	if p.vnet {
		p.bufs[0], p.bufs[1] = p.zero[:], pkt
		return p.bufs[:2]
	}
	p.bufs[0] = pkt
	return p.bufs[:1]
}
