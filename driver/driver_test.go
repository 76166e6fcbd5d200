package driver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	netapi "github.com/docker/go-plugins-helpers/network"

	"github.com/twill-net/twill/internal/store"
)

const (
	netID = "5c87f637aa0e4a1b9c3d2e1f00112233445566778899aabbccddeeff00112233"
	epID  = "896c02fcbb0e4a1b9c3d2e1f00112233445566778899aabbccddeeff00112233"
	mtu   = 1472
)

// fakePools is the IPAM's side of Pools: which subnets it handed out.
type fakePools map[netip.Prefix]netip.Prefix

func (f fakePools) OverlayOf(s netip.Prefix) (netip.Prefix, bool) {
	o, ok := f[s]
	return o, ok
}

var pools = fakePools{
	netip.MustParsePrefix("10.96.7.0/24"): netip.MustParsePrefix("10.96.0.0/16"),
	netip.MustParsePrefix("10.97.3.0/24"): netip.MustParsePrefix("10.97.0.0/16"),
}

type rig struct {
	d     *Driver
	links *FakeLinks
	fw    *FakeFirewall
	st    *store.Memory
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newRig(t *testing.T, st *store.Memory) *rig {
	t.Helper()
	if st == nil {
		st = store.NewMemory()
	}
	r := &rig{links: NewFakeLinks(), fw: NewFakeFirewall(), st: st}
	d, err := New(quiet(), r.links, r.fw, pools, st, Config{MTU: mtu, PluginName: "twill:latest"})
	if err != nil {
		t.Fatal(err)
	}
	r.d = d
	return r
}

// decode turns Docker's JSON (as recorded in notes/docker-plugin-behaviour.md)
// into a request, the way the plugin layer does.
func decode[T any](t *testing.T, js string) *T {
	t.Helper()
	v := new(T)
	if err := json.Unmarshal([]byte(js), v); err != nil {
		t.Fatalf("decoding %s: %v", js, err)
	}
	return v
}

func createNetworkJSON(id, pool, gw, space, extra string) string {
	return `{"NetworkID":"` + id + `","Options":{"com.docker.network.enable_ipv6":false,"com.docker.network.generic":{` + extra + `}},` +
		`"IPv4Data":[{"AddressSpace":"` + space + `","Gateway":"` + gw + `","Pool":"` + pool + `"}],"IPv6Data":[]}`
}

func (r *rig) createNetwork(t *testing.T) {
	t.Helper()
	req := decode[netapi.CreateNetworkRequest](t, createNetworkJSON(netID, "10.96.7.0/24", "10.96.7.1/24", "twill-local", ""))
	if err := r.d.CreateNetwork(context.Background(), req); err != nil {
		t.Fatal(err)
	}
}

const portmapOpts = `"Options":{"com.docker.network.endpoint.exposedports":[{"Proto":6,"Port":80}],"com.docker.network.portmap":[{"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":8080,"HostPortEnd":8080}]}`

// attach runs Docker's container start sequence for one endpoint.
func (r *rig) attach(t *testing.T, ep, addr string) *netapi.JoinResponse {
	t.Helper()
	ctx := context.Background()
	if _, err := r.d.CreateEndpoint(ctx, decode[netapi.CreateEndpointRequest](t,
		`{"NetworkID":"`+netID+`","EndpointID":"`+ep+`","Interface":{"Address":"`+addr+`","AddressIPv6":"","MacAddress":""},`+portmapOpts+`}`)); err != nil {
		t.Fatal(err)
	}
	j, err := r.d.Join(ctx, decode[netapi.JoinRequest](t, `{"NetworkID":"`+netID+`","EndpointID":"`+ep+`","SandboxKey":"/var/run/docker/netns/abc",`+portmapOpts+`}`))
	if err != nil {
		t.Fatal(err)
	}
	return j
}

func TestCreateNetworkMakesBridgeAndRules(t *testing.T) {
	r := newRig(t, nil)
	r.createNetwork(t)
	r.createNetwork(t) // a retry converges
	b, ok := r.links.Bridge("tw-5c87f637")
	if !ok || b.Gateway.String() != "10.96.7.1/24" || b.MTU != mtu {
		t.Fatalf("bridge %+v %v", b, ok)
	}
	fw, ok := r.fw.Network("tw-5c87f637")
	if !ok || fw.Overlay.String() != "10.96.0.0/16" || fw.Subnet.String() != "10.96.7.0/24" || fw.Internal {
		t.Fatalf("firewall %+v %v", fw, ok)
	}
}

func TestCreateNetworkOptions(t *testing.T) {
	r := newRig(t, nil)
	req := decode[netapi.CreateNetworkRequest](t, `{"NetworkID":"`+netID+`","Options":{"com.docker.network.enable_ipv6":false,"com.docker.network.internal":true,`+
		`"com.docker.network.generic":{"com.docker.network.driver.mtu":"1400"}},"IPv4Data":[{"AddressSpace":"twill-local","Gateway":"10.96.7.1/24","Pool":"10.96.7.0/24"}],"IPv6Data":[]}`)
	if err := r.d.CreateNetwork(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if b, _ := r.links.Bridge("tw-5c87f637"); b.MTU != 1400 {
		t.Fatalf("bridge mtu %d, want 1400", b.MTU)
	}
	if fw, _ := r.fw.Network("tw-5c87f637"); !fw.Internal {
		t.Fatal("--internal network got outbound NAT")
	}
	r.attach(t, epID, "10.96.7.50/24")
	if v, _ := r.links.Veth("twv896c02fc"); v.MTU != 1400 {
		t.Fatalf("veth mtu %d, want 1400", v.MTU)
	}
}

func TestCreateNetworkRefusals(t *testing.T) {
	other := "0c950605" + netID[8:]
	tests := []struct {
		name    string
		js      string
		want    error
		mention []string
	}{
		{"default ipam", createNetworkJSON(other, "172.18.0.0/16", "172.18.0.1/16", "LocalDefault", ""), ErrNotTwillIPAM,
			[]string{"--ipam-driver twill:latest", "LocalDefault", "172.18.0.0/16"}},
		{"pool twill never gave", createNetworkJSON(other, "10.50.0.0/24", "10.50.0.1/24", "otherLocal", ""), ErrNotTwillIPAM,
			[]string{"--ipam-driver twill:latest", "10.50.0.0/24"}},
		{"unknown -o", createNetworkJSON(other, "10.97.3.0/24", "10.97.3.1/24", "twill-local", `"com.docker.network.bridge.name":"br0"`), ErrBadOption,
			[]string{"com.docker.network.bridge.name", "com.docker.network.driver.mtu"}},
		{"mtu above tunnel", createNetworkJSON(other, "10.97.3.0/24", "10.97.3.1/24", "twill-local", `"com.docker.network.driver.mtu":"1500"`), ErrMTU,
			[]string{"1500", "tunnel MTU 1472", "1472 or less"}},
		{"mtu garbage", createNetworkJSON(other, "10.97.3.0/24", "10.97.3.1/24", "twill-local", `"com.docker.network.driver.mtu":"big"`), ErrMTU,
			[]string{"big"}},
		{"same subnet as blue", createNetworkJSON(other, "10.96.7.0/24", "10.96.7.254/24", "twill-local", ""), ErrSubnetTaken,
			[]string{"10.96.7.0/24", "5c87f637", "another --subnet"}},
		{"ipv6", `{"NetworkID":"` + other + `","Options":{"com.docker.network.enable_ipv6":true},"IPv4Data":[{"AddressSpace":"twill-local","Gateway":"10.97.3.1/24","Pool":"10.97.3.0/24"}],"IPv6Data":[{"AddressSpace":"twill-local","Pool":"fd00::/64","Gateway":"fd00::1/64"}]}`, nil,
			[]string{"IPv6", "--ipv6"}},
		{"ipv4 disabled", `{"NetworkID":"` + other + `","Options":{"com.docker.network.enable_ipv4":false,"com.docker.network.enable_ipv6":false},"IPv4Data":[],"IPv6Data":[]}`, nil,
			[]string{"IPv4", "--ipv4=false"}},
		{"bridge name clash", createNetworkJSON("5c87f637ffff", "10.97.3.0/24", "10.97.3.1/24", "twill-local", ""), ErrNameClash,
			[]string{"tw-5c87f637"}},
	}
	r := newRig(t, nil)
	r.createNetwork(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := r.d.CreateNetwork(context.Background(), decode[netapi.CreateNetworkRequest](t, tt.js))
			if err == nil {
				t.Fatal("accepted")
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("%v is not %v", err, tt.want)
			}
			for _, m := range tt.mention {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not mention %q", err, m)
				}
			}
		})
	}
	if nb, _ := r.links.Counts(); nb != 1 {
		t.Fatalf("%d bridges after refusals, want 1", nb)
	}
}

