/*
 * dns-load: an open-loop DNS load generator, as a pod's C resolver library would send (bench/dns-proxy.ts).
 *
 *   dns-load HOST PORT RATE SECONDS SOCKETS NAMES TIMEOUT_MS
 *
 * Sends RATE A queries a second for SECONDS, each when due whether or not earlier ones were
 * answered, round robin over SOCKETS connected UDP sockets (as a resolver library reuses its
 * ports), for svc-<i % NAMES>.example.com. Answers are matched by socket and id; latency runs
 * from the send to the answer's arrival; a query not answered within TIMEOUT_MS is lost. Prints
 * one JSON line: {sent, answered, errors, lost, sendErrors, p50, p99, lagP99, sendUs} (µs).
 *
 * In C rather than in Node so that what is measured is the path, not the client's own event loop
 * and garbage collector (the Node client's send lag p99 was 2-4 ms at 10k queries/s).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int compare(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double percentile(double *values, size_t n, double p)
{
	if (n == 0)
		return -1;
	qsort(values, n, sizeof(double), compare);
	size_t i = (size_t)(p * n);
	return values[i >= n ? n - 1 : i];
}

static size_t encode_query(uint8_t *out, const char *name)
{
	size_t o = 12;
	memset(out, 0, 12);
	out[2] = 0x01; /* RD */
	out[5] = 1;    /* QDCOUNT */
	for (const char *label = name; *label;) {
		const char *dot = strchr(label, '.');
		size_t len = dot ? (size_t)(dot - label) : strlen(label);
		out[o++] = (uint8_t)len;
		memcpy(out + o, label, len);
		o += len;
		label += len + (dot ? 1 : 0);
	}
	out[o++] = 0;
	out[o++] = 0, out[o++] = 1; /* A */
	out[o++] = 0, out[o++] = 1; /* IN */
	return o;
}

int main(int argc, char **argv)
{
	if (argc != 8) {
		fprintf(stderr, "usage: dns-load HOST PORT RATE SECONDS SOCKETS NAMES TIMEOUT_MS\n");
		return 2;
	}
	const char *host = argv[1];
	int port = atoi(argv[2]), rate = atoi(argv[3]), seconds = atoi(argv[4]), nsockets = atoi(argv[5]), names = atoi(argv[6]);
	double timeout_us = atof(argv[7]) * 1000;
	long total = (long)rate * seconds;
	struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	if (inet_pton(AF_INET, host, &to.sin_addr) != 1 || nsockets < 1 || names < 1 || rate < 1) {
		fprintf(stderr, "dns-load: bad arguments\n");
		return 2;
	}
	int epoll_fd = epoll_create1(0);
	int *fds = calloc(nsockets, sizeof(int));
	uint16_t *next_id = calloc(nsockets, sizeof(uint16_t));
	double **pending = calloc(nsockets, sizeof(double *));
	long *open = calloc(nsockets, sizeof(long));
	for (int i = 0; i < nsockets; i++) {
		fds[i] = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
		if (fds[i] < 0 || connect(fds[i], (struct sockaddr *)&to, sizeof(to)) < 0) {
			perror("dns-load: socket");
			return 1;
		}
		pending[i] = calloc(65536, sizeof(double));
		next_id[i] = (uint16_t)(rand() & 0xffff);
		struct epoll_event ev = { .events = EPOLLIN, .data.u32 = (uint32_t)i };
		epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fds[i], &ev);
	}
	uint8_t (*templates)[300] = calloc(names, 300);
	size_t *lengths = calloc(names, sizeof(size_t));
	for (int i = 0; i < names; i++) {
		char name[64];
		snprintf(name, sizeof(name), "svc-%d.example.com", i);
		lengths[i] = encode_query(templates[i], name);
	}
	double *latencies = calloc(total, sizeof(double));
	double *lags = calloc(total, sizeof(double));
	long answered = 0, errors = 0, late = 0, send_errors = 0, sent = 0, outstanding = 0;
	double send_time = 0;
	double start = now_us();

	for (;;) {
		double now = now_us();
		long due = (long)((now - start) * rate / 1e6) + 1;
		if (due > total)
			due = total;
		for (; sent < due; sent++) {
			int k = (int)(sent % nsockets);
			uint16_t id = ++next_id[k];
			uint8_t q[300];
			size_t len = lengths[sent % names];
			memcpy(q, templates[sent % names], len);
			q[0] = (uint8_t)(id >> 8), q[1] = (uint8_t)id;
			double t = now_us();
			lags[sent] = t - start - sent * 1e6 / rate;
			if (pending[k][id] == 0)
				open[k]++, outstanding++;
			pending[k][id] = t;
			if (send(fds[k], q, len, 0) < 0)
				send_errors++;
			send_time += now_us() - t;
		}
		if (sent >= total && (outstanding == 0 || now_us() - start > seconds * 1e6 + timeout_us))
			break;
		/*
		 * Until the next query is due, take answers: sleeping to the microsecond (epoll_pwait2),
		 * never spinning, which would take one of the machine's two cores from what is measured.
		 */
		double next = start + (double)sent * 1e6 / rate;
		double wait_us = sent < total ? next - now_us() : 10000;
		if (wait_us < 0)
			wait_us = 0;
		struct timespec timeout = { .tv_sec = (time_t)(wait_us / 1e6), .tv_nsec = (long)((wait_us - (time_t)(wait_us / 1e6) * 1e6) * 1000) };
		struct epoll_event events[64];
		int n = epoll_pwait2(epoll_fd, events, 64, &timeout, NULL);
		for (int e = 0; e < n; e++) {
			int k = (int)events[e].data.u32;
			uint8_t buf[4096];
			ssize_t got;
			while ((got = recv(fds[k], buf, sizeof(buf), 0)) >= 12) {
				uint16_t id = (uint16_t)(buf[0] << 8 | buf[1]);
				double at = pending[k][id];
				if (at == 0)
					continue;
				pending[k][id] = 0;
				open[k]--, outstanding--;
				double us = now_us() - at;
				if (us > timeout_us)
					late++;
				else if ((buf[3] & 0xf) != 0)
					errors++;
				else
					latencies[answered++] = us;
			}
		}
	}
	long lost = outstanding + late;
	double p50 = percentile(latencies, answered, 0.5), p99 = percentile(latencies, answered, 0.99);
	double lag99 = percentile(lags, total, 0.99);
	char p50_text[32] = "null", p99_text[32] = "null";
	if (answered > 0) {
		snprintf(p50_text, sizeof(p50_text), "%.1f", p50);
		snprintf(p99_text, sizeof(p99_text), "%.1f", p99);
	}
	printf("{\"sent\":%ld,\"answered\":%ld,\"errors\":%ld,\"lost\":%ld,\"sendErrors\":%ld,\"p50\":%s,\"p99\":%s,\"lagP99\":%.1f,\"sendUs\":%.2f}\n", total, answered, errors,
	       lost, send_errors, p50_text, p99_text, lag99, send_time / total);
	return 0;
}
