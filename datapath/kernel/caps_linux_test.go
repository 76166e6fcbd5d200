package kernel

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"testing"

	"github.com/twill-net/twill/internal/testbed"
)

// TestMain lets TestCapabilities re-exec this binary as a small helper
// that opens the datapath with a reduced capability set.
func TestMain(m *testing.M) {
	if os.Getenv("TWK_HELPER") == "open" {
		d, err := Open(Config{TUN: "twk-tun", Underlay: "twk-ul", LocalIP: netip.MustParseAddr("10.199.0.1"), Port: 8285, MTU: 1472})
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		d.Close()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestCapabilities proves which capabilities the kernel datapath needs (the
// managed plugin's config.json asks for them): with the plugin's others
// (CAP_NET_ADMIN, CAP_NET_RAW) but without CAP_BPF loading fails; with
// CAP_BPF added it works, CAP_SYS_ADMIN not needed.
func TestCapabilities(t *testing.T) {
	testbed.RequireRoot(t)
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("needs setpriv (util-linux)")
	}
	name, _ := testbed.Netns(t, "twk")
	if out, err := exec.Command("ip", "-n", name, "link", "add", "twk-tun", "type", "veth", "peer", "name", "twk-ul").CombinedOutput(); err != nil {
		t.Fatalf("ip link add: %v %s", err, out)
	}
	open := func(caps string) (string, error) {
		cmd := exec.Command("ip", "netns", "exec", name, "setpriv", "--bounding-set", "-all,"+caps,
			"--inh-caps", "-all", os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "TWK_HELPER=open")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := open("+net_admin,+net_raw"); err == nil {
		t.Errorf("opened without CAP_BPF (%s); the capability would be unnecessary", out)
	}
	if out, err := open("+net_admin,+net_raw,+bpf"); err != nil {
		t.Errorf("with CAP_NET_ADMIN, CAP_NET_RAW and CAP_BPF: %v %s", err, out)
	}
	if out, err := open("+net_raw,+bpf"); err == nil {
		t.Errorf("opened without CAP_NET_ADMIN (%s); the capability would be unnecessary for it", out)
	}
}
