/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Datapath events for the observer: layouts, the ring buffer they go through, and the
 * send_trace_notify()/send_drop_notify() helpers the programs call at each decision.
 *
 * Every event starts with struct ciliate_event_hdr, whose first byte is Cilium's monitor event
 * type, so the reader can dispatch on one byte before it knows the rest of the layout. The
 * first CILIATE_EVENT_CAP_LEN bytes of the packet follow, so the observer decodes Ethernet, IP
 * and L4 headers itself instead of the datapath growing a field for each.
 *
 * TS codecs: src/datapath/events.ts, checked against this file through the object's BTF.
 */
#pragma once

#include "common.h"
#include "drop_reasons.h"
#include "maps.h"
#include "policy.h"
#include "ringbuf_lost.h"

/* Cilium's monitor message types (pkg/monitor/api/types.go). */
enum ciliate_event_type {
	CILIATE_EVENT_DROP = 1,
	CILIATE_EVENT_TRACE = 4,
	CILIATE_EVENT_POLICY_VERDICT = 5,
};

/* Trace observation points, numbered as Cilium's TRACE_* (Hubble's TraceObservationPoint
 * keeps the same numbers except TO_ENDPOINT, which it shows as 101). */
enum ciliate_trace_point {
	TRACE_TO_LXC = 0,
	TRACE_TO_PROXY = 1,
	TRACE_TO_HOST = 2,
	TRACE_TO_STACK = 3,
	TRACE_TO_OVERLAY = 4,
	TRACE_FROM_LXC = 5,
	TRACE_FROM_PROXY = 6,
	TRACE_FROM_HOST = 7,
	TRACE_FROM_STACK = 8,
	TRACE_FROM_OVERLAY = 9,
	TRACE_FROM_NETWORK = 10,
	TRACE_TO_NETWORK = 11,
};

/* Bytes of the packet copied into each event: enough for Ethernet + IPv4 with options + TCP. */
#define CILIATE_EVENT_CAP_LEN 128
/* The reader is woken once this much waits in ciliate_events (1/16 of the ring), and otherwise
 * drains it on a timer (src/agent/monitor.ts): connection setup then pays no wakeup per event. */
#define CILIATE_EVENTS_WAKEUP_BYTES (64 * 1024)

