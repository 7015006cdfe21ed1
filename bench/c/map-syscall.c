/*
 * Baseline for bench/maps.ts: the cost of BPF map operations from C with plain bpf(2), no libbpf.
 *
 * Usage: map-syscall [MODE [KEYS [OPS [BATCH [BATCH_REPS]]]]]
 *   MODE        all | lookup | update | batch                    (default all)
 *   KEYS        keys pre-filled, 0..KEYS-1                       (default 10000)
 *   OPS         timed single lookups / single updates            (default 200000)
 *   BATCH       entries per BPF_MAP_UPDATE_BATCH call            (default 10000)
 *   BATCH_REPS  timed batch calls                                (default 20)
 *
 * Prints one JSON object on stdout with the per-operation cost in ns of each measured mode, e.g.
 *   {"lookup_ns":312.4,"update_ns":401.7,"batch_update_ns_per_elem":151.2}
 *
 * The map has the same shape as the TypeScript side (hash, key u32, value u64, 65536 entries), and
 * each loop reuses one prebuilt attr whose key/value pointers never change, exactly as BpfMap does,
 * so that the difference between the two is the cost of getting from JS into the syscall.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/bpf.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAX_ENTRIES 65536

/* The attr sizes BpfMap passes (src/ebpf/internal/attr.ts): the kernel copies `size` bytes, so
 * passing sizeof(union bpf_attr) here would make C do slightly different work than TS. */
#define ELEM_ATTR_SIZE (offsetof(union bpf_attr, flags) + sizeof(((union bpf_attr *)0)->flags))
#define BATCH_ATTR_SIZE (offsetof(union bpf_attr, batch.flags) + sizeof(((union bpf_attr *)0)->batch.flags))

static long sys_bpf(int cmd, union bpf_attr *attr, size_t size) {
	return syscall(__NR_bpf, cmd, attr, size);
}

static void die(const char *what) {
	fprintf(stderr, "map-syscall: %s: %s\n", what, strerror(errno));
	exit(1);
}

