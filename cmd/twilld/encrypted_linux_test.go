package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twill-net/twill/datapath/wireguard"
	"github.com/twill-net/twill/internal/control"
	"github.com/twill-net/twill/internal/testbed"
)

const (
	greenOverlay = "10.97.0.0/16"
	greenConfig  = `{"Network":"10.97.0.0/16","Backend":{"Type":"wireguard","PersistentKeepaliveInterval":25}}`
)

// etcdPut writes key in the cluster's etcd with etcdctl.
func (c *cluster) etcdPut(key, value string) {
	c.t.Helper()
	testbed.MustIn(c.t, c.bed.UnderlayNS(), "etcdctl", "--endpoints", c.etcd, "put", key, value)
}

func (c *cluster) etcdGet(key string) string {
	c.t.Helper()
	return strings.TrimSpace(testbed.MustIn(c.t, c.bed.UnderlayNS(), "etcdctl", "--endpoints", c.etcd, "get", key, "--print-value-only"))
}

// leaseKey returns the public key in h's lease of the green overlay.
func (c *cluster) leaseKey(h *host) (netip.Prefix, wireguard.Key) {
	c.t.Helper()
	var sn netip.Prefix
	err := testbed.WaitFor(context.Background(), 5*time.Second, func() error {
		for _, o := range c.status(h).Overlays {
			if o.Network == greenOverlay {
				sn = netip.MustParsePrefix(o.Subnet)
				return nil
			}
		}
		return fmt.Errorf("no lease")
	})
	if err != nil {
		c.t.Fatalf("h%d holds no lease in %s: %v", h.n, greenOverlay, err)
	}
	v := c.etcdGet(c.prefix + "/overlays/10.97.0.0-16/subnets/" + sn.Addr().String() + "-24")
	var attrs struct {
		PublicIP    string
		BackendType string
		BackendData json.RawMessage
	}
	if err := json.Unmarshal([]byte(v), &attrs); err != nil || attrs.BackendType != "wireguard" {
		c.t.Fatalf("h%d's lease %s: %s (%v), want a wireguard lease", h.n, sn, v, err)
	}
	k, err := wireguard.ParseLeaseData(attrs.BackendData)
	if err != nil {
		c.t.Fatalf("h%d's lease %s: %v", h.n, sn, err)
	}
	return sn, k
}

// encPeer returns h's encrypted peer for subnet sn.
func (c *cluster) encPeer(h *host, sn netip.Prefix) (control.Peer, bool) {
	for _, p := range c.peers(h).Peers {
		if p.Encrypted && p.Subnet == sn.String() {
			return p, true
		}
	}
	return control.Peer{}, false
}

