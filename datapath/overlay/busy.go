package overlay

import (
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// busyBudget caps what the busy poller reads from one device before it
	// looks at the other: TUN packets or socket batches.
	busyBudget = 8
	// bulkPeriod is how often a spell checks for bulk traffic.
	bulkPeriod = time.Millisecond
	// quietGap is how long a loop must have waited for its device before
	// the traffic it then gets counts as sparse and starts a spell.
	quietGap = 5 * time.Millisecond
	// hotWait and hotSpin: see hotPoll.
	hotWait = 100 * time.Microsecond
	hotSpin = 20 * time.Microsecond
)

// busyPoller trades a CPU for latency (Config.BusyPoll). When sparse
// traffic wakes a loop, one goroutine keeps polling the TUN and the socket
// without sleeping until neither had anything for the window, and the
// loops stand by meanwhile. A packet that arrives while it polls is read
// at once, where a parked loop would first be woken: on hosts whose idle
// CPUs wake slowly (virtual machines, deep C-states) that wake-up is most
// of a round trip. Bulk traffic ends a spell: the two loops, one per
// direction, move it faster than one poller. Readers hold the loops'
// mutexes, so packets stay in order.
type busyPoller struct {
	out    *outbound
	in     *inbound
	window time.Duration

	active atomic.Bool
	kick   chan struct{}    // starts a spell
	parked [2]chan struct{} // tells the outbound [loopOut] and inbound [loopIn] loops to wait again
	spells atomic.Uint64
}

// bulkBytes moved within one bulkPeriod is bulk traffic, which ends a
// spell (about 1 Gbit/s). A variable for tests, whose fakes are slower.
var bulkBytes uint64 = 128 << 10

// Indexes of busyPoller.parked.
const (
	loopOut = iota
	loopIn
)

func newBusyPoller(out *outbound, in *inbound, window time.Duration) *busyPoller {
	b := &busyPoller{out: out, in: in, window: window, kick: make(chan struct{}, 1)}
	for i := range b.parked {
		b.parked[i] = make(chan struct{}, 1)
	}
	return b
}

// woke is called by a loop after it drained its device following a wait
// of waited: a long wait means sparse traffic, and a spell starts unless
// one runs. A nil poller (busy polling off) does nothing.
func (b *busyPoller) woke(waited time.Duration) {
	if b == nil || waited < quietGap || b.active.Swap(true) {
		return
	}
	select {
	case b.kick <- struct{}{}:
	default:
	}
}

// standBy holds loop i while a spell runs: waiting on its device then
// would only wake it for packets the poller reads first.
func (b *busyPoller) standBy(i int, done <-chan struct{}) {
	if b == nil || !b.active.Load() {
		return
	}
	select {
	case <-b.parked[i]:
	case <-done:
	}
}

// serve is a forwarding loop, loop being loopOut or loopIn: it waits on
// its device, drains it holding mu (and keeps draining a while when
// packets come fast: hotPoll), and tells b how long the wait was. It
// returns the device's error.
func serve(loop int, b *busyPoller, done <-chan struct{}, mu *sync.Mutex, wait func() error, drain func(max int) (int, error)) error {
	for {
		b.standBy(loop, done)
		t0 := time.Now()
		if err := wait(); err != nil {
			return err
		}
		waited := time.Since(t0)
		mu.Lock()
		_, err := drain(0)
		mu.Unlock()
		if err != nil {
			return err
		}
		if waited < hotWait {
			if err := hotPoll(mu, drain); err != nil {
				return err
			}
		}
		b.woke(waited)
	}
}

// hotPoll keeps draining, yielding the CPU between polls, until hotSpin
// passed without a packet. A loop calls it when its wait was shorter than
// hotWait: packets then come faster than parking and being woken take
// (tens of µs of CPU on a VM), and the next one is likely to arrive
// within hotSpin. Lab A/B, 5 paired rounds: -P 4 +5.5% (won all five),
// -P 1 +2%; sparse traffic never gets here.
func hotPoll(mu *sync.Mutex, drain func(max int) (int, error)) error {
	last := time.Now()
	for time.Since(last) < hotSpin {
		unix.RawSyscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
		mu.Lock()
		n, err := drain(0)
		mu.Unlock()
		if err != nil {
			return err
		}
		if n > 0 {
			last = time.Now()
		}
	}
	return nil
}

// run serves spells until done is closed.
func (b *busyPoller) run(done <-chan struct{}) {
	for {
		select {
		case <-b.kick:
		case <-done:
			return
		}
		b.spells.Add(1)
		for i := range b.parked { // a wake-up left over from an earlier spell
			select {
			case <-b.parked[i]:
			default:
			}
		}
		b.spell(done)
		// The loops wait on their devices again; the readiness check in
		// WaitRead sees what arrived after the last poll.
		b.active.Store(false)
		for i := range b.parked {
			select {
			case b.parked[i] <- struct{}{}:
			default:
			}
		}
	}
}

// spell polls both devices until neither had anything for the window,
// the traffic turns bulk, a device fails (the loops report it) or done is
// closed.
func (b *busyPoller) spell(done <-chan struct{}) {
	last := time.Now()
	mark, markBytes := last, b.moved()
	devs := [...]struct {
		mu    *sync.Mutex
		drain func(max int) (int, error)
	}{{&b.out.mu, b.out.drain}, {&b.in.mu, b.in.drain}}
	for {
		moved := 0
		for _, d := range devs {
			if !d.mu.TryLock() {
				continue // its loop is draining
			}
			n, err := d.drain(busyBudget)
			d.mu.Unlock()
			if err != nil {
				return
			}
			moved += n
		}
		now := time.Now()
		if moved > 0 {
			last = now
		} else if now.Sub(last) > b.window {
			return
		}
		if now.Sub(mark) >= bulkPeriod {
			bytes := b.moved()
			if bytes-markBytes > bulkBytes {
				return
			}
			mark, markBytes = now, bytes
		}
		select {
		case <-done:
			return
		default:
		}
		// Give the CPU to any thread waiting for it, often the application
		// the packets are for. Not runtime.Gosched: moving the goroutine
		// between the runtime's threads stalled pings for a scheduler tick
		// (4 ms); Go's preemption still runs the process's other goroutines.
		unix.RawSyscall(unix.SYS_SCHED_YIELD, 0, 0, 0)
	}
}

// moved is the forwarder's byte count, both directions.
func (b *busyPoller) moved() uint64 {
	c := &b.out.f.ctr
	return c.bytesIn.Load() + c.bytesOut.Load()
}

func (f *Forwarder) busySpells() uint64 {
	if b := f.busy.Load(); b != nil {
		return b.spells.Load()
	}
	return 0
}
