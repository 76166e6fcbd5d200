package e2e

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func (s *scenario) byName(name string) ctr {
	for _, c := range s.cs {
		if c.name == name {
			return c
		}
	}
	panic("no container " + name)
}

// reach fails the test unless src reaches every dst within the timeout (a
// restarted container has a new MAC; give ARP and the peer table time).
func reach(t *testing.T, timeout time.Duration, src ctr, dsts ...ctr) {
	t.Helper()
	var addrs []netip.Addr
	for _, d := range dsts {
		addrs = append(addrs, d.ip)
	}
	start := time.Now()
	eventually(t, timeout, fmt.Sprintf("%s reaches %v", src, dsts), func() error {
		if failed := pings(t, src, addrs); len(failed) > 0 {
			return fmt.Errorf("no reply from %v", failed)
		}
		return nil
	})
	if d := time.Since(start); d > 3*time.Second {
		t.Logf("%s reached %v only after %.1fs", src, dsts, d.Seconds())
	}
}

// dockerdRestart: host 2's dockerd restarts; its restart-policy containers come
// back, the --ip one with its address, the other hosts reach them again and
// resolve them by name at their new addresses.
func (s *scenario) dockerdRestart(t *testing.T) {
	h2 := hosts()[1]
	start := time.Now()
	if err := script("restart", "2"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "h2's containers running again", func() error {
		for _, n := range []string{"h2-a", "h2-b"} {
			out, err := h2.docker("inspect", "-f", "{{.State.Running}}", n)
			if err != nil || out != "true" {
				return fmt.Errorf("%s running=%q %v", n, out, err)
			}
		}
		return nil
	})
	t.Logf("dockerd restarted and containers running after %.1fs", time.Since(start).Seconds())
	if got := inspectIP(t, h2, "h2-b", "blue"); got != s.byName("h2-b").ip {
		t.Errorf("h2-b (--ip %s) came back with %s", s.byName("h2-b").ip, got)
	}
	// h2-a may get another address, as with Docker's bridge driver
	a := s.byName("h2-a")
	a.ip = inspectIP(t, h2, "h2-a", "blue")
	for i := range s.cs {
		if s.cs[i].name == "h2-a" {
			s.cs[i] = a
		}
	}
	reach(t, 45*time.Second, s.byName("h1-a"), a, s.byName("h2-b"))
	reach(t, 45*time.Second, s.byName("h3-b"), a, s.byName("h2-b"))
	reach(t, 45*time.Second, s.byName("h2-b"), s.byName("h1-a"), s.byName("h3-a"))
	t.Logf("cross-host reachability back %.1fs after the restart began", time.Since(start).Seconds())
	// The plugin restarted with dockerd and resynced its names from
	// scratch: h2-a answers on h1 with its address now, nothing stale.
	h1 := hosts()[0]
	h1.mustDocker(t, runArgs("dr-cli", "blue", "--dns", resolver)...)
	defer h1.docker("rm", "-f", "dr-cli")
	untilAnswer(t, h1, "dr-cli", "h2-a", []string{a.ip.String()}, 15*time.Second)
	t.Logf("h2-a (%s after the restart) resolved on h1 %.1fs after the restart began", a.ip, time.Since(start).Seconds())
}

