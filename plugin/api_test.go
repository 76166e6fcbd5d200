package plugin

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const (
	netID  = "5c87f637aa0e4a1b9c3d2e1f00112233445566778899aabbccddeeff00112233"
	netID2 = "0c950605aa0e4a1b9c3d2e1f00112233445566778899aabbccddeeff00112233"
	epID   = "896c02fcbb0e4a1b9c3d2e1f00112233445566778899aabbccddeeff00112233"
	poolID = "twill/10.96.7.0/24"
)

// The bodies below are what Docker 20.10 sent (notes/docker-plugin-behaviour.md).
const (
	reqPoolBlue   = `{"AddressSpace":"twill-local","Pool":"10.96.0.0/16","SubPool":"","Options":{},"V6":false}`
	reqGateway    = `{"PoolID":"twill/10.96.7.0/24","Address":"","Options":{"RequestAddressType":"com.docker.network.gateway"}}`
	createNetBlue = `{"NetworkID":"` + netID + `","Options":{"com.docker.network.enable_ipv6":false,"com.docker.network.generic":{}},` +
		`"IPv4Data":[{"AddressSpace":"twill-local","Gateway":"10.96.7.1/24","Pool":"10.96.7.0/24"}],"IPv6Data":[]}`
	epOptions = `"Options":{"com.docker.network.endpoint.exposedports":[{"Proto":6,"Port":80}],"com.docker.network.portmap":[{"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":8080,"HostPortEnd":8080}]}`
	epIDs     = `"NetworkID":"` + netID + `","EndpointID":"` + epID + `"`
)

func TestActivateAndCapabilities(t *testing.T) {
	s := startStack(t, Options{})
	for _, tt := range []struct{ method, body, want string }{
		{"Plugin.Activate", "", `{"Implements":["NetworkDriver","IpamDriver"]}`},
		{"NetworkDriver.GetCapabilities", "null", `{"Scope":"local","ConnectivityScope":"global"}`},
		{"IpamDriver.GetCapabilities", "null", `{"RequiresMACAddress":false,"RequiresRequestReplay":false}`},
		{"IpamDriver.GetDefaultAddressSpaces", "null", `{"LocalDefaultAddressSpace":"twill-local","GlobalDefaultAddressSpace":"twill-global"}`},
		{"NetworkDriver.DiscoverNew", `{"DiscoveryType":1,"DiscoveryData":{}}`, `{}`},
	} {
		if got := s.c.ok(t, tt.method, tt.body); got != tt.want {
			t.Errorf("%s answered %s, want %s", tt.method, got, tt.want)
		}
	}
	req, _ := http.NewRequest(http.MethodPost, "http://plugin/Plugin.Activate", nil)
	resp, err := s.c.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != ContentType {
		t.Fatalf("Content-Type %q", ct)
	}
}

