package overlay

import (
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
	readers [2]*reader // the outbound [loopOut] and inbound [loopIn] loops'
	ctr     *counters
	window  time.Duration

	active atomic.Bool
	kick   chan struct{}    // starts a spell
	parked [2]chan struct{} // tells the loops to wait on their devices again
}

// bulkBytes moved within one bulkPeriod is bulk traffic, which ends a
// spell (about 1 Gbit/s). A variable for tests, whose fakes are slower.
var bulkBytes uint64 = 128 << 10

// Indexes of busyPoller.parked.
const (
	loopOut = iota
	loopIn
)

func newBusyPoller(ctr *counters, out, in *reader, window time.Duration) *busyPoller {
	b := &busyPoller{readers: [2]*reader{loopOut: out, loopIn: in}, ctr: ctr, window: window, kick: make(chan struct{}, 1)}
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

// run serves spells until done is closed.
func (b *busyPoller) run(done <-chan struct{}) {
	for {
		select {
		case <-b.kick:
		case <-done:
			return
		}
		b.ctr.busySpells.Add(1)
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
	for {
		moved := 0
		for _, r := range b.readers {
			n, err := r.tryDrain(busyBudget)
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
func (b *busyPoller) moved() uint64 { return b.ctr.bytesIn.Load() + b.ctr.bytesOut.Load() }
