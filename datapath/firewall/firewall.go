// Package firewall owns twill's iptables rules: the chains TWILL-FORWARD and
// TWILL-ISOLATION (filter) and TWILL-POSTROUTING and TWILL-DNAT (nat), and
// one jump to each from the built-in chains. It keeps the desired state
// (networks, port maps) in memory and rewrites its chains from it, in one
// iptables-restore --noflush, on every change; nothing else in the tables is
// touched, so it coexists with dockerd's rules.
//
// What the rules do, per twill network (bridge B, subnet S, overlay O):
//   - B <-> B (containers of one network) is accepted; B -> twill0 only to
//     O and twill0 -> B only from O; B never reaches another twill bridge.
//     The encrypted overlays' WireGuard devices (Options.Encrypted, e.g.
//     every twg… device) are tunnels like twill0: B reaches them only
//     towards O, and they reach B only from O.
//   - unless internal: B -> anywhere else is accepted, with the source
//     masqueraded unless the destination lies in an overlay (any overlay
//     known here); replies come back. Internal networks get neither.
//   - nothing else enters B, except replies and published ports: DNAT of
//     host:port (arriving from outside or sent by this host to one of its
//     addresses) to a container, with hairpin NAT for its own network. A
//     published port is public: other twill networks reach it through the
//     host address too. 127.0.0.1:port is not published: that would need
//     route_localnet on the bridge, which lets containers reach the host's
//     loopback services (CVE-2020-8558), and twill runs no userland proxy.
package firewall

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"
)

// DefaultTunnel is the overlay's TUN device.
const DefaultTunnel = "twill0"

var (
	// ErrInvalidArgument is returned for a name, prefix, address, protocol
	// or port the firewall cannot express; nothing is changed then.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrPortAllocated is returned by AddPortMap when the host port (on
	// that address, or on every address) is already published to another
	// container.
	ErrPortAllocated = errors.New("host port already published")
)

// Options configure a Firewall. The zero value drives this host's iptables,
// picking the variant dockerd uses, with twill0 as the tunnel.
type Options struct {
	Tunnel string // the overlay's TUN device; default DefaultTunnel
	// Encrypted is the name prefix of the encrypted overlays' devices
	// (e.g. "twg": every twg… device); empty: none.
	Encrypted string
	Backend   Backend // which iptables variant; default BackendAuto
	Runner    Runner  // how commands run; default ExecRunner
	// Conntrack deletes stale UDP flows when a UDP port map comes or goes.
	// Default: netlink in the current namespace, but only when Runner is
	// also the default (a custom Runner means another namespace or a
	// fake); nil then means no flushing.
	Conntrack Conntrack
	Log       *slog.Logger // default discards
}

// Firewall holds twill's desired firewall state and writes it to iptables.
// It implements the driver's Firewall interface. Its methods are safe for
// concurrent use: changes made at the same time are written together, in
// one iptables-restore (see change).
type Firewall struct {
	log     *slog.Logger
	run     Runner
	backend Backend
	bin     binaries
	tunnel  string
	enc     string    // prefix of the encrypted overlays' devices
	ct      Conntrack // nil: no flushing

	mu    sync.Mutex // guards state and queue
	state desired    // what the kernel holds (the last successful write)
	queue []*request // changes waiting to be written

	writeMu   sync.Mutex       // serialises writes to the kernel; guards jumpsSeen
	jumpsSeen time.Time        // when the jumps were last verified
	now       func() time.Time // the clock, replaced in tests
}

// desired is the firewall state rules are rendered from.
type desired struct {
	networks map[string]Network
	portMaps map[PortMap]struct{}
}

func newDesired() desired {
	return desired{networks: make(map[string]Network), portMaps: make(map[PortMap]struct{})}
}

func (d desired) clone() desired {
	c := desired{networks: make(map[string]Network, len(d.networks)+1), portMaps: make(map[PortMap]struct{}, len(d.portMaps)+1)}
	for k, v := range d.networks {
		c.networks[k] = v
	}
	for k := range d.portMaps {
		c.portMaps[k] = struct{}{}
	}
	return c
}

// jumpRecheck is how long verified jumps are trusted. Checking costs one
// iptables process per jump (~5 ms each); they only vanish when someone
// flushes the built-in chains, which a later change or Apply repairs.
const jumpRecheck = 30 * time.Second