func TestCreateNetworkKernelFailureRollsBack(t *testing.T) {
	r := newRig(t, nil)
	r.links.Fail("tw-5c87f637", errors.New("operation not permitted"))
	err := r.d.CreateNetwork(context.Background(), decode[netapi.CreateNetworkRequest](t, createNetworkJSON(netID, "10.96.7.0/24", "10.96.7.1/24", "twill-local", "")))
	if err == nil || !strings.Contains(err.Error(), "tw-5c87f637") || !strings.Contains(err.Error(), "operation not permitted") {
		t.Fatalf("got %v", err)
	}
	if r.st.Len(networkBucket) != 0 {
		t.Fatal("failed network still persisted")
	}
	if _, ok := r.fw.Network("tw-5c87f637"); ok {
		t.Fatal("firewall rules of failed network left")
	}
	r.createNetwork(t) // and it can be created afterwards
}

func TestEndpointLifecycle(t *testing.T) {
	r := newRig(t, nil)
	r.createNetwork(t)
	ctx := context.Background()
	ce, err := r.d.CreateEndpoint(ctx, decode[netapi.CreateEndpointRequest](t,
		`{"NetworkID":"`+netID+`","EndpointID":"`+epID+`","Interface":{"Address":"10.96.7.50/24","AddressIPv6":"","MacAddress":""},"Options":{"com.docker.network.endpoint.exposedports":[],"com.docker.network.portmap":[]}}`))
	if err != nil {
		t.Fatal(err)
	}
	if ce.Interface == nil || ce.Interface.MacAddress != "02:42:0a:60:07:32" || ce.Interface.Address != "" {
		t.Fatalf("CreateEndpoint answered %+v", ce.Interface)
	}
	j, err := r.d.Join(ctx, decode[netapi.JoinRequest](t, `{"NetworkID":"`+netID+`","EndpointID":"`+epID+`","SandboxKey":"/var/run/docker/netns/x","Options":{}}`))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := json.Marshal(j)
	want := `{"InterfaceName":{"SrcName":"twc896c02fc","DstPrefix":"eth"},"Gateway":"10.96.7.1","GatewayIPv6":"","StaticRoutes":[{"Destination":"10.96.0.0/16","RouteType":0,"NextHop":"10.96.7.1"}],"DisableGatewayService":false}`
	if string(got) != want {
		t.Fatalf("Join answered\n%s\nwant\n%s", got, want)
	}
	v, ok := r.links.Veth("twv896c02fc")
	if !ok || v.Peer != "twc896c02fc" || v.Bridge != "tw-5c87f637" || v.MTU != mtu || v.MAC != "02:42:0a:60:07:32" {
		t.Fatalf("veth %+v %v", v, ok)
	}

	prog := decode[netapi.ProgramExternalConnectivityRequest](t, `{"NetworkID":"`+netID+`","EndpointID":"`+epID+`",`+portmapOpts+`}`)
	if err := r.d.ProgramExternalConnectivity(ctx, prog); err != nil {
		t.Fatal(err)
	}
	if pm := r.fw.PortMaps(); pm["tw-5c87f637 tcp *:8080"].String() != "10.96.7.50:80" || len(pm) != 1 {
		t.Fatalf("port maps %v", pm)
	}
	info, err := r.d.EndpointOperInfo(ctx, &netapi.InfoRequest{NetworkID: netID, EndpointID: epID})
	if err != nil {
		t.Fatal(err)
	}
	if b, _ := json.Marshal(info); !strings.Contains(string(b), `"HostPort":8080`) {
		t.Fatalf("EndpointOperInfo %s", b)
	}
	// A second container may not publish the same host port.
	other := "aaaabbbb" + epID[8:]
	r.attach(t, other, "10.96.7.51/24")
	err = r.d.ProgramExternalConnectivity(ctx, decode[netapi.ProgramExternalConnectivityRequest](t, `{"NetworkID":"`+netID+`","EndpointID":"`+other+`",`+portmapOpts+`}`))
	if !errors.Is(err, ErrPortTaken) || !strings.Contains(err.Error(), "8080/tcp") {
		t.Fatalf("duplicate host port: %v", err)
	}

	// Docker's stop sequence, each step twice (deletes of what is gone succeed).
	for range 2 {
		if err := r.d.RevokeExternalConnectivity(ctx, &netapi.RevokeExternalConnectivityRequest{NetworkID: netID, EndpointID: epID}); err != nil {
			t.Fatal(err)
		}
		if err := r.d.Leave(ctx, &netapi.LeaveRequest{NetworkID: netID, EndpointID: epID}); err != nil {
			t.Fatal(err)
		}
		if err := r.d.DeleteEndpoint(ctx, &netapi.DeleteEndpointRequest{NetworkID: netID, EndpointID: epID}); err != nil {
			t.Fatal(err)
		}
	}
	if len(r.fw.PortMaps()) != 0 {
		t.Fatalf("port maps left: %v", r.fw.PortMaps())
	}
	if _, ok := r.links.Veth("twv896c02fc"); ok {
		t.Fatal("veth left after DeleteEndpoint")
	}
	if _, err := r.d.Join(ctx, &netapi.JoinRequest{NetworkID: netID, EndpointID: epID}); !errors.Is(err, ErrUnknownEndpoint) {
		t.Fatalf("join of deleted endpoint: %v", err)
	}
	for range 2 {
		if err := r.d.DeleteNetwork(ctx, &netapi.DeleteNetworkRequest{NetworkID: netID}); err != nil {
			t.Fatal(err)
		}
	}
	// DeleteNetwork also removed the endpoint Docker left behind.
	if nb, nv := r.links.Counts(); nb != 0 || nv != 0 {
		t.Fatalf("%d bridges, %d veths left", nb, nv)
	}
	if r.st.Len(endpointBucket) != 0 || r.st.Len(networkBucket) != 0 {
		t.Fatal("state left after deleting everything")
	}
}

