package tundev

import (
	"encoding/binary"
	"testing"

	"github.com/twill-net/twill/internal/csum/csumtest"
)

func TestSegment(t *testing.T) {
	// A super-packet's headers: IPv4 (ID about to wrap) and TCP with a
	// 12-byte option (sequence number about to wrap), ACK|PSH|FIN|CWR.
	tmpl := make([]byte, 20+32)
	tmpl[0], tmpl[8], tmpl[9] = 0x45, 64, 6
	binary.BigEndian.PutUint16(tmpl[4:], 0xfffe)
	copy(tmpl[12:], []byte{10, 96, 1, 5, 10, 96, 2, 7})
	tcp := tmpl[20:]
	binary.BigEndian.PutUint16(tcp[0:], 40000)
	binary.BigEndian.PutUint16(tcp[2:], 5201)
	binary.BigEndian.PutUint32(tcp[4:], 0xfffffc00)
	tcp[12], tcp[13] = 8<<4, flagACK|flagPSH|flagFIN|flagCWR
	orig := string(tmpl)
	const mss, payload = 1400, 3000
	data := make([]byte, payload)
	for i := range data {
		data[i] = byte(i*7 + 3)
	}
	last := (payload+mss-1)/mss - 1
	for i := 0; i <= last; i++ {
		p := data[i*mss : min(payload, (i+1)*mss)]
		h := make([]byte, len(tmpl))
		Segment(h, tmpl, 20, p, i, last, mss)
		if got := binary.BigEndian.Uint16(h[2:]); int(got) != len(h)+len(p) {
			t.Errorf("segment %d: total length %d, want %d", i, got, len(h)+len(p))
		}
		if got, want := binary.BigEndian.Uint16(h[4:]), uint16(0xfffe+i); got != want {
			t.Errorf("segment %d: IP ID %#x, want %#x", i, got, want)
		}
		if csumtest.Sum(0, h[:20]) != 0xffff {
			t.Errorf("segment %d: IPv4 header checksum wrong", i)
		}
		if got, want := binary.BigEndian.Uint32(h[24:]), uint32(0xfffffc00+i*mss); got != want {
			t.Errorf("segment %d: seq %#x, want %#x", i, got, want)
		}
		want := byte(flagACK)
		if i == 0 {
			want |= flagCWR
		}
		if i == last {
			want |= flagPSH | flagFIN
		}
		if h[33] != want {
			t.Errorf("segment %d: flags %#x, want %#x", i, h[33], want)
		}
		pseudo := make([]byte, 12)
		copy(pseudo, h[12:20])
		pseudo[9] = 6
		binary.BigEndian.PutUint16(pseudo[10:], uint16(len(h)-20+len(p)))
		if csumtest.Sum(0, pseudo, h[20:], p) != 0xffff {
			t.Errorf("segment %d: TCP checksum wrong", i)
		}
		if string(h[38:]) != string(tmpl[38:]) || string(h[8:10]) != string(tmpl[8:10]) || string(h[12:24]) != string(tmpl[12:24]) {
			t.Errorf("segment %d: addresses, ports, TTL, protocol or options changed", i)
		}
	}
	if string(tmpl) != string(orig) {
		t.Error("the template was written to")
	}
}
