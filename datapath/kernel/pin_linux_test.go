package kernel

import (
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"github.com/twill-net/twill/internal/testbed"
)

// TestTakeOver: programs pinned by one Datapath stay attached when it is
// released (twilld exits or dies) and keep forwarding; the next Datapath
// swaps its programs into the same links, never a second pair beside
// them; Close detaches and unpins, and Remove clears what a twilld that
// will not use the kernel path finds.
func TestTakeOver(t *testing.T) {
	testbed.RequireRoot(t)
	root := testbed.BPFFS(t, "twk")
	name, ns := testbed.Netns(t, "twk")
	if out, err := exec.Command("ip", "-n", name, "link", "add", "twk-tun", "type", "veth", "peer", "name", "twk-ul").CombinedOutput(); err != nil {
		t.Fatalf("ip link add: %v %s", err, out)
	}
	legit := frame("10.199.0.2", 8285, ipv4("10.96.2.2", "10.96.1.2", 17, udp(4000, 5000, []byte("legit"))))
	testbed.InNetns(t, ns, func() {
		dir, err := PinDir(root)
		must(t, err)
		under, err := netlinkIndex("twk-ul")
		must(t, err)
		open := func() *Datapath {
			d, err := Open(Config{TUN: "twk-tun", Underlay: "twk-ul", LocalIP: netip.MustParseAddr("10.199.0.1"), Port: 8285, MTU: 1472, PinDir: dir})
			must(t, err)
			must(t, d.AddOverlay(netip.MustParsePrefix("10.96.0.0/16"), netip.MustParsePrefix("10.96.1.0/24")))
			must(t, d.SetPeer(netip.MustParsePrefix("10.96.2.0/24"), netip.MustParseAddrPort("10.199.0.2:8285")))
			must(t, d.Attach())
			return d
		}
		attached := func() []ebpf.ProgramID {
			t.Helper()
			r, err := link.QueryPrograms(link.QueryOptions{Target: under, Attach: ebpf.AttachTCXIngress})
			must(t, err)
			var ids []ebpf.ProgramID
			for _, p := range r.Programs {
				ids = append(ids, p.ID)
			}
			return ids
		}
		idOf := func(p *ebpf.Program) ebpf.ProgramID {
			t.Helper()
			info, err := p.Info()
			must(t, err)
			id, _ := info.ID()
			return id
		}

		d1 := open()
		if !d1.Pinned() {
			t.Fatal("links not pinned in a bpf filesystem")
		}
		first := idOf(d1.objs.TwillDecap)
		// Released, its program runs on: keep a handle to drive it.
		prog, err := d1.objs.TwillDecap.Clone()
		must(t, err)
		defer prog.Close()
		must(t, d1.Release())
		if ids := attached(); len(ids) != 1 || ids[0] != first {
			t.Fatalf("after Release: programs %v on the underlay, want [%d] still attached", ids, first)
		}
		if ret, err := prog.Run(&ebpf.RunOptions{Data: legit}); err != nil || int32(ret) != actRedirect {
			t.Errorf("released program: verdict %d (%v), want %d: it must forward on its own", int32(ret), err, actRedirect)
		}

		d2 := open()
		second := idOf(d2.objs.TwillDecap)
		if ids := attached(); len(ids) != 1 || ids[0] != second {
			t.Fatalf("after the takeover: programs %v, want only the new one [%d] (old %d)", ids, second, first)
		}
		if ret, err := d2.objs.TwillDecap.Run(&ebpf.RunOptions{Data: legit}); err != nil || int32(ret) != actRedirect {
			t.Errorf("new program: verdict %d (%v), want %d", int32(ret), err, actRedirect)
		}
		must(t, d2.Close())
		if ids := attached(); len(ids) != 0 {
			t.Errorf("after Close: programs %v still attached", ids)
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("after Close: pin directory %s still there (%v)", dir, err)
		}

		d3 := open()
		must(t, d3.Release())
		must(t, Remove(dir, ""))
		if ids := attached(); len(ids) != 0 {
			t.Errorf("after Remove: programs %v still attached", ids)
		}
	})
}

// TestStale: maps that twilld stopped vouching for (gone or frozen past
// Hold) are not used: the datagram goes on to the socket, counted as left
// to the TUN path; vouching again resumes forwarding.
func TestStale(t *testing.T) {
	d := openInNetns(t)
	legit := frame("10.199.0.2", 8285, ipv4("10.96.2.2", "10.96.1.2", 17, udp(4000, 5000, []byte("legit"))))
	verdict := func() int32 {
		ret, err := d.objs.TwillDecap.Run(&ebpf.RunOptions{Data: legit})
		must(t, err)
		return int32(ret)
	}
	if v := verdict(); v != actRedirect {
		t.Fatalf("vouched: verdict %d, want %d", v, actRedirect)
	}
	must(t, d.objs.Alive.Put(uint32(0), uint64(1)))
	if v := verdict(); v != actUnspec {
		t.Errorf("stale: verdict %d, want %d (left to the TUN path)", v, actUnspec)
	}
	s, err := d.Stats()
	must(t, err)
	if s.PassedIn != 1 {
		t.Errorf("stale: passed in %d, want 1", s.PassedIn)
	}
	must(t, d.vouch())
	if v := verdict(); v != actRedirect {
		t.Errorf("vouched again: verdict %d, want %d", v, actRedirect)
	}
}

func netlinkIndex(name string) (int, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return 0, err
	}
	return l.Attrs().Index, nil
}
