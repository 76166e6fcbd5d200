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
//   - unless internal: B -> anywhere else is accepted, with the source
//     masqueraded unless the destination lies in an overlay (any overlay
//     known here); replies come back. Internal networks get neither.
//   - nothing else enters B, except replies and published ports: DNAT of
//     host:port (arriving from outside or sent by this host to one of its
//     addresses) to a container, with hairpin NAT for its own network.
package firewall

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
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
	Tunnel  string  // the overlay's TUN device; default DefaultTunnel
	Backend Backend // which iptables variant; default BackendAuto
	Runner  Runner  // how commands run; default ExecRunner
	// Conntrack deletes stale UDP flows when a UDP port map comes or goes.
	// Default: netlink in the current namespace, but only when Runner is
	// also the default (a custom Runner means another namespace or a
	// fake); nil then means no flushing.
	Conntrack Conntrack
	Log       *slog.Logger // default discards
}

// Firewall holds twill's desired firewall state and writes it to iptables.
// It implements the driver's Firewall interface. Its methods are safe for
// concurrent use; changes are applied one at a time.
type Firewall struct {
	log     *slog.Logger
	run     Runner
	backend Backend
	bin     binaries
	tunnel  string
	ct      Conntrack // nil: no flushing

	mu        sync.Mutex // guards the fields below, serialises applies
	networks  map[string]Network
	portMaps  map[PortMap]struct{}
	jumpsSeen time.Time        // when the jumps were last verified
	now       func() time.Time // the clock, replaced in tests
}

// jumpRecheck is how long verified jumps are trusted. Checking costs one
// iptables process per jump (~6 ms each); they only vanish when someone
// flushes the built-in chains, which a later change or Apply repairs.
const jumpRecheck = 30 * time.Second

