package testbed

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"
)

// Docker speaks to a plugin socket the way dockerd 20.10 does (the JSON
// recorded in shared/notes/docker-plugin-behaviour.md), and does what
// libnetwork does with the answers: moves the veth into the container's
// namespace, renames it, sets its address and routes.
type Docker struct {
	Socket string
	// HostNS is the namespace the plugin runs in, where Join's veth appears;
	// empty means the test's own namespace.
	HostNS string
	hc     *http.Client
}

// NewDocker returns a client for the plugin socket at path.
func NewDocker(path string) *Docker {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}
	return &Docker{Socket: path, hc: &http.Client{Transport: tr, Timeout: 30 * time.Second}}
}

// Call posts req (any JSON value, or a raw string) to /method and decodes the
// answer into resp. A non-empty "Err" in the answer is returned as an error.
func (d *Docker) Call(method string, req, resp any) error {
	var body []byte
	switch r := req.(type) {
	case string:
		body = []byte(r)
	default:
		var err error
		if body, err = json.Marshal(req); err != nil {
			return err
		}
	}
	hr, err := http.NewRequest(http.MethodPost, "http://plugin/"+method, bytes.NewReader(body))
	if err != nil {
		return err
	}
	hr.Header.Set("Accept", "application/vnd.docker.plugins.v1.2+json")
	res, err := d.hc.Do(hr)
	if err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	var e struct{ Err string }
	if json.Unmarshal(raw, &e) == nil && e.Err != "" {
		return fmt.Errorf("%s: %s", method, e.Err)
	}
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: HTTP %s: %s", method, res.Status, raw)
	}
	if resp != nil {
		if err := json.Unmarshal(raw, resp); err != nil {
			return fmt.Errorf("%s: decoding %q: %w", method, raw, err)
		}
	}
	return nil
}

// Network is what Docker keeps of a network it created through the plugin.
type Network struct {
	ID      string
	PoolID  string
	Pool    netip.Prefix
	Gateway netip.Prefix
}

// CreateNetwork does `docker network create -d twill --ipam-driver twill
// --subnet subnet` (subnet may be empty).
func (d *Docker) CreateNetwork(t testing.TB, id, subnet string, opts map[string]string) Network {
	t.Helper()
	var space struct{ LocalDefaultAddressSpace string }
	if err := d.Call("IpamDriver.GetDefaultAddressSpaces", "null", &space); err != nil {
		t.Fatal(err)
	}
	var pool struct{ PoolID, Pool string }
	if err := d.Call("IpamDriver.RequestPool", map[string]any{"AddressSpace": space.LocalDefaultAddressSpace, "Pool": subnet, "SubPool": "", "Options": map[string]string{}, "V6": false}, &pool); err != nil {
		t.Fatal(err)
	}
	var gw struct{ Address string }
	if err := d.Call("IpamDriver.RequestAddress", map[string]any{"PoolID": pool.PoolID, "Address": "", "Options": map[string]string{"RequestAddressType": "com.docker.network.gateway"}}, &gw); err != nil {
		t.Fatal(err)
	}
	generic := map[string]any{}
	for k, v := range opts {
		generic[k] = v
	}
	req := map[string]any{
		"NetworkID": id,
		"Options":   map[string]any{"com.docker.network.enable_ipv6": false, "com.docker.network.generic": generic},
		"IPv4Data":  []any{map[string]any{"AddressSpace": space.LocalDefaultAddressSpace, "Gateway": gw.Address, "Pool": pool.Pool}},
		"IPv6Data":  []any{},
	}
	if err := d.Call("NetworkDriver.CreateNetwork", req, nil); err != nil {
		t.Fatal(err)
	}
	return Network{ID: id, PoolID: pool.PoolID, Pool: netip.MustParsePrefix(pool.Pool), Gateway: netip.MustParsePrefix(gw.Address)}
}

// Container is an endpoint joined to a network, living in namespace NS.
type Container struct {
	NS       string
	Endpoint string
	Addr     netip.Prefix
}

