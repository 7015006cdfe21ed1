/* SPDX-License-Identifier: Apache-2.0 */
/*
 * East-west service load balancing at the socket (Cilium's bpf_sock.c, IPv4): connect4 and
 * sendmsg4 turn a service frontend the application asked for into a backend once, before any
 * packet exists, so the connection's packets carry the backend's address from the first SYN on
 * and the endpoint datapath (policy, conntrack) sees a plain pod-to-pod connection. recvmsg4
 * and getpeername4 turn the backend back into the frontend for the application.
 *
 * Attached to a cgroup v2 (the agent's --socket-lb-cgroup): sockets of processes outside it are
 * untouched.
 */
#include "common.h"
#include "drop_reasons.h"
#include "events.h"
#include "maps.h"
#include "lb.h"

#ifndef ECONNREFUSED
#define ECONNREFUSED 111
#endif

#define SYS_REJECT 0
#define SYS_PROCEED 1

/* Both hooks see the port as the low 16 bits of a u32, in network order. */
static __always_inline __be16 ctx_dport(const struct bpf_sock_addr *ctx)
{
	return (__be16)ctx->user_port;
}

/*
 * A NodePort frontend (stored at address 0.0.0.0) for a connection to one of the cluster's node
 * addresses (the ipcache says host or remote node), as Cilium's wildcard lookup. Not loopback: in
 * a pod's namespace that is the pod's own, and its ports in the node-port range are its own too.
 */
static __always_inline struct lb4_service *sock4_nodeport_lookup(__be32 address, __be16 dport, __u8 proto)
{
	struct ipcache_key key = { .prefixlen = 32, .ip = address };
	struct remote_endpoint_info *info = bpf_map_lookup_elem(&ciliate_ipcache, &key);
	struct lb4_service *svc;

	if (!info || (info->sec_identity != IDENTITY_HOST && info->sec_identity != IDENTITY_REMOTE_NODE))
		return NULL;
	svc = lb4_lookup_service(0, dport, proto);
	return svc && (svc->flags & SVC_F_NODEPORT) ? svc : NULL;
}

/* Bytes of the headers a socket drop event carries: Ethernet, IPv4 without options, TCP or UDP. */
#define SOCK_EVENT_ETH_LEN 14
#define SOCK_EVENT_IP_LEN 20

/* What a socket-level event says of its connection: the 5-tuple its first packet would have had. */
struct sock_event_tuple {
	__u64 cookie;		/* bpf_get_socket_cookie() */
	__be32 saddr;		/* 0.0.0.0 until the kernel picks one (after connect4) */
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 _pad;
	__u16 endpoint_id;	/* the local endpoint whose namespace the socket is in, 0 if none */
	__u32 identity;		/* its security identity, 0 if none */
};

/*
 * Fills a drop event for a connection (or datagram) refused at the socket: the TC programs'
 * layout (events.h), so the observer shows it as any other dropped flow, with the headers its
 * first packet would have had in place of a capture (CILIATE_EVENT_F_SOCK). Not inlined, so the
 * event's layout is in bpf_sock.o's BTF for the TS codec test.
 */
static __noinline void sock_drop_event_fill(struct ciliate_drop_event *ev, const struct sock_event_tuple *t,
					    enum ciliate_drop_reason reason, __u32 line)
{
	__u32 l4len = t->proto == IPPROTO_TCP ? 20 : 8;

	__builtin_memset(ev, 0, sizeof(*ev));
	ev->hdr.type = CILIATE_EVENT_DROP;
	ev->hdr.subtype = reason;
	ev->hdr.hash = (__u32)t->cookie;
	ev->hdr.source = t->endpoint_id;
	ev->hdr.src_identity = t->identity;
	ev->hdr.orig_len = SOCK_EVENT_IP_LEN + l4len;
	ev->hdr.cap_len = SOCK_EVENT_ETH_LEN + SOCK_EVENT_IP_LEN + l4len;
	ev->hdr.flags = CILIATE_EVENT_F_SOCK;
	ev->hdr.timestamp_ns = bpf_ktime_get_ns();
	ev->ext_error = -ECONNREFUSED;
	ev->line = line;

