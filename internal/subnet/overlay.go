package subnet

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// overlay is this host's membership in one overlay: its own lease, renewed
// and re-acquired, and the watch over every host's lease. One goroutine (run)
// owns it after register.
type overlay struct {
	m   *Manager
	kv  overlayKV
	cfg Config // as opened: Network and the subnet layout never change
	log *slog.Logger

	cancel context.CancelFunc
	done   chan struct{}

	// Guarded by m.mu (written by the loop, read by Manager methods).
	live    Config       // cfg with the backend as it is now (SetBackend may change it)
	backend LeaseBackend // what this host's leases carry
	own     Lease        // zero while the host holds no lease here
	lastErr error        // why the last acquire or renew failed

	// Loop-private.
	holding bool                   // own is confirmed in etcd; false: re-acquire at the next timer
	known   map[netip.Prefix]Lease // every lease as last read, own included
	rev     int64                  // etcd revision known is current at

	badMu sync.Mutex
	bad   map[string]int64 // unreadable key -> revision already logged
}

// run renews this host's lease and follows the overlay's leases until ctx
// ends.
func (o *overlay) run(ctx context.Context) {
	defer close(o.done)
	opts := &o.m.opts
	var (
		leaseT, syncT   Timer // renew/re-acquire; re-list and re-watch
		leaseBO, syncBO = opts.RetryMin, opts.RetryMin
		wch             clientv3.WatchChan
		wcancel         context.CancelFunc = func() {}
	)
	arm := func(t *Timer, d time.Duration) {
		if *t != nil {
			(*t).Stop()
		}
		*t = opts.Clock.NewTimer(d)
	}
	next := func(bo *time.Duration) time.Duration {
		d := *bo
		*bo = min(2**bo, opts.RetryMax)
		return d
	}
	defer func() {
		wcancel()
		for _, t := range []Timer{leaseT, syncT} {
			if t != nil {
				t.Stop()
			}
		}
	}()
	startWatch := func() {
		wcancel()
		var wctx context.Context
		wctx, wcancel = context.WithCancel(clientv3.WithRequireLeader(ctx))
		wch = o.kv.cli.Watch(wctx, o.kv.subnetsDir(), clientv3.WithPrefix(), clientv3.WithRev(o.rev+1))
	}
	// after a lease step: schedule the next renew, or a retry.
	scheduleLease := func(ok bool) {
		if !ok {
			arm(&leaseT, next(&leaseBO))
			return
		}
		leaseBO = opts.RetryMin
		if d, renew := o.renewIn(); renew {
			arm(&leaseT, d)
		} else if leaseT != nil {
			leaseT.Stop()
			leaseT = nil
		}
	}

	scheduleLease(true)
	startWatch()
	for {
		select {
		case <-ctx.Done():
			return

		case resp, ok := <-wch:
			if !ok || resp.Canceled || resp.Err() != nil {
				wcancel()
				wch = nil
				if ctx.Err() != nil {
					return
				}
				if resp.CompactRevision != 0 {
					// Fell behind compaction: the events in between are gone;
					// a fresh read and its diff stand in for them.
					o.log.Info("lease watch fell behind etcd compaction; re-reading all leases", "compact_revision", resp.CompactRevision)
					arm(&syncT, 0)
				} else {
					o.log.Warn("lease watch ended; re-reading all leases", "err", resp.Err())
					arm(&syncT, next(&syncBO))
				}
				continue
			}
			if resp.IsProgressNotify() {
				continue
			}
			for _, ev := range resp.Events {
				if o.handle(ctx, ev) {
					scheduleLease(o.holding)
				}
			}
			o.rev = resp.Header.Revision

		case <-timerC(syncT):
			syncT = nil
			lctx, cancel := context.WithTimeout(ctx, opts.OpTimeout)
			err := o.resyncKnown(lctx, true)
			cancel()
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				o.log.Warn("re-reading leases failed; retrying", "err", err)
				arm(&syncT, next(&syncBO))
				continue
			}
			syncBO = opts.RetryMin
			if !o.holding || o.ownMissing() {
				o.holding = false
				scheduleLease(o.reacquire(ctx))
			}
			startWatch()

		case <-timerC(leaseT):
			leaseT = nil
			if o.holding {
				scheduleLease(o.renew(ctx))
			} else {
				scheduleLease(o.reacquire(ctx))
			}
		}
	}
}

func timerC(t Timer) <-chan time.Time {
	if t == nil {
		return nil
	}
	return t.C()
}

// renewIn says when to renew the own lease; false for a reservation (no TTL)
// or when the host holds none.
func (o *overlay) renewIn() (time.Duration, bool) {
	o.m.mu.Lock()
	own := o.own
	o.m.mu.Unlock()
	if !o.holding || own.EtcdLease == 0 {
		return 0, false
	}
	left := own.Expiration.Sub(o.m.opts.Clock.Now())
	d := left - o.m.opts.RenewMargin
	if d <= 0 {
		d = left / 2
	}
	return max(d, 0), true
}

