package wireguard

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/tun/tuntest"
)

var loopback = netip.MustParseAddr("127.0.0.1")

// loopHost is a bind on a port of its own, reached on 127.0.0.1, with
// wireguard-go's receive buffers.
type loopHost struct {
	b       *udpBind
	recv    conn.ReceiveFunc
	addr    netip.AddrPort
	ep      conn.Endpoint // how the other host reaches it
	packets [][]byte
	sizes   []int
	eps     []conn.Endpoint
}

func newLoopHost(t *testing.T) *loopHost {
	t.Helper()
	b := newUDPBind()
	fns, port, err := b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	if len(fns) != 1 || port == 0 {
		t.Fatalf("Open(0) = %d receive funcs, port %d; want 1 and a real port", len(fns), port)
	}
	h := &loopHost{b: b, recv: fns[0], addr: netip.AddrPortFrom(loopback, port)}
	if h.ep, err = b.ParseEndpoint(h.addr.String()); err != nil {
		t.Fatal(err)
	}
	h.packets = make([][]byte, b.BatchSize())
	for i := range h.packets {
		h.packets[i] = make([]byte, 65535)
	}
	h.sizes = make([]int, b.BatchSize())
	h.eps = make([]conn.Endpoint, b.BatchSize())
	return h
}

// receive returns the next want messages (their bytes and senders),
// failing the test if they take over 5 s.
// send sends msg to ep as one datagram.
func (h *loopHost) send(t *testing.T, ep conn.Endpoint, msg string) {
	t.Helper()
	if err := h.b.Send([][]byte{[]byte(msg)}, ep); err != nil {
		t.Fatal(err)
	}
}

func (h *loopHost) receive(t *testing.T, want int) ([][]byte, []conn.Endpoint) {
	t.Helper()
	h.b.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	var msgs [][]byte
	var eps []conn.Endpoint
	for len(msgs) < want {
		n, err := h.recv(h.packets, h.sizes, h.eps)
		if err != nil {
			t.Fatalf("after %d of %d messages: %v", len(msgs), want, err)
		}
		for i := range n {
			msgs = append(msgs, bytes.Clone(h.packets[i][:h.sizes[i]]))
			eps = append(eps, h.eps[i])
		}
	}
	if len(msgs) > want {
		t.Fatalf("got %d messages, want %d", len(msgs), want)
	}
	return msgs, eps
}

// datagrams makes bufs of the given sizes, each of its own bytes, so that
// a byte in the wrong place or message shows.
func datagrams(rng *rand.ChaCha8, sizes ...int) [][]byte {
	bufs := make([][]byte, len(sizes))
	for i, n := range sizes {
		bufs[i] = make([]byte, n)
		rng.Read(bufs[i])
	}
	return bufs
}

// sendReceive sends bufs from a to b and checks that b gets them as they were.
func sendReceive(t *testing.T, a, b *loopHost, bufs [][]byte) {
	t.Helper()
	if err := a.b.Send(bufs, b.ep); err != nil {
		t.Fatal(err)
	}
	got, _ := b.receive(t, len(bufs))
	sameMessages(t, got, bufs)
}

// sizes is n of size, then the rest.
func sizes(n, size int, rest ...int) []int {
	s := make([]int, n, n+len(rest))
	for i := range s {
		s[i] = size
	}
	return append(s, rest...)
}

func sameMessages(t *testing.T, got, want [][]byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d messages, want %d", len(got), len(want))
	}
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("message %d: got %d bytes (%x…), want %d (%x…)", i, len(got[i]), got[i][:min(8, len(got[i]))], len(want[i]), want[i][:min(8, len(want[i]))])
		}
	}
}

func TestBindTrainArrivesAsMessages(t *testing.T) {
	a, b := newLoopHost(t), newLoopHost(t)
	rng := rand.NewChaCha8([32]byte{1})
	for _, tc := range []struct {
		name  string
		sizes []int
	}{
		{"train and a shorter one", sizes(10, 1300, 700)},
		{"the same size again", sizes(20, 1300, 1)},
		{"over 64 KiB: two trains", sizes(64, 1300)},
		{"a full batch of mixed runs", append(append(sizes(60, 1452, 100), sizes(40, 1200, 1200)...), sizes(27, 148)...)},
		{"one datagram", sizes(1, 92)},
	} {
		t.Run(tc.name, func(t *testing.T) { sendReceive(t, a, b, datagrams(rng, tc.sizes...)) })
	}
}

