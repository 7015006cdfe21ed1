/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Fixture for src/policy tests: runs bpf/lib/policy.h's policy_can_access on a request carried in
 * the packet, so a test can load policy entries into a real LPM trie and ask the datapath's own
 * lookup through BPF_PROG_TEST_RUN.
 *
 * Packet: 14 bytes of Ethernet header (ignored), then struct policy_test_request; the program
 * writes struct ciliate_policy_result right after the request and returns the verdict.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "policy.h"

struct policy_test_request {
	__u32 remote_identity;
	__u8 direction;
	__u8 protocol;
	__u16 dport;		/* host order */
};

CILIATE_POLICY_MAP(policy_test_map);

/* Keeps struct ciliate_policy_result and the request in BTF for layout tests. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct ciliate_policy_result);
} policy_test_last SEC(".maps");

#define REQ_OFF 14

SEC("tc")
int policy_lookup(struct __sk_buff *skb)
{
	struct policy_test_request req;
	struct ciliate_policy_result res;
	__u32 zero = 0;

	if (bpf_skb_load_bytes(skb, REQ_OFF, &req, sizeof(req)) < 0)
		return -1;
	res = policy_can_access(&policy_test_map, req.remote_identity, req.direction, req.protocol, req.dport);
	bpf_map_update_elem(&policy_test_last, &zero, &res, BPF_ANY);
	if (bpf_skb_store_bytes(skb, REQ_OFF + sizeof(req), &res, sizeof(res), 0) < 0)
		return -1;
	return res.verdict;
}

char _license[] SEC("license") = "GPL";
