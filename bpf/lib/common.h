/* SPDX-License-Identifier: Apache-2.0 */
/* Shared basics for Ciliate's BPF programs: packet parsing helpers and constants. */
#pragma once

/* Packet headers and __sk_buff are ABI, not kernel-internal layouts that move between versions,
 * so the datapath needs no CO-RE relocations. Without them libbpf need not parse the kernel's
 * BTF (several MB) on every load, which was most of the user-space cost of loading an
 * endpoint's programs. */
#define BPF_NO_PRESERVE_ACCESS_INDEX
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_ARP 0x0806
#define TC_ACT_OK 0
#define TC_ACT_SHOT 2
#define TC_ACT_REDIRECT 7

/* skb->pkt_type values (linux/if_packet.h). */
#define PACKET_HOST 0
#define PACKET_OTHERHOST 3

#ifndef IPPROTO_ICMP
#define IPPROTO_ICMP 1
#endif

/* Bounds-checked pointer to a header at `off` bytes into the packet, or NULL. The verifier
 * only accepts packet reads it has seen checked against data_end, hence one helper for all. */
static __always_inline void *pkt_header(void *data, void *data_end, __u32 off, __u32 len)
{
	if (data + off + len > data_end)
		return NULL;
	return data + off;
}
