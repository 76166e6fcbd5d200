//go:build linux

package firewall

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetlinkConntrack deletes conntrack entries through netlink in one
// network namespace. It opens a socket per call: calls are rare (a UDP
// port map added or removed).
type NetlinkConntrack struct {
	ns netns.NsHandle
}

var _ Conntrack = (*NetlinkConntrack)(nil)

// NewConntrack returns a Conntrack working in ns; netns.None() is the
// current namespace. ns must stay open while it is used.
func NewConntrack(ns netns.NsHandle) *NetlinkConntrack { return &NetlinkConntrack{ns: ns} }

// DeleteFlows implements Conntrack.
func (c *NetlinkConntrack) DeleteFlows(ctx context.Context, match func(Flow) bool) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("deleting conntrack entries: %w", err)
	}
	h, err := netlink.NewHandleAt(c.ns, unix.NETLINK_NETFILTER)
	if err != nil {
		return 0, fmt.Errorf("opening conntrack netlink socket: %w", err)
	}
	defer h.Close()
	n, err := h.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, flowFilter(match))
	if err != nil {
		return int(n), fmt.Errorf("deleting conntrack entries: %w", err)
	}
	return int(n), nil
}

// flowFilter adapts a Flow predicate to netlink's filter interface.
type flowFilter func(Flow) bool

func (m flowFilter) MatchConntrackFlow(f *netlink.ConntrackFlow) bool {
	return m(Flow{
		Proto:    protoName(f.Forward.Protocol),
		OrigSrc:  addrPort(f.Forward.SrcIP, f.Forward.SrcPort),
		OrigDst:  addrPort(f.Forward.DstIP, f.Forward.DstPort),
		ReplySrc: addrPort(f.Reverse.SrcIP, f.Reverse.SrcPort),
		ReplyDst: addrPort(f.Reverse.DstIP, f.Reverse.DstPort),
	})
}

func protoName(p uint8) string {
	switch p {
	case unix.IPPROTO_TCP:
		return "tcp"
	case unix.IPPROTO_UDP:
		return "udp"
	}
	return strconv.Itoa(int(p))
}

func addrPort(ip []byte, port uint16) netip.AddrPort {
	a, _ := netip.AddrFromSlice(ip)
	return netip.AddrPortFrom(a.Unmap(), port)
}

func defaultConntrack() Conntrack { return NewConntrack(netns.None()) }
