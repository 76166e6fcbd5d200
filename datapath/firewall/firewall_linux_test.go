//go:build linux

package firewall

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twill-net/twill/datapath/links"
)

// topology is one "host" namespace with three twill networks, a container
// namespace per endpoint, an "outside" namespace on the uplink and a "peer"
// namespace behind the tunnel stand-in holding addresses of two overlays:
//
//	c1, c2 -- twfbA 10.201.1.1/24 (overlay 10.201/16) --+
//	c3     -- twfbB 10.202.1.1/24 (overlay 10.202/16) --+-- host --twfup 198.51.100.1 -- outside .2
//	c4     -- twfbC 10.203.1.1/24 (overlay 10.203/16, internal)  \
//	                                                   twftun0 172.31.255.1 -- peer .2 (10.201.2.5, 10.202.2.5)
type topology struct {
	host, outside, peer *testNS
	c                   map[string]*testNS
	backend             Backend
	bin                 binaries
	fw                  *Firewall
}

const (
	tunnel   = "twftun0"
	hostUp   = "198.51.100.1"
	outsideA = "198.51.100.2"
)

var (
	netA = Network{Bridge: "twfbA", Subnet: netip.MustParsePrefix("10.201.1.0/24"), Overlay: netip.MustParsePrefix("10.201.0.0/16")}
	netB = Network{Bridge: "twfbB", Subnet: netip.MustParsePrefix("10.202.1.0/24"), Overlay: netip.MustParsePrefix("10.202.0.0/16")}
	netC = Network{Bridge: "twfbC", Subnet: netip.MustParsePrefix("10.203.1.0/24"), Overlay: netip.MustParsePrefix("10.203.0.0/16"), Internal: true}
)

func newTopology(t *testing.T, backend Backend) *topology {
	t.Helper()
	requireRoot(t)
	bin, err := backend.binaries()
	must(t, err)
	for _, b := range []string{bin.iptables, bin.restore, bin.save} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("needs %s", b)
		}
	}
	ctx := context.Background()
	id := randomID()
	tp := &topology{
		host:    newTestNS(t, id, "h"),
		outside: newTestNS(t, id, "o"),
		peer:    newTestNS(t, id, "p"),
		c:       map[string]*testNS{},
		backend: backend,
		bin:     bin,
	}
	h := tp.host
	h.sh(t, "echo 1 > /proc/sys/net/ipv4/ip_forward")

	lk, err := links.NewAt(nil, h.h)
	must(t, err)
	t.Cleanup(func() { lk.Close() })
	for _, n := range []Network{netA, netB, netC} {
		must(t, lk.EnsureBridge(ctx, n.Bridge, netip.PrefixFrom(n.Subnet.Addr().Next(), n.Subnet.Bits()), 1500))
	}
	for _, c := range []struct {
		name string
		net  Network
		ip   string
	}{{"c1", netA, "10.201.1.2"}, {"c2", netA, "10.201.1.3"}, {"c3", netB, "10.202.1.2"}, {"c4", netC, "10.203.1.2"}} {
		cns := newTestNS(t, id, c.name)
		tp.c[c.name] = cns
		hostEnd, peerEnd := "twfv"+c.name, "twfp"+c.name
		must(t, lk.AddVeth(ctx, hostEnd, peerEnd, c.net.Bridge, 1500, nil))
		// What libnetwork does with the peer end: move, rename, address, route.
		pl, err := h.nl.LinkByName(peerEnd)
		must(t, err)
		must(t, h.nl.LinkSetNsFd(pl, int(cns.h)))
		pl, err = cns.nl.LinkByName(peerEnd)
		must(t, err)
		must(t, cns.nl.LinkSetName(pl, "eth0"))
		cns.addr(t, "eth0", netip.PrefixFrom(netip.MustParseAddr(c.ip), 24))
		cns.route(t, netip.MustParsePrefix("0.0.0.0/0"), c.net.Subnet.Addr().Next())
		cns.whoami(t, "0.0.0.0:80")
		cns.udpWhoami(t, "0.0.0.0:53", c.name)
	}

	wire(t, h, "twfup", tp.outside, "eth0")
	h.addr(t, "twfup", netip.MustParsePrefix(hostUp+"/24"))
	tp.outside.addr(t, "eth0", netip.MustParsePrefix(outsideA+"/24"))
	// The outside can route to the containers: only the firewall keeps it
	// from reaching them directly, and only masquerade changes the source
	// it sees.
	tp.outside.route(t, netip.MustParsePrefix("10.200.0.0/13"), netip.MustParseAddr(hostUp))
	tp.outside.whoami(t, outsideA+":9000")

	// The tunnel stand-in: a veth named like the tunnel leads to a peer
	// holding one address in overlay A and one in overlay B.
	wire(t, h, tunnel, tp.peer, "eth0")
	h.addr(t, tunnel, netip.MustParsePrefix("172.31.255.1/30"))
	tp.peer.addr(t, "eth0", netip.MustParsePrefix("172.31.255.2/30"))
	tp.peer.addr(t, "lo", netip.MustParsePrefix("10.201.2.5/32"))
	tp.peer.addr(t, "lo", netip.MustParsePrefix("10.202.2.5/32"))
	tp.peer.route(t, netip.MustParsePrefix("10.200.0.0/13"), netip.MustParseAddr("172.31.255.1"))
	h.route(t, netip.MustParsePrefix("10.201.2.0/24"), netip.MustParseAddr("172.31.255.2"))
	h.route(t, netip.MustParsePrefix("10.202.2.0/24"), netip.MustParseAddr("172.31.255.2"))
	tp.peer.whoami(t, "0.0.0.0:9000")

	tp.fw = tp.newFirewall(t)
	for _, n := range []Network{netA, netB, netC} {
		must(t, tp.fw.EnsureNetwork(ctx, n.Bridge, n.Subnet, n.Overlay, n.Internal))
	}
	return tp
}

