/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The standalone XDP load balancer (`ciliate lb`), as Katran: a packet to a VIP:port is given a
 * backend (its connection's, from the LRU connection table, or for an established flow from a
 * per-CPU cache of that table's answer; a new one's from the VIP's Maglev table), wrapped in an outer IPv4 header (IPIP, proto 4) to that backend and sent out the
 * interface the FIB names, all before the kernel allocates an skb. Replies go from the backend
 * to the client directly (DSR): the backend decapsulates with `xlb_decap` (tc ingress) and
 * answers from the VIP bound on its lo.
 *
 * Written by src/loadbalancer/xdp-lb.ts, which only ever writes what a config change touches.
 * TS codecs: src/loadbalancer/xdp-maps.ts, checked against this object's BTF.
 */
#include "common.h"

#define XLB_MAX_VIPS 512	/* ids fit the flow cache's 16 bits */
#define XLB_MAX_BACKENDS 4096
#define XLB_MAGLEV_SIZE 16381	/* = lb.h LB_MAGLEV_LUT_SIZE_DEFAULT, the agent's default */

#ifndef ETH_ALEN
#define ETH_ALEN 6
#endif
#ifndef IPPROTO_IPIP
#define IPPROTO_IPIP 4
#endif
#ifndef AF_INET
#define AF_INET 2
#endif

struct xlb_vip_key {
	__be32 address;
	__be16 port;
	__u8 proto;
	__u8 _pad;
};

struct xlb_vip {
	__u32 id;	/* index of ciliate_xlb_maglev and ciliate_xlb_vip_stats */
	__u32 flags;	/* reserved: 0 */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XLB_MAX_VIPS);
	__type(key, struct xlb_vip_key);
	__type(value, struct xlb_vip);
} ciliate_xlb_vips SEC(".maps");

struct xlb_backend {
	__be32 address;
	__u32 flags;	/* XLB_BE_F_* */
};

/* A backend that may be given connections (set only while a backend is configured). */
#define XLB_BE_F_ACTIVE 0x01

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XLB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct xlb_backend);
} ciliate_xlb_backends SEC(".maps");

/* Each VIP's Maglev table (slot → backend id; 0: none), replaced whole by one outer-map update. */
struct ciliate_xlb_maglev_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32) * XLB_MAGLEV_SIZE);
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, XLB_MAX_VIPS);
	__type(key, __u32);
	__array(values, struct ciliate_xlb_maglev_inner);
} ciliate_xlb_maglev SEC(".maps");

/* Connections: a flow keeps the backend it was first given across Maglev changes and reloads. */
struct xlb_flow {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 _pad[3];
};

struct xlb_conn {
	__u32 backend_id;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct xlb_flow);
	__type(value, struct xlb_conn);
} ciliate_xlb_conns SEC(".maps");

struct xlb_stats {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XLB_MAX_VIPS);
	__type(key, __u32);
	__type(value, struct xlb_stats);
} ciliate_xlb_vip_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XLB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct xlb_stats);
} ciliate_xlb_backend_stats SEC(".maps");

/*
 * Time on the per-packet path is jiffies (bpf_jiffies64, which the verifier inlines to a load):
 * a clock helper per packet was a measurable part of the balancer's cost. CONFIG_HZ from the
 * kernel's config; without one (no /proc/config.gz) the kernel is taken to tick at 1000 Hz, so
 * "a second" below is at most 10 s (HZ=100).
 */
extern unsigned long CONFIG_HZ __kconfig __weak;

static __always_inline __u64 xlb_second(void)
{
	return CONFIG_HZ ? CONFIG_HZ : 1000;
}

/*
 * Each backend's next hop (interface, MACs) as the FIB last said, per CPU, kept for a second: a
 * FIB lookup per packet was a large part of the balancer's cost. Zeroed when an id is given to a
 * new backend; a changed route or neighbour is followed within a second.
 */
