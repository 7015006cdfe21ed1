/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Forwarding by FIB lookup from a pod's host veth, after Cilium's bpf/lib/fib.h (its "BPF host
 * routing"): the kernel's routing table and neighbour cache pick the egress device and MACs, and
 * the packet is redirected there directly, skipping the node's IP input, netfilter and forward
 * path. Used in native routing mode for destinations inside the native routing CIDR.
 */
#pragma once

#include "common.h"
#include "ctx.h"
#include "events.h"
#include "maps.h"
#include "eth.h"
#include "ipv4.h"

#ifndef AF_INET
#define AF_INET 2
#endif

static __always_inline bool native_routed4(const struct node_config *cfg, __be32 daddr)
{
	__u32 len = cfg->native_cidr_prefixlen;
	__u32 mask;

	if (cfg->routing_mode != ROUTING_MODE_NATIVE || len == 0 || len > 32)
		return false;
	mask = len == 32 ? 0xffffffff : ~(0xffffffffU >> len);
	return (bpf_ntohl(daddr) & mask) == (bpf_ntohl(cfg->native_cidr) & mask);
}

/*
 * Forwards the IPv4 packet behind the Ethernet header as the node's stack would: TTL one less,
 * MACs of the next hop, out of the device the FIB names (bpf_redirect_neigh when the neighbour
 * is not resolved yet, so the kernel resolves it). Whatever the lookup cannot settle (no route,
 * a local destination, a packet too big for the egress MTU, an expiring TTL) goes to the stack,
 * which answers with the right ICMP. Reports to-network when it forwards, to-stack otherwise.
 */
static __always_inline int fib_redirect4(struct __sk_buff *skb, struct ciliate_notify_info *info)
{
	struct bpf_fib_lookup params = {};
	void *data = ctx_data(skb);
	void *data_end = ctx_data_end(skb);
	struct iphdr *ip = pkt_header(data, data_end, ETH_HLEN, sizeof(*ip));
	long ret;
	int err;

	if (!ip)
		return DROP(skb, info, DROP_INVALID_PACKET);
	if (ip->ttl <= 1)
		goto to_stack;
	params.family = AF_INET;
	params.tos = ip->tos;
	params.l4_protocol = ip->protocol;
	/* 0: the kernel checks the egress MTU against the skb itself, GSO packets included. */
	params.tot_len = 0;
	params.ipv4_src = ip->saddr;
	params.ipv4_dst = ip->daddr;
	params.ifindex = skb->ingress_ifindex;
	ret = bpf_fib_lookup(skb, &params, sizeof(params), 0);
	if (ret != BPF_FIB_LKUP_RET_SUCCESS && ret != BPF_FIB_LKUP_RET_NO_NEIGH)
		goto to_stack;

	err = ipv4_dec_ttl(skb, ETH_HLEN, ip);
	if (err) {
		info->ext_error = err;
		return DROP(skb, info, DROP_INVALID_PACKET);
	}
	info->dst_ifindex = params.ifindex;
	if (ret == BPF_FIB_LKUP_RET_NO_NEIGH) {
		/* The lookup left the next hop (gateway or destination) in ipv4_dst. */
		struct bpf_redir_neigh nh = { .nh_family = AF_INET, .ipv4_nh = params.ipv4_dst };

		send_trace_notify(skb, info, TRACE_TO_NETWORK);
		return bpf_redirect_neigh(params.ifindex, &nh, sizeof(nh), 0);
	}
	err = eth_store_daddr(skb, params.dmac);
	if (!err)
		err = eth_store_saddr(skb, params.smac);
	if (err) {
		info->ext_error = err;
		return DROP(skb, info, DROP_INVALID_PACKET);
	}
	send_trace_notify(skb, info, TRACE_TO_NETWORK);
	return bpf_redirect(params.ifindex, 0);

to_stack:
	send_trace_notify(skb, info, TRACE_TO_STACK);
	return TC_ACT_OK;
}