// TestDockerSequence replays what dockerd sends for network create, docker
// run --ip -p 8080:80, docker stop, network rm, and checks every answer
// and the fake kernel.
func TestDockerSequence(t *testing.T) {
	s := startStack(t, Options{})
	c := s.c
	pool := c.ok(t, "IpamDriver.RequestPool", reqPoolBlue)
	if field(t, pool, "PoolID") != poolID || field(t, pool, "Pool") != "10.96.7.0/24" {
		t.Fatalf("RequestPool answered %s", pool)
	}
	if again := c.ok(t, "IpamDriver.RequestPool", reqPoolBlue); again != pool {
		t.Fatalf("identical RequestPool answered %s, then %s", pool, again)
	}
	c.ok(t, "IpamDriver.ReleasePool", `{"PoolID":"`+poolID+`"}`) // the extra reference
	if gw := c.ok(t, "IpamDriver.RequestAddress", reqGateway); field(t, gw, "Address") != "10.96.7.1/24" {
		t.Fatalf("gateway %s", gw)
	}
	c.ok(t, "NetworkDriver.CreateNetwork", createNetBlue)
	if _, ok := s.links.Bridge("tw-5c87f637"); !ok {
		t.Fatal("no bridge tw-5c87f637")
	}

	if a := c.ok(t, "IpamDriver.RequestAddress", `{"PoolID":"`+poolID+`","Address":"10.96.7.50","Options":null}`); field(t, a, "Address") != "10.96.7.50/24" {
		t.Fatalf("--ip answered %s", a)
	}
	ce := c.ok(t, "NetworkDriver.CreateEndpoint", `{`+epIDs+`,"Interface":{"Address":"10.96.7.50/24","AddressIPv6":"","MacAddress":""},`+epOptions+`}`)
	if ce != `{"Interface":{"Address":"","AddressIPv6":"","MacAddress":"02:42:0a:60:07:32"}}` {
		t.Fatalf("CreateEndpoint answered %s", ce)
	}
	join := c.ok(t, "NetworkDriver.Join", `{`+epIDs+`,"SandboxKey":"/var/run/docker/netns/1f2e3d4c5b6a",`+epOptions+`}`)
	wantJoin := `{"InterfaceName":{"SrcName":"twc896c02fc","DstPrefix":"eth"},"Gateway":"10.96.7.1","GatewayIPv6":"","StaticRoutes":[{"Destination":"10.96.0.0/16","RouteType":0,"NextHop":"10.96.7.1"}],"DisableGatewayService":false}`
	if join != wantJoin {
		t.Fatalf("Join answered\n%s\nwant\n%s", join, wantJoin)
	}
	c.ok(t, "NetworkDriver.ProgramExternalConnectivity", `{`+epIDs+`,`+epOptions+`}`)
	if pm := s.fw.PortMaps(); pm["tw-5c87f637 tcp *:8080"].String() != "10.96.7.50:80" {
		t.Fatalf("port maps %v", pm)
	}
	if info := c.ok(t, "NetworkDriver.EndpointOperInfo", `{`+epIDs+`}`); !strings.Contains(info, `"HostPort":8080`) {
		t.Fatalf("EndpointOperInfo %s", info)
	}

	// docker stop, then network rm; every step twice: repeats succeed.
	for range 2 {
		c.ok(t, "NetworkDriver.RevokeExternalConnectivity", `{`+epIDs+`}`)
		c.ok(t, "NetworkDriver.Leave", `{`+epIDs+`}`)
		c.ok(t, "NetworkDriver.DeleteEndpoint", `{`+epIDs+`}`)
		c.ok(t, "IpamDriver.ReleaseAddress", `{"PoolID":"`+poolID+`","Address":"10.96.7.50"}`)
	}
	if len(s.fw.PortMaps()) != 0 {
		t.Fatal("port map left after stop")
	}
	for range 2 {
		c.ok(t, "IpamDriver.ReleaseAddress", `{"PoolID":"`+poolID+`","Address":"10.96.7.1"}`)
		c.ok(t, "IpamDriver.ReleasePool", `{"PoolID":"`+poolID+`"}`)
		c.ok(t, "NetworkDriver.DeleteNetwork", `{"NetworkID":"`+netID+`"}`)
	}
	if nb, nv := s.links.Counts(); nb != 0 || nv != 0 {
		t.Fatalf("%d bridges and %d veths left", nb, nv)
	}
	if n := len(s.ipam.Allocations()); n != 0 {
		t.Fatalf("%d allocations left", n)
	}
}

