package overlay

import (
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"
)

// errFakeClosed is what fakes return once closed, like a closed fd.
var errFakeClosed = errors.New("fake device closed")

// fakeFD is a fake's readiness and closing, as a non-blocking fd in the
// netpoller has them: WaitRead returns once something arrived since the
// last wait, or once closed.
type fakeFD struct {
	ready     chan struct{}
	done      chan struct{}
	closeOnce sync.Once
}

func newFakeFD() fakeFD {
	return fakeFD{ready: make(chan struct{}, 1), done: make(chan struct{})}
}

// arrived marks the fake readable.
func (f *fakeFD) arrived() {
	select {
	case f.ready <- struct{}{}:
	default:
	}
}

func (f *fakeFD) WaitRead() error {
	select {
	case <-f.ready:
		return nil
	case <-f.done:
		return errFakeClosed
	}
}

func (f *fakeFD) closed() bool {
	select {
	case <-f.done:
		return true
	default:
		return false
	}
}

// close reports whether this call closed it.
func (f *fakeFD) close() (first bool) {
	f.closeOnce.Do(func() { close(f.done); first = true })
	return first
}

// FakeTUN is an in-memory TUN for tests: Inject plays the kernel routing a
// packet into the device, Written yields what the forwarder wrote.
type FakeTUN struct {
	name string
	vnet bool
	// Answer, when set before use, plays the receiving container: the
	// packets it returns for a written packet are queued on the device
	// before Write returns, as the kernel queues an echo reply or an ACK.
	Answer func(written []byte) [][]byte
	out    chan []byte

	qmu   sync.Mutex
	queue [][]byte // injected, not yet read
	fakeFD

	mu       sync.Mutex // guards overlays
	overlays map[netip.Prefix]netip.Prefix
}

var _ TUN = (*FakeTUN)(nil)

// NewFakeTUN makes a fake TUN; vnet makes it behave as with IFF_VNET_HDR
// (every packet carries a virtio_net_hdr).
func NewFakeTUN(name string, vnet bool) *FakeTUN {
	return &FakeTUN{
		name: name, vnet: vnet,
		out: make(chan []byte, 4096), fakeFD: newFakeFD(), overlays: map[netip.Prefix]netip.Prefix{},
	}
}

func (t *FakeTUN) Name() string  { return t.name }
func (t *FakeTUN) VnetHdr() bool { return t.vnet }

// Inject queues pkt as if the kernel had routed it into the device.
func (t *FakeTUN) Inject(pkt []byte) {
	t.qmu.Lock()
	t.queue = append(t.queue, append([]byte(nil), pkt...))
	t.qmu.Unlock()
	t.arrived()
}

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

func (t *FakeTUN) TryRead(b []byte) (int, error) {
	if t.closed() {
		return 0, errFakeClosed
	}
	t.qmu.Lock()
	defer t.qmu.Unlock()
	if len(t.queue) == 0 {
		return 0, nil
	}
	p := t.queue[0]
	t.queue[0] = nil
	t.queue = t.queue[1:]
	return copy(b, p), nil
}

func (t *FakeTUN) Write(bufs [][]byte) error {
	var p []byte
	for _, b := range bufs {
		p = append(p, b...)
	}
	select {
	case t.out <- p:
	case <-t.done:
		return errFakeClosed
	}
	if t.Answer != nil {
		for _, a := range t.Answer(p) {
			t.Inject(a)
		}
	}
	return nil
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
	t.close()
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

	qmu   sync.Mutex
	queue []fakeDatagram // received, not yet read; a GSO train arrives whole
	fakeFD
}

var _ PacketConn = (*FakeConn)(nil)

// Listen attaches a conn at addr.
func (n *FakeNetwork) Listen(addr netip.AddrPort, gso, gro bool) *FakeConn {
	c := &FakeConn{net: n, addr: addr, gro: gro, fakeFD: newFakeFD()}
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
	c.qmu.Lock()
	if len(c.queue)+len(train) > fakeConnQueue {
		c.qmu.Unlock()
		return
	}
	c.queue = append(c.queue, train...)
	c.qmu.Unlock()
	c.arrived()
}

// fakeConnQueue is how many datagrams a FakeConn holds unread, its
// socket buffer.
const fakeConnQueue = 1 << 16

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

// next pops the oldest queued datagram; the caller holds qmu.
func (c *FakeConn) next() (fakeDatagram, bool) {
	if len(c.queue) == 0 {
		return fakeDatagram{}, false
	}
	d := c.queue[0]
	c.queue[0] = fakeDatagram{}
	c.queue = c.queue[1:]
	return d, true
}

func (c *FakeConn) TryReadBatch(msgs []Message) (int, error) {
	if c.closed() {
		return 0, errFakeClosed
	}
	c.qmu.Lock()
	defer c.qmu.Unlock()
	n := 0
	for n < len(msgs) {
		d, ok := c.next()
		if !ok {
			break
		}
		m := &msgs[n]
		buf := m.Buffers[0]
		m.Addr, m.Segment = d.from, 0
		m.N = copy(buf, d.data)
		seg := len(d.data)
		for c.gro && len(d.data) == seg && len(c.queue) > 0 {
			e := c.queue[0]
			if e.from != d.from || len(e.data) > seg || m.N+len(e.data) > len(buf) {
				break
			}
			c.next()
			m.N += copy(buf[m.N:], e.data)
			m.Segment = seg
			d = e
		}
		n++
	}
	return n, nil
}

func (c *FakeConn) Close() error {
	if c.close() {
		c.net.mu.Lock()
		delete(c.net.conns, c.addr)
		c.net.mu.Unlock()
	}
	return nil
}
