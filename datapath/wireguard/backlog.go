package wireguard

import (
	"sync/atomic"
	"time"
)

// backlog bounds how many packets wireguard-go holds in one direction:
// those twill's TUN handed it and twill's bind has not sent yet, or those
// the bind received and the TUN has not written yet. Unbounded, a TCP flow
// faster than the cipher fills wireguard-go's queues with its whole window
// (4,000 and more 64 KB message buffers at -P 1): each stage then finds
// its packets long gone from the cache and the process holds 300 MB and
// more. Bounded, the excess waits in the kernel's queues (in front of the
// TUN, in the socket's buffer), where TCP and the qdisc see it.
//
// The count is an estimate: wireguard-go drops some packets it read (no
// peer, a handshake pending) and sends some it never read (keepalives,
// handshakes). A wait that sees nothing leave for wait forgives the
// backlog, so a count that drifted costs one such pause.
type backlog struct {
	limit int64
	wait  time.Duration
	in    atomic.Int64 // packets read minus packets sent
	left  chan struct{}
	timer *time.Timer // the reader's: wireguard-go reads from one goroutine
	// pauses counts the reads that waited for packets to leave, forgiven
	// the waits that ended with nothing leaving.
	pauses, forgiven atomic.Uint64
}

// backlogLimit is two of wireguard-go's batches: the cipher always has the
// next batch while the reader fills another.
const backlogLimit = 2 * 128

func newBacklog(limit int, wait time.Duration) *backlog {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return &backlog{limit: int64(limit), wait: wait, left: make(chan struct{}, 1), timer: t}
}

// admit waits, before a TUN read, while more than the limit are in flight.
func (b *backlog) admit() {
	if b == nil || b.in.Load() <= b.limit {
		return
	}
	b.pauses.Add(1)
	b.timer.Reset(b.wait)
	defer b.timer.Stop()
	for b.in.Load() > b.limit {
		select {
		case <-b.left:
		case <-b.timer.C:
			b.in.Store(0)
			b.forgiven.Add(1)
			return
		}
	}
}

// read counts n packets handed to wireguard-go.
func (b *backlog) read(n int) {
	if b != nil {
		b.in.Add(int64(n))
	}
}

// sent counts n packets gone out of the socket.
func (b *backlog) sent(n int) {
	if b == nil {
		return
	}
	if b.in.Add(-int64(n)) < 0 {
		b.in.Store(0) // keepalives and handshakes were never read
	}
	select {
	case b.left <- struct{}{}:
	default:
	}
}
