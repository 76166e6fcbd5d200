package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twill-net/twill/internal/control"
	"github.com/twill-net/twill/internal/testbed"
)

// cluster is a set of twilld hosts in namespaces on one underlay, with one
// real etcd server, each host with a Docker-like client on its plugin socket.
type cluster struct {
	t       *testing.T
	bed     *testbed.Bed
	etcd    string
	etcdDir string
	etcdP   *testbed.Proc
	prefix  string
	dir     string
	hosts   map[int]*host
}

type host struct {
	n      int
	ns     string
	dir    string
	proc   *testbed.Proc
	docker *testbed.Docker
	ctl    *control.Client
	net    testbed.Network
}

// newEtcdCluster is newCluster with a three-member etcd cluster (one member
// per namespace, at underlay addresses .241-.243) instead of one server.
func newEtcdCluster(t *testing.T, prefix string) (*cluster, []*testbed.EtcdMember) {
	testbed.RequireRoot(t)
	bed := testbed.New(t, prefix, netip.MustParsePrefix("10.199.0.0/24"))
	ms, urls := bed.StartEtcdCluster(t, []int{241, 242, 243})
	return &cluster{t: t, bed: bed, etcd: urls, prefix: "/twtest/" + prefix, dir: t.TempDir(), hosts: map[int]*host{}}, ms
}

func newCluster(t *testing.T, prefix string) *cluster {
	testbed.RequireRoot(t)
	bed := testbed.New(t, prefix, netip.MustParsePrefix("10.199.0.0/24"))
	// etcd lives on the underlay bridge's own address.
	testbed.MustIn(t, bed.UnderlayNS(), "ip", "addr", "add", "10.199.0.250/24", "dev", "br0")
	dir := t.TempDir()
	p, url := testbed.StartEtcd(t, bed.UnderlayNS(), netip.MustParseAddr("10.199.0.250"), 2379, filepath.Join(dir, "etcd"))
	return &cluster{t: t, bed: bed, etcd: url, etcdDir: filepath.Join(dir, "etcd"), etcdP: p, prefix: "/twtest/" + prefix, dir: dir, hosts: map[int]*host{}}
}

// start runs twilld on host n (making the namespace the first time) and
// waits until its control socket answers.
func (c *cluster) start(n int, extra ...string) *host {
	h := c.launch(n, extra...)
	c.waitReady(h)
	return h
}

// launch starts twilld on host n without waiting for it.
func (c *cluster) launch(n int, extra ...string) *host {
	t := c.t
	t.Helper()
	h := c.hosts[n]
	if h == nil {
		h = &host{n: n, ns: c.bed.AddHost(fmt.Sprintf("h%d", n), n, 0), dir: filepath.Join(c.dir, fmt.Sprintf("h%d", n))}
		os.MkdirAll(h.dir, 0o700)
		h.docker = testbed.NewDocker(filepath.Join(h.dir, "twill.sock"))
		h.docker.HostNS = h.ns
		h.ctl = control.NewClient(filepath.Join(h.dir, "ctl.sock"))
		c.hosts[n] = h
	}
	args := []string{
		"--etcd-endpoints", c.etcd, "--etcd-prefix", c.prefix, "--iface", "ul0",
		"--state-dir", h.dir, "--plugin-dir", h.dir, "--control-socket", filepath.Join(h.dir, "ctl.sock"),
		"--subnet-env", filepath.Join(h.dir, "subnet.env"), "--metrics-addr", "", "--log-level", "debug",
		"--docker-socket", "", // never this machine's dockerd
		"--bpf-fs", "", // never pin in this machine's bpf filesystem
	}
	h.proc = testbed.Start(t, h.ns, filepath.Join(h.dir, "twilld.log"), []string{"TWILL_TEST_ROLE=twilld"}, os.Args[0], append(args, extra...)...)
	return h
}