func TestUserErrors(t *testing.T) {
	s := startStack(t, Options{})
	c := s.c
	c.ok(t, "IpamDriver.RequestPool", reqPoolBlue)
	c.ok(t, "IpamDriver.RequestAddress", reqGateway)
	c.ok(t, "NetworkDriver.CreateNetwork", createNetBlue)
	c.ok(t, "IpamDriver.RequestAddress", `{"PoolID":"`+poolID+`","Address":"10.96.7.50","Options":null}`)

	t.Run("default IPAM", func(t *testing.T) {
		c.fail(t, "NetworkDriver.CreateNetwork", `{"NetworkID":"`+netID2+`","Options":{"com.docker.network.enable_ipv6":false,"com.docker.network.generic":{}},`+
			`"IPv4Data":[{"AddressSpace":"LocalDefault","Gateway":"172.18.0.1/16","Pool":"172.18.0.0/16"}],"IPv6Data":[]}`,
			"twill networks need --ipam-driver twill:latest", "LocalDefault")
	})
	t.Run("unknown -o", func(t *testing.T) {
		c.ok(t, "IpamDriver.RequestPool", `{"AddressSpace":"twill-local","Pool":"10.97.0.0/16","SubPool":"","Options":{},"V6":false}`)
		c.fail(t, "NetworkDriver.CreateNetwork", `{"NetworkID":"`+netID2+`","Options":{"com.docker.network.generic":{"foo":"bar"}},`+
			`"IPv4Data":[{"AddressSpace":"twill-local","Gateway":"10.97.3.1/24","Pool":"10.97.3.0/24"}],"IPv6Data":[]}`,
			"-o foo", "com.docker.network.driver.mtu")
		c.fail(t, "NetworkDriver.CreateNetwork", `{"NetworkID":"`+netID2+`","Options":{"com.docker.network.generic":{"com.docker.network.driver.mtu":"9000"}},`+
			`"IPv4Data":[{"AddressSpace":"twill-local","Gateway":"10.97.3.1/24","Pool":"10.97.3.0/24"}],"IPv6Data":[]}`,
			"9000", "tunnel MTU 1472")
	})
	t.Run("--ip taken", func(t *testing.T) {
		c.fail(t, "IpamDriver.RequestAddress", `{"PoolID":"`+poolID+`","Address":"10.96.7.50","Options":null}`, "10.96.7.50", "already in use")
	})
	t.Run("--ip outside this host's subnet", func(t *testing.T) {
		c.fail(t, "IpamDriver.RequestAddress", `{"PoolID":"`+poolID+`","Address":"10.96.9.5","Options":null}`, "10.96.9.5", "10.96.7.0/24")
	})
	t.Run("--ip-range outside", func(t *testing.T) {
		c.fail(t, "IpamDriver.RequestPool", `{"AddressSpace":"twill-local","Pool":"10.96.0.0/16","SubPool":"10.96.200.0/24","Options":{},"V6":false}`,
			"--ip-range 10.96.200.0/24", "10.96.7.0/24")
	})
	t.Run("--gateway outside", func(t *testing.T) {
		// Docker's sequence for --gateway 10.96.9.254: RequestPool, gateway request (refused), ReleasePool.
		p := c.ok(t, "IpamDriver.RequestPool", `{"AddressSpace":"twill-local","Pool":"10.96.0.0/16","SubPool":"10.96.7.128/25","Options":{},"V6":false}`)
		c.fail(t, "IpamDriver.RequestAddress", `{"PoolID":"`+field(t, p, "PoolID")+`","Address":"10.96.9.254","Options":{"RequestAddressType":"com.docker.network.gateway"}}`,
			"10.96.9.254", "10.96.7.0/24")
		c.ok(t, "IpamDriver.ReleasePool", `{"PoolID":"`+field(t, p, "PoolID")+`"}`)
	})
	t.Run("second network on the same subnet", func(t *testing.T) {
		p := c.ok(t, "IpamDriver.RequestPool", reqPoolBlue)
		c.fail(t, "IpamDriver.RequestAddress", reqGateway, "10.96.7.0/24", "another --subnet")
		c.ok(t, "IpamDriver.ReleasePool", `{"PoolID":"`+field(t, p, "PoolID")+`"}`)
		// The first network is intact: its gateway and its container's address are held.
		c.fail(t, "IpamDriver.RequestAddress", `{"PoolID":"`+poolID+`","Address":"10.96.7.50","Options":null}`, "already in use")
		c.fail(t, "IpamDriver.RequestAddress", reqGateway, "already backs another twill network")
	})
	t.Run("ipv6", func(t *testing.T) {
		c.fail(t, "IpamDriver.RequestPool", `{"AddressSpace":"twill-local","Pool":"","SubPool":"","Options":{},"V6":true}`, "IPv6", "--ipv6")
	})
	t.Run("unknown objects", func(t *testing.T) {
		c.fail(t, "NetworkDriver.Join", `{"NetworkID":"`+netID+`","EndpointID":"ffffffff","SandboxKey":"x","Options":{}}`, "endpoint ffffffff", "restart the container")
		c.fail(t, "NetworkDriver.CreateEndpoint", `{"NetworkID":"ffffffff","EndpointID":"`+epID+`","Interface":{"Address":"10.96.7.9/24"}}`, "network ffffffff")
		c.fail(t, "IpamDriver.RequestAddress", `{"PoolID":"twill/10.1.2.0/24","Address":"","Options":null}`, "twill/10.1.2.0/24", "re-create the network")
		for method, body := range map[string]string{
			"NetworkDriver.DeleteNetwork":              `{"NetworkID":"ffffffff"}`,
			"NetworkDriver.DeleteEndpoint":             `{"NetworkID":"ffffffff","EndpointID":"ffffffff"}`,
			"NetworkDriver.Leave":                      `{"NetworkID":"ffffffff","EndpointID":"ffffffff"}`,
			"NetworkDriver.RevokeExternalConnectivity": `{"NetworkID":"ffffffff","EndpointID":"ffffffff"}`,
			"IpamDriver.ReleasePool":                   `{"PoolID":"twill/10.1.2.0/24"}`,
			"IpamDriver.ReleaseAddress":                `{"PoolID":"twill/10.1.2.0/24","Address":"10.1.2.3"}`,
		} {
			if got := c.ok(t, method, body); got != "{}" {
				t.Errorf("%s of an unknown object answered %s", method, got)
			}
		}
	})
}

