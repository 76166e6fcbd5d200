package subnet

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// DefaultPort is flannel's udp backend port.
const DefaultPort = 8285

// ErrBadConfig is wrapped by every error about an unusable `<prefix>/config`.
var ErrBadConfig = errors.New("bad overlay config")

// Config is an overlay's network configuration, flannel's `<prefix>/config`
// after flannel's defaults were applied (SubnetLen, SubnetMin, SubnetMax).
type Config struct {
	Network   netip.Prefix // the whole overlay, e.g. 10.244.0.0/16
	SubnetLen int          // prefix length of one host's subnet, e.g. 24
	SubnetMin netip.Addr   // first subnet handed out (default: Network + one subnet)
	SubnetMax netip.Addr   // last subnet handed out (default: the last subnet)

	BackendType string // "udp" when the config names no backend (flannel's default)
	Port        int    // udp backend port (Backend.Port), DefaultPort when unset

	// Backend is the config's Backend object as stored, for other readers.
	Backend json.RawMessage
}

// configJSON is the stored shape. Unknown fields are ignored, as flanneld does.
type configJSON struct {
	Network     string          `json:",omitempty"`
	SubnetLen   int             `json:",omitempty"`
	SubnetMin   string          `json:",omitempty"`
	SubnetMax   string          `json:",omitempty"`
	EnableIPv6  bool            `json:",omitempty"`
	IPv6Network string          `json:",omitempty"`
	Backend     json.RawMessage `json:",omitempty"`
}

