package subnet

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

func TestNewWritesConfigAndLeaseAsFlanneld(t *testing.T) {
	p := testPrefix(t)
	o := opts(t, p)
	m := newManager(t, o)

	cfg, _ := mustGet(t, sharedCli, p+"/config")
	if want := `{"Network":"10.96.0.0/16","SubnetLen":24,"Backend":{"Type":"udp","Port":8285}}`; cfg != want {
		t.Errorf("config %s, want %s", cfg, want)
	}
	if m.Default() != net96 {
		t.Errorf("default overlay %v", m.Default())
	}
	ls := m.Leases()
	if len(ls) != 1 {
		t.Fatalf("leases %v", ls)
	}
	l := ls[0]
	c, _ := m.Config(net96)
	if !c.Holds(l.Subnet) || l.Overlay != net96 || l.Attrs.PublicIP != o.PublicIP {
		t.Fatalf("lease %+v", l)
	}
	val, id := mustGet(t, sharedCli, p+"/subnets/"+subnetKey(l.Subnet))
	if want := fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":null}`, o.PublicIP); val != want {
		t.Errorf("lease value %s, want flanneld's %s", val, want)
	}
	ttl, err := sharedCli.TimeToLive(ctxT(t), clientv3.LeaseID(id))
	if err != nil || ttl.GrantedTTL != 86400 || ttl.TTL < 86000 {
		t.Errorf("etcd lease of the key: %+v %v, want granted 24h", ttl, err)
	}
	if id != l.EtcdLease {
		t.Errorf("key bound to %x, lease says %x", id, l.EtcdLease)
	}
	if got, err := m.Subnet(ctxT(t), netip.MustParsePrefix("10.96.0.0/16")); err != nil || got != l.Subnet {
		t.Errorf("Subnet(default) = %v, %v", got, err)
	}
	if n, ok := m.OverlayOf(l.Subnet); !ok || n != net96 {
		t.Errorf("OverlayOf(%v) = %v %v", l.Subnet, n, ok)
	}
}

func TestHostsStartingTogetherAgreeOnConfig(t *testing.T) {
	p := testPrefix(t)
	nets := []string{"10.96.0.0/16", "10.50.0.0/16", "10.60.0.0/16", "10.70.0.0/16"}
	ms := make([]*Manager, len(nets))
	errs := make([]error, len(nets))
	var wg sync.WaitGroup
	for i, n := range nets {
		o := opts(t, p)
		o.Network = netip.MustParsePrefix(n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			ms[i], errs[i] = New(ctxT(t), o)
		}()
	}
	wg.Wait()
	for i := range ms {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		t.Cleanup(func() { ms[i].Close() })
	}
	stored, _ := mustGet(t, sharedCli, p+"/config")
	c, err := ParseConfig("k", []byte(stored))
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range ms {
		if m.Default() != c.Network {
			t.Errorf("host %d uses %v, stored config says %v", i, m.Default(), c.Network)
		}
		if !c.Holds(m.Leases()[0].Subnet) {
			t.Errorf("host %d subnet %v outside %v", i, m.Leases()[0].Subnet, c.Network)
		}
	}
}

func TestReadsConfigAndLeasesFlanneldWrote(t *testing.T) {
	p := testPrefix(t)
	ctx := ctxT(t)
	// Exactly what flanneld v0.28 writes: a config put by the operator, and
	// leases of a udp host and a vxlan host bound to 24 h etcd leases.
	if _, err := sharedCli.Put(ctx, p+"/config", `{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"udp","Port":8285}}`); err != nil {
		t.Fatal(err)
	}
	udp := netip.MustParsePrefix("10.244.20.0/24")
	vx := netip.MustParsePrefix("10.244.21.0/24")
	putLease(t, sharedCli, p, udp, `{"PublicIP":"10.98.0.1","PublicIPv6":null}`, 86400)
	putLease(t, sharedCli, p, vx, `{"PublicIP":"10.98.0.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}`, 86400)

	o := opts(t, p) // configured 10.96.0.0/16: the stored config wins
	m := newManager(t, o)
	if m.Default() != netip.MustParsePrefix("10.244.0.0/16") {
		t.Fatalf("default %v, want the stored 10.244.0.0/16", m.Default())
	}
	own := m.Leases()[0].Subnet
	if own == udp || own == vx {
		t.Fatalf("took a subnet flanneld holds: %v", own)
	}
	got := map[netip.Prefix]Lease{}
	for _, l := range m.AllLeases() {
		got[l.Subnet] = l
	}
	if len(got) != 3 {
		t.Fatalf("all leases %v, want 3", got)
	}
	if l := got[udp]; l.Attrs.PublicIP != netip.MustParseAddr("10.98.0.1") || l.Attrs.BackendType != "" {
		t.Errorf("udp flanneld lease read as %+v", l)
	}
	if l := got[vx]; l.Attrs.BackendType != "vxlan" || string(l.Attrs.BackendData) != `{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}` {
		t.Errorf("vxlan flanneld lease read as %+v", l)
	}
}

