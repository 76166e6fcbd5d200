package overlay

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/twill-net/twill/internal/tundev"
)

// tunDevice is the kernel TUN. Its fd is non-blocking and parked in Go's
// netpoller, so Close wakes a pending Read.
type tunDevice struct {
	name  string
	file  *os.File
	rc    syscall.RawConn
	vnet  bool
	index int

	// Read state: the closures are built once so reads allocate nothing.
	rbuf   []byte
	rn     int
	rerr   syscall.Errno
	readFn func(fd uintptr)
	ready  readyWait
	waitFn func(fd uintptr) bool

	wiov    []unix.Iovec
	wcnt    int
	werr    syscall.Errno
	writeFn func(fd uintptr) bool
}

var _ TUN = (*tunDevice)(nil)

// openTUN creates the TUN name with mtu and brings it up. With offload it
// asks for IFF_VNET_HDR and TSO/checksum offload and falls back to a plain
// TUN when the kernel refuses.
func openTUN(name string, mtu int, offload bool) (*tunDevice, error) {
	var (
		t   *tunDevice
		err error
	)
	if offload {
		t, err = createTUN(name, true)
		if err != nil {
			t = nil // refused: plain below
		}
	}
	if t == nil {
		if t, err = createTUN(name, false); err != nil {
			return nil, err
		}
	}
	link, err := netlink.LinkByName(t.name)
	if err == nil {
		err = netlink.LinkSetMTU(link, mtu)
	}
	if err == nil {
		err = netlink.LinkSetUp(link)
	}
	if err != nil {
		t.Close()
		return nil, fmt.Errorf("setting up tun %s: %w", t.name, err)
	}
	t.index = link.Attrs().Index
	return t, nil
}

func createTUN(name string, vnet bool) (*tunDevice, error) {
	d, err := tundev.Create(name, vnet, tundev.OffloadCsum|tundev.OffloadTSO4)
	if err != nil {
		return nil, err
	}
	t := &tunDevice{name: d.Name, file: d.File, rc: d.RC, vnet: vnet, wiov: make([]unix.Iovec, 1+tundev.MaxRun+1)}
	t.readFn, t.waitFn = t.doRead, t.ready.check
	t.writeFn = t.doWrite
	return t, nil
}

func (t *tunDevice) Name() string  { return t.name }
func (t *tunDevice) VnetHdr() bool { return t.vnet }

// The fd is non-blocking, so these system calls never sleep in the kernel;
// RawSyscall spares the scheduler hand-off of a blocking call per packet.
func (t *tunDevice) doRead(fd uintptr) {
	n, _, e := unix.RawSyscall(unix.SYS_READ, fd, uintptr(unsafe.Pointer(&t.rbuf[0])), uintptr(len(t.rbuf)))
	t.rn, t.rerr = int(n), e
}

func (t *tunDevice) TryRead(b []byte) (int, error) {
	t.rbuf = b
	// Control, not Read: it does not take the fd's read lock, which a
	// WaitRead in the other loop holds while it sleeps.
	if err := t.rc.Control(t.readFn); err != nil {
		return 0, fmt.Errorf("reading tun %s: %w", t.name, err)
	}
	switch t.rerr {
	case 0:
		return t.rn, nil
	case unix.EAGAIN, unix.EINTR:
		return 0, nil
	}
	return 0, fmt.Errorf("reading tun %s: %w", t.name, t.rerr)
}

func (t *tunDevice) WaitRead() error {
	t.ready.reset()
	if err := t.rc.Read(t.waitFn); err != nil {
		return fmt.Errorf("reading tun %s: %w", t.name, err)
	}
	return nil
}

func (t *tunDevice) doWrite(fd uintptr) bool {
	_, _, e := unix.RawSyscall(unix.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&t.wiov[0])), uintptr(t.wcnt))
	if e == unix.EAGAIN || e == unix.EINTR {
		return false
	}
	t.werr = e
	return true
}

func (t *tunDevice) Write(bufs [][]byte) error {
	n := 0
	for _, b := range bufs {
		if len(b) == 0 {
			continue
		}
		if n == len(t.wiov) {
			return fmt.Errorf("writing tun %s: %d buffers: %w", t.name, len(bufs), unix.EMSGSIZE)
		}
		t.wiov[n].Base = &b[0]
		t.wiov[n].SetLen(len(b))
		n++
	}
	if n == 0 {
		return nil
	}
	t.wcnt = n
	if err := t.rc.Write(t.writeFn); err != nil {
		return fmt.Errorf("writing tun %s: %w", t.name, err)
	}
	if t.werr != 0 {
		return t.werr // not wrapped: counted by the caller, and the hot path allocates nothing
	}
	return nil
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func (t *tunDevice) link() netlink.Link {
	return &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: t.name, Index: t.index}}
}

func (t *tunDevice) AddOverlay(overlay, local netip.Prefix) error {
	addr := netip.PrefixFrom(local.Addr(), 32)
	if err := netlink.AddrReplace(t.link(), &netlink.Addr{IPNet: ipNet(addr)}); err != nil {
		return fmt.Errorf("adding address %s to %s: %w", addr, t.name, err)
	}
	r := &netlink.Route{LinkIndex: t.index, Dst: ipNet(overlay), Src: local.Addr().AsSlice(), Scope: netlink.SCOPE_LINK}
	if err := netlink.RouteReplace(r); err != nil {
		return fmt.Errorf("adding route %s dev %s: %w", overlay, t.name, err)
	}
	return nil
}

func (t *tunDevice) RemoveOverlay(overlay, local netip.Prefix) error {
	r := &netlink.Route{LinkIndex: t.index, Dst: ipNet(overlay), Scope: netlink.SCOPE_LINK}
	if err := netlink.RouteDel(r); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("removing route %s dev %s: %w", overlay, t.name, err)
	}
	addr := netip.PrefixFrom(local.Addr(), 32)
	if err := netlink.AddrDel(t.link(), &netlink.Addr{IPNet: ipNet(addr)}); err != nil &&
		!errors.Is(err, unix.EADDRNOTAVAIL) && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("removing address %s from %s: %w", addr, t.name, err)
	}
	return nil
}

// SetPersist makes the device outlive this fd (TUNSETPERSIST): its
// addresses, routes and attached programs stay when twilld exits or dies,
// and the next twilld's openTUN attaches to it again.
func (t *tunDevice) SetPersist(on bool) error {
	v := 0
	if on {
		v = 1
	}
	var err error
	if cerr := t.rc.Control(func(fd uintptr) { err = unix.IoctlSetInt(int(fd), unix.TUNSETPERSIST, v) }); cerr != nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("tun %s: TUNSETPERSIST %d: %w", t.name, v, err)
	}
	return nil
}

// Close closes the fd; the kernel deletes a non-persistent TUN with it.
func (t *tunDevice) Close() error {
	if err := t.file.Close(); err != nil && !errors.Is(err, os.ErrClosed) {
		return fmt.Errorf("closing tun %s: %w", t.name, err)
	}
	return nil
}
