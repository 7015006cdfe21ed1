/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The lost-record convention between BPF producers and the TypeScript ring buffer reader
 * (src/ebpf/ringbuf.ts, option `lostCounter`).
 *
 * The kernel keeps no count of records it could not reserve: bpf_ringbuf_reserve() returns NULL
 * and bpf_ringbuf_output() returns -EAGAIN, and the record is simply gone. A reader that wants to
 * say "n events were dropped" needs the producer to count them. The convention is one
 * BPF_MAP_TYPE_PERCPU_ARRAY with a single __u64 at key 0: per-CPU, so concurrent producers on
 * different CPUs never contend for one cache line on exactly the path that runs when the system
 * is already overloaded; the reader sums the CPUs' slots.
 *
 *   DEFINE_RINGBUF_LOST_MAP(events_lost);
 *   ...
 *   struct my_event *e = ringbuf_reserve_or_count(&events, &events_lost, sizeof(*e));
 *   if (!e) return TC_ACT_OK;
 *   ...
 *   bpf_ringbuf_submit(e, 0);
 *
 *   // or, for data already on the stack:
 *   ringbuf_output_or_count(&events, &events_lost, &event, sizeof(event));
 *
 * Include after vmlinux.h (or linux/bpf.h) and <bpf/bpf_helpers.h>.
 */
#ifndef CILIATE_RINGBUF_LOST_H
#define CILIATE_RINGBUF_LOST_H

/* A per-CPU array of one __u64: the count of records that found the ring full. */
#define DEFINE_RINGBUF_LOST_MAP(name)                 \
	struct {                                      \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); \
		__uint(max_entries, 1);               \
		__type(key, __u32);                   \
		__type(value, __u64);                 \
	} name SEC(".maps")

/* Adds one to the lost counter. The add is atomic even though the slot is per-CPU: a program
 * interrupted by another program on the same CPU (a tracepoint firing inside tc, say) may count
 * too, and a plain read-modify-write would lose one of the two increments. */
static __always_inline void ringbuf_count_lost(void *lost_map)
{
	__u32 zero = 0;
	__u64 *lost = bpf_map_lookup_elem(lost_map, &zero);

	if (lost)
		__sync_fetch_and_add(lost, 1);
}

/* bpf_ringbuf_reserve(), counting the failure. `size` must be a constant the verifier can see
 * (the function is always inlined, so a sizeof() argument stays constant). Returns NULL when
 * the ring is full; the caller then simply returns. */
static __always_inline void *ringbuf_reserve_or_count(void *ring, void *lost_map, __u64 size)
{
	void *record = bpf_ringbuf_reserve(ring, size, 0);

	if (!record)
		ringbuf_count_lost(lost_map);
	return record;
}

/* bpf_ringbuf_output() (a copy into the ring), counting the failure. Returns the helper's result:
 * 0, or a negative errno (-EAGAIN when the ring is full). `flags` takes BPF_RB_NO_WAKEUP or
 * BPF_RB_FORCE_WAKEUP as usual. */
static __always_inline long ringbuf_output_or_count_flags(void *ring, void *lost_map, void *data, __u64 size,
							   __u64 flags)
{
	long err = bpf_ringbuf_output(ring, data, size, flags);

	if (err)
		ringbuf_count_lost(lost_map);
	return err;
}

#define ringbuf_output_or_count(ring, lost_map, data, size) \
	ringbuf_output_or_count_flags((ring), (lost_map), (void *)(data), (size), 0)

/* The wakeup flags for a record of `size` bytes about to be submitted: wake the reader only when
 * this record takes what waits in the ring past `wakeup_bytes`. A wakeup costs the producing CPU
 * microseconds (irq_work; in a VM an interprocessor interrupt and an exit), which at connection
 * setup rates is most of a packet's cost, so one is sent per batch: not per record, and not for
 * every record while the reader is still catching up. The reader of such a ring also drains it on
 * a timer (ringbuf.ts, option `drainIntervalMs`), which bounds how long records below the mark
 * wait, and covers the rare crossing that concurrent producers both count as another's. */
static __always_inline __u64 ringbuf_batched_wakeup(void *ring, __u64 size, __u64 wakeup_bytes)
{
	/* Includes this record: reserving moved the producer position past it, its 8-byte header and
	 * its padding to 8 bytes. */
	__u64 waiting = bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA);
	__u64 taken = (size + 8 + 7) & ~7ULL;

	return waiting >= wakeup_bytes && waiting - taken < wakeup_bytes ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

/* bpf_ringbuf_submit() with ringbuf_batched_wakeup()'s flags; `record` is a typed pointer. */
#define ringbuf_submit_batched(ring, record, wakeup_bytes) \
	bpf_ringbuf_submit((record), ringbuf_batched_wakeup((ring), sizeof(*(record)), (wakeup_bytes)))

#endif /* CILIATE_RINGBUF_LOST_H */
