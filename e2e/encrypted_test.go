package e2e

import (
	"fmt"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"
)

// overlay3 is an encrypted overlay (flannel's wireguard backend).
const overlay3 = "10.98.0.0/16"

// encrypted: `docker network create -o twill.backend=wireguard` on three
// hosts makes an encrypted overlay: containers on it reach each other
// across hosts (ping matrix, 50 MB sha256-checked), twillctl peers shows
// each peer's WireGuard handshake, and nothing crosses to the plain overlay.
func (s *scenario) encrypted(t *testing.T) {
	var green []ctr
	for _, h := range hosts() {
		h.mustDocker(t, "network", "create", "-d", driver, "--ipam-driver", driver, "-o", "twill.backend=wireguard", "--subnet", overlay3, "green")
		name := fmt.Sprintf("h%d-g", h.n)
		h.mustDocker(t, runArgs(name, "green")...)
		c := ctr{h, name, inspectIP(t, h, name, "green")}
		if !netip.MustParsePrefix(overlay3).Contains(c.ip) {
			t.Fatalf("%s is outside %s", c, overlay3)
		}
		green = append(green, c)
	}
	t.Cleanup(func() {
		for _, c := range green {
			c.h.docker("rm", "-f", c.name)
		}
		for _, h := range hosts() {
			h.docker("network", "rm", "green")
		}
	})
	for _, src := range green {
		var targets []netip.Addr
		for _, dst := range green {
			if dst != src {
				targets = append(targets, dst.ip)
			}
		}
		if failed := pings(t, src, targets); len(failed) > 0 {
			t.Errorf("%s cannot ping %v on the encrypted overlay", src, failed)
		}
	}
	if mtu, err := green[0].h.docker("exec", green[0].name, "cat", "/sys/class/net/eth0/mtu"); err != nil || mtu != "1420" {
		t.Errorf("%s: eth0 mtu %q (%v), want 1420 (underlay 1500 - 80 of WireGuard)", green[0], mtu, err)
	}
	for i, src := range green {
		dst := green[(i+1)%len(green)]
		d := transfer(t, src, dst, 50)
		t.Logf("%s -> %s (encrypted): 50 MiB in %.2fs = %.0f Mbit/s, sha256 ok", src.name, dst.name, d.Seconds(), float64(50*8<<20)/d.Seconds()/1e6)
	}
	out, err := hosts()[0].twillctl("peers")
	if err != nil {
		t.Fatalf("twillctl peers: %v\n%s", err, out)
	}
	handshakes := 0
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "10.98.") && strings.Contains(l, ":51820") && strings.HasSuffix(strings.TrimSpace(l), "ago") {
			handshakes++
		}
	}
	if handshakes != 2 {
		t.Errorf("twillctl peers on %s lists %d encrypted peers with a handshake, want 2:\n%s", hosts()[0], handshakes, out)
	}
	t.Logf("twillctl peers on %s:\n%s", hosts()[0], out)
	// The plugin on host 2 is killed: Docker restarts it, it comes back with
	// the same key (state dir), and its peers reconnect.
	h2 := hosts()[1]
	key := func() string {
		out, err := h2.twillctl("status")
		if err != nil {
			return ""
		}
		_, k, _ := strings.Cut(out, "public key ")
		return strings.TrimSpace(strings.SplitN(k, "\n", 2)[0])
	}
	before := key()
	old := h2.pluginPIDs()
	if before == "" || len(old) != 1 {
		t.Fatalf("%s: public key %q, twilld pids %v", h2, before, old)
	}
	if err := syscall.Kill(old[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "twilld on "+h2.String()+" back with its encrypted overlay", func() error {
		if p := h2.pluginPIDs(); len(p) != 1 || p[0] == old[0] {
			return fmt.Errorf("twilld pids %v", p)
		}
		if k := key(); k != before {
			return fmt.Errorf("public key %q, was %q", k, before)
		}
		return nil
	})
	eventually(t, 20*time.Second, "encrypted peers reconnect after the restart", func() error {
		if failed := pings(t, green[0], []netip.Addr{green[1].ip}); len(failed) > 0 {
			return fmt.Errorf("%s cannot ping %s", green[0], green[1])
		}
		if failed := pings(t, green[1], []netip.Addr{green[2].ip}); len(failed) > 0 {
			return fmt.Errorf("%s cannot ping %s", green[1], green[2])
		}
		return nil
	})
	// Never forwarded between the encrypted and the plain overlay.
	blue := map[string]ctr{}
	for _, c := range s.cs {
		blue[c.name] = c
	}
	for _, c := range []struct{ src, dst ctr }{{green[0], blue["h2-a"]}, {blue["h1-a"], green[1]}, {green[0], blue["h1-a"]}} {
		if reaches(t, c.src, c.dst.ip) {
			t.Errorf("%s reached %s across the encrypted overlay's boundary", c.src, c.dst)
		}
	}
}
