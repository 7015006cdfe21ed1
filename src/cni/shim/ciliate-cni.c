/*
 * ciliate-cni: the CNI plugin binary a container runtime executes, one process per pod and command.
 *
 * It is a thin client, as cilium-cni is: it reads the network configuration on stdin and the CNI_*
 * variables, sends them in one request (POST /v1/cni) over the agent's root-only Unix socket, and
 * prints what the agent answers, exiting with the code the agent names. The CNI logic (validation
 * naming the field at fault, ADD/DEL/CHECK/STATUS, results per cniVersion, error codes) lives in
 * the agent (src/cni/plugin.ts). Only two things are decided here, because they need no agent:
 *
 *   - VERSION, answered from SUPPORTED_VERSIONS below (src/cni/plugin.ts has the same list; the
 *     tests compare them);
 *   - which socket to talk to: the network configuration's top-level "socketPath", else
 *     $CILIATE_SOCKET_PATH, else the agent's default. Finding "socketPath" (and "cniVersion",
 *     for the errors printed here) takes a scan of the top-level object's members that skips
 *     every other value without interpreting it; a document that does not scan leaves both
 *     unknown, and the agent behind the default socket then reports what is wrong with it.
 *
 * When the agent cannot be reached the answer is the one the Node plugin gave: CNI error 11 (try
 * again later), 50 (plugin not available) for STATUS. Every invocation has a deadline
 * ($CILIATE_CNI_TIMEOUT seconds, else 10 s for STATUS and 120 s for the rest: an ADD waits
 * behind other pods' under load), covering stdin too; when it passes, the plugin prints error 11
 * (50 for STATUS) and exits.
 *
 * libc only, linked statically. Built by scripts/build-native.sh into build/cni/ciliate-cni,
 * installed by `ciliate cni install`.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef CILIATE_DEFAULT_SOCKET
#define CILIATE_DEFAULT_SOCKET "/var/run/ciliate/ciliate.sock"
#endif

/* The agent's API reads request bodies up to 1 MiB (MAX_REQUEST_BYTES in src/agent/api-server.ts). */
#define MAX_BODY (1 << 20)
/* A CNI result or error is a few hundred bytes; the agent's answers stay far below this. */
#define MAX_RESPONSE (1 << 20)
#define DEFAULT_VERSION "1.0.0"

static const char *const SUPPORTED_VERSIONS[] = {"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"};
static const char *const ENV_NAMES[] = {"CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH"};

enum {
	CNI_INVALID_ENVIRONMENT = 4,
	CNI_IO_FAILURE = 5,
	CNI_INVALID_NETWORK_CONFIG = 7,
	CNI_TRY_AGAIN_LATER = 11,
	CNI_PLUGIN_NOT_AVAILABLE = 50,
	CNI_AGENT_ERROR = 100,
};

/* A growable byte buffer with a hard limit; appending past it sets `over`. */
struct buf {
	char *data;
	size_t len, cap, limit;
	int over;
};

static int buf_reserve(struct buf *b, size_t extra)
{
	if (b->over || extra > b->limit - b->len) {
		b->over = 1;
		return -1;
	}
	if (b->len + extra <= b->cap)
		return 0;
	size_t cap = b->cap ? b->cap : 4096;
	while (cap < b->len + extra)
		cap *= 2;
	if (cap > b->limit)
		cap = b->limit;
	char *data = realloc(b->data, cap);
	if (!data) {
		b->over = 1;
		return -1;
	}
	b->data = data;
	b->cap = cap;
	return 0;
}

static void buf_add(struct buf *b, const char *s, size_t n)
{
	if (buf_reserve(b, n) == 0) {
		memcpy(b->data + b->len, s, n);
		b->len += n;
	}
}

static void buf_str(struct buf *b, const char *s) { buf_add(b, s, strlen(s)); }

/*
 * One read from fd onto the end of b: the bytes read, 0 at the end of the input, -1 on an error
 * (errno), -2 when the input goes on past b's limit. Retries an interrupted read.
 */