// pluginKilled: kill -9 of twilld on host 3; Docker restarts it; new containers
// start and get addresses nobody holds.
func (s *scenario) pluginKilled(t *testing.T) {
	h3 := hosts()[2]
	old := h3.pluginPIDs()
	if len(old) != 1 {
		t.Fatalf("want one twilld on %s, found %v", h3, old)
	}
	held := map[netip.Addr]string{}
	for _, n := range strings.Fields(h3.mustDocker(t, "ps", "-q", "--filter", "network=blue")) {
		held[inspectIP(t, h3, n, "blue")] = n
	}
	id := h3.pluginID(t)
	const capCall = "NetworkDriver.GetCapabilities"
	caps := strings.Count(h3.pluginLog(id), capCall)
	// A ping every 10 ms from h1-a to h3-a across the kill: how long the
	// datapath (TUN or kernel, whichever runs) stops while twilld is gone.
	// The kernel datapath's programs stay attached (pinned in the host's
	// bpf filesystem) and the restarted twilld takes them over: none lost.
	pings := pingAcross(s.byName("h1-a"), s.byName("h3-a"), 800)
	time.Sleep(time.Second)
	if err := syscall.Kill(old[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	defer func() {
		if lost := pings.check(t, "kill -9 of twilld", 0); time.Duration(lost)*pingEvery > 5*time.Second {
			t.Errorf("h3's datapath stopped for more than 5 s across a plugin kill: %d pings lost", lost)
		}
	}()
	eventually(t, 20*time.Second, "docker restarts twilld", func() error {
		if p := h3.pluginPIDs(); len(p) != 1 || p[0] == old[0] {
			return fmt.Errorf("twilld pids %v", p)
		}
		return nil
	})
	t.Logf("twilld back after %.2fs", time.Since(killed).Seconds())
	// dockerd registers the restarted plugin's driver anew (half a second
	// after the restart, then GetCapabilities). Docker 29 keeps the endpoints
	// it joined in that driver object, so a container started in between
	// fails: Join goes to the old object, ProgramExternalConnectivity to the
	// new one ("remote network driver: endpoint … not found"). Users see that
	// only in that second; the test starts containers once it is over.
	eventually(t, 20*time.Second, "dockerd registers the restarted driver ("+capCall+")", func() error {
		if n := strings.Count(h3.pluginLog(id), capCall); n <= caps {
			return fmt.Errorf("%d %s calls, as before the kill", n, capCall)
		}
		return nil
	})
	t.Logf("driver registered again after %.2fs", time.Since(killed).Seconds())
	var fresh []ctr
	for _, n := range []string{"h3-k1", "h3-k2", "h3-k3"} {
		h3.mustDocker(t, runArgs(n, "blue")...)
		c := ctr{h3, n, inspectIP(t, h3, n, "blue")}
		if other, dup := held[c.ip]; dup {
			t.Errorf("%s got %s, already held by %s: an address was handed out twice", n, c.ip, other)
		}
		held[c.ip] = n
		fresh = append(fresh, c)
	}
	reach(t, 30*time.Second, fresh[0], s.byName("h1-a"), s.byName("h3-a"))
	reach(t, 30*time.Second, s.byName("h1-b"), fresh...)
	reach(t, 30*time.Second, s.byName("h3-a"), s.byName("h2-b"))
	for _, c := range fresh {
		h3.mustDocker(t, "rm", "-f", c.name)
	}
}

// pingEvery is how often pingAcross pings.
const pingEvery = 10 * time.Millisecond

// pinger is count pings every 10 ms from one container to another.
type pinger struct {
	from, to ctr
	count    int
	done     chan string
}

// pingAcross starts the pings; check waits for them.
func pingAcross(from, to ctr, count int) *pinger {
	p := &pinger{from: from, to: to, count: count, done: make(chan string, 1)}
	go func() {
		out, _ := from.h.docker("exec", from.name, "ping", "-i", "0.01", "-c", fmt.Sprint(count), "-W", "1", "-w", fmt.Sprint(count/100+7), to.ip.String())
		p.done <- out
	}()
	return p
}

// check waits for the pings and logs how many were lost across what (which
// took that long, 0 when nobody waited for it). It fails when ping did not
// run, and on the kernel datapath when any was lost although what took less
// than the programs' hold (10 s; 8 s leaves a margin): they forward while
// no twilld runs. It returns the number lost.
func (p *pinger) check(t *testing.T, what string, took time.Duration) int {
	t.Helper()
	out := <-p.done
	var sent, got int
	if i := strings.Index(out, "packets transmitted"); i >= 0 {
		line := out[strings.LastIndex(out[:i], "\n")+1:]
		fmt.Sscanf(line, "%d packets transmitted, %d packets received", &sent, &got)
	}
	lost := sent - got
	t.Logf("%s (%.1fs): pings %s -> %s every %v: %d of %d lost (a gap of about %v)", what, took.Seconds(), p.from.name, p.to.name, pingEvery, lost, sent, time.Duration(lost)*pingEvery)
	switch {
	case sent < p.count/2:
		t.Errorf("ping did not run across %s:\n%s", what, out)
	case kernelPath() && took < 8*time.Second && lost > 0:
		t.Errorf("kernel datapath: %d of %d pings lost across %s; its programs should have forwarded on their own", lost, sent, what)
	}
	return lost
}

// kernelPath tells whether the hosts run the kernel datapath (hostView
// checks that they do): TWILL_DATAPATH=auto picks it on NIC-like veths.
func kernelPath() bool { return os.Getenv("TWE_UNDERLAY") == "nic" }

// links lists the host's veth and bridge interfaces other than the underlay.
func (h host) links(t *testing.T) (veths, bridges []string) {
	t.Helper()
	for kind, dst := range map[string]*[]string{"veth": &veths, "bridge": &bridges} {
		out, err := h.sh(10*time.Second, "ip", "-o", "link", "show", "type", kind)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(out, "\n") {
			f := strings.Fields(l)
			if len(f) < 2 {
				continue
			}
			name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			if name != "twe0" {
				*dst = append(*dst, name)
			}
		}
	}
	return veths, bridges
}

// rules is the host's iptables rule set, sorted, without counters.
func (h host) rules(t *testing.T) string {
	t.Helper()
	out, err := h.sh(10*time.Second, "iptables-save")
	if err != nil {
		t.Fatal(err)
	}
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "-A ") || strings.HasPrefix(l, ":") || strings.HasPrefix(l, "*") {
			if i := strings.Index(l, " ["); strings.HasPrefix(l, ":") && i > 0 {
				l = l[:i] // chain counters
			}
			keep = append(keep, l)
		}
	}
	sort.Strings(keep)
	return strings.Join(keep, "\n")
}

