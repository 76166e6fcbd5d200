package wireguard

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/twill-net/twill/internal/csum/csumtest"
	"github.com/twill-net/twill/internal/testbed"
)

// tcpChecksumOK checks an IPv4/TCP packet's header and TCP checksums the
// slow way (RFC 1071, one word at a time).
func tcpChecksumOK(p []byte) error {
	ihl := int(p[0]&0x0f) * 4
	if got := binary.BigEndian.Uint16(p[2:4]); int(got) != len(p) {
		return fmt.Errorf("total length %d, packet %d", got, len(p))
	}
	if csumtest.Sum(0, p[:ihl]) != 0xffff {
		return fmt.Errorf("bad IPv4 header checksum")
	}
	if p[9] != unix.IPPROTO_TCP {
		return nil
	}
	ps := uint64(unix.IPPROTO_TCP + len(p) - ihl)
	if csumtest.Sum(ps, p[12:20], p[ihl:]) != 0xffff {
		return fmt.Errorf("bad TCP checksum (seq %d, %d bytes)", binary.BigEndian.Uint32(p[ihl+4:]), len(p))
	}
	return nil
}

// pump moves packets from one tunnel to the other as wireguard-go would:
// Read into 64 KB message buffers at offset 16, each packet copied into a
// buffer of its own (decryption), Write at offset 16. Every packet read
// must be a whole, correctly checksummed IPv4 packet no larger than mtu.
type pump struct {
	segs, batches, multi, written atomic.Uint64
	err                           atomic.Pointer[error]
}

func (p *pump) run(from, to *tunnel, mtu, batch int) {
	const offset = 16
	bufs, out, w := make([][]byte, batch), make([][]byte, batch), make([][]byte, 0, batch)
	for i := range bufs {
		bufs[i], out[i] = make([]byte, 65535), make([]byte, 65535)
	}
	sizes := make([]int, batch)
	fail := func(err error) { p.err.CompareAndSwap(nil, &err) }
	for {
		n, err := from.Read(bufs, sizes, offset)
		if err != nil {
			return // closed
		}
		p.batches.Add(1)
		if n > 1 {
			p.multi.Add(1)
		}
		w = w[:0]
		for i := range n {
			pkt := bufs[i][offset : offset+sizes[i]]
			if len(pkt) == 0 || pkt[0]>>4 != 4 {
				continue // the kernel's own IPv6 chatter: the filter's to drop
			}
			if len(pkt) > mtu {
				fail(fmt.Errorf("read a %d-byte packet, mtu %d", len(pkt), mtu))
			} else if err := tcpChecksumOK(pkt); err != nil {
				fail(err)
			}
			w = append(w, out[len(w)][:offset+copy(out[len(w)][offset:], pkt)])
		}
		p.segs.Add(uint64(n))
		if len(w) > 0 {
			if _, err := to.Write(w, offset); err != nil {
				fail(err)
			}

			p.written.Add(uint64(len(w)))
		}
	}
}

