package driver

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"
)

// FakeLinks is an in-memory Links for tests. It keeps the links it was asked
// to create, keyed by name, and enforces what the kernel would: a veth needs
// its bridge, names fit in 15 characters. Fail makes an operation on a name
// fail once.
type FakeLinks struct {
	mu      sync.Mutex // guards the fields below
	bridges map[string]FakeBridge
	veths   map[string]FakeVeth // by host end
	fail    map[string]error
}

// FakeBridge is a bridge FakeLinks holds.
type FakeBridge struct {
	Gateway netip.Prefix
	MTU     int
}

// FakeVeth is a veth pair FakeLinks holds.
type FakeVeth struct {
	Peer, Bridge string
	MTU          int
	MAC          string
}

// NewFakeLinks returns an empty FakeLinks.
func NewFakeLinks() *FakeLinks {
	return &FakeLinks{bridges: map[string]FakeBridge{}, veths: map[string]FakeVeth{}, fail: map[string]error{}}
}

var _ Links = (*FakeLinks)(nil)

// Fail makes the next operation on link name fail with err.
func (f *FakeLinks) Fail(name string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail[name] = err
}

// check enforces the kernel's name limit and injected failures. f.mu held.
func (f *FakeLinks) check(op, name string) error {
	if len(name) > 15 {
		return fmt.Errorf("%s %q: name longer than 15 characters", op, name)
	}
	if err, ok := f.fail[name]; ok {
		delete(f.fail, name)
		return err
	}
	return nil
}

// EnsureBridge creates or updates the bridge.
func (f *FakeLinks) EnsureBridge(ctx context.Context, name string, gateway netip.Prefix, mtu int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check("EnsureBridge", name); err != nil {
		return err
	}
	f.bridges[name] = FakeBridge{Gateway: gateway, MTU: mtu}
	return nil
}

// DeleteBridge removes the bridge. Veths on it stay, as in the kernel
// (which keeps them, detached).
func (f *FakeLinks) DeleteBridge(ctx context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check("DeleteBridge", name); err != nil {
		return err
	}
	delete(f.bridges, name)
	return nil
}

// AddVeth creates the pair, replacing a leftover of the same name.
func (f *FakeLinks) AddVeth(ctx context.Context, hostName, peerName, bridge string, mtu int, mac net.HardwareAddr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check("AddVeth", hostName); err != nil {
		return err
	}
	if len(peerName) > 15 {
		return fmt.Errorf("link name %q longer than 15 characters", peerName)
	}
	if _, ok := f.bridges[bridge]; !ok {
		return fmt.Errorf("bridge %s: link not found", bridge)
	}
	f.veths[hostName] = FakeVeth{Peer: peerName, Bridge: bridge, MTU: mtu, MAC: mac.String()}
	return nil
}

// DeleteVeth removes the pair.
func (f *FakeLinks) DeleteVeth(ctx context.Context, hostName string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check("DeleteVeth", hostName); err != nil {
		return err
	}
	delete(f.veths, hostName)
	return nil
}

// LinkNames lists bridges and veth host ends starting with prefix, sorted.
func (f *FakeLinks) LinkNames(ctx context.Context, prefix string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for n := range f.bridges {
		if strings.HasPrefix(n, prefix) {
			out = append(out, n)
		}
	}
	for n := range f.veths {
		if strings.HasPrefix(n, prefix) {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out, nil
}

// Bridge returns the bridge called name.
func (f *FakeLinks) Bridge(name string) (FakeBridge, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.bridges[name]
	return b, ok
}

// Veth returns the pair whose host end is hostName.
func (f *FakeLinks) Veth(hostName string) (FakeVeth, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.veths[hostName]
	return v, ok
}

// Counts returns how many bridges and veth pairs exist.
func (f *FakeLinks) Counts() (bridges, veths int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.bridges), len(f.veths)
}

// FakeFirewall is an in-memory Firewall for tests: the desired state a real
// implementation would write into its chains.
type FakeFirewall struct {
	mu       sync.Mutex // guards the fields below
	networks map[string]FakeFirewallNetwork
	ports    map[string]netip.AddrPort // "bridge proto hostIP:hostPort" -> container
	fail     error
}

// FakeFirewallNetwork is one bridge's rules.
type FakeFirewallNetwork struct {
	Subnet, Overlay netip.Prefix
	Internal        bool
}

// NewFakeFirewall returns an empty FakeFirewall.
func NewFakeFirewall() *FakeFirewall {
	return &FakeFirewall{networks: map[string]FakeFirewallNetwork{}, ports: map[string]netip.AddrPort{}}
}

var _ Firewall = (*FakeFirewall)(nil)

// FailNext makes the next call fail with err.
func (f *FakeFirewall) FailNext(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail = err
}

func (f *FakeFirewall) failed() error {
	err := f.fail
	f.fail = nil
	return err
}

// EnsureNetwork records the bridge's rules.
func (f *FakeFirewall) EnsureNetwork(ctx context.Context, bridge string, subnet, overlay netip.Prefix, internal bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failed(); err != nil {
		return err
	}
	f.networks[bridge] = FakeFirewallNetwork{Subnet: subnet, Overlay: overlay, Internal: internal}
	return nil
}

// DeleteNetwork forgets the bridge's rules and its port maps.
func (f *FakeFirewall) DeleteNetwork(ctx context.Context, bridge string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failed(); err != nil {
		return err
	}
	delete(f.networks, bridge)
	for k := range f.ports {
		if strings.HasPrefix(k, bridge+" ") {
			delete(f.ports, k)
		}
	}
	return nil
}

func portKey(bridge, proto string, hostIP netip.Addr, hostPort uint16) string {
	ip := "*"
	if hostIP.IsValid() {
		ip = hostIP.String()
	}
	return fmt.Sprintf("%s %s %s:%d", bridge, proto, ip, hostPort)
}

// AddPortMap records the mapping.
func (f *FakeFirewall) AddPortMap(ctx context.Context, bridge, proto string, hostIP netip.Addr, hostPort uint16, container netip.AddrPort) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failed(); err != nil {
		return err
	}
	f.ports[portKey(bridge, proto, hostIP, hostPort)] = container
	return nil
}

// DeletePortMap forgets the mapping.
func (f *FakeFirewall) DeletePortMap(ctx context.Context, bridge, proto string, hostIP netip.Addr, hostPort uint16, container netip.AddrPort) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.failed(); err != nil {
		return err
	}
	delete(f.ports, portKey(bridge, proto, hostIP, hostPort))
	return nil
}

// Network returns bridge's rules.
func (f *FakeFirewall) Network(bridge string) (FakeFirewallNetwork, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	n, ok := f.networks[bridge]
	return n, ok
}

// PortMaps returns every mapping as "bridge proto hostIP:hostPort" ->
// container ("*" for every host address).
func (f *FakeFirewall) PortMaps() map[string]netip.AddrPort {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string]netip.AddrPort, len(f.ports))
	for k, v := range f.ports {
		out[k] = v
	}
	return out
}
