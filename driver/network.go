package driver

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	netapi "github.com/docker/go-plugins-helpers/network"

	"github.com/twill-net/twill/internal/store"
)

// CreateNetwork records the network and creates its bridge (holding the
// gateway) and firewall rules. Networks made with another IPAM, with IPv6,
// or with -o options twill does not understand are refused with a message
// that says what to use instead. A repeated call for the same network
// converges and succeeds.
func (d *Driver) CreateNetwork(ctx context.Context, req *netapi.CreateNetworkRequest) error {
	n, err := d.parseNetwork(ctx, req)
	if err != nil {
		return err
	}

	d.mu.Lock()
	if old, ok := d.networks[n.ID]; ok && *old != *n {
		d.mu.Unlock()
		return fmt.Errorf("network %s already exists with other settings (subnet %s, gateway %s, mtu %d): remove it first", n.ID, old.Subnet, old.Gateway, old.MTU)
	}
	for _, other := range d.networks {
		if other.ID == n.ID {
			continue
		}
		if other.Subnet == n.Subnet {
			d.mu.Unlock()
			return fmt.Errorf("network %s: this host's subnet %s of overlay %s %w %s (bridge %s): a host has one subnet per overlay, so give this network another --subnet",
				shortID(n.ID), n.Subnet, n.Overlay, ErrSubnetTaken, shortID(other.ID), other.Bridge)
		}
		if other.Bridge == n.Bridge {
			d.mu.Unlock()
			return fmt.Errorf("network %s: bridge name %s: %w (network %s): remove and re-create this network to get another ID", n.ID, n.Bridge, ErrNameClash, other.ID)
		}
	}
	d.networks[n.ID] = n
	pending := d.store.Submit(networkPut(n))
	d.mu.Unlock()

	if err := pending.Wait(); err != nil {
		d.forgetNetwork(n.ID)
		return fmt.Errorf("recording network %s: %w", n.ID, err)
	}
	if err := d.ensureNetwork(ctx, n); err != nil {
		d.undoNetwork(ctx, n)
		return err
	}
	d.log.Info("network created", "network", n.ID, "bridge", n.Bridge, "subnet", n.Subnet, "overlay", n.Overlay, "mtu", n.MTU, "internal", n.Internal)
	return nil
}

// ensureNetwork converges the kernel with n.
func (d *Driver) ensureNetwork(ctx context.Context, n *network) error {
	if err := d.links.EnsureBridge(ctx, n.Bridge, n.gatewayPrefix(), n.MTU); err != nil {
		return fmt.Errorf("creating bridge %s for network %s: %w", n.Bridge, shortID(n.ID), err)
	}
	if err := d.fw.EnsureNetwork(ctx, n.Bridge, n.Subnet, n.Overlay, n.Internal); err != nil {
		return fmt.Errorf("setting firewall rules for bridge %s of network %s: %w", n.Bridge, shortID(n.ID), err)
	}
	return nil
}

// undoNetwork removes what a failed CreateNetwork made. Its own errors are
// logged: the create's error is what the user needs, and Reconcile removes
// bridges no network owns.
func (d *Driver) undoNetwork(ctx context.Context, n *network) {
	if err := d.fw.DeleteNetwork(ctx, n.Bridge); err != nil {
		d.log.Warn("undoing firewall rules of failed network", "network", n.ID, "bridge", n.Bridge, "err", err)
	}
	if err := d.links.DeleteBridge(ctx, n.Bridge); err != nil {
		d.log.Warn("undoing bridge of failed network", "network", n.ID, "bridge", n.Bridge, "err", err)
	}
	if err := d.forgetNetwork(n.ID).Wait(); err != nil {
		d.log.Warn("forgetting failed network", "network", n.ID, "err", err)
	}
}

func (d *Driver) forgetNetwork(id string) *store.Pending {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.networks, id)
	return d.store.Submit(networkDelete(id))
}