func TestCreateEndpointChecks(t *testing.T) {
	r := newRig(t, nil)
	r.createNetwork(t)
	ctx := context.Background()
	ce, err := r.d.CreateEndpoint(ctx, decode[netapi.CreateEndpointRequest](t,
		`{"NetworkID":"`+netID+`","EndpointID":"`+epID+`","Interface":{"Address":"10.96.7.60/24","MacAddress":"02:42:aa:bb:cc:dd"}}`))
	if err != nil || ce.Interface != nil {
		t.Fatalf("docker-given MAC: %+v %v (the answer must not repeat it)", ce, err)
	}
	for name, js := range map[string]string{
		"unknown network": `{"NetworkID":"ffff","EndpointID":"e1","Interface":{"Address":"10.96.7.61/24"}}`,
		"no address":      `{"NetworkID":"` + netID + `","EndpointID":"e2","Interface":{"Address":""}}`,
		"outside subnet":  `{"NetworkID":"` + netID + `","EndpointID":"e3","Interface":{"Address":"10.96.9.5/24"}}`,
	} {
		if _, err := r.d.CreateEndpoint(ctx, decode[netapi.CreateEndpointRequest](t, js)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestPortMapParsing(t *testing.T) {
	c := netip.MustParseAddr("10.96.7.50")
	var raw any
	json.Unmarshal([]byte(`[{"Proto":17,"IP":"","Port":53,"HostIP":"127.0.0.1","HostPort":5353,"HostPortEnd":5353},
		{"Proto":6,"IP":"","Port":80,"HostIP":"::","HostPort":8080,"HostPortEnd":8080},
		{"Proto":6,"IP":"","Port":443,"HostIP":"0.0.0.0","HostPort":8443,"HostPortEnd":8450}]`), &raw)
	got, err := parsePortMap(raw, c)
	if err != nil {
		t.Fatal(err)
	}
	want := []PortMap{
		{Proto: "udp", HostIP: netip.MustParseAddr("127.0.0.1"), HostPort: 5353, Container: netip.MustParseAddrPort("10.96.7.50:53")},
		{Proto: "tcp", HostPort: 8443, Container: netip.MustParseAddrPort("10.96.7.50:443"), hostPortEnd: 8450},
	}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	for js, mention := range map[string]string{
		`[{"Proto":6,"Port":80,"HostPort":0}]`:    "-p 8080:80",
		`[{"Proto":132,"Port":80,"HostPort":80}]`: "tcp and udp",
		`{"Proto":6}`: "malformed",
		`[{"Proto":6,"Port":80,"HostIP":"x","HostPort":80}]`: `"x"`,
	} {
		json.Unmarshal([]byte(js), &raw)
		if _, err := parsePortMap(raw, c); err == nil || !strings.Contains(err.Error(), mention) {
			t.Errorf("%s: got %v, want mention of %s", js, err, mention)
		}
	}
}

func TestReconcileAfterRestart(t *testing.T) {
	st := store.NewMemory()
	r := newRig(t, st)
	r.createNetwork(t)
	r.attach(t, epID, "10.96.7.50/24")
	ctx := context.Background()
	if err := r.d.ProgramExternalConnectivity(ctx, decode[netapi.ProgramExternalConnectivityRequest](t, `{"NetworkID":"`+netID+`","EndpointID":"`+epID+`",`+portmapOpts+`}`)); err != nil {
		t.Fatal(err)
	}
	gone := "cafef00d" + epID[8:]
	r.attach(t, gone, "10.96.7.52/24")
	unjoined := "0000aaaa" + epID[8:]
	if _, err := r.d.CreateEndpoint(ctx, &netapi.CreateEndpointRequest{NetworkID: netID, EndpointID: unjoined, Interface: &netapi.EndpointInterface{Address: "10.96.7.53/24"}}); err != nil {
		t.Fatal(err)
	}

	// Restart: a new process with the same state; the kernel still has the
	// bridge and the live veth, the stopped container's veth is gone, and a
	// network deleted while twill was disabled left its bridge and a veth.
	r2 := newRig(t, st)
	r2.links.EnsureBridge(ctx, "tw-5c87f637", netip.MustParsePrefix("10.96.7.1/24"), mtu)
	r2.links.AddVeth(ctx, "twv896c02fc", "twc896c02fc", "tw-5c87f637", mtu, macFor(netip.MustParseAddr("10.96.7.50")))
	r2.links.EnsureBridge(ctx, "tw-deadbeef", netip.MustParsePrefix("10.99.1.1/24"), mtu)
	r2.links.AddVeth(ctx, "twvdeadbeef", "twcdeadbeef", "tw-deadbeef", mtu, nil)
	r2.links.EnsureBridge(ctx, "twill0x", netip.Prefix{}, mtu) // not twill's naming: left alone

	rep, err := r2.d.Reconcile(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Networks != 1 || rep.Endpoints != 3 || rep.Published != 1 {
		t.Fatalf("report %+v", rep)
	}
	if strings.Join(rep.RemovedLinks, ",") != "tw-deadbeef,twvdeadbeef" {
		t.Fatalf("removed %v", rep.RemovedLinks)
	}
	if len(rep.Vanished) != 1 || rep.Vanished[0].EndpointID != gone || rep.Vanished[0].Address.String() != "10.96.7.52/24" {
		t.Fatalf("vanished %+v", rep.Vanished)
	}
	if _, ok := r2.fw.Network("tw-5c87f637"); !ok {
		t.Fatal("firewall rules not re-ensured")
	}
	if pm := r2.fw.PortMaps(); pm["tw-5c87f637 tcp *:8080"].String() != "10.96.7.50:80" {
		t.Fatalf("port map not re-added: %v", pm)
	}
	if _, ok := r2.links.Bridge("twill0x"); !ok {
		t.Fatal("reconcile removed a link that is not twill's")
	}
	// The restarted driver still answers for the old endpoint.
	if err := r2.d.DeleteEndpoint(ctx, &netapi.DeleteEndpointRequest{NetworkID: netID, EndpointID: gone}); err != nil {
		t.Fatal(err)
	}
}

func TestCapabilities(t *testing.T) {
	b, _ := json.Marshal(GetCapabilities())
	if string(b) != `{"Scope":"local","ConnectivityScope":"global"}` {
		t.Fatalf("capabilities %s", b)
	}
}

func TestJoinRecreatesMissingBridge(t *testing.T) {
	r := newRig(t, nil)
	r.createNetwork(t)
	ctx := context.Background()
	r.links.DeleteBridge(ctx, "tw-5c87f637") // someone ran ip link del
	r.attach(t, epID, "10.96.7.50/24")
	if _, ok := r.links.Bridge("tw-5c87f637"); !ok {
		t.Fatal("bridge not re-created")
	}
	if v, ok := r.links.Veth("twv896c02fc"); !ok || v.Bridge != "tw-5c87f637" {
		t.Fatalf("veth %+v %v", v, ok)
	}
}

func TestPortRanges(t *testing.T) {
	r := newRig(t, nil)
	r.createNetwork(t)
	ctx := context.Background()
	ranged := `"Options":{"com.docker.network.portmap":[{"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":8080,"HostPortEnd":8081}]}`
	var eps []string
	for i, addr := range []string{"10.96.7.50/24", "10.96.7.51/24", "10.96.7.52/24"} {
		ep := fmt.Sprintf("%08x", 0xe0+i) + epID[8:]
		eps = append(eps, ep)
		r.attach(t, ep, addr)
		err := r.d.ProgramExternalConnectivity(ctx, decode[netapi.ProgramExternalConnectivityRequest](t, `{"NetworkID":"`+netID+`","EndpointID":"`+ep+`",`+ranged+`}`))
		if i < 2 && err != nil {
			t.Fatalf("container %d: %v", i, err)
		}
		if i == 2 && (!errors.Is(err, ErrPortTaken) || !strings.Contains(err.Error(), "8080-8081/tcp")) {
			t.Fatalf("third container on a two-port range: %v", err)
		}
	}
	pm := r.fw.PortMaps()
	if pm["tw-5c87f637 tcp *:8080"].String() != "10.96.7.50:80" || pm["tw-5c87f637 tcp *:8081"].String() != "10.96.7.51:80" || len(pm) != 2 {
		t.Fatalf("port maps %v", pm)
	}
	// The chosen port is what is persisted and reported.
	info, _ := r.d.EndpointOperInfo(ctx, &netapi.InfoRequest{NetworkID: netID, EndpointID: eps[1]})
	if b, _ := json.Marshal(info); !strings.Contains(string(b), `"HostPort":8081,"HostPortEnd":8081`) {
		t.Fatalf("EndpointOperInfo %s", b)
	}
	// Freed by the first container, the range's first port is available again.
	r.d.RevokeExternalConnectivity(ctx, &netapi.RevokeExternalConnectivityRequest{NetworkID: netID, EndpointID: eps[0]})
	if err := r.d.ProgramExternalConnectivity(ctx, decode[netapi.ProgramExternalConnectivityRequest](t, `{"NetworkID":"`+netID+`","EndpointID":"`+eps[2]+`",`+ranged+`}`)); err != nil {
		t.Fatal(err)
	}
	if pm := r.fw.PortMaps(); pm["tw-5c87f637 tcp *:8080"].String() != "10.96.7.52:80" {
		t.Fatalf("port maps %v", pm)
	}
}

func TestFailedJoinIsNotJoined(t *testing.T) {
	r := newRig(t, nil)
	r.createNetwork(t)
	ctx := context.Background()
	if _, err := r.d.CreateEndpoint(ctx, &netapi.CreateEndpointRequest{NetworkID: netID, EndpointID: epID, Interface: &netapi.EndpointInterface{Address: "10.96.7.50/24"}}); err != nil {
		t.Fatal(err)
	}
	r.links.Fail("twv896c02fc", errors.New("file exists"))
	r.links.Fail("tw-5c87f637", errors.New("no buffer space"))
	if _, err := r.d.Join(ctx, &netapi.JoinRequest{NetworkID: netID, EndpointID: epID}); err == nil || !strings.Contains(err.Error(), "twv896c02fc") {
		t.Fatalf("join: %v", err)
	}
	rep, err := newRig(t, r.st).d.Reconcile(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Vanished) != 0 {
		t.Fatalf("a failed join is reported as a vanished veth: %+v", rep.Vanished)
	}
}
