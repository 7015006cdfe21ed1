/* SPDX-License-Identifier: Apache-2.0 */
/*
 * NETLINK_ROUTE sockets for the datapath's network configuration (src/datapath/netlink). Only
 * the socket work is here; messages are built and parsed in TypeScript.
 *
 *   open(netns: string | null, groups: number): number        // fd, or -errno
 *   close(fd: number): number                                 // 0 or -errno
 *   transact(fd, request: Buffer, terminals: number): Promise<Buffer | number>
 *   recv(fd: number): Buffer | number                          // never blocks; -EAGAIN when empty
 *   sysctlWrite(netns: string | null, path: string, value: string): number   // 0 or -errno
 *   netnsCookie(netns: string): bigint | number               // the namespace's cookie, or -errno
 *
 * A socket belongs to the network namespace it was created in, whatever thread uses it later, so
 * open() enters the namespace (setns on the calling thread), creates the socket and comes back,
 * all in C: no JavaScript ever runs in the other namespace. /proc/sys/net files likewise bind to
 * the opener's namespace, hence sysctlWrite's same dance.
 *
 * transact() runs on libuv's thread pool: the kernel does a request's work inside sendmsg()
 * (deleting a veth waits for an RCU grace period), which must not stall the event loop. It sends
 * the request (one or more messages) and reads until `terminals` NLMSG_ERROR/NLMSG_DONE messages
 * have arrived, resolving with every message read. One transact() per socket at a time.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include <node_api.h>

#define RECV_CHUNK 65536
/* A kernel that never answers must not hold a pool thread forever. */
#define RECV_TIMEOUT_S 30
#define PATH_MAX_LEN 512

/* Reads an optional string argument (null/undefined → empty). Returns 0, or -1 after throwing. */
static int get_string(napi_env env, napi_value value, char *out, size_t size, const char *usage)
{
	napi_valuetype type;
	size_t length = 0;

	out[0] = '\0';
	if (napi_typeof(env, value, &type) != napi_ok)
		goto bad;
	if (type == napi_null || type == napi_undefined)
		return 0;
	if (type != napi_string || napi_get_value_string_utf8(env, value, out, size, &length) != napi_ok || length >= size - 1)
		goto bad;
	return 0;
bad:
	napi_throw_type_error(env, NULL, usage);
	return -1;
}

/*
 * Enters the network namespace at `path` on this thread; `*original` receives a descriptor of
 * the one to come back to. Returns 0 or -errno. An empty path stays where it is.
 */
static int enter_netns(const char *path, int *original)
{
	int target, err;

	*original = -1;
	if (!path[0])
		return 0;
	*original = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
	if (*original < 0)
		return -errno;
	target = open(path, O_RDONLY | O_CLOEXEC);
	if (target < 0) {
		err = -errno;
		close(*original);
		*original = -1;
		return err;
	}
	err = setns(target, CLONE_NEWNET) < 0 ? -errno : 0;
	close(target);
	if (err) {
		close(*original);
		*original = -1;
	}
	return err;
}

/* Going back cannot be allowed to fail silently: the thread would stay in the wrong namespace. */
static void leave_netns(int original)
{
	if (original < 0)
		return;
	if (setns(original, CLONE_NEWNET) < 0)
		abort();
	close(original);
}

static napi_value int_value(napi_env env, int32_t value)
{
	napi_value result;

	napi_create_int32(env, value, &result);
	return result;
}

static napi_value nl_open(napi_env env, napi_callback_info info)
{
	static const char usage[] = "open(netns: string | null, groups: number)";
	size_t argc = 2;
	napi_value argv[2];
	char path[PATH_MAX_LEN];
	uint32_t groups = 0;
	struct sockaddr_nl local = { .nl_family = AF_NETLINK };
	struct timeval timeout = { .tv_sec = RECV_TIMEOUT_S };
	int original, fd, err, one = 1;

	if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 2 ||
	    napi_get_value_uint32(env, argv[1], &groups) != napi_ok) {
		napi_throw_type_error(env, NULL, usage);
		return NULL;
	}
	if (get_string(env, argv[0], path, sizeof(path), usage) < 0)
		return NULL;
	err = enter_netns(path, &original);
	if (err)
		return int_value(env, err);
	fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	err = fd < 0 ? -errno : 0;
	leave_netns(original);
	if (err)
		return int_value(env, err);
	local.nl_groups = groups;
	/* Errors without the request echoed back: the caller knows what it sent. */
	setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof(one));
	/* The kernel's own words on a refusal (\"Nexthop device is not up\"), beside the errno. */
	setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
	if (groups) {
		/* Event sockets: a burst of address changes should not overflow into ENOBUFS. */
		int size = 1 << 20;
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
	}
	if (bind(fd, (struct sockaddr *)&local, sizeof(local)) < 0) {
		err = -errno;
		close(fd);
		return int_value(env, err);
	}
	return int_value(env, fd);
}

