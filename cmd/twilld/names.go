package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/twill-net/twill/internal/control"
	"github.com/twill-net/twill/names"
)

// nameService wires names across hosts: per overlay in use, its resolver
// address on lo, a DNS listener there and a watcher of the overlay's name
// records; once per host, the publisher of this host's records and the
// Docker watcher that feeds it.
type nameService struct {
	n     *node
	stats names.Stats // all overlays' resolvers count here
	host  names.HostAddrs
	fwd   *names.Forwarder
	pub   *names.Publisher

	mu       sync.Mutex
	ctx      context.Context // set by run; overlays seen before wait for it
	wg       sync.WaitGroup
	overlays map[netip.Prefix]*overlayNames
}

// overlayNames is one overlay's resolver.
type overlayNames struct {
	overlay netip.Prefix
	prefix  string // the overlay's etcd prefix
	addr    netip.Addr
	table   *names.Table
	cancel  context.CancelFunc

	mu      sync.Mutex
	state   string // "serving", or why not
	removed bool
}

func (o *overlayNames) setState(s string) {
	o.mu.Lock()
	o.state = s
	o.mu.Unlock()
}

func (o *overlayNames) getState() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.state
}

func newNameService(n *node) *nameService {
	return &nameService{n: n, overlays: map[netip.Prefix]*overlayNames{}}
}

// ensure serves names in overlay (idempotent); a config under which a host
// could lease the resolver address leaves names off in that overlay, said
// in the log and in `twillctl status`.
func (s *nameService) ensure(ov netip.Prefix) {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.overlays[ov]; ok {
		return
	}
	o := &overlayNames{overlay: ov, prefix: s.n.leases.KeyPrefix(ov), table: names.NewTable(), state: "starting"}
	s.overlays[ov] = o
	cfg, _ := s.n.leases.Config(ov)
	addr, err := names.ResolverAddr(ov, cfg.SubnetMin)
	if err != nil {
		o.state = "off: " + err.Error()
		s.n.log.Warn("names across hosts are off in this overlay", "overlay", ov, "err", err)
		return
	}
	o.addr = addr
	if s.ctx != nil {
		s.start(o)
	}
}

// remove stops the resolver of an overlay this host left and gives its
// address back.
func (s *nameService) remove(ov netip.Prefix) {
	if s == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if o, ok := s.overlays[ov]; ok {
		delete(s.overlays, ov)
		o.mu.Lock()
		o.removed = true
		o.mu.Unlock()
		if o.cancel != nil {
			o.cancel()
		}
	}
}

// start runs o's listener and watcher; called with s.mu held.
func (s *nameService) start(o *overlayNames) {
	if !o.addr.IsValid() {
		return
	}
	ctx, cancel := context.WithCancel(s.ctx)
	o.cancel = cancel
	log := s.n.log.With("overlay", o.overlay, "resolver", o.addr)
	r := &names.Resolver{Table: o.table, Overlay: o.overlay, IsHost: s.host.Has, Forward: s.fwd, TTL: names.DefaultTTL, Stats: &s.stats, Log: log}
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		(&names.Watcher{Client: s.n.cli, Prefix: o.prefix, Table: o.table, Log: log}).Run(ctx)
	}()
	go func() {
		defer s.wg.Done()
		var l *names.Listener
		for warned := false; ; warned = true {
			err := s.n.links.HoldAddress(ctx, o.addr)
			if err == nil {
				l, err = names.Listen(netip.AddrPortFrom(o.addr, 53), r)
			}
			if err == nil {
				break
			}
			o.setState("not serving: " + err.Error())
			if !warned {
				log.Error("resolver cannot listen; retrying every 5 s", "err", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(5 * time.Second):
			}
		}
		o.setState("serving")
		log.Info("resolver serving names across hosts", "upstreams", s.fwd.Upstreams())
		<-ctx.Done()
		l.Close()
		// The address stays while twilld is only stopped: a query then
		// meets a closed port and Docker's resolver moves on at once. An
		// overlay this host left gives it back.
		o.mu.Lock()
		removed := o.removed
		o.mu.Unlock()
		if removed {
			if err := s.n.links.ReleaseAddress(context.WithoutCancel(ctx), o.addr); err != nil {
				log.Warn("releasing the resolver address", "err", err)
			}
		}
	}()
}

