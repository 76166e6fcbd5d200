package ipam

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	ipamapi "github.com/docker/go-plugins-helpers/ipam"

	"github.com/twill-net/twill/internal/store"
)

var (
	blue     = netip.MustParsePrefix("10.96.0.0/16")
	blueHost = netip.MustParsePrefix("10.96.7.0/24")
	red      = netip.MustParsePrefix("10.97.0.0/16")
	redHost  = netip.MustParsePrefix("10.97.3.0/24")
	gwOpts   = map[string]string{"RequestAddressType": "com.docker.network.gateway"}
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newIPAM(t *testing.T, st Store) (*IPAM, *FakeOverlays) {
	t.Helper()
	ov := NewFakeOverlays(blue, map[netip.Prefix]netip.Prefix{blue: blueHost, red: redHost})
	p, err := New(quiet(), ov, st)
	if err != nil {
		t.Fatal(err)
	}
	return p, ov
}

func requestPool(t *testing.T, p *IPAM, pool, sub string) *ipamapi.RequestPoolResponse {
	t.Helper()
	r, err := p.RequestPool(context.Background(), &ipamapi.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: pool, SubPool: sub, Options: map[string]string{}})
	if err != nil {
		t.Fatalf("RequestPool(%q, %q): %v", pool, sub, err)
	}
	return r
}

func requestAddr(p *IPAM, poolID, addr string, opts map[string]string) (string, error) {
	r, err := p.RequestAddress(context.Background(), &ipamapi.RequestAddressRequest{PoolID: poolID, Address: addr, Options: opts})
	if err != nil {
		return "", err
	}
	return r.Address, nil
}

func mustAddr(t *testing.T, p *IPAM, poolID, addr string, opts map[string]string) string {
	t.Helper()
	a, err := requestAddr(p, poolID, addr, opts)
	if err != nil {
		t.Fatalf("RequestAddress(%s, %q): %v", poolID, addr, err)
	}
	return a
}

func TestRequestPool(t *testing.T) {
	p, ov := newIPAM(t, store.NewMemory())
	ov.Fail(netip.MustParsePrefix("10.98.0.0/16"), errors.New("overlay 10.98.0.0/16 has no free /24 left (all 256 leased)"))
	tests := []struct {
		name      string
		req       ipamapi.RequestPoolRequest
		wantPool  string
		wantErr   error
		errSubstr string
	}{
		{"subnet maps to host share", ipamapi.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: "10.96.0.0/16"}, "10.96.7.0/24", nil, ""},
		{"no subnet refused with what to type", ipamapi.RequestPoolRequest{AddressSpace: LocalAddressSpace}, "", ErrNoSubnet, "--subnet 10.96.0.0/16"},
		{"global space", ipamapi.RequestPoolRequest{AddressSpace: GlobalAddressSpace, Pool: "10.97.0.0/16"}, "10.97.3.0/24", nil, ""},
		{"ip-range inside", ipamapi.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: "10.96.0.0/16", SubPool: "10.96.7.128/25"}, "10.96.7.0/24", nil, ""},
		{"ip-range outside", ipamapi.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: "10.96.0.0/16", SubPool: "10.96.200.0/24"}, "", ErrOutsideSubnet, "10.96.7.0/24"},
		{"ip-range wider than host share", ipamapi.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: "10.96.0.0/16", SubPool: "10.96.0.0/20"}, "", ErrOutsideSubnet, "inside 10.96.7.0/24"},
		{"ipv6", ipamapi.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: "fd00::/64", V6: true}, "", ErrIPv6, "--ipv6"},
		{"default ipam space", ipamapi.RequestPoolRequest{AddressSpace: "LocalDefault", Pool: "10.96.0.0/16"}, "", ErrAddressSpace, "LocalDefault"},
		{"ipam options", ipamapi.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: "10.96.0.0/16", Options: map[string]string{"foo": "bar"}}, "", ErrBadOption, "--ipam-opt foo"},
		{"garbage subnet", ipamapi.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: "ten.96/16"}, "", ErrBadRequest, "ten.96/16"},
		{"overlay error passes through", ipamapi.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: "10.98.0.0/16"}, "", nil, "no free /24 left"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := p.RequestPool(context.Background(), &tt.req)
			if tt.wantPool != "" {
				if err != nil {
					t.Fatal(err)
				}
				if r.Pool != tt.wantPool {
					t.Fatalf("pool %s, want %s", r.Pool, tt.wantPool)
				}
				return
			}
			if err == nil {
				t.Fatalf("no error, answered %+v", r)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Fatalf("error %v is not %v", err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.errSubstr) {
				t.Fatalf("error %q does not mention %q", err, tt.errSubstr)
			}
		})
	}
}

