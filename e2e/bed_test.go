package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	overlay  = "10.96.0.0/16" // the default overlay (TWILL_NETWORK)
	overlay2 = "10.97.0.0/16" // a second, isolated overlay
	image    = "twe-busybox:latest"
	driver   = "twill:latest"
	etcdURL  = "http://10.199.0.250:2379"
	nHosts   = 3
)

var (
	enabled  = os.Getenv("TWILL_E2E") == "1"
	repoRoot string
	stateDir = envOr("TWE_STATE", "/var/lib/twe")
)

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func TestMain(m *testing.M) {
	if !enabled {
		os.Exit(m.Run())
	}
	_, file, _, _ := runtime.Caller(0)
	repoRoot = filepath.Dir(filepath.Dir(file))
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "e2e: TWILL_E2E=1 needs root (network namespaces, dockerd)")
		os.Exit(1)
	}
	reuse := os.Getenv("TWILL_E2E_REUSE") == "1" && script("status") == nil
	if !reuse {
		if err := script("up"); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: testbed up:", err)
			os.Exit(1)
		}
	}
	down := func() {
		if os.Getenv("TWILL_E2E_KEEP") == "1" {
			fmt.Fprintln(os.Stderr, "e2e: TWILL_E2E_KEEP=1: testbed left up (scripts/testbed.sh down removes it)")
			return
		}
		if err := script("down"); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: testbed down:", err)
		}
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		<-sig
		down()
		os.Exit(2)
	}()
	code := m.Run()
	signal.Stop(sig)
	down()
	os.Exit(code)
}

// script runs scripts/testbed.sh with its output on stderr.
func script(args ...string) error {
	cmd := exec.Command("bash", append([]string{filepath.Join(repoRoot, "scripts", "testbed.sh")}, args...)...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.Env = append(os.Environ(), fmt.Sprintf("TWE_HOSTS=%d", nHosts))
	return cmd.Run()
}

func needBed(t *testing.T) {
	t.Helper()
	if !enabled {
		t.Skip("end-to-end test: set TWILL_E2E=1 and run as root (make e2e)")
	}
}

// run runs a command with a deadline and returns its trimmed combined output;
// the error carries the output, so a failing docker command explains itself.
func run(timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = 2 * time.Second
	err := cmd.Run()
	s := strings.TrimSpace(out.String())
	if err != nil {
		return s, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, s)
	}
	return s, nil
}

// host is one Docker host of the testbed: netns twe-hN, dockerd on /run/twe-hN.sock.
type host struct{ n int }

func hosts() []host {
	hs := make([]host, nHosts)
	for i := range hs {
		hs[i] = host{i + 1}
	}
	return hs
}

func (h host) String() string { return fmt.Sprintf("h%d", h.n) }
func (h host) ns() string     { return fmt.Sprintf("twe-h%d", h.n) }
func (h host) ip() string     { return fmt.Sprintf("10.199.0.%d", h.n) }
func (h host) dir() string    { return filepath.Join(stateDir, fmt.Sprintf("h%d", h.n)) }

// engine is the Docker engine the testbed runs (scripts/lib.sh use_engine):
// "debian" (Debian's docker.io 20.10) or "current" (scripts/engine.sh).
func engine() string { return envOr("TWILL_ENGINE", "debian") }

func dockerBin() string {
	if d := os.Getenv("DOCKER"); d != "" {
		return d
	}
	if _, err := os.Stat("/usr/bin/docker"); err == nil {
		return "/usr/bin/docker" // matches Debian's dockerd 20.10
	}
	return "docker"
}

// docker runs the docker CLI against this host.
func (h host) docker(args ...string) (string, error) {
	return run(2*time.Minute, dockerBin(), append([]string{"-H", fmt.Sprintf("unix:///run/twe-h%d.sock", h.n)}, args...)...)
}

func (h host) mustDocker(t *testing.T, args ...string) string {
	t.Helper()
	out, err := h.docker(args...)
	if err != nil {
		t.Fatalf("%s: %v", h, err)
	}
	return out
}

// sh runs a command in this host's network namespace (the host's own view).
func (h host) sh(timeout time.Duration, args ...string) (string, error) {
	return run(timeout, "ip", append([]string{"netns", "exec", h.ns()}, args...)...)
}

// pluginID is the ID of the twill plugin installed on this host.
func (h host) pluginID(t *testing.T) string {
	t.Helper()
	return h.mustDocker(t, "plugin", "inspect", driver, "--format", "{{.Id}}")
}

// pluginPIDs lists the twilld processes of this host (the plugin runs in the host netns).
func (h host) pluginPIDs() []int {
	out, _ := run(10*time.Second, "ip", "netns", "pids", h.ns())
	var pids []int
	for _, f := range strings.Fields(out) {
		exe, err := os.Readlink("/proc/" + f + "/exe")
		// the plugin's rootfs is mounted in dockerd's mount namespace only, so
		// from here its binary reads as /twilld
		if err == nil && (exe == "/twilld" || strings.HasSuffix(exe, "/rootfs/twilld")) {
			var pid int
			fmt.Sscan(f, &pid)
			pids = append(pids, pid)
		}
	}
	return pids
}

// pluginLog returns what the plugin with this ID wrote (dockerd logs every line
// of it with plugin=<id>).
func (h host) pluginLog(id string) string {
	b, _ := os.ReadFile(filepath.Join(h.dir(), "dockerd.log"))
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "plugin="+id) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// twillctl runs the host-side twillctl against this host's plugin (its control
// socket is in the state directory the plugin mounts).
func (h host) twillctl(args ...string) (string, error) {
	sock := filepath.Join(h.dir(), "twill", "twill-ctl.sock")
	return run(30*time.Second, envOr("TWILLCTL", filepath.Join(repoRoot, "bin", "twillctl")), append([]string{"--socket", sock}, args...)...)
}

// eventually retries f until it returns nil or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for {
		if err = f(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %s: %v", what, timeout, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func etcdctl(args ...string) (string, error) {
	return run(30*time.Second, "ip", append([]string{"netns", "exec", "twe-etcd", "env", "ETCDCTL_API=3", "etcdctl", "--endpoints", etcdURL}, args...)...)
}
