// Fixture for btf.test.ts: structs whose layouts the test knows by heart, kept alive in BTF
// through a map definition and .rodata globals. Never loaded; only its BTF is read.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

typedef __u32 layout_test_id_t;

// Implicit holes after proto (1 byte) and mac (2 bytes), tail padding after ids (4 bytes).
struct layout_test_key {
	__u8 proto;            // 0
	__be16 sport;          // 2
	__u32 addr;            // 4
	__u64 cookie;          // 8
	__u8 mac[6];           // 16
	layout_test_id_t ids[3]; // 24
};                         // sizeof 40

// Explicit padding, a const-qualified member, a bitfield and an anonymous union.
struct layout_test_value {
	__u64 packets;         // 0
	const __u16 flags;     // 8
	__u8 _pad[2];          // 10
	__u32 kind : 4;        // 12, bits 96..99
	__u32 level : 12;      // bits 100..111
	union {                // 16
		__u32 ifindex;
		__u16 port;
	};
};                         // sizeof 24

enum layout_test_verdict {
	LAYOUT_TEST_PASS = 0,
	LAYOUT_TEST_DROP = 2,
	LAYOUT_TEST_REDIRECT = 7,
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, struct layout_test_key);
	__type(value, struct layout_test_value);
} layout_test_map SEC(".maps");

volatile const __u32 cfg_a = 1;
volatile const __u64 cfg_b = 2;
volatile const enum layout_test_verdict cfg_verdict = LAYOUT_TEST_DROP;

SEC("tc")
int prog(struct __sk_buff *skb)
{
	struct layout_test_key key = { .proto = 6, .addr = skb->ifindex };
	struct layout_test_value *value = bpf_map_lookup_elem(&layout_test_map, &key);

	if (value && cfg_a)
		value->packets += cfg_b;
	return cfg_verdict == LAYOUT_TEST_DROP ? 2 : 0;
}

char _license[] SEC("license") = "GPL";