func TestMalformedRequests(t *testing.T) {
	s := startStack(t, Options{})
	for _, tt := range []struct {
		method, body string
		status       int
		mention      string
	}{
		{"IpamDriver.RequestPool", `{"AddressSpace":`, http.StatusBadRequest, "malformed"},
		{"NetworkDriver.CreateNetwork", `{"NetworkID":5}`, http.StatusBadRequest, "malformed"},
		{"NetworkDriver.Join", `[1,2,3]`, http.StatusBadRequest, "NetworkDriver.Join"},
		{"IpamDriver.RequestAddress", `{"PoolID":"x","Address":"` + strings.Repeat("9", MaxBodyBytes) + `"}`, http.StatusRequestEntityTooLarge, "too large"},
		{"NetworkDriver.NoSuchThing", `{}`, http.StatusNotFound, "NoSuchThing"},
	} {
		status, resp, err := s.c.post(tt.method, tt.body)
		if err != nil {
			t.Fatal(err)
		}
		if status != tt.status || !strings.Contains(resp, `"Err":"twill: `) || !strings.Contains(resp, tt.mention) {
			t.Errorf("%s: HTTP %d %.200s, want %d mentioning %q", tt.method, status, resp, tt.status, tt.mention)
		}
	}
	// The server is still fine.
	s.c.ok(t, "IpamDriver.RequestPool", reqPoolBlue)
}

func TestStartingAndFailedStart(t *testing.T) {
	srv := New(Options{Log: quiet(), StartWait: 50 * time.Millisecond})
	c := serve(t, srv)
	// Capabilities are answered while the backends are not ready.
	c.ok(t, "NetworkDriver.GetCapabilities", "null")
	c.ok(t, "IpamDriver.GetDefaultAddressSpaces", "null")
	c.fail(t, "IpamDriver.RequestPool", reqPoolBlue, "twill is starting", "try again")
	srv.Waiting(errors.New("etcd http://10.0.0.5:2379: connection refused"))
	c.fail(t, "IpamDriver.RequestPool", reqPoolBlue, "twill is starting", "10.0.0.5:2379: connection refused")
	srv.Waiting(nil)

	// A call that arrives while starting is answered once Ready comes.
	b, err := newBackends(t.TempDir(), quiet())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.db.Close() })
	srv.startWait = 5 * time.Second
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c.ok(t, "IpamDriver.RequestPool", reqPoolBlue)
	}()
	time.Sleep(20 * time.Millisecond)
	srv.Ready(b.drv, b.ipam)
	wg.Wait()

	failed := New(Options{Log: quiet()})
	failed.Fail(errors.New("opening /var/lib/twill/state.db: state directory is in use by another twilld"))
	fc := serve(t, failed)
	fc.fail(t, "NetworkDriver.CreateNetwork", createNetBlue, "could not start", "in use by another twilld")
}

