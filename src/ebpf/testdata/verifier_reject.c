/* SPDX-License-Identifier: Apache-2.0 */
/* Fixture: a program the verifier must reject (an unchecked packet read), so tests can see the
 * verifier's log carried by the load error. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

SEC("tc")
int unchecked_read(struct __sk_buff *skb)
{
	__u8 *data = (__u8 *)(long)skb->data;
	return data[20];
}

char LICENSE[] SEC("license") = "GPL";