func TestBadConfigStopsStart(t *testing.T) {
	tests := []struct{ value, want string }{
		{`this is not json`, "not valid JSON"},
		{`{"Network":"10.96.0.0"}`, `Network "10.96.0.0" is not an IPv4 prefix`},
		{`{"Network":"fd00::/16"}`, "not an IPv4 prefix"},
		{`{"Network":"10.96.0.0/16","SubnetLen":15}`, "SubnetLen 15 does not fit"},
		{`{"Network":"10.96.0.0/28","SubnetLen":28}`, "does not fit"},
	}
	for _, tt := range tests {
		p := testPrefix(t)
		if _, err := sharedCli.Put(ctxT(t), p+"/config", tt.value); err != nil {
			t.Fatal(err)
		}
		_, err := New(ctxT(t), opts(t, p))
		if !errors.Is(err, ErrBadConfig) || !strings.Contains(err.Error(), p+"/config") || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("config %s: err %v; want ErrBadConfig quoting the key and %q", tt.value, err, tt.want)
		}
	}
	// No config and no network to write one.
	o := opts(t, testPrefix(t))
	o.Network = netip.Prefix{}
	if _, err := New(ctxT(t), o); !errors.Is(err, ErrBadConfig) || !strings.Contains(err.Error(), "TWILL_NETWORK") {
		t.Errorf("no config, no network: %v", err)
	}
}

func TestRestartKeepsSubnet(t *testing.T) {
	p := testPrefix(t)
	o := opts(t, p)
	o.Store = NewFileStore(filepath.Join(t.TempDir(), "subnets.json"))
	m1 := newManager(t, o)
	first := m1.Leases()[0]
	m1.Close()

	// Plain restart: the lease is still live; it is renewed in place.
	m2 := newManager(t, o)
	if l := m2.Leases()[0]; l.Subnet != first.Subnet || l.EtcdLease != first.EtcdLease {
		t.Fatalf("after restart %v (etcd lease %x), want %v (%x)", l.Subnet, l.EtcdLease, first.Subnet, first.EtcdLease)
	}
	m2.Close()

	// Down longer than the TTL: the key expired, but the state dir remembers
	// the subnet, which is still free.
	if _, err := sharedCli.Revoke(ctxT(t), clientv3.LeaseID(first.EtcdLease)); err != nil {
		t.Fatal(err)
	}
	m3 := newManager(t, o)
	if l := m3.Leases()[0]; l.Subnet != first.Subnet || l.EtcdLease == first.EtcdLease {
		t.Fatalf("after expiry got %v (etcd lease %x), want %v on a new grant", l.Subnet, l.EtcdLease, first.Subnet)
	}
	m3.Close()

	// Fresh state dir, live lease with our public IP: reused, as flanneld does.
	o.Store = &MemStore{}
	m4 := newManager(t, o)
	if l := m4.Leases()[0]; l.Subnet != first.Subnet {
		t.Fatalf("fresh state dir got %v, want the lease of our public IP %v", l.Subnet, first.Subnet)
	}
	m4.Close()

	// Recorded subnet taken by another host meanwhile: a new one.
	if _, err := sharedCli.Delete(ctxT(t), p+"/subnets/"+subnetKey(first.Subnet)); err != nil {
		t.Fatal(err)
	}
	putLease(t, sharedCli, p, first.Subnet, `{"PublicIP":"10.98.7.7","PublicIPv6":null}`, 600)
	o.Store = NewFileStore(filepath.Join(t.TempDir(), "s.json"))
	o.Store.SaveSubnet(net96, first.Subnet)
	m5 := newManager(t, o)
	if l := m5.Leases()[0]; l.Subnet == first.Subnet {
		t.Fatalf("took %v although another host holds it", l.Subnet)
	}
}

