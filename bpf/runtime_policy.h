/* SPDX-License-Identifier: Apache-2.0 */
/* TracingPolicy hooks, included by bpf_runtime.c so that they share its ring buffer and its
 * per-process binaries. One generic tracepoint program (runtime_policy) is attached once per
 * hook, with the hook's slot as attach cookie; the policy is data: the argument layout and the
 * compiled selectors in runtime_policy_hooks, strings in the runtime_policy_strings LPM trie.
 * Only calls a selector matches (and whose action posts) reach user space. */
#pragma once

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RT_POLICY_HOOKS);
	__type(key, __u32);
	__type(value, struct rt_hook);
} runtime_policy_hooks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, RT_POLICY_TPS);
	__type(key, __u32);
	__type(value, struct rt_tp);
} runtime_policy_tps SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct string_key);
	__type(value, __u8);
} runtime_policy_strings SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, RT_POLICY_HOOKS);
	__type(key, __u32);
	__type(value, struct rt_hook_stats);
} runtime_policy_stats SEC(".maps");

/* The network namespaces of the pods each scoped policy applies to (podSelector,
 * containerSelector, a TracingPolicyNamespaced's namespace), written by user space from the
 * endpoints it knows. A caller in no listed namespace is outside the policy: its hooks end there. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct rt_pod_key);
	__type(value, __u8);
} runtime_policy_pods SEC(".maps");

/* The cgroups of the containers each policy with a containerSelector applies to (struct
 * rt_cgroup_key), written by user space from the containers its endpoints name. A caller in a
 * selected pod but in none of these cgroups (nor below one) is outside the policy. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct rt_cgroup_key);
	__type(value, __u8);
} runtime_policy_cgroups SEC(".maps");

/* When each rate-limited action last posted (struct rt_rate_key). LRU: a forgotten key only lets
 * one more event through. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct rt_rate_key);
	__type(value, __u64);
} runtime_policy_rate SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rt_follow_set);
} runtime_policy_follow SEC(".maps");

/* A syscall hook whose string argument could not be read on entry (its page not yet in the
 * caller's page tables: a tracepoint program cannot fault it in) is decided again on the
 * syscall's exit, when the kernel has read the string itself, from this copy of the entry
 * record. Without it, a path in a mapped but untouched page would slip past every string
 * selector, Sigkill's included. `mask` has a bit per hook (its place on the tracepoint). */
#define RT_TP_EXIT (1u << 31)
#define RT_RECORD_COPY 64

struct rt_deferred {
	__u32 tp;
	__u32 mask;
	__u8 record[RT_RECORD_COPY];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct rt_deferred);
} runtime_policy_deferred SEC(".maps");

/* How many deferred entries wait (a hint, never below the truth): a syscall's exit, which runs on
 * every call of a hooked syscall, looks in runtime_policy_deferred only when some wait. An entry
 * the LRU dropped keeps it above zero, which costs only that lookup. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} runtime_policy_pending SEC(".maps");

struct policy_scratch {
	struct runtime_policy_event event;
	__u8 slots[RT_POLICY_ARGS][RT_ARG_SLOT];
	struct string_key key;
	struct string_key rev;
	struct rt_rate_key rate;
	__u32 ns[RT_NS_COUNT]; /* the caller's, read once per hook run when a selector needs them */
	__u32 nspid;
	__u32 ns_read;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct policy_scratch);
} runtime_policy_scratch SEC(".maps");

#define RT_AF_INET 2
#define RT_AF_INET6 10

/* Reads argument `i` of the record at `base` into the event: numbers into values[i], strings and
 * sockaddrs into slots[i]. */
