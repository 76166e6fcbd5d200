package kernel

import (
	"net/netip"
	"os/exec"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/twill-net/twill/internal/testbed"
)

// TestGROStage: Open makes the GRO veth pair ready (TSO off where
// decapsulated segments leave, GRO on where they are merged, the MTU of
// twill0), twill_gro on the merging end passes IPv4 on into twill0 and
// drops the rest, a second Open reuses the pair, Close deletes it.
func TestGROStage(t *testing.T) {
	testbed.RequireRoot(t)
	name, ns := testbed.Netns(t, "twk")
	if out, err := exec.Command("ip", "-n", name, "link", "add", "twk-tun", "type", "veth", "peer", "name", "twk-ul").CombinedOutput(); err != nil {
		t.Fatalf("ip link add: %v %s", err, out)
	}
	cfg := Config{TUN: "twk-tun", Underlay: "twk-ul", LocalIP: netip.MustParseAddr("10.199.0.1"), Port: 8285, MTU: 1472, GRO: "twkg"}
	testbed.InNetns(t, ns, func() {
		d, err := Open(cfg)
		must(t, err)
		must(t, d.Attach())
		if v, err := ethtool("twkg0", unix.ETHTOOL_GTSO, 0); err != nil || v != 0 {
			t.Errorf("twkg0 TSO %d (%v), want off", v, err)
		}
		if v, err := ethtool("twkg1", unix.ETHTOOL_GGRO, 0); err != nil || v != 1 {
			t.Errorf("twkg1 GRO %d (%v), want on", v, err)
		}
		rx, err := netlink.LinkByName("twkg1")
		must(t, err)
		if rx.Attrs().MTU != cfg.MTU || rx.Attrs().Flags&unix.IFF_UP == 0 {
			t.Errorf("twkg1: mtu %d, flags %v; want %d and up", rx.Attrs().MTU, rx.Attrs().Flags, cfg.MTU)
		}
		r, err := link.QueryPrograms(link.QueryOptions{Target: rx.Attrs().Index, Attach: ebpf.AttachTCXIngress})
		must(t, err)
		info, err := d.objs.TwillGro.Info()
		must(t, err)
		id, _ := info.ID()
		if len(r.Programs) != 1 || r.Programs[0].ID != id {
			t.Errorf("programs on twkg1's ingress %v, want twill_gro (%d)", r.Programs, id)
		}
		v4 := append([]byte{0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 2, 0x08, 0x00}, ipv4("10.96.2.2", "10.96.1.2", 17, udp(1, 2, []byte("x")))...)
		v6 := append([]byte{0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 2, 0x86, 0xdd}, make([]byte, 48)...)
		for _, c := range []struct {
			name  string
			frame []byte
			want  int32
		}{{"IPv4", v4, actRedirect}, {"IPv6", v6, actShot}} {
			ret, err := d.objs.TwillGro.Run(&ebpf.RunOptions{Data: c.frame})
			must(t, err)
			if int32(ret) != c.want {
				t.Errorf("twill_gro, %s: verdict %d, want %d", c.name, int32(ret), c.want)
			}
		}
		must(t, d.Close())

		tx0, err := netlink.LinkByName("twkg0")
		if err == nil {
			t.Fatalf("twkg0 still there after Close: %v", tx0.Attrs())
		}
		d, err = Open(cfg)
		must(t, err)
		a, err := netlink.LinkByName("twkg0")
		must(t, err)
		d.Release()
		d, err = Open(cfg)
		must(t, err)
		b, err := netlink.LinkByName("twkg0")
		must(t, err)
		if a.Attrs().Index != b.Attrs().Index {
			t.Errorf("the pair was made anew (ifindex %d, then %d); a restart must keep it", a.Attrs().Index, b.Attrs().Index)
		}
		must(t, d.Close())
	})
}
