/* SPDX-License-Identifier: Apache-2.0 */
/* Socket enforcement of TracingPolicies (bpf/bpf_sock_enforce.c): kprobes on sys_connect,
 * sys_bind and sys_socket with an Override action, served at the cgroup socket hooks, since this
 * kernel has no kprobes (so no override) and no BPF LSM. src/runtime/socket-policy.ts compiles a
 * policy into these structs, and its codecs are tested against this file's BTF.
 *
 * A rule is one kprobe of one policy: its selectors, ORed, the first matching one deciding. A
 * selector's filters (binary, pids, network namespace, arguments) are ANDed. */
#pragma once

#include "vmlinux.h"
#include "string_key.h"

#define SE_RULES 64       /* rule slots over all loaded policies */
#define SE_SELECTORS 5    /* selectors per rule (Tetragon: 5) */
#define SE_MATCHARGS 5    /* argument filters per selector (Tetragon: 5) */
#define SE_VALUES 8       /* values per operator (Tetragon: 4) */
#define SE_PIDS 8         /* matchPIDs values (Tetragon: 4) */
#define SE_NETNS 8        /* matchNamespaces Net values (Tetragon: 4) */
/* Bytes of a binary's path compared, NUL included: a longer path is in no set (only the negated
 * operators match it), as is one the walk could not read. */
#define SE_STR STRING_KEY_BYTES
#define SE_POSTFIX STRING_KEY_POSTFIX
#define SE_PATH_DEPTH 32  /* path components walked */

/* Which system call a rule stands for, and so at which hooks it runs. */
enum se_hook {
	SE_HOOK_CONNECT = 0, /* connect4/6, and sendmsg4/6 (a datagram sent to an address) */
	SE_HOOK_BIND = 1,    /* bind4/6 */
	SE_HOOK_SOCKET = 2,  /* sock_create */
	SE_HOOKS = 3,
};

/* What an argument filter looks at. */
enum se_field {
	SE_F_FAMILY = 1,   /* the address family (sockaddr's, or socket()'s domain) */
	SE_F_TYPE = 2,     /* socket(): the type, without SOCK_NONBLOCK / SOCK_CLOEXEC */
	SE_F_PROTOCOL = 3, /* socket(): the protocol */
	SE_F_ADDR = 4,     /* the sockaddr's address: the destination of connect, the local of bind */
	SE_F_PORT = 5,     /* the sockaddr's port, host order */
};

enum se_op {
	SE_OP_EQUAL = 1, /* any value */
	SE_OP_NOT_EQUAL, /* no value */
	SE_OP_MASK,      /* any value's bits */
	SE_OP_GT,
	SE_OP_LT,
	SE_OP_CIDR,      /* DAddr / SAddr: in any prefix */
	SE_OP_NOT_CIDR,
	SE_OP_IN,        /* matchBinaries In, matchPIDs / matchNamespaces In */
	SE_OP_NOT_IN,
	SE_OP_PREFIX,
	SE_OP_NOT_PREFIX,
	SE_OP_POSTFIX,
	SE_OP_NOT_POSTFIX,
	SE_OP_IDENTITY,     /* DIdentity: the destination's identity (or the service frontend) in the set */
	SE_OP_NOT_IDENTITY,
	SE_OP_SERVICE,      /* DService: the destination (address, port, protocol) in the set */
	SE_OP_NOT_SERVICE,
};

enum se_action {
	SE_ACTION_POST = 0,
	SE_ACTION_NOPOST = 1,
	SE_ACTION_OVERRIDE = 2, /* refuse with `error` (and post) */
};

/* An address prefix: IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d, mask 96 + bits), so a dual-stack
 * socket's v4-mapped destination meets the same IPv4 rule; numbers in lo. */
struct se_value {
	__u64 lo;
	__u64 hi;
	__u64 mask_lo;
	__u64 mask_hi;
};

struct se_filter {
	__u8 field;
	__u8 op;
	__u8 nvalues;
	__u8 _pad;
	__u32 set;        /* DIdentity / DService: the filter's set in sock_enforce_identities and
			   * sock_enforce_addrs, filled by the agent as identities and services change */
	struct se_value values[SE_VALUES];
};

struct se_selector {
	__u8 nargs;
	__u8 bin_op;
	__u8 pid_op;
	__u8 npids;
	__u8 netns_op;
	__u8 nnetns;
	__u8 action;
	__u8 pid_flags;   /* PID_F_* (task_pids.h): matchPIDs followForks, isNamespacePID */
	__s32 error;      /* Override's argError (negative errno) */
	__u32 bin_key;    /* the binaries' entry in sock_enforce_strings */
	__u32 pids[SE_PIDS];
	__u32 netns[SE_NETNS]; /* network namespace inode numbers */
	struct se_filter args[SE_MATCHARGS];
};

struct se_rule {
	__u32 policy_id;  /* 0: a free slot */
	__u8 hook;
	__u8 nselectors;  /* 0: every call is posted */
	__u8 scoped;      /* podSelector / TracingPolicyNamespaced: the caller's network namespace must
			   * be in sock_enforce_pods under policy_id */
	__u8 _pad;
	struct se_selector selectors[SE_SELECTORS];
};

/* A scoped policy's pod: its network namespace. */
struct se_pod_key {
	__u32 policy_id;
	__u32 netns;
};

/* A destination set's identity: the ipcache's identity of the destination address. */
struct se_identity_key {
	__u32 set;
	__u32 identity;
};

/* A destination set's address: a service's frontend or backend (DService), or a frontend whose
 * backends decide (DIdentity: value 1 in the set, 0 not, whatever the ipcache says of the
 * frontend's address, which is no workload's). Address as struct se_value's, port host order. */
struct se_addr_key {
	__u32 set;
	__u16 port;
	__u8 protocol;
	__u8 _pad;
	__u64 lo;
	__u64 hi;
};

/* The rules of one hook, run in this order. */
struct se_list {
	__u32 n;
	__u16 slots[SE_RULES];
};


/* Per rule slot, summed over CPUs. */
struct se_stats {
	__u64 runs;
	__u64 matched;
	__u64 posted;
	__u64 refused;
};

#define SE_EVENT_FLAG_BINARY_UNKNOWN 1 /* the path could not be read whole: `binary` is empty */

/* A call a rule matched and posted: who (the process and the binary the kernel judged), what
 * (the hook, the sockaddr or socket() arguments) and the verdict (`error`, 0 if allowed). */
struct se_event {
	__u8 hook;
	__u8 action;
	__u8 selector;
	__u8 flags;
	__u32 pid;
	__u32 tid;
	__u32 slot;
	__u64 ktime;
	__u64 cgroup_id;
	__u32 policy_id;
	__s32 error;
	__u32 netns;
	__u16 family;
	__u16 port;       /* host order */
	__u32 type;
	__u32 protocol;
	__u8 addr[16];    /* IPv6, or IPv4 as ::ffff:a.b.c.d */
	__u32 binary_len; /* without the NUL */
	__u32 dst_identity; /* the destination's identity, when a DIdentity filter looked it up; 0 if not */
	char binary[SE_STR];
};
