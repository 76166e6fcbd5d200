package subnet

import (
	"encoding/json"
	"errors"
	"net/netip"
	"testing"
)

func TestAttrsJSONIsFlannels(t *testing.T) {
	a := Attrs{PublicIP: netip.MustParseAddr("10.99.0.1")}
	b, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(b), `{"PublicIP":"10.99.0.1","PublicIPv6":null}`; got != want {
		t.Fatalf("udp lease value %s, want flanneld's %s", got, want)
	}
	a.PublicIPv6 = netip.MustParseAddr("fd00::1")
	a.BackendType = "vxlan"
	a.BackendData = json.RawMessage(`{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}`)
	b, _ = json.Marshal(a)
	if got, want := string(b), `{"PublicIP":"10.99.0.1","PublicIPv6":"fd00::1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}`; got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}

func TestAttrsReadsFlanneldValues(t *testing.T) {
	tests := []struct {
		json string
		want Attrs
	}{
		{`{"PublicIP":"10.99.0.1","PublicIPv6":null}`, Attrs{PublicIP: netip.MustParseAddr("10.99.0.1")}},
		{`{"PublicIP":"10.99.0.1"}`, Attrs{PublicIP: netip.MustParseAddr("10.99.0.1")}},
		{`{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}`,
			Attrs{PublicIP: netip.MustParseAddr("192.168.64.3"), BackendType: "vxlan", BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}`)}},
		{`{"PublicIP":"192.168.64.3","PublicIPv6":"fd00::3","BackendType":"wireguard","BackendData":null,"BackendV6Data":{"PublicKey":"x"},"Extra":[1,2]}`,
			Attrs{PublicIP: netip.MustParseAddr("192.168.64.3"), PublicIPv6: netip.MustParseAddr("fd00::3"), BackendType: "wireguard", BackendV6Data: json.RawMessage(`{"PublicKey":"x"}`)}},
	}
	for _, tt := range tests {
		var a Attrs
		if err := json.Unmarshal([]byte(tt.json), &a); err != nil {
			t.Errorf("%s: %v", tt.json, err)
			continue
		}
		if !a.Equal(tt.want) {
			t.Errorf("%s: got %+v, want %+v", tt.json, a, tt.want)
		}
	}
	for _, bad := range []string{`garbage`, `{}`, `{"PublicIP":""}`, `{"PublicIP":"fd00::1"}`, `{"PublicIP":7}`, `null`} {
		var a Attrs
		err := a.UnmarshalJSON([]byte(bad))
		if !errors.Is(err, ErrBadLease) {
			t.Errorf("%s: err %v, want ErrBadLease", bad, err)
		}
	}
}

func TestSubnetKeys(t *testing.T) {
	if got := subnetKey(netip.MustParsePrefix("10.244.20.0/24")); got != "10.244.20.0-24" {
		t.Fatalf("key %s", got)
	}
	sn, sn6, err := parseSubnetKey("10.244.20.0-24")
	if err != nil || sn != netip.MustParsePrefix("10.244.20.0/24") || sn6.IsValid() {
		t.Fatalf("%v %v %v", sn, sn6, err)
	}
	sn, sn6, err = parseSubnetKey("10.42.1.0-24&2001:cafe:42:1::-64")
	if err != nil || sn != netip.MustParsePrefix("10.42.1.0/24") || sn6 != netip.MustParsePrefix("2001:cafe:42:1::/64") {
		t.Fatalf("dual stack: %v %v %v", sn, sn6, err)
	}
	for _, bad := range []string{"", "garbage", "10.244.20.0", "10.244.20.0-33", "10.244.20.1-24", "fd00::-64", "10.244.20.0/24", "10.244.20.0-24&x"} {
		if _, _, err := parseSubnetKey(bad); !errors.Is(err, ErrBadLease) {
			t.Errorf("parseSubnetKey(%q) = %v, want ErrBadLease", bad, err)
		}
	}
}