static uint64_t now_ns(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static unsigned long arg(int argc, char **argv, int i, unsigned long fallback) {
	if (argc <= i) return fallback;
	char *end;
	unsigned long v = strtoul(argv[i], &end, 10);
	if (*end != '\0' || v == 0) {
		fprintf(stderr, "map-syscall: argument %d (%s) is not a positive integer\n", i, argv[i]);
		exit(2);
	}
	return v;
}

static int create_map(void) {
	union bpf_attr attr;
	memset(&attr, 0, sizeof(attr));
	attr.map_type = BPF_MAP_TYPE_HASH;
	attr.key_size = sizeof(uint32_t);
	attr.value_size = sizeof(uint64_t);
	attr.max_entries = MAX_ENTRIES;
	strncpy(attr.map_name, "bench_maps_c", sizeof(attr.map_name) - 1);
	int fd = (int)sys_bpf(BPF_MAP_CREATE, &attr, sizeof(attr));
	if (fd < 0) die("BPF_MAP_CREATE");
	return fd;
}

/* Single-element loop over keys 0..keys-1 round-robin; returns ns per op. */
static double single_ops(int fd, int cmd, uint32_t keys, unsigned long ops) {
	uint32_t key = 0;
	uint64_t value = 0;
	union bpf_attr attr;
	memset(&attr, 0, sizeof(attr));
	attr.map_fd = fd;
	attr.key = (uint64_t)(uintptr_t)&key;
	attr.value = (uint64_t)(uintptr_t)&value;
	attr.flags = BPF_ANY;

	/* Warm the caches and branch predictors the way the TS side is warmed by its JIT pass. */
	unsigned long warm = ops / 10 + 1;
	for (unsigned long i = 0; i < warm; i++) {
		value = i;
		if (sys_bpf(cmd, &attr, ELEM_ATTR_SIZE) < 0) die(cmd == BPF_MAP_LOOKUP_ELEM ? "lookup" : "update");
		if (++key == keys) key = 0;
	}
	key = 0;
	uint64_t start = now_ns();
	for (unsigned long i = 0; i < ops; i++) {
		value = i; /* what the TS side writes is a precomputed value too */
		if (sys_bpf(cmd, &attr, ELEM_ATTR_SIZE) < 0) die(cmd == BPF_MAP_LOOKUP_ELEM ? "lookup" : "update");
		if (++key == keys) key = 0;
	}
	return (double)(now_ns() - start) / (double)ops;
}

/* BPF_MAP_UPDATE_BATCH of `batch` entries, `reps` times; returns ns per element. */
static double batch_update(int fd, uint32_t batch, unsigned long reps) {
	uint32_t *keys = calloc(batch, sizeof(*keys));
	uint64_t *values = calloc(batch, sizeof(*values));
	if (!keys || !values) die("calloc");
	for (uint32_t i = 0; i < batch; i++) {
		keys[i] = i;
		values[i] = (uint64_t)i * 3;
	}
	union bpf_attr attr;
	memset(&attr, 0, sizeof(attr));
	attr.batch.map_fd = fd;
	attr.batch.keys = (uint64_t)(uintptr_t)keys;
	attr.batch.values = (uint64_t)(uintptr_t)values;
	attr.batch.elem_flags = BPF_ANY;

	attr.batch.count = batch; /* warm-up call */
	if (sys_bpf(BPF_MAP_UPDATE_BATCH, &attr, BATCH_ATTR_SIZE) < 0) die("BPF_MAP_UPDATE_BATCH");
	uint64_t start = now_ns();
	for (unsigned long r = 0; r < reps; r++) {
		attr.batch.count = batch; /* the kernel overwrites it with the number written */
		if (sys_bpf(BPF_MAP_UPDATE_BATCH, &attr, BATCH_ATTR_SIZE) < 0) die("BPF_MAP_UPDATE_BATCH");
		if (attr.batch.count != batch) {
			fprintf(stderr, "map-syscall: batch wrote %u of %u\n", attr.batch.count, batch);
			exit(1);
		}
	}
	double per_elem = (double)(now_ns() - start) / ((double)reps * batch);
	free(keys);
	free(values);
	return per_elem;
}

int main(int argc, char **argv) {
	const char *mode = argc > 1 ? argv[1] : "all";
	unsigned long keys = arg(argc, argv, 2, 10000);
	unsigned long ops = arg(argc, argv, 3, 200000);
	unsigned long batch = arg(argc, argv, 4, 10000);
	unsigned long reps = arg(argc, argv, 5, 20);
	int all = strcmp(mode, "all") == 0;
	if (!all && strcmp(mode, "lookup") != 0 && strcmp(mode, "update") != 0 && strcmp(mode, "batch") != 0) {
		fprintf(stderr, "map-syscall: unknown mode %s (want all, lookup, update or batch)\n", mode);
		return 2;
	}
	if (keys > MAX_ENTRIES || batch > MAX_ENTRIES) {
		fprintf(stderr, "map-syscall: KEYS and BATCH must be at most %d\n", MAX_ENTRIES);
		return 2;
	}

	int fd = create_map();
	/* Pre-fill so lookups hit and updates replace, as on the TS side. */
	uint32_t key;
	uint64_t value;
	union bpf_attr attr;
	memset(&attr, 0, sizeof(attr));
	attr.map_fd = fd;
	attr.key = (uint64_t)(uintptr_t)&key;
	attr.value = (uint64_t)(uintptr_t)&value;
	for (key = 0; key < keys; key++) {
		value = key;
		if (sys_bpf(BPF_MAP_UPDATE_ELEM, &attr, ELEM_ATTR_SIZE) < 0) die("pre-filling");
	}

	const char *sep = "";
	printf("{");
	if (all || strcmp(mode, "lookup") == 0) {
		printf("%s\"lookup_ns\":%.1f", sep, single_ops(fd, BPF_MAP_LOOKUP_ELEM, (uint32_t)keys, ops));
		sep = ",";
	}
	if (all || strcmp(mode, "update") == 0) {
		printf("%s\"update_ns\":%.1f", sep, single_ops(fd, BPF_MAP_UPDATE_ELEM, (uint32_t)keys, ops));
		sep = ",";
	}
	if (all || strcmp(mode, "batch") == 0) {
		printf("%s\"batch_update_ns_per_elem\":%.1f", sep, batch_update(fd, (uint32_t)batch, reps));
	}
	printf("}\n");
	close(fd);
	return 0;
}
