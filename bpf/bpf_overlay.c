/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The overlay datapath, after Cilium's bpf/bpf_overlay.c: what arrives from other nodes through
 * the node's VXLAN device (external / collect_md mode, so one device serves every peer).
 *
 *   cil_from_overlay  TCX ingress of the VXLAN device: decapsulated packets, with the tunnel
 *                     key (outer source, VNI) readable through bpf_skb_get_tunnel_key().
 *   cil_to_overlay    TCX egress of the device: the node proxy's connections to pods of other
 *                     nodes get their client's identity in the VNI (below).
 *
 * The sender put its pod's security identity in the VNI (encap.h), so the source identity comes
 * from the tunnel key; a VNI of 0 (a sender without identity, e.g. a host route) falls back to
 * the ipcache. A packet for a pod of this node is tracked (CT_INGRESS: entering the endpoint, as
 * cil_to_container would) and handed to the pod with bpf_redirect_peer; anything else (the node
 * itself, its router address) goes to the stack.
 *
 * Shares the node's pinned maps with bpf_lxc.o; its events name no source endpoint (they come
 * from another node). A new connection to a pod must pass that pod's ingress policy (policy_enforce.h)
 * before it is tracked and delivered: the packet skips the pod's cil_to_container.
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
#include "policy_enforce.h"
#include "lb_skb.h"
#include "proxy.h"

SEC("tc")
int cil_from_overlay(struct __sk_buff *skb)
{
	struct ciliate_notify_info info = { .flags = CILIATE_EVENT_F_INGRESS };
	struct bpf_tunnel_key key = {};
	struct ipv4_ct_tuple tuple;
	struct endpoint_info *ep;
	struct endpoint_key ep_key;
	struct iphdr *ip;
	__u8 tcp_flags;
	int ret;

	/*
	 * The inner destination MAC is whatever the sender had (its own gateway's): the VXLAN device
	 * marked the frame as for another host, which the stack would drop. The frame is for this
	 * node; the redirect below scrubs the type anyway, the stack path needs it.
	 */
	if (skb->pkt_type == PACKET_OTHERHOST)
		bpf_skb_change_type(skb, PACKET_HOST);

	pull_headers(skb);
	void *data = ctx_data(skb);
	void *data_end = ctx_data_end(skb);
	struct ethhdr *eth = pkt_header(data, data_end, 0, sizeof(*eth));

	if (!eth)
		return DROP(skb, &info, DROP_INVALID_PACKET);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	ip = pkt_header(data, data_end, ETH_HLEN, sizeof(*ip));
	if (!ip)
		return DROP(skb, &info, DROP_INVALID_PACKET);

	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0) < 0)
		return DROP(skb, &info, DROP_NO_TUNNEL_ENDPOINT);
	info.src_identity = key.tunnel_id ? key.tunnel_id : ipcache_identity(ip->saddr);

	/* A backend's reply to a connection from outside this node's bpf_host SNATed to it. */
	{
		struct ipv4_ct_tuple nat_tuple;
		__u32 l4_off;
		bool done;

		if (lb4_frontend_tuple(skb, &nat_tuple, &l4_off) == 0) {
			ret = lb4_rev_snat(skb, &info, &nat_tuple, l4_off, &done);
			if (done || ret)
				return ret;
		}
		/* A request another node's bpf_host sent here in DSR mode: remember its frontend. Only
		 * from outside the cluster (WORLD in the VNI, as bpf_host sends it): a pod's packet
		 * carries its own identity, and an option it wrote is nobody's frontend. */
		if (info.src_identity == IDENTITY_WORLD)
			dsr_learn4(skb);
		data = ctx_data(skb);
		data_end = ctx_data_end(skb);
		ip = pkt_header(data, data_end, ETH_HLEN, sizeof(*ip));
		if (!ip)
			return DROP(skb, &info, DROP_INVALID_PACKET);
	}

	ep_key.ip = ip->daddr;
	ep = bpf_map_lookup_elem(&ciliate_lxc, &ep_key);
	if (!ep || (ep->flags & ENDPOINT_F_HOST)) {
		/* The node itself (its router address) or whatever else the stack routes. Not tracked
		 * here, so nothing says whether the packet is news: as Cilium's, traced only below
		 * medium monitor aggregation. */
		info.dst_identity = ep ? IDENTITY_HOST : ipcache_identity(ip->daddr);
		info.flags |= CILIATE_NOTIFY_F_AGGREGATE;
		send_trace_notify(skb, &info, TRACE_FROM_OVERLAY);
		send_trace_notify(skb, &info, TRACE_TO_STACK);
		return TC_ACT_OK;
	}

	info.dst_identity = ep->sec_identity;
	info.dst_id = ep->lxc_id;
	ret = ipv4_parse_and_lookup(skb, &info, CT_INGRESS, &tuple, &tcp_flags);
	if (ret)
		return ret;
	send_trace_notify(skb, &info, TRACE_FROM_OVERLAY);
	/* A reply from a backend on that node to a connection this node translated. */
	ret = lb4_rev_nat(skb, &info);
	if (ret)
		return ret;
	/* L7 rules: the connection goes to this node's proxy (TC ingress, like cil_from_container). */
	info.flags |= CILIATE_NOTIFY_F_PROXY_OK;
	ret = policy_enforce4(skb, &info, ep->lxc_id, CILIATE_POLICY_INGRESS, &tuple);
	if (ret)
		return ret;
	if (info.flags & CILIATE_NOTIFY_F_TO_PROXY) {
		ret = redirect_to_proxy4(skb, &info, &tuple, info.proxy_port, tcp_flags);
		if (ret != TC_ACT_OK)
			return ret;
	}
	ret = ipv4_ct_commit(skb, &info, CT_INGRESS, info.src_identity, &tuple, tcp_flags);
	if (ret)
		return ret;
	if (info.flags & CILIATE_NOTIFY_F_TO_PROXY)
		return TC_ACT_OK;
	return ipv4_local_delivery(skb, &info, ep);
}

