// Package testbed builds throwaway "hosts" for root tests: network namespaces
// on an underlay bridge, processes started inside them, and a real etcd
// server. Everything it makes carries the caller's prefix and is removed in
// t.Cleanup, also when the test fails.
package testbed

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// RequireRoot skips t unless the process can administer network namespaces.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN) for network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2's ip")
	}
}

// Bed is a set of namespaces joined by one underlay bridge that lives in its
// own namespace (<prefix>u), so nothing is added to the root namespace.
type Bed struct {
	t      testing.TB
	Prefix string
	Subnet netip.Prefix // underlay, e.g. 10.199.0.0/24
	hosts  int
}

// New makes the underlay namespace and bridge. prefix must be short (≤ 5
// characters) so derived names stay within 15.
func New(t testing.TB, prefix string, underlay netip.Prefix) *Bed {
	t.Helper()
	RequireRoot(t)
	b := &Bed{t: t, Prefix: prefix, Subnet: underlay}
	ns := prefix + "u"
	b.cleanupNetns(ns)
	Must(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { b.cleanupNetns(ns) })
	Must(t, "ip", "-n", ns, "link", "set", "lo", "up")
	Must(t, "ip", "-n", ns, "link", "add", "br0", "type", "bridge")
	Must(t, "ip", "-n", ns, "link", "set", "br0", "up")
	return b
}

// UnderlayNS is the namespace holding the underlay bridge.
func (b *Bed) UnderlayNS() string { return b.Prefix + "u" }

// Addr returns the underlay address with host number n.
func (b *Bed) Addr(n int) netip.Addr {
	a := b.Subnet.Addr().As4()
	a[3] = byte(n)
	return netip.AddrFrom4(a)
}

// AddHost makes namespace <prefix><name> with interface ul0 on the underlay at
// address number n (and the same number for its veth's name), and returns the
// namespace's name. mtu 0 keeps the default.
func (b *Bed) AddHost(name string, n, mtu int) string {
	t := b.t
	t.Helper()
	ns := b.Prefix + name
	b.cleanupNetns(ns)
	Must(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { b.cleanupNetns(ns) })
	Must(t, "ip", "-n", ns, "link", "set", "lo", "up")
	peer := fmt.Sprintf("ul%d", n)
	Must(t, "ip", "-n", b.UnderlayNS(), "link", "add", peer, "type", "veth", "peer", "name", "ul0", "netns", ns)
	Must(t, "ip", "-n", b.UnderlayNS(), "link", "set", peer, "master", "br0", "up")
	if mtu > 0 {
		Must(t, "ip", "-n", b.UnderlayNS(), "link", "set", peer, "mtu", fmt.Sprint(mtu))
		Must(t, "ip", "-n", ns, "link", "set", "ul0", "mtu", fmt.Sprint(mtu))
	}
	Must(t, "ip", "-n", ns, "addr", "add", netip.PrefixFrom(b.Addr(n), b.Subnet.Bits()).String(), "dev", "ul0")
	Must(t, "ip", "-n", ns, "link", "set", "ul0", "up")
	return ns
}

// AddNS makes a bare namespace <prefix><name> with lo up.
func (b *Bed) AddNS(name string) string {
	ns := b.Prefix + name
	b.cleanupNetns(ns)
	Must(b.t, "ip", "netns", "add", ns)
	b.t.Cleanup(func() { b.cleanupNetns(ns) })
	Must(b.t, "ip", "-n", ns, "link", "set", "lo", "up")
	return ns
}

