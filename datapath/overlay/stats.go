package overlay

import (
	"net/netip"
	"sync/atomic"
	"time"
)

// reason is why a packet was dropped.
type reason uint8

const (
	reasonNone reason = iota
	reasonNoRoute
	reasonCrossOverlay
	reasonUnknownPeer
	reasonSpoofedSource
	reasonWrongDestination
	reasonTruncated
	reasonNotIPv4
	reasonMalformed
	reasonOversize
	reasonSendError
	reasonTUNWriteError
	numReasons
)

// Drop reasons as they appear in Stats.Drops (and as metric labels).
const (
	DropNoRoute          = "no_route"          // outbound: no peer holds the destination
	DropCrossOverlay     = "cross_overlay"     // outbound: source and destination in different overlays
	DropUnknownPeer      = "unknown_peer"      // inbound: sender holds no lease
	DropSpoofedSource    = "spoofed_source"    // inbound: inner source outside the sender's lease
	DropWrongDestination = "wrong_destination" // inbound: inner destination not in this host's lease of that overlay
	DropTruncated        = "truncated"         // shorter than its headers or its IPv4 total length
	DropNotIPv4          = "not_ipv4"          // IP version is not 4
	DropMalformed        = "malformed"         // inconsistent headers
	DropOversize         = "oversize"          // packet (or segment) larger than the TUN MTU
	DropSendError        = "send_error"        // the UDP socket refused the datagram
	DropTUNWriteError    = "tun_write_error"   // the TUN refused the packet
)

var reasonNames = [numReasons]string{
	"", DropNoRoute, DropCrossOverlay, DropUnknownPeer, DropSpoofedSource, DropWrongDestination,
	DropTruncated, DropNotIPv4, DropMalformed, DropOversize, DropSendError, DropTUNWriteError,
}

func (r reason) String() string { return reasonNames[r] }

// counters are the forwarder's global counters, updated atomically by the
// two loops and read by Stats.
type counters struct {
	drops                [numReasons]atomic.Uint64
	packetsOut, bytesOut atomic.Uint64 // datagrams sent to peers
	packetsIn, bytesIn   atomic.Uint64 // packets written to the TUN
	tunReads, udpSends   atomic.Uint64 // system calls, for the batching ratio
	tunReadsAfterWrite   atomic.Uint64 // of tunReads, those the inbound loop made (outbound.poll)
	busySpells           atomic.Uint64 // busy polling spells started
	udpRecvs, tunWrites  atomic.Uint64
	unreachables         atomic.Uint64 // ICMP net unreachable sent back for no_route drops
}

func (c *counters) drop(r reason, n uint64) { c.drops[r].Add(n) }

// Stats is a snapshot of the forwarder's counters.
type Stats struct {
	// Path is the active datapath: "offload" (TUN TSO/GRO and UDP GSO/GRO),
	// "plain" (one packet per TUN read/write), or "partial" when only some
	// offloads were accepted; TUNOffload, UDPGSO and UDPGRO say which.
	Path                       string
	TUNOffload, UDPGSO, UDPGRO bool
	PacketsOut, BytesOut       uint64            // datagrams and bytes sent to peers
	PacketsIn, BytesIn         uint64            // packets and bytes delivered to the TUN
	TUNReads, UDPSends         uint64            // system calls on the outbound side
	TUNReadsAfterWrite         uint64            // of TUNReads, packets the inbound loop forwarded right after its TUN write
	UDPRecvs, TUNWrites        uint64            // system calls on the inbound side
	UnreachablesSent           uint64            // ICMP net unreachable sent back for no_route drops
	BusyPollSpells             uint64            // busy polling spells started (Config.BusyPoll)
	Drops                      map[string]uint64 // packets dropped, by reason (every reason present)
	Peers                      []PeerStats
}

// PeerStats are the counters of one peer lease.
type PeerStats struct {
	Subnet     netip.Prefix
	Addr       netip.AddrPort
	PacketsIn  uint64 // accepted from the peer
	BytesIn    uint64
	PacketsOut uint64 // sent to the peer
	BytesOut   uint64
	LastSeen   time.Time // zero when nothing was received yet
}
