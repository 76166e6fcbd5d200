package subnet

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// errTaken means a create-if-absent or take-over transaction lost: another
// writer got the key first. acquire retries on it.
var errTaken = errors.New("subnet taken by another host")

// overlayKV is one overlay's keys in etcd, in flannel's layout under prefix:
// prefix/config and prefix/subnets/<a.b.c.d>-<len>.
type overlayKV struct {
	cli    *clientv3.Client
	prefix string // e.g. /coreos.com/network, no trailing slash
}

func (k overlayKV) configKey() string  { return k.prefix + "/config" }
func (k overlayKV) subnetsDir() string { return k.prefix + "/subnets/" }
func (k overlayKV) leaseKey(sn netip.Prefix) string {
	return k.subnetsDir() + subnetKey(sn)
}

// ensureConfig returns the stored config, first writing want when there is
// none. Create-if-absent in one transaction: two hosts starting together end
// up reading the same config.
func (k overlayKV) ensureConfig(ctx context.Context, want []byte) (value []byte, created bool, err error) {
	key := k.configKey()
	resp, err := k.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.Version(key), "=", 0)).
		Then(clientv3.OpPut(key, string(want))).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return nil, false, fmt.Errorf("reading %s: %w", key, err)
	}
	if resp.Succeeded {
		return want, true, nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 { // deleted between the compare and the get: cannot happen in one txn
		return nil, false, fmt.Errorf("reading %s: key vanished", key)
	}
	return kvs[0].Value, false, nil
}

// readConfig returns the stored config value, or nil when there is none.
func (k overlayKV) readConfig(ctx context.Context) ([]byte, error) {
	resp, err := k.cli.Get(ctx, k.configKey())
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", k.configKey(), err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	return resp.Kvs[0].Value, nil
}

// badKey is a lease key that could not be read.
type badKey struct {
	key string
	rev int64
	err error
}

// list reads every lease of the overlay and the revision they were read at.
// Keys that cannot be parsed are returned apart, for the caller to log.
func (k overlayKV) list(ctx context.Context, overlay netip.Prefix) ([]Lease, []badKey, int64, error) {
	resp, err := k.cli.Get(ctx, k.subnetsDir(), clientv3.WithPrefix())
	if err != nil {
		return nil, nil, 0, fmt.Errorf("listing %s: %w", k.subnetsDir(), err)
	}
	leases := make([]Lease, 0, len(resp.Kvs))
	var bad []badKey
	for _, kv := range resp.Kvs {
		l, err := k.parse(kv, overlay)
		if err != nil {
			bad = append(bad, badKey{string(kv.Key), kv.ModRevision, err})
			continue
		}
		leases = append(leases, l)
	}
	return leases, bad, resp.Header.Revision, nil
}

// parse reads one lease key and value.
func (k overlayKV) parse(kv *mvccpb.KeyValue, overlay netip.Prefix) (Lease, error) {
	name, ok := strings.CutPrefix(string(kv.Key), k.subnetsDir())
	if !ok || strings.Contains(name, "/") {
		return Lease{}, fmt.Errorf("key %s is not a lease key: %w", kv.Key, ErrBadLease)
	}
	sn, sn6, err := parseSubnetKey(name)
	if err != nil {
		return Lease{}, err
	}
	var a Attrs
	if err := a.UnmarshalJSON(kv.Value); err != nil {
		return Lease{}, fmt.Errorf("value %q: %w", clip(kv.Value), err)
	}
	return Lease{Overlay: overlay, Subnet: sn, IPv6Subnet: sn6, Attrs: a,
		EtcdLease: kv.Lease, Revision: kv.ModRevision}, nil
}

// get reads the lease at sn; found is false when there is none.
func (k overlayKV) get(ctx context.Context, sn, overlay netip.Prefix) (l Lease, found bool, err error) {
	resp, err := k.cli.Get(ctx, k.leaseKey(sn))
	if err != nil {
		return Lease{}, false, fmt.Errorf("reading %s: %w", k.leaseKey(sn), err)
	}
	if len(resp.Kvs) == 0 {
		return Lease{}, false, nil
	}
	l, err = k.parse(resp.Kvs[0], overlay)
	return l, err == nil, err
}

// create writes attrs at sn if no one holds it, bound to a fresh etcd lease
// of ttl, and returns that etcd lease's ID and granted TTL. A lost race
// revokes the grant and returns errTaken.
func (k overlayKV) create(ctx context.Context, sn netip.Prefix, value []byte, ttl time.Duration) (int64, time.Duration, int64, error) {
	key := k.leaseKey(sn)
	return k.putIf(ctx, key, value, ttl, clientv3.Compare(clientv3.Version(key), "=", 0))
}

// takeOver rebinds the lease at sn, last seen at revision rev, to a fresh
// etcd lease with value; errTaken when the key changed since.
func (k overlayKV) takeOver(ctx context.Context, sn netip.Prefix, rev int64, value []byte, ttl time.Duration) (int64, time.Duration, int64, error) {
	key := k.leaseKey(sn)
	return k.putIf(ctx, key, value, ttl, clientv3.Compare(clientv3.ModRevision(key), "=", rev))
}

func (k overlayKV) putIf(ctx context.Context, key string, value []byte, ttl time.Duration, cond clientv3.Cmp) (int64, time.Duration, int64, error) {
	g, err := k.cli.Grant(ctx, int64(ttl/time.Second))
	if err != nil {
		return 0, 0, 0, fmt.Errorf("granting a %s etcd lease for %s: %w", ttl, key, err)
	}
	resp, err := k.cli.Txn(ctx).If(cond).Then(clientv3.OpPut(key, string(value), clientv3.WithLease(g.ID))).Commit()
	if err != nil || !resp.Succeeded {
		// The grant holds nothing; drop it now rather than in 24 h.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		_, _ = k.cli.Revoke(rctx, g.ID)
		cancel()
		if err != nil {
			return 0, 0, 0, fmt.Errorf("writing %s: %w", key, err)
		}
		return 0, 0, 0, errTaken
	}
	return int64(g.ID), time.Duration(g.TTL) * time.Second, resp.Header.Revision, nil
}

// keepAlive renews an etcd lease once and returns its new TTL. A lease that
// expired or was revoked gives an error wrapping errLeaseGone.
func (k overlayKV) keepAlive(ctx context.Context, id int64) (time.Duration, error) {
	resp, err := k.cli.KeepAliveOnce(ctx, clientv3.LeaseID(id))
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return 0, fmt.Errorf("renewing etcd lease %x: %w", id, errLeaseGone)
	}
	if err != nil {
		return 0, fmt.Errorf("renewing etcd lease %x: %w", id, err)
	}
	if resp.TTL <= 0 {
		return 0, fmt.Errorf("renewing etcd lease %x: %w", id, errLeaseGone)
	}
	return time.Duration(resp.TTL) * time.Second, nil
}

// errLeaseGone means the etcd lease behind this host's key no longer exists.
var errLeaseGone = errors.New("etcd lease expired or revoked")

// revoke drops an etcd lease and with it the keys bound to it. Revoking a
// lease that is already gone succeeds.
func (k overlayKV) revoke(ctx context.Context, id int64) error {
	if id == 0 {
		return nil
	}
	_, err := k.cli.Revoke(ctx, clientv3.LeaseID(id))
	if err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return fmt.Errorf("revoking etcd lease %x: %w", id, err)
	}
	return nil
}
