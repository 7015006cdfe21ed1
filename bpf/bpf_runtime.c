/* SPDX-License-Identifier: Apache-2.0 */
/* The runtime sensor's process lifecycle: exec, fork and exit from BTF tracepoints, which this
 * kernel has (it has no kprobes, and refuses fentry and BPF LSM). Tetragon hooks wake_up_new_task
 * and acct_process with kprobes; sched_process_fork and sched_process_exit see the same moments.
 * Events go to one ring buffer; user space (src/runtime) keeps the process cache. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>
#include "runtime.h"
#include "ringbuf_lost.h"
#include "task_pids.h"

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} runtime_events SEC(".maps");

DEFINE_RINGBUF_LOST_MAP(runtime_events_lost);

/* The reader is woken once this many bytes wait, not per event: a wakeup is an irq_work (in a VM
 * an interprocessor interrupt and an exit), which cost more than the rest of an exec's program.
 * The reader also drains on a timer (src/runtime/sensor.ts), which bounds how long events below
 * the mark wait. */
#define RT_WAKEUP_BYTES (16 << 10)

/* Wakeup flags for a record of `size` bytes about to be output (not yet in the ring): wake the
 * reader when this record takes what waits past the mark. */
static __always_inline __u64 batched_wakeup_before_output(__u64 size)
{
	__u64 waiting = bpf_ringbuf_query(&runtime_events, BPF_RB_AVAIL_DATA);
	__u64 taken = (size + 8 + 7) & ~7ULL;

	return waiting < RT_WAKEUP_BYTES && waiting + taken >= RT_WAKEUP_BYTES ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

static __always_inline void emit(void *data, __u64 size)
{
	ringbuf_output_or_count_flags(&runtime_events, &runtime_events_lost, data, size, batched_wakeup_before_output(size));
}

/* An exec event with its data is larger than the 512-byte stack: it is built here. */
struct exec_scratch {
	struct runtime_exec_event event;
	char data[RT_DATA_SIZE + RT_NAME_MAX];
	struct string_key binary;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct exec_scratch);
} runtime_scratch SEC(".maps");

/* The binary each process exec'd, by tgid, as matchBinaries looks it up (a copy of the parent's
 * after fork, gone at exit). Processes older than the sensor are filled in from /proc. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 32768);
	__type(key, __u32);
	__type(value, struct string_key);
} runtime_binaries SEC(".maps");

/* What each process had at exec, and its followChildren marks (struct rt_proc). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 32768);
	__type(key, __u32);
	__type(value, struct rt_proc);
} runtime_procs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct rt_config);
} runtime_config SEC(".maps");

/* Reads `count` bytes of a kernel_cap_t whatever its layout (u64 since 6.3, u32[2] before):
 * both are the same 8 little-endian bytes. */
static __always_inline __u64 read_caps(const kernel_cap_t *caps)
{
	__u64 value = 0;
	bpf_core_read(&value, sizeof(value), caps);
	return value;
}

/* The task's namespaces (enum runtime_ns order) and its pid in its own pid namespace: for exec
 * events, and for matchNamespaces / matchNamespaceChanges at a hook. */
