// Package kernel is twill's in-kernel datapath: two TC programs (twill.c)
// that encapsulate and decapsulate flannel's udp wire format (UDP 8285 both
// ways, one plain inner IPv4 packet per datagram) so that packets between
// containers on different hosts never cross into twilld. It runs beside
// datapath/overlay's TUN path, which stays complete: every packet the
// programs do not handle (no peer, fragments, IP options, oversize, a
// kernel step refused) continues to twill0 and twilld as before.
//
// The peer table lives in BPF maps that the caller keeps in step with the
// lease table (SetPeer, RemovePeer, AddOverlay, RemoveOverlay, as for the
// overlay.Forwarder); counters come from per-CPU maps. A third program
// (twill_gro, gro.go) merges decapsulated segments before twill0; pinned
// links (pin.go) keep all of them forwarding while twilld restarts.
package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
)

// ErrInvalid marks bad arguments.
var ErrInvalid = errors.New("invalid argument")

// Config says where the programs attach and what they write.
type Config struct {
	TUN      string     // twill0: the encapsulating program runs on its egress
	Underlay string     // the interface peers' datagrams arrive on and leave by
	LocalIP  netip.Addr // this host's underlay address: outer source, and the decapsulated destination
	Port     uint16     // twill's UDP port (8285)
	MTU      int        // twill0's MTU: the largest inner packet
	Logger   *slog.Logger

	// PinDir, when set, is a directory on a bpf filesystem (PinDir) where
	// the programs' links are pinned: they stay attached when twilld exits
	// (Release) or dies, and the next Attach with the same PinDir takes
	// them over in place, so traffic does not stop. Empty: the programs go
	// with twilld's file descriptors.
	PinDir string
	// GRO, when set, names the veth pair (GRO+"0", GRO+"1") that
	// decapsulated single segments pass through to be merged before twill0
	// (gro.go); made if missing, deleted by Close. Empty: no GRO stage.
	GRO string
	// Hold is how long the programs go on forwarding after twilld last
	// vouched for their maps (every second while it runs); past it they
	// leave everything to the TUN path. Zero means DefaultHold.
	Hold time.Duration
}

// DefaultHold matches a lease's presence TTL: a host gone that long is gone
// for its peers too, so programs left behind never forward longer than the
// other hosts would still count this one in.
const DefaultHold = 10 * time.Second

// Datapath is the loaded programs with their maps and, after Attach, their
// links. Close detaches them; the TUN path then forwards everything.
type Datapath struct {
	cfg    Config
	log    *slog.Logger
	objs   twillObjects
	tun    *netlink.LinkAttrs // the devices the programs were made for
	under  *netlink.LinkAttrs
	gro    *netlink.LinkAttrs // the GRO veth's merging end, or nil
	links  []link.Link        // after Attach, in hooks' order
	pinned bool               // the links are pinned under PinDir: they outlive twilld
	stop   chan struct{}      // ends the heartbeat
	done   chan struct{}

	mu       sync.Mutex // guards the desired state and serialises map updates
	closed   bool
	overlays map[netip.Prefix]netip.Prefix
	peers    map[netip.Prefix]netip.AddrPort
	written  map[netip.Prefix]twillPeer // what the peers map holds
	senders  map[netip.Addr]uint32      // what the senders map holds
}

