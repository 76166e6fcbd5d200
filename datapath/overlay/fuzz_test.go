package overlay

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/twill-net/twill/internal/tundev"
)

// FuzzInbound feeds arbitrary datagrams (optionally as a GRO train) from a
// peer or a stranger through the inbound rules. Whatever reaches the TUN
// must have come from the peer, with an inner source in the peer's lease
// and an inner destination in this host's lease, and be well formed.
func FuzzInbound(f *testing.F) {
	f.Add(mkUDP("10.96.2.7", "10.96.1.5", []byte("hello")), true, uint16(0), true)
	f.Add(mkUDP("10.96.3.7", "10.96.1.5", []byte("spoof")), true, uint16(0), false)
	f.Add(groMessage(3, 100).Buffers[0], true, uint16(152), true)
	f.Add([]byte{0x45, 0, 0, 20}, false, uint16(0), false)
	// One forwarder per mode, reused: building one allocates megabytes of buffers.
	var got [][]byte
	record := func(bufs [][]byte) {
		var p []byte
		for _, b := range bufs {
			p = append(p, b...)
		}
		got = append(got, p)
	}
	ins := map[bool]*inbound{}
	for _, vnet := range []bool{false, true} {
		hf := hotForwarder(f, &nullTUN{vnet: vnet, written: record}, &nullConn{offload: vnet})
		ins[vnet] = newInbound(hf, newOutbound(hf))
	}
	f.Fuzz(func(t *testing.T, data []byte, fromPeer bool, seg uint16, vnet bool) {
		got = got[:0]
		in := ins[vnet]
		fw := in.f
		from := ap("192.0.2.9:8285")
		if fromPeer {
			from = ap("192.0.2.2:8285")
		}
		in.handle([]Message{{Buffers: [][]byte{data}, N: len(data), Addr: from, Segment: int(seg)}})
		for _, p := range got {
			if !fromPeer {
				t.Fatalf("a stranger's packet reached the tun")
			}
			if vnet {
				h := tundev.ParseVnetHdr(p)
				p = p[vnetHdrLen:]
				if h.GSOType == vnetGSOTCPv4 && int(h.GSOSize)+int(h.HdrLen) > fw.cfg.MTU {
					t.Fatalf("merged segments larger than the mtu: %+v", h)
				}
			}
			if _, r := ipv4Header(p, true); r != reasonNone {
				t.Fatalf("malformed packet reached the tun: %s", r)
			}
			if src := u32Addr(ipv4Src(p)); !pfx("10.96.2.0/24").Contains(src) {
				t.Fatalf("inner source %s outside the peer's lease", src)
			}
			if dst := u32Addr(ipv4Dst(p)); !pfx("10.96.1.0/24").Contains(dst) {
				t.Fatalf("inner destination %s outside this host's lease", dst)
			}
		}
	})
}

// FuzzOutbound feeds arbitrary TUN reads (with a virtio_net_hdr when vnet)
// through the outbound rules and the segmenter. Every datagram sent must be
// one well-formed IPv4 packet no larger than the MTU, addressed to the peer
// holding its destination, with its source in the same overlay.
func FuzzOutbound(f *testing.F) {
	tso := mkTSO("10.96.1.5", "10.96.2.7", 1, tcpFlagACK, 1400, payloadBytes(5000, 1))
	f.Add(tso, true)
	f.Add(tso[vnetHdrLen:], false)
	f.Add(mkUDP("10.96.1.5", "10.96.2.7", []byte("x")), false)
	f.Add(mkUDP("10.97.1.5", "10.96.2.7", []byte("x")), false)
	var (
		sent    [][]byte
		wrongTo bool
	)
	record := func(m *Message) {
		if m.Addr != ap("192.0.2.2:8285") {
			wrongTo = true
		}
		var p []byte
		for _, b := range m.Buffers {
			p = append(p, b...)
		}
		seg := m.Segment
		if seg == 0 {
			seg = len(p)
		}
		for off := 0; off < len(p); off += seg {
			sent = append(sent, p[off:min(off+seg, len(p))])
		}
	}
	outs := map[bool]*outbound{}
	for _, vnet := range []bool{false, true} {
		outs[vnet] = newOutbound(hotForwarder(f, &nullTUN{vnet: vnet}, &nullConn{offload: vnet, sent: record}))
	}
	f.Fuzz(func(t *testing.T, data []byte, vnet bool) {
		if len(data) > vnetHdrLen+maxIPPacket {
			return // a TUN read is never longer
		}
		sent, wrongTo = sent[:0], false
		o := outs[vnet]
		fw := o.f
		o.handle(append([]byte(nil), data...))
		if wrongTo {
			t.Fatal("sent to an address that is not the destination's peer")
		}
		for _, p := range sent {
			if len(p) > fw.cfg.MTU {
				t.Fatalf("datagram of %d bytes above the mtu", len(p))
			}
			if _, r := ipv4Header(p, true); r != reasonNone {
				t.Fatalf("malformed datagram sent: %s", r)
			}
			if dst := u32Addr(ipv4Dst(p)); !pfx("10.96.2.0/24").Contains(dst) {
				t.Fatalf("destination %s not the peer's", dst)
			}
			if src := u32Addr(ipv4Src(p)); !pfx("10.96.0.0/16").Contains(src) {
				t.Fatalf("source %s outside the overlay", src)
			}
		}
	})
}

