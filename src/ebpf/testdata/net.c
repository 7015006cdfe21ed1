/* SPDX-License-Identifier: Apache-2.0 */
/* Fixture for link and program tests: tc, XDP and cgroup sock_addr programs that count what they
 * see and act on a one-entry config map, so a test can prove a program is attached and effective. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* Overridden by the loader: proves .rodata constants are set before load. */
volatile const __u32 TAG = 0;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 8);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

/* net_config[0]: 1 = drop in tc/xdp; net_config[1]: TCP port whose connect() cgroup hooks refuse. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u32);
} net_config SEC(".maps");

enum { SLOT_TC_INGRESS, SLOT_TC_SECOND, SLOT_XDP, SLOT_CONNECT4, SLOT_SENDMSG4, SLOT_RECVMSG4, SLOT_GETPEERNAME4, SLOT_TAG };

static __always_inline void bump(__u32 slot)
{
	__u64 *value = bpf_map_lookup_elem(&counters, &slot);
	if (value)
		__sync_fetch_and_add(value, 1);
}

static __always_inline __u32 config_get(__u32 key)
{
	__u32 *value = bpf_map_lookup_elem(&net_config, &key);
	return value ? *value : 0;
}

SEC("tc")
int count_tc(struct __sk_buff *skb)
{
	bump(SLOT_TC_INGRESS);
	__u32 slot = SLOT_TAG;
	__u64 tag = TAG;
	bpf_map_update_elem(&counters, &slot, &tag, BPF_ANY);
	return config_get(0) ? 2 /* TC_ACT_SHOT */ : -1 /* TC_ACT_UNSPEC: let the next program decide */;
}

SEC("tc")
int count_tc_second(struct __sk_buff *skb)
{
	bump(SLOT_TC_SECOND);
	return -1;
}

SEC("xdp")
int count_xdp(struct xdp_md *ctx)
{
	bump(SLOT_XDP);
	return config_get(0) ? XDP_DROP : XDP_PASS;
}

SEC("cgroup/connect4")
int refuse_connect4(struct bpf_sock_addr *ctx)
{
	bump(SLOT_CONNECT4);
	__u32 port = config_get(1);
	if (port && ctx->user_port == bpf_htons(port))
		return 0; /* connect() fails with EPERM */
	return 1;
}

SEC("cgroup/sendmsg4")
int count_sendmsg4(struct bpf_sock_addr *ctx)
{
	bump(SLOT_SENDMSG4);
	return 1;
}

SEC("cgroup/recvmsg4")
int count_recvmsg4(struct bpf_sock_addr *ctx)
{
	bump(SLOT_RECVMSG4);
	return 1;
}

SEC("cgroup/getpeername4")
int count_getpeername4(struct bpf_sock_addr *ctx)
{
	bump(SLOT_GETPEERNAME4);
	return 1;
}

char LICENSE[] SEC("license") = "GPL";
