/* SPDX-License-Identifier: Apache-2.0 */
/*
 * TracingPolicy enforcement at the cgroup socket hooks: a kprobe on sys_connect, sys_bind or
 * sys_socket whose selector says Override is decided here, before the call does anything, and
 * refused with the selector's errno. Tetragon overrides the system call with a kprobe (or
 * fmod_ret); this kernel has neither, but it runs these hooks for every socket of a process in
 * the cgroup they are attached to (the agent's --runtime-enforce-cgroup, and its descendants).
 *
 * The binary a selector matches is the one the process runs: current->mm->exe_file's path,
 * walked here at the call up to the root of the process's mount namespace (not the path as
 * exec'd, nor the path from a chroot: a symlink, a relative path, a hard link elsewhere or a jail
 * holding a copy at the allowed path cannot pass one binary off as another, and there is no
 * process state to go stale).
 * So one binary of a pod may connect to a destination while its others may not (issue 12's
 * per-binary network policy).
 *
 * A datagram sent to an address (sendmsg4/6, no connect) is judged as a connect to it: otherwise
 * a UDP client would walk past every connect rule.
 *
 * A destination may be named by identity (DIdentity: the datapath's ipcache, shared by its pin,
 * gives the address's identity; the agent fills each filter's set with the identities its label
 * selectors select) or by service (DService: the agent fills the set with the service's frontends
 * and backends). Both sets follow identities, pods and services as they change, with no reload.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "sock_enforce.h"
#include "task_pids.h"
#include "ringbuf_lost.h"
#include "ipcache.h"

#define AF_INET 2
#define AF_INET6 10

#define PF_KTHREAD 0x00200000 /* include/linux/sched.h */

#define SYS_REJECT 0
#define SYS_PROCEED 1

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SE_RULES);
	__type(key, __u32);
	__type(value, struct se_rule);
} sock_enforce_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SE_HOOKS);
	__type(key, __u32);
	__type(value, struct se_list);
} sock_enforce_lists SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct string_key);
	__type(value, __u8);
} sock_enforce_strings SEC(".maps");

/* The pods (network namespaces) of scoped policies, written by the agent as pods come and go. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct se_pod_key);
	__type(value, __u8);
} sock_enforce_pods SEC(".maps");

/* DIdentity sets: the identities each filter's selectors select. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct se_identity_key);
	__type(value, __u8);
} sock_enforce_identities SEC(".maps");

/* DService sets (frontends and backends), and DIdentity sets' service frontends. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct se_addr_key);
	__type(value, __u8);
} sock_enforce_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SE_RULES);
	__type(key, __u32);
	__type(value, struct se_stats);
} sock_enforce_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} sock_enforce_events SEC(".maps");

DEFINE_RINGBUF_LOST_MAP(sock_enforce_events_lost);

/* A process's binary as last walked: valid while the process (tgid and its start time) runs the
 * same exe (the struct file and its inode). An exec opens its new file while the old one is still
 * held, so the two never share an address; the walk costs more than the connect it judges. */
struct se_exe_key {
	__u32 tgid;
	__u32 _pad;
	__u64 start_time;
};

struct se_exe_cached {
	__u64 file;
	__u64 inode;
	struct string_key bin;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct se_exe_key);
	__type(value, struct se_exe_cached);
} sock_enforce_exe_cache SEC(".maps");

#define SE_BUF 256 /* the path is assembled backwards in the first half of buf */

/* The call being judged, and the binary once read (lazily: only a selector with matchBinaries
 * needs it). */
struct se_scratch {
	__u64 addr_lo;
	__u64 addr_hi;
	__u32 hook;
	__u32 family;
	__u32 port;
	__u32 type;
	__u32 protocol;
	__u32 tgid;
	__u32 tid;
	__u32 netns;
	__u32 binary_state; /* 0: not read yet, 1: read, 2: unreadable */
	__s32 verdict;      /* 0, or the errno the call is refused with */
	__u32 dst_identity; /* the destination's identity once looked up (lazily), 0 before */
	__u32 _pad;
	struct string_key bin;
	struct string_key rev;
	struct se_exe_cached cache;
	char buf[2 * SE_BUF];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct se_scratch);
} sock_enforce_scratch SEC(".maps");

