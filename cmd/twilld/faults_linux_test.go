package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twill-net/twill/internal/testbed"
)

// pinger pings dst from ns every 50 ms and records the longest run of
// failures between two successes (the outage a user would see).
type pinger struct {
	stop     chan struct{}
	done     chan struct{}
	ok, fail atomic.Int64
	mu       sync.Mutex
	worst    time.Duration
	lastOK   time.Time
	down     bool
}

func startPinger(ns string, dst netip.Addr) *pinger {
	p := &pinger{stop: make(chan struct{}), done: make(chan struct{}), lastOK: time.Now()}
	go func() {
		defer close(p.done)
		var stopping <-chan time.Time
		for {
			select {
			case <-p.stop:
				// Keep going until traffic is back (at most 10 s), so an
				// outage that is still open is measured, not cut short.
				p.stop = nil
				stopping = time.After(10 * time.Second)
			case <-stopping:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if p.stop == nil {
				p.mu.Lock()
				up := !p.down
				p.mu.Unlock()
				if up {
					return
				}
			}
			_, err := testbed.In(ns, "busybox", "ping", "-c", "1", "-W", "1", dst.String())
			now := time.Now()
			p.mu.Lock()
			if err == nil {
				p.ok.Add(1)
				if gap := now.Sub(p.lastOK); p.down && gap > p.worst {
					p.worst = gap
				}
				p.lastOK, p.down = now, false
			} else {
				p.fail.Add(1)
				p.down = true
			}
			p.mu.Unlock()
		}
	}()
	return p
}

// Stop ends the pinger and returns the longest gap between two successful
// pings that had failures in between.
func (p *pinger) Stop() time.Duration {
	close(p.stop)
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.worst
}

// twoHosts is the usual start of a fault test: two hosts, a network on each,
// a container on each that reach each other.
func twoHosts(t *testing.T, prefix string) (*cluster, testbed.Container, testbed.Container) {
	c := newCluster(t, prefix)
	h1, h2 := c.start(1), c.start(2)
	h1.net = h1.docker.CreateNetwork(t, testbed.ID(prefix+"-h1"), "10.96.0.0/16", nil)
	h2.net = h2.docker.CreateNetwork(t, testbed.ID(prefix+"-h2"), "10.96.0.0/16", nil)
	c1, c2 := c.container(h1, "c1"), c.container(h2, "c2")
	mustPing(t, c1.NS, c2.Addr.Addr())
	return c, c1, c2
}

func TestKillRestartKeepsSubnetAddressesAndTraffic(t *testing.T) {
	c, c1, c2 := twoHosts(t, "twk3")
	h2 := c.hosts[2]
	before := c.status(h2).Overlays[0].Subnet
	const kills = 3
	// A datagram every 5 ms from c1 to c2; the sink reports the longest silence.
	window := fmt.Sprintf("%ds", 4*kills+3)
	var sink string
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		sink, _ = testbed.In(c2.NS, "env", "TWILL_TEST_ROLE=udpsink", os.Args[0], c2.Addr.Addr().String()+":7000", window)
	}()
	time.Sleep(300 * time.Millisecond)
	go func() {
		defer wg.Done()
		// one datagram every 5 ms for the whole window
		testbed.In(c1.NS, "env", "TWILL_TEST_ROLE=udpsend", os.Args[0], c2.Addr.Addr().String()+":7000", fmt.Sprint((4*kills+3)*200), "8", "5ms")
	}()
	for i := 0; i < kills; i++ {
		time.Sleep(time.Second)
		h2.proc.Kill() // SIGKILL, as a crash; Docker restarts a managed plugin within ~0.2 s
		c.start(2)
		if err := testbed.WaitFor(context.Background(), 5*time.Second, func() error { return ping(c1.NS, c2.Addr.Addr()) }); err != nil {
			t.Fatalf("kill %d: traffic did not come back: %v\n%s", i, err, h2.proc.Tail(3000))
		}
		time.Sleep(time.Second)
	}
	wg.Wait()
	var got, worstMS int
	if _, err := fmt.Sscan(strings.TrimPrefix(strings.TrimSpace(sink), "listening"), &got, &worstMS); err != nil {
		t.Fatalf("sink said %q: %v", sink, err)
	}
	worst := time.Duration(worstMS) * time.Millisecond
	t.Logf("%d SIGKILL+restart of twilld: %d datagrams arrived, longest silence %v", kills, got, worst)
	if worst > 2*time.Second {
		t.Errorf("traffic gap %v, want at most 2s", worst)
	}
	if after := c.status(h2).Overlays[0].Subnet; after != before {
		t.Errorf("subnet changed across restarts: %s -> %s", before, after)
	}
	// The container's address is still held: asking for it explicitly fails.
	err := h2.docker.Call("IpamDriver.RequestAddress", map[string]any{"PoolID": h2.net.PoolID, "Address": c2.Addr.Addr().String(), "Options": nil}, nil)
	if err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("address %s of a running container was free after the restarts: %v", c2.Addr, err)
	}
	// New containers still start and get a different address.
	c3 := c.container(h2, "c3")
	if c3.Addr.Addr() == c2.Addr.Addr() {
		t.Fatalf("address %s handed out twice", c3.Addr)
	}
	mustPing(t, c1.NS, c3.Addr.Addr())
}