// New returns a Firewall with no networks. It changes nothing in the kernel;
// with BackendAuto it runs iptables-nft-save and iptables-legacy-save once
// to pick the variant.
func New(ctx context.Context, opts Options) (*Firewall, error) {
	f := &Firewall{
		log:     opts.Log,
		run:     opts.Runner,
		backend: opts.Backend,
		tunnel:  cmpOr(opts.Tunnel, DefaultTunnel),
		enc:     opts.Encrypted,
		ct:      opts.Conntrack,
		state:   newDesired(),
		now:     time.Now,
	}
	if f.log == nil {
		f.log = slog.New(slog.DiscardHandler)
	}
	if f.run == nil {
		f.run = ExecRunner{}
		if f.ct == nil {
			f.ct = defaultConntrack()
		}
	}
	if err := validIface(f.tunnel); err != nil {
		return nil, fmt.Errorf("firewall tunnel: %w", err)
	}
	if f.enc != "" {
		if err := validIface(f.enc); err != nil {
			return nil, fmt.Errorf("firewall encrypted tunnel prefix: %w", err)
		}
	}
	if f.backend == BackendAuto {
		b, err := detectBackend(ctx, f.run)
		if err != nil {
			return nil, err
		}
		f.backend = b
	}
	bin, err := f.backend.binaries()
	if err != nil {
		return nil, err
	}
	f.bin = bin
	f.log.Info("firewall uses iptables", "backend", string(f.backend), "restore", bin.restore)
	return f, nil
}

// Backend reports the iptables variant in use.
func (f *Firewall) Backend() Backend { return f.backend }

// State returns a copy of the state the kernel holds, sorted as Render
// sorts it.
func (f *Firewall) State() State {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.render(f.state)
}

// render turns d into the sorted State that Render takes.
func (f *Firewall) render(d desired) State {
	s := State{Tunnel: f.tunnel, Encrypted: f.enc}
	for _, n := range d.networks {
		s.Networks = append(s.Networks, n)
	}
	for pm := range d.portMaps {
		s.PortMaps = append(s.PortMaps, pm)
	}
	slices.SortFunc(s.Networks, func(a, b Network) int { return strings.Compare(a.Bridge, b.Bridge) })
	slices.SortFunc(s.PortMaps, comparePortMaps)
	return s
}

