package testbed

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// RequireNetAdmin skips t unless the process holds CAP_NET_ADMIN and the ip
// command exists (it makes the test's namespaces).
func RequireNetAdmin(t testing.TB) {
	t.Helper()
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skipf("reading capabilities: %v", err)
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		if hexCaps, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(hexCaps), 16, 64)
			if err != nil || caps&(1<<12) == 0 { // CAP_NET_ADMIN = 12
				t.Skip("needs CAP_NET_ADMIN (run as root)")
			}
		}
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs the ip command")
	}
}

// Netns makes a namespace named prefix+<random hex> with `ip netns add` (so
// no goroutine of the test switches namespace), returns its name and an open
// handle, and removes both at the end of the test.
func Netns(t testing.TB, prefix string) (string, netns.NsHandle) {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	name := prefix + hex.EncodeToString(b)
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	ns, err := netns.GetFromName(name)
	if err != nil {
		t.Fatalf("opening netns %s: %v", name, err)
	}
	t.Cleanup(func() { ns.Close() })
	return name, ns
}

// InNetns runs f on a thread in ns and waits for it; the thread ends with
// f, so no other goroutine ever runs in ns by accident.
func InNetns(t testing.TB, ns netns.NsHandle, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		if err := netns.Set(ns); err != nil {
			t.Error(err)
			return
		}
		f()
	}()
	<-done
}

// BPFFS mounts a bpf filesystem of the test's own in a temporary directory
// (named prefix, for whoever lists the mounts meanwhile), unmounted at the
// end, and returns where; it skips t when the kernel refuses. Programs a
// test pins there never reach the machine's /sys/fs/bpf.
func BPFFS(t testing.TB, prefix string) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount(prefix+"-bpf", dir, "bpf", 0, ""); err != nil {
		t.Skipf("mounting a bpf filesystem: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}
