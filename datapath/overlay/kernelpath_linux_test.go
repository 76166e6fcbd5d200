package overlay

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twill-net/twill/datapath/kernel"
	"github.com/twill-net/twill/internal/testbed"
)

// TestKernelPathTransfer runs forwarders with the kernel datapath
// (datapath/kernel) attached on host 1, and on host 2 either the kernel
// datapath too or only the TUN path (offload, or plain as flanneld's udp
// backend puts it on the wire): pings and 200 MB sha256-checked transfers
// both ways, again with transmit checksum offload off in the containers.
// "segmenting" turns the underlay veths' TSO, GSO, tunnel GSO and checksum
// offload off, so every datagram crosses alone as from a real NIC. The
// kernel's per-peer counters must show the traffic, its drop counters none.
func TestKernelPathTransfer(t *testing.T) {
	requireKernel(t)
	for _, mode := range []struct {
		name       string
		h2         string
		h2kernel   bool
		segmenting bool
	}{
		{"kernel-kernel", OffloadAuto, true, false},
		{"kernel-kernel-segmenting", OffloadAuto, true, true},
		// A TUN-path receiver needs finished datagrams: on a veth underlay
		// with offloads on it would get checksums unfinished and TCP
		// super-packets whole (kernel.Unsuitable), so interop runs on the
		// NIC-like rig.
		{"kernel-tun-segmenting", OffloadAuto, false, true},
		{"kernel-plain-segmenting", OffloadOff, false, true},
	} {
		t.Run(mode.name, func(t *testing.T) {
			tp := newTopo(t, 2)
			if mode.segmenting {
				for i := 1; i <= 2; i++ {
					testbed.MustIn(t, hostNS(i), "ethtool", "-K", "ul0", "tso", "off", "gso", "off", "tx-udp_tnl-segmentation", "off", "tx", "off")
				}
			}
			tp.kern = true
			f1 := tp.startForwarder(1, OffloadAuto, 2)
			tp.kern = mode.h2kernel
			f2 := tp.startForwarder(2, mode.h2, 1)
			if f1.path != "kernel+offload" {
				t.Fatalf("host 1 path %s", f1.path)
			}
			testbed.MustIn(t, containerNS(1), "busybox", "ping", "-c", "3", "-i", "0.2", "-W", "2", containerIP(2))
			testbed.MustIn(t, containerNS(2), "busybox", "ping", "-c", "3", "-i", "0.2", "-W", "2", containerIP(1))
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
			st := tp.stopAll()
			for i, f := range map[int]*testFwd{1: f1, 2: f2} {
				s := st[i]
				for _, r := range []string{DropNoRoute, DropCrossOverlay, DropUnknownPeer, DropSpoofedSource,
					DropWrongDestination, DropTruncated, DropMalformed, DropOversize, DropSendError, DropTUNWriteError} {
					if s.Drops[r] != 0 {
						t.Errorf("host %d: TUN path dropped %d packets as %s", i, s.Drops[r], r)
					}
				}
				k := f.kernel
				if k == nil {
					t.Logf("host %d (TUN path only): out %d pkts, in %d pkts", i, s.PacketsOut, s.PacketsIn)
					continue
				}
				for r, n := range k.Drops {
					if n != 0 {
						t.Errorf("host %d: kernel dropped %d packets as %s", i, n, r)
					}
				}
				var ps kernel.PeerStats
				for _, p := range k.Peers {
					ps = p
				}
				if len(k.Peers) != 1 || ps.PacketsOut == 0 || ps.PacketsIn == 0 && mode.h2kernel {
					t.Errorf("host %d: kernel peer counters %+v", i, k.Peers)
				}
				t.Logf("host %d: kernel out %d pkts %d B, in %d pkts %d B; passed to TUN out %d in %d (refused %d/%d); TUN path out %d in %d",
					i, ps.PacketsOut, ps.BytesOut, ps.PacketsIn, ps.BytesIn, k.PassedOut, k.PassedIn, k.RefusedOut, k.RefusedIn, s.PacketsOut, s.PacketsIn)
			}
		})
	}
}

