package ipam

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"strings"

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

// RequestPool maps the network's --subnet (an overlay; none means the
// default overlay) to this host's subnet of it and returns that subnet as
// the pool. --ip-range (SubPool) must lie inside this host's subnet and
// narrows where automatic addresses come from.
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
	overlay := p.overlays.Default()
	if req.Pool != "" {
		o, err := netip.ParsePrefix(req.Pool)
		if err != nil || !o.Addr().Is4() {
			return nil, fmt.Errorf("--subnet %q: %w: give an IPv4 overlay such as 10.96.0.0/16", req.Pool, ErrBadRequest)
		}
		overlay = o.Masked()
	}
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
	pl.Refs++
	pending := p.store.Submit(poolOp(pl))
	p.mu.Unlock()

	if err := pending.Wait(); err != nil {
		p.mu.Lock()
		p.dropRef(pl)
		p.mu.Unlock()
		return nil, fmt.Errorf("recording pool %s: %w", id, err)
	}
	p.log.Info("pool requested", "pool", id, "overlay", overlay, "subnet", sub, "refs", pl.Refs)
	return &ipamapi.RequestPoolResponse{PoolID: id, Pool: sub.String(), Data: map[string]string{}}, nil
}

// ReleasePool drops one reference to the pool; the last one frees it, and
// with the last pool of a subnet every address left on that subnet. An
// unknown or already released pool is success.
func (p *IPAM) ReleasePool(ctx context.Context, req *ipamapi.ReleasePoolRequest) error {
	p.mu.Lock()
	pl, ok := p.pools[req.PoolID]
	if !ok {
		p.mu.Unlock()
		return nil
	}
	ops := p.dropRef(pl)
	pending := p.store.Submit(ops...)
	p.mu.Unlock()
	if err := pending.Wait(); err != nil {
		// Memory already forgot the pool; the disk keeps it, which after a
		// restart only holds addresses longer than needed, never twice.
		return fmt.Errorf("releasing pool %s: %w", req.PoolID, err)
	}
	p.log.Info("pool released", "pool", req.PoolID, "refs", pl.Refs)
	return nil
}

// dropRef decrements pl's references and forgets it (and its subnet, when no
// pool uses it any more) at zero. It returns the store operations that
// record this. p.mu held.
func (p *IPAM) dropRef(pl *pool) []store.Op {
	pl.Refs--
	ops := []store.Op{poolOp(pl)}
	if pl.Refs > 0 {
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
