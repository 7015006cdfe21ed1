/* SPDX-License-Identifier: Apache-2.0 */
/*
 * IPv4 connection tracking in the shared ciliate_ct4 map, after Cilium's bpf/lib/conntrack.h.
 *
 * One entry per connection, keyed by the tuple of the packet that opened it plus the direction
 * of the hook that saw it (CT_EGRESS: leaving an endpoint, CT_INGRESS: entering one). A later
 * packet is ESTABLISHED when its own tuple finds the entry, and a REPLY when its reversed tuple
 * does. Replies are looked up under both directions: a connection between two pods of this
 * node is created when it leaves the client (CT_EGRESS), and its replies are seen when they
 * leave the server, again at an egress hook.
 *
 * Expired entries are left to a garbage collector in user space (lifetime is an absolute time
 * in seconds); the LRU map also evicts the coldest entries when it fills.
 */
#pragma once

#include "common.h"
#include "ipv4.h"
#include "maps.h"

/* Lookup results; the numbers are Cilium's, which its trace events carry as TRACE_REASON_*. */
enum ct_status {
	CT_NEW = 0,
	CT_ESTABLISHED = 1,
	CT_REPLY = 2,
	CT_RELATED = 3,
};

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

/* Seconds, Cilium's defaults: half-open and closing connections go quickly, established TCP
 * stays six hours, anything else a minute after its last packet. */
#define CT_SYN_TIMEOUT 60
#define CT_CLOSE_TIMEOUT 10
#define CT_LIFETIME_TCP 21600
#define CT_LIFETIME_NONTCP 60

#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8

static __always_inline __u32 ct_now(void)
{
	/* Boot time keeps counting through suspend, so entries do not outlive their timeout. */
	return bpf_ktime_get_boot_ns() / 1000000000ULL;
}

/*
 * Fills the ports of `tuple` (already holding the addresses and protocol) from the L4 header at
 * `l4_off`, and the TCP flags into *tcp_flags. ICMP echo requests and replies use the echo id as
 * a port, on opposite sides, so a reply's reversed tuple finds its request. Returns 0, or -1
 * when the header is too short to read (the caller drops with DROP_CT_INVALID_HDR).
 */
static __always_inline int ct_extract_ports4(void *data, void *data_end, __u32 l4_off,
					     struct ipv4_ct_tuple *tuple, __u8 *tcp_flags)
{
	*tcp_flags = 0;
	switch (tuple->nexthdr) {
	case IPPROTO_TCP: {
		struct tcphdr *tcp = pkt_header(data, data_end, l4_off, sizeof(*tcp));

		if (!tcp)
			return -1;
		tuple->sport = tcp->source;
		tuple->dport = tcp->dest;
		/* The flags byte follows the 4-bit data offset and reserved bits. */
		*tcp_flags = ((__u8 *)tcp)[13];
		return 0;
	}
	case IPPROTO_UDP: {
		struct udphdr *udp = pkt_header(data, data_end, l4_off, sizeof(*udp));

		if (!udp)
			return -1;
		tuple->sport = udp->source;
		tuple->dport = udp->dest;
		return 0;
	}
	case IPPROTO_ICMP: {
		struct icmphdr *icmp = pkt_header(data, data_end, l4_off, sizeof(*icmp));

		if (!icmp)
			return -1;
		if (icmp->type == ICMP_ECHO)
			tuple->sport = icmp->un.echo.id;
		else if (icmp->type == ICMP_ECHOREPLY)
			tuple->dport = icmp->un.echo.id;
		return 0;
	}
	default:
		/* Tracked by addresses and protocol alone. */
		return 0;
	}
}

static __always_inline void ct_tuple_reverse(struct ipv4_ct_tuple *tuple)
{
	__be32 addr = tuple->daddr;
	__be16 port = tuple->dport;

	tuple->daddr = tuple->saddr;
	tuple->saddr = addr;
	tuple->dport = tuple->sport;
	tuple->sport = port;
}

static __always_inline __u32 ct_lifetime(const struct ipv4_ct_tuple *tuple, __u16 flags)
{
	if (tuple->nexthdr != IPPROTO_TCP)
		return CT_LIFETIME_NONTCP;
	if (flags & (CT_F_TX_CLOSING | CT_F_RX_CLOSING))
		return CT_CLOSE_TIMEOUT;
	if (flags & CT_F_SEEN_REPLY)
		return CT_LIFETIME_TCP;
	return CT_SYN_TIMEOUT;
}

