package main

import (
	"context"
	"net/netip"
	"time"

	netapi "github.com/docker/go-plugins-helpers/network"

	"github.com/twill-net/twill/driver"
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

// sweepVanished removes joined endpoints whose veth has been gone for
// OrphanAge: the kernel deletes the pair when the container's namespace
// goes, so the container is gone, and Docker's DeleteEndpoint and
// ReleaseAddress were lost (the plugin was disabled or down when it
// stopped). missing remembers when each was first seen without its veth.
func (n *node) sweepVanished(ctx context.Context, now time.Time, missing map[string]time.Time) int {
	names, err := n.links.LinkNames(ctx, driver.HostVethPrefix)
	if err != nil {
		n.log.Warn("listing veths for the endpoint sweep", "err", err)
		return 0
	}
	have := map[string]bool{}
	for _, name := range names {
		have[name] = true
	}
	removed := 0
	seen := map[string]bool{}
	for _, e := range n.drv.Endpoints() {
		seen[e.ID] = true
		if !e.Joined || have[e.Veth] {
			delete(missing, e.ID)
			continue
		}
		first, ok := missing[e.ID]
		if !ok {
			missing[e.ID] = now
			continue
		}
		if now.Sub(first) < n.cfg.OrphanAge {
			continue
		}
		if err := n.drv.DeleteEndpoint(ctx, &netapi.DeleteEndpointRequest{NetworkID: e.Network, EndpointID: e.ID}); err != nil {
			n.log.Warn("removing an endpoint whose container is gone", "endpoint", e.ID, "err", err)
			continue
		}
		if err := n.ipam.Release(ctx, e.Address.Addr()); err != nil {
			n.log.Warn("releasing the address of a vanished endpoint", "address", e.Address, "err", err)
		}
		n.log.Warn("removed an endpoint whose container is gone (Docker's calls were lost while twill was down)", "endpoint", e.ID, "network", e.Network, "address", e.Address)
		delete(missing, e.ID)
		removed++
	}
	for id := range missing {
		if !seen[id] {
			delete(missing, id)
		}
	}
	return removed
}

// sweepLoop runs both sweeps, and drops pool references that no network
// used (ipam.PendingGrace), every OrphanAge/4 until ctx ends.
func (n *node) sweepLoop(ctx context.Context) {
	t := time.NewTicker(max(n.cfg.OrphanAge/4, time.Second))
	defer t.Stop()
	missing := map[string]time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			n.sweepVanished(ctx, now, missing)
			n.sweepOrphans(ctx, now)
			if _, err := n.ipam.ExpirePending(ctx, now); err != nil {
				n.log.Warn("dropping unused pool references", "err", err)
			}
		}
	}
}
