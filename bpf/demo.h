/* SPDX-License-Identifier: Apache-2.0 */
/* The demo's event and counter layouts. Their TS codecs are in src/datapath/demo.ts,
 * tested against this file's BTF. */
#pragma once

#include "vmlinux.h"

enum demo_direction {
	DEMO_INGRESS = 0,
	DEMO_EGRESS = 1,
};

struct demo_event {
	__u64 timestamp_ns;
	__u32 ifindex;
	__u32 length;
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 protocol;
	__u8 direction;
	__u8 icmp_type;
	__u8 _pad;
};

/* Per-protocol counter, one slot per CPU in a per-CPU array indexed by IP protocol number. */
struct demo_counter {
	__u64 packets;
	__u64 bytes;
};