// Open loads the programs with empty maps. Nothing is attached until
// Attach: fill the maps first (AddOverlay, SetPeer), so that programs
// taking over from a previous twilld's forward every packet they did.
func Open(cfg Config) (_ *Datapath, err error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Hold <= 0 {
		cfg.Hold = DefaultHold
	}
	if !cfg.LocalIP.Is4() || cfg.Port == 0 || cfg.MTU < 576 || cfg.MTU > 65535 {
		return nil, fmt.Errorf("kernel datapath needs an IPv4 underlay address, a port and an MTU in 576..65535 (got %s, %d, %d): %w", cfg.LocalIP, cfg.Port, cfg.MTU, ErrInvalid)
	}
	tun, err := netlink.LinkByName(cfg.TUN)
	if err != nil {
		return nil, fmt.Errorf("kernel datapath: tun %s: %w", cfg.TUN, err)
	}
	under, err := netlink.LinkByName(cfg.Underlay)
	if err != nil {
		return nil, fmt.Errorf("kernel datapath: underlay %s: %w", cfg.Underlay, err)
	}
	spec, err := loadTwill()
	if err != nil {
		return nil, err
	}
	var groRx *netlink.LinkAttrs
	var groIndex uint32 // 0: no GRO stage
	if cfg.GRO != "" {
		groTx, rx, err := ensureGRO(cfg.GRO, cfg.MTU)
		if err != nil {
			cfg.Logger.Warn("kernel datapath: no GRO stage; decapsulated segments go to twill0 one by one", "err", err)
			removeGRO(cfg.GRO)
		} else {
			groRx, groIndex = rx, uint32(groTx.Index)
		}
	}
	ip := cfg.LocalIP.As4()
	var port [2]byte
	binary.BigEndian.PutUint16(port[:], cfg.Port)
	for name, v := range map[string]any{
		twillVarLocalIp:         binary.NativeEndian.Uint32(ip[:]),
		twillVarLocalPort:       binary.NativeEndian.Uint16(port[:]),
		twillVarMtu:             uint32(cfg.MTU),
		twillVarTunIfindex:      uint32(tun.Attrs().Index),
		twillVarUnderlayIfindex: uint32(under.Attrs().Index),
		twillVarGroIfindex:      groIndex,
	} {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("kernel datapath: setting %s: %w", name, err)
		}
	}
	d := &Datapath{
		cfg: cfg, log: cfg.Logger, tun: tun.Attrs(), under: under.Attrs(), gro: groRx,
		overlays: map[netip.Prefix]netip.Prefix{}, peers: map[netip.Prefix]netip.AddrPort{},
		written: map[netip.Prefix]twillPeer{}, senders: map[netip.Addr]uint32{},
	}
	if err := spec.LoadAndAssign(&d.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("kernel datapath: the verifier refused the programs: %+v", ve)
		}
		return nil, fmt.Errorf("kernel datapath: loading programs: %w", err)
	}
	if err := d.vouch(); err != nil {
		d.objs.Close()
		return nil, err
	}
	d.stop, d.done = make(chan struct{}), make(chan struct{})
	go d.heartbeat()
	return d, nil
}

// hooks are where the programs run, with the names their links are pinned
// under: the decapsulating one first, so a peer's datagrams are accepted
// before this host sends it any.
func (d *Datapath) hooks() []hook {
	hs := []hook{
		{"decap", d.objs.TwillDecap, d.under, ebpf.AttachTCXIngress},
		{"encap", d.objs.TwillEncap, d.tun, ebpf.AttachTCXEgress},
	}
	if d.gro != nil {
		// First of all: twill_decap sends segments its way once attached.
		hs = append([]hook{{"gro", d.objs.TwillGro, d.gro, ebpf.AttachTCXIngress}}, hs...)
	}
	return hs
}

type hook struct {
	pin  string
	prog *ebpf.Program
	dev  *netlink.LinkAttrs
	at   ebpf.AttachType
}

// Attach puts the programs on their hooks (TCX: the underlay's ingress,
// twill0's egress). With PinDir, links a previous twilld left there are
// updated to these programs in place (the kernel swaps them between two
// packets), and all are pinned.
func (d *Datapath) Attach() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errClosed
	}
	if d.links != nil {
		return nil
	}
	hooks := d.hooks()
	var links []link.Link
	for _, h := range hooks {
		l, err := d.attach(h)
		if err != nil {
			for _, l := range links {
				l.Close()
			}
			return err
		}
		links = append(links, l)
	}
	d.links = links
	if d.cfg.PinDir != "" {
		d.pinned = d.pin(hooks)
	}
	return nil
}

// attach takes over h's pinned link or makes a new one.
func (d *Datapath) attach(h hook) (link.Link, error) {
	if d.cfg.PinDir != "" {
		if l := d.adopt(filepath.Join(d.cfg.PinDir, h.pin), h); l != nil {
			return l, nil
		}
	}
	l, err := link.AttachTCX(link.TCXOptions{Interface: h.dev.Index, Program: h.prog, Attach: h.at})
	if err != nil {
		return nil, fmt.Errorf("kernel datapath: attaching to %s (TCX, Linux %s+): %w", h.dev.Name, MinKernel, err)
	}
	return l, nil
}

