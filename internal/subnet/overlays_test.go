package subnet

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

func TestExtraOverlayOnFirstUse(t *testing.T) {
	p := testPrefix(t)
	o := opts(t, p)
	m := newManager(t, o)
	ev := m.Subscribe(ctxT(t))
	net97 := netip.MustParsePrefix("10.97.0.0/16")

	// Many concurrent first uses lease once and agree.
	const callers = 10
	got := make([]netip.Prefix, callers)
	errs := make([]error, callers)
	var wg sync.WaitGroup
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], errs[i] = m.Subnet(ctxT(t), net97)
		}()
	}
	wg.Wait()
	for i := range callers {
		if errs[i] != nil || got[i] != got[0] {
			t.Fatalf("caller %d: %v %v, caller 0: %v", i, got[i], errs[i], got[0])
		}
	}
	sn := got[0]
	if !net97.Contains(sn.Addr()) || sn.Bits() != 24 {
		t.Fatalf("subnet %v not a /24 of %v", sn, net97)
	}

	// flannel's layout under <prefix>/overlays/10.97.0.0-16: flanneld with
	// -etcd-prefix set to it joins this overlay.
	op := p + "/overlays/10.97.0.0-16"
	cfg, _ := mustGet(t, sharedCli, op+"/config")
	if want := `{"Network":"10.97.0.0/16","SubnetLen":24,"Backend":{"Type":"udp","Port":8285}}`; cfg != want {
		t.Errorf("overlay config %s, want %s", cfg, want)
	}
	val, _ := mustGet(t, sharedCli, op+"/subnets/"+subnetKey(sn))
	if val != fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":null}`, o.PublicIP) {
		t.Errorf("overlay lease value %s", val)
	}
	resp, _ := sharedCli.Get(ctxT(t), op+"/subnets/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if resp.Count != 1 {
		t.Errorf("%d leases under %s, want 1", resp.Count, op)
	}

	// One stream covers both overlays, each event naming its overlay.
	seen := map[netip.Prefix]bool{}
	for len(seen) < 2 {
		e := nextEvent(t, ev, time.Second, func(e Event) bool { return e.Own && e.Type == Added })
		seen[e.Lease.Overlay] = true
	}
	if !seen[net96] || !seen[net97] {
		t.Fatalf("own events for %v", seen)
	}
	// Another host in the extra overlay shows up on the same stream.
	o2 := opts(t, p)
	m2 := newManager(t, o2)
	sn2, err := m2.Subnet(ctxT(t), net97)
	if err != nil {
		t.Fatal(err)
	}
	e := nextEvent(t, ev, time.Second, func(e Event) bool { return e.Lease.Overlay == net97 && !e.Own })
	if e.Type != Added || e.Lease.Subnet != sn2 || e.Lease.Attrs.PublicIP != o2.PublicIP {
		t.Fatalf("got %v, want the other host's %v in %v", e, sn2, net97)
	}

	ls := m.Leases()
	if len(ls) != 2 || ls[0].Overlay != net96 || ls[1].Overlay != net97 || ls[1].Subnet != sn {
		t.Fatalf("Leases() = %v", ls)
	}
	if n, ok := m.OverlayOf(sn); !ok || n != net97 {
		t.Errorf("OverlayOf(%v) = %v %v", sn, n, ok)
	}
	if l, err := m.Lease(ctxT(t), netip.MustParsePrefix("10.97.1.2/16")); err != nil || l.Subnet != sn {
		t.Errorf("unmasked overlay: %v %v", l.Subnet, err)
	}

	// Release revokes the leases in every overlay.
	if err := m.Release(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{op + "/subnets/" + subnetKey(sn), p + "/subnets/" + subnetKey(ls[0].Subnet)} {
		if r, _ := sharedCli.Get(ctxT(t), k); len(r.Kvs) != 0 {
			t.Errorf("%s still there after Release", k)
		}
	}
	if _, err := m.Subnet(ctxT(t), net97); !errors.Is(err, ErrClosed) {
		t.Errorf("after Release: %v", err)
	}
}

