//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
// twill's kernel datapath: flannel's udp wire format (UDP 8285 both ways,
// the payload one plain inner IPv4 packet, nothing added) encapsulated and
// decapsulated in TC programs, so packets between containers on different
// hosts never reach twilld. Modelled on the kernel selftest
// tools/testing/selftests/bpf/progs/test_tc_tunnel.c (encap_udp_none).
//
// twill_encap runs on twill0's egress (TCX): a packet the kernel routed into
// twill0 for a known peer gets an outer IPv4/UDP header and is redirected
// out of the underlay; TCP super-packets keep their GSO and are segmented
// later with one outer header per segment (BPF_F_ADJ_ROOM_ENCAP_L4_UDP).
// twill_decap runs on the underlay's ingress (TCX): a datagram to this
// host's port is checked with twill's rules, stripped of its outer headers
// and redirected into twill0's ingress, as if twilld had written it there.
// Whatever the programs do not handle continues to twilld's TUN path.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/udp.h>
#include <linux/tcp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
#define IP_DF 0x4000
#define OUTER_LEN (sizeof(struct iphdr) + sizeof(struct udphdr)) // 28

// Set by the loader before the programs are loaded (RewriteConstants).
volatile const __u32 local_ip = 0;    // this host's underlay address, network order
volatile const __u16 local_port = 0;  // twill's UDP port, network order
volatile const __u32 mtu = 0;         // twill0's MTU: largest inner packet
volatile const __u32 tun_ifindex = 0; // twill0
volatile const __u32 underlay_ifindex = 0;
volatile const __u32 gro_ifindex = 0; // veth whose peer merges decapsulated segments (GRO); 0: none

// peer is one remote lease, keyed by its subnet in the LPM trie peers.
struct peer {
	__u32 ip;         // the holder's underlay address, network order
	__u16 port;       // its UDP port, network order
	__u16 usable;     // 0: no overlay of this host holds the subnet (TUN path decides)
	__u32 ov_net;     // the overlay holding the subnet, network order
	__u32 ov_mask;
	__u32 local_net;  // this host's lease in that overlay, network order
	__u32 local_mask;
	__u64 id;         // key of the peer's counters in peer_stats
};

struct peer_key {
	__u32 prefixlen;
	__u32 addr; // network order
};

// peer_stats are one peer's counters on one CPU.
struct peer_stats {
	__u64 packets_in;
	__u64 bytes_in;
	__u64 packets_out;
	__u64 bytes_out;
	__u64 last_seen; // bpf_ktime_get_boot_ns of the last accepted packet
};

// Counters in stats, by index. The drop reasons carry the TUN path's names
// (overlay.Drop*); the pass counters count packets left to the TUN path.
enum counter {
	DROP_UNKNOWN_PEER,      // sender holds no lease
	DROP_SPOOFED_SOURCE,    // inner source outside the sender's lease
	DROP_WRONG_DESTINATION, // inner destination not in this host's lease of that overlay
	DROP_TRUNCATED,         // shorter than its headers or its IPv4 total length
	DROP_NOT_IPV4,          // inner IP version is not 4
	DROP_MALFORMED,         // inconsistent inner header
	DROP_ENCAP_FAILED,      // outer header written but the skb could not be sent on
	PASS_OUT,               // outbound packets left to twilld (no peer, options, fragments, size, refusals)
	PASS_IN,                // inbound datagrams left to twilld (GSO trains, oversize, refusals)
	REFUSED_OUT,            // of PASS_OUT, packets bpf_skb_adjust_room refused to encapsulate
	REFUSED_IN,             // of PASS_IN, datagrams bpf_skb_adjust_room refused to decapsulate
	NUM_COUNTERS,
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, struct peer_key);
	__type(value, struct peer);
} peers SEC(".maps");

// senders counts the leases each underlay address holds (any > 0 is a
// known host), to tell unknown_peer from spoofed_source.
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
} senders SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct peer_stats);
} peer_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NUM_COUNTERS);
	__type(key, enum counter);
	__type(value, __u64);
} stats SEC(".maps");

// alive[0] is the CLOCK_MONOTONIC time (ns) until which twilld vouches for
// the maps; it moves it on every second. The programs stay attached while
// twilld restarts (pinned links), and forward on their own until then; past
// it, a twilld that is gone for good (or frozen) can no longer keep the
// peers in step with etcd, so everything is left to the TUN path, as if the
// programs were not there.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} alive SEC(".maps");

