package overlay

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/twill-net/twill/internal/csum"
	"github.com/twill-net/twill/internal/tundev"
)

// TCP fields the tests build and check packets with.
const (
	protoTCP = 6

	tcpFlagFIN = 0x01
	tcpFlagPSH = 0x08
	tcpFlagACK = 0x10
	tcpFlagCWR = 0x80
)

// Packet builders for tests. Every packet they make carries valid checksums.

func ip4(s string) netip.Addr    { return netip.MustParseAddr(s) }
func pfx(s string) netip.Prefix  { return netip.MustParsePrefix(s) }
func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// mkIPv4 builds an IPv4 packet with proto and the transport bytes l4.
func mkIPv4(src, dst string, proto uint8, l4 []byte) []byte {
	p := make([]byte, 20+len(l4))
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:4], uint16(len(p)))
	binary.BigEndian.PutUint16(p[4:6], 0x1234)
	p[6] = 0x40 // DF
	p[8] = 64
	p[9] = proto
	s, d := ip4(src).As4(), ip4(dst).As4()
	copy(p[12:16], s[:])
	copy(p[16:20], d[:])
	copy(p[20:], l4)
	csum.SetIPv4(p[:20])
	return p
}

// mkUDP builds an IPv4/UDP packet.
func mkUDP(src, dst string, payload []byte) []byte {
	u := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(u[0:2], 4000)
	binary.BigEndian.PutUint16(u[2:4], 5000)
	binary.BigEndian.PutUint16(u[4:6], uint16(len(u)))
	copy(u[8:], payload)
	p := mkIPv4(src, dst, protoUDP, u)
	c := ^csum.Fold(csum.Add(p[20:], csum.Pseudo(p, protoUDP, len(u))))
	binary.BigEndian.PutUint16(p[26:28], c)
	return p
}

// mkTCP builds an IPv4/TCP packet with a 12-byte timestamp-like option.
func mkTCP(src, dst string, seq, ack uint32, flags uint8, payload []byte) []byte {
	t := make([]byte, 32+len(payload))
	binary.BigEndian.PutUint16(t[0:2], 40000)
	binary.BigEndian.PutUint16(t[2:4], 5201)
	binary.BigEndian.PutUint32(t[4:8], seq)
	binary.BigEndian.PutUint32(t[8:12], ack)
	t[12] = 8 << 4
	t[13] = flags
	binary.BigEndian.PutUint16(t[14:16], 502)
	copy(t[20:32], []byte{1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2})
	copy(t[32:], payload)
	p := mkIPv4(src, dst, protoTCP, t)
	fixTCPChecksum(p)
	return p
}

func fixTCPChecksum(p []byte) {
	ihl := int(p[0]&0xf) * 4
	p[ihl+16], p[ihl+17] = 0, 0
	c := ^csum.Fold(csum.Add(p[ihl:], csum.Pseudo(p, protoTCP, len(p)-ihl)))
	binary.BigEndian.PutUint16(p[ihl+16:], c)
}

// checkTCP fails t unless p is an IPv4/TCP packet with valid checksums and
// a total length equal to len(p).
func checkTCP(t testing.TB, p []byte) {
	t.Helper()
	if _, r := ipv4Header(p, true); r != reasonNone {
		t.Fatalf("bad ipv4 header: %s", r)
	}
	if !ipv4ChecksumOK(p[:20]) {
		t.Fatalf("bad ipv4 checksum")
	}
	ihl := int(p[0]&0xf) * 4
	if csum.Fold(csum.Add(p[ihl:], csum.Pseudo(p, protoTCP, len(p)-ihl))) != 0xffff {
		t.Fatalf("bad tcp checksum")
	}
}

func payloadBytes(n int, seed byte) []byte {
	b := make([]byte, n)
	x := uint32(seed) + 1
	for i := range b {
		x = x*1664525 + 1013904223
		b[i] = byte(x >> 24)
	}
	return b
}

// mkTSO builds a TUN read with a virtio_net_hdr announcing GSO_TCPV4 and a
// TCP super-packet carrying payload, whose checksum field holds only the
// pseudo-header sum (as the kernel hands it over).
func mkTSO(src, dst string, seq uint32, flags uint8, mss int, payload []byte) []byte {
	p := mkTCP(src, dst, seq, 777, flags, payload)
	binary.BigEndian.PutUint16(p[20+16:], csum.Fold(csum.Pseudo(p, protoTCP, len(p)-20)))
	b := make([]byte, vnetHdrLen+len(p))
	tundev.VnetHdr{Flags: vnetFlagNeedCsum, GSOType: vnetGSOTCPv4, HdrLen: 52, GSOSize: uint16(mss), CsumStart: 20, CsumOffset: 16}.Put(b)
	copy(b[vnetHdrLen:], p)
	return b
}

func TestIPv4HeaderReasons(t *testing.T) {
	good := mkUDP("10.96.1.2", "10.96.2.3", []byte("hi"))
	bad := func(f func(p []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	cases := []struct {
		name string
		pkt  []byte
		want reason
	}{
		{"good", good, reasonNone},
		{"empty", nil, reasonTruncated},
		{"ipv6", bad(func(p []byte) []byte { p[0] = 0x60; return p }), reasonNotIPv4},
		{"short header", good[:12], reasonTruncated},
		{"ihl too small", bad(func(p []byte) []byte { p[0] = 0x44; return p }), reasonMalformed},
		{"total length beyond datagram", good[:len(good)-1], reasonTruncated},
		{"trailing bytes", append(append([]byte(nil), good...), 0), reasonMalformed},
		{"total length below header", bad(func(p []byte) []byte { p[2], p[3] = 0, 10; return p }), reasonMalformed},
	}
	for _, c := range cases {
		if _, r := ipv4Header(c.pkt, true); r != c.want {
			t.Errorf("%s: reason %q, want %q", c.name, r, c.want)
		}
	}
}