static __always_inline void read_arg(__u64 base, struct rt_hook *hook, struct policy_scratch *s, __u32 i)
{
	if (i >= RT_POLICY_ARGS)
		return;
	struct rt_arg_spec spec = hook->args[i];
	struct runtime_policy_event *ev = &s->event;
	__u8 *slot = s->slots[i];
	__u64 raw = 0;
	__u32 size = spec.size;
	if (size > 8)
		size = 8;
	switch (spec.type) {
	case RT_ARG_INT:
	case RT_ARG_UINT:
		if (size == 0 || bpf_probe_read_kernel(&raw, size, (void *)(base + spec.offset)) != 0) {
			ev->arg_flags |= RT_ARGF_ERROR << (4 * i);
			break;
		}
		if (spec.type == RT_ARG_INT && size < 8) {
			__u32 shift = 64 - 8 * size;
			raw = (__u64)(((__s64)(raw << shift)) >> shift);
		}
		ev->values[i] = raw;
		break;
	case RT_ARG_STRING:
	case RT_ARG_DATA_LOC: {
		long n;
		if (bpf_probe_read_kernel(&raw, spec.type == RT_ARG_STRING ? 8 : 4, (void *)(base + spec.offset)) != 0) {
			ev->arg_flags |= RT_ARGF_ERROR << (4 * i);
			break;
		}
		if (spec.type == RT_ARG_STRING)
			n = bpf_probe_read_user_str(slot, RT_POLICY_STR, (void *)raw);
		else
			n = bpf_probe_read_kernel_str(slot, RT_POLICY_STR, (void *)(base + (raw & 0xffff)));
		if (n <= 0) {
			slot[0] = 0;
			ev->arg_flags |= RT_ARGF_ERROR << (4 * i);
			n = 1;
		}
		if (n >= RT_POLICY_STR)
			ev->arg_flags |= RT_ARGF_TRUNCATED << (4 * i);
		ev->values[i] = n - 1;
		break;
	}
	case RT_ARG_SOCKADDR: {
		struct { __u16 family; __u16 port; __u32 addr4; __u8 addr6[16]; } sa = {};
		if (bpf_probe_read_kernel(&raw, 8, (void *)(base + spec.offset)) != 0 || bpf_probe_read_user(&sa, sizeof(sa), (void *)raw) != 0) {
			ev->arg_flags |= RT_ARGF_ERROR << (4 * i);
			break;
		}
		__builtin_memset(slot, 0, 20);
		*(__u16 *)&slot[0] = sa.family;
		*(__u16 *)&slot[2] = sa.port;
		if (sa.family == RT_AF_INET)
			*(__u32 *)&slot[4] = sa.addr4;
		else if (sa.family == RT_AF_INET6)
			__builtin_memcpy(&slot[4], sa.addr6, 16);
		ev->values[i] = sa.family;
		break;
	}
	}
}

/* Whether the string in `key` (prefixlen holding its length with the NUL) is under `filter`. */
static __always_inline bool string_match(struct string_key *key, __u32 filter, __u8 op)
{
	bool postfix = op == RT_OP_POSTFIX || op == RT_OP_NOT_POSTFIX;
	struct string_key *rev = NULL;
	/* Only a Postfix needs the scratch for its reversed copy: Equal and Prefix look the key up as is. */
	if (postfix) {
		__u32 zero = 0;
		struct policy_scratch *s = bpf_map_lookup_elem(&runtime_policy_scratch, &zero);
		if (!s)
			return false;
		rev = &s->rev;
	}
	bool found = string_key_found(&runtime_policy_strings, key, rev, filter, postfix);
	return (op == RT_OP_EQUAL || op == RT_OP_PREFIX || op == RT_OP_IN || op == RT_OP_POSTFIX) ? found : !found;
}

struct select_ctx {
	struct rt_hook *hook;
	struct policy_scratch *s;
	__u32 slot;
	__u32 tgid;
	int matched; /* the index of the first matching selector, or -1 */
};

