package wireguard

import (
	"testing"
	"time"
)

func TestBacklog(t *testing.T) {
	b := newBacklog(4, 200*time.Millisecond)
	b.read(4)
	start := time.Now()
	b.admit() // at the limit: no wait
	if d := time.Since(start); d > 50*time.Millisecond {
		t.Fatalf("admit at the limit waited %v", d)
	}
	b.read(3)
	go func() {
		time.Sleep(30 * time.Millisecond)
		b.sent(2) // 5 in flight: still over
		time.Sleep(30 * time.Millisecond)
		b.sent(2) // 3: under
	}()
	start = time.Now()
	b.admit()
	if d := time.Since(start); d < 50*time.Millisecond || d > 150*time.Millisecond {
		t.Errorf("admit over the limit returned after %v, want when enough had left (~60 ms)", d)
	}
	if b.pauses.Load() != 1 || b.forgiven.Load() != 0 {
		t.Errorf("pauses %d forgiven %d, want 1 and 0", b.pauses.Load(), b.forgiven.Load())
	}
	// Packets wireguard-go dropped never leave: the wait forgives them.
	b.read(10)
	start = time.Now()
	b.admit()
	if d := time.Since(start); d < 190*time.Millisecond {
		t.Errorf("admit with nothing leaving returned after %v, want the whole wait", d)
	}
	if b.in.Load() != 0 || b.forgiven.Load() != 1 {
		t.Errorf("after a forgiving wait: %d in flight, %d forgiven; want 0 and 1", b.in.Load(), b.forgiven.Load())
	}
	// More sent than read (keepalives, handshakes) never goes negative.
	b.sent(5)
	if b.in.Load() != 0 {
		t.Errorf("%d in flight after sending what was never read, want 0", b.in.Load())
	}
	var nb *backlog // no backlog: every call is a no-op
	nb.read(1000)
	nb.admit()
	nb.sent(1)
	if n := testing.AllocsPerRun(100, func() { b.read(1); b.sent(1); b.admit() }); n != 0 {
		t.Errorf("%v allocations per read, send and admit, want 0", n)
	}
}
