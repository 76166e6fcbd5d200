package overlay

import (
	"fmt"
	"os"
	"time"
)

// Open creates the TUN (cfg.Name, default twill0) and the UDP socket on
// cfg.PublicIP:cfg.Port, enables IPv4 forwarding, and returns a forwarder
// on them. With Offload "auto" each offload the kernel refuses falls back
// to the plain path on its own; Stats().Path tells which is active.
func Open(cfg Config) (*Forwarder, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	offload := cfg.Offload == OffloadAuto
	tun, err := openTUN(cfg.Name, cfg.MTU, offload)
	if err != nil {
		return nil, err
	}
	conn, err := listenUDP(cfg.PublicIP, cfg.Port, cfg.SocketBuffer, offload)
	if err != nil {
		tun.Close()
		return nil, err
	}
	if err := enableForwarding(); err != nil {
		tun.Close()
		conn.Close()
		return nil, err
	}
	f, err := New(cfg, tun, conn)
	if err != nil {
		tun.Close()
		conn.Close()
		return nil, err
	}
	return f, nil
}

// forwardingWait is how long Open waits for someone else to turn IPv4
// forwarding on when it cannot itself.
const forwardingWait = 20 * time.Second

// enableForwarding turns on IPv4 forwarding unless it is on already. Inside a
// managed Docker plugin /proc/sys is read-only; dockerd turns forwarding on
// itself, but only after it started its plugins (Docker 20.10 and 29 alike)
// and not at all with --ip-forward=false or, in Docker 29, with
// "firewall-backend": "nftables". So when the write fails it waits a while
// for forwarding to come on, then fails saying what to do.
func enableForwarding() error {
	const path = "/proc/sys/net/ipv4/ip_forward"
	return enableForwardingWith(func() ([]byte, error) { return os.ReadFile(path) },
		func() error { return os.WriteFile(path, []byte("1\n"), 0o644) }, forwardingWait)
}

func enableForwardingWith(read func() ([]byte, error), write func() error, wait time.Duration) error {
	on := func() bool { b, err := read(); return err == nil && len(b) > 0 && b[0] == '1' }
	if on() {
		return nil
	}
	err := write()
	if err == nil {
		return nil
	}
	for deadline := time.Now().Add(wait); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if on() {
			return nil
		}
	}
	return fmt.Errorf("net.ipv4.ip_forward is 0 and twill cannot turn it on (%w); it stayed 0 for %s: "+
		"set it on the host with `sysctl -w net.ipv4.ip_forward=1` (and in /etc/sysctl.d), then restart twill "+
		"(Docker turns it on itself unless dockerd runs with --ip-forward=false or \"firewall-backend\": \"nftables\")", err, wait)
}