	__u8 *d = ev->data;
	/* Ethernet: no addresses yet; IPv4. */
	d[12] = ETH_P_IP >> 8;
	d[13] = ETH_P_IP & 0xff;
	struct iphdr *ip = (struct iphdr *)(d + SOCK_EVENT_ETH_LEN);
	ip->version = 4;
	ip->ihl = 5;
	ip->tot_len = bpf_htons(SOCK_EVENT_IP_LEN + l4len);
	ip->ttl = 64;
	ip->protocol = t->proto;
	ip->saddr = t->saddr;
	ip->daddr = t->daddr;
	/* The header checksum, so the observer sees a well-formed header. */
	__u16 *words = (__u16 *)ip;
	__u32 sum = 0;
#pragma unroll
	for (int i = 0; i < SOCK_EVENT_IP_LEN / 2; i++)
		sum += words[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	ip->check = (__u16)~sum;
	__u8 *l4 = d + SOCK_EVENT_ETH_LEN + SOCK_EVENT_IP_LEN;
	*(__be16 *)l4 = t->sport;
	*(__be16 *)(l4 + 2) = t->dport;
	if (t->proto == IPPROTO_TCP) {
		l4[12] = 5 << 4;	/* data offset: 5 words */
		l4[13] = 0x02;		/* SYN: what connect() would have sent */
	} else {
		*(__be16 *)(l4 + 4) = bpf_htons(8);
	}
}

/*
 * Reports a refused connection, from the endpoint whose network namespace the socket is in. The
 * source address is the socket's own when it has one (bound, or a datagram's msg_src_ip4), else
 * that endpoint's (the kernel picks one only after connect4), else 0.0.0.0.
 */
static __always_inline void sock4_drop_notify(struct bpf_sock_addr *ctx, bool sendmsg, __u64 cookie,
					      enum ciliate_drop_reason reason, __u32 line)
{
	struct bpf_sock *sk = ctx->sk;
	struct sock_event_tuple t = {
		.cookie = cookie,
		.daddr = ctx->user_ip4,
		.dport = ctx_dport(ctx),
		.proto = (__u8)ctx->protocol,
	};
	struct ciliate_drop_event *ev;

	if (sendmsg)
		t.saddr = ctx->msg_src_ip4;
	if (sk) {
		if (!t.saddr)
			t.saddr = sk->src_ip4;
		t.sport = bpf_htons((__u16)sk->src_port);
	}
	__u64 netns = bpf_get_netns_cookie(ctx);
	struct sock_endpoint *ep = bpf_map_lookup_elem(&ciliate_sock_endpoints, &netns);

