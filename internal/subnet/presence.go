package subnet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// DefaultPresenceTTL is the TTL of a host's presence key: how long a crashed
// host blocks a new host (with no state) from its public IP, and about how
// long a live duplicate takes to be recognised (a third of it, plus a second).
const DefaultPresenceTTL = 10 * time.Second

// presence marks this host as live in etcd: `<prefix>/hosts/<public IP>`
// bound to a short etcd lease that is kept alive while the manager runs. It
// is how a second live host claiming the same public IP is told from this
// host's own earlier run (a lease with the same public IP looks the same for
// both): the earlier run's presence stops being renewed and expires, a live
// host's does not. flanneld never reads these keys.
type presence struct {
	cli   *clientv3.Client
	key   string
	value presenceValue
	ttl   time.Duration
}

type presenceValue struct {
	ID       string // the state dir's host ID (Store.HostID)
	Hostname string `json:",omitempty"`
}

func (m *Manager) newPresence() (*presence, error) {
	id, err := m.opts.Store.HostID()
	if err != nil {
		return nil, fmt.Errorf("reading this host's ID from its state: %w", err)
	}
	host, _ := os.Hostname()
	return &presence{
		cli:   m.opts.Client,
		key:   m.opts.Prefix + "/hosts/" + m.opts.PublicIP.String(),
		value: presenceValue{ID: id, Hostname: host},
		ttl:   m.opts.PresenceTTL,
	}, nil
}

// errPresenceTaken carries the live host that holds our public IP.
type errPresenceTaken struct{ other presenceValue }

func (e errPresenceTaken) Error() string { return "public IP held by " + e.other.describe() }

func (v presenceValue) describe() string {
	if v.Hostname != "" {
		return fmt.Sprintf("host %q (id %s)", v.Hostname, v.ID)
	}
	return "host id " + v.ID
}

// claim writes the presence key, waiting out a stale one left by a crashed
// host, and returns the etcd lease it is bound to. A presence renewed by
// another host gives errPresenceTaken.
func (p *presence) claim(ctx context.Context) (clientv3.LeaseID, error) {
	val, _ := json.Marshal(p.value)
	for {
		g, err := p.cli.Grant(ctx, int64(p.ttl/time.Second))
		if err != nil {
			return 0, fmt.Errorf("granting the presence lease for %s: %w", p.key, err)
		}
		resp, err := p.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.Version(p.key), "=", 0)).
			Then(clientv3.OpPut(p.key, string(val), clientv3.WithLease(g.ID))).
			Else(clientv3.OpGet(p.key)).
			Commit()
		if err == nil && resp.Succeeded {
			return g.ID, nil
		}
		p.cli.Revoke(context.WithoutCancel(ctx), g.ID)
		if err != nil {
			return 0, fmt.Errorf("writing %s: %w", p.key, err)
		}
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 0 {
			continue
		}
		kv := kvs[0]
		var other presenceValue
		_ = json.Unmarshal(kv.Value, &other)
		if other.ID == p.value.ID || kv.Lease == 0 {
			// Our own earlier run (same state dir), or a key without TTL:
			// take it over.
			if id, err := p.takeOver(ctx, kv.ModRevision, val); err == nil {
				if kv.Lease != 0 && clientv3.LeaseID(kv.Lease) != id {
					p.cli.Revoke(context.WithoutCancel(ctx), clientv3.LeaseID(kv.Lease))
				}
				return id, nil
			} else if !errors.Is(err, errTaken) {
				return 0, err
			}
			continue
		}
		live, err := p.renewedByOther(ctx, clientv3.LeaseID(kv.Lease))
		if err != nil {
			return 0, err
		}
		if live {
			return 0, errPresenceTaken{other}
		}
		// The other host stopped renewing and its key expired: try again.
	}
}

