/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The endpoint (pod) datapath, after Cilium's bpf/bpf_lxc.c. A pod is a network namespace
 * joined to its node by a veth pair; these programs sit at TCX on the host side of that pair:
 *
 *   cil_from_container  TCX ingress of the host veth: packets leaving the pod.
 *   cil_to_container    TCX egress of the host veth: packets the node's stack routes to the pod.
 *
 * One load serves every endpoint of the node: the programs find the endpoint from the packet and
 * the interface it is on (ciliate_lxc), so adding an endpoint attaches the node's programs and
 * writes its map entries, and a new identity is a map update, never a new program. The maps
 * (maps.h, events.h) are shared with bpf_overlay.o through pins. IPv4 only for now: a pod's ARP
 * passes when it speaks for the pod's own address, and IPv6 and every other L3 protocol are
 * dropped both ways (DROP_UNKNOWN_L3), so nothing reaches or leaves a pod around the policy that
 * judges IPv4.
 *
 * A pod is hostile until proven otherwise: every packet it sends must carry as source an address
 * whose ciliate_lxc entry names this very interface, or it is dropped as DROP_INVALID_SIP before
 * anything else looks at it. Otherwise a pod could borrow another's address, and with it that
 * pod's identity wherever the source address decides the identity (native routing, the node's
 * own stack). Until the agent writes an endpoint's entry, which it does only once the endpoint's
 * policy is in place, its programs let nothing in or out.
 *
 * Where a packet leaving a pod goes: to a pod of this node straight through bpf_redirect_peer;
 * to a destination whose ipcache entry names a tunnel endpoint (a pod of another node, in
 * tunnel mode) into the node's VXLAN device with that endpoint as outer destination
 * (encap.h); in native mode, to the cluster's other pods (the native routing CIDR) straight out
 * of the device the kernel's FIB names (fib.h); anywhere else to the node's stack, which routes
 * it (native mode: the other nodes' pod CIDRs are kernel routes via their underlay addresses).
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
#include "policy_enforce.h"
#include "lb_skb.h"
#include "proxy.h"

/* The local endpoint `addr` belongs to, if this interface serves it; NULL for an address of no
 * endpoint, of the node, or of an endpoint behind another interface. */
static __always_inline struct endpoint_info *lxc_on_interface(const struct __sk_buff *skb, __be32 addr)
{
	struct endpoint_key key = { .ip = addr };
	struct endpoint_info *ep = bpf_map_lookup_elem(&ciliate_lxc, &key);

	if (!ep || ep->ifindex != skb->ifindex || (ep->flags & ENDPOINT_F_HOST))
		return NULL;
	return ep;
}

/*
 * Drops a packet that did not name its endpoint (no IPv4 header, a forged address), reported as
 * the endpoint's behind this interface all the same (ciliate_lxc_ifindex): a spoofing pod is
 * named in the drop events. Out of line: only drops pay for the two lookups.
 */
static __noinline int drop_on_interface(struct __sk_buff *skb, struct ciliate_notify_info *info,
					enum ciliate_drop_reason reason)
{
	__u32 ifindex = skb->ifindex;
	struct endpoint_key *key = bpf_map_lookup_elem(&ciliate_lxc_ifindex, &ifindex);
	struct endpoint_info *ep = key ? lxc_on_interface(skb, key->ip) : NULL;

	if (ep) {
		info->endpoint_id = ep->lxc_id;
		if (info->flags & CILIATE_EVENT_F_INGRESS) {
			info->dst_identity = ep->sec_identity;
			info->dst_id = ep->lxc_id;
		} else {
			info->src_identity = ep->sec_identity;
		}
	}
	return send_drop_notify(skb, info, reason);
}

/* DROP() for packets whose endpoint is not known yet. */
#define DROP_ON_INTERFACE(skb, info, reason)                   \
	({                                                      \
		(info)->line = __LINE__;                        \
		drop_on_interface((skb), (info), (reason));     \
	})

/* The pod's ARP: the node asks for the pod's MAC (the route to a pod is a link route) and the
 * pod answers. Only Ethernet/IPv4 ARP that speaks for the pod's own address passes, so a pod
 * cannot announce itself as another pod or the node. (The pod itself never needs to ask: the
 * agent gives it a permanent neighbour entry for its gateway.) */
static __always_inline int arp_from_endpoint(struct __sk_buff *skb, struct ciliate_notify_info *info,
					     void *data, void *data_end)
{
	struct arphdr *arp = pkt_header(data, data_end, ETH_HLEN, sizeof(*arp));
	/* Sender hardware address, then the sender protocol address. */
	__u8 *spa = pkt_header(data, data_end, ETH_HLEN + sizeof(*arp) + ETH_ALEN, 4);
	__be32 sender;

	if (!arp || !spa || arp->ar_hrd != bpf_htons(1) || arp->ar_pro != bpf_htons(ETH_P_IP) ||
	    arp->ar_hln != ETH_ALEN || arp->ar_pln != 4)
		return DROP_ON_INTERFACE(skb, info, DROP_INVALID_PACKET);
	__builtin_memcpy(&sender, spa, sizeof(sender));
	if (!lxc_on_interface(skb, sender))
		return DROP_ON_INTERFACE(skb, info, DROP_INVALID_SIP);
	return TC_ACT_OK;
}

/*
 * A packet cil_to_container sent back here for the node proxy (proxy.h, the hairpin): a
 * connection from the node's stack to the endpoint behind this interface, not a packet of the
 * pod, so none of the pod's checks apply. Out of line: the pod's packets pay for a mark test only.
 */
static __noinline int from_stack_to_proxy(struct __sk_buff *skb)
{
	struct ciliate_notify_info info = { .flags = CILIATE_EVENT_F_INGRESS };
	struct ipv4_ct_tuple tuple = {};
	struct endpoint_info *self;
	struct iphdr *ip;
	__u8 tcp_flags = 0;

	pull_headers(skb);
	void *data = ctx_data(skb);
	void *data_end = ctx_data_end(skb);

	ip = pkt_header(data, data_end, ETH_HLEN, sizeof(*ip));
	if (!ip || ipv4_hdrlen(ip) < sizeof(*ip))
		return DROP_ON_INTERFACE(skb, &info, DROP_INVALID_PACKET);
	self = lxc_on_interface(skb, ip->daddr);
	if (!self)
		return DROP_ON_INTERFACE(skb, &info, DROP_UNROUTABLE);
	info.endpoint_id = self->lxc_id;
	info.dst_identity = self->sec_identity;
	info.dst_id = self->lxc_id;
	tuple.daddr = ip->daddr;
	tuple.saddr = ip->saddr;
	tuple.nexthdr = ip->protocol;
	if (!ipv4_is_fragment(ip) && ct_extract_ports4(data, data_end, ETH_HLEN + ipv4_hdrlen(ip), &tuple, &tcp_flags) < 0)
		return DROP(skb, &info, DROP_CT_INVALID_HDR);
	return proxy_hairpin4(skb, &info, &tuple, tcp_flags);
}

static __always_inline int from_container(struct __sk_buff *skb)
{
	struct ciliate_notify_info info = {};
	struct remote_endpoint_info *remote = NULL;
	struct ipv4_ct_tuple tuple;
	struct endpoint_info *ep, *self;
	struct endpoint_key key;
	__u32 self_identity;
	__u16 self_id;
	struct iphdr *ip;
	__u8 tcp_flags;
	int ret;

	/* Only cil_to_container's hairpin brings this mark: the pod's own packets lost theirs on
	 * the way out of its namespace (proxy_hairpinned). */
	if (proxy_hairpinned(skb))
		return from_stack_to_proxy(skb);

	pull_headers(skb);
	void *data = ctx_data(skb);
	void *data_end = ctx_data_end(skb);
	struct ethhdr *eth = pkt_header(data, data_end, 0, sizeof(*eth));

	if (!eth)
		return DROP_ON_INTERFACE(skb, &info, DROP_INVALID_PACKET);
	if (eth->h_proto == bpf_htons(ETH_P_ARP))
		return arp_from_endpoint(skb, &info, data, data_end);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return DROP_ON_INTERFACE(skb, &info, DROP_UNKNOWN_L3);
	ip = pkt_header(data, data_end, ETH_HLEN, sizeof(*ip));
	if (!ip)
		return DROP_ON_INTERFACE(skb, &info, DROP_INVALID_PACKET);
	/* The sender: the endpoint whose address the packet carries, if it sits behind this
	 * interface. Its entry is the one lookup every packet pays for serving all endpoints with
	 * one program. */
	self = lxc_on_interface(skb, ip->saddr);
	if (!self)
		return DROP_ON_INTERFACE(skb, &info, DROP_INVALID_SIP);
	self_id = self->lxc_id;
	self_identity = self->sec_identity;
	info.endpoint_id = self_id;
	info.src_identity = self_identity;

	/* A service frontend becomes its backend before anything else looks at the destination:
	 * conntrack, policy and the route all see the backend (Cilium's LB before policy). */
	ret = lb4_xlate_from_pod(skb, &info);
	if (ret)
		return ret;
	ret = ipv4_parse_and_lookup(skb, &info, CT_EGRESS, &tuple, &tcp_flags);
	if (ret)
		return ret;
	/* A backend's reply to a translated connection leaves it as from the frontend. */
	ret = lb4_rev_nat(skb, &info);
	if (ret)
		return ret;

	/* Who the destination is: a local endpoint, the node itself (its router address), or
	 * whatever the ipcache says (WORLD when it says nothing). */
	key.ip = tuple.daddr;
	ep = bpf_map_lookup_elem(&ciliate_lxc, &key);
	if (ep && !(ep->flags & ENDPOINT_F_HOST)) {
		info.dst_identity = ep->sec_identity;
		info.dst_id = ep->lxc_id;
	} else if (ep) {
		info.dst_identity = IDENTITY_HOST;
	} else {
		remote = ipcache_lookup4(tuple.daddr);
		info.dst_identity = remote ? remote->sec_identity : IDENTITY_WORLD;
	}

	/* New connections: this endpoint's egress policy, then a local destination's ingress
	 * policy (the packet skips that endpoint's cil_to_container); only then tracked. L7 rules
	 * of either (DNS rules of the egress, HTTP rules of the ingress) send the connection to
	 * the node proxy (proxy.h). */
	info.flags |= CILIATE_NOTIFY_F_PROXY_OK;
	ret = policy_enforce4(skb, &info, self_id, CILIATE_POLICY_EGRESS, &tuple);
	if (ret)
		return ret;
	if (ep && !(ep->flags & ENDPOINT_F_HOST)) {
		ret = policy_enforce4(skb, &info, ep->lxc_id, CILIATE_POLICY_INGRESS, &tuple);
		if (ret)
			return ret;
	}
	/* Before the conntrack entry: a SYN the proxy did not take leaves nothing behind, and its
	 * retransmission is judged and redirected anew. */
	if (info.flags & CILIATE_NOTIFY_F_TO_PROXY) {
		ret = redirect_to_proxy4(skb, &info, &tuple, info.proxy_port, tcp_flags);
		if (ret != TC_ACT_OK)
			return ret;
	}
	ret = ipv4_ct_commit(skb, &info, CT_EGRESS, self_identity, &tuple, tcp_flags);
	if (ret)
		return ret;
	if (info.flags & CILIATE_NOTIFY_F_TO_PROXY)
		return TC_ACT_OK;

	if (ep && !(ep->flags & ENDPOINT_F_HOST))
		return ipv4_local_delivery(skb, &info, ep);

	if (!ep) {
		struct node_config *cfg;

		/* A pod of another node in tunnel mode: encapsulate towards that node. */
		if (remote && (remote->flags & IPCACHE_F_HAS_TUNNEL_EP))
			return encap_and_redirect4(skb, &info, remote->tunnel_endpoint, self_identity);
		/* A reply to another node's own address (a connection its bpf_host SNATed to this pod)
		 * goes back through the tunnel, as Cilium's: through the stack it would be masqueraded
		 * (the stack never saw the request, which came through the tunnel) and that node could
		 * not turn it back to the client. */
		cfg = node_config();
		if (remote && remote->sec_identity == IDENTITY_REMOTE_NODE && (info.flags & CILIATE_EVENT_F_REPLY) &&
		    cfg && cfg->routing_mode == ROUTING_MODE_TUNNEL)
			return encap_and_redirect4(skb, &info, tuple.daddr, self_identity);
		/* Native mode, inside the native routing CIDR: forward past the node's stack. */
		if (cfg && native_routed4(cfg, tuple.daddr))
			return fib_redirect4(skb, &info);
	}
	/* A reply to a client outside the cluster that came in through a frontend (DSR, NodePort). */
	if (!ep && (info.flags & CILIATE_EVENT_F_REPLY) && info.dst_identity == IDENTITY_WORLD) {
		bool done;

		ret = lb4_rev_dsr(skb, &info, &done);
		if (done || ret)
			return ret;
	}
	/* Anything else the stack routes: the node, the world, and in native mode other nodes' pods. */
	send_trace_notify(skb, &info, TRACE_TO_STACK);
	return TC_ACT_OK;
}

/* Packets the node's stack routed to this pod (from the host, or from outside the node; in native
 * mode also pods of other nodes). Pod to pod traffic on this node and pods of other nodes in
 * tunnel mode never get here: cil_from_container and cil_from_overlay redirect past this hook
 * (and check the ingress policy themselves). A connection HTTP rules send to the node proxy goes
 * back to this veth's ingress (the hairpin, proxy.h), and from there into the proxy. The source identity is the ipcache's: HOST for the
 * node's own addresses when the agent put them there, WORLD for addresses it does not know. A
 * destination that is not the address of the endpoint behind this interface is dropped as
 * DROP_UNROUTABLE: the stack routes a pod's /32 here and nothing else. */
static __always_inline int to_container(struct __sk_buff *skb)
{
	struct ciliate_notify_info info = { .flags = CILIATE_EVENT_F_INGRESS };
	struct ipv4_ct_tuple tuple;
	struct endpoint_info *self;
	__u32 src_identity, proxy_identity;
	bool from_proxy;
	__u16 self_id;
	__u8 tcp_flags;
	int ret;

	pull_headers(skb);
	void *data = ctx_data(skb);
	void *data_end = ctx_data_end(skb);
	struct ethhdr *eth = pkt_header(data, data_end, 0, sizeof(*eth));
	struct iphdr *ip;

	if (!eth)
		return DROP_ON_INTERFACE(skb, &info, DROP_INVALID_PACKET);
	/* The node resolves the pod's MAC with ARP; nothing else but IPv4 goes in. */
	if (eth->h_proto == bpf_htons(ETH_P_ARP))
		return TC_ACT_OK;
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return DROP_ON_INTERFACE(skb, &info, DROP_UNKNOWN_L3);
	ip = pkt_header(data, data_end, ETH_HLEN, sizeof(*ip));
	if (!ip)
		return DROP_ON_INTERFACE(skb, &info, DROP_INVALID_PACKET);
	self = lxc_on_interface(skb, ip->daddr);
	if (!self)
		return DROP_ON_INTERFACE(skb, &info, DROP_UNROUTABLE);
	self_id = self->lxc_id;
	info.endpoint_id = self_id;
	info.dst_identity = self->sec_identity;
	info.dst_id = self_id;

	src_identity = ipcache_identity(ip->saddr);
	/* The node proxy's connection for a client whose request it allowed: that client's identity,
	 * and no second ingress check (the redirect was this policy's decision). */
	from_proxy = from_ingress_proxy(skb, &proxy_identity);
	if (from_proxy)
		src_identity = proxy_identity;
	info.src_identity = src_identity;
	ret = ipv4_parse_and_lookup(skb, &info, CT_INGRESS, &tuple, &tcp_flags);
	if (ret)
		return ret;
	ret = lb4_rev_nat(skb, &info);
	if (ret)
		return ret;
	if (!from_proxy) {
		/* HTTP rules: the connection goes to the node proxy through the hairpin (proxy.h). */
		info.flags |= CILIATE_NOTIFY_F_PROXY_OK;
		ret = policy_enforce4(skb, &info, self_id, CILIATE_POLICY_INGRESS, &tuple);
		if (ret)
			return ret;
	}
	/* The proxy speaks HTTP: anything else an L7 entry allowed is dropped, never let through. */
	if ((info.flags & CILIATE_NOTIFY_F_TO_PROXY) && tuple.nexthdr != IPPROTO_TCP)
		return DROP(skb, &info, DROP_PROXY_UNSUPPORTED);
	ret = ipv4_ct_commit(skb, &info, CT_INGRESS, src_identity, &tuple, tcp_flags);
	if (ret)
		return ret;
	if (info.flags & CILIATE_NOTIFY_F_TO_PROXY)
		return redirect_to_proxy_hairpin4(skb, &info, self, info.proxy_port);
	send_trace_notify(skb, &info, TRACE_TO_LXC);
	return TC_ACT_OK;
}

/* Forwards are counted at the two entry points, once per packet whichever way it left, and only
 * for packets not dropped (a drop counts itself, with its reason). */
static __always_inline int forward_counted(struct __sk_buff *skb, int ret, __u32 dir)
{
	if (ret != TC_ACT_SHOT)
		forward_account(skb->len, dir);
	return ret;
}

SEC("tc")
int cil_from_container(struct __sk_buff *skb)
{
	return forward_counted(skb, from_container(skb), CILIATE_METRIC_EGRESS);
}

SEC("tc")
int cil_to_container(struct __sk_buff *skb)
{
	return forward_counted(skb, to_container(skb), CILIATE_METRIC_INGRESS);
}

char LICENSE[] SEC("license") = "GPL";
