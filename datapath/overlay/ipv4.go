package overlay

import (
	"encoding/binary"

	"github.com/twill-net/twill/internal/csum"
)

// IPv4 and TCP limits used by the parser, the drop rules and the
// segmenter. Everything works on []byte in place: the hot path allocates
// nothing.
const (
	ipv4MinHeader = 20
	ipv4MaxHeader = 60
	tcpMaxHeader  = 60
	maxHeader     = ipv4MaxHeader + tcpMaxHeader
	maxIPPacket   = 65535
	protoUDP      = 17
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

// ipv4ChecksumOK reports whether the IPv4 header hdr carries a valid checksum.
func ipv4ChecksumOK(hdr []byte) bool { return csum.Fold(csum.Add(hdr, 0)) == 0xffff }

// ipv4TotalLen is the total length field of an IPv4 packet.
func ipv4TotalLen(pkt []byte) int { return int(binary.BigEndian.Uint16(pkt[2:4])) }
