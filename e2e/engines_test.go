package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The steps here exercise what changed between Docker 20.10 and 29 for a
// network + IPAM plugin (shared/notes/docker-engines.md); they run on both
// engines (scripts/e2e.sh), some only where the engine has the feature.

// ipFamilies: --ipv6 and --ipv4=false are refused with a message naming the
// flag (twill has no IPv6). --ipv4 exists from Docker 28 (API 1.47) on.
func (s *scenario) ipFamilies(t *testing.T) {
	h1 := hosts()[0]
	cases := [][]string{{"--ipv6"}, {"--ipv6", "--subnet", "fd00:7::/64"}}
	if engine() == "current" {
		cases = append(cases, []string{"--ipv4=false", "--ipv6"}, []string{"--ipv4=false"})
	}
	for _, flags := range cases {
		args := append([]string{"network", "create", "-d", driver, "--ipam-driver", driver, "--subnet", "10.98.0.0/16"}, flags...)
		args = append(args, "twfam")
		out, err := h1.docker(args...)
		if err == nil {
			h1.docker("network", "rm", "twfam")
			t.Errorf("network create %s was accepted; twill has no IPv6", strings.Join(flags, " "))
			continue
		}
		named := false
		for _, f := range flags {
			named = named || strings.HasPrefix(f, "--") && strings.Contains(out, f)
		}
		if !named || !strings.Contains(out, "IPv") {
			t.Errorf("network create %s: the message names neither flag nor the IP family: %s", strings.Join(flags, " "), out)
		}
		t.Logf("%s: %s", strings.Join(flags, " "), lastLine(out))
	}
	if out, _ := h1.docker("network", "ls", "-q", "--filter", "name=twfam"); out != "" {
		t.Errorf("a refused network was left behind: %s", out)
	}
}

