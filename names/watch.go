package names

import (
	"context"
	"log/slog"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Watcher keeps a Table equal to the name records under one overlay's
// prefix: it lists them, then watches from the list's revision, and lists
// again whenever the watch is lost (etcd restarted, revision compacted).
type Watcher struct {
	Client *clientv3.Client
	Prefix string // the overlay's etcd prefix
	Table  *Table
	Log    *slog.Logger
	// Retry is the pause before listing again after a failure; 0 = 1 s.
	Retry time.Duration
}

// Run keeps the table current until ctx ends.
func (w *Watcher) Run(ctx context.Context) {
	if w.Log == nil {
		w.Log = slog.New(slog.DiscardHandler)
	}
	retry := w.Retry
	if retry == 0 {
		retry = time.Second
	}
	dir := NamesDir(w.Prefix)
	for ctx.Err() == nil {
		rev, err := w.list(ctx, dir)
		if err == nil {
			err = w.watch(ctx, dir, rev)
		}
		if ctx.Err() != nil {
			return
		}
		w.Log.Warn("watching name records; listing them again", "prefix", dir, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(retry):
		}
	}
}

// list replaces the table's content with etcd's and returns the revision.
func (w *Watcher) list(ctx context.Context, dir string) (int64, error) {
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := w.Client.Get(lctx, dir, clientv3.WithPrefix())
	if err != nil {
		return 0, err
	}
	seen := make(map[string]bool, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		seen[string(kv.Key)] = true
		w.put(dir, string(kv.Key), kv.Value)
	}
	for _, k := range w.Table.Keys() {
		if !seen[k] {
			w.del(k)
		}
	}
	return resp.Header.Revision, nil
}

func (w *Watcher) watch(ctx context.Context, dir string, rev int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for resp := range w.Client.Watch(wctx, dir, clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
		if err := resp.Err(); err != nil {
			return err
		}
		for _, ev := range resp.Events {
			if ev.Type == clientv3.EventTypeDelete {
				w.del(string(ev.Kv.Key))
			} else {
				w.put(dir, string(ev.Kv.Key), ev.Kv.Value)
			}
		}
	}
	return ctx.Err()
}

func (w *Watcher) put(dir, key string, value []byte) {
	r, err := ParseRecord(dir, key, value)
	if err != nil {
		w.Log.Warn("skipping a name record twill cannot read", "err", err)
		w.del(key)
		return
	}
	if w.Table.Put(key, r) {
		w.Log.Debug("name record", "change", "put", "network", r.Network, "names", r.Names, "addr", r.Addr, "host", r.Host)
	}
}

func (w *Watcher) del(key string) {
	if r, ok := w.Table.Delete(key); ok {
		w.Log.Debug("name record", "change", "delete", "network", r.Network, "names", r.Names, "addr", r.Addr, "host", r.Host)
	}
}