// disableEnable: `docker plugin disable -f` then `enable` on host 1: existing
// containers keep working, new ones start, and nothing is left behind.
func (s *scenario) disableEnable(t *testing.T) {
	h1 := hosts()[0]
	veths, bridges := h1.links(t)
	rules := h1.rules(t)
	pings := pingAcross(s.byName("h2-a"), s.byName("h1-a"), 800)
	time.Sleep(time.Second)
	start := time.Now()
	h1.mustDocker(t, "plugin", "disable", "-f", driver)
	eventually(t, 15*time.Second, "twilld gone after disable", func() error {
		if p := h1.pluginPIDs(); len(p) > 0 {
			return fmt.Errorf("twilld still running: %v", p)
		}
		return nil
	})
	h1.mustDocker(t, "plugin", "enable", driver)
	pings.check(t, "disable -f and enable", time.Since(start))
	reach(t, 30*time.Second, s.byName("h1-a"), s.byName("h2-a"), s.byName("h3-b"), s.byName("h1-b"))
	reach(t, 30*time.Second, s.byName("h3-a"), s.byName("h1-b"))
	h1.mustDocker(t, runArgs("h1-new", "blue")...)
	c := ctr{h1, "h1-new", inspectIP(t, h1, "h1-new", "blue")}
	for _, o := range s.cs {
		if o.ip == c.ip {
			t.Errorf("h1-new got %s, which %s holds", c.ip, o.name)
		}
	}
	reach(t, 30*time.Second, c, s.byName("h2-b"))
	h1.mustDocker(t, "rm", "-f", "h1-new")
	eventually(t, 15*time.Second, "host 1's links as before", func() error {
		v2, b2 := h1.links(t)
		if len(v2) != len(veths) || len(b2) != len(bridges) {
			return fmt.Errorf("veths %v bridges %v, before: veths %v bridges %v", v2, b2, veths, bridges)
		}
		if r2 := h1.rules(t); r2 != rules {
			return fmt.Errorf("iptables rules differ from before:\nbefore:\n%s\nafter:\n%s", rules, r2)
		}
		return nil
	})
	if p := h1.pluginPIDs(); len(p) != 1 {
		t.Errorf("want one twilld on %s, found %v", h1, p)
	}
}

