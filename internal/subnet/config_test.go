package subnet

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestParseConfigAsFlanneldWritesIt(t *testing.T) {
	mp := netip.MustParsePrefix
	ma := netip.MustParseAddr
	tests := []struct {
		name, json string
		want       Config
		subnets    int
	}{
		{"udp with port", `{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"udp","Port":8285}}`,
			Config{Network: mp("10.244.0.0/16"), SubnetLen: 24, SubnetMin: ma("10.244.1.0"), SubnetMax: ma("10.244.255.0"), BackendType: "udp", Port: 8285}, 255},
		{"no backend: udp, default port, default SubnetLen", `{"Network":"10.5.0.0/16"}`,
			Config{Network: mp("10.5.0.0/16"), SubnetLen: 24, SubnetMin: ma("10.5.1.0"), SubnetMax: ma("10.5.255.0"), BackendType: "udp", Port: 8285}, 255},
		{"vxlan, spaces, unknown fields", `{ "Network": "10.5.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}, "Foo": 1 }`,
			Config{Network: mp("10.5.0.0/16"), SubnetLen: 24, SubnetMin: ma("10.5.1.0"), SubnetMax: ma("10.5.255.0"), BackendType: "vxlan", Port: 8285}, 255},
		{"dual stack", `{"EnableIPv4":true,"EnableIPv6":true,"Network":"10.42.0.0/16","IPv6Network":"2001:cafe:42::/56","Backend":{"Type":"vxlan"}}`,
			Config{Network: mp("10.42.0.0/16"), SubnetLen: 24, SubnetMin: ma("10.42.1.0"), SubnetMax: ma("10.42.255.0"), BackendType: "vxlan", Port: 8285}, 255},
		{"SubnetMin/Max and other port", `{"Network":"10.96.0.0/16","SubnetLen":24,"SubnetMin":"10.96.10.0","SubnetMax":"10.96.19.0","Backend":{"Type":"udp","Port":9000}}`,
			Config{Network: mp("10.96.0.0/16"), SubnetLen: 24, SubnetMin: ma("10.96.10.0"), SubnetMax: ma("10.96.19.0"), BackendType: "udp", Port: 9000}, 10},
		{"small network: flannel's +2 default", `{"Network":"10.1.2.0/24"}`,
			Config{Network: mp("10.1.2.0/24"), SubnetLen: 26, SubnetMin: ma("10.1.2.64"), SubnetMax: ma("10.1.2.192"), BackendType: "udp", Port: 8285}, 3},
		{"/8 with /24", `{"Network":"10.0.0.0/8","SubnetLen":24}`,
			Config{Network: mp("10.0.0.0/8"), SubnetLen: 24, SubnetMin: ma("10.0.1.0"), SubnetMax: ma("10.255.255.0"), BackendType: "udp", Port: 8285}, 65535},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseConfig("/coreos.com/network/config", []byte(tt.json))
			if err != nil {
				t.Fatal(err)
			}
			c.Backend = nil
			if !equalConfig(c, tt.want) {
				t.Fatalf("got %+v\nwant %+v", c, tt.want)
			}
			if got := c.Subnets(); got != tt.subnets {
				t.Errorf("Subnets() = %d, want %d", got, tt.subnets)
			}
		})
	}
}

func equalConfig(a, b Config) bool {
	return a.Network == b.Network && a.SubnetLen == b.SubnetLen && a.SubnetMin == b.SubnetMin &&
		a.SubnetMax == b.SubnetMax && a.BackendType == b.BackendType && a.Port == b.Port
}

