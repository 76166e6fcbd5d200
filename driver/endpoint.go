package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	netapi "github.com/docker/go-plugins-helpers/network"

	"github.com/twill-net/twill/internal/store"
)

// macFor derives an endpoint's MAC from its address the way Docker's bridge
// driver does (02:42 + the IPv4 address), so a container that comes back
// with the same address has the same MAC and peers' ARP caches stay right.
func macFor(a netip.Addr) net.HardwareAddr {
	b := a.As4()
	return net.HardwareAddr{0x02, 0x42, b[0], b[1], b[2], b[3]}
}

// CreateEndpoint records the endpoint with the address the IPAM gave it. It
// answers the MAC (derived from the address) when Docker did not give one.
func (d *Driver) CreateEndpoint(ctx context.Context, req *netapi.CreateEndpointRequest) (*netapi.CreateEndpointResponse, error) {
	if req.EndpointID == "" {
		return nil, fmt.Errorf("CreateEndpoint without EndpointID: %w", ErrBadRequest)
	}
	if req.Interface == nil || req.Interface.Address == "" {
		return nil, fmt.Errorf("endpoint %s: no IPv4 address: %w: twill networks need --ipam-driver %s", shortID(req.EndpointID), ErrBadRequest, d.cfg.PluginName)
	}
	if req.Interface.AddressIPv6 != "" {
		return nil, fmt.Errorf("endpoint %s: twill does not support IPv6 yet: create the network without --ipv6", shortID(req.EndpointID))
	}
	addr, err := netip.ParsePrefix(req.Interface.Address)
	if err != nil || !addr.Addr().Is4() {
		return nil, fmt.Errorf("endpoint %s: address %q: %w", shortID(req.EndpointID), req.Interface.Address, ErrBadRequest)
	}
	resp := &netapi.CreateEndpointResponse{}
	mac := req.Interface.MacAddress
	if mac == "" {
		mac = macFor(addr.Addr()).String()
		// Docker refuses an answer that repeats what it sent, so only the
		// MAC it left empty goes back.
		resp.Interface = &netapi.EndpointInterface{MacAddress: mac}
	} else if _, err := net.ParseMAC(mac); err != nil {
		return nil, fmt.Errorf("endpoint %s: mac address %q: %w", shortID(req.EndpointID), mac, ErrBadRequest)
	}
	e := &endpoint{ID: req.EndpointID, Network: req.NetworkID, Address: addr, MAC: mac}

	d.mu.Lock()
	n, ok := d.networks[req.NetworkID]
	if !ok {
		d.mu.Unlock()
		return nil, d.unknownNetwork(req.NetworkID)
	}
	if !n.Subnet.Contains(addr.Addr()) {
		d.mu.Unlock()
		return nil, fmt.Errorf("endpoint %s: address %s is outside network %s's subnet %s: %w", shortID(e.ID), addr.Addr(), shortID(n.ID), n.Subnet, ErrBadRequest)
	}
	if old, ok := d.endpoints[e.ID]; ok {
		d.mu.Unlock()
		if old.Network == e.Network && old.Address == e.Address && old.MAC == e.MAC {
			return resp, nil // a retry after a lost answer
		}
		return nil, fmt.Errorf("endpoint %s already exists on network %s with address %s", shortID(e.ID), shortID(old.Network), old.Address)
	}
	for _, other := range d.endpoints {
		if hostVeth(other.ID) == hostVeth(e.ID) {
			d.mu.Unlock()
			return nil, fmt.Errorf("endpoint %s: veth name %s: %w (endpoint %s): restart the container to get another endpoint ID", e.ID, hostVeth(e.ID), ErrNameClash, other.ID)
		}
	}
	d.endpoints[e.ID] = e
	pending := d.store.Submit(endpointPut(e))
	d.mu.Unlock()
	if err := pending.Wait(); err != nil {
		d.mu.Lock()
		delete(d.endpoints, e.ID)
		d.mu.Unlock()
		return nil, fmt.Errorf("recording endpoint %s: %w", shortID(e.ID), err)
	}
	d.log.Info("endpoint created", "network", n.ID, "endpoint", e.ID, "address", addr, "mac", mac)
	return resp, nil
}

func (d *Driver) unknownNetwork(id string) error {
	return fmt.Errorf("network %s is %w (its state was lost, or it was made while twill was disabled): remove and re-create the network", shortID(id), ErrUnknownNetwork)
}

func (d *Driver) unknownEndpoint(id string) error {
	return fmt.Errorf("endpoint %s is %w: restart the container", shortID(id), ErrUnknownEndpoint)
}

// lookup returns the endpoint and its network. d.mu held.
func (d *Driver) lookup(networkID, endpointID string) (*network, *endpoint, error) {
	n, ok := d.networks[networkID]
	if !ok {
		return nil, nil, d.unknownNetwork(networkID)
	}
	e, ok := d.endpoints[endpointID]
	if !ok || e.Network != networkID {
		return nil, nil, d.unknownEndpoint(endpointID)
	}
	return n, e, nil
}

// EndpointOperInfo reports the endpoint's published ports, in the shape
// Docker's bridge driver uses for com.docker.network.portmap. An unknown
// endpoint has no information: an error here would only break inspect.
func (d *Driver) EndpointOperInfo(ctx context.Context, req *netapi.InfoRequest) (map[string]any, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	info := map[string]any{}
	_, e, err := d.lookup(req.NetworkID, req.EndpointID)
	if err != nil {
		return info, nil
	}
	if len(e.Ports) > 0 {
		info[optPortMap] = dockerPortMap(e.Ports)
	}
	return info, nil
}