func TestOverlappingOverlaysAreRefused(t *testing.T) {
	p := testPrefix(t)
	m := newManager(t, opts(t, p))
	if _, err := m.Subnet(ctxT(t), netip.MustParsePrefix("10.97.0.0/16")); err != nil {
		t.Fatal(err)
	}
	// Another host uses 10.98.0.0/16: recorded in etcd.
	other := newManager(t, opts(t, p))
	if _, err := other.Subnet(ctxT(t), netip.MustParsePrefix("10.98.0.0/16")); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ ask, clash string }{
		{"10.96.0.0/15", "10.96.0.0/16"},   // the default
		{"10.96.128.0/17", "10.96.0.0/16"}, // inside the default
		{"10.97.128.0/17", "10.97.0.0/16"}, // inside an extra one of this host
		{"10.98.0.0/17", "10.98.0.0/16"},   // inside one another host made
		{"10.0.0.0/8", "10."},
	} {
		_, err := m.Subnet(ctxT(t), netip.MustParsePrefix(tt.ask))
		if !errors.Is(err, ErrOverlayOverlap) || !strings.Contains(err.Error(), tt.ask) || !strings.Contains(err.Error(), tt.clash) {
			t.Errorf("overlay %s: %v; want ErrOverlayOverlap naming %s and %s", tt.ask, err, tt.ask, tt.clash)
		}
	}
	if _, err := m.Subnet(ctxT(t), netip.MustParsePrefix("fd00::/48")); err == nil {
		t.Error("IPv6 overlay accepted")
	}
	if _, err := m.Subnet(ctxT(t), netip.MustParsePrefix("10.99.0.0/29")); !errors.Is(err, ErrBadConfig) {
		t.Errorf("overlay too small for /24s: %v", err)
	}
	// The same overlay another host made is simply joined.
	if _, err := m.Subnet(ctxT(t), netip.MustParsePrefix("10.98.0.0/16")); err != nil {
		t.Errorf("joining another host's overlay: %v", err)
	}
}

func TestExtraOverlayReadsFlanneldConfigThere(t *testing.T) {
	p := testPrefix(t)
	op := p + "/overlays/10.97.0.0-16"
	if _, err := sharedCli.Put(ctxT(t), op+"/config", `{"Network":"10.97.0.0/16","SubnetLen":24,"SubnetMin":"10.97.100.0","SubnetMax":"10.97.100.0","Backend":{"Type":"udp"}}`); err != nil {
		t.Fatal(err)
	}
	m := newManager(t, opts(t, p))
	sn, err := m.Subnet(ctxT(t), netip.MustParsePrefix("10.97.0.0/16"))
	if err != nil || sn != netip.MustParsePrefix("10.97.100.0/24") {
		t.Fatalf("got %v %v, want the only subnet the stored config allows", sn, err)
	}
	m2 := newManager(t, opts(t, p))
	if _, err := m2.Subnet(ctxT(t), netip.MustParsePrefix("10.97.0.0/16")); !errors.Is(err, ErrSubnetsExhausted) {
		t.Fatalf("second host: %v, want ErrSubnetsExhausted", err)
	}
	// A failed first use is not cached: once there is room, it works.
	if err := m.Release(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := m2.Subnet(ctxT(t), netip.MustParsePrefix("10.97.0.0/16")); err != nil {
		t.Fatalf("after the first host left: %v", err)
	}
	// A config at an overlay key naming another network is an error.
	if _, err := sharedCli.Put(ctxT(t), p+"/overlays/10.90.0.0-16/config", `{"Network":"10.91.0.0/16"}`); err != nil {
		t.Fatal(err)
	}
	if _, err := m2.Subnet(ctxT(t), netip.MustParsePrefix("10.90.0.0/16")); !errors.Is(err, ErrBadConfig) || !strings.Contains(err.Error(), "10.91.0.0/16") {
		t.Errorf("mismatched overlay config: %v", err)
	}
}
