package driver

import (
	"net/netip"
	"sort"
)

// NetworkInfo is a read-only view of one network, for twillctl and metrics.
type NetworkInfo struct {
	ID        string
	Bridge    string
	Overlay   netip.Prefix
	Subnet    netip.Prefix
	Gateway   netip.Addr
	MTU       int
	Internal  bool
	Endpoints int
}

// EndpointInfo is a read-only view of one endpoint.
type EndpointInfo struct {
	ID      string
	Network string
	Address netip.Prefix
	MAC     string
	Veth    string // host end
	Joined  bool
	Ports   []PortMap
}

// Networks lists the networks this host has, sorted by ID.
func (d *Driver) Networks() []NetworkInfo {
	d.mu.Lock()
	defer d.mu.Unlock()
	count := map[string]int{}
	for _, e := range d.endpoints {
		count[e.Network]++
	}
	out := make([]NetworkInfo, 0, len(d.networks))
	for id, n := range d.networks {
		out = append(out, NetworkInfo{ID: id, Bridge: n.Bridge, Overlay: n.Overlay, Subnet: n.Subnet,
			Gateway: n.Gateway, MTU: n.MTU, Internal: n.Internal, Endpoints: count[id]})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Endpoints lists the endpoints this host has, sorted by network then ID.
func (d *Driver) Endpoints() []EndpointInfo {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]EndpointInfo, 0, len(d.endpoints))
	for id, e := range d.endpoints {
		out = append(out, EndpointInfo{ID: id, Network: e.Network, Address: e.Address, MAC: e.MAC,
			Veth: hostVeth(id), Joined: e.Joined, Ports: append([]PortMap(nil), e.Ports...)})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Network != out[j].Network {
			return out[i].Network < out[j].Network
		}
		return out[i].ID < out[j].ID
	})
	return out
}
