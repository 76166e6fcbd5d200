// Package csumtest is the Internet checksum the slow, obvious way, for
// tests to check the fast code in internal/csum and its users against.
package csumtest

// Sum is RFC 1071's one's complement sum, folded but not inverted, of s
// and the bytes of parts taken as one run, one big-endian 16-bit word at a
// time (an odd last byte padded with zero). A packet whose checksum field
// is right sums to 0xffff.
func Sum(s uint64, parts ...[]byte) uint16 {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	for ; len(b) >= 2; b = b[2:] {
		s += uint64(b[0])<<8 | uint64(b[1])
	}
	if len(b) == 1 {
		s += uint64(b[0]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}
