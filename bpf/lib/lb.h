/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Service load balancing maps (Cilium's bpf/lib/lb.h layout, IPv4): frontends and their backend
 * slots, backends by id, reverse NAT by service, the per-socket reverse translation of the
 * socket hooks, and each service's Maglev table. Written by the agent's services reconciler
 * (src/loadbalancer/datapath.ts), which only ever writes the entries a change touches.
 *
 * TS codecs: src/loadbalancer/maps.ts, checked against this file through bpf_sock.o's BTF.
 */
#pragma once

#include "common.h"
#include "maps.h"

/* --- ciliate_lb4_services: frontend (vip, port, proto) and backend slot → service or backend ---
 *
 * Slot 0 is the service itself (backend count, reverse NAT id, algorithm); slots 1..count hold
 * the backend ids in order. A new connection picks a slot and follows it to ciliate_lb4_backends.
 * Cilium packs this key into 10 bytes; ours has the padding explicit and zeroed.
 */
struct lb4_key {
	__be32 address;		/* the frontend's address (ClusterIP, external IP, …) */
	__be16 dport;		/* the frontend's port */
	__u16 backend_slot;	/* 0: the service entry; 1..count: a backend */
	__u8 proto;		/* IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP */
	__u8 scope;		/* reserved (Cilium's external/internal traffic policy scope): 0 */
	__u16 _pad;
};

/* lb4_service.algorithm (Cilium's LB_SELECTION_*). */
#define LB_SELECTION_RANDOM 1
#define LB_SELECTION_MAGLEV 2

/* lb4_service.flags */
#define SVC_F_NODEPORT 0x01	/* a NodePort frontend: its address is any of the node's */
#define SVC_F_EXTERNAL_IP 0x02
#define SVC_F_LOADBALANCER 0x04
#define SVC_F_AFFINITY 0x08	/* ClientIP session affinity: slot 0's backend_id is the timeout in seconds */
#define SVC_F_EXT_LOCAL 0x10	/* externalTrafficPolicy Local: clients from outside get this node's backends only */

struct lb4_service {
	__u32 backend_id;	/* slot > 0: the backend; slot 0: the affinity timeout (SVC_F_AFFINITY) or 0 */
	__u16 count;		/* slot 0: how many backend slots follow */
	__u16 rev_nat_index;	/* slot 0: the service's id in ciliate_lb4_reverse_nat and the Maglev map */
	__u8 flags;		/* SVC_F_* */
	__u8 algorithm;		/* LB_SELECTION_* */
	__u16 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lb4_key);
	__type(value, struct lb4_service);
} ciliate_lb4_services SEC(".maps");

/* --- ciliate_lb4_backends: backend id → address, port, protocol and state --- */

/* lb4_backend.flags: a terminating backend takes no new connections (Cilium's BE_STATE_TERMINATING). */
#define BE_F_TERMINATING 0x01

struct lb4_backend {
	__be32 address;
	__be16 port;
	__u8 proto;
	__u8 flags;		/* BE_F_* */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct lb4_backend);
} ciliate_lb4_backends SEC(".maps");

/* --- ciliate_lb4_reverse_nat: service id → the frontend replies must appear to come from --- */

struct lb4_reverse_nat {
	__be32 address;
	__be16 port;
	__u16 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u16);
	__type(value, struct lb4_reverse_nat);
} ciliate_lb4_reverse_nat SEC(".maps");

/* --- ciliate_lb4_reverse_sk: (socket, backend) → the frontend the socket asked for ---
 *
 * Written by connect4/sendmsg4 when they translate, read by recvmsg4/getpeername4 so a UDP reply
 * and the peer name show the service address the application used (Cilium's cilium_lb4_reverse_sk).
 * LRU: entries of closed sockets age out.
 */
struct lb4_reverse_sk_key {
	__u64 cookie;		/* bpf_get_socket_cookie() */
	__be32 address;		/* the backend */
	__be16 port;
	__u16 _pad;
};