static napi_value nl_close(napi_env env, napi_callback_info info)
{
	size_t argc = 1;
	napi_value argv[1];
	int32_t fd;

	if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 1 ||
	    napi_get_value_int32(env, argv[0], &fd) != napi_ok) {
		napi_throw_type_error(env, NULL, "close(fd: number)");
		return NULL;
	}
	return int_value(env, close(fd) < 0 ? -errno : 0);
}

struct transaction {
	napi_async_work work;
	napi_deferred deferred;
	napi_ref request_ref;
	int fd;
	void *request;
	size_t request_length;
	uint32_t terminals;
	char *reply;
	size_t reply_length;
	int error;
};

/* Counts the NLMSG_ERROR and NLMSG_DONE messages in a datagram. */
static uint32_t count_terminals(const char *data, size_t length)
{
	const struct nlmsghdr *header = (const struct nlmsghdr *)data;
	int remaining = (int)length;
	uint32_t count = 0;

	for (; NLMSG_OK(header, remaining); header = NLMSG_NEXT(header, remaining))
		if (header->nlmsg_type == NLMSG_ERROR || header->nlmsg_type == NLMSG_DONE)
			count++;
	return count;
}

static void transact_execute(napi_env env, void *data)
{
	struct transaction *t = data;
	struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
	size_t capacity = 0;
	uint32_t seen = 0;

	(void)env;
	if (sendto(t->fd, t->request, t->request_length, 0, (struct sockaddr *)&kernel, sizeof(kernel)) < 0) {
		t->error = -errno;
		return;
	}
	while (seen < t->terminals) {
		ssize_t got;

		if (capacity - t->reply_length < RECV_CHUNK) {
			char *grown = realloc(t->reply, capacity + 4 * RECV_CHUNK);
			if (!grown) {
				t->error = -ENOMEM;
				return;
			}
			t->reply = grown;
			capacity += 4 * RECV_CHUNK;
		}
		got = recv(t->fd, t->reply + t->reply_length, RECV_CHUNK, 0);
		if (got < 0) {
			if (errno == EINTR)
				continue;
			t->error = -errno;
			return;
		}
		seen += count_terminals(t->reply + t->reply_length, (size_t)got);
		t->reply_length += (size_t)got;
	}
}

static void free_reply(napi_env env, void *data, void *hint)
{
	(void)env;
	(void)hint;
	free(data);
}

static void transact_complete(napi_env env, napi_status status, void *data)
{
	struct transaction *t = data;
	napi_value result;

	if (status != napi_ok) {
		result = int_value(env, -ECANCELED);
		free(t->reply);
	} else if (t->error) {
		result = int_value(env, t->error);
		free(t->reply);
	} else if (napi_create_external_buffer(env, t->reply_length, t->reply ? t->reply : "", t->reply ? free_reply : NULL, NULL, &result) != napi_ok) {
		/* Runtimes that forbid external buffers: copy. */
		void *copy;

		napi_create_buffer_copy(env, t->reply_length, t->reply ? t->reply : "", &copy, &result);
		free(t->reply);
	}
	napi_resolve_deferred(env, t->deferred, result);
	napi_delete_reference(env, t->request_ref);
	napi_delete_async_work(env, t->work);
	free(t);
}

static napi_value nl_transact(napi_env env, napi_callback_info info)
{
	static const char usage[] = "transact(fd: number, request: Buffer, terminals: number)";
	size_t argc = 3;
	napi_value argv[3], promise, name;
	struct transaction *t = calloc(1, sizeof(*t));

	if (!t) {
		napi_throw_error(env, NULL, "transact: out of memory");
		return NULL;
	}
	if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 3 ||
	    napi_get_value_int32(env, argv[0], &t->fd) != napi_ok ||
	    napi_get_buffer_info(env, argv[1], &t->request, &t->request_length) != napi_ok ||
	    napi_get_value_uint32(env, argv[2], &t->terminals) != napi_ok) {
		free(t);
		napi_throw_type_error(env, NULL, usage);
		return NULL;
	}
	if (napi_create_reference(env, argv[1], 1, &t->request_ref) != napi_ok ||
	    napi_create_promise(env, &t->deferred, &promise) != napi_ok ||
	    napi_create_string_utf8(env, "ciliate:rtnetlink", NAPI_AUTO_LENGTH, &name) != napi_ok ||
	    napi_create_async_work(env, NULL, name, transact_execute, transact_complete, t, &t->work) != napi_ok ||
	    napi_queue_async_work(env, t->work) != napi_ok) {
		napi_throw_error(env, NULL, "transact: could not queue the request");
		return NULL;
	}
	return promise;
}