// Each step is sent and received before the next, so it meets the
// segment size the previous one left as the guess.
func TestBindRepairsMisguessedSegments(t *testing.T) {
	a, b := newLoopHost(t), newLoopHost(t)
	rng := rand.NewChaCha8([32]byte{2})
	for _, tc := range []struct {
		name  string
		sizes []int
	}{
		{"1000-byte train, guess 1452", sizes(8, 1000, 400)},
		{"1000-byte train again", sizes(5, 1000)},
		{"plain 3000 after 1000s", sizes(1, 3000)},
		{"1200-byte train after a plain 3000", sizes(7, 1200, 100)},
		{"1000-byte train after 1200s", sizes(30, 1000, 999)},
		{"100-byte train", sizes(64, 100)},
		{"64 segments as guessed: the last in the last, whole packet", sizes(64, 100)},
		{"largest datagram after 100s", sizes(1, maxPayload)},
		{"large plain after the largest", sizes(1, 20000)},
		{"1452-byte train after a large plain", sizes(40, 1452, 12)},
		{"all at once", append(append(append(sizes(10, 1000), sizes(1, 3000)...), sizes(20, 1200, 50)...), sizes(1, maxPayload)...)},
	} {
		t.Run(tc.name, func(t *testing.T) { sendReceive(t, a, b, datagrams(rng, tc.sizes...)) })
	}
}

func TestBindWithoutGSO(t *testing.T) {
	a, b := newLoopHost(t), newLoopHost(t)
	a.b.noGSO.Store(true) // as after a device refused a train
	sendReceive(t, a, b, datagrams(rand.NewChaCha8([32]byte{3}), sizes(20, 1300, 600)...))
}

func TestBindOpenClose(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	b := newUDPBind()
	fns, port, err := b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	if port == 0 {
		t.Fatal("Open(0) returned port 0")
	}
	if _, _, err := b.Open(0); !errors.Is(err, conn.ErrBindAlreadyOpen) {
		t.Fatalf("second Open: %v, want ErrBindAlreadyOpen", err)
	}
	if err := b.SetMark(0); err != nil {
		t.Fatal(err)
	}
	packets, sizes, eps := [][]byte{make([]byte, 65535)}, make([]int, 1), make([]conn.Endpoint, 1)
	done := make(chan error)
	go func() {
		_, err := fns[0](packets, sizes, eps)
		done <- err
	}()
	time.Sleep(50 * time.Millisecond) // let it wait for a datagram
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("pending receive after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end a pending receive")
	}
	if _, err := fns[0](packets, sizes, eps); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("receive after Close: %v, want net.ErrClosed", err)
	}
	ep, _ := b.ParseEndpoint(netip.AddrPortFrom(loopback, port).String())
	if err := b.Send([][]byte{{1}}, ep); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Send after Close: %v, want net.ErrClosed", err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := b.SetMark(1); err != nil {
		t.Fatalf("SetMark when closed: %v", err)
	}
	// wireguard-go closes and opens again on a port change.
	if _, again, err := b.Open(port); err != nil || again != port {
		t.Fatalf("Open(%d) after Close = %d, %v", port, again, err)
	}
	b.Close()
}

func TestBindEndpoints(t *testing.T) {
	a, b := newLoopHost(t), newLoopHost(t)
	a.send(t, b.ep, "hello")
	_, eps := b.receive(t, 1)
	from := eps[0]
	if from.SrcIP() != loopback || from.SrcToString() != "127.0.0.1" {
		t.Fatalf("local address %v (%q), want 127.0.0.1", from.SrcIP(), from.SrcToString())
	}
	if from.DstIP() != loopback || from.DstToString() != a.addr.String() {
		t.Fatalf("sender %s, want %s", from.DstToString(), a.addr)
	}
	if want, _ := a.addr.MarshalBinary(); !bytes.Equal(from.DstToBytes(), want) {
		t.Fatalf("DstToBytes %x, want %x", from.DstToBytes(), want)
	}
	// A reply to that endpoint reaches the sender.
	b.send(t, from, "hi back")
	if got, _ := a.receive(t, 1); string(got[0]) != "hi back" {
		t.Fatalf("reply %q", got[0])
	}
	// The same sender again: the same endpoint, not a new one.
	a.send(t, b.ep, "again")
	if _, eps := b.receive(t, 1); eps[0] != from {
		t.Fatal("a second datagram from one sender got a new endpoint")
	}
	// Cleared, the kernel picks the source; the next datagram sets one again.
	from.ClearSrc()
	if from.SrcIP().IsValid() || from.SrcToString() != "" {
		t.Fatalf("after ClearSrc the source is %v", from.SrcIP())
	}
	b.send(t, from, "no source")
	if got, _ := a.receive(t, 1); string(got[0]) != "no source" {
		t.Fatalf("reply without a source: %q", got[0])
	}
	a.send(t, b.ep, "once more")
	if _, eps := b.receive(t, 1); eps[0].SrcIP() != loopback {
		t.Fatalf("after ClearSrc and a datagram the source is %v", eps[0].SrcIP())
	}

	for _, s := range []string{"[::1]:51820", "[2001:db8::1]:51820", "garbage", "127.0.0.1", "127.0.0.1:x", ""} {
		if ep, err := a.b.ParseEndpoint(s); err == nil {
			t.Errorf("ParseEndpoint(%q) = %s, want an error", s, ep.DstToString())
		}
	}
	if ep, err := a.b.ParseEndpoint("[::ffff:127.0.0.1]:51820"); err != nil || ep.DstToString() != "127.0.0.1:51820" {
		t.Errorf("ParseEndpoint of a v4-mapped address = %v, %v", ep, err)
	}
	if err := a.b.Send([][]byte{{1}}, &conn.StdNetEndpoint{AddrPort: b.addr}); !errors.Is(err, conn.ErrWrongEndpointType) {
		t.Errorf("Send to a foreign endpoint: %v", err)
	}
}

