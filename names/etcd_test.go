package names

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/twill-net/twill/internal/etcdserver/etcdtest"
)

func waitFor(t *testing.T, what string, within time.Duration, ok func() bool) time.Duration {
	t.Helper()
	t0 := time.Now()
	for !ok() {
		if time.Since(t0) > within {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(t0)
}

func lookup(tb *Table, src netip.Addr, name string) []string {
	addrs, _ := tb.Lookup(src, false, name)
	var out []string
	for _, a := range addrs {
		out = append(out, a.String())
	}
	return out
}

// Two hosts publish their records; a third host's table sees both, follows
// changes, and loses a host's names when that host stops renewing its lease.
func TestPublishAndWatch(t *testing.T) {
	srv := etcdtest.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const prefix = "/coreos.com/network"

	host := func(ip string, ttl time.Duration) (*Publisher, context.CancelFunc) {
		p := &Publisher{Client: etcdtest.Client(t, srv), TTL: ttl, Dirs: func() []string { return []string{HostDir(prefix, ip)} }}
		pctx, stop := context.WithCancel(ctx)
		go p.Run(pctx)
		return p, stop
	}
	set := func(p *Publisher, recs ...Record) {
		want := map[string][]byte{}
		for _, r := range recs {
			want[r.Key(prefix)] = r.Marshal()
		}
		p.Set(want)
	}

	// A stale record from host 1's earlier run, without a lease: the first
	// full write must delete it.
	cli := etcdtest.Client(t, srv)
	stale := Record{Host: "192.0.2.1", Endpoint: "old", Network: "blue", Names: []string{"gone"}, Addr: netip.MustParseAddr("10.96.3.99")}
	if _, err := cli.Put(ctx, stale.Key(prefix), string(stale.Marshal())); err != nil {
		t.Fatal(err)
	}
	// Something that is not a record is skipped.
	if _, err := cli.Put(ctx, NamesDir(prefix)+"192.0.2.9/x", "{not json"); err != nil {
		t.Fatal(err)
	}

	h1, stop1 := host("192.0.2.1", 2*time.Second)
	h3, _ := host("192.0.2.3", 10*time.Second)
	set(h1, blueWeb1, redDB)
	set(h3, blueWeb2)
	tb := NewTable()
	go (&Watcher{Client: etcdtest.Client(t, srv), Prefix: prefix, Table: tb, Retry: 100 * time.Millisecond}).Run(ctx)

	h2, _ := host("192.0.2.2", 10*time.Second)
	set(h2, blueCli, redCli) // the querying containers
	waitFor(t, "both replicas", 5*time.Second, func() bool {
		return slices.Equal(lookup(tb, blueCli.Addr, "web"), []string{"10.96.3.5", "10.96.9.7"})
	})
	waitFor(t, "stale record removed", 5*time.Second, func() bool { return len(lookup(tb, blueCli.Addr, "gone")) == 0 })

	// A container stops on host 3: gone everywhere at once.
	set(h3)
	d := waitFor(t, "stopped replica gone", 2*time.Second, func() bool {
		return slices.Equal(lookup(tb, blueCli.Addr, "web"), []string{"10.96.3.5"})
	})
	t.Logf("a removed record reached the other table in %v", d)
	// Renamed: the new name comes, the old goes.
	renamed := blueWeb1
	renamed.Names = []string{"proj-web-9", "web"}
	set(h1, renamed, redDB)
	waitFor(t, "rename", 2*time.Second, func() bool {
		return len(lookup(tb, blueCli.Addr, "proj-web-9")) == 1 && len(lookup(tb, blueCli.Addr, "proj-web-1")) == 0
	})

	// Host 1 dies (stops renewing): its names vanish within its TTL.
	stop1()
	t0 := time.Now()
	waitFor(t, "dead host's names gone", 6*time.Second, func() bool { return len(lookup(tb, blueCli.Addr, "web")) == 0 })
	t.Logf("a dead host's names (TTL 2 s) vanished after %v", time.Since(t0))
	if got := lookup(tb, redCli.Addr, "db"); len(got) != 0 {
		t.Fatalf("dead host's red record still there: %v", got)
	}
	if tb.Len() != 2 {
		t.Fatalf("table holds %v", tb.Records())
	}
}

// TestMemory10kNames: a watcher holding 10,000 records of 50 hosts (200
// containers each, two names per record) from a real etcd; the heap it
// takes is logged (README's benchmark section) and bounded.
func TestMemory10kNames(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	srv := etcdtest.Start(t)
	cli := etcdtest.Client(t, srv)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const prefix = "/coreos.com/network"
	p := &Publisher{Client: cli}
	var ops []clientv3.Op
	for h := range 50 {
		for c := range 200 {
			a := netip.AddrFrom4([4]byte{10, 96, byte(1 + h), byte(2 + c)})
			r := Record{Host: "10.199.1." + itoa(h+1), Endpoint: fmt.Sprintf("%064x", h*1000+c), Network: "proj_default",
				Container: fmt.Sprintf("%064x", h*1000+c+1), Names: []string{fmt.Sprintf("proj-svc%d-%d", c%20, h*200+c), fmt.Sprintf("svc%d", c%20)}, Addr: a}
			ops = append(ops, clientv3.OpPut(r.Key(prefix), string(r.Marshal())))
		}
	}
	if err := p.commit(ctx, ops); err != nil {
		t.Fatal(err)
	}
	ops = nil
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	tb := NewTable()
	go (&Watcher{Client: cli, Prefix: prefix, Table: tb}).Run(ctx)
	waitFor(t, "10,000 records listed", 30*time.Second, func() bool { return tb.Len() == 10000 })
	runtime.GC()
	runtime.ReadMemStats(&after)
	heap := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("10,000 records (50 hosts x 200 containers, 20,000 names): table heap %.1f MB (%d B per record)", float64(heap)/1e6, heap/10000)
	if heap > 40<<20 {
		t.Errorf("10,000 records take %d MB", heap>>20)
	}
	if got := lookup(tb, netip.AddrFrom4([4]byte{10, 96, 3, 9}), "svc7"); len(got) != 50*10 {
		t.Errorf("svc7: %d addresses, want 500", len(got))
	}
	runtime.KeepAlive(tb)
}
