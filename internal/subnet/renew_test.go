package subnet

import (
	"net/netip"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

var t0 = time.Date(2026, 11, 29, 0, 0, 0, 0, time.UTC)

// waitTimer waits until the fake clock has a timer due within d.
func waitTimer(t *testing.T, c *FakeClock, d time.Duration) {
	t.Helper()
	// 30 s: once in CI (go test -p 1 ./..., 2 cores) the retry after a cut
	// took longer than 10 s to be armed; a slow gRPC give-up, not a hang.
	waitFor(t, 30*time.Second, "a timer within "+d.String(), func() bool {
		p := c.Pending()
		return len(p) > 0 && p[0] <= d
	})
}

func TestRenewsBeforeExpiryWithFakeClock(t *testing.T) {
	p := testPrefix(t)
	clock := NewFakeClock(t0)
	o := opts(t, p)
	o.Clock = clock
	m := newManager(t, o)
	l := m.Leases()[0]
	if !l.Expiration.Equal(t0.Add(24 * time.Hour)) {
		t.Fatalf("expiration %v, want t0+24h", l.Expiration)
	}
	// flannel's schedule: renew one hour before expiry.
	waitTimer(t, clock, 23*time.Hour)
	if p := clock.Pending(); p[0] != 23*time.Hour {
		t.Fatalf("renew timer in %v, want 23h", p[0])
	}

	time.Sleep(2100 * time.Millisecond) // let etcd's own TTL count down
	before, err := sharedCli.TimeToLive(ctxT(t), clientv3.LeaseID(l.EtcdLease))
	if err != nil || before.TTL > 86398 {
		t.Fatalf("TTL before renew %+v %v", before, err)
	}
	clock.Advance(23 * time.Hour)
	waitFor(t, 10*time.Second, "the renewal", func() bool {
		return m.Leases()[0].Expiration.Equal(t0.Add(47 * time.Hour))
	})
	after, err := sharedCli.TimeToLive(ctxT(t), clientv3.LeaseID(l.EtcdLease))
	if err != nil || after.TTL < 86399 {
		t.Fatalf("etcd TTL after renew %+v %v, want back at 24h", after, err)
	}
	if got := m.Leases()[0]; got.Subnet != l.Subnet || got.EtcdLease != l.EtcdLease {
		t.Fatalf("renewal changed the lease: %+v", got)
	}
	// And the next renewal is scheduled 23 h after this one.
	waitTimer(t, clock, 23*time.Hour)
}

func TestDeletedOrExpiredLeaseIsReacquired(t *testing.T) {
	p := testPrefix(t)
	m := newManager(t, opts(t, p))
	ev := m.Subscribe(ctxT(t))
	l := m.Leases()[0]
	nextEvent(t, ev, time.Second, func(e Event) bool { return e.Own && e.Type == Added })

	// Deleted by hand.
	key := p + "/subnets/" + subnetKey(l.Subnet)
	if _, err := sharedCli.Delete(ctxT(t), key); err != nil {
		t.Fatal(err)
	}
	e := nextEvent(t, ev, 5*time.Second, func(e Event) bool { return e.Own })
	if e.Type != Added || e.Lease.Subnet != l.Subnet || e.Lease.EtcdLease == l.EtcdLease {
		t.Fatalf("after delete got %v (etcd lease %x), want Added own %v on a new grant", e, e.Lease.EtcdLease, l.Subnet)
	}
	val, id := mustGet(t, sharedCli, key)
	if id != e.Lease.EtcdLease || val != `{"PublicIP":"`+l.Attrs.PublicIP.String()+`","PublicIPv6":null}` {
		t.Fatalf("key after re-acquire: %s bound to %x", val, id)
	}

	// Expired (revoking the etcd lease is what expiry does).
	l = m.Leases()[0]
	if _, err := sharedCli.Revoke(ctxT(t), clientv3.LeaseID(l.EtcdLease)); err != nil {
		t.Fatal(err)
	}
	e = nextEvent(t, ev, 5*time.Second, func(e Event) bool { return e.Own })
	if e.Type != Added || e.Lease.Subnet != l.Subnet || e.Lease.EtcdLease == l.EtcdLease {
		t.Fatalf("after expiry got %v, want Added own %v on a new grant", e, l.Subnet)
	}
}

func TestLeaseTakenByAnotherHostMovesToAnotherSubnet(t *testing.T) {
	p := testPrefix(t)
	m := newManager(t, opts(t, p))
	ev := m.Subscribe(ctxT(t))
	l := m.Leases()[0]
	key := p + "/subnets/" + subnetKey(l.Subnet)
	// Another host overwrites our key (e.g. a misconfigured flanneld).
	g, _ := sharedCli.Grant(ctxT(t), 600)
	if _, err := sharedCli.Put(ctxT(t), key, `{"PublicIP":"10.98.9.9","PublicIPv6":null}`, clientv3.WithLease(g.ID)); err != nil {
		t.Fatal(err)
	}
	e := nextEvent(t, ev, 5*time.Second, func(e Event) bool { return e.Own && e.Type == Removed })
	if e.Lease.Subnet != l.Subnet {
		t.Fatalf("removed %v, want %v", e.Lease.Subnet, l.Subnet)
	}
	e = nextEvent(t, ev, 5*time.Second, func(e Event) bool { return e.Own && e.Type == Added })
	if e.Lease.Subnet == l.Subnet {
		t.Fatalf("re-acquired the subnet another host holds")
	}
	if got := m.Leases()[0].Subnet; got != e.Lease.Subnet {
		t.Fatalf("Leases() says %v, event said %v", got, e.Lease.Subnet)
	}
	var other bool
	for _, a := range m.AllLeases() {
		other = other || (a.Subnet == l.Subnet && a.Attrs.PublicIP == netip.MustParseAddr("10.98.9.9"))
	}
	if !other {
		t.Error("the other host's lease is not among AllLeases")
	}
}

// TestEtcdUnreachableKeepsLeaseAndRecovers cuts the path to etcd under a
// running manager: the renewal fails and is retried with backoff while the
// host keeps its subnet; once etcd is reachable again, renewal and the watch
// resume.
func TestEtcdUnreachableKeepsLeaseAndRecovers(t *testing.T) {
	px := newProxy(t, shared.ClientAddr().String())
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"http://" + px.addr}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	p := testPrefix(t)
	clock := NewFakeClock(t0)
	o := opts(t, p)
	o.Client, o.Clock, o.OpTimeout = cli, clock, time.Second
	o.RetryMin, o.RetryMax = time.Minute, 10*time.Minute
	m := newManager(t, o)
	ev := m.Subscribe(ctxT(t))
	own := m.Leases()[0]
	waitTimer(t, clock, 23*time.Hour)

	px.cut()
	clock.Advance(23 * time.Hour) // renewal due while etcd is unreachable
	waitTimer(t, clock, time.Minute)
	if ls := m.Leases(); len(ls) != 1 || ls[0].Subnet != own.Subnet {
		t.Fatalf("lost the lease while etcd was unreachable: %v", ls)
	}
	clock.Advance(time.Minute) // second failure: backoff doubles
	waitTimer(t, clock, 2*time.Minute)
	if p := clock.Pending(); p[0] != 2*time.Minute {
		t.Fatalf("second retry in %v, want 2m", p[0])
	}

	px.resume()
	renewed := func() bool { return m.Leases()[0].Expiration.After(t0.Add(24 * time.Hour)) }
	deadline := time.Now().Add(30 * time.Second)
	for !renewed() {
		if time.Now().After(deadline) {
			t.Fatal("no renewal within 30s after etcd became reachable")
		}
		if p := clock.Pending(); len(p) > 0 && p[0] < time.Hour {
			clock.Advance(p[0])
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := m.Leases()[0]; got.Subnet != own.Subnet || got.EtcdLease != own.EtcdLease {
		t.Fatalf("after recovery %+v, want the same lease", got)
	}
	// The watch resumed too: another host appearing now is seen.
	m2 := newManager(t, opts(t, p))
	peer := m2.Leases()[0].Subnet
	nextEvent(t, ev, 15*time.Second, func(e Event) bool {
		if e.Own && e.Type == Removed {
			t.Fatalf("own lease removed: %v", e)
		}
		return e.Type == Added && e.Lease.Subnet == peer && !e.Own
	})
}