static ssize_t buf_read(struct buf *b, int fd)
{
	size_t room = b->limit - b->len;
	char probe;
	char *into = &probe;
	size_t want = 1;
	if (room > 0) {
		if (buf_reserve(b, room < 65536 ? room : 65536) != 0 && b->len == b->cap) {
			errno = ENOMEM;
			return -1;
		}
		b->over = 0;
		into = b->data + b->len;
		want = b->cap - b->len;
	}
	ssize_t r;
	do
		r = read(fd, into, want);
	while (r < 0 && errno == EINTR);
	if (r > 0 && room == 0)
		return -2;
	if (r > 0)
		b->len += (size_t)r;
	return r;
}

/* `s` as the inside of a JSON string: quote, backslash and control bytes escaped; other bytes as they are. */
static void buf_json(struct buf *b, const char *s, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		char esc[6] = {'\\', 0, '0', '0', 0, 0};
		if (c == '"' || c == '\\') {
			esc[1] = (char)c;
			buf_add(b, esc, 2);
		} else if (c == '\n' || c == '\r' || c == '\t') {
			esc[1] = c == '\n' ? 'n' : c == '\r' ? 'r' : 't';
			buf_add(b, esc, 2);
		} else if (c < 0x20) {
			esc[1] = 'u';
			esc[4] = hex[c >> 4];
			esc[5] = hex[c & 15];
			buf_add(b, esc, 6);
		} else {
			buf_add(b, (const char *)&s[i], 1);
		}
	}
}

/* ---- Output ---------------------------------------------------------------------------------- */

static int write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* The cniVersion of the configuration when the scan found one, for the errors printed here. */
static char conf_version[64];
static size_t conf_version_len;

/* A CNI error document: {"cniVersion","code","msg"[,"details"]} and a newline, into `b`. */
static void format_error(struct buf *b, int code, const char *msg, const char *details, size_t details_len)
{
	char num[16];
	buf_str(b, "{\"cniVersion\":\"");
	if (conf_version_len)
		buf_json(b, conf_version, conf_version_len);
	else
		buf_str(b, DEFAULT_VERSION);
	snprintf(num, sizeof num, "%d", code);
	buf_str(b, "\",\"code\":");
	buf_str(b, num);
	buf_str(b, ",\"msg\":\"");
	buf_json(b, msg, strlen(msg));
	buf_str(b, "\"");
	if (details_len) {
		buf_str(b, ",\"details\":\"");
		buf_json(b, details, details_len);
		buf_str(b, "\"");
	}
	buf_str(b, "}\n");
}

static void fail_with_details(int code, const char *details, size_t details_len, const char *fmt, ...) __attribute__((noreturn, format(printf, 4, 5)));
static void fail_with_details(int code, const char *details, size_t details_len, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	struct buf out = {.limit = 64 * 1024};
	format_error(&out, code, msg, details, details_len);
	if (!out.over)
		write_all(STDOUT_FILENO, out.data, out.len);
	_exit(1);
}

#define fail(code, ...) fail_with_details(code, NULL, 0, __VA_ARGS__)

/* ---- The deadline ---------------------------------------------------------------------------- */

/*
 * The error printed when the deadline passes, prepared before: a signal handler may only write
 * and exit. Two slots, the one in use named by an index the handler reads atomically.
 */
static struct {
	char text[1536];
	size_t len;
} timeout_slots[2];
static volatile sig_atomic_t timeout_slot;

static void on_alarm(int sig)
{
	(void)sig;
	int slot = timeout_slot;
	if (timeout_slots[slot].len)
		write_all(STDOUT_FILENO, timeout_slots[slot].text, timeout_slots[slot].len);
	_exit(1);
}

