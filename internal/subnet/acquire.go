package subnet

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
)

// raceRetries bounds how often acquire retries after losing a create race
// (flannel's raceRetries).
const raceRetries = 10

var (
	// ErrSubnetsExhausted means every subnet of the overlay is leased.
	ErrSubnetsExhausted = errors.New("no free subnet")
	// ErrPublicIPInUse means another live host holds a lease with this host's
	// public IP.
	ErrPublicIPInUse = errors.New("public IP already in use by another lease")
	// ErrRaceRetries means acquire lost the create race raceRetries times.
	ErrRaceRetries = errors.New("lost the race for a subnet too often")
)

// acquire gets this host's lease in the overlay: the lease it already holds
// (same public IP), else the subnet recorded in the store when still free,
// else a free subnet at random. Lost races are retried up to raceRetries
// times.
func (o *overlay) acquire(ctx context.Context) (Lease, error) {
	for range raceRetries {
		actx, cancel := context.WithTimeout(ctx, o.m.opts.OpTimeout)
		l, err := o.tryAcquire(actx)
		cancel()
		if errors.Is(err, errTaken) {
			continue
		}
		if err != nil && ctx.Err() != nil {
			return Lease{}, fmt.Errorf("acquiring a subnet in %s: %w", o.cfg.Network, ctx.Err())
		}
		return l, err
	}
	return Lease{}, fmt.Errorf("acquiring a subnet in %s: %d attempts lost to other hosts: %w",
		o.cfg.Network, raceRetries, ErrRaceRetries)
}

func (o *overlay) tryAcquire(ctx context.Context) (Lease, error) {
	opts := &o.m.opts
	leases, bad, _, err := o.kv.list(ctx, o.cfg.Network)
	if err != nil {
		return Lease{}, err
	}
	o.logBad(bad)
	last, err := opts.Store.LastSubnet(o.cfg.Network)
	if err != nil {
		o.log.Warn("reading this host's last subnet; choosing afresh", "err", err)
		last = netip.Prefix{}
	}
	if last.IsValid() && !o.cfg.Holds(last) {
		last = netip.Prefix{}
	}

	taken := make(map[netip.Prefix]bool, len(leases))
	var mine []Lease
	for _, l := range leases {
		if !o.cfg.Holds(l.Subnet) {
			continue
		}
		taken[l.Subnet] = true
		if l.Attrs.PublicIP == opts.PublicIP {
			mine = append(mine, l)
		}
	}

	if len(mine) > 0 {
		for _, l := range mine {
			if l.Subnet == last {
				return o.reuse(ctx, l)
			}
		}
		if last.IsValid() {
			// Our own lease would be at last; this one belongs to a host that
			// shares our public IP.
			l := mine[0]
			return Lease{}, fmt.Errorf("public IP %s already holds %s in overlay %s (key %s), but this host last held %s: "+
				"two live hosts seem to share public IP %s; give each host its own TWILL_PUBLIC_IP, "+
				"or if that lease is stale remove it with `etcdctl del %s`: %w",
				opts.PublicIP, l.Subnet, o.cfg.Network, o.kv.leaseKey(l.Subnet), last,
				opts.PublicIP, o.kv.leaseKey(l.Subnet), ErrPublicIPInUse)
		}
		// No memory of a subnet (fresh state dir): like flanneld, the lease of
		// our public IP is ours.
		o.log.Info("reusing the lease held by this host's public IP", "subnet", mine[0].Subnet, "public_ip", opts.PublicIP)
		return o.reuse(ctx, mine[0])
	}

	var sn netip.Prefix
	if last.IsValid() && !taken[last] {
		sn = last
	} else {
		sn, err = o.pickFree(taken)
		if err != nil {
			return Lease{}, err
		}
	}
	// Record the choice before writing it: a crash right after the write must
	// not leave a lease with our public IP that our state does not know.
	if err := opts.Store.SaveSubnet(o.cfg.Network, sn); err != nil {
		o.log.Warn("recording this host's subnet", "subnet", sn, "err", err)
	}
	attrs := o.attrs()
	value, err := attrs.MarshalJSON()
	if err != nil {
		return Lease{}, err
	}
	id, ttl, rev, err := o.kv.create(ctx, sn, value, opts.TTL)
	if err != nil {
		return Lease{}, err
	}
	return Lease{Overlay: o.cfg.Network, Subnet: sn, Attrs: attrs, EtcdLease: id, Revision: rev,
		Expiration: opts.Clock.Now().Add(ttl)}, nil
}

