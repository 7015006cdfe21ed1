/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The DNS proxy's fast path (src/fqdn/fast-path.ts): a thread of its own that answers, for pod
 * DNS over UDP, the queries whose verdict and answered addresses the JavaScript proxy has already
 * decided, with no JavaScript, allocation or garbage collection on the way. At 10k queries/s the
 * worker's scavenges (3-16 ms, measured) and per-query work (~70 us) made the tail latency;
 * here a query costs a map lookup and two sends.
 *
 * It owns the redirect listener (transparent UDP on host:port). For each datagram:
 *   - the sender's token bucket (the per-endpoint rate limit) is taken first;
 *   - the original resolver is read from the datapath's ciliate_proxy4 (bpf/lib/proxy.h);
 *   - the question is parsed; a name outside [a-z0-9_-] labels, more than one question, or
 *     anything unusual goes to JavaScript;
 *   - the verdict kept for (sender, resolver, name) decides: none kept → JavaScript; denied →
 *     answered at once with the rcode JavaScript gave; allowed → forwarded on a socket carrying
 *     the sender's identity mark, under a fresh random id.
 * An answer from the resolver (same address and port, the id, the same question) goes back to the
 * pod as from the resolver (raw socket) only when every address in it is known to have been told
 * to the agent for (sender, name) for at least ANSWER_MARGIN_MS more; otherwise the query is given
 * to JavaScript, which asks again, waits for the policy to take the addresses, and answers. So an
 * answer never reaches a pod before its addresses are allowed, as on the slow path.
 *
 * What JavaScript decided is kept only while the agent's epoch (shared Int32s the agent bumps:
 * EPOCH_ALL at every change of policy, ipcache or endpoints; EPOCH_TOLD when what was told of
 * addresses may no longer hold) is the one it was decided under: a narrowed rule refuses the very
 * next query. "Given to JavaScript" means sent to the worker's handoff socket on
 * 127.0.0.1 as [sender IPv4 (4)][sender port (2)][the datagram].
 *
 * Every query answered here leaves a record for its flow (drain()); what went to JavaScript makes
 * its own.
 *
 * Exports:
 *   start(options) -> undefined, throws on failure
 *   stop() -> undefined
 *   sourcePort() -> number          the handoff sender's port (the worker accepts only it)
 *   allow(src, resolver, rport, name, endpoint, mark, allowed, rcode, epoch) -> undefined
 *   learned(src, name, ip, remainingMs, toldEpoch) -> undefined  ip: 4 or 16 bytes (Buffer)
 *   drain() -> Buffer | null        flow records (see FLOW_*), oldest first
 *   counters() -> number[]          FAST_COUNTERS order (fast-path.ts)
 *   layout() -> number[]            [proxy4 key size, proxy4 value size, flow header size]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/udp.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <node_api.h>

#ifndef IP_TRANSPARENT
#define IP_TRANSPARENT 19
#endif

#define BATCH 64
#define MAX_DNS 512
#define MAX_NAME 254
#define VERDICT_SLOTS 8192
#define LEARNED_SLOTS 65536
#define MAX_PENDING 4096
#define MAX_MARKS 256
#define MAX_IPS 64
#define SOURCE_BUCKETS 1024
#define ANSWER_MARGIN_MS 2000
#define FLOW_RING_BYTES (8u << 20)
#define TICK_MS 50
/* How often the realtime thread checks its CPU use against its budget, and how long it stays ordinary past it. */
#define GOVERN_MS 100
#define BACKOFF_MS 1000
/* The agent's epochs (src/fqdn/redirect-protocol.ts). */
#define EPOCH_ALL 0
#define EPOCH_TOLD 1

/* bpf/lib/proxy.h's proxy4_key and proxy4_value (src/datapath/maps.ts proxy4Key/proxy4Value; layout() is tested against them). */
struct proxy4_key {
	uint32_t saddr;
	uint16_t sport;
	uint8_t nexthdr;
	uint8_t pad;
};
struct proxy4_value {
	uint32_t orig_daddr;
	uint16_t orig_dport;
	uint16_t handoff_port;
	uint32_t identity;
};

/* One flow record: this header, then the response as the pod got it. Kinds: */
#define FLOW_FORWARDED 1
#define FLOW_DENIED 2
#define FLOW_TIMEOUT 3
struct flow_header {
	uint32_t length; /* header + response */
	uint8_t kind;
	uint8_t pad;
	uint16_t source_port;
	uint32_t endpoint;
	uint32_t source;   /* network order */
	uint32_t resolver; /* network order */
	uint16_t resolver_port;
	uint16_t pad2;
	uint64_t request_ns;
	uint64_t response_ns;
};

/* FAST_COUNTERS (fast-path.ts) in this order. */
enum {
	C_DATAGRAMS,
	C_FORWARDED,
	C_DENIED,
	C_TIMEOUTS,
	C_HANDED_OFF,
	C_RATE_LIMITED,
	C_NO_ORIGIN,
	C_SEND_FAILURES,
	C_FLOWS_LOST,
	C_IN_FLIGHT,
	C_REALTIME,
	C_REALTIME_BACKOFFS,
	C_COUNT
};

struct verdict {
	uint8_t used;
	uint8_t allowed;
	uint8_t rcode;
	uint8_t name_len;
	int32_t epoch;
	uint32_t source;
	uint32_t resolver;
	uint16_t resolver_port;
	uint32_t endpoint;
	uint32_t mark;
	char name[MAX_NAME];
};

struct learned {
	uint8_t used;
	int32_t epoch;
	uint32_t source;
	uint64_t name_hash;
	uint8_t ip[16];
	int64_t until_ms;
};

struct pending {
	uint8_t used;
	uint16_t upstream_id;
	uint16_t query_len;
	uint16_t question_end;
	uint16_t source_port;
	uint32_t source;
	uint32_t resolver;
	uint16_t resolver_port;
	uint32_t endpoint;
	uint64_t name_hash;
	int64_t deadline_ms;
	uint64_t request_ns;
	uint8_t query[MAX_DNS];
};

struct upstream {
	uint32_t mark;
	int fd;
};

struct bucket {
	uint32_t source;
	double tokens;
	int64_t at_us;
};

