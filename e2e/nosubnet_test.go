package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// noSubnet: `docker network create` without --subnet, the most natural
// command, ends at once with a message that says what to type, and leaves
// the plugin's state as it was (issue 12: dockerd asked for the pool about
// 600 times a second, forever, and every request kept a reference).
func (s *scenario) noSubnet(t *testing.T) {
	h := hosts()[0]
	before, err := h.twillctl("networks")
	if err != nil {
		t.Fatal(err)
	}
	id := h.pluginID(t)
	calls := func() int { return strings.Count(h.pluginLog(id), "IpamDriver.RequestPool") }
	callsBefore := calls()

	for _, try := range []struct{ name string }{{"nosub1"}, {"nosub2"}, {"nosub3"}} {
		start := time.Now()
		out, err := run(20*time.Second, dockerBin(), "-H", "unix:///run/twe-h1.sock",
			"network", "create", "-d", driver, "--ipam-driver", driver, try.name)
		took := time.Since(start)
		t.Logf("network create %s without --subnet: %.0f ms: %s", try.name, took.Seconds()*1000, lastLine(out))
		if err == nil {
			h.docker("network", "rm", try.name)
			t.Fatalf("network create without --subnet succeeded; want a refusal naming --subnet %s", overlay)
		}
		if !strings.Contains(out, "--subnet "+overlay) {
			t.Errorf("the refusal does not say what to type (--subnet %s): %s", overlay, out)
		}
		if took > time.Second {
			t.Errorf("network create without --subnet took %s, want under 1 s", took)
		}
	}
	// Docker called RequestPool once per attempt, not in a loop. The
	// plugin's log lines reach dockerd's log asynchronously.
	time.Sleep(500 * time.Millisecond)
	if n := calls() - callsBefore; n != 3 {
		t.Errorf("dockerd called RequestPool %d times for 3 attempts", n)
	}

	// A compose network with twill's IPAM but no subnet gets the same answer.
	dir := t.TempDir()
	yml := `version: "3.7"
services:
  one: {image: ` + image + `, command: ["sleep", "1000000"], init: true, networks: [nosub]}
networks:
  nosub:
    driver: ` + driver + `
    ipam: {driver: ` + driver + `}
`
	if err := os.WriteFile(filepath.Join(dir, "docker-compose.yml"), []byte(yml), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "docker-compose", "-p", "twens", "up", "-d")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "DOCKER_HOST=unix:///run/twe-h1.sock")
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Errorf("compose up with a twill network without a subnet succeeded:\n%s", out)
	} else if !strings.Contains(string(out), "--subnet "+overlay) {
		t.Errorf("compose up: the refusal does not say what to type (--subnet %s): %v\n%s", overlay, err, out)
	}
	down := exec.Command("docker-compose", "-p", "twens", "down")
	down.Dir, down.Env = dir, cmd.Env
	down.Run()

	if after, err := h.twillctl("networks"); err != nil || after != before {
		t.Errorf("twill's networks changed:\nbefore\n%s\nafter\n%s (%v)", before, after, err)
	}
}
