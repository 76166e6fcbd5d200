package subnet

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
)

func sameJSON(a, b []byte) bool {
	if len(a) == 0 || len(b) == 0 {
		return len(a) == len(b) || string(a) == "null" || string(b) == "null"
	}
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return bytes.Equal(a, b)
	}
	return reflect.DeepEqual(x, y)
}

// FuzzParseConfig: any bytes at <prefix>/config give a usable config or an
// error, never a crash, and a config that parses survives a write and a
// re-read unchanged.
func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		`{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"udp","Port":8285}}`,
		`{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`,
		`{"Network":"10.0.0.0/8","SubnetLen":20,"SubnetMin":"10.10.0.0","SubnetMax":"10.99.0.0"}`,
		`{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56"}`,
		`{"Network":"10.244.0.0/30"}`, `{"Network":"banana"}`, `{}`, `null`, `[`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig("/coreos.com/network/config", data)
		if err != nil {
			return
		}
		if n := c.Subnets(); n <= 0 {
			t.Fatalf("config %s parsed with %d subnets", data, n)
		}
		again, err := ParseConfig("/x/config", c.Marshal())
		if err != nil {
			t.Fatalf("config %s re-read from %s: %v", data, c.Marshal(), err)
		}
		if again.Network != c.Network || again.SubnetLen != c.SubnetLen || again.SubnetMin != c.SubnetMin || again.SubnetMax != c.SubnetMax {
			t.Fatalf("round trip changed %+v into %+v", c, again)
		}
	})
}

// FuzzLease: any lease value and key name parse or fail cleanly; a value
// that parses is written back in flannel's byte form and reads the same.
func FuzzLease(f *testing.F) {
	f.Add("10.244.20.0-24", []byte(`{"PublicIP":"10.99.0.1","PublicIPv6":null}`))
	f.Add("10.244.20.0-24&fd00::-64", []byte(`{"PublicIP":"10.99.0.1","PublicIPv6":"fd01::1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}}`))
	f.Add("10.244.20.0-33", []byte(`{"PublicIP":"not an ip"}`))
	f.Add("garbage", []byte(`[1,2`))
	f.Fuzz(func(t *testing.T, key string, value []byte) {
		parseSubnetKey(key)
		var a Attrs
		if err := a.UnmarshalJSON(value); err != nil {
			return
		}
		out, err := a.MarshalJSON()
		if err != nil {
			t.Fatalf("attrs from %s do not marshal: %v", value, err)
		}
		var b Attrs
		if err := b.UnmarshalJSON(out); err != nil {
			t.Fatalf("re-reading %s: %v", out, err)
		}
		// Backend data may be re-escaped (json.Marshal escapes <, >, & as
		// flanneld's Go does too); it must mean the same.
		if a.PublicIP != b.PublicIP || a.PublicIPv6 != b.PublicIPv6 || a.BackendType != b.BackendType ||
			!sameJSON(a.BackendData, b.BackendData) || !sameJSON(a.BackendV6Data, b.BackendV6Data) {
			t.Fatalf("round trip changed %s into %s", value, out)
		}
		if again, _ := b.MarshalJSON(); !bytes.Equal(again, out) {
			t.Fatalf("marshal is not stable: %s then %s", out, again)
		}
	})
}
