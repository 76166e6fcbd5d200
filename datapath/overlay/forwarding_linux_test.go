package overlay

import (
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestEnableForwardingWaitsForDockerd(t *testing.T) {
	var val atomic.Value
	val.Store("0\n")
	read := func() ([]byte, error) { return []byte(val.Load().(string)), nil }
	readOnly := func() error { return errors.New("open /proc/sys/net/ipv4/ip_forward: read-only file system") }

	// dockerd turns it on a moment after the plugin started
	go func() { time.Sleep(300 * time.Millisecond); val.Store("1\n") }()
	start := time.Now()
	if err := enableForwardingWith(read, readOnly, 5*time.Second); err != nil {
		t.Fatalf("forwarding came on after 300 ms, want success: %v", err)
	}
	if d := time.Since(start); d < 250*time.Millisecond || d > 2*time.Second {
		t.Errorf("returned after %v, want soon after forwarding came on", d)
	}

	// nobody turns it on: the error says what to do
	val.Store("0\n")
	err := enableForwardingWith(read, readOnly, 300*time.Millisecond)
	if err == nil {
		t.Fatal("forwarding stayed off, want an error")
	}
	for _, want := range []string{"sysctl -w net.ipv4.ip_forward=1", "read-only", "--ip-forward=false", "nftables"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}

	// writable (unmanaged twilld): written at once, no wait
	wrote := false
	if err := enableForwardingWith(read, func() error { wrote = true; return nil }, time.Hour); err != nil || !wrote {
		t.Errorf("writable ip_forward: err=%v wrote=%v", err, wrote)
	}
}
