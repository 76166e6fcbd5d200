package kernel

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/cilium/ebpf"

	"github.com/twill-net/twill/internal/testbed"
)

// The verdicts the programs return (linux/pkt_cls.h).
const (
	actUnspec   = -1
	actShot     = 2
	actRedirect = 7
)

// openInNetns makes a namespace (prefix "twk", cleaned up) with a veth
// pair standing in for twill0 and the underlay, and opens the datapath
// there. The programs are then driven with BPF_PROG_TEST_RUN.
func openInNetns(t *testing.T) *Datapath {
	t.Helper()
	testbed.RequireRoot(t)
	name, ns := testbed.Netns(t, "twk")
	if out, err := exec.Command("ip", "-n", name, "link", "add", "twk-tun", "type", "veth", "peer", "name", "twk-ul").CombinedOutput(); err != nil {
		t.Fatalf("ip link add: %v %s", err, out)
	}
	var d *Datapath
	var err error
	testbed.InNetns(t, ns, func() {
		d, err = Open(Config{TUN: "twk-tun", Underlay: "twk-ul", LocalIP: netip.MustParseAddr("10.199.0.1"), Port: 8285, MTU: 1472})
		if err == nil {
			err = d.Attach()
		}
	})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { d.Close() })
	must(t, d.AddOverlay(netip.MustParsePrefix("10.96.0.0/16"), netip.MustParsePrefix("10.96.1.0/24")))
	must(t, d.SetPeer(netip.MustParsePrefix("10.96.2.0/24"), netip.MustParseAddrPort("10.199.0.2:8285")))
	must(t, d.SetPeer(netip.MustParsePrefix("10.96.4.0/24"), netip.MustParseAddrPort("10.199.0.4:8285")))
	return d
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// ipv4 builds an IPv4 header (no options, checksum left 0: the programs
// do not verify it) in front of payload.
func ipv4(src, dst string, proto byte, payload []byte) []byte {
	b := make([]byte, 20+len(payload))
	b[0] = 0x45
	binary.BigEndian.PutUint16(b[2:], uint16(len(b)))
	b[8], b[9] = 64, proto
	s, d := netip.MustParseAddr(src).As4(), netip.MustParseAddr(dst).As4()
	copy(b[12:], s[:])
	copy(b[16:], d[:])
	copy(b[20:], payload)
	return b
}

func udp(sport, dport uint16, payload []byte) []byte {
	b := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint16(b[4:], uint16(len(b)))
	copy(b[8:], payload)
	return b
}

// frame is an Ethernet frame carrying a datagram from sender to this host
// (10.199.0.1) on port with inner as its payload.
func frame(sender string, port uint16, inner []byte) []byte {
	eth := make([]byte, 14)
	eth[12], eth[13] = 0x08, 0x00
	return append(eth, ipv4(sender, "10.199.0.1", 17, udp(8285, port, inner))...)
}

func TestDecap(t *testing.T) {
	d := openInNetns(t)
	legit := ipv4("10.96.2.2", "10.96.1.2", 17, udp(4000, 5000, []byte("legit")))
	fragment := frame("10.199.0.2", 8285, legit)
	fragment[14+6] = 0x20 // MF
	trailing := frame("10.199.0.2", 8285, append(append([]byte{}, legit...), 0, 0))
	notIPv4 := append([]byte{0x60}, make([]byte, 39)...)
	for _, c := range []struct {
		name  string
		frame []byte
		want  int32
	}{
		{"legit", frame("10.199.0.2", 8285, legit), actRedirect},
		{"no lease", frame("10.199.0.3", 8285, legit), actShot},
		{"forged source", frame("10.199.0.2", 8285, ipv4("10.96.4.2", "10.96.1.2", 17, udp(1, 2, nil))), actShot},
		{"source outside the overlay", frame("10.199.0.2", 8285, ipv4("192.168.7.7", "10.96.1.2", 17, udp(1, 2, nil))), actShot},
		{"wrong destination", frame("10.199.0.2", 8285, ipv4("10.96.2.2", "10.96.4.2", 17, udp(1, 2, nil))), actShot},
		{"truncated", frame("10.199.0.2", 8285, legit[:30]), actShot},
		{"not ipv4", frame("10.199.0.2", 8285, notIPv4), actShot},
		{"other port", frame("10.199.0.2", 9999, legit), actUnspec},
		{"outer fragment", fragment, actUnspec},
		{"trailing bytes", trailing, actUnspec},
	} {
		out := make([]byte, 2048)
		ret, err := d.objs.TwillDecap.Run(&ebpf.RunOptions{Data: c.frame, DataOut: out})
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if int32(ret) != c.want {
			t.Errorf("%s: verdict %d, want %d", c.name, int32(ret), c.want)
		}
		if c.name == "legit" && string(out[14:14+len(legit)]) != string(legit) {
			t.Errorf("decapsulated packet % x, want % x", out[:14+len(legit)], legit)
		}
	}
	s, err := d.Stats()
	must(t, err)
	want := map[string]uint64{DropUnknownPeer: 1, DropSpoofedSource: 2, DropWrongDestination: 1, DropTruncated: 1, DropNotIPv4: 1, DropMalformed: 0, DropEncapFailed: 0}
	for r, n := range want {
		if s.Drops[r] != n {
			t.Errorf("drops %s = %d, want %d (all %v)", r, s.Drops[r], n, s.Drops)
		}
	}
	if s.PassedIn != 2 {
		t.Errorf("passed in %d, want 2 (fragment, trailing bytes)", s.PassedIn)
	}
	p := s.Peers[netip.MustParsePrefix("10.96.2.0/24")]
	if p.PacketsIn != 1 || p.BytesIn != uint64(len(legit)) || p.LastSeen.IsZero() {
		t.Errorf("peer counters %+v, want one packet of %d bytes", p, len(legit))
	}

	// A peer that left: its datagrams are refused from the next one on,
	// and its counters go with it.
	must(t, d.RemovePeer(netip.MustParsePrefix("10.96.2.0/24")))
	ret, err := d.objs.TwillDecap.Run(&ebpf.RunOptions{Data: frame("10.199.0.2", 8285, legit)})
	must(t, err)
	if int32(ret) != actShot {
		t.Errorf("after the peer left: verdict %d, want %d (dropped)", int32(ret), actShot)
	}
	s, err = d.Stats()
	must(t, err)
	if s.Drops[DropUnknownPeer] != 2 {
		t.Errorf("unknown_peer %d, want 2", s.Drops[DropUnknownPeer])
	}
	if _, ok := s.Peers[netip.MustParsePrefix("10.96.2.0/24")]; ok {
		t.Error("counters of a removed peer are still reported")
	}
	var v twillPeerStats
	if err := d.objs.PeerStats.Lookup(peerID(netip.MustParsePrefix("10.96.2.0/24")), &[]twillPeerStats{v}); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("peer_stats still holds the removed peer: %v", err)
	}
}

