package ipam

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"time"

	ipamapi "github.com/docker/go-plugins-helpers/ipam"

	"github.com/twill-net/twill/internal/store"
)

// poolIDPrefix starts every PoolID twill hands out.
const poolIDPrefix = "twill/"

// poolID names the pool of subnet narrowed to rng. The same request gives the
// same ID, so identical RequestPool calls get identical answers.
func poolID(subnet, rng netip.Prefix) string {
	if rng == subnet {
		return poolIDPrefix + subnet.String()
	}
	return poolIDPrefix + subnet.String() + "/range/" + rng.String()
}

// Bounds on references no network has used yet (see pool.pending).
const (
	// PendingGrace is how long a RequestPool answer may wait for its
	// network. Docker asks for the network's gateway milliseconds after the
	// pool; an answer still unused after this was lost (client gone, dockerd
	// killed mid-create) and its reference is dropped by ExpirePending.
	PendingGrace = time.Minute
	// MaxPending is how many unused answers a pool may collect at once, so
	// no client can make the state grow without bound.
	MaxPending = 16
)

// RequestPool maps the network's --subnet (an overlay) to this host's
// subnet of it and returns that subnet as the pool. --ip-range (SubPool)
// must lie inside this host's subnet and narrows where automatic addresses
// come from. A request without --subnet is refused: see ErrNoSubnet.
func (p *IPAM) RequestPool(ctx context.Context, req *ipamapi.RequestPoolRequest) (*ipamapi.RequestPoolResponse, error) {
	if req.AddressSpace != LocalAddressSpace && req.AddressSpace != GlobalAddressSpace {
		return nil, fmt.Errorf("address space %q: %w (twill's are %q and %q)", req.AddressSpace, ErrAddressSpace, LocalAddressSpace, GlobalAddressSpace)
	}
	if req.V6 {
		return nil, fmt.Errorf("pool %q: %w yet; create the network without --ipv6", req.Pool, ErrIPv6)
	}
	if len(req.Options) > 0 {
		keys := make([]string, 0, len(req.Options))
		for k := range req.Options {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		return nil, fmt.Errorf("--ipam-opt %s: %w: twill's IPAM takes no options; leave them out", strings.Join(keys, ", "), ErrBadOption)
	}
	if req.Pool == "" {
		def := p.overlays.Default()
		return nil, fmt.Errorf("%w: add --subnet %s (this host's default overlay), e.g. `docker network create -d twill:latest --ipam-driver twill:latest --subnet %s NAME`, or in a compose file `ipam: {driver: twill:latest, config: [{subnet: %s}]}`",
			ErrNoSubnet, def, def, def)
	}
	o, err := netip.ParsePrefix(req.Pool)
	if err != nil || !o.Addr().Is4() {
		return nil, fmt.Errorf("--subnet %q: %w: give an IPv4 overlay such as 10.96.0.0/16", req.Pool, ErrBadRequest)
	}
	overlay := o.Masked()
	sub, err := p.overlays.Subnet(ctx, overlay)
	if err != nil {
		return nil, fmt.Errorf("leasing this host's subnet of overlay %s: %w", overlay, err)
	}
	sub = sub.Masked()
	rng := sub
	if req.SubPool != "" {
		r, err := netip.ParsePrefix(req.SubPool)
		if err != nil {
			return nil, fmt.Errorf("--ip-range %q: %w: give a prefix such as %s", req.SubPool, ErrBadRequest, sub)
		}
		r = r.Masked()
		if r.Bits() < sub.Bits() || !sub.Contains(r.Addr()) {
			return nil, fmt.Errorf("--ip-range %s is %w %s of overlay %s: give an --ip-range inside %s or leave it out", r, ErrOutsideSubnet, sub, overlay, sub)
		}
		rng = r
	}
	id := poolID(sub, rng)

	p.mu.Lock()
	pl, ok := p.pools[id]
	if !ok {
		pl = &pool{ID: id, Overlay: overlay, Subnet: sub, Range: rng}
		p.pools[id] = pl
		p.subnetFor(overlay, sub)
	}
	if len(pl.pending) >= MaxPending {
		p.mu.Unlock()
		return nil, fmt.Errorf("pool %s: %w (%d answers in the last %s made no network): wait a minute and retry; if nothing is creating networks on this host, a client is looping on RequestPool",
			id, ErrTooManyPending, len(pl.pending), PendingGrace)
	}
	since := time.Now()
	pl.pending = append(pl.pending, since)
	pending := p.store.Submit(poolOp(pl))
	p.mu.Unlock()

	if err := pending.Wait(); err != nil {
		p.mu.Lock()
		ops := p.dropPending(pl, since)
		p.store.Submit(ops...) // best effort: the write just failed
		p.mu.Unlock()
		return nil, fmt.Errorf("recording pool %s: %w", id, err)
	}
	if err := ctx.Err(); err != nil {
		// Docker hung up before the answer (client gone, dockerd stopping):
		// it will never use or release this reference, so take it back.
		p.mu.Lock()
		pending := p.store.Submit(p.dropPending(pl, since)...)
		p.mu.Unlock()
		if werr := pending.Wait(); werr != nil {
			return nil, fmt.Errorf("pool %s: caller gone (%w); taking its reference back: %w", id, err, werr)
		}
		return nil, fmt.Errorf("pool %s: caller gone before the answer: %w", id, err)
	}
	p.log.Info("pool requested", "pool", id, "overlay", overlay, "subnet", sub, "refs", pl.Refs, "pending", len(pl.pending))
	return &ipamapi.RequestPoolResponse{PoolID: id, Pool: sub.String(), Data: map[string]string{}}, nil
}

// ReleasePool drops one reference to the pool, an unused one first (a
// network being removed has turned its own into one by giving its gateway
// back: ReleaseAddress); the last one frees it, and with the last pool of a subnet every address left
// on that subnet. An unknown or already released pool is success.
func (p *IPAM) ReleasePool(ctx context.Context, req *ipamapi.ReleasePoolRequest) error {
	p.mu.Lock()
	pl, ok := p.pools[req.PoolID]
	if !ok {
		p.mu.Unlock()
		return nil
	}
	var ops []store.Op
	if n := len(pl.pending); n > 0 {
		ops = p.dropPending(pl, pl.pending[n-1])
	} else {
		ops = p.dropRef(pl)
	}
	pending := p.store.Submit(ops...)
	p.mu.Unlock()
	if err := pending.Wait(); err != nil {
		// Memory already forgot the pool; the disk keeps it, which after a
		// restart only holds addresses longer than needed, never twice.
		return fmt.Errorf("releasing pool %s: %w", req.PoolID, err)
	}
	p.log.Info("pool released", "pool", req.PoolID, "refs", pl.Refs, "pending", len(pl.pending))
	return nil
}

// ExpirePending drops the references that RequestPool handed out more than
// PendingGrace before now and that no network has used: their network
// create was abandoned half way, and Docker will never release them. It
// returns how many it dropped.
func (p *IPAM) ExpirePending(ctx context.Context, now time.Time) (int, error) {
	p.mu.Lock()
	var ops []store.Op
	dropped := 0
	for _, pl := range p.pools {
		for len(pl.pending) > 0 && now.Sub(pl.pending[0]) > PendingGrace {
			p.log.Warn("dropping a pool reference no network used", "pool", pl.ID, "since", pl.pending[0])
			ops = append(ops, p.dropPending(pl, pl.pending[0])...)
			dropped++
		}
	}
	pending := p.store.Submit(ops...)
	p.mu.Unlock()
	if err := pending.Wait(); err != nil {
		return dropped, fmt.Errorf("dropping unused pool references: %w", err)
	}
	return dropped, nil
}

// bindPending turns the oldest unused reference of pl into one a network
// holds: its gateway was just allocated. It returns when that reference was
// handed out, or zero when none was pending (a pool of an older twill).
// p.mu held.
func (p *IPAM) bindPending(pl *pool) time.Time {
	if len(pl.pending) == 0 {
		return time.Time{}
	}
	since := pl.pending[0]
	pl.pending = pl.pending[1:]
	pl.Refs++
	return since
}

// dropPending forgets the unused reference handed out at since, and the
// pool with its last reference. p.mu held.
func (p *IPAM) dropPending(pl *pool, since time.Time) []store.Op {
	for i, t := range pl.pending {
		if t.Equal(since) {
			pl.pending = append(pl.pending[:i:i], pl.pending[i+1:]...)
			break
		}
	}
	return p.forgetIfUnused(pl)
}

// dropRef drops one reference a network held, and forgets the pool (and
// its subnet, when no pool uses it any more) with its last reference. It
// returns the store operations that record this. p.mu held.
func (p *IPAM) dropRef(pl *pool) []store.Op {
	if pl.Refs > 0 {
		pl.Refs--
	}
	return p.forgetIfUnused(pl)
}

// forgetIfUnused records pl, or, without references, deletes it and, with
// the last pool of its subnet, every address left on that subnet. p.mu held.
func (p *IPAM) forgetIfUnused(pl *pool) []store.Op {
	ops := []store.Op{poolOp(pl)}
	if pl.refs() > 0 {
		return ops
	}
	delete(p.pools, pl.ID)
	for _, other := range p.pools {
		if other.Subnet == pl.Subnet {
			return ops
		}
	}
	if s, ok := p.subnets[pl.Subnet]; ok {
		for a := range s.used {
			ops = append(ops, addressDelete(a))
		}
		delete(p.subnets, pl.Subnet)
	}
	return ops
}
