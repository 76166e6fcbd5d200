package driver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"

	netapi "github.com/docker/go-plugins-helpers/network"

	"github.com/twill-net/twill/internal/store"
)

// dockerPortBinding is one element of com.docker.network.portmap exactly as
// Docker 20.10 sends it: {"Proto":6,"IP":"","Port":80,"HostIP":"",
// "HostPort":8080,"HostPortEnd":8080}. Proto is the IP protocol number.
type dockerPortBinding struct {
	Proto       int    `json:"Proto"`
	IP          string `json:"IP"`
	Port        int    `json:"Port"`
	HostIP      string `json:"HostIP"`
	HostPort    int    `json:"HostPort"`
	HostPortEnd int    `json:"HostPortEnd"`
}

var protoNames = map[int]string{6: "tcp", 17: "udp"}

// parsePortMap turns Docker's portmap option into port maps to container.
// Bindings to an IPv6 host address are skipped: twill's overlay is IPv4.
func parsePortMap(raw any, container netip.Addr) ([]PortMap, error) {
	if raw == nil {
		return nil, nil
	}
	b, err := json.Marshal(raw)
	if err != nil {
		return nil, fmt.Errorf("option %s: %w", optPortMap, ErrBadRequest)
	}
	var bindings []dockerPortBinding
	if err := json.Unmarshal(b, &bindings); err != nil {
		return nil, fmt.Errorf("option %s: %w: %v", optPortMap, ErrBadRequest, err)
	}
	var out []PortMap
	for _, pb := range bindings {
		proto, ok := protoNames[pb.Proto]
		if !ok {
			return nil, fmt.Errorf("publishing port %d (IP protocol %d): %w: twill publishes tcp and udp ports only", pb.Port, pb.Proto, ErrBadOption)
		}
		if pb.Port <= 0 || pb.Port > 65535 {
			return nil, fmt.Errorf("publishing container port %d/%s: %w: not a port number", pb.Port, proto, ErrBadRequest)
		}
		if pb.HostPort <= 0 || pb.HostPort > 65535 {
			return nil, fmt.Errorf("publishing port %d/%s without a host port: %w: twill needs one, e.g. -p 8080:%d", pb.Port, proto, ErrBadOption, pb.Port)
		}
		var hostIP netip.Addr
		if pb.HostIP != "" {
			hostIP, err = netip.ParseAddr(pb.HostIP)
			if err != nil {
				return nil, fmt.Errorf("publishing port %d/%s on host address %q: %w", pb.Port, proto, pb.HostIP, ErrBadRequest)
			}
			if !hostIP.Is4() {
				continue
			}
			if hostIP.IsUnspecified() {
				hostIP = netip.Addr{}
			}
		}
		pm := PortMap{
			Proto:     proto,
			HostIP:    hostIP,
			HostPort:  uint16(pb.HostPort),
			Container: netip.AddrPortFrom(container, uint16(pb.Port)),
		}
		if pb.HostPortEnd > pb.HostPort && pb.HostPortEnd <= 65535 {
			pm.hostPortEnd = uint16(pb.HostPortEnd)
		}
		out = append(out, pm)
	}
	return out, nil
}

// dockerPortMap renders port maps back in Docker's shape.
func dockerPortMap(ports []PortMap) []dockerPortBinding {
	out := make([]dockerPortBinding, 0, len(ports))
	for _, p := range ports {
		num := 6
		if p.Proto == "udp" {
			num = 17
		}
		hostIP := ""
		if p.HostIP.IsValid() {
			hostIP = p.HostIP.String()
		}
		out = append(out, dockerPortBinding{
			Proto: num, IP: p.Container.Addr().String(), Port: int(p.Container.Port()),
			HostIP: hostIP, HostPort: int(p.HostPort), HostPortEnd: int(p.HostPort),
		})
	}
	return out
}

// ProgramExternalConnectivity publishes the endpoint's ports (-p). Docker
// sends it after Join, with empty lists when nothing is published. The
// ports are recorded before the firewall is changed, so a restart re-adds
// them.
func (d *Driver) ProgramExternalConnectivity(ctx context.Context, req *netapi.ProgramExternalConnectivityRequest) error {
	d.mu.Lock()
	n, e, err := d.lookup(req.NetworkID, req.EndpointID)
	if err != nil {
		d.mu.Unlock()
		return err
	}
	ports, err := parsePortMap(req.Options[optPortMap], e.Address.Addr())
	if err != nil {
		d.mu.Unlock()
		return fmt.Errorf("endpoint %s: %w", shortID(e.ID), err)
	}
	if err := d.choosePorts(e, ports); err != nil {
		d.mu.Unlock()
		return err
	}
	stale := e.Ports
	e.Ports = ports
	var pending *store.Pending
	if len(stale) > 0 || len(ports) > 0 {
		pending = d.store.Submit(endpointPut(e))
	}
	d.mu.Unlock()
	if pending == nil {
		return nil
	}
	if err := pending.Wait(); err != nil {
		return fmt.Errorf("recording published ports of endpoint %s: %w", shortID(e.ID), err)
	}
	if err := d.unpublish(ctx, n, stale); err != nil {
		return fmt.Errorf("endpoint %s: %w", shortID(e.ID), err)
	}
	if err := d.publish(ctx, n, ports); err != nil {
		if uerr := d.clearPorts(ctx, n, e); uerr != nil {
			d.log.Warn("undoing published ports", "endpoint", e.ID, "err", uerr)
		}
		return fmt.Errorf("endpoint %s: %w", shortID(e.ID), err)
	}
	d.log.Debug("ports published", "network", n.ID, "endpoint", e.ID, "ports", len(ports))
	return nil
}