static __always_inline struct se_scratch *scratch(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&sock_enforce_scratch, &zero);
}

/* ---- the binary: current->mm->exe_file's path, one component per bpf_loop() step ---- */

struct path_walk {
	struct dentry *dentry;
	struct vfsmount *vfsmnt;
	struct mount *mnt;
	struct mount *top; /* the mount the walk ended at: the root of some mount tree */
	__u32 pos;         /* where the path starts in buf (it ends at SE_BUF) */
	__u32 failed;
};

/* One step up: a component written before what is there, or a mount crossed. 1 stops the walk.
 * The same walk as bpf_runtime.c's cwd, written from the end so the path comes out in order, but
 * up to the root of the mount namespace, not the process's root: inside a chroot the exe's path
 * from the process's root could be any path the jail holds, the allowed binary's included. */
static long path_step(__u32 index, struct path_walk *w)
{
	struct dentry *dentry = w->dentry;
	struct vfsmount *vfsmnt = w->vfsmnt;
	struct mount *mnt = w->mnt;

	struct dentry *mnt_root = BPF_CORE_READ(vfsmnt, mnt_root);
	struct dentry *parent = BPF_CORE_READ(dentry, d_parent);
	if (dentry == mnt_root || dentry == parent) {
		struct mount *mnt_parent = BPF_CORE_READ(mnt, mnt_parent);
		if (dentry != mnt_root) {
			/* A disconnected dentry: no path leads to it. */
			w->failed = 1;
			return 1;
		}
		if (mnt_parent == mnt) {
			w->top = mnt;
			return 1;
		}
		w->dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
		w->mnt = mnt_parent;
		w->vfsmnt = &mnt_parent->mnt;
		return 0;
	}
	__u32 len = BPF_CORE_READ(dentry, d_name.len);
	const unsigned char *name = BPF_CORE_READ(dentry, d_name.name);
	struct se_scratch *s = scratch();
	if (!s || len == 0 || len + 1 > w->pos) {
		w->failed = 1;
		return 1;
	}
	w->pos -= len + 1;
	s->buf[w->pos & (SE_BUF - 1)] = '/';
	if (bpf_probe_read_kernel(&s->buf[(w->pos + 1) & (SE_BUF - 1)], len & (SE_BUF - 1), name) != 0) {
		w->failed = 1;
		return 1;
	}
	w->dentry = parent;
	return 0;
}



/* Reads the binary into s->bin (prefixlen: its length with the NUL), once per call. A path that
 * does not lead to the mount namespace's root (an exe on a detached mount) is not read. */
