/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The node-wide maps the datapath's programs share. The loader pins each one by name under the
 * agent's bpffs directory (BpfObject.load's `pin`), so every load of an object (the node's one
 * bpf_lxc, bpf_overlay, an agent restarted with a new build) opens the same maps and the maps
 * outlive a restart of the agent.
 *
 * TS codecs: src/datapath/maps.ts, checked against this file through the object's BTF.
 */
#pragma once

#include "common.h"
#include "policy.h"
#include "ipcache.h"

#ifndef ETH_ALEN
#define ETH_ALEN 6
#endif

/* --- ciliate_lxc: local endpoints by IPv4 address (Cilium's cilium_lxc) --- */

struct endpoint_key {
	__be32 ip;
};

/* The endpoint is the host itself, not a pod (Cilium's ENDPOINT_F_HOST). */
#define ENDPOINT_F_HOST 0x01

struct endpoint_info {
	__u32 ifindex;		/* host-side veth, in the node's namespace: where redirect_peer goes */
	__u16 lxc_id;		/* endpoint id */
	__u16 flags;		/* ENDPOINT_F_* */
	__u8 mac[ETH_ALEN];	/* the pod's eth0 */
	__u8 node_mac[ETH_ALEN];	/* the host-side veth: source MAC of frames delivered to the pod */
	__u32 sec_identity;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_info);
} ciliate_lxc SEC(".maps");

/* --- ciliate_lxc_ifindex: which endpoint a host-side veth serves (its ciliate_lxc key) ---
 *
 * Only for naming the sender of what bpf_lxc drops before it knows the endpoint from the packet
 * (a forged source, IPv6, a broken frame): no verdict depends on it, so an entry that is stale
 * or missing costs an event its attribution, never a packet. Whoever uses an entry checks that
 * the ciliate_lxc entry it leads to has the same ifindex.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);	/* ifindex of the host-side veth */
	__type(value, struct endpoint_key);
} ciliate_lxc_ifindex SEC(".maps");

/* --- ciliate_ct4: IPv4 connection tracking (Cilium's cilium_ct4_global) --- */

/*
 * Cilium packs this key into 14 bytes; we keep the natural 16 with the padding explicit and
 * always zero, so codecs need no packed layouts and the hash never sees uninitialised bytes.
 * daddr/saddr and dport/sport are those of the packet that created the entry.
 */
struct ipv4_ct_tuple {
	__be32 daddr;
	__be32 saddr;
	__be16 dport;
	__be16 sport;
	__u8 nexthdr;
	__u8 flags;		/* CT_EGRESS / CT_INGRESS: the hook that created the entry */
	__u16 _pad;
};

/* Tuple flags, as Cilium's TUPLE_F_OUT / TUPLE_F_IN / TUPLE_F_SERVICE. A CT_SERVICE entry is a
 * connection to a service frontend as the client sent it (daddr: the frontend), translated in TC
 * (lb_skb.h): it remembers the backend the connection was given (backend_id, rev_nat_index), so
 * every packet of the connection goes to the same backend. */
#define CT_EGRESS 0
#define CT_INGRESS 1
#define CT_SERVICE 2

/* struct ct_entry flags. */
#define CT_F_SEEN_NON_SYN 0x01	/* the connection was first seen mid-stream */
#define CT_F_TX_CLOSING 0x02	/* FIN or RST from the originator */
#define CT_F_RX_CLOSING 0x04	/* FIN or RST from the replier */
#define CT_F_SEEN_REPLY 0x08	/* at least one reply went through */
#define CT_F_PROXY_REDIRECT 0x10	/* the originator's packets go to the node proxy (proxy.h) */

