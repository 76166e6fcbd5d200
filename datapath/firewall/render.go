package firewall

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Chain names. TWILL-FORWARD (filter) decides what crosses a twill bridge;
// TWILL-ISOLATION holds its drops; TWILL-POSTROUTING (nat) masquerades;
// TWILL-DNAT (nat) publishes ports.
const (
	ChainForward     = "TWILL-FORWARD"
	ChainIsolation   = "TWILL-ISOLATION"
	ChainPostrouting = "TWILL-POSTROUTING"
	ChainDNAT        = "TWILL-DNAT"
)

// jump is one rule in a built-in chain sending traffic to one of ours.
type jump struct {
	table, chain string
	spec         []string
}

// jumps are inserted at the top of the built-in chains, one rule each, so
// twill decides before dockerd's rules and before a DROP policy.
var jumps = []jump{
	{"filter", "FORWARD", []string{"-j", ChainForward}},
	{"nat", "POSTROUTING", []string{"-j", ChainPostrouting}},
	// Traffic arriving for a local address (from another host, a container
	// or the overlay) ...
	{"nat", "PREROUTING", []string{"-m", "addrtype", "--dst-type", "LOCAL", "-j", ChainDNAT}},
	// ... and traffic this host sends to one of its own addresses. Loopback
	// is left out: DNAT from 127.0.0.1 would need route_localnet.
	{"nat", "OUTPUT", []string{"!", "-d", "127.0.0.0/8", "-m", "addrtype", "--dst-type", "LOCAL", "-j", ChainDNAT}},
}

// Network is one twill network's desired firewall state.
type Network struct {
	Bridge   string       // the network's bridge, e.g. tw-5c87f637
	Subnet   netip.Prefix // this host's part of the overlay, on the bridge
	Overlay  netip.Prefix // the whole overlay the network belongs to
	Internal bool         // no NAT, nothing in or out except the overlay
}

// PortMap is one published port: HostIP:HostPort (an invalid HostIP means
// every local address) forwarded to Container on Bridge.
type PortMap struct {
	Bridge    string
	Proto     string // "tcp" or "udp"
	HostIP    netip.Addr
	HostPort  uint16
	Container netip.AddrPort
}

// State is everything the rules are rendered from.
type State struct {
	Tunnel string // the overlay's TUN device, twill0
	// Encrypted is the name prefix of the encrypted overlays' devices,
	// matched as "<prefix>+"; empty: no such devices.
	Encrypted string
	Networks  []Network
	PortMaps  []PortMap
}

// chains lists our chains per table, in the order they are declared.
var chains = []struct {
	table string
	names []string
}{
	{"filter", []string{ChainForward, ChainIsolation}},
	{"nat", []string{ChainPostrouting, ChainDNAT}},
}

