package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/twill-net/twill/datapath/firewall"
	"github.com/twill-net/twill/datapath/kernel"
	"github.com/twill-net/twill/datapath/links"
	"github.com/twill-net/twill/datapath/overlay"
	"github.com/twill-net/twill/datapath/wireguard"
	"github.com/twill-net/twill/driver"
	"github.com/twill-net/twill/internal/control"
	"github.com/twill-net/twill/internal/etcdserver"
	"github.com/twill-net/twill/internal/metrics"
	"github.com/twill-net/twill/internal/store"
	"github.com/twill-net/twill/internal/subnet"
	"github.com/twill-net/twill/ipam"
	"github.com/twill-net/twill/plugin"
)

// node is one running host: its state, lease, datapath and drivers.
type node struct {
	cfg      config
	log      *slog.Logger
	metrics  *metrics.Metrics
	started  time.Time
	under    underlay
	publicIP netip.Addr
	mtu      int

	db      *store.DB
	etcd    *etcdserver.Server // nil with an external etcd
	cli     *clientv3.Client
	leases  *subnet.Manager
	fwd     *overlay.Forwarder
	kdp     *kernel.Datapath // nil: the TUN path forwards everything (pathWhy says why)
	pins    string           // where kdp's links are pinned; "": they stop with twilld (pinWhy says why)
	pinWhy  string
	pathWhy string
	enc     *encrypted
	links   *links.Links
	fw      *firewall.Firewall
	drv     *driver.Driver
	ipam    *ipam.IPAM
	names   *nameService // nil with TWILL_NAMES=off

	envMu     sync.Mutex // serialises subnet.env writes
	closeOnce sync.Once
}

