package wireguard

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
)

// ErrInvalid is wrapped by errors about an unusable argument.
var ErrInvalid = errors.New("invalid argument")

// ErrClosed is returned by updates after Close.
var ErrClosed = errors.New("wireguard device closed")

// Config is one encrypted overlay on this host.
type Config struct {
	Overlay    netip.Prefix // the overlay, e.g. 10.97.0.0/16
	Local      netip.Prefix // this host's subnet of it, e.g. 10.97.3.0/24
	PrivateKey Key
	Backend    Backend
	Logger     *slog.Logger // nil discards
	// CopyingIO runs wireguard-go's own TUN and UDP bind, which copy every
	// packet once more each way: the benchmark's baseline for Open's.
	CopyingIO bool
}

// Peer is one other host of the overlay, from its lease.
type Peer struct {
	Subnet    netip.Prefix   // its lease: the peer's allowed IPs
	PublicKey Key            // its lease's BackendData
	Endpoint  netip.AddrPort // its PublicIP and the overlay's ListenPort
}

// PeerStats is what the device knows of a peer.
type PeerStats struct {
	Peer
	LastHandshake     time.Time // zero: none yet
	BytesIn, BytesOut uint64
}

// Stats is a snapshot of the device.
type Stats struct {
	ListenPort int
	Peers      []PeerStats // ordered by subnet
	Drops      map[string]uint64
}

// Device is a user-space WireGuard device carrying one encrypted overlay.
// Its methods are safe for concurrent use.
type Device struct {
	cfg  Config
	log  *slog.Logger
	tun  *filter
	wg   *device.Device
	name string

	mu     sync.Mutex
	peers  map[netip.Prefix]Peer // by subnet, as the leases say
	closed bool
	// introduceUntil ends the start-up window in which new peers get a
	// handshake at once (see introduceLocked); greetings are the delayed
	// introductions pending, by peer key.
	introduceUntil time.Time
	greetings      map[Key]*time.Timer
}

// introduceFor is how long after its start a device introduces itself to
// each peer it is given: the time a restarted twilld takes to learn every
// lease.
const introduceFor = 10 * time.Second

