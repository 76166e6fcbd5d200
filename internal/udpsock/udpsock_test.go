package udpsock

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// An echo server on loopback: a connected client's datagrams come back,
// batches included; an oversized one is dropped and counted; Close wakes
// the readers at once and later writes fail with net.ErrClosed.
func TestEchoAndClose(t *testing.T) {
	srv, err := Listen(netip.MustParseAddrPort("127.0.0.1:0"), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	addr := srv.LocalAddr()
	if addr.Port() == 0 || addr.Addr() != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("bound to %v", addr)
	}
	var oversized atomic.Int64
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			srv.Serve(16, 512, func(b []byte, from netip.AddrPort) { srv.WriteToUDPAddrPort(b, from) },
				func(err error) {
					if errors.Is(err, ErrOversize) {
						oversized.Add(1)
					}
				})
		}()
	}

	cli, err := Dial(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	got := make(chan string, 200)
	var cwg sync.WaitGroup
	cwg.Add(1)
	go func() {
		defer cwg.Done()
		cli.Serve(8, 1024, func(b []byte, from netip.AddrPort) {
			if from != addr {
				t.Errorf("datagram from %v, want %v", from, addr)
			}
			got <- string(b)
		}, nil)
	}()
	if _, err := cli.Write(make([]byte, 600)); err != nil { // over the server's 512
		t.Fatal(err)
	}
	want := map[string]bool{}
	for i := range 100 {
		m := "datagram " + string(rune('A'+i%26)) + string(rune('a'+i/26))
		want[m] = true
		if _, err := cli.Write([]byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	for range want {
		select {
		case m := <-got:
			if !want[m] {
				t.Fatalf("unexpected %q", m)
			}
			delete(want, m)
		case <-time.After(5 * time.Second):
			t.Fatalf("%d datagrams did not come back", len(want))
		}
	}
	if oversized.Load() != 1 {
		t.Fatalf("oversized datagrams counted: %d, want 1", oversized.Load())
	}

	t0 := time.Now()
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if d := time.Since(t0); d > 100*time.Millisecond {
		t.Errorf("readers took %v to see Close", d)
	}
	if _, err := srv.WriteToUDPAddrPort([]byte("x"), addr); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after Close: %v", err)
	}
	cli.Close()
	cwg.Wait()
}

// IPv6 loopback works the same, and the sender's address comes back as
// given.
func TestIPv6(t *testing.T) {
	srv, err := Listen(netip.MustParseAddrPort("[::1]:0"), 1<<20)
	if err != nil {
		t.Skipf("no IPv6 loopback: %v", err)
	}
	defer srv.Close()
	addr := srv.LocalAddr()
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(addr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	from := make(chan netip.AddrPort, 1)
	go srv.Serve(4, 64, func(b []byte, f netip.AddrPort) {
		from <- f
		srv.WriteToUDPAddrPort(b, f)
	}, nil)
	c.Write([]byte("ping"))
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, 64)
	n, err := c.Read(b)
	if err != nil || string(b[:n]) != "ping" {
		t.Fatalf("%q %v", b[:n], err)
	}
	if f := <-from; f != c.LocalAddr().(*net.UDPAddr).AddrPort() {
		t.Fatalf("sender %v, want %v", f, c.LocalAddr())
	}
}
