package overlay

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/twill-net/twill/internal/csum"
	"github.com/twill-net/twill/internal/tundev"
	"go.uber.org/goleak"
)

// fakeHost is one host of a fake two-host overlay running in this process.
type fakeHost struct {
	tun  *FakeTUN
	conn *FakeConn
	fwd  *Forwarder
}

type fakeOpts struct {
	vnet, gso, gro bool
	refuseGSO      bool
	busy           time.Duration // Config.BusyPoll
}

// startFakeHost runs a forwarder on fakes: lease local of overlay
// 10.96.0.0/16 at address addr.
func startFakeHost(t *testing.T, n *FakeNetwork, addr, local string, o fakeOpts) *fakeHost {
	t.Helper()
	h := &fakeHost{tun: NewFakeTUN("twill0", o.vnet), conn: n.Listen(ap(addr), o.gso, o.gro)}
	if o.refuseGSO {
		h.conn.RefuseSegmentation()
	}
	var err error
	h.fwd, err = New(Config{MTU: 1472, BusyPoll: o.busy, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, h.tun, h.conn)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.fwd.AddOverlay(pfx("10.96.0.0/16"), pfx(local)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := h.fwd.Run(ctx); err != nil {
			t.Errorf("run: %v", err)
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
	return h
}

// twoFakeHosts makes hosts A (10.96.1.0/24 at 192.0.2.1) and B
// (10.96.2.0/24 at 192.0.2.2), each the other's peer.
func twoFakeHosts(t *testing.T, oa, ob fakeOpts) (*FakeNetwork, *fakeHost, *fakeHost) {
	n := NewFakeNetwork()
	a := startFakeHost(t, n, "192.0.2.1:8285", "10.96.1.0/24", oa)
	b := startFakeHost(t, n, "192.0.2.2:8285", "10.96.2.0/24", ob)
	must(t, a.fwd.SetPeer(pfx("10.96.2.0/24"), ap("192.0.2.2:8285")))
	must(t, b.fwd.SetPeer(pfx("10.96.1.0/24"), ap("192.0.2.1:8285")))
	return n, a, b
}

// readBatch blocks until at least one datagram is read from c.
func readBatch(c PacketConn, msgs []Message) (int, error) {
	for {
		if n, err := c.TryReadBatch(msgs); n > 0 || err != nil {
			return n, err
		}
		if err := c.WaitRead(); err != nil {
			return 0, err
		}
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func recv(t testing.TB, tun *FakeTUN) []byte {
	t.Helper()
	select {
	case p := <-tun.Written():
		return p
	case <-time.After(5 * time.Second):
		t.Fatal("no packet reached the tun")
		return nil
	}
}

func expectNothing(t testing.TB, tun *FakeTUN) {
	t.Helper()
	select {
	case p := <-tun.Written():
		t.Fatalf("unexpected packet reached the tun: % x", p[:min(len(p), 40)])
	case <-time.After(100 * time.Millisecond):
	}
}

// waitDrop waits until reason's counter on f reaches want.
func waitDrop(t testing.TB, f *Forwarder, reason string, want uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := f.Stats().Drops[reason]
		if got == want {
			return
		}
		if got > want || time.Now().After(deadline) {
			t.Fatalf("drops %s = %d, want %d (all: %v)", reason, got, want, f.Stats().Drops)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestMain(m *testing.M) {
	if helperMain() {
		return
	}
	goleak.VerifyTestMain(m, goleak.IgnoreCurrent())
}

func TestForwardBothWaysPlain(t *testing.T) {
	_, a, b := twoFakeHosts(t, fakeOpts{}, fakeOpts{})
	p := mkUDP("10.96.1.5", "10.96.2.7", []byte("hello b"))
	a.tun.Inject(p)
	if got := recv(t, b.tun); !bytes.Equal(got, p) {
		t.Fatalf("b got % x, want % x", got, p)
	}
	q := mkUDP("10.96.2.7", "10.96.1.5", []byte("hello a"))
	b.tun.Inject(q)
	if got := recv(t, a.tun); !bytes.Equal(got, q) {
		t.Fatalf("a got % x, want % x", got, q)
	}
	// The host's own twill0 address (the lease's first address) is reachable too.
	r := mkUDP("10.96.1.5", "10.96.2.0", []byte("to b's twill0"))
	a.tun.Inject(r)
	if got := recv(t, b.tun); !bytes.Equal(got, r) {
		t.Fatalf("b got % x, want % x", got, r)
	}
	s := a.fwd.Stats()
	if s.Path != "plain" || len(s.Peers) != 1 {
		t.Fatalf("stats %+v", s)
	}
	ps := s.Peers[0]
	if ps.Subnet != pfx("10.96.2.0/24") || ps.PacketsOut != 2 || ps.BytesOut != uint64(len(p)+len(r)) ||
		ps.PacketsIn != 1 || ps.BytesIn != uint64(len(q)) || ps.LastSeen.IsZero() {
		t.Fatalf("peer stats %+v", ps)
	}
	if got := a.tun.Overlays()[pfx("10.96.0.0/16")]; got != pfx("10.96.1.0/24") {
		t.Fatalf("tun overlays %v", a.tun.Overlays())
	}
}

func TestOutboundDrops(t *testing.T) {
	_, a, b := twoFakeHosts(t, fakeOpts{}, fakeOpts{})
	must(t, a.fwd.AddOverlay(pfx("10.97.0.0/16"), pfx("10.97.1.0/24")))
	must(t, a.fwd.SetPeer(pfx("10.97.2.0/24"), ap("192.0.2.2:8285")))
	ipv6 := mkUDP("10.96.1.5", "10.96.2.7", nil)
	ipv6[0] = 0x60
	cases := []struct {
		name, reason string
		pkt          []byte
	}{
		{"no peer holds the destination", DropNoRoute, mkUDP("10.96.1.5", "10.96.9.9", nil)},
		{"destination outside every overlay", DropNoRoute, mkUDP("10.96.1.5", "192.168.1.1", nil)},
		{"own subnet routed into the tun", DropNoRoute, mkUDP("10.96.1.5", "10.96.1.9", nil)},
		{"between overlays", DropCrossOverlay, mkUDP("10.97.1.5", "10.96.2.7", nil)},
		{"between overlays, other way", DropCrossOverlay, mkUDP("10.96.1.5", "10.97.2.7", nil)},
		{"ipv6", DropNotIPv4, ipv6},
		{"truncated", DropTruncated, mkUDP("10.96.1.5", "10.96.2.7", nil)[:10]},
	}
	for _, c := range cases {
		before := a.fwd.Stats().Drops[c.reason]
		a.tun.Inject(c.pkt)
		waitDrop(t, a.fwd, c.reason, before+1)
	}
	expectNothing(t, b.tun)
	// The second overlay works between its own addresses.
	p := mkUDP("10.97.1.5", "10.97.2.7", []byte("x"))
	a.tun.Inject(p)
	waitDrop(t, b.fwd, DropSpoofedSource, 1) // b never joined 10.97.0.0/16: no lease holds the source
	if a.fwd.Stats().PacketsOut != 1 {
		t.Fatalf("packets out %d", a.fwd.Stats().PacketsOut)
	}
}

func TestInboundDrops(t *testing.T) {
	n, a, _ := twoFakeHosts(t, fakeOpts{}, fakeOpts{})
	must(t, a.fwd.AddOverlay(pfx("10.97.0.0/16"), pfx("10.97.1.0/24")))
	must(t, a.fwd.SetPeer(pfx("10.97.2.0/24"), ap("192.0.2.2:8285")))
	to := ap("192.0.2.1:8285")
	peerB, stranger := ap("192.0.2.2:8285"), ap("192.0.2.66:8285")
	good := mkUDP("10.96.2.7", "10.96.1.5", []byte("ok"))
	big := mkUDP("10.96.2.7", "10.96.1.5", make([]byte, 1500))
	cases := []struct {
		name, reason string
		from         string
		pkt          []byte
	}{
		{"sender holds no lease", DropUnknownPeer, "192.0.2.66:8285", good},
		{"sender holds no lease, other port", DropUnknownPeer, "192.0.2.66:9999", good},
		{"inner source in another host's subnet", DropSpoofedSource, "192.0.2.2:8285", mkUDP("10.96.3.7", "10.96.1.5", nil)},
		{"inner source in our own subnet", DropSpoofedSource, "192.0.2.2:8285", mkUDP("10.96.1.9", "10.96.1.5", nil)},
		{"inner source outside every overlay", DropSpoofedSource, "192.0.2.2:8285", mkUDP("8.8.8.8", "10.96.1.5", nil)},
		{"inner destination on another host", DropWrongDestination, "192.0.2.2:8285", mkUDP("10.96.2.7", "10.96.3.5", nil)},
		{"inner destination in the other overlay", DropWrongDestination, "192.0.2.2:8285", mkUDP("10.96.2.7", "10.97.1.5", nil)},
		{"truncated", DropTruncated, "192.0.2.2:8285", good[:len(good)-1]},
		{"not ipv4", DropNotIPv4, "192.0.2.2:8285", append([]byte{0x60}, good[1:]...)},
		{"malformed", DropMalformed, "192.0.2.2:8285", append(append([]byte(nil), good...), 1, 2)},
		{"oversize", DropOversize, "192.0.2.2:8285", big},
	}
	for _, c := range cases {
		before := a.fwd.Stats().Drops[c.reason]
		n.Send(ap(c.from), to, c.pkt)
		waitDrop(t, a.fwd, c.reason, before+1)
	}
	expectNothing(t, a.tun)
	// Positive control: the same path delivers a legitimate packet.
	n.Send(peerB, to, good)
	if got := recv(t, a.tun); !bytes.Equal(got, good) {
		t.Fatalf("got % x", got)
	}
	_ = stranger
}

func TestRemovePeerIsImmediate(t *testing.T) {
	n, a, b := twoFakeHosts(t, fakeOpts{}, fakeOpts{})
	p := mkUDP("10.96.1.5", "10.96.2.7", []byte("1"))
	a.tun.Inject(p)
	recv(t, b.tun)
	must(t, a.fwd.RemovePeer(pfx("10.96.2.0/24")))
	must(t, a.fwd.RemovePeer(pfx("10.96.2.0/24"))) // already gone: success
	a.tun.Inject(p)
	waitDrop(t, a.fwd, DropNoRoute, 1)
	expectUnreachable(t, a.tun, false, p) // the sender learns at once, as from flanneld
	n.Send(ap("192.0.2.2:8285"), ap("192.0.2.1:8285"), mkUDP("10.96.2.7", "10.96.1.5", nil))
	waitDrop(t, a.fwd, DropUnknownPeer, 1)
	expectNothing(t, b.tun)
	expectNothing(t, a.tun)
	if len(a.fwd.Stats().Peers) != 0 {
		t.Fatalf("peers %+v", a.fwd.Stats().Peers)
	}
}

func TestSetPeerMovesAddressKeepsCounters(t *testing.T) {
	n, a, _ := twoFakeHosts(t, fakeOpts{}, fakeOpts{})
	c := n.Listen(ap("192.0.2.3:8285"), false, false)
	a.tun.Inject(mkUDP("10.96.1.5", "10.96.2.7", []byte("1")))
	must(t, a.fwd.SetPeer(pfx("10.96.2.0/24"), ap("192.0.2.3:8285")))
	// Wait for the first packet to be counted before sending the second.
	for a.fwd.Stats().PacketsOut < 1 {
		time.Sleep(time.Millisecond)
	}
	a.tun.Inject(mkUDP("10.96.1.5", "10.96.2.7", []byte("2")))
	msgs := []Message{{Buffers: [][]byte{make([]byte, 2000)}}}
	if _, err := readBatch(c, msgs); err != nil || msgs[0].Addr != ap("192.0.2.1:8285") {
		t.Fatalf("moved peer got %v from %v", err, msgs[0].Addr)
	}
	c.Close()
	for i := 0; i < 100 && a.fwd.Stats().PacketsOut < 2; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if s := a.fwd.Stats().Peers[0]; s.Addr != ap("192.0.2.3:8285") || s.PacketsOut != 2 {
		t.Fatalf("peer stats %+v", s)
	}
}

func TestUpdateValidation(t *testing.T) {
	f, err := New(Config{MTU: 1472}, NewFakeTUN("twill0", false), NewFakeNetwork().Listen(ap("192.0.2.1:8285"), false, false))
	must(t, err)
	for _, err := range []error{
		f.AddOverlay(pfx("10.96.0.1/16"), pfx("10.96.1.0/24")),
		f.AddOverlay(pfx("10.96.0.0/16"), pfx("10.97.1.0/24")),
		f.AddOverlay(pfx("10.96.0.0/16"), pfx("10.0.0.0/8")),
		f.AddOverlay(pfx("fd00::/64"), pfx("fd00::/80")),
		f.SetPeer(pfx("10.96.2.1/24"), ap("192.0.2.2:8285")),
		f.SetPeer(pfx("10.96.2.0/24"), ap("192.0.2.2:0")),
		f.SetPeer(pfx("10.96.2.0/24"), ap("[fd00::1]:8285")),
	} {
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("error %v, want ErrInvalid", err)
		}
	}
	for _, c := range []Config{{MTU: 100}, {MTU: 1472, Offload: "fast"}, {MTU: 1472, Name: "a-very-long-tun-name"}} {
		if _, err := New(c, nil, nil); !errors.Is(err, ErrInvalid) {
			t.Errorf("config %+v: error %v, want ErrInvalid", c, err)
		}
	}
	must(t, f.RemoveOverlay(pfx("10.99.0.0/16"))) // unknown: success
	f.Close()
	if err := f.AddOverlay(pfx("10.96.0.0/16"), pfx("10.96.1.0/24")); !errors.Is(err, ErrClosed) {
		t.Fatalf("after close: %v", err)
	}
}

func TestOwnLeaseIsNeverAPeer(t *testing.T) {
	n, a, _ := twoFakeHosts(t, fakeOpts{}, fakeOpts{})
	must(t, a.fwd.SetPeer(pfx("10.96.1.0/24"), ap("192.0.2.1:8285"))) // a watch reporting our own lease
	a.tun.Inject(mkUDP("10.96.1.5", "10.96.1.9", nil))
	waitDrop(t, a.fwd, DropNoRoute, 1)
	n.Send(ap("192.0.2.1:8285"), ap("192.0.2.1:8285"), mkUDP("10.96.1.9", "10.96.1.5", nil))
	waitDrop(t, a.fwd, DropWrongDestination, 1)
	expectNothing(t, a.tun)
}

func TestReplaceOverlayLease(t *testing.T) {
	_, a, _ := twoFakeHosts(t, fakeOpts{}, fakeOpts{})
	must(t, a.fwd.AddOverlay(pfx("10.96.0.0/16"), pfx("10.96.8.0/24")))
	if got := a.tun.Overlays()[pfx("10.96.0.0/16")]; got != pfx("10.96.8.0/24") {
		t.Fatalf("overlays %v", a.tun.Overlays())
	}
	must(t, a.fwd.RemoveOverlay(pfx("10.96.0.0/16")))
	if len(a.tun.Overlays()) != 0 {
		t.Fatalf("overlays %v", a.tun.Overlays())
	}
	a.tun.Inject(mkUDP("10.96.8.5", "10.96.2.7", nil))
	waitDrop(t, a.fwd, DropNoRoute, 1)
}

// TestOffloadPathMovesSuperPackets sends a 60 KB TSO super-packet from A's
// TUN: A must cut it into MSS segments sent as a GSO train, B must merge
// them back into one GSO_TCPV4 write whose bytes equal the original.
func TestOffloadPathMovesSuperPackets(t *testing.T) {
	o := fakeOpts{vnet: true, gso: true, gro: true}
	_, a, b := twoFakeHosts(t, o, o)
	if a.fwd.Path() != "offload" {
		t.Fatalf("path %s", a.fwd.Path())
	}
	payload := payloadBytes(60000, 7)
	const mss = 1420
	a.tun.Inject(mkTSO("10.96.1.5", "10.96.2.7", 5000, tcpFlagACK|tcpFlagPSH, mss, payload))
	got := recv(t, b.tun)
	h := tundev.ParseVnetHdr(got)
	pkt := got[vnetHdrLen:]
	if h.GSOType != vnetGSOTCPv4 || h.GSOSize != mss || h.Flags != vnetFlagNeedCsum || h.CsumStart != 20 || h.CsumOffset != 16 || h.HdrLen != 52 {
		t.Fatalf("vnet header %+v", h)
	}
	if !bytes.Equal(pkt[52:], payload) {
		t.Fatal("payload differs")
	}
	if ipv4TotalLen(pkt) != len(pkt) || !ipv4ChecksumOK(pkt[:20]) {
		t.Fatal("bad ip header on the merged packet")
	}
	if binary.BigEndian.Uint16(pkt[36:38]) != csum.Fold(csum.Pseudo(pkt, protoTCP, len(pkt)-20)) {
		t.Fatal("tcp checksum field is not the folded pseudo-header sum")
	}
	if pkt[33] != tcpFlagACK|tcpFlagPSH || binary.BigEndian.Uint32(pkt[24:28]) != 5000 {
		t.Fatalf("flags %#x seq %d", pkt[33], binary.BigEndian.Uint32(pkt[24:28]))
	}
	segs := (len(payload) + mss - 1) / mss
	if s := a.fwd.Stats(); s.PacketsOut != uint64(segs) || s.UDPSends != 1 || s.TUNReads != 1 {
		t.Fatalf("a stats %+v", s)
	}
	if s := b.fwd.Stats(); s.PacketsIn != uint64(segs) || s.TUNWrites != 1 {
		t.Fatalf("b stats %+v", s)
	}
	// A small packet carrying a partial checksum is completed before sending.
	ack := mkTCP("10.96.1.5", "10.96.2.7", 9, 9, tcpFlagACK, nil)
	binary.BigEndian.PutUint16(ack[36:38], csum.Fold(csum.Pseudo(ack, protoTCP, len(ack)-20)))
	in := make([]byte, vnetHdrLen+len(ack))
	tundev.VnetHdr{Flags: vnetFlagNeedCsum, CsumStart: 20, CsumOffset: 16}.Put(in)
	copy(in[vnetHdrLen:], ack)
	a.tun.Inject(in)
	got = recv(t, b.tun)
	if tundev.ParseVnetHdr(got) != (tundev.VnetHdr{}) {
		t.Fatalf("vnet header on a single packet: %+v", tundev.ParseVnetHdr(got))
	}
	checkTCP(t, got[vnetHdrLen:])
}

// TestOffloadToPlainPeer: a fast host and a plain (flanneld-like) host
// interoperate; the fast side's segments are complete packets on the wire.
func TestOffloadToPlainPeer(t *testing.T) {
	_, a, b := twoFakeHosts(t, fakeOpts{vnet: true, gso: true, gro: true}, fakeOpts{})
	payload := payloadBytes(20000, 3)
	a.tun.Inject(mkTSO("10.96.1.5", "10.96.2.7", 1, tcpFlagACK, 1000, payload))
	var all []byte
	for i := 0; i < 20; i++ {
		p := recv(t, b.tun)
		checkTCP(t, p)
		if len(p) != 1052 || binary.BigEndian.Uint32(p[24:28]) != uint32(1+1000*i) {
			t.Fatalf("segment %d: len %d seq %d", i, len(p), binary.BigEndian.Uint32(p[24:28]))
		}
		all = append(all, p[52:]...)
	}
	if !bytes.Equal(all, payload) {
		t.Fatal("payload differs")
	}
	// And back: plain segments merge into one write on the offload side.
	for i := 0; i < 5; i++ {
		b.tun.Inject(mkTCP("10.96.2.7", "10.96.1.5", uint32(100+1000*i), 1, tcpFlagACK, payload[i*1000:(i+1)*1000]))
	}
	var got []byte
	for len(got) < 5000 {
		p := recv(t, a.tun)
		got = append(got, p[vnetHdrLen+52:]...)
	}
	if !bytes.Equal(got, payload[:5000]) {
		t.Fatal("payload differs on the way back")
	}
}

func TestGSORefusedFallsBack(t *testing.T) {
	o := fakeOpts{vnet: true, gso: true, gro: true, refuseGSO: true}
	_, a, b := twoFakeHosts(t, o, fakeOpts{})
	payload := payloadBytes(10000, 9)
	a.tun.Inject(mkTSO("10.96.1.5", "10.96.2.7", 1, tcpFlagACK, 1000, payload))
	for i := 0; i < 10; i++ {
		checkTCP(t, recv(t, b.tun))
	}
	if s := a.fwd.Stats(); s.UDPGSO || s.Path != "partial" || s.Drops[DropSendError] != 0 {
		t.Fatalf("stats %+v", s)
	}
}

// TestInboundForwardsTheAnswer: what the container queues on the TUN
// while the inbound loop writes to it is forwarded by that loop at once,
// one packet of it (pollBudget); the rest is left queued, in order, for
// the outbound loop.
func TestInboundForwardsTheAnswer(t *testing.T) {
	n := NewFakeNetwork()
	tun := NewFakeTUN("twill0", false)
	tun.Answer = func([]byte) [][]byte {
		return [][]byte{mkUDP("10.96.1.7", "10.96.2.5", []byte("pong1")), mkUDP("10.96.1.7", "10.96.2.5", []byte("pong2"))}
	}
	f := hotForwarder(t, tun, n.Listen(ap("192.0.2.1:8285"), false, false))
	peer := n.Listen(ap("192.0.2.2:8285"), false, false)
	out := newOutbound(f)
	in := newInbound(f, out)
	n.Send(ap("192.0.2.2:8285"), ap("192.0.2.1:8285"), mkUDP("10.96.2.5", "10.96.1.7", []byte("ping")))
	if k, err := in.rd.drain(0); k != 1 || err != nil {
		t.Fatalf("inbound drained %d batches: %v", k, err)
	}
	recv(t, tun)
	msgs := []Message{{Buffers: [][]byte{make([]byte, 2000)}}}
	k, err := readBatch(peer, msgs)
	if err != nil || k != 1 || !bytes.HasSuffix(msgs[0].Buffers[0][:msgs[0].N], []byte("pong1")) {
		t.Fatalf("peer got %d %q: %v", k, msgs[0].Buffers[0][:msgs[0].N], err)
	}
	if s := f.Stats(); s.TUNReads != 1 || s.TUNReadsAfterWrite != 1 {
		t.Fatalf("tun reads %d, after write %d", s.TUNReads, s.TUNReadsAfterWrite)
	}
	if err := tun.WaitRead(); err != nil {
		t.Fatal(err) // the second answer must still signal the outbound loop
	}
	if k, err := out.rd.drain(0); k != 1 || err != nil {
		t.Fatalf("outbound drained %d: %v", k, err)
	}
	if k, err := readBatch(peer, msgs); err != nil || k != 1 || !bytes.HasSuffix(msgs[0].Buffers[0][:msgs[0].N], []byte("pong2")) {
		t.Fatalf("peer got %d %q: %v", k, msgs[0].Buffers[0][:msgs[0].N], err)
	}
	if s := f.Stats(); s.TUNReads != 2 || s.TUNReadsAfterWrite != 1 {
		t.Fatalf("tun reads %d, after write %d", s.TUNReads, s.TUNReadsAfterWrite)
	}
}

func TestRunStopsOnCancel(t *testing.T) {
	tun := NewFakeTUN("twill0", false)
	f, err := New(Config{MTU: 1472, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, tun, NewFakeNetwork().Listen(ap("192.0.2.1:8285"), false, false))
	must(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	cancel()
	select {
	case err := <-done:
		must(t, err)
	case <-time.After(5 * time.Second):
		t.Fatal("run did not return")
	}
	if _, err := tun.TryRead(make([]byte, 10)); err == nil {
		t.Fatal("tun still open after run")
	}
}

// expectUnreachable reads the next packet the forwarder wrote to tun and
// checks it is an ICMP net unreachable about offender from the first
// address of the offender's destination /24, with valid checksums.
func expectUnreachable(t *testing.T, tun *FakeTUN, vnet bool, offender []byte) {
	t.Helper()
	b := recv(t, tun)
	if vnet {
		if h := tundev.ParseVnetHdr(b); h != (tundev.VnetHdr{}) {
			t.Fatalf("ICMP reply with virtio header %+v, want all zero", h)
		}
		b = b[vnetHdrLen:]
	}
	if _, r := ipv4Header(b, true); r != reasonNone || !ipv4ChecksumOK(b[:20]) {
		t.Fatalf("ICMP reply is not a valid IPv4 packet (%v): % x", r, b)
	}
	from := u32Addr(ipv4Dst(offender) &^ 0xff)
	if u32Addr(ipv4Src(b)) != from || ipv4Dst(b) != ipv4Src(offender) || b[9] != protoICMP {
		t.Fatalf("reply %s -> %s proto %d, want ICMP %s -> %s", u32Addr(ipv4Src(b)), u32Addr(ipv4Dst(b)), b[9], from, u32Addr(ipv4Src(offender)))
	}
	if b[20] != icmpDestUnreach || b[21] != icmpNetUnreach || csum.Fold(csum.Add(b[20:], 0)) != 0xffff {
		t.Fatalf("ICMP type %d code %d checksum ok %v, want 3/0", b[20], b[21], csum.Fold(csum.Add(b[20:], 0)) == 0xffff)
	}
	want := offender[:min(len(offender), 20+icmpQuote)]
	if !bytes.Equal(b[28:], want) {
		t.Fatalf("quoted % x, want the offender's header and first 8 bytes % x", b[28:], want)
	}
}

func TestUnreachableAnswers(t *testing.T) {
	for _, vnet := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "vnet"}[vnet], func(t *testing.T) {
			_, a, _ := twoFakeHosts(t, fakeOpts{vnet: vnet}, fakeOpts{vnet: vnet})
			inject := func(p []byte) {
				if vnet {
					p = append(make([]byte, vnetHdrLen), p...)
				}
				a.tun.Inject(p)
			}
			drops := uint64(0)
			noAnswer := func(what string, p []byte) {
				t.Helper()
				inject(p)
				drops++
				waitDrop(t, a.fwd, DropNoRoute, drops)
				select {
				case got := <-a.tun.Written():
					t.Fatalf("%s was answered: % x", what, got[:min(len(got), 40)])
				case <-time.After(50 * time.Millisecond):
				}
			}
			// To a subnet nobody holds: TCP, UDP and ping get an answer.
			for _, p := range [][]byte{
				mkTCP("10.96.1.5", "10.96.9.7", 1, 0, 0x02, nil),
				mkUDP("10.96.1.5", "10.96.9.7", []byte("0123456789")),
				mkIPv4("10.96.1.5", "10.96.9.7", protoICMP, []byte{8, 0, 0, 0, 0, 1, 0, 1}),
			} {
				inject(p)
				drops++
				expectUnreachable(t, a.tun, vnet, p)
			}
			// ICMP errors, later fragments, and packets outside every overlay do not.
			noAnswer("an ICMP error", mkIPv4("10.96.1.5", "10.96.9.7", protoICMP, []byte{3, 1, 0, 0, 0, 0, 0, 0}))
			frag := mkUDP("10.96.1.5", "10.96.9.7", []byte("x"))
			frag[6], frag[7] = 0, 10 // fragment offset 80
			csum.SetIPv4(frag[:20])
			noAnswer("a later fragment", frag)
			noAnswer("a packet to no overlay", mkUDP("10.96.1.5", "10.200.0.1", nil))
			noAnswer("a packet to a multicast group", mkUDP("10.96.1.5", "239.1.2.3", nil))
			if got := a.fwd.Stats().UnreachablesSent; got != 3 {
				t.Fatalf("UnreachablesSent = %d, want 3", got)
			}
			// A flood gets at most the burst, and every packet is still counted.
			for i := 0; i < 3*unreachableBurst; i++ {
				inject(mkUDP("10.96.1.5", "10.96.9.7", nil))
			}
			drops += 3 * unreachableBurst
			waitDrop(t, a.fwd, DropNoRoute, drops)
			if got := a.fwd.Stats().UnreachablesSent - 3; got < unreachableBurst-3 || got > unreachableBurst+2 {
				t.Fatalf("%d answers to a flood of %d, want about the burst of %d", got, 3*unreachableBurst, unreachableBurst)
			}
		})
	}
}