	if (ep) {
		t.endpoint_id = ep->endpoint_id;
		t.identity = ep->identity;
		if (!t.saddr)
			t.saddr = ep->ipv4;
	}
	metrics_account(0, reason, CILIATE_METRIC_EGRESS);
	ev = ringbuf_reserve_or_count(&ciliate_events, &ciliate_events_lost, sizeof(*ev));
	if (!ev)
		return;
	sock_drop_event_fill(ev, &t, reason, line);
	ringbuf_submit_batched(&ciliate_events, ev, CILIATE_EVENTS_WAKEUP_BYTES);
}

/*
 * Translates a frontend to a backend. Returns 0 (proceed, maybe translated), or -ECONNREFUSED
 * when the destination is a frontend with no backend to take the connection (reported as a drop).
 * `sendmsg`: called from sendmsg4, whose context alone has msg_src_ip4.
 */
static __always_inline int sock4_xlate_fwd(struct bpf_sock_addr *ctx, const bool sendmsg)
{
	__be32 vip = ctx->user_ip4;
	__be16 dport = ctx_dport(ctx);
	__u8 proto = (__u8)ctx->protocol;
	struct lb4_service *svc = lb4_lookup_service(vip, dport, proto);
	__be32 frontend = vip;	/* the address the service's slots are stored under */
	struct lb4_backend *backend;
	__u64 cookie, client = 0, now = 0;
	__u32 backend_id = 0;

	if (!svc) {
		svc = sock4_nodeport_lookup(vip, dport, proto);
		if (!svc)
			return 0;
		frontend = 0;
	}
	cookie = bpf_get_socket_cookie(ctx);
	if (svc->flags & SVC_F_AFFINITY) {
		client = bpf_get_netns_cookie(ctx);
		now = bpf_ktime_get_boot_ns() / 1000000000ULL;
		backend_id = lb4_affinity_backend_id(svc, client, now);
	}
	/* The socket's cookie is Maglev's hash, so one socket keeps one backend; and for protocols
	 * without connections (an unconnected UDP socket is translated per datagram) the random
	 * slot too, as Cilium's sock_select_slot: its datagrams all go to one backend, whose replies
	 * recvmsg4 shows as from the frontend. A TCP connect picks at random. */
	if (!backend_id)
		backend_id = lb4_select_backend_id(svc, frontend, dport, proto, (__u32)(cookie ^ (cookie >> 32)),
						   proto != IPPROTO_TCP);
	backend = backend_id ? bpf_map_lookup_elem(&ciliate_lb4_backends, &backend_id) : NULL;
	if (!backend || (backend->flags & BE_F_TERMINATING)) {
		sock4_drop_notify(ctx, sendmsg, cookie, DROP_NO_SERVICE, __LINE__);
		return -ECONNREFUSED;
	}

	if (svc->flags & SVC_F_AFFINITY)
		lb4_affinity_update(svc, client, now, backend_id);

	struct lb4_reverse_sk_key rkey = { .cookie = cookie, .address = backend->address, .port = backend->port };
	struct lb4_reverse_sk rval = { .address = vip, .port = dport, .rev_nat_index = svc->rev_nat_index };
	struct lb4_reverse_sk *known = bpf_map_lookup_elem(&ciliate_lb4_reverse_sk, &rkey);

	/* Best effort: without it only the reply's source address shows the backend. Written only
	 * when it differs: a UDP socket's every datagram comes here. */
	if (!known || known->address != rval.address || known->port != rval.port || known->rev_nat_index != rval.rev_nat_index)
		bpf_map_update_elem(&ciliate_lb4_reverse_sk, &rkey, &rval, BPF_ANY);
	ctx->user_ip4 = backend->address;
	ctx->user_port = (__u32)backend->port;
	return 0;
}

static __always_inline int sock4_fwd(struct bpf_sock_addr *ctx, const bool sendmsg)
{
	int err = sock4_xlate_fwd(ctx, sendmsg);

	if (err) {
		/* The application sees ECONNREFUSED, as from a port nobody listens on, not EPERM. */
		bpf_set_retval(err);
		return SYS_REJECT;
	}
	return SYS_PROCEED;
}

/* Replies and peer names: the backend becomes the frontend the socket asked for. */
static __always_inline int sock4_rev(struct bpf_sock_addr *ctx)
{
	struct lb4_reverse_sk_key key = {
		.cookie = bpf_get_socket_cookie(ctx),
		.address = ctx->user_ip4,
		.port = ctx_dport(ctx),
	};
	struct lb4_reverse_sk *rev = bpf_map_lookup_elem(&ciliate_lb4_reverse_sk, &key);
	struct lb4_service *svc;

	if (!rev)
		return SYS_PROCEED;
	/* Only while the frontend is still that service (Cilium's REASON_LB_REVNAT_STALE): a service
	 * deleted, or made anew under another id, no longer speaks for this backend. */
	svc = lb4_lookup_service(rev->address, rev->port, (__u8)ctx->protocol);
	if (!svc)
		svc = sock4_nodeport_lookup(rev->address, rev->port, (__u8)ctx->protocol);
	if (!svc || svc->rev_nat_index != rev->rev_nat_index) {
		bpf_map_delete_elem(&ciliate_lb4_reverse_sk, &key);
		return SYS_PROCEED;
	}
	ctx->user_ip4 = rev->address;
	ctx->user_port = (__u32)rev->port;
	return SYS_PROCEED;
}

SEC("cgroup/connect4")
int cil_sock4_connect(struct bpf_sock_addr *ctx)
{
	return sock4_fwd(ctx, false);
}

SEC("cgroup/sendmsg4")
int cil_sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock4_fwd(ctx, true);
}

SEC("cgroup/recvmsg4")
int cil_sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	return sock4_rev(ctx);
}

SEC("cgroup/getpeername4")
int cil_sock4_getpeername(struct bpf_sock_addr *ctx)
{
	return sock4_rev(ctx);
}

char LICENSE[] SEC("license") = "GPL";
