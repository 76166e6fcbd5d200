package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// status reads twillctl status on h.
func (h host) status(t *testing.T) map[string]any {
	t.Helper()
	out, err := h.twillctl("--json", "status")
	if err != nil {
		t.Fatalf("twillctl status on %s: %v: %s", h, err, out)
	}
	var s map[string]any
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("twillctl status on %s: %v: %s", h, err, out)
	}
	return s
}

func subnetOf(s map[string]any) string {
	ovs, _ := s["overlays"].([]any)
	for _, o := range ovs {
		if m, ok := o.(map[string]any); ok && m["default"] == true {
			return fmt.Sprint(m["subnet"])
		}
	}
	return ""
}

// upgradeAndSet: `docker plugin set` and `docker plugin upgrade` to a new
// version from the registry on host 2 keep its state (subnet, allocations,
// endpoints) and its running containers' connectivity.
func (s *scenario) upgradeAndSet(t *testing.T) {
	h2, h3 := hosts()[1], hosts()[2]
	const v2 = "10.199.0.251:5000/twill:v2"
	// Publish "v2" from host 3 (built from the same bundle; what matters is
	// that Docker replaces the plugin's rootfs and process).
	// A changed rootfs (a VERSION file more): Docker refuses to create a
	// plugin whose layer it already holds.
	bundle := filepath.Join(t.TempDir(), "bundle")
	if out, err := exec.Command("cp", "-a", envOr("TWE_BUNDLE", filepath.Join(repoRoot, "plugin", "build", "bundle")), bundle).CombinedOutput(); err != nil {
		t.Fatalf("copying the bundle: %v: %s", err, out)
	}
	if err := os.WriteFile(filepath.Join(bundle, "rootfs", "VERSION"), []byte("v2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	h3.docker("plugin", "rm", "-f", v2)
	h3.mustDocker(t, "plugin", "create", v2, bundle)
	h3.mustDocker(t, "plugin", "push", v2)
	h3.mustDocker(t, "plugin", "rm", "-f", v2)

	before := subnetOf(h2.status(t))
	a, b := s.byName("h2-a"), s.byName("h2-b")
	// Pings every 10 ms from h1-a to h2-a across disable -f, upgrade and
	// enable: on the kernel datapath its programs forward while no twilld
	// runs (for the hold, 10 s), on the TUN path nothing does.
	pings := pingAcross(s.byName("h1-a"), a, 1500)
	time.Sleep(time.Second)
	start := time.Now()
	h2.mustDocker(t, "plugin", "disable", "-f", driver)
	enabled := false
	defer func() { // whatever failed, leave the host's plugin running for the later steps
		if !enabled {
			h2.docker("plugin", "enable", driver)
		}
	}()
	h2.mustDocker(t, "plugin", "set", driver, "TWILL_LOG_LEVEL=info")
	// The CLI asks "Plugin images do not match, are you sure?" for another
	// repository or tag; answer yes as an operator would.
	up := exec.Command(dockerBin(), "-H", fmt.Sprintf("unix:///run/twe-h%d.sock", h2.n), "plugin", "upgrade", "--grant-all-permissions", driver, v2)
	up.Stdin = strings.NewReader("y\n")
	out, err := up.CombinedOutput()
	if err != nil {
		t.Fatalf("plugin upgrade: %v: %s", err, out)
	}
	t.Logf("upgrade: %s", strings.TrimSpace(string(out)))
	// Docker 20.10 keeps the settings through an upgrade as inspect shows
	// them, but starts the upgraded plugin with config.json's default mount
	// sources ("error mounting /var/lib/twill ... no such file"): a host
	// whose state lives elsewhere sets the sources again, as the README says.
	t.Logf("after upgrade: %s", strings.TrimSpace(h2.mustDocker(t, "plugin", "inspect", "-f", "mounts {{range .Settings.Mounts}}{{.Name}}={{.Source}} {{end}}env {{.Settings.Env}}", driver)))
	h2.mustDocker(t, "plugin", "set", driver, "state.source="+filepath.Join(h2.dir(), "twill"), "docker-run.source=/run")
	h2.mustDocker(t, "plugin", "enable", driver)
	enabled = true
	pings.check(t, "disable -f, upgrade and enable", time.Since(start))

	insp := h2.mustDocker(t, "plugin", "inspect", "-f", "{{.PluginReference}} {{.Settings.Env}}", driver)
	if !strings.Contains(insp, v2) || !strings.Contains(insp, "TWILL_LOG_LEVEL=info") || !strings.Contains(insp, "ETCD_ENDPOINTS="+etcdURL) {
		t.Errorf("after set + upgrade the plugin is %s; want %s with TWILL_LOG_LEVEL=info and the install's ETCD_ENDPOINTS", insp, v2)
	}
	eventually(t, 20*time.Second, "twilld back on h2", func() error {
		out, err := h2.twillctl("status")
		if err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})
	if after := subnetOf(h2.status(t)); after != before {
		t.Errorf("h2's subnet changed across the upgrade: %s -> %s", before, after)
	}
	reach(t, 30*time.Second, s.byName("h1-a"), a, b)
	reach(t, 30*time.Second, a, s.byName("h3-b"))
	// The allocations survived: a new container gets neither running one's address.
	h2.mustDocker(t, runArgs("h2-up", "blue")...)
	ip := inspectIP(t, h2, "h2-up", "blue")
	if ip == a.ip || ip == b.ip {
		t.Errorf("h2-up got %s, which a running container holds", ip)
	}
	reach(t, 30*time.Second, ctr{h2, "h2-up", ip}, s.byName("h1-b"))
	h2.mustDocker(t, "rm", "-f", "h2-up")
}
