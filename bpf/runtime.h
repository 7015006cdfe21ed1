/* SPDX-License-Identifier: Apache-2.0 */
/* Process lifecycle events of the runtime sensor (bpf/bpf_runtime.c). Their TS codecs are in
 * src/runtime/events.ts, tested against this file's BTF (src/runtime/events.test.ts).
 *
 * Every event starts with the same 24 bytes (type .. ktime), so the reader can dispatch on the
 * first byte. An exec event is followed by `binary_len + args_len + cwd_len` bytes of data:
 *   binary  bprm->filename as exec'd, NUL-terminated (at most RT_BINARY_MAX bytes)
 *   args    the process's argv area, argv[0] included, NUL-separated (at most RT_ARGS_MAX)
 *   cwd     the working directory's path components from the innermost outwards, each
 *           NUL-terminated (at most RT_CWD_MAX bytes, RT_CWD_DEPTH components); user space
 *           reverses them. The kernel has no d_path for tracepoint programs, so we walk dentries.
 */
#pragma once

#include "vmlinux.h"

enum runtime_event_type {
	RT_EVENT_EXEC = 1,
	RT_EVENT_FORK = 2,
	RT_EVENT_EXIT = 3,
};

/* Flags of an exec event (the `flags` field). */
enum runtime_exec_flag {
	RT_EXEC_TRUNC_FILENAME = 1 << 0,
	RT_EXEC_TRUNC_ARGS = 1 << 1,
	RT_EXEC_ERROR_ARGS = 1 << 2,
	RT_EXEC_TRUNC_CWD = 1 << 3,
	RT_EXEC_ERROR_CWD = 1 << 4,
	RT_EXEC_NO_AUID = 1 << 5,
};

/* Documented limits (src/runtime/events.ts repeats them for user space). */
#define RT_BINARY_MAX 1024
#define RT_ARGS_MAX 4096
#define RT_CWD_MAX 1024
#define RT_CWD_DEPTH 48
#define RT_NAME_MAX 256
/* The data area: binary + args + cwd, and room for the last component read at the end. */
#define RT_DATA_SIZE 8192
#define RT_DATA_MASK (RT_DATA_SIZE - 1)

/* Namespace slots of runtime_exec_event.ns, in Tetragon's Namespaces field order. */
enum runtime_ns {
	RT_NS_UTS,
	RT_NS_IPC,
	RT_NS_MNT,
	RT_NS_PID,
	RT_NS_PID_FOR_CHILDREN,
	RT_NS_NET,
	RT_NS_TIME,
	RT_NS_TIME_FOR_CHILDREN,
	RT_NS_CGROUP,
	RT_NS_USER,
	RT_NS_COUNT,
};

/* The first 24 bytes of every event, flat (not a nested struct) so each codec names its fields:
 * pid is the tgid, ppid the real parent's tgid, ktime bpf_ktime_get_ns() at the event (an exec's
 * ktime and pid make its exec_id). */
#define RT_EVENT_HEADER \
	__u8 type;      \
	__u8 _pad0;     \
	__u16 flags;    \
	__u32 pid;      \
	__u32 tid;      \
	__u32 ppid;     \
	__u64 ktime

struct runtime_exec_event {
	RT_EVENT_HEADER;
	__u32 uid;
	__u32 euid;
	__u32 gid;
	__u32 auid; /* loginuid; 4294967295 when unset or unknown */
	__u64 cap_effective;
	__u64 cap_permitted;
	__u64 cap_inheritable;
	__u64 cgroup_id;
	__u32 nspid; /* pid in the process's own pid namespace */
	__u32 ns[RT_NS_COUNT];
	__u16 binary_len;
	__u16 args_len;
	__u16 cwd_len;
	__u16 _pad1;
	__u32 args_size; /* the whole argv area's size, before truncation */
};

/* A new process (not a thread): its tgid is `pid`, its creator `ppid`. */
struct runtime_fork_event {
	RT_EVENT_HEADER;
};

/* The last thread of a process exited: `exit_code` is wait(2)'s status (signal in the low 7 bits,
 * exit status in bits 8..15). */
struct runtime_exit_event {
	RT_EVENT_HEADER;
	__u32 exit_code;
	__u32 _pad1;
};