static struct {
	pthread_mutex_t lock;
	pthread_t thread;
	int running;
	atomic_int stopping;
	int listen_fd, raw_fd, handoff_fd, wake_fd, epoll_fd, map_fd;
	char pin[512];
	struct sockaddr_in handoff_to;
	int32_t *epoch; /* the agent's shared epoch */
	napi_ref epoch_ref;
	int32_t table_epoch, told_epoch;
	double rate;
	uint32_t timeout_ms;
	uint32_t max_in_flight, max_per_source;
	uint32_t realtime_budget; /* percent of one CPU; 0: never realtime */
	int64_t govern_at_ms, govern_cpu_us, backoff_until_ms;
	uint64_t hash_key[2];
	uint64_t rng;
	struct verdict *verdicts;
	uint32_t verdict_count;
	struct learned *learned;
	uint32_t learned_count;
	struct pending *pending;
	uint16_t *by_id; /* upstream id → pending slot + 1 (0: none) */
	uint16_t free_slots[MAX_PENDING]; /* a stack of the unused pending slots */
	uint32_t free_count;
	int64_t last_expire_ms;
	uint32_t in_flight;
	uint16_t per_source[SOURCE_BUCKETS];
	struct upstream upstreams[MAX_MARKS];
	int upstream_count;
	struct bucket buckets[SOURCE_BUCKETS];
	uint8_t *ring;
	uint32_t ring_used;
	double counters[C_COUNT];
} fp = { .listen_fd = -1, .raw_fd = -1, .handoff_fd = -1, .wake_fd = -1, .epoll_fd = -1, .map_fd = -1 };

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static uint64_t wall_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static uint64_t next_random(void)
{
	/* xorshift64*, seeded from getrandom: ids a pod cannot predict from earlier ones would need a CSPRNG; the id only has to be unpredictable to a spoofing resolver, as the JS proxy's randomInt. */
	fp.rng ^= fp.rng >> 12;
	fp.rng ^= fp.rng << 25;
	fp.rng ^= fp.rng >> 27;
	return fp.rng * 0x2545F4914F6CDD1Dull;
}

/* SipHash-2-4 of a name under a secret key: the kept tables are indexed by what pods choose. */
#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                                       \
	do {                                                                                                           \
		v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);                                            \
		v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                                                               \
		v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                                                               \
		v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);                                            \
	} while (0)
static uint64_t siphash(const void *data, size_t len)
{
	const uint8_t *in = data;
	uint64_t k0 = fp.hash_key[0], k1 = fp.hash_key[1];
	uint64_t v0 = 0x736f6d6570736575ull ^ k0, v1 = 0x646f72616e646f6dull ^ k1;
	uint64_t v2 = 0x6c7967656e657261ull ^ k0, v3 = 0x7465646279746573ull ^ k1;
	uint64_t b = (uint64_t)len << 56, m;
	size_t i, left = len & 7;

	for (i = 0; i + 8 <= len; i += 8) {
		memcpy(&m, in + i, 8);
		v3 ^= m;
		SIPROUND;
		SIPROUND;
		v0 ^= m;
	}
	for (size_t j = 0; j < left; j++)
		b |= (uint64_t)in[i + j] << (8 * j);
	v3 ^= b;
	SIPROUND;
	SIPROUND;
	v0 ^= b;
	v2 ^= 0xff;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	return v0 ^ v1 ^ v2 ^ v3;
}

static uint64_t mix(uint64_t h, uint64_t x)
{
	uint64_t words[2] = { h, x };
	return siphash(words, sizeof(words));
}

/*
 * What JavaScript decided goes whole when its epoch moves on (or a table fills): verdicts with
 * EPOCH_ALL (any change of policy, ipcache or endpoints), addresses told to the agent with
 * EPOCH_TOLD (endpoints changed, or the FQDN cache let addresses go early). Lock held.
 */
static void refresh_epoch(void)
{
	int32_t live = __atomic_load_n(&fp.epoch[EPOCH_ALL], __ATOMIC_ACQUIRE);
	int32_t told = __atomic_load_n(&fp.epoch[EPOCH_TOLD], __ATOMIC_ACQUIRE);

	if (live != fp.table_epoch) {
		fp.table_epoch = live;
		memset(fp.verdicts, 0, sizeof(struct verdict) * VERDICT_SLOTS);
		fp.verdict_count = 0;
	}
	if (told != fp.told_epoch) {
		fp.told_epoch = told;
		memset(fp.learned, 0, sizeof(struct learned) * LEARNED_SLOTS);
		fp.learned_count = 0;
	}
}

static uint32_t verdict_slot(uint32_t source, uint32_t resolver, uint16_t rport, const char *name, size_t len)
{
	return (uint32_t)mix(mix(siphash(name, len), ((uint64_t)source << 32) | resolver), rport) & (VERDICT_SLOTS - 1);
}

static struct verdict *find_verdict(uint32_t source, uint32_t resolver, uint16_t rport, const char *name, size_t len)
{
	uint32_t i = verdict_slot(source, resolver, rport, name, len);

	for (uint32_t n = 0; n < VERDICT_SLOTS; n++, i = (i + 1) & (VERDICT_SLOTS - 1)) {
		struct verdict *v = &fp.verdicts[i];
		if (!v->used)
			return NULL;
		if (v->source == source && v->resolver == resolver && v->resolver_port == rport && v->name_len == len && !memcmp(v->name, name, len))
			return v;
	}
	return NULL;
}

static uint32_t learned_slot(uint32_t source, uint64_t name_hash, const uint8_t ip[16])
{
	uint64_t a, b;
	memcpy(&a, ip, 8);
	memcpy(&b, ip + 8, 8);
	return (uint32_t)mix(mix(mix(name_hash, source), a), b) & (LEARNED_SLOTS - 1);
}

static struct learned *find_learned(uint32_t source, uint64_t name_hash, const uint8_t ip[16], int insert)
{
	uint32_t i = learned_slot(source, name_hash, ip);

	for (uint32_t n = 0; n < LEARNED_SLOTS; n++, i = (i + 1) & (LEARNED_SLOTS - 1)) {
		struct learned *l = &fp.learned[i];
		if (!l->used)
			return insert ? l : NULL;
		if (l->source == source && l->name_hash == name_hash && !memcmp(l->ip, ip, 16))
			return l;
	}
	return NULL;
}

/* ---- DNS wire format ---- */

static uint16_t be16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

/*
 * The single question of a query or response at offset 12: its name lower-cased with dots (no
 * trailing dot) into `name`, and the offset past QTYPE/QCLASS. Only plain labels of [a-z0-9_-]
 * (what the slow path's names look like unescaped); anything else returns -1 (JavaScript decides).
 */
