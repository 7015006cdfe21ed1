/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Service translation of packets in TC (Cilium's lb4_local / lb4_xlate / lb4_rev_nat in
 * bpf/lib/lb.h), for traffic that never met the socket hooks (bpf_sock.c): pods outside the
 * socket-LB cgroup.
 *
 * A packet to a frontend (address, port, protocol) is looked up in conntrack as a CT_SERVICE
 * entry of its frontend tuple; a new connection picks a backend as the socket hooks would (ClientIP
 * affinity first, then random or Maglev) and the entry remembers it, so every packet of the
 * connection goes to that backend, even after the backend started terminating. The packet is then
 * DNATed, and everything after this step (conntrack of the backend's tuple, the client's egress
 * and the backend's ingress policy, the route) sees a packet to the backend, as Cilium orders LB
 * before policy in from-container. The translated connection's conntrack entry carries the
 * service's rev_nat_index, and wherever a reply to it is tracked (the backend's own
 * from-container on this node, from-overlay for a backend on another node, to-container for one
 * the stack routed here) lb4_rev_nat() turns its source back into the frontend.
 *
 * TCP, UDP and SCTP. SCTP's CRC32c covers its header and payload but no pseudo-header, so an
 * address changes without touching it, and a port never does: as Cilium's, an SCTP frontend's
 * backends listen on its own port (the agent refuses SCTP services that would need another).
 * Fragments of a datagram a pod sends to a frontend: the first carries the ports and is
 * remembered (ciliate_lb4_frags, Cilium's cilium_ipv4_frag_datagrams), so the later ones, which
 * have none, follow it to the same backend; their replies' later fragments are turned back too.
 */
#pragma once

#include "common.h"
#include "ctx.h"
#include "drop_reasons.h"
#include "events.h"
#include "maps.h"
#include "eth.h"
#include "ipv4.h"
#include "conntrack.h"
#include "fib.h"
#include "l3.h"
#include "lb.h"

#ifndef BPF_F_PSEUDO_HDR
#define BPF_F_PSEUDO_HDR (1ULL << 4)
#endif
#ifndef BPF_F_MARK_MANGLED_0
#define BPF_F_MARK_MANGLED_0 (1ULL << 5)
#endif
#ifndef IPPROTO_SCTP
#define IPPROTO_SCTP 132
#endif
#ifndef EOPNOTSUPP
#define EOPNOTSUPP 95
#endif

/* The L4 protocols service translation handles (ports at the start of the header in each). */
static __always_inline bool lb4_l4_proto(__u8 proto)
{
	return proto == IPPROTO_TCP || proto == IPPROTO_UDP || proto == IPPROTO_SCTP;
}

/* Where a TCP or UDP header keeps its checksum, relative to the L4 header; 0: neither. */
static __always_inline __u32 lb4_l4_csum_off(__u8 proto)
{
	if (proto == IPPROTO_TCP)
		return __builtin_offsetof(struct tcphdr, check);
	if (proto == IPPROTO_UDP)
		return __builtin_offsetof(struct udphdr, check);
	return 0;
}

/*
 * Rewrites one end of a TCP/UDP/SCTP packet: the destination (dst) or source address and port,
 * with the IPv4 and L4 checksums fixed incrementally (the L4 one covers the address through the
 * pseudo-header). A UDP checksum of 0 (none) stays 0. SCTP: the address only (its CRC32c covers
 * no pseudo-header); a port change is -EOPNOTSUPP. `l4_off` 0: a later fragment, which has no L4
 * header (the first fragment's checksum covers the datagram): the address only. Invalidates
 * packet pointers. Returns 0 or a negative errno.
 */
static __always_inline int lb4_rewrite(struct __sk_buff *skb, __u32 l4_off, __u8 proto, bool dst,
				       __be32 old_addr, __be32 new_addr, __be16 old_port, __be16 new_port)
{
	__u32 addr_off = ETH_HLEN + (dst ? __builtin_offsetof(struct iphdr, daddr) : __builtin_offsetof(struct iphdr, saddr));
	/* Ports: source first, destination second, in TCP and UDP alike. */
	__u32 port_off = l4_off + (dst ? 2 : 0);
	__u32 csum_off = l4_off + lb4_l4_csum_off(proto);
	__u64 mangled = proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	int err;

	if (proto == IPPROTO_SCTP || !l4_off) {
		if (proto == IPPROTO_SCTP && l4_off && old_port != new_port)
			return -EOPNOTSUPP;
		if (old_addr == new_addr)
			return 0;
		err = bpf_l3_csum_replace(skb, ETH_HLEN + __builtin_offsetof(struct iphdr, check), old_addr, new_addr,
					  sizeof(new_addr));
		return err ? err : bpf_skb_store_bytes(skb, addr_off, &new_addr, sizeof(new_addr), 0);
	}
	if (old_addr != new_addr) {
		err = bpf_l4_csum_replace(skb, csum_off, old_addr, new_addr, BPF_F_PSEUDO_HDR | mangled | sizeof(new_addr));
		if (!err)
			err = bpf_l3_csum_replace(skb, ETH_HLEN + __builtin_offsetof(struct iphdr, check), old_addr, new_addr,
						  sizeof(new_addr));
		if (!err)
			err = bpf_skb_store_bytes(skb, addr_off, &new_addr, sizeof(new_addr), 0);
		if (err)
			return err;
	}
	if (old_port != new_port) {
		err = bpf_l4_csum_replace(skb, csum_off, old_port, new_port, mangled | sizeof(new_port));
		if (!err)
			err = bpf_skb_store_bytes(skb, port_off, &new_port, sizeof(new_port), 0);
		if (err)
			return err;
	}
	return 0;
}

/* The frontend tuple of a TCP/UDP/SCTP packet: 0 and *tuple filled (CT_SERVICE), or -1 for a
 * packet this path does not translate (other protocols, later fragments, short headers). */
static __always_inline int lb4_frontend_tuple(struct __sk_buff *skb, struct ipv4_ct_tuple *tuple, __u32 *l4_off)
{
	void *data = ctx_data(skb);
	void *data_end = ctx_data_end(skb);
	struct iphdr *ip = pkt_header(data, data_end, ETH_HLEN, sizeof(*ip));
	__be16 *ports;

	if (!ip || !lb4_l4_proto(ip->protocol) || (ip->frag_off & bpf_htons(IP_OFFSET)) || ipv4_hdrlen(ip) < sizeof(*ip))
		return -1;
	*l4_off = ETH_HLEN + ipv4_hdrlen(ip);
	ports = pkt_header(data, data_end, *l4_off, 2 * sizeof(__be16));
	if (!ports)
		return -1;
	__builtin_memset(tuple, 0, sizeof(*tuple));
	tuple->daddr = ip->daddr;
	tuple->saddr = ip->saddr;
	tuple->sport = ports[0];
	tuple->dport = ports[1];
	tuple->nexthdr = ip->protocol;
	tuple->flags = CT_SERVICE;
	return 0;
}

/* A datagram's fragments: source, destination, IP id and protocol (Cilium's ipv4_frag_id). */
struct lb4_frag_key {
	__be32 saddr;
	__be32 daddr;
	__be16 id;
	__u8 proto;
	__u8 _pad;
};

struct lb4_frag_ports {
	__be16 sport;
	__be16 dport;
};

/* The ports of datagrams to frontends whose first fragment went by, for their later fragments.
 * Private to each object (one bpf_lxc serves every pod's egress); LRU: datagrams done age out. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct lb4_frag_key);
	__type(value, struct lb4_frag_ports);
} ciliate_lb4_frags SEC(".maps");

/*
 * lb4_frontend_tuple for a pod's packet, fragments too: a later fragment gets the ports its first
 * fragment had (*l4_off 0: it has no L4 header), -1 when that one did not go by. *first_frag says
 * the packet is a first fragment, whose ports the caller remembers once it is for a frontend.
 */
static __always_inline int lb4_pod_frontend_tuple(struct __sk_buff *skb, struct ipv4_ct_tuple *tuple, __u32 *l4_off,
						  struct lb4_frag_key *frag, bool *first_frag)
{
	struct iphdr *ip = pkt_header(ctx_data(skb), ctx_data_end(skb), ETH_HLEN, sizeof(*ip));
	struct lb4_frag_ports *ports;

	*first_frag = false;
	if (!ip || !lb4_l4_proto(ip->protocol))
		return -1;
	if (!(ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)))
		return lb4_frontend_tuple(skb, tuple, l4_off);
	__builtin_memset(frag, 0, sizeof(*frag));
	frag->saddr = ip->saddr;
	frag->daddr = ip->daddr;
	frag->id = ip->id;
	frag->proto = ip->protocol;
	if (!(ip->frag_off & bpf_htons(IP_OFFSET))) {
		*first_frag = true;
		return lb4_frontend_tuple(skb, tuple, l4_off);
	}
	ports = bpf_map_lookup_elem(&ciliate_lb4_frags, frag);
	if (!ports)
		return -1;
	__builtin_memset(tuple, 0, sizeof(*tuple));
	tuple->daddr = frag->daddr;
	tuple->saddr = frag->saddr;
	tuple->sport = ports->sport;
	tuple->dport = ports->dport;
	tuple->nexthdr = frag->proto;
	tuple->flags = CT_SERVICE;
	*l4_off = 0;
	return 0;
}

