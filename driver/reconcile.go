package driver

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
)

// Vanished is a joined endpoint whose veth is gone: its container stopped
// while twill could not answer (killed, or disabled with -f), so Docker's
// Leave, DeleteEndpoint and ReleaseAddress never arrived. Whoever can ask
// Docker (cmd, outside any plugin request) decides whether to delete it and
// release Address.
type Vanished struct {
	EndpointID string
	NetworkID  string
	Address    netip.Prefix
}

// Report is what Reconcile did.
type Report struct {
	Networks     int        // networks whose bridge and rules were re-ensured
	Endpoints    int        // endpoints known
	Published    int        // port maps re-added
	RemovedLinks []string   // tw-*/twv* links no network or endpoint owns
	Vanished     []Vanished // joined endpoints without their veth
}

// Reconcile converges the kernel with the persisted state after a start:
// it re-ensures every network's bridge and firewall rules and every
// published port, removes twill links nothing owns, and reports joined
// endpoints whose veth vanished. It never calls Docker. It keeps going
// after a failure and returns every error joined.
func (d *Driver) Reconcile(ctx context.Context) (Report, error) {
	d.mu.Lock()
	networks := make([]network, 0, len(d.networks))
	for _, n := range d.networks {
		networks = append(networks, *n)
	}
	type epCopy struct {
		endpoint
		ports []PortMap
	}
	endpoints := make([]epCopy, 0, len(d.endpoints))
	for _, e := range d.endpoints {
		endpoints = append(endpoints, epCopy{endpoint: *e, ports: append([]PortMap(nil), e.Ports...)})
	}
	d.mu.Unlock()
	sort.Slice(networks, func(i, j int) bool { return networks[i].ID < networks[j].ID })
	sort.Slice(endpoints, func(i, j int) bool { return endpoints[i].ID < endpoints[j].ID })

	rep := Report{Endpoints: len(endpoints)}
	var errs []error
	bridges := map[string]*network{}
	for i := range networks {
		n := &networks[i]
		bridges[n.Bridge] = n
		if err := d.ensureNetwork(ctx, n); err != nil {
			errs = append(errs, err)
			continue
		}
		rep.Networks++
	}
	owned := map[string]bool{}
	for _, e := range endpoints {
		owned[hostVeth(e.ID)] = true
		n, ok := d.networkByID(networks, e.Network)
		if !ok {
			continue
		}
		if err := d.publish(ctx, n, e.ports); err != nil {
			errs = append(errs, fmt.Errorf("endpoint %s: %w", shortID(e.ID), err))
			continue
		}
		rep.Published += len(e.ports)
	}

	names, err := d.links.LinkNames(ctx, BridgePrefix)
	if err != nil {
		errs = append(errs, fmt.Errorf("listing bridges: %w", err))
	}
	for _, name := range names {
		if _, ok := bridges[name]; ok {
			continue
		}
		if err := d.links.DeleteBridge(ctx, name); err != nil {
			errs = append(errs, fmt.Errorf("removing bridge %s that no network owns: %w", name, err))
			continue
		}
		rep.RemovedLinks = append(rep.RemovedLinks, name)
	}

	names, err = d.links.LinkNames(ctx, HostVethPrefix)
	if err != nil {
		return rep, errors.Join(append(errs, fmt.Errorf("listing veths: %w", err))...)
	}
	present := map[string]bool{}
	for _, name := range names {
		present[name] = true
		if owned[name] {
			continue
		}
		if err := d.links.DeleteVeth(ctx, name); err != nil {
			errs = append(errs, fmt.Errorf("removing veth %s that no endpoint owns: %w", name, err))
			continue
		}
		rep.RemovedLinks = append(rep.RemovedLinks, name)
	}
	for _, e := range endpoints {
		if e.Joined && !present[hostVeth(e.ID)] {
			rep.Vanished = append(rep.Vanished, Vanished{EndpointID: e.ID, NetworkID: e.Network, Address: e.Address})
		}
	}
	d.log.Info("reconciled with the kernel", "networks", rep.Networks, "endpoints", rep.Endpoints,
		"published", rep.Published, "removed_links", rep.RemovedLinks, "vanished_endpoints", len(rep.Vanished))
	return rep, errors.Join(errs...)
}

func (d *Driver) networkByID(networks []network, id string) (*network, bool) {
	for i := range networks {
		if networks[i].ID == id {
			return &networks[i], true
		}
	}
	return nil, false
}
