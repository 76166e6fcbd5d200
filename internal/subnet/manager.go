package subnet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// DefaultPrefix is flanneld's default etcd prefix.
const DefaultPrefix = "/coreos.com/network"

// Defaults of Options, flannel's values (subnetTTL, subnetLeaseRenewMargin).
const (
	DefaultTTL         = 24 * time.Hour
	DefaultRenewMargin = time.Hour
)

var (
	// ErrOverlayOverlap means an overlay asked for overlaps another one.
	ErrOverlayOverlap = errors.New("overlay overlaps another overlay")
	// ErrNoLease means the host holds no lease in the overlay right now (it
	// lost it and is retrying).
	ErrNoLease = errors.New("no lease held")
	// ErrClosed is returned after Close or Release.
	ErrClosed = errors.New("subnet manager closed")
)

// Options configure a Manager.
type Options struct {
	Client *clientv3.Client // required
	Prefix string           // etcd prefix; DefaultPrefix if empty

	// Network is written to `<prefix>/config` when there is none; a stored
	// config wins (also one flanneld wrote).
	Network   netip.Prefix
	SubnetLen int // of configs twill writes; 0 = flannel's default (24 for a /16)
	Port      int // Backend.Port of configs twill writes; 0 = DefaultPort

	PublicIP netip.Addr // required: this host's underlay address, written in its leases

	// Backend says what this host writes in its leases of an overlay whose
	// config is cfg: flannel's BackendType and BackendData (e.g. wireguard
	// and the host's public key). An error refuses the overlay. nil, or a
	// zero LeaseBackend: a udp lease.
	Backend func(cfg Config) (LeaseBackend, error)

	Store Store        // this host's subnets across restarts; nil = in memory only
	Clock Clock        // nil = RealClock
	Log   *slog.Logger // nil = discard

	TTL         time.Duration // etcd lease TTL; DefaultTTL if zero
	RenewMargin time.Duration // renew this long before expiry; DefaultRenewMargin if zero
	RetryMin    time.Duration // first retry delay when etcd fails; 1 s if zero
	RetryMax    time.Duration // longest retry delay; 1 min if zero
	OpTimeout   time.Duration // bound of one etcd round (list+write); 10 s if zero
	// PresenceTTL is the TTL of this host's presence key (see presence.go);
	// DefaultPresenceTTL if zero.
	PresenceTTL time.Duration
}

// Manager holds this host's leases in every overlay it uses.
type Manager struct {
	opts   Options
	log    *slog.Logger
	ctx    context.Context // lives until Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // overlay loops and subscriber pumps

	mu        sync.Mutex
	def       netip.Prefix
	overlays  map[netip.Prefix]*overlay
	pending   map[netip.Prefix]*pendingOverlay
	published map[netip.Prefix]map[netip.Prefix]Event // what subscribers were told, per overlay
	subs      map[*subscriber]struct{}
	closed    bool

	presence       *presence
	presenceLease  clientv3.LeaseID // guarded by mu
	presenceCancel context.CancelFunc
	presenceDone   chan struct{}
}

type pendingOverlay struct {
	done chan struct{}
	err  error
}