/* ClientIP affinity in TC is by the client's address, as Cilium's lb4_affinity_client_id: TC has
 * no socket to take a netns cookie from. The top bit keeps these keys apart from the socket
 * hooks' cookies in the shared ciliate_lb4_affinity. */
#define LB4_AFFINITY_CLIENT_ADDR (1ULL << 63)

/* The Maglev hash of a connection: its frontend tuple, so one connection keeps one slot. */
static __always_inline __u32 lb4_tuple_hash(const struct ipv4_ct_tuple *t)
{
	__u32 h = t->saddr * 0x9e3779b1u;

	h ^= ((__u32)t->sport << 16 | t->dport) * 0x85ebca6bu;
	h ^= t->daddr * 0xc2b2ae35u;
	h ^= h >> 15;
	h *= 0x27d4eb2fu;
	return h ^ (h >> 13);
}

/* Slots an externalTrafficPolicy Local frontend looks through for a backend of this node. */
#define LB4_LOCAL_SCAN 64

/*
 * A backend of this node (a local endpoint) that takes new connections, among the first
 * LB4_LOCAL_SCAN slots from one the hash picks: externalTrafficPolicy Local. 0 when none.
 */
static __always_inline __u32 lb4_select_local_backend_id(const struct lb4_service *svc, __be32 slots_addr, __be16 dport,
							 __u8 proto, __u32 hash)
{
	struct lb4_key key = { .address = slots_addr, .dport = dport, .proto = proto };
	__u32 count = svc->count;

	if (count == 0)
		return 0;
	for (__u32 i = 0; i < LB4_LOCAL_SCAN && i < count; i++) {
		struct lb4_service *slot;
		struct lb4_backend *backend;
		struct endpoint_info *ep;
		struct endpoint_key ep_key;
		__u32 id;

		key.backend_slot = (hash + i) % count + 1;
		slot = bpf_map_lookup_elem(&ciliate_lb4_services, &key);
		if (!slot)
			continue;
		id = slot->backend_id;
		backend = bpf_map_lookup_elem(&ciliate_lb4_backends, &id);
		if (!backend || (backend->flags & BE_F_TERMINATING))
			continue;
		ep_key.ip = backend->address;
		ep = bpf_map_lookup_elem(&ciliate_lxc, &ep_key);
		if (ep && !(ep->flags & ENDPOINT_F_HOST))
			return id;
	}
	return 0;
}