// New runs WireGuard on t (the overlay's TUN) and bind (the UDP socket on
// cfg.Backend.ListenPort) with cfg's private key. The device owns both and
// closes them with Close.
func New(cfg Config, t tun.Device, bind conn.Bind) (*Device, error) {
	if !cfg.Overlay.IsValid() || !cfg.Overlay.Addr().Is4() || !cfg.Local.IsValid() || !cfg.Overlay.Contains(cfg.Local.Addr()) || cfg.Local.Bits() < cfg.Overlay.Bits() {
		t.Close()
		return nil, fmt.Errorf("wireguard device: subnet %v is not inside IPv4 overlay %v: %w", cfg.Local, cfg.Overlay, ErrInvalid)
	}
	if cfg.PrivateKey.IsZero() {
		t.Close()
		return nil, fmt.Errorf("wireguard device for %s: no private key: %w", cfg.Overlay, ErrInvalid)
	}
	if cfg.Backend.ListenPort == 0 {
		cfg.Backend.ListenPort = DefaultListenPort
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	name, _ := t.Name()
	log = log.With("overlay", cfg.Overlay.String(), "device", name)
	f := &filter{Device: t, overlay: cfg.Overlay, local: cfg.Local, scratch: make([][]byte, 0, t.BatchSize())}
	// wireguard-go logs per packet at both levels ("Failed to send",
	// "Received invalid…"): debug only, so a flood never floods the log.
	wlog := &device.Logger{
		Verbosef: func(string, ...any) {},
		Errorf:   func(format string, args ...any) { log.Debug("wireguard: " + fmt.Sprintf(format, args...)) },
	}
	d := &Device{cfg: cfg, log: log, tun: f, name: name, peers: map[netip.Prefix]Peer{}, greetings: map[Key]*time.Timer{}, introduceUntil: time.Now().Add(introduceFor)}
	d.wg = device.NewDevice(f, bind, wlog)
	if err := d.wg.IpcSet(fmt.Sprintf("private_key=%s\nlisten_port=%d\n", cfg.PrivateKey.hex(), cfg.Backend.ListenPort)); err != nil {
		d.wg.Close()
		return nil, fmt.Errorf("wireguard device %s: listening on UDP port %d (the overlay's ListenPort): %w", name, cfg.Backend.ListenPort, err)
	}
	if err := d.wg.Up(); err != nil {
		d.wg.Close()
		return nil, fmt.Errorf("wireguard device %s: %w", name, err)
	}
	return d, nil
}

// Name is the TUN device's name.
func (d *Device) Name() string { return d.name }

// Overlay is the overlay the device carries.
func (d *Device) Overlay() netip.Prefix { return d.cfg.Overlay }

// Local is this host's subnet of the overlay.
func (d *Device) Local() netip.Prefix { return d.cfg.Local }

// PublicKey is this host's public key, as its leases publish it.
func (d *Device) PublicKey() Key { return d.cfg.PrivateKey.Public() }

// SetPeer adds the host holding p.Subnet, or updates it: a new endpoint,
// or a new key (the old key's peer is removed, so its sessions end).
func (d *Device) SetPeer(p Peer) error {
	if !p.Subnet.IsValid() || !d.cfg.Overlay.Contains(p.Subnet.Addr()) || p.Subnet == d.cfg.Local {
		return fmt.Errorf("wireguard peer %v: not another host's subnet of %s: %w", p.Subnet, d.cfg.Overlay, ErrInvalid)
	}
	if p.PublicKey.IsZero() || !p.Endpoint.IsValid() || p.Endpoint.Port() == 0 {
		return fmt.Errorf("wireguard peer %s: needs a public key and an endpoint (got %v): %w", p.Subnet, p.Endpoint, ErrInvalid)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	old, had := d.peers[p.Subnet]
	if had && old == p {
		return nil
	}
	var b strings.Builder
	if had && old.PublicKey != p.PublicKey {
		d.uapiPeerLocked(&b, old.PublicKey, old.Subnet)
	}
	d.peers[p.Subnet] = p
	fmt.Fprintf(&b, "public_key=%s\nendpoint=%s\n", p.PublicKey.hex(), p.Endpoint)
	if psk := d.cfg.Backend.PSK; psk != nil {
		fmt.Fprintf(&b, "preshared_key=%s\n", psk.hex())
	}
	fresh := !had || old.PublicKey != p.PublicKey
	waits := fresh && d.waitsFor(p.PublicKey)
	if fresh {
		// Turning the keepalive on sends one at once, and with it a
		// handshake initiation: the host that waits turns it on later.
		pka := d.keepalive()
		if waits {
			pka = 0
		}
		fmt.Fprintf(&b, "persistent_keepalive_interval=%d\n", pka)
	}
	d.allowedLocked(&b, p.PublicKey)
	if err := d.wg.IpcSet(b.String()); err != nil {
		if had {
			d.peers[p.Subnet] = old
		} else {
			delete(d.peers, p.Subnet)
		}
		return fmt.Errorf("wireguard peer %s (%s at %s): %w", p.Subnet, p.PublicKey, p.Endpoint, err)
	}
	if fresh {
		d.introduceLocked(p.PublicKey, waits)
	}
	return nil
}

// keepalive is the overlay's PersistentKeepaliveInterval in wireguard-go's
// whole seconds; 0 is off.
func (d *Device) keepalive() int { return int(d.cfg.Backend.PersistentKeepalive / time.Second) }

// waitsFor reports whether this host lets the peer with key speak first:
// the one with the lower public key waits.
func (d *Device) waitsFor(key Key) bool {
	pub := d.cfg.PrivateKey.Public()
	return bytes.Compare(pub[:], key[:]) < 0
}

// introduceLocked starts the first handshake with the new peer key rather
// than leaving it to the first packet, in two cases: a device that just
// started introduces itself to each peer (a host that restarted, its
// sessions gone, is then reachable before its peers' stale sessions time
// out (15 s), and a joining host completes the handshakes its peers sent
// before its device was listening, which WireGuard retries only after
// 5 s); and with a persistent keepalive, turning it on sends one at once.
// Two initiations that cross make both ends wait those 5 s, so of two
// hosts that learn of each other together, the one with the lower public
// key (waits) speaks a second later: by then it has the other's
// handshake, or it starts one the other, not yet listening for it, will
// answer. d.mu held.
func (d *Device) introduceLocked(key Key, waits bool) {
	greet := time.Now().Before(d.introduceUntil)
	pka := d.keepalive()
	if !waits {
		if pka == 0 && greet { // else wireguard-go sent a keepalive already
			d.initiateLocked(key)
		}
		return
	}
	if pka == 0 && !greet {
		return
	}
	if t := d.greetings[key]; t != nil {
		t.Stop()
	}
	d.greetings[key] = time.AfterFunc(time.Second, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		delete(d.greetings, key)
		if d.closed || !d.keyUsedLocked(key) {
			return
		}
		if pka == 0 {
			d.initiateLocked(key)
			return
		}
		if err := d.wg.IpcSet(fmt.Sprintf("public_key=%s\nupdate_only=true\npersistent_keepalive_interval=%d\n", key.hex(), pka)); err != nil {
			d.log.Warn("wireguard peer: turning its keepalive on", "public_key", key.String(), "err", err)
		}
	})
}

// initiateLocked sends a handshake initiation to the peer with key, best
// effort: a lost one is retried. d.mu held.
func (d *Device) initiateLocked(key Key) {
	if peer := d.wg.LookupPeer(device.NoisePublicKey(key)); peer != nil {
		peer.SendHandshakeInitiation(false)
	}
}

// RemovePeer removes the host holding sn; an unknown subnet is success.
func (d *Device) RemovePeer(sn netip.Prefix) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	old, had := d.peers[sn]
	if !had {
		return nil
	}
	delete(d.peers, sn)
	var b strings.Builder
	d.uapiPeerLocked(&b, old.PublicKey, sn)
	if err := d.wg.IpcSet(b.String()); err != nil {
		return fmt.Errorf("removing wireguard peer %s: %w", sn, err)
	}
	return nil
}

