package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twill-net/twill/internal/testbed"
)

// churnCtr is a container of the churn test and the host it runs on.
type churnCtr struct {
	host *host
	testbed.Container
}

// churnRun starts a container the way dockerd does: calls that cannot reach
// a restarting plugin are retried, a failed step is undone.
func churnRun(c *cluster, h *host, name string) (*churnCtr, error) {
	ct, err := h.docker.Start(h.net, c.bed.AddNS(name), testbed.ID(name))
	if err != nil {
		testbed.Must(c.t, "ip", "netns", "del", ct.NS)
		return nil, err
	}
	return &churnCtr{host: h, Container: ct}, nil
}

// churnStop removes a container the way dockerd does on `docker rm -f`.
func churnStop(c *cluster, ct *churnCtr) error {
	err := ct.host.docker.Remove(ct.host.net, ct.Container)
	testbed.Must(c.t, "ip", "netns", "del", ct.NS)
	return err
}

func TestChurnWithKills(t *testing.T) {
	total, kills := 500, 20
	if v, err := strconv.Atoi(os.Getenv("TWILL_CHURN")); err == nil {
		total = v
	}
	const keepEvery = 10 // every 10th container stays running
	c := newCluster(t, "twkb")
	opts := []string{"--orphan-age", "4s", "--metrics-addr", "127.0.0.1:9586"}
	for n := 1; n <= 3; n++ {
		h := c.start(n, opts...)
		h.net = h.docker.CreateNetwork(t, testbed.ID(fmt.Sprintf("churn-h%d", n)), "10.96.0.0/16", nil)
		h.docker.Retry = 15 * time.Second // as dockerd retries a plugin being restarted
	}

	var mu sync.Mutex
	var running []*churnCtr
	var started, failed atomic.Int64
	var next atomic.Int64
	done := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= total {
					return
				}
				h := c.hosts[i%3+1]
				ct, err := churnRun(c, h, fmt.Sprintf("k%d", i))
				if err != nil {
					failed.Add(1)
					continue
				}
				started.Add(1)
				if i%keepEvery == 0 {
					mu.Lock()
					running = append(running, ct)
					mu.Unlock()
					continue
				}
				if err := churnStop(c, ct); err != nil {
					t.Logf("stop %d: %v", i, err)
				}
			}
		}()
	}
	// The killer: SIGKILL a random host's twilld at random moments and
	// restart it 200 ms later, as Docker restarts a managed plugin.
	var killed int
	go func() {
		defer close(done)
		for killed < kills {
			time.Sleep(time.Duration(200+rand.IntN(600)) * time.Millisecond)
			if next.Load() >= int64(total) {
				return
			}
			h := c.hosts[rand.IntN(3)+1]
			h.proc.Kill()
			killed++
			time.Sleep(200 * time.Millisecond)
			c.launch(h.n, opts...)
		}
	}()
	wg.Wait()
	<-done
	for n := 1; n <= 3; n++ {
		c.waitReady(c.hosts[n])
	}
	t.Logf("%d container starts, %d refused or failed while twilld was down, %d SIGKILLs, %d left running", started.Load(), failed.Load(), killed, len(running))
	if killed < kills {
		t.Errorf("only %d kills happened during the churn, want %d", killed, kills)
	}

	// No address is held twice.
	seen := map[netip.Addr]string{}
	for _, ct := range running {
		if other, dup := seen[ct.Addr.Addr()]; dup {
			t.Errorf("address %s held by %s and %s", ct.Addr, other, ct.NS)
		}
		seen[ct.Addr.Addr()] = ct.NS
	}
	// After the orphan sweep, each host holds exactly its running containers'
	// addresses plus its gateway; its endpoints and veths are exactly theirs.
	time.Sleep(6 * time.Second)
	for n := 1; n <= 3; n++ {
		h := c.hosts[n]
		var mine int
		for _, ct := range running {
			if ct.host == h {
				mine++
			}
		}
		if got := scrape(t, h, "twill_ipam_allocations", nil); int(got) != mine+1 {
			t.Errorf("h%d holds %v addresses, want %d containers + 1 gateway", n, got, mine)
		}
		var endpoints []map[string]any
		if err := h.ctl.Get(context.Background(), "endpoints", &endpoints); err != nil || len(endpoints) != mine {
			t.Errorf("h%d has %d endpoints (%v), want %d", n, len(endpoints), err, mine)
		}
		links := testbed.MustIn(t, h.ns, "ip", "-o", "link", "show")
		if v := strings.Count(links, ": twv"); v != mine {
			t.Errorf("h%d has %d veths, want %d", n, v, mine)
		}
		if b := strings.Count(links, ": tw-"); b != 1 {
			t.Errorf("h%d has %d twill bridges, want 1", n, b)
		}
		rules := testbed.MustIn(t, h.ns, "iptables-save")
		for _, line := range strings.Split(rules, "\n") {
			if strings.Contains(line, "tw-") && !strings.Contains(line, "tw-+") && !strings.Contains(line, h.net.ID[:8]) {
				t.Errorf("h%d: iptables rule for a bridge nobody owns: %s", n, line)
			}
		}
	}
	// Every running container reaches every other.
	var pingFails atomic.Int64
	var pw sync.WaitGroup
	sem := make(chan struct{}, 6)
	for _, a := range running {
		for _, b := range running {
			if a == b {
				continue
			}
			pw.Add(1)
			sem <- struct{}{}
			go func(a, b *churnCtr) {
				defer pw.Done()
				defer func() { <-sem }()
				if testbed.WaitFor(context.Background(), 3*time.Second, func() error { return ping(a.NS, b.Addr.Addr()) }) != nil {
					pingFails.Add(1)
					t.Errorf("%s cannot reach %s (%s)", a.NS, b.NS, b.Addr)
				}
			}(a, b)
		}
	}
	pw.Wait()
	t.Logf("%d running containers, %d pairs pinged, %d failed", len(running), len(running)*(len(running)-1), pingFails.Load())
}

