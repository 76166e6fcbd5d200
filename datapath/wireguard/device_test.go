package wireguard

import (
	"bytes"
	"net/netip"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/tun/tuntest"
)

// pair is two hosts of overlay 10.97.0.0/16 in one process: channel TUNs
// and a channel "network" between their binds.
type pair struct {
	tuns [2]*tuntest.ChannelTUN
	devs [2]*Device
	keys [2]Key
	subs [2]netip.Prefix
	eps  [2]netip.AddrPort // how each is reached (bindtest: by port)
}

var overlay = netip.MustParsePrefix("10.97.0.0/16")

func newPair(t *testing.T, be Backend) *pair { return newPairIntroduced(t, be, false) }

// newPairIntroduced is newPair whose devices, with introduce, are as fresh
// as a host's that just started: each introduces itself to the other.
func newPairIntroduced(t *testing.T, be Backend, introduce bool) *pair {
	t.Helper()
	p := &pair{subs: [2]netip.Prefix{netip.MustParsePrefix("10.97.1.0/24"), netip.MustParsePrefix("10.97.2.0/24")}}
	binds := bindtest.NewChannelBinds()
	p.eps = [2]netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:2"), netip.MustParseAddrPort("127.0.0.1:1")}
	for i := range 2 {
		k, err := GenerateKey()
		if err != nil {
			t.Fatal(err)
		}
		p.keys[i] = k
		p.tuns[i] = tuntest.NewChannelTUN()
		d, err := New(Config{Overlay: overlay, Local: p.subs[i], PrivateKey: k, Backend: be}, p.tuns[i].TUN(), binds[i])
		if err != nil {
			t.Fatal(err)
		}
		if !introduce {
			d.introduceUntil = time.Time{} // the first packet starts the handshake
		}
		p.devs[i] = d
		t.Cleanup(func() { d.Close() })
	}
	for i := range 2 {
		j := 1 - i
		if err := p.devs[i].SetPeer(Peer{Subnet: p.subs[j], PublicKey: p.keys[j].Public(), Endpoint: p.eps[j]}); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// send puts pkt into host i's TUN and returns what host 1-i's TUN delivers
// within d, or nil.
func (p *pair) send(t *testing.T, i int, pkt []byte, d time.Duration) []byte {
	t.Helper()
	select {
	case p.tuns[i].Outbound <- pkt:
	case <-time.After(2 * time.Second):
		t.Fatal("device did not read its TUN")
	}
	select {
	case got := <-p.tuns[1-i].Inbound:
		return got
	case <-time.After(d):
		return nil
	}
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func TestPeersExchangeAndHandshake(t *testing.T) {
	p := newPair(t, Backend{ListenPort: 51820})
	pkt := tuntest.Ping(addr("10.97.2.5"), addr("10.97.1.5"))
	if got := p.send(t, 0, pkt, 5*time.Second); !bytes.Equal(got, pkt) {
		t.Fatalf("host 2 got %x, want the ping", got)
	}
	back := tuntest.Ping(addr("10.97.1.5"), addr("10.97.2.5"))
	if got := p.send(t, 1, back, 5*time.Second); !bytes.Equal(got, back) {
		t.Fatalf("host 1 got %x, want the ping", got)
	}
	st := p.devs[0].Stats()
	if len(st.Peers) != 1 || st.Peers[0].Subnet != p.subs[1] || st.Peers[0].LastHandshake.IsZero() ||
		time.Since(st.Peers[0].LastHandshake) > time.Minute || st.Peers[0].BytesIn == 0 || st.Peers[0].BytesOut == 0 {
		t.Errorf("stats %+v: want one peer with a recent handshake and bytes both ways", st)
	}
}

func TestFilterKeepsTheOverlayToItself(t *testing.T) {
	p := newPair(t, Backend{})
	// Into the tunnel from outside host 1's subnet (another overlay's
	// container the kernel forwarded): never encrypted.
	if got := p.send(t, 0, tuntest.Ping(addr("10.97.2.5"), addr("10.96.1.5")), 300*time.Millisecond); got != nil {
		t.Errorf("a packet from outside the subnet crossed: %x", got)
	}
	// Host 2 is allowed 10.97.2.0/24 as source, but a packet for an
	// address outside host 1's subnet is not delivered.
	if err := p.devs[1].SetPeer(Peer{Subnet: netip.MustParsePrefix("10.97.3.0/24"), PublicKey: p.keys[0].Public(), Endpoint: p.eps[0]}); err != nil {
		t.Fatal(err)
	}
	if got := p.send(t, 1, tuntest.Ping(addr("10.97.3.9"), addr("10.97.2.5")), 300*time.Millisecond); got != nil {
		t.Errorf("a packet for another subnet was delivered: %x", got)
	}
	d0, d1 := p.devs[0].Stats().Drops, p.devs[1].Stats().Drops
	if d1[DropCrossOverlay] != 0 || d0[DropCrossOverlay] != 1 || d0[DropWrongDestination] != 1 {
		t.Errorf("drops h1 %v h2 %v: want one cross_overlay and one wrong_destination on h1", d0, d1)
	}
	ok := tuntest.Ping(addr("10.97.2.5"), addr("10.97.1.5"))
	if got := p.send(t, 0, ok, 5*time.Second); !bytes.Equal(got, ok) {
		t.Fatalf("after the drops, a good packet: got %x", got)
	}
}

func TestKeyChangeIsPickedUp(t *testing.T) {
	p := newPair(t, Backend{})
	pkt := tuntest.Ping(addr("10.97.2.5"), addr("10.97.1.5"))
	if got := p.send(t, 0, pkt, 5*time.Second); !bytes.Equal(got, pkt) {
		t.Fatalf("before: got %x", got)
	}
	// Host 2 comes back with a new key (its lease changes): a device on
	// the new key replaces it, and host 1 is told by SetPeer.
	k2, _ := GenerateKey()
	p.devs[1].Close()
	nb := bindtest.NewChannelBinds()
	p.tuns[1] = tuntest.NewChannelTUN()
	d2, err := New(Config{Overlay: overlay, Local: p.subs[1], PrivateKey: k2}, p.tuns[1].TUN(), nb[1])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d2.Close() })
	p.devs[1] = d2
	// Host 1 needs a bind wired to the new one: rebuild host 1 the same
	// way, keeping its key.
	p.devs[0].Close()
	p.tuns[0] = tuntest.NewChannelTUN()
	d1, err := New(Config{Overlay: overlay, Local: p.subs[0], PrivateKey: p.keys[0]}, p.tuns[0].TUN(), nb[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d1.Close() })
	p.devs[0] = d1
	if err := d2.SetPeer(Peer{Subnet: p.subs[0], PublicKey: p.keys[0].Public(), Endpoint: p.eps[0]}); err != nil {
		t.Fatal(err)
	}
	// First with the old key: the handshake cannot complete.
	if err := d1.SetPeer(Peer{Subnet: p.subs[1], PublicKey: p.keys[1].Public(), Endpoint: p.eps[1]}); err != nil {
		t.Fatal(err)
	}
	if got := p.send(t, 0, pkt, 500*time.Millisecond); got != nil {
		t.Fatalf("delivered with the peer's old key: %x", got)
	}
	if err := d1.SetPeer(Peer{Subnet: p.subs[1], PublicKey: k2.Public(), Endpoint: p.eps[1]}); err != nil {
		t.Fatal(err)
	}
	if got := p.send(t, 0, pkt, 5*time.Second); !bytes.Equal(got, pkt) {
		t.Fatalf("after the key change: got %x", got)
	}
	if st := d1.Stats(); len(st.Peers) != 1 || st.Peers[0].PublicKey != k2.Public() {
		t.Errorf("peers after the key change: %+v", st.Peers)
	}
}

func TestPeerArguments(t *testing.T) {
	p := newPair(t, Backend{})
	for _, bad := range []Peer{
		{Subnet: p.subs[0], PublicKey: p.keys[1].Public(), Endpoint: p.eps[1]},                             // our own subnet
		{Subnet: netip.MustParsePrefix("10.98.1.0/24"), PublicKey: p.keys[1].Public(), Endpoint: p.eps[1]}, // another overlay
		{Subnet: netip.MustParsePrefix("10.97.9.0/24"), Endpoint: p.eps[1]},                                // no key
	} {
		if err := p.devs[0].SetPeer(bad); err == nil {
			t.Errorf("SetPeer(%+v) accepted", bad)
		}
	}
	if err := p.devs[0].RemovePeer(netip.MustParsePrefix("10.97.9.0/24")); err != nil {
		t.Errorf("removing an unknown peer: %v", err)
	}
	if err := p.devs[0].RemovePeer(p.subs[1]); err != nil || len(p.devs[0].Stats().Peers) != 0 {
		t.Errorf("RemovePeer: %v, peers %+v", err, p.devs[0].Stats().Peers)
	}
}

// A device that just started (host 2 restarted, or joined) handshakes with
// each peer it is given at once, before any packet.
func TestNewDeviceIntroducesItself(t *testing.T) {
	p := newPair(t, Backend{})
	if st := p.devs[0].Stats(); !st.Peers[0].LastHandshake.IsZero() {
		t.Fatalf("handshake before anyone asked: %+v", st.Peers)
	}
	p.devs[1].Close()
	binds := bindtest.NewChannelBinds()
	p.devs[0].Close()
	d0, err := New(Config{Overlay: overlay, Local: p.subs[0], PrivateKey: p.keys[0]}, tuntest.NewChannelTUN().TUN(), binds[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d0.Close() })
	d0.introduceUntil = time.Time{} // the host that kept running
	d0.SetPeer(Peer{Subnet: p.subs[1], PublicKey: p.keys[1].Public(), Endpoint: p.eps[1]})
	d1, err := New(Config{Overlay: overlay, Local: p.subs[1], PrivateKey: p.keys[1]}, tuntest.NewChannelTUN().TUN(), binds[1])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d1.Close() })
	d1.SetPeer(Peer{Subnet: p.subs[0], PublicKey: p.keys[0].Public(), Endpoint: p.eps[0]})
	p.devs = [2]*Device{d0, d1}
	deadline := time.Now().Add(3 * time.Second)
	for {
		a, b := p.devs[0].Stats().Peers, p.devs[1].Stats().Peers
		if len(a) == 1 && len(b) == 1 && !a[0].LastHandshake.IsZero() && !b[0].LastHandshake.IsZero() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("no handshake without traffic: %+v / %+v", a, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestIntroductionsDoNotCross: two hosts that learn of each other at once
// must not both send a handshake initiation (crossed, both wait 5 s for the
// retry), with or without a keepalive (turning one on sends a keepalive, and
// with it an initiation, at once).
func TestIntroductionsDoNotCross(t *testing.T) {
	for _, be := range []Backend{{}, {PersistentKeepalive: 25 * time.Second}} {
		for range 5 {
			p := newPairIntroduced(t, be, true)
			deadline := time.Now().Add(3 * time.Second)
			for {
				a, b := p.devs[0].Stats().Peers, p.devs[1].Stats().Peers
				if !a[0].LastHandshake.IsZero() && !b[0].LastHandshake.IsZero() {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("keepalive %v: no handshake within 3 s (crossed initiations?): %+v / %+v", be.PersistentKeepalive, a, b)
				}
				time.Sleep(20 * time.Millisecond)
			}
			for i := range 2 {
				p.devs[i].Close()
			}
		}
	}
}