struct ct_entry {
	__u64 packets;
	__u64 bytes;
	__u32 lifetime;		/* expiry, in seconds of bpf_ktime_get_boot_ns(); for the GC */
	__u16 flags;		/* CT_F_* */
	__u8 tx_flags_seen;	/* TCP flags seen from the originator, OR-ed */
	__u8 rx_flags_seen;	/* TCP flags seen from the replier, OR-ed */
	__u32 src_sec_id;	/* identity of the originator */
	/* When each direction was last reported by a trace event (monitor aggregation, events.h):
	 * seconds of ct_now() modulo 2^16. Wrapping costs at most one missed periodic report after an
	 * idle of exactly a multiple of ~18 hours. */
	__u16 last_tx_report;
	__u16 last_rx_report;
	/* Service translation in TC (lb_skb.h), as Cilium's ct_entry carries it. CT_SERVICE entries:
	 * the backend chosen. Entries of the translated connection (the backend's tuple): the service
	 * whose frontend replies must appear to come from (ciliate_lb4_reverse_nat), 0 for none. */
	__u32 backend_id;
	__u16 rev_nat_index;
	/* CT_F_PROXY_REDIRECT entries: the node proxy's port (host order). A TCP connection's later
	 * packets find the proxy's socket by their 4-tuple; a UDP datagram is assigned to the
	 * proxy's socket one by one, and this says which. */
	__u16 proxy_port;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 512 * 1024);
	__type(key, struct ipv4_ct_tuple);
	__type(value, struct ct_entry);
} ciliate_ct4 SEC(".maps");

/* --- ciliate_proxy4: where what the datapath hands the node's proxies was going, and who sent it --- */

/*
 * A datagram the datapath assigns to the DNS proxy's UDP socket (proxy.h) keeps its addresses, but
 * the proxy's socket, an unconnected Node socket, learns only the sender: Node offers no control
 * messages (IP_ORIGDSTADDR). So the datapath notes where the datagram was going, by its sender's
 * address and port, and the proxy reads it here. The sender's address is trustworthy
 * (cil_from_container drops any other source). A pod sending to two resolvers from one port at
 * once may have its first query judged and forwarded as the second's: both resolvers were
 * allowed to it by the policy entry that redirected them.
 *
 * A TCP connection handed to the HTTP proxy is noted too (nexthdr TCP, at its SYN), for the identity
 * the datapath judged it with: the proxy knows a pod of its node by its address, but not a client
 * that came through the tunnel from another node's proxy, whose address is that node's and whose
 * identity only the VNI carried.
 */
struct proxy4_key {
	__be32 saddr;
	__be16 sport;
	__u8 nexthdr;
	__u8 _pad;
};

struct proxy4_value {
	__be32 orig_daddr;
	__be16 orig_dport;
	/* A SYN the stack must take through a TIME_WAIT socket of its 4-tuple (proxy.h): the proxy
	 * port cil_proxy_lookup (bpf_proxy_lookup.c) hands it to, once; 0 otherwise. Host order. */
	__u16 handoff_port;
	__u32 identity;	/* the sender's, as the datapath judged it */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 64 * 1024);
	__type(key, struct proxy4_key);
	__type(value, struct proxy4_value);
} ciliate_proxy4 SEC(".maps");

/* --- ciliate_proxy_listeners: the node proxies' listening sockets by port (host order) --- */

/* Put here by each proxy itself (src/proxy), for cil_proxy_lookup to assign; a socket leaves the
 * map when it closes. An entry here also tells the endpoint datapath that the lookup program
 * is attached to the node's namespace (the agent attaches it before it starts the proxy). */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} ciliate_proxy_listeners SEC(".maps");

/* --- ciliate_node_cfg: node-wide settings of the datapath, one entry at key 0 --- */

/*
 * Written by the agent's node routing (src/datapath/node-routing.ts), read by every program.
 * A map rather than .rodata: the VXLAN device can be recreated under a new ifindex, and the
 * endpoints' programs, loaded once and pinned, must follow without being reloaded.
 */

/* node_config.routing_mode */
#define ROUTING_MODE_UNSET 0
#define ROUTING_MODE_TUNNEL 1
#define ROUTING_MODE_NATIVE 2

struct node_config {
	__u32 tunnel_ifindex;	/* the VXLAN device (collect_md) in this namespace; 0: none */
	__u32 routing_mode;	/* ROUTING_MODE_*; whether to tunnel is the ipcache's, per destination */
	/*
	 * Native mode: packets from pods to this CIDR (the cluster's pod addresses, Cilium's
	 * ipv4-native-routing-cidr) are forwarded by bpf_lxc itself after a FIB lookup, past the
	 * node's netfilter and forwarding path; nothing in it is masqueraded, so nothing is lost.
	 * A prefix length of 0 turns that off (everything goes through the stack).
	 */
	__be32 native_cidr;
	__u32 native_cidr_prefixlen;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct node_config);
} ciliate_node_cfg SEC(".maps");