// reuse makes an existing lease with our public IP this host's lease again.
func (o *overlay) reuse(ctx context.Context, l Lease) (Lease, error) {
	opts := &o.m.opts
	if err := opts.Store.SaveSubnet(o.cfg.Network, l.Subnet); err != nil {
		o.log.Warn("recording this host's subnet", "subnet", l.Subnet, "err", err)
	}
	if l.EtcdLease == 0 {
		// A reservation: no TTL, nothing to renew, written by an operator.
		return l, nil
	}
	attrs := o.attrs()
	if l.Attrs.Equal(attrs) {
		// Our own lease from before a restart: renew it in place.
		ttl, err := o.kv.keepAlive(ctx, l.EtcdLease)
		if errors.Is(err, errLeaseGone) {
			return Lease{}, errTaken // expired just now; read again
		}
		if err != nil {
			return Lease{}, err
		}
		l.Expiration = opts.Clock.Now().Add(ttl)
		return l, nil
	}
	// Written by someone else for our address (e.g. flanneld on another
	// backend): bind it to a grant of ours, with our value.
	value, err := attrs.MarshalJSON()
	if err != nil {
		return Lease{}, err
	}
	id, ttl, rev, err := o.kv.takeOver(ctx, l.Subnet, l.Revision, value, opts.TTL)
	if err != nil {
		return Lease{}, err
	}
	return Lease{Overlay: o.cfg.Network, Subnet: l.Subnet, Attrs: attrs, EtcdLease: id, Revision: rev,
		Expiration: opts.Clock.Now().Add(ttl)}, nil
}

// attrs is the value this host writes: flannel's udp backend lease, or the
// overlay's backend's type and data (a changed key rewrites the lease).
func (o *overlay) attrs() Attrs {
	o.m.mu.Lock()
	be := o.backend
	o.m.mu.Unlock()
	return Attrs{PublicIP: o.m.opts.PublicIP, BackendType: be.Type, BackendData: be.Data}
}

// pickFree returns a free subnet chosen at random, so that many hosts
// starting at once rarely pick the same one.
func (o *overlay) pickFree(taken map[netip.Prefix]bool) (netip.Prefix, error) {
	n := o.cfg.Subnets()
	used := 0
	for sn := range taken {
		if o.cfg.Holds(sn) {
			used++
		}
	}
	if used < n {
		const enumerateMax = 1 << 16
		if n <= enumerateMax {
			free := make([]int, 0, n-used)
			for i := range n {
				if !taken[o.cfg.subnetAt(i)] {
					free = append(free, i)
				}
			}
			return o.cfg.subnetAt(free[rand.IntN(len(free))]), nil
		}
		// Huge overlays: probe at random, then scan from a random start.
		for range 64 {
			if sn := o.cfg.subnetAt(rand.IntN(n)); !taken[sn] {
				return sn, nil
			}
		}
		start := rand.IntN(n)
		for i := range n {
			if sn := o.cfg.subnetAt((start + i) % n); !taken[sn] {
				return sn, nil
			}
		}
	}
	return netip.Prefix{}, fmt.Errorf("overlay %s is full: all %d subnets /%d from %s to %s are taken (%d leases): %w",
		o.cfg.Network, n, o.cfg.SubnetLen, o.cfg.SubnetMin, o.cfg.SubnetMax, used, ErrSubnetsExhausted)
}

// logBad logs each unreadable lease key once per revision.
func (o *overlay) logBad(bad []badKey) {
	for _, b := range bad {
		if o.badLogged(b.key, b.rev) {
			continue
		}
		o.log.Warn("ignoring lease key that cannot be read", "key", b.key, "err", b.err)
	}
}

// badLogged reports whether key at rev was logged already, and records it.
func (o *overlay) badLogged(key string, rev int64) bool {
	o.badMu.Lock()
	defer o.badMu.Unlock()
	if o.bad == nil {
		o.bad = map[string]int64{}
	}
	if o.bad[key] == rev {
		return true
	}
	o.bad[key] = rev
	return false
}
