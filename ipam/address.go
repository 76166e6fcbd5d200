package ipam

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	ipamapi "github.com/docker/go-plugins-helpers/ipam"

	"github.com/twill-net/twill/internal/store"
)

// RequestAddress hands out an address of the pool: the gateway (Options
// RequestAddressType com.docker.network.gateway; .1 unless --gateway gave
// one), the address Docker asks for (--ip), or the next free address of the
// pool's range. The answer goes back only once the allocation is on disk.
func (p *IPAM) RequestAddress(ctx context.Context, req *ipamapi.RequestAddressRequest) (*ipamapi.RequestAddressResponse, error) {
	gateway := req.Options[requestTypeOption] == gatewayType
	var want netip.Addr
	if req.Address != "" {
		a, err := parseAddr(req.Address)
		if err != nil {
			return nil, fmt.Errorf("address %q: %w: give an IPv4 address such as 10.96.7.50", req.Address, ErrBadRequest)
		}
		want = a
	}

	p.mu.Lock()
	pl, ok := p.pools[req.PoolID]
	if !ok {
		p.mu.Unlock()
		return nil, fmt.Errorf("pool %q is %w (its state was lost, or it belongs to another IPAM): remove and re-create the network", req.PoolID, ErrUnknownPool)
	}
	s := p.subnets[pl.Subnet]
	addr, err := p.pick(pl, s, want, gateway)
	if err != nil {
		p.mu.Unlock()
		return nil, err
	}
	now := time.Now()
	s.used[addr] = now
	ops := []store.Op{addressPut(addr, s, gateway, now)}
	var bound time.Time
	if gateway {
		s.gateway = addr
		bound = p.bindPending(pl)
		ops = append(ops, poolOp(pl))
	}
	pending := p.store.Submit(ops...)
	p.mu.Unlock()

	if err := pending.Wait(); err != nil {
		p.mu.Lock()
		delete(s.used, addr)
		if gateway && s.gateway == addr {
			s.gateway = netip.Addr{}
		}
		if !bound.IsZero() && pl.Refs > 0 {
			pl.Refs--
			pl.pending = append([]time.Time{bound}, pl.pending...)
		}
		p.mu.Unlock()
		return nil, fmt.Errorf("recording address %s of pool %s: %w", addr, pl.ID, err)
	}
	p.log.Debug("address allocated", "pool", pl.ID, "address", addr, "gateway", gateway)
	return &ipamapi.RequestAddressResponse{
		Address: netip.PrefixFrom(addr, s.prefix.Bits()).String(),
		Data:    map[string]string{},
	}, nil
}

// pick chooses the address to hand out. p.mu held.
func (p *IPAM) pick(pl *pool, s *subnet, want netip.Addr, gateway bool) (netip.Addr, error) {
	what, flag := "address", "--ip"
	if gateway {
		what, flag = "gateway", "--gateway"
	}
	if want.IsValid() && !isHost(s.prefix, want) {
		return netip.Addr{}, fmt.Errorf("%s %s is %w %s (overlay %s): give an %s inside %s (not its first or last address) or leave it out",
			what, want, ErrOutsideSubnet, s.prefix, s.overlay, flag, s.prefix)
	}
	if gateway && s.gateway.IsValid() {
		return netip.Addr{}, fmt.Errorf("this host's subnet %s of overlay %s %w (gateway %s): a host has one subnet per overlay and one network per subnet, so give this network another --subnet (overlay)",
			s.prefix, s.overlay, ErrSubnetInUse, s.gateway)
	}
	if !want.IsValid() {
		if !gateway {
			return p.nextFree(pl, s)
		}
		want = s.prefix.Addr().Next()
	}
	if _, taken := s.used[want]; taken {
		return netip.Addr{}, fmt.Errorf("%s %s: %w on this host's subnet %s: choose another or leave it out",
			what, want, ErrAddressInUse, s.prefix)
	}
	return want, nil
}

// nextFree returns the first free host address of the pool's range after the
// subnet's cursor, wrapping around once. p.mu held.
func (p *IPAM) nextFree(pl *pool, s *subnet) (netip.Addr, error) {
	first := pl.Range.Addr()
	last := lastAddr(pl.Range)
	start := s.next
	if !start.IsValid() || !pl.Range.Contains(start) {
		start = first
	}
	a := start
	for {
		if _, taken := s.used[a]; !taken && isHost(s.prefix, a) {
			s.next = a.Next()
			return a, nil
		}
		if a == last {
			a = first
		} else {
			a = a.Next()
		}
		if a == start {
			return netip.Addr{}, fmt.Errorf("%w in %s (pool %s): remove unused containers or give the network a wider --ip-range",
				ErrPoolExhausted, pl.Range, pl.ID)
		}
	}
}