static __always_inline int stale(void)
{
	__u32 k = 0;
	__u64 *until = bpf_map_lookup_elem(&alive, &k);

	// The coarse clock (the last tick's time, no clock read): a deadline
	// of seconds does not need better, and every packet pays for this.
	return !until || bpf_ktime_get_coarse_ns() > *until;
}

static __always_inline void count(enum counter c)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &c);
	if (v)
		*v += 1;
}

// segments returns how many packets skb (len bytes of inner packet, hdrs
// of them headers) becomes on the wire, and adds the headers each further
// segment repeats to *bytes. gso_segs is not relied upon: forwarded
// super-packets often carry 0 there.
static __always_inline __u32 segments(struct __sk_buff *skb, __u32 len, __u32 hdrs, __u64 *bytes)
{
	__u32 size = skb->gso_size, n;

	if (!size || len <= hdrs)
		return 1;
	n = (len - hdrs + size - 1) / size;
	if (n <= 1)
		return 1;
	*bytes += (__u64)(n - 1) * hdrs;
	return n;
}

static __always_inline void peer_count(__u64 id, int out, __u32 packets, __u64 bytes)
{
	struct peer_stats *s = bpf_map_lookup_elem(&peer_stats, &id);
	if (!s) {
		struct peer_stats zero = {};
		bpf_map_update_elem(&peer_stats, &id, &zero, BPF_NOEXIST);
		s = bpf_map_lookup_elem(&peer_stats, &id);
		if (!s)
			return;
	}
	if (out) {
		s->packets_out += packets;
		s->bytes_out += bytes;
	} else {
		s->packets_in += packets;
		s->bytes_in += bytes;
		s->last_seen = bpf_ktime_get_boot_ns();
	}
}

// inner_hdrs is the IPv4 header plus, for TCP, the TCP header: what each
// segment of a super-packet repeats.
static __always_inline __u32 inner_hdrs(struct __sk_buff *skb, __u32 off, struct iphdr *ip)
{
	__u32 h = ip->ihl * 4;
	if (ip->protocol == IPPROTO_TCP) {
		__u8 doff = 0;
		if (bpf_skb_load_bytes(skb, off + h + 12, &doff, 1) == 0)
			h += (doff >> 4) * 4;
	}
	return h;
}

static __always_inline __u16 csum_fold(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

// outer is the header twill puts in front of each inner packet (28 bytes,
// no padding).
struct outer {
	struct iphdr ip;
	struct udphdr udp;
};

SEC("tc")
int twill_encap(struct __sk_buff *skb)
{
	struct iphdr ip;
	struct peer_key key = {.prefixlen = 32};
	struct peer *p;
	struct outer o = {};
	__u32 len, *w, sum = 0, hdrs;
	__u64 bytes;
	int i;

	// Not IPv4: twill0 carries nothing else; TC_ACT_OK hands it to twilld
	// unchanged, which drops it as today.
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)) < 0)
		return TC_ACT_OK;
	// IP options, fragments, maps twilld no longer vouches for: left to the
	// TUN path (TC_ACT_OK: the packet continues into twill0 and twilld
	// forwards it).
	if (ip.version != 4 || ip.ihl != 5 || (ip.frag_off & bpf_htons(IP_MF | IP_OFFSET)) || stale()) {
		count(PASS_OUT);
		return TC_ACT_OK;
	}
	key.addr = ip.daddr;
	p = bpf_map_lookup_elem(&peers, &key);
	// No peer holds the destination, or its subnet is in no overlay of this
	// host, or the source is in another overlay: twilld answers (ICMP net
	// unreachable) or drops and counts, as today.
	if (!p || !p->usable || (ip.saddr & p->ov_mask) != p->ov_net) {
		count(PASS_OUT);
		return TC_ACT_OK;
	}
	len = skb->len;
	// Larger than twill0's MTU without GSO, or GSO segments that would be:
	// twilld's rules (oversize) apply.
	if (skb->gso_size ? skb->gso_size + 40 > mtu : len > mtu) {
		count(PASS_OUT);
		return TC_ACT_OK;
	}
	hdrs = skb->gso_size ? inner_hdrs(skb, 0, &ip) : 0;

	// FIXED_GSO: keep gso_size (the segments already fit the tunnel MTU;
	// without it the kernel would shrink them, calico #11160).
	if (bpf_skb_adjust_room(skb, OUTER_LEN, BPF_ADJ_ROOM_MAC,
				BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 |
					BPF_F_ADJ_ROOM_ENCAP_L4_UDP)) {
		// Refused (e.g. already encapsulated): nothing changed yet, so the
		// TUN path takes the packet.
		count(PASS_OUT);
		count(REFUSED_OUT);
		return TC_ACT_OK;
	}

	o.ip.version = 4;
	o.ip.ihl = 5;
	o.ip.tos = ip.tos; // DSCP and ECN of the inner packet
	o.ip.tot_len = bpf_htons(len + OUTER_LEN > 0xffff ? 0xffff : len + OUTER_LEN);
	o.ip.frag_off = bpf_htons(IP_DF); // as a UDP socket with PMTU discovery sends
	o.ip.ttl = 64;
	o.ip.protocol = IPPROTO_UDP;
	o.ip.saddr = local_ip;
	o.ip.daddr = p->ip;
	w = (__u32 *)&o.ip;
