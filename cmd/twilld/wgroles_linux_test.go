package main

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// captureSummary is what the capture role saw on the underlay.
type captureSummary struct {
	UDP    map[int]int // datagrams by the lower of their two ports
	Types  map[int]int // WireGuard message type of datagrams to or from the port
	NotWG  int         // datagrams to or from the port that are no WireGuard message
	Marker int         // frames holding the marker, anywhere
	Saved  int         // transport messages to the saved address, written to the file
}

// roleCapture reads every frame on every interface of its namespace (an
// AF_PACKET socket, as tcpdump -i any) for a duration and summarises the UDP
// datagrams: capture DURATION MARKER PORT SAVE-DST FILE. Transport messages
// (type 4) sent to SAVE-DST:PORT are written to FILE, one hex line each,
// for the replay role.
func roleCapture(args []string) int {
	d, _ := time.ParseDuration(args[0])
	marker := []byte(args[1])
	port, _ := strconv.Atoi(args[2])
	save := netip.MustParseAddr(args[3])
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_ALL)))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer unix.Close(fd)
	// Each frame comes behind a virtio_net_hdr: a UDP GSO train (WireGuard
	// sends those) is seen once, unsegmented, and its gso_size says where
	// each datagram ends.
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	tv := unix.NsecToTimeval((100 * time.Millisecond).Nanoseconds())
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	out, err := os.Create(args[4])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer out.Close()
	s := captureSummary{UDP: map[int]int{}, Types: map[int]int{}}
	buf := make([]byte, 1<<16)
	fmt.Println("listening")
	for end := time.Now().Add(d); time.Now().Before(end); {
		n, from, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			continue
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue // each frame once: as it arrives on some interface
		}
		if n < 10 {
			continue
		}
		gsoType, gsoSize := buf[1], int(binary.LittleEndian.Uint16(buf[4:]))
		f := buf[10:n]
		if bytes.Contains(f, marker) {
			s.Marker++
		}
		if len(f) < 14+20+8 || binary.BigEndian.Uint16(f[12:]) != unix.ETH_P_IP {
			continue
		}
		ip := f[14:]
		ihl := int(ip[0]&0xf) * 4
		if ip[9] != syscall.IPPROTO_UDP || len(ip) < ihl+8 {
			continue
		}
		udp := ip[ihl:]
		sp, dp := int(binary.BigEndian.Uint16(udp)), int(binary.BigEndian.Uint16(udp[2:]))
		payload := udp[8:]
		seg := len(payload)
		if gsoType == unix.VIRTIO_NET_HDR_GSO_UDP_L4 && gsoSize > 0 {
			seg = gsoSize
		}
		for len(payload) > 0 {
			d := payload[:min(seg, len(payload))]
			payload = payload[len(d):]
			s.UDP[min(sp, dp)]++
			if sp != port && dp != port {
				continue
			}
			if t, ok := wgType(d); ok {
				s.Types[t]++
				if t == 4 && dp == port && netip.AddrFrom4([4]byte(ip[16:20])) == save {
					fmt.Fprintln(out, hex.EncodeToString(d))
					s.Saved++
				}
			} else {
				s.NotWG++
			}
		}
	}
	b, _ := json.Marshal(s)
	fmt.Println(string(b))
	return 0
}

// wgType is a datagram's WireGuard message type: 1 initiation (148 bytes),
// 2 response (92), 3 cookie reply (64), 4 transport data (≥ 32: header,
// padded ciphertext, tag), each followed by three zero bytes.
func wgType(p []byte) (int, bool) {
	if len(p) < 4 || p[1] != 0 || p[2] != 0 || p[3] != 0 {
		return 0, false
	}
	switch t := int(p[0]); {
	case t == 1 && len(p) == 148, t == 2 && len(p) == 92, t == 3 && len(p) == 64, t == 4 && len(p) >= 32:
		return t, true
	}
	return 0, false
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// roleWGReplay sends every saved datagram of FILE three times to TARGET,
// then COUNT forged messages of each type: wgreplay TARGET FILE COUNT.
func roleWGReplay(args []string) int {
	c, err := net.Dial("udp", args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	b, err := os.ReadFile(args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	count, _ := strconv.Atoi(args[2])
	sent := 0
	for _, line := range strings.Fields(string(b)) {
		p, err := hex.DecodeString(line)
		if err != nil {
			continue
		}
		for range 3 {
			c.Write(p)
			sent++
		}
		time.Sleep(time.Millisecond)
	}
	for i := range count {
		for _, size := range []int{148, 92, 64, 32 + 16*(i%8)} {
			p := make([]byte, size)
			for j := range p {
				p[j] = byte(rand.Uint32())
			}
			p[0], p[1], p[2], p[3] = byte(map[int]int{148: 1, 92: 2, 64: 3}[size]), 0, 0, 0
			if p[0] == 0 {
				p[0] = 4
			}
			c.Write(p)
			sent++
		}
	}
	fmt.Println(sent)
	return 0
}

// roleMarker sends TEXT in five UDP datagrams to UDPADDR and 100 times over
// one TCP connection to TCPADDR: marker UDPADDR TCPADDR TEXT.
func roleMarker(args []string) int {
	u, err := net.Dial("udp", args[0])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	for range 5 {
		u.Write([]byte(args[2]))
	}
	var c net.Conn
	for range 50 { // the sink may still be starting
		if c, err = net.DialTimeout("tcp", args[1], 2*time.Second); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Close()
	if _, err := c.Write([]byte(strings.Repeat(args[2]+"\n", 100))); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}