struct ciliate_event_hdr {
	__u8 type;		/* enum ciliate_event_type */
	__u8 subtype;		/* trace: enum ciliate_trace_point; drop: enum ciliate_drop_reason */
	__u16 source;		/* endpoint whose interface the packet was seen on, 0 if none */
	__u32 hash;		/* skb hash: groups the events of one flow */
	__u32 orig_len;		/* packet length on the wire */
	__u32 cap_len;		/* bytes of it in data[] */
	__u32 src_identity;
	__u32 dst_identity;
	__u32 ifindex;		/* interface the packet was seen on */
	__u16 dst_id;		/* destination endpoint id, 0 if not a local endpoint */
	__u8 reason;		/* trace: enum ct_status of the packet (Cilium's TRACE_REASON_*) */
	__u8 flags;		/* CILIATE_EVENT_F_* */
	__u64 timestamp_ns;	/* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
};

/* The CT lookup of the packet found it to be a reply (Hubble's is_reply). */
#define CILIATE_EVENT_F_REPLY 0x01
/* Observed on the way into an endpoint rather than out of one. */
#define CILIATE_EVENT_F_INGRESS 0x02
/* Reported by a socket hook (bpf_sock.c) before any packet existed: data[] holds the headers the
 * connection's first packet would have had (Ethernet with zero addresses, IPv4, then a TCP SYN or
 * a UDP header), made from the socket address, and hash is the socket cookie's low 32 bits. */
#define CILIATE_EVENT_F_SOCK 0x04

struct ciliate_trace_event {
	struct ciliate_event_hdr hdr;
	__u32 dst_ifindex;	/* where the packet is redirected to, 0 when handed to the stack */
	__u32 _pad;
	__u8 data[CILIATE_EVENT_CAP_LEN];
};

struct ciliate_drop_event {
	struct ciliate_event_hdr hdr;
	__s32 ext_error;	/* extra detail, e.g. the errno of a failed map update */
	__u32 line;		/* source line of the drop, for whoever debugs the datapath */
	__u8 data[CILIATE_EVENT_CAP_LEN];
};

/*
 * A policy decision on a new connection (Cilium's policy_verdict_notify): which endpoint's
 * policy was asked (endpoint_id, in `direction`), about whom (remote_identity, protocol, dport),
 * and what it said: the verdict, the kind of entry that decided (match_type, Cilium's
 * numbering) and that entry's cookie, the id of the rule it came from. hdr.subtype is 0;
 * hdr.reason is the conntrack status (always CT_NEW).
 */
struct ciliate_policy_verdict_event {
	struct ciliate_event_hdr hdr;
	__u32 remote_identity;
	__u32 cookie;		/* ciliate_policy_entry.cookie of the deciding entry; 0 on a miss */
	__u16 dport;		/* host order; ICMP: the ICMP type */
	__u16 endpoint_id;	/* the endpoint whose policy map decided */
	__u8 protocol;		/* IPPROTO_* */
	__u8 direction;		/* CILIATE_POLICY_INGRESS / _EGRESS */
	__u8 verdict;		/* enum ciliate_policy_verdict */
	__u8 match_type;	/* enum ciliate_policy_match */
	__u8 drop_reason;	/* enum ciliate_drop_reason when denied, 0 when allowed */
	__u8 _pad[7];
	__u8 data[CILIATE_EVENT_CAP_LEN];
};

/* What the caller knows about the packet when it reports it; kept small because it lives on the
 * caller's stack and the notify helpers are real calls (their frames count towards 512 bytes). */
/* Internal to ciliate_notify_info.flags, never in an event: conntrack has nothing new to say about
 * the packet (or did not look), so monitor aggregation medium and above sends no trace of it. */
#define CILIATE_NOTIFY_F_AGGREGATE 0x80
/* Internal too: the caller can hand a new connection to the node proxy (proxy.h), so a policy
 * entry with a proxy port allows it there; without this bit such an entry drops it. */
#define CILIATE_NOTIFY_F_PROXY_OK 0x40
/* Internal: the packet goes to the node proxy (a new connection whose allowing entry carries a
 * proxy port, or a packet of a connection conntrack marked CT_F_PROXY_REDIRECT). */
#define CILIATE_NOTIFY_F_TO_PROXY 0x20
#define CILIATE_NOTIFY_F_INTERNAL (CILIATE_NOTIFY_F_AGGREGATE | CILIATE_NOTIFY_F_PROXY_OK | CILIATE_NOTIFY_F_TO_PROXY)

struct ciliate_notify_info {
	__u32 src_identity;
	__u32 dst_identity;
	__u32 dst_ifindex;
	__s32 ext_error;
	__u32 line;
	__u16 endpoint_id;	/* the endpoint whose interface the packet is on (events' source), 0 if none */
	__u16 dst_id;
	__u8 reason;
	__u8 flags;
	/* Conntrack's rev_nat_index of the packet's connection (ipv4_parse_and_lookup), or the one
	 * a translated new connection is created with (lb_skb.h); 0: not a service connection. */
	__u16 rev_nat_index;
	/* The node proxy's port when policy sends a new connection there (CILIATE_NOTIFY_F_TO_PROXY). */
	__u16 proxy_port;
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} ciliate_events SEC(".maps");

DEFINE_RINGBUF_LOST_MAP(ciliate_events_lost);

/* --- ciliate_metrics: packets and bytes by verdict and direction (Cilium's cilium_metrics) ---
 * Counted in the kernel whether or not an event reaches user space, so `ciliate status` and the
 * metrics say how many packets were dropped for what, even when the event ring overflows. */

#define CILIATE_METRIC_INGRESS 1
#define CILIATE_METRIC_EGRESS 2

struct ciliate_metrics_key {
	__u8 reason;	/* a drop reason, 0 for forwarded (Cilium's REASON_FORWARDED) */
	__u8 dir;	/* CILIATE_METRIC_INGRESS or CILIATE_METRIC_EGRESS */
	__u16 _pad;
};

struct ciliate_metrics_value {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 1024);
	__type(key, struct ciliate_metrics_key);
	__type(value, struct ciliate_metrics_value);
} ciliate_metrics SEC(".maps");

