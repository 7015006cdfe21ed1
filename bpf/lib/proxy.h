/* SPDX-License-Identifier: Apache-2.0 */
/*
 * L7 redirect to the node proxy, after Cilium ≥ 1.6's bpf/lib/proxy.h (bpf_sk_assign): a new
 * connection whose allowing policy entry carries a proxy port is handed, SYN included, to the
 * proxy's listener in the node's network namespace, with its addresses untouched. The proxy's
 * accepted socket then has the client as its peer and the original destination as its own address
 * (the listener is IP_TRANSPARENT, so it may answer from an address the node does not own), so the
 * proxy knows who talks to whom without a side table. The source address is a trustworthy
 * identity key: cil_from_container drops any packet whose source is not its endpoint's.
 *
 * The mark MARK_MAGIC_TO_PROXY routes these packets to local delivery (the agent adds `ip rule
 * fwmark 0x200/0xf00 lookup 2004` and `local 0.0.0.0/0 dev lo table 2004`, Cilium's numbers);
 * the rest of the connection (CT_F_PROXY_REDIRECT) gets the mark too and the stack finds the
 * proxy's socket by its 4-tuple.
 *
 * Why not Cilium 1.0-1.5's DNAT to the proxy with a proxy4 map of original destinations: every
 * packet both ways would be rewritten (checksums, a second reverse NAT beside the services'), the
 * proxy would need a map lookup per accept to learn where the client was going, and a stale or
 * evicted proxy4 entry would leave the proxy not knowing; with sk_assign the kernel's own socket
 * carries both ends, and only the SYN costs two socket lookups. Node cannot set IP_TRANSPARENT
 * itself; the proxy does it through libc (src/proxy/libc.ts).
 *
 * The proxy's own connection to the destination carries MARK_MAGIC_PROXY_INGRESS and the source's
 * identity in its socket mark (SO_MARK: root in the node only). cil_to_container trusts it only on
 * packets of a local socket, and a pod cannot forge it: the mark is scrubbed when a packet crosses
 * from a pod's network namespace into the node's.
 *
 * Connections that reach a pod through the node's stack (native routing from another node, the
 * host, outside the cluster) meet their L7 verdict in cil_to_container, at TC egress, where
 * bpf_sk_assign is refused. They take Cilium's hairpin (ctx_redirect_to_proxy_hairpin_ipv4):
 * cil_to_container marks the packet MARK_MAGIC_TO_PROXY with the proxy port in the upper half
 * and redirects it to the ingress of the same host veth, where cil_from_container sees the mark
 * and assigns the proxy's listener (proxy_hairpin4). Cilium redirects to cilium_host instead;
 * the pod's own veth needs no device of its own and keeps the endpoint at hand on both sides.
 */
#pragma once

#include "common.h"
#include "drop_reasons.h"
#include "events.h"
#include "conntrack.h"
#include "eth.h"
#include "maps.h"

/* Cilium's magic marks (bpf/lib/common.h there). */
#define MARK_MAGIC_HOST_MASK 0x0F00
#define MARK_MAGIC_TO_PROXY 0x0200
#define MARK_MAGIC_PROXY_INGRESS 0x0A00

/* The proxy port's place in a hairpin's MARK_MAGIC_TO_PROXY mark, as in Cilium. */
#define MARK_HAIRPIN_PORT_SHIFT 16

#define PROXY_LISTEN_ADDR 0x7f000001	/* 127.0.0.1, host order */

/* The identity a MARK_MAGIC_PROXY_INGRESS mark carries (Cilium's get_identity layout: bits
 * 16-31 the identity's low 16 bits, bits 0-7 its bits 16-23). */
static __always_inline __u32 proxy_mark_identity(__u32 mark)
{
	return (mark >> 16) | ((mark & 0xFF) << 16);
}

/*
 * Whether a packet leaving the node's stack towards a pod is the node proxy's connection
 * upstream: the proxy's mark on a packet of a local socket. Then *identity is the identity of the
 * client the proxy speaks for; its request was judged by policy when it was redirected.
 */
static __always_inline bool from_ingress_proxy(struct __sk_buff *skb, __u32 *identity)
{
	if ((skb->mark & MARK_MAGIC_HOST_MASK) != MARK_MAGIC_PROXY_INGRESS || !skb->sk)
		return false;
	*identity = proxy_mark_identity(skb->mark);
	return true;
}