// TestTunnelCarriesTCPIntact: two namespaces joined only by two tunnels
// and a pump. Bulk TCP both ways (one flow with a smaller MSS, so reads
// laid out otherwise than expected are repaired) arrives byte for byte;
// every packet read is a correct segment no larger than the MTU, super-
// packets were split (batches of several packets) and the receiving side
// took fewer packets than were written (coalesced runs).
func TestTunnelCarriesTCPIntact(t *testing.T) {
	testbed.RequireRoot(t)
	const mtu = 1420
	_, nsA := testbed.Netns(t, "twgt")
	_, nsB := testbed.Netns(t, "twgt")
	overlay := netip.MustParsePrefix("10.77.0.0/16")
	var ta, tb *tunnel
	open := func(ns netns.NsHandle, name, local string, tp **tunnel) {
		testbed.InNetns(t, ns, func() {
			tu, err := openTunnel(name, mtu)
			if err != nil {
				t.Error(err)
				return
			}
			*tp = tu
			if err := routeTUN(name, overlay, netip.MustParsePrefix(local)); err != nil {
				t.Error(err)
			}
		})
		if *tp == nil {
			t.FailNow()
		}
		t.Cleanup(func() { (*tp).Close() })
	}
	open(nsA, "twgta", "10.77.1.1/24", &ta)
	open(nsB, "twgtb", "10.77.2.1/24", &tb)
	if t.Failed() {
		t.FailNow()
	}
	var ab, ba pump
	go ab.run(ta, tb, mtu, 128)
	go ba.run(tb, ta, mtu, 64) // fewer buffers: a second super-packet rarely fits

	var ln net.Listener
	testbed.InNetns(t, nsB, func() {
		var err error
		if ln, err = net.Listen("tcp4", "10.77.2.1:0"); err != nil {
			t.Error(err)
		}
	})
	if ln == nil {
		t.FailNow()
	}
	defer ln.Close()

	// Each flow sends size random bytes and gets its sha256 back, then the
	// server sends back as much and the client checks it too.
	const size = 24 << 20
	flow := func(mss int) error {
		var c net.Conn
		var err error
		testbed.InNetns(t, nsA, func() {
			d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
				var serr error
				if mss > 0 {
					rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_MAXSEG, mss) })
				}
				return serr
			}}
			c, err = d.Dial("tcp4", ln.Addr().String())
		})
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(60 * time.Second))
		data := make([]byte, size)
		rand.Read(data)
		want := sha256.Sum256(data)
		if _, err := c.Write(data); err != nil {
			return fmt.Errorf("mss %d: sending: %w", mss, err)
		}
		got := make([]byte, sha256.Size)
		if _, err := io.ReadFull(c, got); err != nil {
			return fmt.Errorf("mss %d: reading the server's sum: %w", mss, err)
		}
		if !bytes.Equal(got, want[:]) {
			return fmt.Errorf("mss %d: server got other bytes", mss)
		}
		back := make([]byte, size)
		if _, err := io.ReadFull(c, back); err != nil {
			return fmt.Errorf("mss %d: reading back: %w", mss, err)
		}
		if sha256.Sum256(back) != want {
			return fmt.Errorf("mss %d: came back altered", mss)
		}
		return nil
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(60 * time.Second))
				data := make([]byte, size)
				if _, err := io.ReadFull(c, data); err != nil {
					return
				}
				s := sha256.Sum256(data)
				c.Write(s[:])
				c.Write(data)
			}()
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for _, mss := range []int{0, 900} {
		wg.Go(func() { errs <- flow(mss) })
	}
	wg.Wait()
	close(errs)

	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	for name, p := range map[string]*pump{"a→b": &ab, "b→a": &ba} {
		if e := p.err.Load(); e != nil {
			t.Errorf("%s: %v", name, *e)
		}
		t.Logf("%s: %d packets in %d reads (%d of several)", name, p.segs.Load(), p.batches.Load(), p.multi.Load())
		if p.multi.Load() == 0 {
			t.Errorf("%s: no read returned more than one packet: no super-packet was split", name)
		}
	}
	var rx uint64
	testbed.InNetns(t, nsB, func() {
		l, err := netlink.LinkByName("twgtb")
		if err != nil {
			t.Error(err)
			return
		}
		rx = l.Attrs().Statistics.RxPackets
	})
	t.Logf("b's tunnel: %d packets written, %d received by the kernel", ab.written.Load(), rx)
	if rx == 0 || rx*2 > ab.written.Load() {
		t.Errorf("b's kernel took %d packets of %d written: writes were not coalesced", rx, ab.written.Load())
	}
	for _, tu := range []*tunnel{ta, tb} {
		if m := tu.drops(); m != 0 {
			t.Errorf("%s dropped %d packets as malformed", tu.name, m)
		}
	}
}
