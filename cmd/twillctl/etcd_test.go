package main

import (
	"bytes"
	"context"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/twill-net/twill/internal/etcdserver/etcdtest"
	"github.com/twill-net/twill/internal/subnet"
)

// TestLeasesFallBackToEtcd: with no twilld on this machine, `twillctl leases`
// reads every host's lease (both overlays, flanneld's too) from etcd.
func TestLeasesFallBackToEtcd(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := etcdtest.Client(t, srv)
	ctx := context.Background()
	for i, ip := range []string{"10.0.0.1", "10.0.0.2"} {
		m, err := subnet.New(ctx, subnet.Options{Client: cli, Prefix: "/tw", Network: netip.MustParsePrefix("10.96.0.0/16"),
			PublicIP: netip.MustParseAddr(ip), Store: &subnet.MemStore{}})
		if err != nil {
			t.Fatalf("host %d: %v", i, err)
		}
		if i == 1 {
			if _, err := m.Subnet(ctx, netip.MustParsePrefix("10.97.0.0/16")); err != nil {
				t.Fatal(err)
			}
		}
		t.Cleanup(func() { m.Close() })
	}
	// A flanneld on the vxlan backend.
	if _, err := cli.Put(ctx, "/tw/subnets/10.96.200.0-24", `{"PublicIP":"10.0.0.9","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1}}`); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	args := []string{"--socket", filepath.Join(t.TempDir(), "none.sock"), "--etcd-endpoints", strings.Join(srv.Endpoints(), ","), "--etcd-prefix", "/tw", "leases"}
	if rc := run(args, &out, &errb); rc != 0 {
		t.Fatalf("rc %d: %s", rc, errb.String())
	}
	table := out.String()
	for _, want := range []string{"10.0.0.1", "10.0.0.2", "10.97.0.0/16", "flanneld", "vxlan", "24h0m0s"} {
		if !strings.Contains(table, want) {
			t.Errorf("leases from etcd lack %q:\n%s", want, table)
		}
	}
	if n := strings.Count(table, "\n"); n != 5 { // header + 2 + 1 (10.97) + flanneld
		t.Errorf("%d lines:\n%s", n, table)
	}
	// Other views still need the daemon and say so.
	errb.Reset()
	if rc := run([]string{"--socket", filepath.Join(t.TempDir(), "none.sock"), "--etcd-endpoints", srv.Endpoints()[0], "peers"}, &out, &errb); rc != 1 || !strings.Contains(errb.String(), "is twilld running") {
		t.Errorf("peers without a daemon: rc %d %q", rc, errb.String())
	}
}