// NewConfig returns the config twill writes for an overlay that has none:
// flannel's udp backend on port, subnetLen (0 picks flannel's default).
func NewConfig(network netip.Prefix, subnetLen, port int) (Config, error) {
	if port == 0 {
		port = DefaultPort
	}
	be, _ := json.Marshal(struct {
		Type string
		Port int
	}{"udp", port})
	c := Config{Network: network, SubnetLen: subnetLen, BackendType: "udp", Port: port, Backend: be}
	if err := c.complete(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// Marshal returns the JSON stored at `<prefix>/config`, in flannel's field
// names, e.g. {"Network":"10.96.0.0/16","SubnetLen":24,"Backend":{"Type":"udp","Port":8285}}.
// SubnetMin and SubnetMax are written only when they differ from flannel's
// defaults.
func (c Config) Marshal() []byte {
	j := configJSON{Network: c.Network.String(), SubnetLen: c.SubnetLen, Backend: c.Backend}
	d := Config{Network: c.Network, SubnetLen: c.SubnetLen}
	if err := d.complete(); err == nil {
		if c.SubnetMin != d.SubnetMin {
			j.SubnetMin = c.SubnetMin.String()
		}
		if c.SubnetMax != d.SubnetMax {
			j.SubnetMax = c.SubnetMax.String()
		}
	}
	b, _ := json.Marshal(j)
	return b
}

// ParseConfig reads a config as flanneld reads it and checks it as flanneld
// does. key is quoted in every error so the user knows what to fix.
func ParseConfig(key string, data []byte) (Config, error) {
	var j configJSON
	if err := json.Unmarshal(data, &j); err != nil {
		return Config{}, fmt.Errorf("config at %s is not valid JSON (%q): %v: %w", key, clip(data), err, ErrBadConfig)
	}
	if j.Network == "" {
		return Config{}, fmt.Errorf("config at %s has no Network (want e.g. \"10.244.0.0/16\"): %w", key, ErrBadConfig)
	}
	n, err := netip.ParsePrefix(j.Network)
	if err != nil || !n.Addr().Is4() {
		return Config{}, fmt.Errorf("config at %s: Network %q is not an IPv4 prefix: %w", key, j.Network, ErrBadConfig)
	}
	c := Config{Network: n.Masked(), SubnetLen: j.SubnetLen, Backend: j.Backend, BackendType: "udp", Port: DefaultPort}
	if j.SubnetMin != "" {
		if c.SubnetMin, err = netip.ParseAddr(j.SubnetMin); err != nil || !c.SubnetMin.Is4() {
			return Config{}, fmt.Errorf("config at %s: SubnetMin %q is not an IPv4 address: %w", key, j.SubnetMin, ErrBadConfig)
		}
	}
	if j.SubnetMax != "" {
		if c.SubnetMax, err = netip.ParseAddr(j.SubnetMax); err != nil || !c.SubnetMax.Is4() {
			return Config{}, fmt.Errorf("config at %s: SubnetMax %q is not an IPv4 address: %w", key, j.SubnetMax, ErrBadConfig)
		}
	}
	if len(j.Backend) > 0 && string(j.Backend) != "null" {
		var be struct {
			Type string
			Port int
		}
		if err := json.Unmarshal(j.Backend, &be); err != nil {
			return Config{}, fmt.Errorf("config at %s: Backend %s: %v: %w", key, clip(j.Backend), err, ErrBadConfig)
		}
		if be.Type != "" {
			c.BackendType = be.Type
		}
		if be.Port != 0 {
			c.Port = be.Port
		}
	}
	if c.Port < 1 || c.Port > 65535 {
		return Config{}, fmt.Errorf("config at %s: Backend Port %d is not a UDP port: %w", key, c.Port, ErrBadConfig)
	}
	if err := c.complete(); err != nil {
		return Config{}, fmt.Errorf("config at %s: %w", key, err)
	}
	return c, nil
}

// complete applies flannel's defaults and checks (CheckNetworkConfig): a
// SubnetLen that leaves room for at least four subnets, SubnetMin and
// SubnetMax inside Network and on a subnet boundary.
func (c *Config) complete() error {
	bits := c.Network.Bits()
	if !c.Network.IsValid() || !c.Network.Addr().Is4() {
		return fmt.Errorf("Network %v is not an IPv4 prefix: %w", c.Network, ErrBadConfig)
	}
	c.Network = c.Network.Masked()
	switch {
	case c.SubnetLen == 0 && bits > 28:
		return fmt.Errorf("Network %s is too small: flannel needs at least a /28: %w", c.Network, ErrBadConfig)
	case c.SubnetLen == 0 && bits <= 22:
		c.SubnetLen = 24
	case c.SubnetLen == 0:
		c.SubnetLen = bits + 2
	case c.SubnetLen > 30 || c.SubnetLen < 0:
		return fmt.Errorf("SubnetLen %d does not fit: it must be at most 30: %w", c.SubnetLen, ErrBadConfig)
	case c.SubnetLen < bits+2:
		return fmt.Errorf("SubnetLen %d does not fit in Network %s: it must be at least %d so the network holds four subnets: %w",
			c.SubnetLen, c.Network, bits+2, ErrBadConfig)
	}
	size := uint32(1) << (32 - c.SubnetLen)
	first := u32(c.Network.Addr())
	last := first + uint32(1<<(32-bits)-1) // broadcast of Network
	if !c.SubnetMin.IsValid() {
		c.SubnetMin = a4(first + size) // the first subnet holds the network address: skipped, as flannel does
	} else if !c.Network.Contains(c.SubnetMin) {
		return fmt.Errorf("SubnetMin %s is not inside Network %s: %w", c.SubnetMin, c.Network, ErrBadConfig)
	}
	if !c.SubnetMax.IsValid() {
		c.SubnetMax = a4(last - size + 1)
	} else if !c.Network.Contains(c.SubnetMax) {
		return fmt.Errorf("SubnetMax %s is not inside Network %s: %w", c.SubnetMax, c.Network, ErrBadConfig)
	}
	if u32(c.SubnetMin)%size != 0 {
		return fmt.Errorf("SubnetMin %s is not on a /%d boundary: %w", c.SubnetMin, c.SubnetLen, ErrBadConfig)
	}
	if u32(c.SubnetMax)%size != 0 {
		return fmt.Errorf("SubnetMax %s is not on a /%d boundary: %w", c.SubnetMax, c.SubnetLen, ErrBadConfig)
	}
	if u32(c.SubnetMax) < u32(c.SubnetMin) {
		return fmt.Errorf("SubnetMax %s is below SubnetMin %s: %w", c.SubnetMax, c.SubnetMin, ErrBadConfig)
	}
	return nil
}

// Subnets is how many subnets the overlay hands out (SubnetMin … SubnetMax).
func (c Config) Subnets() int {
	return int((u32(c.SubnetMax)-u32(c.SubnetMin))>>(32-c.SubnetLen)) + 1
}

// Holds reports whether sn is a subnet this overlay hands out: the right
// length, aligned, between SubnetMin and SubnetMax.
func (c Config) Holds(sn netip.Prefix) bool {
	if !sn.IsValid() || !sn.Addr().Is4() || sn.Bits() != c.SubnetLen || sn.Masked() != sn {
		return false
	}
	a := u32(sn.Addr())
	return a >= u32(c.SubnetMin) && a <= u32(c.SubnetMax)
}

// subnetAt returns the i-th subnet from SubnetMin.
func (c Config) subnetAt(i int) netip.Prefix {
	return netip.PrefixFrom(a4(u32(c.SubnetMin)+uint32(i)<<(32-c.SubnetLen)), c.SubnetLen)
}

// indexOf is the inverse of subnetAt for a subnet the overlay Holds.
func (c Config) indexOf(sn netip.Prefix) int {
	return int((u32(sn.Addr()) - u32(c.SubnetMin)) >> (32 - c.SubnetLen))
}

func u32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

func a4(v uint32) netip.Addr {
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// clip shortens a stored value for an error message.
func clip(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 80 {
		return s[:77] + "..."
	}
	return s
}
