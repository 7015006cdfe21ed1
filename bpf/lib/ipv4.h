/* SPDX-License-Identifier: Apache-2.0 */
/* IPv4 header helpers. */
#pragma once

#include "common.h"

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

static __always_inline __u32 ipv4_hdrlen(const struct iphdr *ip)
{
	return ip->ihl * 4;
}

/* Any fragment, first or later: only the first carries the L4 header. */
static __always_inline bool ipv4_is_fragment(const struct iphdr *ip)
{
	return ip->frag_off & bpf_htons(IP_MF | IP_OFFSET);
}

/*
 * Decrements the TTL of the IPv4 header at `off`, fixing the header checksum incrementally
 * (RFC 1624) instead of recomputing it: the header may carry options, and a full recompute
 * would need a loop over them. The checksum covers 16-bit words and the TTL shares one with
 * the protocol byte, so the replaced value is that whole word; comparing words as they lie in
 * memory keeps this independent of the host's byte order.
 *
 * `ip` must point at that header and be valid on entry; like every skb-changing helper this
 * invalidates packet pointers, so callers re-derive them afterwards. Returns 0, or a negative
 * errno from the helpers. A TTL of 0 or 1 is the caller's business (the stack answers with ICMP
 * time exceeded), so it is refused with -1.
 */
static __always_inline int ipv4_dec_ttl(struct __sk_buff *skb, __u32 off, const struct iphdr *ip)
{
	__u8 ttl = ip->ttl;
	__u8 word[2] = { ttl - 1, ip->protocol };
	__be16 old_word = *(const __be16 *)&ip->ttl;
	__be16 new_word;
	int err;

	if (ttl <= 1)
		return -1;
	__builtin_memcpy(&new_word, word, sizeof(new_word));
	err = bpf_l3_csum_replace(skb, off + __builtin_offsetof(struct iphdr, check), old_word, new_word, sizeof(new_word));
	if (err < 0)
		return err;
	return bpf_skb_store_bytes(skb, off + __builtin_offsetof(struct iphdr, ttl), &word[0], 1, 0);
}