// Render turns s into iptables-restore input that, loaded with --noflush,
// replaces the content of twill's chains (creating them when absent) and
// touches nothing else. It is a pure function: the same state gives the
// same text, whatever order networks and port maps were added in.
func Render(s State) string {
	nets := slices.Clone(s.Networks)
	slices.SortFunc(nets, func(a, b Network) int { return strings.Compare(a.Bridge, b.Bridge) })
	pms := slices.Clone(s.PortMaps)
	slices.SortFunc(pms, comparePortMaps)
	byBridge := make(map[string]Network, len(nets))
	for _, n := range nets {
		byBridge[n.Bridge] = n
	}
	// A port map is rendered unless its network is known to be internal:
	// after a restart the driver may re-add port maps before networks.
	var published []PortMap
	for _, pm := range pms {
		if n, ok := byBridge[pm.Bridge]; !ok || !n.Internal {
			published = append(published, pm)
		}
	}
	tunnels := []string{s.Tunnel}
	if s.Encrypted != "" {
		tunnels = append(tunnels, s.Encrypted+"+")
	}

	var b strings.Builder
	rule := func(chain string, args ...string) {
		b.WriteString("-A " + chain + " " + strings.Join(args, " ") + "\n")
	}
	declare := func(table string, names []string) {
		b.WriteString("*" + table + "\n")
		for _, c := range names {
			b.WriteString(":" + c + " - [0:0]\n")
		}
	}

	declare(chains[0].table, chains[0].names)
	for _, n := range nets { // replies back into every network
		rule(ChainForward, "-o", n.Bridge, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")
	}
	for _, pm := range published { // only what TWILL-DNAT translated, not direct access
		rule(ChainForward, "-d", host32(pm.Container.Addr()), "-o", pm.Bridge, "-p", pm.Proto, "-m", pm.Proto,
			"--dport", fmt.Sprint(pm.Container.Port()), "-m", "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT")
	}
	for _, n := range nets {
		rule(ChainForward, "-i", n.Bridge, "-o", n.Bridge, "-j", "ACCEPT")
		for _, t := range tunnels {
			rule(ChainForward, "-i", n.Bridge, "-o", t, "-d", n.Overlay.String(), "-j", "ACCEPT")
			rule(ChainForward, "-i", t, "-o", n.Bridge, "-s", n.Overlay.String(), "-j", "ACCEPT")
		}
	}
	rule(ChainForward, "-j", ChainIsolation)
	for _, n := range nets {
		if n.Internal {
			rule(ChainForward, "-i", n.Bridge, "-j", "DROP")
		} else {
			rule(ChainForward, "-i", n.Bridge, "-j", "ACCEPT")
		}
	}
	// Nothing else enters a twill network: not another twill network, not
	// another overlay, not the world unless published.
	for _, n := range nets {
		rule(ChainIsolation, "-o", n.Bridge, "-j", "DROP")
	}
	// Through the tunnel a network reaches its own overlay only.
	for _, n := range nets {
		for _, t := range tunnels {
			rule(ChainIsolation, "-i", n.Bridge, "-o", t, "-j", "DROP")
		}
	}
	b.WriteString("COMMIT\n")

	declare(chains[1].table, chains[1].names)
	// Hairpin: a container reaching a port published by its own network
	// (itself or a neighbour) must see the reply come from the host, so its
	// source is rewritten to the gateway.
	for _, pm := range published {
		n, ok := byBridge[pm.Bridge]
		if !ok {
			continue
		}
		rule(ChainPostrouting, "-s", n.Subnet.String(), "-d", host32(pm.Container.Addr()), "-o", pm.Bridge,
			"-p", pm.Proto, "-m", pm.Proto, "--dport", fmt.Sprint(pm.Container.Port()),
			"-m", "conntrack", "--ctstate", "DNAT", "-j", "MASQUERADE")
	}
	// Never masquerade towards an overlay: twill0 holds an address in each
	// one, so a rewritten source would carry traffic across overlays.
	var overlays []netip.Prefix
	for _, n := range nets {
		overlays = append(overlays, n.Overlay.Masked())
	}
	slices.SortFunc(overlays, netip.Prefix.Compare)
	for _, o := range slices.Compact(overlays) {
		rule(ChainPostrouting, "-d", o.String(), "-j", "RETURN")
	}
	for _, n := range nets {
		if !n.Internal {
			rule(ChainPostrouting, "-s", n.Subnet.String(), "!", "-o", n.Bridge, "-j", "MASQUERADE")
		}
	}
	for _, pm := range published {
		args := []string{}
		if hostIPSet(pm.HostIP) {
			args = append(args, "-d", host32(pm.HostIP))
		}
		args = append(args, "-p", pm.Proto, "-m", pm.Proto, "--dport", fmt.Sprint(pm.HostPort),
			"-j", "DNAT", "--to-destination", pm.Container.String())
		rule(ChainDNAT, args...)
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// renderDelete is iptables-restore input that empties and removes our
// chains (declaring a chain creates it when absent, so this cannot fail on
// a clean host). The jumps to them must be gone first.
func renderDelete() string {
	var b strings.Builder
	for _, t := range chains {
		b.WriteString("*" + t.table + "\n")
		for _, c := range t.names {
			b.WriteString(":" + c + " - [0:0]\n")
		}
		for _, c := range t.names {
			b.WriteString("-X " + c + "\n")
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

func host32(a netip.Addr) string { return netip.PrefixFrom(a, a.BitLen()).String() }

// hostIPSet reports whether a port map is bound to one host address
// rather than to all of them.
func hostIPSet(a netip.Addr) bool { return a.IsValid() && !a.IsUnspecified() }

func comparePortMaps(a, b PortMap) int {
	return cmp.Or(
		strings.Compare(a.Bridge, b.Bridge),
		strings.Compare(a.Proto, b.Proto),
		cmp.Compare(a.HostPort, b.HostPort),
		a.HostIP.Compare(b.HostIP),
		a.Container.Compare(b.Container),
	)
}