struct lb4_reverse_sk {
	__be32 address;		/* the frontend */
	__be16 port;
	__u16 rev_nat_index;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct lb4_reverse_sk_key);
	__type(value, struct lb4_reverse_sk);
} ciliate_lb4_reverse_sk SEC(".maps");

/* --- ciliate_lb4_affinity: (client, service) → the backend it was given and when last ---
 *
 * ClientIP session affinity at the socket, as Cilium's cilium_lb4_affinity: the client is its
 * network namespace (a pod), identified by its netns cookie. An entry older than the service's
 * timeout, or naming a backend the service no longer has (ciliate_lb_affinity_match), is ignored.
 */
struct lb4_affinity_key {
	__u64 client_id;	/* bpf_get_netns_cookie() */
	__u16 rev_nat_index;
	__u16 _pad[3];
};

struct lb_affinity_val {
	__u64 last_used;	/* seconds of bpf_ktime_get_boot_ns() */
	__u32 backend_id;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct lb4_affinity_key);
	__type(value, struct lb_affinity_val);
} ciliate_lb4_affinity SEC(".maps");

/* The backends each affinity service has now: an affinity entry naming another is stale. */
struct lb_affinity_match {
	__u32 backend_id;
	__u16 rev_nat_index;
	__u16 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lb_affinity_match);
	__type(value, __u8);
} ciliate_lb_affinity_match SEC(".maps");

/* --- ciliate_lb4_maglev: service id → its Maglev table (backend ids by slot) ---
 *
 * As Cilium's cilium_lb4_maglev, a hash of maps with one inner map per service, so replacing a
 * service's table is one outer-map update (the new table is built aside, never half-written).
 * The table size is the agent's --maglev-table-size (Cilium's --bpf-lb-maglev-table-size, one
 * of its primes), not built in: an inner map holds M + 1 ids, id 0 being M and ids 1..M the
 * table, so each table says its own size and a program verified once serves any
 * (BPF_F_INNER_MAP: inner maps of any length). The ids are in chunks of LB_MAGLEV_CHUNK per
 * array element, so writing a table is a few dozen elements, not one per slot. A connection's
 * hash h picks id h % M + 1.
 */
#define LB_MAGLEV_LUT_SIZE_DEFAULT 16381
#define LB_MAGLEV_CHUNK 256

struct lb4_maglev_chunk {
	__u32 ids[LB_MAGLEV_CHUNK];
};

#ifndef BPF_F_INNER_MAP
#define BPF_F_INNER_MAP (1U << 12)
#endif

struct ciliate_lb4_maglev_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, (LB_MAGLEV_LUT_SIZE_DEFAULT + LB_MAGLEV_CHUNK) / LB_MAGLEV_CHUNK);
	__uint(map_flags, BPF_F_INNER_MAP);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(struct lb4_maglev_chunk));
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__uint(max_entries, 65536);
	/* Not preallocated: most services are not Maglev's. (Also tells an older build's pinned map,
	 * whose inner maps held the whole table in one value, from this one.) */
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u16);	/* rev_nat_index */
	__array(values, struct ciliate_lb4_maglev_inner);
} ciliate_lb4_maglev SEC(".maps");

/* --- ciliate_sock_endpoints: network namespace → the local endpoint in it ---
 *
 * What a socket hook knows of who is connecting is the socket's network namespace; the agent
 * writes each local endpoint under its namespace's cookie, so a socket-level event names its pod
 * (and the address the kernel would pick, before it has picked one).
 */
struct sock_endpoint {
	__be32 ipv4;
	__u32 identity;
	__u16 endpoint_id;
	__u16 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);	/* bpf_get_netns_cookie() */
	__type(value, struct sock_endpoint);
} ciliate_sock_endpoints SEC(".maps");

/* The service entry (slot 0) of a frontend, or NULL. */
static __always_inline struct lb4_service *lb4_lookup_service(__be32 address, __be16 dport, __u8 proto)
{
	struct lb4_key key = { .address = address, .dport = dport, .proto = proto };

	return bpf_map_lookup_elem(&ciliate_lb4_services, &key);
}

