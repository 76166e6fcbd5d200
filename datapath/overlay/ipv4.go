package overlay

import (
	"encoding/binary"
	"math/bits"
)

// IPv4 and TCP field offsets and limits used by the parser, the drop rules,
// the segmenter and the coalescer. Everything works on []byte in place: the
// hot path allocates nothing.
const (
	ipv4MinHeader = 20
	ipv4MaxHeader = 60
	tcpMinHeader  = 20
	tcpMaxHeader  = 60
	maxHeader     = ipv4MaxHeader + tcpMaxHeader
	maxIPPacket   = 65535
	protoTCP      = 6
	protoUDP      = 17

	tcpFlagFIN = 0x01
	tcpFlagPSH = 0x08
	tcpFlagACK = 0x10
	tcpFlagCWR = 0x80
)

// ipv4Header checks that pkt starts with a sane IPv4 header and returns the
// header length. exact demands that the datagram is exactly the packet's
// total length (as every packet on the wire must be).
func ipv4Header(pkt []byte, exact bool) (ihl int, r reason) {
	if len(pkt) < 1 {
		return 0, reasonTruncated
	}
	if pkt[0]>>4 != 4 {
		return 0, reasonNotIPv4
	}
	if len(pkt) < ipv4MinHeader {
		return 0, reasonTruncated
	}
	ihl = int(pkt[0]&0x0f) * 4
	if ihl < ipv4MinHeader {
		return 0, reasonMalformed
	}
	tot := int(binary.BigEndian.Uint16(pkt[2:4]))
	if tot < ihl {
		return 0, reasonMalformed
	}
	if exact {
		if tot > len(pkt) {
			return 0, reasonTruncated
		}
		if tot < len(pkt) {
			return 0, reasonMalformed
		}
	} else if len(pkt) < ihl {
		return 0, reasonTruncated
	}
	return ihl, reasonNone
}

func ipv4Src(pkt []byte) uint32 { return binary.BigEndian.Uint32(pkt[12:16]) }
func ipv4Dst(pkt []byte) uint32 { return binary.BigEndian.Uint32(pkt[16:20]) }

// csumAdd adds b to the running one's complement sum s (big-endian 16-bit
// words; an odd trailing byte is padded with zero). Fold with csumFold.
//
// The one's complement sum does not depend on byte order (RFC 1071 §2(B)):
// summing native little-endian words and swapping the folded result saves
// a byte swap per load, about 30% of the time on the 64 KB payloads the
// fast path checksums.
func csumAdd(b []byte, s uint64) uint64 {
	var a, c uint64
	for len(b) >= 64 {
		a, c = bits.Add64(a, binary.LittleEndian.Uint64(b[0:8]), c)
		a, c = bits.Add64(a, binary.LittleEndian.Uint64(b[8:16]), c)
		a, c = bits.Add64(a, binary.LittleEndian.Uint64(b[16:24]), c)
		a, c = bits.Add64(a, binary.LittleEndian.Uint64(b[24:32]), c)
		a, c = bits.Add64(a, binary.LittleEndian.Uint64(b[32:40]), c)
		a, c = bits.Add64(a, binary.LittleEndian.Uint64(b[40:48]), c)
		a, c = bits.Add64(a, binary.LittleEndian.Uint64(b[48:56]), c)
		a, c = bits.Add64(a, binary.LittleEndian.Uint64(b[56:64]), c)
		b = b[64:]
	}
	for len(b) >= 8 {
		a, c = bits.Add64(a, binary.LittleEndian.Uint64(b[0:8]), c)
		b = b[8:]
	}
	if len(b) >= 4 {
		a, c = bits.Add64(a, uint64(binary.LittleEndian.Uint32(b[0:4])), c)
		b = b[4:]
	}
	if len(b) >= 2 {
		a, c = bits.Add64(a, uint64(binary.LittleEndian.Uint16(b[0:2])), c)
		b = b[2:]
	}
	if len(b) == 1 {
		a, c = bits.Add64(a, uint64(b[0]), c) // the low byte of a little-endian word
	}
	a, c = bits.Add64(a, c, 0)
	return s + uint64(bits.ReverseBytes16(csumFold(a+c)))
}

// csumFold folds a running sum to 16 bits (not inverted).
func csumFold(s uint64) uint16 {
	s = (s >> 32) + (s & 0xffffffff)
	s = (s >> 32) + (s & 0xffffffff)
	s = (s >> 16) + (s & 0xffff)
	s = (s >> 16) + (s & 0xffff)
	s = (s >> 16) + (s & 0xffff)
	return uint16(s)
}

// pseudoSum is the running sum of the IPv4 pseudo-header for proto and the
// transport length l.
func pseudoSum(pkt []byte, proto uint8, l int) uint64 {
	s := uint64(binary.BigEndian.Uint32(pkt[12:16])) + uint64(binary.BigEndian.Uint32(pkt[16:20]))
	return s + uint64(proto) + uint64(l)
}

// setIPv4Checksum recomputes the header checksum of the IPv4 header hdr.
func setIPv4Checksum(hdr []byte) {
	hdr[10], hdr[11] = 0, 0
	binary.BigEndian.PutUint16(hdr[10:12], ^csumFold(csumAdd(hdr, 0)))
}

// ipv4ChecksumOK reports whether the IPv4 header hdr carries a valid checksum.
func ipv4ChecksumOK(hdr []byte) bool { return csumFold(csumAdd(hdr, 0)) == 0xffff }

// ipv4TotalLen is the total length field of an IPv4 packet.
func ipv4TotalLen(pkt []byte) int { return int(binary.BigEndian.Uint16(pkt[2:4])) }