// New returns a Firewall with no networks. It changes nothing in the kernel;
// with BackendAuto it runs iptables-nft-save and iptables-legacy-save once
// to pick the variant.
func New(ctx context.Context, opts Options) (*Firewall, error) {
	f := &Firewall{
		log:      opts.Log,
		run:      opts.Runner,
		backend:  opts.Backend,
		tunnel:   cmpOr(opts.Tunnel, DefaultTunnel),
		ct:       opts.Conntrack,
		networks: make(map[string]Network),
		portMaps: make(map[PortMap]struct{}),
		now:      time.Now,
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

// State returns a copy of the desired state, sorted as Render sorts it.
func (f *Firewall) State() State {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stateLocked(f.networks, f.portMaps)
}

func (f *Firewall) stateLocked(nets map[string]Network, pms map[PortMap]struct{}) State {
	s := State{Tunnel: f.tunnel}
	for _, n := range nets {
		s.Networks = append(s.Networks, n)
	}
	for pm := range pms {
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
// replaces the network's rules.
func (f *Firewall) EnsureNetwork(ctx context.Context, bridge string, subnet, overlay netip.Prefix, internal bool) error {
	n := Network{Bridge: bridge, Subnet: subnet, Overlay: overlay, Internal: internal}
	if err := f.validNetwork(n); err != nil {
		return fmt.Errorf("firewall for network %s: %w", bridge, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	nets := cloneMap(f.networks)
	nets[bridge] = n
	if err := f.applyLocked(ctx, nets, f.portMaps); err != nil {
		return fmt.Errorf("firewall for network %s: %w", bridge, err)
	}
	f.networks = nets
	return nil
}

// DeleteNetwork removes the rules of bridge, its port maps included;
// unknown is success.
func (f *Firewall) DeleteNetwork(ctx context.Context, bridge string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	nets := cloneMap(f.networks)
	delete(nets, bridge)
	pms := cloneMap(f.portMaps)
	for pm := range pms {
		if pm.Bridge == bridge {
			delete(pms, pm)
		}
	}
	if len(nets) == len(f.networks) && len(pms) == len(f.portMaps) {
		return nil
	}
	if err := f.applyLocked(ctx, nets, pms); err != nil {
		return fmt.Errorf("removing firewall for network %s: %w", bridge, err)
	}
	for pm := range f.portMaps {
		if _, kept := pms[pm]; !kept {
			f.forget(ctx, pm, staleAfterUnpublish(pm))
		}
	}
	f.networks, f.portMaps = nets, pms
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
	f.mu.Lock()
	defer f.mu.Unlock()
	for old := range f.portMaps {
		if old != pm && old.Proto == pm.Proto && old.HostPort == pm.HostPort &&
			(!hostIPSet(old.HostIP) || !hostIPSet(pm.HostIP) || old.HostIP == pm.HostIP) {
			return fmt.Errorf("publishing %s: %w to %s on %s", describe(pm), ErrPortAllocated, old.Container, old.Bridge)
		}
	}
	pms := cloneMap(f.portMaps)
	pms[pm] = struct{}{}
	if err := f.applyLocked(ctx, f.networks, pms); err != nil {
		return fmt.Errorf("publishing %s: %w", describe(pm), err)
	}
	f.portMaps = pms
	f.forget(ctx, pm, staleBeforePublish(pm))
	return nil
}

// DeletePortMap removes what AddPortMap added; unknown is success.
func (f *Firewall) DeletePortMap(ctx context.Context, bridge, proto string, hostIP netip.Addr, hostPort uint16, container netip.AddrPort) error {
	pm, err := f.portMap(bridge, proto, hostIP, hostPort, container)
	if err != nil {
		return fmt.Errorf("unpublishing %s port %d: %w", proto, hostPort, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.portMaps[pm]; !ok {
		return nil
	}
	pms := cloneMap(f.portMaps)
	delete(pms, pm)
	if err := f.applyLocked(ctx, f.networks, pms); err != nil {
		return fmt.Errorf("unpublishing %s: %w", describe(pm), err)
	}
	f.portMaps = pms
	f.forget(ctx, pm, staleAfterUnpublish(pm))
	return nil
}

// Apply rewrites the chains from the current state and makes sure the
// jumps to them exist. Call it once after re-adding persisted state at
// start, so that a host with no networks left also loses stale rules, or
// to repair rules someone flushed.
func (f *Firewall) Apply(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.jumpsSeen = time.Time{}
	return f.applyLocked(ctx, f.networks, f.portMaps)
}

// Cleanup removes the jumps and twill's chains and forgets the state; for
// uninstall and tests. Absent chains and jumps are success.
func (f *Firewall) Cleanup(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	// Empty (or create) the chains first: traffic stops being touched at
	// once, and a jump to an absent chain would not be found by -D.
	empty := Render(State{Tunnel: f.tunnel})
	if _, err := f.run.Run(ctx, []byte(empty), f.bin.restore, "-w", "--noflush"); err != nil {
		return fmt.Errorf("emptying chains: %w", restoreError(empty, err))
	}
	for _, j := range jumps {
		// Delete every copy: an older run may have inserted more than one.
		for range 16 {
			args := append([]string{"-w", "-t", j.table, "-D", j.chain}, j.spec...)
			_, err := f.run.Run(ctx, nil, f.bin.iptables, args...)
			if isExit(err, 1) {
				break // no (more) such rule, or no such chain
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
	f.networks = make(map[string]Network)
	f.portMaps = make(map[PortMap]struct{})
	f.jumpsSeen = time.Time{}
	return nil
}

func (f *Firewall) applyLocked(ctx context.Context, nets map[string]Network, pms map[PortMap]struct{}) error {
	text := Render(f.stateLocked(nets, pms))
	if _, err := f.run.Run(ctx, []byte(text), f.bin.restore, "-w", "--noflush"); err != nil {
		return restoreError(text, err)
	}
	if now := f.now(); !f.jumpsSeen.IsZero() && now.Sub(f.jumpsSeen) < jumpRecheck {
		return nil
	}
	for _, j := range jumps {
		check := append([]string{"-w", "-t", j.table, "-C", j.chain}, j.spec...)
		_, err := f.run.Run(ctx, nil, f.bin.iptables, check...)
		if err == nil {
			continue
		}
		if !isExit(err, 1) {
			return fmt.Errorf("checking jump %q: %w", jumpText(j), err)
		}
		insert := append([]string{"-w", "-t", j.table, "-I", j.chain, "1"}, j.spec...)
		if _, err := f.run.Run(ctx, nil, f.bin.iptables, insert...); err != nil {
			return fmt.Errorf("inserting jump %q: %w", jumpText(j), err)
		}
		f.log.Info("firewall jump inserted", "table", j.table, "chain", j.chain, "target", j.spec[len(j.spec)-1])
	}
	f.jumpsSeen = f.now()
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

var restoreLine = regexp.MustCompile(`line:? (\d+)`)

// restoreError names the rule iptables-restore refused, found by the line
// number it reports ("Error occurred at line: 4", "line 4 failed").
func restoreError(input string, err error) error {
	ce, ok := errors.AsType[*CommandError](err)
	if !ok {
		return fmt.Errorf("iptables-restore: %w", err)
	}
	m := restoreLine.FindStringSubmatch(ce.Stderr)
	if m == nil {
		return fmt.Errorf("iptables-restore: %w", err)
	}
	n, _ := strconv.Atoi(m[1])
	lines := strings.Split(input, "\n")
	if n < 1 || n > len(lines) {
		return fmt.Errorf("iptables-restore: %w", err)
	}
	table := ""
	for _, l := range lines[:n] {
		if strings.HasPrefix(l, "*") {
			table = l[1:]
		}
	}
	return fmt.Errorf("iptables-restore: rule %q in table %s: %w", lines[n-1], table, err)
}

func isExit(err error, code int) bool {
	ce, ok := errors.AsType[*CommandError](err)
	return ok && ce.Code == code
}

func jumpText(j jump) string {
	return "-t " + j.table + " -A " + j.chain + " " + strings.Join(j.spec, " ")
}

func describe(pm PortMap) string {
	host := "*"
	if hostIPSet(pm.HostIP) {
		host = pm.HostIP.String()
	}
	return fmt.Sprintf("%s %s:%d", pm.Proto, host, pm.HostPort)
}

func cloneMap[K comparable, V any](m map[K]V) map[K]V {
	c := make(map[K]V, len(m)+1)
	for k, v := range m {
		c[k] = v
	}
	return c
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
