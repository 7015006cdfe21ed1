/* SPDX-License-Identifier: Apache-2.0 */
/* Ethernet header rewrites. Through bpf_skb_store_bytes() rather than direct packet writes, so
 * they also work when the header is not in the linear part of the skb. */
#pragma once

#include "common.h"

#ifndef ETH_ALEN
#define ETH_ALEN 6
#endif
#define ETH_HLEN 14

static __always_inline int eth_store_daddr(struct __sk_buff *skb, const __u8 *mac)
{
	return bpf_skb_store_bytes(skb, __builtin_offsetof(struct ethhdr, h_dest), mac, ETH_ALEN, 0);
}

static __always_inline int eth_store_saddr(struct __sk_buff *skb, const __u8 *mac)
{
	return bpf_skb_store_bytes(skb, __builtin_offsetof(struct ethhdr, h_source), mac, ETH_ALEN, 0);
}