func (b *Bed) cleanupNetns(ns string) {
	if _, err := os.Stat("/run/netns/" + ns); err != nil {
		return
	}
	// Killing what still runs inside keeps the namespace from lingering.
	if out, err := exec.Command("ip", "netns", "pids", ns).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			var pid int
			fmt.Sscan(f, &pid)
			if pid > 1 {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	exec.Command("ip", "netns", "del", ns).Run()
}

// Must runs a command and fails the test with its output when it fails.
func Must(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// In runs a command inside namespace ns and returns its combined output.
func In(ns string, name string, args ...string) (string, error) {
	a := append([]string{"netns", "exec", ns, name}, args...)
	out, err := exec.Command("ip", a...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("in %s: %s %s: %w: %s", ns, name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// MustIn is In that fails the test on error.
func MustIn(t testing.TB, ns string, name string, args ...string) string {
	t.Helper()
	out, err := In(ns, name, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Proc is a process started in a namespace; Stop ends it by PID.
type Proc struct {
	Cmd  *exec.Cmd
	Log  string
	done chan struct{}
}

// Start runs name with args and env inside ns in the background, output to
// logPath. The process is killed in t.Cleanup if still running.
func Start(t testing.TB, ns, logPath string, env []string, name string, args ...string) *Proc {
	t.Helper()
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	a := append([]string{"netns", "exec", ns, name}, args...)
	cmd := exec.Command("ip", a...) // ip netns exec execs, so the PID is name's
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("starting %s in %s: %v", name, ns, err)
	}
	p := &Proc{Cmd: cmd, Log: logPath, done: make(chan struct{})}
	go func() { cmd.Wait(); f.Close(); close(p.done) }()
	t.Cleanup(func() { p.Kill() })
	return p
}

// Kill sends SIGKILL and waits for the process to end.
func (p *Proc) Kill() { p.Signal(syscall.SIGKILL) }

// Signal sends sig and waits up to 15 s for the process to end.
func (p *Proc) Signal(sig syscall.Signal) {
	select {
	case <-p.done:
		return
	default:
	}
	syscall.Kill(p.Cmd.Process.Pid, sig)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		syscall.Kill(p.Cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
}

// Exited reports whether the process has ended.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Tail returns the last n bytes of the process's log, for failure messages.
func (p *Proc) Tail(n int) string {
	b, _ := os.ReadFile(p.Log)
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// StartEtcd runs Debian's etcd server inside ns listening on addr:port for
// clients, with its data in dir (a new temp dir when empty), and waits until
// it answers. Starting it again on the same dir restarts the same member.
func StartEtcd(t testing.TB, ns string, addr netip.Addr, port int, dir string) (*Proc, string) {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		t.Skip("needs Debian's etcd-server (etcd binary)")
	}
	if dir == "" {
		dir = t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	url := fmt.Sprintf("http://%s:%d", addr, port)
	peer := fmt.Sprintf("http://%s:%d", addr, port+1)
	p := Start(t, ns, filepath.Join(dir, "etcd.log"), []string{"ETCD_UNSUPPORTED_ARCH="}, bin,
		"--name", "twtest", "--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", url, "--advertise-client-urls", url,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "twtest="+peer, "--log-level", "warn")
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := In(ns, "etcdctl", "--endpoints", url, "--dial-timeout", "1s", "endpoint", "health"); err == nil {
			return p, url
		}
		if p.Exited() {
			t.Fatalf("etcd exited: %s", p.Tail(2000))
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("etcd did not start in 20s: %s", p.Tail(2000))
	return nil, ""
}

// WaitFor polls f every 50 ms until it returns nil or timeout passes, and
// returns the last error.
func WaitFor(ctx context.Context, timeout time.Duration, f func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var err error
	for {
		if err = f(); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("after %s: %w", timeout, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// FreePort returns a TCP port free on loopback in the root namespace (good
// enough as a unique number for in-namespace listeners too).
func FreePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// EtcdMember is one member of a test etcd cluster, restartable on its data.
type EtcdMember struct {
	Name, NS, URL string
	Proc          *Proc
	args          []string
	dir           string
}

// StartEtcdCluster runs one etcd member per address, each in its own
// namespace (made with b.AddHost as "e1", "e2", ... at host numbers nums),
// and waits until the cluster answers. It returns the members and the
// comma-separated client URLs.
func (b *Bed) StartEtcdCluster(t testing.TB, nums []int) ([]*EtcdMember, string) {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		t.Skip("needs Debian's etcd-server (etcd binary)")
	}
	var initial, urls []string
	ms := make([]*EtcdMember, len(nums))
	for i, n := range nums {
		a := b.Addr(n)
		ms[i] = &EtcdMember{Name: fmt.Sprintf("e%d", i+1), URL: fmt.Sprintf("http://%s:2379", a)}
		initial = append(initial, fmt.Sprintf("%s=http://%s:2380", ms[i].Name, a))
		urls = append(urls, ms[i].URL)
	}
	for i, n := range nums {
		m := ms[i]
		m.NS = b.AddHost(m.Name, n, 0)
		m.dir = filepath.Join(t.TempDir(), m.Name)
		os.MkdirAll(m.dir, 0o700)
		peer := fmt.Sprintf("http://%s:2380", b.Addr(n))
		m.args = []string{bin, "--name", m.Name, "--data-dir", filepath.Join(m.dir, "data"),
			"--listen-client-urls", m.URL, "--advertise-client-urls", m.URL,
			"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", "new", "--log-level", "warn"}
		m.Start(t)
	}
	all := strings.Join(urls, ",")
	err = WaitFor(context.Background(), 30*time.Second, func() error {
		_, err := In(ms[0].NS, "etcdctl", "--endpoints", all, "--dial-timeout", "1s", "endpoint", "health", "--cluster")
		return err
	})
	if err != nil {
		t.Fatalf("etcd cluster not healthy: %v", err)
	}
	return ms, all
}

// Start (re)starts the member on its data directory.
func (m *EtcdMember) Start(t testing.TB) {
	m.Proc = Start(t, m.NS, filepath.Join(m.dir, "etcd.log"), []string{"ETCD_UNSUPPORTED_ARCH="}, m.args[0], m.args[1:]...)
}
