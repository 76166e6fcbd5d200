package overlay

import (
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// hotWait and hotSpin: see hotPoll.
	hotWait = 100 * time.Microsecond
	hotSpin = 20 * time.Microsecond
)

// reader is the reading side of one device: the TUN for the outbound loop,
// the socket for the inbound loop. The loop, the inbound loop's poll of
// the TUN and the busy poller all read through it; mu lets one of them
// read at a time, which keeps packets in order.
type reader struct {
	mu   sync.Mutex
	wait func() error // the device's WaitRead
	// step reads one packet (or batch) and forwards it; it reports false
	// when none was queued.
	step func() (bool, error)
}

// drain steps until nothing is queued or, when max > 0, max steps moved
// something; it returns how many did. The caller holds mu.
func (r *reader) drain(max int) (int, error) {
	n := 0
	for max == 0 || n < max {
		ok, err := r.step()
		if err != nil || !ok {
			return n, err
		}
		n++
	}
	return n, nil
}

// lockedDrain is drain holding mu.
func (r *reader) lockedDrain(max int) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.drain(max)
}

// tryDrain is lockedDrain when no one else is reading, else 0.
func (r *reader) tryDrain(max int) (int, error) {
	if !r.mu.TryLock() {
		return 0, nil
	}
	defer r.mu.Unlock()
	return r.drain(max)
}

// serve is the forwarding loop of r, loop being loopOut or loopIn: it
// waits on the device, drains it (and keeps draining a while when packets
// come fast: hotPoll), and tells b how long the wait was. It returns the
// device's error.
func serve(loop int, r *reader, b *busyPoller, done <-chan struct{}) error {
	for {
		b.standBy(loop, done)
		t0 := time.Now()
		if err := r.wait(); err != nil {
			return err
		}
		waited := time.Since(t0)
		if _, err := r.lockedDrain(0); err != nil {
			return err
		}
		if waited < hotWait {
			if err := hotPoll(r); err != nil {
				return err
			}
		}
		b.woke(waited)
	}
}

// hotPoll keeps draining r, yielding the CPU between polls, until hotSpin
// passed without a packet. A loop calls it when its wait was shorter than
// hotWait: packets then come faster than parking and being woken take
// (tens of µs of CPU on a VM), and the next one is likely to arrive
// within hotSpin. Lab A/B, 5 paired rounds: -P 4 +5.5% (won all five),
// -P 1 +2%; sparse traffic never gets here.
func hotPoll(r *reader) error {
	last := time.Now()
	for time.Since(last) < hotSpin {
		unix.RawSyscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
		n, err := r.lockedDrain(0)
		if err != nil {
			return err
		}
		if n > 0 {
			last = time.Now()
		}
	}
	return nil
}