// uapiPeerLocked writes the configuration that takes sn away from key:
// the peer goes when no other subnet names the key, else it keeps the
// others. d.mu held; sn is no longer in d.peers.
func (d *Device) uapiPeerLocked(b *strings.Builder, key Key, sn netip.Prefix) {
	fmt.Fprintf(b, "public_key=%s\n", key.hex())
	if !d.keyUsedLocked(key) {
		b.WriteString("remove=true\n")
		return
	}
	d.allowedLocked(b, key)
}

func (d *Device) keyUsedLocked(key Key) bool {
	for _, p := range d.peers {
		if p.PublicKey == key {
			return true
		}
	}
	return false
}

// allowedLocked writes key's allowed IPs: every subnet whose lease names it.
func (d *Device) allowedLocked(b *strings.Builder, key Key) {
	b.WriteString("replace_allowed_ips=true\n")
	for _, sn := range slices.SortedFunc(maps.Keys(d.peers), netip.Prefix.Compare) {
		if d.peers[sn].PublicKey == key {
			fmt.Fprintf(b, "allowed_ip=%s\n", sn)
		}
	}
}

// Stats reads the peers' handshakes and byte counts from the device.
func (d *Device) Stats() Stats {
	st := Stats{ListenPort: d.cfg.Backend.ListenPort, Drops: d.tun.drops()}
	d.mu.Lock()
	peers := maps.Clone(d.peers)
	closed := d.closed
	d.mu.Unlock()
	if closed {
		return st
	}
	get, err := d.wg.IpcGet()
	if err != nil {
		return st
	}
	byKey := parsePeers(get)
	for _, sn := range slices.SortedFunc(maps.Keys(peers), netip.Prefix.Compare) {
		p := peers[sn]
		ps := PeerStats{Peer: p}
		if s, ok := byKey[p.PublicKey]; ok {
			ps.LastHandshake, ps.BytesIn, ps.BytesOut = s.LastHandshake, s.BytesIn, s.BytesOut
		}
		st.Peers = append(st.Peers, ps)
	}
	return st
}

// parsePeers reads wireguard-go's "get" output: per public_key, the last
// handshake and byte counters.
func parsePeers(get string) map[Key]PeerStats {
	out := map[Key]PeerStats{}
	var cur *PeerStats
	var key Key
	var sec, nsec int64
	flush := func() {
		if cur != nil {
			if sec != 0 || nsec != 0 {
				cur.LastHandshake = time.Unix(sec, nsec)
			}
			out[key] = *cur
		}
	}
	sc := bufio.NewScanner(strings.NewReader(get))
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), "=")
		switch k {
		case "public_key":
			flush()
			cur, sec, nsec = &PeerStats{}, 0, 0
			key = Key{}
			if b, err := hexKey(v); err == nil {
				key = b
			}
		case "last_handshake_time_sec":
			sec, _ = strconv.ParseInt(v, 10, 64)
		case "last_handshake_time_nsec":
			nsec, _ = strconv.ParseInt(v, 10, 64)
		case "rx_bytes":
			if cur != nil {
				cur.BytesIn, _ = strconv.ParseUint(v, 10, 64)
			}
		case "tx_bytes":
			if cur != nil {
				cur.BytesOut, _ = strconv.ParseUint(v, 10, 64)
			}
		}
	}
	flush()
	return out
}

func hexKey(s string) (Key, error) {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(Key{}) {
		return Key{}, ErrBadKey
	}
	return Key(b), nil
}

// Close stops the device and closes its TUN (deleting it) and socket.
func (d *Device) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	for _, t := range d.greetings {
		t.Stop()
	}
	d.mu.Unlock()
	d.wg.Close()
	return nil
}
