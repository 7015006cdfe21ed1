/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Why the datapath dropped a packet. The numbers are Cilium's (bpf/lib/common.h there keeps them
 * negative as return codes; here they are stored positive, as Hubble and `cilium monitor` show
 * them), so a Hubble client reading our flows sees the reasons it already knows.
 *
 * The TS side (src/datapath/drop-reasons.ts) names each code and is tested against this enum as
 * the compiled object's BTF carries it: renumbering one side without the other fails the tests.
 */
#pragma once

enum ciliate_drop_reason {
	DROP_INVALID_SIP = 132,			/* a packet from a pod with a source address not its own */
	DROP_POLICY = 133,			/* no policy rule allows the flow */
	DROP_INVALID_PACKET = 134,		/* headers shorter than they claim, or not IPv4 where IPv4 is due */
	DROP_CT_INVALID_HDR = 135,		/* L4 header too short to read the ports conntrack needs */
	DROP_UNKNOWN_L3 = 139,			/* an L3 protocol the endpoint datapath does not police (IPv6, …) */
	DROP_UNROUTABLE = 151,			/* STALE_OR_UNROUTABLE_IP */
	DROP_CT_MAP_INSERTION_FAILED = 155,	/* conntrack table full, or the update failed */
	DROP_NO_SERVICE = 158,			/* a service frontend without a backend: the connection is refused */
	DROP_NO_TUNNEL_ENDPOINT = 160,		/* remote destination without a tunnel endpoint */
	DROP_FIB_LOOKUP_FAILED = 169,
	DROP_INVALID_IDENTITY = 171,
	DROP_PROXY_LOOKUP_FAILED = 178,		/* L7 redirect: the node proxy is not listening */
	DROP_PROXY_SET_FAILED = 179,		/* L7 redirect: the connection could not be handed to it */
	DROP_PROXY_UNSUPPORTED = 180,		/* L7 redirect where the datapath cannot redirect (not TCP, or
						 * a path without a proxy): never allowed past the proxy */
	DROP_POLICY_DENY = 181,			/* an explicit deny rule matched */
	DROP_EP_NOT_READY = 203,		/* endpoint is still being set up */
};
