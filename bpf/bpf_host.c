/* SPDX-License-Identifier: Apache-2.0 */
/*
 * North-south service load balancing on the node's external device(s), after Cilium's bpf_host.c
 * (from-netdev / to-netdev) and lib/nodeport.h, SNAT mode, IPv4:
 *
 *   cil_from_netdev  TCX ingress of a device: a new connection from outside to a NodePort (a
 *                    node address and the node port), a LoadBalancer IP or an external IP is
 *                    DNATed to a backend of the service (lb_skb.h: the same choice and conntrack
 *                    as in-cluster clients get). A backend on this node gets the packet through
 *                    the stack, so its to-container ingress policy judges the client (WORLD). A
 *                    backend on another node gets it from this node's address (SNAT; the client
 *                    port kept when free, else another), encapsulated or FIB-forwarded to it,
 *                    and its reply, which comes back to this node's address, is turned back
 *                    here and forwarded to the client straight out of the device the FIB names
 *                    (the stack would drop it: its source is one of the node's addresses).
 *   cil_to_netdev    TCX egress: a local backend's reply to an outside client leaves as from the
 *                    frontend.
 *
 * DSR_MODE: a backend on another node gets the request unSNATed, the frontend in an IPv4 option
 * (lb_skb.h dsr_add_opt4), encapsulated (tunnel mode) or routed (native mode), and answers the
 * client directly from its node. In native mode that node's cil_from_netdev learns the frontend.
 * externalTrafficPolicy Local (SVC_F_EXT_LOCAL): only backends of this node, so the client keeps
 * its address; none is DROP_NO_SERVICE. ClusterIPs are not reachable from outside. The node's own address (NODE_IPV4, set at load) is
 * the SNAT address, and the ipcache says which addresses are the node's (NodePort).
 */
#include "common.h"
#include "ctx.h"
#include "drop_reasons.h"
#include "events.h"
#include "maps.h"
#include "eth.h"
#include "ipv4.h"
#include "conntrack.h"
#include "l3.h"
#include "encap.h"
#include "fib.h"
#include "lb.h"
#include "lb_skb.h"

/* The node's address, network order: set by the loader (src/loadbalancer/host.ts). */
volatile const __be32 NODE_IPV4 = 0;
/* 1: DSR mode (the backend answers the client directly, which it sees), 0: SNAT mode. */
volatile const __u32 DSR_MODE = 0;

/* Whether `addr` is reached by native routing (a pod of another node in native mode). */
static __always_inline bool native_backend4(__be32 addr)
{
	struct node_config *cfg = node_config();

	return cfg && native_routed4(cfg, addr);
}

/* Attempts at a free SNAT port before the connection is refused. */
#define SNAT_PORT_TRIES 8
#define SNAT_PORT_MIN 32768
#define SNAT_PORT_SPAN 28232	/* up to 60999, Linux's ephemeral range */

/* The external service behind a packet's destination: a LoadBalancer IP or external IP, else a
 * NodePort at one of the node's addresses (*slots_addr 0.0.0.0, where its slots are stored). */
static __always_inline struct lb4_service *netdev_service(const struct ipv4_ct_tuple *tuple, __be32 *slots_addr)
{
	struct lb4_service *svc = lb4_lookup_service(tuple->daddr, tuple->dport, tuple->nexthdr);

	*slots_addr = tuple->daddr;
	/* A NodePort at one of this node's addresses has its own frontend too (for pods TC
	 * translates); its slots are the same backends. */
	if (svc)
		return svc->flags & (SVC_F_EXTERNAL_IP | SVC_F_LOADBALANCER | SVC_F_NODEPORT) ? svc : NULL;
	if (ipcache_identity(tuple->daddr) != IDENTITY_HOST)
		return NULL;
	svc = lb4_lookup_service(0, tuple->dport, tuple->nexthdr);
	*slots_addr = 0;
	return svc && (svc->flags & SVC_F_NODEPORT) ? svc : NULL;
}

/*
 * The SNAT port of a connection, written both ways: NAT_FWD for its packets to the backend,
 * NAT_REV_DST for the backend's replies. The client's own port when no other connection to this
 * backend has it, else one derived from the tuple. 0 when none is free (or the map refused).
 */