// renew extends the own etcd lease once and checks that the key is still
// ours. It reports false when etcd could not be reached (retry later).
func (o *overlay) renew(ctx context.Context) bool {
	opts := &o.m.opts
	o.m.mu.Lock()
	own := o.own
	o.m.mu.Unlock()
	rctx, cancel := context.WithTimeout(ctx, opts.OpTimeout)
	defer cancel()
	ttl, err := o.kv.keepAlive(rctx, own.EtcdLease)
	if errors.Is(err, errLeaseGone) {
		o.log.Warn("own lease expired or was revoked; re-acquiring", "subnet", own.Subnet)
		o.holding = false
		return o.reacquire(ctx)
	}
	if err == nil {
		var cur Lease
		var found bool
		cur, found, err = o.kv.get(rctx, own.Subnet, o.cfg.Network)
		if err == nil && (!found || cur.EtcdLease != own.EtcdLease) {
			// Our grant lives but the key is gone or rebound: the watch
			// will tell; act now anyway.
			o.log.Warn("own lease key was deleted or rewritten; re-acquiring", "subnet", own.Subnet)
			if found && cur.Attrs.PublicIP != opts.PublicIP {
				o.lose(cur)
			}
			o.holding = false
			return o.reacquire(ctx)
		}
	}
	if err != nil {
		if ctx.Err() == nil {
			o.log.Warn("renewing own lease failed; keeping it and retrying", "subnet", own.Subnet,
				"expires", own.Expiration, "err", err)
		}
		o.setErr(err)
		return false
	}
	own.Expiration = opts.Clock.Now().Add(ttl)
	o.m.mu.Lock()
	o.own = own
	o.lastErr = nil
	o.m.mu.Unlock()
	o.log.Debug("renewed own lease", "subnet", own.Subnet, "expires", own.Expiration)
	return true
}

// reacquire takes a lease again after the own one was lost: the same subnet
// when still free (the store recorded it), otherwise another, which is
// announced as Removed old + Added new. It reports false when it must be
// retried later; the host keeps using what it has meanwhile, unless another
// host holds that subnet now.
func (o *overlay) reacquire(ctx context.Context) bool {
	o.m.mu.Lock()
	old := o.own
	o.m.mu.Unlock()
	l, err := o.acquire(ctx)
	if err != nil {
		if ctx.Err() == nil {
			o.log.Error("re-acquiring a subnet failed; retrying", "held", old.Subnet, "err", err)
		}
		o.setErr(err)
		if k, ok := o.known[old.Subnet]; ok && old.Subnet.IsValid() && k.Attrs.PublicIP != o.m.opts.PublicIP {
			o.lose(k)
		}
		return false
	}
	o.holding = true
	o.known[l.Subnet] = l
	var evs []Event
	if old.Subnet.IsValid() && old.Subnet != l.Subnet {
		evs = append(evs, Event{Type: Removed, Lease: old, Own: true})
		delete(o.known, old.Subnet)
	}
	evs = append(evs, Event{Type: Added, Lease: l, Own: true})
	o.m.mu.Lock()
	o.own = l
	o.lastErr = nil
	o.m.publishLocked(evs)
	o.m.mu.Unlock()
	o.log.Info("re-acquired subnet", "subnet", l.Subnet, "previous", old.Subnet)
	return true
}

// lose records that another host now holds the own subnet: Removed (own),
// then Added for the other host.
func (o *overlay) lose(other Lease) {
	o.m.mu.Lock()
	defer o.m.mu.Unlock()
	if !o.own.Subnet.IsValid() {
		return
	}
	o.log.Error("another host took this host's subnet", "subnet", o.own.Subnet, "their_public_ip", other.Attrs.PublicIP)
	evs := []Event{{Type: Removed, Lease: o.own, Own: true}, {Type: Added, Lease: other}}
	o.own = Lease{}
	o.holding = false
	o.known[other.Subnet] = other
	o.m.publishLocked(evs)
}

func (o *overlay) setErr(err error) {
	o.m.mu.Lock()
	o.lastErr = err
	o.m.mu.Unlock()
}

// ownMissing reports whether known lacks the own lease (after a resync).
func (o *overlay) ownMissing() bool {
	o.m.mu.Lock()
	own := o.own
	o.m.mu.Unlock()
	if !own.Subnet.IsValid() {
		return true
	}
	k, ok := o.known[own.Subnet]
	return !ok || (k.EtcdLease != own.EtcdLease && k.Attrs.PublicIP != o.m.opts.PublicIP)
}