/* Forwarded packets and bytes by direction (indexed by CILIATE_METRIC_*), apart from the drops'
 * hash: the verifier inlines a per-CPU array lookup into a few instructions, where a hash would
 * cost a helper call and a hash of the key on every forwarded packet. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, struct ciliate_metrics_value);
} ciliate_forward_metrics SEC(".maps");

static __always_inline void forward_account(__u32 bytes, __u32 dir)
{
	struct ciliate_metrics_value *value = bpf_map_lookup_elem(&ciliate_forward_metrics, &dir);

	if (value) {
		value->packets += 1;
		value->bytes += bytes;
	}
}

/* Counts one dropped packet; per-CPU values need no atomics. */
static __noinline void metrics_account(__u32 bytes, __u8 reason, __u8 dir)
{
	struct ciliate_metrics_key key = { .reason = reason, .dir = dir };
	struct ciliate_metrics_value *value = bpf_map_lookup_elem(&ciliate_metrics, &key);

	if (value) {
		value->packets += 1;
		value->bytes += bytes;
		return;
	}
	struct ciliate_metrics_value first = { .packets = 1, .bytes = bytes };

	bpf_map_update_elem(&ciliate_metrics, &key, &first, BPF_ANY);
}

/* Not inlined, like the two below: the signatures put the event layouts and enums into the BTF
 * the TS codecs are tested against (BTF only describes types that functions, globals and maps
 * use), and each object gets one copy of the event code instead of one per call site. */
static __noinline void event_hdr_fill(struct __sk_buff *skb, struct ciliate_event_hdr *hdr,
				      const struct ciliate_notify_info *info, enum ciliate_event_type type,
				      __u32 subtype)
{
	hdr->type = type;
	hdr->subtype = subtype;
	hdr->source = info->endpoint_id;
	hdr->hash = skb->hash;
	hdr->orig_len = skb->len;
	hdr->src_identity = info->src_identity;
	hdr->dst_identity = info->dst_identity;
	hdr->ifindex = skb->ifindex;
	hdr->dst_id = info->dst_id;
	hdr->reason = info->reason;
	hdr->flags = info->flags & ~CILIATE_NOTIFY_F_INTERNAL;
	hdr->timestamp_ns = bpf_ktime_get_ns();
}

/* Copies the packet's first bytes into `data`, zeroing the rest so no stale ring contents reach
 * user space. Returns how many bytes were captured. */
static __always_inline __u32 event_capture(struct __sk_buff *skb, __u8 *data)
{
	__u32 len = skb->len;

	__builtin_memset(data, 0, CILIATE_EVENT_CAP_LEN);
	if (len > CILIATE_EVENT_CAP_LEN)
		len = CILIATE_EVENT_CAP_LEN;
	/* bpf_skb_load_bytes() wants a length the verifier can bound from both sides. */
	if (len == 0 || bpf_skb_load_bytes(skb, 0, data, len) < 0)
		return 0;
	return len;
}

static __noinline void trace_event_fill(struct __sk_buff *skb, struct ciliate_trace_event *ev,
					const struct ciliate_notify_info *info, enum ciliate_trace_point point)
{
	event_hdr_fill(skb, &ev->hdr, info, CILIATE_EVENT_TRACE, point);
	ev->hdr.cap_len = event_capture(skb, ev->data);
	ev->dst_ifindex = info->dst_ifindex;
	ev->_pad = 0;
}

static __noinline void drop_event_fill(struct __sk_buff *skb, struct ciliate_drop_event *ev,
				       const struct ciliate_notify_info *info, enum ciliate_drop_reason reason)
{
	event_hdr_fill(skb, &ev->hdr, info, CILIATE_EVENT_DROP, reason);
	ev->hdr.cap_len = event_capture(skb, ev->data);
	ev->ext_error = info->ext_error;
	ev->line = info->line;
}

/* A policy check: what was asked and what policy_can_access() answered. The enums are typed
 * here (the event stores them in bytes) so the object's BTF carries them for the TS tests. */
struct ciliate_policy_decision {
	__u32 endpoint_id;
	__u32 remote_identity;
	__u16 dport;
	__u8 protocol;
	__u8 direction;
	enum ciliate_policy_verdict verdict;
	enum ciliate_policy_match match_type;
	__u32 cookie;
};