// wireguard-go sends to each peer from its own goroutine.
func TestBindConcurrentSends(t *testing.T) {
	a, b := newLoopHost(t), newLoopHost(t)
	const senders, batches = 4, 4
	want := map[string]bool{}
	var all [senders][][][]byte
	for i := range senders {
		rng := rand.NewChaCha8([32]byte{4, byte(i)})
		for range batches {
			bufs := datagrams(rng, sizes(8, 1000+100*i, 10)...)
			all[i] = append(all[i], bufs)
			for _, m := range bufs {
				want[string(m)] = true
			}
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, senders)
	for i := range senders {
		wg.Go(func() {
			for _, bufs := range all[i] {
				if err := a.b.Send(bufs, b.ep); err != nil {
					errs <- fmt.Errorf("sender %d: %w", i, err)
					return
				}
			}
		})
	}
	got, _ := b.receive(t, len(want))
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for _, m := range got {
		if !want[string(m)] {
			t.Fatalf("a message of %d bytes that no one sent", len(m))
		}
		delete(want, string(m))
	}
}

// Neither Send nor the ReceiveFunc allocates once a sender is known.
func TestBindAllocations(t *testing.T) {
	a, b := newLoopHost(t), newLoopHost(t)
	bufs := datagrams(rand.NewChaCha8([32]byte{5}), sizes(16, 1300, 200)...)
	b.b.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	var err error
	roundTrip := func() {
		if err = a.b.Send(bufs, b.ep); err != nil {
			return
		}
		for got := 0; got < len(bufs) && err == nil; {
			var n int
			n, err = b.recv(b.packets, b.sizes, b.eps)
			got += n
		}
	}
	roundTrip()
	allocs := testing.AllocsPerRun(20, roundTrip)
	if err != nil {
		t.Fatal(err)
	}
	if allocs != 0 && !raceEnabled {
		t.Fatalf("%v allocations per send and receive of %d messages, want 0", allocs, len(bufs))
	}
}

// Two WireGuard devices over the bind on 127.0.0.1: handshakes (their
// cookies and sticky sources) and data both ways, and Close ends the
// device's receiving.
func TestBindCarriesWireGuard(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	p := &pair{subs: [2]netip.Prefix{netip.MustParsePrefix("10.97.1.0/24"), netip.MustParsePrefix("10.97.2.0/24")}}
	for i := range 2 {
		pc, err := net.ListenPacket("udp4", "127.0.0.1:0") // a free port
		if err != nil {
			t.Fatal(err)
		}
		p.eps[i] = pc.LocalAddr().(*net.UDPAddr).AddrPort()
		pc.Close()
		if p.keys[i], err = GenerateKey(); err != nil {
			t.Fatal(err)
		}
		p.tuns[i] = tuntest.NewChannelTUN()
		be := Backend{ListenPort: int(p.eps[i].Port())}
		d, err := New(Config{Overlay: overlay, Local: p.subs[i], PrivateKey: p.keys[i], Backend: be}, p.tuns[i].TUN(), newUDPBind())
		if err != nil {
			t.Fatal(err)
		}
		d.introduceUntil = time.Time{}
		p.devs[i] = d
		defer d.Close() // before goleak looks
	}
	for i := range 2 {
		j := 1 - i
		if err := p.devs[i].SetPeer(Peer{Subnet: p.subs[j], PublicKey: p.keys[j].Public(), Endpoint: p.eps[j]}); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		for i := range 2 {
			pkt := tuntest.Ping(p.subs[1-i].Addr().Next(), p.subs[i].Addr().Next())
			if got := p.send(t, i, pkt, 5*time.Second); !bytes.Equal(got, pkt) {
				t.Fatalf("host %d got %x, want the ping", 2-i, got)
			}
		}
	}
}
