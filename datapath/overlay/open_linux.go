package overlay

import (
	"fmt"
	"os"
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

// enableForwarding turns on IPv4 forwarding unless it is on already. Inside a
// managed Docker plugin /proc/sys is read-only; dockerd itself turns
// forwarding on (unless started with --ip-forward=false), so reading first
// avoids a write that would fail for nothing.
func enableForwarding() error {
	const path = "/proc/sys/net/ipv4/ip_forward"
	if b, err := os.ReadFile(path); err == nil && len(b) > 0 && b[0] == '1' {
		return nil
	}
	if err := os.WriteFile(path, []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("enabling ipv4 forwarding: %w: set it on the host with `sysctl -w net.ipv4.ip_forward=1` (and in /etc/sysctl.conf)", err)
	}
	return nil
}