static __noinline void policy_verdict_event_fill(struct __sk_buff *skb, struct ciliate_policy_verdict_event *ev,
						 const struct ciliate_notify_info *info,
						 const struct ciliate_policy_decision *d)
{
	event_hdr_fill(skb, &ev->hdr, info, CILIATE_EVENT_POLICY_VERDICT, 0);
	ev->hdr.cap_len = event_capture(skb, ev->data);
	ev->remote_identity = d->remote_identity;
	ev->cookie = d->cookie;
	ev->dport = d->dport;
	ev->endpoint_id = d->endpoint_id;
	ev->protocol = d->protocol;
	ev->direction = d->direction;
	ev->verdict = d->verdict;
	ev->match_type = d->match_type;
	ev->drop_reason = d->verdict == CILIATE_POLICY_DENIED ? DROP_POLICY_DENY
			  : d->verdict == CILIATE_POLICY_ALLOWED ? 0 : DROP_POLICY;
	__builtin_memset(ev->_pad, 0, sizeof(ev->_pad));
}

/* Reports a policy decision. */
static __always_inline void send_policy_verdict_notify(struct __sk_buff *skb, const struct ciliate_notify_info *info,
						       const struct ciliate_policy_decision *d)
{
	struct ciliate_policy_verdict_event *ev;

	ev = ringbuf_reserve_or_count(&ciliate_events, &ciliate_events_lost, sizeof(*ev));
	if (!ev)
		return;
	policy_verdict_event_fill(skb, ev, info, d);
	ringbuf_submit_batched(&ciliate_events, ev, CILIATE_EVENTS_WAKEUP_BYTES);
}

/* Whether a trace at `point` is sent at the node's monitor aggregation level (Cilium's
 * emit_trace_notify): from lowest on, none where packets are received; from medium on, none of
 * a packet conntrack found nothing new in, so a bulk transfer does not pay a ring buffer record
 * per segment and bury the events that matter. */
static __always_inline bool trace_wanted(const struct ciliate_notify_info *info, enum ciliate_trace_point point)
{
	struct ciliate_monitor_config mon = monitor_config();

	if (mon.aggregation >= MONITOR_AGGREGATION_LOWEST) {
		switch (point) {
		case TRACE_FROM_LXC:
		case TRACE_FROM_PROXY:
		case TRACE_FROM_HOST:
		case TRACE_FROM_STACK:
		case TRACE_FROM_OVERLAY:
		case TRACE_FROM_NETWORK:
			return false;
		default:
			break;
		}
	}
	return mon.aggregation < MONITOR_AGGREGATION_MEDIUM || !(info->flags & CILIATE_NOTIFY_F_AGGREGATE);
}

/* Reports that the packet passed observation point `point`, as far as monitor aggregation wants. */
static __always_inline void send_trace_notify(struct __sk_buff *skb, const struct ciliate_notify_info *info,
					      enum ciliate_trace_point point)
{
	struct ciliate_trace_event *ev;

	if (!trace_wanted(info, point))
		return;

	ev = ringbuf_reserve_or_count(&ciliate_events, &ciliate_events_lost, sizeof(*ev));
	if (!ev)
		return;
	trace_event_fill(skb, ev, info, point);
	ringbuf_submit_batched(&ciliate_events, ev, CILIATE_EVENTS_WAKEUP_BYTES);
}

/* Reports a drop and returns TC_ACT_SHOT, so a caller drops with `return send_drop_notify(...)`. */
static __always_inline int send_drop_notify(struct __sk_buff *skb, const struct ciliate_notify_info *info,
					    enum ciliate_drop_reason reason)
{
	struct ciliate_drop_event *ev;

	metrics_account(skb->len, reason, (info->flags & CILIATE_EVENT_F_INGRESS) ? CILIATE_METRIC_INGRESS : CILIATE_METRIC_EGRESS);
	ev = ringbuf_reserve_or_count(&ciliate_events, &ciliate_events_lost, sizeof(*ev));
	if (!ev)
		return TC_ACT_SHOT;
	drop_event_fill(skb, ev, info, reason);
	ringbuf_submit_batched(&ciliate_events, ev, CILIATE_EVENTS_WAKEUP_BYTES);
	return TC_ACT_SHOT;
}

/* Reports a drop with the source line in the event: `return DROP(skb, &info, DROP_...)`. */
#define DROP(skb, info, reason)                                 \
	({                                                      \
		(info)->line = __LINE__;                        \
		send_drop_notify((skb), (info), (reason));      \
	})
