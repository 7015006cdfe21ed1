/* SPDX-License-Identifier: Apache-2.0 */
/*
 * bpf(2) as a Node-API function, for the library's hot paths (single map lookups and updates).
 * koffi reaches the same syscall, but its generic call path costs about 120 ns, which on this
 * kernel is half as much again as the syscall itself; a purpose-built Node-API function costs a
 * fraction of that. Everything else still goes through koffi (src/ebpf/internal/sys.ts), which
 * also stands in when this addon has not been built.
 *
 *   bpf(cmd: number, attr: Buffer, size: number): number   // the result, or -errno
 *   bpfAsync(cmd, attr, size, netnsFd = -1): Promise<number> // the same, on libuv's thread pool
 *
 * bpfAsync is for commands that sleep in the kernel rather than work: updating a map of maps
 * waits for an RCU grace period (milliseconds) so that no program still sees the old inner map,
 * and so does attaching or detaching a TCX link. The caller must keep every buffer that `attr`
 * points to unchanged until the promise settles.
 *
 * Commands that name an interface by index (LINK_CREATE for TCX or XDP) resolve it in the network
 * namespace of the calling thread, and a pool thread is in the namespace the process started in,
 * not necessarily the caller's (which may have entered another with setns). With netnsFd (an open
 * network namespace file, which the caller keeps open until the promise settles) the pool thread
 * enters that namespace for the call and returns to its own afterwards.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <node_api.h>

static napi_value bpf_call(napi_env env, napi_callback_info info)
{
	size_t argc = 3;
	napi_value argv[3], result;
	int32_t cmd = 0;
	uint32_t size = 0;
	void *attr = NULL;
	size_t length = 0;
	long ret;

	if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 3 ||
	    napi_get_value_int32(env, argv[0], &cmd) != napi_ok ||
	    napi_get_buffer_info(env, argv[1], &attr, &length) != napi_ok ||
	    napi_get_value_uint32(env, argv[2], &size) != napi_ok) {
		napi_throw_type_error(env, NULL, "bpf(cmd: number, attr: Buffer, size: number)");
		return NULL;
	}
	/* Never let the kernel read past the Buffer. */
	if (size > length)
		size = (uint32_t)length;
	ret = syscall(__NR_bpf, cmd, attr, size);
	napi_create_int32(env, ret < 0 ? -errno : (int32_t)ret, &result);
	return result;
}

struct bpf_async_call {
	napi_async_work work;
	napi_deferred deferred;
	napi_ref attr_ref; /* keeps the attr Buffer alive while a pool thread uses it */
	int32_t cmd;
	void *attr;
	uint32_t size;
	int32_t netns_fd; /* -1: the pool thread's own namespace */
	int32_t result;
};

/* Whether two open namespace files are the same namespace. */
static int same_namespace(int a, int b)
{
	struct stat sa, sb;

	return fstat(a, &sa) == 0 && fstat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

static void bpf_async_execute(napi_env env, void *data)
{
	struct bpf_async_call *call = data;
	int own = -1;
	long ret;

	(void)env;
	if (call->netns_fd >= 0) {
		own = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
		if (own < 0) {
			call->result = -errno;
			return;
		}
		if (same_namespace(own, call->netns_fd)) {
			close(own);
			own = -1;
		} else if (setns(call->netns_fd, CLONE_NEWNET) < 0) {
			call->result = -errno;
			close(own);
			return;
		}
	}
	ret = syscall(__NR_bpf, call->cmd, call->attr, call->size);
	call->result = ret < 0 ? -errno : (int32_t)ret;
	if (own >= 0) {
		/* A pool thread left in another namespace would run every later piece of the process's
		 * work there (DNS lookups, sockets): better to stop than to go on so. */
		if (setns(own, CLONE_NEWNET) < 0) {
			perror("bpfAsync: returning a pool thread to its network namespace");
			abort();
		}
		close(own);
	}
}

static void bpf_async_complete(napi_env env, napi_status status, void *data)
{
	struct bpf_async_call *call = data;
	napi_value result;

	napi_create_int32(env, status == napi_ok ? call->result : -ECANCELED, &result);
	napi_resolve_deferred(env, call->deferred, result);
	napi_delete_reference(env, call->attr_ref);
	napi_delete_async_work(env, call->work);
	free(call);
}

static napi_value bpf_async_call(napi_env env, napi_callback_info info)
{
	size_t argc = 4, length = 0;
	napi_value argv[4], promise, name;
	struct bpf_async_call *call = calloc(1, sizeof(*call));

	if (!call) {
		napi_throw_error(env, NULL, "bpfAsync: out of memory");
		return NULL;
	}
	call->netns_fd = -1;
	if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3 ||
	    napi_get_value_int32(env, argv[0], &call->cmd) != napi_ok ||
	    napi_get_buffer_info(env, argv[1], &call->attr, &length) != napi_ok ||
	    napi_get_value_uint32(env, argv[2], &call->size) != napi_ok ||
	    (argc > 3 && napi_get_value_int32(env, argv[3], &call->netns_fd) != napi_ok)) {
		free(call);
		napi_throw_type_error(env, NULL, "bpfAsync(cmd: number, attr: Buffer, size: number, netnsFd?: number)");
		return NULL;
	}
	if (call->size > length)
		call->size = (uint32_t)length;
	if (napi_create_reference(env, argv[1], 1, &call->attr_ref) != napi_ok ||
	    napi_create_promise(env, &call->deferred, &promise) != napi_ok ||
	    napi_create_string_utf8(env, "ciliate:bpf", NAPI_AUTO_LENGTH, &name) != napi_ok ||
	    napi_create_async_work(env, NULL, name, bpf_async_execute, bpf_async_complete, call, &call->work) != napi_ok ||
	    napi_queue_async_work(env, call->work) != napi_ok) {
		napi_throw_error(env, NULL, "bpfAsync: could not queue the call");
		return NULL;
	}
	return promise;
}

NAPI_MODULE_INIT()
{
	napi_value fn, fn_async;

	if (napi_create_function(env, "bpf", NAPI_AUTO_LENGTH, bpf_call, NULL, &fn) != napi_ok ||
	    napi_set_named_property(env, exports, "bpf", fn) != napi_ok ||
	    napi_create_function(env, "bpfAsync", NAPI_AUTO_LENGTH, bpf_async_call, NULL, &fn_async) != napi_ok ||
	    napi_set_named_property(env, exports, "bpfAsync", fn_async) != napi_ok)
		return NULL;
	return exports;
}
