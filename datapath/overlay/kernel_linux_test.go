package overlay

import (
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twill-net/twill/internal/testbed"
)

const transferBytes = 200 << 20 // the bar: a sha256-checked 200 MB transfer each way

// TestKernelTransfer runs real forwarders on two hosts and moves traffic
// between their containers: ping (container to container and to the other
// host's twill0 address) and 200 MB TCP both ways with a sha256 check, then
// again with transmit checksum offload off on the container veths (the
// kernel then computes checksums in software, which exposes wrong partial
// checksums). Modes: both hosts on the offload path, both plain, and one
// of each (a plain host behaves like flanneld's udp backend on the wire).
func TestKernelTransfer(t *testing.T) {
	requireKernel(t)
	for _, mode := range []struct {
		name        string
		h1, h2      string
		underlayOff bool          // transmit checksum offload off on the underlay
		busy        time.Duration // Config.BusyPoll
	}{
		{"offload", OffloadAuto, OffloadAuto, false, 0},
		{"plain", OffloadOff, OffloadOff, false, 0},
		{"mixed", OffloadAuto, OffloadOff, false, 0},
		{"underlay-tx-off", OffloadAuto, OffloadAuto, true, 0},
		{"busy-poll", OffloadAuto, OffloadAuto, false, 50 * time.Millisecond},
	} {
		t.Run(mode.name, func(t *testing.T) {
			tp := newTopo(t, 2)
			tp.busy = mode.busy
			if mode.underlayOff {
				for i := 1; i <= 2; i++ {
					testbed.MustIn(t, hostNS(i), "ethtool", "-K", "ul0", "tx", "off")
				}
			}
			f1 := tp.startForwarder(1, mode.h1, 2)
			f2 := tp.startForwarder(2, mode.h2, 1)
			wantPath := map[string]string{OffloadAuto: "offload", OffloadOff: "plain"}
			if f1.path != wantPath[mode.h1] || f2.path != wantPath[mode.h2] {
				t.Fatalf("paths %s/%s", f1.path, f2.path)
			}
			testbed.MustIn(t, containerNS(1), "busybox", "ping", "-c", "3", "-i", "0.2", "-W", "2", containerIP(2))
			testbed.MustIn(t, containerNS(2), "busybox", "ping", "-c", "3", "-i", "0.2", "-W", "2", containerIP(1))
			testbed.MustIn(t, containerNS(1), "busybox", "ping", "-c", "2", "-i", "0.2", "-W", "2", "10.96.2.0")
			testbed.MustIn(t, hostNS(1), "busybox", "ping", "-c", "2", "-i", "0.2", "-W", "2", containerIP(2))
			d12 := tp.transfer(1, 2, transferBytes)
			d21 := tp.transfer(2, 1, transferBytes)
			for i := 1; i <= 2; i++ {
				testbed.MustIn(t, containerNS(i), "ethtool", "-K", "two-e0", "tx", "off")
			}
			o12 := tp.transfer(1, 2, transferBytes)
			o21 := tp.transfer(2, 1, transferBytes)
			t.Logf("200 MB: 1->2 %v, 2->1 %v; tx off: %v, %v", d12, d21, o12, o21)
			tp.checkNoCsumErrors()
			if mode.busy > 0 {
				// Polling while pings keep coming, asleep once they stop.
				fwds := []*testFwd{f1, f2}
				pinging := cpuPercent(fwds, func() {
					testbed.MustIn(t, containerNS(1), "busybox", "ping", "-c", "40", "-i", "0.025", "-W", "2", containerIP(2))
				})
				time.Sleep(3 * mode.busy)
				idle := cpuPercent(fwds, func() { time.Sleep(time.Second) })
				t.Logf("forwarders' CPU: %.0f%% while pinging 40/s, %.0f%% idle", pinging, idle)
				if pinging < 30 || idle > 10 {
					t.Errorf("forwarders' CPU %.0f%% while pinging (want the pollers running), %.0f%% idle (want them asleep)", pinging, idle)
				}
			}
			for i, s := range tp.stopAll() {
				for _, r := range []string{DropNoRoute, DropCrossOverlay, DropUnknownPeer, DropSpoofedSource,
					DropWrongDestination, DropTruncated, DropMalformed, DropOversize, DropSendError, DropTUNWriteError} {
					if s.Drops[r] != 0 {
						t.Errorf("host %d dropped %d packets as %s", i, s.Drops[r], r)
					}
				}
				if len(s.Peers) != 1 || s.Peers[0].PacketsIn == 0 || s.Peers[0].PacketsOut == 0 {
					t.Errorf("host %d peer stats %+v", i, s.Peers)
				}
				// Echo replies and ACKs are queued during the TUN write.
				if s.TUNReadsAfterWrite == 0 {
					t.Errorf("host %d: the inbound loop forwarded no answer after its TUN writes", i)
				}
				// The pings are sparse traffic after quiet: each host polls.
				if mode.busy > 0 && s.BusyPollSpells == 0 {
					t.Errorf("host %d: no busy polling spell", i)
				}
				t.Logf("host %d: path %s, out %d pkts / %d sends, in %d pkts / %d tun writes, %d of %d tun reads after a write, %d busy poll spells",
					i, s.Path, s.PacketsOut, s.UDPSends, s.PacketsIn, s.TUNWrites, s.TUNReadsAfterWrite, s.TUNReads, s.BusyPollSpells)
			}
		})
	}
}

