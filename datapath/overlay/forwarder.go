// Package overlay owns twill's overlay datapath: the TUN device twill0, the
// UDP socket towards the other hosts, the peer table (which host holds
// which subnet) and the forwarding loops between them, with flannel's udp
// backend wire format (each datagram is one plain IP packet, no header).
//
// Outbound, a packet read from twill0 is sent to the peer whose subnet holds
// its destination; inbound, a datagram is written to twill0 only when its
// sender holds a lease, its inner source lies in that lease and its inner
// destination in this host's lease of the same overlay. Every other packet
// is dropped and counted by reason. The fast path moves 64 KB TCP
// super-packets through both kernel interfaces (TUN TSO/GRO via
// IFF_VNET_HDR, UDP GSO/GRO) without copying payloads in user space; the
// plain path moves one packet per system call and is used when the kernel
// refuses the offloads or the configuration asks for it.
package overlay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Offload modes for Config.Offload.
const (
	OffloadAuto = "auto" // use TUN and UDP offloads when the kernel accepts them
	OffloadOff  = "off"  // plain path: one packet per read and write
)

// MaxBusyPoll bounds Config.BusyPoll (TWILL_BUSY_POLL): beyond it the CPU
// is just burnt.
const MaxBusyPoll = 10 * time.Second

// Config configures a Forwarder. The caller (cmd/twilld) validates
// settings; Open fills in defaults for zero values.
type Config struct {
	Name         string        // TUN name; default "twill0"
	MTU          int           // TUN MTU: underlay MTU − 28; required
	PublicIP     netip.Addr    // address the UDP socket binds; zero binds every address
	Port         uint16        // UDP port; default 8285
	Offload      string        // OffloadAuto (default) or OffloadOff
	SocketBuffer int           // UDP SO_RCVBUF/SO_SNDBUF bytes; default 8 MiB
	LogInterval  time.Duration // how often drop counts are logged when they changed; default 30s
	// BusyPoll, when > 0, keeps one goroutine polling both devices
	// without sleeping after sparse traffic, until nothing came for this
	// long (busy.go): lower latency, for a CPU kept busy meanwhile.
	// 0 (default) = off.
	BusyPoll time.Duration
	Logger   *slog.Logger // default slog.Default()
}

func (c *Config) setDefaults() error {
	if c.Name == "" {
		c.Name = "twill0"
	}
	if len(c.Name) > 15 {
		return fmt.Errorf("tun name %q longer than 15 characters: %w", c.Name, ErrInvalid)
	}
	if c.MTU < 576 || c.MTU > maxIPPacket {
		return fmt.Errorf("mtu %d outside 576..65535: %w", c.MTU, ErrInvalid)
	}
	if c.Port == 0 {
		c.Port = 8285
	}
	switch c.Offload {
	case "":
		c.Offload = OffloadAuto
	case OffloadAuto, OffloadOff:
	default:
		return fmt.Errorf("offload mode %q (want %q or %q): %w", c.Offload, OffloadAuto, OffloadOff, ErrInvalid)
	}
	if c.SocketBuffer == 0 {
		c.SocketBuffer = 8 << 20
	}
	if c.BusyPoll < 0 || c.BusyPoll > MaxBusyPoll {
		return fmt.Errorf("busy poll %v outside 0..%v: %w", c.BusyPoll, MaxBusyPoll, ErrInvalid)
	}
	if c.LogInterval == 0 {
		c.LogInterval = 30 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Forwarder moves packets between the TUN and the UDP socket.
type Forwarder struct {
	cfg  Config
	log  *slog.Logger
	tun  TUN
	conn PacketConn
	tab  atomic.Pointer[table]
	ctr  counters
	busy atomic.Pointer[busyPoller] // while Run runs with Config.BusyPoll (tests watch its spells)

	tunMu sync.Mutex // serialises TUN writes: the inbound loop's and outbound's ICMP replies

	closing   atomic.Bool
	closeOnce sync.Once
	closeErr  error

	mu       sync.Mutex // guards overlays and peers, and serialises table rebuilds
	overlays map[netip.Prefix]netip.Prefix
	peers    map[netip.Prefix]*peer
}

// New makes a forwarder on an open TUN and socket (Open does this for the
// kernel's; tests pass fakes). Call Run to forward and Close to tear down.
func New(cfg Config, tun TUN, conn PacketConn) (*Forwarder, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	f := &Forwarder{
		cfg: cfg, log: cfg.Logger, tun: tun, conn: conn,
		overlays: map[netip.Prefix]netip.Prefix{},
		peers:    map[netip.Prefix]*peer{},
	}
	f.tab.Store(buildTable(nil, nil))
	return f, nil
}

// Run forwards in both directions until ctx is cancelled, Close is called
// or a device fails. It closes the devices (deleting the TUN) before it
// returns, and returns nil unless a device failed.
func (f *Forwarder) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	out := newOutbound(f)
	in := newInbound(f, out)
	var busy *busyPoller // nil: busy polling off
	if f.cfg.BusyPoll > 0 {
		busy = newBusyPoller(&f.ctr, &out.rd, &in.rd, f.cfg.BusyPoll)
		f.busy.Store(busy)
	}
	errc := make(chan error, 2)
	var wg sync.WaitGroup
	wg.Go(func() { errc <- serve(loopOut, &out.rd, busy, ctx.Done()) })
	wg.Go(func() { errc <- serve(loopIn, &in.rd, busy, ctx.Done()) })
	if busy != nil {
		wg.Go(func() { busy.run(ctx.Done()) })
	}
	wg.Go(func() { f.logDrops(ctx) })
	f.log.Info("overlay datapath running", "tun", f.tun.Name(), "path", f.path(), "mtu", f.cfg.MTU)
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		if f.closing.Load() {
			err = nil
		}
	}
	f.Close()
	cancel()
	wg.Wait()
	return err
}

