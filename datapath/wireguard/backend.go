package wireguard

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Type is the Backend.Type and lease BackendType of flannel's wireguard
// backend.
const Type = "wireguard"

// DefaultListenPort is flannel's default ListenPort.
const DefaultListenPort = 51820

// Overhead is what WireGuard adds to a packet on an IPv4 or IPv6 underlay:
// IP (up to 40) + UDP (8) + type, receiver index and counter (16) + the
// authentication tag (16). flanneld's wireguard backend subtracts the same
// 80 bytes from the underlay MTU.
const Overhead = 80

// ErrBadBackend is wrapped by errors about an unusable wireguard Backend
// object in an overlay's config.
var ErrBadBackend = errors.New("bad wireguard backend config")

// Backend is the Backend object of an encrypted overlay's config, read as
// flanneld's wireguard backend reads it:
//
//	{"Type":"wireguard","ListenPort":51820,"PersistentKeepaliveInterval":25,"PSK":"…","Mode":"separate"}
type Backend struct {
	// ListenPort is the UDP port every host of the overlay listens on and
	// sends to (flanneld uses its own ListenPort for its peers' endpoints).
	ListenPort int
	// PersistentKeepalive is PersistentKeepaliveInterval (whole seconds in
	// the JSON; 0: off).
	PersistentKeepalive time.Duration
	// PSK is the preshared key every peer uses, or nil.
	PSK *Key
	// Mode is flannel's Mode: "separate" (the default), "auto" or "ipv4";
	// for an IPv4 overlay they behave alike. "ipv6" is refused.
	Mode string
}

// backendJSON is the stored shape, field for field flannel's.
type backendJSON struct {
	Type                        string
	ListenPort                  int    `json:",omitempty"`
	ListenPortV6                int    `json:",omitempty"`
	PSK                         string `json:",omitempty"`
	PersistentKeepaliveInterval int64  `json:",omitempty"`
	Mode                        string `json:",omitempty"`
}

// ParseBackend reads an overlay config's Backend object (Type must be
// "wireguard") and applies flannel's defaults.
func ParseBackend(raw json.RawMessage) (Backend, error) {
	var j backendJSON
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&j); err != nil {
		return Backend{}, fmt.Errorf("Backend %s: %v (ListenPort and PersistentKeepaliveInterval are whole numbers, PSK a base64 key): %w", clip(string(raw)), err, ErrBadBackend)
	}
	if j.Type != Type {
		return Backend{}, fmt.Errorf("Backend type %q is not %q: %w", j.Type, Type, ErrBadBackend)
	}
	b := Backend{ListenPort: j.ListenPort, Mode: j.Mode}
	if b.ListenPort == 0 {
		b.ListenPort = DefaultListenPort
	}
	if b.ListenPort < 1 || b.ListenPort > 65535 {
		return Backend{}, fmt.Errorf("Backend ListenPort %d is not a UDP port: %w", j.ListenPort, ErrBadBackend)
	}
	if j.PersistentKeepaliveInterval < 0 || j.PersistentKeepaliveInterval > 65535 {
		return Backend{}, fmt.Errorf("Backend PersistentKeepaliveInterval %d is not a number of seconds from 0 to 65535: %w", j.PersistentKeepaliveInterval, ErrBadBackend)
	}
	b.PersistentKeepalive = time.Duration(j.PersistentKeepaliveInterval) * time.Second
	if j.PSK != "" {
		k, err := ParseKey(j.PSK)
		if err != nil {
			return Backend{}, fmt.Errorf("Backend PSK: %w (make one with `wg genpsk`): %w", err, ErrBadBackend)
		}
		b.PSK = &k
	}
	switch b.Mode {
	case "":
		b.Mode = "separate"
	case "separate", "auto", "ipv4":
	case "ipv6":
		return Backend{}, fmt.Errorf("Backend Mode %q: twill's overlays are IPv4; use \"separate\" or leave Mode out: %w", b.Mode, ErrBadBackend)
	default:
		return Backend{}, fmt.Errorf("Backend Mode %q is none of flannel's separate, auto, ipv4, ipv6: %w", b.Mode, ErrBadBackend)
	}
	return b, nil
}

// MarshalJSON writes the Backend object as flanneld reads it; defaults
// (Mode separate, no PSK, no keepalive) are left out.
func (b Backend) MarshalJSON() ([]byte, error) {
	j := backendJSON{Type: Type, ListenPort: b.ListenPort, PersistentKeepaliveInterval: int64(b.PersistentKeepalive / time.Second)}
	if j.ListenPort == 0 {
		j.ListenPort = DefaultListenPort
	}
	if b.PSK != nil {
		j.PSK = b.PSK.String()
	}
	if b.Mode != "" && b.Mode != "separate" {
		j.Mode = b.Mode
	}
	return json.Marshal(j)
}

// leaseJSON is flanneld's wireguardLeaseAttrs: a lease's BackendData.
type leaseJSON struct {
	PublicKey string
}

// LeaseData is the BackendData of a lease of this host's: {"PublicKey":"…"}.
func LeaseData(public Key) json.RawMessage {
	b, _ := json.Marshal(leaseJSON{PublicKey: public.String()})
	return b
}

// ParseLeaseData reads a peer's BackendData.
func ParseLeaseData(raw json.RawMessage) (Key, error) {
	if len(raw) == 0 {
		return Key{}, fmt.Errorf("lease has no BackendData with a PublicKey: %w", ErrBadKey)
	}
	var j leaseJSON
	if err := json.Unmarshal(raw, &j); err != nil {
		return Key{}, fmt.Errorf("BackendData %s: %v: %w", clip(string(raw)), err, ErrBadKey)
	}
	k, err := ParseKey(j.PublicKey)
	if err != nil {
		return Key{}, fmt.Errorf("BackendData PublicKey: %w", err)
	}
	return k, nil
}