struct xlb_nexthop {
	__u64 expires;	/* jiffies; 0: none */
	__u32 ifindex;
	__u8 dmac[ETH_ALEN];
	__u8 smac[ETH_ALEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XLB_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct xlb_nexthop);
} ciliate_xlb_nexthops SEC(".maps");

/*
 * Each VIP id's generation: set (non-zero) before the VIP is added, changed or zeroed when it is
 * removed. A flow cache entry (below) holds the generation it was made under, so a VIP's removal
 * ends its flows' cached path at once, whatever the per-CPU caches hold.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XLB_MAX_VIPS);
	__type(key, __u32);
	__type(value, __u32);
} ciliate_xlb_vip_gens SEC(".maps");

/*
 * A per-CPU, direct-mapped cache of established flows in front of the VIP and connection tables:
 * two hash-map lookups (each a kernel call, with its return thunk) were most of what balancing a
 * packet of an established flow cost; a slot is an inlined array lookup and a 16-byte compare.
 * It is only ever a copy of the connection table's decision: a miss, a collision, or an entry
 * older than a second goes the full way (VIP table, connection table), which also keeps the
 * connection table's LRU seeing the flow as used and gets back an entry it lost. Not pinned: a
 * restarted balancer starts empty and refills from the connection table.
 */
#define XLB_FLOW_CACHE_BITS 13
#define XLB_FLOW_CACHE_SLOTS (1 << XLB_FLOW_CACHE_BITS)

struct xlb_flow_cached {	/* 32 bytes: a slot never straddles two cache lines */
	struct xlb_flow flow;	/* all zero: empty (no real flow has proto 0) */
	__u32 backend_id;
	__u32 vip_gen;
	__u16 vip_id;
	__u16 _pad;
	__u32 refresh;	/* jiffies (low 32 bits) after which the full way is taken again */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XLB_FLOW_CACHE_SLOTS);
	__type(key, __u32);
	__type(value, struct xlb_flow_cached);
} ciliate_xlb_flow_cache SEC(".maps");

/* Key 0: the outer source address of the encapsulation (the balancer's own address). */
struct xlb_config {
	__be32 source;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct xlb_config);
} ciliate_xlb_config SEC(".maps");

/* Packets for a VIP that were dropped, by reason (XLB_DROP_*), per CPU. */
#define XLB_DROP_NO_BACKEND 0
#define XLB_DROP_FRAGMENT 1
#define XLB_DROP_ENCAP 2
#define XLB_DROP_MAX 4

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XLB_DROP_MAX);
	__type(key, __u32);
	__type(value, struct xlb_stats);
} ciliate_xlb_drops SEC(".maps");

static __always_inline void xlb_count(void *map, __u32 index, __u64 bytes)
{
	struct xlb_stats *stats = bpf_map_lookup_elem(map, &index);

	if (stats) {
		stats->packets++;
		stats->bytes += bytes;
	}
}

/* A 32-bit mix of the 5-tuple (murmur3's finaliser over each word): the same flow, the same slot. */
static __always_inline __u32 xlb_mix(__u32 h, __u32 k)
{
	k *= 0xcc9e2d51;
	k = (k << 15) | (k >> 17);
	k *= 0x1b873593;
	h ^= k;
	h = (h << 13) | (h >> 19);
	return h * 5 + 0xe6546b64;
}

static __always_inline __u32 xlb_flow_hash(const struct xlb_flow *flow)
{
	__u32 h = 0x9747b28c;

	h = xlb_mix(h, flow->saddr);
	h = xlb_mix(h, flow->daddr);
	h = xlb_mix(h, ((__u32)flow->sport << 16) | flow->dport);
	h = xlb_mix(h, flow->proto);
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	return h ^ (h >> 16);
}

/*
 * A flow's cache slot: a few multiplies, not xlb_flow_hash's murmur rounds, since every packet
 * (a VIP's or not) pays for it; the ports and both addresses all reach the top bits it keeps.
 */
