//go:build linux

package firewall

// Helpers for the root tests: private namespaces named twf-*, commands run
// inside them with nsenter, sockets opened inside them on a locked thread.

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/twill-net/twill/internal/testbed"
)

// requireRoot skips unless the process holds CAP_NET_ADMIN and the tools
// the test drives exist.
func requireRoot(t *testing.T) {
	t.Helper()
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skipf("reading capabilities: %v", err)
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		if hexCaps, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(hexCaps), 16, 64)
			if err != nil || caps&(1<<12) == 0 || caps&(1<<21) == 0 { // NET_ADMIN, SYS_ADMIN (setns)
				t.Skip("needs CAP_NET_ADMIN and CAP_SYS_ADMIN (run as root)")
			}
		}
	}
	for _, bin := range []string{"ip", "nsenter"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("needs %s", bin)
		}
	}
}

// testNS is a named network namespace made for one test.
type testNS struct {
	name string
	h    netns.NsHandle
	nl   *netlink.Handle
}

// newTestNS makes namespace twf-<id>-<tag>-<random> (testbed.Netns: `ip
// netns add`, removed when the test ends, also on failure) and brings lo up.
func newTestNS(t *testing.T, id, tag string) *testNS {
	t.Helper()
	name, h := testbed.Netns(t, "twf-"+id+"-"+tag+"-")
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatalf("netlink in %s: %v", name, err)
	}
	t.Cleanup(nl.Close)
	ns := &testNS{name: name, h: h, nl: nl}
	lo, err := nl.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	must(t, nl.LinkSetUp(lo))
	return ns
}

func randomID() string {
	b := make([]byte, 3)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// runner runs commands inside the namespace.
func (ns *testNS) runner() Runner { return nsRunner{path: "/run/netns/" + ns.name} }

type nsRunner struct{ path string }

func (r nsRunner) Run(ctx context.Context, stdin []byte, name string, args ...string) ([]byte, error) {
	return ExecRunner{}.Run(ctx, stdin, "nsenter", append([]string{"--net=" + r.path, "--", name}, args...)...)
}

// sh runs a shell command inside the namespace (sysctls, iptables).
func (ns *testNS) sh(t *testing.T, script string) string {
	t.Helper()
	out, err := ns.runner().Run(context.Background(), nil, "sh", "-c", script)
	if err != nil {
		t.Fatalf("in %s: %s: %v", ns.name, script, err)
	}
	return string(out)
}

// addr puts address p on link name and brings the link up.
func (ns *testNS) addr(t *testing.T, name string, p netip.Prefix) {
	t.Helper()
	link, err := ns.nl.LinkByName(name)
	must(t, err)
	must(t, ns.nl.AddrAdd(link, &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)}}))
	must(t, ns.nl.LinkSetUp(link))
}

// route adds dst via gw in the namespace.
func (ns *testNS) route(t *testing.T, dst netip.Prefix, gw netip.Addr) {
	t.Helper()
	must(t, ns.nl.RouteAdd(&netlink.Route{
		Dst: &net.IPNet{IP: dst.Addr().AsSlice(), Mask: net.CIDRMask(dst.Bits(), 32)},
		Gw:  gw.AsSlice(),
	}))
}

// wire connects a and b with a veth pair aName <-> bName.
func wire(t *testing.T, a *testNS, aName string, b *testNS, bName string) {
	t.Helper()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = aName
	must(t, a.nl.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: bName, PeerNamespace: netlink.NsFd(int(b.h))}))
}

// do runs fn with the calling thread in namespace ns: sockets fn opens
// belong to ns. fn must not start goroutines that open sockets.
func (ns *testNS) do(t *testing.T, fn func()) {
	t.Helper()
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	defer orig.Close()
	if err := netns.Set(ns.h); err != nil {
		runtime.UnlockOSThread()
		t.Fatal(err)
	}
	fn()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: the runtime discards it with the goroutine.
		t.Fatalf("returning from %s: %v", ns.name, err)
	}
	runtime.UnlockOSThread()
}

// whoami serves TCP on addr inside ns: each connection is answered with
// the peer address it came from, so a test sees the source after NAT.
func (ns *testNS) whoami(t *testing.T, addr string) {
	t.Helper()
	var l net.Listener
	var err error
	ns.do(t, func() { l, err = net.Listen("tcp4", addr) })
	if err != nil {
		t.Fatalf("listening on %s in %s: %v", addr, ns.name, err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s\n", c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr())
			c.Close()
		}
	})
	t.Cleanup(func() { l.Close(); wg.Wait() })
}

// dial connects from ns (from local address from, when valid) to to and
// returns the source address the server saw.
func (ns *testNS) dial(t *testing.T, from netip.Addr, to string, timeout time.Duration) (string, error) {
	t.Helper()
	d := net.Dialer{Timeout: timeout}
	if from.IsValid() {
		d.LocalAddr = &net.TCPAddr{IP: from.AsSlice()}
	}
	var c net.Conn
	var err error
	ns.do(t, func() { c, err = d.Dial("tcp4", to) })
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// udpWhoami answers each datagram on addr inside ns with "name source",
// naming the server and the address the datagram came from.
func (ns *testNS) udpWhoami(t *testing.T, addr, name string) {
	t.Helper()
	var pc net.PacketConn
	var err error
	ns.do(t, func() { pc, err = net.ListenPacket("udp4", addr) })
	if err != nil {
		t.Fatalf("listening on udp %s in %s: %v", addr, ns.name, err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 64)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte(name+" "+from.(*net.UDPAddr).AddrPort().Addr().String()), from)
		}
	})
	t.Cleanup(func() { pc.Close(); wg.Wait() })
}

// askUDP sends one datagram from ns (from local port fromPort, 0 for any)
// to to and returns the answer.
func (ns *testNS) askUDP(t *testing.T, fromPort int, to string, timeout time.Duration) (string, error) {
	t.Helper()
	var c net.Conn
	var err error
	d := net.Dialer{LocalAddr: &net.UDPAddr{Port: fromPort}}
	ns.do(t, func() { c, err = d.Dial("udp4", to) })
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("?")); err != nil {
		return "", err
	}
	buf := make([]byte, 64)
	n, err := c.Read(buf)
	return string(buf[:n]), err
}