func (p *presence) takeOver(ctx context.Context, rev int64, val []byte) (clientv3.LeaseID, error) {
	g, err := p.cli.Grant(ctx, int64(p.ttl/time.Second))
	if err != nil {
		return 0, fmt.Errorf("granting the presence lease for %s: %w", p.key, err)
	}
	resp, err := p.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(p.key), "=", rev)).
		Then(clientv3.OpPut(p.key, string(val), clientv3.WithLease(g.ID))).
		Commit()
	if err != nil || !resp.Succeeded {
		p.cli.Revoke(context.WithoutCancel(ctx), g.ID)
		if err != nil {
			return 0, fmt.Errorf("writing %s: %w", p.key, err)
		}
		return 0, errTaken
	}
	return g.ID, nil
}

// renewedByOther watches the TTL of another host's presence lease: true as
// soon as it goes up (someone keeps it alive: clientv3 renews at a third of
// the TTL), false once it has expired. A lease that neither moves up nor
// expires within twice our TTL is not a presence of a live host.
func (p *presence) renewedByOther(ctx context.Context, id clientv3.LeaseID) (bool, error) {
	start := time.Now()
	first, err := p.cli.TimeToLive(ctx, id)
	if errors.Is(err, rpctypes.ErrLeaseNotFound) || (err == nil && first.TTL <= 0) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("reading the TTL of %s: %w", p.key, err)
	}
	for time.Since(start) < 2*p.ttl+time.Second {
		select {
		case <-ctx.Done():
			return false, fmt.Errorf("waiting to see whether another host holds %s: %w", p.key, ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
		cur, err := p.cli.TimeToLive(ctx, id)
		if errors.Is(err, rpctypes.ErrLeaseNotFound) || (err == nil && cur.TTL <= 0) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("reading the TTL of %s: %w", p.key, err)
		}
		ifDead := float64(first.TTL) - time.Since(start).Seconds()
		if float64(cur.TTL) > ifDead+1.5 {
			return true, nil
		}
	}
	return false, nil
}

// keep holds the presence until ctx ends, claiming it again whenever its
// lease is lost (etcd unreachable longer than the TTL). The caller revokes
// the last lease it reports through lease.
func (p *presence) keep(ctx context.Context, m *Manager, id clientv3.LeaseID) {
	bo := m.opts.RetryMin
	for {
		ch, err := p.cli.KeepAlive(ctx, id)
		if err == nil {
			for range ch {
				bo = m.opts.RetryMin
			}
		}
		if ctx.Err() != nil {
			return
		}
		m.log.Warn("presence key lost (etcd unreachable?); claiming it again", "key", p.key)
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(bo):
			}
			bo = min(2*bo, m.opts.RetryMax)
			cctx, cancel := context.WithTimeout(ctx, m.opts.OpTimeout)
			nid, err := p.claim(cctx)
			cancel()
			if err == nil {
				id = nid
				m.setPresenceLease(id)
				break
			}
			var taken errPresenceTaken
			if errors.As(err, &taken) {
				m.log.Error("another live host now uses this host's public IP; peers cannot tell the two apart",
					"public_ip", m.opts.PublicIP, "other", taken.other.describe())
			} else if ctx.Err() == nil {
				m.log.Warn("claiming the presence key failed; retrying", "key", p.key, "err", err)
			}
		}
	}
}

// presenceError turns errPresenceTaken into the user's error, naming the
// other host and the subnets its public IP holds.
func (m *Manager) presenceError(ctx context.Context, err error) error {
	var taken errPresenceTaken
	if !errors.As(err, &taken) {
		return err
	}
	var held []string
	kv := overlayKV{cli: m.opts.Client, prefix: m.opts.Prefix}
	if leases, _, _, lerr := kv.list(ctx, netip.Prefix{}); lerr == nil {
		for _, l := range leases {
			if l.Attrs.PublicIP == m.opts.PublicIP {
				held = append(held, l.Subnet.String())
			}
		}
	}
	holds := ""
	if len(held) > 0 {
		holds = " and holds " + strings.Join(held, ", ")
	}
	return fmt.Errorf("public IP %s is already used by another live twill host, %s, which keeps %s alive%s: "+
		"give each host its own TWILL_PUBLIC_IP (or TWILL_IFACE): %w",
		m.opts.PublicIP, taken.other.describe(), m.opts.Prefix+"/hosts/"+m.opts.PublicIP.String(), holds, ErrPublicIPInUse)
}
