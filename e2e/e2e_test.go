package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// ctr is a container of the scenario.
type ctr struct {
	h    host
	name string
	ip   netip.Addr
}

func (c ctr) String() string { return fmt.Sprintf("%s(%s %s)", c.name, c.h, c.ip) }

// scenario is the state the ordered steps share.
type scenario struct {
	cs      []ctr                // two per host on the default overlay, in host order
	subnets map[int]netip.Prefix // host number -> its /24 of the default overlay
}

// TestTwill runs the whole story in order: later steps use what earlier ones
// built, and the destructive ones (restart, kill, disable, host removal) come last.
func TestTwill(t *testing.T) {
	needBed(t)
	s := &scenario{subnets: map[int]netip.Prefix{}}
	steps := []struct {
		name  string
		f     func(*scenario, *testing.T)
		fatal bool // the following steps make no sense without this one
	}{
		{"NetworkCreate", (*scenario).networkCreate, true},
		{"NetworkCreateWithoutSubnet", (*scenario).noSubnet, false},
		{"Containers", (*scenario).containers, true},
		{"HostView", (*scenario).hostView, false},
		{"PingMatrix", (*scenario).pingMatrix, false},
		{"HostsReachRemoteContainers", (*scenario).hostsReach, false},
		{"Bulk50MB", (*scenario).bulk, false},
		{"SecondNetworkIsolated", (*scenario).isolation, false},
		{"EncryptedNetwork", (*scenario).encrypted, false},
		{"IPOutsideHostSubnetRefused", (*scenario).ipOutside, false},
		{"IPFamiliesRefused", (*scenario).ipFamilies, false},
		{"PublishPort", (*scenario).publish, false},
		{"PublishLiveRestore", (*scenario).publishLiveRestore, false},
		{"Compose", (*scenario).compose, false},
		{"Names", (*scenario).names, false},
		{"NamesLoad", (*scenario).namesLoad, false},
		{"DockerdRestart", (*scenario).dockerdRestart, false},
		{"FirewallIptables", (*scenario).firewallIptables, false},
		{"FirewallNftables", (*scenario).firewallNftables, false},
		{"PluginKilled", (*scenario).pluginKilled, false},
		{"PluginDisableEnable", (*scenario).disableEnable, false},
		{"PluginSetUpgrade", (*scenario).upgradeAndSet, false},
		{"HostRemoved", (*scenario).hostRemoved, false},
		{"BadInput", (*scenario).badInput, false},
	}
	for _, st := range steps {
		start := time.Now()
		ok := t.Run(st.name, func(t *testing.T) { st.f(s, t) })
		t.Logf("step %-28s %-4s %5.1fs", st.name, map[bool]string{true: "ok", false: "FAIL"}[ok], time.Since(start).Seconds())
		if !ok && st.fatal {
			t.Fatalf("step %s failed; the later steps need it", st.name)
		}
	}
}

func (s *scenario) networkCreate(t *testing.T) {
	for _, h := range hosts() {
		h.mustDocker(t, "network", "create", "-d", driver, "--ipam-driver", driver, "--subnet", overlay, "blue")
	}
	// Docker's default IPAM with the twill driver is refused with a message saying what to do
	out, err := hosts()[0].docker("network", "create", "-d", driver, "wrongipam")
	if err == nil {
		t.Errorf("network create -d %s without --ipam-driver succeeded; want a refusal naming --ipam-driver", driver)
		hosts()[0].docker("network", "rm", "wrongipam")
	} else if !strings.Contains(out, "ipam-driver") {
		t.Errorf("network create without --ipam-driver: message does not tell the user about --ipam-driver: %s", out)
	}
}

// inspectIP returns a container's address on a network.
func inspectIP(t *testing.T, h host, name, network string) netip.Addr {
	t.Helper()
	out := h.mustDocker(t, "inspect", "--format", fmt.Sprintf("{{(index .NetworkSettings.Networks %q).IPAddress}}", network), name)
	a, err := netip.ParseAddr(out)
	if err != nil {
		t.Fatalf("%s %s has no address on %s: %q", h, name, network, out)
	}
	return a
}

func runArgs(name, network string, extra ...string) []string {
	args := []string{"run", "-d", "--pull=never", "--init", "--name", name, "--hostname", name, "--network", network}
	args = append(args, extra...)
	return append(args, image, "sleep", "1000000")
}

