/* SPDX-License-Identifier: Apache-2.0 */
/*
 * matchPIDs beyond the caller's own process id, for both runtime engines (the tracepoint hooks of
 * runtime_policy.h and the socket hooks of bpf_sock_enforce.c): followForks and isNamespacePID.
 * Needs vmlinux.h and bpf_core_read.h.
 */
#pragma once

/* rt_selector.pid_flags, se_selector.pid_flags */
#define PID_F_FOLLOW_FORKS 0x01 /* the caller or one of its ancestors, up to PID_ANCESTORS up */
#define PID_F_NAMESPACE 0x02    /* process ids as the process's own pid namespace numbers them */
#define PID_ANCESTORS 16

/* The process id of `task` (its thread group leader's), globally or in its own pid namespace. */
static __always_inline __u32 task_tgid_in(struct task_struct *task, bool in_namespace)
{
	if (!in_namespace)
		return BPF_CORE_READ(task, tgid);
	struct pid *pid = BPF_CORE_READ(task, group_leader, thread_pid);
	unsigned int level = BPF_CORE_READ(pid, level);
	struct upid upid = {};
	bpf_core_read(&upid, sizeof(upid), &pid->numbers[level & 31]);
	return upid.nr;
}

/*
 * Whether the current task (or, with PID_F_FOLLOW_FORKS, one of its ancestors) has one of `pids`.
 * Ancestors are walked, not recorded at fork: processes forked before the policy was loaded follow
 * too. The walk goes by probe reads from a plain address: a task it reaches is no trusted pointer.
 */
static __always_inline bool current_pids_match(const __u32 *pids, __u32 npids, __u32 max_pids, __u8 flags)
{
	bool in_namespace = flags & PID_F_NAMESPACE;
	__u32 levels = (flags & PID_F_FOLLOW_FORKS) ? PID_ANCESTORS : 1;
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	for (__u32 level = 0; level < PID_ANCESTORS; level++) {
		if (level >= levels || !task)
			break;
		__u32 pid = task_tgid_in(task, in_namespace);
		if (pid == 0)
			break;
		for (__u32 k = 0; k < max_pids; k++)
			if (k < npids && pids[k] == pid)
				return true;
		struct task_struct *parent = BPF_CORE_READ(task, real_parent);
		if (parent == task)
			break;
		task = parent;
	}
	return false;
}
