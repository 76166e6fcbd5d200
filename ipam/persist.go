package ipam

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"time"

	"github.com/twill-net/twill/internal/store"
)

// Buckets of the state store. Pools are keyed by PoolID; addresses by the
// address itself (this host's subnets never overlap: the lease manager
// refuses overlapping overlays).
const (
	poolBucket    = "ipam.pools"
	addressBucket = "ipam.addresses"
)

type addressRecord struct {
	Subnet  netip.Prefix `json:"Subnet"`
	Gateway bool         `json:"Gateway,omitempty"`
	Since   time.Time    `json:"Since,omitzero"`
}

func poolOp(pl *pool) store.Op {
	if pl.refs() <= 0 {
		return store.Op{Bucket: poolBucket, Key: pl.ID}
	}
	pl.Pending = len(pl.pending)
	v, _ := json.Marshal(pl) // netip types cannot fail to marshal
	return store.Op{Bucket: poolBucket, Key: pl.ID, Value: v}
}

func addressPut(a netip.Addr, s *subnet, gateway bool, since time.Time) store.Op {
	v, _ := json.Marshal(addressRecord{Subnet: s.prefix, Gateway: gateway, Since: since})
	return store.Op{Bucket: addressBucket, Key: a.String(), Value: v}
}

func addressDelete(a netip.Addr) store.Op {
	return store.Op{Bucket: addressBucket, Key: a.String()}
}

// load rebuilds pools and subnets from the store. Records that do not fit
// (an address whose subnet has no pool) are dropped with a log line: they
// can only come from a release that was persisted in parts by an older
// version, and dropping them never hands out an address twice because the
// whole subnet is unknown.
func (p *IPAM) load() error {
	err := p.store.Load(poolBucket, func(key string, v []byte) error {
		var pl pool
		if err := json.Unmarshal(v, &pl); err != nil {
			return fmt.Errorf("decoding pool %s: %w", key, err)
		}
		pl.ID = key
		// Pending references restart their grace now: when they were
		// handed out is not on disk, and a little late is never too early.
		for range pl.Pending {
			pl.pending = append(pl.pending, time.Now())
		}
		if pl.refs() <= 0 {
			return nil
		}
		p.pools[key] = &pl
		p.subnetFor(pl.Overlay, pl.Subnet)
		return nil
	})
	if err != nil {
		return fmt.Errorf("loading ipam pools: %w", err)
	}
	err = p.store.Load(addressBucket, func(key string, v []byte) error {
		a, err := netip.ParseAddr(key)
		if err != nil {
			return fmt.Errorf("decoding address key %q: %w", key, err)
		}
		var r addressRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("decoding address %s: %w", key, err)
		}
		s, ok := p.subnets[r.Subnet]
		if !ok {
			p.log.Warn("dropping persisted address of a subnet without a pool", "address", a, "subnet", r.Subnet)
			return nil
		}
		s.used[a] = r.Since
		if r.Gateway {
			s.gateway = a
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("loading ipam addresses: %w", err)
	}
	p.log.Info("ipam state loaded", "pools", len(p.pools), "subnets", len(p.subnets))
	return nil
}

// subnetFor returns the allocation state of prefix, creating it. p.mu held
// (or not yet shared, during load).
func (p *IPAM) subnetFor(overlay, prefix netip.Prefix) *subnet {
	if s, ok := p.subnets[prefix]; ok {
		return s
	}
	s := &subnet{overlay: overlay, prefix: prefix, used: map[netip.Addr]time.Time{}}
	p.subnets[prefix] = s
	return s
}
