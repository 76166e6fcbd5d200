package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"

	"github.com/twill-net/twill/datapath/wireguard"
	"github.com/twill-net/twill/internal/control"
	"github.com/twill-net/twill/internal/subnet"
)

// encrypted wires the encrypted overlays (flannel's wireguard backend) to
// their WireGuard devices: one device per overlay this host holds a lease
// in, its peers the overlay's other wireguard leases.
type encrypted struct {
	key wireguard.Key // this host's private key (state dir, KeyFile)
	mtu int           // of every encrypted overlay's TUN
	log *slog.Logger

	mu    sync.Mutex
	devs  map[netip.Prefix]*wireguard.Device
	peers map[netip.Prefix]map[netip.Prefix]wireguard.Peer // per overlay, by subnet: what the leases say
}

func newEncrypted(key wireguard.Key, mtu int, log *slog.Logger) *encrypted {
	return &encrypted{key: key, mtu: mtu, log: log, devs: map[netip.Prefix]*wireguard.Device{}, peers: map[netip.Prefix]map[netip.Prefix]wireguard.Peer{}}
}

func isEncrypted(cfg subnet.Config) bool { return cfg.BackendType == wireguard.Type }

// leaseBackend is subnet.Options.Backend: an encrypted overlay's leases
// carry this host's public key, exactly as flanneld writes them; a config
// whose wireguard Backend cannot be used refuses the overlay.
func (e *encrypted) leaseBackend(cfg subnet.Config) (subnet.LeaseBackend, error) {
	if !isEncrypted(cfg) {
		return subnet.LeaseBackend{}, nil
	}
	if _, err := wireguard.ParseBackend(cfg.Backend); err != nil {
		return subnet.LeaseBackend{}, fmt.Errorf("%w: %w", err, subnet.ErrBadConfig)
	}
	return subnet.LeaseBackend{Type: wireguard.Type, Data: wireguard.LeaseData(e.key.Public())}, nil
}

// join opens the overlay's device (once) with this host's subnet local and
// gives it the peers known so far.
func (e *encrypted) join(cfg subnet.Config, local netip.Prefix) error {
	be, err := wireguard.ParseBackend(cfg.Backend)
	if err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if d := e.devs[cfg.Network]; d != nil {
		if d.Local() == local {
			return nil
		}
		d.Close() // a new subnet (the old lease was lost): start afresh
		delete(e.devs, cfg.Network)
	}
	for ov, d := range e.devs {
		if d.Stats().ListenPort == be.ListenPort {
			return fmt.Errorf("encrypted overlay %s: ListenPort %d is already used by encrypted overlay %s on this host; give each encrypted overlay its own ListenPort in its config", cfg.Network, be.ListenPort, ov)
		}
	}
	d, err := wireguard.Open(wireguard.Config{Overlay: cfg.Network, Local: local, PrivateKey: e.key, Backend: be, Logger: e.log}, e.mtu)
	if err != nil {
		return err
	}
	e.devs[cfg.Network] = d
	for _, p := range e.peers[cfg.Network] {
		if err := d.SetPeer(p); err != nil {
			e.log.Error("adding wireguard peer", "overlay", cfg.Network, "subnet", p.Subnet, "err", err)
		}
	}
	e.log.Info("encrypted overlay up", "overlay", cfg.Network, "device", d.Name(), "subnet", local,
		"listen_port", be.ListenPort, "public_key", e.key.Public().String(), "mtu", e.mtu)
	return nil
}

// freePort is the lowest ListenPort from wireguard.DefaultListenPort that
// no encrypted overlay on this host uses.
func (e *encrypted) freePort() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	used := map[int]bool{}
	for _, d := range e.devs {
		used[d.Stats().ListenPort] = true
	}
	p := wireguard.DefaultListenPort
	for used[p] {
		p++
	}
	return p
}

// describe says how overlay is encrypted ("" when it is not), for
// twillctl status.
func (e *encrypted) describe(overlay netip.Prefix) string {
	e.mu.Lock()
	d := e.devs[overlay]
	e.mu.Unlock()
	if d == nil {
		return ""
	}
	return fmt.Sprintf("wireguard on %s, UDP %d, public key %s", d.Name(), d.Stats().ListenPort, d.PublicKey())
}

// leave closes the overlay's device (this host lost or released its lease).
func (e *encrypted) leave(overlay netip.Prefix) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if d := e.devs[overlay]; d != nil {
		d.Close()
		delete(e.devs, overlay)
	}
}

