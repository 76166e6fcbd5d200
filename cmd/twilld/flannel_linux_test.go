package main

import (
	"bufio"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twill-net/twill/internal/testbed"
)

// flanneldBinary finds a flanneld with the udp backend: $TWILL_FLANNELD (make
// test builds one with scripts/flanneld.sh and sets it), else one on PATH.
func flanneldBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("TWILL_FLANNELD"); p != "" {
		return p
	}
	if p, err := exec.LookPath("flanneld"); err == nil {
		return p
	}
	t.Skip("needs a flanneld with the udp backend: bash scripts/flanneld.sh, then TWILL_FLANNELD=<its path> (make test does both)")
	return ""
}

// readSubnetEnv waits for flanneld's subnet file and returns its variables.
func readSubnetEnv(t *testing.T, path string, p *testbed.Proc) map[string]string {
	t.Helper()
	vars := map[string]string{}
	err := testbed.WaitFor(context.Background(), 30*time.Second, func() error {
		if p.Exited() {
			return fmt.Errorf("flanneld exited")
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), "="); ok {
				vars[k] = v
			}
		}
		if vars["FLANNEL_SUBNET"] == "" {
			return fmt.Errorf("no FLANNEL_SUBNET yet")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("flanneld's %s: %v\n%s", path, err, p.Tail(4000))
	}
	return vars
}

// TestFlannelInterop puts a real flanneld (udp backend; make test builds the
// version tools/flanneld pins, v0.28.10) and twilld on one etcd and one
// overlay, a container behind each, and checks that they find each other's
// leases and carry ping and sha256-checked TCP both ways: the etcd schema and
// the wire format are flannel's, not a likeness of them.
// twilld runs its fast path (GSO trains out, GRO in); flanneld moves one
// packet per system call, so each side sees the other's wire format only.
func TestFlannelInterop(t *testing.T) { testFlannelInterop(t, false) }

// TestFlannelInteropKernel is TestFlannelInterop with twilld on the kernel
// datapath, on underlay veths that segment and checksum like a NIC (see
// datapath/kernel: a veth with offloads on hands its peer unfinished
// packets, which flanneld's socket cannot take).
func TestFlannelInteropKernel(t *testing.T) { testFlannelInterop(t, true) }