/* --- ciliate_policy_maps: every local endpoint's policy map, by endpoint id --- */

/*
 * Outer map of the per-endpoint policy LPM tries (policy.h layout), so any program (the source
 * endpoint's egress, the destination endpoint's ingress, the overlay) can consult any local
 * endpoint's policy. The agent creates each inner map, pins it at
 * <bpfRoot>/endpoints/<id>/policy and puts it here (src/datapath/policy-maps.ts) before the
 * endpoint's programs are attached. An endpoint without an entry here is not enforced
 * (allow-all, no policy-verdict events): what endpoints of an agent that does not compute
 * policy get. Endpoint ids are below 4096; room is left for more.
 */
/* Sizes rather than __type(): the template is no variable, so clang would describe the key and
 * value structs by forward declarations only, which libbpf cannot size. The agent's inner maps
 * (createPolicyMap) carry no BTF either; the kernel compares type, sizes, flags, max_entries. */
struct ciliate_policy_inner {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, CILIATE_POLICY_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(key_size, sizeof(struct ciliate_policy_key));
	__uint(value_size, sizeof(struct ciliate_policy_entry));
};

#define CILIATE_POLICY_MAPS_MAX 16384

struct {
	__uint(type, BPF_MAP_TYPE_HASH_OF_MAPS);
	__uint(max_entries, CILIATE_POLICY_MAPS_MAX);
	__type(key, __u32);	/* endpoint id */
	__array(values, struct ciliate_policy_inner);
} ciliate_policy_maps SEC(".maps");

/* --- ciliate_monitor_cfg: how many trace events the datapath sends (monitor aggregation) --- */

/*
 * Cilium's --monitor-aggregation levels, with its numbers (pkg/option MonitorAggregationLevel*).
 * Drops and policy verdicts are reported at every level; the levels only thin out traces.
 */
enum ciliate_monitor_aggregation {
	MONITOR_AGGREGATION_NONE = 0,	/* a trace per packet at every observation point */
	MONITOR_AGGREGATION_LOWEST = 1,	/* none where packets are received (the FROM_* points) */
	MONITOR_AGGREGATION_LOW = 2,	/* as lowest (Cilium keeps it for future use) */
	MONITOR_AGGREGATION_MEDIUM = 3,	/* and an established connection only when conntrack has news */
	MONITOR_AGGREGATION_MAX = 4,	/* as medium (Cilium's datapath does no more either) */
};

/*
 * Written by the agent's monitor module (src/datapath/monitor-config.ts) and read per packet, so a
 * new level needs no reload of the node's programs. An entry never written (all zero, e.g. a
 * load without an agent) means Cilium's defaults: report_interval is never 0 once written.
 */
struct ciliate_monitor_config {
	__u8 aggregation;	/* enum ciliate_monitor_aggregation */
	__u8 report_flags;	/* TCP flags whose first sighting in a direction is news (TCP_FLAG_*) */
	__u16 report_interval;	/* seconds after which an active direction is reported again */
};

#define MONITOR_DEFAULT_REPORT_FLAGS 0x07	/* SYN, FIN, RST: Cilium's monitor-aggregation-flags */
#define MONITOR_DEFAULT_REPORT_INTERVAL 5	/* Cilium's monitor-aggregation-interval */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ciliate_monitor_config);
} ciliate_monitor_cfg SEC(".maps");

/* The node's monitor settings; an array lookup the verifier inlines, so cheap per packet. */
static __always_inline struct ciliate_monitor_config monitor_config(void)
{
	__u32 key = 0;
	const struct ciliate_monitor_config *cfg = bpf_map_lookup_elem(&ciliate_monitor_cfg, &key);

	if (cfg && cfg->report_interval)
		return *cfg;
	return (struct ciliate_monitor_config){
		.aggregation = MONITOR_AGGREGATION_MEDIUM,
		.report_flags = MONITOR_DEFAULT_REPORT_FLAGS,
		.report_interval = MONITOR_DEFAULT_REPORT_INTERVAL,
	};
}