/*
 * The backend id for a new connection of `svc` at `vip`:`dport`, or 0 when the service has none.
 * `hash` picks the Maglev slot (the same hash, the same backend); random ignores it unless
 * `sticky`, when it picks the slot too (Cilium's sock_select_slot: an unconnected UDP socket's
 * cookie, so its datagrams keep one backend while the service's backends stay).
 */
static __always_inline __u32 lb4_select_backend_id(const struct lb4_service *svc, __be32 vip, __be16 dport, __u8 proto, __u32 hash,
						   const bool sticky)
{
	if (svc->count == 0)
		return 0;
	if (svc->algorithm == LB_SELECTION_MAGLEV) {
		__u16 rev_nat = svc->rev_nat_index;
		void *inner = bpf_map_lookup_elem(&ciliate_lb4_maglev, &rev_nat);
		struct lb4_maglev_chunk *head, *chunk;
		__u32 zero = 0, slot, element;

		if (!inner)
			return 0;
		head = bpf_map_lookup_elem(inner, &zero);
		if (!head || head->ids[0] == 0)
			return 0;
		slot = hash % head->ids[0] + 1;
		/* The kernel checks the element against the table's length. */
		element = slot / LB_MAGLEV_CHUNK;
		chunk = bpf_map_lookup_elem(inner, &element);
		return chunk ? chunk->ids[slot % LB_MAGLEV_CHUNK] : 0;
	}
	struct lb4_key key = { .address = vip, .dport = dport, .proto = proto };
	struct lb4_service *slot;

	key.backend_slot = ((sticky ? hash : bpf_get_prandom_u32()) % svc->count) + 1;
	slot = bpf_map_lookup_elem(&ciliate_lb4_services, &key);
	return slot ? slot->backend_id : 0;
}

/* The backend `client` was last given for `svc`, while its affinity holds; 0 otherwise. */
static __always_inline __u32 lb4_affinity_backend_id(const struct lb4_service *svc, __u64 client, __u64 now)
{
	struct lb4_affinity_key key = { .client_id = client, .rev_nat_index = svc->rev_nat_index };
	struct lb_affinity_val *val = bpf_map_lookup_elem(&ciliate_lb4_affinity, &key);
	struct lb_affinity_match match = { .rev_nat_index = svc->rev_nat_index };

	if (!val || now - val->last_used > svc->backend_id)
		return 0;
	match.backend_id = val->backend_id;
	if (!bpf_map_lookup_elem(&ciliate_lb_affinity_match, &match))
		return 0;
	val->last_used = now;
	return val->backend_id;
}

static __always_inline void lb4_affinity_update(const struct lb4_service *svc, __u64 client, __u64 now, __u32 backend_id)
{
	struct lb4_affinity_key key = { .client_id = client, .rev_nat_index = svc->rev_nat_index };
	struct lb_affinity_val val = { .last_used = now, .backend_id = backend_id };

	bpf_map_update_elem(&ciliate_lb4_affinity, &key, &val, BPF_ANY);
}

/* --- ciliate_lb4_nat: north-south address translation by bpf_host (Cilium's SNAT map) ---
 *
 * Keyed by the tuple of a packet as it will be seen (ipv4_ct_tuple, flags NAT_*), the value says
 * what to turn it into. For a connection from outside the cluster to a frontend:
 *   NAT_FWD      (client → backend, after DNAT): the node address and port it leaves with (SNAT);
 *   NAT_REV_DST  (backend → node address and SNAT port): the client to give it back to, and the
 *                frontend it must come from;
 *   NAT_REV_SRC  (backend → client, a local backend, no SNAT): the frontend it must come from.
 * LRU: entries of connections gone age out.
 */
#define NAT_FWD 1
#define NAT_REV_DST 2
#define NAT_REV_SRC 3

struct lb4_nat {
	__be32 to_addr;		/* NAT_FWD: the node address; NAT_REV_DST: the client */
	__be32 frontend_addr;	/* NAT_REV_*: the frontend address replies come from */
	__be16 to_port;
	__be16 frontend_port;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct ipv4_ct_tuple);
	__type(value, struct lb4_nat);
} ciliate_lb4_nat SEC(".maps");
