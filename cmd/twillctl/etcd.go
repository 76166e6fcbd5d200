package main

import (
	"context"
	"net/netip"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/twill-net/twill/internal/control"
	"github.com/twill-net/twill/internal/subnet"
)

// etcdLeases reads every host's lease straight from etcd, for a cluster-wide
// view when no twilld runs here (or on a machine that is no twill host):
// the default overlay's `<prefix>/subnets/` and every further overlay's
// `<prefix>/overlays/<net>/subnets/`.
func etcdLeases(ctx context.Context, dial subnet.DialConfig, prefix string) ([]control.Lease, error) {
	cli, err := subnet.Dial(ctx, dial)
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	prefix = strings.TrimRight(prefix, "/")
	resp, err := cli.Get(ctx, prefix+"/", clientv3.WithPrefix())
	if err != nil {
		return nil, err
	}
	overlays := map[string]string{} // key prefix of an overlay -> its Network
	for _, kv := range resp.Kvs {
		k := string(kv.Key)
		if strings.HasSuffix(k, "/config") {
			if c, err := subnet.ParseConfig(k, kv.Value); err == nil {
				overlays[strings.TrimSuffix(k, "config")] = c.Network.String()
			}
		}
	}
	var out []control.Lease
	for _, kv := range resp.Kvs {
		k := string(kv.Key)
		i := strings.LastIndex(k, "/subnets/")
		if i < 0 {
			continue
		}
		sn, err := parseKeySubnet(k[i+len("/subnets/"):])
		if err != nil {
			continue
		}
		var a subnet.Attrs
		if err := a.UnmarshalJSON(kv.Value); err != nil {
			continue
		}
		l := control.Lease{Network: overlays[k[:i+1]], Subnet: sn.String(), PublicIP: a.PublicIP.String(), BackendType: a.BackendType,
			Flanneld: a.BackendType != "" && a.BackendType != "udp"}
		if kv.Lease != 0 {
			if ttl, err := cli.TimeToLive(ctx, clientv3.LeaseID(kv.Lease)); err == nil && ttl.TTL > 0 {
				l.Expiry = time.Now().Add(time.Duration(ttl.TTL) * time.Second)
			}
		}
		out = append(out, l)
	}
	return out, nil
}

// parseKeySubnet reads flannel's key name "10.96.7.0-24" (or "…-24&fd00::-64").
func parseKeySubnet(name string) (netip.Prefix, error) {
	name, _, _ = strings.Cut(name, "&")
	return netip.ParsePrefix(strings.Replace(name, "-", "/", 1))
}