// TestOrphanedAddressIsGivenBack: an address answered to a Docker that never
// learnt it (no CreateEndpoint follows) is given back after TWILL_ORPHAN_AGE;
// one that a container uses, and the gateway, are kept.
func TestOrphanedAddressIsGivenBack(t *testing.T) {
	c := newCluster(t, "twkc")
	h := c.start(1, "--orphan-age", "2s", "--metrics-addr", "127.0.0.1:9586")
	h.net = h.docker.CreateNetwork(t, testbed.ID("orphan"), "10.96.0.0/16", nil)
	ct := c.container(h, "o1")
	var lost struct{ Address string }
	if err := h.docker.Call("IpamDriver.RequestAddress", map[string]any{"PoolID": h.net.PoolID, "Address": "", "Options": nil}, &lost); err != nil {
		t.Fatal(err)
	}
	if got := scrape(t, h, "twill_ipam_allocations", nil); got != 3 {
		t.Fatalf("%v addresses held, want gateway + container + the lost one", got)
	}
	err := testbed.WaitFor(context.Background(), 8*time.Second, func() error {
		if got := scrape(t, h, "twill_ipam_allocations", nil); got != 2 {
			return fmt.Errorf("%v addresses held", got)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("orphan %s not given back: %v", lost.Address, err)
	}
	// The container's address is still held; the orphan can be asked for again.
	if err := h.docker.Call("IpamDriver.RequestAddress", map[string]any{"PoolID": h.net.PoolID, "Address": ct.Addr.Addr().String(), "Options": nil}, nil); err == nil {
		t.Errorf("the running container's address %s was given back", ct.Addr)
	}
	want := netip.MustParsePrefix(lost.Address).Addr().String()
	if err := h.docker.Call("IpamDriver.RequestAddress", map[string]any{"PoolID": h.net.PoolID, "Address": want, "Options": nil}, nil); err != nil {
		t.Errorf("the orphan %s is still held: %v", want, err)
	}
}

// TestVanishedContainerIsCleanedUp: a container that goes away while twill
// cannot hear about it (Docker's Leave, DeleteEndpoint and ReleaseAddress
// are lost) leaves no endpoint and no address behind.
func TestVanishedContainerIsCleanedUp(t *testing.T) {
	c := newCluster(t, "twkd")
	h := c.start(1, "--orphan-age", "2s", "--metrics-addr", "127.0.0.1:9586")
	h.net = h.docker.CreateNetwork(t, testbed.ID("vanish"), "10.96.0.0/16", nil)
	keep := c.container(h, "v1")
	gone := c.container(h, "v2")
	testbed.Must(t, "ip", "netns", "del", gone.NS) // the container dies; the kernel deletes its veth pair
	err := testbed.WaitFor(context.Background(), 10*time.Second, func() error {
		var eps []map[string]any
		if err := h.ctl.Get(context.Background(), "endpoints", &eps); err != nil {
			return err
		}
		if len(eps) != 1 {
			return fmt.Errorf("%d endpoints", len(eps))
		}
		if got := scrape(t, h, "twill_ipam_allocations", nil); got != 2 {
			return fmt.Errorf("%v addresses held", got)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("the vanished container's endpoint and address stayed: %v", err)
	}
	if err := h.docker.Call("IpamDriver.RequestAddress", map[string]any{"PoolID": h.net.PoolID, "Address": gone.Addr.Addr().String(), "Options": nil}, nil); err != nil {
		t.Errorf("the vanished container's address %s is still held: %v", gone.Addr, err)
	}
	if err := h.docker.Call("IpamDriver.RequestAddress", map[string]any{"PoolID": h.net.PoolID, "Address": keep.Addr.Addr().String(), "Options": nil}, nil); err == nil {
		t.Errorf("the live container's address %s was given back", keep.Addr)
	}
}
