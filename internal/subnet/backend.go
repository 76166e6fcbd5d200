package subnet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrBackendInUse means an overlay's backend cannot change: other hosts
// hold leases in it (or took one while the change was being made).
var ErrBackendInUse = errors.New("overlay backend cannot change under running hosts")

// SetBackend makes overlay use backend (a config Backend object such as
// {"Type":"wireguard","ListenPort":51820}) and returns the overlay's config
// afterwards. When the config already names backend's type nothing changes.
// Otherwise the change is made only while this host is the overlay's only
// member, i.e. right after it created the overlay: the config and this
// host's lease (rewritten for the new backend) are written in one etcd
// transaction that fails if any other host leased a subnet meanwhile. The
// default overlay's backend is never changed here: it is set in its config
// before hosts join.
func (m *Manager) SetBackend(ctx context.Context, overlay netip.Prefix, backend json.RawMessage) (Config, error) {
	var want struct{ Type string }
	if err := json.Unmarshal(backend, &want); err != nil || want.Type == "" {
		return Config{}, fmt.Errorf("backend %s has no Type: %w", clip(backend), ErrBadConfig)
	}
	m.mu.Lock()
	o := m.overlays[overlay.Masked()]
	def := m.def
	var own Lease
	var live Config
	if o != nil {
		own, live = o.own, o.live
	}
	m.mu.Unlock()
	if o == nil {
		return Config{}, fmt.Errorf("overlay %s is not in use on this host: %w", overlay, ErrNoLease)
	}
	if live.BackendType == want.Type {
		return live, nil
	}
	if overlay.Masked() == def {
		return Config{}, fmt.Errorf("overlay %s is the default overlay and uses the %s backend (config at %s); its backend is chosen by writing that config before any host joins: %w",
			overlay, live.BackendType, o.kv.configKey(), ErrBackendInUse)
	}
	if !own.Subnet.IsValid() {
		return Config{}, fmt.Errorf("this host holds no subnet in overlay %s at the moment: %w", overlay, ErrNoLease)
	}
	ctx, cancel := context.WithTimeout(ctx, m.opts.OpTimeout)
	defer cancel()

	cresp, err := m.opts.Client.Get(ctx, o.kv.configKey())
	if err != nil {
		return Config{}, fmt.Errorf("reading %s: %w", o.kv.configKey(), err)
	}
	if len(cresp.Kvs) == 0 {
		return Config{}, fmt.Errorf("config %s vanished: %w", o.kv.configKey(), ErrBadConfig)
	}
	var j configJSON
	if err := json.Unmarshal(cresp.Kvs[0].Value, &j); err != nil {
		return Config{}, fmt.Errorf("config at %s: %v: %w", o.kv.configKey(), err, ErrBadConfig)
	}
	j.Backend = backend
	value, _ := json.Marshal(j)
	cfg, err := ParseConfig(o.kv.configKey(), value)
	if err != nil {
		return Config{}, err
	}
	if cur, err := ParseConfig(o.kv.configKey(), cresp.Kvs[0].Value); err == nil && cur.BackendType == cfg.BackendType {
		// Another host of ours changed it first; leases follow the config.
		return Config{}, fmt.Errorf("overlay %s changed to the %s backend meanwhile: %w", overlay, cur.BackendType, ErrBackendInUse)
	}
	be := LeaseBackend{}
	if m.opts.Backend != nil {
		if be, err = m.opts.Backend(cfg); err != nil {
			return Config{}, fmt.Errorf("overlay %s: %w", overlay, err)
		}
	}
	attrs := Attrs{PublicIP: m.opts.PublicIP, BackendType: be.Type, BackendData: be.Data}
	lval, err := attrs.MarshalJSON()
	if err != nil {
		return Config{}, err
	}

	lresp, err := m.opts.Client.Get(ctx, o.kv.subnetsDir(), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return Config{}, fmt.Errorf("listing %s: %w", o.kv.subnetsDir(), err)
	}
	ownKey := o.kv.leaseKey(own.Subnet)
	var ownCreate int64
	others := 0
	for _, kv := range lresp.Kvs {
		if string(kv.Key) == ownKey {
			ownCreate = kv.CreateRevision
		} else {
			others++
		}
	}
	if others > 0 || ownCreate == 0 {
		return Config{}, fmt.Errorf("overlay %s already uses the %s backend between %d other host(s) (config at %s); a running overlay never changes backend, and mixing backends in one overlay would leave hosts unreachable or traffic unencrypted: pick another --subnet for a %s network: %w",
			overlay, live.BackendType, others, o.kv.configKey(), want.Type, ErrBackendInUse)
	}
	put := clientv3.OpPut(ownKey, string(lval))
	if own.EtcdLease != 0 {
		put = clientv3.OpPut(ownKey, string(lval), clientv3.WithLease(clientv3.LeaseID(own.EtcdLease)))
	}
	tresp, err := m.opts.Client.Txn(ctx).If(
		clientv3.Compare(clientv3.ModRevision(o.kv.configKey()), "=", cresp.Kvs[0].ModRevision),
		// Every key under subnets/ was created with ours: ours is the only one.
		clientv3.Compare(clientv3.CreateRevision(o.kv.subnetsDir()).WithPrefix(), "=", ownCreate),
	).Then(clientv3.OpPut(o.kv.configKey(), string(value)), put).Commit()
	if err != nil {
		return Config{}, fmt.Errorf("writing %s: %w", o.kv.configKey(), err)
	}
	if !tresp.Succeeded {
		return Config{}, fmt.Errorf("another host joined overlay %s or changed its config while its backend was being set to %s; a running overlay never changes backend: pick another --subnet: %w",
			overlay, want.Type, ErrBackendInUse)
	}
	m.mu.Lock()
	o.live, o.backend = cfg, be
	o.own.Attrs, o.own.Revision = attrs, tresp.Header.Revision // the watch skips our own write
	m.publishLocked([]Event{{Type: Added, Lease: o.own, Own: true}})
	m.mu.Unlock()
	o.log.Info("overlay backend set", "key", o.kv.configKey(), "config", string(value))
	return cfg, nil
}
