/* SPDX-License-Identifier: Apache-2.0 */
/*
 * bpf(2) as a Node-API function, for the library's hot paths (single map lookups and updates).
 * koffi reaches the same syscall, but its generic call path costs about 120 ns, which on this
 * kernel is half as much again as the syscall itself; a purpose-built Node-API function costs a
 * fraction of that. Everything else still goes through koffi (src/ebpf/internal/sys.ts), which
 * also stands in when this addon has not been built.
 *
 *   bpf(cmd: number, attr: Buffer, size: number): number   // the result, or -errno
 */
#include <errno.h>
#include <stdint.h>
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

NAPI_MODULE_INIT()
{
	napi_value fn;

	if (napi_create_function(env, "bpf", NAPI_AUTO_LENGTH, bpf_call, NULL, &fn) != napi_ok ||
	    napi_set_named_property(env, exports, "bpf", fn) != napi_ok)
		return NULL;
	return exports;
}