static napi_value nl_recv(napi_env env, napi_callback_info info)
{
	size_t argc = 1;
	napi_value argv[1], result;
	int32_t fd;
	char *data;
	ssize_t got;

	if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 1 ||
	    napi_get_value_int32(env, argv[0], &fd) != napi_ok) {
		napi_throw_type_error(env, NULL, "recv(fd: number)");
		return NULL;
	}
	data = malloc(RECV_CHUNK);
	if (!data)
		return int_value(env, -ENOMEM);
	do
		got = recv(fd, data, RECV_CHUNK, MSG_DONTWAIT);
	while (got < 0 && errno == EINTR);
	if (got < 0) {
		int err = -errno;

		free(data);
		return int_value(env, err);
	}
	if (napi_create_buffer_copy(env, (size_t)got, data, NULL, &result) != napi_ok) {
		free(data);
		napi_throw_error(env, NULL, "recv: could not create a Buffer");
		return NULL;
	}
	free(data);
	return result;
}

static napi_value nl_sysctl_write(napi_env env, napi_callback_info info)
{
	static const char usage[] = "sysctlWrite(netns: string | null, path: string, value: string)";
	size_t argc = 3;
	napi_value argv[3];
	char netns[PATH_MAX_LEN], path[PATH_MAX_LEN], value[256];
	int original, fd, err;
	size_t length;

	if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 3) {
		napi_throw_type_error(env, NULL, usage);
		return NULL;
	}
	if (get_string(env, argv[0], netns, sizeof(netns), usage) < 0 || get_string(env, argv[1], path, sizeof(path), usage) < 0 ||
	    get_string(env, argv[2], value, sizeof(value), usage) < 0)
		return NULL;
	err = enter_netns(netns, &original);
	if (err)
		return int_value(env, err);
	fd = open(path, O_WRONLY | O_CLOEXEC);
	err = fd < 0 ? -errno : 0;
	leave_netns(original);
	if (err)
		return int_value(env, err);
	length = strlen(value);
	if (write(fd, value, length) != (ssize_t)length)
		err = errno ? -errno : -EIO;
	close(fd);
	return int_value(env, err);
}

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71
#endif

/* The cookie bpf_get_netns_cookie() gives programs for sockets of the namespace at `netns`. */
static napi_value nl_netns_cookie(napi_env env, napi_callback_info info)
{
	static const char usage[] = "netnsCookie(netns: string)";
	size_t argc = 1;
	napi_value argv[1], result;
	char netns[PATH_MAX_LEN];
	uint64_t cookie = 0;
	socklen_t length = sizeof(cookie);
	int original, fd, err;

	if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 1) {
		napi_throw_type_error(env, NULL, usage);
		return NULL;
	}
	if (get_string(env, argv[0], netns, sizeof(netns), usage) < 0)
		return NULL;
	err = enter_netns(netns, &original);
	if (err)
		return int_value(env, err);
	fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	err = fd < 0 ? -errno : 0;
	leave_netns(original);
	if (err)
		return int_value(env, err);
	if (getsockopt(fd, SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &length) < 0)
		err = -errno;
	close(fd);
	if (err)
		return int_value(env, err);
	napi_create_bigint_uint64(env, cookie, &result);
	return result;
}

NAPI_MODULE_INIT()
{
	static const struct {
		const char *name;
		napi_callback fn;
	} functions[] = {
		{ "open", nl_open }, { "close", nl_close }, { "transact", nl_transact }, { "recv", nl_recv }, { "sysctlWrite", nl_sysctl_write },
		{ "netnsCookie", nl_netns_cookie },
	};
	napi_value fn;

	for (size_t i = 0; i < sizeof(functions) / sizeof(functions[0]); i++) {
		if (napi_create_function(env, functions[i].name, NAPI_AUTO_LENGTH, functions[i].fn, NULL, &fn) != napi_ok ||
		    napi_set_named_property(env, exports, functions[i].name, fn) != napi_ok)
			return NULL;
	}
	return exports;
}