// Close deletes the TUN (unless Persist kept it) and closes the socket; Run
// then returns. It is safe to call more than once.
func (f *Forwarder) Close() error {
	f.closeOnce.Do(func() {
		f.closing.Store(true)
		f.closeErr = errors.Join(f.tun.Close(), f.conn.Close())
	})
	return f.closeErr
}

// Persist makes twill0 outlive this Forwarder (on) or go with it (off): a
// kernel datapath attached to it then forwards while no twilld runs. The
// TUN must support it (the Linux device does, fakes do not).
func (f *Forwarder) Persist(on bool) error {
	p, ok := f.tun.(interface{ SetPersist(bool) error })
	if !ok {
		return fmt.Errorf("tun %s cannot persist: %w", f.tun.Name(), ErrInvalid)
	}
	return p.SetPersist(on)
}

func (f *Forwarder) path() string {
	t, gso, gro := f.tun.VnetHdr(), f.conn.GSO(), f.conn.GRO()
	switch {
	case t && gso && gro:
		return "offload"
	case !t && !gso && !gro:
		return "plain"
	}
	return "partial"
}

// writeTUN writes one packet to the TUN; both loops may call it.
func (f *Forwarder) writeTUN(bufs [][]byte) error {
	f.tunMu.Lock()
	defer f.tunMu.Unlock()
	return f.tun.Write(bufs)
}

// Path reports the active datapath: "offload", "plain" or "partial".
func (f *Forwarder) Path() string { return f.path() }

func checkIPv4Prefix(what string, p netip.Prefix) error {
	if !p.IsValid() || !p.Addr().Is4() || p != p.Masked() {
		return fmt.Errorf("%s %s is not an IPv4 network prefix: %w", what, p, ErrInvalid)
	}
	return nil
}

