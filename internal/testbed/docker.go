package testbed

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"strings"
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
	// Retry, when set, makes calls that cannot reach the plugin (it is being
	// restarted) try again for that long, as dockerd does for about 15 s.
	Retry time.Duration
	hc    *http.Client
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
	deadline := time.Now().Add(d.Retry)
	for {
		err := d.call(method, req, resp)
		if err == nil || d.Retry == 0 || time.Now().After(deadline) || !transient(err) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// transient reports errors dockerd retries: the plugin cannot be reached
// (being restarted) or is still starting. An answered error is final.
func transient(err error) bool {
	s := err.Error()
	return strings.Contains(s, "connect:") || strings.Contains(s, "EOF") ||
		strings.Contains(s, "connection reset") || strings.Contains(s, "twill is starting")
}

func (d *Docker) call(method string, req, resp any) error {
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

// Run does what `docker run --network n` does for the network part (see
// Start) and fails the test if any step fails.
func (d *Docker) Run(t testing.TB, n Network, ns, endpoint string) Container {
	t.Helper()
	c, err := d.Start(n, ns, endpoint)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Start does what dockerd does for the network part of starting a
// container: RequestAddress, CreateEndpoint, Join, then moves the interface
// into namespace ns (created by the caller) as eth0 with the address and
// routes, then ProgramExternalConnectivity. A failing step undoes the earlier
// ones, as dockerd does.
func (d *Docker) Start(n Network, ns, endpoint string) (c Container, err error) {
	c = Container{NS: ns, Endpoint: endpoint}
	defer func() {
		if err != nil {
			d.Remove(n, c)
		}
	}()
	var addr struct{ Address string }
	if err := d.Call("IpamDriver.RequestAddress", map[string]any{"PoolID": n.PoolID, "Address": "", "Options": nil}, &addr); err != nil {
		return c, err
	}
	if c.Addr, err = netip.ParsePrefix(addr.Address); err != nil {
		return c, fmt.Errorf("RequestAddress answered %q: %w", addr.Address, err)
	}
	var ep struct{ Interface struct{ MacAddress string } }
	if err := d.Call("NetworkDriver.CreateEndpoint", map[string]any{"NetworkID": n.ID, "EndpointID": endpoint,
		"Interface": map[string]any{"Address": addr.Address, "AddressIPv6": "", "MacAddress": ""},
		"Options":   map[string]any{"com.docker.network.endpoint.exposedports": []any{}, "com.docker.network.portmap": []any{}}}, &ep); err != nil {
		return c, err
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
		return c, err
	}
	if join.InterfaceName.DstPrefix != "eth" || join.InterfaceName.SrcName == "" {
		return c, fmt.Errorf("Join answered interface %+v, want SrcName and DstPrefix eth", join.InterfaceName)
	}
	src := join.InterfaceName.SrcName
	move := []string{"ip", "link", "set", src, "netns", ns}
	if d.HostNS != "" {
		move = []string{"ip", "-n", d.HostNS, "link", "set", src, "netns", ns}
	}
	steps := [][]string{move, {"ip", "-n", ns, "link", "set", src, "name", "eth0"}}
	if ep.Interface.MacAddress != "" {
		steps = append(steps, []string{"ip", "-n", ns, "link", "set", "eth0", "address", ep.Interface.MacAddress})
	}
	steps = append(steps, []string{"ip", "-n", ns, "addr", "add", addr.Address, "dev", "eth0"}, []string{"ip", "-n", ns, "link", "set", "eth0", "up"})
	if join.Gateway != "" {
		steps = append(steps, []string{"ip", "-n", ns, "route", "add", "default", "via", join.Gateway})
	}
	for _, r := range join.StaticRoutes {
		if r.RouteType == 1 {
			steps = append(steps, []string{"ip", "-n", ns, "route", "add", r.Destination, "dev", "eth0"})
		} else {
			steps = append(steps, []string{"ip", "-n", ns, "route", "add", r.Destination, "via", r.NextHop})
		}
	}
	for _, st := range steps {
		if out, err := exec.Command(st[0], st[1:]...).CombinedOutput(); err != nil {
			return c, fmt.Errorf("%s: %w: %s", strings.Join(st, " "), err, bytes.TrimSpace(out))
		}
	}
	if err := d.Call("NetworkDriver.ProgramExternalConnectivity", map[string]any{"NetworkID": n.ID, "EndpointID": endpoint, "Options": map[string]any{"com.docker.network.endpoint.exposedports": []any{}, "com.docker.network.portmap": []any{}}}, nil); err != nil {
		return c, err
	}
	return c, nil
}

// Stop does what `docker rm -f` does for the network part (see Remove) and
// fails the test if any step fails.
func (d *Docker) Stop(t testing.TB, n Network, c Container) {
	t.Helper()
	if err := d.Remove(n, c); err != nil {
		t.Fatal(err)
	}
}

// Remove does what dockerd does for the network part of removing a
// container: the interface goes first, as the kernel deletes it with the
// container's namespace, then RevokeExternalConnectivity, Leave,
// DeleteEndpoint and, when an address was handed out, ReleaseAddress. It goes
// on past a failing step and returns every error.
func (d *Docker) Remove(n Network, c Container) error {
	In(c.NS, "ip", "link", "del", "eth0")
	steps := []struct {
		m   string
		req map[string]any
	}{
		{"NetworkDriver.RevokeExternalConnectivity", map[string]any{"NetworkID": n.ID, "EndpointID": c.Endpoint}},
		{"NetworkDriver.Leave", map[string]any{"NetworkID": n.ID, "EndpointID": c.Endpoint}},
		{"NetworkDriver.DeleteEndpoint", map[string]any{"NetworkID": n.ID, "EndpointID": c.Endpoint}},
	}
	if c.Addr.IsValid() {
		steps = append(steps, struct {
			m   string
			req map[string]any
		}{"IpamDriver.ReleaseAddress", map[string]any{"PoolID": n.PoolID, "Address": c.Addr.Addr().String()}})
	}
	var errs []error
	for _, st := range steps {
		if err := d.Call(st.m, st.req, nil); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ID makes a 64-hex-character Docker-style ID from a short name.
func ID(name string) string {
	return fmt.Sprintf("%x", sha256.Sum256([]byte(name)))
}
