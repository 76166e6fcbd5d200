package overlay

import (
	"encoding/binary"

	"github.com/twill-net/twill/internal/csum"
	"github.com/twill-net/twill/internal/tundev"
)

// virtio_net_hdr, which precedes every packet on a TUN opened with
// IFF_VNET_HDR (internal/tundev).
const (
	vnetHdrLen       = tundev.VnetHdrLen
	vnetFlagNeedCsum = tundev.VnetNeedsCsum
	vnetGSONone      = tundev.VnetGSONone
	vnetGSOTCPv4     = tundev.VnetGSOTCPv4
	vnetGSOECN       = tundev.VnetGSOECN
)

// Limits of one UDP GSO send: the kernel caps the train at 64 segments
// (UDP_MAX_SEGMENTS before 6.9) and one IPv4 datagram's payload.
const (
	maxGSOSegments = 64
	maxGSOBytes    = 65507
	// maxSegments bounds how many segments one super-packet may split into
	// (64 KB at an MSS of 64); more is dropped as malformed.
	maxSegments = 1024
)

type vnetHdr struct {
	flags, gsoType                         uint8
	hdrLen, gsoSize, csumStart, csumOffset uint16
}

func parseVnetHdr(b []byte) vnetHdr {
	return vnetHdr{
		flags:      b[0],
		gsoType:    b[1],
		hdrLen:     binary.LittleEndian.Uint16(b[2:4]),
		gsoSize:    binary.LittleEndian.Uint16(b[4:6]),
		csumStart:  binary.LittleEndian.Uint16(b[6:8]),
		csumOffset: binary.LittleEndian.Uint16(b[8:10]),
	}
}

func (h vnetHdr) put(b []byte) {
	b[0], b[1] = h.flags, h.gsoType
	binary.LittleEndian.PutUint16(b[2:4], h.hdrLen)
	binary.LittleEndian.PutUint16(b[4:6], h.gsoSize)
	binary.LittleEndian.PutUint16(b[6:8], h.csumStart)
	binary.LittleEndian.PutUint16(b[8:10], h.csumOffset)
}

// completeChecksum finishes a partial (CHECKSUM_PARTIAL) checksum: the
// field at start+off holds the pseudo-header sum, the rest of the packet
// from start on is summed over it. Small packets the kernel hands to a TUN
// with TUN_F_CSUM (ACKs, UDP) come this way and would be dropped by the
// receiver unless completed.
func completeChecksum(pkt []byte, start, off int) reason {
	if start < ipv4MinHeader || start+off+2 > len(pkt) {
		return reasonMalformed
	}
	c := ^csum.Fold(csum.Add(pkt[start:], 0))
	if c == 0 {
		c = 0xffff // a zero UDP checksum means "none"; for TCP both are the same
	}
	binary.BigEndian.PutUint16(pkt[start+off:], c)
	return reasonNone
}

// tcpHeaderLen returns the IPv4 header length and the IPv4+TCP header length
// of pkt, or a drop reason when pkt is not a complete IPv4/TCP header.
func tcpHeaderLen(pkt []byte) (ihl, hl int, r reason) {
	if len(pkt) < ipv4MinHeader || pkt[0]>>4 != 4 {
		return 0, 0, reasonMalformed
	}
	ihl = int(pkt[0]&0x0f) * 4
	if ihl < ipv4MinHeader || pkt[9] != protoTCP || len(pkt) < ihl+tcpMinHeader {
		return 0, 0, reasonMalformed
	}
	thl := int(pkt[ihl+12]>>4) * 4
	if thl < tcpMinHeader || len(pkt) < ihl+thl {
		return 0, 0, reasonMalformed
	}
	return ihl, ihl + thl, reasonNone
}

// segmentTCPv4 splits the TSO super-packet pkt (IPv4+TCP, no vnet header)
// into segments of at most mss payload bytes, the way the kernel's GSO
// would. Segment i gets a complete header (total length, IP id + i, IP
// checksum, seq + i*mss, FIN/PSH only on the last, CWR only on the first,
// TCP checksum) written into hdrs[i*maxHeader:]; bufs[2i] is that header and
// bufs[2i+1] the segment's payload, left in place in pkt. It returns the
// number of segments and the length of one full segment (header + mss).
func segmentTCPv4(pkt []byte, mss int, hdrs []byte, bufs [][]byte) (n, segLen int, r reason) {
	ihl, hl, r := tcpHeaderLen(pkt)
	if r != reasonNone {
		return 0, 0, r
	}
	payload := pkt[hl:]
	if mss <= 0 || len(payload) == 0 {
		return 0, 0, reasonMalformed
	}
	n = (len(payload) + mss - 1) / mss
	if n > maxSegments || n*maxHeader > len(hdrs) || 2*n > len(bufs) {
		return 0, 0, reasonMalformed
	}
	for i := 0; i < n; i++ {
		h := hdrs[i*maxHeader : i*maxHeader+hl]
		p := payload[i*mss:]
		if len(p) > mss {
			p = p[:mss]
		}
		tundev.Segment(h, pkt[:hl], ihl, p, i, n-1, mss)
		bufs[2*i] = h
		bufs[2*i+1] = p
	}
	return n, hl + mss, reasonNone
}