func (tp *topology) newFirewall(t *testing.T) *Firewall {
	t.Helper()
	fw, err := New(context.Background(), Options{
		Tunnel: tunnel, Backend: tp.backend, Runner: tp.host.runner(), Conntrack: NewConntrack(tp.host.h),
	})
	must(t, err)
	return fw
}

const (
	reach   = 5 * time.Second        // a connection that must work
	blocked = 400 * time.Millisecond // a SYN that must be dropped
)

// expect checks that a connection from ns (from local address from) to
// to succeeds and the server saw source wantSrc.
func expect(t *testing.T, ns *testNS, from, to, wantSrc string) {
	t.Helper()
	var src netip.Addr
	if from != "" {
		src = netip.MustParseAddr(from)
	}
	got, err := ns.dial(t, src, to, reach)
	if err != nil {
		t.Errorf("%s -> %s: %v, want a connection", ns.name, to, err)
		return
	}
	if got != wantSrc {
		t.Errorf("%s -> %s: server saw source %s, want %s", ns.name, to, got, wantSrc)
	}
}

// expectBlocked checks that a connection from ns to to times out (its
// packets are dropped, not refused).
func expectBlocked(t *testing.T, ns *testNS, from, to string) {
	t.Helper()
	var src netip.Addr
	if from != "" {
		src = netip.MustParseAddr(from)
	}
	got, err := ns.dial(t, src, to, blocked)
	if err == nil {
		t.Errorf("%s -> %s: connected (server saw %s), want it blocked", ns.name, to, got)
		return
	}
	if ne, ok := errors.AsType[net.Error](err); !ok || !ne.Timeout() {
		t.Errorf("%s -> %s: %v, want a timeout (dropped)", ns.name, to, err)
	}
}