static __always_inline void read_namespaces(struct task_struct *task, __u32 *out, __u32 *nspid)
{
	struct nsproxy *ns = BPF_CORE_READ(task, nsproxy);
	if (!ns)
		return;
	out[RT_NS_UTS] = BPF_CORE_READ(ns, uts_ns, ns.inum);
	out[RT_NS_IPC] = BPF_CORE_READ(ns, ipc_ns, ns.inum);
	out[RT_NS_MNT] = BPF_CORE_READ(ns, mnt_ns, ns.inum);
	out[RT_NS_PID_FOR_CHILDREN] = BPF_CORE_READ(ns, pid_ns_for_children, ns.inum);
	out[RT_NS_NET] = BPF_CORE_READ(ns, net_ns, ns.inum);
	if (bpf_core_field_exists(ns->time_ns)) {
		out[RT_NS_TIME] = BPF_CORE_READ(ns, time_ns, ns.inum);
		out[RT_NS_TIME_FOR_CHILDREN] = BPF_CORE_READ(ns, time_ns_for_children, ns.inum);
	}
	out[RT_NS_CGROUP] = BPF_CORE_READ(ns, cgroup_ns, ns.inum);
	out[RT_NS_USER] = BPF_CORE_READ(task, cred, user_ns, ns.inum);

	/* The task's own pid namespace is the one at its pid's level; its number there is nspid. */
	struct pid *pid = BPF_CORE_READ(task, thread_pid);
	unsigned int level = BPF_CORE_READ(pid, level);
	struct upid upid = {};
	bpf_core_read(&upid, sizeof(upid), &pid->numbers[level & 31]);
	*nspid = upid.nr;
	out[RT_NS_PID] = BPF_CORE_READ(upid.ns, ns.inum);
}

/* The state of a cwd walk, one path component per bpf_loop() step. */
struct cwd_walk {
	struct dentry *dentry;
	struct vfsmount *vfsmnt;
	struct mount *mnt;
	struct dentry *root;
	struct vfsmount *root_mnt;
	__u32 start;
	__u32 used;
	__u16 flags;
};

/* One step: up to the parent, or across a mount point. Returns 1 to stop the walk. Under bpf_loop
 * the verifier checks this once, not once per component, which an unrolled walk needed. */
static long cwd_step(__u32 index, struct cwd_walk *w)
{
	/* Locals, not w->...: inside BPF_CORE_READ an access to our own struct would become a CO-RE
	 * relocation that no kernel type can satisfy. */
	struct dentry *dentry = w->dentry;
	struct vfsmount *vfsmnt = w->vfsmnt;
	struct mount *mnt = w->mnt;

	if (dentry == w->root && vfsmnt == w->root_mnt)
		return 1;
	struct dentry *mnt_root = BPF_CORE_READ(vfsmnt, mnt_root);
	struct dentry *parent = BPF_CORE_READ(dentry, d_parent);
	if (dentry == mnt_root || dentry == parent) {
		struct mount *mnt_parent = BPF_CORE_READ(mnt, mnt_parent);
		/* The top of the mount tree (or an unreachable path): nothing above. */
		if (dentry != mnt_root || mnt_parent == mnt)
			return 1;
		w->dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
		w->mnt = mnt_parent;
		w->vfsmnt = &mnt_parent->mnt;
		return 0;
	}
	if (w->used > RT_CWD_MAX - RT_NAME_MAX) {
		w->flags |= RT_EXEC_TRUNC_CWD;
		return 1;
	}
	__u32 zero = 0;
	struct exec_scratch *s = bpf_map_lookup_elem(&runtime_scratch, &zero);
	if (!s)
		return 1;
	const unsigned char *name = BPF_CORE_READ(dentry, d_name.name);
	long n = bpf_probe_read_kernel_str(&s->data[(w->start + w->used) & RT_DATA_MASK], RT_NAME_MAX, name);
	if (n <= 0) {
		w->flags |= RT_EXEC_ERROR_CWD;
		return 1;
	}
	w->used += n;
	w->dentry = parent;
	return 0;
}

/* Writes the cwd's components, innermost first, at data[start..]; returns the bytes written.
 * Crosses mounts through struct mount like d_path does, and stops at the task's root. */
static __always_inline __u32 read_cwd(struct task_struct *task, __u32 start, __u16 *flags)
{
	struct fs_struct *fs = BPF_CORE_READ(task, fs);
	if (!fs) {
		*flags |= RT_EXEC_ERROR_CWD;
		return 0;
	}
	struct cwd_walk w = {
		.dentry = BPF_CORE_READ(fs, pwd.dentry),
		.vfsmnt = BPF_CORE_READ(fs, pwd.mnt),
		.root = BPF_CORE_READ(fs, root.dentry),
		.root_mnt = BPF_CORE_READ(fs, root.mnt),
		.start = start,
	};
	w.mnt = container_of(w.vfsmnt, struct mount, mnt);
	long steps = bpf_loop(RT_CWD_DEPTH, cwd_step, &w, 0);
	/* Every step that did not stop the walk was a component or a mount crossing: all of them
	 * taken means the path goes on above what we read. */
	if (steps == RT_CWD_DEPTH)
		w.flags |= RT_EXEC_TRUNC_CWD;
	*flags |= w.flags;
	return w.used;
}