static __always_inline __be16 snat_port(const struct ipv4_ct_tuple *fwd, const struct ipv4_ct_tuple *frontend)
{
	struct ipv4_ct_tuple rev = {
		.daddr = NODE_IPV4,
		.saddr = fwd->daddr,
		.sport = fwd->dport,
		.nexthdr = fwd->nexthdr,
		.flags = NAT_REV_DST,
	};
	struct lb4_nat out = { .to_addr = NODE_IPV4 };
	struct lb4_nat back = {
		.to_addr = fwd->saddr,
		.to_port = fwd->sport,
		.frontend_addr = frontend->daddr,
		.frontend_port = frontend->dport,
	};
	__u32 h = lb4_tuple_hash(fwd);
	__be16 port = fwd->sport;

	for (int i = 0; i < SNAT_PORT_TRIES; i++) {
		rev.dport = port;
		if (bpf_map_update_elem(&ciliate_lb4_nat, &rev, &back, BPF_NOEXIST) == 0) {
			out.to_port = port;
			if (bpf_map_update_elem(&ciliate_lb4_nat, fwd, &out, BPF_ANY) == 0)
				return port;
			bpf_map_delete_elem(&ciliate_lb4_nat, &rev);
			return 0;
		}
		port = bpf_htons(SNAT_PORT_MIN + (h + i * 7919) % SNAT_PORT_SPAN);
	}
	return 0;
}

/* The tuple of a TCP/UDP IPv4 packet on the device (lb4_frontend_tuple), or -1 for anything else,
 * which passes untouched. */
static __always_inline int netdev_tuple(struct __sk_buff *skb, struct ipv4_ct_tuple *tuple, __u32 *l4_off)
{
	pull_headers(skb);
	void *data = ctx_data(skb);
	void *data_end = ctx_data_end(skb);
	struct ethhdr *eth = pkt_header(data, data_end, 0, sizeof(*eth));

	if (!eth || eth->h_proto != bpf_htons(ETH_P_IP))
		return -1;
	return lb4_frontend_tuple(skb, tuple, l4_off);
}