// fatal reports errors that retrying cannot fix: the operator has to change
// a setting (or etcd's content) first.
func fatal(err error) bool {
	for _, e := range []error{subnet.ErrBadConfig, subnet.ErrEtcdTLS, subnet.ErrPublicIPInUse, subnet.ErrOverlayOverlap} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// startHost brings the host up in dependency order. Errors say what to set.
func startHost(ctx context.Context, cfg config, log *slog.Logger, srv *plugin.Server, m *metrics.Metrics) (_ *node, err error) {
	n := &node{cfg: cfg, log: log, metrics: m, started: time.Now()}
	if cfg.Names {
		n.names = newNameService(n)
	}
	defer func() {
		if err != nil {
			n.close()
		}
	}()
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory %s (TWILL_STATE_DIR): %w", cfg.StateDir, err)
	}
	if n.db, err = store.Open(cfg.StateDir, log); err != nil {
		return nil, err
	}
	if n.under, err = findUnderlay(cfg.Iface); err != nil {
		return nil, err
	}
	n.publicIP = cfg.PublicIP
	if !n.publicIP.IsValid() {
		n.publicIP = n.under.Addr
	}
	if !n.publicIP.IsValid() {
		return nil, fmt.Errorf("underlay interface %s has no IPv4 address: set TWILL_IFACE to the interface other hosts reach this one on, or TWILL_PUBLIC_IP", n.under.Name)
	}
	n.mtu = cfg.MTU
	if n.mtu == 0 {
		n.mtu = n.under.MTU - 28 // outer IPv4 and UDP headers
	}

	key, created, err := wireguard.LoadOrCreateKey(filepath.Join(cfg.StateDir, wireguard.KeyFile))
	if err != nil {
		return nil, err
	}
	if created {
		log.Info("generated this host's wireguard key for encrypted overlays", "public_key", key.Public().String())
	}
	n.enc = newEncrypted(key, n.mtu+28-wireguard.Overhead, log)

	endpoints := cfg.EtcdEndpoints
	if len(endpoints) == 0 {
		err = retry(ctx, log, srv, "starting the embedded etcd", func(error) bool { return false }, func() error {
			var err error
			n.etcd, err = etcdserver.Start(ctx, cfg.StateDir, log)
			return err
		})
		if err != nil {
			return nil, err
		}
		endpoints = n.etcd.Endpoints()
		log.Info("embedded etcd started (single host; set ETCD_ENDPOINTS for several)", "endpoints", endpoints)
	}
	dial := subnet.DialConfig{Endpoints: endpoints, CAFile: cfg.EtcdCAFile, CertFile: cfg.EtcdCertFile, KeyFile: cfg.EtcdKeyFile}
	err = retry(ctx, log, srv, "connecting to etcd", fatal, func() error {
		var err error
		n.cli, err = subnet.Dial(ctx, dial)
		if err != nil {
			m.EtcdError("dial")
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	err = retry(ctx, log, srv, "leasing this host's subnet", fatal, func() error {
		var err error
		n.leases, err = subnet.New(ctx, subnet.Options{
			Client: n.cli, Prefix: cfg.EtcdPrefix, Network: cfg.Network, Port: int(cfg.Port),
			PublicIP: n.publicIP, Store: subnet.NewFileStore(filepath.Join(cfg.StateDir, "leases.json")),
			Backend: n.enc.leaseBackend, Log: log,
		})
		if err != nil {
			m.EtcdError("lease")
		}
		return err
	})
	if err != nil {
		return nil, err
	}

	n.fwd, err = overlay.Open(overlay.Config{MTU: n.mtu, PublicIP: n.under.Addr, Port: cfg.Port, Offload: cfg.Offload, BusyPoll: cfg.BusyPoll, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("%w (twill needs /dev/net/tun and CAP_NET_ADMIN; TWILL_PUBLIC_IP/TWILL_IFACE choose the address, TWILL_PORT the port)", err)
	}
	if err := n.startKernelPath(); err != nil {
		return nil, err
	}
	for _, l := range n.leases.Leases() {
		if err := n.joinOverlay(l.Overlay, l.Subnet); err != nil {
			return nil, err
		}
	}

	if n.links, err = links.New(log); err != nil {
		return nil, err
	}
	if n.fw, err = firewall.New(ctx, firewall.Options{Encrypted: wireguard.TunnelPrefix, Log: log}); err != nil {
		return nil, err
	}
	if n.ipam, err = ipam.New(log, overlays{n}, n.db); err != nil {
		return nil, err
	}
	n.rejoinOverlays(ctx)
	if err := n.attachKernelPath(); err != nil {
		return nil, err
	}
	dcfg := driver.Config{MTU: n.mtu, OverlayMTU: n.overlayMTU, SetBackend: n.setBackend, PluginName: cfg.PluginName}
	if n.drv, err = driver.New(log, n.links, n.fw, n.ipam, n.db, dcfg); err != nil {
		return nil, err
	}
	// Reconcile goes on past a failing network and reports them all; one bad
	// network must not take the others down with it.
	rep, err := n.drv.Reconcile(ctx)
	if err != nil {
		log.Error("reconciling persisted networks with the kernel", "err", err)
	}
	if err := n.fw.Apply(ctx); err != nil {
		return nil, err
	}
	log.Info("reconciled", "networks", rep.Networks, "endpoints", rep.Endpoints, "published", rep.Published, "removed_links", rep.RemovedLinks)
	for _, v := range rep.Vanished {
		log.Warn("endpoint lost its veth while twilld was down; Docker will recreate it when the container restarts", "endpoint", v)
	}
	srv.Ready(n.drv, n.ipam)
	st := n.fwd.Stats()
	log.Info("twilld ready", "public_ip", n.publicIP, "underlay", n.under.Name, "mtu", n.mtu, "datapath", n.datapath(), "offload", st.Path)
	return n, nil
}

// joinOverlay puts this host's lease of overlay on twill0, or on the
// overlay's own WireGuard device when it is encrypted, and, for the default
// overlay, writes flannel's subnet.env.
func (n *node) joinOverlay(ov, sn netip.Prefix) error {
	if cfg, ok := n.leases.Config(ov); ok && isEncrypted(cfg) {
		if err := n.enc.join(cfg, sn); err != nil {
			return fmt.Errorf("joining encrypted overlay %s (this host's subnet %s): %w", ov, sn, err)
		}
	} else {
		if err := n.fwd.AddOverlay(ov, sn); err != nil {
			return fmt.Errorf("adding overlay %s (this host's subnet %s) to twill0: %w", ov, sn, err)
		}
		n.inKernel("adding overlay", func(k *kernel.Datapath) error { return k.AddOverlay(ov, sn) })
	}
	n.names.ensure(ov)
	if n.cfg.SubnetEnv != "" && ov == n.leases.Default() {
		n.envMu.Lock()
		defer n.envMu.Unlock()
		if err := subnet.WriteEnv(n.cfg.SubnetEnv, subnet.Env{Network: ov, Subnet: sn, MTU: n.overlayMTU(ov)}); err != nil {
			n.log.Warn("writing flannel's subnet.env", "path", n.cfg.SubnetEnv, "err", err)
		}
	}
	return nil
}

// follow applies lease events to the datapath until ctx ends.
func (n *node) follow(ctx context.Context) {
	for ev := range n.leases.Subscribe(ctx) {
		l := ev.Lease
		cfg, _ := n.leases.Config(l.Overlay)
		switch {
		case isEncrypted(cfg) && ev.Own && ev.Type == subnet.Removed:
			n.names.remove(l.Overlay)
			n.enc.leave(l.Overlay)
			continue
		case isEncrypted(cfg) && !ev.Own:
			n.enc.apply(ev, cfg)
			continue
		}
		switch {
		case ev.Own && ev.Type == subnet.Added:
			if err := n.joinOverlay(l.Overlay, l.Subnet); err != nil {
				n.log.Error("applying own lease", "err", err)
			}
		case ev.Own:
			n.names.remove(l.Overlay)
			if err := n.fwd.RemoveOverlay(l.Overlay); err != nil {
				n.log.Error("removing overlay", "overlay", l.Overlay, "err", err)
			}
			n.inKernel("removing overlay", func(k *kernel.Datapath) error { return k.RemoveOverlay(l.Overlay) })
		case l.Attrs.BackendType != "" && l.Attrs.BackendType != "udp":
			n.log.Warn("peer uses another flannel backend; twill speaks udp only, so its subnet is unreachable", "subnet", l.Subnet, "backend", l.Attrs.BackendType, "peer", l.Attrs.PublicIP)
		case ev.Type == subnet.Added:
			peer, _ := n.udpPeer(l)
			n.inKernel("adding peer", func(k *kernel.Datapath) error { return k.SetPeer(l.Subnet, peer) })
			if err := n.fwd.SetPeer(l.Subnet, peer); err != nil {
				n.log.Error("adding peer", "subnet", l.Subnet, "peer", peer, "err", err)
			} else {
				n.log.Info("peer added", "subnet", l.Subnet, "peer", peer, "overlay", l.Overlay)
			}
		default:
			n.inKernel("removing peer", func(k *kernel.Datapath) error { return k.RemovePeer(l.Subnet) })
			if err := n.fwd.RemovePeer(l.Subnet); err != nil {
				n.log.Error("removing peer", "subnet", l.Subnet, "err", err)
			} else {
				n.log.Info("peer removed", "subnet", l.Subnet, "peer", l.Attrs.PublicIP)
			}
		}
	}
}

// udpPeer is where the udp datapaths send packets for a peer lease's
// subnet; false for a lease they do not carry: in an encrypted overlay, or
// of another flannel backend.
func (n *node) udpPeer(l subnet.Lease) (netip.AddrPort, bool) {
	cfg, _ := n.leases.Config(l.Overlay)
	if isEncrypted(cfg) || l.Attrs.BackendType != "" && l.Attrs.BackendType != "udp" {
		return netip.AddrPort{}, false
	}
	port := int(n.cfg.Port)
	if cfg.Port != 0 {
		port = cfg.Port
	}
	return netip.AddrPortFrom(l.Attrs.PublicIP, uint16(port)), true
}

// serve runs the datapath, lease events, control socket and metrics until
// ctx ends, then shuts down. Leases stay in etcd so a restart keeps them.
func (n *node) serve(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := n.fwd.Run(ctx); err != nil {
			errs <- fmt.Errorf("datapath: %w", err)
		}
		cancel()
	}()
	go func() { defer wg.Done(); n.follow(ctx) }()
	wg.Add(1)
	go func() { defer wg.Done(); n.sweepLoop(ctx) }()
	wg.Add(1)
	go func() { defer wg.Done(); n.reconcileWithDocker(ctx) }()
	wg.Add(1)
	go func() { defer wg.Done(); n.names.run(ctx) }()

	ln, err := control.Listen(n.cfg.ControlSocket)
	if err != nil {
		cancel()
		n.close()
		wg.Wait()
		return err
	}
	cs := &http.Server{Handler: control.Handler(n, n.log), ReadHeaderTimeout: 5 * time.Second}
	wg.Add(1)
	go func() { defer wg.Done(); cs.Serve(ln) }()
	if n.cfg.MetricsAddr != "" {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := n.metrics.Serve(ctx, n.cfg.MetricsAddr, n.log); err != nil {
				n.log.Error("metrics", "err", err)
			}
		}()
	}
	<-ctx.Done()
	cs.Close()
	n.close() // ends Run and follow's subscription
	wg.Wait()
	select {
	case err := <-errs:
		return err
	default:
		return nil
	}
}

// close releases what startHost opened, in reverse order. It is safe on a
// partly started node.
func (n *node) close() { n.closeOnce.Do(n.closeAll) }

func (n *node) closeAll() {
	if n.fwd != nil {
		n.closeKernelPath()
		n.fwd.Close()
	}
	if n.enc != nil {
		n.enc.close()
	}
	if n.leases != nil {
		n.leases.Close()
	}
	if n.cli != nil {
		n.cli.Close()
	}
	if n.etcd != nil {
		n.etcd.Close()
	}
	if n.links != nil {
		n.links.Close()
	}
	if n.db != nil {
		n.db.Close()
	}
}

// rejoinOverlays leases again the further overlays (beyond the default,
// leased at start) that this host's networks use, so that after a restart
// their routes, peers and, for an encrypted one, its WireGuard device are
// back before Docker's containers need them. A failure is logged; the
// network's next RequestPool retries it.
func (n *node) rejoinOverlays(ctx context.Context) {
	seen := map[netip.Prefix]bool{n.leases.Default(): true}
	for _, a := range n.ipam.Allocations() {
		if seen[a.Overlay] {
			continue
		}
		seen[a.Overlay] = true
		if _, err := (overlays{n}).Subnet(ctx, a.Overlay); err != nil {
			n.log.Error("rejoining an overlay this host's networks use", "overlay", a.Overlay, "err", err)
		}
	}
}

// overlayMTU is the tunnel MTU of an overlay: twill0's, or the WireGuard
// device's for an encrypted one.
func (n *node) overlayMTU(ov netip.Prefix) int {
	if cfg, ok := n.leases.Config(ov); ok && isEncrypted(cfg) {
		return n.enc.mtu
	}
	return n.mtu
}

// overlays gives the IPAM this host's subnets, joining twill0 to an overlay
// the first time a network asks for it.
type overlays struct{ n *node }

func (o overlays) Default() netip.Prefix { return o.n.leases.Default() }

func (o overlays) Subnet(ctx context.Context, ov netip.Prefix) (netip.Prefix, error) {
	sn, err := o.n.leases.Subnet(ctx, ov)
	if err != nil {
		o.n.metrics.EtcdError("lease")
		return netip.Prefix{}, err
	}
	// The lease event will join twill0 to the overlay too, but only after
	// this answer: joining here first means a container on the new network
	// never starts before its overlay is routed. Joining twice is harmless.
	if err := o.n.joinOverlay(ov, sn); err != nil {
		return netip.Prefix{}, err
	}
	return sn, nil
}
