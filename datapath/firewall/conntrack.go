package firewall

import (
	"context"
	"net/netip"
)

// Flow is one connection-tracking entry: the addresses of the original
// direction and of the expected reply. A DNATed flow has ReplySrc (the
// container) differ from OrigDst (the host address).
type Flow struct {
	Proto              string // "tcp", "udp", or the protocol number
	OrigSrc, OrigDst   netip.AddrPort
	ReplySrc, ReplyDst netip.AddrPort
}

// Conntrack deletes connection-tracking entries. UDP has no connection to
// end, so without it a client that keeps sending from one port stays bound
// to what its first datagram met: no DNAT if it came before the port was
// published, the old container after the map was removed.
type Conntrack interface {
	// DeleteFlows deletes the IPv4 entries for which match is true and
	// returns how many went.
	DeleteFlows(ctx context.Context, match func(Flow) bool) (int, error)
}

// staleBeforePublish matches UDP flows to hostPort (on hostIP, when set)
// that were not translated at all: they began before the port was
// published. (Without a host address this may also catch an untranslated
// flow of this host to another host's port of that number; deleting it
// costs that flow nothing but a new entry.)
func staleBeforePublish(pm PortMap) func(Flow) bool {
	return func(f Flow) bool {
		return f.Proto == pm.Proto && f.OrigDst.Port() == pm.HostPort &&
			(!hostIPSet(pm.HostIP) || f.OrigDst.Addr() == pm.HostIP) &&
			f.ReplySrc == f.OrigDst && f.ReplyDst == f.OrigSrc
	}
}

// staleAfterUnpublish matches flows to hostPort that were translated to
// the container of a removed port map.
func staleAfterUnpublish(pm PortMap) func(Flow) bool {
	return func(f Flow) bool {
		return f.Proto == pm.Proto && f.OrigDst.Port() == pm.HostPort &&
			(!hostIPSet(pm.HostIP) || f.OrigDst.Addr() == pm.HostIP) &&
			f.ReplySrc == pm.Container
	}
}
