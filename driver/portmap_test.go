package driver

import (
	"net/netip"
	"testing"
)

func TestPortMapStringIsDockers(t *testing.T) {
	for _, c := range []struct {
		p    PortMap
		want string
	}{
		{PortMap{Proto: "tcp", HostPort: 8080, Container: netip.MustParseAddrPort("10.96.1.2:80")}, "0.0.0.0:8080->80/tcp"},
		{PortMap{Proto: "udp", HostIP: netip.MustParseAddr("10.0.0.5"), HostPort: 5353, Container: netip.MustParseAddrPort("10.96.1.2:53")}, "10.0.0.5:5353->53/udp"},
	} {
		if got := c.p.String(); got != c.want {
			t.Errorf("%+v: %q, want %q", c.p, got, c.want)
		}
	}
}
