package wireguard

import (
	"net/netip"
	"sync"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/tun"
)

// Drop reasons, as the udp datapath names them.
const (
	DropCrossOverlay     = "cross_overlay"     // a packet into the tunnel from outside this host's subnet of the overlay
	DropWrongDestination = "wrong_destination" // a decrypted packet for an address outside this host's subnet
	DropNotIPv4          = "not_ipv4"
	DropMalformed        = "malformed" // a packet from the kernel that is no IPv4/TCP super-packet it should send
)

// filter is the TUN as the WireGuard device sees it. It keeps an encrypted
// overlay to itself, whatever the kernel routes into it: only packets from
// this host's subnet of the overlay to the overlay are encrypted, and only
// packets to this host's subnet are delivered (WireGuard itself has checked
// that the source lies in the sending peer's subnet). Dropped packets are
// counted, never logged.
type filter struct {
	tun.Device
	overlay, local netip.Prefix

	crossOverlay, wrongDest, notIPv4 atomic.Uint64

	wmu     sync.Mutex // every peer's receiver writes; the device behind sees one Write at a time
	scratch [][]byte   // Write's kept packets
}

// Read drops packets by zeroing their size, which the device skips.
func (f *filter) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	n, err := f.Device.Read(bufs, sizes, offset)
	for i := range n {
		p := bufs[i][offset : offset+sizes[i]]
		src, dst, ok := addrs(p)
		switch {
		case !ok:
			f.notIPv4.Add(1)
		case !f.local.Contains(src) || !f.overlay.Contains(dst):
			f.crossOverlay.Add(1)
		default:
			continue
		}
		sizes[i] = 0
	}
	return n, err
}

// Write passes on the packets for this host's subnet.
func (f *filter) Write(bufs [][]byte, offset int) (int, error) {
	f.wmu.Lock()
	defer f.wmu.Unlock()
	keep := f.scratch[:0]
	for _, b := range bufs {
		_, dst, ok := addrs(b[offset:])
		switch {
		case !ok:
			f.notIPv4.Add(1)
		case !f.local.Contains(dst):
			f.wrongDest.Add(1)
		default:
			keep = append(keep, b)
		}
	}
	f.scratch = keep[:0]
	if len(keep) == 0 {
		return len(bufs), nil
	}
	if _, err := f.Device.Write(keep, offset); err != nil {
		return 0, err
	}
	return len(bufs), nil
}

func (f *filter) drops() map[string]uint64 {
	d := map[string]uint64{
		DropCrossOverlay:     f.crossOverlay.Load(),
		DropWrongDestination: f.wrongDest.Load(),
		DropNotIPv4:          f.notIPv4.Load(),
	}
	if t, ok := f.Device.(*tunnel); ok {
		d[DropMalformed] = t.drops()
	}
	return d
}

// addrs returns an IPv4 packet's source and destination.
func addrs(p []byte) (src, dst netip.Addr, ok bool) {
	if len(p) < 20 || p[0]>>4 != 4 {
		return netip.Addr{}, netip.Addr{}, false
	}
	return netip.AddrFrom4([4]byte(p[12:16])), netip.AddrFrom4([4]byte(p[16:20])), true
}
