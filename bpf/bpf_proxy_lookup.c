/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The node proxy's listener for a SYN that the stack takes through a TIME_WAIT socket of its
 * 4-tuple (bpf/lib/proxy.h, proxy_after_time_wait4, says when): attached to the node's network
 * namespace (BPF_SK_LOOKUP), it runs before the stack looks among its own listeners, and answers
 * with the proxy's for a connection whose SYN the datapath noted in ciliate_proxy4 with a handoff
 * port. Every other lookup is left to the stack. A handoff is taken once, so a stale note never
 * steers a later connection on the same 4-tuple that policy does not send to the proxy.
 */
#include "common.h"
#include "maps.h"

#ifndef AF_INET
#define AF_INET 2
#endif

SEC("sk_lookup")
int cil_proxy_lookup(struct bpf_sk_lookup *ctx)
{
	struct proxy4_key key = {};
	struct proxy4_value *noted;
	struct bpf_sock *sk;
	__u32 port;

	if (ctx->family != AF_INET || ctx->protocol != IPPROTO_TCP)
		return SK_PASS;
	key.saddr = ctx->remote_ip4;
	key.sport = ctx->remote_port;
	key.nexthdr = IPPROTO_TCP;
	noted = bpf_map_lookup_elem(&ciliate_proxy4, &key);
	if (!noted || !noted->handoff_port || noted->orig_daddr != ctx->local_ip4 ||
	    noted->orig_dport != bpf_htons((__u16)ctx->local_port))
		return SK_PASS;
	port = noted->handoff_port;
	noted->handoff_port = 0;
	sk = bpf_map_lookup_elem(&ciliate_proxy_listeners, &port);
	if (!sk)
		return SK_PASS;
	bpf_sk_assign(ctx, sk, 0);
	bpf_sk_release(sk);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "GPL";