static __always_inline __u32 xlb_flow_slot(const struct xlb_flow *flow)
{
	__u32 h = flow->saddr * 0x9e3779b1 ^ flow->daddr ^ (((__u32)flow->sport << 16) | flow->dport) * 0x85ebca6b;

	h ^= h >> 15;
	return (h * 0x2c1b3c6d) >> (32 - XLB_FLOW_CACHE_BITS);
}

static __always_inline struct xlb_backend *xlb_backend_of(__u32 id)
{
	struct xlb_backend *backend;

	if (id == 0)
		return NULL;
	backend = bpf_map_lookup_elem(&ciliate_xlb_backends, &id);
	return backend && (backend->flags & XLB_BE_F_ACTIVE) ? backend : NULL;
}

static __always_inline __u32 xlb_maglev_pick(__u32 vip_id, __u32 hash)
{
	void *inner = bpf_map_lookup_elem(&ciliate_xlb_maglev, &vip_id);
	__u32 zero = 0, index = hash % XLB_MAGLEV_SIZE;
	__u32 *table;

	if (!inner)
		return 0;
	table = bpf_map_lookup_elem(inner, &zero);
	/* The bound again for the verifier, which learns none from the modulo (as lb.h). */
	asm volatile("" : "+r"(index));
	if (!table || index >= XLB_MAGLEV_SIZE)
		return 0;
	return table[index];
}