// parseNetwork checks a CreateNetwork request and turns it into a network.
func (d *Driver) parseNetwork(ctx context.Context, req *netapi.CreateNetworkRequest) (*network, error) {
	if req.NetworkID == "" {
		return nil, fmt.Errorf("CreateNetwork without NetworkID: %w", ErrBadRequest)
	}
	id := shortID(req.NetworkID)
	if len(req.IPv6Data) > 0 || req.Options[optIPv6] == true {
		return nil, fmt.Errorf("network %s: twill does not support IPv6 yet: create the network without --ipv6", id)
	}
	// Docker 28+ sends enable_ipv4=false (and no IPv4Data) for --ipv4=false.
	if req.Options[optIPv4] == false {
		return nil, fmt.Errorf("network %s: twill networks are IPv4 (twill has no IPv6 yet): create the network without --ipv4=false", id)
	}
	useTwill := fmt.Sprintf("create it with -d %s --ipam-driver %s", d.cfg.PluginName, d.cfg.PluginName)
	if len(req.IPv4Data) == 0 || req.IPv4Data[0] == nil {
		return nil, fmt.Errorf("network %s has no IPv4 pool: %w: %s", id, ErrNotTwillIPAM, useTwill)
	}
	if len(req.IPv4Data) > 1 {
		return nil, fmt.Errorf("network %s has %d subnets: twill networks take one --subnet (an overlay such as 10.96.0.0/16)", id, len(req.IPv4Data))
	}
	data := req.IPv4Data[0]
	if data.AddressSpace == defaultIPAM || data.AddressSpace == defaultGlobal {
		return nil, fmt.Errorf("twill networks need --ipam-driver %s: %w (network %s got AddressSpace %q, pool %s from Docker's default IPAM): %s",
			d.cfg.PluginName, ErrNotTwillIPAM, id, data.AddressSpace, data.Pool, useTwill)
	}
	if len(data.AuxAddresses) > 0 {
		// Addresses no container holds would look like the leftovers of a
		// crash to the orphan sweep, which gives those back.
		return nil, fmt.Errorf("network %s: twill does not support --aux-address: %w: run a container with --ip for an address that must stay put", id, ErrBadRequest)
	}
	pool, err := netip.ParsePrefix(data.Pool)
	if err != nil {
		return nil, fmt.Errorf("network %s: pool %q: %w", id, data.Pool, ErrBadRequest)
	}
	overlay, ok := d.pools.OverlayOf(pool)
	if !ok {
		return nil, fmt.Errorf("twill networks need --ipam-driver %s: %w (network %s: pool %s in address space %q was not handed out by twill's IPAM on this host): %s",
			d.cfg.PluginName, ErrNotTwillIPAM, id, pool, data.AddressSpace, useTwill)
	}
	gw, err := netip.ParsePrefix(data.Gateway)
	if err != nil || !pool.Contains(gw.Addr()) {
		return nil, fmt.Errorf("network %s: gateway %q is not an address of pool %s: %w", id, data.Gateway, pool, ErrBadRequest)
	}
	n := &network{
		ID:      req.NetworkID,
		Bridge:  bridgeName(req.NetworkID),
		Subnet:  pool.Masked(),
		Gateway: gw.Addr(),
		Overlay: overlay,
		MTU:     d.tunnelMTU(overlay),
	}
	if v, ok := req.Options[optInternal]; ok {
		b, isBool := v.(bool)
		if !isBool {
			return nil, fmt.Errorf("network %s: option %s=%v: %w", id, optInternal, v, ErrBadRequest)
		}
		n.Internal = b
	}
	if err := d.parseGeneric(ctx, n, req.Options[optGeneric]); err != nil {
		return nil, err
	}
	return n, nil
}