static int parse_question(const uint8_t *msg, size_t len, char *name, size_t *name_len, size_t *end)
{
	size_t o = 12, n = 0;

	if (len < 12 || be16(msg + 4) != 1)
		return -1;
	for (;;) {
		if (o >= len)
			return -1;
		uint8_t l = msg[o++];
		if (l == 0)
			break;
		if (l > 63 || o + l > len || n + l + 1 > MAX_NAME - 1)
			return -1;
		if (n > 0)
			name[n++] = '.';
		for (uint8_t k = 0; k < l; k++) {
			uint8_t c = msg[o + k];
			if (c >= 'A' && c <= 'Z')
				c += 'a' - 'A';
			if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_'))
				return -1;
			name[n++] = (char)c;
		}
		o += l;
	}
	if (n == 0 || o + 4 > len)
		return -1;
	*name_len = n;
	*end = o + 4;
	return 0;
}

/* Past a (possibly compressed) name at `o`; -1 when malformed. */
static long skip_name(const uint8_t *msg, size_t len, size_t o)
{
	for (int labels = 0; labels < 128; labels++) {
		if (o >= len)
			return -1;
		uint8_t l = msg[o];
		if (l == 0)
			return (long)o + 1;
		if ((l & 0xc0) == 0xc0)
			return o + 2 <= len ? (long)o + 2 : -1;
		if (l & 0xc0)
			return -1;
		o += 1 + l;
	}
	return -1;
}

/* ---- sending ---- */