// cpuPercent runs fn and returns the CPU the forwarders used meanwhile, in
// % of one core.
func cpuPercent(fwds []*testFwd, fn func()) float64 {
	c0, t0 := procCPU(fwds), time.Now()
	fn()
	return 100 * (procCPU(fwds) - c0) / time.Since(t0).Seconds()
}

// TestKernelHostile sends UDP to host 1's port from a namespace that holds
// no lease and from a peer forging the inner source or destination:
// nothing reaches the container, and every drop is counted by reason. A
// legitimate packet on the same path does arrive (the check can fail).
func TestKernelHostile(t *testing.T) {
	requireKernel(t)
	for _, mode := range []string{OffloadAuto, OffloadOff} {
		t.Run(mode, func(t *testing.T) { testHostile(t, mode, false) })
	}
	// With the kernel datapath the programs drop and count the forged
	// datagrams; the oversize one (IP-fragmented on the underlay) is left
	// to the TUN path, which drops it as before.
	t.Run("kernel", func(t *testing.T) { testHostile(t, OffloadAuto, true) })
}

func testHostile(t *testing.T, mode string, kern bool) {
	tp := newTopo(t, 3) // host 3 runs no forwarder and holds no lease
	tp.kern = kern
	f1 := tp.startForwarder(1, mode, 2)
	sinkOut := filepath.Join(tp.dir, "udpsink")
	sink := testbed.Start(t, containerNS(1), sinkOut+".log",
		[]string{"TWO_HELPER=udpsink", "TWO_LISTEN=" + containerIP(1) + ":5000", "TWO_OUT=" + sinkOut}, os.Args[0], "-test.run=^$")
	waitFile(t, sinkOut+".ready", sink)
	snmpBefore := snmp(t, containerNS(1))

	send := func(ns, from string, pkts ...[]byte) {
		t.Helper()
		var list []string
		for _, p := range pkts {
			list = append(list, hex.EncodeToString(p))
		}
		b, _ := json.Marshal(list)
		if out, err := testbed.In(ns, "env", "TWO_HELPER=udpsend", "TWO_FROM="+from, "TWO_TO="+underlayIP(1)+":8285",
			"TWO_PACKETS="+string(b), os.Args[0], "-test.run=^$"); err != nil {
			t.Fatalf("udpsend: %v %s", err, out)
		}
	}
	to := containerIP(1)
	// No lease: host 3 sends well-formed packets, also claiming host 2's and its own would-be subnet.
	send(hostNS(3), underlayIP(3)+":0",
		mkUDP("10.96.3.2", to, []byte("stranger")),
		mkUDP("10.96.2.2", to, []byte("stranger as 2")),
		mkUDP("10.96.3.2", to, []byte("stranger again")))
	// Peer 2 forges sources: another host's subnet, host 1's own subnet, outside the overlay.
	send(hostNS(2), underlayIP(2)+":0",
		mkUDP("10.96.3.2", to, []byte("forged")),
		mkUDP("10.96.1.9", to, []byte("forged own")),
		mkUDP("192.168.7.7", to, []byte("forged outside")))
	// Peer 2 with its own source but a destination not on host 1, and junk.
	send(hostNS(2), underlayIP(2)+":0",
		mkUDP("10.96.2.2", "10.96.3.2", []byte("wrong dst")),
		mkUDP("10.96.2.2", to, []byte("cut"))[:25],
		[]byte{0x60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
		mkUDP("10.96.2.2", to, make([]byte, 1980))) // above the tunnel MTU (IP-fragmented on the underlay)
	time.Sleep(300 * time.Millisecond)
	if b, _ := os.ReadFile(sinkOut); len(b) != 0 {
		t.Fatalf("hostile traffic reached the container:\n%s", b)
	}
	after := snmp(t, containerNS(1))
	if after["Ip.InReceives"] != snmpBefore["Ip.InReceives"] {
		t.Fatalf("container received %d IP packets", after["Ip.InReceives"]-snmpBefore["Ip.InReceives"])
	}
	// Positive control: the same sender with its own source reaches the container.
	send(hostNS(2), underlayIP(2)+":0", mkUDP("10.96.2.2", to, []byte("legit")))
	if err := testbed.WaitFor(t.Context(), 5*time.Second, func() error {
		if b, _ := os.ReadFile(sinkOut); !strings.Contains(string(b), "legit") {
			return os.ErrNotExist
		}
		return nil
	}); err != nil {
		t.Fatalf("legitimate packet did not arrive; forwarder stats %+v", f1.stop(t))
	}
	s := f1.stop(t)
	want := map[string]uint64{
		DropUnknownPeer: 3, DropSpoofedSource: 3, DropWrongDestination: 1, DropTruncated: 1, DropNotIPv4: 1, DropOversize: 1,
	}
	in := s.PacketsIn
	if kern {
		k := f1.kernel
		for r, n := range want {
			if r != DropOversize && k.Drops[r] != n {
				t.Errorf("kernel drops %s = %d, want %d (all %v)", r, k.Drops[r], n, k.Drops)
			}
			s.Drops[r] += k.Drops[r]
		}
		if k.PassedIn == 0 {
			t.Errorf("kernel passed nothing to the TUN path (the oversize datagram's fragments)")
		}
		for _, p := range k.Peers {
			in += p.PacketsIn
		}
	}
	for r, n := range want {
		if s.Drops[r] != n {
			t.Errorf("drops %s = %d, want %d (all %v)", r, s.Drops[r], n, s.Drops)
		}
	}
	if in != 1 {
		t.Errorf("packets in %d, want 1", in)
	}
}

// TestKernelThreeHosts runs forwarders on three hosts, each holding the
// other two as peers, and pings every container and twill0 address from
// every container; then host 3's forwarder stops and its subnet becomes
// unreachable while hosts 1 and 2 still reach each other.
func TestKernelThreeHosts(t *testing.T) {
	tp := newTopo(t, 3)
	tp.startForwarder(1, OffloadAuto, 2, 3)
	tp.startForwarder(2, OffloadAuto, 1, 3)
	f3 := tp.startForwarder(3, OffloadOff, 1, 2)
	for from := 1; from <= 3; from++ {
		for to := 1; to <= 3; to++ {
			if from == to {
				continue
			}
			testbed.MustIn(t, containerNS(from), "busybox", "ping", "-c", "2", "-i", "0.1", "-W", "2", containerIP(to))
			testbed.MustIn(t, containerNS(from), "busybox", "ping", "-c", "1", "-W", "2", strings.TrimSuffix(leaseOf(to), "/24"))
		}
	}
	f3.stop(t)
	if _, err := testbed.In(containerNS(1), "busybox", "ping", "-c", "1", "-W", "1", containerIP(3)); err == nil {
		t.Fatal("host 3's container still answers after its forwarder stopped")
	}
	testbed.MustIn(t, containerNS(1), "busybox", "ping", "-c", "2", "-i", "0.1", "-W", "2", containerIP(2))
	tp.checkNoCsumErrors()
}

// TestKernelStopUnderLoad stops both forwarders in the middle of a bulk
// transfer: shutdown must finish promptly and delete twill0.
func TestKernelStopUnderLoad(t *testing.T) {
	requireKernel(t)
	if _, err := exec.LookPath("iperf3"); err != nil {
		t.Skip("needs iperf3")
	}
	for _, mode := range []string{OffloadAuto, OffloadOff} {
		t.Run(mode, func(t *testing.T) {
			tp := newTopo(t, 2)
			f1 := tp.startForwarder(1, mode, 2)
			f2 := tp.startForwarder(2, mode, 1)
			testbed.Start(t, containerNS(2), filepath.Join(tp.dir, "iperf-s.log"), nil, "iperf3", "-s", "-B", containerIP(2))
			var client *testbed.Proc
			testbed.WaitFor(t.Context(), 5*time.Second, func() error {
				client = testbed.Start(t, containerNS(1), filepath.Join(tp.dir, "iperf-c.log"), nil,
					"iperf3", "-c", containerIP(2), "-t", "10", "-P", "2", "--bidir")
				time.Sleep(300 * time.Millisecond)
				if client.Exited() {
					return os.ErrNotExist // server not up yet
				}
				return nil
			})
			time.Sleep(1500 * time.Millisecond)
			start := time.Now()
			s1, s2 := f1.stop(t), f2.stop(t)
			t.Logf("stopped both in %v; out %d/%d packets", time.Since(start), s1.PacketsOut, s2.PacketsOut)
			if s1.PacketsOut == 0 || s2.PacketsOut == 0 {
				t.Fatal("no traffic was flowing when the forwarders stopped")
			}
			for i := 1; i <= 2; i++ {
				if out, err := testbed.In(hostNS(i), "ip", "link", "show", "twill0"); err == nil {
					t.Fatalf("twill0 still exists on host %d: %s", i, out)
				}
			}
		})
	}
}