static __always_inline bool arg_filter_match(struct select_ctx *c, struct rt_arg_filter *f)
{
	struct policy_scratch *s = c->s;
	__u32 i = f->arg;
	if (i >= RT_POLICY_ARGS)
		return false;
	__u64 v = s->event.values[i];
	__u8 *slot = s->slots[i];
	__u8 op = f->op;
	__u32 n = f->nvalues;
	switch (op) {
	case RT_OP_EQUAL:
	case RT_OP_NOT_EQUAL:
	case RT_OP_PREFIX:
	case RT_OP_NOT_PREFIX:
	case RT_OP_POSTFIX:
	case RT_OP_NOT_POSTFIX:
		if (f->key) {
			struct string_key *key = &s->key;
			/* The string and its NUL, no more: the trie reads only the prefix's bytes. */
			__u32 len = v < RT_POLICY_STR - 1 ? v + 1 : RT_POLICY_STR;
			if (len > RT_POLICY_STR)
				len = RT_POLICY_STR;
			if (bpf_probe_read_kernel(key->data, len, slot) != 0)
				return false;
			key->prefixlen = len;
			return string_match(key, f->key, op);
		}
		if (op == RT_OP_EQUAL || op == RT_OP_NOT_EQUAL) {
			bool any = false;
			for (__u32 k = 0; k < RT_POLICY_VALUES; k++)
				if (k < n && f->values[k] == v)
					any = true;
			return op == RT_OP_EQUAL ? any : !any;
		}
		return false;
	case RT_OP_MASK:
		for (__u32 k = 0; k < RT_POLICY_VALUES; k++)
			if (k < n && (f->values[k] & v))
				return true;
		return false;
	case RT_OP_GT:
		return (__s64)v > (__s64)f->values[0];
	case RT_OP_LT:
		return (__s64)v < (__s64)f->values[0];
	case RT_OP_FAMILY:
		for (__u32 k = 0; k < RT_POLICY_VALUES; k++)
			if (k < n && f->values[k] == v)
				return true;
		return false;
	case RT_OP_DPORT:
	case RT_OP_NOT_DPORT:
	case RT_OP_SPORT:
	case RT_OP_NOT_SPORT: {
		__u16 port = bpf_ntohs(*(__u16 *)&slot[2]);
		bool any = false;
		if (v == RT_AF_INET || v == RT_AF_INET6)
			for (__u32 k = 0; k < RT_POLICY_VALUES; k++)
				if (k < n && f->values[k] == port)
					any = true;
		return (op == RT_OP_DPORT || op == RT_OP_SPORT) ? any : !any;
	}
	case RT_OP_DADDR:
	case RT_OP_NOT_DADDR:
	case RT_OP_SADDR:
	case RT_OP_NOT_SADDR: {
		/* The family byte and the address, looked up among the CIDRs (longest prefix). */
		bool any = false;
		if (v == RT_AF_INET || v == RT_AF_INET6) {
			struct string_key *key = &s->key;
			key->filter = f->key;
			key->data[0] = v == RT_AF_INET ? 4 : 6;
			if (bpf_probe_read_kernel(&key->data[1], 16, &slot[4]) != 0)
				return false;
			key->prefixlen = 32 + 8 + (v == RT_AF_INET ? 32 : 128);
			any = bpf_map_lookup_elem(&runtime_policy_strings, key) != NULL;
		}
		return (op == RT_OP_DADDR || op == RT_OP_SADDR) ? any : !any;
	}
	}
	return false;
}

static __always_inline void caller_namespaces(struct policy_scratch *s)
{
	if (s->ns_read)
		return;
	read_namespaces((struct task_struct *)bpf_get_current_task_btf(), s->ns, &s->nspid);
	s->ns_read = 1;
}

/* matchNamespaces, matchCapabilities (and their Changes variants): what the caller has now,
 * against the values, and against what it had at exec (runtime_procs). A process the sensor has
 * no exec record of (older than it, and not seeded) has changed nothing as far as we know. */
