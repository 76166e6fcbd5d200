package overlay

import (
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"
)

// errFakeClosed is what fakes return once closed, like a closed fd.
var errFakeClosed = errors.New("fake device closed")

// FakeTUN is an in-memory TUN for tests: Inject plays the kernel routing a
// packet into the device, Written yields what the forwarder wrote.
type FakeTUN struct {
	name string
	vnet bool
	in   chan []byte
	out  chan []byte

	closeOnce sync.Once
	done      chan struct{}

	mu       sync.Mutex // guards overlays
	overlays map[netip.Prefix]netip.Prefix
}

var _ TUN = (*FakeTUN)(nil)

// NewFakeTUN makes a fake TUN; vnet makes it behave as with IFF_VNET_HDR
// (every packet carries a virtio_net_hdr).
func NewFakeTUN(name string, vnet bool) *FakeTUN {
	return &FakeTUN{
		name: name, vnet: vnet,
		in: make(chan []byte, 1024), out: make(chan []byte, 4096),
		done: make(chan struct{}), overlays: map[netip.Prefix]netip.Prefix{},
	}
}

func (t *FakeTUN) Name() string  { return t.name }
func (t *FakeTUN) VnetHdr() bool { return t.vnet }

// Inject queues pkt as if the kernel had routed it into the device.
func (t *FakeTUN) Inject(pkt []byte) { t.in <- append([]byte(nil), pkt...) }

// Written is the stream of packets the forwarder wrote (concatenated buffers).
func (t *FakeTUN) Written() <-chan []byte { return t.out }

// Overlays returns the overlay routes currently configured.
func (t *FakeTUN) Overlays() map[netip.Prefix]netip.Prefix {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := make(map[netip.Prefix]netip.Prefix, len(t.overlays))
	for k, v := range t.overlays {
		m[k] = v
	}
	return m
}

func (t *FakeTUN) Read(b []byte) (int, error) {
	select {
	case p := <-t.in:
		return copy(b, p), nil
	case <-t.done:
		return 0, errFakeClosed
	}
}

func (t *FakeTUN) Write(bufs [][]byte) error {
	var p []byte
	for _, b := range bufs {
		p = append(p, b...)
	}
	select {
	case t.out <- p:
		return nil
	case <-t.done:
		return errFakeClosed
	}
}

func (t *FakeTUN) AddOverlay(overlay, local netip.Prefix) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.overlays[overlay] = local
	return nil
}

func (t *FakeTUN) RemoveOverlay(overlay, local netip.Prefix) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.overlays, overlay)
	return nil
}

func (t *FakeTUN) Close() error {
	t.closeOnce.Do(func() { close(t.done) })
	return nil
}

// FakeNetwork connects FakeConns by address, like an underlay.
type FakeNetwork struct {
	mu    sync.Mutex // guards conns
	conns map[netip.AddrPort]*FakeConn
}

// NewFakeNetwork makes an empty fake underlay.
func NewFakeNetwork() *FakeNetwork {
	return &FakeNetwork{conns: map[netip.AddrPort]*FakeConn{}}
}

type fakeDatagram struct {
	from netip.AddrPort
	data []byte
}

// FakeConn is one UDP socket on a FakeNetwork. With gso it honours
// Message.Segment; with gro it merges consecutive equal-sized datagrams of
// one sender into one buffer, as the kernel's UDP GRO does.
type FakeConn struct {
	net    *FakeNetwork
	addr   netip.AddrPort
	gso    atomic.Bool
	gro    bool
	refuse bool
	in     chan []fakeDatagram // one element per sent message: a GSO train arrives whole
	queue  []fakeDatagram      // received, not yet read; owned by the reader

	closeOnce sync.Once
	done      chan struct{}
}

var _ PacketConn = (*FakeConn)(nil)

// Listen attaches a conn at addr.
func (n *FakeNetwork) Listen(addr netip.AddrPort, gso, gro bool) *FakeConn {
	c := &FakeConn{net: n, addr: addr, gro: gro, in: make(chan []fakeDatagram, 8192), done: make(chan struct{})}
	c.gso.Store(gso)
	n.mu.Lock()
	n.conns[addr] = c
	n.mu.Unlock()
	return c
}

// Send delivers data to the conn at to as if from from; unknown
// destinations and full queues lose the datagram, like UDP.
func (n *FakeNetwork) Send(from, to netip.AddrPort, data []byte) {
	n.deliver(to, []fakeDatagram{{from: from, data: append([]byte(nil), data...)}})
}

func (n *FakeNetwork) deliver(to netip.AddrPort, train []fakeDatagram) {
	n.mu.Lock()
	c := n.conns[to]
	n.mu.Unlock()
	if c == nil {
		return
	}
	select {
	case c.in <- train:
	default:
	}
}

// RefuseSegmentation makes the conn claim GSO until the first segmented
// send, which it refuses with ErrNoSegmentation, as a kernel whose device
// lacks checksum offload does. Call it before use.
func (c *FakeConn) RefuseSegmentation() { c.refuse = true; c.gso.Store(true) }

func (c *FakeConn) GSO() bool { return c.gso.Load() }
func (c *FakeConn) GRO() bool { return c.gro }

func (c *FakeConn) WriteBatch(msgs []Message) (int, error) {
	for i, m := range msgs {
		if m.Segment > 0 && c.refuse {
			c.gso.Store(false)
			c.refuse = false
			return i, ErrNoSegmentation
		}
		if m.Segment > 0 && !c.gso.Load() {
			return i, ErrNoSegmentation
		}
		var p []byte
		for _, b := range m.Buffers {
			p = append(p, b...)
		}
		seg := m.Segment
		if seg == 0 {
			seg = len(p)
		}
		var train []fakeDatagram
		for off := 0; off < len(p); off += seg {
			train = append(train, fakeDatagram{from: c.addr, data: p[off:min(off+seg, len(p))]})
		}
		c.net.deliver(m.Addr, train)
	}
	return len(msgs), nil
}

func (c *FakeConn) next(block bool) (fakeDatagram, bool) {
	if len(c.queue) == 0 {
		if block {
			select {
			case t := <-c.in:
				c.queue = append(c.queue, t...)
			case <-c.done:
				return fakeDatagram{}, false
			}
		} else {
			select {
			case t := <-c.in:
				c.queue = append(c.queue, t...)
			default:
				return fakeDatagram{}, false
			}
		}
	}
	d := c.queue[0]
	c.queue = c.queue[1:]
	return d, true
}

func (c *FakeConn) ReadBatch(msgs []Message) (int, error) {
	d, ok := c.next(true)
	if !ok {
		return 0, errFakeClosed
	}
	n := 0
	for {
		m := &msgs[n]
		buf := m.Buffers[0]
		m.Addr, m.Segment = d.from, 0
		m.N = copy(buf, d.data)
		seg := len(d.data)
		for c.gro && len(d.data) == seg {
			e, ok := c.next(false)
			if !ok {
				break
			}
			if e.from != d.from || len(e.data) > seg || m.N+len(e.data) > len(buf) {
				c.queue = append([]fakeDatagram{e}, c.queue...)
				break
			}
			m.N += copy(buf[m.N:], e.data)
			m.Segment = seg
			d = e
		}
		n++
		if n == len(msgs) {
			return n, nil
		}
		if d, ok = c.next(false); !ok {
			return n, nil
		}
	}
}

func (c *FakeConn) Close() error {
	c.closeOnce.Do(func() {
		close(c.done)
		c.net.mu.Lock()
		delete(c.net.conns, c.addr)
		c.net.mu.Unlock()
	})
	return nil
}
