package overlay

import "github.com/twill-net/twill/internal/tundev"

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

// segmentTCPv4 splits the TSO super-packet pkt (IPv4+TCP, no vnet header)
// into segments of at most mss payload bytes, the way the kernel's GSO
// would. Segment i gets a complete header (total length, IP id + i, IP
// checksum, seq + i*mss, FIN/PSH only on the last, CWR only on the first,
// TCP checksum) written into hdrs[i*maxHeader:]; bufs[2i] is that header and
// bufs[2i+1] the segment's payload, left in place in pkt. It returns the
// number of segments and the length of one full segment (header + mss).
func segmentTCPv4(pkt []byte, mss int, hdrs []byte, bufs [][]byte) (n, segLen int, r reason) {
	ihl, hl, ok := tundev.TCPHeaderLen(pkt)
	if !ok {
		return 0, 0, reasonMalformed
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