// parseGeneric applies the user's -o options (Docker's generic map): the
// backend first (it decides the tunnel MTU), then the mtu.
func (d *Driver) parseGeneric(ctx context.Context, n *network, generic any) error {
	if generic == nil {
		return nil
	}
	opts, ok := generic.(map[string]any)
	if !ok {
		return fmt.Errorf("network %s: option %s is a %T, not an object: %w", shortID(n.ID), optGeneric, generic, ErrBadRequest)
	}
	var unknown []string
	for k := range opts {
		if k != optMTU && k != optBackend {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return fmt.Errorf("network %s: -o %s: %w: twill understands only -o %s=N and -o %s=udp|wireguard", shortID(n.ID), strings.Join(unknown, ", "), ErrBadOption, optMTU, optBackend)
	}
	if v, ok := opts[optBackend]; ok {
		be, _ := v.(string)
		if be != "udp" && be != "wireguard" {
			return fmt.Errorf("network %s: -o %s=%v: %w: use udp (plain, flannel's udp backend) or wireguard (encrypted, flannel's wireguard backend)", shortID(n.ID), optBackend, v, ErrBadOption)
		}
		if d.cfg.SetBackend == nil {
			return fmt.Errorf("network %s: -o %s: %w: this twill cannot choose backends", shortID(n.ID), optBackend, ErrBadOption)
		}
		if err := d.cfg.SetBackend(ctx, n.Overlay, be); err != nil {
			return fmt.Errorf("network %s: -o %s=%s: %w", shortID(n.ID), optBackend, be, err)
		}
		n.MTU = d.tunnelMTU(n.Overlay)
	}
	if v, ok := opts[optMTU]; ok {
		mtu, err := parseMTU(v)
		if err != nil {
			return fmt.Errorf("network %s: -o %s=%v: %w: give a number of bytes", shortID(n.ID), optMTU, v, ErrMTU)
		}
		if tm := d.tunnelMTU(n.Overlay); mtu > tm {
			return fmt.Errorf("network %s: -o %s=%d: %w: it is above the tunnel MTU %d of overlay %s (the underlay MTU minus the tunnel's headers: 28 bytes for udp, 80 for wireguard), so packets to other hosts would not fit; use %d or less",
				shortID(n.ID), optMTU, mtu, ErrMTU, tm, n.Overlay, tm)
		}
		if mtu < minMTU {
			return fmt.Errorf("network %s: -o %s=%d: %w: IPv4 needs at least %d", shortID(n.ID), optMTU, mtu, ErrMTU, minMTU)
		}
		n.MTU = mtu
	}
	return nil
}

func parseMTU(v any) (int, error) {
	switch v := v.(type) {
	case string:
		return strconv.Atoi(strings.TrimSpace(v))
	case float64:
		if v != float64(int(v)) {
			return 0, errors.New("not a whole number")
		}
		return int(v), nil
	default:
		return 0, fmt.Errorf("unexpected type %T", v)
	}
}

// DeleteNetwork removes the network's bridge and firewall rules, and any
// endpoint Docker left on it. An unknown network is success.
func (d *Driver) DeleteNetwork(ctx context.Context, req *netapi.DeleteNetworkRequest) error {
	d.mu.Lock()
	n, ok := d.networks[req.NetworkID]
	if !ok {
		d.mu.Unlock()
		return nil
	}
	var left []*endpoint
	ops := []store.Op{networkDelete(n.ID)}
	for _, e := range d.endpoints {
		if e.Network == n.ID {
			left = append(left, e)
			delete(d.endpoints, e.ID)
			ops = append(ops, endpointDelete(e.ID))
		}
	}
	delete(d.networks, n.ID)
	pending := d.store.Submit(ops...)
	d.mu.Unlock()
	if err := pending.Wait(); err != nil {
		return fmt.Errorf("forgetting network %s: %w", shortID(n.ID), err)
	}
	// Forgotten first: a crash from here on leaves links no one owns, which
	// Reconcile removes.
	var errs []error
	for _, e := range left {
		errs = append(errs, d.removeEndpoint(ctx, n, e))
	}
	if err := d.fw.DeleteNetwork(ctx, n.Bridge); err != nil {
		errs = append(errs, fmt.Errorf("removing firewall rules of bridge %s: %w", n.Bridge, err))
	}
	if err := d.links.DeleteBridge(ctx, n.Bridge); err != nil {
		errs = append(errs, fmt.Errorf("removing bridge %s: %w", n.Bridge, err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("deleting network %s: %w", shortID(n.ID), err)
	}
	d.log.Info("network deleted", "network", n.ID, "bridge", n.Bridge, "endpoints_left", len(left))
	return nil
}