/*
 * A UDP datagram (DNS) for the node proxy: every one is assigned to the proxy's socket, which
 * is bound to 127.0.0.1:proxy_port and has no 4-tuple the stack could find, after its original
 * destination is noted in ciliate_proxy4 for the proxy to read (maps.h). The proxy answers from
 * that destination's address and port, so the pod sees its resolver answer.
 */
static __always_inline int redirect_datagram_to_proxy4(struct __sk_buff *skb, struct ciliate_notify_info *info,
							const struct ipv4_ct_tuple *tuple, __u32 proxy_port)
{
	struct proxy4_key key = { .saddr = tuple->saddr, .sport = tuple->sport, .nexthdr = IPPROTO_UDP };
	struct proxy4_value orig = { .orig_daddr = tuple->daddr, .orig_dport = tuple->dport, .identity = info->src_identity };
	struct bpf_sock_tuple st = {};
	struct bpf_sock *sk;
	long err;

	if (!proxy_port)
		return DROP(skb, info, DROP_PROXY_LOOKUP_FAILED);
	st.ipv4.daddr = bpf_htonl(PROXY_LISTEN_ADDR);
	st.ipv4.dport = bpf_htons(proxy_port);
	sk = bpf_sk_lookup_udp(skb, &st, sizeof(st.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return DROP(skb, info, DROP_PROXY_LOOKUP_FAILED);
	err = bpf_map_update_elem(&ciliate_proxy4, &key, &orig, BPF_ANY);
	if (!err)
		err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err) {
		info->ext_error = err;
		return DROP(skb, info, DROP_PROXY_SET_FAILED);
	}
	skb->mark = MARK_MAGIC_TO_PROXY;
	send_trace_notify(skb, info, TRACE_TO_PROXY);
	return TC_ACT_OK;
}

/* The node's socket that takes the packets of `tuple` from client port `sport` (the proxy's, once
 * it has the connection), else a listener for its destination, or NULL; the caller releases it.
 * With `sport` 0 no connection matches: the listener the stack would find. */
static __always_inline struct bpf_sock *tuple_socket4(struct __sk_buff *skb, const struct ipv4_ct_tuple *tuple, __be16 sport)
{
	struct bpf_sock_tuple st = {};

	st.ipv4.saddr = tuple->saddr;
	st.ipv4.daddr = tuple->daddr;
	st.ipv4.sport = sport;
	st.ipv4.dport = tuple->dport;
	return bpf_skc_lookup_tcp(skb, &st, sizeof(st.ipv4), BPF_F_CURRENT_NETNS, 0);
}

/*
 * A SYN for the proxy that meets the proxy's socket of an earlier connection on its 4-tuple in
 * TIME_WAIT: the proxy closed first (its idle timeout, `Connection: close`), and the client, whose
 * side closed passively, reuses its port. Assigned the listener, the SYN would be dropped without
 * a word (the kernel refuses a new request beside a socket of the same 4-tuple: inet_ehash_insert)
 * and the client would retry for a minute. The stack's own TIME_WAIT processing takes it instead:
 * a SYN that may open a new connection ends the old socket and asks for a listener (TCP_TW_SYN),
 * and cil_proxy_lookup (bpf_proxy_lookup.c) answers with the proxy's, told by the handoff noted
 * here. That lookup must come first: a listener of the node on the destination's port would
 * otherwise get the connection. Without it (the proxy's listener is not in
 * ciliate_proxy_listeners), the stack may take the SYN only where no listener of the node would:
 * it answers with the old socket's ACK, the client resets that socket and sends its SYN again
 * within milliseconds (tcp_rcv_synsent_state_process), and that one finds nothing in the way.
 * Where a listener of the node would take it, it is dropped. Returns TC_ACT_OK to hand it to the
 * stack, or the drop it reported.
 */
static __always_inline int proxy_after_time_wait4(struct __sk_buff *skb, struct ciliate_notify_info *info,
						  const struct ipv4_ct_tuple *tuple, __u32 proxy_port)
{
	struct proxy4_key key = { .saddr = tuple->saddr, .sport = tuple->sport, .nexthdr = IPPROTO_TCP };
	struct proxy4_value orig = { .orig_daddr = tuple->daddr, .orig_dport = tuple->dport,
				     .handoff_port = proxy_port, .identity = info->src_identity };
	struct bpf_sock *sk;
	long err;

	if (!proxy_port)
		return DROP(skb, info, DROP_PROXY_LOOKUP_FAILED);
	sk = bpf_map_lookup_elem(&ciliate_proxy_listeners, &proxy_port);
	if (sk) {
		bpf_sk_release(sk);
		err = bpf_map_update_elem(&ciliate_proxy4, &key, &orig, BPF_ANY);
		if (err) {
			info->ext_error = err;
			return DROP(skb, info, DROP_PROXY_SET_FAILED);
		}
		return TC_ACT_OK;
	}
	sk = tuple_socket4(skb, tuple, 0);
	if (sk) {
		bpf_sk_release(sk);
		return DROP(skb, info, DROP_PROXY_LOOKUP_FAILED);
	}
	return TC_ACT_OK;
}

/*
 * Hands a packet from a pod (TC ingress of its host veth) to the node proxy: marks it for local
 * delivery and, for a SYN that has no socket yet, assigns the proxy's listener. Returns the
 * verdict (TC_ACT_OK, or the drop it reported: nobody listening, or a redirect that is neither TCP
 * nor UDP).
 * A global function: verified once, not at every call site.
 */
__noinline int redirect_to_proxy4(struct __sk_buff *skb, struct ciliate_notify_info *info, const struct ipv4_ct_tuple *tuple,
				  __u32 proxy_port, __u32 tcp_flags)
{
	struct bpf_sock_tuple st = {};
	struct bpf_sock *sk;
	long err;

	if (!info || !tuple)
		return TC_ACT_SHOT;
	if (tuple->nexthdr == IPPROTO_UDP)
		return redirect_datagram_to_proxy4(skb, info, tuple, proxy_port);
	if (tuple->nexthdr != IPPROTO_TCP)
		return DROP(skb, info, DROP_PROXY_UNSUPPORTED);
	skb->mark = MARK_MAGIC_TO_PROXY;
	if (ct_opening(tuple, tcp_flags)) {
		sk = tuple_socket4(skb, tuple, tuple->sport);
		if (sk) {
			__u32 state = sk->state;

			bpf_sk_release(sk);
			if (state == BPF_TCP_TIME_WAIT) {
				int ret = proxy_after_time_wait4(skb, info, tuple, proxy_port);

				if (ret != TC_ACT_OK)
					return ret;
				goto out;
			}
			/* A retransmitted SYN of a connection the proxy already holds goes to that socket. */
			if (state != BPF_TCP_LISTEN)
				goto out;
		}
		if (!proxy_port)
			return DROP(skb, info, DROP_PROXY_LOOKUP_FAILED);
		st.ipv4.daddr = bpf_htonl(PROXY_LISTEN_ADDR);
		st.ipv4.dport = bpf_htons(proxy_port);
		sk = bpf_skc_lookup_tcp(skb, &st, sizeof(st.ipv4), BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return DROP(skb, info, DROP_PROXY_LOOKUP_FAILED);
		if (sk->state != BPF_TCP_LISTEN) {
			bpf_sk_release(sk);
			return DROP(skb, info, DROP_PROXY_LOOKUP_FAILED);
		}
		/* Before the proxy can accept it: who the connection is from, for the proxy to judge. */
		struct proxy4_key key = { .saddr = tuple->saddr, .sport = tuple->sport, .nexthdr = IPPROTO_TCP };
		struct proxy4_value orig = { .orig_daddr = tuple->daddr, .orig_dport = tuple->dport, .identity = info->src_identity };

		err = bpf_map_update_elem(&ciliate_proxy4, &key, &orig, BPF_ANY);
		if (!err)
			err = bpf_sk_assign(skb, sk, 0);
		bpf_sk_release(sk);
		if (err) {
			info->ext_error = err;
			return DROP(skb, info, DROP_PROXY_SET_FAILED);
		}
	}
out:
	send_trace_notify(skb, info, TRACE_TO_PROXY);
	return TC_ACT_OK;
}

/*
 * cil_to_container's half of the hairpin: a packet of a connection whose ingress verdict carries
 * a proxy port (its SYN, which the caller has tracked as CT_F_PROXY_REDIRECT, and every later
 * packet the entry says so of) goes back to the ingress of the endpoint's host veth, marked for
 * proxy_port. The frame is rewritten as if the pod had sent it to the node (its MAC to the
 * veth's): otherwise the ingress names it PACKET_OTHERHOST and the stack drops it.
 */
static __always_inline int redirect_to_proxy_hairpin4(struct __sk_buff *skb, struct ciliate_notify_info *info,
							const struct endpoint_info *ep, __u16 proxy_port)
{
	int err = eth_store_daddr(skb, ep->node_mac);

	if (!err)
		err = eth_store_saddr(skb, ep->mac);
	if (err) {
		info->ext_error = err;
		return DROP(skb, info, DROP_INVALID_PACKET);
	}
	skb->mark = MARK_MAGIC_TO_PROXY | ((__u32)proxy_port << MARK_HAIRPIN_PORT_SHIFT);
	return bpf_redirect(ep->ifindex, BPF_F_INGRESS);
}

/*
 * Whether a packet at cil_from_container came from cil_to_container's hairpin. Nothing else can
 * bring this mark there: a packet leaving a pod crosses its veth from the pod's namespace into
 * the node's, and the kernel scrubs skb->mark on that crossing (____dev_forward_skb:
 * skb_scrub_packet with xnet), whatever SO_MARK or tc action set it inside the pod. The hairpin
 * redirect stays in the node's namespace, so its mark survives. proxy_hairpin4 checks the
 * connection against conntrack all the same.
 */
static __always_inline bool proxy_hairpinned(const struct __sk_buff *skb)
{
	return (skb->mark & 0xFFFF) == MARK_MAGIC_TO_PROXY && (skb->mark >> MARK_HAIRPIN_PORT_SHIFT);
}

/*
 * The proxy answers a hairpinned connection through the node's stack, never past the pod's veth,
 * so its entry sees no reply: the proxy's socket, established, stands for one (a handshake the
 * kernel accepted, which a forged ACK is not). Otherwise the entry would live as an unanswered
 * SYN's (CT_SYN_TIMEOUT), and an idle connection be judged again. Out of line: its socket tuple
 * must not weigh on the stack of the path to redirect_to_proxy4.
 */
static __noinline void hairpin_answered4(struct __sk_buff *skb, const struct ipv4_ct_tuple *tuple, struct ct_entry *entry)
{
	struct bpf_sock *sk = tuple_socket4(skb, tuple, tuple->sport);

	if (!sk)
		return;
	if (sk->state == BPF_TCP_ESTABLISHED) {
		entry->flags |= CT_F_SEEN_REPLY;
		entry->lifetime = ct_now() + ct_lifetime(tuple, entry->flags);
	}
	bpf_sk_release(sk);
}

/*
 * cil_from_container's half: hands a hairpinned packet to the proxy as redirect_to_proxy4 does
 * for a pod's (the listener assigned to a SYN, whose original destination and client identity
 * are noted in ciliate_proxy4; later packets marked for local delivery), skipping the pod's
 * source checks and policy: its source is the remote client, judged at cil_to_container. Only a
 * connection cil_to_container tracked as redirected to this very port passes: the identity the
 * proxy is told is the one that connection was judged with (the entry's src_sec_id). The caller
 * checked that the destination is the endpoint behind this interface.
 */
static __noinline int proxy_hairpin4(struct __sk_buff *skb, struct ciliate_notify_info *info,
				     const struct ipv4_ct_tuple *tuple, __u8 tcp_flags)
{
	struct ipv4_ct_tuple key;
	struct ct_entry *entry;
	__u32 port = skb->mark >> MARK_HAIRPIN_PORT_SHIFT;

	if (!info || !tuple)
		return TC_ACT_SHOT;
	key = *tuple;
	key.flags = CT_INGRESS;
	key._pad = 0;
	entry = bpf_map_lookup_elem(&ciliate_ct4, &key);
	if (tuple->nexthdr != IPPROTO_TCP || !entry || !(entry->flags & CT_F_PROXY_REDIRECT) || entry->proxy_port != port)
		return DROP(skb, info, DROP_PROXY_SET_FAILED);
	info->src_identity = entry->src_sec_id;
	/* The connection's later packets were judged with it: news only at its opening (or under
	 * the lowest aggregation). */
	if (!ct_opening(tuple, tcp_flags))
		info->flags |= CILIATE_NOTIFY_F_AGGREGATE;
	if (!(entry->flags & CT_F_SEEN_REPLY) && !(tcp_flags & TCP_FLAG_SYN))
		hairpin_answered4(skb, tuple, entry);
	return redirect_to_proxy4(skb, info, tuple, port, tcp_flags);
}
