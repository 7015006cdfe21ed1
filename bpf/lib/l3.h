/* SPDX-License-Identifier: Apache-2.0 */
/*
 * IPv4 steps every entry program shares (bpf_lxc.c for packets leaving pods, bpf_overlay.c for
 * packets arriving from other nodes): header pulls, ipcache lookups, parse-and-track, and
 * delivery to a pod of this node. After Cilium's bpf/lib/l3.h and eps.h.
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

/* Linear bytes needed before parsing: Ethernet, an IPv4 header without options and the fixed
 * TCP header. No more: a TCP segment's linear part usually ends right after its headers, and
 * pulling payload into it copies (and reallocates a cloned head) on every packet. */
#define PARSE_PULL_LEN (ETH_HLEN + 20 + 20)

/* Makes the headers readable through direct packet access. A veth frame normally has them in
 * the linear part already, so the pull (which may copy) only runs when it is needed. */
static __always_inline void pull_headers(struct __sk_buff *skb)
{
	__u32 want = skb->len < PARSE_PULL_LEN ? skb->len : PARSE_PULL_LEN;

	if ((__u32)(ctx_data_end(skb) - ctx_data(skb)) < want)
		bpf_skb_pull_data(skb, want);
}

/* The ipcache entry with the longest prefix covering `addr`, or NULL. */
static __always_inline struct remote_endpoint_info *ipcache_lookup4(__be32 addr)
{
	struct ipcache_key key = { .prefixlen = 32, .ip = addr };

	return bpf_map_lookup_elem(&ciliate_ipcache, &key);
}

static __always_inline __u32 ipcache_identity(__be32 addr)
{
	struct remote_endpoint_info *info = ipcache_lookup4(addr);

	return info ? info->sec_identity : IDENTITY_WORLD;
}

/*
 * Parses the IPv4 header behind the Ethernet header and looks the packet up in conntrack
 * (accounting it to the entry it finds), without creating an entry for a new connection: policy
 * decides first, then ipv4_ct_commit() creates it, so a denied SYN leaves nothing behind and its
 * retransmissions are judged again. On success fills *tuple (packet order) and *tcp_flags and
 * returns 0 with info->reason/flags set from conntrack; otherwise returns the verdict of the
 * drop it reported.
 */
static __always_inline int ipv4_parse_and_lookup(struct __sk_buff *skb, struct ciliate_notify_info *info, __u8 dir,
						 struct ipv4_ct_tuple *tuple, __u8 *tcp_flags)
{
	void *data = ctx_data(skb);
	void *data_end = ctx_data_end(skb);
	struct iphdr *ip = pkt_header(data, data_end, ETH_HLEN, sizeof(*ip));
	struct ciliate_monitor_config mon;
	__u32 hdrlen, tot_len;
	__u16 rev_nat_index, proxy_port;
	bool report, to_proxy;
	int status;

	*tcp_flags = 0;
	if (!ip)
		return DROP(skb, info, DROP_INVALID_PACKET);
	hdrlen = ipv4_hdrlen(ip);
	tot_len = bpf_ntohs(ip->tot_len);
	/* tot_len 0 is BIG TCP's marker for a GSO packet over 64 KiB; its real length is skb->len. */
	if (ip->version != 4 || hdrlen < sizeof(*ip) || (tot_len != 0 && tot_len < hdrlen) ||
	    ETH_HLEN + tot_len > skb->len || !pkt_header(data, data_end, ETH_HLEN, hdrlen))
		return DROP(skb, info, DROP_INVALID_PACKET);

	__builtin_memset(tuple, 0, sizeof(*tuple));
	tuple->daddr = ip->daddr;
	tuple->saddr = ip->saddr;
	tuple->nexthdr = ip->protocol;
	/* Later fragments have no ports; tracking them needs a fragment map (later work), so until
	 * then every fragment is tracked by addresses and protocol only. */
	if (!ipv4_is_fragment(ip) &&
	    ct_extract_ports4(data, data_end, ETH_HLEN + hdrlen, tuple, tcp_flags) < 0)
		return DROP(skb, info, DROP_CT_INVALID_HDR);

