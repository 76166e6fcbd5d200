// Package subnet owns this host's subnet leases in etcd, in flannel's exact
// schema: it reads or writes `<prefix>/config`, acquires a subnet per overlay
// with a create-if-absent transaction bound to a 24 h etcd lease, renews it
// before expiry, re-acquires it when it is lost, and watches every host's
// leases, turning them into add/remove events for the datapath.
//
// Key layout. The default overlay is flannel's: `<prefix>/config` and
// `<prefix>/subnets/<a.b.c.d>-<len>`. Every further overlay (another /16
// leased on demand) lives under `<prefix>/overlays/<net>-<len>`, e.g.
// `/coreos.com/network/overlays/10.97.0.0-16`, which is itself a complete
// flannel prefix (its own `config` and `subnets/`): flanneld started with
// -etcd-prefix=/coreos.com/network/overlays/10.97.0.0-16 joins that overlay.
//
// Decisions (where flannel leaves a choice):
//   - Reuse: a host takes back the lease that carries its public IP, as
//     flanneld does, else the subnet its Store recorded when that is still
//     free, else a free subnet chosen uniformly at random (flanneld picks
//     among the first 100 free ones; all of them makes collisions between
//     many starting hosts rarer). A lost create race revokes its grant and
//     retries, 10 times at most.
//   - Same public IP: every running host keeps a presence key
//     `<prefix>/hosts/<public IP>` (value {"ID":…,"Hostname":…}) on a 10 s
//     etcd lease it keeps alive; flanneld ignores it. A second host with the
//     same public IP sees that key being renewed and New fails with
//     ErrPublicIPInUse naming the other host and its subnet (within about 5
//     s). A key left by a crashed host stops being renewed: the new host
//     waits for it to expire (≤ 10 s) and then takes the crashed host's
//     lease back, as flanneld would. A restart with the same state (Store
//     HostID) takes its presence back at once; Close and Release revoke it.
//     Independently, a live lease with our public IP at another subnet than
//     the Store recorded (e.g. a flanneld) is refused the same way.
//   - Renewal keeps the key and its etcd lease and only extends the lease
//     (KeepAliveOnce) an hour before expiry, so renewals cause no watch
//     events; flanneld re-puts the key instead, which twill's watch reads as
//     "unchanged" and does not report.
//   - A lease a flanneld on another backend wrote for this host's public IP
//     is taken over (rewritten as a udp lease on a grant of ours).
//   - Backends: the lease value carries what Options.Backend says for the
//     overlay's config (nothing for udp; for flannel's wireguard backend
//     BackendType "wireguard" and BackendData {"PublicKey":…}), so a
//     changed key rewrites the lease at the next start (take-over path).
//     SetBackend changes an overlay's config backend only while this host
//     is its only member (one transaction: config + own lease, guarded by
//     the config's revision and by every lease key's create revision being
//     ours); otherwise ErrBackendInUse.
//   - Events: Added is add-or-update, Removed is gone; this host's own lease
//     comes with Own set. Subscribe starts with the current state.
package subnet