/* Stores the exec'd path for matchBinaries: its first RT_POLICY_STR - 1 bytes and a NUL. */
static __always_inline void record_binary(__u32 pid, const char *path, long len)
{
	__u32 zero = 0;
	struct exec_scratch *s = bpf_map_lookup_elem(&runtime_scratch, &zero);
	if (!s)
		return;
	struct string_key *bin = &s->binary;
	bpf_probe_read_kernel_str(bin->data, sizeof(bin->data), path);
	bin->prefixlen = len < RT_POLICY_STR ? (__u32)len : RT_POLICY_STR;
	bin->filter = 0;
	bpf_map_update_elem(&runtime_binaries, &pid, bin, BPF_ANY);
}

/* Not inlined on purpose: a function signature puts each struct into the object's BTF, which is
 * what the TS codecs' layout test reads. */
static __noinline void emit_fork(struct runtime_fork_event *ev)
{
	emit(ev, sizeof(*ev));
}

static __noinline void emit_exit(struct runtime_exit_event *ev)
{
	emit(ev, sizeof(*ev));
}

#include "runtime_policy.h"

/* Keeps what matchNamespaceChanges, matchCapabilityChanges and followChildren compare with: the
 * namespaces and capabilities at this exec, and the followChildren marks, inherited from the
 * process before the exec (a fork's copy of its parent's) plus those this binary matches. */