// Join creates the endpoint's veth pair on the network's bridge and tells
// Docker to move the peer into the container as eth*, with the gateway and
// a route to the whole overlay through it.
func (d *Driver) Join(ctx context.Context, req *netapi.JoinRequest) (*netapi.JoinResponse, error) {
	d.mu.Lock()
	n, e, err := d.lookup(req.NetworkID, req.EndpointID)
	if err != nil {
		d.mu.Unlock()
		return nil, err
	}
	var pending *store.Pending
	if !e.Joined {
		e.Joined = true
		pending = d.store.Submit(endpointPut(e))
	}
	d.mu.Unlock()
	if pending != nil {
		if err := pending.Wait(); err != nil {
			return nil, fmt.Errorf("recording join of endpoint %s: %w", shortID(e.ID), err)
		}
	}
	mac, err := net.ParseMAC(e.MAC)
	if err != nil {
		return nil, fmt.Errorf("endpoint %s: persisted mac %q: %w", shortID(e.ID), e.MAC, err)
	}
	host, peer := hostVeth(e.ID), peerVeth(e.ID)
	if err := d.links.AddVeth(ctx, host, peer, n.Bridge, n.MTU, mac); err != nil {
		// The bridge may have been removed behind twill's back: converge
		// the network once and try again.
		if eerr := d.ensureNetwork(ctx, n); eerr != nil {
			if lerr := d.Leave(ctx, &netapi.LeaveRequest{NetworkID: n.ID, EndpointID: e.ID}); lerr != nil {
				d.log.Warn("undoing failed join", "endpoint", e.ID, "err", lerr)
			}
			return nil, fmt.Errorf("creating veth %s for endpoint %s on bridge %s: %w (and re-creating the bridge: %w)", host, shortID(e.ID), n.Bridge, err, eerr)
		}
		if err := d.links.AddVeth(ctx, host, peer, n.Bridge, n.MTU, mac); err != nil {
			if lerr := d.Leave(ctx, &netapi.LeaveRequest{NetworkID: n.ID, EndpointID: e.ID}); lerr != nil {
				d.log.Warn("undoing failed join", "endpoint", e.ID, "err", lerr)
			}
			return nil, fmt.Errorf("creating veth %s for endpoint %s on bridge %s: %w", host, shortID(e.ID), n.Bridge, err)
		}
		d.log.Warn("bridge was missing; re-created it", "network", n.ID, "bridge", n.Bridge)
	}
	resp := &netapi.JoinResponse{
		InterfaceName: netapi.InterfaceName{SrcName: peer, DstPrefix: "eth"},
		Gateway:       n.Gateway.String(),
	}
	// A route equal to the interface's own subnet makes the container fail
	// to start ("file exists"), so it is only added for a wider overlay.
	if n.Overlay.Bits() < n.Subnet.Bits() {
		resp.StaticRoutes = []*netapi.StaticRoute{{Destination: n.Overlay.String(), RouteType: 0, NextHop: n.Gateway.String()}}
	}
	d.log.Debug("endpoint joined", "network", n.ID, "endpoint", e.ID, "veth", host)
	return resp, nil
}

// Leave records that the endpoint left its sandbox. Docker moves the peer
// back to the host; DeleteEndpoint removes the pair.
func (d *Driver) Leave(ctx context.Context, req *netapi.LeaveRequest) error {
	d.mu.Lock()
	_, e, err := d.lookup(req.NetworkID, req.EndpointID)
	if err != nil {
		d.mu.Unlock()
		if errors.Is(err, ErrUnknownEndpoint) || errors.Is(err, ErrUnknownNetwork) {
			return nil
		}
		return err
	}
	var pending *store.Pending
	if e.Joined {
		e.Joined = false
		pending = d.store.Submit(endpointPut(e))
	}
	d.mu.Unlock()
	if pending != nil {
		if err := pending.Wait(); err != nil {
			return fmt.Errorf("recording leave of endpoint %s: %w", shortID(e.ID), err)
		}
	}
	return nil
}

// DeleteEndpoint removes the endpoint's published ports and veth pair. An
// unknown endpoint is success.
func (d *Driver) DeleteEndpoint(ctx context.Context, req *netapi.DeleteEndpointRequest) error {
	d.mu.Lock()
	e, ok := d.endpoints[req.EndpointID]
	if !ok {
		d.mu.Unlock()
		return nil
	}
	n := d.networks[e.Network] // nil when the network is gone too
	delete(d.endpoints, e.ID)
	pending := d.store.Submit(endpointDelete(e.ID))
	d.mu.Unlock()
	if err := pending.Wait(); err != nil {
		return fmt.Errorf("forgetting endpoint %s: %w", shortID(e.ID), err)
	}
	if err := d.removeEndpoint(ctx, n, e); err != nil {
		return fmt.Errorf("deleting endpoint %s: %w", shortID(e.ID), err)
	}
	d.log.Info("endpoint deleted", "network", e.Network, "endpoint", e.ID)
	return nil
}

// removeEndpoint undoes e's kernel state: port maps, then the veth pair.
// n may be nil when the network is already forgotten.
func (d *Driver) removeEndpoint(ctx context.Context, n *network, e *endpoint) error {
	var errs []error
	if n != nil {
		errs = append(errs, d.unpublish(ctx, n, e.Ports))
	}
	if err := d.links.DeleteVeth(ctx, hostVeth(e.ID)); err != nil {
		errs = append(errs, fmt.Errorf("removing veth %s: %w", hostVeth(e.ID), err))
	}
	return errors.Join(errs...)
}