static __always_inline bool read_binary(struct se_scratch *s)
{
	if (s->binary_state)
		return s->binary_state == 1;
	s->binary_state = 2;
	struct task_struct *task = bpf_get_current_task_btf();
	struct file *exe = BPF_CORE_READ(task, mm, exe_file);
	if (!exe)
		return false;
	struct se_exe_key ckey = { .tgid = s->tgid, .start_time = BPF_CORE_READ(task, group_leader, start_time) };
	__u64 inode = (__u64)BPF_CORE_READ(exe, f_inode);
	struct se_exe_cached *cached = bpf_map_lookup_elem(&sock_enforce_exe_cache, &ckey);
	if (cached && cached->file == (__u64)exe && cached->inode == inode) {
		__builtin_memcpy(&s->bin, &cached->bin, sizeof(s->bin));
		s->binary_state = 1;
		return true;
	}
	struct mount *ns_root = BPF_CORE_READ(task, nsproxy, mnt_ns, root);
	if (!ns_root)
		return false;
	struct path_walk w = {
		.dentry = BPF_CORE_READ(exe, f_path.dentry),
		.vfsmnt = BPF_CORE_READ(exe, f_path.mnt),
		.pos = SE_BUF,
	};
	w.mnt = container_of(w.vfsmnt, struct mount, mnt);
	s->buf[SE_BUF] = 0;
	long steps = bpf_loop(SE_PATH_DEPTH, path_step, &w, 0);
	__u32 len = SE_BUF - w.pos;
	if (w.failed || w.top != ns_root || steps == SE_PATH_DEPTH || len == 0 || len > SE_STR - 1)
		return false;
	__builtin_memset(&s->bin, 0, sizeof(s->bin));
	if (bpf_probe_read_kernel(s->bin.data, SE_STR, &s->buf[w.pos & (SE_BUF - 1)]) != 0)
		return false;
	s->bin.prefixlen = len + 1;
	s->binary_state = 1;
	struct se_exe_cached *fill = &s->cache;
	fill->file = (__u64)exe;
	fill->inode = inode;
	__builtin_memcpy(&fill->bin, &s->bin, sizeof(s->bin));
	bpf_map_update_elem(&sock_enforce_exe_cache, &ckey, fill, BPF_ANY);
	return true;
}

/* Whether the binary is under `filter` by `op` (In and Prefix found, Postfix found reversed). */
static __always_inline bool binary_match(struct se_scratch *s, __u32 filter, __u8 op)
{
	bool positive = op == SE_OP_IN || op == SE_OP_PREFIX || op == SE_OP_POSTFIX;
	/* An unreadable path is in no set: only the negated operators match it. */
	if (!read_binary(s))
		return !positive;
	bool found = string_key_found(&sock_enforce_strings, &s->bin, &s->rev, filter, op == SE_OP_POSTFIX || op == SE_OP_NOT_POSTFIX);
	return positive ? found : !found;
}

/* ---- destinations by identity or service ---- */

/* The destination's identity as the datapath knows it: the ipcache's longest prefix, world when
 * it knows nothing (as bpf_lxc counts such a destination). The ipcache is IPv4: an IPv6
 * destination other than an IPv4-mapped one is world. */
static __always_inline __u32 dest_identity(struct se_scratch *s)
{
	if (s->dst_identity)
		return s->dst_identity;
	__u32 id = IDENTITY_WORLD;
	if (s->addr_lo == 0 && (__u32)s->addr_hi == 0xffff0000) {
		struct ipcache_key key = { .prefixlen = 32, .ip = (__be32)(s->addr_hi >> 32) };
		struct remote_endpoint_info *info = bpf_map_lookup_elem(&ciliate_ipcache, &key);
		if (info && info->sec_identity)
			id = info->sec_identity;
	}
	s->dst_identity = id;
	return id;
}

/* Whether the destination is in the filter's set. A service frontend is judged by its entry (the
 * agent's verdict on its backends), since the hook may run before the socket LB's connect4 has
 * translated it (a cgroup below the LB's) or after (the same cgroup, or above): either way the
 * address seen is a frontend or a backend the sets hold. */
static __always_inline bool dest_in_set(struct se_scratch *s, struct se_filter *f)
{
	bool positive = f->op == SE_OP_IDENTITY || f->op == SE_OP_SERVICE;
	/* No destination (a socket() hook): never matched, as an address filter. */
	if (s->family != AF_INET && s->family != AF_INET6)
		return false;
	struct se_addr_key key = { .set = f->set, .port = s->port, .protocol = s->protocol, .lo = s->addr_lo, .hi = s->addr_hi };
	__u8 *member = bpf_map_lookup_elem(&sock_enforce_addrs, &key);
	bool found = false;
	if (member) {
		found = *member != 0;
	} else if (f->op == SE_OP_IDENTITY || f->op == SE_OP_NOT_IDENTITY) {
		struct se_identity_key ikey = { .set = f->set, .identity = dest_identity(s) };
		found = bpf_map_lookup_elem(&sock_enforce_identities, &ikey) != NULL;
	}
	return positive ? found : !found;
}

