package e2e

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	resolver   = "10.96.0.53"   // the default overlay's resolver (twillctl status)
	upstreamIP = "10.199.0.252" // testbed.sh's dnsstub, zone twe.
)

// lookup asks for name from inside container c on host h the way any program
// there does: through Docker's embedded DNS (127.0.0.11), which answers this
// host's containers and passes the rest to the container's --dns, twill's
// resolver. It returns the IPv4 addresses found, sorted.
func lookup(h host, c, name string) ([]string, error) {
	out, err := h.docker("exec", c, "nslookup", "-type=a", name)
	var addrs []string
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) >= 2 && f[0] == "Address:" && !strings.Contains(f[1], "#") {
			if a, perr := netip.ParseAddr(f[1]); perr == nil && a.Is4() && a.String() != "127.0.0.11" {
				addrs = append(addrs, a.String())
			}
		}
	}
	slices.Sort(addrs)
	if len(addrs) == 0 {
		if err == nil {
			err = fmt.Errorf("no address: %s", out)
		}
		return nil, err
	}
	return addrs, nil
}

// dnsstub runs the testbed's DNS client in the network namespace of container c.
func dnsstub(t *testing.T, h host, c string, args ...string) (string, error) {
	t.Helper()
	pid := h.mustDocker(t, "inspect", "-f", "{{.State.Pid}}", c)
	bin := filepath.Join(stateDir, "dns", "dnsstub")
	return run(30*time.Second, "nsenter", append([]string{"-t", pid, "-n", bin, "query"}, args...)...)
}

