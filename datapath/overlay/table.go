package overlay

import (
	"net/netip"
	"sort"
	"sync/atomic"
)

// overlayEntry is one overlay (e.g. 10.96.0.0/16) and this host's lease in
// it (e.g. 10.96.3.0/24), as integers for the hot path.
type overlayEntry struct {
	overlay, local         netip.Prefix
	ovNet, ovMask          uint32
	localNet, localMask    uint32
	overlayBits, localBits int
}

func (o *overlayEntry) inOverlay(a uint32) bool { return a&o.ovMask == o.ovNet }
func (o *overlayEntry) inLocal(a uint32) bool   { return a&o.localMask == o.localNet }

// peerCounters outlive table versions: SetPeer on a known subnet keeps them.
type peerCounters struct {
	packetsIn, bytesIn   atomic.Uint64
	packetsOut, bytesOut atomic.Uint64
	lastSeen             atomic.Int64 // unix nanoseconds of the last accepted packet
}

// peer is one remote lease: a subnet and the UDP address of the host holding it.
type peer struct {
	subnet  netip.Prefix
	addr    netip.AddrPort
	ip      uint32 // addr's IPv4 address, compared with a datagram's sender
	overlay int    // index into table.overlays, -1 when no overlay holds subnet
	c       *peerCounters
}

// table is an immutable snapshot of overlays and peers. The forwarding loops
// read it through an atomic.Pointer without locks; every update builds a new
// one, so a removed peer is unreachable from the next packet on.
type table struct {
	overlays []overlayEntry
	peers    map[uint64]*peer // key: masked network << 8 | prefix length
	lens     []int            // distinct peer prefix lengths, longest first
	senders  map[uint32]int   // peer IPv4 address -> number of subnets it holds
	list     []*peer          // sorted by subnet, for Stats
}

func prefixKey(a uint32, bits int) uint64 {
	return uint64(a&maskOf(bits))<<8 | uint64(bits)
}

func maskOf(bits int) uint32 {
	if bits <= 0 {
		return 0
	}
	return ^uint32(0) << (32 - bits)
}

func addrU32(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

func u32Addr(a uint32) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)})
}

// buildTable makes a snapshot from the forwarder's desired state.
func buildTable(overlays map[netip.Prefix]netip.Prefix, peers map[netip.Prefix]*peer) *table {
	t := &table{peers: make(map[uint64]*peer, len(peers)), senders: make(map[uint32]int)}
	for ov, local := range overlays {
		t.overlays = append(t.overlays, overlayEntry{
			overlay: ov, local: local,
			ovNet: addrU32(ov.Addr()), ovMask: maskOf(ov.Bits()),
			localNet: addrU32(local.Addr()), localMask: maskOf(local.Bits()),
			overlayBits: ov.Bits(), localBits: local.Bits(),
		})
	}
	// Longest overlay first, so nested overlays (unusual) resolve to the inner one.
	sort.Slice(t.overlays, func(i, j int) bool {
		if t.overlays[i].overlayBits != t.overlays[j].overlayBits {
			return t.overlays[i].overlayBits > t.overlays[j].overlayBits
		}
		return t.overlays[i].ovNet < t.overlays[j].ovNet
	})
	seen := map[int]bool{}
	for _, p0 := range peers {
		p := *p0
		net := addrU32(p.subnet.Addr())
		p.overlay = t.overlayOf(net)
		if p.overlay >= 0 && !t.overlays[p.overlay].inOverlay(net|^maskOf(p.subnet.Bits())) {
			p.overlay = -1 // the peer's subnet is larger than the overlay: unusable
		}
		for _, o := range t.overlays {
			if o.local.Overlaps(p.subnet) {
				p.overlay = -1 // this host's own lease is never a peer's
			}
		}
		t.peers[prefixKey(net, p.subnet.Bits())] = &p
		t.senders[p.ip]++
		if !seen[p.subnet.Bits()] {
			seen[p.subnet.Bits()] = true
			t.lens = append(t.lens, p.subnet.Bits())
		}
		t.list = append(t.list, &p)
	}
	sort.Sort(sort.Reverse(sort.IntSlice(t.lens)))
	sort.Slice(t.list, func(i, j int) bool { return t.list[i].subnet.Addr().Less(t.list[j].subnet.Addr()) })
	return t
}

// overlayOf returns the index of the overlay holding a, or -1.
func (t *table) overlayOf(a uint32) int {
	for i := range t.overlays {
		if t.overlays[i].inOverlay(a) {
			return i
		}
	}
	return -1
}

// lookup returns the peer whose subnet holds a (longest prefix), or nil.
func (t *table) lookup(a uint32) *peer {
	for _, l := range t.lens {
		if p, ok := t.peers[prefixKey(a, l)]; ok {
			return p
		}
	}
	return nil
}

// outbound applies the rules to a packet read from the TUN with inner
// source src and destination dst and returns the peer to send it to.
func (t *table) outbound(src, dst uint32) (*peer, reason) {
	ov := t.overlayOf(dst)
	if ov < 0 {
		return nil, reasonNoRoute
	}
	if !t.overlays[ov].inOverlay(src) {
		return nil, reasonCrossOverlay
	}
	p := t.lookup(dst)
	if p == nil || p.overlay != ov {
		return nil, reasonNoRoute
	}
	return p, reasonNone
}

// inbound applies the rules to a packet received from sender (an IPv4
// address) carrying inner source src and destination dst, and returns the
// peer it came from.
func (t *table) inbound(sender, src, dst uint32) (*peer, reason) {
	p := t.lookup(src)
	if p == nil || p.ip != sender {
		if t.senders[sender] == 0 {
			return nil, reasonUnknownPeer
		}
		return nil, reasonSpoofedSource
	}
	if p.overlay < 0 || !t.overlays[p.overlay].inLocal(dst) {
		return nil, reasonWrongDestination
	}
	return p, reasonNone
}
