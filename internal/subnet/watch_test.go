package subnet

import (
	"context"
	"net/netip"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

func TestWatcherSeesOtherHostsWithinASecond(t *testing.T) {
	p := testPrefix(t)
	m1 := newManager(t, opts(t, p))
	ev := m1.Subscribe(ctxT(t))
	e := nextEvent(t, ev, time.Second, func(Event) bool { return true })
	if !e.Own || e.Type != Added || e.Lease.Subnet != m1.Leases()[0].Subnet || e.Lease.Overlay != net96 {
		t.Fatalf("first event %v, want this host's own lease", e)
	}

	start := time.Now()
	m2 := newManager(t, opts(t, p))
	l2 := m2.Leases()[0]
	e = nextEvent(t, ev, time.Second, func(e Event) bool { return e.Lease.Subnet == l2.Subnet })
	t.Logf("add seen %v after the second host started", time.Since(start))
	if e.Type != Added || e.Own || e.Lease.Attrs.PublicIP != l2.Attrs.PublicIP || e.Lease.Overlay != net96 {
		t.Fatalf("got %v, want Added of the other host", e)
	}

	start = time.Now()
	if err := m2.Release(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	e = nextEvent(t, ev, time.Second, func(e Event) bool { return e.Lease.Subnet == l2.Subnet })
	t.Logf("removal seen %v after release", time.Since(start))
	if e.Type != Removed || e.Own {
		t.Fatalf("got %v, want Removed of the other host", e)
	}
	if _, err := m2.Subnet(ctxT(t), net96); err == nil {
		t.Error("Subnet works after Release")
	}

	// A flanneld host's value change (new public IP) is an Added update.
	sn := netip.MustParsePrefix("10.96.250.0/24")
	if sn == m1.Leases()[0].Subnet {
		sn = netip.MustParsePrefix("10.96.251.0/24")
	}
	putLease(t, sharedCli, p, sn, `{"PublicIP":"10.98.2.1","PublicIPv6":null}`, 600)
	nextEvent(t, ev, time.Second, func(e Event) bool { return e.Lease.Subnet == sn && e.Type == Added })
	putLease(t, sharedCli, p, sn, `{"PublicIP":"10.98.2.1","PublicIPv6":null}`, 600) // flanneld's renewal: same value
	putLease(t, sharedCli, p, sn, `{"PublicIP":"10.98.2.2","PublicIPv6":null}`, 600)
	e = nextEvent(t, ev, time.Second, func(e Event) bool { return e.Lease.Subnet == sn })
	if e.Type != Added || e.Lease.Attrs.PublicIP != netip.MustParseAddr("10.98.2.2") {
		t.Fatalf("got %v, want the update to 10.98.2.2 (and no event for an unchanged renewal)", e)
	}
}

func TestLateSubscriberGetsCurrentState(t *testing.T) {
	p := testPrefix(t)
	m1 := newManager(t, opts(t, p))
	m2 := newManager(t, opts(t, p))
	want := map[netip.Prefix]bool{m1.Leases()[0].Subnet: true, m2.Leases()[0].Subnet: true}
	waitFor(t, 2*time.Second, "m1 to see m2", func() bool { return len(m1.AllLeases()) == 2 })
	ctx, cancel := context.WithCancel(context.Background())
	ev := m1.Subscribe(ctx)
	for range 2 {
		e := nextEvent(t, ev, time.Second, func(Event) bool { return true })
		if e.Type != Added || !want[e.Lease.Subnet] || e.Own != (e.Lease.Subnet == m1.Leases()[0].Subnet) {
			t.Fatalf("snapshot event %v", e)
		}
		delete(want, e.Lease.Subnet)
	}
	cancel()
	waitFor(t, time.Second, "the channel to close", func() bool {
		select {
		case _, ok := <-ev:
			return !ok
		default:
			return false
		}
	})
}

func TestUnreadableLeasesAreIgnoredWithOneLogLineEach(t *testing.T) {
	p := testPrefix(t)
	ctx := ctxT(t)
	garbage := map[string]string{
		p + "/subnets/10.96.5.0-24":  `this is not json`,
		p + "/subnets/not-a-subnet":  `{"PublicIP":"10.98.3.3","PublicIPv6":null}`,
		p + "/subnets/10.96.6.0-24":  `{"PublicIP":"nope"}`,
		p + "/subnets/10.200.1.0-24": `{"PublicIP":"10.98.3.4","PublicIPv6":null}`, // outside the overlay
	}
	for k, v := range garbage {
		if _, err := sharedCli.Put(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	o := opts(t, p)
	log, buf := testLogger(t)
	o.Log = log
	m := newManager(t, o)
	ev := m.Subscribe(ctx)
	if got := m.Leases()[0].Subnet; got == netip.MustParsePrefix("10.96.5.0/24") || got == netip.MustParsePrefix("10.96.6.0/24") {
		// A garbage value still occupies its key: create-if-absent refuses it.
		t.Fatalf("acquired %v, whose key holds garbage", got)
	}
	// A good lease is seen; a garbage value arriving by watch is skipped and
	// takes the previous value's place as a removal.
	good := netip.MustParsePrefix("10.96.7.0/24")
	if good == m.Leases()[0].Subnet {
		good = netip.MustParsePrefix("10.96.8.0/24")
	}
	putLease(t, sharedCli, p, good, `{"PublicIP":"10.98.3.5","PublicIPv6":null}`, 600)
	nextEvent(t, ev, time.Second, func(e Event) bool { return e.Type == Added && e.Lease.Subnet == good })
	if _, err := sharedCli.Put(ctx, p+"/subnets/"+subnetKey(good), `{"PublicIP":`); err != nil {
		t.Fatal(err)
	}
	nextEvent(t, ev, time.Second, func(e Event) bool { return e.Type == Removed && e.Lease.Subnet == good })
	if _, err := sharedCli.Put(ctx, p+"/subnets/10.96.9.0-24&zz", `{}`); err != nil {
		t.Fatal(err)
	}
	// A resync (as after compaction) reads the garbage again: no new lines.
	if err := func() error {
		m.mu.Lock()
		o := m.overlays[net96]
		m.mu.Unlock()
		o.cancel()
		<-o.done
		return o.resyncKnown(ctx, true)
	}(); err != nil {
		t.Fatal(err)
	}
	for k := range garbage {
		if n := buf.Count("level=WARN", k); n != 1 {
			t.Errorf("%s logged %d times, want once", k, n)
		}
	}
	if n := buf.Count("level=WARN", p+"/subnets/10.96.9.0-24&zz"); n != 1 {
		t.Errorf("bad key via watch logged %d times, want once", n)
	}
	if n := buf.Count("level=WARN", p+"/subnets/"+subnetKey(good)); n != 1 {
		t.Errorf("garbage update logged %d times, want once", n)
	}
}

// restartLoop stops the overlay's loop and starts it again, watching from
// the revision it had reached.
func restartLoop(t *testing.T, m *Manager, o *overlay, between func()) {
	t.Helper()
	o.cancel()
	<-o.done
	between()
	ctx, cancel := context.WithCancel(m.ctx)
	o.cancel = cancel
	o.done = make(chan struct{})
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		o.run(ctx)
	}()
}

// TestCompactionDoesNotLoseEvents lets changes happen while the watch is down
// and compacts them away: the watch restarts from a compacted revision, and
// the manager re-reads everything and delivers the difference.
func TestCompactionDoesNotLoseEvents(t *testing.T) {
	p := testPrefix(t)
	mo := opts(t, p)
	log, buf := testLogger(t)
	mo.Log = log
	m := newManager(t, mo)
	gone := newManager(t, opts(t, p))
	goneSn := gone.Leases()[0].Subnet
	ev := m.Subscribe(ctxT(t))
	nextEvent(t, ev, time.Second, func(e Event) bool { return e.Lease.Subnet == goneSn })

	m.mu.Lock()
	o := m.overlays[net96]
	m.mu.Unlock()
	var added netip.Prefix
	var compactedAt int64
	restartLoop(t, m, o, func() {
		// While the watch is down: one host leaves, one joins, and
		// history is compacted.
		if err := gone.Release(ctxT(t)); err != nil {
			t.Fatal(err)
		}
		joiner := newManager(t, opts(t, p))
		added = joiner.Leases()[0].Subnet
		joiner.Close()
		resp, err := sharedCli.Get(ctxT(t), "any")
		if err != nil {
			t.Fatal(err)
		}
		compactedAt = resp.Header.Revision
		if _, err := sharedCli.Compact(ctxT(t), compactedAt, clientv3.WithCompactPhysical()); err != nil {
			t.Fatal(err)
		}
		if o.rev+1 >= compactedAt {
			t.Fatalf("watch would resume at %d, not before the compaction at %d", o.rev+1, compactedAt)
		}
	})
	got := map[netip.Prefix]EventType{}
	for len(got) < 2 {
		e := nextEvent(t, ev, 5*time.Second, func(e Event) bool { return e.Lease.Subnet == added || e.Lease.Subnet == goneSn })
		got[e.Lease.Subnet] = e.Type
	}
	if got[added] != Added || got[goneSn] != Removed {
		t.Fatalf("after compaction got %v, want %v added and %v removed", got, added, goneSn)
	}
	// And the watch is live again.
	late := newManager(t, opts(t, p))
	nextEvent(t, ev, time.Second, func(e Event) bool { return e.Type == Added && e.Lease.Subnet == late.Leases()[0].Subnet })
	if buf.Count("fell behind etcd compaction") != 1 {
		t.Errorf("the watch did not go through the compaction path")
	}
	o.cancel() // o.rev belongs to the loop
	<-o.done
	if o.rev <= compactedAt {
		t.Errorf("revision %d not past the compaction %d", o.rev, compactedAt)
	}
}