static uint16_t checksum_fold(uint32_t sum)
{
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

static uint32_t checksum_add(uint32_t sum, const uint8_t *p, size_t len)
{
	for (size_t i = 0; i + 1 < len; i += 2)
		sum += be16(p + i);
	if (len & 1)
		sum += (uint32_t)p[len - 1] << 8;
	return sum;
}

/* The response as a datagram from the resolver to the pod; -errno on failure (EMSGSIZE: too big for the path). */
static int send_as_resolver(uint32_t resolver, uint16_t rport, uint32_t to, uint16_t to_port, const uint8_t *payload, size_t len)
{
	uint8_t packet[20 + 8 + MAX_DNS * 8];
	struct sockaddr_in dst = { .sin_family = AF_INET, .sin_addr.s_addr = to };
	size_t total = 20 + 8 + len;
	uint32_t sum;

	if (len > sizeof(packet) - 28)
		return -EMSGSIZE;
	memset(packet, 0, 28);
	packet[0] = 0x45;
	packet[2] = (uint8_t)(total >> 8);
	packet[3] = (uint8_t)total;
	packet[8] = 64;
	packet[9] = IPPROTO_UDP;
	memcpy(packet + 12, &resolver, 4);
	memcpy(packet + 16, &to, 4);
	uint16_t ip_sum = checksum_fold(checksum_add(0, packet, 20));
	packet[10] = (uint8_t)(ip_sum >> 8);
	packet[11] = (uint8_t)ip_sum;
	uint8_t *udp = packet + 20;
	udp[0] = (uint8_t)(rport >> 8);
	udp[1] = (uint8_t)rport;
	udp[2] = (uint8_t)(to_port >> 8);
	udp[3] = (uint8_t)to_port;
	udp[4] = (uint8_t)((8 + len) >> 8);
	udp[5] = (uint8_t)(8 + len);
	memcpy(udp + 8, payload, len);
	sum = checksum_add(0, packet + 12, 8) + IPPROTO_UDP + (uint32_t)(8 + len);
	sum = checksum_add(sum, udp, 8 + len);
	uint16_t udp_sum = checksum_fold(sum);
	if (udp_sum == 0)
		udp_sum = 0xffff;
	udp[6] = (uint8_t)(udp_sum >> 8);
	udp[7] = (uint8_t)udp_sum;
	if (sendto(fp.raw_fd, packet, total, 0, (struct sockaddr *)&dst, sizeof(dst)) < 0)
		return -errno;
	return 0;
}

static void handoff(uint32_t source, uint16_t port, const uint8_t *msg, size_t len)
{
	uint8_t frame[6 + 65536];

	if (len > sizeof(frame) - 6)
		return;
	memcpy(frame, &source, 4);
	frame[4] = (uint8_t)(port >> 8);
	frame[5] = (uint8_t)port;
	memcpy(frame + 6, msg, len);
	if (sendto(fp.handoff_fd, frame, 6 + len, 0, (struct sockaddr *)&fp.handoff_to, sizeof(fp.handoff_to)) < 0)
		fp.counters[C_SEND_FAILURES]++;
	else
		fp.counters[C_HANDED_OFF]++;
}

/* A record for the flow; lock held. */
static void record_flow(uint8_t kind, uint32_t endpoint, uint32_t source, uint16_t sport, uint32_t resolver, uint16_t rport, uint64_t request_ns, const uint8_t *response, size_t len)
{
	struct flow_header h = { .length = (uint32_t)(sizeof(h) + len), .kind = kind, .source_port = sport, .endpoint = endpoint, .source = source, .resolver = resolver, .resolver_port = rport, .request_ns = request_ns, .response_ns = wall_ns() };

	if (fp.ring_used + h.length > FLOW_RING_BYTES) {
		fp.counters[C_FLOWS_LOST]++;
		return;
	}
	memcpy(fp.ring + fp.ring_used, &h, sizeof(h));
	memcpy(fp.ring + fp.ring_used + sizeof(h), response, len);
	fp.ring_used += h.length;
}

/* A reply of the query's header and question with `rcode` (REFUSED, NXDOMAIN, SERVFAIL), as the JS proxy builds it. */
static size_t reply_with(const uint8_t *query, size_t question_end, uint8_t rcode, uint8_t *out)
{
	memcpy(out, query, question_end);
	out[2] = (uint8_t)(0x80 | (query[2] & 0x01)); /* QR, opcode 0, RD as asked */
	out[3] = (uint8_t)(0x80 | rcode);               /* RA */
	out[4] = 0, out[5] = 1;
	memset(out + 6, 0, 6);
	return question_end;
}

/* ---- the loop ---- */

static int take_token(uint32_t source)
{
	struct bucket *b = &fp.buckets[mix(0, source) & (SOURCE_BUCKETS - 1)];
	int64_t now = now_us();

	if (fp.rate <= 0)
		return 1;
	if (b->source != source) {
		b->source = source;
		b->tokens = fp.rate;
	} else {
		b->tokens += (double)(now - b->at_us) * fp.rate / 1e6;
		if (b->tokens > fp.rate)
			b->tokens = fp.rate;
	}
	b->at_us = now;
	if (b->tokens < 1)
		return 0;
	b->tokens -= 1;
	return 1;
}

static int upstream_for(uint32_t mark)
{
	for (int i = 0; i < fp.upstream_count; i++)
		if (fp.upstreams[i].mark == mark)
			return fp.upstreams[i].fd;
	if (fp.upstream_count == MAX_MARKS)
		return -1;
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	/* Unmarked, a query would pass as the node's: none goes out. */
	if (mark != 0 && setsockopt(fd, SOL_SOCKET, SO_MARK, &mark, sizeof(mark)) < 0) {
		close(fd);
		return -1;
	}
	struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };
	if (epoll_ctl(fp.epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0) {
		close(fd);
		return -1;
	}
	fp.upstreams[fp.upstream_count++] = (struct upstream){ .mark = mark, .fd = fd };
	return fd;
}

static void free_pending(struct pending *p)
{
	fp.by_id[p->upstream_id] = 0;
	p->used = 0;
	fp.free_slots[fp.free_count++] = (uint16_t)(p - fp.pending);
	fp.in_flight--;
	fp.per_source[mix(1, p->source) & (SOURCE_BUCKETS - 1)]--;
}

static int open_pin(void)
{
	union bpf_attr attr;

	memset(&attr, 0, sizeof(attr));
	attr.pathname = (uint64_t)(uintptr_t)fp.pin;
	return (int)syscall(SYS_bpf, BPF_OBJ_GET, &attr, sizeof(attr));
}

/* Lock held. */
static void on_query(uint32_t source, uint16_t sport, const uint8_t *msg, size_t len)
{
	char name[MAX_NAME];
	size_t name_len, question_end;
	struct proxy4_key key = { .saddr = source, .sport = htons(sport), .nexthdr = IPPROTO_UDP };
	struct proxy4_value orig;
	union bpf_attr attr;

	fp.counters[C_DATAGRAMS]++;
	if (!take_token(source)) {
		fp.counters[C_RATE_LIMITED]++;
		return;
	}
	if (fp.map_fd < 0)
		fp.map_fd = open_pin();
	memset(&attr, 0, sizeof(attr));
	attr.map_fd = (uint32_t)fp.map_fd;
	attr.key = (uint64_t)(uintptr_t)&key;
	attr.value = (uint64_t)(uintptr_t)&orig;
	if (fp.map_fd < 0 || syscall(SYS_bpf, BPF_MAP_LOOKUP_ELEM, &attr, sizeof(attr)) < 0) {
		/* No note of where it was going: JavaScript has the same map and says why. */
		fp.counters[C_NO_ORIGIN]++;
		return handoff(source, sport, msg, len);
	}
	uint16_t rport = ntohs(orig.orig_dport);
	/* Only plain queries (QR 0, opcode 0, one question, no answers) are the fast path's. */
	if (len < 12 || len > MAX_DNS || (msg[2] & 0xf8) != 0 || be16(msg + 6) != 0 || be16(msg + 8) != 0 || parse_question(msg, len, name, &name_len, &question_end) < 0)
		return handoff(source, sport, msg, len);
	refresh_epoch();
	struct verdict *v = find_verdict(source, orig.orig_daddr, rport, name, name_len);
	if (v == NULL)
		return handoff(source, sport, msg, len);
	uint64_t request_ns = wall_ns();
	if (!v->allowed) {
		uint8_t out[MAX_DNS];
		size_t out_len = reply_with(msg, question_end, v->rcode, out);
		if (send_as_resolver(orig.orig_daddr, rport, source, sport, out, out_len) < 0) {
			fp.counters[C_SEND_FAILURES]++;
			return;
		}
		fp.counters[C_DENIED]++;
		record_flow(FLOW_DENIED, v->endpoint, source, sport, orig.orig_daddr, rport, request_ns, out, out_len);
		return;
	}
	uint16_t *own = &fp.per_source[mix(1, source) & (SOURCE_BUCKETS - 1)];
	int fd = upstream_for(v->mark);
	if (fp.in_flight >= fp.max_in_flight || *own >= fp.max_per_source || fd < 0)
		return handoff(source, sport, msg, len);
	/* in_flight < max_in_flight: a slot is free. */
	struct pending *p = &fp.pending[fp.free_slots[--fp.free_count]];
	uint16_t id;
	do
		id = (uint16_t)(next_random() >> 48);
	while (fp.by_id[id] != 0);
	*p = (struct pending){ .used = 1, .upstream_id = id, .query_len = (uint16_t)len, .question_end = (uint16_t)question_end, .source_port = sport, .source = source, .resolver = orig.orig_daddr, .resolver_port = rport, .endpoint = v->endpoint, .name_hash = siphash(name, name_len), .deadline_ms = now_ms() + fp.timeout_ms, .request_ns = request_ns };
	memcpy(p->query, msg, len);
	fp.by_id[id] = (uint16_t)(p - fp.pending + 1);
	fp.in_flight++;
	(*own)++;
	uint8_t out[MAX_DNS];
	memcpy(out, msg, len);
	out[0] = (uint8_t)(id >> 8);
	out[1] = (uint8_t)id;
	struct sockaddr_in to = { .sin_family = AF_INET, .sin_addr.s_addr = orig.orig_daddr, .sin_port = orig.orig_dport };
	if (sendto(fd, out, len, 0, (struct sockaddr *)&to, sizeof(to)) < 0) {
		free_pending(p);
		return handoff(source, sport, msg, len);
	}
}

/* Does the response's question equal the pending query's (names compared without case)? */
static int same_question(const struct pending *p, const uint8_t *msg, size_t len)
{
	if (len < p->question_end || be16(msg + 4) != 1)
		return 0;
	for (size_t i = 12; i < p->question_end; i++) {
		uint8_t a = p->query[i], b = msg[i];
		if (a >= 'A' && a <= 'Z')
			a += 'a' - 'A';
		if (b >= 'A' && b <= 'Z')
			b += 'a' - 'A';
		if (a != b)
			return 0;
	}
	return 1;
}

/*
 * Every A/AAAA address in the answer section known as told to the agent for (source, name) with
 * ANSWER_MARGIN_MS to spare? -1: malformed or too many.
 */
static int addresses_known(const struct pending *p, const uint8_t *msg, size_t len)
{
	long o = p->question_end;
	uint16_t answers = be16(msg + 6);
	int64_t need = now_ms() + ANSWER_MARGIN_MS;

	if (answers > MAX_IPS)
		return -1;
	for (uint16_t i = 0; i < answers; i++) {
		o = skip_name(msg, len, (size_t)o);
		if (o < 0 || (size_t)o + 10 > len)
			return -1;
		uint16_t type = be16(msg + o), rdlen = be16(msg + o + 8);
		o += 10;
		if ((size_t)o + rdlen > len)
			return -1;
		if ((type == 1 && rdlen == 4) || (type == 28 && rdlen == 16)) {
			uint8_t ip[16] = { 0 };
			if (rdlen == 4) {
				ip[10] = ip[11] = 0xff;
				memcpy(ip + 12, msg + o, 4);
			} else {
				memcpy(ip, msg + o, 16);
			}
			struct learned *l = find_learned(p->source, p->name_hash, ip, 0);
			if (l == NULL || l->until_ms < need)
				return 0;
		}
		o += rdlen;
	}
	return 1;
}

/* Lock held. */
static void on_answer(const struct sockaddr_in *from, uint8_t *msg, size_t len)
{
	if (len < 12 || !(msg[2] & 0x80))
		return;
	uint16_t slot = fp.by_id[be16(msg)];
	if (slot == 0)
		return;
	struct pending *p = &fp.pending[slot - 1];
	/* Anything else is a spoof or a stray: ignored, the query's wait goes on (as the JS proxy's). */
	if (from->sin_addr.s_addr != p->resolver || ntohs(from->sin_port) != p->resolver_port || !same_question(p, msg, len))
		return;
	refresh_epoch();
	int known = addresses_known(p, msg, len);
	if (known != 1) {
		/* New addresses: JavaScript asks again and holds the answer until the policy has them. */
		handoff(p->source, p->source_port, p->query, p->query_len);
		free_pending(p);
		return;
	}
	msg[0] = p->query[0];
	msg[1] = p->query[1];
	int err = send_as_resolver(p->resolver, p->resolver_port, p->source, p->source_port, msg, len);
	if (err == -EMSGSIZE) {
		/* Too big for the pod's path: JavaScript sends it truncated. */
		handoff(p->source, p->source_port, p->query, p->query_len);
	} else if (err < 0) {
		fp.counters[C_SEND_FAILURES]++;
	} else {
		fp.counters[C_FORWARDED]++;
		record_flow(FLOW_FORWARDED, p->endpoint, p->source, p->source_port, p->resolver, p->resolver_port, p->request_ns, msg, len);
	}
	free_pending(p);
}

/* Lock held. */
static void on_oversized_answer(const struct sockaddr_in *from, const uint8_t *msg, size_t len)
{
	if (len < 12)
		return;
	uint16_t slot = fp.by_id[be16(msg)];
	if (slot == 0)
		return;
	struct pending *p = &fp.pending[slot - 1];
	if (from->sin_addr.s_addr != p->resolver || ntohs(from->sin_port) != p->resolver_port)
		return;
	handoff(p->source, p->source_port, p->query, p->query_len);
	free_pending(p);
}

/* Lock held: forwards past their deadline get SERVFAIL, as on the slow path. */
static void expire(void)
{
	int64_t now = now_ms();

	/* Once a tick, not after every wakeup: a scan per datagram would cost more than the datagram. */
	if (fp.in_flight == 0 || now - fp.last_expire_ms < TICK_MS)
		return;
	fp.last_expire_ms = now;
	for (uint32_t i = 0; i < fp.max_in_flight; i++) {
		struct pending *p = &fp.pending[i];
		if (!p->used || p->deadline_ms > now)
			continue;
		uint8_t out[MAX_DNS];
		size_t out_len = reply_with(p->query, p->question_end, 2, out);
		if (send_as_resolver(p->resolver, p->resolver_port, p->source, p->source_port, out, out_len) < 0)
			fp.counters[C_SEND_FAILURES]++;
		fp.counters[C_TIMEOUTS]++;
		record_flow(FLOW_TIMEOUT, p->endpoint, p->source, p->source_port, p->resolver, p->resolver_port, p->request_ns, out, out_len);
		free_pending(p);
	}
}

static void drain_socket(int fd, int listener)
{
	struct mmsghdr msgs[BATCH];
	struct iovec iov[BATCH];
	struct sockaddr_in from[BATCH];
	static uint8_t buffers[BATCH][MAX_DNS * 8];

	for (;;) {
		for (int i = 0; i < BATCH; i++) {
			iov[i] = (struct iovec){ .iov_base = buffers[i], .iov_len = sizeof(buffers[i]) };
			msgs[i].msg_hdr = (struct msghdr){ .msg_name = &from[i], .msg_namelen = sizeof(from[i]), .msg_iov = &iov[i], .msg_iovlen = 1 };
		}
		int n = recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, NULL);
		if (n <= 0)
			return;
		pthread_mutex_lock(&fp.lock);
		for (int i = 0; i < n; i++) {
			if (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) {
				/* An answer bigger than the buffer (EDNS): JavaScript asks again, on a socket that takes it whole. */
				if (!listener)
					on_oversized_answer(&from[i], buffers[i], msgs[i].msg_len);
				continue;
			}
			if (listener)
				on_query(from[i].sin_addr.s_addr, ntohs(from[i].sin_port), buffers[i], msgs[i].msg_len);
			else
				on_answer(&from[i], buffers[i], msgs[i].msg_len);
		}
		fp.counters[C_IN_FLIGHT] = fp.in_flight;
		pthread_mutex_unlock(&fp.lock);
		if (n < BATCH)
			return;
	}
}

