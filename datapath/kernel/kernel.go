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
// overlay.Forwarder); counters come from per-CPU maps.
package kernel

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"sync"

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
}

// Datapath is the loaded and attached programs with their maps. Close
// detaches them; the TUN path then forwards everything.
type Datapath struct {
	cfg   Config
	log   *slog.Logger
	objs  twillObjects
	links []link.Link

	mu       sync.Mutex // guards the desired state and serialises map updates
	overlays map[netip.Prefix]netip.Prefix
	peers    map[netip.Prefix]netip.AddrPort
	written  map[netip.Prefix]twillPeer // what the peers map holds
	senders  map[netip.Addr]uint32      // what the senders map holds
}

// Open loads the programs, attaches them (TCX: twill0 egress, underlay
// ingress) and returns with empty maps: until SetPeer, everything takes the
// TUN path.
func Open(cfg Config) (_ *Datapath, err error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
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
	ip := cfg.LocalIP.As4()
	var port [2]byte
	binary.BigEndian.PutUint16(port[:], cfg.Port)
	for name, v := range map[string]any{
		twillVarLocalIp:         binary.NativeEndian.Uint32(ip[:]),
		twillVarLocalPort:       binary.NativeEndian.Uint16(port[:]),
		twillVarMtu:             uint32(cfg.MTU),
		twillVarTunIfindex:      uint32(tun.Attrs().Index),
		twillVarUnderlayIfindex: uint32(under.Attrs().Index),
	} {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("kernel datapath: setting %s: %w", name, err)
		}
	}
	d := &Datapath{
		cfg: cfg, log: cfg.Logger,
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
	defer func() {
		if err != nil {
			d.Close()
		}
	}()
	for _, a := range []struct {
		prog *ebpf.Program
		dev  netlink.Link
		at   ebpf.AttachType
	}{
		{d.objs.TwillDecap, under, ebpf.AttachTCXIngress},
		{d.objs.TwillEncap, tun, ebpf.AttachTCXEgress},
	} {
		l, err := link.AttachTCX(link.TCXOptions{Interface: a.dev.Attrs().Index, Program: a.prog, Attach: a.at})
		if err != nil {
			return nil, fmt.Errorf("kernel datapath: attaching to %s (TCX, Linux 6.6+): %w", a.dev.Attrs().Name, err)
		}
		d.links = append(d.links, l)
	}
	return d, nil
}

// Close detaches the programs and frees the maps. Safe to call more than once.
func (d *Datapath) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for _, l := range d.links {
		errs = append(errs, l.Close())
	}
	d.links = nil
	errs = append(errs, d.objs.Close())
	return errors.Join(errs...)
}

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
	if d.links == nil {
		return fmt.Errorf("kernel datapath closed")
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