func TestIdenticalRequestPoolIdenticalAnswer(t *testing.T) {
	p, _ := newIPAM(t, store.NewMemory())
	a := requestPool(t, p, "10.96.0.0/16", "10.96.7.128/25")
	b := requestPool(t, p, "10.96.0.0/16", "10.96.7.128/25")
	if a.PoolID != b.PoolID || a.Pool != b.Pool {
		t.Fatalf("answers differ: %+v vs %+v", a, b)
	}
	if c := requestPool(t, p, "10.96.0.0/16", ""); c.PoolID == a.PoolID {
		t.Fatalf("pool without range shares the ID %s of the ranged one", c.PoolID)
	}
}

func TestGatewayAndAddresses(t *testing.T) {
	p, _ := newIPAM(t, store.NewMemory())
	pool := requestPool(t, p, "10.96.0.0/16", "")
	if gw := mustAddr(t, p, pool.PoolID, "", gwOpts); gw != "10.96.7.1/24" {
		t.Fatalf("gateway %s, want 10.96.7.1/24", gw)
	}
	if a := mustAddr(t, p, pool.PoolID, "", nil); a != "10.96.7.2/24" {
		t.Fatalf("first container address %s, want 10.96.7.2/24", a)
	}
	if a := mustAddr(t, p, pool.PoolID, "10.96.7.50", nil); a != "10.96.7.50/24" {
		t.Fatalf("--ip answered %s", a)
	}
	errTests := []struct {
		name, addr string
		opts       map[string]string
		want       error
		substr     string
	}{
		{"--ip taken", "10.96.7.50", nil, ErrAddressInUse, "10.96.7.50"},
		{"--ip is the gateway", "10.96.7.1", nil, ErrAddressInUse, "10.96.7.0/24"},
		{"--ip outside host share", "10.96.9.5", nil, ErrOutsideSubnet, "subnet 10.96.7.0/24"},
		{"--ip broadcast", "10.96.7.255", nil, ErrOutsideSubnet, "--ip inside 10.96.7.0/24"},
		{"garbage", "10.96.7.x", nil, ErrBadRequest, "10.96.7.x"},
		{"second gateway", "", gwOpts, ErrSubnetInUse, "another --subnet"},
	}
	for _, tt := range errTests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := requestAddr(p, pool.PoolID, tt.addr, tt.opts)
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.substr) {
				t.Fatalf("got %v, want %v mentioning %q", err, tt.want, tt.substr)
			}
		})
	}
	if _, err := requestAddr(p, "twill/10.1.0.0/24", "", nil); !errors.Is(err, ErrUnknownPool) {
		t.Fatalf("unknown pool: got %v", err)
	}
	// Releases are idempotent, also for unknown pools.
	for range 2 {
		if err := p.ReleaseAddress(context.Background(), &ipamapi.ReleaseAddressRequest{PoolID: pool.PoolID, Address: "10.96.7.50"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.ReleaseAddress(context.Background(), &ipamapi.ReleaseAddressRequest{PoolID: "nope", Address: "10.96.7.50"}); err != nil {
		t.Fatal(err)
	}
	if a := mustAddr(t, p, pool.PoolID, "10.96.7.50", nil); a != "10.96.7.50/24" {
		t.Fatalf("released --ip not available again: %s", a)
	}
	// Next-fit: a released automatic address is not the next one handed out.
	p.ReleaseAddress(context.Background(), &ipamapi.ReleaseAddressRequest{PoolID: pool.PoolID, Address: "10.96.7.2"})
	if a := mustAddr(t, p, pool.PoolID, "", nil); a != "10.96.7.3/24" {
		t.Fatalf("after releasing .2 got %s, want .3", a)
	}
}

func TestGatewayChoices(t *testing.T) {
	p, _ := newIPAM(t, store.NewMemory())
	pool := requestPool(t, p, "10.96.0.0/16", "")
	if _, err := requestAddr(p, pool.PoolID, "10.96.9.254", gwOpts); !errors.Is(err, ErrOutsideSubnet) || !strings.Contains(err.Error(), "--gateway inside 10.96.7.0/24") {
		t.Fatalf("gateway outside: %v", err)
	}
	if gw := mustAddr(t, p, pool.PoolID, "10.96.7.254", gwOpts); gw != "10.96.7.254/24" {
		t.Fatalf("--gateway answered %s", gw)
	}
}

func TestIPRangeNarrowsAndExhausts(t *testing.T) {
	p, _ := newIPAM(t, store.NewMemory())
	pool := requestPool(t, p, "10.96.0.0/16", "10.96.7.248/29")
	mustAddr(t, p, pool.PoolID, "", gwOpts) // .1, outside the range, like Docker's bridge
	var got []string
	for {
		a, err := requestAddr(p, pool.PoolID, "", nil)
		if err != nil {
			if !errors.Is(err, ErrPoolExhausted) || !strings.Contains(err.Error(), "--ip-range") {
				t.Fatalf("exhaustion error %v", err)
			}
			break
		}
		got = append(got, a)
	}
	// .248 is in the range but only .255 is the subnet's broadcast.
	want := "10.96.7.248/24 10.96.7.249/24 10.96.7.250/24 10.96.7.251/24 10.96.7.252/24 10.96.7.253/24 10.96.7.254/24"
	if strings.Join(got, " ") != want {
		t.Fatalf("range handed out %v, want %s", got, want)
	}
	// --ip outside the range but inside the subnet is allowed (as Docker's bridge does).
	mustAddr(t, p, pool.PoolID, "10.96.7.9", nil)
}

func TestSecondNetworkSameSubnetKeepsFirst(t *testing.T) {
	p, _ := newIPAM(t, store.NewMemory())
	ctx := context.Background()
	first := requestPool(t, p, "10.96.0.0/16", "")
	mustAddr(t, p, first.PoolID, "", gwOpts)
	held := mustAddr(t, p, first.PoolID, "", nil)

	// Docker's sequence for a second network with the same --subnet:
	// RequestPool, gateway RequestAddress (refused), ReleasePool.
	second := requestPool(t, p, "10.96.0.0/16", "")
	if _, err := requestAddr(p, second.PoolID, "", gwOpts); !errors.Is(err, ErrSubnetInUse) {
		t.Fatalf("second gateway: %v", err)
	}
	if err := p.ReleasePool(ctx, &ipamapi.ReleasePoolRequest{PoolID: second.PoolID}); err != nil {
		t.Fatal(err)
	}
	// The first network's pool, gateway and container address are intact.
	if _, err := requestAddr(p, first.PoolID, strings.TrimSuffix(held, "/24"), nil); !errors.Is(err, ErrAddressInUse) {
		t.Fatalf("first network's address was freed: %v", err)
	}
	if _, err := requestAddr(p, first.PoolID, "", gwOpts); !errors.Is(err, ErrSubnetInUse) {
		t.Fatalf("first network's gateway was freed: %v", err)
	}
	if _, ok := p.OverlayOf(blueHost); !ok {
		t.Fatal("subnet forgotten")
	}
	// Deleting the first network frees everything; releasing again succeeds.
	p.ReleaseAddress(ctx, &ipamapi.ReleaseAddressRequest{PoolID: first.PoolID, Address: "10.96.7.1"})
	for range 2 {
		if err := p.ReleasePool(ctx, &ipamapi.ReleasePoolRequest{PoolID: first.PoolID}); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := p.OverlayOf(blueHost); ok {
		t.Fatal("subnet still known after its last pool was released")
	}
	if n := len(p.Allocations()); n != 0 {
		t.Fatalf("%d allocations left", n)
	}
}

func TestPersistedAcrossRestart(t *testing.T) {
	dir := t.TempDir()
	db, err := store.Open(dir, quiet())
	if err != nil {
		t.Fatal(err)
	}
	p, _ := newIPAM(t, db)
	pool := requestPool(t, p, "10.96.0.0/16", "10.96.7.0/28")
	mustAddr(t, p, pool.PoolID, "", gwOpts)
	a := mustAddr(t, p, pool.PoolID, "", nil)
	mustAddr(t, p, pool.PoolID, "10.96.7.100", nil)
	db.Close()

	db, err = store.Open(dir, quiet())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	p2, _ := newIPAM(t, db)
	if ov, ok := p2.OverlayOf(blueHost); !ok || ov != blue {
		t.Fatalf("OverlayOf after restart: %v %v", ov, ok)
	}
	for _, held := range []string{"10.96.7.1", strings.TrimSuffix(a, "/24"), "10.96.7.100"} {
		if _, err := requestAddr(p2, pool.PoolID, held, nil); !errors.Is(err, ErrAddressInUse) {
			t.Errorf("%s not held after restart: %v", held, err)
		}
	}
	if _, err := requestAddr(p2, pool.PoolID, "", gwOpts); !errors.Is(err, ErrSubnetInUse) {
		t.Errorf("gateway not remembered: %v", err)
	}
	// The range is remembered by PoolID: automatic addresses stay in /28.
	b := mustAddr(t, p2, pool.PoolID, "", nil)
	if bp := netip.MustParsePrefix(b); !netip.MustParsePrefix("10.96.7.0/28").Contains(bp.Addr()) || b == a {
		t.Fatalf("after restart got %s (first was %s)", b, a)
	}
}

func TestStoreFailureRollsBack(t *testing.T) {
	st := store.NewMemory()
	p, _ := newIPAM(t, st)
	pool := requestPool(t, p, "10.96.0.0/16", "")
	st.FailNext(errors.New("no space left on device"))
	if _, err := requestAddr(p, pool.PoolID, "10.96.7.9", nil); err == nil || !strings.Contains(err.Error(), "no space left") {
		t.Fatalf("store failure not reported: %v", err)
	}
	if a := mustAddr(t, p, pool.PoolID, "10.96.7.9", nil); a != "10.96.7.9/24" {
		t.Fatalf("address kept after a failed write: %s", a)
	}
	st.FailNext(errors.New("i/o error"))
	if _, err := p.RequestPool(context.Background(), &ipamapi.RequestPoolRequest{AddressSpace: LocalAddressSpace, Pool: "10.97.0.0/16"}); err == nil {
		t.Fatal("pool answered although it was not recorded")
	}
	if _, ok := p.OverlayOf(redHost); ok {
		t.Fatal("unrecorded pool kept in memory")
	}
}

func TestCapabilities(t *testing.T) {
	if c := GetCapabilities(); c.RequiresRequestReplay || c.RequiresMACAddress {
		t.Fatalf("capabilities %+v", c)
	}
	if s := GetDefaultAddressSpaces(); s.LocalDefaultAddressSpace != LocalAddressSpace || s.GlobalDefaultAddressSpace != GlobalAddressSpace {
		t.Fatalf("address spaces %+v", s)
	}
}

func TestForgetSubnet(t *testing.T) {
	st := store.NewMemory()
	p, _ := newIPAM(t, st)
	a := requestPool(t, p, "10.96.0.0/16", "")
	b := requestPool(t, p, "10.96.0.0/16", "10.96.7.128/25")
	mustAddr(t, p, a.PoolID, "", gwOpts)
	mustAddr(t, p, b.PoolID, "", nil)
	other := requestPool(t, p, "10.97.0.0/16", "")
	mustAddr(t, p, other.PoolID, "", gwOpts)
	for range 2 {
		if err := p.Forget(context.Background(), blueHost); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := p.OverlayOf(blueHost); ok {
		t.Fatal("subnet still known")
	}
	if _, err := requestAddr(p, a.PoolID, "", nil); !errors.Is(err, ErrUnknownPool) {
		t.Fatalf("pool survived: %v", err)
	}
	if n := len(p.Allocations()); n != 1 {
		t.Fatalf("%d allocations left, want the other network's gateway", n)
	}
	// A restart agrees.
	p2, _ := newIPAM(t, st)
	if _, ok := p2.OverlayOf(blueHost); ok || len(p2.Allocations()) != 1 {
		t.Fatalf("after restart: %v", p2.Allocations())
	}
}