	mon = monitor_config();
	status = ct_lookup4(&ciliate_ct4, tuple, dir, *tcp_flags, skb->len, &mon, &report, &rev_nat_index, &to_proxy, &proxy_port);
	if (to_proxy) {
		info->flags |= CILIATE_NOTIFY_F_TO_PROXY;
		info->proxy_port = proxy_port;
	}
	/* A new connection keeps what the service translation (lb_skb.h) set for its entry. */
	if (status != CT_NEW)
		info->rev_nat_index = rev_nat_index;
	info->reason = status;
	if (status == CT_REPLY)
		info->flags |= CILIATE_EVENT_F_REPLY;
	/* Nothing a connection's earlier reports did not say: traced below medium aggregation only. */
	if (!report)
		info->flags |= CILIATE_NOTIFY_F_AGGREGATE;
	return 0;
}

/* Creates the conntrack entry of a new connection (info->reason CT_NEW) that policy let through;
 * nothing for other packets. Returns 0 or the verdict of the drop it reported. */
static __always_inline int ipv4_ct_commit(struct __sk_buff *skb, struct ciliate_notify_info *info, __u8 dir,
					  __u32 src_identity, const struct ipv4_ct_tuple *tuple, __u8 tcp_flags)
{
	int err;

	if (info->reason != CT_NEW)
		return 0;
	err = ct_create4(&ciliate_ct4, tuple, dir, tcp_flags, skb->len, src_identity, info->rev_nat_index);
	if (err < 0) {
		info->ext_error = err;
		return DROP(skb, info, DROP_CT_MAP_INSERTION_FAILED);
	}
	/* The rest of a connection policy sent to the node proxy follows it there (CT_F_PROXY_REDIRECT). */
	if (info->flags & CILIATE_NOTIFY_F_TO_PROXY) {
		struct ipv4_ct_tuple key = *tuple;
		struct ct_entry *entry;

		key.flags = dir;
		key._pad = 0;
		entry = bpf_map_lookup_elem(&ciliate_ct4, &key);
		if (entry) {
			entry->flags |= CT_F_PROXY_REDIRECT;
			entry->proxy_port = info->proxy_port;
		}
	}
	return 0;
}

/* Lookup and commit in one, for paths without policy. */
static __always_inline int ipv4_parse_and_track(struct __sk_buff *skb, struct ciliate_notify_info *info, __u8 dir,
						 __u32 src_identity, struct ipv4_ct_tuple *tuple)
{
	__u8 tcp_flags;
	int ret = ipv4_parse_and_lookup(skb, info, dir, tuple, &tcp_flags);

	if (ret)
		return ret;
	return ipv4_ct_commit(skb, info, dir, src_identity, tuple, tcp_flags);
}

/*
 * Delivers to a pod of this node: the frame is rewritten as if the node had routed it (MACs of
 * the destination's veth pair, TTL one less) and handed straight to the destination pod's
 * eth0 with bpf_redirect_peer(), which skips the node's stack and the second veth hop; that
 * shortcut is where Cilium beats plain routing. A TTL about to expire goes to the stack instead,
 * so the node answers with ICMP time exceeded as a router would.
 *
 * Called from TCX ingress only (of a pod's host veth, or of the VXLAN device): redirect_peer
 * works from ingress alone.
 */
static __always_inline int ipv4_local_delivery(struct __sk_buff *skb, struct ciliate_notify_info *info,
					       const struct endpoint_info *ep)
{
	void *data = ctx_data(skb);
	void *data_end = ctx_data_end(skb);
	struct iphdr *ip = pkt_header(data, data_end, ETH_HLEN, sizeof(*ip));
	int err;

	if (!ip)
		return DROP(skb, info, DROP_INVALID_PACKET);
	if (ip->ttl <= 1) {
		send_trace_notify(skb, info, TRACE_TO_STACK);
		return TC_ACT_OK;
	}
	err = ipv4_dec_ttl(skb, ETH_HLEN, ip);
	if (!err)
		err = eth_store_daddr(skb, ep->mac);
	if (!err)
		err = eth_store_saddr(skb, ep->node_mac);
	if (err) {
		info->ext_error = err;
		return DROP(skb, info, DROP_INVALID_PACKET);
	}
	info->dst_ifindex = ep->ifindex;
	send_trace_notify(skb, info, TRACE_TO_LXC);
	return bpf_redirect_peer(ep->ifindex, 0);
}