static __noinline bool namespaces_match(struct select_ctx *c, struct rt_selector *sel)
{
	struct policy_scratch *s = c->s;
	if (!s || !sel)
		return false;
	struct rt_proc *proc = NULL;
	if (sel->nns || sel->nschange_op || sel->ncaps)
		caller_namespaces(s);
	for (__u32 k = 0; k < RT_POLICY_NS_FILTERS; k++) {
		if (k >= sel->nns)
			break;
		struct rt_ns_filter *f = &sel->ns[k];
		__u32 inum = s->ns[f->ns < RT_NS_COUNT ? f->ns : 0];
		bool any = false;
		for (__u32 j = 0; j < RT_POLICY_NS_VALUES; j++)
			if (j < f->nvalues && f->values[j] == inum)
				any = true;
		if (any != (f->op == RT_OP_IN))
			return false;
	}
	if (sel->nschange_op) {
		proc = bpf_map_lookup_elem(&runtime_procs, &c->tgid);
		bool changed = false;
		if (proc)
			for (__u32 i = 0; i < RT_NS_COUNT; i++)
				if ((sel->nschange_mask & (1u << i)) && proc->ns[i] != s->ns[i])
					changed = true;
		if (changed != (sel->nschange_op == RT_OP_IN))
			return false;
	}
	if (sel->ncaps) {
		const struct cred *cred = BPF_CORE_READ((struct task_struct *)bpf_get_current_task_btf(), cred);
		__u64 caps[3] = { read_caps(&cred->cap_effective), read_caps(&cred->cap_inheritable), read_caps(&cred->cap_permitted) };
		for (__u32 k = 0; k < RT_POLICY_CAP_FILTERS; k++) {
			if (k >= sel->ncaps)
				break;
			struct rt_cap_filter *f = &sel->caps[k];
			__u32 type = f->type < 3 ? f->type : 0;
			__u64 set = caps[type];
			if (f->changes) {
				if (!proc)
					proc = bpf_map_lookup_elem(&runtime_procs, &c->tgid);
				set = proc ? set ^ proc->caps[type] : 0;
			}
			/* isNamespaceCapability: only outside the host's user namespace. */
			if (f->user_ns && s->ns[RT_NS_USER] == f->user_ns)
				return false;
			bool any = (set & f->mask) != 0;
			if (any != (f->op == RT_OP_IN))
				return false;
		}
	}
	return true;
}

struct follow_ctx {
	struct rt_follow_set *set;
	struct string_key *bin;
	__u64 marks;
};

static long follow_step(__u32 index, struct follow_ctx *c)
{
	__u32 i = index & (RT_POLICY_FOLLOW - 1);
	if (!(c->set->active >> i))
		return 1;
	if ((c->set->active & (1ULL << i)) && string_match(c->bin, c->set->keys[i], RT_OP_IN))
		c->marks |= 1ULL << i;
	return 0;
}

/* The followChildren marks an exec of `bin` (prefixlen: its length with the NUL) earns: one per
 * followChildren matchBinaries its path is In. */
static __always_inline __u64 follow_marks(struct string_key *bin)
{
	__u32 zero = 0;
	struct rt_follow_set *set = bpf_map_lookup_elem(&runtime_policy_follow, &zero);
	if (!set || !set->active)
		return 0;
	struct follow_ctx c = { .set = set, .bin = bin };
	bpf_loop(RT_POLICY_FOLLOW, follow_step, &c, 0);
	return c.marks;
}

