package overlay

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"
)

// spelling reports whether b's forwarder has a busy polling spell running.
func (h *fakeHost) spelling() bool {
	b := h.fwd.busy.Load()
	return b != nil && b.active.Load()
}

// waitFor polls cond every millisecond (a spell can be over within 50 ms,
// testbed.WaitFor's interval).
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not happen within %v", what, d)
		}
	}
}

// seqPacket is a UDP packet from 10.96.1.5 to 10.96.2.7 (or back) carrying
// seq and size-4 filler bytes.
func seqPacket(fromA bool, seq uint32, size int) []byte {
	p := make([]byte, max(size, 4))
	binary.BigEndian.PutUint32(p, seq)
	if fromA {
		return mkUDP("10.96.1.5", "10.96.2.7", p)
	}
	return mkUDP("10.96.2.7", "10.96.1.5", p)
}

// expectSeqs reads n packets from tun and checks their sequence numbers
// run 0..n-1 in order.
func expectSeqs(t *testing.T, tun *FakeTUN, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		p := recv(t, tun)
		if got := binary.BigEndian.Uint32(p[28:]); got != uint32(i) {
			t.Fatalf("packet %d carries seq %d: out of order", i, got)
		}
	}
}

// TestBusyPollSpell: sparse traffic after a quiet spell starts busy
// polling on both hosts; packets flow both ways, in order, while it runs;
// it ends after the window without traffic, and the loops carry on.
func TestBusyPollSpell(t *testing.T) {
	_, a, b := twoFakeHosts(t, fakeOpts{busy: 50 * time.Millisecond}, fakeOpts{busy: 50 * time.Millisecond})
	time.Sleep(2 * quietGap)
	a.tun.Inject(seqPacket(true, 0, 10))
	recv(t, b.tun)
	waitFor(t, "spells on both hosts", time.Second, func() bool { return a.spelling() && b.spelling() })
	// Interleaved both ways from concurrent senders while the spells run.
	const n = 1000
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := uint32(0); i < n; i++ {
			b.tun.Inject(seqPacket(false, i, 100))
		}
	}()
	for i := uint32(1); i <= n; i++ {
		a.tun.Inject(seqPacket(true, i, 100))
	}
	<-done
	expectSeqs(t, a.tun, n)
	for i := 1; i <= n; i++ {
		if got := binary.BigEndian.Uint32(recv(t, b.tun)[28:]); got != uint32(i) {
			t.Fatalf("packet %d carries seq %d: out of order", i, got)
		}
	}
	waitFor(t, "the spells' end", time.Second, func() bool { return !a.spelling() && !b.spelling() })
	// The loops wait on their devices again.
	a.tun.Inject(seqPacket(true, 0, 10))
	recv(t, b.tun)
	sa, sb := a.fwd.Stats(), b.fwd.Stats()
	if sa.BusyPollSpells == 0 || sb.BusyPollSpells == 0 {
		t.Fatalf("spells: a %d, b %d", sa.BusyPollSpells, sb.BusyPollSpells)
	}
}

// TestBusyPollEndsOnBulk: a spell with a long window ends once the traffic
// moves more than bulkBytes in a bulkPeriod; the loops take it over.
func TestBusyPollEndsOnBulk(t *testing.T) {
	// Fakes under the race detector move far less than 1 Gbit/s.
	old := bulkBytes
	t.Cleanup(func() { bulkBytes = old }) // after the hosts' cleanup stopped them
	bulkBytes = 16 << 10
	_, a, b := twoFakeHosts(t, fakeOpts{busy: 10 * time.Second}, fakeOpts{})
	time.Sleep(2 * quietGap)
	a.tun.Inject(seqPacket(true, 0, 10))
	recv(t, b.tun)
	waitFor(t, "a spell", time.Second, a.spelling)
	const n = 2000 // 2.8 MB
	go func() {
		for i := uint32(0); i < n; i++ {
			a.tun.Inject(seqPacket(true, i, 1400))
		}
	}()
	expectSeqs(t, b.tun, n)
	waitFor(t, "the spell's end", 2*time.Second, func() bool { return !a.spelling() })
}

// TestBusyPollStopsWithRun: cancelling Run ends a spell at once.
func TestBusyPollStopsWithRun(t *testing.T) {
	n := NewFakeNetwork()
	tun := NewFakeTUN("twill0", false)
	f, err := New(Config{MTU: 1472, BusyPoll: 10 * time.Second, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))},
		tun, n.Listen(ap("192.0.2.1:8285"), false, false))
	must(t, err)
	must(t, f.AddOverlay(pfx("10.96.0.0/16"), pfx("10.96.1.0/24")))
	must(t, f.SetPeer(pfx("10.96.2.0/24"), ap("192.0.2.2:8285")))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	time.Sleep(2 * quietGap)
	tun.Inject(seqPacket(true, 0, 10))
	h := &fakeHost{tun: tun, fwd: f}
	waitFor(t, "a spell", time.Second, h.spelling)
	cancel()
	select {
	case err := <-done:
		must(t, err)
	case <-time.After(2 * time.Second):
		t.Fatal("run did not return during a spell")
	}
}

func TestBusyPollConfig(t *testing.T) {
	for _, d := range []time.Duration{-time.Millisecond, MaxBusyPoll + 1} {
		_, err := New(Config{MTU: 1472, BusyPoll: d}, NewFakeTUN("twill0", false), NewFakeNetwork().Listen(ap("192.0.2.1:8285"), false, false))
		if !errors.Is(err, ErrInvalid) {
			t.Errorf("busy poll %v: %v", d, err)
		}
	}
}

// TestHotPoll: after a short wait the loop keeps draining until hotSpin
// passed without a packet, and stops at a device error.
func TestHotPoll(t *testing.T) {
	r := &reader{}
	gaps := []time.Duration{0, hotSpin / 2, hotSpin / 2} // packets at these delays
	start := time.Now()
	next := time.Duration(0)
	r.step = func() (bool, error) {
		if r.mu.TryLock() {
			t.Fatal("step called without the reader's mutex")
		}
		if len(gaps) > 0 && time.Since(start) >= next+gaps[0] {
			next += gaps[0]
			gaps = gaps[1:]
			return true, nil
		}
		return false, nil
	}
	err := hotPoll(r)
	took := time.Since(start)
	if err != nil || len(gaps) != 0 || took < next+hotSpin {
		t.Fatalf("err %v, %d packets left undrained, returned after %v (last packet at %v)", err, len(gaps), took, next)
	}
	boom := errors.New("device gone")
	r.step = func() (bool, error) { return false, boom }
	if err := hotPoll(r); err != boom {
		t.Fatalf("error %v, want the step's", err)
	}
}
