package subnet

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/twill-net/twill/internal/etcdserver"
	"github.com/twill-net/twill/internal/etcdserver/etcdtest"
	"github.com/twill-net/twill/internal/testbed"
)

// The package's tests share one real in-process etcd; each test works under
// its own key prefix.
var (
	shared    *etcdserver.Server
	sharedCli *clientv3.Client
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "twill-subnet-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	shared, err = etcdtest.New(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	sharedCli, err = clientv3.New(clientv3.Config{Endpoints: shared.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := m.Run()
	sharedCli.Close()
	shared.Close()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutine leak:", err)
			return 1
		}
	}
	return code
}

var prefixSeq atomic.Int64

// testPrefix is a fresh etcd prefix for one test.
func testPrefix(t testing.TB) string {
	name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
	return fmt.Sprintf("/t%d/%s", prefixSeq.Add(1), name)
}

func testLogger(t testing.TB) (*slog.Logger, *testbed.LogBuffer) {
	buf := &testbed.LogBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("manager log:\n%s", buf.String())
		}
	})
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

var (
	net96 = netip.MustParsePrefix("10.96.0.0/16")
	ipSeq atomic.Uint32
)

// hostIP returns a distinct underlay address per call: 10.99.x.y.
func hostIP() netip.Addr { return a4(0x0a630000 + ipSeq.Add(1)) }

// opts returns Options for one simulated host on prefix.
func opts(t testing.TB, prefix string) Options {
	log, _ := testLogger(t)
	return Options{Client: sharedCli, Prefix: prefix, Network: net96, PublicIP: hostIP(), Log: log,
		RetryMin: 50 * time.Millisecond, RetryMax: 500 * time.Millisecond, OpTimeout: 5 * time.Second,
		PresenceTTL: 3 * time.Second}
}

func newManager(t testing.TB, o Options) *Manager {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	m, err := New(ctx, o)
	if err != nil {
		t.Fatalf("starting host %s: %v", o.PublicIP, err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustGet(t testing.TB, cli *clientv3.Client, key string) (string, int64) {
	t.Helper()
	resp, err := cli.Get(ctxT(t), key)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		t.Fatalf("no key %s", key)
	}
	return string(resp.Kvs[0].Value), resp.Kvs[0].Lease
}

// putLease writes a lease as flanneld would, bound to a fresh etcd lease of ttl.
func putLease(t testing.TB, cli *clientv3.Client, prefix string, sn netip.Prefix, value string, ttl int64) clientv3.LeaseID {
	t.Helper()
	g, err := cli.Grant(ctxT(t), ttl)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctxT(t), prefix+"/subnets/"+subnetKey(sn), value, clientv3.WithLease(g.ID)); err != nil {
		t.Fatal(err)
	}
	return g.ID
}

// nextEvent waits up to d for an event matching ok, failing the test after.
func nextEvent(t testing.TB, ch <-chan Event, d time.Duration, ok func(Event) bool) Event {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case e, open := <-ch:
			if !open {
				t.Fatal("event channel closed")
			}
			if ok(e) {
				return e
			}
		case <-deadline:
			t.Fatalf("no matching event within %v", d)
		}
	}
}

func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
