package main

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"strconv"
	"testing"
	"time"
)

// TestMain lets the test binary play the parts a root test starts inside a
// namespace: the daemon itself, and small traffic tools.
func TestMain(m *testing.M) {
	switch os.Getenv("TWILL_TEST_ROLE") {
	case "":
		os.Exit(m.Run())
	case "twilld":
		os.Exit(daemon(os.Args[1:]))
	case "sink":
		os.Exit(roleSink(os.Args[1]))
	case "source":
		n, _ := strconv.ParseInt(os.Args[2], 10, 64)
		os.Exit(roleSource(os.Args[1], n))
	case "udpsink":
		os.Exit(roleUDPSink(os.Args[1], os.Args[2]))
	case "udpsend":
		count, _ := strconv.Atoi(os.Args[2])
		size, _ := strconv.Atoi(os.Args[3])
		gap, _ := time.ParseDuration(os.Args[4])
		os.Exit(roleUDPSend(os.Args[1], count, size, gap))
	case "forge":
		os.Exit(roleForge(os.Args[1:]))
	case "capture":
		os.Exit(roleCapture(os.Args[1:]))
	case "marker":
		os.Exit(roleMarker(os.Args[1:]))
	case "wgreplay":
		os.Exit(roleWGReplay(os.Args[1:]))
	case "dnsupstream":
		os.Exit(roleDNSUpstream(os.Args[1]))
	case "dnsquery":
		os.Exit(roleDNSQuery(os.Args[1], os.Args[2], os.Args[3]))
	default:
		fmt.Fprintln(os.Stderr, "unknown TWILL_TEST_ROLE")
		os.Exit(2)
	}
}

// roleSink accepts one TCP connection on addr and prints the byte count and
// sha256 of everything it reads.
func roleSink(addr string) int {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("listening")
	c, err := ln.Accept()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Printf("%d %x\n", n, h.Sum(nil))
	return 0
}

// roleSource sends n pseudo-random bytes to addr and prints the count and sha256.
func roleSource(addr string, n int64) int {
	var c net.Conn
	var err error
	for i := 0; i < 50; i++ { // the sink may still be starting
		if c, err = net.DialTimeout("tcp", addr, 2*time.Second); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	h := sha256.New()
	r := rand.New(rand.NewPCG(uint64(n), 7))
	buf := make([]byte, 64<<10)
	var sent int64
	for sent < n {
		k := int64(len(buf))
		if n-sent < k {
			k = n - sent
		}
		for i := 0; i < int(k); i += 8 {
			binary.LittleEndian.PutUint64(buf[i:], r.Uint64())
		}
		if _, err := c.Write(buf[:k]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		h.Write(buf[:k])
		sent += k
	}
	c.Close()
	fmt.Printf("%d %x\n", sent, h.Sum(nil))
	return 0
}

// roleForge sends tunnel datagrams to target (IP:port) whose payloads claim
// to be IPv4/UDP packets from src to dst:port, plus malformed ones:
// forge TARGET SRC DST DSTPORT COUNT
func roleForge(args []string) int {
	target := args[0]
	src := netip.MustParseAddr(args[1])
	dst := netip.MustParseAddr(args[2])
	port, _ := strconv.Atoi(args[3])
	count, _ := strconv.Atoi(args[4])
	c, err := net.Dial("udp", target)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	pkt := ipv4UDP(src, dst, uint16(port), []byte("forged payload"))
	for i := 0; i < count; i++ {
		c.Write(pkt)
		c.Write(pkt[:10])                        // truncated
		c.Write([]byte{0x60, 0, 0, 0, 0, 8, 17}) // IPv6 version nibble
		c.Write(make([]byte, 3))                 // garbage
	}
	return 0
}

// ipv4UDP builds an IPv4 packet carrying one UDP datagram.
func ipv4UDP(src, dst netip.Addr, port uint16, payload []byte) []byte {
	p := make([]byte, 28+len(payload))
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	p[8] = 64
	p[9] = 17
	s, d := src.As4(), dst.As4()
	copy(p[12:16], s[:])
	copy(p[16:20], d[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(p[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(p[10:], ^uint16(sum))
	binary.BigEndian.PutUint16(p[20:], 40000)
	binary.BigEndian.PutUint16(p[22:], port)
	binary.BigEndian.PutUint16(p[24:], uint16(8+len(payload)))
	copy(p[28:], payload)
	return p
}

// roleUDPSink receives datagrams on addr for duration and prints how many
// arrived and the longest silence between two of them, in milliseconds.
func roleUDPSink(addr, duration string) int {
	d, _ := time.ParseDuration(duration)
	c, err := net.ListenPacket("udp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("listening")
	c.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 65536)
	var n int
	var last time.Time
	var worst time.Duration
	for {
		if _, _, err := c.ReadFrom(buf); err != nil {
			break
		}
		now := time.Now()
		if n > 0 && now.Sub(last) > worst {
			worst = now.Sub(last)
		}
		last = now
		n++
	}
	fmt.Printf("%d %d\n", n, worst.Milliseconds())
	return 0
}

// roleUDPSend sends count UDP datagrams of size payload bytes to addr, gap
// apart (0: a short pause every 50, so that none is lost to a full queue).
// The socket is unconnected, so ICMP port unreachable from the far end, or
// a host that is down for a moment, is not an error.
func roleUDPSend(addr string, count, size int, gap time.Duration) int {
	c, err := net.ListenPacket("udp", ":0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	dst, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	buf := make([]byte, max(size, 8))
	for i := 0; i < count; i++ {
		binary.BigEndian.PutUint64(buf, uint64(i))
		c.WriteTo(buf[:size], dst)
		switch {
		case gap > 0:
			time.Sleep(gap)
		case i%50 == 49:
			time.Sleep(2 * time.Millisecond)
		}
	}
	return 0
}
