package subnet

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Lease returns this host's lease in overlay, leasing one on first use (see
// the package comment for the key layout). An overlay that overlaps another
// one in use (on this host, or recorded in etcd) is refused with
// ErrOverlayOverlap; a full one with ErrSubnetsExhausted.
func (m *Manager) Lease(ctx context.Context, overlay netip.Prefix) (Lease, error) {
	if !overlay.IsValid() || !overlay.Addr().Is4() {
		return Lease{}, fmt.Errorf("overlay %v is not an IPv4 prefix", overlay)
	}
	overlay = overlay.Masked()
	for {
		m.mu.Lock()
		if m.closed {
			m.mu.Unlock()
			return Lease{}, ErrClosed
		}
		if o := m.overlays[overlay]; o != nil {
			own, lastErr := o.own, o.lastErr
			m.mu.Unlock()
			if !own.Subnet.IsValid() {
				return Lease{}, fmt.Errorf("this host holds no subnet in overlay %s at the moment (retrying: %v): %w", overlay, lastErr, ErrNoLease)
			}
			return own, nil
		}
		if p := m.pending[overlay]; p != nil {
			m.mu.Unlock()
			select {
			case <-p.done:
				if p.err != nil {
					return Lease{}, p.err
				}
				continue
			case <-ctx.Done():
				return Lease{}, ctx.Err()
			}
		}
		if clash := overlapping(m.inUseLocked(), overlay); clash != "" {
			m.mu.Unlock()
			return Lease{}, fmt.Errorf("overlay %s overlaps %s already in use on this host; choose a --subnet that overlaps no other twill network: %w",
				overlay, clash, ErrOverlayOverlap)
		}
		p := &pendingOverlay{done: make(chan struct{})}
		m.pending[overlay] = p
		m.mu.Unlock()

		o, err := m.openExtra(ctx, overlay)
		if err == nil {
			err = m.register(o)
		}
		m.mu.Lock()
		delete(m.pending, overlay)
		p.err = err
		close(p.done)
		m.mu.Unlock()
		if err != nil {
			return Lease{}, err
		}
	}
}

// inUseLocked returns the overlays open or being opened; m.mu held.
func (m *Manager) inUseLocked() map[netip.Prefix]bool {
	s := map[netip.Prefix]bool{}
	for k := range m.overlays {
		s[k] = true
	}
	for k := range m.pending {
		s[k] = true
	}
	return s
}

// openExtra opens an overlay other than the default under
// `<prefix>/overlays/<net>-<len>`, writing its config if absent.
func (m *Manager) openExtra(ctx context.Context, overlay netip.Prefix) (*overlay, error) {
	want, err := NewConfig(overlay, m.opts.SubnetLen, m.opts.Port)
	if err != nil {
		return nil, fmt.Errorf("overlay %s: %w", overlay, err)
	}
	cctx, cancel := context.WithTimeout(ctx, m.opts.OpTimeout)
	defer cancel()
	if err := m.checkRecordedOverlays(cctx, overlay); err != nil {
		return nil, err
	}
	kv := overlayKV{cli: m.opts.Client, prefix: m.overlayPrefix(overlay)}
	value, created, err := kv.ensureConfig(cctx, want.Marshal())
	if err != nil {
		return nil, err
	}
	if created {
		m.log.Info("wrote overlay config", "key", kv.configKey(), "config", string(value))
	}
	cfg, err := ParseConfig(kv.configKey(), value)
	if err != nil {
		return nil, err
	}
	if cfg.Network != overlay {
		return nil, fmt.Errorf("config at %s is for Network %s, not for overlay %s as its key says; fix or delete it: %w",
			kv.configKey(), cfg.Network, overlay, ErrBadConfig)
	}
	return m.open(ctx, kv, cfg)
}

// KeyPrefix is the etcd prefix holding overlay's config and leases: the
// manager's prefix for the default overlay, `<prefix>/overlays/<net>-<len>`
// for the others.
func (m *Manager) KeyPrefix(overlay netip.Prefix) string {
	if overlay.Masked() == m.Default() {
		return m.opts.Prefix
	}
	return m.overlayPrefix(overlay.Masked())
}

func (m *Manager) overlayPrefix(overlay netip.Prefix) string {
	return m.opts.Prefix + "/overlays/" + overlayName(overlay)
}

// checkRecordedOverlays refuses an overlay that overlaps one other hosts
// recorded in etcd (the default overlay or one under `<prefix>/overlays/`).
func (m *Manager) checkRecordedOverlays(ctx context.Context, overlay netip.Prefix) error {
	dir := m.opts.Prefix + "/overlays/"
	resp, err := m.opts.Client.Get(ctx, dir, clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return fmt.Errorf("listing overlays under %s: %w", dir, err)
	}
	seen := map[netip.Prefix]bool{m.Default(): true}
	for _, kv := range resp.Kvs {
		name, _, _ := strings.Cut(strings.TrimPrefix(string(kv.Key), dir), "/")
		if n, err := parsePrefixDash(name); err == nil {
			seen[n.Masked()] = true
		}
	}
	delete(seen, overlay)
	if clash := overlapping(seen, overlay); clash != "" {
		return fmt.Errorf("overlay %s overlaps %s already in etcd under %s; choose a --subnet that overlaps no other twill network: %w",
			overlay, clash, m.opts.Prefix, ErrOverlayOverlap)
	}
	return nil
}

// overlapping names the overlays of set that overlap n, in address order, or
// returns "".
func overlapping(set map[netip.Prefix]bool, n netip.Prefix) string {
	var clash []string
	for _, o := range slices.SortedFunc(maps.Keys(set), func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) }) {
		if o.Overlaps(n) {
			clash = append(clash, o.String())
		}
	}
	if len(clash) == 0 {
		return ""
	}
	return "overlay " + strings.Join(clash, ", ")
}