// EnsureNetwork isolates bridge from every other twill bridge, allows
// traffic between bridge and overlay through the tunnel (both ways) and,
// unless internal, masquerades traffic from subnet to destinations outside
// every known overlay and lets it out. Calling it again with other values
// replaces the network's rules; with the same values it changes nothing.
func (f *Firewall) EnsureNetwork(ctx context.Context, bridge string, subnet, overlay netip.Prefix, internal bool) error {
	n := Network{Bridge: bridge, Subnet: subnet, Overlay: overlay, Internal: internal}
	if err := f.validNetwork(n); err != nil {
		return fmt.Errorf("firewall for network %s: %w", bridge, err)
	}
	err := f.change(ctx, func(d *desired) (bool, error) {
		if old, ok := d.networks[bridge]; ok && old == n {
			return false, nil
		}
		d.networks[bridge] = n
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("firewall for network %s: %w", bridge, err)
	}
	return nil
}

// DeleteNetwork removes the rules of bridge, its port maps included;
// unknown is success.
func (f *Firewall) DeleteNetwork(ctx context.Context, bridge string) error {
	var gone []PortMap
	err := f.change(ctx, func(d *desired) (bool, error) {
		gone = gone[:0]
		for pm := range d.portMaps {
			if pm.Bridge == bridge {
				gone = append(gone, pm)
				delete(d.portMaps, pm)
			}
		}
		_, known := d.networks[bridge]
		delete(d.networks, bridge)
		return known || len(gone) > 0, nil
	})
	if err != nil {
		return fmt.Errorf("removing firewall for network %s: %w", bridge, err)
	}
	for _, pm := range gone {
		f.forget(ctx, pm, staleAfterUnpublish(pm))
	}
	return nil
}

// AddPortMap publishes hostIP:hostPort (proto "tcp" or "udp"; an invalid
// or unspecified hostIP means every address) to container on bridge. The
// same map again is success; the same host port already published to
// something else is ErrPortAllocated.
func (f *Firewall) AddPortMap(ctx context.Context, bridge, proto string, hostIP netip.Addr, hostPort uint16, container netip.AddrPort) error {
	pm, err := f.portMap(bridge, proto, hostIP, hostPort, container)
	if err != nil {
		return fmt.Errorf("publishing %s port %d: %w", proto, hostPort, err)
	}
	err = f.change(ctx, func(d *desired) (bool, error) {
		if _, ok := d.portMaps[pm]; ok {
			return false, nil
		}
		for old := range d.portMaps {
			if old.Proto == pm.Proto && old.HostPort == pm.HostPort &&
				(!hostIPSet(old.HostIP) || !hostIPSet(pm.HostIP) || old.HostIP == pm.HostIP) {
				return false, fmt.Errorf("%w to %s on %s", ErrPortAllocated, old.Container, old.Bridge)
			}
		}
		d.portMaps[pm] = struct{}{}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("publishing %s: %w", describe(pm), err)
	}
	f.forget(ctx, pm, staleBeforePublish(pm))
	return nil
}

// DeletePortMap removes what AddPortMap added; unknown is success.
func (f *Firewall) DeletePortMap(ctx context.Context, bridge, proto string, hostIP netip.Addr, hostPort uint16, container netip.AddrPort) error {
	pm, err := f.portMap(bridge, proto, hostIP, hostPort, container)
	if err != nil {
		return fmt.Errorf("unpublishing %s port %d: %w", proto, hostPort, err)
	}
	known := false
	err = f.change(ctx, func(d *desired) (bool, error) {
		_, known = d.portMaps[pm]
		delete(d.portMaps, pm)
		return known, nil
	})
	if err != nil {
		return fmt.Errorf("unpublishing %s: %w", describe(pm), err)
	}
	if known {
		f.forget(ctx, pm, staleAfterUnpublish(pm))
	}
	return nil
}

// Apply rewrites the chains from the current state and makes sure the
// jumps to them exist. Call it once after re-adding persisted state at
// start, so that a host with no networks left also loses stale rules, or
// to repair rules someone flushed.
func (f *Firewall) Apply(ctx context.Context) error {
	f.writeMu.Lock()
	defer f.writeMu.Unlock()
	f.mu.Lock()
	d := f.state
	f.mu.Unlock()
	f.jumpsSeen = time.Time{}
	return f.write(ctx, d)
}

// Cleanup removes the jumps and twill's chains and forgets the state; for
// uninstall and tests. Absent chains and jumps are success.
func (f *Firewall) Cleanup(ctx context.Context) error {
	f.writeMu.Lock()
	defer f.writeMu.Unlock()
	// Empty (or create) the chains first: traffic stops being touched at
	// once, and a jump to an absent chain would not be found by -D.
	empty := Render(State{Tunnel: f.tunnel, Encrypted: f.enc})
	if _, err := f.run.Run(ctx, []byte(empty), f.bin.restore, "-w", "--noflush"); err != nil {
		return fmt.Errorf("emptying chains: %w", restoreError(empty, err))
	}
	for _, j := range jumps {
		// Delete every copy: an older run may have inserted more than one.
		for range 16 {
			args := append([]string{"-w", "-t", j.table, "-D", j.chain}, j.spec...)
			_, err := f.run.Run(ctx, nil, f.bin.iptables, args...)
			if isExit(err, 1) {
				break // no (more) such rule
			}
			if err != nil {
				return fmt.Errorf("removing jump %q: %w", jumpText(j), err)
			}
		}
	}
	text := renderDelete()
	if _, err := f.run.Run(ctx, []byte(text), f.bin.restore, "-w", "--noflush"); err != nil {
		return fmt.Errorf("removing chains: %w", restoreError(text, err))
	}
	f.mu.Lock()
	f.state = newDesired()
	f.mu.Unlock()
	f.jumpsSeen = time.Time{}
	return nil
}

// forget deletes the conntrack entries of a UDP port map that match. The
// rules are in place already, so a failure only delays the change for
// flows that keep sending: it is logged, not returned.
func (f *Firewall) forget(ctx context.Context, pm PortMap, match func(Flow) bool) {
	if f.ct == nil || pm.Proto != "udp" {
		return
	}
	n, err := f.ct.DeleteFlows(ctx, match)
	if err != nil {
		f.log.Warn("stale UDP flows kept", "port", describe(pm), "container", pm.Container.String(), "err", err)
		return
	}
	if n > 0 {
		f.log.Debug("stale UDP flows deleted", "port", describe(pm), "container", pm.Container.String(), "flows", n)
	}
}

func describe(pm PortMap) string {
	host := "*"
	if hostIPSet(pm.HostIP) {
		host = pm.HostIP.String()
	}
	return fmt.Sprintf("%s %s:%d", pm.Proto, host, pm.HostPort)
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
