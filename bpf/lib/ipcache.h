/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The ipcache (one of the node-wide maps of maps.h, pinned by the loader) and the reserved
 * identities it holds, alone so that a program outside the datapath (bpf_sock_enforce.c, which
 * looks destinations up by identity) shares it without declaring every other datapath map.
 * Needs vmlinux.h and bpf_helpers.h included first.
 */
#pragma once

/* Reserved security identities (Cilium's pkg/identity/numericidentity.go). */
#define IDENTITY_UNKNOWN 0
#define IDENTITY_HOST 1
#define IDENTITY_WORLD 2
/* Another node of the cluster (its host), e.g. in the VNI of its host-routed tunnel traffic. */
#define IDENTITY_REMOTE_NODE 6

/* --- ciliate_ipcache: identity (and tunnel endpoint) of any address, longest prefix wins --- */

struct ipcache_key {
	__u32 prefixlen;	/* bits of `ip` that count: 32 for a host */
	__be32 ip;
};

/* The tunnel endpoint field holds a node to encapsulate to. */
#define IPCACHE_F_HAS_TUNNEL_EP 0x01

struct remote_endpoint_info {
	__u32 sec_identity;
	__be32 tunnel_endpoint;
	__u8 flags;		/* IPCACHE_F_* */
	__u8 _pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 512 * 1024);
	__uint(map_flags, BPF_F_NO_PREALLOC);	/* the kernel requires it of LPM tries */
	__type(key, struct ipcache_key);
	__type(value, struct remote_endpoint_info);
} ciliate_ipcache SEC(".maps");