func TestEtcdOutage(t *testing.T) {
	outage := 60 * time.Second
	if v := os.Getenv("TWILL_ETCD_OUTAGE"); v != "" {
		outage, _ = time.ParseDuration(v)
	}
	c, c1, c2 := twoHosts(t, "twk4")
	h1, h2 := c.hosts[1], c.hosts[2]
	sub1, sub2 := c.status(h1).Overlays[0].Subnet, c.status(h2).Overlays[0].Subnet

	c.etcdP.Kill()
	t.Logf("etcd stopped for %v", outage)
	p := startPinger(c1.NS, c2.Addr.Addr())
	// A new container on a host that holds its lease still starts.
	time.Sleep(2 * time.Second)
	c3 := c.container(h1, "c3")
	mustPing(t, c3.NS, c2.Addr.Addr())
	if s := c.status(h1); s.EtcdHealthy {
		t.Errorf("status says etcd is healthy while it is down")
	}
	time.Sleep(outage - 2*time.Second)
	gap := p.Stop()
	if p.fail.Load() > 0 {
		t.Errorf("%d of %d pings failed while etcd was down (longest gap %v)", p.fail.Load(), p.ok.Load()+p.fail.Load(), gap)
	}
	t.Logf("during the outage: %d pings, %d failed", p.ok.Load()+p.fail.Load(), p.fail.Load())

	c.etcdP, _ = testbed.StartEtcd(t, c.bed.UnderlayNS(), netip.MustParseAddr("10.199.0.250"), 2379, c.etcdDir)
	err := testbed.WaitFor(context.Background(), 30*time.Second, func() error {
		for _, h := range []*host{h1, h2} {
			if s := c.status(h); !s.EtcdHealthy {
				return fmt.Errorf("h%d: etcd not healthy yet: %s", h.n, s.EtcdError)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if a, b := c.status(h1).Overlays[0].Subnet, c.status(h2).Overlays[0].Subnet; a != sub1 || b != sub2 {
		t.Errorf("subnets changed hands: h1 %s -> %s, h2 %s -> %s", sub1, a, sub2, b)
	}
	out := testbed.MustIn(t, c.bed.UnderlayNS(), "etcdctl", "--endpoints", c.etcd, "get", "--prefix", "--keys-only", c.prefix+"/subnets/")
	for _, sn := range []string{sub1, sub2} {
		if !strings.Contains(out, strings.Replace(sn, "/", "-", 1)) {
			t.Errorf("lease %s missing from etcd after the outage:\n%s", sn, out)
		}
	}
	// A new host joins once etcd is back.
	h3 := c.start(3)
	h3.net = h3.docker.CreateNetwork(t, testbed.ID("twk4-h3"), "10.96.0.0/16", nil)
	c4 := c.container(h3, "c4")
	mustPing(t, c1.NS, c4.Addr.Addr())
}

func TestLeaseDeletedByHandIsRecovered(t *testing.T) {
	c, c1, c2 := twoHosts(t, "twk5")
	h2 := c.hosts[2]
	sub := c.status(h2).Overlays[0].Subnet
	key := c.prefix + "/subnets/" + strings.Replace(sub, "/", "-", 1)
	testbed.MustIn(t, c.bed.UnderlayNS(), "etcdctl", "--endpoints", c.etcd, "del", key)
	start := time.Now()
	err := testbed.WaitFor(context.Background(), 10*time.Second, func() error {
		out, err := testbed.In(c.bed.UnderlayNS(), "etcdctl", "--endpoints", c.etcd, "get", key, "--print-value-only")
		if err != nil || !strings.Contains(out, "PublicIP") {
			return fmt.Errorf("lease %s not back in etcd: %v %s", key, err, out)
		}
		return ping(c1.NS, c2.Addr.Addr())
	})
	if err != nil {
		t.Fatalf("%v\n%s", err, h2.proc.Tail(3000))
	}
	t.Logf("deleted lease re-acquired and traffic flowing after %v", time.Since(start).Round(time.Millisecond))
	if now := c.status(h2).Overlays[0].Subnet; now != sub {
		t.Errorf("re-acquired %s, want the same subnet %s", now, sub)
	}
}

func TestDuplicatePublicIPRefused(t *testing.T) {
	c := newCluster(t, "twk6")
	c.start(1)
	h2 := c.launch(2, "--public-ip", c.bed.Addr(1).String())
	var err error
	werr := testbed.WaitFor(context.Background(), 30*time.Second, func() error {
		err = h2.docker.Call("IpamDriver.RequestPool", map[string]any{"AddressSpace": "twill-local", "Pool": "10.96.0.0/16", "Options": map[string]string{}}, nil)
		if err == nil || !strings.Contains(err.Error(), "public IP") {
			return fmt.Errorf("not refused yet: %v", err)
		}
		return nil
	})
	if werr != nil {
		t.Fatalf("%v\n%s", werr, h2.proc.Tail(3000))
	}
	if !strings.Contains(err.Error(), "10.199.0.1") || !strings.Contains(err.Error(), "TWILL_PUBLIC_IP") {
		t.Errorf("refusal should name the public IP and the setting: %v", err)
	}
	t.Logf("second host with h1's public IP: %v", err)
	// Nothing was corrupted: h1 still holds exactly one lease.
	out := testbed.MustIn(t, c.bed.UnderlayNS(), "etcdctl", "--endpoints", c.etcd, "get", "--prefix", "--keys-only", c.prefix+"/subnets/")
	if n := strings.Count(out, "/subnets/"); n != 1 {
		t.Errorf("%d leases in etcd, want h1's only:\n%s", n, out)
	}
}

func TestEtcdClusterLosesMembers(t *testing.T) {
	c, members := newEtcdCluster(t, "twka")
	h1, h2 := c.start(1), c.start(2)
	h1.net = h1.docker.CreateNetwork(t, testbed.ID("ec-h1"), "10.96.0.0/16", nil)
	h2.net = h2.docker.CreateNetwork(t, testbed.ID("ec-h2"), "10.96.0.0/16", nil)
	c1, c2 := c.container(h1, "c1"), c.container(h2, "c2")
	mustPing(t, c1.NS, c2.Addr.Addr())
	sub1 := c.status(h1).Overlays[0].Subnet

	// One member down: nothing changes for twill, a new host still joins.
	members[0].Proc.Kill()
	p := startPinger(c1.NS, c2.Addr.Addr())
	h3 := c.start(3)
	h3.net = h3.docker.CreateNetwork(t, testbed.ID("ec-h3"), "10.96.0.0/16", nil)
	c3 := c.container(h3, "c3")
	mustPing(t, c1.NS, c3.Addr.Addr())
	mustPing(t, c3.NS, c2.Addr.Addr())
	if s := c.status(h1); !s.EtcdHealthy {
		t.Errorf("with one of three members down, h1 says etcd is unhealthy: %s", s.EtcdError)
	}

	// Quorum lost: traffic goes on, containers still start on leased hosts.
	members[1].Proc.Kill()
	c4 := c.container(h2, "c4")
	mustPing(t, c1.NS, c4.Addr.Addr())
	time.Sleep(5 * time.Second)
	if s := c.status(h1); s.EtcdHealthy {
		t.Errorf("h1 says etcd is healthy with quorum lost")
	}
	gap := p.Stop()
	if p.fail.Load() > 0 {
		t.Errorf("%d pings failed while members were down (longest gap %v)", p.fail.Load(), gap)
	}

	// Members return: healthy again, nobody's subnet moved.
	members[0].Start(t)
	members[1].Start(t)
	err := testbed.WaitFor(context.Background(), 30*time.Second, func() error {
		for _, h := range []*host{h1, h2, h3} {
			if s := c.status(h); !s.EtcdHealthy {
				return fmt.Errorf("h%d: %s", h.n, s.EtcdError)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if now := c.status(h1).Overlays[0].Subnet; now != sub1 {
		t.Errorf("h1's subnet moved from %s to %s", sub1, now)
	}
	mustPing(t, c3.NS, c1.Addr.Addr())
}
