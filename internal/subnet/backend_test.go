package subnet

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// wgBackend stands in for twilld's: a wireguard lease carrying key.
func wgBackend(key string) func(Config) (LeaseBackend, error) {
	return func(c Config) (LeaseBackend, error) {
		if c.BackendType != "wireguard" {
			return LeaseBackend{}, nil
		}
		return LeaseBackend{Type: "wireguard", Data: json.RawMessage(`{"PublicKey":"` + key + `"}`)}, nil
	}
}

func TestEncryptedOverlayLeaseAsFlanneld(t *testing.T) {
	p := testPrefix(t)
	if _, err := sharedCli.Put(ctxT(t), p+"/config", `{"Network":"10.96.0.0/16","Backend":{"Type":"wireguard","ListenPort":51820}}`); err != nil {
		t.Fatal(err)
	}
	o := opts(t, p)
	o.Store = &MemStore{}
	o.Backend = wgBackend("key-one")
	m := newManager(t, o)
	c, _ := m.Config(net96)
	if c.BackendType != "wireguard" {
		t.Errorf("backend type %q", c.BackendType)
	}
	l := m.Leases()[0]
	val, _ := mustGet(t, sharedCli, p+"/subnets/"+subnetKey(l.Subnet))
	want := fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":null,"BackendType":"wireguard","BackendData":{"PublicKey":"key-one"}}`, o.PublicIP)
	if val != want {
		t.Errorf("lease value %s, want flanneld's %s", val, want)
	}

	// A second host sees it; then the first comes back with a new key: the
	// same subnet, its lease rewritten, and the second host told.
	o2 := opts(t, p)
	o2.Backend = wgBackend("key-two")
	m2 := newManager(t, o2)
	evs := m2.Subscribe(ctxT(t))
	nextEvent(t, evs, 5*time.Second, func(e Event) bool {
		return e.Lease.Subnet == l.Subnet && string(e.Lease.Attrs.BackendData) == `{"PublicKey":"key-one"}`
	})
	m.Close()
	o.Backend = wgBackend("key-three")
	again := newManager(t, o)
	if got := again.Leases()[0]; got.Subnet != l.Subnet || string(got.Attrs.BackendData) != `{"PublicKey":"key-three"}` {
		t.Errorf("after the key changed: %+v, want %s with the new key", got, l.Subnet)
	}
	e := nextEvent(t, evs, 5*time.Second, func(e Event) bool {
		return e.Lease.Subnet == l.Subnet && e.Type == Added && !e.Own &&
			string(e.Lease.Attrs.BackendData) == `{"PublicKey":"key-three"}`
	})
	if e.Lease.Attrs.BackendType != "wireguard" {
		t.Errorf("event %+v", e)
	}
}

func TestBackendRefusalNamesTheConfig(t *testing.T) {
	p := testPrefix(t)
	if _, err := sharedCli.Put(ctxT(t), p+"/config", `{"Network":"10.96.0.0/16","Backend":{"Type":"wireguard","PSK":"nope"}}`); err != nil {
		t.Fatal(err)
	}
	o := opts(t, p)
	o.Backend = func(Config) (LeaseBackend, error) {
		return LeaseBackend{}, fmt.Errorf("PSK is not a key: %w", ErrBadConfig)
	}
	_, err := New(ctxT(t), o)
	if !errors.Is(err, ErrBadConfig) || !strings.Contains(err.Error(), p+"/config") {
		t.Errorf("New: %v, want ErrBadConfig naming %s/config", err, p)
	}
	if resp, _ := sharedCli.Get(ctxT(t), p+"/subnets/", clientv3.WithPrefix()); len(resp.Kvs) != 0 {
		t.Errorf("a refused overlay got %d leases", len(resp.Kvs))
	}
}

func TestSetBackendOnlyOnAFreshOverlay(t *testing.T) {
	p := testPrefix(t)
	o1, o2 := opts(t, p), opts(t, p)
	o1.Backend, o2.Backend = wgBackend("key-a"), wgBackend("key-b")
	a, b := newManager(t, o1), newManager(t, o2)
	green, red := netip.MustParsePrefix("10.97.0.0/16"), netip.MustParsePrefix("10.98.0.0/16")
	wg := json.RawMessage(`{"Type":"wireguard","ListenPort":51820}`)

	la, err := a.Lease(ctxT(t), green)
	if err != nil {
		t.Fatal(err)
	}
	evs := a.Subscribe(ctxT(t))
	cfg, err := a.SetBackend(ctxT(t), green, wg)
	if err != nil || cfg.BackendType != "wireguard" {
		t.Fatalf("SetBackend on a fresh overlay: %+v %v", cfg, err)
	}
	stored, _ := mustGet(t, sharedCli, p+"/overlays/10.97.0.0-16/config")
	if stored != `{"Network":"10.97.0.0/16","SubnetLen":24,"Backend":{"Type":"wireguard","ListenPort":51820}}` {
		t.Errorf("config %s", stored)
	}
	val, id := mustGet(t, sharedCli, p+"/overlays/10.97.0.0-16/subnets/"+subnetKey(la.Subnet))
	if !strings.Contains(val, `"BackendType":"wireguard","BackendData":{"PublicKey":"key-a"}`) || id != la.EtcdLease {
		t.Errorf("own lease %s bound to %x, want a wireguard lease on the same etcd lease %x", val, id, la.EtcdLease)
	}
	if c, _ := a.Config(green); c.BackendType != "wireguard" {
		t.Errorf("Config after SetBackend: %+v", c)
	}
	nextEvent(t, evs, 5*time.Second, func(e Event) bool {
		return e.Own && e.Lease.Subnet == la.Subnet && e.Lease.Attrs.BackendType == "wireguard"
	})
	// Asking again is a no-op; a second host joins on the new backend.
	if _, err := a.SetBackend(ctxT(t), green, wg); err != nil {
		t.Errorf("SetBackend again: %v", err)
	}
	lb, err := b.Lease(ctxT(t), green)
	if err != nil || lb.Attrs.BackendType != "wireguard" {
		t.Fatalf("second host: %+v %v", lb, err)
	}
	// Now the backend is fixed: neither host may change it.
	_, err = b.SetBackend(ctxT(t), green, json.RawMessage(`{"Type":"udp"}`))
	if !errors.Is(err, ErrBackendInUse) || !strings.Contains(err.Error(), "1 other host") || !strings.Contains(err.Error(), "another --subnet") {
		t.Errorf("changing a shared overlay: %v, want ErrBackendInUse saying why and what to do", err)
	}
	// An overlay two hosts already use over udp stays udp.
	a.Lease(ctxT(t), red)
	b.Lease(ctxT(t), red)
	if _, err := a.SetBackend(ctxT(t), red, wg); !errors.Is(err, ErrBackendInUse) {
		t.Errorf("encrypting a shared udp overlay: %v, want ErrBackendInUse", err)
	}
	if c, _ := a.Config(red); c.BackendType != "udp" {
		t.Errorf("refused change left %s", c.BackendType)
	}
	if _, err := a.SetBackend(ctxT(t), net96, wg); !errors.Is(err, ErrBackendInUse) || !strings.Contains(err.Error(), "default overlay") {
		t.Errorf("changing the default overlay: %v", err)
	}
}