// adopt updates the link pinned at path to h's program when it is on h's
// hook, and returns it; a link pinned for another device or hook (the
// underlay changed, twill0 was made anew) is detached and nil returned.
func (d *Datapath) adopt(path string, h hook) link.Link {
	l, err := link.LoadPinnedLink(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		d.log.Warn("kernel datapath: a pinned link is unreadable; attaching anew", "path", path, "err", err)
		os.Remove(path)
		return nil
	}
	info, err := l.Info()
	if err == nil && info.TCX() != nil && int(info.TCX().Ifindex) == h.dev.Index && ebpf.AttachType(info.TCX().AttachType) == h.at {
		if err = l.Update(h.prog); err == nil {
			d.log.Info("kernel datapath: took over the programs a previous twilld left attached", "device", h.dev.Name, "link", path)
			return l
		}
	}
	d.log.Info("kernel datapath: detaching programs a previous twilld left on another hook", "link", path, "err", err)
	l.Unpin()
	l.Close()
	return nil
}

// pin pins every link under PinDir (adopted ones are there already) and
// detaches what else a previous twilld pinned there (a GRO stage this one
// could not make), or pins none: programs left behind on some hooks only
// would forward one way. d.mu held.
func (d *Datapath) pin(hooks []hook) bool {
	keep := map[string]bool{}
	for i, l := range d.links {
		path := filepath.Join(d.cfg.PinDir, hooks[i].pin)
		err := os.MkdirAll(d.cfg.PinDir, 0o700)
		if err == nil {
			err = l.Pin(path)
		}
		if err != nil {
			d.log.Warn("kernel datapath: pinning a link failed; the programs will stop with twilld", "path", path, "err", err)
			for _, l := range d.links {
				l.Unpin()
			}
			return false
		}
		keep[hooks[i].pin] = true
	}
	unpinAll(d.cfg.PinDir, keep)
	return true
}

// Pinned tells whether the programs stay attached after Release.
func (d *Datapath) Pinned() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.pinned
}

// Close detaches the programs, removes their pins and frees the maps. Safe
// to call more than once.
func (d *Datapath) Close() error { return d.close(false) }

// Release lets go of the programs without detaching them: pinned, they go
// on forwarding with the maps as they are for Hold, or until the next
// twilld's Attach takes them over. Unpinned links are detached.
func (d *Datapath) Release() error { return d.close(true) }

func (d *Datapath) close(keep bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	close(d.stop)
	<-d.done
	var errs []error
	for _, l := range d.links {
		if !keep {
			errs = append(errs, l.Unpin())
		}
		errs = append(errs, l.Close())
	}
	if !keep && d.cfg.PinDir != "" {
		os.Remove(d.cfg.PinDir)
	}
	if !keep && d.cfg.GRO != "" {
		errs = append(errs, removeGRO(d.cfg.GRO))
	}
	d.links, d.pinned = nil, false
	errs = append(errs, d.objs.Close())
	return errors.Join(errs...)
}

var errClosed = errors.New("kernel datapath closed")

// AddOverlay records this host's lease local in overlay: datagrams from
// peers of overlay are decapsulated only when their inner destination lies
// in local.
func (d *Datapath) AddOverlay(overlay, local netip.Prefix) error {
	if !overlay.Addr().Is4() || !local.Addr().Is4() || !overlay.Contains(local.Addr()) || local.Bits() < overlay.Bits() {
		return fmt.Errorf("kernel datapath: lease %s outside overlay %s: %w", local, overlay, ErrInvalid)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.overlays[overlay.Masked()] = local.Masked()
	return d.sync()
}

// RemoveOverlay forgets overlay: its peers' packets take the TUN path,
// which drops them.
func (d *Datapath) RemoveOverlay(overlay netip.Prefix) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.overlays, overlay.Masked())
	return d.sync()
}

