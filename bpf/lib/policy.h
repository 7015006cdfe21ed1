/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Per-endpoint policy map and its lookup (Cilium's bpf/lib/policy.h, cilium_policy_v2).
 *
 * Layout: one LPM trie per endpoint, pinned per endpoint as `ciliate_policy_<endpoint id>` (as
 * Cilium pins cilium_policy_v2_<id>); a program declares it with CILIATE_POLICY_MAP(name).
 *
 * Key: the LPM prefix runs over sec_label (32 bits), egress (8), protocol (8) and dport (16):
 *   prefixlen 40   identity + direction: every protocol and port
 *   prefixlen 48   ... + protocol: every port of that protocol
 *   prefixlen 48+n ... + the first n bits of dport: a port range (aligned power-of-two block)
 *   prefixlen 64   one port
 * The protocol is wildcarded only together with the port. sec_label 0 means "any identity"; it
 * is not a prefix wildcard but a second lookup (policy_can_access).
 *
 * Value: verdict flags (deny bit), the key's prefix length (a lookup cannot report which prefix
 * matched, and the two lookups are compared on it), and the cookie: the numeric id of the rule
 * the entry came from (what Hubble would print as the policy that decided).
 *
 * TS codecs: src/policy/policy-map.ts, checked against this file through BTF.
 */
#pragma once

#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define CILIATE_POLICY_INGRESS 0
#define CILIATE_POLICY_EGRESS 1

/* Prefix lengths of the key parts, in bits. */
#define CILIATE_POLICY_PREFIX_L3 32	/* sec_label */
#define CILIATE_POLICY_PREFIX_DIR 40	/* + egress: all protocols, all ports */
#define CILIATE_POLICY_PREFIX_PROTO 48	/* + protocol: all ports */
#define CILIATE_POLICY_PREFIX_FULL 64	/* + dport: one port */

#define CILIATE_POLICY_MAX_ENTRIES 16384

/* ciliate_policy_entry.flags */
#define CILIATE_POLICY_F_DENY 0x01

struct ciliate_policy_key {
	__u32 prefixlen;	/* struct bpf_lpm_trie_key's: bits of what follows that count */
	__u32 sec_label;	/* remote identity; 0 = any */
	__u8 egress;		/* CILIATE_POLICY_INGRESS / _EGRESS */
	__u8 protocol;		/* IPPROTO_*; 0 only with a wildcarded port */
	__be16 dport;		/* ICMP: the ICMP type */
};

struct ciliate_policy_entry {
	__be16 proxy_port;	/* L7 redirect to the node proxy listening on this port; 0 = none */
	__u8 flags;		/* CILIATE_POLICY_F_* */
	__u8 prefix_len;	/* the key's prefixlen, 40..64 */
	__u8 auth_type;		/* 0 = no mutual authentication required */
	__u8 _pad[3];
	__u32 cookie;		/* id of the rule that produced the entry; 0 = allow-all default */
};

enum ciliate_policy_verdict {
	CILIATE_POLICY_DENIED_DEFAULT = 0,	/* no entry: DROP_POLICY */
	CILIATE_POLICY_ALLOWED = 1,
	CILIATE_POLICY_DENIED = 2,		/* an explicit deny entry: DROP_POLICY_DENY */
};

/* Cilium's policy match types (bpf/lib/policy.h): which kind of entry decided. */
enum ciliate_policy_match {
	CILIATE_POLICY_MATCH_NONE = 0,
	CILIATE_POLICY_MATCH_L3_ONLY = 1,	/* identity, any protocol and port */
	CILIATE_POLICY_MATCH_L3_L4 = 2,		/* identity + protocol + port (or range) */
	CILIATE_POLICY_MATCH_L4_ONLY = 3,	/* any identity, protocol + port (or range) */
	CILIATE_POLICY_MATCH_ALL = 4,		/* any identity, any protocol and port */
	CILIATE_POLICY_MATCH_L3_PROTO = 5,	/* identity + protocol, any port */
	CILIATE_POLICY_MATCH_PROTO_ONLY = 6,	/* any identity, protocol, any port */
};