static __always_inline int from_netdev(struct __sk_buff *skb)
{
	struct ciliate_notify_info info = { .flags = CILIATE_EVENT_F_INGRESS };
	struct ipv4_ct_tuple tuple, fwd;
	struct remote_endpoint_info *remote;
	struct lb4_service *svc;
	struct lb4_backend *backend;
	struct endpoint_info *ep;
	struct endpoint_key ep_key;
	__be32 slots_addr;
	__be16 port;
	__u32 l4_off;
	bool done;
	int ret = 0;

	if (netdev_tuple(skb, &tuple, &l4_off) < 0)
		return TC_ACT_OK;
	info.src_identity = ipcache_identity(tuple.saddr);
	info.dst_identity = IDENTITY_HOST;

	ret = lb4_rev_snat(skb, &info, &tuple, l4_off, &done);
	if (done || ret)
		return ret;

	/* Native routing DSR, on the backend's node: another node's cil_from_netdev routed a client's
	 * request here with the frontend in an IPv4 option. Only for a client outside the cluster (a
	 * pod's address is not WORLD, and bpf_lxc lets no pod send from another address) and a pod of
	 * this node; the option must name a real external frontend (dsr_learn4). */
	if (info.src_identity == IDENTITY_WORLD) {
		ep_key.ip = tuple.daddr;
		ep = bpf_map_lookup_elem(&ciliate_lxc, &ep_key);
		if (ep && !(ep->flags & ENDPOINT_F_HOST)) {
			dsr_learn4(skb);
			return TC_ACT_OK;
		}
	}

	svc = netdev_service(&tuple, &slots_addr);
	if (!svc)
		return TC_ACT_OK;
	backend = lb4_conn_backend(skb, &info, &tuple, svc, slots_addr, svc->flags & SVC_F_EXT_LOCAL, &ret);
	if (!backend)
		return ret;

	fwd = tuple;
	fwd.daddr = backend->address;
	fwd.dport = backend->port;
	fwd.flags = NAT_FWD;
	ep_key.ip = backend->address;
	ep = bpf_map_lookup_elem(&ciliate_lxc, &ep_key);
	if (ep && !(ep->flags & ENDPOINT_F_HOST)) {
		/* A backend of this node: the stack delivers the request, to-container judges it, and
		 * the reply leaves through cil_to_netdev, which needs to know its frontend. */
		struct ipv4_ct_tuple rev = {
			.daddr = tuple.saddr,
			.saddr = backend->address,
			.dport = tuple.sport,
			.sport = backend->port,
			.nexthdr = tuple.nexthdr,
			.flags = NAT_REV_SRC,
		};
		struct lb4_nat back = { .frontend_addr = tuple.daddr, .frontend_port = tuple.dport };

		info.dst_identity = ep->sec_identity;
		info.dst_id = ep->lxc_id;
		if (bpf_map_update_elem(&ciliate_lb4_nat, &rev, &back, BPF_ANY) < 0)
			return DROP(skb, &info, DROP_CT_MAP_INSERTION_FAILED);
		ret = lb4_rewrite(skb, l4_off, tuple.nexthdr, true, tuple.daddr, backend->address, tuple.dport, backend->port);
		if (ret) {
			info.ext_error = ret;
			return DROP(skb, &info, DROP_INVALID_PACKET);
		}
		send_trace_notify(skb, &info, TRACE_TO_STACK);
		return TC_ACT_OK;
	}

	remote = ipcache_lookup4(backend->address);
	info.dst_identity = remote ? remote->sec_identity : IDENTITY_WORLD;
	/* DSR to a pod of another node: through the tunnel, or natively routed (inside the native
	 * routing CIDR); anything else (an address outside the cluster) is SNATed. */
	if (DSR_MODE && remote && ((remote->flags & IPCACHE_F_HAS_TUNNEL_EP) || native_backend4(backend->address))) {
		void *d, *de;
		__u8 *tcp_flags;

		/* DSR: the client's own address goes on; the frontend rides along on the request. */
		ret = lb4_rewrite(skb, l4_off, tuple.nexthdr, true, tuple.daddr, backend->address, tuple.dport, backend->port);
		if (ret) {
			info.ext_error = ret;
			return DROP(skb, &info, DROP_INVALID_PACKET);
		}
		d = ctx_data(skb);
		de = ctx_data_end(skb);
		tcp_flags = pkt_header(d, de, l4_off + 13, 1);
		if (tuple.nexthdr == IPPROTO_UDP || (tcp_flags && (*tcp_flags & TCP_FLAG_SYN))) {
			ret = dsr_add_opt4(skb, tuple.daddr, tuple.dport);
			if (ret) {
				info.ext_error = ret;
				return DROP(skb, &info, DROP_INVALID_PACKET);
			}
		}
		if (remote->flags & IPCACHE_F_HAS_TUNNEL_EP)
			return encap_and_redirect4(skb, &info, remote->tunnel_endpoint, IDENTITY_WORLD);
		/* Native routing: the FIB knows the way to the backend's node. */
		return fib_redirect4(skb, &info);
	}

	/* SNAT: a backend on another node gets it from this node's address. */
	{
		struct ipv4_ct_tuple fwd_key = fwd;
		struct lb4_nat *nat = bpf_map_lookup_elem(&ciliate_lb4_nat, &fwd_key);

		port = nat ? nat->to_port : snat_port(&fwd, &tuple);
	}
	if (!port)
		return DROP(skb, &info, DROP_CT_MAP_INSERTION_FAILED);
	ret = lb4_rewrite(skb, l4_off, tuple.nexthdr, true, tuple.daddr, backend->address, tuple.dport, backend->port);
	if (!ret)
		ret = lb4_rewrite(skb, l4_off, tuple.nexthdr, false, tuple.saddr, NODE_IPV4, tuple.sport, port);
	if (ret) {
		info.ext_error = ret;
		return DROP(skb, &info, DROP_INVALID_PACKET);
	}
	info.src_identity = IDENTITY_REMOTE_NODE;
	if (remote && (remote->flags & IPCACHE_F_HAS_TUNNEL_EP))
		/* The receiving node sees this node as the source: remote-node to its policy. */
		return encap_and_redirect4(skb, &info, remote->tunnel_endpoint, IDENTITY_REMOTE_NODE);
	return fib_redirect4(skb, &info);
}

/* A local backend's reply to an outside client: from the frontend the client asked for. */
static __always_inline int to_netdev(struct __sk_buff *skb)
{
	struct ciliate_notify_info info = {};
	struct ipv4_ct_tuple tuple;
	struct lb4_nat *nat;
	__u32 l4_off;
	int err;

	if (netdev_tuple(skb, &tuple, &l4_off) < 0)
		return TC_ACT_OK;
	tuple.flags = NAT_REV_SRC;
	nat = bpf_map_lookup_elem(&ciliate_lb4_nat, &tuple);
	if (!nat)
		return TC_ACT_OK;
	err = lb4_rewrite(skb, l4_off, tuple.nexthdr, false, tuple.saddr, nat->frontend_addr, tuple.sport, nat->frontend_port);
	if (err) {
		info.ext_error = err;
		return DROP(skb, &info, DROP_INVALID_PACKET);
	}
	return TC_ACT_OK;
}

SEC("tc")
int cil_from_netdev(struct __sk_buff *skb)
{
	return from_netdev(skb);
}

SEC("tc")
int cil_to_netdev(struct __sk_buff *skb)
{
	return to_netdev(skb);
}

char LICENSE[] SEC("license") = "GPL";
