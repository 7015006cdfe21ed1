/*
 * One process's cost for bench/cni.ts: runs a command and reports its wall time and peak RSS as
 * the kernel accounts them (wait4's rusage), which a Node parent cannot read for its children.
 *
 * Usage:
 *   run-rusage STDIN_FILE STDOUT_FILE COMMAND [ARGS...]
 * The command runs with the environment run-rusage got, stdin from STDIN_FILE, stdout into
 * STDOUT_FILE (truncated) and stderr inherited. Prints one JSON object:
 *   {"wall_ns":N,"maxrss_kb":K,"user_us":U,"sys_us":S,"exit":E}
 * wall_ns runs from just before fork to wait4's return; exit is the exit status, or 128+signal.
 * ru_maxrss is the largest resident set of the process over its life, across exec (a wrapper
 * script that execs node reports node's peak).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
	if (argc < 4) {
		fprintf(stderr, "usage: run-rusage STDIN_FILE STDOUT_FILE COMMAND [ARGS...]\n");
		return 2;
	}
	int in = open(argv[1], O_RDONLY | O_CLOEXEC);
	int out = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (in < 0 || out < 0) {
		fprintf(stderr, "run-rusage: opening %s / %s: %s\n", argv[1], argv[2], strerror(errno));
		return 2;
	}
	long long start = now_ns();
	pid_t pid = fork();
	if (pid < 0) {
		fprintf(stderr, "run-rusage: fork: %s\n", strerror(errno));
		return 2;
	}
	if (pid == 0) {
		if (dup2(in, 0) < 0 || dup2(out, 1) < 0) _exit(127);
		execvp(argv[3], &argv[3]);
		fprintf(stderr, "run-rusage: exec %s: %s\n", argv[3], strerror(errno));
		_exit(127);
	}
	int status;
	struct rusage usage;
	if (wait4(pid, &status, 0, &usage) < 0) {
		fprintf(stderr, "run-rusage: wait4: %s\n", strerror(errno));
		return 2;
	}
	long long wall = now_ns() - start;
	int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
	printf("{\"wall_ns\":%lld,\"maxrss_kb\":%ld,\"user_us\":%lld,\"sys_us\":%lld,\"exit\":%d}\n", wall, usage.ru_maxrss,
	       (long long)usage.ru_utime.tv_sec * 1000000LL + usage.ru_utime.tv_usec,
	       (long long)usage.ru_stime.tv_sec * 1000000LL + usage.ru_stime.tv_usec, code);
	return 0;
}
