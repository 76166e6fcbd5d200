package etcdserver_test

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"

	"github.com/twill-net/twill/internal/etcdserver"
	"github.com/twill-net/twill/internal/etcdserver/etcdtest"
	"github.com/twill-net/twill/internal/testbed"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func dial(t *testing.T, s *etcdserver.Server) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: s.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	return cli
}

func TestStartServesKeepsDataAndClosesQuietly(t *testing.T) {
	dir := t.TempDir()
	var logs testbed.LogBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	start := time.Now()
	s, err := etcdserver.Start(ctx, dir, log,
		etcdserver.WithClientAddr(etcdserver.FreeLoopback), etcdserver.WithPeerAddr(etcdserver.FreeLoopback))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("embedded etcd ready in %v at %v", time.Since(start), s.Endpoints())
	eps := s.Endpoints()
	if len(eps) != 1 || !strings.HasPrefix(eps[0], "http://127.0.0.1:") || strings.HasSuffix(eps[0], ":0") {
		t.Fatalf("endpoints = %v, want one http://127.0.0.1:<bound port>", eps)
	}
	addr := s.ClientAddr()
	if addr.Port() == 0 || !addr.Addr().IsLoopback() {
		t.Fatalf("client addr = %v", addr)
	}

	cli := dial(t, s)
	if _, err := cli.Put(ctx, "/twill/test", "kept"); err != nil {
		t.Fatal(err)
	}
	cli.Close()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s.Close() // second Close is a no-op

	// A clean Close logs nothing at warn or error level.
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") {
			t.Errorf("clean start/close logged: %s", line)
		}
	}

	// Restart on the same dir and the same client port: the key is still there.
	s2, err := etcdserver.Start(ctx, dir, log, etcdserver.WithClientAddr(addr), etcdserver.WithPeerAddr(etcdserver.FreeLoopback))
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if got := s2.Endpoints()[0]; got != eps[0] {
		t.Errorf("restarted endpoint %s, want %s", got, eps[0])
	}
	cli2 := dial(t, s2)
	defer cli2.Close()
	resp, err := cli2.Get(ctx, "/twill/test")
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "kept" {
		t.Fatalf("after restart got %v, want the key written before", resp.Kvs)
	}
}

func TestStartRefusesNonLoopback(t *testing.T) {
	_, err := etcdserver.Start(context.Background(), t.TempDir(), nil,
		etcdserver.WithClientAddr(netip.MustParseAddrPort("0.0.0.0:2379")))
	if !errors.Is(err, etcdserver.ErrNotLoopback) {
		t.Fatalf("err = %v, want ErrNotLoopback", err)
	}
	if !strings.Contains(err.Error(), "0.0.0.0:2379") {
		t.Errorf("error %q does not name the address", err)
	}
}

func TestStartPortInUse(t *testing.T) {
	s := etcdtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := etcdserver.Start(ctx, t.TempDir(), nil,
		etcdserver.WithClientAddr(s.ClientAddr()), etcdserver.WithPeerAddr(etcdserver.FreeLoopback))
	if err == nil {
		t.Fatal("second server on the same port started")
	}
	if !strings.Contains(err.Error(), s.ClientAddr().String()) {
		t.Errorf("error %q does not name the address", err)
	}
}

func TestHelperClient(t *testing.T) {
	s := etcdtest.Start(t)
	cli := etcdtest.Client(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
}