/*
 * A query waits for this thread twice: on its way to the resolver and on the answer's way back.
 * As an ordinary thread it waited for a CPU behind whatever ran there (the agent's JavaScript,
 * the pod itself) for a scheduler slice of milliseconds, which made the p99 at 10k queries/s
 * 1.5-4 ms; as a SCHED_FIFO thread it runs when its datagrams arrive (p99 added 0.4-0.6 ms,
 * measured on the same machine). A realtime thread fed by pods must not take a CPU from the
 * node, so it governs itself: past its budget (percent of one CPU over GOVERN_MS) it is an
 * ordinary thread again for BACKOFF_MS. Without the privilege (CAP_SYS_NICE, or a cgroup with no
 * realtime runtime) it stays ordinary and says so in its counters.
 */
static int64_t thread_cpu_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void set_realtime(int on)
{
	struct sched_param param = { .sched_priority = on ? 1 : 0 };
	int ok = pthread_setschedparam(pthread_self(), on ? SCHED_FIFO : SCHED_OTHER, &param) == 0;
	pthread_mutex_lock(&fp.lock);
	if (ok)
		fp.counters[C_REALTIME] = on;
	else if (on)
		fp.realtime_budget = 0; /* not allowed here: do not ask again */
	pthread_mutex_unlock(&fp.lock);
}