// TestKernelPathFallthrough checks what the programs leave to the TUN path
// with the kernel datapath on both hosts: a /24 no host holds (twilld
// answers with ICMP net unreachable), inner IP fragments and a datagram
// with IP options (forwarded by twilld, arriving whole), while ordinary
// packets stay in the kernel.
func TestKernelPathFallthrough(t *testing.T) {
	requireKernel(t)
	tp := newTopo(t, 2)
	tp.kern = true
	f1 := tp.startForwarder(1, OffloadAuto, 2)
	f2 := tp.startForwarder(2, OffloadAuto, 1)
	if _, err := testbed.In(containerNS(1), "busybox", "ping", "-c", "1", "-W", "1", "10.96.9.2"); err == nil {
		t.Error("a /24 no host holds answered")
	}
	// 3000-byte pings: fragments inside the overlay.
	testbed.MustIn(t, containerNS(1), "busybox", "ping", "-c", "2", "-i", "0.2", "-W", "2", "-s", "3000", containerIP(2))
	sinkOut := filepath.Join(tp.dir, "udpsink")
	sink := testbed.Start(t, containerNS(2), sinkOut+".log",
		[]string{"TWO_HELPER=udpsink", "TWO_LISTEN=" + containerIP(2) + ":5000", "TWO_OUT=" + sinkOut}, os.Args[0], "-test.run=^$")
	waitFile(t, sinkOut+".ready", sink)
	if out, err := testbed.In(containerNS(1), "env", "TWO_HELPER=udpoptions", "TWO_TO="+containerIP(2)+":5000", os.Args[0], "-test.run=^$"); err != nil {
		t.Fatalf("udpoptions: %v %s", err, out)
	}
	if err := testbed.WaitFor(t.Context(), 5*time.Second, func() error {
		if b, _ := os.ReadFile(sinkOut); !strings.Contains(string(b), "with options") {
			return os.ErrNotExist
		}
		return nil
	}); err != nil {
		t.Error("the datagram with IP options did not arrive")
	}
	testbed.MustIn(t, containerNS(1), "busybox", "ping", "-c", "3", "-i", "0.2", "-W", "2", containerIP(2))
	s1 := f1.stop(t)
	s2 := f2.stop(t)
	k1, k2 := f1.kernel, f2.kernel
	t.Logf("host 1: TUN path out %d, unreachables %d; kernel passed out %d, peers %+v", s1.PacketsOut, s1.UnreachablesSent, k1.PassedOut, k1.Peers)
	t.Logf("host 2: TUN path in %d; kernel passed in %d, peers %+v", s2.PacketsIn, k2.PassedIn, k2.Peers)
	if s1.UnreachablesSent == 0 {
		t.Error("no ICMP net unreachable from host 1's TUN path")
	}
	// Unknown /24 (1), fragments (2 pings × 3 fragments), options (1).
	if k1.PassedOut < 8 || s1.PacketsOut < 7 {
		t.Errorf("too little left to the TUN path: kernel passed %d, TUN path sent %d", k1.PassedOut, s1.PacketsOut)
	}
	for _, p := range k1.Peers {
		if p.PacketsOut < 3 {
			t.Errorf("host 1's kernel sent %d packets, want the ordinary pings", p.PacketsOut)
		}
	}
}

// TestKernelPathKill: a forwarder on the kernel datapath with its links
// pinned is killed (kill -9) while pings run every 20 ms: its programs
// forward on and none is lost. Nobody vouches for their maps any more, so
// once the hold has passed they stop (a crashed twilld that never comes
// back must not keep forwarding to peers that may have left); the next
// forwarder takes them over and traffic flows again.
func TestKernelPathKill(t *testing.T) {
	requireKernel(t)
	root := testbed.BPFFS(t, "two")
	tp := newTopo(t, 2)
	tp.kern, tp.bpffs, tp.hold = true, root, 3*time.Second
	f1 := tp.startForwarder(1, OffloadAuto, 2)
	tp.startForwarder(2, OffloadAuto, 1)
	testbed.MustIn(t, containerNS(1), "busybox", "ping", "-c", "3", "-i", "0.2", "-W", "2", containerIP(2))

	done := make(chan string, 1)
	go func() {
		out, _ := testbed.In(containerNS(1), "busybox", "ping", "-c", "100", "-i", "0.02", "-W", "1", containerIP(2))
		done <- out
	}()
	time.Sleep(500 * time.Millisecond)
	f1.proc.Kill()
	killed := time.Now()
	out := <-done
	if !strings.Contains(out, "100 packets transmitted, 100 packets received") {
		t.Errorf("pings across the kill -9 (the programs forward on their own):\n%s", out)
	}
	if _, err := testbed.In(hostNS(1), "ip", "link", "show", "twill0"); err != nil {
		t.Fatalf("twill0 went with the killed forwarder: %v", err)
	}

	time.Sleep(time.Until(killed.Add(tp.hold + 500*time.Millisecond)))
	if out, err := testbed.In(containerNS(1), "busybox", "ping", "-c", "2", "-i", "0.2", "-W", "1", containerIP(2)); err == nil {
		t.Errorf("the hold (%v) has passed since the kill, yet the programs still forward:\n%s", tp.hold, out)
	}

	delete(tp.fwds, 1)
	f1 = tp.startForwarder(1, OffloadAuto, 2)
	testbed.MustIn(t, containerNS(1), "busybox", "ping", "-c", "3", "-i", "0.2", "-W", "2", containerIP(2))
	if log := f1.proc.Tail(20000); !strings.Contains(log, "took over the programs") {
		t.Errorf("the new forwarder did not take the pinned programs over; log:\n%s", log)
	}
	tp.stopAll()
	if out, err := testbed.In(hostNS(1), "ip", "link", "show", "twill0"); err == nil {
		t.Errorf("twill0 still exists after a clean stop: %s", out)
	}
}
