package subnet

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
)

// EventType says whether a lease appeared (or changed) or went away.
type EventType int

const (
	// Added: a lease is new, or its value changed (e.g. a new public IP).
	// Consumers treat it as add-or-update.
	Added EventType = iota + 1
	// Removed: the lease is gone (deleted, expired or released).
	Removed
)

func (t EventType) String() string {
	switch t {
	case Added:
		return "added"
	case Removed:
		return "removed"
	}
	return fmt.Sprintf("EventType(%d)", int(t))
}

// Event is one change of one lease in one overlay (Lease.Overlay).
type Event struct {
	Type  EventType
	Lease Lease
	// Own marks this host's own lease: acquired, re-acquired after it was
	// lost (possibly another subnet: Removed of the old one comes first), or
	// released.
	Own bool
}

func (e Event) String() string {
	own := ""
	if e.Own {
		own = " (own)"
	}
	return fmt.Sprintf("%s %s in %s via %s%s", e.Type, e.Lease.Subnet, e.Lease.Overlay, e.Lease.Attrs.PublicIP, own)
}

// publishLocked records evs as what subscribers know and queues them to every
// subscriber; m.mu held.
func (m *Manager) publishLocked(evs []Event) {
	if len(evs) == 0 {
		return
	}
	for _, e := range evs {
		n := e.Lease.Overlay
		if m.published[n] == nil {
			m.published[n] = map[netip.Prefix]Event{}
		}
		switch e.Type {
		case Added:
			m.published[n][e.Lease.Subnet] = e
		case Removed:
			delete(m.published[n], e.Lease.Subnet)
		}
		m.log.Debug("lease event", "event", e.Type, "overlay", n, "subnet", e.Lease.Subnet,
			"public_ip", e.Lease.Attrs.PublicIP, "own", e.Own)
	}
	for s := range m.subs {
		s.push(evs)
	}
}

// Subscribe returns every lease change in every overlay, in order, starting
// with the current state as Added events (so a late subscriber misses
// nothing). The channel never blocks the manager: events queue per
// subscriber. It is closed when ctx ends or the manager closes.
func (m *Manager) Subscribe(ctx context.Context) <-chan Event {
	s := &subscriber{wake: make(chan struct{}, 1), out: make(chan Event, 16)}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		close(s.out)
		return s.out
	}
	var snap []Event
	for _, byNet := range m.published {
		for _, e := range byNet {
			snap = append(snap, e)
		}
	}
	s.push(snap)
	m.subs[s] = struct{}{}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		s.pump(ctx, m.ctx)
		m.mu.Lock()
		delete(m.subs, s)
		m.mu.Unlock()
		close(s.out)
	}()
	return s.out
}

// subscriber is one Subscribe call: an unbounded queue drained into out.
type subscriber struct {
	mu    sync.Mutex
	queue []Event
	wake  chan struct{} // capacity 1: "queue is not empty"
	out   chan Event
}

func (s *subscriber) push(evs []Event) {
	if len(evs) == 0 {
		return
	}
	s.mu.Lock()
	s.queue = append(s.queue, evs...)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *subscriber) pump(ctx, mctx context.Context) {
	for {
		s.mu.Lock()
		batch := s.queue
		s.queue = nil
		s.mu.Unlock()
		for _, e := range batch {
			select {
			case s.out <- e:
			case <-ctx.Done():
				return
			case <-mctx.Done():
				return
			}
		}
		select {
		case <-s.wake:
		case <-ctx.Done():
			return
		case <-mctx.Done():
			return
		}
	}
}
