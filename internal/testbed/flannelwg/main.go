// Command flannelwg is a stand-in for a flanneld node on the wireguard
// backend, for interop tests: plain WireGuard (golang.zx2c4.com/wireguard,
// the same module twill uses, but none of twill's code) set up from etcd the
// way flanneld's pkg/backend/wireguard sets up its flannel-wg device. It
// reads `<prefix>/config`, leases a subnet with a lease value exactly as
// flanneld writes it ({"PublicIP":…,"PublicIPv6":null,"BackendType":"wireguard",
// "BackendData":{"PublicKey":…}}), puts the subnet's network address as a
// /32 on flannel-wg with the route to the whole Network, and keeps one
// WireGuard peer per other wireguard lease: endpoint PublicIP:ListenPort (its
// own ListenPort, as flanneld does), allowed IPs the peer's subnet, the PSK
// and keepalive of the config. It prints "ready <subnet>" and runs until
// SIGTERM.
package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/crypto/curve25519"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
)

type netConfig struct {
	Network string
	Backend struct {
		Type                        string
		ListenPort                  int
		PSK                         string
		PersistentKeepaliveInterval int64
	}
}

type leaseAttrs struct {
	PublicIP    string
	PublicIPv6  *string
	BackendType string          `json:",omitempty"`
	BackendData json.RawMessage `json:",omitempty"`
}

func main() {
	endpoints := flag.String("etcd-endpoints", "", "etcd URL")
	prefix := flag.String("etcd-prefix", "/coreos.com/network", "etcd prefix")
	publicIP := flag.String("public-ip", "", "this node's address")
	mtu := flag.Int("iface-mtu", 1500, "underlay MTU")
	flag.Parse()
	if err := run(*endpoints, *prefix, netip.MustParseAddr(*publicIP), *mtu); err != nil {
		fmt.Fprintln(os.Stderr, "flannelwg:", err)
		os.Exit(1)
	}
}