static long select_step(__u32 index, struct select_ctx *c)
{
	struct rt_hook *hook = c->hook;
	if (index >= hook->nselectors)
		return 1;
	/* Bounded right where it indexes: clang otherwise checks a copy the verifier cannot tie to it. */
	__u64 i = index;
	asm volatile("" : "+r"(i));
	if (i >= RT_POLICY_SELECTORS)
		return 1;
	struct rt_selector *sel = &hook->selectors[i];

	if (sel->pid_op) {
		bool any = false;
		if (sel->pid_flags)
			any = current_pids_match(sel->pids, sel->npids, RT_POLICY_PIDS, sel->pid_flags);
		else
			for (__u32 k = 0; k < RT_POLICY_PIDS; k++)
				if (k < sel->npids && sel->pids[k] == c->tgid)
					any = true;
		if (any != (sel->pid_op == RT_OP_IN))
			return 0;
	}
	if (sel->bin_op) {
		struct string_key *bin = bpf_map_lookup_elem(&runtime_binaries, &c->tgid);
		bool match;
		if (!bin) {
			/* An unknown binary is in no set: only the negated operators match it. */
			match = !(sel->bin_op == RT_OP_IN || sel->bin_op == RT_OP_PREFIX || sel->bin_op == RT_OP_POSTFIX);
		} else {
			struct string_key *key = &c->s->key;
			bpf_probe_read_kernel(key, sizeof(*key), bin);
			/* IN is exact: the LPM value was stored with its NUL, as Equal's are. */
			match = string_match(key, sel->bin_key, sel->bin_op);
		}
		/* followChildren: a descendant of a matching binary (marked at its exec). */
		if (!match && sel->follow) {
			struct rt_proc *proc = bpf_map_lookup_elem(&runtime_procs, &c->tgid);
			match = proc && (proc->follow & (1ULL << ((sel->follow - 1) & 63)));
		}
		if (!match)
			return 0;
	}
	if ((sel->nns || sel->ncaps || sel->nschange_op) && !namespaces_match(c, sel))
		return 0;
	for (__u32 f = 0; f < RT_POLICY_MATCHARGS; f++) {
		if (f >= sel->nargs)
			break;
		if (!arg_filter_match(c, &sel->args[f]))
			return 0;
	}
	c->matched = index;
	return 1;
}

/* containerSelector: whether the caller's cgroup v2, or one above it, is a selected container's.
 * Looked for from the top down, so a process that moved into a cgroup below its container's (a
 * runtime's nested one, or one a privileged container made) is still the container's. */
static __always_inline bool in_selected_container(__u32 policy_id)
{
	struct rt_cgroup_key key = { .policy_id = policy_id };
	for (int level = 1; level <= RT_CGROUP_DEPTH; level++) {
		/* 0: the caller's cgroup is above this level, and nothing matched on the way down. */
		__u64 id = bpf_get_current_ancestor_cgroup_id(level);
		if (!id)
			return false;
		key.cgroup_id = id;
		if (bpf_map_lookup_elem(&runtime_policy_cgroups, &key))
			return true;
	}
	return false;
}

/* Post's rateLimit: whether this selector posted the same arguments (their first
 * RT_RATE_ARG_BYTES bytes) for the same thread, process or anyone within the limit; if not, this
 * call is the one that posts, and its time is kept. */
static __noinline bool rate_limited(struct rt_hook *hook, struct policy_scratch *s, __u32 slot, int matched, __u64 pid_tgid)
{
	if (!hook || !s || matched < 0 || matched >= RT_POLICY_SELECTORS)
		return false;
	struct rt_selector *sel = &hook->selectors[matched];
	__u64 limit = sel->rate_ns;
	if (!limit)
		return false;
	struct rt_rate_key *key = &s->rate;
	__builtin_memset(key, 0, sizeof(*key));
	key->slot = slot;
	key->selector = matched;
	key->policy_id = hook->policy_id;
	key->who = sel->rate_scope == RT_RATE_GLOBAL ? 0 : sel->rate_scope == RT_RATE_PROCESS ? pid_tgid >> 32 : (__u32)pid_tgid;
	for (__u32 i = 0; i < RT_POLICY_ARGS; i++) {
		if (i >= hook->nargs)
			break;
		__u64 v = s->event.values[i];
		__builtin_memcpy(key->args[i], &v, 8);
		__u8 type = hook->args[i].type;
		__u64 n = type == RT_ARG_SOCKADDR ? 20 : (type == RT_ARG_STRING || type == RT_ARG_DATA_LOC) ? v : 0;
		for (__u32 j = 0; j < RT_RATE_ARG_BYTES - 8; j++) {
			if (j >= n)
				break;
			key->args[i][8 + j] = s->slots[i][j];
		}
	}
	__u64 now = bpf_ktime_get_ns();
	__u64 *last = bpf_map_lookup_elem(&runtime_policy_rate, key);
	if (last && now - *last < limit)
		return true;
	bpf_map_update_elem(&runtime_policy_rate, key, &now, BPF_ANY);
	return false;
}

