package names

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"
)

// ResolverOffset places an overlay's resolver: network address + 53, e.g.
// 10.96.0.53 for 10.96.0.0/16. It lies in the overlay's first /24, which
// flannel's default SubnetMin (the network plus one subnet) never leases, so
// it is the same free address on every host.
const ResolverOffset = 53

// ErrResolverLeasable is returned when the overlay's config lets a host
// lease the resolver address.
var ErrResolverLeasable = errors.New("resolver address can be leased")

// ResolverAddr is the resolver address of an overlay whose leases start at
// subnetMin. It fails, naming the fix, when subnetMin is at or below it.
func ResolverAddr(network netip.Prefix, subnetMin netip.Addr) (netip.Addr, error) {
	b := network.Masked().Addr().As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3]) + ResolverOffset
	a := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	if !network.Contains(a) || !a.Less(subnetMin) {
		return netip.Addr{}, fmt.Errorf("overlay %s: its resolver address %s lies in the leased range (SubnetMin %s), so a host could hand it to a container; "+
			"remove SubnetMin from the overlay's config (flannel's default leaves the first subnet free) or set it above %s: %w",
			network, a, subnetMin, a, ErrResolverLeasable)
	}
	return a, nil
}

// HostAddrs tells whether an address is one of this host's, from the
// interface list, cached for a second.
type HostAddrs struct {
	mu    sync.Mutex
	at    time.Time
	addrs map[netip.Addr]bool
}

// Has reports whether a is an address of this host.
func (h *HostAddrs) Has(a netip.Addr) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.addrs == nil || time.Since(h.at) > time.Second {
		h.at = time.Now()
		h.addrs = map[netip.Addr]bool{}
		if as, err := net.InterfaceAddrs(); err == nil {
			for _, x := range as {
				if p, err := netip.ParsePrefix(x.String()); err == nil {
					h.addrs[p.Addr().Unmap()] = true
				}
			}
		}
	}
	return h.addrs[a.Unmap()]
}
