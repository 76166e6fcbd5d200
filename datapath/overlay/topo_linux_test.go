package overlay

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twill-net/twill/datapath/kernel"
	"github.com/twill-net/twill/datapath/wireguard"
	"github.com/twill-net/twill/internal/testbed"
)

// Root test topology, every namespace named with nsPrefix (P below): an
// underlay bridge in namespace Pu, hosts Ph<i> (ul0 = 10.199.0.<i>/24, lease
// 10.96.<i>.0/24), and behind each host a "container" namespace Pc<i>
// (two-e0 = 10.96.<i>.2/24) joined by veth two-v<i> (10.96.<i>.1/24).
const (
	testOverlay = "10.96.0.0/16"
	testMTU     = 1472 // underlay 1500 − 28
)

type testTopo struct {
	t     testing.TB
	bed   *testbed.Bed
	n     int
	dir   string
	fwds  map[int]*testFwd
	hosts []string
	busy  time.Duration // Config.BusyPoll of the forwarders started next
	wg    []string      // when set, the forwarders started next run WireGuard with these private keys (host i: wg[i-1])
	kern  bool          // the forwarders started next also attach the kernel datapath
	bpffs string        // with kern: pin its links in this bpf filesystem (helperFwdConfig.BPFFS)
	hold  time.Duration // with bpffs: kernel.Config.Hold
	noGRO bool          // with kern: no GRO stage
}

type testFwd struct {
	proc   *testbed.Proc
	stats  string
	path   string
	kernel *kernel.Stats // after stop, when the kernel datapath ran
}

func requireKernel(t testing.TB) {
	t.Helper()
	testbed.RequireRoot(t)
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("needs /dev/net/tun")
	}
}

// nsPrefix is "tw" and three random letters, fixed per test process: two
// runs of these tests on a shared machine never use (or clean up) each
// other's namespaces.
var nsPrefix = func() string {
	b := []byte("tw")
	for range 3 {
		b = append(b, byte('a'+rand.IntN(26)))
	}
	return string(b)
}()

func hostNS(i int) string      { return fmt.Sprintf("%sh%d", nsPrefix, i) }
func containerNS(i int) string { return fmt.Sprintf("%sc%d", nsPrefix, i) }
func underlayIP(i int) string  { return fmt.Sprintf("10.199.0.%d", i) }
func leaseOf(i int) string     { return fmt.Sprintf("10.96.%d.0/24", i) }
func containerIP(i int) string { return fmt.Sprintf("10.96.%d.2", i) }

// newTopo builds n hosts with a container each.
func newTopo(t testing.TB, n int) *testTopo {
	t.Helper()
	requireKernel(t)
	bed := testbed.New(t, nsPrefix, netip.MustParsePrefix("10.199.0.0/24"))
	tp := &testTopo{t: t, bed: bed, n: n, dir: t.TempDir(), fwds: map[int]*testFwd{}}
	for i := 1; i <= n; i++ {
		h := bed.AddHost(fmt.Sprintf("h%d", i), i, 0)
		c := bed.AddNS(fmt.Sprintf("c%d", i))
		tp.hosts = append(tp.hosts, h)
		v := fmt.Sprintf("two-v%d", i)
		testbed.Must(t, "ip", "-n", h, "link", "add", v, "type", "veth", "peer", "name", "two-e0", "netns", c)
		testbed.Must(t, "ip", "-n", h, "addr", "add", fmt.Sprintf("10.96.%d.1/24", i), "dev", v)
		testbed.Must(t, "ip", "-n", h, "link", "set", v, "up")
		testbed.Must(t, "ip", "-n", c, "addr", "add", containerIP(i)+"/24", "dev", "two-e0")
		testbed.Must(t, "ip", "-n", c, "link", "set", "two-e0", "up")
		testbed.Must(t, "ip", "-n", c, "route", "add", "default", "via", fmt.Sprintf("10.96.%d.1", i))
		tp.setContainerMTU(i, testMTU)
		// Keep IPv6 chatter (router solicitations) off twill0.
		testbed.MustIn(t, h, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1", "net.ipv4.ip_forward=1")
	}
	return tp
}

func (tp *testTopo) setContainerMTU(i, mtu int) {
	testbed.Must(tp.t, "ip", "-n", hostNS(i), "link", "set", fmt.Sprintf("two-v%d", i), "mtu", strconv.Itoa(mtu))
	testbed.Must(tp.t, "ip", "-n", containerNS(i), "link", "set", "two-e0", "mtu", strconv.Itoa(mtu))
}

// startForwarder runs the forwarder helper on host i with every other
// host among peers as a peer.
func (tp *testTopo) startForwarder(i int, offload string, peers ...int) *testFwd {
	t := tp.t
	t.Helper()
	c := helperFwdConfig{
		MTU: testMTU, Public: underlayIP(i), Offload: offload, Busy: tp.busy, Kernel: tp.kern, BPFFS: tp.bpffs, Hold: tp.hold, NoGRO: tp.noGRO,
		Overlay: testOverlay, Local: leaseOf(i), Peers: map[string]string{},
		Ready: filepath.Join(tp.dir, fmt.Sprintf("fwd%d-%d.ready", i, time.Now().UnixNano())),
		Stats: filepath.Join(tp.dir, fmt.Sprintf("fwd%d-%d.json", i, time.Now().UnixNano())),
	}
	for _, p := range peers {
		c.Peers[leaseOf(p)] = underlayIP(p) + ":8285"
	}
	if tp.wg != nil {
		c.MTU = testMTU + 28 - wireguard.Overhead
		c.WGKey, c.WGPeers = tp.wg[i-1], map[string]string{}
		for _, p := range peers {
			k, _ := wireguard.ParseKey(tp.wg[p-1])
			c.WGPeers[leaseOf(p)] = k.Public().String()
		}
	}
	b, _ := json.Marshal(c)
	args := pinned(os.Args[0], "-test.run=^$")
	p := testbed.Start(t, hostNS(i), filepath.Join(tp.dir, fmt.Sprintf("fwd%d.log", i)),
		[]string{"TWO_HELPER=forwarder", "TWO_FWD_CONFIG=" + string(b)}, args[0], args[1:]...)
	f := &testFwd{proc: p, stats: c.Stats}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if b, err := os.ReadFile(c.Ready); err == nil {
			f.path = string(b)
			break
		}
		if p.Exited() || time.Now().After(deadline) {
			t.Fatalf("forwarder on %s did not start: %s", hostNS(i), p.Tail(2000))
		}
		time.Sleep(20 * time.Millisecond)
	}
	tp.fwds[i] = f
	return f
}

