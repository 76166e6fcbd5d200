// Package ipam owns twill's address pools and allocations: Docker's IPAM
// driver API (IpamDriver.*) answered from this host's subnet of an overlay.
//
// A network's --subnet names an overlay (e.g. 10.96.0.0/16); RequestPool maps
// it to the subnet this host leases in that overlay (e.g. 10.96.7.0/24) and
// returns that as the pool, which Docker accepts. Every pool and every
// address is persisted before it is answered, so a plugin killed and
// restarted by Docker (which replays nothing) never hands an address out
// twice.
//
// A host has one subnet per overlay and a subnet can back only one bridge,
// so a subnet takes exactly one gateway: the gateway request of a second
// network on the same overlay is refused, and Docker then releases that
// network's pool. Pools are reference counted, so that release does not free
// the first network's pool.
package ipam

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	ipamapi "github.com/docker/go-plugins-helpers/ipam"

	"github.com/twill-net/twill/internal/store"
)

// Address space names reported to Docker. Docker hands the local one back
// in RequestPool and, as IPv4Data.AddressSpace, in CreateNetwork; the
// driver tells twill networks from default-IPAM ones by it.
const (
	LocalAddressSpace  = "twill-local"
	GlobalAddressSpace = "twill-global"
)

// gatewayOption is the RequestAddress option value Docker uses for the
// network's gateway address.
const (
	requestTypeOption = "RequestAddressType"
	gatewayType       = "com.docker.network.gateway"
)

// Conditions callers and tests check with errors.Is. Each is wrapped with a
// message that names the object and says what to do.
var (
	ErrIPv6          = errors.New("twill does not support IPv6")
	ErrAddressSpace  = errors.New("unknown address space")
	ErrBadRequest    = errors.New("malformed request")
	ErrBadOption     = errors.New("unsupported option")
	ErrUnknownPool   = errors.New("unknown to twill on this host")
	ErrOutsideSubnet = errors.New("outside this host's subnet")
	ErrAddressInUse  = errors.New("already in use")
	ErrSubnetInUse   = errors.New("already backs another twill network on this host")
	ErrPoolExhausted = errors.New("no free address left")
	// ErrNoSubnet refuses a network created without --subnet. dockerd
	// (libnetwork's requestPoolHelper in 20.10, the Exclude retry in 27+)
	// rejects any pool it did not ask for by prefix when it overlaps a
	// route of the host, holds it and asks again; every twill pool lies in
	// an overlay routed through twill0, so no answer could end that loop.
	ErrNoSubnet       = errors.New("twill networks need --subnet (the overlay)")
	ErrTooManyPending = errors.New("too many pool requests that made no network")
)

// Overlays hands out this host's subnet of an overlay. The lease manager
// implements it; FakeOverlays stands in for it in tests.
type Overlays interface {
	// Default is the overlay used by networks created without --subnet.
	Default() netip.Prefix
	// Subnet returns this host's subnet of overlay, leasing one on first
	// use. It fails with a message the user can act on when the overlay is
	// full, overlaps another overlay or etcd cannot be reached. Asked
	// again, it returns the same subnet while the lease is held.
	Subnet(ctx context.Context, overlay netip.Prefix) (netip.Prefix, error)
}

// Store is where pools and allocations are persisted (internal/store.DB;
// store.Memory in tests). Submit keeps FIFO order; Wait returns once durable.
type Store interface {
	Submit(ops ...store.Op) *store.Pending
	Load(bucket string, fn func(key string, value []byte) error) error
}

// Capabilities is the IpamDriver.GetCapabilities answer.
//
// RequiresRequestReplay is false because every pool and allocation is
// persisted: a replay after a dockerd restart would count each pool twice
// and be refused its gateway (already held), while Docker replays nothing
// after a plugin restart anyway, which is the case persistence must cover.
type Capabilities struct {
	RequiresMACAddress    bool
	RequiresRequestReplay bool
}

// GetCapabilities answers IpamDriver.GetCapabilities; it needs no state.
func GetCapabilities() Capabilities {
	return Capabilities{}
}

// GetDefaultAddressSpaces answers IpamDriver.GetDefaultAddressSpaces.
func GetDefaultAddressSpaces() *ipamapi.AddressSpacesResponse {
	return &ipamapi.AddressSpacesResponse{
		LocalDefaultAddressSpace:  LocalAddressSpace,
		GlobalDefaultAddressSpace: GlobalAddressSpace,
	}
}

// pool is what one RequestPool answered: this host's subnet of an overlay,
// narrowed to rng by --ip-range. Pools with the same ID are one pool with a
// reference count.
//
// A reference is pending from RequestPool until the network's gateway is
// allocated through the pool (Docker asks for it milliseconds later), and
// held by that network from then on. Pending references expire
// (ExpirePending) and are bounded (MaxPending): a network create abandoned
// half way must not keep a pool, or make the state grow, forever.
type pool struct {
	ID      string       `json:"-"`
	Overlay netip.Prefix `json:"Overlay"`
	Subnet  netip.Prefix `json:"Subnet"`
	Range   netip.Prefix `json:"Range"`
	Refs    int          `json:"Refs"`              // references networks hold
	Pending int          `json:"Pending,omitempty"` // len(pending), as written to disk

	pending []time.Time // when each pending reference was handed out, oldest first
}

// refs is every reference to pl, held or pending.
func (pl *pool) refs() int { return pl.Refs + len(pl.pending) }

// subnet is the allocation state of one of this host's subnets, shared by
// every pool on it.
type subnet struct {
	overlay netip.Prefix
	prefix  netip.Prefix
	gateway netip.Addr               // invalid until a network took its gateway
	used    map[netip.Addr]time.Time // address -> when it was handed out
	next    netip.Addr               // next-fit cursor, so a released address is not reused at once
}

// IPAM answers Docker's IpamDriver calls. It is safe for concurrent use.
type IPAM struct {
	log      *slog.Logger
	overlays Overlays
	store    Store

	mu      sync.Mutex // guards pools and subnets
	pools   map[string]*pool
	subnets map[netip.Prefix]*subnet
}

// New loads the persisted pools and allocations from st.
func New(log *slog.Logger, overlays Overlays, st Store) (*IPAM, error) {
	p := &IPAM{
		log:      log,
		overlays: overlays,
		store:    st,
		pools:    map[string]*pool{},
		subnets:  map[netip.Prefix]*subnet{},
	}
	if err := p.load(); err != nil {
		return nil, err
	}
	return p, nil
}

// OverlayOf returns the overlay that subnet, a pool this IPAM handed out,
// belongs to. ok is false for pools twill did not make.
func (p *IPAM) OverlayOf(prefix netip.Prefix) (netip.Prefix, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s, ok := p.subnets[prefix.Masked()]
	if !ok {
		return netip.Prefix{}, false
	}
	return s.overlay, true
}

// Allocation is one held address, for reconciliation and twillctl.
type Allocation struct {
	Addr    netip.Addr
	Subnet  netip.Prefix
	Overlay netip.Prefix
	Gateway bool
	Since   time.Time // when it was handed out (zero for allocations made before twill recorded it)
}

// Allocations lists every held address.
func (p *IPAM) Allocations() []Allocation {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []Allocation
	for _, s := range p.subnets {
		for a, since := range s.used {
			out = append(out, Allocation{Addr: a, Subnet: s.prefix, Overlay: s.overlay, Gateway: a == s.gateway, Since: since})
		}
	}
	return out
}