// TestEncryptedOverlayAcrossHosts: an overlay whose config asks for
// flannel's wireguard backend, written before any host joins, carries
// containers' traffic between three (then four) twilld hosts encrypted,
// beside a plain udp overlay on the same hosts.
func TestEncryptedOverlayAcrossHosts(t *testing.T) {
	c := newCluster(t, "twkw")
	c.etcdPut(c.prefix+"/overlays/10.97.0.0-16/config", greenConfig)
	ctrs := map[int]testbed.Container{}
	nets := map[int]testbed.Network{}
	for n := 1; n <= 3; n++ {
		h := c.start(n)
		nets[n] = h.docker.CreateNetwork(t, testbed.ID(fmt.Sprintf("green-h%d", n)), greenOverlay, nil)
		h.net = nets[n]
		ctrs[n] = c.container(h, fmt.Sprintf("g%d", n))
	}
	// A plain udp network on h1 beside the encrypted one.
	h1 := c.hosts[1]
	blue := h1.docker.CreateNetwork(t, testbed.ID("blue-h1"), "10.96.0.0/16", nil)
	blueC := h1.docker.Run(t, blue, c.bed.AddNS("b1"), testbed.ID("b1"))

	keys := map[int]wireguard.Key{}
	subs := map[int]netip.Prefix{}
	t.Run("key and leases as flanneld writes them", func(t *testing.T) {
		for n := 1; n <= 3; n++ {
			h := c.hosts[n]
			st, err := os.Stat(filepath.Join(h.dir, wireguard.KeyFile))
			if err != nil || st.Mode().Perm() != 0o600 {
				t.Fatalf("h%d key file: %v %v, want mode 0600", n, err, st.Mode().Perm())
			}
			priv, _, err := wireguard.LoadOrCreateKey(filepath.Join(h.dir, wireguard.KeyFile))
			if err != nil {
				t.Fatal(err)
			}
			subs[n], keys[n] = c.leaseKey(h)
			if keys[n] != priv.Public() {
				t.Errorf("h%d's lease carries %s, its key file's public key is %s", n, keys[n], priv.Public())
			}
			for _, o := range c.status(h).Overlays {
				enc := o.Network == greenOverlay
				if want := "wireguard on twg0a610000, UDP 51820, public key " + priv.Public().String(); enc && o.Encrypted != want || !enc && o.Encrypted != "" {
					t.Errorf("h%d status for %s: encrypted %q", n, o.Network, o.Encrypted)
				}
			}
			if !subs[n].Contains(ctrs[n].Addr.Addr()) {
				t.Errorf("h%d's container %s is outside its subnet %s", n, ctrs[n].Addr, subs[n])
			}
		}
		// The default overlay is still udp.
		if v := c.etcdGet(c.prefix + "/config"); !strings.Contains(v, `"Type":"udp"`) {
			t.Errorf("default overlay config %s, want udp", v)
		}
	})
	t.Run("ping every pair", func(t *testing.T) {
		for a := 1; a <= 3; a++ {
			for b := 1; b <= 3; b++ {
				if a != b {
					start := time.Now()
					mustPing(t, ctrs[a].NS, ctrs[b].Addr.Addr())
					// WireGuard retries a lost handshake only after 5 s.
					if d := time.Since(start); d > 2*time.Second {
						t.Errorf("g%d -> g%d: first reply after %v", a, b, d.Round(time.Millisecond))
					}
				}
			}
		}
	})
	t.Run("peers show their handshake", func(t *testing.T) {
		for n := 1; n <= 3; n++ {
			for m := 1; m <= 3; m++ {
				if n == m {
					continue
				}
				p, ok := c.encPeer(c.hosts[n], subs[m])
				if !ok || p.PublicKey != keys[m].String() || p.Addr != c.bed.Addr(m).String()+":51820" ||
					p.LastHandshake.IsZero() || time.Since(p.LastHandshake) > time.Minute || p.BytesIn == 0 {
					t.Errorf("h%d's peer for h%d: %+v (found %v), want key %s at :51820 with a recent handshake", n, m, p, ok, keys[m])
				}
			}
		}
	})
	t.Run("50 MB each way, sha256 checked", func(t *testing.T) {
		for _, p := range [][2]int{{1, 2}, {2, 3}, {3, 1}} {
			took := transfer(t, ctrs[p[0]].NS, ctrs[p[1]].NS, ctrs[p[1]].Addr.Addr(), 5001, 50<<20)
			t.Logf("g%d -> g%d: 50 MiB in %v (%.2f Gbit/s)", p[0], p[1], took.Round(time.Millisecond), float64(50<<23)/took.Seconds()/1e9)
		}
	})
	t.Run("the underlay carries only WireGuard messages, no plaintext", func(t *testing.T) {
		saved := filepath.Join(c.dir, "wg-to-h1.hex")
		done := startCapture(t, c, "3s", saved)
		// UDP and a TCP stream carrying the marker, c2 -> c1 and c2 -> c3,
		// and pings padded with it, c1 -> c3.
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			testbed.In(ctrs[3].NS, "env", "TWILL_TEST_ROLE=sink", os.Args[0], ctrs[3].Addr.Addr().String()+":7002")
		}()
		testbed.MustIn(t, ctrs[2].NS, "env", "TWILL_TEST_ROLE=marker", os.Args[0], ctrs[1].Addr.Addr().String()+":7000", ctrs[3].Addr.Addr().String()+":7002", captureMarker)
		wg.Wait()
		testbed.MustIn(t, ctrs[1].NS, "busybox", "ping", "-c", "3", ctrs[3].Addr.Addr().String())
		s := done()
		t.Logf("capture: %+v", s)
		if s.Marker != 0 {
			t.Errorf("the marker crossed the underlay in plaintext in %d frames", s.Marker)
		}
		if s.NotWG != 0 || s.Types[4] == 0 {
			t.Errorf("datagrams on port 51820: %v WireGuard messages by type and %d others; want transport messages only", s.Types, s.NotWG)
		}
		for port, n := range s.UDP {
			if port != 51820 && port != 2379 {
				t.Errorf("%d datagrams on port %d crossed the underlay", n, port)
			}
		}
	})
	t.Run("replayed and forged datagrams never reach a container", func(t *testing.T) {
		saved := filepath.Join(c.dir, "wg-to-h1-2.hex")
		done := startCapture(t, c, "3s", saved)
		var got string
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, _ = testbed.In(ctrs[1].NS, "env", "TWILL_TEST_ROLE=udpsink", os.Args[0], ctrs[1].Addr.Addr().String()+":7777", "6s")
		}()
		time.Sleep(300 * time.Millisecond)
		const sent = 40
		testbed.MustIn(t, ctrs[2].NS, "env", "TWILL_TEST_ROLE=udpsend", os.Args[0], ctrs[1].Addr.Addr().String()+":7777", fmt.Sprint(sent), "200", "5ms")
		s := done()
		if s.Saved < sent/2 {
			t.Fatalf("captured only %d transport messages to h1", s.Saved)
		}
		rogue := c.bed.AddHost("rg", 9, 0)
		target := c.bed.Addr(1).String() + ":51820"
		testbed.MustIn(t, rogue, "env", "TWILL_TEST_ROLE=wgreplay", os.Args[0], target, saved, "50")
		// Replayed from h2's own address too (another source port).
		testbed.MustIn(t, c.hosts[2].ns, "env", "TWILL_TEST_ROLE=wgreplay", os.Args[0], target, saved, "0")
		wg.Wait()
		f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(got), "listening"))
		if len(f) == 0 {
			t.Fatalf("udp sink: %q", got)
		}
		var n int
		fmt.Sscan(f[0], &n)
		if n == 0 || n > sent {
			t.Errorf("the container received %d datagrams; %d were sent once and %d replayed 3 times each", n, sent, s.Saved)
		}
		t.Logf("%d of %d sent arrived; %d captured transport messages replayed 3x from two hosts and 200 forged: none delivered", n, sent, s.Saved)
		mustPing(t, ctrs[2].NS, ctrs[1].Addr.Addr())
	})
	t.Run("no traffic between the encrypted and the udp overlay", func(t *testing.T) {
		if ping(blueC.NS, ctrs[2].Addr.Addr()) == nil {
			t.Errorf("a udp network's container reaches an encrypted overlay's container on another host")
		}
		if ping(blueC.NS, ctrs[1].Addr.Addr()) == nil {
			t.Errorf("a udp network's container reaches the encrypted network's container on its own host")
		}
		if ping(ctrs[2].NS, blueC.Addr.Addr()) == nil {
			t.Errorf("an encrypted overlay's container reaches a udp network's container")
		}
	})
	t.Run("a restarted host keeps its key and its peers reconnect", func(t *testing.T) {
		h2 := c.hosts[2]
		h2.proc.Signal(syscall.SIGTERM)
		c.start(2)
		sn, k := c.leaseKey(h2)
		if sn != subs[2] || k != keys[2] {
			t.Errorf("after a restart h2 holds %s with key %s, was %s with %s", sn, k, subs[2], keys[2])
		}
		mustPing(t, ctrs[1].NS, ctrs[2].Addr.Addr())
		mustPing(t, ctrs[2].NS, ctrs[3].Addr.Addr())
	})
	t.Run("a host whose key changed is picked up", func(t *testing.T) {
		h3 := c.hosts[3]
		h3.proc.Signal(syscall.SIGTERM)
		os.Remove(filepath.Join(h3.dir, wireguard.KeyFile))
		c.start(3)
		sn, k := c.leaseKey(h3)
		if sn != subs[3] || k == keys[3] {
			t.Fatalf("h3 came back with %s key %s, want %s with a new key", sn, k, subs[3])
		}
		start := time.Now()
		err := testbed.WaitFor(context.Background(), 3*time.Second, func() error {
			for _, n := range []int{1, 2} {
				if p, _ := c.encPeer(c.hosts[n], sn); p.PublicKey != k.String() {
					return fmt.Errorf("h%d still has key %s for h3", n, p.PublicKey)
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("h3's new key in every peer table after %v", time.Since(start).Round(time.Millisecond))
		keys[3] = k
		mustPing(t, ctrs[1].NS, ctrs[3].Addr.Addr())
		mustPing(t, ctrs[3].NS, ctrs[2].Addr.Addr())
	})
	t.Run("a fourth host joins", func(t *testing.T) {
		h4 := c.start(4)
		h4.net = h4.docker.CreateNetwork(t, testbed.ID("green-h4"), greenOverlay, nil)
		c4 := c.container(h4, "g4")
		joined := time.Now()
		for n := 1; n <= 3; n++ {
			mustPing(t, ctrs[n].NS, c4.Addr.Addr())
			mustPing(t, c4.NS, ctrs[n].Addr.Addr())
		}
		reach := time.Since(joined)
		t.Logf("h4 reachable from every host %v after its container started", reach.Round(time.Millisecond))
		if reach > 2*time.Second {
			t.Errorf("h4 took %v to be reachable: a first handshake was lost", reach)
		}
	})
}

// captureMarker is sent between containers and must never be seen on the
// underlay.
const captureMarker = "TWILL-PLAINTEXT-MARKER-7f3a"

// startCapture runs the capture role in the underlay namespace for d and
// returns a function that waits for its summary.
func startCapture(t *testing.T, c *cluster, d, saved string) func() captureSummary {
	t.Helper()
	var out string
	var err error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		out, err = testbed.In(c.bed.UnderlayNS(), "env", "TWILL_TEST_ROLE=capture", os.Args[0], d, captureMarker, "51820", c.bed.Addr(1).String(), saved)
	}()
	time.Sleep(300 * time.Millisecond) // the socket is open
	return func() captureSummary {
		wg.Wait()
		if err != nil {
			t.Fatalf("capture: %v %s", err, out)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		var s captureSummary
		if err := json.Unmarshal([]byte(lines[len(lines)-1]), &s); err != nil {
			t.Fatalf("capture output %q: %v", out, err)
		}
		return s
	}
}

// TestFlannelWireGuardInterop: a stand-in for a flanneld node on the
// wireguard backend (internal/testbed/flannelwg: plain WireGuard set up from
// the leases as flanneld sets up flannel-wg) shares an encrypted overlay
// with a PSK with two twill hosts, and traffic flows both ways.
func TestFlannelWireGuardInterop(t *testing.T) {
	c := newCluster(t, "twkf")
	bin := filepath.Join(c.dir, "flannelwg")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/twill-net/twill/internal/testbed/flannelwg").CombinedOutput(); err != nil {
		t.Fatalf("building the stand-in: %v\n%s", err, out)
	}
	psk, _ := wireguard.GenerateKey()
	prefix := c.prefix + "/overlays/10.97.0.0-16"
	c.etcdPut(prefix+"/config", `{"Network":"10.97.0.0/16","Backend":{"Type":"wireguard","ListenPort":51830,"PSK":"`+psk.String()+`"}}`)
	ctrs := map[int]testbed.Container{}
	for n := 1; n <= 2; n++ {
		h := c.start(n)
		h.net = h.docker.CreateNetwork(t, testbed.ID(fmt.Sprintf("green-h%d", n)), greenOverlay, nil)
		ctrs[n] = c.container(h, fmt.Sprintf("f%d", n))
	}
	ns := c.bed.AddHost("fw", 7, 0)
	p := testbed.Start(t, ns, filepath.Join(c.dir, "flannelwg.log"), nil, bin,
		"-etcd-endpoints", c.etcd, "-etcd-prefix", prefix, "-public-ip", c.bed.Addr(7).String())
	var fw netip.Prefix
	err := testbed.WaitFor(context.Background(), 10*time.Second, func() error {
		if p.Exited() {
			return fmt.Errorf("exited")
		}
		for _, line := range strings.Split(p.Tail(4000), "\n") {
			if s, ok := strings.CutPrefix(line, "ready "); ok {
				fw = netip.MustParsePrefix(s)
				return nil
			}
		}
		return fmt.Errorf("not ready")
	})
	if err != nil {
		t.Fatalf("stand-in: %v\n%s", err, p.Tail(4000))
	}
	self := fw.Addr() // flannel-wg holds the subnet's network address
	for n := 1; n <= 2; n++ {
		mustPing(t, ns, ctrs[n].Addr.Addr())
		mustPing(t, ctrs[n].NS, self)
	}
	for n := 1; n <= 2; n++ {
		peer, ok := c.encPeer(c.hosts[n], fw)
		if !ok || peer.LastHandshake.IsZero() || peer.Addr != c.bed.Addr(7).String()+":51830" {
			t.Errorf("h%d's peer for the stand-in: %+v %v", n, peer, ok)
		}
	}
	took := transfer(t, ctrs[1].NS, ns, self, 5001, 50<<20)
	t.Logf("twill container -> flannel-wg node: 50 MiB in %v", took.Round(time.Millisecond))
	took = transfer(t, ns, ctrs[2].NS, ctrs[2].Addr.Addr(), 5002, 50<<20)
	t.Logf("flannel-wg node -> twill container: 50 MiB in %v", took.Round(time.Millisecond))
}

// TestBackendNetworkOption: `docker network create -o twill.backend=wireguard
// --subnet X` makes X an encrypted overlay (the first host writes its
// config); other hosts join it encrypted; an overlay already running udp
// between hosts is never switched, and the refusal says why.
func TestBackendNetworkOption(t *testing.T) {
	c := newCluster(t, "twko")
	h1, h2 := c.start(1), c.start(2)
	wg := map[string]string{"twill.backend": "wireguard"}
	h1.net = h1.docker.CreateNetwork(t, testbed.ID("sec-h1"), "10.98.0.0/16", wg)
	if v := c.etcdGet(c.prefix + "/overlays/10.98.0.0-16/config"); !strings.Contains(v, `"Backend":{"Type":"wireguard","ListenPort":51820}`) {
		t.Fatalf("config after -o twill.backend=wireguard: %s", v)
	}
	h2.net = h2.docker.CreateNetwork(t, testbed.ID("sec-h2"), "10.98.0.0/16", wg)
	c1, c2 := c.container(h1, "o1"), c.container(h2, "o2")
	mustPing(t, c1.NS, c2.Addr.Addr())
	mustPing(t, c2.NS, c1.Addr.Addr())
	if out := testbed.MustIn(t, c1.NS, "ip", "link", "show", "eth0"); !strings.Contains(out, "mtu 1420") {
		t.Errorf("container on an encrypted network: %s, want mtu 1420 (underlay 1500 - 80)", out)
	}
	if _, ok := c.encPeer(h1, netip.MustParsePrefix(c2.Addr.Masked().String())); !ok {
		t.Errorf("h1 has no encrypted peer for h2: %+v", c.peers(h1))
	}
	transfer(t, c1.NS, c2.NS, c2.Addr.Addr(), 5001, 10<<20)
	// h2 restarts: its WireGuard sessions are gone while h1 still holds
	// one. With no keepalive configured, h2 introduces itself, so h1 does
	// not wait for its stale session to time out (15 s).
	h2.proc.Signal(syscall.SIGTERM)
	c.start(2)
	restarted := time.Now()
	mustPing(t, c1.NS, c2.Addr.Addr())
	if d := time.Since(restarted); d > 3*time.Second {
		t.Errorf("h1 reached restarted h2 after %v", d.Round(time.Millisecond))
	}

	// A udp overlay two hosts share stays udp.
	h1.docker.CreateNetwork(t, testbed.ID("plain-h1"), "10.99.0.0/16", nil)
	err := createNetworkErr(h2.docker, testbed.ID("plain-h2"), "10.99.0.0/16", wg)
	if err == nil || !strings.Contains(err.Error(), "udp backend between 1 other host") || !strings.Contains(err.Error(), "another --subnet") {
		t.Errorf("-o twill.backend=wireguard on a running udp overlay: %v, want a refusal saying why and what to do", err)
	}
	if v := c.etcdGet(c.prefix + "/overlays/10.99.0.0-16/config"); !strings.Contains(v, `"Type":"udp"`) {
		t.Errorf("refused change left config %s", v)
	}
	// And an encrypted one is never made plain.
	h3 := c.start(3)
	err = createNetworkErr(h3.docker, testbed.ID("plain-h3"), "10.98.0.0/16", map[string]string{"twill.backend": "udp"})
	if err == nil || !strings.Contains(err.Error(), "wireguard backend between 2 other host") {
		t.Errorf("-o twill.backend=udp on an encrypted overlay: %v", err)
	}
}

// createNetworkErr does what `docker network create` does and returns the
// error the user would see.
func createNetworkErr(d *testbed.Docker, id, subnet string, opts map[string]string) error {
	var pool struct{ PoolID, Pool string }
	if err := d.Call("IpamDriver.RequestPool", map[string]any{"AddressSpace": "twill-local", "Pool": subnet, "SubPool": "", "Options": map[string]string{}, "V6": false}, &pool); err != nil {
		return err
	}
	var gw struct{ Address string }
	if err := d.Call("IpamDriver.RequestAddress", map[string]any{"PoolID": pool.PoolID, "Address": "", "Options": map[string]string{"RequestAddressType": "com.docker.network.gateway"}}, &gw); err != nil {
		return err
	}
	generic := map[string]any{}
	for k, v := range opts {
		generic[k] = v
	}
	return d.Call("NetworkDriver.CreateNetwork", map[string]any{
		"NetworkID": id,
		"Options":   map[string]any{"com.docker.network.enable_ipv6": false, "com.docker.network.generic": generic},
		"IPv4Data":  []any{map[string]any{"AddressSpace": "twill-local", "Gateway": gw.Address, "Pool": pool.Pool}},
		"IPv6Data":  []any{},
	}, nil)
}