func TestParseConfigRefusesWithKeyAndReason(t *testing.T) {
	const key = "/coreos.com/network/config"
	tests := []struct{ json, want string }{
		{`garbage`, "not valid JSON"},
		{``, "not valid JSON"},
		{`{"Network":"10.244.0.0/16"`, "not valid JSON"},
		{`{}`, "no Network"},
		{`{"Network":"banana"}`, `Network "banana" is not an IPv4 prefix`},
		{`{"Network":"10.244.0.0/33"}`, "not an IPv4 prefix"},
		{`{"Network":"fd00::/48"}`, "not an IPv4 prefix"},
		{`{"Network":"10.244.0.0/16","SubnetLen":"24"}`, "not valid JSON"},
		{`{"Network":"10.244.0.0/16","SubnetLen":31}`, "SubnetLen 31 does not fit"},
		{`{"Network":"10.244.0.0/16","SubnetLen":16}`, "SubnetLen 16 does not fit in Network 10.244.0.0/16"},
		{`{"Network":"10.244.0.0/16","SubnetLen":17}`, "at least 18"},
		{`{"Network":"10.1.2.0/30"}`, "too small"},
		{`{"Network":"10.244.0.0/16","SubnetMin":"10.245.0.0"}`, "SubnetMin 10.245.0.0 is not inside"},
		{`{"Network":"10.244.0.0/16","SubnetMax":"10.244.3.7"}`, "not on a /24 boundary"},
		{`{"Network":"10.244.0.0/16","SubnetMin":"10.244.9.0","SubnetMax":"10.244.3.0"}`, "below SubnetMin"},
		{`{"Network":"10.244.0.0/16","Backend":{"Type":"udp","Port":70000}}`, "not a UDP port"},
		{`{"Network":"10.244.0.0/16","Backend":"udp"}`, "Backend"},
	}
	for _, tt := range tests {
		_, err := ParseConfig(key, []byte(tt.json))
		if err == nil {
			t.Errorf("%s: accepted", tt.json)
			continue
		}
		if !errors.Is(err, ErrBadConfig) {
			t.Errorf("%s: %v does not wrap ErrBadConfig", tt.json, err)
		}
		if !strings.Contains(err.Error(), key) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %q should quote the key and say %q", tt.json, err, tt.want)
		}
	}
}

func TestConfigMarshalIsFlannelsJSON(t *testing.T) {
	c, err := NewConfig(netip.MustParsePrefix("10.96.0.0/16"), 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	const want = `{"Network":"10.96.0.0/16","SubnetLen":24,"Backend":{"Type":"udp","Port":8285}}`
	if got := string(c.Marshal()); got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	// What we write, flannel-style parsing reads back identically.
	back, err := ParseConfig("k", c.Marshal())
	if err != nil || !equalConfig(back, c) {
		t.Fatalf("round trip: %+v, %v", back, err)
	}
	// Non-default SubnetMin/Max survive a round trip.
	c2, _ := ParseConfig("k", []byte(`{"Network":"10.96.0.0/16","SubnetLen":24,"SubnetMin":"10.96.10.0","Backend":{"Type":"udp","Port":8285}}`))
	if got := string(c2.Marshal()); got != `{"Network":"10.96.0.0/16","SubnetLen":24,"SubnetMin":"10.96.10.0","Backend":{"Type":"udp","Port":8285}}` {
		t.Fatalf("got %s", got)
	}
}

func TestConfigHolds(t *testing.T) {
	c, _ := NewConfig(netip.MustParsePrefix("10.96.0.0/16"), 24, 0)
	for s, want := range map[string]bool{
		"10.96.0.0/24": false, // the network's own subnet is skipped
		"10.96.1.0/24": true, "10.96.255.0/24": true,
		"10.96.7.0/25": false, "10.97.0.0/24": false, "10.96.7.128/24": false,
	} {
		if got := c.Holds(netip.MustParsePrefix(s)); got != want {
			t.Errorf("Holds(%s) = %v, want %v", s, got, want)
		}
	}
	if c.subnetAt(0) != netip.MustParsePrefix("10.96.1.0/24") || c.indexOf(netip.MustParsePrefix("10.96.255.0/24")) != 254 {
		t.Error("subnetAt/indexOf wrong")
	}
}
