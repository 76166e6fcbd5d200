package driver

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	netapi "github.com/docker/go-plugins-helpers/network"
)

// -o twill.backend=wireguard asks the overlay's backend before the network
// is made; the encrypted tunnel's smaller MTU is the network's default and
// bound.
func TestBackendOption(t *testing.T) {
	var asked []string
	encrypted := map[netip.Prefix]bool{}
	r := newRig(t, nil)
	r.d.cfg = Config{
		MTU: mtu, PluginName: "twill:latest",
		OverlayMTU: func(ov netip.Prefix) int {
			if encrypted[ov] {
				return mtu - 52
			}
			return 0
		},
		SetBackend: func(_ context.Context, ov netip.Prefix, be string) error {
			asked = append(asked, fmt.Sprintf("%s=%s", ov, be))
			if be == "udp" {
				return errors.New("overlay already uses the wireguard backend between 2 other host(s)")
			}
			encrypted[ov] = true
			return nil
		},
	}
	req := decode[netapi.CreateNetworkRequest](t, createNetworkJSON(netID, "10.96.7.0/24", "10.96.7.1/24", "twill-local", `"twill.backend":"wireguard"`))
	if err := r.d.CreateNetwork(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	if len(asked) != 1 || asked[0] != "10.96.0.0/16=wireguard" {
		t.Errorf("SetBackend calls %v", asked)
	}
	if b, _ := r.links.Bridge("tw-5c87f637"); b.MTU != mtu-52 {
		t.Errorf("bridge mtu %d, want the encrypted tunnel's %d", b.MTU, mtu-52)
	}
	other := "0c950605" + netID[8:]
	for _, c := range []struct{ extra, mention string }{
		{`"twill.backend":"udp"`, "already uses the wireguard backend"},
		{`"twill.backend":"ipsec"`, "use udp (plain"},
		{`"twill.backend":"wireguard","com.docker.network.driver.mtu":"1472"`, "tunnel MTU 1420"},
	} {
		err := r.d.CreateNetwork(context.Background(), decode[netapi.CreateNetworkRequest](t, createNetworkJSON(other, "10.96.7.0/24", "10.96.7.1/24", "twill-local", c.extra)))
		if err == nil || !strings.Contains(err.Error(), c.mention) || !strings.Contains(err.Error(), "twill.backend") && !strings.Contains(err.Error(), "mtu") {
			t.Errorf("-o %s: %v, want an error mentioning %q", c.extra, err, c.mention)
		}
	}
}