// TestEntries checks the peer table's content against the TUN path's rules:
// a peer belongs to the overlay holding its subnet and is unusable when no
// overlay does or when it overlaps this host's own lease.
func TestEntries(t *testing.T) {
	d := &Datapath{
		overlays: map[netip.Prefix]netip.Prefix{netip.MustParsePrefix("10.96.0.0/16"): netip.MustParsePrefix("10.96.1.0/24")},
		peers: map[netip.Prefix]netip.AddrPort{
			netip.MustParsePrefix("10.96.2.0/24"): netip.MustParseAddrPort("10.199.0.2:8285"),
			netip.MustParsePrefix("10.96.1.0/24"): netip.MustParseAddrPort("10.199.0.9:8285"), // this host's lease
			netip.MustParsePrefix("10.97.2.0/24"): netip.MustParseAddrPort("10.199.0.2:8285"), // no overlay of this host
		},
	}
	e, senders := d.entries()
	p := e[netip.MustParsePrefix("10.96.2.0/24")]
	if p.Usable != 1 || p.Ip != be32(netip.MustParseAddr("10.199.0.2")) || p.Port != be16(8285) ||
		p.OvNet != be32(netip.MustParseAddr("10.96.0.0")) || p.OvMask != be32(netip.MustParseAddr("255.255.0.0")) ||
		p.LocalNet != be32(netip.MustParseAddr("10.96.1.0")) || p.LocalMask != be32(netip.MustParseAddr("255.255.255.0")) {
		t.Errorf("peer 10.96.2.0/24: %+v", p)
	}
	if e[netip.MustParsePrefix("10.96.1.0/24")].Usable != 0 || e[netip.MustParsePrefix("10.97.2.0/24")].Usable != 0 {
		t.Errorf("unusable peers marked usable: %+v", e)
	}
	if senders[netip.MustParseAddr("10.199.0.2")] != 2 || senders[netip.MustParseAddr("10.199.0.9")] != 1 {
		t.Errorf("senders %v", senders)
	}
	b := make([]byte, 4)
	binary.NativeEndian.PutUint32(b, be32(netip.MustParseAddr("10.1.2.3")))
	if b[0] != 10 || b[3] != 3 {
		t.Errorf("be32 bytes % x, want network order", b)
	}
}

// TestDropNames keeps the kernel's reason names the TUN path's.
func TestDropNames(t *testing.T) {
	for c := twillCounter(0); c < twillCounterPASS_OUT; c++ {
		if dropNames[c] == "" {
			t.Errorf("counter %d has no name", c)
		}
	}
}

// TestUnsuitable: a veth underlay with transmit checksum offload on hands
// packets on unfinished, so auto must not choose the kernel path there;
// with it off (segmenting and checksumming like a NIC) nothing speaks against it.
func TestUnsuitable(t *testing.T) {
	testbed.RequireRoot(t)
	name, ns := testbed.Netns(t, "twk")
	if out, err := exec.Command("ip", "-n", name, "link", "add", "twk-a", "type", "veth", "peer", "name", "twk-b").CombinedOutput(); err != nil {
		t.Fatalf("ip link add: %v %s", err, out)
	}
	in := func() (why string) {
		testbed.InNetns(t, ns, func() { why = Unsuitable("twk-a") })
		return why
	}
	if why := in(); !strings.Contains(why, "checksum offload") {
		t.Errorf("veth with tx on: %q, want the checksum offload reason", why)
	}
	if out, err := exec.Command("ip", "netns", "exec", name, "ethtool", "-K", "twk-a", "tx", "off").CombinedOutput(); err != nil {
		t.Fatalf("ethtool: %v %s", err, out)
	}
	if why := in(); why != "" {
		t.Errorf("veth with tx off: %q, want no reason", why)
	}
}
