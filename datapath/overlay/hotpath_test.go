package overlay

import (
	"bytes"
	"encoding/binary"
	"io"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/twill-net/twill/internal/tundev"
)

// nullTUN and nullConn stand in for the kernel in benchmarks and fuzzing:
// they accept everything and record it only when asked to.
type nullTUN struct {
	vnet    bool
	written func(bufs [][]byte)
}

func (t *nullTUN) Name() string                          { return "null0" }
func (t *nullTUN) VnetHdr() bool                         { return t.vnet }
func (t *nullTUN) WaitRead() error                       { return io.EOF }
func (t *nullTUN) TryRead([]byte) (int, error)           { return 0, nil }
func (t *nullTUN) AddOverlay(_, _ netip.Prefix) error    { return nil }
func (t *nullTUN) RemoveOverlay(_, _ netip.Prefix) error { return nil }
func (t *nullTUN) Close() error                          { return nil }
func (t *nullTUN) Write(bufs [][]byte) error {
	if t.written != nil {
		t.written(bufs)
	}
	return nil
}

type nullConn struct {
	offload bool
	sent    func(m *Message)
}

func (c *nullConn) WaitRead() error                     { return io.EOF }
func (c *nullConn) TryReadBatch([]Message) (int, error) { return 0, nil }
func (c *nullConn) GSO() bool                           { return c.offload }
func (c *nullConn) GRO() bool                           { return c.offload }
func (c *nullConn) Close() error                        { return nil }
func (c *nullConn) WriteBatch(msgs []Message) (int, error) {
	if c.sent != nil {
		for i := range msgs {
			c.sent(&msgs[i])
		}
	}
	return len(msgs), nil
}