// configure sets host h's daemon.json and dockerd flags (nil: the testbed's
// defaults) for its next start.
func (h host) configure(t *testing.T, daemonJSON string, args []string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(h.dir(), "daemon.json"), []byte(daemonJSON+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(h.dir(), "dockerd.args")
	if args == nil {
		os.Remove(f)
		return
	}
	if err := os.WriteFile(f, []byte(strings.Join(args, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// reload makes host h's dockerd re-read daemon.json (SIGHUP) and waits until
// `docker info` shows ok.
func (h host) reload(t *testing.T, what string, ok func(info string) bool) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/run/twe-h%d.pid", h.n))
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	fmt.Sscan(string(b), &pid)
	if err := syscall.Kill(pid, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, what, func() error {
		info, err := h.docker("info", "--format", "{{json .}}")
		if err != nil || !ok(info) {
			return fmt.Errorf("not yet: %v", err)
		}
		return nil
	})
}

// restartHost restarts h's dockerd, waits for its restart-policy containers
// and records their addresses (the one without --ip may change).
func (s *scenario) restartHost(t *testing.T, h host) {
	t.Helper()
	if err := script("restart", fmt.Sprint(h.n)); err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, h.String()+"'s containers running again", func() error {
		for _, c := range s.cs {
			if c.h != h {
				continue
			}
			out, err := h.docker("inspect", "-f", "{{.State.Running}}", c.name)
			if err != nil || out != "true" {
				return fmt.Errorf("%s running=%q %v", c.name, out, err)
			}
		}
		return nil
	})
	for i := range s.cs {
		if s.cs[i].h == h {
			s.cs[i].ip = inspectIP(t, h, s.cs[i].name, "blue")
		}
	}
}

// fetch GETs url from host from's namespace and checks the body.
func fetch(from host, url string) error {
	out, err := from.sh(10*time.Second, "busybox", "wget", "-q", "-O-", url)
	if err != nil {
		return err
	}
	if !strings.Contains(out, "root:x:0:0") {
		return fmt.Errorf("unexpected body %q", out)
	}
	return nil
}

func runWeb(t *testing.T, h host, name, publish string) {
	t.Helper()
	h.mustDocker(t, "run", "-d", "--pull=never", "--init", "--name", name, "--network", "blue",
		"-p", publish, image, "httpd", "-f", "-p", "80", "-h", "/etc")
}

// publishLiveRestore: a -p port stays published while host 1's dockerd
// restarts with live-restore (the container keeps running; Docker 29 keeps
// which endpoints it told the driver about only in memory), a new -p
// container publishes after the restart and is found by name from host 2, a
// second network connects to the restored container, and removing it frees
// its port.
func (s *scenario) publishLiveRestore(t *testing.T) {
	h1, h2 := hosts()[0], hosts()[1]
	live := func(on bool) func(string) bool {
		return func(info string) bool { return strings.Contains(info, fmt.Sprintf(`"LiveRestoreEnabled":%v`, on)) }
	}
	h1.configure(t, `{"live-restore": true}`, nil)
	h1.reload(t, "live-restore on", live(true))
	defer func() {
		// a reload changes only the keys the file has
		h1.configure(t, `{"live-restore": false}`, nil)
		h1.reload(t, "live-restore off", live(false))
		h1.docker("rm", "-f", "h1-lr1", "h1-lr2", "h1-lr3")
		h1.docker("network", "rm", "green")
	}()
	url := func(port int) string { return fmt.Sprintf("http://%s:%d/passwd", h1.ip(), port) }
	runWeb(t, h1, "h1-lr1", "8081:80")
	eventually(t, 15*time.Second, "h1-lr1's port 8081 from host 2", func() error { return fetch(h2, url(8081)) })
	started := h1.mustDocker(t, "inspect", "-f", "{{.State.StartedAt}}", "h1-lr1")

	if err := script("restart", "1"); err != nil {
		t.Fatal(err)
	}
	if now := h1.mustDocker(t, "inspect", "-f", "{{.State.Running}} {{.State.StartedAt}}", "h1-lr1"); now != "true "+started {
		t.Fatalf("h1-lr1 after the live-restore restart: %q, want running since %s", now, started)
	}
	eventually(t, 15*time.Second, "port 8081 after the live-restore restart", func() error { return fetch(h2, url(8081)) })

	runWeb(t, h1, "h1-lr2", "8082:80")
	eventually(t, 15*time.Second, "a port published after the restart", func() error { return fetch(h2, url(8082)) })
	// The plugin kept running across the restart, dockerd made a new API
	// socket: twilld must follow the new dockerd for names (a mount of the
	// old socket file would leave h1's names frozen).
	h2.mustDocker(t, runArgs("lr-cli", "blue", "--dns", resolver)...)
	defer h2.docker("rm", "-f", "lr-cli")
	d := untilAnswer(t, h2, "lr-cli", "h1-lr2", []string{inspectIP(t, h1, "h1-lr2", "blue").String()}, 2*time.Second)
	t.Logf("h1-lr2, started on h1 after its live-restore restart, resolved on h2 %v later", d)

	h1.mustDocker(t, "network", "create", "-d", driver, "--ipam-driver", driver, "--subnet", "10.98.0.0/16", "green")
	if out, err := h1.docker("network", "connect", "green", "h1-lr1"); err != nil {
		t.Errorf("network connect of a live-restored container: %v\n%s", err, out)
	} else {
		h1.mustDocker(t, "network", "disconnect", "green", "h1-lr1")
	}
	eventually(t, 15*time.Second, "port 8081 after connect/disconnect", func() error { return fetch(h2, url(8081)) })

	h1.mustDocker(t, "rm", "-f", "h1-lr1")
	eventually(t, 15*time.Second, "port 8081 unpublished after rm", func() error {
		if fetch(h2, url(8081)) == nil {
			return fmt.Errorf("still answers")
		}
		return nil
	})
	runWeb(t, h1, "h1-lr3", "8081:80")
	eventually(t, 15*time.Second, "port 8081 published again by another container", func() error { return fetch(h2, url(8081)) })
}

// firewallIptables: host 3's dockerd as most hosts run it: firewall on
// (iptables; Docker 28.0.1+ puts its rules in DOCKER-FORWARD; the current
// engine also turns ip6tables on) and the default bridge docker0; ip_forward
// off before it starts, as after a boot, so dockerd turns it on (Docker 29
// when it creates docker0, after it started twill, which waits for it) and
// sets the FORWARD policy to DROP. Containers reach across hosts and ports
// publish. Host 3 keeps this for the later steps.
func (s *scenario) firewallIptables(t *testing.T) {
	h1, h3 := hosts()[0], hosts()[2]
	h3.configure(t, `{}`, []string{"--userland-proxy=false"})
	if _, err := h3.sh(5*time.Second, "sysctl", "-qw", "net.ipv4.ip_forward=0"); err != nil {
		t.Fatal(err)
	}
	s.restartHost(t, h3)
	fwd, err := h3.sh(10*time.Second, "iptables", "-S", "FORWARD")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("host 3 FORWARD:\n%s", fwd)
	if !strings.Contains(fwd, "-j TWILL-FORWARD") {
		t.Errorf("twill's jump to TWILL-FORWARD is missing in FORWARD")
	}
	if engine() == "current" && !strings.Contains(fwd, "-j DOCKER-FORWARD") {
		t.Errorf("the current engine should hook DOCKER-FORWARD into FORWARD")
	}
	if out, err := h3.sh(10*time.Second, "ip6tables", "-S", "FORWARD"); err == nil {
		t.Logf("host 3 ip6tables FORWARD:\n%s", out)
	}
	reach(t, 30*time.Second, s.byName("h3-a"), s.byName("h3-b"), s.byName("h1-a"), s.byName("h2-b"))
	reach(t, 30*time.Second, s.byName("h1-b"), s.byName("h3-a"), s.byName("h3-b"))
	runWeb(t, h3, "h3-fw", "8083:80")
	defer h3.docker("rm", "-f", "h3-fw")
	eventually(t, 15*time.Second, "a port published on host 3", func() error {
		return fetch(h1, fmt.Sprintf("http://%s:8083/passwd", h3.ip()))
	})
}

// firewallNftables: host 2's dockerd with "firewall-backend": "nftables"
// (Docker 29), started, as after a boot, with ip_forward off. With that
// backend dockerd does not turn forwarding on, and twill, a managed plugin
// (read-only /proc/sys), cannot: twill then fails with what to do, and
// `twillctl doctor` says the same as a FIX line. Once forwarding is on and
// the plugin restarted, containers reach across hosts and ports publish. Host
// 2 keeps the backend for the later steps.
func (s *scenario) firewallNftables(t *testing.T) {
	if engine() != "current" {
		t.Skip("Docker 20.10 has no nftables firewall backend")
	}
	h1, h2 := hosts()[0], hosts()[1]
	h2.configure(t, `{"firewall-backend": "nftables"}`, []string{"--bridge=none", "--userland-proxy=false"})
	if _, err := h2.sh(5*time.Second, "sysctl", "-qw", "net.ipv4.ip_forward=0"); err != nil {
		t.Fatal(err)
	}
	if err := script("restart", "2"); err != nil {
		t.Fatal(err)
	}
	tables, err := h2.sh(10*time.Second, "nft", "list", "tables")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("host 2 nftables tables:\n%s", tables)
	if !strings.Contains(tables, "docker") {
		t.Errorf("dockerd made no nftables table: is the nftables backend on?")
	}
	fwd, _ := h2.sh(5*time.Second, "sysctl", "-n", "net.ipv4.ip_forward")
	if fwd == "1" {
		t.Logf("dockerd turned ip_forward on itself with the nftables backend")
	} else {
		// twill waits 20 s for someone to turn it on, then answers with the reason
		var out string
		eventually(t, 60*time.Second, "twill's answer names ip_forward", func() error {
			var err error
			out, err = h2.docker(runArgs("h2-nofwd", "blue")...)
			h2.docker("rm", "-f", "h2-nofwd")
			if err == nil {
				return fmt.Errorf("docker run succeeded with ip_forward off")
			}
			if !strings.Contains(out, "sysctl -w net.ipv4.ip_forward=1") {
				return fmt.Errorf("docker run: %s", lastLine(out))
			}
			return nil
		})
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "ip_forward") {
				t.Logf("docker run with ip_forward off: %s", l)
			}
		}
		sock := filepath.Join(h2.dir(), "twill", "twill-ctl.sock")
		doc, _ := h2.sh(30*time.Second, envOr("TWILLCTL", filepath.Join(repoRoot, "bin", "twillctl")), "--socket", sock, "doctor")
		t.Logf("twillctl doctor on host 2:\n%s", doc)
		if !strings.Contains(doc, "FIX: sysctl -w net.ipv4.ip_forward=1") {
			t.Errorf("twillctl doctor gives no FIX line for ip_forward")
		}
		if _, err := h2.sh(5*time.Second, "sysctl", "-qw", "net.ipv4.ip_forward=1"); err != nil {
			t.Fatal(err)
		}
		h2.mustDocker(t, "plugin", "disable", "-f", driver)
		h2.mustDocker(t, "plugin", "enable", driver)
	}
	// containers that could not start while twill could not are started again
	for _, c := range s.cs {
		if c.h == h2 {
			if out, _ := h2.docker("inspect", "-f", "{{.State.Running}}", c.name); out != "true" {
				h2.mustDocker(t, "start", c.name)
			}
		}
	}
	for i := range s.cs {
		if s.cs[i].h == h2 {
			s.cs[i].ip = inspectIP(t, h2, s.cs[i].name, "blue")
		}
	}
	reach(t, 30*time.Second, s.byName("h2-a"), s.byName("h2-b"), s.byName("h1-a"), s.byName("h3-b"))
	reach(t, 30*time.Second, s.byName("h1-b"), s.byName("h2-a"), s.byName("h2-b"))
	runWeb(t, h2, "h2-nft", "8084:80")
	defer h2.docker("rm", "-f", "h2-nft")
	eventually(t, 15*time.Second, "a port published on host 2", func() error {
		return fetch(h1, fmt.Sprintf("http://%s:8084/passwd", h2.ip()))
	})
}
