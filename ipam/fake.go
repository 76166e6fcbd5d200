package ipam

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
)

// FakeOverlays is an Overlays for tests: each overlay maps to a fixed subnet
// given up front, or fails with Err.
type FakeOverlays struct {
	DefaultOverlay netip.Prefix

	mu      sync.Mutex // guards the fields below
	subnets map[netip.Prefix]netip.Prefix
	errs    map[netip.Prefix]error
}

// NewFakeOverlays maps each overlay to this host's subnet in it, e.g.
// {10.96.0.0/16: 10.96.7.0/24}. def is the default overlay.
func NewFakeOverlays(def netip.Prefix, subnets map[netip.Prefix]netip.Prefix) *FakeOverlays {
	f := &FakeOverlays{DefaultOverlay: def, subnets: map[netip.Prefix]netip.Prefix{}, errs: map[netip.Prefix]error{}}
	for o, s := range subnets {
		f.subnets[o] = s
	}
	return f
}

// Fail makes Subnet(overlay) fail with err.
func (f *FakeOverlays) Fail(overlay netip.Prefix, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.errs[overlay] = err
}

// Default returns DefaultOverlay.
func (f *FakeOverlays) Default() netip.Prefix { return f.DefaultOverlay }

// Subnet returns the configured subnet of overlay.
func (f *FakeOverlays) Subnet(ctx context.Context, overlay netip.Prefix) (netip.Prefix, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.errs[overlay]; err != nil {
		return netip.Prefix{}, err
	}
	s, ok := f.subnets[overlay]
	if !ok {
		return netip.Prefix{}, fmt.Errorf("overlay %s is not configured in etcd (fake)", overlay)
	}
	return s, nil
}

var _ Overlays = (*FakeOverlays)(nil)