/* One hook's turn on a call, on the record at `base` (the tracepoint's, or its copy on exit):
 * a global function, so the verifier checks it once, not once per hook and call site. Returns 1
 * when the hook is to be decided on the syscall's exit. */
__attribute__((noinline)) int run_hook(__u64 base, __u32 slot, __u32 retry)
{
	struct rt_hook *hook = bpf_map_lookup_elem(&runtime_policy_hooks, &slot);
	struct rt_hook_stats *stats = bpf_map_lookup_elem(&runtime_policy_stats, &slot);
	__u32 zero = 0;
	struct policy_scratch *s = bpf_map_lookup_elem(&runtime_policy_scratch, &zero);
	if (!hook || !stats || !s || hook->policy_id == 0)
		return 0;
	stats->runs++;
	/* A scoped policy ends here for every caller outside its pods: before any argument is read. */
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	/* In the scope: the caller's network namespace, or the pod it (or an ancestor) exec'd in. */
	if (hook->scoped) {
		struct task_struct *task = (struct task_struct *)bpf_get_current_task_btf();
		struct rt_pod_key pod = { .policy_id = hook->policy_id, .netns = BPF_CORE_READ(task, nsproxy, net_ns, ns.inum) };
		if (!bpf_map_lookup_elem(&runtime_policy_pods, &pod)) {
			__u32 tgid = pid_tgid >> 32;
			struct rt_proc *proc = bpf_map_lookup_elem(&runtime_procs, &tgid);
			if (!proc || !proc->pod_netns || proc->pod_netns == pod.netns)
				return 0;
			pod.netns = proc->pod_netns;
			if (!bpf_map_lookup_elem(&runtime_policy_pods, &pod))
				return 0;
		}
	}
	if (hook->containers && !in_selected_container(hook->policy_id))
		return 0;

	s->ns_read = 0;
	struct runtime_policy_event *ev = &s->event;
	__builtin_memset(ev, 0, sizeof(*ev));
	for (__u32 i = 0; i < RT_POLICY_ARGS; i++) {
		if (i >= hook->nargs)
			break;
		read_arg(base, hook, s, i);
	}

	/* An unreadable user string on entry: decided on exit instead (see rt_deferred). */
	if (!retry && hook->nselectors > 0) {
		for (__u32 i = 0; i < RT_POLICY_ARGS; i++) {
			if (i >= hook->nargs)
				break;
			if (hook->args[i].type == RT_ARG_STRING && (ev->arg_flags & (RT_ARGF_ERROR << (4 * i))))
				return 1;
		}
	}

	struct select_ctx c = { .hook = hook, .s = s, .slot = slot, .tgid = pid_tgid >> 32, .matched = -1 };
	__u8 action = RT_ACTION_POST;
	__u32 signal = 0;
	if (hook->nselectors > 0) {
		bpf_loop(RT_POLICY_SELECTORS, select_step, &c, 0);
		if (c.matched < 0 || c.matched >= RT_POLICY_SELECTORS)
			return 0;
		action = hook->selectors[c.matched].action;
		signal = hook->selectors[c.matched].signal;
	} else {
		c.matched = 0;
	}
	stats->matched++;
	if (action == RT_ACTION_POST && hook->nselectors > 0 && rate_limited(hook, s, slot, c.matched, pid_tgid)) {
		stats->ratelimited++;
		return 0;
	}

	if (action == RT_ACTION_SIGKILL)
		signal = 9;
	if ((action == RT_ACTION_SIGKILL || action == RT_ACTION_SIGNAL) && signal > 0 && signal < 65) {
		if (bpf_send_signal(signal) == 0)
			stats->signalled++;
	}
	if (action == RT_ACTION_NOPOST)
		return 0;

	struct task_struct *task = (struct task_struct *)bpf_get_current_task_btf();
	ev->type = RT_EVENT_POLICY;
	ev->pid = pid_tgid >> 32;
	ev->tid = (__u32)pid_tgid;
	ev->ppid = BPF_CORE_READ(task, real_parent, tgid);
	ev->ktime = bpf_ktime_get_ns();
	ev->hook = slot;
	ev->policy_id = hook->policy_id;
	ev->selector = c.matched;
	ev->action = action;
	/* Enforcement is not batched: whoever watches a kill should see it at once. */
	__u64 size = sizeof(*ev) + RT_POLICY_ARGS * RT_ARG_SLOT;
	ringbuf_output_or_count_flags(&runtime_events, &runtime_events_lost, s, size,
				      action == RT_ACTION_POST ? batched_wakeup_before_output(size) : BPF_RB_FORCE_WAKEUP);
	stats->posted++;
	return 0;
}

