package ipam

import (
	"context"
	"errors"
	"maps"
	"testing"
	"time"

	ipamapi "github.com/docker/go-plugins-helpers/ipam"

	"github.com/twill-net/twill/internal/store"
)

// snapshot is everything the IPAM keeps on disk, bucket/key -> value.
func snapshot(t *testing.T, st *store.Memory) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, b := range []string{poolBucket, addressBucket} {
		if err := st.Load(b, func(k string, v []byte) error { out[b+"/"+k] = string(v); return nil }); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// refCounts is every pool's held and pending references, from memory.
func refCounts(p *IPAM) map[string][2]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string][2]int{}
	for id, pl := range p.pools {
		out[id] = [2]int{pl.Refs, len(pl.pending)}
	}
	return out
}

// mustBeEmpty fails unless p holds no pool, in memory or on disk.
func mustBeEmpty(t *testing.T, p *IPAM, st *store.Memory) {
	t.Helper()
	if n := len(refCounts(p)); n != 0 {
		t.Fatalf("%d pools kept", n)
	}
	if s := snapshot(t, st); len(s) != 0 {
		t.Fatalf("store holds %v", s)
	}
}

func releasePool(t *testing.T, p *IPAM, id string) {
	t.Helper()
	if err := p.ReleasePool(context.Background(), &ipamapi.ReleasePoolRequest{PoolID: id}); err != nil {
		t.Fatal(err)
	}
}

// dockerd without --subnet asks again and again while the pool overlaps a
// route of the host (twill0's): each request must be refused at once and
// leave nothing behind.
func TestRequestPoolWithoutSubnetLoopKeepsNothing(t *testing.T) {
	st := store.NewMemory()
	p, _ := newIPAM(t, st)
	for range 10000 {
		_, err := p.RequestPool(context.Background(), &ipamapi.RequestPoolRequest{AddressSpace: LocalAddressSpace})
		if !errors.Is(err, ErrNoSubnet) {
			t.Fatalf("RequestPool without --subnet: %v", err)
		}
	}
	mustBeEmpty(t, p, st)
}

// The same explicit request repeated without a network is bounded, then
// expires, and a network created meanwhile keeps its reference.
func TestRepeatedRequestPoolBoundedAndExpires(t *testing.T) {
	st := store.NewMemory()
	p, _ := newIPAM(t, st)
	ctx := context.Background()
	// A real network first: RequestPool, then its gateway.
	nw := requestPool(t, p, "10.96.0.0/16", "")
	mustAddr(t, p, nw.PoolID, "", gwOpts)
	mustAddr(t, p, nw.PoolID, "", nil)
	before := snapshot(t, st)

	accepted := 0
	for range 1000 {
		_, err := p.RequestPool(ctx, &ipamapi.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: "10.96.0.0/16"})
		switch {
		case err == nil:
			accepted++
		case errors.Is(err, ErrTooManyPending):
		default:
			t.Fatal(err)
		}
	}
	if accepted != MaxPending {
		t.Fatalf("%d requests accepted, want the bound %d", accepted, MaxPending)
	}
	if got := refCounts(p)[nw.PoolID]; got != [2]int{1, MaxPending} {
		t.Fatalf("refs held/pending %v", got)
	}
	// Within the grace nothing expires; after it the unused ones go.
	if n, err := p.ExpirePending(ctx, time.Now()); err != nil || n != 0 {
		t.Fatalf("expired %d (%v) within the grace", n, err)
	}
	if n, err := p.ExpirePending(ctx, time.Now().Add(PendingGrace+time.Second)); err != nil || n != MaxPending {
		t.Fatalf("expired %d (%v), want %d", n, err, MaxPending)
	}
	if got := refCounts(p)[nw.PoolID]; got != [2]int{1, 0} {
		t.Fatalf("after expiry refs held/pending %v, want the network's one", got)
	}
	if after := snapshot(t, st); !maps.Equal(before, after) {
		t.Fatalf("state after expiry\n%v\nwant\n%v", after, before)
	}
	// And requests are accepted again.
	requestPool(t, p, "10.96.0.0/16", "")
}

// A caller that hangs up before the answer leaves no reference.
func TestCancelledRequestPoolLeavesNothing(t *testing.T) {
	st := store.NewMemory()
	p, _ := newIPAM(t, st)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := p.RequestPool(ctx, &ipamapi.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: "10.96.0.0/16"})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled RequestPool: %v", err)
	}
	mustBeEmpty(t, p, st)
}

// Any mix of abandoned creates, a refused second network and a full network
// lifecycle ends where it started, on disk and in memory.
func TestPoolStateReturnsToStart(t *testing.T) {
	st := store.NewMemory()
	p, _ := newIPAM(t, st)
	ctx := context.Background()
	first := requestPool(t, p, "10.96.0.0/16", "")
	mustAddr(t, p, first.PoolID, "", gwOpts)
	mustAddr(t, p, first.PoolID, "", nil)
	before, beforeRefs := snapshot(t, st), refCounts(p)

	// Abandoned creates on two overlays.
	requestPool(t, p, "10.96.0.0/16", "")
	requestPool(t, p, "10.97.0.0/16", "")
	requestPool(t, p, "10.97.0.0/16", "10.97.3.0/25")
	// A second network on the same subnet: gateway refused, pool released.
	second := requestPool(t, p, "10.96.0.0/16", "10.96.7.128/25")
	if _, err := requestAddr(p, second.PoolID, "", gwOpts); !errors.Is(err, ErrSubnetInUse) {
		t.Fatalf("second gateway: %v", err)
	}
	releasePool(t, p, second.PoolID)
	// A whole network on red: create, a container, remove.
	red := requestPool(t, p, "10.97.0.0/16", "")
	gw := mustAddr(t, p, red.PoolID, "", gwOpts)
	c := mustAddr(t, p, red.PoolID, "", nil)
	for _, a := range []string{c, gw} {
		if err := p.ReleaseAddress(ctx, &ipamapi.ReleaseAddressRequest{PoolID: red.PoolID, Address: a}); err != nil {
			t.Fatal(err)
		}
	}
	releasePool(t, p, red.PoolID)

	// The plugin restarts before the abandoned ones expire: they survive
	// on disk and expire after the grace all the same.
	p2, _ := newIPAM(t, st)
	if n, err := p2.ExpirePending(ctx, time.Now().Add(PendingGrace+time.Second)); err != nil || n != 3 {
		t.Fatalf("expired %d (%v), want the 3 abandoned", n, err)
	}
	if after := snapshot(t, st); !maps.Equal(before, after) {
		t.Fatalf("state\n%v\nwant\n%v", after, before)
	}
	if got := refCounts(p2); !maps.Equal(got, beforeRefs) {
		t.Fatalf("refs %v, want %v", got, beforeRefs)
	}
	// Removing the first network empties everything.
	if err := p2.ReleaseAddress(ctx, &ipamapi.ReleaseAddressRequest{PoolID: first.PoolID, Address: "10.96.7.1"}); err != nil {
		t.Fatal(err)
	}
	releasePool(t, p2, first.PoolID)
	if s := snapshot(t, st); len(s) != 0 {
		t.Fatalf("store holds %v after the last network went", s)
	}
}
