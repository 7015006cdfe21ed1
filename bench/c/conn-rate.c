/*
 * New-connection rate for bench/datapath.ts: a TCP_CRR-like loop (netperf's connect/request/
 * response/close), one connection at a time, so every connection pays a full handshake, one
 * 1-byte request and 1-byte response, and the teardown through the datapath under test.
 *
 * Usage:
 *   conn-rate server PORT            accept loop on 0.0.0.0:PORT; prints "ready" once listening
 *   conn-rate client ADDR PORT SECS  connect/write/read/close in a loop for SECS seconds
 *
 * The server answers each request and closes first, so the TIME_WAIT state stays on the server
 * (where a reused client port is accepted through the timestamp check) and the client's ports are
 * free again as soon as its close is acknowledged: a run of tens of thousands of connections never
 * runs out of ephemeral ports. The client prints one JSON object:
 *   {"connections":N,"seconds":S,"conn_per_s":R,"errors":E}
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_s(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void die(const char *what) {
	fprintf(stderr, "conn-rate: %s: %s\n", what, strerror(errno));
	exit(1);
}

static int server(int port) {
	int one = 1;
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0) die("socket");
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons((unsigned short)port), .sin_addr.s_addr = htonl(INADDR_ANY) };
	if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) die("bind");
	if (listen(fd, 4096) < 0) die("listen");
	printf("ready\n");
	fflush(stdout);
	for (;;) {
		int c = accept(fd, NULL, NULL);
		if (c < 0) {
			if (errno == EINTR || errno == ECONNABORTED) continue;
			die("accept");
		}
		char b;
		if (read(c, &b, 1) == 1) {
			if (write(c, &b, 1) < 0) { /* the client went away; nothing to answer */ }
		}
		close(c);
	}
	return 0;
}

static int client(const char *host, int port, double secs) {
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons((unsigned short)port) };
	if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
		fprintf(stderr, "conn-rate: bad address %s\n", host);
		return 2;
	}
	unsigned long connections = 0, errors = 0;
	int one = 1;
	double start = now_s(), end = start + secs, t = start;
	while (t < end) {
		int fd = socket(AF_INET, SOCK_STREAM, 0);
		if (fd < 0) die("socket");
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		char b = 'x';
		if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0 && write(fd, &b, 1) == 1 && read(fd, &b, 1) == 1) {
			/* Wait for the server's FIN, so the close below is the passive one. */
			if (read(fd, &b, 1) == 0) connections++;
			else errors++;
		} else {
			errors++;
		}
		close(fd);
		/* The clock is read every 64 connections only; a 3 s sample has tens of thousands. */
		if (((connections + errors) & 63) == 0) t = now_s();
		if (errors > 1000 && errors > connections) break;
	}
	double elapsed = now_s() - start;
	printf("{\"connections\":%lu,\"seconds\":%.6f,\"conn_per_s\":%.1f,\"errors\":%lu}\n", connections, elapsed,
	       (double)connections / elapsed, errors);
	return errors > connections ? 1 : 0;
}

int main(int argc, char **argv) {
	signal(SIGPIPE, SIG_IGN);
	if (argc == 3 && strcmp(argv[1], "server") == 0) return server(atoi(argv[2]));
	if (argc == 5 && strcmp(argv[1], "client") == 0) return client(argv[2], atoi(argv[3]), atof(argv[4]));
	fprintf(stderr, "usage: conn-rate server PORT | conn-rate client ADDR PORT SECS\n");
	return 2;
}
