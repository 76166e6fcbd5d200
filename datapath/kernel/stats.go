package kernel

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Stats are the programs' counters, summed over CPUs.
type Stats struct {
	Drops      map[string]uint64 // by reason: the TUN path's names (Drop*) and DropEncapFailed
	PassedOut  uint64            // outbound packets left to the TUN path
	PassedIn   uint64            // inbound datagrams left to the TUN path
	RefusedOut uint64            // of PassedOut, refused by bpf_skb_adjust_room
	RefusedIn  uint64            // of PassedIn, refused by bpf_skb_adjust_room
	Peers      map[netip.Prefix]PeerStats
}

// PeerStats are one peer's counters in the kernel.
type PeerStats struct {
	PacketsIn, BytesIn   uint64
	PacketsOut, BytesOut uint64
	LastSeen             time.Time // zero when nothing was received
}

// Drop reasons, named as the TUN path's (datapath/overlay's Drop*
// constants; a test keeps them equal), plus the kernel's own.
const (
	DropUnknownPeer      = "unknown_peer"
	DropSpoofedSource    = "spoofed_source"
	DropWrongDestination = "wrong_destination"
	DropTruncated        = "truncated"
	DropNotIPv4          = "not_ipv4"
	DropMalformed        = "malformed"
)

// DropEncapFailed counts packets encapsulated but not sent on (the kernel
// ran out of memory for the link-layer header).
const DropEncapFailed = "encap_failed"

var dropNames = map[twillCounter]string{
	twillCounterDROP_UNKNOWN_PEER:      DropUnknownPeer,
	twillCounterDROP_SPOOFED_SOURCE:    DropSpoofedSource,
	twillCounterDROP_WRONG_DESTINATION: DropWrongDestination,
	twillCounterDROP_TRUNCATED:         DropTruncated,
	twillCounterDROP_NOT_IPV4:          DropNotIPv4,
	twillCounterDROP_MALFORMED:         DropMalformed,
	twillCounterDROP_ENCAP_FAILED:      DropEncapFailed,
}

// Stats reads the counters.
func (d *Datapath) Stats() (Stats, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return Stats{}, errClosed
	}
	s := Stats{Drops: map[string]uint64{}, Peers: map[netip.Prefix]PeerStats{}}
	var vals []uint64
	for c := twillCounter(0); c < twillCounterNUM_COUNTERS; c++ {
		if err := d.objs.Stats.Lookup(c, &vals); err != nil {
			return Stats{}, fmt.Errorf("kernel datapath: reading counter %d: %w", c, err)
		}
		var sum uint64
		for _, v := range vals {
			sum += v
		}
		switch c {
		case twillCounterPASS_OUT:
			s.PassedOut = sum
		case twillCounterPASS_IN:
			s.PassedIn = sum
		case twillCounterREFUSED_OUT:
			s.RefusedOut = sum
		case twillCounterREFUSED_IN:
			s.RefusedIn = sum
		default:
			s.Drops[dropNames[c]] = sum
		}
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return Stats{}, fmt.Errorf("kernel datapath: boot time clock: %w", err)
	}
	now, boot := time.Now(), ts.Nano()
	var per []twillPeerStats
	for sn := range d.peers {
		err := d.objs.PeerStats.Lookup(peerID(sn), &per)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			continue
		}
		if err != nil {
			return Stats{}, fmt.Errorf("kernel datapath: counters of %s: %w", sn, err)
		}
		var p PeerStats
		var last uint64
		for _, v := range per {
			p.PacketsIn += v.PacketsIn
			p.BytesIn += v.BytesIn
			p.PacketsOut += v.PacketsOut
			p.BytesOut += v.BytesOut
			last = max(last, v.LastSeen)
		}
		if last != 0 {
			p.LastSeen = now.Add(-time.Duration(boot - int64(last)))
		}
		s.Peers[sn] = p
	}
	return s, nil
}