/*
 * The backend of the connection whose frontend tuple is `tuple` (CT_SERVICE): the one its
 * conntrack entry remembers while that backend exists (a terminating one keeps its established
 * connections; an entry of a service recreated under another id is not this service's), else a
 * new choice (ClientIP affinity first, then random or Maglev over the slots stored under
 * `slots_addr`: the frontend's address, 0.0.0.0 for NodePort), remembered. NULL after reporting
 * the drop (*ret its verdict): DROP_NO_SERVICE when the service has no backend to take it.
 */
static __always_inline struct lb4_backend *lb4_conn_backend(struct __sk_buff *skb, struct ciliate_notify_info *info,
							    const struct ipv4_ct_tuple *tuple, const struct lb4_service *svc,
							    __be32 slots_addr, bool local_only, int *ret)
{
	struct lb4_backend *backend = NULL;
	struct ct_entry *entry;
	__u32 backend_id = 0;
	__u64 now = ct_now();
	int err;

	entry = bpf_map_lookup_elem(&ciliate_ct4, tuple);
	if (entry && entry->rev_nat_index == svc->rev_nat_index) {
		backend_id = entry->backend_id;
		backend = bpf_map_lookup_elem(&ciliate_lb4_backends, &backend_id);
	}
	if (backend) {
		__sync_fetch_and_add(&entry->packets, 1);
		__sync_fetch_and_add(&entry->bytes, skb->len);
		/* The translated connection's own entry says when it closes; this one follows it at the
		 * longest lifetime its protocol has, and the LRU takes it once idle. */
		entry->lifetime = now + (tuple->nexthdr == IPPROTO_TCP ? CT_LIFETIME_TCP : CT_LIFETIME_NONTCP);
		return backend;
	}

	backend_id = 0;
	/* Local: the first backend of this node from a slot the tuple picks (neither affinity nor
	 * Maglev's table, which span every node's backends). */
	if (local_only)
		backend_id = lb4_select_local_backend_id(svc, slots_addr, tuple->dport, tuple->nexthdr, lb4_tuple_hash(tuple));
	else if (svc->flags & SVC_F_AFFINITY)
		backend_id = lb4_affinity_backend_id(svc, LB4_AFFINITY_CLIENT_ADDR | tuple->saddr, now);
	if (!backend_id && !local_only)
		backend_id = lb4_select_backend_id(svc, slots_addr, tuple->dport, tuple->nexthdr, lb4_tuple_hash(tuple), false);
	backend = backend_id ? bpf_map_lookup_elem(&ciliate_lb4_backends, &backend_id) : NULL;
	if (!backend || (backend->flags & BE_F_TERMINATING)) {
		*ret = DROP(skb, info, DROP_NO_SERVICE);
		return NULL;
	}
	if ((svc->flags & SVC_F_AFFINITY) && !local_only)
		lb4_affinity_update(svc, LB4_AFFINITY_CLIENT_ADDR | tuple->saddr, now, backend_id);

	struct ct_entry fresh = {
		.packets = 1,
		.bytes = skb->len,
		.lifetime = now + ct_lifetime(tuple, 0),
		.backend_id = backend_id,
		.rev_nat_index = svc->rev_nat_index,
	};
	err = bpf_map_update_elem(&ciliate_ct4, tuple, &fresh, BPF_ANY);
	if (err < 0) {
		info->ext_error = err;
		*ret = DROP(skb, info, DROP_CT_MAP_INSERTION_FAILED);
		return NULL;
	}
	return backend;
}