static void prepare_timeout(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void prepare_timeout(int code, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	struct buf out = {.limit = sizeof timeout_slots[0].text};
	format_error(&out, code, msg, NULL, 0);
	int next = !timeout_slot;
	timeout_slots[next].len = 0;
	if (!out.over) {
		memcpy(timeout_slots[next].text, out.data, out.len);
		timeout_slots[next].len = out.len;
	}
	free(out.data);
	timeout_slot = next;
}

/* ---- The scan of the configuration's top-level members ---------------------------------------- */

struct scan {
	const char *p, *end;
};

static void skip_ws(struct scan *s)
{
	while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
		s->p++;
}

static int hex4(const char *p, unsigned *out)
{
	unsigned v = 0;
	for (int i = 0; i < 4; i++) {
		char c = p[i];
		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= (unsigned)(c - '0');
		else if (c >= 'a' && c <= 'f')
			v |= (unsigned)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			v |= (unsigned)(c - 'A' + 10);
		else
			return -1;
	}
	*out = v;
	return 0;
}

/*
 * A JSON string at s->p (on its opening quote), decoded into out (NUL-terminated; out may be NULL
 * to skip it). -1 when it is not a well-formed string; when decoding, -2 when it is but does not
 * fit in `cap`, -3 when it holds what a C string cannot (\u0000, a lone surrogate: JSON.parse
 * takes both).
 */
static int scan_string(struct scan *s, char *out, size_t cap, size_t *out_len)
{
	size_t n = 0;
	int too_long = 0, undecodable = 0;
	if (s->p >= s->end || *s->p != '"')
		return -1;
	s->p++;
	while (s->p < s->end) {
		unsigned char c = (unsigned char)*s->p++;
		char bytes[4];
		size_t count = 1;
		if (c == '"') {
			if (out && !too_long)
				out[n] = 0;
			if (out_len)
				*out_len = n;
			return !out ? 0 : undecodable ? -3 : too_long ? -2 : 0;
		}
		if (c < 0x20)
			return -1;
		bytes[0] = (char)c;
		if (c == '\\') {
			if (s->p >= s->end)
				return -1;
			char e = *s->p++;
			unsigned cp;
			switch (e) {
			case '"': case '\\': case '/': bytes[0] = e; break;
			case 'b': bytes[0] = '\b'; break;
			case 'f': bytes[0] = '\f'; break;
			case 'n': bytes[0] = '\n'; break;
			case 'r': bytes[0] = '\r'; break;
			case 't': bytes[0] = '\t'; break;
			case 'u':
				if (s->end - s->p < 4 || hex4(s->p, &cp))
					return -1;
				s->p += 4;
				if (cp >= 0xd800 && cp < 0xdc00) {
					unsigned lo;
					if (s->end - s->p >= 6 && s->p[0] == '\\' && s->p[1] == 'u' && hex4(s->p + 2, &lo) == 0 && lo >= 0xdc00 && lo < 0xe000) {
						s->p += 6;
						cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
					} else {
						undecodable = 1;
					}
				} else if (cp >= 0xdc00 && cp < 0xe000) {
					undecodable = 1;
				}
				if (cp == 0 || undecodable) {
					undecodable = 1;
					continue;
				}
				if (cp < 0x80) {
					bytes[0] = (char)cp;
				} else if (cp < 0x800) {
					bytes[0] = (char)(0xc0 | (cp >> 6));
					bytes[1] = (char)(0x80 | (cp & 0x3f));
					count = 2;
				} else if (cp < 0x10000) {
					bytes[0] = (char)(0xe0 | (cp >> 12));
					bytes[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
					bytes[2] = (char)(0x80 | (cp & 0x3f));
					count = 3;
				} else {
					bytes[0] = (char)(0xf0 | (cp >> 18));
					bytes[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
					bytes[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
					bytes[3] = (char)(0x80 | (cp & 0x3f));
					count = 4;
				}
				break;
			default:
				return -1;
			}
		}
		if (!out)
			continue;
		if (n + count >= cap)
			too_long = 1;
		if (!too_long) {
			memcpy(out + n, bytes, count);
			n += count;
		}
	}
	return -1;
}

/* Skips one value of any kind; nesting is counted, not recursed into. */
static int skip_value(struct scan *s)
{
	size_t depth = 0;
	for (;;) {
		skip_ws(s);
		if (s->p >= s->end)
			return -1;
		char c = *s->p;
		if (c == '"') {
			if (scan_string(s, NULL, 0, NULL) != 0)
				return -1;
		} else if (c == '{' || c == '[') {
			depth++;
			s->p++;
			continue;
		} else if (c == '}' || c == ']') {
			if (depth == 0)
				return -1;
			depth--;
			s->p++;
		} else if (c == ',' || c == ':') {
			if (depth == 0)
				return -1;
			s->p++;
			continue;
		} else {
			/* A number or a literal: its characters up to the next delimiter. */
			const char *start = s->p;
			while (s->p < s->end && !strchr(" \t\r\n,:]}[{\"", *s->p))
				s->p++;
			if (s->p == start)
				return -1;
		}
		if (depth == 0)
			return 0;
	}
}

/* What the scan found: each field's state and its decoded value. */
enum found { ABSENT, STRING, OTHER, TOO_LONG, UNDECODABLE };
struct wanted {
	const char *name;
	char *value;
	size_t cap, len;
	enum found state;
};

/* Scans the top-level object's members for `want`s; the last of duplicate keys wins, as in JSON.parse. -1 when the document does not scan. */
static int scan_members(const char *doc, size_t len, struct wanted *want, size_t nwant)
{
	struct scan s = {doc, doc + len};
	skip_ws(&s);
	if (s.p >= s.end || *s.p != '{')
		return -1;
	s.p++;
	skip_ws(&s);
	if (s.p < s.end && *s.p == '}')
		return 0;
	for (;;) {
		char key[32];
		size_t key_len;
		skip_ws(&s);
		int k = scan_string(&s, key, sizeof key, &key_len);
		if (k == -1)
			return -1;
		skip_ws(&s);
		if (s.p >= s.end || *s.p != ':')
			return -1;
		s.p++;
		skip_ws(&s);
		struct wanted *w = NULL;
		for (size_t i = 0; k == 0 && i < nwant; i++)
			if (key_len == strlen(want[i].name) && memcmp(key, want[i].name, key_len) == 0)
				w = &want[i];
		if (w && s.p < s.end && *s.p == '"') {
			int r = scan_string(&s, w->value, w->cap, &w->len);
			if (r == -1)
				return -1;
			w->state = r == 0 ? STRING : r == -2 ? TOO_LONG : UNDECODABLE;
		} else {
			if (skip_value(&s) != 0)
				return -1;
			if (w)
				w->state = OTHER;
		}
		skip_ws(&s);
		if (s.p < s.end && *s.p == ',') {
			s.p++;
			continue;
		}
		if (s.p < s.end && *s.p == '}')
			return 0;
		return -1;
	}
}

/* ---- Talking to the agent --------------------------------------------------------------------- */

static const char *errno_name(int e)
{
	switch (e) {
	case ENOENT: return "ENOENT";
	case ECONNREFUSED: return "ECONNREFUSED";
	case EACCES: return "EACCES";
	case EAGAIN: return "EAGAIN";
	case ECONNRESET: return "ECONNRESET";
	case EPIPE: return "EPIPE";
	case ENOTSOCK: return "ENOTSOCK";
	case ENOTDIR: return "ENOTDIR";
	default: return strerror(e);
	}
}

struct reply {
	int status;
	/* The plugin's exit code the agent named (Ciliate-Cni-Exit), -1 when it named none. */
	int exit_code;
	const char *body;
	size_t body_len;
};

/* A header's value in the head [head, end), by case-insensitive name; NULL when absent. */
static const char *header(const char *head, const char *end, const char *name, size_t *len)
{
	size_t name_len = strlen(name);
	const char *line = memchr(head, '\n', (size_t)(end - head));
	while (line && line + 1 < end) {
		line++;
		const char *eol = memchr(line, '\n', (size_t)(end - line));
		if (!eol)
			eol = end;
		if ((size_t)(eol - line) > name_len && strncasecmp(line, name, name_len) == 0 && line[name_len] == ':') {
			const char *v = line + name_len + 1;
			const char *ve = eol;
			while (v < ve && (*v == ' ' || *v == '\t'))
				v++;
			while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
				ve--;
			*len = (size_t)(ve - v);
			return v;
		}
		line = eol < end ? eol : NULL;
	}
	return NULL;
}

/* A decimal number of at most 9 digits, -1 when the text is not one. */
static long decimal(const char *p, size_t n)
{
	long v = 0;
	if (n == 0 || n > 9)
		return -1;
	for (size_t i = 0; i < n; i++) {
		if (p[i] < '0' || p[i] > '9')
			return -1;
		v = v * 10 + (p[i] - '0');
	}
	return v;
}

/*
 * Sends `body` as POST /v1/cni to the agent at `socket_path`, reads the answer to its end (the
 * request says Connection: close) and parses it. On failure to talk at all, fails with `down_code`.
 */
static struct reply ask_agent(const char *socket_path, const char *command, int down_code, const struct buf *body, struct buf *in)
{
	const char *prefix = down_code == CNI_PLUGIN_NOT_AVAILABLE ? "STATUS: the Ciliate agent is not available: " : "";
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	memcpy(addr.sun_path, socket_path, strlen(socket_path));
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		fail(down_code, "%stalking to the agent at %s: socket: %s", prefix, socket_path, strerror(errno));
	int rc;
	do
		rc = connect(fd, (struct sockaddr *)&addr, sizeof addr);
	while (rc < 0 && errno == EINTR);
	if (rc < 0) {
		int e = errno;
		if (e == ENOENT || e == ECONNREFUSED)
			fail(down_code, "%scannot reach the agent at %s: is `ciliate agent` running? (%s)", prefix, socket_path, errno_name(e));
		fail(down_code, "%stalking to the agent at %s: connect: %s", prefix, socket_path, errno_name(e));
	}

	char head[256];
	int head_len = snprintf(head, sizeof head,
				"POST /v1/cni HTTP/1.1\r\nHost: ciliate\r\nContent-Type: application/json\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
				body->len);
	struct iovec iov[2] = {{head, (size_t)head_len}, {body->data, body->len}};
	struct msghdr msg = {.msg_iov = iov, .msg_iovlen = 2};
	while (msg.msg_iovlen > 0) {
		ssize_t w = sendmsg(fd, &msg, MSG_NOSIGNAL);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			fail(down_code, "%stalking to the agent at %s: sending %s: %s", prefix, socket_path, command, errno_name(errno));
		size_t left = (size_t)w;
		while (msg.msg_iovlen > 0 && left >= msg.msg_iov[0].iov_len) {
			left -= msg.msg_iov[0].iov_len;
			msg.msg_iov++;
			msg.msg_iovlen--;
		}
		if (msg.msg_iovlen > 0) {
			msg.msg_iov[0].iov_base = (char *)msg.msg_iov[0].iov_base + left;
			msg.msg_iov[0].iov_len -= left;
		}
	}

	for (;;) {
		ssize_t r = buf_read(in, fd);
		if (r == -2)
			fail(CNI_AGENT_ERROR, "ciliate agent: its answer to %s is over %d bytes", command, MAX_RESPONSE);
		if (r < 0)
			fail(down_code, "%stalking to the agent at %s: reading its answer to %s: %s", prefix, socket_path, command, errno_name(errno));
		if (r == 0)
			break;
	}
	close(fd);

	struct reply reply = {.exit_code = -1};
	const char *data = in->data ? in->data : "";
	const char *end = data + in->len;
	const char *head_end = in->len >= 4 ? memmem(data, in->len, "\r\n\r\n", 4) : NULL;
	if (in->len < 12 || memcmp(data, "HTTP/1.", 7) != 0 || !head_end)
		fail(down_code, "%stalking to the agent at %s: it closed the connection without a complete answer to %s", prefix, socket_path, command);
	reply.status = (int)decimal(data + 9, 3);
	size_t len;
	const char *v = header(data, head_end + 2, "transfer-encoding", &len);
	if (v)
		fail(CNI_AGENT_ERROR, "ciliate agent: answered %s with a transfer encoding (%.*s) this plugin does not read", command, (int)len, v);
	reply.body = head_end + 4;
	reply.body_len = (size_t)(end - reply.body);
	v = header(data, head_end + 2, "content-length", &len);
	if (v) {
		long declared = decimal(v, len);
		if (declared < 0 || (size_t)declared > reply.body_len)
			fail(down_code, "%stalking to the agent at %s: its answer to %s was cut short", prefix, socket_path, command);
		reply.body_len = (size_t)declared;
	}
	v = header(data, head_end + 2, "ciliate-cni-exit", &len);
	if (v) {
		long code = decimal(v, len);
		if (code < 0 || code > 255)
			fail(CNI_AGENT_ERROR, "ciliate agent: answered %s with exit code \"%.*s\"", command, (int)len, v);
		reply.exit_code = (int)code;
	}
	return reply;
}

/* ---- main ------------------------------------------------------------------------------------ */

static void print_version(void)
{
	struct buf out = {.limit = 4096};
	buf_str(&out, "{\"cniVersion\":\"");
	if (conf_version_len)
		buf_json(&out, conf_version, conf_version_len);
	else
		buf_str(&out, DEFAULT_VERSION);
	buf_str(&out, "\",\"supportedVersions\":[");
	for (size_t i = 0; i < sizeof SUPPORTED_VERSIONS / sizeof SUPPORTED_VERSIONS[0]; i++) {
		if (i)
			buf_str(&out, ",");
		buf_str(&out, "\"");
		buf_str(&out, SUPPORTED_VERSIONS[i]);
		buf_str(&out, "\"");
	}
	buf_str(&out, "]}\n");
	if (out.over || write_all(STDOUT_FILENO, out.data, out.len) != 0)
		_exit(1);
}

int main(void)
{
	/* A runtime that stops reading must not kill the plugin silently: writes then fail instead. */
	signal(SIGPIPE, SIG_IGN);
	const char *command = getenv("CNI_COMMAND");
	if (!command)
		command = "";
	int status_cmd = strcmp(command, "STATUS") == 0;
	int down_code = status_cmd ? CNI_PLUGIN_NOT_AVAILABLE : CNI_TRY_AGAIN_LATER;
	long timeout = status_cmd ? 10 : 120;
	const char *timeout_env = getenv("CILIATE_CNI_TIMEOUT");
	if (timeout_env && *timeout_env) {
		timeout = decimal(timeout_env, strlen(timeout_env));
		if (timeout < 1 || timeout > 3600)
			fail(CNI_INVALID_ENVIRONMENT, "CILIATE_CNI_TIMEOUT \"%s\" is not a number of seconds from 1 to 3600", timeout_env);
	}
	struct sigaction sa = {.sa_handler = on_alarm};
	sigemptyset(&sa.sa_mask);
	sigaction(SIGALRM, &sa, NULL);
	prepare_timeout(down_code, "%s: no answer within %ld s (reading the network configuration on stdin)", command, timeout);
	alarm((unsigned)timeout);

	/* stdin, at most what fits in one request to the agent. */
	struct buf conf = {.limit = MAX_BODY};
	for (;;) {
		ssize_t r = buf_read(&conf, STDIN_FILENO);
		if (r == -2)
			fail(CNI_INVALID_NETWORK_CONFIG, "network configuration on stdin is over the %d bytes the agent accepts", MAX_BODY);
		if (r < 0)
			fail(CNI_IO_FAILURE, "reading the network configuration on stdin: %s", strerror(errno));
		if (r == 0)
			break;
	}

	char socket_value[sizeof ((struct sockaddr_un *)0)->sun_path];
	struct wanted want[] = {
		{"cniVersion", conf_version, sizeof conf_version, 0, ABSENT},
		{"socketPath", socket_value, sizeof socket_value, 0, ABSENT},
	};
	int scanned = scan_members(conf.data ? conf.data : "", conf.len, want, 2) == 0;
	if (want[0].state == STRING)
		conf_version_len = want[0].len;

	if (strcmp(command, "VERSION") == 0) {
		if (!scanned)
			conf_version_len = 0;
		print_version();
		return 0;
	}

	const char *socket_path = getenv("CILIATE_SOCKET_PATH");
	if (!socket_path || !*socket_path)
		socket_path = CILIATE_DEFAULT_SOCKET;
	if (scanned && want[1].state == TOO_LONG)
		fail(CNI_INVALID_NETWORK_CONFIG, "network configuration: field socketPath: must be a path of at most %zu bytes", sizeof socket_value - 1);
	if (scanned && want[1].state == UNDECODABLE)
		fail(CNI_INVALID_NETWORK_CONFIG, "network configuration: field socketPath: holds \\u0000 or a lone surrogate, which no path can");
	if (scanned && want[1].state == STRING) {
		if (socket_value[0] != '/')
			fail(CNI_INVALID_NETWORK_CONFIG, "network configuration: field socketPath: must be an absolute path");
		socket_path = socket_value;
	}
	if (strlen(socket_path) >= sizeof socket_value)
		fail(CNI_INVALID_ENVIRONMENT, "CILIATE_SOCKET_PATH: must be a path of at most %zu bytes", sizeof socket_value - 1);

	/* {"env":{"CNI_…":"…",…},"stdin":"…"} */
	struct buf body = {.limit = MAX_BODY};
	buf_str(&body, "{\"env\":{");
	int first = 1;
	for (size_t i = 0; i < sizeof ENV_NAMES / sizeof ENV_NAMES[0]; i++) {
		const char *v = getenv(ENV_NAMES[i]);
		if (!v)
			continue;
		buf_str(&body, first ? "\"" : ",\"");
		buf_str(&body, ENV_NAMES[i]);
		buf_str(&body, "\":\"");
		buf_json(&body, v, strlen(v));
		buf_str(&body, "\"");
		first = 0;
	}
	buf_str(&body, "},\"stdin\":\"");
	buf_json(&body, conf.data ? conf.data : "", conf.len);
	buf_str(&body, "\"}");
	if (body.over)
		fail(CNI_INVALID_NETWORK_CONFIG, "network configuration on stdin with the CNI_* variables is over the %d bytes the agent accepts in a request", MAX_BODY);

	prepare_timeout(down_code, "%s%s: the agent at %s did not answer within %ld s", status_cmd ? "STATUS: the Ciliate agent is not available: " : "", command, socket_path, timeout);
	struct buf in = {.limit = MAX_RESPONSE};
	struct reply reply = ask_agent(socket_path, command, down_code, &body, &in);
	alarm(0);
	if (reply.status != 200 || reply.exit_code < 0) {
		/* Not an answer of the CNI logic: the request itself was refused (an agent without the route, a body it rejects). */
		size_t shown = reply.body_len > 512 ? 512 : reply.body_len;
		fail_with_details(reply.status == 503 ? CNI_TRY_AGAIN_LATER : CNI_AGENT_ERROR, reply.body, shown, "ciliate agent: answered %s with HTTP %d", command, reply.status);
	}
	if (reply.body_len) {
		if (write_all(STDOUT_FILENO, reply.body, reply.body_len) != 0)
			return 1;
		if (reply.body[reply.body_len - 1] != '\n' && write_all(STDOUT_FILENO, "\n", 1) != 0)
			return 1;
	}
	return reply.exit_code;
}