// hotForwarder is host A (10.96.1.0/24) with peer B (10.96.2.0/24 at 192.0.2.2).
func hotForwarder(tb testing.TB, tun TUN, conn PacketConn) *Forwarder {
	f, err := New(Config{MTU: 1472, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, tun, conn)
	must(tb, err)
	must(tb, f.AddOverlay(pfx("10.96.0.0/16"), pfx("10.96.1.0/24")))
	must(tb, f.SetPeer(pfx("10.96.2.0/24"), ap("192.0.2.2:8285")))
	return f
}

func TestSegmentTCPv4(t *testing.T) {
	payload := payloadBytes(5000, 1)
	pkt := mkTSO("10.96.1.5", "10.96.2.7", 0xfffffc00, tcpFlagACK|tcpFlagPSH|tcpFlagFIN|tcpFlagCWR, 1400, payload)[vnetHdrLen:]
	hdrs := make([]byte, maxSegments*maxHeader)
	bufs := make([][]byte, 2*maxSegments)
	n, segLen, r := segmentTCPv4(pkt, 1400, hdrs, bufs)
	if r != reasonNone || n != 4 || segLen != 1452 {
		t.Fatalf("n %d segLen %d reason %s", n, segLen, r)
	}
	var got []byte
	for i := 0; i < n; i++ {
		seg := append(append([]byte(nil), bufs[2*i]...), bufs[2*i+1]...)
		checkTCP(t, seg)
		flags := seg[33]
		wantFlags := uint8(tcpFlagACK)
		if i == 0 {
			wantFlags |= tcpFlagCWR
		}
		if i == n-1 {
			wantFlags |= tcpFlagPSH | tcpFlagFIN
		}
		if flags != wantFlags {
			t.Errorf("segment %d flags %#x, want %#x", i, flags, wantFlags)
		}
		if seq := binary.BigEndian.Uint32(seg[24:28]); seq != 0xfffffc00+uint32(i*1400) { // wraps
			t.Errorf("segment %d seq %#x", i, seq)
		}
		if id := binary.BigEndian.Uint16(seg[4:6]); id != 0x1234+uint16(i) {
			t.Errorf("segment %d id %#x", i, id)
		}
		got = append(got, seg[52:]...)
	}
	if !bytes.Equal(got, payload) {
		t.Fatal("payload differs")
	}
	for _, bad := range []int{0, -1} {
		if _, _, r := segmentTCPv4(pkt, bad, hdrs, bufs); r != reasonMalformed {
			t.Errorf("mss %d: reason %s", bad, r)
		}
	}
	if _, _, r := segmentTCPv4(pkt, 4, hdrs, bufs); r != reasonMalformed { // 1250 segments
		t.Errorf("too many segments: reason %s", r)
	}
}

// TestCoalescerRuns feeds segments and checks which merge: a run ends at a
// sequence gap, a PSH, a short segment, another flow or a non-data packet,
// and the output order equals the input order.
func TestCoalescerRuns(t *testing.T) {
	var out [][]byte
	c := newCoalescer(func(bufs [][]byte) {
		var p []byte
		for _, b := range bufs {
			p = append(p, b...)
		}
		out = append(out, p)
	})
	seg := func(src string, seq uint32, flags uint8, n int) []byte {
		return mkTCP(src, "10.96.1.5", seq, 1, flags, payloadBytes(n, byte(seq)))
	}
	in := [][]byte{
		seg("10.96.2.7", 0, tcpFlagACK, 100),
		seg("10.96.2.7", 100, tcpFlagACK, 100),
		seg("10.96.2.7", 200, tcpFlagACK|tcpFlagPSH, 100), // ends the run (3 segments)
		seg("10.96.2.7", 300, tcpFlagACK, 100),
		seg("10.96.2.7", 500, tcpFlagACK, 100), // gap: new run
		seg("10.96.2.8", 600, tcpFlagACK, 100), // other flow: new run
		seg("10.96.2.8", 700, tcpFlagACK, 50),  // short: joins, then ends the run
		seg("10.96.2.8", 750, tcpFlagACK, 50),
		seg("10.96.2.8", 800, tcpFlagACK|tcpFlagFIN, 0), // not data
	}
	for _, d := range in {
		if !c.add(d) {
			c.flush()
			out = append(out, append(make([]byte, vnetHdrLen), d...))
		}
	}
	c.flush()
	wantSegs := []int{3, 1, 1, 2, 1, 1}
	if len(out) != len(wantSegs) {
		t.Fatalf("%d writes, want %d", len(out), len(wantSegs))
	}
	i := 0
	for k, p := range out {
		h := tundev.ParseVnetHdr(p)
		pkt := p[vnetHdrLen:]
		if wantSegs[k] == 1 {
			if h != (tundev.VnetHdr{}) || !bytes.Equal(pkt, in[i]) {
				t.Fatalf("write %d: not the single packet %d unchanged", k, i)
			}
			i++
			continue
		}
		if h.GSOType != vnetGSOTCPv4 || int(h.GSOSize) != len(in[i])-52 {
			t.Fatalf("write %d: vnet %+v", k, h)
		}
		var want []byte
		for j := 0; j < wantSegs[k]; j++ {
			want = append(want, in[i+j][52:]...)
		}
		if !bytes.Equal(pkt[52:], want) || ipv4TotalLen(pkt) != len(pkt) {
			t.Fatalf("write %d: merged payload differs", k)
		}
		// The kernel would re-segment it: do the same and check every segment.
		fixTCPChecksum(pkt) // a complete checksum, so segmentTCPv4's input is a valid packet
		n, _, r := segmentTCPv4(pkt, int(h.GSOSize), make([]byte, maxSegments*maxHeader), make([][]byte, 2*maxSegments))
		if r != reasonNone || n != wantSegs[k] {
			t.Fatalf("write %d: resegmented into %d (%s)", k, n, r)
		}
		i += wantSegs[k]
	}
}

func BenchmarkForwardOutboundTSO(b *testing.B) {
	f := hotForwarder(b, &nullTUN{vnet: true}, &nullConn{offload: true})
	o := newOutbound(f)
	pkt := mkTSO("10.96.1.5", "10.96.2.7", 1, tcpFlagACK, 1420, payloadBytes(65535-52, 1))
	b.SetBytes(int64(len(pkt)))
	b.ReportAllocs()
	for b.Loop() {
		o.handle(pkt)
	}
	if f.Stats().PacketsOut == 0 {
		b.Fatal("nothing forwarded")
	}
}

func BenchmarkForwardOutboundSmall(b *testing.B) {
	f := hotForwarder(b, &nullTUN{}, &nullConn{})
	o := newOutbound(f)
	pkt := mkUDP("10.96.1.5", "10.96.2.7", make([]byte, 64))
	b.SetBytes(int64(len(pkt)))
	b.ReportAllocs()
	for b.Loop() {
		o.handle(pkt)
	}
	if f.Stats().PacketsOut == 0 {
		b.Fatal("nothing forwarded")
	}
}

// groBatch builds one received message holding a GRO train of n segments.
func groMessage(n, mss int) Message {
	var buf []byte
	for i := 0; i < n; i++ {
		buf = append(buf, mkTCP("10.96.2.7", "10.96.1.5", uint32(1+i*mss), 1, tcpFlagACK, payloadBytes(mss, byte(i)))...)
	}
	return Message{Buffers: [][]byte{buf}, N: len(buf), Addr: ap("192.0.2.2:8285"), Segment: mss + 52}
}

func BenchmarkForwardInboundGRO(b *testing.B) {
	writes := 0
	f := hotForwarder(b, &nullTUN{vnet: true, written: func([][]byte) { writes++ }}, &nullConn{offload: true})
	in := newInbound(f, newOutbound(f))
	msgs := []Message{groMessage(44, 1420)}
	b.SetBytes(int64(msgs[0].N))
	b.ReportAllocs()
	for b.Loop() {
		in.handle(msgs)
	}
	if writes == 0 || f.Stats().PacketsIn == 0 {
		b.Fatal("nothing forwarded")
	}
}

func BenchmarkForwardInboundPlain(b *testing.B) {
	f := hotForwarder(b, &nullTUN{}, &nullConn{})
	in := newInbound(f, newOutbound(f))
	msgs := make([]Message, 64)
	for i := range msgs {
		p := mkUDP("10.96.2.7", "10.96.1.5", make([]byte, 64))
		msgs[i] = Message{Buffers: [][]byte{p}, N: len(p), Addr: ap("192.0.2.2:8285")}
	}
	b.SetBytes(int64(64 * msgs[0].N))
	b.ReportAllocs()
	for b.Loop() {
		in.handle(msgs)
	}
	if f.Stats().PacketsIn == 0 {
		b.Fatal("nothing forwarded")
	}
}

// TestHotPathAllocatesNothing pins the zero-allocation property outside -bench runs.
func TestHotPathAllocatesNothing(t *testing.T) {
	f := hotForwarder(t, &nullTUN{vnet: true}, &nullConn{offload: true})
	o := newOutbound(f)
	in := newInbound(f, o)
	tso := mkTSO("10.96.1.5", "10.96.2.7", 1, tcpFlagACK, 1420, payloadBytes(60000, 1))
	msgs := []Message{groMessage(40, 1420)}
	bad := []Message{{Buffers: [][]byte{mkUDP("10.96.3.7", "10.96.1.5", nil)}, Addr: ap("192.0.2.9:8285")}}
	bad[0].N = len(bad[0].Buffers[0])
	if a := testing.AllocsPerRun(100, func() { o.handle(tso); in.handle(msgs); in.handle(bad) }); a != 0 {
		t.Fatalf("%.1f allocations per packet batch", a)
	}
}