// FuzzSegmentCoalesce cuts a super-packet and merges the segments again:
// the payload must come back byte for byte.
func FuzzSegmentCoalesce(f *testing.F) {
	f.Add(uint16(3000), uint16(1400), uint8(tcpFlagACK))
	f.Add(uint16(1), uint16(1), uint8(tcpFlagACK|tcpFlagPSH))
	f.Fuzz(func(t *testing.T, size, mss uint16, flags uint8) {
		if size == 0 || mss == 0 || int(size)+52 > maxIPPacket {
			return
		}
		payload := payloadBytes(int(size), byte(mss))
		pkt := mkTSO("10.96.1.5", "10.96.2.7", 1, flags, int(mss), payload)[vnetHdrLen:]
		hdrs, bufs := make([]byte, maxSegments*maxHeader), make([][]byte, 2*maxSegments)
		n, _, r := segmentTCPv4(pkt, int(mss), hdrs, bufs)
		if r != reasonNone {
			if (int(size)+int(mss)-1)/int(mss) <= maxSegments {
				t.Fatalf("refused: %s", r)
			}
			return
		}
		var merged []byte
		c := newCoalescer(func(b [][]byte) {
			p := b[1:]
			if len(b) == 2 && tundev.ParseVnetHdr(b[0]) == (tundev.VnetHdr{}) {
				p = [][]byte{b[1][52:]}
			} else {
				p[0] = b[1] // payload of the first segment
			}
			for _, x := range p {
				merged = append(merged, x...)
			}
		})
		for i := 0; i < n; i++ {
			seg := append(append([]byte(nil), bufs[2*i]...), bufs[2*i+1]...)
			checkTCP(t, seg)
			if !c.add(seg) {
				c.flush()
				merged = append(merged, seg[52:]...)
			}
		}
		c.flush()
		if string(merged) != string(payload) {
			t.Fatalf("payload differs after cut and merge (size %d mss %d)", size, mss)
		}
	})
}

// TestWriteFuzzSeeds regenerates the committed corpus under testdata/fuzz
// (TWO_WRITE_SEEDS=1); the seeds are the f.Add cases plus hostile shapes.
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("TWO_WRITE_SEEDS") == "" {
		t.Skip("set TWO_WRITE_SEEDS=1 to regenerate testdata/fuzz")
	}
	write := func(target, name string, vals ...any) {
		dir := filepath.Join("testdata", "fuzz", target)
		must(t, os.MkdirAll(dir, 0o755))
		s := "go test fuzz v1\n"
		for _, v := range vals {
			switch v := v.(type) {
			case []byte:
				s += fmt.Sprintf("[]byte(%q)\n", v)
			case bool:
				s += fmt.Sprintf("bool(%v)\n", v)
			case uint16:
				s += fmt.Sprintf("uint16(%d)\n", v)
			case uint8:
				s += fmt.Sprintf("byte(%q)\n", v)
			}
		}
		must(t, os.WriteFile(filepath.Join(dir, name), []byte(s), 0o644))
	}
	train := groMessage(4, 200).Buffers[0]
	binary.BigEndian.PutUint32(train[252+12:], binary.BigEndian.Uint32(ip4("10.96.3.3").AsSlice())) // one spoofed segment
	write("FuzzInbound", "spoofed-in-train", train, true, uint16(252), true)
	write("FuzzInbound", "wrong-destination", mkUDP("10.96.2.7", "10.96.5.5", nil), true, uint16(0), false)
	write("FuzzInbound", "options-and-fragment", mkIPv4("10.96.2.7", "10.96.1.5", protoTCP, make([]byte, 40)), true, uint16(0), true)
	write("FuzzInbound", "segment-larger-than-datagram", mkUDP("10.96.2.7", "10.96.1.5", nil), true, uint16(9000), true)
	bad := mkTSO("10.96.1.5", "10.96.2.7", 1, tcpFlagACK, 1400, payloadBytes(3000, 2))
	bad[4], bad[5] = 0xff, 0xff // gso_size 65535
	write("FuzzOutbound", "huge-gso-size", bad, true)
	partial := append([]byte{1, 0, 0, 0, 0, 0, 20, 0, 200, 0}, mkUDP("10.96.1.5", "10.96.2.7", []byte("x"))...)
	write("FuzzOutbound", "csum-offset-beyond-packet", partial, true)
	write("FuzzOutbound", "cross-overlay", mkUDP("10.97.1.5", "10.96.2.7", nil), false)
	write("FuzzSegmentCoalesce", "tiny-mss", uint16(65000), uint16(64), uint8(tcpFlagACK))
}
