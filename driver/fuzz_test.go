package driver

import (
	"encoding/json"
	"net/netip"
	"testing"
)

// FuzzParsePortMap feeds arbitrary com.docker.network.portmap values: the
// parser never panics and every accepted map is a valid tcp/udp mapping.
func FuzzParsePortMap(f *testing.F) {
	f.Add(`[{"Proto":6,"IP":"","Port":80,"HostIP":"","HostPort":8080,"HostPortEnd":8080}]`)
	f.Add(`[{"Proto":17,"Port":53,"HostIP":"::","HostPort":53}]`)
	f.Add(`[]`)
	f.Add(`null`)
	c := netip.MustParseAddr("10.96.7.50")
	f.Fuzz(func(t *testing.T, js string) {
		var raw any
		if json.Unmarshal([]byte(js), &raw) != nil {
			return
		}
		ports, err := parsePortMap(raw, c)
		if err != nil {
			return
		}
		for _, p := range ports {
			if (p.Proto != "tcp" && p.Proto != "udp") || p.HostPort == 0 || p.Container.Port() == 0 || p.Container.Addr() != c {
				t.Fatalf("%s accepted as %+v", js, p)
			}
			if p.HostIP.IsValid() && !p.HostIP.Is4() {
				t.Fatalf("%s: IPv6 host address %s accepted", js, p.HostIP)
			}
		}
	})
}