func (s *scenario) containers(t *testing.T) {
	ov := netip.MustParsePrefix(overlay)
	for _, h := range hosts() {
		a := fmt.Sprintf("h%d-a", h.n)
		h.mustDocker(t, runArgs(a, "blue", "--restart", "always")...)
		ipa := inspectIP(t, h, a, "blue")
		sub, _ := ipa.Prefix(24)
		if !ov.Contains(ipa) {
			t.Fatalf("%s got %s, outside the overlay %s", a, ipa, ov)
		}
		for n, other := range s.subnets {
			if other == sub {
				t.Fatalf("%s and h%d share the subnet %s: each host must lease its own /24", h, n, sub)
			}
		}
		s.subnets[h.n] = sub
		// --ip inside this host's /24 is honoured
		want := sub.Addr().As4()
		want[3] = 50
		b := fmt.Sprintf("h%d-b", h.n)
		h.mustDocker(t, runArgs(b, "blue", "--restart", "always", "--ip", netip.AddrFrom4(want).String())...)
		if got := inspectIP(t, h, b, "blue"); got != netip.AddrFrom4(want) {
			t.Fatalf("%s asked for --ip %s, got %s", b, netip.AddrFrom4(want), got)
		}
		s.cs = append(s.cs, ctr{h, a, ipa}, ctr{h, b, netip.AddrFrom4(want)})
	}
	for _, c := range s.cs {
		t.Logf("%-6s %s", c.name, c.ip)
	}
	// every host's /24 is a flannel lease in etcd
	keys, err := etcdctl("get", "--prefix", "--keys-only", "/coreos.com/network/subnets/")
	if err != nil {
		t.Fatal(err)
	}
	for n, sub := range s.subnets {
		key := "/coreos.com/network/subnets/" + strings.Replace(sub.String(), "/", "-", 1)
		if !strings.Contains(keys, key) {
			t.Errorf("h%d's subnet %s has no etcd lease %s; keys:\n%s", n, sub, key, keys)
		}
	}
}

// hostView: every host holds its lease as flanneld does: twill0 with the
// subnet's first address as /32, the overlay routed to twill0, subnet.env.
func (s *scenario) hostView(t *testing.T) {
	// TWILL_DATAPATH=auto: the kernel datapath on NIC-like veths, the TUN
	// path on plain ones (their unfinished checksums; datapath/kernel).
	want := "tun"
	if kernelPath() {
		want = "kernel"
	}
	for _, h := range hosts() {
		out, err := h.twillctl("status")
		line := "" // "kernel (…)" or "tun (why)"
		for l := range strings.SplitSeq(out, "\n") {
			if rest, ok := strings.CutPrefix(l, "datapath"); ok {
				line = strings.TrimSpace(rest)
			}
		}
		if path, _, _ := strings.Cut(line, " "); err != nil || path != want {
			t.Errorf("%s: datapath %q, want %q (TWE_UNDERLAY=%q): %v\n%s", h, path, want, os.Getenv("TWE_UNDERLAY"), err, out)
		} else if h.n == 1 {
			t.Logf("datapath on every host: %s", line)
		}
	}
	for _, h := range hosts() {
		sub := s.subnets[h.n]
		addr, err := h.sh(10*time.Second, "ip", "-4", "-o", "addr", "show", "dev", "twill0")
		if err != nil {
			t.Errorf("%s: %v", h, err)
			continue
		}
		if want := " " + sub.Addr().String() + "/32 "; !strings.Contains(addr, want) {
			t.Errorf("%s: twill0 does not hold%s: %s", h, want, addr)
		}
		routes, _ := h.sh(10*time.Second, "ip", "-4", "route", "show", overlay)
		if !strings.Contains(routes, "dev twill0") {
			t.Errorf("%s: no route %s dev twill0: %q", h, overlay, routes)
		}
		env, err := os.ReadFile(filepath.Join(h.dir(), "twill", "subnet.env"))
		if err != nil {
			t.Errorf("%s: flannel's subnet.env in the state directory: %v", h, err)
			continue
		}
		want := fmt.Sprintf("FLANNEL_SUBNET=%s/24", sub.Addr().Next())
		if !strings.Contains(string(env), "FLANNEL_NETWORK="+overlay) || !strings.Contains(string(env), want) {
			t.Errorf("%s: subnet.env lacks FLANNEL_NETWORK=%s or %s:\n%s", h, overlay, want, env)
		}
	}
}

// pings has a container ping each address; it returns those that got no reply.
func pings(t *testing.T, c ctr, targets []netip.Addr) []netip.Addr {
	t.Helper()
	var list []string
	for _, a := range targets {
		list = append(list, a.String())
	}
	script := `for ip in ` + strings.Join(list, " ") + `; do if ping -c 1 -W 2 $ip >/dev/null 2>&1 || ping -c 1 -W 2 $ip >/dev/null 2>&1; then echo "ok $ip"; else echo "FAIL $ip"; fi; done`
	out, err := c.h.docker("exec", c.name, "sh", "-c", script)
	if err != nil {
		t.Fatalf("ping from %s: %v", c, err)
	}
	var failed []netip.Addr
	for _, l := range strings.Split(out, "\n") {
		if f, ok := strings.CutPrefix(l, "FAIL "); ok {
			failed = append(failed, netip.MustParseAddr(f))
		}
	}
	return failed
}

