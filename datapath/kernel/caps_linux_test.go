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
		if err := helperOpen(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// helperOpen does what twilld does, twice: open with the GRO stage and the
// links pinned in $TWK_BPFFS, attach, and release (the programs stay); then
// open again, take the pinned links over, and close.
func helperOpen() error {
	cfg := Config{TUN: "twk-tun", Underlay: "twk-ul", LocalIP: netip.MustParseAddr("10.199.0.1"), Port: 8285, MTU: 1472, GRO: "twkg"}
	dir, err := PinDir(os.Getenv("TWK_BPFFS"))
	if err != nil {
		return err
	}
	cfg.PinDir = dir
	for _, last := range []bool{false, true} {
		d, err := Open(cfg)
		if err != nil {
			return err
		}
		switch err := d.Attach(); {
		case err != nil:
			d.Close()
			return err
		case d.gro == nil:
			d.Close()
			return fmt.Errorf("no GRO stage (see the log above)")
		case !d.Pinned():
			d.Close()
			return fmt.Errorf("links not pinned")
		}
		if last {
			return d.Close()
		}
		d.Release()
	}
	return nil
}

// TestCapabilities proves which capabilities the kernel datapath needs (the
// managed plugin's config.json asks for them): with the plugin's others
// (CAP_NET_ADMIN, CAP_NET_RAW) but without CAP_BPF loading fails; with
// CAP_BPF added it works — the GRO veth pair, the links pinned in a bpf
// filesystem and taken over by a second Open — CAP_SYS_ADMIN not needed.
func TestCapabilities(t *testing.T) {
	testbed.RequireRoot(t)
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("needs setpriv (util-linux)")
	}
	name, _ := testbed.Netns(t, "twk")
	if out, err := exec.Command("ip", "-n", name, "link", "add", "twk-tun", "type", "veth", "peer", "name", "twk-ul").CombinedOutput(); err != nil {
		t.Fatalf("ip link add: %v %s", err, out)
	}
	root := testbed.BPFFS(t, "twk")
	open := func(caps string) (string, error) {
		cmd := exec.Command("ip", "netns", "exec", name, "setpriv", "--bounding-set", "-all,"+caps,
			"--inh-caps", "-all", os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "TWK_HELPER=open", "TWK_BPFFS="+root)
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