func TestSecondLiveHostWithSamePublicIPIsRefused(t *testing.T) {
	p := testPrefix(t)
	o := opts(t, p)
	o.Store = &MemStore{}
	m1 := newManager(t, o)
	held := m1.Leases()[0].Subnet

	// Another machine, same public IP, no state at all: its lease would look
	// like m1's, but m1's presence key is being renewed.
	o2 := o
	o2.Store = &MemStore{}
	start := time.Now()
	_, err := New(ctxT(t), o2)
	t.Logf("refused after %v: %v", time.Since(start), err)
	if !errors.Is(err, ErrPublicIPInUse) {
		t.Fatalf("err %v, want ErrPublicIPInUse", err)
	}
	if took := time.Since(start); took > o.PresenceTTL {
		t.Errorf("took %v to recognise a live host, want under the presence TTL %v", took, o.PresenceTTL)
	}
	for _, s := range []string{o.PublicIP.String(), held.String(), "TWILL_PUBLIC_IP", p + "/hosts/" + o.PublicIP.String()} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not name %s", err, s)
		}
	}
	if ls := m1.Leases(); len(ls) != 1 || ls[0].Subnet != held {
		t.Errorf("the first host's lease changed: %v", ls)
	}
	resp, _ := sharedCli.Get(ctxT(t), p+"/subnets/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if resp.Count != 1 {
		t.Errorf("%d leases in etcd, want the first host's only", resp.Count)
	}
}

func TestLeaseOfOurIPAtAnotherSubnetThanRecordedIsRefused(t *testing.T) {
	// A flanneld (no presence key) holds a lease with our public IP, but
	// this host's state recorded another subnet: two hosts share the IP.
	p := testPrefix(t)
	o := opts(t, p)
	theirs := netip.MustParsePrefix("10.96.33.0/24")
	putLease(t, sharedCli, p, theirs, fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":null}`, o.PublicIP), 600)
	o.Store = &MemStore{}
	ours := netip.MustParsePrefix("10.96.44.0/24")
	o.Store.SaveSubnet(net96, ours)
	_, err := New(ctxT(t), o)
	if !errors.Is(err, ErrPublicIPInUse) {
		t.Fatalf("err %v, want ErrPublicIPInUse", err)
	}
	for _, s := range []string{o.PublicIP.String(), theirs.String(), ours.String(), "TWILL_PUBLIC_IP", "etcdctl del"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not name %s", err, s)
		}
	}
}

func TestCrashedHostsPublicIPIsFreeAfterPresenceTTL(t *testing.T) {
	p := testPrefix(t)
	o := opts(t, p)
	// A host crashed a moment ago: its lease and its presence key (not
	// renewed any more, 2 s left) are still there.
	held := netip.MustParsePrefix("10.96.61.0/24")
	putLease(t, sharedCli, p, held, fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":null}`, o.PublicIP), 600)
	g, err := sharedCli.Grant(ctxT(t), 2)
	if err != nil {
		t.Fatal(err)
	}
	key := p + "/hosts/" + o.PublicIP.String()
	if _, err := sharedCli.Put(ctxT(t), key, `{"ID":"crashed","Hostname":"old"}`, clientv3.WithLease(g.ID)); err != nil {
		t.Fatal(err)
	}
	// Restarted with a fresh state dir: waits for the presence to expire,
	// then takes its lease back, as flanneld would.
	o.Store = &MemStore{}
	start := time.Now()
	m := newManager(t, o)
	t.Logf("started after %v", time.Since(start))
	if got := m.Leases()[0].Subnet; got != held {
		t.Fatalf("got %v, want the lease of our public IP %v", got, held)
	}
	val, _ := mustGet(t, sharedCli, key)
	if !strings.Contains(val, `"ID":"`) || strings.Contains(val, "crashed") {
		t.Errorf("presence key holds %s, want this host's", val)
	}

	// Killed (no Close) and restarted with the same state: takes its own
	// presence back at once.
	o2 := opts(t, p)
	o2.Store = &MemStore{}
	id, _ := o2.Store.HostID()
	g2, _ := sharedCli.Grant(ctxT(t), 600)
	key2 := p + "/hosts/" + o2.PublicIP.String()
	if _, err := sharedCli.Put(ctxT(t), key2, `{"ID":"`+id+`"}`, clientv3.WithLease(g2.ID)); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	newManager(t, o2)
	if took := time.Since(start); took > time.Second {
		t.Errorf("restart of the same host took %v", took)
	}
	if ttl, _ := sharedCli.TimeToLive(ctxT(t), g2.ID); ttl.TTL > 0 {
		t.Errorf("the old presence lease was not revoked")
	}
}

func TestManyHostsAcquireConcurrently(t *testing.T) {
	const hosts = 200
	p := testPrefix(t)
	ms := make([]*Manager, hosts)
	errs := make([]error, hosts)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range hosts {
		o := opts(t, p)
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			ms[i], errs[i] = New(ctx, o)
		}()
	}
	wg.Wait()
	t.Logf("%d hosts acquired in %v", hosts, time.Since(start))
	seen := map[netip.Prefix]netip.Addr{}
	for i, m := range ms {
		if errs[i] != nil {
			t.Errorf("host %d: %v", i, errs[i])
			continue
		}
		defer m.Close()
		l := m.Leases()[0]
		if prev, dup := seen[l.Subnet]; dup {
			t.Errorf("subnet %v given to %v and %v", l.Subnet, prev, l.Attrs.PublicIP)
		}
		seen[l.Subnet] = l.Attrs.PublicIP
	}
	resp, err := sharedCli.Get(ctxT(t), p+"/subnets/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != hosts || len(seen) != hosts {
		t.Fatalf("%d keys in etcd, %d distinct subnets; want %d", len(resp.Kvs), len(seen), hosts)
	}
	for _, kv := range resp.Kvs {
		sn, _, _ := parseSubnetKey(strings.TrimPrefix(string(kv.Key), p+"/subnets/"))
		if want := fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":null}`, seen[sn]); string(kv.Value) != want {
			t.Errorf("%s = %s, want %s", kv.Key, kv.Value, want)
		}
	}
}