// SetPeer records that the host at addr holds subnet; the programs use it
// from the next packet on. Counters of a known subnet are kept.
func (d *Datapath) SetPeer(subnet netip.Prefix, addr netip.AddrPort) error {
	if !subnet.Addr().Is4() || !addr.Addr().Is4() || addr.Port() == 0 {
		return fmt.Errorf("kernel datapath: peer %s at %s is not IPv4 with a port: %w", subnet, addr, ErrInvalid)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.peers[subnet.Masked()] = addr
	return d.sync()
}

// RemovePeer forgets subnet's holder: its packets are no longer forwarded
// by the programs (the TUN path decides, and refuses them as well).
func (d *Datapath) RemovePeer(subnet netip.Prefix) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.peers, subnet.Masked())
	if err := d.sync(); err != nil {
		return err
	}
	id := peerID(subnet.Masked())
	if err := d.objs.PeerStats.Delete(id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("kernel datapath: deleting counters of %s: %w", subnet, err)
	}
	return nil
}

// entries computes the peers map's content from the desired state, with
// the TUN path's rules (overlay/table.go): a peer's subnet belongs to the
// longest overlay holding it, and never overlaps one of this host's leases.
func (d *Datapath) entries() (map[netip.Prefix]twillPeer, map[netip.Addr]uint32) {
	ovs := make([]netip.Prefix, 0, len(d.overlays))
	for ov := range d.overlays {
		ovs = append(ovs, ov)
	}
	sort.Slice(ovs, func(i, j int) bool { return ovs[i].Bits() > ovs[j].Bits() })
	out := map[netip.Prefix]twillPeer{}
	senders := map[netip.Addr]uint32{}
	for sn, addr := range d.peers {
		p := twillPeer{Ip: be32(addr.Addr()), Port: be16(addr.Port()), Id: peerID(sn)}
		for _, ov := range ovs {
			if ov.Bits() <= sn.Bits() && ov.Contains(sn.Addr()) {
				local := d.overlays[ov]
				p.Usable = 1
				p.OvNet, p.OvMask = be32(ov.Addr()), maskBE(ov.Bits())
				p.LocalNet, p.LocalMask = be32(local.Addr()), maskBE(local.Bits())
				break
			}
		}
		for _, local := range d.overlays {
			if local.Overlaps(sn) {
				p.Usable = 0
			}
		}
		out[sn] = p
		senders[addr.Addr()]++
	}
	return out, senders
}

// sync writes the difference between the desired and the written state to
// the maps: additions and changes first, removals last.
func (d *Datapath) sync() error {
	if d.closed {
		return errClosed
	}
	want, senders := d.entries()
	for a, n := range senders {
		if d.senders[a] != n {
			if err := d.objs.Senders.Put(be32(a), n); err != nil {
				return fmt.Errorf("kernel datapath: sender %s: %w", a, err)
			}
			d.senders[a] = n
		}
	}
	for sn, p := range want {
		if old, ok := d.written[sn]; ok && old == p {
			continue
		}
		if err := d.objs.Peers.Put(keyOf(sn), p); err != nil {
			return fmt.Errorf("kernel datapath: peer %s: %w", sn, err)
		}
		d.written[sn] = p
	}
	for sn := range d.written {
		if _, ok := want[sn]; ok {
			continue
		}
		if err := d.objs.Peers.Delete(keyOf(sn)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("kernel datapath: removing peer %s: %w", sn, err)
		}
		delete(d.written, sn)
	}
	for a := range d.senders {
		if _, ok := senders[a]; ok {
			continue
		}
		if err := d.objs.Senders.Delete(be32(a)); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("kernel datapath: removing sender %s: %w", a, err)
		}
		delete(d.senders, a)
	}
	return nil
}

func keyOf(p netip.Prefix) twillPeerKey {
	return twillPeerKey{Prefixlen: uint32(p.Bits()), Addr: be32(p.Addr())}
}

// peerID keys a subnet's counters: its network address and length.
func peerID(p netip.Prefix) uint64 {
	b := p.Addr().As4()
	return uint64(binary.BigEndian.Uint32(b[:]))<<8 | uint64(p.Bits())
}

// be32 is a's bytes in network order, as the programs compare them.
func be32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:])
}

func be16(v uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], v)
	return binary.NativeEndian.Uint16(b[:])
}

func maskBE(bits int) uint32 {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], ^uint32(0)<<(32-bits))
	if bits == 0 {
		b = [4]byte{}
	}
	return binary.NativeEndian.Uint32(b[:])
}