/*
 * Whether a packet of an existing connection is news for monitor aggregation (medium and above),
 * as Cilium's conntrack decides it: a FIN or RST (closing), the first reply, a flag of
 * `report_flags` seen for the first time in the packet's direction, or `report_interval` seconds
 * since that direction was last reported. Once both sides closed, only a SYN (the tuple reused)
 * is. Marks the direction reported. `seen` and `flags` are the entry's before this packet.
 */
static __always_inline bool ct_report(struct ct_entry *entry, bool reply, __u8 tcp_flags, __u8 seen, __u16 flags,
				      __u16 now, const struct ciliate_monitor_config *mon)
{
	bool report;

	if (tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
		report = true;
	else if ((flags & (CT_F_TX_CLOSING | CT_F_RX_CLOSING)) == (CT_F_TX_CLOSING | CT_F_RX_CLOSING))
		report = tcp_flags & TCP_FLAG_SYN;
	else if (reply && !(flags & CT_F_SEEN_REPLY))
		report = true;
	else
		report = (tcp_flags & mon->report_flags & ~seen) ||
			 (__u16)(now - (reply ? entry->last_rx_report : entry->last_tx_report)) >= mon->report_interval;
	/* Plain stores, as the flags': CPUs racing on one connection at worst report it twice. */
	if (report) {
		if (reply)
			entry->last_rx_report = now;
		else
			entry->last_tx_report = now;
	}
	return report;
}

/* Accounts one packet to an existing entry; returns whether it is news (ct_report). Flag updates
 * are plain stores: two CPUs racing on one connection can at worst lose a flag that the next
 * packet sets again. */
static __always_inline bool ct_update(struct ct_entry *entry, const struct ipv4_ct_tuple *tuple, bool reply,
				      __u8 tcp_flags, __u32 len, const struct ciliate_monitor_config *mon)
{
	__u16 before = entry->flags;
	__u16 flags = before;
	__u8 seen = reply ? entry->rx_flags_seen : entry->tx_flags_seen;
	__u32 now = ct_now();

	__sync_fetch_and_add(&entry->packets, 1);
	__sync_fetch_and_add(&entry->bytes, len);
	if (reply) {
		flags |= CT_F_SEEN_REPLY;
		entry->rx_flags_seen |= tcp_flags;
		if (tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
			flags |= CT_F_RX_CLOSING;
	} else {
		entry->tx_flags_seen |= tcp_flags;
		if (tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
			flags |= CT_F_TX_CLOSING;
	}
	/* A RST closes both ways at once. */
	if (tcp_flags & TCP_FLAG_RST)
		flags |= CT_F_TX_CLOSING | CT_F_RX_CLOSING;
	if (flags != before)
		entry->flags = flags;
	entry->lifetime = now + ct_lifetime(tuple, flags);
	return ct_report(entry, reply, tcp_flags, seen, before, now, mon);
}

/* A TCP SYN without ACK: the client's opening packet of a connection. */
static __always_inline bool ct_opening(const struct ipv4_ct_tuple *tuple, __u8 tcp_flags)
{
	return tuple->nexthdr == IPPROTO_TCP && (tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

/*
 * Whether the packet opens a new connection on the tuple of `entry`, one whose connection is
 * closing or closed (Cilium's CT_NEW for a SYN on a closing entry): policy judges it again, and
 * ct_create4 puts a fresh entry in place of the old one. A SYN on a live entry is a
 * retransmission of its opening, and stays established.
 */
static __always_inline bool ct_reopens(const struct ct_entry *entry, const struct ipv4_ct_tuple *tuple, __u8 tcp_flags)
{
	return ct_opening(tuple, tcp_flags) && (entry->flags & (CT_F_TX_CLOSING | CT_F_RX_CLOSING));
}

/*
 * Looks up the packet whose tuple (in packet order, flags unset) is `tuple`, as seen by a hook of
 * direction `dir`, and accounts it to the entry found; *report says whether the packet is news for
 * monitor aggregation (always for CT_NEW), *to_proxy whether it is the originator's packet of a
 * connection redirected to the node proxy (at *proxy_port). A connection reusing the tuple of a closed one
 * (ct_reopens) is CT_NEW, and the old entry is left untouched until ct_create4 replaces it: a
 * SYN policy denies leaves it as it was, so its retransmission is judged again. Leaves `tuple` as
 * it was.
 */
static __always_inline enum ct_status ct_lookup4(void *map, const struct ipv4_ct_tuple *tuple, __u8 dir,
						 __u8 tcp_flags, __u32 len, const struct ciliate_monitor_config *mon,
						 bool *report, __u16 *rev_nat_index, bool *to_proxy, __u16 *proxy_port)
{
	struct ipv4_ct_tuple key = *tuple;
	struct ct_entry *entry;

	*report = true;
	*rev_nat_index = 0;
	*to_proxy = false;
	*proxy_port = 0;
	key.flags = dir;
	key._pad = 0;
	entry = bpf_map_lookup_elem(map, &key);
	if (entry && ct_reopens(entry, &key, tcp_flags))
		return CT_NEW;
	if (entry) {
		*report = ct_update(entry, &key, false, tcp_flags, len, mon);
		*rev_nat_index = entry->rev_nat_index;
		/* Only the originator's packets: its peer never sends on this tuple (the proxy does). */
		*to_proxy = entry->flags & CT_F_PROXY_REDIRECT;
		*proxy_port = entry->proxy_port;
		return CT_ESTABLISHED;
	}

	ct_tuple_reverse(&key);
	/* Opened in the other direction at this endpoint's hooks (e.g. from the stack into it). */
	key.flags = !dir;
	entry = bpf_map_lookup_elem(map, &key);
	if (!entry) {
		/* Opened by another local endpoint at the same kind of hook (pod to pod on this node). */
		key.flags = dir;
		entry = bpf_map_lookup_elem(map, &key);
	}
	if (entry && ct_reopens(entry, &key, tcp_flags))
		return CT_NEW;
	if (entry) {
		*report = ct_update(entry, &key, true, tcp_flags, len, mon);
		*rev_nat_index = entry->rev_nat_index;
		return CT_REPLY;
	}
	return CT_NEW;
}

/* Creates the entry for a new connection (`rev_nat_index`: the service it was translated from,
 * 0 for none), in place of a closed connection's entry on the same tuple (ct_reopens), whose
 * flags (the proxy redirect among them), service and counters are not carried over. Returns 0, or
 * the negative errno of the map update (the caller drops with DROP_CT_MAP_INSERTION_FAILED). */
static __always_inline int ct_create4(void *map, const struct ipv4_ct_tuple *tuple, __u8 dir, __u8 tcp_flags,
				      __u32 len, __u32 src_sec_id, __u16 rev_nat_index)
{
	struct ipv4_ct_tuple key = *tuple;
	struct ct_entry entry = {
		.packets = 1,
		.bytes = len,
		.tx_flags_seen = tcp_flags,
		.src_sec_id = src_sec_id,
		.rev_nat_index = rev_nat_index,
	};
	__u32 now = ct_now();
	long err;

	key.flags = dir;
	key._pad = 0;
	if (tuple->nexthdr == IPPROTO_TCP) {
		if (!(tcp_flags & TCP_FLAG_SYN))
			entry.flags |= CT_F_SEEN_NON_SYN;
		if (tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST))
			entry.flags |= CT_F_TX_CLOSING;
	}
	entry.lifetime = now + ct_lifetime(&key, entry.flags);
	/* The opening packet is reported (CT_NEW); its direction's interval starts now. */
	entry.last_tx_report = now;
	if (ct_opening(tuple, tcp_flags)) {
		struct ipv4_ct_tuple rev = key;
		struct ct_entry *old;

		/* A closed connection opened the other way on this tuple: its entry would match the new
		 * connection's replies as its own packets (with its proxy redirect and service). */
		ct_tuple_reverse(&rev);
		old = bpf_map_lookup_elem(map, &rev);
		if (old && ct_reopens(old, &rev, tcp_flags))
			bpf_map_delete_elem(map, &rev);
		rev.flags = !dir;
		old = bpf_map_lookup_elem(map, &rev);
		if (old && ct_reopens(old, &rev, tcp_flags))
			bpf_map_delete_elem(map, &rev);
	}
	err = bpf_map_update_elem(map, &key, &entry, BPF_NOEXIST);
	if (err == -17 /* EEXIST */) {
		struct ct_entry *old = bpf_map_lookup_elem(map, &key);

		/* Else another CPU created it between our lookup and now: tracked all the same. */
		if (old && ct_reopens(old, &key, tcp_flags))
			return bpf_map_update_elem(map, &key, &entry, BPF_ANY);
		return 0;
	}
	return err;
}
