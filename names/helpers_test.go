package names

import (
	"net"
	"net/netip"
)

type netAddr = net.Addr

func udpFrom(a netip.Addr) net.Addr { return net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, 40000)) }
func tcpFrom(a netip.Addr) net.Addr { return net.TCPAddrFromAddrPort(netip.AddrPortFrom(a, 40000)) }