// choosePorts settles each requested host port: a range (-p 8080-8090:80)
// takes its first port no other endpoint publishes; a single port another
// endpoint publishes is refused, as Docker's bridge driver does. d.mu held.
func (d *Driver) choosePorts(e *endpoint, ports []PortMap) error {
	for i := range ports {
		p := &ports[i]
		end := max(p.hostPortEnd, p.HostPort)
		var owner string
		var held netip.AddrPort
		for hp := uint32(p.HostPort); hp <= uint32(end); hp++ {
			id, c, taken := d.publisher(e, ports[:i], p.Proto, p.HostIP, uint16(hp))
			if !taken {
				p.HostPort, p.hostPortEnd = uint16(hp), 0
				owner = ""
				break
			}
			if owner == "" {
				owner, held = id, c
			}
		}
		if owner != "" {
			what := fmt.Sprintf("host port %d/%s", p.HostPort, p.Proto)
			if end > p.HostPort {
				what = fmt.Sprintf("host ports %d-%d/%s", p.HostPort, end, p.Proto)
			}
			return fmt.Errorf("endpoint %s: %s: %w by endpoint %s (%s): publish another host port",
				shortID(e.ID), what, ErrPortTaken, shortID(owner), held)
		}
	}
	return nil
}

// publisher tells who already publishes proto hostIP:port: another endpoint,
// or an earlier port of e's own request. d.mu held.
func (d *Driver) publisher(e *endpoint, earlier []PortMap, proto string, hostIP netip.Addr, port uint16) (string, netip.AddrPort, bool) {
	clash := func(o PortMap) bool {
		sameIP := !o.HostIP.IsValid() || !hostIP.IsValid() || o.HostIP == hostIP
		return o.Proto == proto && o.HostPort == port && sameIP
	}
	for _, o := range earlier {
		if clash(o) {
			return e.ID, o.Container, true
		}
	}
	for _, other := range d.endpoints {
		if other.ID == e.ID {
			continue
		}
		for _, o := range other.Ports {
			if clash(o) {
				return other.ID, o.Container, true
			}
		}
	}
	return "", netip.AddrPort{}, false
}

// RevokeExternalConnectivity removes the endpoint's published ports. An
// unknown endpoint is success.
func (d *Driver) RevokeExternalConnectivity(ctx context.Context, req *netapi.RevokeExternalConnectivityRequest) error {
	d.mu.Lock()
	n, e, err := d.lookup(req.NetworkID, req.EndpointID)
	d.mu.Unlock()
	if err != nil {
		return nil
	}
	if err := d.clearPorts(ctx, n, e); err != nil {
		return fmt.Errorf("endpoint %s: %w", shortID(e.ID), err)
	}
	return nil
}

// clearPorts forgets and unpublishes every port of e.
func (d *Driver) clearPorts(ctx context.Context, n *network, e *endpoint) error {
	d.mu.Lock()
	ports := e.Ports
	if len(ports) == 0 {
		d.mu.Unlock()
		return nil
	}
	e.Ports = nil
	var pending *store.Pending
	if _, live := d.endpoints[e.ID]; live {
		pending = d.store.Submit(endpointPut(e))
	}
	d.mu.Unlock()
	if pending != nil {
		if err := pending.Wait(); err != nil {
			return fmt.Errorf("recording revoked ports: %w", err)
		}
	}
	return d.unpublish(ctx, n, ports)
}

func (d *Driver) publish(ctx context.Context, n *network, ports []PortMap) error {
	for _, p := range ports {
		if err := d.fw.AddPortMap(ctx, n.Bridge, p.Proto, p.HostIP, p.HostPort, p.Container); err != nil {
			return fmt.Errorf("publishing host port %d/%s to %s: %w", p.HostPort, p.Proto, p.Container, err)
		}
	}
	return nil
}

func (d *Driver) unpublish(ctx context.Context, n *network, ports []PortMap) error {
	var errs []error
	for _, p := range ports {
		if err := d.fw.DeletePortMap(ctx, n.Bridge, p.Proto, p.HostIP, p.HostPort, p.Container); err != nil {
			errs = append(errs, fmt.Errorf("unpublishing host port %d/%s: %w", p.HostPort, p.Proto, err))
		}
	}
	return errors.Join(errs...)
}