/*
 * Translates a packet leaving a pod for a service frontend into one for the connection's backend.
 * Returns 0 (not a frontend, or translated: info->rev_nat_index then names the service, for the
 * conntrack entry the caller creates) or the verdict of the drop it reported: DROP_NO_SERVICE for
 * a new connection to a service that has no backend to take it.
 */
static __always_inline int lb4_xlate_from_pod(struct __sk_buff *skb, struct ciliate_notify_info *info)
{
	struct ipv4_ct_tuple tuple;
	struct lb4_service *svc;
	struct lb4_backend *backend;
	struct lb4_frag_key frag;
	bool first_frag;
	__u32 l4_off;
	int ret = 0;

	if (lb4_pod_frontend_tuple(skb, &tuple, &l4_off, &frag, &first_frag) < 0)
		return 0;
	svc = lb4_lookup_service(tuple.daddr, tuple.dport, tuple.nexthdr);
	if (!svc)
		return 0;
	if (first_frag) {
		struct lb4_frag_ports ports = { .sport = tuple.sport, .dport = tuple.dport };

		/* Best effort: without it the later fragments go untranslated and the datagram is lost. */
		bpf_map_update_elem(&ciliate_lb4_frags, &frag, &ports, BPF_ANY);
	}
	backend = lb4_conn_backend(skb, info, &tuple, svc, tuple.daddr, false, &ret);
	if (!backend)
		return ret;
	info->rev_nat_index = svc->rev_nat_index;
	ret = lb4_rewrite(skb, l4_off, tuple.nexthdr, true, tuple.daddr, backend->address, tuple.dport, backend->port);
	if (ret) {
		info->ext_error = ret;
		return DROP(skb, info, DROP_INVALID_PACKET);
	}
	return 0;
}