/* A pointer as the plain number a global function takes (it reads through it with probe reads). */
static __always_inline __u64 address_of(void *pointer)
{
	__u64 address = 0;
	bpf_probe_read_kernel(&address, sizeof(address), &pointer);
	return address;
}

SEC("tracepoint")
int runtime_policy(void *ctx)
{
	__u32 cookie = bpf_get_attach_cookie(ctx);
	__u32 tp = cookie & ~RT_TP_EXIT;
	__u32 zero = 0;
	if (cookie & RT_TP_EXIT) {
		__u64 *pending = bpf_map_lookup_elem(&runtime_policy_pending, &zero);
		if (!pending || *pending == 0)
			return 0;
	}
	__u64 id = bpf_get_current_pid_tgid();
	struct rt_tp *hooks = bpf_map_lookup_elem(&runtime_policy_tps, &tp);
	if (!hooks)
		return 0;
	if (cookie & RT_TP_EXIT) {
		__u64 *pending = bpf_map_lookup_elem(&runtime_policy_pending, &zero);
		if (!pending)
			return 0;
		struct rt_deferred *d = bpf_map_lookup_elem(&runtime_policy_deferred, &id);
		if (!d)
			return 0;
		__sync_fetch_and_add(pending, -1);
		if (d->tp == tp) {
			for (__u32 i = 0; i < RT_POLICY_TP_HOOKS; i++) {
				if (i >= hooks->nhooks)
					break;
				if (d->mask & (1u << i))
					run_hook(address_of(d->record), hooks->slots[i], 1);
			}
		}
		bpf_map_delete_elem(&runtime_policy_deferred, &id);
		return 0;
	}
	__u32 mask = 0;
	for (__u32 i = 0; i < RT_POLICY_TP_HOOKS; i++) {
		if (i >= hooks->nhooks)
			break;
		if (run_hook(address_of(ctx), hooks->slots[i], 0))
			mask |= 1u << i;
	}
	if (mask) {
		struct rt_deferred d = { .tp = tp, .mask = mask };
		bpf_probe_read_kernel(d.record, sizeof(d.record), ctx);
		__u64 *pending = bpf_map_lookup_elem(&runtime_policy_pending, &zero);
		if (pending && bpf_map_update_elem(&runtime_policy_deferred, &id, &d, BPF_NOEXIST) == 0)
			__sync_fetch_and_add(pending, 1);
		else
			bpf_map_update_elem(&runtime_policy_deferred, &id, &d, BPF_ANY);
	}
	return 0;
}
