package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// isolation: a second network with its own --subnet is a second overlay; its
// containers reach each other across hosts and nothing on the first overlay.
func (s *scenario) isolation(t *testing.T) {
	h1, h2 := hosts()[0], hosts()[1]
	var red []ctr
	for _, h := range []host{h1, h2} {
		h.mustDocker(t, "network", "create", "-d", driver, "--ipam-driver", driver, "--subnet", overlay2, "red")
		name := fmt.Sprintf("h%d-red", h.n)
		h.mustDocker(t, runArgs(name, "red")...)
		c := ctr{h, name, inspectIP(t, h, name, "red")}
		if !netip.MustParsePrefix(overlay2).Contains(c.ip) {
			t.Fatalf("%s is outside %s", c, overlay2)
		}
		red = append(red, c)
	}
	if failed := pings(t, red[0], []netip.Addr{red[1].ip}); len(failed) > 0 {
		t.Errorf("%s cannot reach %s on the same overlay", red[0], red[1])
	}
	blue := map[string]ctr{}
	for _, c := range s.cs {
		blue[c.name] = c
	}
	// red -> blue on the same host and on another host, and blue -> red
	cases := []struct{ src, dst ctr }{
		{red[0], blue["h1-a"]}, {red[0], blue["h2-a"]}, {red[1], blue["h3-b"]},
		{blue["h1-a"], red[1]}, {blue["h3-a"], red[0]},
	}
	for _, c := range cases {
		if reaches(t, c.src, c.dst.ip) {
			t.Errorf("%s reached %s: the overlays %s and %s must be isolated", c.src, c.dst, overlay2, overlay)
		}
	}
}

// ipOutside: --ip inside the overlay but in another host's /24 is refused.
func (s *scenario) ipOutside(t *testing.T) {
	h1 := hosts()[0]
	other := s.subnets[2].Addr().As4()
	other[3] = 77
	ip := netip.AddrFrom4(other).String()
	out, err := h1.docker(runArgs("h1-wrongip", "blue", "--ip", ip)...)
	h1.docker("rm", "-f", "h1-wrongip")
	if err == nil {
		t.Fatalf("--ip %s (host 2's subnet) on host 1 was accepted", ip)
	}
	t.Logf("refused as expected: %s", lastLine(out))
}

func lastLine(s string) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return l[len(l)-1]
}

// publish: -p publishes a container port on the host's underlay address.
func (s *scenario) publish(t *testing.T) {
	h1, h2 := hosts()[0], hosts()[1]
	h1.mustDocker(t, "run", "-d", "--pull=never", "--init", "--name", "h1-web", "--network", "blue",
		"-p", "8080:80", image, "httpd", "-f", "-p", "80", "-h", "/etc")
	t.Cleanup(func() { h1.docker("rm", "-f", "h1-web") })
	url := fmt.Sprintf("http://%s:8080/passwd", h1.ip())
	eventually(t, 15*time.Second, "wget "+url+" from host 2", func() error {
		out, err := h2.sh(10*time.Second, "busybox", "wget", "-q", "-O-", url) // (busybox 1.35's wget -T segfaults)
		if err != nil {
			return err
		}
		if !strings.Contains(out, "root:x:0:0") {
			return fmt.Errorf("unexpected body %q", out)
		}
		return nil
	})
	// and from a container on another host, through its own host's masquerade
	eventually(t, 15*time.Second, "wget "+url+" from h2-a", func() error {
		_, err := h2.docker("exec", "h2-a", "timeout", "5", "wget", "-q", "-O", "/dev/null", url)
		return err
	})
	// Docker shows no ports for a remote driver's containers; twillctl does.
	out, err := h1.twillctl("endpoints")
	if err != nil || !strings.Contains(out, "0.0.0.0:8080->80/tcp") {
		t.Errorf("twillctl endpoints does not list the published port: %v\n%s", err, out)
	}
}

// compose: examples/compose runs a web service on host 1 and a client on host 2
// that fetches from it across the overlay, once with each compose users run:
// Debian's docker-compose 1.29 and the `docker compose` CLI plugin (Compose v5,
// there when the current engine's CLI is in use, scripts/engine.sh).
func (s *scenario) compose(t *testing.T) {
	tools := map[string]string{"docker-compose-1.29": "docker-compose"}
	if _, err := run(10*time.Second, dockerBin(), "compose", "version"); err == nil {
		tools["docker-compose-plugin"] = dockerBin() + " compose"
	} else if engine() == "current" {
		t.Errorf("the current engine's CLI has no compose plugin (scripts/engine.sh builds it): %v", err)
	}
	if _, err := exec.LookPath("docker-compose"); err != nil {
		t.Fatal("docker-compose is not installed (scripts/install-deps.sh installs it)")
	}
	for _, name := range []string{"docker-compose-1.29", "docker-compose-plugin"} {
		if tools[name] != "" {
			t.Run(name, func(t *testing.T) { s.composeWith(t, tools[name]) })
		}
	}
}

func (s *scenario) composeWith(t *testing.T, compose string) {
	runSh := filepath.Join(repoRoot, "examples", "compose", "run.sh")
	// web on hosts 1 and 3, the client on host 2 with only dns: set
	env := append(os.Environ(), "COMPOSE="+compose, "DOCKER="+dockerBin(),
		"DOCKER_HOST_WEB=unix:///run/twe-h1.sock unix:///run/twe-h3.sock", "DOCKER_HOST_CLIENT=unix:///run/twe-h2.sock",
		"TWILL_NETWORK_NAME=blue", "IMAGE="+image, "COMPOSE_PROJECT_NAME=twe")
	sh := func(arg string) (string, error) {
		cmd := exec.Command("bash", runSh, arg)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	defer func() {
		if out, err := sh("down"); err != nil {
			t.Errorf("compose down: %v\n%s", err, out)
		}
	}()
	out, err := sh("up")
	if err != nil {
		t.Fatalf("compose up: %v\n%s", err, out)
	}
	t.Logf("compose up:\n%s", out)
	// Each page names its server's address: both replicas must answer.
	want := map[string]string{}
	for _, n := range []int{1, 3} {
		want[fmt.Sprintf("h%d", n)] = "at " + strings.TrimSuffix(s.subnets[n].Addr().String(), "0")
	}
	h2 := hosts()[1]
	eventually(t, 60*time.Second, "client on host 2 fetched http://web/ from the replicas on hosts 1 and 3", func() error {
		// compose 1.29 names it twe_client_1, later ones twe-client-1
		id, err := h2.docker("ps", "-q", "--filter", "label=com.docker.compose.project=twe", "--filter", "label=com.docker.compose.service=client")
		if err != nil || id == "" {
			return fmt.Errorf("no client container: %q %v", id, err)
		}
		logs, err := h2.docker("logs", id)
		if err != nil {
			return err
		}
		for h, w := range want {
			if !strings.Contains(logs, "hello from web") || !strings.Contains(logs, w) {
				return fmt.Errorf("no page from web on %s (%q) in the client log: %q", h, w, logs)
			}
		}
		return nil
	})
}
