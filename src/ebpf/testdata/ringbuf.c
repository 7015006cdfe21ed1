// Fixture for ringbuf.test.ts, bench/ringbuf.ts and bench/flows.ts: every run of a program writes one record to
// the ring buffer `events`, numbered from the counter map `seq`, and counts the records that
// found the ring full in `events_lost` (the convention of src/ebpf/include/ringbuf_lost.h).
// Driven through BPF_PROG_TEST_RUN with `repeat`, so no network is needed.
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "../include/ringbuf_lost.h"

#define RB_TEST_MAGIC 0xc111a7e0u
#define TC_ACT_OK 0 // a macro of linux/pkt_cls.h, which vmlinux.h cannot carry

// 64 bytes, the record size the reader is benchmarked with.
struct rb_test_record {
	__u64 seq;
	__u32 magic;
	__u32 pkt_len;
	__u64 fill[6]; // fill[i] = seq * 8 + i: content the test can check without a side channel
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024); // tests shrink it with the maxEntries load option
} events SEC(".maps");

DEFINE_RINGBUF_LOST_MAP(events_lost);

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} seq SEC(".maps");

// Discard (reserve, then bpf_ringbuf_discard) every record whose seq % discard_every ==
// discard_every - 1; 0 disables it. Lets the test see DISCARD-flagged records skipped.
volatile const __u32 discard_every = 0;
// Non-zero: rb_reserve wakes the reader only once this many bytes wait (ringbuf_submit_batched).
volatile const __u64 wakeup_bytes = 0;
// Bytes per record of rb_output, to exercise lengths that are not a multiple of 8.
volatile const __u32 output_size = 64;

static __always_inline __u64 next_seq(void)
{
	__u32 zero = 0;
	__u64 *counter = bpf_map_lookup_elem(&seq, &zero);

	// Numbered before the reservation, so lost records leave gaps the test can see.
	return counter ? __sync_fetch_and_add(counter, 1) : 0;
}

SEC("tc")
int rb_reserve(struct __sk_buff *skb)
{
	__u64 n = next_seq();
	struct rb_test_record *rec = ringbuf_reserve_or_count(&events, &events_lost, sizeof(*rec));

	if (!rec)
		return TC_ACT_OK;
	rec->seq = n;
	rec->magic = RB_TEST_MAGIC;
	rec->pkt_len = skb->len;
	for (int i = 0; i < 6; i++)
		rec->fill[i] = n * 8 + i;
	if (discard_every && n % discard_every == discard_every - 1)
		bpf_ringbuf_discard(rec, 0);
	else if (wakeup_bytes)
		ringbuf_submit_batched(&events, rec, wakeup_bytes);
	else
		bpf_ringbuf_submit(rec, 0);
	return TC_ACT_OK;
}

SEC("tc")
int rb_output(struct __sk_buff *skb)
{
	struct rb_test_record rec = {};
	__u32 size = output_size;

	rec.seq = next_seq();
	rec.magic = RB_TEST_MAGIC;
	rec.pkt_len = skb->len;
	for (int i = 0; i < 6; i++)
		rec.fill[i] = rec.seq * 8 + i;
	if (size > sizeof(rec))
		size = sizeof(rec);
	ringbuf_output_or_count(&events, &events_lost, &rec, size);
	return TC_ACT_OK;
}

// Most bytes rb_copy copies: more than the largest datapath event (bench/flows.ts writes those).
#define RB_COPY_MAX 256

// Writes the test run's packet itself as the record: a bench can put records of its own
// making (datapath events) into a real ring, one run each.
SEC("tc")
int rb_copy(struct __sk_buff *skb)
{
	__u8 buf[RB_COPY_MAX] = {};
	__u32 len = skb->len;

	if (len == 0 || len > RB_COPY_MAX)
		return TC_ACT_OK;
	if (bpf_skb_load_bytes(skb, 0, buf, len) < 0)
		return TC_ACT_OK;
	ringbuf_output_or_count(&events, &events_lost, buf, len);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