// run starts the publisher, the Docker watcher and the resolvers of the
// overlays seen so far, and serves until ctx ends.
func (s *nameService) run(ctx context.Context) {
	if s == nil {
		return
	}
	ups := s.n.cfg.DNSUpstream
	if len(ups) == 0 {
		var err error
		if ups, err = names.ReadResolvConf(names.DefaultResolvConf); err != nil {
			s.n.log.Warn("no upstream resolvers: names that are not twill's fail (set TWILL_DNS_UPSTREAM)", "err", err)
		}
	}
	var kept []netip.AddrPort
	for _, u := range ups {
		if _, inOverlay := s.n.leases.OverlayOf(netip.PrefixFrom(u.Addr(), 32)); inOverlay {
			// The host's resolv.conf pointing at twill itself would loop.
			s.n.log.Warn("not forwarding to an upstream inside an overlay (twill's own resolver?)", "upstream", u)
			continue
		}
		kept = append(kept, u)
	}
	s.fwd = names.NewForwarder(kept, 2*time.Second)
	self := s.n.publicIP.String()
	s.pub = &names.Publisher{Client: s.n.cli, Log: s.n.log, Dirs: func() []string {
		var dirs []string
		for _, l := range s.n.leases.Leases() {
			dirs = append(dirs, names.HostDir(s.n.leases.KeyPrefix(l.Overlay), self))
		}
		return dirs
	}}
	// The first write waits for Docker's first resync: publishing an empty
	// set first would make this host's names flap at every restart.
	startPub := sync.OnceFunc(func() {
		s.wg.Add(1)
		go func() { defer s.wg.Done(); s.pub.Run(ctx) }()
	})
	if sock := s.n.cfg.DockerSocket; sock != "" {
		d := &names.Docker{Socket: sock, Host: self, Log: s.n.log, IsTwill: s.isTwill,
			Update: func(recs []names.Record) { s.publish(recs); startPub() }}
		s.wg.Add(1)
		go func() { defer s.wg.Done(); d.Run(ctx) }()
	} else {
		startPub()
	}
	s.mu.Lock()
	s.ctx = ctx
	for _, o := range s.overlays {
		s.start(o)
	}
	s.mu.Unlock()
	<-ctx.Done()
	s.wg.Wait()
	s.fwd.Close()
}

func (s *nameService) isTwill(networkID string) bool {
	for _, nw := range s.n.drv.Networks() {
		if nw.ID == networkID {
			return true
		}
	}
	return false
}

// publish turns the Docker watcher's records into keys under their overlay.
func (s *nameService) publish(recs []names.Record) {
	want := make(map[string][]byte, len(recs))
	for _, r := range recs {
		ov, ok := s.n.leases.OverlayOf(netip.PrefixFrom(r.Addr, 32))
		if !ok {
			continue
		}
		want[r.Key(s.n.leases.KeyPrefix(ov))] = r.Marshal()
	}
	s.pub.Set(want)
}

// resolverView is what `twillctl status` shows for overlay ov.
func (s *nameService) resolverView(ov netip.Prefix) (addr, state string) {
	if s == nil {
		return "", "off (TWILL_NAMES=off)"
	}
	s.mu.Lock()
	o, ok := s.overlays[ov]
	s.mu.Unlock()
	if !ok {
		return "", ""
	}
	state = o.getState()
	if state == "serving" {
		state = fmt.Sprintf("serving, %d records", o.table.Len())
	}
	if o.addr.IsValid() {
		addr = o.addr.String()
	}
	return addr, state
}

// Names lists every overlay's records, one row per name.
func (n *node) Names(ctx context.Context) ([]control.Name, error) {
	s := n.names
	if s == nil {
		return nil, errors.New("names across hosts are off on this host (TWILL_NAMES=off)")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := []control.Name{}
	for ov, o := range s.overlays {
		for _, r := range o.table.Records() {
			for _, name := range r.Names {
				out = append(out, control.Name{Name: name, Address: r.Addr.String(), Host: r.Host, Network: r.Network, Overlay: ov.String(), Container: r.Container})
			}
		}
	}
	return out, nil
}

// dnsStats sums the resolvers' counters, for metrics.
func (n *node) dnsStats() (names.Snapshot, map[string]int) {
	s := n.names
	if s == nil {
		return names.Snapshot{}, nil
	}
	records := map[string]int{}
	s.mu.Lock()
	for ov, o := range s.overlays {
		records[ov.String()] = o.table.Len()
	}
	s.mu.Unlock()
	return s.stats.Snapshot(), records
}
