package testbed

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
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
