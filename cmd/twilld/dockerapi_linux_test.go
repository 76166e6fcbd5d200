package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twill-net/twill/internal/control"
	"github.com/twill-net/twill/internal/testbed"
)

// fakeDocker serves GET /networks on a Unix socket with the given IDs.
func fakeDocker(t *testing.T, ids ...string) string {
	sock := filepath.Join(t.TempDir(), "docker.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/networks" {
			http.NotFound(w, r)
			return
		}
		var parts []string
		for _, id := range ids {
			parts = append(parts, fmt.Sprintf(`{"ID":%q,"Name":"n","Driver":"twill:latest"}`, id))
		}
		fmt.Fprintf(w, "[%s]", strings.Join(parts, ","))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock
}

func TestNetworkRemovedWhileDownIsCleanedUp(t *testing.T) {
	c := newCluster(t, "twke")
	h := c.start(1)
	a := h.docker.CreateNetwork(t, testbed.ID("keep"), "10.96.0.0/16", nil)
	b := h.docker.CreateNetwork(t, testbed.ID("removed"), "10.97.0.0/16", nil)
	// twill goes down; `docker network rm` of b happens meanwhile.
	h.proc.Kill()
	c.start(1, "--docker-socket", fakeDocker(t, a.ID, testbed.ID("a container-less bridge network")))
	err := testbed.WaitFor(context.Background(), 10*time.Second, func() error {
		var nets []control.Network
		if err := h.ctl.Get(context.Background(), "networks", &nets); err != nil {
			return err
		}
		if len(nets) != 1 || nets[0].ID != a.ID {
			return fmt.Errorf("networks %+v", nets)
		}
		if !strings.Contains(h.proc.Tail(1<<20), "removed a network dockerd deleted") {
			return fmt.Errorf("removal not finished")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	links := testbed.MustIn(t, h.ns, "ip", "-o", "link", "show")
	if strings.Contains(links, "tw-"+b.ID[:8]) || !strings.Contains(links, "tw-"+a.ID[:8]) {
		t.Errorf("bridges after reconciliation:\n%s\n%s", links, h.proc.Tail(6000))
	}
	// Its pool is free again: the overlay can back a new network.
	h.docker.CreateNetwork(t, testbed.ID("again"), "10.97.0.0/16", nil)
}

func TestDockerListingNoneOfOursRemovesNothing(t *testing.T) {
	c := newCluster(t, "twkf")
	h := c.start(1)
	h.docker.CreateNetwork(t, testbed.ID("stays"), "10.96.0.0/16", nil)
	h.proc.Kill()
	c.start(1, "--docker-socket", fakeDocker(t, testbed.ID("someone else's")))
	time.Sleep(3 * time.Second)
	var nets []control.Network
	if err := h.ctl.Get(context.Background(), "networks", &nets); err != nil || len(nets) != 1 {
		t.Errorf("networks after reconciliation against another daemon: %+v %v", nets, err)
	}
}
