package overlay

import (
	"encoding/binary"
	"time"

	"github.com/twill-net/twill/internal/csum"
)

// ICMP "destination net unreachable" for packets to a subnet no host holds.
// flanneld's udp backend answers them the same way, so a connection to a
// host that left fails at once ("Network is unreachable") instead of timing
// out. The packet is still counted as a no_route drop.
const (
	protoICMP         = 1
	icmpDestUnreach   = 3
	icmpNetUnreach    = 0
	icmpQuote         = 8                       // payload bytes quoted after the offender's IP header
	icmpMaxLen        = 20 + 8 + 60 + icmpQuote // our IP header, ICMP header, quoted header and payload
	unreachablePerSec = 100                     // rate limit, like the kernel's icmp_ratelimit
	unreachableBurst  = 50
)

// unreachable answers pkt (read from the TUN, destination dst in no peer's
// subnet) with an ICMP net unreachable. It does not answer ICMP errors
// (RFC 1122 3.2.2), later fragments, or packets to addresses outside every
// overlay (the source is inside one: table.outbound checked it), and sends
// at most unreachablePerSec a second.
func (o *outbound) unreachable(t *table, pkt []byte, ihl int) {
	src, dst := ipv4Src(pkt), ipv4Dst(pkt)
	ov := t.overlayOf(dst)
	if ov < 0 {
		return // outside every overlay (multicast, broadcast, ...): nothing to say
	}
	// The answer comes from the unreachable subnet's first address (where
	// its host's twill0 was), not from this host's own twill0: the kernel
	// drops a packet arriving on twill0 from one of its own addresses as a
	// martian.
	e := &t.overlays[ov]
	from := dst & e.localMask
	if from == e.localNet {
		return // our own lease routed back into the TUN: nothing sensible to say
	}
	if binary.BigEndian.Uint16(pkt[6:8])&0x1fff != 0 {
		return // not the first fragment
	}
	if pkt[9] == protoICMP {
		if len(pkt) <= ihl {
			return
		}
		if typ := pkt[ihl]; typ != 8 && typ != 13 { // only echo and timestamp requests get an answer
			return
		}
	}
	if !o.unreachTokens.take(time.Now().UnixNano()) {
		return
	}
	quoted := pkt[:min(len(pkt), ihl+icmpQuote)]
	n := 20 + 8 + len(quoted)
	b := o.icmp[:n]
	clear(b[:28])
	b[0], b[1] = 0x45, 0xc0 // IPv4, 20-byte header; precedence "internetwork control", as the kernel's ICMP errors
	binary.BigEndian.PutUint16(b[2:4], uint16(n))
	b[8], b[9] = 64, protoICMP
	binary.BigEndian.PutUint32(b[12:16], from)
	binary.BigEndian.PutUint32(b[16:20], src)
	csum.SetIPv4(b[:20])
	b[20], b[21] = icmpDestUnreach, icmpNetUnreach
	copy(b[28:], quoted)
	binary.BigEndian.PutUint16(b[22:24], ^csum.Fold(csum.Add(b[20:n], 0)))
	if err := o.f.writeTUN(o.reply.of(b)); err != nil {
		o.f.ctr.drop(reasonTUNWriteError, 1)
		return
	}
	o.f.ctr.unreachables.Add(1)
}

// tokens is a token bucket refilled at unreachablePerSec, used by one
// goroutine only.
type tokens struct {
	n    float64
	last int64 // ns
}

func (b *tokens) take(now int64) bool {
	if b.last == 0 {
		b.n = unreachableBurst
	} else {
		b.n = min(unreachableBurst, b.n+float64(now-b.last)*unreachablePerSec/1e9)
	}
	b.last = now
	if b.n < 1 {
		return false
	}
	b.n--
	return true
}
