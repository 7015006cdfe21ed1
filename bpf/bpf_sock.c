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

/*
 * Translates a frontend to a backend. Returns 0 (proceed, maybe translated), or -ECONNREFUSED
 * when the destination is a frontend with no backend to take the connection.
 */
static __always_inline int sock4_xlate_fwd(struct bpf_sock_addr *ctx)
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
	/* Maglev's hash: the socket, so one socket keeps one backend. */
	if (!backend_id)
		backend_id = lb4_select_backend_id(svc, frontend, dport, proto, (__u32)(cookie ^ (cookie >> 32)));
	backend = backend_id ? bpf_map_lookup_elem(&ciliate_lb4_backends, &backend_id) : NULL;
	if (!backend || (backend->flags & BE_F_TERMINATING)) {
		metrics_account(0, DROP_NO_SERVICE, CILIATE_METRIC_EGRESS);
		return -ECONNREFUSED;
	}

	if (svc->flags & SVC_F_AFFINITY)
		lb4_affinity_update(svc, client, now, backend_id);

	struct lb4_reverse_sk_key rkey = { .cookie = cookie, .address = backend->address, .port = backend->port };
	struct lb4_reverse_sk rval = { .address = vip, .port = dport, .rev_nat_index = svc->rev_nat_index };

	/* Best effort: without it only the reply's source address shows the backend. */
	bpf_map_update_elem(&ciliate_lb4_reverse_sk, &rkey, &rval, BPF_ANY);
	ctx->user_ip4 = backend->address;
	ctx->user_port = (__u32)backend->port;
	return 0;
}

static __always_inline int sock4_fwd(struct bpf_sock_addr *ctx)
{
	int err = sock4_xlate_fwd(ctx);

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

	if (rev) {
		ctx->user_ip4 = rev->address;
		ctx->user_port = (__u32)rev->port;
	}
	return SYS_PROCEED;
}

SEC("cgroup/connect4")
int cil_sock4_connect(struct bpf_sock_addr *ctx)
{
	return sock4_fwd(ctx);
}

SEC("cgroup/sendmsg4")
int cil_sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock4_fwd(ctx);
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