// apply turns another host's lease event of an encrypted overlay into a
// peer change. A lease of another backend is never a peer: its traffic
// would cross unencrypted.
func (e *encrypted) apply(ev subnet.Event, cfg subnet.Config) {
	l := ev.Lease
	e.mu.Lock()
	defer e.mu.Unlock()
	d := e.devs[l.Overlay]
	if ev.Type == subnet.Removed {
		delete(e.peers[l.Overlay], l.Subnet)
		if d != nil {
			if err := d.RemovePeer(l.Subnet); err != nil {
				e.log.Error("removing wireguard peer", "subnet", l.Subnet, "err", err)
			}
		}
		e.log.Info("peer removed", "subnet", l.Subnet, "peer", l.Attrs.PublicIP, "overlay", l.Overlay)
		return
	}
	if l.Attrs.BackendType != wireguard.Type {
		be := l.Attrs.BackendType
		if be == "" {
			be = "udp"
		}
		e.log.Warn("a host holds a lease of another backend in an encrypted overlay; mixing backends would carry its traffic unencrypted, so it is not a peer",
			"overlay", l.Overlay, "subnet", l.Subnet, "peer", l.Attrs.PublicIP, "backend", be)
		e.dropLocked(d, l)
		return
	}
	key, err := wireguard.ParseLeaseData(l.Attrs.BackendData)
	if err != nil {
		e.log.Warn("wireguard lease without a usable public key; not a peer", "overlay", l.Overlay, "subnet", l.Subnet, "peer", l.Attrs.PublicIP, "err", err)
		e.dropLocked(d, l)
		return
	}
	be, err := wireguard.ParseBackend(cfg.Backend)
	if err != nil {
		e.log.Error("encrypted overlay config", "overlay", l.Overlay, "err", err)
		return
	}
	// flanneld sends to every peer on its own ListenPort: one port per overlay.
	p := wireguard.Peer{Subnet: l.Subnet, PublicKey: key, Endpoint: netip.AddrPortFrom(l.Attrs.PublicIP, uint16(be.ListenPort))}
	if e.peers[l.Overlay] == nil {
		e.peers[l.Overlay] = map[netip.Prefix]wireguard.Peer{}
	}
	old, had := e.peers[l.Overlay][l.Subnet]
	e.peers[l.Overlay][l.Subnet] = p
	if d != nil {
		if err := d.SetPeer(p); err != nil {
			e.log.Error("adding wireguard peer", "subnet", l.Subnet, "err", err)
			return
		}
	}
	switch {
	case !had:
		e.log.Info("peer added", "subnet", l.Subnet, "peer", p.Endpoint, "overlay", l.Overlay, "public_key", key.String())
	case old != p:
		e.log.Info("peer changed", "subnet", l.Subnet, "peer", p.Endpoint, "overlay", l.Overlay, "public_key", key.String(), "was", old.PublicKey.String())
	}
}

func (e *encrypted) dropLocked(d *wireguard.Device, l subnet.Lease) {
	delete(e.peers[l.Overlay], l.Subnet)
	if d != nil {
		d.RemovePeer(l.Subnet)
	}
}

// views lists every encrypted peer with its handshake, and adds the
// devices' drops to drops.
func (e *encrypted) views(drops map[string]uint64) []control.Peer {
	e.mu.Lock()
	devs := slices.SortedFunc(maps.Values(e.devs), func(a, b *wireguard.Device) int { return a.Overlay().Compare(b.Overlay()) })
	e.mu.Unlock()
	var out []control.Peer
	for _, d := range devs {
		st := d.Stats()
		for k, v := range st.Drops {
			drops[k] += v
		}
		for _, p := range st.Peers {
			out = append(out, control.Peer{Subnet: p.Subnet.String(), Addr: p.Endpoint.String(), BytesIn: p.BytesIn, BytesOut: p.BytesOut,
				Encrypted: true, PublicKey: p.PublicKey.String(), LastHandshake: p.LastHandshake})
		}
	}
	return out
}

// close closes every device.
func (e *encrypted) close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	for ov, d := range e.devs {
		d.Close()
		delete(e.devs, ov)
	}
}

// setBackend is the driver's SetBackend (-o twill.backend=…): an overlay this
// host just created changes backend (subnet.Manager.SetBackend says when it
// may), and this host's lease moves between twill0 and the overlay's
// WireGuard device.
func (n *node) setBackend(ctx context.Context, ov netip.Prefix, backend string) error {
	var be json.RawMessage
	switch backend {
	case wireguard.Type:
		be, _ = wireguard.Backend{ListenPort: n.enc.freePort()}.MarshalJSON()
	default:
		be, _ = json.Marshal(struct {
			Type string
			Port int
		}{"udp", int(n.cfg.Port)})
	}
	cfg, err := n.leases.SetBackend(ctx, ov, be)
	if err != nil {
		return err
	}
	sn, err := n.leases.Subnet(ctx, ov)
	if err != nil {
		return err
	}
	if isEncrypted(cfg) {
		if err := n.fwd.RemoveOverlay(ov); err != nil {
			return fmt.Errorf("moving overlay %s off twill0: %w", ov, err)
		}
	} else {
		n.enc.leave(ov)
	}
	return n.joinOverlay(ov, sn)
}
