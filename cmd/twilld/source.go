package main

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/twill-net/twill/datapath/wireguard"
	"github.com/twill-net/twill/internal/control"
	"github.com/twill-net/twill/internal/subnet"
)

// The node is twillctl's control.Source.
var _ control.Source = (*node)(nil)

func (n *node) Status(ctx context.Context) (control.Status, error) {
	st := n.stats()
	host, _ := os.Hostname()
	s := control.Status{
		Hostname: host, PublicIP: n.publicIP.String(), Port: int(n.cfg.Port), Underlay: n.under.Name,
		MTU: n.mtu, Datapath: n.datapath(), Offload: st.Path, StartedAt: n.started, UptimeSecond: time.Since(n.started).Seconds(),
		Etcd: strings.Join(n.cli.Endpoints(), ","),
	}
	if n.etcd != nil {
		s.Etcd += " (embedded)"
	}
	s.BusyPoll = "off"
	if n.cfg.BusyPoll > 0 {
		s.BusyPoll = fmt.Sprintf("%v, %d spells", n.cfg.BusyPoll, st.BusyPollSpells)
	}
	hctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if _, err := n.cli.Get(hctx, n.cfg.EtcdPrefix+"/config"); err != nil {
		s.EtcdError = err.Error()
		n.metrics.EtcdError("health")
	} else {
		s.EtcdHealthy = true
	}
	def := n.leases.Default()
	for _, l := range n.leases.Leases() {
		addr, state := n.names.resolverView(l.Overlay)
		s.Overlays = append(s.Overlays, control.OverlayLease{Network: l.Overlay.String(), Subnet: l.Subnet.String(), Expiry: l.Expiration, Default: l.Overlay == def,
			Encrypted: n.enc.describe(l.Overlay), Resolver: addr, ResolverState: state})
	}
	return s, nil
}

// Leases shows every host's lease; the other hosts' expiry is etcd's to
// tell, so each of their leases' TTL is asked for.
func (n *node) Leases(ctx context.Context) ([]control.Lease, error) {
	return n.leaseViews(func(l subnet.Lease) time.Time {
		if l.EtcdLease == 0 {
			return time.Time{}
		}
		tctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		resp, err := n.cli.TimeToLive(tctx, clientv3.LeaseID(l.EtcdLease))
		if err != nil || resp.TTL <= 0 {
			return time.Time{}
		}
		return time.Now().Add(time.Duration(resp.TTL) * time.Second)
	}), nil
}

// leaseViews lists every host's lease. This host's carry their expiry; the
// others' come from othersExpiry, when given.
func (n *node) leaseViews(othersExpiry func(subnet.Lease) time.Time) []control.Lease {
	own := map[netip.Prefix]subnet.Lease{}
	for _, l := range n.leases.Leases() {
		own[l.Subnet] = l
	}
	var out []control.Lease
	for _, l := range n.leases.AllLeases() {
		o, self := own[l.Subnet]
		exp := o.Expiration
		if !self && othersExpiry != nil {
			exp = othersExpiry(l)
		}
		out = append(out, control.Lease{
			Network: l.Overlay.String(), Subnet: l.Subnet.String(), PublicIP: l.Attrs.PublicIP.String(),
			BackendType: l.Attrs.BackendType, Expiry: exp, Self: self,
			Flanneld: l.Attrs.BackendType != "" && l.Attrs.BackendType != "udp" && l.Attrs.BackendType != wireguard.Type,
		})
	}
	return out
}

func (n *node) Peers(ctx context.Context) (control.Peers, error) { return n.peerViews(), nil }

func (n *node) peerViews() control.Peers {
	st := n.stats()
	p := control.Peers{Drops: maps.Clone(st.Drops)}
	if p.Drops == nil {
		p.Drops = map[string]uint64{}
	}
	for _, x := range st.Peers {
		p.Peers = append(p.Peers, control.Peer{
			Subnet: x.Subnet.String(), Addr: x.Addr.String(), PacketsIn: x.PacketsIn, PacketsOut: x.PacketsOut,
			BytesIn: x.BytesIn, BytesOut: x.BytesOut, LastSeen: x.LastSeen,
		})
	}
	p.Peers = append(p.Peers, n.enc.views(p.Drops)...)
	return p
}

func (n *node) Networks(ctx context.Context) ([]control.Network, error) {
	var out []control.Network
	for _, x := range n.drv.Networks() {
		out = append(out, control.Network{ID: x.ID, Bridge: x.Bridge, Overlay: x.Overlay.String(), Subnet: x.Subnet.String(),
			Gateway: x.Gateway.String(), Internal: x.Internal, MTU: x.MTU, Endpoints: x.Endpoints})
	}
	return out, nil
}

func (n *node) Endpoints(ctx context.Context) ([]control.Endpoint, error) {
	var out []control.Endpoint
	for _, x := range n.drv.Endpoints() {
		ports := []string{}
		for _, p := range x.Ports {
			ports = append(ports, p.String())
		}
		out = append(out, control.Endpoint{ID: x.ID, Network: x.Network, Address: x.Address.String(), MAC: x.MAC, Veth: x.Veth, Ports: ports})
	}
	return out, nil
}

func (n *node) Leave(ctx context.Context) error {
	n.log.Info("leaving: revoking this host's leases")
	return n.leases.Release(ctx)
}

// allocations counts held addresses per subnet (one per Docker network on
// this host), for metrics.
func (n *node) allocations() map[string]int {
	out := map[string]int{}
	for _, a := range n.ipam.Allocations() {
		out[a.Subnet.String()]++
	}
	return out
}
