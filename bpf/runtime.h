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
#include "string_key.h"

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

/* ---- TracingPolicy hooks (src/runtime/policy.ts compiles policies into these) ----
 * One generic program, runtime_policy, serves every tracepoint hook of every policy: it is
 * attached once per hook with the hook's slot as the attach cookie, and finds the hook's argument
 * layout and compiled selectors in runtime_policy_hooks[slot]. Nothing is compiled per policy. */
#define RT_EVENT_POLICY 4

#define RT_POLICY_HOOKS 128     /* hook slots over all loaded policies */
#define RT_POLICY_TPS 64        /* tracepoints with hooks (one attachment each) */
#define RT_POLICY_TP_HOOKS 8    /* hooks sharing one tracepoint (policies on one syscall) */
#define RT_POLICY_ARGS 5        /* arguments a hook captures (Tetragon: 5) */
#define RT_POLICY_SELECTORS 5   /* selectors per hook (Tetragon: 5) */
#define RT_POLICY_MATCHARGS 5   /* matchArgs entries per selector (Tetragon: 5) */
#define RT_POLICY_VALUES 8      /* values per numeric / address / port operator (Tetragon: 4) */
#define RT_POLICY_PIDS 8        /* matchPIDs values (Tetragon: 4) */
#define RT_POLICY_NS_FILTERS 10 /* matchNamespaces entries (Tetragon: 10) */
#define RT_POLICY_NS_VALUES 4   /* values per matchNamespaces entry (Tetragon: 4) */
#define RT_POLICY_CAP_FILTERS 4 /* matchCapabilities + matchCapabilityChanges entries */
#define RT_POLICY_FOLLOW 64     /* matchBinaries with followChildren (Tetragon: 64) */
#define RT_RATE_ARG_BYTES 40    /* bytes of each argument a rateLimit key holds (Tetragon: 40) */
/* Bytes of a string argument read, compared and reported, NUL included: a longer string is cut
 * (flagged) and then never Equal to a value, which are at most RT_POLICY_STR - 2 characters. */
#define RT_POLICY_STR STRING_KEY_BYTES
#define RT_POLICY_POSTFIX STRING_KEY_POSTFIX
#define RT_ARG_SLOT 256         /* bytes per argument in a policy event */

enum rt_arg_type {
	RT_ARG_NONE = 0,
	RT_ARG_INT = 1,      /* signed, `size` bytes at `offset` of the tracepoint record */
	RT_ARG_UINT = 2,     /* unsigned, likewise */
	RT_ARG_STRING = 3,   /* a user pointer at `offset` to a NUL-terminated string */
	RT_ARG_SOCKADDR = 4, /* a user pointer at `offset` to a struct sockaddr (in, in6) */
	RT_ARG_DATA_LOC = 5, /* a __data_loc char[] of the tracepoint record (kernel string) */
};

enum rt_op {
	RT_OP_NONE = 0,
	RT_OP_EQUAL,
	RT_OP_NOT_EQUAL,
	RT_OP_PREFIX,
	RT_OP_NOT_PREFIX,
	RT_OP_POSTFIX,
	RT_OP_NOT_POSTFIX,
	RT_OP_MASK,
	RT_OP_GT,
	RT_OP_LT,
	RT_OP_DADDR,
	RT_OP_NOT_DADDR,
	RT_OP_DPORT,
	RT_OP_NOT_DPORT,
	RT_OP_FAMILY,
	RT_OP_IN,     /* matchBinaries / matchPIDs / matchNamespaces / matchCapabilities */
	RT_OP_NOT_IN,
	RT_OP_SADDR,
	RT_OP_NOT_SADDR,
	RT_OP_SPORT,
	RT_OP_NOT_SPORT,
};

/* rateLimitScope: whose repeats a rate limit folds together (Tetragon's default: thread). */
enum rt_rate_scope {
	RT_RATE_THREAD = 0,
	RT_RATE_PROCESS = 1,
	RT_RATE_GLOBAL = 2,
};

/* What each process had at its exec (and the followChildren marks it inherited), by tgid, in
 * runtime_procs: matchNamespaceChanges and matchCapabilityChanges compare the caller with it,
 * followChildren reads `follow`. Copied to a child at fork, gone at exit. */
struct rt_proc {
	__u64 follow; /* bit i: a followChildren matchBinaries (runtime_policy_follow.keys[i]) matched it or an ancestor */
	__u64 caps[3]; /* effective, inheritable, permitted */
	__u32 ns[RT_NS_COUNT];
	/* The first network namespace other than the host's that the process or an ancestor exec'd
	 * in: its pod, kept across fork and exec. A process that leaves its pod's namespace (unshare
	 * in a user namespace needs no privilege) stays in the pod's scoped policies. */
	__u32 pod_netns;
	__u32 _pad;
};

/* What user space tells the programs once, at the sensor's start (runtime_config). */
struct rt_config {
	__u32 host_netns;
	__u32 _pad;
};

/* The followChildren matchBinaries of all hooks: bit i of `active` in use, its strings under
 * keys[i] in runtime_policy_strings (In only, as Tetragon). Read at every exec. */
struct rt_follow_set {
	__u64 active;
	__u32 keys[RT_POLICY_FOLLOW];
};

enum rt_action {
	RT_ACTION_POST = 0,
	RT_ACTION_NOPOST = 1,
	RT_ACTION_SIGKILL = 2,
	RT_ACTION_SIGNAL = 3,
};

struct rt_arg_spec {
	__u16 offset;
	__u8 type;
	__u8 size;
};

