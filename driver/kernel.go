package driver

import (
	"context"
	"net"
	"net/netip"
)

// Links is the part of the kernel the driver needs on this host: one bridge
// per Docker network and one veth pair per endpoint. datapath implements it
// with netlink; fakes implement it in tests.
type Links interface {
	// EnsureBridge creates bridge name if it is absent, sets gateway (the
	// network's gateway with its subnet's length, e.g. 10.96.3.1/24) as its
	// only address, sets mtu and brings it up. Running it again converges.
	EnsureBridge(ctx context.Context, name string, gateway netip.Prefix, mtu int) error
	// DeleteBridge removes the bridge; a bridge that is already gone is success.
	DeleteBridge(ctx context.Context, name string) error
	// AddVeth creates the veth pair hostName <-> peerName, attaches hostName
	// to bridge, sets mtu on both ends and mac on the peer end, and brings
	// the host end up. A pair left over under the same name is replaced.
	AddVeth(ctx context.Context, hostName, peerName, bridge string, mtu int, mac net.HardwareAddr) error
	// DeleteVeth removes the pair by its host end; already gone is success.
	DeleteVeth(ctx context.Context, hostName string) error
	// LinkNames lists the names of this host's links that start with prefix,
	// for reconciliation after a restart.
	LinkNames(ctx context.Context, prefix string) ([]string, error)
}

// Firewall is the packet filter and NAT state the driver needs. The
// implementation keeps the desired state in memory and rewrites its own
// chains (TWILL-*) from it on every change, so a restart that re-adds what
// is persisted converges and drops whatever is no longer wanted.
type Firewall interface {
	// EnsureNetwork isolates bridge from every other twill bridge, allows
	// traffic between bridge and the overlay (both ways), and, unless
	// internal, masquerades traffic from subnet to destinations outside
	// every known overlay and lets it out. Idempotent.
	EnsureNetwork(ctx context.Context, bridge string, subnet, overlay netip.Prefix, internal bool) error
	// DeleteNetwork removes every rule of bridge; unknown is success.
	DeleteNetwork(ctx context.Context, bridge string) error
	// AddPortMap publishes hostIP:hostPort (proto "tcp" or "udp"; an
	// invalid/zero hostIP means every address) to container, which sits
	// on bridge. Idempotent.
	AddPortMap(ctx context.Context, bridge, proto string, hostIP netip.Addr, hostPort uint16, container netip.AddrPort) error
	// DeletePortMap removes what AddPortMap added; unknown is success.
	DeletePortMap(ctx context.Context, bridge, proto string, hostIP netip.Addr, hostPort uint16, container netip.AddrPort) error
}