/* ---- selectors ---- */

static __always_inline bool values_match(struct se_scratch *s, struct se_filter *f)
{
	if (f->op >= SE_OP_IDENTITY && f->op <= SE_OP_NOT_SERVICE)
		return dest_in_set(s, f);
	__u64 v = 0;
	switch (f->field) {
	case SE_F_FAMILY:
		v = s->family;
		break;
	case SE_F_TYPE:
		v = s->type;
		break;
	case SE_F_PROTOCOL:
		v = s->protocol;
		break;
	case SE_F_PORT:
		v = s->port;
		break;
	case SE_F_ADDR:
		break;
	default:
		return false;
	}
	__u32 n = f->nvalues;
	bool any = false;
	for (__u32 k = 0; k < SE_VALUES; k++) {
		if (k >= n)
			break;
		struct se_value *val = &f->values[k];
		switch (f->op) {
		case SE_OP_EQUAL:
		case SE_OP_NOT_EQUAL:
			any |= v == val->lo;
			break;
		case SE_OP_MASK:
			any |= (v & val->lo) != 0;
			break;
		case SE_OP_GT:
			any |= (__s64)v > (__s64)val->lo;
			break;
		case SE_OP_LT:
			any |= (__s64)v < (__s64)val->lo;
			break;
		case SE_OP_CIDR:
		case SE_OP_NOT_CIDR:
			any |= (s->addr_lo & val->mask_lo) == val->lo && (s->addr_hi & val->mask_hi) == val->hi;
			break;
		}
	}
	/* An address filter on a call without an address (a socket() hook) never matches. */
	if ((f->op == SE_OP_CIDR || f->op == SE_OP_NOT_CIDR) && s->family != AF_INET && s->family != AF_INET6)
		return false;
	return (f->op == SE_OP_NOT_EQUAL || f->op == SE_OP_NOT_CIDR) ? !any : any;
}

static __always_inline bool list_has(const __u32 *list, __u32 n, __u32 value)
{
	bool any = false;
	for (__u32 k = 0; k < SE_PIDS; k++)
		if (k < n && list[k] == value)
			any = true;
	return any;
}

struct rule_ctx {
	struct se_scratch *s;
	struct se_rule *rule;
	int matched;
};

static long selector_step(__u32 index, struct rule_ctx *c)
{
	struct se_rule *rule = c->rule;
	struct se_scratch *s = c->s;
	if (index >= rule->nselectors)
		return 1;
	__u64 i = index;
	asm volatile("" : "+r"(i));
	if (i >= SE_SELECTORS)
		return 1;
	struct se_selector *sel = &rule->selectors[i];
	if (sel->pid_op) {
		bool any = sel->pid_flags ? current_pids_match(sel->pids, sel->npids, SE_PIDS, sel->pid_flags) : list_has(sel->pids, sel->npids, s->tgid);
		if (any != (sel->pid_op == SE_OP_IN))
			return 0;
	}
	if (sel->netns_op && list_has(sel->netns, sel->nnetns, s->netns) != (sel->netns_op == SE_OP_IN))
		return 0;
	for (__u32 f = 0; f < SE_MATCHARGS; f++) {
		if (f >= sel->nargs)
			break;
		if (!values_match(s, &sel->args[f]))
			return 0;
	}
	/* Last: the path walk is the dearest filter. */
	if (sel->bin_op && !binary_match(s, sel->bin_key, sel->bin_op))
		return 0;
	c->matched = index;
	return 1;
}

/* The binary the verdict was about, whether a selector asked for it or not. Not inlined, so the
 * event's layout is in the object's BTF for the TS codec test (socket-policy.test.ts). */