/*
 * A reply of a translated connection (info->rev_nat_index set by conntrack): its source, the
 * backend, becomes the frontend the client asked for. Returns 0, or the verdict of the drop it
 * reported. Invalidates packet pointers.
 */
static __always_inline int lb4_rev_nat(struct __sk_buff *skb, struct ciliate_notify_info *info)
{
	__u16 rev_nat_index = info->rev_nat_index;
	struct lb4_reverse_nat *nat;
	void *data, *data_end;
	struct iphdr *ip;
	__be16 *ports;
	__u32 l4_off;
	int err;

	if (!rev_nat_index || !(info->flags & CILIATE_EVENT_F_REPLY))
		return 0;
	nat = bpf_map_lookup_elem(&ciliate_lb4_reverse_nat, &rev_nat_index);
	/* The service is gone: its replies keep the backend's address, which the client's socket
	 * does not take, as when a kube-proxy rule goes away under a connection. */
	if (!nat)
		return 0;
	data = ctx_data(skb);
	data_end = ctx_data_end(skb);
	ip = pkt_header(data, data_end, ETH_HLEN, sizeof(*ip));
	if (!ip || !lb4_l4_proto(ip->protocol))
		return 0;
	/* A later fragment of a reply (conntrack tracks fragments by addresses): its address only. */
	if (ip->frag_off & bpf_htons(IP_OFFSET)) {
		err = lb4_rewrite(skb, 0, ip->protocol, false, ip->saddr, nat->address, nat->port, nat->port);
		goto out;
	}
	l4_off = ETH_HLEN + ipv4_hdrlen(ip);
	ports = pkt_header(data, data_end, l4_off, 2 * sizeof(__be16));
	if (!ports)
		return 0;
	err = lb4_rewrite(skb, l4_off, ip->protocol, false, ip->saddr, nat->address, ports[0], nat->port);
out:
	if (err) {
		info->ext_error = err;
		return DROP(skb, info, DROP_INVALID_PACKET);
	}
	return 0;
}

/*
 * A reply of a connection bpf_host SNATed to a backend on another node, back at this node's
 * address (from the device, or from the tunnel): to the client, from the frontend, forwarded
 * straight out of the device the FIB names (the stack would drop a packet from its own address).
 * *done says whether it was one; then the return value is the verdict.
 */