static __always_inline void record_process(struct runtime_exec_event *ev)
{
	__u32 zero = 0;
	struct exec_scratch *s = bpf_map_lookup_elem(&runtime_scratch, &zero);
	if (!s)
		return;
	struct rt_proc proc = {
		.caps = { ev->cap_effective, ev->cap_inheritable, ev->cap_permitted },
	};
	__builtin_memcpy(proc.ns, ev->ns, sizeof(proc.ns));
	struct rt_proc *before = bpf_map_lookup_elem(&runtime_procs, &ev->pid);
	if (before) {
		proc.follow = before->follow;
		proc.pod_netns = before->pod_netns;
	}
	if (!proc.pod_netns) {
		struct rt_config *config = bpf_map_lookup_elem(&runtime_config, &zero);
		if (config && config->host_netns && ev->ns[RT_NS_NET] != config->host_netns)
			proc.pod_netns = ev->ns[RT_NS_NET];
	}
	proc.follow |= follow_marks(&s->binary);
	bpf_map_update_elem(&runtime_procs, &ev->pid, &proc, BPF_ANY);
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(runtime_exec, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 zero = 0;
	struct exec_scratch *s = bpf_map_lookup_elem(&runtime_scratch, &zero);
	if (!s)
		return 0;
	struct runtime_exec_event *ev = &s->event;
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->type = RT_EVENT_EXEC;
	ev->pid = BPF_CORE_READ(task, tgid);
	ev->tid = BPF_CORE_READ(task, pid);
	ev->ppid = BPF_CORE_READ(task, real_parent, tgid);
	ev->ktime = bpf_ktime_get_ns();

	const struct cred *cred = BPF_CORE_READ(task, cred);
	ev->uid = BPF_CORE_READ(cred, uid.val);
	ev->euid = BPF_CORE_READ(cred, euid.val);
	ev->gid = BPF_CORE_READ(cred, gid.val);
	ev->cap_effective = read_caps(&cred->cap_effective);
	ev->cap_permitted = read_caps(&cred->cap_permitted);
	ev->cap_inheritable = read_caps(&cred->cap_inheritable);
	if (bpf_core_field_exists(task->loginuid)) {
		ev->auid = BPF_CORE_READ(task, loginuid.val);
	} else {
		ev->auid = (__u32)-1;
		ev->flags |= RT_EXEC_NO_AUID;
	}
	/* The exec runs in the new process: current is `task`. */
	ev->cgroup_id = bpf_get_current_cgroup_id();
	read_namespaces(task, ev->ns, &ev->nspid);

	char *data = s->data;
	long n = bpf_probe_read_kernel_str(data, RT_BINARY_MAX, BPF_CORE_READ(bprm, filename));
	if (n <= 0) {
		data[0] = 0;
		n = 1;
	}
	if (n >= RT_BINARY_MAX)
		ev->flags |= RT_EXEC_TRUNC_FILENAME;
	__u32 used = n & (RT_BINARY_MAX * 2 - 1);
	ev->binary_len = used;
	record_binary(ev->pid, data, n);
	record_process(ev);

	/* argv as the new program sees it, on its new stack: the kernel has just copied it there. */
	unsigned long arg_start = BPF_CORE_READ(task, mm, arg_start);
	unsigned long arg_end = BPF_CORE_READ(task, mm, arg_end);
	__u64 size = arg_end > arg_start ? arg_end - arg_start : 0;
	ev->args_size = size;
	if (size > RT_ARGS_MAX) {
		size = RT_ARGS_MAX;
		ev->flags |= RT_EXEC_TRUNC_ARGS;
	}
	if (size > 0 && used <= RT_BINARY_MAX) {
		if (bpf_probe_read_user(&data[used], size, (void *)arg_start) == 0) {
			ev->args_len = size;
			used += size;
		} else {
			ev->flags |= RT_EXEC_ERROR_ARGS;
		}
	}

	ev->cwd_len = read_cwd(task, used, &ev->flags);
	used += ev->cwd_len;
	/* At most 1024 + 4096 + 1024 bytes were written; the mask only shows the verifier a bound. */
	emit(s, sizeof(*ev) + (used & RT_DATA_MASK));
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(runtime_fork, struct task_struct *parent, struct task_struct *child)
{
	/* Threads share their process's entry: only a new thread group is a new process. */
	__u32 tgid = BPF_CORE_READ(child, tgid);
	__u32 pid = BPF_CORE_READ(child, pid);
	if (tgid != pid)
		return 0;
	struct runtime_fork_event ev = {
		.type = RT_EVENT_FORK,
		.pid = tgid,
		.tid = pid,
		.ppid = BPF_CORE_READ(parent, tgid),
		.ktime = bpf_ktime_get_ns(),
	};
	struct string_key *bin = bpf_map_lookup_elem(&runtime_binaries, &ev.ppid);
	if (bin)
		bpf_map_update_elem(&runtime_binaries, &tgid, bin, BPF_ANY);
	struct rt_proc *proc = bpf_map_lookup_elem(&runtime_procs, &ev.ppid);
	if (proc)
		bpf_map_update_elem(&runtime_procs, &tgid, proc, BPF_ANY);
	emit_fork(&ev);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(runtime_exit, struct task_struct *task)
{
	/* do_exit() decrements signal->live before this tracepoint: zero means this was the process's
	 * last thread, which is when Tetragon (acct_process) reports the exit. */
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;
	struct runtime_exit_event ev = {
		.type = RT_EVENT_EXIT,
		.pid = BPF_CORE_READ(task, tgid),
		.tid = BPF_CORE_READ(task, pid),
		.ppid = BPF_CORE_READ(task, real_parent, tgid),
		.ktime = bpf_ktime_get_ns(),
		.exit_code = BPF_CORE_READ(task, exit_code),
	};
	bpf_map_delete_elem(&runtime_binaries, &ev.pid);
	bpf_map_delete_elem(&runtime_procs, &ev.pid);
	emit_exit(&ev);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
