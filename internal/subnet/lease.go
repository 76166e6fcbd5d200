package subnet

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// ErrBadLease is wrapped by errors about a lease key or value that cannot be
// read.
var ErrBadLease = errors.New("bad lease")

// Attrs is a lease's value: what peers need to reach the host holding the
// subnet. It is stored exactly as flannel's lease.LeaseAttrs.
type Attrs struct {
	PublicIP   netip.Addr // where peers send UDP; IPv4
	PublicIPv6 netip.Addr // optional; zero when absent (stored as null)

	// BackendType is "" for flannel's udp backend (which twill speaks) and
	// e.g. "vxlan" for flanneld hosts on another backend.
	BackendType   string
	BackendData   json.RawMessage
	BackendV6Data json.RawMessage
}

// attrsJSON is the stored shape, field for field flannel's LeaseAttrs: a udp
// lease is {"PublicIP":"10.99.0.1","PublicIPv6":null}.
type attrsJSON struct {
	PublicIP      string
	PublicIPv6    *string
	BackendType   string          `json:",omitempty"`
	BackendData   json.RawMessage `json:",omitempty"`
	BackendV6Data json.RawMessage `json:",omitempty"`
}

// MarshalJSON writes the lease value as flanneld does.
func (a Attrs) MarshalJSON() ([]byte, error) {
	if !a.PublicIP.Is4() {
		return nil, fmt.Errorf("lease public IP %v is not IPv4: %w", a.PublicIP, ErrBadLease)
	}
	j := attrsJSON{PublicIP: a.PublicIP.String(), BackendType: a.BackendType,
		BackendData: a.BackendData, BackendV6Data: a.BackendV6Data}
	if a.PublicIPv6.IsValid() {
		s := a.PublicIPv6.String()
		j.PublicIPv6 = &s
	}
	return json.Marshal(j)
}

// UnmarshalJSON reads a lease value leniently: unknown fields and any backend
// type are accepted; only a missing or malformed PublicIP is an error.
func (a *Attrs) UnmarshalJSON(b []byte) error {
	var j attrsJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return fmt.Errorf("%v: %w", err, ErrBadLease)
	}
	ip, err := netip.ParseAddr(j.PublicIP)
	if err != nil || !ip.Is4() {
		return fmt.Errorf("PublicIP %q is not an IPv4 address: %w", j.PublicIP, ErrBadLease)
	}
	*a = Attrs{PublicIP: ip, BackendType: j.BackendType}
	if j.PublicIPv6 != nil && *j.PublicIPv6 != "" {
		if a.PublicIPv6, err = netip.ParseAddr(*j.PublicIPv6); err != nil {
			return fmt.Errorf("PublicIPv6 %q: %w", *j.PublicIPv6, ErrBadLease)
		}
	}
	if len(j.BackendData) > 0 && !bytes.Equal(j.BackendData, []byte("null")) {
		a.BackendData = j.BackendData
	}
	if len(j.BackendV6Data) > 0 && !bytes.Equal(j.BackendV6Data, []byte("null")) {
		a.BackendV6Data = j.BackendV6Data
	}
	return nil
}

// Equal reports whether a and b would be stored identically.
func (a Attrs) Equal(b Attrs) bool {
	return a.PublicIP == b.PublicIP && a.PublicIPv6 == b.PublicIPv6 && a.BackendType == b.BackendType &&
		bytes.Equal(a.BackendData, b.BackendData) && bytes.Equal(a.BackendV6Data, b.BackendV6Data)
}

// LeaseBackend is the backend part of the leases this host writes in an
// overlay: flannel's BackendType ("" for udp) and BackendData, e.g.
// "wireguard" and {"PublicKey":"…"}.
type LeaseBackend struct {
	Type string
	Data json.RawMessage
}

// Lease is one host's subnet of one overlay.
type Lease struct {
	Overlay netip.Prefix // the overlay's Network, e.g. 10.96.0.0/16
	Subnet  netip.Prefix // the host's subnet, e.g. 10.96.7.0/24
	Attrs   Attrs

	// IPv6Subnet is set for flannel dual-stack leases (key "…-24&fd00::-64").
	IPv6Subnet netip.Prefix

	// Expiration is when etcd drops the lease unless renewed; set for this
	// host's own leases only (zero for a reservation, which never expires).
	Expiration time.Time
	// EtcdLease is the etcd lease ID the key is bound to (0: reservation).
	EtcdLease int64
	// Revision is the etcd ModRevision of the key as last read.
	Revision int64
}

// Gateway is the subnet's first host address (.1 of a /24): what flanneld
// writes as FLANNEL_SUBNET and puts on its TUN device.
func (l Lease) Gateway() netip.Addr { return l.Subnet.Addr().Next() }

// subnetKey is flannel's MakeSubnetKey: "10.244.20.0-24".
func subnetKey(sn netip.Prefix) string {
	return sn.Addr().String() + "-" + strconv.Itoa(sn.Bits())
}

// parseSubnetKey reads the last path element of a lease key, flannel's
// "10.244.20.0-24" or the dual-stack "10.244.20.0-24&fd00:0:0:14::-64".
func parseSubnetKey(name string) (sn, sn6 netip.Prefix, err error) {
	v4, v6, dual := strings.Cut(name, "&")
	if sn, err = parsePrefixDash(v4); err != nil || !sn.Addr().Is4() || sn.Masked() != sn {
		return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("lease key %q is not <IPv4 subnet>-<length>: %w", name, ErrBadLease)
	}
	if dual {
		if sn6, err = parsePrefixDash(v6); err != nil || !sn6.Addr().Is6() {
			return netip.Prefix{}, netip.Prefix{}, fmt.Errorf("lease key %q has a bad IPv6 part: %w", name, ErrBadLease)
		}
	}
	return sn, sn6, nil
}

func parsePrefixDash(s string) (netip.Prefix, error) {
	i := strings.LastIndexByte(s, '-')
	if i < 0 {
		return netip.Prefix{}, errors.New("no '-'")
	}
	return netip.ParsePrefix(s[:i] + "/" + s[i+1:])
}

// overlayName is the path element naming an extra overlay under
// `<prefix>/overlays/`: "10.97.0.0-16".
func overlayName(n netip.Prefix) string { return subnetKey(n) }