func run(endpoints, prefix string, publicIP netip.Addr, mtu int) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	cli, err := clientv3.New(clientv3.Config{Endpoints: strings.Split(endpoints, ","), DialTimeout: 5 * time.Second})
	if err != nil {
		return err
	}
	defer cli.Close()
	resp, err := cli.Get(ctx, prefix+"/config")
	if err != nil || len(resp.Kvs) == 0 {
		return fmt.Errorf("reading %s/config: %v", prefix, err)
	}
	var cfg netConfig
	if err := json.Unmarshal(resp.Kvs[0].Value, &cfg); err != nil {
		return err
	}
	if cfg.Backend.Type != "wireguard" {
		return fmt.Errorf("backend %q is not wireguard", cfg.Backend.Type)
	}
	if cfg.Backend.ListenPort == 0 {
		cfg.Backend.ListenPort = 51820
	}
	network := netip.MustParsePrefix(cfg.Network)

	var priv [32]byte
	rand.Read(priv[:])
	priv[0] &= 248
	priv[31] = priv[31]&127 | 64
	var pub [32]byte
	curve25519.ScalarBaseMult(&pub, &priv)
	pubText := base64.StdEncoding.EncodeToString(pub[:])

	// flanneld's AcquireLease: a free /24 after the first, bound to a 24 h lease.
	data, _ := json.Marshal(struct{ PublicKey string }{pubText})
	value, _ := json.Marshal(leaseAttrs{PublicIP: publicIP.String(), BackendType: "wireguard", BackendData: data})
	var sn netip.Prefix
	g, err := cli.Grant(ctx, 24*3600)
	if err != nil {
		return err
	}
	base := network.Addr().As4()
	for i := 1; i < 256 && !sn.IsValid(); i++ {
		c := netip.PrefixFrom(netip.AddrFrom4([4]byte{base[0], base[1], byte(256 - i), 0}), 24)
		key := fmt.Sprintf("%s/subnets/%s-24", prefix, c.Addr())
		t, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.Version(key), "=", 0)).
			Then(clientv3.OpPut(key, string(value), clientv3.WithLease(g.ID))).Commit()
		if err != nil {
			return err
		}
		if t.Succeeded {
			sn = c
		}
	}
	if !sn.IsValid() {
		return fmt.Errorf("no free subnet")
	}

	t, err := tun.CreateTUN("flannel-wg", mtu-80)
	if err != nil {
		return err
	}
	dev := device.NewDevice(t, conn.NewStdNetBind(), device.NewLogger(device.LogLevelSilent, ""))
	defer dev.Close()
	if err := dev.IpcSet(fmt.Sprintf("private_key=%s\nlisten_port=%d\n", hex.EncodeToString(priv[:]), cfg.Backend.ListenPort)); err != nil {
		return err
	}
	if err := dev.Up(); err != nil {
		return err
	}
	link, err := netlink.LinkByName("flannel-wg")
	if err != nil {
		return err
	}
	addr := &net.IPNet{IP: sn.Addr().AsSlice(), Mask: net.CIDRMask(32, 32)}
	if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: addr}); err != nil {
		return err
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return err
	}
	dst := &net.IPNet{IP: network.Addr().AsSlice(), Mask: net.CIDRMask(network.Bits(), 32)}
	if err := netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Scope: netlink.SCOPE_LINK, Dst: dst}); err != nil {
		return err
	}

	psk := ""
	if cfg.Backend.PSK != "" {
		b, err := base64.StdEncoding.DecodeString(cfg.Backend.PSK)
		if err != nil {
			return err
		}
		psk = fmt.Sprintf("preshared_key=%s\n", hex.EncodeToString(b))
	}
	own := fmt.Sprintf("%s/subnets/%s-24", prefix, sn.Addr())
	peers := map[string]string{} // lease key -> hex public key
	apply := func(key string, val []byte, deleted bool) {
		if key == own {
			return
		}
		if deleted {
			if pk, ok := peers[key]; ok {
				dev.IpcSet("public_key=" + pk + "\nremove=true\n")
				delete(peers, key)
			}
			return
		}
		var a leaseAttrs
		if json.Unmarshal(val, &a) != nil || a.BackendType != "wireguard" {
			return // flanneld: "Ignoring non-wireguard subnet"
		}
		var bd struct{ PublicKey string }
		json.Unmarshal(a.BackendData, &bd)
		kb, err := base64.StdEncoding.DecodeString(bd.PublicKey)
		if err != nil || len(kb) != 32 {
			return
		}
		name := key[strings.LastIndexByte(key, '/')+1:]
		subnet := strings.Replace(name, "-", "/", 1)
		pk := hex.EncodeToString(kb)
		if old, ok := peers[key]; ok && old != pk { // flanneld's cleanupEndpointPeers
			dev.IpcSet("public_key=" + old + "\nremove=true\n")
		}
		peers[key] = pk
		dev.IpcSet(fmt.Sprintf("public_key=%s\nendpoint=%s:%d\n%spersistent_keepalive_interval=%d\nreplace_allowed_ips=true\nallowed_ip=%s\n",
			pk, a.PublicIP, cfg.Backend.ListenPort, psk, cfg.Backend.PersistentKeepaliveInterval, subnet))
	}
	list, err := cli.Get(ctx, prefix+"/subnets/", clientv3.WithPrefix())
	if err != nil {
		return err
	}
	for _, kv := range list.Kvs {
		apply(string(kv.Key), kv.Value, false)
	}
	fmt.Printf("ready %s\n", sn)
	for wr := range cli.Watch(ctx, prefix+"/subnets/", clientv3.WithPrefix(), clientv3.WithRev(list.Header.Revision+1)) {
		for _, ev := range wr.Events {
			apply(string(ev.Kv.Key), ev.Kv.Value, ev.Type == clientv3.EventTypeDelete)
		}
	}
	cli.Revoke(context.Background(), g.ID)
	return nil
}