func TestObserverSeesEveryCall(t *testing.T) {
	var mu sync.Mutex
	seen := map[string][]error{}
	s := startStack(t, Options{Observer: func(method string, d time.Duration, err error) {
		mu.Lock()
		defer mu.Unlock()
		seen[method] = append(seen[method], err)
	}})
	s.c.ok(t, "IpamDriver.RequestPool", reqPoolBlue)
	s.c.fail(t, "IpamDriver.RequestAddress", `{"PoolID":"nope"}`)
	s.c.fail(t, "Whatever.YouLike", `{}`)
	mu.Lock()
	defer mu.Unlock()
	if errs := seen["IpamDriver.RequestPool"]; len(errs) != 1 || errs[0] != nil {
		t.Fatalf("RequestPool observed %v", errs)
	}
	if errs := seen["IpamDriver.RequestAddress"]; len(errs) != 1 || errs[0] == nil {
		t.Fatalf("RequestAddress observed %v", errs)
	}
	if errs := seen["unknown"]; len(errs) != 1 || len(seen) != 3 {
		t.Fatalf("unknown methods observed as %v", seen)
	}
}

func TestListen(t *testing.T) {
	dir := socketDir(t)
	sock := filepath.Join(dir, "sub", "twill.sock")
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 || fi.Mode().Type() != os.ModeSocket {
		t.Fatalf("socket mode %v", fi.Mode())
	}
	// A live server on the path is not displaced.
	if _, err := Listen(sock); !errors.Is(err, ErrSocketInUse) {
		t.Fatalf("second Listen: %v", err)
	}
	l.Close()
	// A stale file (a killed twilld's socket) is replaced.
	if err := os.WriteFile(sock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	l, err = Listen(sock)
	if err != nil {
		t.Fatalf("over a stale file: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- New(Options{}).Serve(ctx, l) }()
	cancel()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

// TestRefusedCreateLeavesNothing follows a refused network create with
// Docker's clean-up (gateway ReleaseAddress, ReleasePool); a corrected
// create then works.
func TestRefusedCreateLeavesNothing(t *testing.T) {
	s := startStack(t, Options{})
	c := s.c
	create := func(generic string) (int, string) {
		status, body, err := c.post("NetworkDriver.CreateNetwork", `{"NetworkID":"`+netID2+`","Options":{"com.docker.network.enable_ipv6":false,"com.docker.network.generic":{`+generic+`}},`+
			`"IPv4Data":[{"AddressSpace":"twill-local","Gateway":"10.97.3.1/24","Pool":"10.97.3.0/24"}],"IPv6Data":[]}`)
		if err != nil {
			t.Fatal(err)
		}
		return status, body
	}
	for i, generic := range []string{`"com.docker.network.driver.mtu":"9000"`, `"com.docker.network.driver.mtu":"1400"`} {
		p := field(t, c.ok(t, "IpamDriver.RequestPool", `{"AddressSpace":"twill-local","Pool":"10.97.0.0/16","SubPool":"","Options":{},"V6":false}`), "PoolID")
		c.ok(t, "IpamDriver.RequestAddress", `{"PoolID":"`+p+`","Address":"","Options":{"RequestAddressType":"com.docker.network.gateway"}}`)
		status, body := create(generic)
		if i == 1 {
			if status != http.StatusOK {
				t.Fatalf("corrected create: HTTP %d %s", status, body)
			}
			break
		}
		if status == http.StatusOK {
			t.Fatal("mtu 9000 accepted")
		}
		c.ok(t, "IpamDriver.ReleaseAddress", `{"PoolID":"`+p+`","Address":"10.97.3.1"}`)
		c.ok(t, "IpamDriver.ReleasePool", `{"PoolID":"`+p+`"}`)
		if n := len(s.ipam.Allocations()); n != 0 {
			t.Fatalf("%d allocations after the refused create", n)
		}
		if nb, _ := s.links.Counts(); nb != 0 {
			t.Fatal("bridge left after the refused create")
		}
	}
	if b, ok := s.links.Bridge("tw-0c950605"); !ok || b.MTU != 1400 {
		t.Fatalf("bridge %+v %v", b, ok)
	}
}

// TestShutdownWhileStarting: a call waiting for the backends does not hold
// up shutdown.
func TestShutdownWhileStarting(t *testing.T) {
	srv := New(Options{Log: quiet(), StartWait: time.Minute})
	sock := filepath.Join(socketDir(t), "twill.sock")
	l, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ctx, l) }()
	c := newClient(sock)
	defer c.close()
	answered := make(chan string, 1)
	go func() {
		_, body, _ := c.post("IpamDriver.RequestPool", reqPoolBlue)
		answered <- body
	}()
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	cancel()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if body := <-answered; !strings.Contains(body, "stopping") {
		t.Fatalf("waiting call answered %s", body)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("shutdown took %v", d)
	}
}
