//go:build linux

package links

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// in6AddrGenModeNone is IN6_ADDR_GEN_MODE_NONE: the kernel then gives the
// link no IPv6 link-local address (twill networks are IPv4 only).
const in6AddrGenModeNone = 1

// Links manages bridges and veth pairs in one network namespace through a
// netlink handle bound to it. Its methods are safe for concurrent use; they
// are serialised so that a replace (delete, then create) is never
// interleaved with another call on the same names.
type Links struct {
	log *slog.Logger

	mu sync.Mutex // serialises kernel changes
	h  *netlink.Handle
}

// New returns Links working in the caller's current network namespace (the
// host namespace, for twilld).
func New(log *slog.Logger) (*Links, error) {
	return NewAt(log, netns.None())
}

// NewAt returns Links working in namespace ns; netns.None() means the
// current one. The handle is bound to ns when it is made, so no goroutine
// ever switches namespace. The caller may close ns after NewAt returns.
func NewAt(log *slog.Logger, ns netns.NsHandle) (*Links, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("opening netlink socket in netns %v: %w", ns, err)
	}
	return &Links{log: log, h: h}, nil
}

// Close releases the netlink socket.
func (l *Links) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.h != nil {
		l.h.Close()
		l.h = nil
	}
	return nil
}

// EnsureBridge creates bridge name if it is absent, makes gateway its only
// IPv4 address, sets mtu (0 keeps the current one), turns off IPv6 address
// generation on it and brings it up. Running it again converges: a stale
// address is replaced, a changed MTU is applied.
func (l *Links) EnsureBridge(ctx context.Context, name string, gateway netip.Prefix, mtu int) error {
	if err := ValidName(name); err != nil {
		return fmt.Errorf("ensuring bridge: %w", err)
	}
	if err := errors.Join(validGateway(gateway), validMTU(mtu)); err != nil {
		return fmt.Errorf("ensuring bridge %s: %w", name, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("ensuring bridge %s: %w", name, err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()

	link, err := l.h.LinkByName(name)
	if isNotFound(err) {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = name
		attrs.MTU = mtu
		err = l.h.LinkAdd(&netlink.Bridge{LinkAttrs: attrs})
		if err != nil && !errors.Is(err, unix.EEXIST) { // EEXIST: made meanwhile by someone else
			return fmt.Errorf("adding bridge %s: %w", name, err)
		}
		l.log.Info("bridge created", "bridge", name, "gateway", gateway, "mtu", mtu)
		link, err = l.h.LinkByName(name)
	}
	if err != nil {
		return fmt.Errorf("looking up bridge %s: %w", name, err)
	}
	if _, ok := link.(*netlink.Bridge); !ok {
		return fmt.Errorf("ensuring bridge %s: %w (it is a %s)", name, ErrWrongKind, link.Type())
	}
	// Before the link goes up, so that no link-local address appears; a
	// kernel without IPv6 refuses this, which is fine.
	if err := l.h.LinkSetIP6AddrGenMode(link, in6AddrGenModeNone); err != nil {
		l.log.Debug("bridge keeps IPv6 address generation", "bridge", name, "err", err)
	}
	if mtu != 0 && link.Attrs().MTU != mtu {
		if err := l.h.LinkSetMTU(link, mtu); err != nil {
			return fmt.Errorf("setting mtu %d on bridge %s: %w", mtu, name, err)
		}
	}
	if err := l.ensureOnlyAddr(link, gateway); err != nil {
		return err
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := l.h.LinkSetUp(link); err != nil {
			return fmt.Errorf("setting bridge %s up: %w", name, err)
		}
	}
	return nil
}

// ensureOnlyAddr removes every IPv4 address of link except want and adds
// want when it is missing.
func (l *Links) ensureOnlyAddr(link netlink.Link, want netip.Prefix) error {
	name := link.Attrs().Name
	addrs, err := l.h.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return fmt.Errorf("listing addresses of %s: %w", name, err)
	}
	have := false
	for _, a := range addrs {
		p, ok := prefixOf(a.IPNet)
		if ok && p == want {
			have = true
			continue
		}
		// Removing a primary address also removes its secondaries, so a
		// later one may be gone already.
		if err := l.h.AddrDel(link, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("removing stale address %v from %s: %w", a.IPNet, name, err)
		}
		l.log.Info("stale address removed", "link", name, "addr", a.IPNet.String())
	}
	if have {
		return nil
	}
	ipn := &net.IPNet{IP: want.Addr().AsSlice(), Mask: net.CIDRMask(want.Bits(), 32)}
	if err := l.h.AddrAdd(link, &netlink.Addr{IPNet: ipn}); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("adding address %v to %s: %w", want, name, err)
	}
	return nil
}

// DeleteBridge removes bridge name; a bridge that is already gone is
// success. Ports still on it are detached by the kernel, not deleted.
func (l *Links) DeleteBridge(ctx context.Context, name string) error {
	if err := ValidName(name); err != nil {
		return fmt.Errorf("deleting bridge: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("deleting bridge %s: %w", name, err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.deleteKind(name, "bridge")
}

// AddVeth creates the veth pair hostName <-> peerName with mtu on both ends
// (0 keeps the kernel's default) and mac on the peer end (nil lets the
// kernel choose), puts hostName on bridge in hairpin mode and brings it
// up. The peer end stays down in this namespace: Docker moves it into the
// container. A veth left over under either name is deleted first.
func (l *Links) AddVeth(ctx context.Context, hostName, peerName, bridge string, mtu int, mac net.HardwareAddr) error {
	for _, n := range []string{hostName, peerName, bridge} {
		if err := ValidName(n); err != nil {
			return fmt.Errorf("adding veth %s: %w", hostName, err)
		}
	}
	if hostName == peerName {
		return fmt.Errorf("adding veth %s: %w: both ends have the same name", hostName, ErrInvalidName)
	}
	if err := errors.Join(validMTU(mtu), validMAC(mac)); err != nil {
		return fmt.Errorf("adding veth %s: %w", hostName, err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("adding veth %s: %w", hostName, err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()

	br, err := l.h.LinkByName(bridge)
	if isNotFound(err) {
		return fmt.Errorf("adding veth %s: %w: %s", hostName, ErrNoBridge, bridge)
	}
	if err != nil {
		return fmt.Errorf("adding veth %s: looking up bridge %s: %w", hostName, bridge, err)
	}
	if _, ok := br.(*netlink.Bridge); !ok {
		return fmt.Errorf("adding veth %s: %s: %w (it is a %s)", hostName, bridge, ErrWrongKind, br.Type())
	}
	for _, n := range []string{hostName, peerName} {
		if err := l.deleteKind(n, "veth"); err != nil {
			return fmt.Errorf("adding veth %s: replacing leftover: %w", hostName, err)
		}
	}

	attrs := netlink.NewLinkAttrs()
	attrs.Name = hostName
	attrs.MTU = mtu
	veth := &netlink.Veth{LinkAttrs: attrs, PeerName: peerName, PeerHardwareAddr: mac, PeerMTU: uint32(mtu)}
	if err := l.h.LinkAdd(veth); err != nil {
		return fmt.Errorf("adding veth %s: %w", hostName, err)
	}
	if err := l.attachAndUp(hostName, br); err != nil {
		if derr := l.deleteKind(hostName, "veth"); derr != nil {
			l.log.Warn("half-made veth left behind", "veth", hostName, "err", derr)
		}
		return fmt.Errorf("adding veth %s: %w", hostName, err)
	}
	l.log.Debug("veth added", "veth", hostName, "peer", peerName, "bridge", bridge, "mtu", mtu)
	return nil
}

func (l *Links) attachAndUp(hostName string, br netlink.Link) error {
	host, err := l.h.LinkByName(hostName)
	if err != nil {
		return fmt.Errorf("looking up new veth: %w", err)
	}
	if err := l.h.LinkSetMaster(host, br); err != nil {
		return fmt.Errorf("attaching to bridge %s: %w", br.Attrs().Name, err)
	}
	// Hairpin: with br_netfilter (the default where dockerd runs) a
	// container reaching its own published port has its packet DNATed
	// back to itself at the bridge; without hairpin mode the bridge will
	// not send a frame out of the port it came in by, and drops it. This
	// is what Docker does for its own bridges without the userland proxy.
	// Reflected floods do not fail the container's IPv6 DAD: the kernel's
	// enhanced DAD (nonce, on by default) knows its own probes.
	if err := l.h.LinkSetHairpin(host, true); err != nil {
		return fmt.Errorf("setting hairpin mode: %w", err)
	}
	// A bridge port needs no IPv6 address of its own.
	if err := l.h.LinkSetIP6AddrGenMode(host, in6AddrGenModeNone); err != nil {
		l.log.Debug("veth keeps IPv6 address generation", "veth", hostName, "err", err)
	}
	if err := l.h.LinkSetUp(host); err != nil {
		return fmt.Errorf("setting up: %w", err)
	}
	return nil
}

// DeleteVeth removes the pair whose host end is hostName; already gone is
// success.
func (l *Links) DeleteVeth(ctx context.Context, hostName string) error {
	if err := ValidName(hostName); err != nil {
		return fmt.Errorf("deleting veth: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("deleting veth %s: %w", hostName, err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.deleteKind(hostName, "veth")
}

// deleteKind deletes link name when it exists and is of kind ("bridge",
// "veth"); absent is success, another kind is ErrWrongKind.
func (l *Links) deleteKind(name, kind string) error {
	link, err := l.h.LinkByName(name)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("looking up %s %s: %w", kind, name, err)
	}
	if link.Type() != kind {
		return fmt.Errorf("deleting %s %s: %w (it is a %s)", kind, name, ErrWrongKind, link.Type())
	}
	if err := l.h.LinkDel(link); err != nil && !isNotFound(err) {
		return fmt.Errorf("deleting %s %s: %w", kind, name, err)
	}
	return nil
}

// LinkNames lists, sorted, the names of the namespace's links that start
// with prefix.
func (l *Links) LinkNames(ctx context.Context, prefix string) ([]string, error) {
	var (
		all []netlink.Link
		err error
	)
	// A dump that races a change is flagged as interrupted: read it again.
	for range 5 {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("listing links %s*: %w", prefix, err)
		}
		all, err = l.h.LinkList()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("listing links %s*: %w", prefix, err)
	}
	var names []string
	for _, link := range all {
		if n := link.Attrs().Name; strings.HasPrefix(n, prefix) {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	return names, nil
}

func isNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV) || errors.Is(err, unix.ENOENT)
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}