static void govern(void)
{
	int64_t now = now_ms();
	if (fp.realtime_budget == 0 || now - fp.govern_at_ms < GOVERN_MS)
		return;
	int64_t cpu = thread_cpu_us();
	int64_t used_us = cpu - fp.govern_cpu_us, elapsed_ms = now - fp.govern_at_ms;
	fp.govern_at_ms = now;
	fp.govern_cpu_us = cpu;
	if (fp.counters[C_REALTIME] && used_us * 100 > (int64_t)fp.realtime_budget * elapsed_ms * 1000) {
		set_realtime(0);
		fp.backoff_until_ms = now + BACKOFF_MS;
		pthread_mutex_lock(&fp.lock);
		fp.counters[C_REALTIME_BACKOFFS]++;
		pthread_mutex_unlock(&fp.lock);
	} else if (!fp.counters[C_REALTIME] && now >= fp.backoff_until_ms) {
		set_realtime(1);
	}
}

static void *run(void *arg)
{
	(void)arg;
	struct epoll_event events[32];

	/* Named for whoever reads top -H or perf: otherwise it shows as the worker that started it. */
	pthread_setname_np(pthread_self(), "dns-fastpath");
	fp.govern_at_ms = now_ms();
	fp.govern_cpu_us = thread_cpu_us();
	if (fp.realtime_budget > 0)
		set_realtime(1);

	while (!atomic_load(&fp.stopping)) {
		int n = epoll_wait(fp.epoll_fd, events, 32, TICK_MS);
		for (int i = 0; i < n; i++) {
			int fd = events[i].data.fd;
			if (fd == fp.wake_fd)
				continue;
			drain_socket(fd, fd == fp.listen_fd);
		}
		pthread_mutex_lock(&fp.lock);
		expire();
		fp.counters[C_IN_FLIGHT] = fp.in_flight;
		pthread_mutex_unlock(&fp.lock);
		govern();
	}
	return NULL;
}

/* ---- Node-API ---- */

static void close_all(void)
{
	int *fds[] = { &fp.listen_fd, &fp.raw_fd, &fp.handoff_fd, &fp.wake_fd, &fp.epoll_fd, &fp.map_fd };
	for (size_t i = 0; i < sizeof(fds) / sizeof(fds[0]); i++) {
		if (*fds[i] >= 0)
			close(*fds[i]);
		*fds[i] = -1;
	}
	for (int i = 0; i < fp.upstream_count; i++)
		close(fp.upstreams[i].fd);
	fp.upstream_count = 0;
	free(fp.verdicts);
	free(fp.learned);
	free(fp.pending);
	free(fp.by_id);
	free(fp.ring);
	fp.verdicts = NULL, fp.learned = NULL, fp.pending = NULL, fp.by_id = NULL, fp.ring = NULL;
}

static void stop_thread(void)
{
	if (!fp.running)
		return;
	atomic_store(&fp.stopping, 1);
	uint64_t one = 1;
	if (write(fp.wake_fd, &one, sizeof(one)) < 0) {
		/* the loop's tick ends it anyway */
	}
	pthread_join(fp.thread, NULL);
	fp.running = 0;
	close_all();
}

static void cleanup_hook(void *arg)
{
	(void)arg;
	stop_thread();
}

static napi_value throw_errno(napi_env env, const char *what, int err)
{
	char message[256];
	char code[32];
	snprintf(message, sizeof(message), "%s: %s", what, strerror(err));
	snprintf(code, sizeof(code), "%d", err);
	napi_throw_error(env, code, message);
	return NULL;
}

static int get_u32(napi_env env, napi_value object, const char *key, uint32_t *out)
{
	napi_value v;
	return napi_get_named_property(env, object, key, &v) == napi_ok && napi_get_value_uint32(env, v, out) == napi_ok ? 0 : -1;
}