static __noinline void event_binary(struct se_event *ev, struct se_scratch *s)
{
	if (read_binary(s)) {
		ev->binary_len = s->bin.prefixlen - 1;
		bpf_probe_read_kernel(ev->binary, SE_STR, s->bin.data);
	} else {
		ev->binary_len = 0;
		ev->binary[0] = 0;
		ev->flags |= SE_EVENT_FLAG_BINARY_UNKNOWN;
	}
}

static __always_inline void emit(struct se_scratch *s, __u32 slot, struct se_rule *rule, __u32 selector, __u8 action, __s32 error)
{
	struct se_event *ev = ringbuf_reserve_or_count(&sock_enforce_events, &sock_enforce_events_lost, sizeof(*ev));
	if (!ev)
		return;
	ev->hook = rule->hook;
	ev->action = action;
	ev->selector = selector;
	ev->flags = 0;
	ev->pid = s->tgid;
	ev->tid = s->tid;
	ev->slot = slot;
	ev->ktime = bpf_ktime_get_ns();
	ev->cgroup_id = bpf_get_current_cgroup_id();
	ev->policy_id = rule->policy_id;
	ev->error = error;
	ev->netns = s->netns;
	ev->family = s->family;
	ev->port = s->port;
	ev->type = s->type;
	ev->protocol = s->protocol;
	__builtin_memcpy(ev->addr, &s->addr_lo, 8);
	__builtin_memcpy(ev->addr + 8, &s->addr_hi, 8);
	ev->dst_identity = s->dst_identity;
	event_binary(ev, s);
	/* A refusal wakes the reader at once; a plain post waits for the ring's own wakeup. */
	bpf_ringbuf_submit(ev, action == SE_ACTION_OVERRIDE ? BPF_RB_FORCE_WAKEUP : 0);
}

/* Every rule of the hook, in order: each posts on its own; the first Override's errno refuses. */
struct judge_ctx {
	struct se_scratch *s;
	/* The hook's rule list, looked up once per call rather than once per rule. */
	struct se_list *list;
};

static long rule_step(__u32 index, struct judge_ctx *j)
{
	struct se_scratch *s = j->s;
	struct se_list *list = j->list;
	if (index >= list->n)
		return 1;
	__u32 slot = list->slots[index & (SE_RULES - 1)];
	struct se_rule *rule = bpf_map_lookup_elem(&sock_enforce_rules, &slot);
	struct se_stats *stats = bpf_map_lookup_elem(&sock_enforce_stats, &slot);
	if (!rule || !stats || rule->policy_id == 0)
		return 0;
	/* A scoped policy is for its pods only: any other caller passes its rules untouched. */
	if (rule->scoped) {
		struct se_pod_key pod = { .policy_id = rule->policy_id, .netns = s->netns };
		if (!bpf_map_lookup_elem(&sock_enforce_pods, &pod))
			return 0;
	}
	stats->runs++;
	struct rule_ctx c = { .s = s, .rule = rule, .matched = -1 };
	__u8 action = SE_ACTION_POST;
	__s32 error = 0;
	if (rule->nselectors > 0) {
		bpf_loop(SE_SELECTORS, selector_step, &c, 0);
		if (c.matched < 0 || c.matched >= SE_SELECTORS)
			return 0;
		action = rule->selectors[c.matched].action;
		error = rule->selectors[c.matched].error;
	} else {
		c.matched = 0;
	}
	stats->matched++;
	if (action == SE_ACTION_NOPOST)
		return 0;
	if (action == SE_ACTION_OVERRIDE) {
		stats->refused++;
		if (!s->verdict)
			s->verdict = error;
	} else {
		error = 0;
	}
	emit(s, slot, rule, c.matched, action, error);
	stats->posted++;
	return 0;
}

