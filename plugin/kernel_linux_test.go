//go:build linux

package plugin

import (
	"github.com/twill-net/twill/internal/testbed"

	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"

	netapi "github.com/docker/go-plugins-helpers/network"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/twill-net/twill/datapath/links"
)

// kernelStack serves twill with real bridges and veths in ns, its state in
// dir (firewall faked: its root tests live in datapath/firewall).
func kernelStack(t *testing.T, ns netns.NsHandle, dir string) (*stack, *links.Links) {
	t.Helper()
	lk, err := links.NewAt(quiet(), ns)
	if err != nil {
		t.Fatal(err)
	}
	b, err := newBackendsWith(dir, quiet(), lk)
	if err != nil {
		lk.Close()
		t.Fatal(err)
	}
	srv := New(Options{Log: quiet()})
	srv.Ready(b.drv, b.ipam)
	s := &stack{backends: b, srv: srv, c: serve(t, srv)}
	t.Cleanup(func() {
		b.db.Close()
		lk.Close()
	})
	return s, lk
}

func linkNames(t *testing.T, h *netlink.Handle) []string {
	t.Helper()
	all, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range all {
		if n := l.Attrs().Name; strings.HasPrefix(n, "tw") {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	return names
}

// TestKernelDockerSequence runs Docker's calls for network create, docker
// run, a plugin restart with leftovers, docker stop and network rm against
// real links in a namespace of its own.
func TestKernelDockerSequence(t *testing.T) {
	testbed.RequireNetAdmin(t)
	_, ns := testbed.Netns(t, "twp-")
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	dir := t.TempDir()
	s, _ := kernelStack(t, ns, dir)
	c := s.c

	c.ok(t, "IpamDriver.RequestPool", reqPoolBlue)
	c.ok(t, "IpamDriver.RequestAddress", reqGateway)
	c.ok(t, "NetworkDriver.CreateNetwork", createNetBlue)
	c.ok(t, "IpamDriver.RequestAddress", `{"PoolID":"`+poolID+`","Address":"10.96.7.50","Options":null}`)
	c.ok(t, "NetworkDriver.CreateEndpoint", `{`+epIDs+`,"Interface":{"Address":"10.96.7.50/24","AddressIPv6":"","MacAddress":""},`+epOptions+`}`)
	c.ok(t, "NetworkDriver.Join", `{`+epIDs+`,"SandboxKey":"/var/run/docker/netns/x",`+epOptions+`}`)

	br, err := h.LinkByName("tw-5c87f637")
	if err != nil {
		t.Fatal(err)
	}
	if br.Type() != "bridge" || br.Attrs().MTU != tunnelMTU {
		t.Fatalf("bridge %s mtu %d", br.Type(), br.Attrs().MTU)
	}
	addrs, err := h.AddrList(br, netlink.FAMILY_V4)
	if err != nil || len(addrs) != 1 || addrs[0].IPNet.String() != "10.96.7.1/24" {
		t.Fatalf("bridge addresses %v %v", addrs, err)
	}
	host, err := h.LinkByName("twv896c02fc")
	if err != nil {
		t.Fatal(err)
	}
	if host.Attrs().MasterIndex != br.Attrs().Index || host.Attrs().MTU != tunnelMTU {
		t.Fatalf("veth host end master %d mtu %d", host.Attrs().MasterIndex, host.Attrs().MTU)
	}
	peer, err := h.LinkByName("twc896c02fc")
	if err != nil {
		t.Fatal(err)
	}
	if peer.Attrs().HardwareAddr.String() != "02:42:0a:60:07:32" || peer.Attrs().MTU != tunnelMTU {
		t.Fatalf("peer mac %s mtu %d", peer.Attrs().HardwareAddr, peer.Attrs().MTU)
	}

	// A second container whose veth will vanish while twill is down, and
	// leftovers of a network deleted while twill was disabled.
	ep2 := "abcdef01" + epID[8:]
	ids2 := `"NetworkID":"` + netID + `","EndpointID":"` + ep2 + `"`
	c.ok(t, "IpamDriver.RequestAddress", `{"PoolID":"`+poolID+`","Address":"10.96.7.51","Options":null}`)
	c.ok(t, "NetworkDriver.CreateEndpoint", `{`+ids2+`,"Interface":{"Address":"10.96.7.51/24"},"Options":{}}`)
	c.ok(t, "NetworkDriver.Join", `{`+ids2+`,"SandboxKey":"x","Options":{}}`)

	// "Restart": a new process on the same state and the same kernel.
	s.c.close()
	s.db.Close()
	ctx := context.Background()
	other, err := links.NewAt(quiet(), ns)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if err := other.DeleteVeth(ctx, "twvabcdef01"); err != nil {
		t.Fatal(err)
	}
	if err := other.EnsureBridge(ctx, "tw-deadbeef", netip.MustParsePrefix("10.99.1.1/24"), tunnelMTU); err != nil {
		t.Fatal(err)
	}
	if err := other.AddVeth(ctx, "twvdeadbeef", "twcdeadbeef", "tw-deadbeef", tunnelMTU, nil); err != nil {
		t.Fatal(err)
	}
	s2, _ := kernelStack(t, ns, dir)
	rep, err := s2.drv.Reconcile(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(rep.RemovedLinks, ",") != "tw-deadbeef,twvdeadbeef" {
		t.Fatalf("reconcile removed %v", rep.RemovedLinks)
	}
	if len(rep.Vanished) != 1 || rep.Vanished[0].EndpointID != ep2 {
		t.Fatalf("vanished %+v", rep.Vanished)
	}
	if got := strings.Join(linkNames(t, h), " "); got != "tw-5c87f637 twc896c02fc twv896c02fc" {
		t.Fatalf("links after reconcile: %s", got)
	}
	// What cmd does for a vanished endpoint once Docker confirms it is gone.
	v := rep.Vanished[0]
	if err := s2.drv.DeleteEndpoint(ctx, &netapi.DeleteEndpointRequest{NetworkID: v.NetworkID, EndpointID: v.EndpointID}); err != nil {
		t.Fatal(err)
	}
	if err := s2.ipam.Release(ctx, v.Address.Addr()); err != nil {
		t.Fatal(err)
	}

	// docker stop; docker network rm.
	c2 := s2.c
	c2.ok(t, "NetworkDriver.RevokeExternalConnectivity", `{`+epIDs+`}`)
	c2.ok(t, "NetworkDriver.Leave", `{`+epIDs+`}`)
	c2.ok(t, "NetworkDriver.DeleteEndpoint", `{`+epIDs+`}`)
	c2.ok(t, "IpamDriver.ReleaseAddress", `{"PoolID":"`+poolID+`","Address":"10.96.7.50"}`)
	c2.ok(t, "IpamDriver.ReleaseAddress", `{"PoolID":"`+poolID+`","Address":"10.96.7.1"}`)
	c2.ok(t, "IpamDriver.ReleasePool", `{"PoolID":"`+poolID+`"}`)
	c2.ok(t, "NetworkDriver.DeleteNetwork", `{"NetworkID":"`+netID+`"}`)
	if names := linkNames(t, h); len(names) != 0 {
		t.Fatalf("links left: %v", names)
	}
	if n := len(s2.ipam.Allocations()); n != 0 {
		t.Fatalf("%d allocations left", n)
	}
}