static __always_inline int lb4_rev_snat(struct __sk_buff *skb, struct ciliate_notify_info *info,
					   const struct ipv4_ct_tuple *tuple, __u32 l4_off, bool *done)
{
	struct ipv4_ct_tuple key = *tuple;
	struct lb4_nat *nat;
	int err;

	*done = false;
	key.flags = NAT_REV_DST;
	nat = bpf_map_lookup_elem(&ciliate_lb4_nat, &key);
	if (!nat)
		return 0;
	*done = true;
	err = lb4_rewrite(skb, l4_off, tuple->nexthdr, true, tuple->daddr, nat->to_addr, tuple->dport, nat->to_port);
	if (!err)
		err = lb4_rewrite(skb, l4_off, tuple->nexthdr, false, tuple->saddr, nat->frontend_addr, tuple->sport,
				  nat->frontend_port);
	if (err) {
		info->ext_error = err;
		return DROP(skb, info, DROP_INVALID_PACKET);
	}
	info->dst_identity = IDENTITY_WORLD;
	return fib_redirect4(skb, info);
}


/*
 * DSR (direct server return), after Cilium's dsr-dispatch=opt: the node a client reached passes
 * the frontend to the backend's node in an IPv4 option of the request (TCP: the SYN; UDP: every
 * datagram), and that node's datapath remembers it (NAT_REV_SRC), so the backend's replies leave
 * its own node as from the frontend, straight to the client, whose address the backend sees.
 */
#define DSR_IPV4_OPT_TYPE 0x9a	/* copied on fragmentation, class 0, number 26: Cilium's */
#define DSR_IPV4_OPT_LEN 8

struct dsr_opt4 {
	__u8 type;
	__u8 len;
	__be16 port;
	__be32 addr;
};

/* Adds the DSR option carrying `addr`:`port` to a packet with a bare 20-byte IPv4 header (others
 * are left alone: 0). Invalidates packet pointers. Returns 0 or a negative errno. */
static __always_inline int dsr_add_opt4(struct __sk_buff *skb, __be32 addr, __be16 port)
{
	void *data = ctx_data(skb);
	void *data_end = ctx_data_end(skb);
	struct iphdr *ip = pkt_header(data, data_end, ETH_HLEN, sizeof(*ip));
	struct dsr_opt4 opt = { .type = DSR_IPV4_OPT_TYPE, .len = DSR_IPV4_OPT_LEN, .port = port, .addr = addr };
	__be16 old_word, new_word, old_len, new_len;
	__s64 diff;
	int err;

	if (!ip || ip->ihl != 5)
		return 0;
	old_word = *(__be16 *)ip;	/* version and ihl, tos */
	old_len = ip->tot_len;
	new_len = bpf_htons(bpf_ntohs(old_len) + DSR_IPV4_OPT_LEN);
	err = bpf_skb_adjust_room(skb, DSR_IPV4_OPT_LEN, BPF_ADJ_ROOM_NET, 0);
	if (err)
		return err;
	err = bpf_skb_store_bytes(skb, ETH_HLEN + sizeof(struct iphdr), &opt, sizeof(opt), 0);
	if (err)
		return err;
	data = ctx_data(skb);
	data_end = ctx_data_end(skb);
	ip = pkt_header(data, data_end, ETH_HLEN, sizeof(*ip));
	if (!ip)
		return -1;
	ip->ihl = 5 + DSR_IPV4_OPT_LEN / 4;
	ip->tot_len = new_len;
	new_word = *(__be16 *)ip;
	/* The checksum: the changed words, and the option's, as a sum of differences. */
	diff = bpf_csum_diff(0, 0, (__be32 *)&opt, sizeof(opt), 0);
	if (diff < 0)
		return diff;
	err = bpf_l3_csum_replace(skb, ETH_HLEN + __builtin_offsetof(struct iphdr, check), 0, diff, 0);
	if (!err)
		err = bpf_l3_csum_replace(skb, ETH_HLEN + __builtin_offsetof(struct iphdr, check), old_word, new_word, 2);
	if (!err)
		err = bpf_l3_csum_replace(skb, ETH_HLEN + __builtin_offsetof(struct iphdr, check), old_len, new_len, 2);
	return err;
}