// ReleaseAddress frees an address of the pool. An unknown pool or an address
// that is not held is success: Docker repeats releases after failures.
func (p *IPAM) ReleaseAddress(ctx context.Context, req *ipamapi.ReleaseAddressRequest) error {
	a, err := parseAddr(req.Address)
	if err != nil {
		return fmt.Errorf("releasing address %q of pool %s: %w", req.Address, req.PoolID, ErrBadRequest)
	}
	p.mu.Lock()
	pl, ok := p.pools[req.PoolID]
	if !ok {
		p.mu.Unlock()
		return nil
	}
	s := p.subnets[pl.Subnet]
	var ops []store.Op
	if _, held := s.used[a]; held && a == s.gateway && pl.Refs > 0 {
		// The network gives its gateway back on its way out (removal, or a
		// create failing after the gateway): its reference is no longer
		// held, and the ReleasePool that follows drops it.
		pl.Refs--
		pl.pending = append(pl.pending, time.Now())
		ops = append(ops, poolOp(pl))
	}
	return p.release(s, a, ops...)
}

// Release frees addr wherever it is held, for reconciliation of endpoints
// that vanished while twill was down. Not held is success.
func (p *IPAM) Release(ctx context.Context, addr netip.Addr) error {
	p.mu.Lock()
	for _, s := range p.subnets {
		if s.prefix.Contains(addr) {
			return p.release(s, addr)
		}
	}
	p.mu.Unlock()
	return nil
}

// Forget drops every pool on subnet and every address in it, for
// reconciliation of a network Docker removed while twill could not answer
// (disabled with -f): its ReleaseAddress and ReleasePool never arrived.
// An unknown subnet is success.
func (p *IPAM) Forget(ctx context.Context, prefix netip.Prefix) error {
	prefix = prefix.Masked()
	p.mu.Lock()
	var ops []store.Op
	for _, pl := range p.pools {
		if pl.Subnet == prefix {
			pl.Refs, pl.pending = 0, nil
			ops = append(ops, p.forgetIfUnused(pl)...)
		}
	}
	if s, ok := p.subnets[prefix]; ok { // a subnet without pools: only from load
		for a := range s.used {
			ops = append(ops, addressDelete(a))
		}
		delete(p.subnets, prefix)
	}
	pending := p.store.Submit(ops...)
	p.mu.Unlock()
	if err := pending.Wait(); err != nil {
		return fmt.Errorf("forgetting subnet %s: %w", prefix, err)
	}
	if len(ops) > 0 {
		p.log.Info("subnet forgotten", "subnet", prefix)
	}
	return nil
}

// release frees a in s and records it with ops. Called with p.mu held;
// releases it.
func (p *IPAM) release(s *subnet, a netip.Addr, ops ...store.Op) error {
	if _, held := s.used[a]; !held {
		p.mu.Unlock()
		return nil
	}
	delete(s.used, a)
	if s.gateway == a {
		s.gateway = netip.Addr{}
	}
	pending := p.store.Submit(append(ops, addressDelete(a))...)
	p.mu.Unlock()
	if err := pending.Wait(); err != nil {
		// Memory has freed it, disk still holds it: after a restart the
		// address stays taken, which never hands it out twice.
		return fmt.Errorf("releasing address %s of subnet %s: %w", a, s.prefix, err)
	}
	p.log.Debug("address released", "subnet", s.prefix, "address", a)
	return nil
}

// parseAddr accepts "10.96.7.5" and, leniently, "10.96.7.5/24".
func parseAddr(s string) (netip.Addr, error) {
	if strings.Contains(s, "/") {
		pf, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Addr{}, err
		}
		s = pf.Addr().String()
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, err
	}
	if !a.Is4() {
		return netip.Addr{}, fmt.Errorf("%s is not IPv4", a)
	}
	return a, nil
}

// isHost reports whether a is in subnet and is neither its network nor its
// broadcast address.
func isHost(subnet netip.Prefix, a netip.Addr) bool {
	return subnet.Contains(a) && a != subnet.Addr() && a != lastAddr(subnet)
}

// lastAddr is the last address of an IPv4 prefix.
func lastAddr(pf netip.Prefix) netip.Addr {
	b := pf.Masked().Addr().As4()
	n := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	n |= ^uint32(0) >> pf.Bits()
	if pf.Bits() == 0 {
		n = ^uint32(0)
	}
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
}