// waitReady waits until h's control socket reports a lease.
func (c *cluster) waitReady(h *host) {
	t := c.t
	t.Helper()
	n := h.n
	err := testbed.WaitFor(context.Background(), 20*time.Second, func() error {
		if h.proc.Exited() {
			return fmt.Errorf("twilld exited")
		}
		var s control.Status
		if err := h.ctl.Get(context.Background(), "status", &s); err != nil {
			return err
		}
		if len(s.Overlays) == 0 {
			return fmt.Errorf("no lease yet")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("twilld on h%d not ready: %v\n%s", n, err, h.proc.Tail(4000))
	}
}

func (c *cluster) status(h *host) control.Status {
	c.t.Helper()
	var s control.Status
	if err := h.ctl.Get(context.Background(), "status", &s); err != nil {
		c.t.Fatal(err)
	}
	return s
}

func (c *cluster) peers(h *host) control.Peers {
	c.t.Helper()
	var p control.Peers
	if err := h.ctl.Get(context.Background(), "peers", &p); err != nil {
		c.t.Fatal(err)
	}
	return p
}

// container makes a container namespace on host h joined to its network.
func (c *cluster) container(h *host, name string) testbed.Container {
	ns := c.bed.AddNS(name)
	return h.docker.Run(c.t, h.net, ns, testbed.ID(name))
}

func ping(ns string, dst netip.Addr) error {
	_, err := testbed.In(ns, "busybox", "ping", "-c", "1", "-W", "1", dst.String())
	return err
}

func mustPing(t *testing.T, from string, dst netip.Addr) {
	t.Helper()
	// ARP and the first peer update may take a moment.
	if err := testbed.WaitFor(context.Background(), 5*time.Second, func() error { return ping(from, dst) }); err != nil {
		t.Errorf("ping %s -> %s: %v", from, dst, err)
	}
}

// transfer moves size bytes over TCP from namespace src to dst (listening on
// addr:port) and checks that both ends saw the same bytes.
func transfer(t *testing.T, src, dst string, addr netip.Addr, port int, size int64) time.Duration {
	t.Helper()
	var sink string
	var sinkErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		sink, sinkErr = testbed.In(dst, "env", "TWILL_TEST_ROLE=sink", os.Args[0], fmt.Sprintf("%s:%d", addr, port))
	}()
	start := time.Now()
	source, err := testbed.In(src, "env", "TWILL_TEST_ROLE=source", os.Args[0], fmt.Sprintf("%s:%d", addr, port), fmt.Sprint(size))
	wg.Wait()
	took := time.Since(start)
	if err != nil || sinkErr != nil {
		t.Fatalf("transfer %s -> %s: source: %v %s; sink: %v %s", src, dst, err, source, sinkErr, sink)
	}
	got := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(sink), "listening"))
	want := strings.TrimSpace(source)
	if got != want {
		t.Fatalf("transfer %s -> %s: sink saw %q, source sent %q", src, dst, got, want)
	}
	return took
}

