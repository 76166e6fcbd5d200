// Package wireguard owns twill's encrypted overlays: flannel's wireguard
// backend schema (the Backend object of an overlay's config and the
// PublicKey a host publishes in its leases), this host's private key in the
// state directory, and one user-space WireGuard device per encrypted
// overlay (golang.zx2c4.com/wireguard used as a library) behind its own TUN
// device, with peers from the overlay's leases.
//
// wireguard-go gets its packets through a TUN (tunnel) and a UDP socket
// (udpBind) of this package rather than its own, which copy every packet
// once more each way: super-packets are read straight into wireguard-go's
// message buffers, decrypted runs written to the TUN from where they lie,
// GSO trains sent and GRO trains received in place.
//
// Keys are Key values everywhere; they become base64 text only in etcd and
// in the key file.
package wireguard

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/curve25519"
)

// ErrBadKey is wrapped by errors about a key that cannot be read.
var ErrBadKey = errors.New("bad wireguard key")

// Key is a Curve25519 key: a host's private or public key, or a preshared
// key. Its text form is standard base64 (44 characters), as wg(8) and
// flanneld write it.
type Key [32]byte

// GenerateKey returns a new private key, clamped as Curve25519 wants.
func GenerateKey() (Key, error) {
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		return Key{}, fmt.Errorf("generating a wireguard key: %w", err)
	}
	k[0] &= 248
	k[31] = k[31]&127 | 64
	return k, nil
}

// ParseKey reads a key in base64, e.g. "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=".
func ParseKey(s string) (Key, error) {
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil || len(b) != len(Key{}) {
		return Key{}, fmt.Errorf("%q is not a base64 WireGuard key of 32 bytes (as `wg genkey` prints): %w", clip(s), ErrBadKey)
	}
	return Key(b), nil
}

// Public returns the public key of private key k.
func (k Key) Public() Key {
	var p Key
	curve25519.ScalarBaseMult((*[32]byte)(&p), (*[32]byte)(&k))
	return p
}

// String is the base64 form.
func (k Key) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// IsZero reports whether k is all zero (no key).
func (k Key) IsZero() bool { return k == Key{} }

// MarshalText writes the base64 form, as etcd and wg(8) carry keys.
func (k Key) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText reads the base64 form.
func (k *Key) UnmarshalText(b []byte) error {
	p, err := ParseKey(string(b))
	if err != nil {
		return err
	}
	*k = p
	return nil
}

// hex is the form of wireguard-go's configuration protocol.
func (k Key) hex() string { return hex.EncodeToString(k[:]) }

// KeyFile is the private key's file name in the state directory.
const KeyFile = "wireguard.key"

// LoadOrCreateKey returns the private key kept at path, generating and
// writing it (mode 0600, written to a temporary file and renamed, so a crash
// never leaves half a key) when there is none. created says which happened.
// A key file readable by others is made 0600 again.
func LoadOrCreateKey(path string) (k Key, created bool, err error) {
	b, err := os.ReadFile(path)
	if err == nil {
		if k, err = ParseKey(string(b)); err != nil {
			return Key{}, false, fmt.Errorf("private key %s: %w; move it away to have a new key generated (peers pick the new one up from etcd)", path, err)
		}
		if st, err := os.Stat(path); err == nil && st.Mode().Perm()&0o077 != 0 {
			if err := os.Chmod(path, 0o600); err != nil {
				return Key{}, false, fmt.Errorf("private key %s is readable by others and cannot be made 0600: %w", path, err)
			}
		}
		return k, false, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return Key{}, false, fmt.Errorf("reading private key %s: %w", path, err)
	}
	if k, err = GenerateKey(); err != nil {
		return Key{}, false, err
	}
	if err := writeKey(path, k); err != nil {
		return Key{}, false, err
	}
	return k, true, nil
}

func writeKey(path string, k Key) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".wireguard-key-*")
	if err != nil {
		return fmt.Errorf("writing private key %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
			err = fmt.Errorf("writing private key %s: %w", path, err)
		}
	}()
	if err = f.Chmod(0o600); err != nil {
		return err
	}
	if _, err = f.WriteString(k.String() + "\n"); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(f.Name(), path); err != nil {
		return err
	}
	if d, derr := os.Open(dir); derr == nil { // make the rename durable
		d.Sync()
		d.Close()
	}
	return nil
}

func clip(s string) string {
	s = strings.TrimSpace(s)
	if len(s) > 60 {
		return s[:57] + "..."
	}
	return s
}