// New reads (or writes) the default overlay's config, acquires this host's
// subnet in it and starts renewing it and watching the other hosts. ctx
// bounds the start only.
func New(ctx context.Context, opts Options) (*Manager, error) {
	if opts.Client == nil {
		return nil, errors.New("subnet manager needs an etcd client")
	}
	if !opts.PublicIP.Is4() {
		return nil, fmt.Errorf("public IP %v is not an IPv4 address", opts.PublicIP)
	}
	opts.Prefix = strings.TrimRight(opts.Prefix, "/")
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	if opts.Store == nil {
		opts.Store = &MemStore{}
	}
	if opts.Clock == nil {
		opts.Clock = RealClock{}
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	setDefault(&opts.TTL, DefaultTTL)
	setDefault(&opts.RenewMargin, DefaultRenewMargin)
	setDefault(&opts.RetryMin, time.Second)
	setDefault(&opts.RetryMax, time.Minute)
	setDefault(&opts.OpTimeout, 10*time.Second)
	setDefault(&opts.PresenceTTL, DefaultPresenceTTL)

	m := &Manager{
		opts:      opts,
		log:       opts.Log,
		overlays:  map[netip.Prefix]*overlay{},
		pending:   map[netip.Prefix]*pendingOverlay{},
		published: map[netip.Prefix]map[netip.Prefix]Event{},
		subs:      map[*subscriber]struct{}{},
	}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	ok := false
	defer func() {
		if !ok {
			m.cancel()
		}
	}()

	kv := overlayKV{cli: opts.Client, prefix: opts.Prefix}
	cctx, cancel := context.WithTimeout(ctx, opts.OpTimeout)
	var value []byte
	var err error
	if opts.Network.IsValid() {
		var want Config
		want, err = NewConfig(opts.Network, opts.SubnetLen, opts.Port)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("configured network %s: %w", opts.Network, err)
		}
		var created bool
		value, created, err = kv.ensureConfig(cctx, want.Marshal())
		if created {
			m.log.Info("wrote overlay config", "key", kv.configKey(), "config", string(value))
		}
	} else if value, err = kv.readConfig(cctx); err == nil && value == nil {
		err = fmt.Errorf("no config at %s and no network configured (TWILL_NETWORK) to write one: %w", kv.configKey(), ErrBadConfig)
	}
	cancel()
	if err != nil {
		return nil, err
	}
	cfg, err := ParseConfig(kv.configKey(), value)
	if err != nil {
		return nil, err
	}
	if opts.Network.IsValid() && cfg.Network != opts.Network.Masked() {
		m.log.Info("using the overlay already configured in etcd", "key", kv.configKey(),
			"network", cfg.Network, "configured", opts.Network)
	}
	// A live host with our public IP is refused before any lease is touched.
	if m.presence, err = m.newPresence(); err != nil {
		return nil, err
	}
	pid, err := m.presence.claim(ctx)
	if err != nil {
		return nil, m.presenceError(ctx, err)
	}
	m.setPresenceLease(pid)
	defer func() {
		if !ok {
			m.revokePresence()
		}
	}()
	o, err := m.open(ctx, kv, cfg)
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	m.def = cfg.Network
	m.mu.Unlock()
	if err := m.register(o); err != nil {
		return nil, err
	}
	pctx, pcancel := context.WithCancel(m.ctx)
	m.presenceCancel, m.presenceDone = pcancel, make(chan struct{})
	go func() {
		defer close(m.presenceDone)
		m.presence.keep(pctx, m, pid)
	}()
	ok = true
	return m, nil
}

func (m *Manager) setPresenceLease(id clientv3.LeaseID) {
	m.mu.Lock()
	m.presenceLease = id
	m.mu.Unlock()
}

// stopPresence stops renewing the presence key and revokes it, so that a
// new host may use this public IP at once.
func (m *Manager) stopPresence() {
	if m.presenceCancel != nil {
		m.presenceCancel()
		<-m.presenceDone
	}
	m.revokePresence()
}

func (m *Manager) revokePresence() {
	m.mu.Lock()
	id := m.presenceLease
	m.presenceLease = 0
	m.mu.Unlock()
	if id == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := m.opts.Client.Revoke(ctx, id); err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		m.log.Debug("revoking the presence key; it expires by itself", "err", err)
	}
}

func setDefault(d *time.Duration, v time.Duration) {
	if *d <= 0 {
		*d = v
	}
}

// Default returns the default overlay: the Network of `<prefix>/config`.
func (m *Manager) Default() netip.Prefix {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.def
}

// Subnet returns this host's subnet in overlay, leasing one on first use.
// It is safe for concurrent use: concurrent first calls lease once.
func (m *Manager) Subnet(ctx context.Context, overlay netip.Prefix) (netip.Prefix, error) {
	l, err := m.Lease(ctx, overlay)
	return l.Subnet, err
}

// open acquires this host's lease in the overlay and reads every lease, ready
// for register.
func (m *Manager) open(ctx context.Context, kv overlayKV, cfg Config) (*overlay, error) {
	o := &overlay{m: m, kv: kv, cfg: cfg, live: cfg, log: m.log.With("overlay", cfg.Network.String())}
	if m.opts.Backend != nil {
		be, err := m.opts.Backend(cfg)
		if err != nil {
			return nil, fmt.Errorf("overlay %s (config at %s): %w", cfg.Network, kv.configKey(), err)
		}
		o.backend = be
	}
	if cfg.BackendType != "udp" && o.backend.Type != cfg.BackendType {
		o.log.Warn("overlay config names another backend; twill speaks flannel's udp backend only, hosts on that backend will not reach twill hosts",
			"key", kv.configKey(), "backend", cfg.BackendType)
	}
	own, err := o.acquire(ctx)
	if err != nil {
		return nil, err
	}
	o.own = own
	o.holding = true
	lctx, cancel := context.WithTimeout(ctx, m.opts.OpTimeout)
	defer cancel()
	if err := o.resyncKnown(lctx, false); err != nil {
		return nil, err
	}
	o.log.Info("acquired subnet", "subnet", own.Subnet, "public_ip", own.Attrs.PublicIP, "expires", own.Expiration)
	return o, nil
}

