package firewall

import (
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

var (
	blue = Network{Bridge: "tw-blue", Subnet: netip.MustParsePrefix("10.96.3.0/24"), Overlay: netip.MustParsePrefix("10.96.0.0/16")}
	red  = Network{Bridge: "tw-red", Subnet: netip.MustParsePrefix("10.97.3.0/24"), Overlay: netip.MustParsePrefix("10.97.0.0/16")}
	// internal network on a third overlay
	vault = Network{Bridge: "tw-vault", Subnet: netip.MustParsePrefix("10.98.3.0/24"), Overlay: netip.MustParsePrefix("10.98.0.0/16"), Internal: true}

	webAll = PortMap{Bridge: "tw-blue", Proto: "tcp", HostPort: 8080, Container: netip.MustParseAddrPort("10.96.3.2:80")}
	dnsOne = PortMap{Bridge: "tw-red", Proto: "udp", HostIP: netip.MustParseAddr("192.0.2.10"), HostPort: 53, Container: netip.MustParseAddrPort("10.97.3.5:5353")}
	vaultP = PortMap{Bridge: "tw-vault", Proto: "tcp", HostPort: 9000, Container: netip.MustParseAddrPort("10.98.3.2:9000")}
)

const wantRender = `*filter
:TWILL-FORWARD - [0:0]
:TWILL-ISOLATION - [0:0]
-A TWILL-FORWARD -o tw-blue -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A TWILL-FORWARD -o tw-red -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A TWILL-FORWARD -o tw-vault -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A TWILL-FORWARD -d 10.96.3.2/32 -o tw-blue -p tcp -m tcp --dport 80 -m conntrack --ctstate DNAT -j ACCEPT
-A TWILL-FORWARD -d 10.97.3.5/32 -o tw-red -p udp -m udp --dport 5353 -m conntrack --ctstate DNAT -j ACCEPT
-A TWILL-FORWARD -i tw-blue -o tw-blue -j ACCEPT
-A TWILL-FORWARD -i tw-blue -o twill0 -d 10.96.0.0/16 -j ACCEPT
-A TWILL-FORWARD -i twill0 -o tw-blue -s 10.96.0.0/16 -j ACCEPT
-A TWILL-FORWARD -i tw-red -o tw-red -j ACCEPT
-A TWILL-FORWARD -i tw-red -o twill0 -d 10.97.0.0/16 -j ACCEPT
-A TWILL-FORWARD -i twill0 -o tw-red -s 10.97.0.0/16 -j ACCEPT
-A TWILL-FORWARD -i tw-vault -o tw-vault -j ACCEPT
-A TWILL-FORWARD -i tw-vault -o twill0 -d 10.98.0.0/16 -j ACCEPT
-A TWILL-FORWARD -i twill0 -o tw-vault -s 10.98.0.0/16 -j ACCEPT
-A TWILL-FORWARD -j TWILL-ISOLATION
-A TWILL-FORWARD -i tw-blue -j ACCEPT
-A TWILL-FORWARD -i tw-red -j ACCEPT
-A TWILL-FORWARD -i tw-vault -j DROP
-A TWILL-ISOLATION -o tw-blue -j DROP
-A TWILL-ISOLATION -o tw-red -j DROP
-A TWILL-ISOLATION -o tw-vault -j DROP
-A TWILL-ISOLATION -i tw-blue -o twill0 -j DROP
-A TWILL-ISOLATION -i tw-red -o twill0 -j DROP
-A TWILL-ISOLATION -i tw-vault -o twill0 -j DROP
COMMIT
*nat
:TWILL-POSTROUTING - [0:0]
:TWILL-DNAT - [0:0]
-A TWILL-POSTROUTING -s 10.96.3.0/24 -d 10.96.3.2/32 -o tw-blue -p tcp -m tcp --dport 80 -m conntrack --ctstate DNAT -j MASQUERADE
-A TWILL-POSTROUTING -s 10.97.3.0/24 -d 10.97.3.5/32 -o tw-red -p udp -m udp --dport 5353 -m conntrack --ctstate DNAT -j MASQUERADE
-A TWILL-POSTROUTING -d 10.96.0.0/16 -j RETURN
-A TWILL-POSTROUTING -d 10.97.0.0/16 -j RETURN
-A TWILL-POSTROUTING -d 10.98.0.0/16 -j RETURN
-A TWILL-POSTROUTING -s 10.96.3.0/24 ! -o tw-blue -j MASQUERADE
-A TWILL-POSTROUTING -s 10.97.3.0/24 ! -o tw-red -j MASQUERADE
-A TWILL-DNAT -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.96.3.2:80
-A TWILL-DNAT -d 192.0.2.10/32 -p udp -m udp --dport 53 -j DNAT --to-destination 10.97.3.5:5353
COMMIT
`

func TestRenderGolden(t *testing.T) {
	s := State{Tunnel: "twill0", Networks: []Network{vault, red, blue}, PortMaps: []PortMap{vaultP, dnsOne, webAll}}
	got := Render(s)
	if got != wantRender {
		t.Errorf("Render:\n%s\nwant:\n%s", got, wantRender)
	}
	// Any input order renders the same text.
	r := rand.New(rand.NewPCG(1, 2))
	for range 20 {
		r.Shuffle(len(s.Networks), func(i, j int) { s.Networks[i], s.Networks[j] = s.Networks[j], s.Networks[i] })
		r.Shuffle(len(s.PortMaps), func(i, j int) { s.PortMaps[i], s.PortMaps[j] = s.PortMaps[j], s.PortMaps[i] })
		if Render(s) != got {
			t.Fatalf("render depends on input order: %v %v", s.Networks, s.PortMaps)
		}
	}
}

func TestRenderEmptyStillDeclaresChains(t *testing.T) {
	// No state: the chains are created (or emptied) and keep only the
	// isolation jump, so stale rules of an earlier run vanish.
	got := Render(State{Tunnel: "twill0"})
	want := "*filter\n:TWILL-FORWARD - [0:0]\n:TWILL-ISOLATION - [0:0]\n-A TWILL-FORWARD -j TWILL-ISOLATION\nCOMMIT\n" +
		"*nat\n:TWILL-POSTROUTING - [0:0]\n:TWILL-DNAT - [0:0]\nCOMMIT\n"
	if got != want {
		t.Errorf("Render(empty):\n%s\nwant:\n%s", got, want)
	}
}

// rulesOf returns the -A lines of chain in rendered text, in order.
func rulesOf(text, chain string) []string {
	var out []string
	for l := range strings.SplitSeq(text, "\n") {
		if strings.HasPrefix(l, "-A "+chain+" ") {
			out = append(out, l)
		}
	}
	return out
}

func TestRenderSemantics(t *testing.T) {
	text := Render(State{Tunnel: "twill0", Networks: []Network{blue, red, vault}, PortMaps: []PortMap{webAll, vaultP}})
	post := rulesOf(text, ChainPostrouting)

	// Masquerade never applies towards any overlay: every plain (non-
	// hairpin) MASQUERADE comes after the RETURN of every overlay.
	lastReturn := -1
	for i, r := range post {
		if strings.HasSuffix(r, "-j RETURN") {
			lastReturn = i
		}
	}
	for _, o := range []string{"10.96.0.0/16", "10.97.0.0/16", "10.98.0.0/16"} {
		if !slices.Contains(post, "-A TWILL-POSTROUTING -d "+o+" -j RETURN") {
			t.Errorf("no RETURN for overlay %s", o)
		}
	}
	for i, r := range post {
		if strings.HasSuffix(r, "MASQUERADE") && !strings.Contains(r, "--ctstate DNAT") && i < lastReturn {
			t.Errorf("masquerade %q comes before an overlay RETURN", r)
		}
	}
	// The internal network is neither masqueraded nor published.
	if strings.Contains(text, "-s 10.98.3.0/24") || strings.Contains(text, "10.98.3.2:9000") || strings.Contains(text, "--dport 9000") {
		t.Errorf("internal network has NAT rules:\n%s", text)
	}
	fwd := rulesOf(text, ChainForward)
	if !slices.Contains(fwd, "-A TWILL-FORWARD -i tw-vault -j DROP") || slices.Contains(fwd, "-A TWILL-FORWARD -i tw-vault -j ACCEPT") {
		t.Error("internal network may leave its bridge")
	}
	// Isolation is consulted before any rule that lets a network out.
	iso := slices.Index(fwd, "-A TWILL-FORWARD -j TWILL-ISOLATION")
	for i, r := range fwd {
		if strings.HasSuffix(r, "-j ACCEPT") && !strings.Contains(r, "-o ") && i < iso {
			t.Errorf("%q accepts before isolation", r)
		}
	}
	// Every tunnel rule names the network's own overlay.
	for _, r := range fwd {
		if strings.Contains(r, "twill0") && !strings.Contains(r, "/16") {
			t.Errorf("tunnel rule without overlay: %q", r)
		}
	}
}

func TestRenderUnknownBridgePortMap(t *testing.T) {
	// A port map re-added before its network after a restart is still
	// published, without hairpin NAT (its subnet is not known yet).
	text := Render(State{Tunnel: "twill0", PortMaps: []PortMap{webAll}})
	if !strings.Contains(text, "-A TWILL-DNAT -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.96.3.2:80\n") {
		t.Errorf("no DNAT:\n%s", text)
	}
	if strings.Contains(text, "MASQUERADE") {
		t.Errorf("hairpin without a subnet:\n%s", text)
	}
}

func TestRenderDelete(t *testing.T) {
	got := renderDelete()
	for _, c := range []string{ChainForward, ChainIsolation, ChainPostrouting, ChainDNAT} {
		if !strings.Contains(got, ":"+c+" - [0:0]\n") || !strings.Contains(got, "-X "+c+"\n") {
			t.Errorf("renderDelete misses %s:\n%s", c, got)
		}
	}
}

// The encrypted overlays' devices are tunnels like twill0: a network reaches
// them only towards its own overlay, and they reach it only from there.
func TestRenderEncryptedTunnels(t *testing.T) {
	got := Render(State{Tunnel: "twill0", Encrypted: "twg", Networks: []Network{blue, red}})
	for _, want := range []string{
		"-A TWILL-FORWARD -i tw-blue -o twg+ -d 10.96.0.0/16 -j ACCEPT\n",
		"-A TWILL-FORWARD -i twg+ -o tw-blue -s 10.96.0.0/16 -j ACCEPT\n",
		"-A TWILL-FORWARD -i tw-red -o twg+ -d 10.97.0.0/16 -j ACCEPT\n",
		"-A TWILL-ISOLATION -i tw-blue -o twg+ -j DROP\n",
		"-A TWILL-ISOLATION -i tw-red -o twg+ -j DROP\n",
		"-A TWILL-ISOLATION -i tw-red -o twill0 -j DROP\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("rules lack %q:\n%s", want, got)
		}
	}
	if plain := Render(State{Tunnel: "twill0", Networks: []Network{blue, red}}); strings.Contains(plain, "twg") {
		t.Errorf("without encrypted tunnels the rules name twg:\n%s", plain)
	}
}