// pinned prefixes a command with taskset when TWILL_BENCH_PIN names CPUs
// (a benchmark diagnostic: forwarders and ping on one CPU avoid cross-CPU
// wake-ups, which on one machine stand in for the network between hosts).
func pinned(args ...string) []string {
	if c := os.Getenv("TWILL_BENCH_PIN"); c != "" {
		return append([]string{"taskset", "-c", c}, args...)
	}
	return args
}

// stop ends the forwarder with SIGTERM and returns its final Stats.
func (f *testFwd) stop(t testing.TB) Stats {
	t.Helper()
	syscall.Kill(f.proc.Cmd.Process.Pid, syscall.SIGTERM)
	for i := 0; i < 200 && !f.proc.Exited(); i++ {
		time.Sleep(50 * time.Millisecond)
	}
	if !f.proc.Exited() {
		// A hung shutdown is a bug: get the goroutines into the log.
		f.proc.Signal(syscall.SIGQUIT)
		t.Fatalf("forwarder did not stop within 10s; log: %s", f.proc.Tail(20000))
	}
	var s helperStats
	b, err := os.ReadFile(f.stats)
	if err != nil {
		t.Fatalf("forwarder stats: %v; log: %s", err, f.proc.Tail(2000))
	}
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	f.kernel = s.Kernel
	return s.Stats
}

func (tp *testTopo) stopAll() map[int]Stats {
	m := map[int]Stats{}
	for i, f := range tp.fwds {
		m[i] = f.stop(tp.t)
		delete(tp.fwds, i)
	}
	return m
}

// waitFile waits for path to exist.
func waitFile(t testing.TB, path string, p *testbed.Proc) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if (p != nil && p.Exited()) || time.Now().After(deadline) {
			t.Fatalf("%s did not appear; log: %s", path, p.Tail(2000))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// transfer sends size bytes from container from to container to over TCP
// and checks the sha256 on both ends.
func (tp *testTopo) transfer(from, to, size int) time.Duration {
	t := tp.t
	t.Helper()
	out := filepath.Join(tp.dir, fmt.Sprintf("xfer-%d-%d-%d", from, to, time.Now().UnixNano()))
	listen := containerIP(to) + ":5001"
	sink := testbed.Start(t, containerNS(to), out+".sink.log",
		[]string{"TWO_HELPER=sink", "TWO_LISTEN=" + listen, "TWO_OUT=" + out + ".sink"}, os.Args[0], "-test.run=^$")
	waitFile(t, out+".sink.ready", sink)
	start := time.Now()
	if o, err := testbed.In(containerNS(from), "env", "TWO_HELPER=source", "TWO_DIAL="+listen,
		"TWO_BYTES="+strconv.Itoa(size), "TWO_OUT="+out+".source", os.Args[0], "-test.run=^$"); err != nil {
		t.Fatalf("source: %v %s; sink log: %s", err, o, sink.Tail(1000))
	}
	d := time.Since(start)
	waitFile(t, out+".sink", sink)
	a, _ := os.ReadFile(out + ".source")
	b, _ := os.ReadFile(out + ".sink")
	if len(a) == 0 || string(a) != string(b) {
		t.Fatalf("transfer %d->%d: sent %q, received %q", from, to, a, b)
	}
	return d
}

// snmp reads the counters of /proc/net/snmp inside ns as "Tcp.InCsumErrors" -> value.
func snmp(t testing.TB, ns string) map[string]int64 {
	t.Helper()
	out := testbed.MustIn(t, ns, "cat", "/proc/net/snmp")
	m := map[string]int64{}
	sc := bufio.NewScanner(strings.NewReader(out))
	var keys []string
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		proto := strings.TrimSuffix(f[0], ":")
		if keys == nil || keys[0] != proto {
			keys = append([]string{proto}, f[1:]...)
			continue
		}
		for j, v := range f[1:] {
			if j+1 < len(keys) {
				n, _ := strconv.ParseInt(v, 10, 64)
				m[proto+"."+keys[j+1]] = n
			}
		}
		keys = nil
	}
	return m
}

// checkNoCsumErrors fails unless every namespace has zero checksum errors
// and zero UDP receive-buffer errors.
func (tp *testTopo) checkNoCsumErrors() {
	t := tp.t
	t.Helper()
	for i := 1; i <= tp.n; i++ {
		for _, ns := range []string{hostNS(i), containerNS(i)} {
			s := snmp(t, ns)
			for _, k := range []string{"Tcp.InCsumErrors", "Udp.InCsumErrors", "Udp.RcvbufErrors"} {
				if s[k] != 0 {
					t.Errorf("%s: %s = %d", ns, k, s[k])
				}
			}
		}
	}
}
