package links

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
)

func TestValidName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"tw-0123abcd", true},
		{"twv0123456789ab", true}, // exactly 15
		{"twv0123456789abc", false},
		{"", false},
		{"a/b", false},
		{"a b", false},
		{"a:1", false},
		{"..", false},
	} {
		err := ValidName(tc.name)
		if (err == nil) != tc.ok {
			t.Errorf("ValidName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidName(%q) = %v, not ErrInvalidName", tc.name, err)
		}
	}
	err := ValidName("twv0123456789abc")
	if !strings.Contains(err.Error(), "twv0123456789abc") || !strings.Contains(err.Error(), "15") {
		t.Errorf("error %q should name the link and the limit", err)
	}
}

func TestValidArguments(t *testing.T) {
	if err := validMTU(0); err != nil {
		t.Errorf("mtu 0: %v", err)
	}
	if err := validMTU(1472); err != nil {
		t.Errorf("mtu 1472: %v", err)
	}
	for _, m := range []int{-1, 67, 65536} {
		if err := validMTU(m); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("mtu %d: %v, want ErrInvalidArgument", m, err)
		}
	}
	if err := validGateway(netip.MustParsePrefix("10.96.3.1/24")); err != nil {
		t.Error(err)
	}
	for _, p := range []netip.Prefix{{}, netip.MustParsePrefix("fd00::1/64")} {
		if err := validGateway(p); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("gateway %v: %v, want ErrInvalidArgument", p, err)
		}
	}
	if err := validMAC(nil); err != nil {
		t.Error(err)
	}
	if err := validMAC(net.HardwareAddr{0x02, 0x42, 0x0a, 0x60, 0x03, 0x02}); err != nil {
		t.Error(err)
	}
	for _, m := range []net.HardwareAddr{{1, 2, 3}, {0x01, 0, 0x5e, 0, 0, 1}} {
		if err := validMAC(m); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("mac %v: %v, want ErrInvalidArgument", m, err)
		}
	}
}