/*
 * What the node's own stack sends to another node's pods takes the kernel route through this
 * device, whose lightweight-tunnel key says REMOTE_NODE (node-routing.ts): the other node judges
 * it as this node. The node proxy's upstream connections are the exception, as in Cilium (whose
 * cil_from_host takes the identity from MARK_MAGIC_PROXY_INGRESS before encapsulating): they
 * speak for the client whose request the proxy allowed, so the VNI carries that client's identity
 * from the socket mark, and the destination's ingress policy judges the client, not the node.
 *
 * The mark is trusted on a local socket's packets only (from_ingress_proxy): a pod's packets that
 * get here (bpf_lxc redirects them, already with their tunnel key) lost any mark on the way out
 * of the pod's namespace, and bpf_lxc sets none on them. Everything else passes untouched.
 */
SEC("tc")
int cil_to_overlay(struct __sk_buff *skb)
{
	struct ciliate_notify_info info = {};
	struct remote_endpoint_info *remote;
	__u32 identity;
	struct iphdr *ip;

	if (!from_ingress_proxy(skb, &identity))
		return TC_ACT_OK;
	pull_headers(skb);
	void *data = ctx_data(skb);
	void *data_end = ctx_data_end(skb);
	struct ethhdr *eth = pkt_header(data, data_end, 0, sizeof(*eth));

	info.src_identity = identity;
	if (!eth || eth->h_proto != bpf_htons(ETH_P_IP))
		return DROP(skb, &info, DROP_INVALID_PACKET);
	ip = pkt_header(data, data_end, ETH_HLEN, sizeof(*ip));
	if (!ip)
		return DROP(skb, &info, DROP_INVALID_PACKET);
	remote = ipcache_lookup4(ip->daddr);
	/* Without the destination's node the packet would go as REMOTE_NODE's: refused instead, so
	 * the client gets no more than its own identity would. */
	if (!remote || !(remote->flags & IPCACHE_F_HAS_TUNNEL_EP))
		return DROP(skb, &info, DROP_NO_TUNNEL_ENDPOINT);
	info.dst_identity = remote->sec_identity;
	/* Untracked here: traced below medium monitor aggregation only, as the node's other traffic. */
	info.flags |= CILIATE_NOTIFY_F_AGGREGATE;
	return set_tunnel_key4(skb, &info, remote->tunnel_endpoint, identity) ? TC_ACT_SHOT : TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