func testFlannelInterop(t *testing.T, kernel bool) {
	bin := flanneldBinary(t)
	if v, err := exec.Command(bin, "--version").CombinedOutput(); err == nil {
		t.Logf("flanneld %s", strings.TrimSpace(string(v)))
	}
	c := newCluster(t, "twkg")
	var extra []string
	if kernel {
		extra = []string{"--datapath", "kernel"}
	}
	h1 := c.start(1, extra...)
	// Without --datapath, auto keeps the TUN path on this veth underlay
	// (checksum offload on) and says why.
	if d := c.status(h1).Datapath; kernel != strings.HasPrefix(d, "kernel") || !kernel && !strings.Contains(d, "checksum offload") {
		t.Fatalf("twilld's datapath is %q", d)
	}
	h1.net = h1.docker.CreateNetwork(t, testbed.ID("twkg-blue"), "10.96.0.0/16", nil)
	c1 := c.container(h1, "c1")

	// Host 2 runs flanneld; like Docker in flannel's early days, the test
	// itself gives its container an address from flanneld's subnet.
	h2 := c.bed.AddHost("h2", 2, 0)
	dir := t.TempDir()
	env := filepath.Join(dir, "subnet.env")
	fl := testbed.Start(t, h2, filepath.Join(dir, "flanneld.log"), nil, bin,
		"--etcd-endpoints", c.etcd, "--etcd-prefix", c.prefix, "--iface", "ul0",
		"--subnet-file", env, "--ip-masq=false")
	vars := readSubnetEnv(t, env, fl)
	if kernel {
		for _, ns := range []string{h1.ns, h2} {
			testbed.MustIn(t, ns, "ethtool", "-K", "ul0", "tso", "off", "gso", "off", "tx-udp_tnl-segmentation", "off", "tx", "off")
		}
	}
	gw, err := netip.ParsePrefix(vars["FLANNEL_SUBNET"]) // e.g. 10.96.7.1/24
	if err != nil {
		t.Fatalf("FLANNEL_SUBNET %q: %v", vars["FLANNEL_SUBNET"], err)
	}
	if vars["FLANNEL_NETWORK"] != "10.96.0.0/16" || vars["FLANNEL_MTU"] != "1472" {
		t.Errorf("flanneld read the overlay as network %s, MTU %s; twill's is 10.96.0.0/16, 1472", vars["FLANNEL_NETWORK"], vars["FLANNEL_MTU"])
	}
	c2ns := c.bed.AddNS("c2")
	c2 := gw.Addr().Next()
	testbed.MustIn(t, h2, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	testbed.Must(t, "ip", "-n", h2, "link", "add", "twkg-v2", "mtu", vars["FLANNEL_MTU"], "type", "veth", "peer", "name", "eth0", "netns", c2ns)
	testbed.Must(t, "ip", "-n", h2, "addr", "add", gw.String(), "dev", "twkg-v2")
	testbed.Must(t, "ip", "-n", h2, "link", "set", "twkg-v2", "up")
	testbed.Must(t, "ip", "-n", c2ns, "link", "set", "eth0", "mtu", vars["FLANNEL_MTU"])
	testbed.Must(t, "ip", "-n", c2ns, "addr", "add", netip.PrefixFrom(c2, gw.Bits()).String(), "dev", "eth0")
	testbed.Must(t, "ip", "-n", c2ns, "link", "set", "eth0", "up")
	testbed.Must(t, "ip", "-n", c2ns, "route", "add", "default", "via", gw.Addr().String())

	if o := c.status(h1).Offload; o != "offload" {
		t.Errorf("twilld's datapath is %q; this test is meant to show the fast path talking to flanneld", o)
	}
	t.Run("twilld sees flanneld's lease", func(t *testing.T) {
		want := gw.Masked().String()
		err := testbed.WaitFor(context.Background(), 5*time.Second, func() error {
			for _, p := range c.peers(h1).Peers {
				if p.Subnet == want && p.Addr == c.bed.Addr(2).String()+":8285" {
					return nil
				}
			}
			return fmt.Errorf("peers: %+v", c.peers(h1).Peers)
		})
		if err != nil {
			t.Fatalf("flanneld's lease %s at %s:8285 not in twilld's peer table: %v", want, c.bed.Addr(2), err)
		}
	})
	t.Run("ping both ways", func(t *testing.T) {
		mustPing(t, c1.NS, c2)
		mustPing(t, c2ns, c1.Addr.Addr())
		mustPing(t, h2, c1.Addr.Addr()) // flanneld's host to twill's container, through flannel0
	})
	t.Run("sha256-checked TCP both ways", func(t *testing.T) {
		// 200 MB each way, then again with the containers' transmit
		// checksum offload off (every packet checksummed in software
		// before it enters the overlay).
		for _, csum := range []string{"on", "off"} {
			if csum == "off" {
				testbed.MustIn(t, c1.NS, "ethtool", "-K", "eth0", "tx", "off")
				testbed.MustIn(t, c2ns, "ethtool", "-K", "eth0", "tx", "off")
			}
			for _, d := range []struct {
				src, dst string
				addr     netip.Addr
			}{{c1.NS, c2ns, c2}, {c2ns, c1.NS, c1.Addr.Addr()}} {
				took := transfer(t, d.src, d.dst, d.addr, 5001, 200<<20)
				t.Logf("%s -> %s, tx checksum offload %s: 200 MiB in %v", d.src, d.dst, csum, took.Round(time.Millisecond))
			}
		}
		for _, p := range c.peers(h1).Peers {
			if p.Subnet == gw.Masked().String() && (p.PacketsIn == 0 || p.PacketsOut == 0) {
				t.Errorf("twilld's counters for flanneld's subnet: %d packets in, %d out", p.PacketsIn, p.PacketsOut)
			}
		}
	})
	if t.Failed() {
		t.Logf("flanneld log:\n%s", fl.Tail(4000))
	}
}
