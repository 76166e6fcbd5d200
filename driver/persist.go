package driver

import (
	"encoding/json"
	"fmt"
	"net/netip"

	"github.com/twill-net/twill/internal/store"
)

// Buckets of the state store, keyed by Docker's network and endpoint IDs.
const (
	networkBucket  = "driver.networks"
	endpointBucket = "driver.endpoints"
)

// network is one Docker network: a bridge holding the gateway of this host's
// subnet of an overlay.
type network struct {
	ID       string       `json:"-"`
	Bridge   string       `json:"Bridge"`
	Subnet   netip.Prefix `json:"Subnet"`
	Gateway  netip.Addr   `json:"Gateway"`
	Overlay  netip.Prefix `json:"Overlay"`
	MTU      int          `json:"MTU"`
	Internal bool         `json:"Internal,omitempty"`
}

// gatewayPrefix is the bridge's address: the gateway with the subnet's length.
func (n *network) gatewayPrefix() netip.Prefix {
	return netip.PrefixFrom(n.Gateway, n.Subnet.Bits())
}

// endpoint is one container's attachment to a network.
type endpoint struct {
	ID      string       `json:"-"`
	Network string       `json:"Network"`
	Address netip.Prefix `json:"Address"`
	MAC     string       `json:"MAC"`
	// Joined is set before the veth pair is created in Join and cleared in
	// Leave, so reconciliation knows which endpoints should have a veth.
	Joined bool      `json:"Joined,omitempty"`
	Ports  []PortMap `json:"Ports,omitempty"`
}

// PortMap is one published port: hostIP:hostPort (an invalid hostIP means
// every address) forwarded to container.
type PortMap struct {
	Proto     string         `json:"Proto"`
	HostIP    netip.Addr     `json:"HostIP"`
	HostPort  uint16         `json:"HostPort"`
	Container netip.AddrPort `json:"Container"`

	// hostPortEnd is the end of a requested range (-p 8080-8090:80); the
	// first free port of the range becomes HostPort. Not persisted.
	hostPortEnd uint16
}

// String renders the mapping as Docker does: "0.0.0.0:8080->80/tcp".
func (p PortMap) String() string {
	host := "0.0.0.0"
	if p.HostIP.IsValid() {
		host = p.HostIP.String()
	}
	return fmt.Sprintf("%s:%d->%d/%s", host, p.HostPort, p.Container.Port(), p.Proto)
}

func networkPut(n *network) store.Op {
	v, _ := json.Marshal(n) // netip types cannot fail to marshal
	return store.Op{Bucket: networkBucket, Key: n.ID, Value: v}
}

func networkDelete(id string) store.Op { return store.Op{Bucket: networkBucket, Key: id} }

func endpointPut(e *endpoint) store.Op {
	v, _ := json.Marshal(e)
	return store.Op{Bucket: endpointBucket, Key: e.ID, Value: v}
}

func endpointDelete(id string) store.Op { return store.Op{Bucket: endpointBucket, Key: id} }

// load rebuilds networks and endpoints from the store. An endpoint whose
// network is gone is kept (Docker may still delete it) but logged.
func (d *Driver) load() error {
	err := d.store.Load(networkBucket, func(key string, v []byte) error {
		var n network
		if err := json.Unmarshal(v, &n); err != nil {
			return fmt.Errorf("decoding network %s: %w", key, err)
		}
		n.ID = key
		d.networks[key] = &n
		return nil
	})
	if err != nil {
		return fmt.Errorf("loading driver networks: %w", err)
	}
	err = d.store.Load(endpointBucket, func(key string, v []byte) error {
		var e endpoint
		if err := json.Unmarshal(v, &e); err != nil {
			return fmt.Errorf("decoding endpoint %s: %w", key, err)
		}
		e.ID = key
		if _, ok := d.networks[e.Network]; !ok {
			d.log.Warn("persisted endpoint of an unknown network", "endpoint", key, "network", e.Network)
		}
		d.endpoints[key] = &e
		return nil
	})
	if err != nil {
		return fmt.Errorf("loading driver endpoints: %w", err)
	}
	d.log.Info("driver state loaded", "networks", len(d.networks), "endpoints", len(d.endpoints))
	return nil
}