#pragma unroll
	for (i = 0; i < 5; i++)
		sum += (w[i] & 0xffff) + (w[i] >> 16);
	o.ip.check = csum_fold(sum);
	o.udp.source = local_port;
	o.udp.dest = p->port;
	o.udp.len = bpf_htons(len + sizeof(struct udphdr) > 0xffff ? 0xffff : len + sizeof(struct udphdr));
	o.udp.check = 0; // no outer checksum: legal on IPv4, what flanneld and VXLAN accept

	// twill0 has no link-layer header; bpf_redirect_neigh wants one to
	// replace, so make room for an Ethernet header it fills in.
	if (bpf_skb_change_head(skb, ETH_HLEN, 0) ||
	    bpf_skb_store_bytes(skb, ETH_HLEN, &o, sizeof(o), 0)) {
		// The skb is encapsulated already and cannot go back to twill0:
		// dropped and counted (the kernel ran out of memory).
		count(DROP_ENCAP_FAILED);
		return TC_ACT_SHOT;
	}
	bytes = len;
	peer_count(p->id, 1, segments(skb, len, hdrs, &bytes), bytes);
	// Out of the underlay, MACs from the neighbour table (resolved by the
	// kernel as for any routed packet).
	return bpf_redirect_neigh(underlay_ifindex, NULL, 0, 0);
}

