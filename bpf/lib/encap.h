/* SPDX-License-Identifier: Apache-2.0 */
/*
 * VXLAN encapsulation towards other nodes, after Cilium's bpf/lib/encap.h. The node has one
 * VXLAN device in external (collect_md) mode; a program picks each packet's outer destination
 * and VNI with bpf_skb_set_tunnel_key() and redirects it to that device, which encapsulates it.
 * As in Cilium, the VNI carries the sender's security identity, so the receiving node knows who
 * sent a packet without an ipcache lookup.
 */
#pragma once

#include "common.h"
#include "events.h"
#include "maps.h"

/* TTL of the outer header (IPDEFTTL). */
#define TUNNEL_TTL 64
/* VNIs are 24 bits: identities above that cannot be carried and go as UNKNOWN (0). */
#define TUNNEL_ID_MAX 0xffffff

static __always_inline struct node_config *node_config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&ciliate_node_cfg, &zero);
}

/*
 * Gives the packet its tunnel key: outer destination `tunnel_endpoint` (the node that owns the
 * destination), the source identity in the VNI. The VXLAN device encapsulates with it. Returns 0,
 * or the verdict of the DROP_NO_TUNNEL_ENDPOINT it reported when this node has no tunnel device
 * or the key cannot be set: sending such a packet on anyway would leak pod traffic onto the
 * underlay unencapsulated, or with another identity than the sender's.
 */
static __always_inline int set_tunnel_key4(struct __sk_buff *skb, struct ciliate_notify_info *info,
					   __be32 tunnel_endpoint, __u32 src_identity)
{
	struct node_config *cfg = node_config();
	struct bpf_tunnel_key key = {};
	long err;

	if (!cfg || !cfg->tunnel_ifindex || !tunnel_endpoint)
		return DROP(skb, info, DROP_NO_TUNNEL_ENDPOINT);
	/* The helper takes the address in host byte order. */
	key.remote_ipv4 = bpf_ntohl(tunnel_endpoint);
	key.tunnel_id = src_identity <= TUNNEL_ID_MAX ? src_identity : IDENTITY_UNKNOWN;
	key.tunnel_ttl = TUNNEL_TTL;
	/* No outer UDP checksum, as Cilium: the inner packet carries its own. */
	err = bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX);
	if (err < 0) {
		info->ext_error = err;
		return DROP(skb, info, DROP_NO_TUNNEL_ENDPOINT);
	}
	info->dst_ifindex = cfg->tunnel_ifindex;
	send_trace_notify(skb, info, TRACE_TO_OVERLAY);
	return 0;
}

/* Encapsulates (set_tunnel_key4) and redirects to the VXLAN device; the verdict. */
static __always_inline int encap_and_redirect4(struct __sk_buff *skb, struct ciliate_notify_info *info,
					       __be32 tunnel_endpoint, __u32 src_identity)
{
	int ret = set_tunnel_key4(skb, info, tunnel_endpoint, src_identity);

	if (ret)
		return ret;
	return bpf_redirect(info->dst_ifindex, 0);
}