// AddOverlay joins overlay (e.g. 10.96.0.0/16) with this host's lease local
// (e.g. 10.96.3.0/24): the TUN gets local's first address as /32 and the
// route to overlay. Packets to and from overlay are forwarded from then on.
// Calling it again with another lease replaces the old one.
func (f *Forwarder) AddOverlay(overlay, local netip.Prefix) error {
	if err := checkIPv4Prefix("overlay", overlay); err != nil {
		return err
	}
	if err := checkIPv4Prefix("lease", local); err != nil {
		return err
	}
	if local.Bits() < overlay.Bits() || !overlay.Contains(local.Addr()) {
		return fmt.Errorf("lease %s outside overlay %s: %w", local, overlay, ErrInvalid)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closing.Load() {
		return ErrClosed
	}
	if old, ok := f.overlays[overlay]; ok && old != local {
		if err := f.tun.RemoveOverlay(overlay, old); err != nil {
			return fmt.Errorf("replacing lease %s of overlay %s: %w", old, overlay, err)
		}
	}
	if err := f.tun.AddOverlay(overlay, local); err != nil {
		return fmt.Errorf("adding overlay %s with lease %s: %w", overlay, local, err)
	}
	f.overlays[overlay] = local
	f.rebuild()
	return nil
}

// RemoveOverlay leaves overlay: its address and route go, and its packets
// are dropped from then on. An unknown overlay is success.
func (f *Forwarder) RemoveOverlay(overlay netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	local, ok := f.overlays[overlay]
	if !ok {
		return nil
	}
	delete(f.overlays, overlay)
	f.rebuild()
	if err := f.tun.RemoveOverlay(overlay, local); err != nil {
		return fmt.Errorf("removing overlay %s: %w", overlay, err)
	}
	return nil
}

// SetPeer records that the host at addr (its public IP and UDP port) holds
// subnet. It takes effect with the next packet; counters of a known subnet
// are kept when only its address changes.
func (f *Forwarder) SetPeer(subnet netip.Prefix, addr netip.AddrPort) error {
	if err := checkIPv4Prefix("peer subnet", subnet); err != nil {
		return err
	}
	if !addr.Addr().Is4() || addr.Port() == 0 {
		return fmt.Errorf("peer address %s for subnet %s is not IPv4 with a port: %w", addr, subnet, ErrInvalid)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	c := &peerCounters{}
	if old, ok := f.peers[subnet]; ok {
		if old.addr == addr {
			return nil
		}
		c = old.c
	}
	f.peers[subnet] = &peer{subnet: subnet, addr: addr, ip: addrU32(addr.Addr()), c: c}
	f.rebuild()
	return nil
}

// RemovePeer forgets subnet's holder: packets to it are dropped (no_route)
// and packets from it are refused from the next packet on. Unknown is success.
func (f *Forwarder) RemovePeer(subnet netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.peers[subnet]; !ok {
		return nil
	}
	delete(f.peers, subnet)
	f.rebuild()
	return nil
}

// rebuild publishes a new table; f.mu is held.
func (f *Forwarder) rebuild() { f.tab.Store(buildTable(f.overlays, f.peers)) }

// Stats returns a snapshot of the counters.
func (f *Forwarder) Stats() Stats {
	s := Stats{
		Path:       f.path(),
		TUNOffload: f.tun.VnetHdr(), UDPGSO: f.conn.GSO(), UDPGRO: f.conn.GRO(),
		PacketsOut: f.ctr.packetsOut.Load(), BytesOut: f.ctr.bytesOut.Load(),
		PacketsIn: f.ctr.packetsIn.Load(), BytesIn: f.ctr.bytesIn.Load(),
		BusyPollSpells: f.ctr.busySpells.Load(),
		TUNReads:       f.ctr.tunReads.Load(), TUNReadsAfterWrite: f.ctr.tunReadsAfterWrite.Load(), UDPSends: f.ctr.udpSends.Load(),
		UDPRecvs: f.ctr.udpRecvs.Load(), TUNWrites: f.ctr.tunWrites.Load(),
		UnreachablesSent: f.ctr.unreachables.Load(),
		Drops:            make(map[string]uint64, numReasons-1),
	}
	for r := reasonNone + 1; r < numReasons; r++ {
		s.Drops[r.String()] = f.ctr.drops[r].Load()
	}
	for _, p := range f.tab.Load().list {
		ps := PeerStats{
			Subnet: p.subnet, Addr: p.addr,
			PacketsIn: p.c.packetsIn.Load(), BytesIn: p.c.bytesIn.Load(),
			PacketsOut: p.c.packetsOut.Load(), BytesOut: p.c.bytesOut.Load(),
		}
		if ns := p.c.lastSeen.Load(); ns != 0 {
			ps.LastSeen = time.Unix(0, ns)
		}
		s.Peers = append(s.Peers, ps)
	}
	return s
}

// logDrops logs the drop counters that changed, at most once per
// LogInterval: the hot path itself never logs.
func (f *Forwarder) logDrops(ctx context.Context) {
	var last [numReasons]uint64
	tk := time.NewTicker(f.cfg.LogInterval)
	defer tk.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
		}
		var attrs []any
		for r := reasonNone + 1; r < numReasons; r++ {
			v := f.ctr.drops[r].Load()
			if v != last[r] {
				attrs = append(attrs, r.String(), v-last[r])
				last[r] = v
			}
		}
		if attrs != nil {
			f.log.Warn("overlay packets dropped", append(attrs, "interval", f.cfg.LogInterval)...)
		}
	}
}