func TestOverlayAcrossThreeHosts(t *testing.T) {
	c := newCluster(t, "twk1")
	ctrs := map[int]testbed.Container{}
	for n := 1; n <= 3; n++ {
		var extra []string
		if n == 3 {
			extra = []string{"--busy-poll", "50ms"} // hosts may differ in it
		}
		h := c.start(n, extra...)
		h.net = h.docker.CreateNetwork(t, testbed.ID(fmt.Sprintf("blue-h%d", n)), "10.96.0.0/16", nil)
		ctrs[n] = c.container(h, fmt.Sprintf("c%d", n))
	}
	subnets := map[netip.Prefix]int{}
	for n, h := range c.hosts {
		s := c.status(h)
		p := netip.MustParsePrefix(s.Overlays[0].Subnet)
		if other, dup := subnets[p]; dup {
			t.Fatalf("h%d and h%d hold the same subnet %s", n, other, p)
		}
		subnets[p] = n
		if !p.Contains(ctrs[n].Addr.Addr()) {
			t.Errorf("h%d's container %s is outside its subnet %s", n, ctrs[n].Addr, p)
		}
		env, err := os.ReadFile(filepath.Join(h.dir, "subnet.env"))
		if err != nil || !strings.Contains(string(env), "FLANNEL_NETWORK=10.96.0.0/16") {
			t.Errorf("h%d subnet.env: %v %s", n, err, env)
		}
	}

	t.Run("every host's lease with its expiry", func(t *testing.T) {
		var ls []control.Lease
		if err := c.hosts[1].ctl.Get(context.Background(), "leases", &ls); err != nil {
			t.Fatal(err)
		}
		if len(ls) != 3 {
			t.Fatalf("h1 sees %d leases, want 3: %+v", len(ls), ls)
		}
		for _, l := range ls {
			if left := time.Until(l.Expiry); left < 23*time.Hour || left > 24*time.Hour+time.Minute {
				t.Errorf("lease %s expires in %v, want about 24 h", l.Subnet, left)
			}
		}
	})
	t.Run("ping every pair", func(t *testing.T) {
		for a := 1; a <= 3; a++ {
			for b := 1; b <= 3; b++ {
				if a != b {
					mustPing(t, ctrs[a].NS, ctrs[b].Addr.Addr())
				}
			}
		}
	})
	t.Run("busy polling on h3 only", func(t *testing.T) {
		// The pings are sparse traffic after quiet: h3 polled.
		var spells int
		s := c.status(c.hosts[3])
		if _, err := fmt.Sscanf(s.BusyPoll, "50ms, %d spells", &spells); err != nil || spells == 0 {
			t.Errorf("h3 busy poll %q", s.BusyPoll)
		}
		if s := c.status(c.hosts[1]); s.BusyPoll != "off" {
			t.Errorf("h1 busy poll %q, want off", s.BusyPoll)
		}
	})
	t.Run("host to remote container and remote twill0", func(t *testing.T) {
		for a := 1; a <= 3; a++ {
			for b := 1; b <= 3; b++ {
				if a == b {
					continue
				}
				mustPing(t, c.hosts[a].ns, ctrs[b].Addr.Addr())
				remote := netip.MustParsePrefix(c.status(c.hosts[b]).Overlays[0].Subnet).Addr()
				mustPing(t, c.hosts[a].ns, remote)
			}
		}
	})
	t.Run("100 MB each way, sha256 checked", func(t *testing.T) {
		for _, p := range [][2]int{{1, 2}, {2, 3}, {3, 1}, {2, 1}} {
			took := transfer(t, ctrs[p[0]].NS, ctrs[p[1]].NS, ctrs[p[1]].Addr.Addr(), 5001, 100<<20)
			t.Logf("c%d -> c%d: 100 MiB in %v (%.2f Gbit/s)", p[0], p[1], took.Round(time.Millisecond), float64(100<<23)/took.Seconds()/1e9)
		}
	})
	t.Run("a fourth host joins while traffic flows", func(t *testing.T) {
		done := make(chan time.Duration, 1)
		go func() { done <- transfer(t, ctrs[1].NS, ctrs[2].NS, ctrs[2].Addr.Addr(), 5002, 300<<20) }()
		h4 := c.start(4)
		h4.net = h4.docker.CreateNetwork(t, testbed.ID("blue-h4"), "10.96.0.0/16", nil)
		c4 := c.container(h4, "c4")
		joined := time.Now()
		for n := 1; n <= 3; n++ {
			mustPing(t, ctrs[n].NS, c4.Addr.Addr())
			mustPing(t, c4.NS, ctrs[n].Addr.Addr())
		}
		reach := time.Since(joined)
		t.Logf("h4 reachable from every host %v after its container started", reach.Round(time.Millisecond))
		if reach > time.Second {
			t.Errorf("h4 took %v to be reachable from every host; the datapath promises 1 s", reach)
		}
		<-done
		ctrs[4] = c4
	})
	t.Run("a host leaves and its routes go", func(t *testing.T) {
		h3 := c.hosts[3]
		sub3 := c.status(h3).Overlays[0].Subnet
		if err := h3.ctl.Leave(context.Background()); err != nil {
			t.Fatal(err)
		}
		h3.proc.Signal(syscall.SIGTERM)
		start := time.Now()
		err := testbed.WaitFor(context.Background(), 3*time.Second, func() error {
			for _, n := range []int{1, 2, 4} {
				for _, p := range c.peers(c.hosts[n]).Peers {
					if p.Subnet == sub3 {
						return fmt.Errorf("h%d still has a peer for %s", n, sub3)
					}
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		gone := time.Since(start)
		t.Logf("h3's subnet gone from every peer table after %v", gone.Round(time.Millisecond))
		if gone > time.Second {
			t.Errorf("h3's subnet took %v to leave the peer tables; the datapath promises 1 s", gone)
		}
		before := c.peers(c.hosts[1]).Drops["no_route"]
		if ping(ctrs[1].NS, ctrs[3].Addr.Addr()) == nil {
			t.Errorf("c1 still reaches c3 after h3 left")
		}
		if after := c.peers(c.hosts[1]).Drops["no_route"]; after <= before {
			t.Errorf("pings to the departed host's subnet were not counted as no_route drops (%d before, %d after)", before, after)
		}
		// twilld answers with ICMP net unreachable, as flanneld does: a
		// connection to the departed host fails at once instead of timing out.
		dial := time.Now()
		out, err := testbed.In(ctrs[1].NS, "busybox", "nc", "-w", "5", ctrs[3].Addr.Addr().String(), "5001")
		if took := time.Since(dial); err == nil || !strings.Contains(out, "Network is unreachable") || took > time.Second {
			t.Errorf("connecting to the departed host: %v after %v: %s; want \"Network is unreachable\" at once", err, took.Round(time.Millisecond), out)
		}
		mustPing(t, ctrs[1].NS, ctrs[2].Addr.Addr())
	})
}

func TestHostileTunnelTraffic(t *testing.T) {
	c := newCluster(t, "twk2")
	h1, h2 := c.start(1), c.start(2)
	h1.net = h1.docker.CreateNetwork(t, testbed.ID("red-h1"), "10.96.0.0/16", nil)
	h2.net = h2.docker.CreateNetwork(t, testbed.ID("red-h2"), "10.96.0.0/16", nil)
	c1 := c.container(h1, "hc1")
	mustPing(t, h2.ns, c1.Addr.Addr())
	rogue := c.bed.AddHost("rg", 9, 0) // on the underlay, holds no lease

	before := c.peers(h1).Drops
	// A UDP listener in c1 counts what reaches it while forged traffic arrives.
	var got string
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		got, _ = testbed.In(c1.NS, "env", "TWILL_TEST_ROLE=udpsink", os.Args[0], c1.Addr.Addr().String()+":7777", "4s")
	}()
	time.Sleep(500 * time.Millisecond)
	target := c.bed.Addr(1).String() + ":8285"
	h2sub := netip.MustParsePrefix(c.status(h2).Overlays[0].Subnet)
	forged := []struct{ ns, src string }{
		{rogue, "10.96.77.5"},                 // no lease at all
		{rogue, h2sub.Addr().Next().String()}, // claims a real host's subnet from the wrong address
		{h2.ns, "10.96.200.9"},                // a real peer's address, a source outside its subnet
	}
	for _, f := range forged {
		testbed.MustIn(t, f.ns, "env", "TWILL_TEST_ROLE=forge", os.Args[0], target, f.src, c1.Addr.Addr().String(), "7777", "50")
	}
	wg.Wait()
	if f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(got), "listening")); len(f) == 0 || f[0] != "0" {
		t.Errorf("forged datagrams reached the container: %q", got)
	}
	after := c.peers(h1).Drops
	var total uint64
	for reason, n := range after {
		total += n - before[reason]
	}
	// 3 senders x 50 x 4 datagrams each.
	if total < 600 {
		t.Errorf("drops went up by %d, want at least 600: %v", total, after)
	}
	t.Logf("drops after hostile traffic: %v", after)
	mustPing(t, h2.ns, c1.Addr.Addr())
}

// TestSingleHostEmbeddedEtcd: with no ETCD_ENDPOINTS one host works with
// zero configuration, and keeps its subnet and containers across a restart.
func TestSingleHostEmbeddedEtcd(t *testing.T) {
	testbed.RequireRoot(t)
	bed := testbed.New(t, "twk9", netip.MustParsePrefix("10.199.0.0/24"))
	ns := bed.AddHost("h1", 1, 0)
	testbed.MustIn(t, ns, "ip", "route", "add", "default", "via", "10.199.0.254") // the underlay by its default route
	dir := t.TempDir()
	h := &host{n: 1, ns: ns, dir: dir, docker: testbed.NewDocker(filepath.Join(dir, "twill.sock")), ctl: control.NewClient(filepath.Join(dir, "ctl.sock"))}
	h.docker.HostNS = ns
	c := &cluster{t: t, bed: bed, dir: dir, hosts: map[int]*host{1: h}}
	args := []string{"--state-dir", dir, "--plugin-dir", dir, "--control-socket", filepath.Join(dir, "ctl.sock"), "--subnet-env", "", "--metrics-addr", ""}
	startIt := func() {
		h.proc = testbed.Start(t, ns, filepath.Join(dir, "twilld.log"), []string{"TWILL_TEST_ROLE=twilld"}, os.Args[0], args...)
		c.waitReady(h)
	}
	startIt()
	s := c.status(h)
	if !strings.Contains(s.Etcd, "embedded") || !strings.HasPrefix(s.Etcd, "http://127.0.0.1:") || s.Underlay != "ul0" || s.PublicIP != "10.199.0.1" {
		t.Errorf("status: %+v", s)
	}
	// Sockets and state are root's alone.
	for _, name := range []string{"twill.sock", "ctl.sock", "state.db", "leases.json"} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if st.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s has mode %v, want no access for group and others", name, st.Mode().Perm())
		}
	}
	h.net = h.docker.CreateNetwork(t, testbed.ID("solo"), "10.96.0.0/16", nil) // the default overlay (a network without --subnet is refused: ipam)
	if !netip.MustParsePrefix("10.96.0.0/16").Contains(h.net.Pool.Addr()) || h.net.Pool.Bits() != 24 {
		t.Fatalf("pool %s, want a /24 of 10.96.0.0/16", h.net.Pool)
	}
	a, b := c.container(h, "s1"), c.container(h, "s2")
	mustPing(t, a.NS, b.Addr.Addr())
	// An overlay overlapping the default one is refused, naming both.
	err := h.docker.Call("IpamDriver.RequestPool", map[string]any{"AddressSpace": "twill-local", "Pool": "10.96.128.0/17", "Options": map[string]string{}}, nil)
	if err == nil || !strings.Contains(err.Error(), "10.96.0.0/16") || !strings.Contains(err.Error(), "overlap") {
		t.Errorf("overlapping overlay: %v, want a refusal naming 10.96.0.0/16", err)
	}
	mustPing(t, a.NS, b.Addr.Addr())
	h.proc.Signal(syscall.SIGTERM)
	startIt()
	if again := c.status(h).Overlays[0].Subnet; again != s.Overlays[0].Subnet {
		t.Errorf("subnet %s after restart, was %s", again, s.Overlays[0].Subnet)
	}
	mustPing(t, a.NS, b.Addr.Addr())
	cc := c.container(h, "s3")
	if cc.Addr == a.Addr || cc.Addr == b.Addr {
		t.Errorf("address %s handed out twice after restart", cc.Addr)
	}
}