/* Judges the call in the scratch against the hook's rules; returns the errno to refuse with, or 0. */
static __always_inline __s32 judge(struct se_scratch *s, __u32 hook)
{
	struct se_list *list = bpf_map_lookup_elem(&sock_enforce_lists, &hook);
	/* No rule on this hook: nothing to read about the caller. */
	if (!list || list->n == 0)
		return 0;
	__u64 id = bpf_get_current_pid_tgid();
	struct task_struct *task = bpf_get_current_task_btf();
	/* A kernel thread's socket (an NFS or iSCSI client reconnecting, say) is no workload's
	 * system call, and has no binary: a NotIn rule would refuse it. Tetragon's syscall hooks never
	 * see these either. (io_uring's workers are not kernel threads: they run the caller's mm.) */
	if (BPF_CORE_READ(task, flags) & PF_KTHREAD)
		return 0;
	s->hook = hook;
	s->tgid = id >> 32;
	s->tid = (__u32)id;
	s->netns = BPF_CORE_READ(task, nsproxy, net_ns, ns.inum);
	s->binary_state = 0;
	s->verdict = 0;
	s->dst_identity = 0;
	struct judge_ctx j = { .s = s, .list = list };
	bpf_loop(SE_RULES, rule_step, &j, 0);
	return s->verdict;
}

static __always_inline int verdict(__s32 error)
{
	if (!error)
		return SYS_PROCEED;
	bpf_set_retval(error);
	return SYS_REJECT;
}

static __always_inline int sock_addr4(struct bpf_sock_addr *ctx, __u32 hook)
{
	struct se_scratch *s = scratch();
	if (!s)
		return SYS_PROCEED;
	s->family = AF_INET;
	s->addr_lo = 0;
	s->addr_hi = ((__u64)ctx->user_ip4 << 32) | 0xffff0000ULL;
	s->port = bpf_ntohs((__u16)ctx->user_port);
	s->type = ctx->type;
	s->protocol = ctx->protocol;
	return verdict(judge(s, hook));
}

static __always_inline int sock_addr6(struct bpf_sock_addr *ctx, __u32 hook)
{
	struct se_scratch *s = scratch();
	if (!s)
		return SYS_PROCEED;
	s->family = AF_INET6;
	s->addr_lo = (__u64)ctx->user_ip6[0] | ((__u64)ctx->user_ip6[1] << 32);
	s->addr_hi = (__u64)ctx->user_ip6[2] | ((__u64)ctx->user_ip6[3] << 32);
	s->port = bpf_ntohs((__u16)ctx->user_port);
	s->type = ctx->type;
	s->protocol = ctx->protocol;
	return verdict(judge(s, hook));
}

SEC("cgroup/connect4")
int se_connect4(struct bpf_sock_addr *ctx)
{
	return sock_addr4(ctx, SE_HOOK_CONNECT);
}

SEC("cgroup/connect6")
int se_connect6(struct bpf_sock_addr *ctx)
{
	return sock_addr6(ctx, SE_HOOK_CONNECT);
}

SEC("cgroup/sendmsg4")
int se_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sock_addr4(ctx, SE_HOOK_CONNECT);
}

SEC("cgroup/sendmsg6")
int se_sendmsg6(struct bpf_sock_addr *ctx)
{
	return sock_addr6(ctx, SE_HOOK_CONNECT);
}

SEC("cgroup/bind4")
int se_bind4(struct bpf_sock_addr *ctx)
{
	return sock_addr4(ctx, SE_HOOK_BIND);
}

SEC("cgroup/bind6")
int se_bind6(struct bpf_sock_addr *ctx)
{
	return sock_addr6(ctx, SE_HOOK_BIND);
}

SEC("cgroup/sock_create")
int se_socket(struct bpf_sock *sk)
{
	struct se_scratch *s = scratch();
	if (!s)
		return SYS_PROCEED;
	s->family = sk->family;
	s->addr_lo = 0;
	s->addr_hi = 0;
	s->port = 0;
	s->type = sk->type;
	s->protocol = sk->protocol;
	return verdict(judge(s, SE_HOOK_SOCKET));
}

char LICENSE[] SEC("license") = "GPL";
