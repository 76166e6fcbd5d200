package main

import (
	"context"
	"net/netip"
	"time"
)

// sweepOrphans gives back addresses that were handed out more than
// cfg.OrphanAge ago and that no endpoint uses. Docker sends CreateEndpoint
// milliseconds after RequestAddress, so such an address was answered to a
// Docker that never learnt it: the answer was lost when twilld was killed
// after persisting the allocation. Gateways are never touched, and twill
// refuses --aux-address, the one kind of address Docker holds without an
// endpoint.
func (n *node) sweepOrphans(ctx context.Context, now time.Time) int {
	allocs := n.ipam.Allocations() // before the endpoints: an endpoint made in between is then seen
	held := map[netip.Addr]bool{}
	for _, e := range n.drv.Endpoints() {
		held[e.Address.Addr()] = true
	}
	released := 0
	for _, a := range allocs {
		if a.Gateway || held[a.Addr] || a.Since.IsZero() || now.Sub(a.Since) < n.cfg.OrphanAge {
			continue
		}
		if err := n.ipam.Release(ctx, a.Addr); err != nil {
			n.log.Warn("releasing an orphaned address", "address", a.Addr, "err", err)
			continue
		}
		n.log.Warn("released an address no container uses (its answer was lost in a crash)", "address", a.Addr, "subnet", a.Subnet, "since", a.Since)
		released++
	}
	return released
}

// sweepLoop runs sweepOrphans every OrphanAge/4 until ctx ends.
func (n *node) sweepLoop(ctx context.Context) {
	t := time.NewTicker(max(n.cfg.OrphanAge/4, time.Second))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			n.sweepOrphans(ctx, now)
		}
	}
}