// leaseOf finds the etcd lease of the subnet whose PublicIP is ip.
func leaseOf(t *testing.T, ip string) (key string, lease int64) {
	t.Helper()
	out, err := etcdctl("get", "--prefix", "/coreos.com/network/subnets/", "-w", "json")
	if err != nil {
		t.Fatal(err)
	}
	var resp struct {
		Kvs []struct {
			Key, Value string
			Lease      int64
		}
	}
	if err := json.Unmarshal([]byte(out), &resp); err != nil {
		t.Fatalf("etcdctl json: %v", err)
	}
	for _, kv := range resp.Kvs {
		k, _ := base64.StdEncoding.DecodeString(kv.Key)
		v, _ := base64.StdEncoding.DecodeString(kv.Value)
		var val struct{ PublicIP string }
		if json.Unmarshal(v, &val) == nil && val.PublicIP == ip {
			return string(k), kv.Lease
		}
	}
	return "", 0
}

// hostRemoved: host 3 is decommissioned (containers and networks removed,
// plugin disabled, dockerd stopped, lease revoked); the others forget it.
func (s *scenario) hostRemoved(t *testing.T) {
	h3 := hosts()[2]
	key, lease := leaseOf(t, h3.ip())
	if key == "" {
		t.Fatalf("no etcd lease with PublicIP %s", h3.ip())
	}
	if ids := strings.Fields(h3.mustDocker(t, "ps", "-aq")); len(ids) > 0 {
		h3.mustDocker(t, append([]string{"rm", "-f"}, ids...)...)
	}
	h3.docker("network", "rm", "blue")
	h3.mustDocker(t, "plugin", "disable", driver)
	if err := script("stop", "3"); err != nil {
		t.Fatal(err)
	}
	if lease != 0 {
		if _, err := etcdctl("lease", "revoke", strconv.FormatInt(lease, 16)); err != nil {
			t.Fatal(err)
		}
	} else if _, err := etcdctl("del", key); err != nil {
		t.Fatal(err)
	}
	if k, _ := leaseOf(t, h3.ip()); k != "" {
		t.Fatalf("%s still in etcd after the revoke", k)
	}
	sub := s.subnets[3]
	for _, h := range hosts()[:2] {
		eventually(t, 20*time.Second, fmt.Sprintf("%s forgets host 3's subnet %s", h, sub), func() error {
			out, err := h.twillctl("--json", "leases")
			if err != nil {
				return err
			}
			if strings.Contains(out, `"`+sub.String()+`"`) || strings.Contains(out, h3.ip()) {
				return fmt.Errorf("twillctl leases still lists host 3: %s", out)
			}
			return nil
		})
	}
	// and traffic for it is no longer sent: h1-a cannot reach the old subnet's gateway
	gw := sub.Addr().Next()
	if reaches(t, s.byName("h1-a"), gw) {
		t.Errorf("h1-a still reaches %s of the removed host", gw)
	}
}

