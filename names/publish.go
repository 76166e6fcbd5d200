package names

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// DefaultRecordTTL is the TTL of the etcd lease this host's name records
// are bound to: a host that dies loses its names this long after its last
// keepalive (clientv3 renews at a third of it).
const DefaultRecordTTL = 10 * time.Second

// maxOps bounds the operations in one etcd transaction (etcd's default
// --max-txn-ops is 128).
const maxOps = 100

// Publisher keeps this host's name records in etcd, bound to a lease of its
// own that it keeps alive. After every (re)grant it rewrites all records and
// deletes what the host's directories hold beyond them, so a restart or an
// etcd outage leaves nothing stale; in between it writes only changes.
type Publisher struct {
	Client *clientv3.Client
	// Dirs lists the directories this host owns (HostDir of each overlay
	// it uses), cleaned after each grant.
	Dirs func() []string
	TTL  time.Duration // 0 = DefaultRecordTTL
	Log  *slog.Logger

	mu      sync.Mutex
	want    map[string]string // key -> value
	changed chan struct{}
	synced  chan struct{} // closed after the first full write
	once    sync.Once
}

func (p *Publisher) init() {
	p.once.Do(func() {
		p.changed = make(chan struct{}, 1)
		p.synced = make(chan struct{})
		if p.want == nil {
			p.want = map[string]string{}
		}
		if p.Log == nil {
			p.Log = slog.New(slog.DiscardHandler)
		}
		if p.TTL == 0 {
			p.TTL = DefaultRecordTTL
		}
	})
}

// Set makes want (key -> value) the host's records.
func (p *Publisher) Set(want map[string][]byte) {
	p.init()
	w := make(map[string]string, len(want))
	for k, v := range want {
		w[k] = string(v)
	}
	p.mu.Lock()
	p.want = w
	p.mu.Unlock()
	select {
	case p.changed <- struct{}{}:
	default:
	}
}

// Synced is closed once the records have been written after the first grant.
func (p *Publisher) Synced() <-chan struct{} { p.init(); return p.synced }

// Run publishes until ctx ends. The lease is left to expire, not revoked:
// a restart within its TTL takes over without the names flapping.
func (p *Publisher) Run(ctx context.Context) {
	p.init()
	bo := 500 * time.Millisecond
	for ctx.Err() == nil {
		err := p.session(ctx)
		if ctx.Err() != nil {
			return
		}
		p.Log.Warn("publishing this host's name records; starting over", "err", err, "retry_in", bo.String())
		select {
		case <-ctx.Done():
			return
		case <-time.After(bo):
		}
		bo = min(2*bo, 10*time.Second)
	}
}

// session grants a lease, writes everything, then follows changes until the
// lease is lost or a write fails.
func (p *Publisher) session(ctx context.Context) error {
	gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	g, err := p.Client.Grant(gctx, int64(p.TTL/time.Second))
	cancel()
	if err != nil {
		return err
	}
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	alive, err := p.Client.KeepAlive(sctx, g.ID)
	if err != nil {
		return err
	}
	lost := make(chan struct{})
	go func() {
		for range alive {
		}
		close(lost)
	}()
	published, err := p.full(ctx, g.ID)
	if err != nil {
		return err
	}
	select {
	case <-p.synced:
	default:
		close(p.synced)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-lost:
			return errLeaseLost
		case <-p.changed:
		}
		if err := p.diff(ctx, g.ID, published); err != nil {
			return err
		}
	}
}

type leaseLost struct{}

func (leaseLost) Error() string {
	return "the names lease was lost (etcd unreachable longer than its TTL?)"
}

var errLeaseLost error = leaseLost{}

func (p *Publisher) snapshot() map[string]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.want)
}

// full deletes what the host's directories hold beyond the wanted records
// and writes all of these on lease.
func (p *Publisher) full(ctx context.Context, lease clientv3.LeaseID) (map[string]string, error) {
	want := p.snapshot()
	var ops []clientv3.Op
	dirs := map[string]bool{}
	if p.Dirs != nil {
		for _, d := range p.Dirs() {
			dirs[d] = true
		}
	}
	for _, d := range sortedKeys(dirs) {
		resp, err := p.Client.Get(ctx, d, clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			return nil, err
		}
		for _, kv := range resp.Kvs {
			if _, ok := want[string(kv.Key)]; !ok {
				ops = append(ops, clientv3.OpDelete(string(kv.Key)))
			}
		}
	}
	for _, k := range sortedKeys(want) {
		ops = append(ops, clientv3.OpPut(k, want[k], clientv3.WithLease(lease)))
	}
	if err := p.commit(ctx, ops); err != nil {
		return nil, err
	}
	return want, nil
}

// diff writes the changes from published to what is wanted now and
// updates published.
func (p *Publisher) diff(ctx context.Context, lease clientv3.LeaseID, published map[string]string) error {
	want := p.snapshot()
	var ops []clientv3.Op
	for _, k := range sortedKeys(published) {
		if _, ok := want[k]; !ok {
			ops = append(ops, clientv3.OpDelete(k))
		}
	}
	for _, k := range sortedKeys(want) {
		if v, ok := published[k]; !ok || v != want[k] {
			ops = append(ops, clientv3.OpPut(k, want[k], clientv3.WithLease(lease)))
		}
	}
	if err := p.commit(ctx, ops); err != nil {
		return err
	}
	clear(published)
	maps.Copy(published, want)
	return nil
}

func (p *Publisher) commit(ctx context.Context, ops []clientv3.Op) error {
	for len(ops) > 0 {
		n := min(len(ops), maxOps)
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := p.Client.Txn(cctx).Then(ops[:n]...).Commit()
		cancel()
		if err != nil {
			return err
		}
		ops = ops[n:]
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }
