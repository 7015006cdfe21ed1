/*
 * Sigkill latency for bench/runtime-overhead.ts: COUNT times, a child notes the time, then opens
 * PATH (which a Sigkill policy forbids); the parent takes the time the child is reaped as dead by
 * SIGKILL. Latency = reaped - noted: the forbidden call, the signal from the hook, the death, and
 * the parent's wakeup.
 *
 * Usage: sigkill-latency PATH COUNT
 * Prints one JSON object: {"runs":COUNT,"killed":K,"p50_us":…,"p99_us":…,"max_us":…}.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: %s PATH COUNT\n", argv[0]);
		return 2;
	}
	long count = atol(argv[2]);
	double *noted = mmap(NULL, sizeof(double), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	double *lat = calloc(count, sizeof(double));
	long killed = 0;
	for (long i = 0; i < count; i++) {
		pid_t pid = fork();
		if (pid == 0) {
			*noted = now_ns();
			int fd = open(argv[1], O_RDONLY);
			_exit(fd < 0 ? 1 : 0);
		}
		int status;
		waitpid(pid, &status, 0);
		double reaped = now_ns();
		if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
			lat[killed++] = (reaped - *noted) / 1e3;
	}
	qsort(lat, killed, sizeof(double), cmp);
	if (killed == 0) {
		printf("{\"runs\":%ld,\"killed\":0}\n", count);
		return 1;
	}
	printf("{\"runs\":%ld,\"killed\":%ld,\"p50_us\":%.1f,\"p99_us\":%.1f,\"max_us\":%.1f}\n", count, killed, lat[killed / 2],
	       lat[(killed * 99) / 100 < killed ? (killed * 99) / 100 : killed - 1], lat[killed - 1]);
	return 0;
}
