package subnet

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// benchExisting is how many leases other hosts hold in the benchmarks.
const benchExisting = 1000

var net10 = netip.MustParsePrefix("10.0.0.0/8") // 65535 /24 subnets: room for 1000 hosts

// prefill writes benchExisting leases as flanneld would, on one grant.
func prefill(b *testing.B, p string) {
	b.Helper()
	ctx := ctxT(b)
	if _, err := sharedCli.Put(ctx, p+"/config", `{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"udp","Port":8285}}`); err != nil {
		b.Fatal(err)
	}
	g, err := sharedCli.Grant(ctx, 3600)
	if err != nil {
		b.Fatal(err)
	}
	var ops []clientv3.Op
	for i := range benchExisting {
		sn := netip.PrefixFrom(a4(0x0a000000+uint32(i+1)<<8), 24)
		ops = append(ops, clientv3.OpPut(p+"/subnets/"+subnetKey(sn),
			fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":null}`, a4(0x0a620000+uint32(i+1))), clientv3.WithLease(g.ID)))
	}
	for len(ops) > 0 {
		n := min(len(ops), 100)
		if _, err := sharedCli.Txn(ctx).Then(ops[:n]...).Commit(); err != nil {
			b.Fatal(err)
		}
		ops = ops[n:]
	}
}

func reportPercentiles(b *testing.B, d []time.Duration) {
	slices.Sort(d)
	if len(d) == 0 {
		return
	}
	b.ReportMetric(float64(d[len(d)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(d[len(d)*99/100].Microseconds()), "p99-µs")
}

// BenchmarkAcquire is one host taking a subnet among 1000 existing leases:
// list the overlay, pick at random, grant a 24 h etcd lease, create-if-absent.
func BenchmarkAcquire(b *testing.B) {
	p := testPrefix(b)
	prefill(b, p)
	m := newManager(b, Options{Client: sharedCli, Prefix: p, PublicIP: hostIP()})
	m.mu.Lock()
	base := m.overlays[net10]
	m.mu.Unlock()
	ctx := ctxT(b)
	var lat []time.Duration
	b.ResetTimer()
	for b.Loop() {
		// A fresh host each time: its own public IP, no memory of a subnet.
		mm := &Manager{opts: m.opts, log: m.log}
		mm.opts.PublicIP, mm.opts.Store = hostIP(), &MemStore{}
		o := &overlay{m: mm, kv: base.kv, cfg: base.cfg, log: m.log}
		start := time.Now()
		l, err := o.acquire(ctx)
		lat = append(lat, time.Since(start))
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := o.kv.revoke(ctx, l.EtcdLease); err != nil { // back to 1000 leases
			b.Fatal(err)
		}
		b.StartTimer()
	}
	reportPercentiles(b, lat)
}

// BenchmarkStart is a whole host start among 1000 existing leases: read the
// config, acquire, read every lease for the watcher, start watching.
func BenchmarkStart(b *testing.B) {
	p := testPrefix(b)
	prefill(b, p)
	var lat []time.Duration
	for b.Loop() {
		o := Options{Client: sharedCli, Prefix: p, PublicIP: hostIP()}
		start := time.Now()
		m, err := New(ctxT(b), o)
		lat = append(lat, time.Since(start))
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := m.Release(ctxT(b)); err != nil {
			b.Fatal(err)
		}
		m.Close()
		b.StartTimer()
	}
	reportPercentiles(b, lat)
}

// BenchmarkWatchLatency is the time from another host writing its lease to
// this host's subscriber receiving the Added event, with 1000 leases known.
func BenchmarkWatchLatency(b *testing.B) {
	p := testPrefix(b)
	prefill(b, p)
	m := newManager(b, Options{Client: sharedCli, Prefix: p, PublicIP: hostIP()})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ev := m.Subscribe(ctx)
	for range benchExisting + 1 { // the snapshot
		<-ev
	}
	g, err := sharedCli.Grant(ctx, 3600)
	if err != nil {
		b.Fatal(err)
	}
	own := m.Leases()[0].Subnet
	var lat []time.Duration
	i := 0
	b.ResetTimer()
	for b.Loop() {
		i++
		sn := netip.PrefixFrom(a4(0x0a000000+uint32(benchExisting+1+i%30000)<<8), 24)
		if sn == own {
			continue
		}
		key := p + "/subnets/" + subnetKey(sn)
		start := time.Now()
		if _, err := sharedCli.Put(ctx, key, `{"PublicIP":"10.97.0.1","PublicIPv6":null}`, clientv3.WithLease(g.ID)); err != nil {
			b.Fatal(err)
		}
		for e := range ev {
			if e.Type == Added && e.Lease.Subnet == sn {
				break
			}
		}
		lat = append(lat, time.Since(start))
		b.StopTimer()
		if _, err := sharedCli.Delete(ctx, key); err != nil {
			b.Fatal(err)
		}
		for e := range ev {
			if e.Type == Removed && e.Lease.Subnet == sn {
				break
			}
		}
		b.StartTimer()
	}
	reportPercentiles(b, lat)
}
