/* SPDX-License-Identifier: Apache-2.0 */
/* The README demo: a TCX program that counts IPv4 packets per protocol and reports each one. */
#include "common.h"
#include "demo.h"
#include "ringbuf_lost.h"

/* Set by the loader before load: which direction this copy of the program watches. */
volatile const __u8 DEMO_DIRECTION = DEMO_INGRESS;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct demo_counter);
} demo_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 18);
} demo_events SEC(".maps");

DEFINE_RINGBUF_LOST_MAP(demo_events_lost);

/* Not inlined on purpose: a function signature puts struct demo_event into the object's BTF,
 * which is what the TS codec's layout test reads. */
static __noinline void emit_event(struct demo_event *ev)
{
	ringbuf_output_or_count(&demo_events, &demo_events_lost, ev, sizeof(*ev));
}

SEC("tc")
int demo_observe(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = pkt_header(data, data_end, 0, sizeof(*eth));
	if (!eth || eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	struct iphdr *ip = pkt_header(data, data_end, sizeof(*eth), sizeof(*ip));
	if (!ip)
		return TC_ACT_OK;

	__u32 proto = ip->protocol;
	struct demo_counter *counter = bpf_map_lookup_elem(&demo_counters, &proto);
	if (counter) {
		counter->packets++;
		counter->bytes += skb->len;
	}

	struct demo_event ev = {
		.timestamp_ns = bpf_ktime_get_ns(),
		.ifindex = skb->ifindex,
		.length = skb->len,
		.saddr = ip->saddr,
		.daddr = ip->daddr,
		.protocol = ip->protocol,
		.direction = DEMO_DIRECTION,
	};
	__u32 l4 = sizeof(*eth) + ip->ihl * 4;
	if (ip->protocol == IPPROTO_TCP || ip->protocol == IPPROTO_UDP) {
		__be16 *ports = pkt_header(data, data_end, l4, 4);
		if (ports) {
			ev.sport = ports[0];
			ev.dport = ports[1];
		}
	} else if (ip->protocol == IPPROTO_ICMP) {
		__u8 *type = pkt_header(data, data_end, l4, 1);
		if (type)
			ev.icmp_type = *type;
	}
	emit_event(&ev);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";
