/* SPDX-License-Identifier: Apache-2.0 */
/* Fixture: program kinds this test kernel lacks (no CONFIG_KPROBES; fentry and BPF LSM loads
 * refused). Tests load one program at a time (LoadOptions.programs) and expect "not supported". */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

SEC("kprobe/do_unlinkat")
int on_kprobe(struct pt_regs *ctx)
{
	return 0;
}

SEC("kretprobe/do_unlinkat")
int on_kretprobe(struct pt_regs *ctx)
{
	return 0;
}

SEC("fentry/do_unlinkat")
int BPF_PROG(on_fentry, int dfd)
{
	return 0;
}

SEC("lsm/file_open")
int BPF_PROG(on_lsm_file_open, struct file *file)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
