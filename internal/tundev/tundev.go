// Package tundev creates the Linux TUN devices the datapaths forward
// through: a non-blocking fd parked in Go's netpoller (so Close wakes a
// pending read), optionally with the virtio_net_hdr before every packet and
// the kernel's TCP segmentation and checksum offloads; and it splits and
// merges the TCP segments those offloads hand over and take.
package tundev

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/twill-net/twill/internal/csum"
)

// The virtio_net_hdr that precedes every packet on a TUN opened with vnet
// (include/uapi/linux/virtio_net.h; little endian on every platform twill
// runs on).
const (
	VnetHdrLen    = 10
	VnetNeedsCsum = 1 // flags: the checksum at CsumStart+CsumOffset is to be completed
	VnetGSONone   = 0
	VnetGSOTCPv4  = 1
	VnetGSOECN    = 0x80
)

// TUNSETOFFLOAD flags (include/uapi/linux/if_tun.h; not in x/sys/unix).
const (
	OffloadCsum = 0x01
	OffloadTSO4 = 0x02
)

// ErrOffloadRefused is wrapped when the kernel refuses the vnet header or
// the offloads: a plain TUN still works.
var ErrOffloadRefused = errors.New("tun offloads refused")

// Device is an open TUN.
type Device struct {
	Name string // as the kernel named it
	File *os.File
	RC   syscall.RawConn
}

// Create creates (or attaches to a persistent) TUN name. With vnet it
// asks for the virtio_net_hdr and offloads (OffloadCsum, OffloadTSO4).
func Create(name string, vnet bool, offloads int) (Device, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return Device{}, fmt.Errorf("opening /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return Device{}, fmt.Errorf("tun name %q: %w", name, err)
	}
	flags := uint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if vnet {
		flags |= unix.IFF_VNET_HDR
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		if vnet {
			err = fmt.Errorf("%w (%w)", err, ErrOffloadRefused)
		}
		return Device{}, fmt.Errorf("creating tun %s: %w", name, err)
	}
	if vnet {
		if err := unix.IoctlSetInt(fd, unix.TUNSETOFFLOAD, offloads); err != nil {
			unix.Close(fd)
			return Device{}, fmt.Errorf("enabling offloads on tun %s: %w (%w)", name, err, ErrOffloadRefused)
		}
	}
	f := os.NewFile(uintptr(fd), "/dev/net/tun")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return Device{}, fmt.Errorf("tun %s: %w", name, err)
	}
	return Device{Name: ifr.Name(), File: f, RC: rc}, nil
}

// Coalescable reports whether pkt is an IPv4 TCP data segment a GSO write
// to the TUN may merge with its neighbours: no IP options or fragments,
// flags ACK or ACK|PSH, some payload. hl is its IPv4+TCP header length.
func Coalescable(pkt []byte) (hl int, ok bool) {
	const ipv4, tcp = 20, 20
	if len(pkt) < ipv4+tcp || pkt[0] != 0x45 || pkt[9] != 6 {
		return 0, false
	}
	if binary.BigEndian.Uint16(pkt[6:8])&0x3fff != 0 { // MF or a fragment offset
		return 0, false
	}
	thl := int(pkt[ipv4+12]>>4) * 4
	hl = ipv4 + thl
	if thl < tcp || len(pkt) <= hl || pkt[ipv4+13]&^flagPSH != flagACK {
		return 0, false
	}
	return hl, true
}

// TCP flags Segment and Coalescable look at.
const (
	flagFIN = 0x01
	flagPSH = 0x08
	flagACK = 0x10
	flagCWR = 0x80
)

// Segment writes into h the IPv4 and TCP headers of segment i of a TSO
// super-packet, as the kernel would: tmpl is the super-packet's headers
// (ihl bytes of IPv4, then TCP; h is as long), p segment i's payload, mss
// the payload of every segment before it and last the index of the last
// one. The IPv4 ID and the sequence number count on, CWR stays on the
// first segment and FIN and PSH on the last, and both checksums are
// complete (the TCP one over h and p).
func Segment(h, tmpl []byte, ihl int, p []byte, i, last, mss int) {
	copy(h, tmpl)
	binary.BigEndian.PutUint16(h[2:4], uint16(len(tmpl)+len(p)))
	binary.BigEndian.PutUint16(h[4:6], binary.BigEndian.Uint16(tmpl[4:6])+uint16(i))
	csum.SetIPv4(h[:ihl])
	t := h[ihl:]
	binary.BigEndian.PutUint32(t[4:8], binary.BigEndian.Uint32(tmpl[ihl+4:ihl+8])+uint32(i*mss))
	f := tmpl[ihl+13]
	if i > 0 {
		f &^= flagCWR
	}
	if i < last {
		f &^= flagFIN | flagPSH
	}
	t[13] = f
	t[16], t[17] = 0, 0
	s := csum.Pseudo(h, unix.IPPROTO_TCP, len(t)+len(p))
	s = csum.Add(p, csum.Add(t, s)) // t's length is a multiple of 4
	binary.BigEndian.PutUint16(t[16:18], ^csum.Fold(s))
}
