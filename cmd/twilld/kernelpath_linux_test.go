package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/twill-net/twill/internal/testbed"
)

// TestKernelDatapathHosts runs twilld with --datapath kernel on three hosts:
// twillctl status names the kernel path, containers reach each other and
// move sha256-checked TCP, `twillctl peers` counts what the programs moved,
// a host that joins is reachable from the others within a second, and one
// that leaves is unreachable at once although nothing restarted the
// programs (its subnet is gone from their map), while a transfer between
// the other two goes on.
func TestKernelDatapathHosts(t *testing.T) {
	c := newCluster(t, "twkk")
	ctrs := map[int]testbed.Container{}
	for n := 1; n <= 2; n++ {
		h := c.start(n, "--datapath", "kernel")
		h.net = h.docker.CreateNetwork(t, testbed.ID(fmt.Sprintf("twkk-h%d", n)), "10.96.0.0/16", nil)
		ctrs[n] = c.container(h, fmt.Sprintf("c%d", n))
		if d := c.status(h).Datapath; !strings.HasPrefix(d, "kernel") {
			t.Fatalf("h%d: twillctl status says datapath %q, want the kernel path", n, d)
		}
	}
	mustPing(t, ctrs[1].NS, ctrs[2].Addr.Addr())
	mustPing(t, ctrs[2].NS, ctrs[1].Addr.Addr())
	for _, p := range [][2]int{{1, 2}, {2, 1}} {
		took := transfer(t, ctrs[p[0]].NS, ctrs[p[1]].NS, ctrs[p[1]].Addr.Addr(), 5001, 50<<20)
		t.Logf("c%d -> c%d: 50 MiB in %v", p[0], p[1], took.Round(time.Millisecond))
	}
	for _, p := range c.peers(c.hosts[1]).Peers {
		if p.PacketsIn < 1000 || p.PacketsOut < 1000 {
			t.Errorf("h1's counters for %s: %d packets in, %d out; the kernel's should be in them", p.Subnet, p.PacketsIn, p.PacketsOut)
		}
	}

	// While a third host joins and leaves, 1 GiB flows from c1 to c2 on
	// the programs: the peer table changing under them must not disturb
	// them (transfer checks the sha256).
	flowing := make(chan time.Duration, 1)
	go func() { flowing <- transfer(t, ctrs[1].NS, ctrs[2].NS, ctrs[2].Addr.Addr(), 5002, 1<<30) }()
	h3 := c.start(3, "--datapath", "kernel")
	h3.net = h3.docker.CreateNetwork(t, testbed.ID("twkk-h3"), "10.96.0.0/16", nil)
	ctrs[3] = c.container(h3, "c3")
	joined := time.Now()
	for n := 1; n <= 2; n++ {
		mustPing(t, ctrs[n].NS, ctrs[3].Addr.Addr())
		mustPing(t, ctrs[3].NS, ctrs[n].Addr.Addr())
	}
	if reach := time.Since(joined); reach > time.Second {
		t.Errorf("h3 took %v to be reachable from every host; the datapath promises 1 s", reach)
	} else {
		t.Logf("h3 reachable from every host %v after its container started", reach.Round(time.Millisecond))
	}

	if err := h3.ctl.Leave(context.Background()); err != nil {
		t.Fatal(err)
	}
	left := time.Now()
	err := testbed.WaitFor(context.Background(), 5*time.Second, func() error {
		if ping(ctrs[1].NS, ctrs[3].Addr.Addr()) == nil {
			return fmt.Errorf("c1 still reaches c3")
		}
		return nil
	})
	if err != nil {
		t.Errorf("after h3 left: %v", err)
	}
	t.Logf("h3 unreachable %v after it left", time.Since(left).Round(time.Millisecond))
	t.Logf("c1 -> c2 meanwhile: 1 GiB in %v, sha256 ok", (<-flowing).Round(time.Millisecond))
	mustPing(t, ctrs[1].NS, ctrs[2].Addr.Addr())
}
