/* SPDX-License-Identifier: Apache-2.0 */
/*
 * L3/L4 policy enforcement on new connections, after Cilium's policy_can_egress4 /
 * policy_can_access_ingress: which endpoint's policy map to ask (ciliate_policy_maps, by
 * endpoint id), the policy-verdict event of every decision in a direction the endpoint enforces
 * (none for a direction's allow-all entry, as Cilium's verdict log filter), and the drop of a
 * denied packet.
 *
 * Only connections conntrack has not seen (CT_NEW) are judged; replies and established flows
 * pass, as in Cilium. The caller creates the conntrack entry (ipv4_ct_commit) only after every
 * check passed, so a denied connection leaves no entry behind.
 *
 * An endpoint with no inner map in ciliate_policy_maps is not enforced: allowed, without an
 * event. The agent installs an endpoint's map before its programs are attached, with allow-all
 * wildcard entries for a direction it does not enforce, so this only covers endpoints of an
 * agent that does not manage policy (and the window while an endpoint is torn down).
 */
#pragma once

#include "common.h"
#include "drop_reasons.h"
#include "events.h"
#include "maps.h"
#include "ipv4.h"
#include "eth.h"
#include "conntrack.h"
#include "policy.h"

#ifndef IPPROTO_SCTP
#define IPPROTO_SCTP 132
#endif

/* The "port" the policy key wants: the destination port in host order; for ICMP the message
 * type; for SCTP its destination port (which conntrack does not track). 0 for later fragments. */
static __always_inline __u16 policy_dport(struct __sk_buff *skb, const struct ipv4_ct_tuple *tuple)
{
	void *data = ctx_data(skb);
	void *data_end = ctx_data_end(skb);
	struct iphdr *ip;
	__u8 l4[4];

	if (tuple->nexthdr != IPPROTO_ICMP && tuple->nexthdr != IPPROTO_SCTP)
		return bpf_ntohs(tuple->dport);
	ip = pkt_header(data, data_end, ETH_HLEN, sizeof(*ip));
	if (!ip || (ip->frag_off & bpf_htons(IP_OFFSET)))
		return 0;
	if (bpf_skb_load_bytes(skb, ETH_HLEN + ipv4_hdrlen(ip), l4, sizeof(l4)) < 0)
		return 0;
	if (tuple->nexthdr == IPPROTO_ICMP)
		return l4[0];
	return ((__u16)l4[2] << 8) | l4[3];
}

/*
 * Asks endpoint `endpoint_id`'s policy whether the remote end may open this new connection in
 * `direction`: CILIATE_POLICY_INGRESS is into the endpoint, from info->src_identity; _EGRESS out
 * of it, to info->dst_identity. Returns 0 to go on (allowed, or the endpoint not enforced), else
 * TC_ACT_SHOT after the policy-verdict and drop events (DROP_POLICY_DENY for an explicit deny,
 * DROP_POLICY when no entry allows it).
 *
 * A global function, so the verifier checks it once on its own instead of again at every call
 * site with every state the caller can be in (that was four fifths of cil_from_container's
 * verification, and so of an endpoint's load time). Hence at most five arguments, and pointers
 * the verifier takes as possibly NULL.
 */
__noinline int policy_enforce4_new(struct __sk_buff *skb, struct ciliate_notify_info *info, __u32 endpoint_id,
				   __u8 direction, const struct ipv4_ct_tuple *tuple)
{
	struct ciliate_policy_decision d;
	struct ciliate_policy_result res;
	__u32 remote_identity;
	void *map;

	if (!info || !tuple)
		return TC_ACT_SHOT;
	remote_identity = direction == CILIATE_POLICY_EGRESS ? info->dst_identity : info->src_identity;
	map = bpf_map_lookup_elem(&ciliate_policy_maps, &endpoint_id);
	if (!map)
		return 0;
	d.endpoint_id = endpoint_id;
	d.remote_identity = remote_identity;
	d.dport = policy_dport(skb, tuple);
	d.protocol = tuple->nexthdr;
	d.direction = direction;
	res = policy_can_access(map, remote_identity, direction, d.protocol, d.dport);
	/* A direction no rule enforces answers with its allow-all entry (cookie 0, no rule): no
	 * verdict is reported, as Cilium reports them only for the directions an endpoint enforces
	 * (POLICY_VERDICT_LOG_FILTER); two records per connection the observer never has to read. */
	if (res.verdict == CILIATE_POLICY_ALLOWED && res.cookie == 0)
		return 0;
	d.verdict = res.verdict;
	d.match_type = res.match_type;
	d.cookie = res.cookie;
	send_policy_verdict_notify(skb, info, &d);
	/* An entry with L7 rules allows the connection only into the node proxy, which judges each
	 * request: where the caller cannot take it there, it is dropped, never let through. */
	if (res.verdict == CILIATE_POLICY_ALLOWED && res.proxy_port) {
		if (!(info->flags & CILIATE_NOTIFY_F_PROXY_OK))
			return DROP(skb, info, DROP_PROXY_UNSUPPORTED);
		info->flags |= CILIATE_NOTIFY_F_TO_PROXY;
		info->proxy_port = res.proxy_port;
		return 0;
	}
	if (res.verdict == CILIATE_POLICY_ALLOWED)
		return 0;
	/* A local destination's ingress policy is asked by the sender's program (the packet then goes
	 * straight to the peer), yet the drop is the destination's ingress drop: counted and reported
	 * as one, as Cilium counts it (cilium_drop_count_total{direction="INGRESS"}). */
	if (direction == CILIATE_POLICY_INGRESS)
		info->flags |= CILIATE_EVENT_F_INGRESS;
	else
		info->flags &= ~CILIATE_EVENT_F_INGRESS;
	if (res.verdict == CILIATE_POLICY_DENIED)
		return DROP(skb, info, DROP_POLICY_DENY);
	return DROP(skb, info, DROP_POLICY);
}

/* Only connections conntrack has not seen are judged; the check is inline so that established
 * traffic pays no function call. */
static __always_inline int policy_enforce4(struct __sk_buff *skb, struct ciliate_notify_info *info, __u32 endpoint_id,
					   __u8 direction, const struct ipv4_ct_tuple *tuple)
{
	if (info->reason != CT_NEW)
		return 0;
	return policy_enforce4_new(skb, info, endpoint_id, direction, tuple);
}
