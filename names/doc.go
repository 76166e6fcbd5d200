// Package names owns twill's names across hosts: the records that say which
// Docker container names (container name, network aliases, DNS names) have
// which overlay address on which host, kept in etcd under each overlay's
// prefix, and the DNS resolver that answers them on the overlay's fixed
// resolver address and forwards everything else to the host's upstream
// resolvers.
//
// Pieces, each testable on its own:
//   - Record, Key and ParseRecord: the etcd schema (below).
//   - Table: the records of one overlay in memory, indexed for lookups; kept
//     current by one Watcher per overlay (list, then watch, re-list after a
//     lost watch).
//   - Publisher: this host's records, put on a short etcd lease of its own
//     (TTL 10 s, kept alive), so a dead host's names vanish within about
//     10 s; after every (re)grant it rewrites all of them and deletes
//     what it no longer holds.
//   - Docker: learns this host's endpoints from dockerd's API (events plus a
//     full resync after every (re)connect), never inside a plugin request.
//   - Resolver: answers from a Table by the querier's network and forwards
//     the rest through a Forwarder. Listen serves it on the overlay's
//     resolver address: UDP datagrams on internal/udpsock sockets, answered
//     in place by one reader (ServePacket; a name no network holds is relayed
//     unparsed, the upstream socket's reader sending the answer back), TCP
//     through miekg/dns's server (ServeDNS).
//
// Schema. One key per container endpoint on a twill network:
//
//	<overlay prefix>/names/<host public IP>/<endpoint ID>
//	{"Network":"blue","Container":"3f2a…","Names":["web-1","web","3f2a9c0e1b7d"],"IPv4":"10.96.3.5"}
//
// where <overlay prefix> is the prefix that holds the overlay's config and
// subnets (flannel's `/coreos.com/network` for the default overlay,
// `<prefix>/overlays/10.97.0.0-16` for further ones). Network is the Docker
// network's name: names are matched by network name across hosts, as compose
// project networks are. Names are stored as Docker reports them; lookups are
// case-insensitive. flanneld never reads these keys.
package names
