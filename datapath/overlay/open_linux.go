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
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644); err != nil {
		tun.Close()
		conn.Close()
		return nil, fmt.Errorf("enabling ipv4 forwarding: %w", err)
	}
	f, err := New(cfg, tun, conn)
	if err != nil {
		tun.Close()
		conn.Close()
		return nil, err
	}
	return f, nil
}