SEC("tc")
int twill_decap(struct __sk_buff *skb)
{
	struct {
		struct iphdr ip;
		struct udphdr udp;
		struct iphdr in;
	} h;
	struct peer_key key = {.prefixlen = 32};
	struct peer *p;
	__u32 payload, tot, sender, hdrs = 0;
	__u64 bytes;

	// TCX_NEXT (TC_ACT_UNSPEC) for everything not addressed to twill: the
	// underlay is shared, later programs and the stack see it untouched.
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return TC_ACT_UNSPEC;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &h.ip, sizeof(h.ip) + sizeof(h.udp)) < 0)
		return TC_ACT_UNSPEC;
	if (h.ip.protocol != IPPROTO_UDP || h.ip.daddr != local_ip)
		return TC_ACT_UNSPEC;
	// Outer options or fragments: the socket (and the kernel's reassembly)
	// hands them to twilld, which applies the same rules.
	if (h.ip.version != 4 || h.ip.ihl != 5 || (h.ip.frag_off & bpf_htons(IP_MF | IP_OFFSET))) {
		if (h.ip.ihl == 5 && h.udp.dest == local_port)
			count(PASS_IN);
		return TC_ACT_UNSPEC;
	}
	if (h.udp.dest != local_port)
		return TC_ACT_UNSPEC;
	if (stale()) {
		count(PASS_IN);
		return TC_ACT_UNSPEC;
	}

	// From here on the datagram is twill's: dropped and counted, passed to
	// twilld, or decapsulated.
	if (skb->len <= ETH_HLEN + OUTER_LEN ||
	    bpf_skb_load_bytes(skb, ETH_HLEN + OUTER_LEN, &h.in, 1) < 0) {
		count(DROP_TRUNCATED);
		return TC_ACT_SHOT;
	}
	if (h.in.version != 4) {
		count(DROP_NOT_IPV4);
		return TC_ACT_SHOT;
	}
	payload = skb->len - ETH_HLEN - OUTER_LEN;
	if (payload < sizeof(struct iphdr) ||
	    bpf_skb_load_bytes(skb, ETH_HLEN + OUTER_LEN, &h.in, sizeof(h.in)) < 0) {
		count(DROP_TRUNCATED);
		return TC_ACT_SHOT;
	}
	if (h.in.ihl < 5) {
		count(DROP_MALFORMED);
		return TC_ACT_SHOT;
	}
	tot = bpf_ntohs(h.in.tot_len);
	if (tot < h.in.ihl * 4) {
		count(DROP_MALFORMED);
		return TC_ACT_SHOT;
	}
	if (tot > payload) {
		count(DROP_TRUNCATED);
		return TC_ACT_SHOT;
	}
	if (skb->gso_size) {
		// A GSO train. One inner super-packet behind one outer header (a
		// peer's kernel path over a veth) is decapsulated like a datagram;
		// several datagrams (a peer's UDP_SEGMENT send, UDP GRO) go to
		// twilld's socket, which splits them.
		if (tot != payload || skb->gso_size + 40 > mtu) {
			count(PASS_IN);
			return TC_ACT_UNSPEC;
		}
		hdrs = inner_hdrs(skb, ETH_HLEN + OUTER_LEN, &h.in);
	} else if (tot != payload) {
		// Trailing bytes behind the inner packet: twilld's rules decide.
		count(PASS_IN);
		return TC_ACT_UNSPEC;
	} else if (payload > mtu) {
		// Oversize: twilld drops and counts it as today.
		count(PASS_IN);
		return TC_ACT_UNSPEC;
	}

	sender = h.ip.saddr;
	key.addr = h.in.saddr;
	p = bpf_map_lookup_elem(&peers, &key);
	if (!p || p->ip != sender) {
		// Dropped: the inner source is not the sender's. unknown_peer when
		// the sender holds no lease at all.
		count(bpf_map_lookup_elem(&senders, &sender) ? DROP_SPOOFED_SOURCE : DROP_UNKNOWN_PEER);
		return TC_ACT_SHOT;
	}
	if (!p->usable || (h.in.daddr & p->local_mask) != p->local_net) {
		// Dropped: not for this host's lease in the sender's overlay.
		count(DROP_WRONG_DESTINATION);
		return TC_ACT_SHOT;
	}

	// No NO_CSUM_RESET: a checksum the NIC verified on the outer datagram
	// must not vouch for the inner packet.
	if (bpf_skb_adjust_room(skb, -(__s32)OUTER_LEN, BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_FIXED_GSO)) {
		count(PASS_IN);
		count(REFUSED_IN);
		return TC_ACT_UNSPEC;
	}
	bytes = payload;
	peer_count(p->id, 0, segments(skb, payload, hdrs, &bytes), bytes);
	// Inner flows spread over CPUs by their own hash, not the tunnel's.
	bpf_set_hash_invalid(skb);
	// One segment of a TCP stream, as a NIC delivers them: through the GRO
	// veth first, whose NAPI merges a stream's segments as VXLAN's
	// gro_cells do, then (twill_gro) into twill0, so routing, the bridge and
	// the container handle one super-packet instead of dozens.
	if (gro_ifindex && !skb->gso_size)
		return bpf_redirect(gro_ifindex, 0);
	// Into twill0's ingress: routing, the firewall and published ports see
	// the packet as if twilld had written it to the TUN.
	return bpf_redirect(tun_ifindex, BPF_F_INGRESS);
}

// twill_gro runs on the ingress of the GRO veth's receiving end: what
// twill_decap sent through it, merged by GRO, continues into twill0 as if
// twill_decap had put it there. Nothing else comes this way but what the
// kernel itself sends out of a link without addresses (IPv6 neighbour
// discovery): dropped.
SEC("tc")
int twill_gro(struct __sk_buff *skb)
{
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return TC_ACT_SHOT;
	return bpf_redirect(tun_ifindex, BPF_F_INGRESS);
}

char __license[] SEC("license") = "Dual BSD/GPL";
