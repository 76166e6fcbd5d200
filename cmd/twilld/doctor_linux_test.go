package main

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/twill-net/twill/internal/testbed"
)

var (
	ctlOnce sync.Once
	ctlBin  string
	ctlErr  error
)

// twillctl builds the twillctl binary once per test run.
func twillctl(t *testing.T) string {
	ctlOnce.Do(func() {
		dir, err := filepath.Abs(filepath.Join("..", "..", "bin"))
		if err != nil {
			ctlErr = err
			return
		}
		ctlBin = filepath.Join(dir, "twillctl-test")
		out, err := exec.Command("go", "build", "-o", ctlBin, "../twillctl").CombinedOutput()
		if err != nil {
			ctlErr = err
			t.Logf("%s", out)
		}
	})
	if ctlErr != nil {
		t.Fatalf("building twillctl: %v", ctlErr)
	}
	return ctlBin
}

type finding struct {
	Check  string
	OK     bool
	Detail string
	Fix    string
}

// doctorOn runs `twillctl doctor --json` inside h's namespace.
func doctorOn(t *testing.T, h *host) map[string]finding {
	t.Helper()
	out, _ := testbed.In(h.ns, twillctl(t), "--socket", filepath.Join(h.dir, "ctl.sock"), "--json", "doctor")
	var fs []finding
	// The JSON comes first; since 5143bf0 a failing doctor also says so on
	// stderr, which In returns after it.
	if err := json.NewDecoder(strings.NewReader(out)).Decode(&fs); err != nil {
		t.Fatalf("doctor output: %v\n%s", err, out)
	}
	m := map[string]finding{}
	for _, f := range fs {
		if strings.HasPrefix(f.Check, "peer ") {
			f.Check = "peer"
		}
		m[f.Check] = f
	}
	return m
}

func TestDoctorFindsEachMisconfiguration(t *testing.T) {
	c := newCluster(t, "twk7")
	h1, h2 := c.start(1), c.start(2)
	// A default route is normal and must not count as overlapping the overlay.
	testbed.MustIn(t, h1.ns, "ip", "route", "add", "default", "via", "10.199.0.254")
	all := doctorOn(t, h1)
	for name, f := range all {
		if !f.OK {
			t.Fatalf("healthy cluster: doctor reports %s: %s", name, f.Detail)
		}
	}
	if _, ok := all["peer"]; !ok {
		t.Fatalf("doctor did not probe the peer: %v", all)
	}

	for _, tc := range []struct {
		name, check, want string
		breakIt, fix      [][]string // commands run in h1's namespace
		breakUnder        [][]string // commands run in the underlay namespace
		fixUnder          [][]string
		breakPeer         [][]string // commands run in h2's namespace
		fixPeer           [][]string
	}{
		{name: "ip_forward off", check: "ip_forward", want: "ip_forward=0",
			breakIt: [][]string{{"sysctl", "-qw", "net.ipv4.ip_forward=0"}}, fix: [][]string{{"sysctl", "-qw", "net.ipv4.ip_forward=1"}}},
		{name: "strict rp_filter", check: "rp_filter", want: "twill0=1",
			breakIt: [][]string{{"sysctl", "-qw", "net.ipv4.conf.twill0.rp_filter=1"}}, fix: [][]string{{"sysctl", "-qw", "net.ipv4.conf.twill0.rp_filter=0"}}},
		{name: "route overlapping the overlay", check: "routes", want: "10.96.250.0/24 dev ul0",
			breakIt: [][]string{{"ip", "route", "add", "10.96.250.0/24", "dev", "ul0"}}, fix: [][]string{{"ip", "route", "del", "10.96.250.0/24", "dev", "ul0"}}},
		{name: "FORWARD policy drop without twill's jump", check: "iptables FORWARD", want: "policy DROP=true",
			breakIt: [][]string{{"iptables", "-w", "-P", "FORWARD", "DROP"}, {"iptables", "-w", "-D", "FORWARD", "-j", "TWILL-FORWARD"}},
			fix:     [][]string{{"iptables", "-w", "-I", "FORWARD", "-j", "TWILL-FORWARD"}, {"iptables", "-w", "-P", "FORWARD", "ACCEPT"}}},
		{name: "UDP port blocked at the peer", check: "peer", want: "no answer",
			breakPeer: [][]string{{"iptables", "-w", "-I", "INPUT", "-p", "udp", "--dport", "8285", "-j", "DROP"}},
			fixPeer:   [][]string{{"iptables", "-w", "-D", "INPUT", "-p", "udp", "--dport", "8285", "-j", "DROP"}}},
		{name: "MTU black hole on the path", check: "peer", want: "MTU black hole",
			breakUnder: [][]string{{"ip", "link", "set", "ul2", "mtu", "1400"}}, fixUnder: [][]string{{"ip", "link", "set", "ul2", "mtu", "1500"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			run := func(ns string, cmds [][]string) {
				for _, cmd := range cmds {
					testbed.MustIn(t, ns, cmd[0], cmd[1:]...)
				}
			}
			run(h1.ns, tc.breakIt)
			run(c.bed.UnderlayNS(), tc.breakUnder)
			run(h2.ns, tc.breakPeer)
			got := doctorOn(t, h1)[tc.check]
			run(h1.ns, tc.fix)
			run(c.bed.UnderlayNS(), tc.fixUnder)
			run(h2.ns, tc.fixPeer)
			if got.OK || !strings.Contains(got.Detail, tc.want) || got.Fix == "" {
				t.Errorf("doctor's %s check: %+v, want a failure mentioning %q with a fix", tc.check, got, tc.want)
			}
		})
	}
	t.Run("etcd down", func(t *testing.T) {
		c.etcdP.Kill()
		got := doctorOn(t, h1)["etcd reachable"]
		if got.OK || got.Fix == "" {
			t.Errorf("doctor's etcd check with etcd stopped: %+v", got)
		}
	})
}
