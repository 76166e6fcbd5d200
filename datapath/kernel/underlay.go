package kernel

import (
	"fmt"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// handsOnPartial tells whether the underlay passes packets on with their
// checksums unfinished, for the next namespace's stack to trust: a veth
// with transmit checksum offload on. A real NIC finishes them (in hardware
// or, lacking the offload, the kernel in software) before the wire.
func handsOnPartial(l netlink.Link) (bool, error) {
	if l.Type() != "veth" {
		return false, nil
	}
	on, err := txChecksumming(l.Attrs().Name)
	if err != nil {
		return false, fmt.Errorf("reading %s's transmit checksum offload: %w", l.Attrs().Name, err)
	}
	return on, nil
}

// txChecksumming reads ETHTOOL_GTXCSUM of dev.
func txChecksumming(dev string) (bool, error) {
	v, err := ethtool(dev, unix.ETHTOOL_GTXCSUM, 0)
	return v != 0, err
}

// ethtool makes one legacy ethtool request (struct ethtool_value) of dev
// and returns the value it answers.
func ethtool(dev string, cmd, data uint32) (uint32, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	val := struct{ cmd, data uint32 }{cmd, data}
	var ifr struct {
		name [unix.IFNAMSIZ]byte
		data uintptr
		_    [16]byte
	}
	copy(ifr.name[:], dev)
	ifr.data = uintptr(unsafe.Pointer(&val))
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr))); e != 0 {
		return 0, e
	}
	return val.data, nil
}

// MinKernel is the oldest Linux the kernel datapath runs on: TCX links
// (6.6); the programs' helpers are older (bpf_redirect_neigh 5.10,
// bpf_skb_adjust_room's encapsulation flags 5.2).
const MinKernel = "6.6"

// Unsuitable returns why the kernel datapath should not run on this host
// with underlay as its underlay, or "" when nothing speaks against it. It
// does not try to load anything: Open says whether the kernel and the
// privileges allow that.
func Unsuitable(underlay string) string {
	var u unix.Utsname
	if err := unix.Uname(&u); err == nil {
		rel := unix.ByteSliceToString(u.Release[:])
		var major, minor int
		if _, err := fmt.Sscanf(rel, "%d.%d", &major, &minor); err == nil && (major < 6 || major == 6 && minor < 6) {
			return fmt.Sprintf("Linux %s is older than %s (TCX links)", rel, MinKernel)
		}
	}
	l, err := netlink.LinkByName(underlay)
	if err != nil {
		return fmt.Sprintf("underlay %s: %v", underlay, err)
	}
	if t := l.Attrs().EncapType; t != "ether" {
		return fmt.Sprintf("underlay %s is not Ethernet (%s): the programs read and write Ethernet frames there", underlay, t)
	}
	partial, err := handsOnPartial(l)
	if err != nil {
		return err.Error()
	}
	if partial {
		return fmt.Sprintf("underlay %s is a veth with transmit checksum offload on: it hands packets to the other side with checksums unfinished and TCP super-packets whole, which only a peer's kernel path accepts, not a TUN-path host or flanneld (`ethtool -K %s tx off` makes it segment and checksum like a NIC)", underlay, underlay)
	}
	return ""
}
