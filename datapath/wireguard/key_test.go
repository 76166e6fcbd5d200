package wireguard

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestKeyTextAndPublic(t *testing.T) {
	// RFC 7748 section 6.1: Alice's private and public key.
	priv := Key{0x77, 0x07, 0x6d, 0x0a, 0x73, 0x18, 0xa5, 0x7d, 0x3c, 0x16, 0xc1, 0x72, 0x51, 0xb2, 0x66, 0x45, 0xdf, 0x4c, 0x2f, 0x87, 0xeb, 0xc0, 0x99, 0x2a, 0xb1, 0x77, 0xfb, 0xa5, 0x1d, 0xb9, 0x2c, 0x2a}
	want := Key{0x85, 0x20, 0xf0, 0x09, 0x89, 0x30, 0xa7, 0x54, 0x74, 0x8b, 0x7d, 0xdc, 0xb4, 0x3e, 0xf7, 0x5a, 0x0d, 0xbf, 0x3a, 0x0d, 0x26, 0x38, 0x1a, 0xf4, 0xeb, 0xa4, 0xa9, 0x8e, 0xaa, 0x9b, 0x4e, 0x6a}
	if got := priv.Public(); got != want {
		t.Errorf("public key %s, want %s", got, want)
	}
	back, err := ParseKey(want.String())
	if err != nil || back != want {
		t.Errorf("ParseKey(String()) = %s, %v", back, err)
	}
	for _, bad := range []string{"", "abc", "AAAA", strings.Repeat("A", 43) + "="[:0], "!" + want.String()[1:]} {
		if _, err := ParseKey(bad); !errors.Is(err, ErrBadKey) {
			t.Errorf("ParseKey(%q): %v, want ErrBadKey", bad, err)
		}
	}
}

func TestKeyFileSurvivesRestarts(t *testing.T) {
	path := filepath.Join(t.TempDir(), KeyFile)
	k, created, err := LoadOrCreateKey(path)
	if err != nil || !created || k.IsZero() {
		t.Fatalf("first start: %v created=%v", err, created)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v (%v), want 0600", st.Mode().Perm(), err)
	}
	again, created, err := LoadOrCreateKey(path)
	if err != nil || created || again != k {
		t.Fatalf("second start: %s created=%v %v, want the same key", again, created, err)
	}
	os.Chmod(path, 0o644)
	if _, _, err := LoadOrCreateKey(path); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("a key file readable by others stays %v", st.Mode().Perm())
	}
	os.WriteFile(path, []byte("not a key\n"), 0o600)
	if _, _, err := LoadOrCreateKey(path); !errors.Is(err, ErrBadKey) || !strings.Contains(err.Error(), path) {
		t.Errorf("damaged key file: %v, want ErrBadKey naming the file", err)
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Errorf("state dir holds %d files, want only the key", len(entries))
	}
}

func TestParseBackendAsFlannel(t *testing.T) {
	psk, _ := GenerateKey()
	cases := []struct {
		in   string
		want Backend
		err  string
	}{
		{`{"Type":"wireguard"}`, Backend{ListenPort: 51820, Mode: "separate"}, ""},
		{`{"Type":"wireguard","ListenPort":51999,"PersistentKeepaliveInterval":25,"PSK":"` + psk.String() + `","Mode":"auto","ListenPortV6":51821}`,
			Backend{ListenPort: 51999, PersistentKeepalive: 25 * time.Second, PSK: &psk, Mode: "auto"}, ""},
		{`{"Type":"udp"}`, Backend{}, `not "wireguard"`},
		{`{"Type":"wireguard","ListenPort":70000}`, Backend{}, "not a UDP port"},
		{`{"Type":"wireguard","PersistentKeepaliveInterval":"25s"}`, Backend{}, "whole numbers"},
		{`{"Type":"wireguard","PSK":"secret"}`, Backend{}, "wg genpsk"},
		{`{"Type":"wireguard","Mode":"ipv6"}`, Backend{}, "IPv4"},
		{`{"Type":"wireguard","Mode":"both"}`, Backend{}, "none of flannel's"},
	}
	for _, c := range cases {
		got, err := ParseBackend(json.RawMessage(c.in))
		if c.err != "" {
			if !errors.Is(err, ErrBadBackend) || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: %v, want an error saying %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil || got.ListenPort != c.want.ListenPort || got.PersistentKeepalive != c.want.PersistentKeepalive ||
			got.Mode != c.want.Mode || (got.PSK == nil) != (c.want.PSK == nil) || got.PSK != nil && *got.PSK != *c.want.PSK {
			t.Errorf("%s: %+v %v, want %+v", c.in, got, err, c.want)
		}
		// What twill writes reads back the same.
		raw, _ := got.MarshalJSON()
		if again, err := ParseBackend(raw); err != nil || again.ListenPort != got.ListenPort || again.PersistentKeepalive != got.PersistentKeepalive || again.Mode != got.Mode {
			t.Errorf("%s: round trip %s -> %+v %v", c.in, raw, again, err)
		}
	}
	if raw, _ := (Backend{}).MarshalJSON(); string(raw) != `{"Type":"wireguard","ListenPort":51820}` {
		t.Errorf("default backend written as %s", raw)
	}
}

func TestLeaseDataAsFlanneld(t *testing.T) {
	k, _ := GenerateKey()
	pub := k.Public()
	raw := LeaseData(pub)
	if string(raw) != `{"PublicKey":"`+pub.String()+`"}` {
		t.Errorf("BackendData %s", raw)
	}
	if got, err := ParseLeaseData(raw); err != nil || got != pub {
		t.Errorf("ParseLeaseData: %s %v", got, err)
	}
	for _, bad := range []string{``, `{}`, `{"PublicKey":"x"}`, `[1]`} {
		if _, err := ParseLeaseData(json.RawMessage(bad)); !errors.Is(err, ErrBadKey) {
			t.Errorf("ParseLeaseData(%s): %v, want ErrBadKey", bad, err)
		}
	}
}
