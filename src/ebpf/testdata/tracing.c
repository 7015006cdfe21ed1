/* SPDX-License-Identifier: Apache-2.0 */
/* Fixture for tracing link tests: the same exec event seen through a tracepoint, a raw tracepoint
 * and a BTF tracepoint, plus a uprobe/uretprobe pair. Each program counts only events from
 * children of the test process (trace_config[CFG_PARENT_TGID]), so other activity on the machine never
 * moves the counters a test asserts on. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
/* BPF_KPROBE/BPF_KRETPROBE: libbpf 1.1 predates BPF_UPROBE, and the register layout is the same. */
#include <bpf/bpf_tracing.h>

enum { SLOT_TP, SLOT_RAW_TP, SLOT_TP_BTF, SLOT_UPROBE, SLOT_URETPROBE, SLOT_UPROBE_ARG_SUM, SLOT_URETPROBE_RET_SUM, SLOT_COUNT };
enum { CFG_PARENT_TGID, CFG_UPROBE_TGID, CFG_COUNT };

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, SLOT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} counts SEC(".maps");

/* Written by the test before it triggers events. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CFG_COUNT);
	__type(key, __u32);
	__type(value, __u32);
} trace_config SEC(".maps");

/* The filename of the last exec the raw tracepoint counted: proves CO-RE reads real kernel data. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, char[64]);
} last_filename SEC(".maps");

static __always_inline __u32 config_get(__u32 key)
{
	__u32 *value = bpf_map_lookup_elem(&trace_config, &key);
	return value ? *value : 0;
}

static __always_inline void add(__u32 slot, __u64 delta)
{
	__u64 *value = bpf_map_lookup_elem(&counts, &slot);
	if (value)
		__sync_fetch_and_add(value, delta);
}

/* True when the task was started by the process under test. A zero target matches nothing, so a
 * freshly loaded object counts nothing until the test says whose children to watch. */
static __always_inline bool child_of_target(struct task_struct *task)
{
	__u32 target = config_get(CFG_PARENT_TGID);
	return target != 0 && BPF_CORE_READ(task, real_parent, tgid) == target;
}

SEC("tracepoint/sched/sched_process_exec")
int on_exec_tp(struct trace_event_raw_sched_process_exec *ctx)
{
	/* The tracepoint record has the pid but not the parent: take it from current via CO-RE. */
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	if (ctx->pid != (pid_t)(bpf_get_current_pid_tgid() & 0xffffffff))
		return 0;
	if (child_of_target(task))
		add(SLOT_TP, 1);
	return 0;
}

SEC("raw_tp/sched_process_exec")
int on_exec_raw(struct bpf_raw_tracepoint_args *ctx)
{
	/* TP_PROTO(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm) */
	struct task_struct *task = (struct task_struct *)ctx->args[0];
	struct linux_binprm *bprm = (struct linux_binprm *)ctx->args[2];
	if (!child_of_target(task))
		return 0;
	add(SLOT_RAW_TP, 1);
	__u32 zero = 0;
	char *out = bpf_map_lookup_elem(&last_filename, &zero);
	if (out)
		bpf_probe_read_kernel_str(out, 64, BPF_CORE_READ(bprm, filename));
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(on_exec_btf, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	/* BTF-typed arguments: the verifier lets us follow task pointers directly. */
	__u32 target = config_get(CFG_PARENT_TGID);
	if (target != 0 && task->real_parent->tgid == target)
		add(SLOT_TP_BTF, 1);
	return 0;
}

static __always_inline bool uprobe_target(void)
{
	__u32 target = config_get(CFG_UPROBE_TGID);
	return target == 0 || (bpf_get_current_pid_tgid() >> 32) == target;
}

SEC("uprobe")
int BPF_KPROBE(on_uprobe, int arg)
{
	if (!uprobe_target())
		return 0;
	add(SLOT_UPROBE, 1);
	add(SLOT_UPROBE_ARG_SUM, (__u64)arg);
	return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(on_uretprobe, int ret)
{
	if (!uprobe_target())
		return 0;
	add(SLOT_URETPROBE, 1);
	add(SLOT_URETPROBE_RET_SUM, (__u64)ret);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