// reaches reports whether c gets any reply from dst (2 pings, 1 s each): for
// the checks that expect silence, where every try costs its full timeout.
func reaches(t *testing.T, c ctr, dst netip.Addr) bool {
	t.Helper()
	out, err := c.h.docker("exec", c.name, "sh", "-c", "ping -c 2 -W 1 "+dst.String()+" >/dev/null 2>&1 && echo yes || echo no")
	if err != nil {
		t.Fatalf("ping from %s: %v", c, err)
	}
	return out == "yes"
}

func (s *scenario) pingMatrix(t *testing.T) {
	var all []netip.Addr
	for _, c := range s.cs {
		all = append(all, c.ip)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%-6s", "from\\to")
	for _, c := range s.cs {
		fmt.Fprintf(&b, " %-5s", c.name)
	}
	for _, src := range s.cs {
		var targets []netip.Addr
		for _, a := range all {
			if a != src.ip {
				targets = append(targets, a)
			}
		}
		failed := pings(t, src, targets)
		fmt.Fprintf(&b, "\n%-7s", src.name)
		for _, dst := range s.cs {
			mark := "ok"
			switch {
			case dst.ip == src.ip:
				mark = "-"
			case containsAddr(failed, dst.ip):
				mark = "FAIL"
				t.Errorf("%s cannot ping %s", src, dst)
			}
			fmt.Fprintf(&b, " %-5s", mark)
		}
	}
	t.Logf("ping matrix:\n%s", b.String())
}

func containsAddr(list []netip.Addr, a netip.Addr) bool {
	for _, x := range list {
		if x == a {
			return true
		}
	}
	return false
}

func (s *scenario) hostsReach(t *testing.T) {
	for _, h := range hosts() {
		for _, c := range s.cs {
			if c.h == h {
				continue
			}
			eventually(t, 10*time.Second, fmt.Sprintf("host %s reaches %s", h, c), func() error {
				_, err := h.sh(10*time.Second, "busybox", "ping", "-c", "1", "-W", "2", c.ip.String())
				return err
			})
		}
	}
}

// transfer sends mb MiB of random data from src to dst over TCP (busybox nc) and
// checks the size and sha256 on arrival. It returns the transfer time.
func transfer(t *testing.T, src, dst ctr, mb int) time.Duration {
	t.Helper()
	if _, err := src.h.docker("exec", src.name, "sh", "-c",
		fmt.Sprintf("dd if=/dev/urandom of=/tmp/tx bs=1048576 count=%d 2>/dev/null", mb)); err != nil {
		t.Fatal(err)
	}
	sum, err := src.h.docker("exec", src.name, "sh", "-c", "sha256sum < /tmp/tx | cut -d' ' -f1")
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		out string
		err error
	}
	rx := make(chan result, 1)
	go func() {
		out, err := dst.h.docker("exec", dst.name, "sh", "-c",
			// busybox nc -l closes the connection when its own stdin ends; with -e
			// the program gets the socket and stdin does not matter
			"nc -l -p 5001 -e sh -c 'cat > /tmp/rx'; wc -c < /tmp/rx; sha256sum < /tmp/rx | cut -d' ' -f1; rm -f /tmp/rx")
		rx <- result{out, err}
	}()
	start := time.Now()
	// the listener may not be up yet: nc fails at once on a refused connect
	send := fmt.Sprintf("for i in $(seq 50); do nc %s 5001 < /tmp/tx && exit 0; sleep 0.2; done; exit 1", dst.ip)
	if out, err := src.h.docker("exec", src.name, "sh", "-c", send); err != nil {
		t.Fatalf("send %s -> %s: %v %s", src, dst, err, out)
	}
	var r result
	select {
	case r = <-rx:
	case <-time.After(90 * time.Second):
		t.Fatalf("receiver %s did not finish", dst)
	}
	d := time.Since(start)
	src.h.docker("exec", src.name, "rm", "-f", "/tmp/tx")
	if r.err != nil {
		t.Fatalf("receive on %s: %v", dst, r.err)
	}
	lines := strings.Fields(r.out)
	if len(lines) != 2 || lines[0] != fmt.Sprint(mb<<20) || lines[1] != sum {
		t.Fatalf("%s -> %s: got %q, want %d bytes with sha256 %s", src, dst, r.out, mb<<20, sum)
	}
	return d
}

func (s *scenario) bulk(t *testing.T) {
	const mb = 50
	for i, src := range s.cs {
		dst := s.cs[(i+2)%len(s.cs)] // a container on the next host
		d := transfer(t, src, dst, mb)
		t.Logf("%s -> %s: %d MiB in %.2fs = %.0f Mbit/s, sha256 ok", src.name, dst.name, mb, d.Seconds(), float64(mb*8<<20)/d.Seconds()/1e6)
	}
}