/*
 * Whether `addr`:`port` is a frontend a client outside the cluster may reach: a LoadBalancer or
 * external IP, or a node of the cluster's address and a node port. Nothing else may be named in a
 * DSR option: the option decides the source address of the backend's replies, which would
 * otherwise be any address a sender wrote.
 */
static __always_inline bool dsr_frontend_ok4(__be32 addr, __be16 port, __u8 proto)
{
	struct lb4_service *svc = lb4_lookup_service(addr, port, proto);
	__u32 identity;

	if (svc)
		return svc->flags & (SVC_F_EXTERNAL_IP | SVC_F_LOADBALANCER);
	identity = ipcache_identity(addr);
	if (identity != IDENTITY_HOST && identity != IDENTITY_REMOTE_NODE)
		return false;
	svc = lb4_lookup_service(0, port, proto);
	return svc && (svc->flags & SVC_F_NODEPORT);
}

/* On the backend's node: a request carrying the DSR option names the frontend its replies must
 * come from; remembered for them (NAT_REV_SRC, read by lb4_rev_dsr). The caller vouches that the
 * request comes from outside the cluster through another node's bpf_host. */
static __always_inline void dsr_learn4(struct __sk_buff *skb)
{
	struct ipv4_ct_tuple tuple;
	struct dsr_opt4 opt;
	struct iphdr *ip;
	__u32 l4_off;

	if (lb4_frontend_tuple(skb, &tuple, &l4_off) < 0)
		return;
	ip = pkt_header(ctx_data(skb), ctx_data_end(skb), ETH_HLEN, sizeof(*ip));
	if (!ip || ip->ihl != 5 + DSR_IPV4_OPT_LEN / 4)
		return;
	if (bpf_skb_load_bytes(skb, ETH_HLEN + sizeof(*ip), &opt, sizeof(opt)) < 0 || opt.type != DSR_IPV4_OPT_TYPE ||
	    opt.len != DSR_IPV4_OPT_LEN || !dsr_frontend_ok4(opt.addr, opt.port, tuple.nexthdr))
		return;
	struct ipv4_ct_tuple rev = {
		.daddr = tuple.saddr,
		.saddr = tuple.daddr,
		.dport = tuple.sport,
		.sport = tuple.dport,
		.nexthdr = tuple.nexthdr,
		.flags = NAT_REV_SRC,
	};
	struct lb4_nat back = { .frontend_addr = opt.addr, .frontend_port = opt.port };

	bpf_map_update_elem(&ciliate_lb4_nat, &rev, &back, BPF_ANY);
}

/*
 * A pod's reply to a client outside the cluster whose request came to a frontend (DSR, or a
 * NodePort of this node): from the frontend, forwarded straight out of the device the FIB names,
 * past the stack (whose masquerading never saw the request, and would hide the frontend).
 * *done says whether it was one; then the return value is the verdict.
 */
static __always_inline int lb4_rev_dsr(struct __sk_buff *skb, struct ciliate_notify_info *info, bool *done)
{
	struct ipv4_ct_tuple tuple;
	struct lb4_nat *nat;
	__u32 l4_off;
	int err;

	*done = false;
	if (lb4_frontend_tuple(skb, &tuple, &l4_off) < 0)
		return 0;
	tuple.flags = NAT_REV_SRC;
	nat = bpf_map_lookup_elem(&ciliate_lb4_nat, &tuple);
	if (!nat)
		return 0;
	*done = true;
	err = lb4_rewrite(skb, l4_off, tuple.nexthdr, false, tuple.saddr, nat->frontend_addr, tuple.sport, nat->frontend_port);
	if (err) {
		info->ext_error = err;
		return DROP(skb, info, DROP_INVALID_PACKET);
	}
	return fib_redirect4(skb, info);
}