func TestFullOverlayIsExhausted(t *testing.T) {
	p := testPrefix(t)
	// Pre-fill every subnet but 10.96.77.0 (flannel's range: 10.96.1.0 … 10.96.255.0).
	g, err := sharedCli.Grant(ctxT(t), 600)
	if err != nil {
		t.Fatal(err)
	}
	var ops []clientv3.Op
	for i := 1; i <= 255; i++ {
		if i == 77 {
			continue
		}
		sn := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 96, byte(i), 0}), 24)
		ops = append(ops, clientv3.OpPut(p+"/subnets/"+subnetKey(sn), fmt.Sprintf(`{"PublicIP":"10.98.1.%d","PublicIPv6":null}`, i), clientv3.WithLease(g.ID)))
	}
	for len(ops) > 0 {
		n := min(len(ops), 100)
		if _, err := sharedCli.Txn(ctxT(t)).Then(ops[:n]...).Commit(); err != nil {
			t.Fatal(err)
		}
		ops = ops[n:]
	}
	m := newManager(t, opts(t, p))
	if got := m.Leases()[0].Subnet; got != netip.MustParsePrefix("10.96.77.0/24") {
		t.Fatalf("got %v, want the last free subnet 10.96.77.0/24", got)
	}
	_, err = New(ctxT(t), opts(t, p))
	if !errors.Is(err, ErrSubnetsExhausted) {
		t.Fatalf("one more host: %v, want ErrSubnetsExhausted", err)
	}
	for _, s := range []string{"10.96.0.0/16", "all 255 subnets", "10.96.1.0", "10.96.255.0", "255 leases"} {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error %q does not say %q", err, s)
		}
	}
}

func TestTakesOverFlanneldLeaseOfOwnPublicIP(t *testing.T) {
	p := testPrefix(t)
	o := opts(t, p)
	sn := netip.MustParsePrefix("10.96.42.0/24")
	old := putLease(t, sharedCli, p, sn, fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}`, o.PublicIP), 600)
	m := newManager(t, o)
	l := m.Leases()[0]
	if l.Subnet != sn || clientv3.LeaseID(l.EtcdLease) == old {
		t.Fatalf("got %v on etcd lease %x, want %v taken over on a new grant", l.Subnet, l.EtcdLease, sn)
	}
	val, id := mustGet(t, sharedCli, p+"/subnets/"+subnetKey(sn))
	if want := fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":null}`, o.PublicIP); val != want || id != l.EtcdLease {
		t.Fatalf("key holds %s on %x, want %s on %x", val, id, want, l.EtcdLease)
	}
}

func TestReservationIsUsedAndNeverRenewed(t *testing.T) {
	p := testPrefix(t)
	o := opts(t, p)
	clock := NewFakeClock(t0)
	o.Clock = clock
	sn := netip.MustParsePrefix("10.96.9.0/24")
	// A reservation: written without a TTL by an operator (flannel's
	// Documentation/reservations.md).
	if _, err := sharedCli.Put(ctxT(t), p+"/subnets/"+subnetKey(sn), fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":null}`, o.PublicIP)); err != nil {
		t.Fatal(err)
	}
	m := newManager(t, o)
	l := m.Leases()[0]
	if l.Subnet != sn || l.EtcdLease != 0 || !l.Expiration.IsZero() {
		t.Fatalf("got %+v, want the reservation %v", l, sn)
	}
	time.Sleep(50 * time.Millisecond)
	if p := clock.Pending(); len(p) != 0 {
		t.Errorf("timers %v armed for a reservation", p)
	}
	if err := m.Release(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if val, _ := mustGet(t, sharedCli, p+"/subnets/"+subnetKey(sn)); val == "" {
		t.Error("Release removed the reservation")
	}
}
