/*
 * dns-responder: an authoritative DNS server for benchmarks (bench/dns-proxy.ts), answering A
 * queries over UDP from a fixed table, NXDOMAIN otherwise.
 *
 *   dns-responder ADDRESS TTL PORT[,PORT...] NAME=IPV4 [NAME=IPV4 ...]
 *
 * Prints "ready" once bound. In C rather than Node so that the resolver's own event loop and
 * garbage collector (and its CPU, on a 2-core machine shared with the agent and the client) are
 * not what the benchmark measures: a resolver such as CoreDNS answers in microseconds.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BATCH 64
#define MAX_RECORDS 4096

static struct {
	char name[256];
	uint32_t ip;
} records[MAX_RECORDS];
static int record_count;

/* The question's name, lower case with dots; the offset past QTYPE/QCLASS; -1 if malformed. */
static long question(const uint8_t *msg, size_t len, char *name, uint16_t *qtype)
{
	size_t o = 12, n = 0;
	if (len < 12 || (msg[4] << 8 | msg[5]) != 1)
		return -1;
	for (;;) {
		if (o >= len)
			return -1;
		uint8_t l = msg[o++];
		if (l == 0)
			break;
		if (l > 63 || o + l > len || n + l + 2 > 255)
			return -1;
		if (n > 0)
			name[n++] = '.';
		for (uint8_t k = 0; k < l; k++)
			name[n++] = (char)tolower(msg[o + k]);
		o += l;
	}
	name[n] = 0;
	if (o + 4 > len)
		return -1;
	*qtype = (uint16_t)(msg[o] << 8 | msg[o + 1]);
	return (long)o + 4;
}

static size_t respond(const uint8_t *msg, size_t len, uint8_t *out, uint32_t ttl)
{
	char name[256];
	uint16_t qtype;
	long end = question(msg, len, name, &qtype);
	if (end < 0 || (msg[2] & 0x80))
		return 0;
	const uint32_t *ip = NULL;
	int known = 0;
	for (int i = 0; i < record_count; i++) {
		if (strcmp(records[i].name, name) == 0) {
			known = 1;
			ip = &records[i].ip;
			break;
		}
	}
	memcpy(out, msg, (size_t)end);
	out[2] = (uint8_t)(0x84 | (msg[2] & 0x01)); /* QR, AA, RD as asked */
	out[3] = known ? 0 : 3;
	out[4] = 0, out[5] = 1;
	memset(out + 6, 0, 6);
	size_t o = (size_t)end;
	if (known && qtype == 1) {
		out[7] = 1;
		uint8_t rr[16] = { 0xc0, 0x0c, 0, 1, 0, 1, (uint8_t)(ttl >> 24), (uint8_t)(ttl >> 16), (uint8_t)(ttl >> 8), (uint8_t)ttl, 0, 4 };
		memcpy(rr + 12, ip, 4);
		memcpy(out + o, rr, 16);
		o += 16;
	}
	return o;
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: dns-responder ADDRESS TTL PORT[,PORT...] NAME=IPV4 ...\n");
		return 2;
	}
	uint32_t ttl = (uint32_t)strtoul(argv[2], NULL, 10);
	for (int i = 4; i < argc && record_count < MAX_RECORDS; i++) {
		char *eq = strchr(argv[i], '=');
		if (!eq || eq - argv[i] >= 255 || inet_pton(AF_INET, eq + 1, &records[record_count].ip) != 1) {
			fprintf(stderr, "dns-responder: bad record %s\n", argv[i]);
			return 2;
		}
		memcpy(records[record_count].name, argv[i], (size_t)(eq - argv[i]));
		for (char *c = records[record_count].name; *c; c++)
			*c = (char)tolower(*c);
		record_count++;
	}
	int epoll_fd = epoll_create1(0);
	char *ports = strdup(argv[3]);
	for (char *port = strtok(ports, ","); port; port = strtok(NULL, ",")) {
		struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(port)) };
		int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
		if (inet_pton(AF_INET, argv[1], &addr.sin_addr) != 1 || fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
			perror("dns-responder: bind");
			return 1;
		}
		struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };
		epoll_ctl(epoll_fd, EPOLL_CTL_ADD, fd, &ev);
	}
	printf("ready\n");
	fflush(stdout);
	static uint8_t in[BATCH][4096], out[BATCH][4096 + 16];
	struct mmsghdr msgs[BATCH], replies[BATCH];
	struct iovec iov[BATCH], reply_iov[BATCH];
	struct sockaddr_in from[BATCH];
	for (;;) {
		struct epoll_event events[8];
		int n = epoll_wait(epoll_fd, events, 8, -1);
		for (int e = 0; e < n; e++) {
			int fd = events[e].data.fd;
			for (;;) {
				for (int i = 0; i < BATCH; i++) {
					iov[i] = (struct iovec){ .iov_base = in[i], .iov_len = sizeof(in[i]) };
					msgs[i].msg_hdr = (struct msghdr){ .msg_name = &from[i], .msg_namelen = sizeof(from[i]), .msg_iov = &iov[i], .msg_iovlen = 1 };
				}
				int got = recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, NULL);
				if (got <= 0)
					break;
				int count = 0;
				for (int i = 0; i < got; i++) {
					size_t len = respond(in[i], msgs[i].msg_len, out[count], ttl);
					if (len == 0)
						continue;
					reply_iov[count] = (struct iovec){ .iov_base = out[count], .iov_len = len };
					replies[count].msg_hdr = (struct msghdr){ .msg_name = &from[i], .msg_namelen = sizeof(from[i]), .msg_iov = &reply_iov[count], .msg_iovlen = 1 };
					count++;
				}
				if (count > 0)
					sendmmsg(fd, replies, (unsigned)count, 0);
				if (got < BATCH)
					break;
			}
		}
	}
}