/* The hooks on one tracepoint, run in this order. */
struct rt_tp {
	__u32 nhooks;
	__u16 slots[RT_POLICY_TP_HOOKS];
};

/* One matchArgs entry. Strings are matched in runtime_policy_strings under `key`, and so are
 * addresses (SAddr, DAddr: a family byte, 4 then 6, and the address in network order, each CIDR
 * a prefix of them); numbers and ports against values[0..nvalues). */
struct rt_arg_filter {
	__u8 arg; /* index into rt_hook.args */
	__u8 op;
	__u8 nvalues;
	__u8 _pad;
	__u32 key;
	__u64 values[RT_POLICY_VALUES];
};

/* One matchNamespaces entry: the caller's namespace `ns` (enum runtime_ns) is (IN) or is not
 * (NOT_IN) one of values[0..nvalues), inode numbers ("host_ns" resolved by user space). */
struct rt_ns_filter {
	__u8 ns;
	__u8 op;
	__u8 nvalues;
	__u8 _pad;
	__u32 values[RT_POLICY_NS_VALUES];
};

/* One matchCapabilities entry (or, with `changes`, matchCapabilityChanges: the bits that differ
 * from the set at exec). IN: any bit of `mask` in the set; NOT_IN: none. With user_ns set
 * (isNamespaceCapability), only a caller outside that (the host's) user namespace matches. */
struct rt_cap_filter {
	__u8 type; /* 0 effective, 1 inheritable, 2 permitted */
	__u8 op;
	__u8 changes;
	__u8 _pad;
	__u32 user_ns;
	__u64 mask;
};

struct rt_selector {
	__u8 nargs;
	__u8 bin_op;    /* RT_OP_NONE, IN, NOT_IN, PREFIX, NOT_PREFIX, POSTFIX, NOT_POSTFIX */
	__u8 pid_op;    /* RT_OP_NONE, IN, NOT_IN */
	__u8 npids;
	__u8 action;
	__u8 nns;
	__u8 ncaps;
	__u8 follow;    /* followChildren: 1 + its bit in rt_proc.follow, 0 without */
	__u32 signal;
	__u32 bin_key;
	__u8 nschange_op; /* matchNamespaceChanges: RT_OP_NONE, IN, NOT_IN */
	__u8 rate_scope;  /* enum rt_rate_scope */
	__u16 nschange_mask; /* bit per enum runtime_ns */
	__u8 pid_flags;   /* PID_F_* (task_pids.h): matchPIDs followForks, isNamespacePID */
	__u8 _pad[3];
	__u64 rate_ns;    /* Post's rateLimit, 0: none */
	__u32 pids[RT_POLICY_PIDS];
	struct rt_ns_filter ns[RT_POLICY_NS_FILTERS];
	struct rt_cap_filter caps[RT_POLICY_CAP_FILTERS];
	struct rt_arg_filter args[RT_POLICY_MATCHARGS];
};

struct rt_hook {
	__u32 policy_id;
	__u8 nargs;
	__u8 nselectors; /* 0: every call is posted */
	__u8 scoped;     /* podSelector / containerSelector / namespaced: the caller's netns must be
			  * in runtime_policy_pods under policy_id */
	__u8 containers; /* containerSelector: and the caller's cgroup v2 (or one above it) must be
			  * in runtime_policy_cgroups under policy_id */
	struct rt_arg_spec args[RT_POLICY_ARGS];
	struct rt_selector selectors[RT_POLICY_SELECTORS];
};


/* Per hook slot, summed over CPUs: calls seen, calls a selector matched, events posted, signals
 * sent. What the filter rejected never left the kernel: runs - posted. */
struct rt_hook_stats {
	__u64 runs;
	__u64 matched;
	__u64 posted;
	__u64 signalled;
	__u64 ratelimited; /* matched, Post, and dropped by rateLimit */
};

/* A key of runtime_policy_pods: a network namespace a scoped policy applies to. */
struct rt_pod_key {
	__u32 policy_id;
	__u32 netns;
};

/* A key of runtime_policy_cgroups: a selected container's cgroup v2 (its id, the directory's
 * inode number) for a policy with a containerSelector. */
struct rt_cgroup_key {
	__u64 cgroup_id;
	__u32 policy_id;
	__u32 _pad;
};

/* Cgroup levels a containerSelector looks through, from the top: a container's cgroup deeper
 * than this is never selected (fail closed). */
#define RT_CGROUP_DEPTH 16

/* A key of runtime_policy_rate: one selector's action, by whom (rateLimitScope) and with which
 * arguments (their first RT_RATE_ARG_BYTES bytes); the value is when it last posted. */
struct rt_rate_key {
	__u32 slot;
	__u32 selector;
	__u32 who; /* tid, tgid or 0 */
	__u32 policy_id; /* a later policy in the same slot starts afresh */
	__u8 args[RT_POLICY_ARGS][RT_RATE_ARG_BYTES];
};

/* Per-argument flags of a policy event (the `arg_flags` field, 4 bits per argument). */
enum rt_arg_flag {
	RT_ARGF_TRUNCATED = 1,
	RT_ARGF_ERROR = 2,
};

/* A hook's matching call. Followed by RT_POLICY_ARGS slots of RT_ARG_SLOT bytes: a string's
 * bytes (values[i] is their length, NUL excluded), or a sockaddr as family (u16), port (u16,
 * network order) and 16 address bytes; numbers are in values[i]. */
struct runtime_policy_event {
	RT_EVENT_HEADER;
	__u32 hook;
	__u32 policy_id;
	__u8 selector;
	__u8 action;
	__u16 _pad1;
	__u32 arg_flags;
	__u64 values[RT_POLICY_ARGS];
};
