package subnet

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// inNetwork reports whether sn lies inside the overlay (leases outside it,
// e.g. left over from an older config, are ignored).
func (o *overlay) inNetwork(sn netip.Prefix) bool {
	return o.cfg.Network.Contains(sn.Addr()) && sn.Bits() >= o.cfg.Network.Bits()
}

// resyncKnown re-reads every lease. With publish, the difference to what was
// known goes out as events (after a compaction or a broken watch), and the
// own lease is checked; without, known is just filled (at open).
func (o *overlay) resyncKnown(ctx context.Context, publish bool) error {
	leases, bad, rev, err := o.kv.list(ctx, o.cfg.Network)
	if err != nil {
		return err
	}
	o.logBad(bad)
	fresh := make(map[netip.Prefix]Lease, len(leases))
	for _, l := range leases {
		if !o.inNetwork(l.Subnet) {
			if !o.badLogged(o.kv.leaseKey(l.Subnet), l.Revision) {
				o.log.Warn("ignoring lease outside the overlay", "key", o.kv.leaseKey(l.Subnet))
			}
			continue
		}
		fresh[l.Subnet] = l
	}
	o.m.mu.Lock()
	own := o.own
	o.m.mu.Unlock()
	if !publish {
		if own.Subnet.IsValid() {
			if _, ok := fresh[own.Subnet]; !ok {
				fresh[own.Subnet] = own
			}
		}
		o.known, o.rev = fresh, rev
		return nil
	}

	var evs []Event
	for sn, l := range fresh {
		if own.Subnet.IsValid() && sn == own.Subnet {
			continue
		}
		if prev, ok := o.known[sn]; !ok || changed(prev, l) {
			evs = append(evs, Event{Type: Added, Lease: l})
		}
	}
	for sn, prev := range o.known {
		if own.Subnet.IsValid() && sn == own.Subnet {
			continue
		}
		if _, ok := fresh[sn]; !ok {
			evs = append(evs, Event{Type: Removed, Lease: prev})
		}
	}
	o.m.mu.Lock()
	o.m.publishLocked(evs)
	o.m.mu.Unlock()
	o.known, o.rev = fresh, rev

	if own.Subnet.IsValid() {
		cur, ok := fresh[own.Subnet]
		switch {
		case !ok:
			o.log.Warn("own lease is gone from etcd; re-acquiring", "subnet", own.Subnet)
			o.holding = false
			o.known[own.Subnet] = own // until re-acquired
		case cur.EtcdLease == own.EtcdLease:
		case cur.Attrs.PublicIP == o.m.opts.PublicIP:
			o.adopt(cur)
		default:
			o.lose(cur)
		}
	}
	return nil
}

func changed(a, b Lease) bool { return !a.Attrs.Equal(b.Attrs) || a.IPv6Subnet != b.IPv6Subnet }

// handle applies one watch event. It reports whether the own lease changed
// state, so the caller reschedules renewing.
func (o *overlay) handle(ctx context.Context, ev *clientv3.Event) bool {
	key := string(ev.Kv.Key)
	name, _ := strings.CutPrefix(key, o.kv.subnetsDir())
	sn, _, err := parseSubnetKey(name)
	if err != nil || strings.Contains(name, "/") {
		if !o.badLogged(key, ev.Kv.ModRevision) {
			o.log.Warn("ignoring lease key that cannot be read", "key", key, "err", err)
		}
		return false
	}
	if !o.inNetwork(sn) {
		if !o.badLogged(key, ev.Kv.ModRevision) {
			o.log.Warn("ignoring lease outside the overlay", "key", key)
		}
		return false
	}
	o.m.mu.Lock()
	own := o.own
	o.m.mu.Unlock()
	isOwn := own.Subnet.IsValid() && sn == own.Subnet
	if isOwn && ev.Kv.ModRevision <= own.Revision && ev.Type == clientv3.EventTypePut {
		return false // our own write, or older
	}
	if isOwn && ev.Type == clientv3.EventTypeDelete && ev.Kv.ModRevision < own.Revision {
		return false // the end of an older incarnation of our key
	}

	if ev.Type == clientv3.EventTypeDelete {
		if isOwn {
			o.log.Warn("own lease key was deleted (by hand, revoked or expired); re-acquiring", "subnet", sn)
			o.holding = false
			o.reacquire(ctx)
			return true
		}
		o.removeKnown(sn)
		return false
	}

	l, err := o.kv.parse(ev.Kv, o.cfg.Network)
	if err != nil {
		if !o.badLogged(key, ev.Kv.ModRevision) {
			o.log.Warn("ignoring lease that cannot be read", "key", key, "err", err)
		}
		if !isOwn {
			o.removeKnown(sn) // its previous value no longer holds
		}
		return false
	}
	if isOwn {
		switch {
		case l.EtcdLease == own.EtcdLease:
			o.known[sn] = own
			return false
		case l.Attrs.PublicIP == o.m.opts.PublicIP:
			o.adopt(l)
			return true
		default:
			o.lose(l)
			o.reacquire(ctx)
			return true
		}
	}
	prev, ok := o.known[sn]
	o.known[sn] = l
	if !ok || changed(prev, l) {
		o.m.mu.Lock()
		o.m.publishLocked([]Event{{Type: Added, Lease: l}})
		o.m.mu.Unlock()
	}
	return false
}

func (o *overlay) removeKnown(sn netip.Prefix) {
	prev, ok := o.known[sn]
	if !ok {
		return
	}
	delete(o.known, sn)
	o.m.mu.Lock()
	o.m.publishLocked([]Event{{Type: Removed, Lease: prev}})
	o.m.mu.Unlock()
}

// adopt takes the own key over after another writer re-put it with this
// host's public IP (flanneld on this host, an operator): renew that etcd
// lease from now on, starting at once to learn its TTL.
func (o *overlay) adopt(l Lease) {
	o.log.Warn("own lease key was rewritten with this host's public IP; adopting it",
		"subnet", l.Subnet, "etcd_lease", fmt.Sprintf("%x", l.EtcdLease))
	o.m.mu.Lock()
	defer o.m.mu.Unlock()
	l.Expiration = o.m.opts.Clock.Now()
	changedAttrs := !o.own.Attrs.Equal(l.Attrs)
	o.own = l
	o.holding = true
	o.known[l.Subnet] = l
	if changedAttrs {
		o.m.publishLocked([]Event{{Type: Added, Lease: l, Own: true}})
	}
}