/* start({ host, port, handoffPort, epoch: Int32Array (shared), proxy4Pin, rate, timeoutMs, maxInFlight }) */
static napi_value start(napi_env env, napi_callback_info info)
{
	size_t argc = 1;
	napi_value argv[1], v;
	char host[64], pin[512];
	size_t n;
	uint32_t port, handoff_port, rate, timeout_ms, max_in_flight, realtime_budget;
	napi_typedarray_type type;
	size_t length;
	void *data;
	napi_value buffer;
	size_t offset;

	if (fp.running) {
		napi_throw_error(env, "ERR_FAST_PATH_RUNNING", "the DNS fast path is already running");
		return NULL;
	}
	if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 ||
	    napi_get_named_property(env, argv[0], "host", &v) != napi_ok || napi_get_value_string_utf8(env, v, host, sizeof(host), &n) != napi_ok ||
	    napi_get_named_property(env, argv[0], "proxy4Pin", &v) != napi_ok || napi_get_value_string_utf8(env, v, pin, sizeof(pin), &n) != napi_ok ||
	    get_u32(env, argv[0], "port", &port) || get_u32(env, argv[0], "handoffPort", &handoff_port) || get_u32(env, argv[0], "rate", &rate) ||
	    get_u32(env, argv[0], "timeoutMs", &timeout_ms) || get_u32(env, argv[0], "maxInFlight", &max_in_flight) ||
	    get_u32(env, argv[0], "realtimeBudget", &realtime_budget) ||
	    napi_get_named_property(env, argv[0], "epoch", &v) != napi_ok ||
	    napi_get_typedarray_info(env, v, &type, &length, &data, &buffer, &offset) != napi_ok || type != napi_int32_array || length < 2) {
		napi_throw_type_error(env, NULL, "start({ host, port, handoffPort, epoch: Int32Array, proxy4Pin, rate, timeoutMs, maxInFlight, realtimeBudget })");
		return NULL;
	}
	memset(&fp.counters, 0, sizeof(fp.counters));
	memset(fp.per_source, 0, sizeof(fp.per_source));
	memset(fp.buckets, 0, sizeof(fp.buckets));
	fp.epoch = data;
	/* The shared memory lives while this reference does. */
	if (fp.epoch_ref)
		napi_delete_reference(env, fp.epoch_ref);
	napi_create_reference(env, v, 1, &fp.epoch_ref);
	fp.table_epoch = __atomic_load_n(&fp.epoch[EPOCH_ALL], __ATOMIC_ACQUIRE);
	fp.told_epoch = __atomic_load_n(&fp.epoch[EPOCH_TOLD], __ATOMIC_ACQUIRE);
	fp.rate = rate;
	fp.timeout_ms = timeout_ms;
	fp.realtime_budget = realtime_budget > 100 ? 100 : realtime_budget;
	fp.backoff_until_ms = 0;
	fp.max_in_flight = max_in_flight < 1 ? 1 : max_in_flight > MAX_PENDING ? MAX_PENDING : max_in_flight;
	fp.max_per_source = fp.max_in_flight / 4 < 1 ? 1 : fp.max_in_flight / 4;
	fp.in_flight = 0;
	fp.ring_used = 0;
	fp.last_expire_ms = 0;
	fp.free_count = 0;
	for (uint32_t i = MAX_PENDING; i-- > 0;)
		if (i < fp.max_in_flight)
			fp.free_slots[fp.free_count++] = (uint16_t)i;
	atomic_store(&fp.stopping, 0);
	if (getrandom(fp.hash_key, sizeof(fp.hash_key), 0) != sizeof(fp.hash_key) || getrandom(&fp.rng, sizeof(fp.rng), 0) != sizeof(fp.rng))
		return throw_errno(env, "seeding the DNS fast path", errno);
	fp.rng |= 1;
	fp.verdicts = calloc(VERDICT_SLOTS, sizeof(struct verdict));
	fp.learned = calloc(LEARNED_SLOTS, sizeof(struct learned));
	fp.pending = calloc(MAX_PENDING, sizeof(struct pending));
	fp.by_id = calloc(65536, sizeof(uint16_t));
	fp.ring = malloc(FLOW_RING_BYTES);
	if (!fp.verdicts || !fp.learned || !fp.pending || !fp.by_id || !fp.ring) {
		close_all();
		return throw_errno(env, "allocating the DNS fast path's tables", ENOMEM);
	}
	fp.verdict_count = fp.learned_count = 0;

	/* The datapath pins ciliate_proxy4 with its first endpoint: until then it is looked for at each datagram. */
	snprintf(fp.pin, sizeof(fp.pin), "%s", pin);
	fp.map_fd = open_pin();

	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	int one = 1, err;
	if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
		close_all();
		napi_throw_type_error(env, NULL, "start: host is no IPv4 address");
		return NULL;
	}
	fp.listen_fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fp.listen_fd < 0 || setsockopt(fp.listen_fd, SOL_IP, IP_TRANSPARENT, &one, sizeof(one)) < 0 ||
	    bind(fp.listen_fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
		char what[96];
		err = errno;
		close_all();
		/* As Node words it for its own sockets (the agent's status shows it). */
		snprintf(what, sizeof(what), "bind %s %s:%u", strerrorname_np(err) ? strerrorname_np(err) : "error", host, port);
		napi_throw_error(env, strerrorname_np(err), what);
		return NULL;
	}
	int rcvbuf = 4 << 20;
	setsockopt(fp.listen_fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf));
	fp.raw_fd = socket(AF_INET, SOCK_RAW | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_RAW);
	fp.handoff_fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	struct sockaddr_in loopback = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	fp.handoff_to = (struct sockaddr_in){ .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK), .sin_port = htons((uint16_t)handoff_port) };
	fp.wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	fp.epoll_fd = epoll_create1(EPOLL_CLOEXEC);
	if (fp.raw_fd < 0 || fp.handoff_fd < 0 || fp.wake_fd < 0 || fp.epoll_fd < 0 || bind(fp.handoff_fd, (struct sockaddr *)&loopback, sizeof(loopback)) < 0) {
		err = errno;
		close_all();
		return throw_errno(env, "opening the DNS fast path's sockets", err);
	}
	struct epoll_event ev = { .events = EPOLLIN, .data.fd = fp.listen_fd };
	struct epoll_event wake = { .events = EPOLLIN, .data.fd = fp.wake_fd };
	if (epoll_ctl(fp.epoll_fd, EPOLL_CTL_ADD, fp.listen_fd, &ev) < 0 || epoll_ctl(fp.epoll_fd, EPOLL_CTL_ADD, fp.wake_fd, &wake) < 0) {
		err = errno;
		close_all();
		return throw_errno(env, "watching the DNS fast path's sockets", err);
	}
	if ((err = pthread_create(&fp.thread, NULL, run, NULL)) != 0) {
		close_all();
		return throw_errno(env, "starting the DNS fast path's thread", err);
	}
	fp.running = 1;
	napi_add_env_cleanup_hook(env, cleanup_hook, NULL);
	return NULL;
}

static napi_value stop(napi_env env, napi_callback_info info)
{
	(void)info;
	if (fp.running) {
		stop_thread();
		napi_remove_env_cleanup_hook(env, cleanup_hook, NULL);
	}
	if (fp.epoch_ref) {
		napi_delete_reference(env, fp.epoch_ref);
		fp.epoch_ref = NULL;
	}
	return NULL;
}

static napi_value source_port(napi_env env, napi_callback_info info)
{
	(void)info;
	struct sockaddr_in addr;
	socklen_t len = sizeof(addr);
	napi_value out;
	uint32_t port = 0;

	if (fp.handoff_fd >= 0 && getsockname(fp.handoff_fd, (struct sockaddr *)&addr, &len) == 0)
		port = ntohs(addr.sin_port);
	napi_create_uint32(env, port, &out);
	return out;
}

static int get_ipv4(napi_env env, napi_value v, uint32_t *out)
{
	char text[32];
	size_t n;
	return napi_get_value_string_utf8(env, v, text, sizeof(text), &n) == napi_ok && inet_pton(AF_INET, text, out) == 1 ? 0 : -1;
}

/* A table three quarters full is dropped whole: probing stays short, and what it held comes back with the next answers. */
static void clear_if_full(void *table, size_t entry_size, uint32_t slots, uint32_t *count)
{
	if (*count < slots * 3 / 4)
		return;
	memset(table, 0, entry_size * slots);
	*count = 0;
}

