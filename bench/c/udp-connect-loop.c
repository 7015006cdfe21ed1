/*
 * connect() cost for bench/sock-enforce.ts: one UDP socket connected N times to ADDR:PORT (a UDP
 * connect only sets the peer: no packet, so what is timed is the system call and the cgroup
 * connect4 hooks it runs).
 *
 * Usage: udp-connect-loop ADDR PORT N   prints {"connects":N,"ns_per_connect":X,"errors":E}
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: udp-connect-loop ADDR PORT N\n");
		return 2;
	}
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[2])) };
	if (inet_pton(AF_INET, argv[1], &sin.sin_addr) != 1) {
		fprintf(stderr, "udp-connect-loop: bad address %s\n", argv[1]);
		return 2;
	}
	long n = atol(argv[3]), errors = 0;
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	if (fd < 0) {
		perror("socket");
		return 1;
	}
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (long i = 0; i < n; i++)
		if (connect(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0)
			errors++;
	clock_gettime(CLOCK_MONOTONIC, &b);
	double ns = (double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec);
	printf("{\"connects\":%ld,\"ns_per_connect\":%.1f,\"errors\":%ld}\n", n, ns / (double)n, errors);
	close(fd);
	return 0;
}