// untilAnswer polls lookup every 100 ms until want (sorted) is the answer and
// returns how long that took.
func untilAnswer(t *testing.T, h host, c, name string, want []string, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	var got []string
	var err error
	for time.Since(start) < timeout {
		if got, err = lookup(h, c, name); slices.Equal(got, want) || (len(want) == 0 && got == nil) {
			return time.Since(start)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s on %s: %s resolved to %v (%v), want %v, after %v", c, h, name, got, err, want, timeout)
	return 0
}

// names: containers on different hosts find each other by name through
// twill's resolver; names follow the containers; another network's names
// stay invisible; external names go to the upstream over UDP and TCP; a
// dead host's names vanish; a killed plugin answers again at once.
func (s *scenario) names(t *testing.T) {
	h1, h2, h3 := hosts()[0], hosts()[1], hosts()[2]
	for _, h := range hosts() {
		out, err := h.twillctl("status")
		if err != nil || !strings.Contains(out, resolver+" (serving") {
			t.Fatalf("%s: twillctl status does not show the resolver %s serving: %v\n%s", h, resolver, err, out)
		}
	}
	h1.mustDocker(t, runArgs("nm-web1", "blue", "--network-alias", "nmweb")...)
	h3.mustDocker(t, runArgs("nm-web3", "blue", "--network-alias", "nmweb")...)
	h2.mustDocker(t, runArgs("nm-cli", "blue", "--dns", resolver)...)
	t.Cleanup(func() {
		h1.docker("rm", "-f", "nm-web1")
		h3.docker("rm", "-f", "nm-web3")
		h2.docker("rm", "-f", "nm-cli")
	})
	web1, web3 := inspectIP(t, h1, "nm-web1", "blue").String(), inspectIP(t, h3, "nm-web3", "blue").String()
	both := []string{web1, web3}
	slices.Sort(both)

	// By alias on two hosts: both addresses; by container name: one.
	d := untilAnswer(t, h2, "nm-cli", "nmweb", both, 10*time.Second)
	t.Logf("nmweb (on h1 and h3) resolved on h2 to both replicas %v, %v after the containers started", both, d)
	untilAnswer(t, h2, "nm-cli", "nm-web3", []string{web3}, 2*time.Second)
	if out, err := h2.docker("exec", "nm-cli", "ping", "-c", "1", "-W", "3", "nm-web1"); err != nil || !strings.Contains(out, web1) {
		t.Errorf("ping nm-web1 (on h1) by name from h2: %v: %s", err, out)
	}
	// AAAA of a twill name: empty NOERROR, not NXDOMAIN.
	if out, err := dnsstub(t, h2, "nm-cli", "-server", resolver+":53", "-type", "AAAA", "nmweb"); err != nil || !strings.HasPrefix(out, "rcode NOERROR tc false answers 0") {
		t.Errorf("AAAA nmweb: %v %s", err, out)
	}
	// twillctl names on h2 lists both replicas with their hosts.
	out, err := h2.twillctl("names")
	if err != nil || !strings.Contains(out, web1) || !strings.Contains(out, web3) || !strings.Contains(out, h3.ip()) {
		t.Errorf("twillctl names on h2: %v\n%s", err, out)
	}

	// Another network's names are not visible: h1-red is on red.
	if got, err := lookup(h2, "nm-cli", "h1-red"); err == nil {
		t.Errorf("h1-red (network red) resolved on blue: %v", got)
	}
	// External names go to the upstream, over UDP and TCP; a large answer
	// comes truncated over UDP and whole over TCP.
	if got, err := lookup(h2, "nm-cli", "www.twe"); err != nil || !slices.Equal(got, []string{"198.51.100.80"}) {
		t.Errorf("www.twe through Docker's DNS and twill: %v %v", got, err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"www.twe"}, "rcode NOERROR tc false answers 1\n198.51.100.80"},
		{[]string{"-tcp", "www.twe"}, "rcode NOERROR tc false answers 1\n198.51.100.80"},
		{[]string{"big.twe"}, "rcode NOERROR tc true"},
		{[]string{"-tcp", "big.twe"}, "rcode NOERROR tc false answers 60"},
		{[]string{"-edns", "4096", "big.twe"}, "rcode NOERROR tc false answers 60"},
		{[]string{"nothing.example"}, "rcode NXDOMAIN"},
	} {
		out, err := dnsstub(t, h2, "nm-cli", append([]string{"-server", resolver + ":53"}, c.args...)...)
		if err != nil || !strings.HasPrefix(out, c.want) {
			t.Errorf("query %v via twill from nm-cli: %v\n%s\nwant %q", c.args, err, out, c.want)
		}
	}

	// docker stop on h1: the name leaves h2's answers within 2 s.
	stopped := time.Now()
	h1.mustDocker(t, "stop", "-t", "0", "nm-web1")
	d = untilAnswer(t, h2, "nm-cli", "nmweb", []string{web3}, 5*time.Second)
	t.Logf("docker stop on h1: nmweb on h2 lost h1's replica after %v (docker stop included %v)", time.Since(stopped), time.Since(stopped)-d)
	if el := time.Since(stopped); el > 2*time.Second {
		t.Errorf("stopped container still answered on h2 for %v (bar: 2 s)", el)
	}
	h1.mustDocker(t, "start", "nm-web1")
	web1 = inspectIP(t, h1, "nm-web1", "blue").String()
	both = []string{web1, web3}
	slices.Sort(both)
	d = untilAnswer(t, h2, "nm-cli", "nmweb", both, 5*time.Second)
	t.Logf("docker start on h1: back in h2's answers after %v", d)

	// Renamed, disconnected, connected again: right on h2 within 2 s each.
	h3.mustDocker(t, "rename", "nm-web3", "nm-web3b")
	t.Cleanup(func() { h3.docker("rm", "-f", "nm-web3b") })
	d = untilAnswer(t, h2, "nm-cli", "nm-web3b", []string{web3}, 2*time.Second)
	// The old name still answers, as on the container's own host: the
	// container's hostname (runArgs sets it to the first name) is among its
	// aliases on Engine 20.10, and Docker's DNS answers it there too.
	t.Logf("docker rename on h3: the new name resolved on h2 after %v", d)
	h3.mustDocker(t, "network", "disconnect", "blue", "nm-web3b")
	d = untilAnswer(t, h2, "nm-cli", "nmweb", []string{web1}, 2*time.Second)
	t.Logf("docker network disconnect on h3: gone from h2's answers after %v", d)
	h3.mustDocker(t, "network", "connect", "--alias", "nmweb", "blue", "nm-web3b")
	web3 = inspectIP(t, h3, "nm-web3b", "blue").String()
	both = []string{web1, web3}
	slices.Sort(both)
	d = untilAnswer(t, h2, "nm-cli", "nmweb", both, 2*time.Second)
	t.Logf("docker network connect on h3: back in h2's answers after %v", d)

	// A host that dies (its twilld frozen: no more keepalives) loses its
	// names within 15 s; thawed, it publishes them again.
	pids := h3.pluginPIDs()
	if len(pids) != 1 {
		t.Fatalf("h3: want one twilld, found %v", pids)
	}
	syscall.Kill(pids[0], syscall.SIGSTOP)
	frozen := time.Now()
	d = untilAnswer(t, h2, "nm-cli", "nmweb", []string{web1}, 20*time.Second)
	syscall.Kill(pids[0], syscall.SIGCONT)
	t.Logf("h3's twilld frozen: its names left h2's answers after %v", d)
	if d > 15*time.Second {
		t.Errorf("a dead host's names lasted %v (bar: 15 s)", time.Since(frozen))
	}
	d = untilAnswer(t, h2, "nm-cli", "nmweb", both, 20*time.Second)
	t.Logf("h3's twilld thawed: its names were back after %v", d)

	// The resolving host's plugin killed: names answer again within about 1 s.
	pids = h2.pluginPIDs()
	if len(pids) != 1 {
		t.Fatalf("h2: want one twilld, found %v", pids)
	}
	killed := time.Now()
	syscall.Kill(pids[0], syscall.SIGKILL)
	var back time.Duration
	for time.Since(killed) < 20*time.Second {
		if got, err := dnsstub(t, h2, "nm-cli", "-server", resolver+":53", "-timeout", "200ms", "nmweb"); err == nil && strings.Contains(got, web1) && strings.Contains(got, web3) {
			back = time.Since(killed)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if back == 0 {
		t.Fatalf("h2's plugin killed: names did not answer again within 20 s")
	}
	t.Logf("h2's plugin SIGKILLed: names answered again after %v", back)
	if back > 3*time.Second {
		t.Errorf("names took %v to answer after the plugin was killed (about 1 s wanted)", back)
	}
}
