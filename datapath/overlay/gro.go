package overlay

import "github.com/twill-net/twill/internal/tundev"

// coalescer merges consecutive in-order TCP segments of one flow, received
// from the UDP socket, into one TUN write (tundev.Run): a virtio_net_hdr
// asking the kernel for GSO_TCPV4 with checksum offload, the first
// segment's header fixed up for the total length, and the payloads as
// iovecs pointing into the receive buffers (no copy). Everything else is
// written as it came.
type coalescer struct {
	write func(bufs [][]byte) // writes one packet to the TUN

	run  tundev.Run
	hdr  [vnetHdrLen + maxHeader]byte
	bufs [][]byte // bufs[0] is the header, bufs[1:] the payloads
	zero [vnetHdrLen]byte
}

func newCoalescer(write func([][]byte)) *coalescer {
	return &coalescer{write: write, bufs: make([][]byte, 1+tundev.MaxRun)}
}

// add takes d into the current run or starts a new one (flushing the old).
// It returns false when d cannot be coalesced at all; the caller then
// flushes and writes d by itself, keeping the order.
func (c *coalescer) add(d []byte) bool {
	hl, ok := tundev.Coalescable(d)
	if !ok {
		return false
	}
	if !c.run.Add(d, hl) {
		c.flush()
		c.run.Start(d, hl)
	}
	c.bufs[c.run.Len()] = d[hl:]
	return true
}

// flush writes the current run, if any.
func (c *coalescer) flush() {
	switch c.run.Len() {
	case 0:
		return
	case 1:
		c.bufs[0] = c.zero[:]
		c.bufs[1] = c.run.First()
		c.write(c.bufs[:2])
	default:
		h := c.hdr[:vnetHdrLen+c.run.HeaderLen()]
		c.run.Header(h)
		c.bufs[0] = h
		c.write(c.bufs[:1+c.run.Len()])
	}
	c.run = tundev.Run{}
}

// segments returns how many packets the current run holds.
func (c *coalescer) segments() int { return c.run.Len() }