// register publishes an opened overlay's leases and starts its loop.
func (m *Manager) register(o *overlay) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	m.overlays[o.cfg.Network] = o
	evs := make([]Event, 0, len(o.known))
	for _, l := range o.known {
		evs = append(evs, Event{Type: Added, Lease: l, Own: l.Subnet == o.own.Subnet})
	}
	m.publishLocked(evs)
	ctx, cancel := context.WithCancel(m.ctx)
	o.cancel = cancel
	o.done = make(chan struct{})
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		o.run(ctx)
	}()
	return nil
}

// Leases returns this host's leases, one per overlay it holds a subnet in.
func (m *Manager) Leases() []Lease {
	m.mu.Lock()
	defer m.mu.Unlock()
	var ls []Lease
	for _, o := range m.overlays {
		if o.own.Subnet.IsValid() {
			ls = append(ls, o.own)
		}
	}
	sortLeases(ls)
	return ls
}

// AllLeases returns every host's lease in every overlay this host uses, as
// last seen (flanneld hosts too: see Attrs.BackendType).
func (m *Manager) AllLeases() []Lease {
	m.mu.Lock()
	defer m.mu.Unlock()
	var ls []Lease
	for _, byNet := range m.published {
		for _, e := range byNet {
			ls = append(ls, e.Lease)
		}
	}
	sortLeases(ls)
	return ls
}

func sortLeases(ls []Lease) {
	sort.Slice(ls, func(i, j int) bool {
		if ls[i].Overlay != ls[j].Overlay {
			return ls[i].Overlay.Addr().Less(ls[j].Overlay.Addr())
		}
		return ls[i].Subnet.Addr().Less(ls[j].Subnet.Addr())
	})
}

// Config returns the config of an overlay this host uses.
func (m *Manager) Config(overlay netip.Prefix) (Config, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	o := m.overlays[overlay.Masked()]
	if o == nil {
		return Config{}, false
	}
	return o.live, true
}

// OverlayOf returns the overlay (of those this host uses) that contains sn,
// e.g. 10.96.0.0/16 for 10.96.7.0/24.
func (m *Manager) OverlayOf(sn netip.Prefix) (netip.Prefix, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for n := range m.overlays {
		if n.Contains(sn.Addr()) && sn.Bits() >= n.Bits() {
			return n, true
		}
	}
	return netip.Prefix{}, false
}

// Release revokes this host's leases in every overlay (`twillctl leave`):
// their keys disappear from etcd at once and peers drop this host. Renewing
// stops; Subnet and Lease fail afterwards. Reservations (keys without a TTL,
// written by an operator) are left in place.
func (m *Manager) Release(ctx context.Context) error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return ErrClosed
	}
	var ovs []*overlay
	for _, o := range m.overlays {
		ovs = append(ovs, o)
	}
	m.mu.Unlock()

	var errs []error
	for _, o := range ovs {
		o.cancel()
		<-o.done
		m.mu.Lock()
		own := o.own
		m.mu.Unlock()
		if !own.Subnet.IsValid() {
			continue
		}
		if err := o.kv.revoke(ctx, own.EtcdLease); err != nil {
			errs = append(errs, fmt.Errorf("releasing %s in overlay %s: %w", own.Subnet, own.Overlay, err))
			continue
		}
		o.log.Info("released subnet", "subnet", own.Subnet)
		m.mu.Lock()
		o.own = Lease{}
		m.publishLocked([]Event{{Type: Removed, Lease: own, Own: true}})
		m.mu.Unlock()
	}
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	m.stopPresence()
	return errors.Join(errs...)
}

// Close stops renewing and watching and closes every subscription. The
// leases stay in etcd (until their TTL) so a restart takes them back; the
// presence key is revoked, so another host may take this public IP.
func (m *Manager) Close() error {
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	m.cancel()
	m.wg.Wait()
	m.stopPresence()
	return nil
}
