// Package driver owns twill's Docker networks and endpoints on this host:
// Docker's network driver API (NetworkDriver.*), one bridge per network
// (tw-<first 8 of the network ID>) and one veth pair per endpoint
// (twv<first 8 of the endpoint ID> on the bridge, twc<...> handed to
// Docker in Join). It sees the kernel only through Links and Firewall, and
// persists every network and endpoint before answering, so a restarted
// plugin can reconcile the kernel with what Docker believes exists.
package driver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"

	"github.com/twill-net/twill/internal/store"
)

// Link name prefixes. Every name stays within 15 characters.
const (
	BridgePrefix   = "tw-"
	HostVethPrefix = "twv"
	PeerVethPrefix = "twc"
	idChars        = 8
)

// Option keys Docker sends.
const (
	optGeneric    = "com.docker.network.generic"
	optIPv6       = "com.docker.network.enable_ipv6"
	optIPv4       = "com.docker.network.enable_ipv4" // Docker 28+
	optInternal   = "com.docker.network.internal"
	optMTU        = "com.docker.network.driver.mtu"
	optBackend    = "twill.backend" // -o twill.backend=wireguard: an encrypted overlay
	optPortMap    = "com.docker.network.portmap"
	defaultIPAM   = "LocalDefault"
	defaultGlobal = "GlobalDefault"
)

// Conditions callers and tests check with errors.Is. Each is wrapped with a
// message that names the object and says what to do.
var (
	ErrNotTwillIPAM    = errors.New("network does not use twill's IPAM")
	ErrBadOption       = errors.New("unsupported option")
	ErrMTU             = errors.New("invalid mtu")
	ErrUnknownNetwork  = errors.New("unknown to twill on this host")
	ErrUnknownEndpoint = errors.New("unknown to twill on this host")
	ErrSubnetTaken     = errors.New("already backs another twill network")
	ErrNameClash       = errors.New("link name already used by another twill object")
	ErrBadRequest      = errors.New("malformed request")
	ErrPortTaken       = errors.New("already published")
)

// Pools tells which overlay a pool (this host's subnet) belongs to. The IPAM
// implements it: every pool a twill network has came from there.
type Pools interface {
	// OverlayOf returns the overlay subnet belongs to; ok is false for a
	// pool twill's IPAM did not hand out.
	OverlayOf(subnet netip.Prefix) (overlay netip.Prefix, ok bool)
}

// Store is where networks and endpoints are persisted (internal/store.DB;
// store.Memory in tests). Submit keeps FIFO order; Wait returns once durable.
type Store interface {
	Submit(ops ...store.Op) *store.Pending
	Load(bucket string, fn func(key string, value []byte) error) error
}

// Config is the driver's part of twilld's settings.
type Config struct {
	// MTU is the tunnel MTU (underlay MTU - 28): the default MTU of bridges
	// and veths, and the most a network's mtu option may ask for.
	MTU int
	// OverlayMTU, when set, gives the tunnel MTU of one overlay when it
	// differs from MTU (an encrypted overlay's WireGuard device carries
	// less); 0 means MTU.
	OverlayMTU func(overlay netip.Prefix) int
	// SetBackend, when set, makes overlay use backend ("udp" or "wireguard")
	// for -o twill.backend=…, or returns an error saying why it cannot (the
	// overlay already runs another backend between hosts). nil refuses the
	// option.
	SetBackend func(ctx context.Context, overlay netip.Prefix, backend string) error
	// PluginName is how users name twill in -d / --ipam-driver, for error
	// messages ("twill:latest" for the managed plugin, "twill" unmanaged).
	PluginName string
}

// Capabilities is the NetworkDriver.GetCapabilities answer: networks are
// created on each host (local data scope) but connect containers across
// hosts (global connectivity scope).
//
// GwAllocChecker (Docker 28+) is left out on purpose, so it reads false and
// Docker never sends GwAllocCheck: every twill network needs its gateway
// address (the host's /24's first address, on the network's bridge, the
// containers' default route), and Docker asks twill's IPAM for it with a
// gateway RequestAddress exactly as Docker 20.10 does.
type Capabilities struct {
	Scope             string
	ConnectivityScope string
}

// GetCapabilities answers NetworkDriver.GetCapabilities; it needs no state.
func GetCapabilities() Capabilities {
	return Capabilities{Scope: "local", ConnectivityScope: "global"}
}

// Driver answers Docker's NetworkDriver calls. It is safe for concurrent
// use; Docker does not send concurrent calls for one endpoint.
type Driver struct {
	log   *slog.Logger
	links Links
	fw    Firewall
	pools Pools
	store Store
	cfg   Config

	mu        sync.Mutex // guards networks and endpoints
	networks  map[string]*network
	endpoints map[string]*endpoint
}

// New loads the persisted networks and endpoints. Call Reconcile once the
// kernel side (Links, Firewall) is usable to converge it with them.
func New(log *slog.Logger, links Links, fw Firewall, pools Pools, st Store, cfg Config) (*Driver, error) {
	if cfg.MTU < minMTU {
		return nil, fmt.Errorf("tunnel mtu %d: %w: it must be at least %d", cfg.MTU, ErrMTU, minMTU)
	}
	if cfg.PluginName == "" {
		cfg.PluginName = "twill:latest"
	}
	d := &Driver{
		log:       log,
		links:     links,
		fw:        fw,
		pools:     pools,
		store:     st,
		cfg:       cfg,
		networks:  map[string]*network{},
		endpoints: map[string]*endpoint{},
	}
	if err := d.load(); err != nil {
		return nil, err
	}
	return d, nil
}

// tunnelMTU is the tunnel MTU of overlay: the default for a network's
// bridge and veths, and the most its mtu option may ask for.
func (d *Driver) tunnelMTU(overlay netip.Prefix) int {
	if d.cfg.OverlayMTU != nil {
		if m := d.cfg.OverlayMTU(overlay); m > 0 {
			return m
		}
	}
	return d.cfg.MTU
}

// minMTU is IPv4's minimum MTU every link must carry (RFC 791: 68; Linux
// refuses less for IPv4 addresses on a link).
const minMTU = 68

func shortID(id string) string {
	if len(id) > idChars {
		return id[:idChars]
	}
	return id
}

func bridgeName(networkID string) string { return BridgePrefix + shortID(networkID) }
func hostVeth(endpointID string) string  { return HostVethPrefix + shortID(endpointID) }
func peerVeth(endpointID string) string  { return PeerVethPrefix + shortID(endpointID) }
