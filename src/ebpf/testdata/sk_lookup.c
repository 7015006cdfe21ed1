/* SPDX-License-Identifier: Apache-2.0 */
/* Fixture for sk_lookup link tests: gives TCP connections to one port (steer_config[0]) to the
 * socket in steer_to, and counts those it gave one. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u32);
} steer_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SOCKMAP);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} steer_to SEC(".maps");

enum { CONFIG_PORT, STEERED };

SEC("sk_lookup")
int steer_lookup(struct bpf_sk_lookup *ctx)
{
	__u32 key = CONFIG_PORT;
	__u32 *port = bpf_map_lookup_elem(&steer_config, &key);
	struct bpf_sock *sk = NULL;

	if (port && ctx->protocol == IPPROTO_TCP && ctx->local_port == *port) {
		key = 0;
		sk = bpf_map_lookup_elem(&steer_to, &key);
	}
	if (sk) {
		if (bpf_sk_assign(ctx, sk, 0) == 0) {
			__u32 *steered;

			key = STEERED;
			steered = bpf_map_lookup_elem(&steer_config, &key);
			if (steered)
				__sync_fetch_and_add(steered, 1);
		}
		bpf_sk_release(sk);
	}
	return SK_PASS;
}

char LICENSE[] SEC("license") = "GPL";