// badInput: wrong settings give a message that names the problem, in
// `docker plugin enable` or in the plugin's log. They run on host 3, which the
// previous step took out of the overlay (its dockerd is started again, with
// twill disabled), so a half-started plugin cannot disturb the others.
func (s *scenario) badInput(t *testing.T) {
	h3 := hosts()[2]
	if err := script("start", "3"); err != nil {
		t.Fatal(err)
	}
	ref := "10.199.0.251:5000/twill:latest"
	cases := []struct {
		name     string
		settings []string
		want     []string // any of these in the enable output or the plugin log
	}{
		{"unreachable-etcd", []string{"ETCD_ENDPOINTS=http://10.199.0.250:2399"}, []string{"10.199.0.250:2399"}},
		{"endpoints-no-scheme", []string{"ETCD_ENDPOINTS=10.199.0.250:2379"}, []string{"ETCD_ENDPOINTS"}},
		{"no-such-iface", []string{"ETCD_ENDPOINTS=" + etcdURL, "TWILL_IFACE=twe-nope"}, []string{"twe-nope"}},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			alias := fmt.Sprintf("twbad%d", i)
			state := filepath.Join(h3.dir(), alias)
			os.MkdirAll(state, 0o755)
			// install enables the plugin, as a user's install does
			args := append([]string{"plugin", "install", "--grant-all-permissions", "--alias", alias, ref,
				"state.source=" + state, "docker-run.source=/run", "TWILL_DOCKER_SOCKET=/host-run/twe-h3.sock", "TWILL_METRICS_ADDR="}, c.settings...)
			defer h3.docker("plugin", "rm", "-f", alias+":latest")
			checkBad(t, h3, alias+":latest", c.want, args...)
		})
	}
	t.Run("no-dev-net-tun", func(t *testing.T) {
		// the same bundle without the /dev/net/tun device
		dir := t.TempDir()
		if out, err := run(time.Minute, "cp", "-a", envOr("TWE_BUNDLE", filepath.Join(repoRoot, "plugin", "build", "bundle"))+"/.", dir); err != nil {
			t.Fatal(out, err)
		}
		cfg := filepath.Join(dir, "config.json")
		b, _ := os.ReadFile(cfg)
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		m["linux"].(map[string]any)["devices"] = []any{}
		b, _ = json.Marshal(m)
		os.WriteFile(cfg, b, 0o644)
		os.WriteFile(filepath.Join(dir, "rootfs", "notun"), []byte("a different layer\n"), 0o644) // P8
		name := "twbadtun:latest"
		h3.mustDocker(t, "plugin", "create", name, dir)
		defer h3.docker("plugin", "rm", "-f", name)
		state := filepath.Join(h3.dir(), "twbadtun")
		os.MkdirAll(state, 0o755)
		h3.mustDocker(t, "plugin", "set", name, "state.source="+state, "docker-run.source=/run", "TWILL_DOCKER_SOCKET=/host-run/twe-h3.sock",
			"ETCD_ENDPOINTS="+etcdURL, "TWILL_IFACE=twe0", "TWILL_METRICS_ADDR=")
		checkBad(t, h3, name, []string{"/dev/net/tun"}, "plugin", "enable", name)
	})
}

// checkBad runs the docker command that starts a misconfigured plugin (install
// or enable) and looks for the expected words in what the user can read: the
// command's output and the plugin's log.
func checkBad(t *testing.T, h host, name string, want []string, start ...string) {
	t.Helper()
	t0 := time.Now()
	out, err := h.docker(start...)
	t.Logf("docker %s %s: %.1fs, err=%v, last line: %s", start[0], start[1], time.Since(t0).Seconds(), err, lastLine(out))
	id, ierr := h.docker("plugin", "inspect", name, "--format", "{{.Id}}")
	if ierr != nil {
		t.Fatalf("plugin %s not there after %s: %v", name, start[1], ierr)
	}
	var seen string
	found := func() bool {
		seen = out + "\n" + h.pluginLog(id)
		for _, w := range want {
			if strings.Contains(seen, w) {
				return true
			}
		}
		return false
	}
	deadline := time.Now().Add(20 * time.Second)
	for !found() && time.Now().Before(deadline) {
		time.Sleep(time.Second)
	}
	h.docker("plugin", "disable", "-f", name)
	if !found() {
		t.Errorf("%s: neither enable nor the plugin log mentions any of %q:\n%s", name, want, tail(seen, 15))
		return
	}
	for _, l := range strings.Split(seen, "\n") {
		for _, w := range want {
			if strings.Contains(l, w) {
				t.Logf("user sees: %s", strings.TrimSpace(l))
				return
			}
		}
	}
}

func tail(s string, n int) string {
	l := strings.Split(s, "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
