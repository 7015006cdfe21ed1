/*
 * Workload for bench/runtime-overhead.ts: open(2) and close(2) one path in a loop, the syscall an
 * openat TracingPolicy hooks.
 *
 * Usage: openat-loop PATH COUNT [RATE]
 * RATE: opens a second at most (paced in steps of 100 opens); absent: as fast as it can.
 * Prints one JSON object: {"opens":COUNT,"ns_per_open":…,"cpu_ns_per_open":…}: wall time, and the
 * process's CPU time (user and kernel, the hooks' programs included), which other load on the
 * machine does not inflate.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static double now_ns(clockid_t clock)
{
	struct timespec ts;
	clock_gettime(clock, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	if (argc != 3 && argc != 4) {
		fprintf(stderr, "usage: %s PATH COUNT [RATE]\n", argv[0]);
		return 2;
	}
	long count = atol(argv[2]);
	double rate = argc == 4 ? atof(argv[3]) : 0;
	double start = now_ns(CLOCK_MONOTONIC);
	double cpu = now_ns(CLOCK_PROCESS_CPUTIME_ID);
	for (long i = 0; i < count; i++) {
		if (rate > 0 && i % 100 == 0) {
			double due = start + i * 1e9 / rate;
			double early = due - now_ns(CLOCK_MONOTONIC);
			if (early > 0) {
				struct timespec pause = { .tv_sec = (time_t)(early / 1e9), .tv_nsec = (long)early % 1000000000L };
				nanosleep(&pause, NULL);
			}
		}
		int fd = openat(AT_FDCWD, argv[1], O_RDONLY);
		if (fd < 0) {
			perror(argv[1]);
			return 1;
		}
		close(fd);
	}
	printf("{\"opens\":%ld,\"ns_per_open\":%.1f,\"cpu_ns_per_open\":%.1f}\n", count, (now_ns(CLOCK_MONOTONIC) - start) / count,
	       (now_ns(CLOCK_PROCESS_CPUTIME_ID) - cpu) / count);
	return 0;
}