/* allow(source, resolver, resolverPort, name, endpoint, mark, allowed, rcode, epoch) */
static napi_value allow(napi_env env, napi_callback_info info)
{
	size_t argc = 9, name_len;
	napi_value argv[9];
	uint32_t source, resolver, rport, endpoint, mark, rcode;
	int32_t epoch;
	bool allowed;
	char name[MAX_NAME + 2];

	if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 9 || get_ipv4(env, argv[0], &source) || get_ipv4(env, argv[1], &resolver) ||
	    napi_get_value_uint32(env, argv[2], &rport) != napi_ok || napi_get_value_string_utf8(env, argv[3], name, sizeof(name), &name_len) != napi_ok ||
	    napi_get_value_uint32(env, argv[4], &endpoint) != napi_ok || napi_get_value_uint32(env, argv[5], &mark) != napi_ok ||
	    napi_get_value_bool(env, argv[6], &allowed) != napi_ok || napi_get_value_uint32(env, argv[7], &rcode) != napi_ok ||
	    napi_get_value_int32(env, argv[8], &epoch) != napi_ok) {
		napi_throw_type_error(env, NULL, "allow(source, resolver, resolverPort, name, endpoint, mark, allowed, rcode, epoch)");
		return NULL;
	}
	if (!fp.running || name_len == 0 || name_len >= MAX_NAME || rport > 0xffff)
		return NULL;
	pthread_mutex_lock(&fp.lock);
	refresh_epoch();
	if (epoch == fp.table_epoch) {
		clear_if_full(fp.verdicts, sizeof(struct verdict), VERDICT_SLOTS, &fp.verdict_count);
		struct verdict *v = find_verdict(source, resolver, (uint16_t)rport, name, name_len);
		if (v == NULL) {
			uint32_t i = verdict_slot(source, resolver, (uint16_t)rport, name, name_len);
			while (fp.verdicts[i].used)
				i = (i + 1) & (VERDICT_SLOTS - 1);
			v = &fp.verdicts[i];
			fp.verdict_count++;
		}
		*v = (struct verdict){ .used = 1, .allowed = allowed, .rcode = (uint8_t)(rcode & 0xf), .name_len = (uint8_t)name_len, .epoch = epoch, .source = source, .resolver = resolver, .resolver_port = (uint16_t)rport, .endpoint = endpoint, .mark = mark };
		memcpy(v->name, name, name_len);
	}
	pthread_mutex_unlock(&fp.lock);
	return NULL;
}

/* learned(source, name, ip: Buffer (4 or 16 bytes), remainingMs (how long the agent allows it from now), epoch) */
static napi_value learned(napi_env env, napi_callback_info info)
{
	size_t argc = 5, name_len, ip_len;
	napi_value argv[5];
	uint32_t source;
	double remaining_ms;
	int32_t epoch;
	char name[MAX_NAME + 2];
	void *ip_data;
	uint8_t ip[16] = { 0 };

	if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 5 || get_ipv4(env, argv[0], &source) ||
	    napi_get_value_string_utf8(env, argv[1], name, sizeof(name), &name_len) != napi_ok || napi_get_buffer_info(env, argv[2], &ip_data, &ip_len) != napi_ok ||
	    (ip_len != 4 && ip_len != 16) || napi_get_value_double(env, argv[3], &remaining_ms) != napi_ok || napi_get_value_int32(env, argv[4], &epoch) != napi_ok) {
		napi_throw_type_error(env, NULL, "learned(source, name, ip: Buffer, remainingMs, epoch)");
		return NULL;
	}
	if (!fp.running || name_len == 0 || name_len >= MAX_NAME)
		return NULL;
	if (ip_len == 4) {
		ip[10] = ip[11] = 0xff;
		memcpy(ip + 12, ip_data, 4);
	} else {
		memcpy(ip, ip_data, 16);
	}
	uint64_t name_hash = siphash(name, name_len);
	int64_t until = now_ms() + (int64_t)remaining_ms;
	pthread_mutex_lock(&fp.lock);
	refresh_epoch();
	if (epoch == fp.told_epoch) {
		clear_if_full(fp.learned, sizeof(struct learned), LEARNED_SLOTS, &fp.learned_count);
		struct learned *l = find_learned(source, name_hash, ip, 1);
		if (l != NULL) {
			if (!l->used)
				fp.learned_count++;
			*l = (struct learned){ .used = 1, .epoch = epoch, .source = source, .name_hash = name_hash, .until_ms = until };
			memcpy(l->ip, ip, 16);
		}
	}
	pthread_mutex_unlock(&fp.lock);
	return NULL;
}

static napi_value drain(napi_env env, napi_callback_info info)
{
	(void)info;
	napi_value out;
	void *data;

	pthread_mutex_lock(&fp.lock);
	if (!fp.running || fp.ring_used == 0) {
		pthread_mutex_unlock(&fp.lock);
		napi_get_null(env, &out);
		return out;
	}
	if (napi_create_buffer_copy(env, fp.ring_used, fp.ring, &data, &out) != napi_ok)
		napi_get_null(env, &out);
	else
		fp.ring_used = 0;
	pthread_mutex_unlock(&fp.lock);
	return out;
}

static napi_value numbers(napi_env env, const double *values, size_t count)
{
	napi_value out, v;
	napi_create_array_with_length(env, count, &out);
	for (size_t i = 0; i < count; i++) {
		napi_create_double(env, values[i], &v);
		napi_set_element(env, out, (uint32_t)i, v);
	}
	return out;
}

static napi_value counters(napi_env env, napi_callback_info info)
{
	(void)info;
	double copy[C_COUNT];
	pthread_mutex_lock(&fp.lock);
	memcpy(copy, fp.counters, sizeof(copy));
	pthread_mutex_unlock(&fp.lock);
	return numbers(env, copy, C_COUNT);
}

static napi_value layout(napi_env env, napi_callback_info info)
{
	(void)info;
	double sizes[] = { sizeof(struct proxy4_key), sizeof(struct proxy4_value), sizeof(struct flow_header) };
	return numbers(env, sizes, 3);
}

NAPI_MODULE_INIT()
{
	static const struct {
		const char *name;
		napi_callback fn;
	} functions[] = {
		{ "start", start }, { "stop", stop }, { "sourcePort", source_port }, { "allow", allow }, { "learned", learned },
		{ "drain", drain }, { "counters", counters }, { "layout", layout },
	};
	static int initialized;
	if (!initialized) {
		pthread_mutex_init(&fp.lock, NULL);
		initialized = 1;
	}
	for (size_t i = 0; i < sizeof(functions) / sizeof(functions[0]); i++) {
		napi_value fn;
		if (napi_create_function(env, functions[i].name, NAPI_AUTO_LENGTH, functions[i].fn, NULL, &fn) != napi_ok ||
		    napi_set_named_property(env, exports, functions[i].name, fn) != napi_ok)
			return NULL;
	}
	return exports;
}