func TestKernelIsolationMasqueradePublish(t *testing.T) {
	for _, b := range []Backend{BackendNFT, BackendLegacy} {
		t.Run(string(b), func(t *testing.T) { testKernel(t, b) })
	}
}

func testKernel(t *testing.T, backend Backend) {
	tp := newTopology(t, backend)
	ctx := context.Background()
	c1, c2, c3, c4 := tp.c["c1"], tp.c["c2"], tp.c["c3"], tp.c["c4"]

	t.Run("isolation", func(t *testing.T) {
		expect(t, c1, "", "10.201.1.3:80", "10.201.1.2") // same network
		expectBlocked(t, c1, "", "10.202.1.2:80")        // other network
		expectBlocked(t, c3, "", "10.201.1.2:80")
		expectBlocked(t, c1, "", "10.203.1.2:80") // internal network
		expectBlocked(t, c4, "", "10.201.1.2:80")
		// Own overlay through the tunnel, both ways, never masqueraded.
		expect(t, c1, "", "10.201.2.5:9000", "10.201.1.2")
		expect(t, c3, "", "10.202.2.5:9000", "10.202.1.2")
		expect(t, tp.peer, "10.201.2.5", "10.201.1.2:80", "10.201.2.5")
		// Another overlay through the tunnel, both ways: dropped.
		expectBlocked(t, c1, "", "10.202.2.5:9000")
		expectBlocked(t, tp.peer, "10.202.2.5", "10.201.1.2:80")
		expectBlocked(t, c3, "", "10.201.2.5:9000")
		// Unpublished ports are not reachable from outside.
		expectBlocked(t, tp.outside, "", "10.201.1.2:80")
	})

	t.Run("masquerade", func(t *testing.T) {
		expect(t, c1, "", outsideA+":9000", hostUp)
		expect(t, c3, "", outsideA+":9000", hostUp)
		expectBlocked(t, c4, "", outsideA+":9000") // internal: no way out
	})

	t.Run("publish", func(t *testing.T) {
		c1Web := netip.MustParseAddrPort("10.201.1.2:80")
		c3Web := netip.MustParseAddrPort("10.202.1.2:80")
		must(t, tp.fw.AddPortMap(ctx, netA.Bridge, "tcp", netip.Addr{}, 8080, c1Web))
		must(t, tp.fw.AddPortMap(ctx, netB.Bridge, "tcp", netip.MustParseAddr(hostUp), 8081, c3Web))
		if err := tp.fw.AddPortMap(ctx, netB.Bridge, "tcp", netip.Addr{}, 8080, c3Web); !errors.Is(err, ErrPortAllocated) {
			t.Errorf("second map of port 8080: %v, want ErrPortAllocated", err)
		}
		expect(t, tp.outside, "", hostUp+":8080", outsideA) // client address kept
		expect(t, tp.outside, "", hostUp+":8081", outsideA)
		expect(t, tp.host, "", hostUp+":8080", hostUp)  // from the host itself (OUTPUT)
		expect(t, c1, "", hostUp+":8080", "10.201.1.1") // hairpin to itself
		expect(t, c2, "", hostUp+":8080", "10.201.1.1") // hairpin to a neighbour
		expect(t, c3, "", hostUp+":8080", "10.202.1.2") // published is public
		// Published means that port, through the host: no direct way in.
		expectBlocked(t, tp.outside, "", "10.201.1.2:80")
		expectBlocked(t, c3, "", "10.201.1.2:80")

		// UDP, from one client port throughout: its conntrack entry must
		// follow the port maps (flushed on add and on delete).
		const client = 40053
		ask := func(want string) {
			t.Helper()
			got, err := tp.outside.askUDP(t, client, hostUp+":5353", time.Second)
			if want == "" && err == nil {
				t.Errorf("udp to %s:5353: answered %q, want no answer", hostUp, got)
			}
			if want != "" && (err != nil || got != want) {
				t.Errorf("udp to %s:5353: answer %q, %v; want %q", hostUp, got, err, want)
			}
		}
		ask("") // unpublished: refused, but the flow is tracked now
		c3DNS := netip.MustParseAddrPort("10.202.1.2:53")
		must(t, tp.fw.AddPortMap(ctx, netB.Bridge, "udp", netip.MustParseAddr(hostUp), 5353, c3DNS))
		ask("c3 " + outsideA)
		must(t, tp.fw.DeletePortMap(ctx, netB.Bridge, "udp", netip.MustParseAddr(hostUp), 5353, c3DNS))
		c1DNS := netip.MustParseAddrPort("10.201.1.2:53")
		must(t, tp.fw.AddPortMap(ctx, netA.Bridge, "udp", netip.Addr{}, 5353, c1DNS))
		ask("c1 " + outsideA)
		must(t, tp.fw.DeletePortMap(ctx, netA.Bridge, "udp", netip.Addr{}, 5353, c1DNS))
		ask("")

		must(t, tp.fw.DeletePortMap(ctx, netA.Bridge, "tcp", netip.Addr{}, 8080, c1Web))
		must(t, tp.fw.DeletePortMap(ctx, netA.Bridge, "tcp", netip.Addr{}, 8080, c1Web)) // again: success
		_, err := tp.outside.dial(t, netip.Addr{}, hostUp+":8080", reach)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("after DeletePortMap: %v, want connection refused", err)
		}
		expect(t, tp.outside, "", hostUp+":8081", outsideA) // the other map stays
	})

	t.Run("forward policy drop", func(t *testing.T) {
		// dockerd sets FORWARD's policy to DROP; twill's jump comes first.
		tp.host.sh(t, tp.bin.iptables+" -w -P FORWARD DROP")
		expect(t, c1, "", "10.201.1.3:80", "10.201.1.2")
		expect(t, c1, "", outsideA+":9000", hostUp)
		expect(t, c1, "", "10.201.2.5:9000", "10.201.1.2")
		expect(t, tp.outside, "", hostUp+":8081", outsideA)
		tp.host.sh(t, tp.bin.iptables+" -w -P FORWARD ACCEPT")
	})

	t.Run("restart converges", func(t *testing.T) {
		// A new process re-adds only what is still persisted: network B
		// and its port map are gone, A is back; no jump is doubled.
		fw := tp.newFirewall(t)
		must(t, fw.EnsureNetwork(ctx, netA.Bridge, netA.Subnet, netA.Overlay, false))
		must(t, fw.EnsureNetwork(ctx, netC.Bridge, netC.Subnet, netC.Overlay, true))
		must(t, fw.Apply(ctx))
		saved := tp.host.sh(t, tp.bin.save)
		if strings.Contains(saved, "twfbB") || strings.Contains(saved, "8081") {
			t.Errorf("stale rules of network B survive:\n%s", saved)
		}
		for _, j := range []string{"-A FORWARD -j TWILL-FORWARD", "-A POSTROUTING -j TWILL-POSTROUTING", "-j TWILL-DNAT"} {
			if n := strings.Count(saved, j); (j == "-j TWILL-DNAT" && n != 2) || (j != "-j TWILL-DNAT" && n != 1) {
				t.Errorf("%q appears %d times:\n%s", j, n, saved)
			}
		}
		expect(t, c1, "", outsideA+":9000", hostUp)
		tp.fw = fw
	})

	t.Run("cleanup", func(t *testing.T) {
		must(t, tp.fw.Cleanup(ctx))
		must(t, tp.fw.Cleanup(ctx)) // nothing left: still success
		saved := tp.host.sh(t, tp.bin.save)
		if strings.Contains(saved, "TWILL") {
			t.Errorf("rules left after Cleanup:\n%s", saved)
		}
		// Without the rules nothing isolates the networks any more: the
		// blocked connections above were blocked by them.
		expect(t, c1, "", "10.202.1.2:80", "10.201.1.2")
	})
}
