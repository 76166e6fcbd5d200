// Package etcdtest starts a real in-process etcd for tests: a fresh data
// directory, free loopback ports, no fsync, and everything stopped in
// t.Cleanup. It is never a mock: tests talk to etcd over gRPC like twilld does.
package etcdtest

import (
	"context"
	"log/slog"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/twill-net/twill/internal/etcdserver"
)

// Start runs an embedded etcd for the test and stops it in t.Cleanup.
func Start(t testing.TB) *etcdserver.Server {
	t.Helper()
	return StartIn(t, t.TempDir())
}

// New runs an embedded etcd in dir on free ports without a testing.TB, for
// a TestMain that shares one server among a package's tests. The caller
// closes it.
func New(dir string) (*etcdserver.Server, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return etcdserver.Start(ctx, dir, slog.New(slog.DiscardHandler),
		etcdserver.WithClientAddr(etcdserver.FreeLoopback),
		etcdserver.WithPeerAddr(etcdserver.FreeLoopback),
		etcdserver.WithoutFsync())
}

// StartIn runs an embedded etcd with its data in dir on free ports, e.g. to
// restart a server on the data of a stopped one.
func StartIn(t testing.TB, dir string, opts ...etcdserver.Option) *etcdserver.Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	all := append([]etcdserver.Option{
		etcdserver.WithClientAddr(etcdserver.FreeLoopback),
		etcdserver.WithPeerAddr(etcdserver.FreeLoopback),
		etcdserver.WithoutFsync(),
	}, opts...)
	s, err := etcdserver.Start(ctx, dir, slog.New(slog.DiscardHandler), all...)
	if err != nil {
		t.Fatalf("starting test etcd: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// Client returns a client of s, closed in t.Cleanup (before s stops, since
// cleanups run last-in first-out).
func Client(t testing.TB, s *etcdserver.Server) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   s.Endpoints(),
		DialTimeout: 5 * time.Second,
		Logger:      quietZap(),
	})
	if err != nil {
		t.Fatalf("connecting to test etcd %v: %v", s.Endpoints(), err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}