struct ciliate_policy_result {
	__u32 verdict;		/* enum ciliate_policy_verdict */
	__u32 match_type;	/* enum ciliate_policy_match */
	__u32 cookie;
	__u32 prefix_len;	/* of the deciding entry; 0 on a miss */
	__u32 proxy_port;	/* of the deciding entry when it allows: redirect to the node proxy */
};

#define CILIATE_POLICY_MAP(name)                                  \
	struct {                                                  \
		__uint(type, BPF_MAP_TYPE_LPM_TRIE);              \
		__uint(max_entries, CILIATE_POLICY_MAX_ENTRIES);  \
		__uint(map_flags, BPF_F_NO_PREALLOC);             \
		__type(key, struct ciliate_policy_key);           \
		__type(value, struct ciliate_policy_entry);       \
	} name SEC(".maps")

static __always_inline __u32 ciliate_policy_match_type(const struct ciliate_policy_entry *entry, int l3)
{
	if (entry->prefix_len <= CILIATE_POLICY_PREFIX_DIR)
		return l3 ? CILIATE_POLICY_MATCH_L3_ONLY : CILIATE_POLICY_MATCH_ALL;
	if (entry->prefix_len <= CILIATE_POLICY_PREFIX_PROTO)
		return l3 ? CILIATE_POLICY_MATCH_L3_PROTO : CILIATE_POLICY_MATCH_PROTO_ONLY;
	return l3 ? CILIATE_POLICY_MATCH_L3_L4 : CILIATE_POLICY_MATCH_L4_ONLY;
}

static __always_inline void ciliate_policy_fill(struct ciliate_policy_result *res,
						const struct ciliate_policy_entry *entry, int l3)
{
	res->verdict = (entry->flags & CILIATE_POLICY_F_DENY) ? CILIATE_POLICY_DENIED : CILIATE_POLICY_ALLOWED;
	res->match_type = ciliate_policy_match_type(entry, l3);
	res->cookie = entry->cookie;
	res->prefix_len = entry->prefix_len;
	res->proxy_port = bpf_ntohs(entry->proxy_port);
}

/*
 * Whether `remote_identity` may talk to the endpoint owning `map` in `direction` on
 * protocol/dport (dport in host order). Two lookups, as Cilium's __policy_can_access: the remote
 * identity and identity 0 (any). When both hit: a deny wins, then the longer prefix, then the
 * identity-specific (L3) entry. No hit: denied by default.
 */
static __always_inline struct ciliate_policy_result
policy_can_access(void *map, __u32 remote_identity, __u8 direction, __u8 protocol, __u16 dport)
{
	struct ciliate_policy_result res = {};
	struct ciliate_policy_key key = {
		.prefixlen = CILIATE_POLICY_PREFIX_FULL,
		.sec_label = remote_identity,
		.egress = direction,
		.protocol = protocol,
		.dport = bpf_htons(dport),
	};
	struct ciliate_policy_entry *l3, *l4;

	l3 = bpf_map_lookup_elem(map, &key);
	key.sec_label = 0;
	l4 = bpf_map_lookup_elem(map, &key);

	/* Plain branches: clang would otherwise test `l3 || l4` with a pointer OR the verifier refuses. */
	if (l3 && remote_identity != 0) {
		if (l4) {
			int l3_deny = (l3->flags & CILIATE_POLICY_F_DENY) != 0;
			int l4_deny = (l4->flags & CILIATE_POLICY_F_DENY) != 0;

			if (l4_deny != l3_deny ? l4_deny : l4->prefix_len > l3->prefix_len) {
				ciliate_policy_fill(&res, l4, 0);
				return res;
			}
		}
		ciliate_policy_fill(&res, l3, 1);
		return res;
	}
	/* remote_identity 0 makes both lookups one: it counts as the wildcard entry. */
	if (l4)
		ciliate_policy_fill(&res, l4, 0);
	return res;
}