// Run does what `docker run --network n` does for the network part:
// RequestAddress, CreateEndpoint, Join, then moves the interface into
// namespace ns (created by the caller) as eth0 with the address and routes.
func (d *Docker) Run(t testing.TB, n Network, ns, endpoint string) Container {
	t.Helper()
	var addr struct{ Address string }
	if err := d.Call("IpamDriver.RequestAddress", map[string]any{"PoolID": n.PoolID, "Address": "", "Options": nil}, &addr); err != nil {
		t.Fatal(err)
	}
	var ep struct{ Interface struct{ MacAddress string } }
	if err := d.Call("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": n.ID, "EndpointID": endpoint,
		"Interface": map[string]any{"Address": addr.Address, "AddressIPv6": "", "MacAddress": ""},
		"Options":   map[string]any{"com.docker.network.endpoint.exposedports": []any{}, "com.docker.network.portmap": []any{}}}, &ep); err != nil {
		t.Fatal(err)
	}
	var join struct {
		InterfaceName struct{ SrcName, DstPrefix string }
		Gateway       string
		StaticRoutes  []struct {
			Destination string
			RouteType   int
			NextHop     string
		}
	}
	if err := d.Call("NetworkDriver.Join", map[string]any{"NetworkID": n.ID, "EndpointID": endpoint, "SandboxKey": "/var/run/docker/netns/" + endpoint[:12], "Options": map[string]any{}}, &join); err != nil {
		t.Fatal(err)
	}
	if join.InterfaceName.DstPrefix != "eth" || join.InterfaceName.SrcName == "" {
		t.Fatalf("Join answered interface %+v, want SrcName and DstPrefix eth", join.InterfaceName)
	}
	if err := d.Call("NetworkDriver.ProgramExternalConnectivity", map[string]any{"NetworkID": n.ID, "EndpointID": endpoint, "Options": map[string]any{"com.docker.network.endpoint.exposedports": []any{}, "com.docker.network.portmap": []any{}}}, nil); err != nil {
		t.Fatal(err)
	}
	src := join.InterfaceName.SrcName
	if d.HostNS != "" {
		Must(t, "ip", "-n", d.HostNS, "link", "set", src, "netns", ns)
	} else {
		Must(t, "ip", "link", "set", src, "netns", ns)
	}
	MustIn(t, ns, "ip", "link", "set", src, "name", "eth0")
	if ep.Interface.MacAddress != "" {
		MustIn(t, ns, "ip", "link", "set", "eth0", "address", ep.Interface.MacAddress)
	}
	MustIn(t, ns, "ip", "addr", "add", addr.Address, "dev", "eth0")
	MustIn(t, ns, "ip", "link", "set", "eth0", "up")
	if join.Gateway != "" {
		MustIn(t, ns, "ip", "route", "add", "default", "via", join.Gateway)
	}
	for _, r := range join.StaticRoutes {
		if r.RouteType == 1 {
			MustIn(t, ns, "ip", "route", "add", r.Destination, "dev", "eth0")
		} else {
			MustIn(t, ns, "ip", "route", "add", r.Destination, "via", r.NextHop)
		}
	}
	return Container{NS: ns, Endpoint: endpoint, Addr: netip.MustParsePrefix(addr.Address)}
}

// Stop does what `docker rm -f` does for the network part. The interface is
// deleted first, as the kernel does when a container's namespace goes away.
func (d *Docker) Stop(t testing.TB, n Network, c Container) {
	t.Helper()
	In(c.NS, "ip", "link", "del", "eth0")
	for _, step := range []struct {
		m   string
		req map[string]any
	}{
		{"NetworkDriver.RevokeExternalConnectivity", map[string]any{"NetworkID": n.ID, "EndpointID": c.Endpoint}},
		{"NetworkDriver.Leave", map[string]any{"NetworkID": n.ID, "EndpointID": c.Endpoint}},
		{"NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": n.ID, "EndpointID": c.Endpoint}},
		{"IpamDriver.ReleaseAddress", map[string]any{"PoolID": n.PoolID, "Address": c.Addr.Addr().String()}},
	} {
		if err := d.Call(step.m, step.req, nil); err != nil {
			t.Fatal(err)
		}
	}
}

// ID makes a 64-hex-character Docker-style ID from a short name.
func ID(name string) string {
	return fmt.Sprintf("%x", sha256.Sum256([]byte(name)))
}