static __always_inline __u16 xlb_csum_fold(__u32 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* Both 8-byte aligned (a map value; a stack copy declared so). */
static __always_inline bool xlb_flow_equal(const struct xlb_flow *a, const struct xlb_flow *b)
{
	const __u64 *x = (const __u64 *)a, *y = (const __u64 *)b;

	return x[0] == y[0] && x[1] == y[1];
}

static __always_inline int xlb_balance_frame(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	/* Aligned for xlb_flow_equal's two 8-byte compares. */
	struct xlb_flow flow __attribute__((aligned(8))) = {};
	struct xlb_vip_key vkey = {};
	struct xlb_vip *vip;
	struct xlb_conn *conn;
	struct xlb_backend *backend;
	struct xlb_config *config;
	struct xlb_flow_cached *cached;
	__u32 backend_id, vip_id, vip_gen, cached_backend = 0, zero = 0, len = data_end - data;
	__u32 *gen;
	__u16 *ports;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->ihl != 5)
		return XDP_PASS;	/* IP options: not a VIP packet we balance (Katran's rule too) */
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return XDP_PASS;
	ports = (void *)(ip + 1);
	if ((void *)(ports + 2) > data_end)
		return XDP_PASS;
	flow.saddr = ip->saddr;
	flow.daddr = ip->daddr;
	flow.sport = ports[0];
	flow.dport = ports[1];
	flow.proto = ip->protocol;

	__u32 slot = xlb_flow_slot(&flow);
	__u64 now = bpf_jiffies64();
	bool fragment = ip->frag_off & bpf_htons(0x3fff);

	cached = bpf_map_lookup_elem(&ciliate_xlb_flow_cache, &slot);
	if (!cached)
		return XDP_PASS;
	/* A fragment's "ports" are no ports: never the cached way (the full way drops it if for a VIP). */
	if (!fragment && xlb_flow_equal(&cached->flow, &flow)) {
		vip_id = cached->vip_id;
		gen = bpf_map_lookup_elem(&ciliate_xlb_vip_gens, &vip_id);
		if (gen && *gen && *gen == cached->vip_gen) {
			cached_backend = cached->backend_id;
			backend_id = cached_backend;
			backend = xlb_backend_of(backend_id);
			if (backend && (__s32)(cached->refresh - (__u32)now) > 0)
				goto encap;
		}
	}

	vkey.address = ip->daddr;
	vkey.port = ports[1];
	vkey.proto = ip->protocol;
	vip = bpf_map_lookup_elem(&ciliate_xlb_vips, &vkey);
	if (!vip)
		return XDP_PASS;
	if (fragment) {
		xlb_count(&ciliate_xlb_drops, XLB_DROP_FRAGMENT, len);
		return XDP_DROP;
	}
	vip_id = vip->id;
	gen = bpf_map_lookup_elem(&ciliate_xlb_vip_gens, &vip_id);
	vip_gen = gen ? *gen : 0;
	if (vip_gen != cached->vip_gen || vip_id != cached->vip_id)
		cached_backend = 0;	/* the cached entry was the VIP's before it was replaced */

	/* The connection table decides; the cache's copy only stands in for an entry the LRU lost. */
	conn = bpf_map_lookup_elem(&ciliate_xlb_conns, &flow);
	backend_id = conn ? conn->backend_id : 0;
	backend = xlb_backend_of(backend_id);
	if (!backend) {
		backend_id = cached_backend;
		backend = xlb_backend_of(backend_id);
	}
	if (!backend) {
		backend_id = xlb_maglev_pick(vip_id, xlb_flow_hash(&flow));
		backend = xlb_backend_of(backend_id);
		if (!backend) {
			xlb_count(&ciliate_xlb_drops, XLB_DROP_NO_BACKEND, len);
			return XDP_DROP;
		}
	}
	if (!conn || conn->backend_id != backend_id) {
		struct xlb_conn fresh = { .backend_id = backend_id };

		bpf_map_update_elem(&ciliate_xlb_conns, &flow, &fresh, BPF_ANY);
	}
	if (vip_gen) {
		cached->flow = flow;
		cached->backend_id = backend_id;
		cached->vip_id = vip_id;
		cached->vip_gen = vip_gen;
		cached->refresh = (__u32)(now + xlb_second());
	}

encap:;
	__be32 backend_addr = backend->address;
	__u16 inner_len = bpf_ntohs(ip->tot_len);
	__u8 inner_tos = ip->tos;

	config = bpf_map_lookup_elem(&ciliate_xlb_config, &zero);
	if (!config || bpf_xdp_adjust_head(ctx, -(int)sizeof(struct iphdr))) {
		xlb_count(&ciliate_xlb_drops, XLB_DROP_ENCAP, len);
		return XDP_DROP;
	}
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	ip = (void *)(eth + 1);
	/* The old Ethernet header is now where the outer IP header ends: its addresses first. */
	struct ethhdr *old_eth = data + sizeof(struct iphdr);

	if ((void *)(ip + 1) > data_end || (void *)(old_eth + 1) > data_end)
		return XDP_DROP;
	__builtin_memmove(eth, old_eth, 2 * ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);

	struct iphdr outer = {
		.version = 4,
		.ihl = 5,
		.tos = inner_tos,
		.tot_len = bpf_htons(inner_len + sizeof(struct iphdr)),
		.ttl = 64,
		.protocol = IPPROTO_IPIP,
		.saddr = config->source,
		.daddr = backend_addr,
	};
	__u32 sum = 0;
	__u16 *words = (__u16 *)&outer;
#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += words[i];
	outer.check = xlb_csum_fold(sum);
	__builtin_memcpy(ip, &outer, sizeof(outer));

	xlb_count(&ciliate_xlb_vip_stats, vip_id, len);
	xlb_count(&ciliate_xlb_backend_stats, backend_id, len);

	/* The next hop towards the backend: its MAC and the interface to send on. */
	struct xlb_nexthop *hop = bpf_map_lookup_elem(&ciliate_xlb_nexthops, &backend_id);

	if (!hop)
		return XDP_DROP;
	if (hop->expires <= now) {
		struct bpf_fib_lookup fib = {
			.family = AF_INET,
			.tos = inner_tos,
			.l4_protocol = IPPROTO_IPIP,
			.tot_len = inner_len + sizeof(struct iphdr),
			.ipv4_src = config->source,
			.ipv4_dst = backend_addr,
			.ifindex = ctx->ingress_ifindex,
		};

		if (bpf_fib_lookup(ctx, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS)
			/* No neighbour yet (or no route): the kernel resolves it and sends the encapsulated packet. */
			return XDP_PASS;
		hop->ifindex = fib.ifindex;
		__builtin_memcpy(hop->dmac, fib.dmac, ETH_ALEN);
		__builtin_memcpy(hop->smac, fib.smac, ETH_ALEN);
		hop->expires = now + xlb_second();
	}
	__builtin_memcpy(eth->h_dest, hop->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, hop->smac, ETH_ALEN);
	if (hop->ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(hop->ifindex, 0);
}

SEC("xdp")
int xlb_balance(struct xdp_md *ctx)
{
	return xlb_balance_frame(ctx);
}

/*
 * The backend's side (tc ingress on its interface): an IPIP packet from the balancer loses its
 * outer header and goes on as the client's packet to the VIP, which the backend has on its lo.
 * Only packets from a configured balancer are opened (ciliate_xlb_decap_sources): anyone else's
 * IPIP would otherwise be a way to inject packets with any inner source.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __be32);
	__type(value, __u8);
} ciliate_xlb_decap_sources SEC(".maps");

SEC("tc")
int xlb_decap(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->protocol != IPPROTO_IPIP)
		return TC_ACT_OK;
	__be32 source = ip->saddr;

	if (!bpf_map_lookup_elem(&ciliate_xlb_decap_sources, &source))
		return TC_ACT_OK;
	if (ip->ihl != 5 || bpf_skb_adjust_room(skb, -(int)sizeof(struct iphdr), BPF_ADJ_ROOM_MAC, 0))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

/*
 * The bench's generators (bench/xdp-lb.ts). BPF_PROG_TEST_RUN's live frames recycle their pages
 * without restoring the packet, and both the balancer (encapsulation) and the kernel (DNAT, TTL)
 * rewrite it: each run first writes the frame's headers back from ciliate_xlb_bench_frame, then
 * balances (ours) or hands the frame to the stack (the nftables baseline). The same copy in both.
 */
#define XLB_BENCH_HEADER 42	/* Ethernet + IPv4 + UDP */

struct xlb_bench_frame {
	__u8 bytes[XLB_BENCH_HEADER];
	__u8 _pad[2];
	__u32 redirect_ifindex;	/* xlb_bench_redirect's interface */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct xlb_bench_frame);
} ciliate_xlb_bench_frame SEC(".maps");

static __always_inline struct xlb_bench_frame *xlb_bench_restore(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct xlb_bench_frame *frame = bpf_map_lookup_elem(&ciliate_xlb_bench_frame, &zero);

	if (!frame || data + XLB_BENCH_HEADER > data_end)
		return NULL;
	__builtin_memcpy(data, frame->bytes, XLB_BENCH_HEADER);
	return frame;
}

SEC("xdp")
int xlb_bench_balance(struct xdp_md *ctx)
{
	if (!xlb_bench_restore(ctx))
		return XDP_ABORTED;
	return xlb_balance_frame(ctx);
}

SEC("xdp")
int xlb_bench_pass(struct xdp_md *ctx)
{
	if (!xlb_bench_restore(ctx))
		return XDP_ABORTED;
	return XDP_PASS;
}

/* The floor: the same frames straight to the backend's interface, unbalanced (generation and delivery alone). */
SEC("xdp")
int xlb_bench_redirect(struct xdp_md *ctx)
{
	struct xlb_bench_frame *frame = xlb_bench_restore(ctx);

	if (!frame)
		return XDP_ABORTED;
	return bpf_redirect(frame->redirect_ifindex, 0);
}

/* The bench's sink on the backends' side: frames counted by the interface and dropped. */
SEC("xdp")
int xlb_sink(struct xdp_md *ctx)
{
	return XDP_DROP;
}

char _license[] SEC("license") = "GPL";
