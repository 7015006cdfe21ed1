/**
 * How the agent marks the links it makes for pods, so that it removes or takes over only its own:
 * the host end of an endpoint's pair carries ENDPOINT_LINK_GROUP, the host end of a pool link
 * (made ahead of the add that takes it) POOL_LINK_GROUP. Each group is set in the very request
 * that creates the pair, and a take switches it in the request that renames the host end, so no
 * crash leaves an unmarked link or one marked as what it is not.
 * @module
 */
import { NetlinkError, type Link, type Netlink } from '../datapath/netlink/index.ts';

/** The link group of the host end of every endpoint's pair (IFLA_GROUP): "cil" in ASCII. */
export const ENDPOINT_LINK_GROUP = 0x63696c;
/** The link group of the host end of every pool link: "cip" in ASCII. */
export const POOL_LINK_GROUP = 0x636970;

/** The alias the agent gives the host end of a pod's link, for people: whose link it is. */
const ENDPOINT_LINK_ALIAS = 'ciliate endpoint ';
/** The alias of a pool link's host end. */
export const POOL_LINK_ALIAS = 'ciliate link pool';

export function endpointLinkAlias(key: string): string {
  // IFALIASZ is 256 with the terminating NUL.
  return `${ENDPOINT_LINK_ALIAS}${key}`.slice(0, 255);
}

/**
 * Whether a link is the host end of a pod link this agent made: in its link group. A name alone
 * proves nothing (anyone may create an interface called lxc…), so an unmarked link is never
 * removed or taken over.
 */
export function isEndpointLink(link: Link): boolean {
  return link.group === ENDPOINT_LINK_GROUP;
}

/** Whether a link is the host end of a pool link: no pod has it (yet), and a start removes it. */
export function isPoolLink(link: Link): boolean {
  return link.group === POOL_LINK_GROUP;
}

/**
 * Pods have no IPv6 (yet): the link gets no IPv6 at all, set before it goes up, so neither end
 * sends the autoconfiguration traffic (DAD, router solicitations, MLD) that bpf_lxc would drop as
 * UNSUPPORTED_L3_PROTOCOL on every pod start. The datapath still drops any IPv6 a pod sends or is
 * sent (a pod that is root in its namespace can turn it back on). A kernel without IPv6 has
 * nothing to turn off. The setting belongs to the device in its namespace: a move into another
 * namespace starts it afresh from that namespace's default.
 */
export function disableIpv6(nl: Netlink, ifname: string): void {
  try {
    nl.writeSysctl(['net', 'ipv6', 'conf', ifname, 'disable_ipv6'], '1');
  } catch (error) {
    if (!NetlinkError.is(error, 'ENOENT')) throw error;
  }
}

/**
 * The host end of a pod's link, before it goes up: no IPv6 (disableIpv6), and what the hairpin to
 * the node proxy needs (bpf/lib/proxy.h: a connection from the node's stack to the pod re-enters
 * the node at this device's ingress, from its client's address): no reverse-path filter (the
 * client is routed through another device; the kernel applies the larger of this and
 * conf/all, so a strict conf/all still drops, as for Cilium, which sets it to 0), and local
 * source addresses accepted (the node's own connections, the host as client). Neither opens
 * anything to the pod: cil_from_container drops whatever it sends from an address not its own.
 */
export function prepareHostLink(nl: Netlink, ifname: string): void {
  disableIpv6(nl, ifname);
  nl.writeSysctl(['net', 'ipv4', 'conf', ifname, 'rp_filter'], '0');
  nl.writeSysctl(['net', 'ipv4', 'conf', ifname, 'accept_local'], '1');
}
