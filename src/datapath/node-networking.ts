/**
 * The node's own networking, set up once per agent start: forwarding on, the router device pair
 * ciliate_host/ciliate_net holding the pods' gateway address (Cilium's cilium_host/cilium_net);
 * and the node's underlay address when none is configured. All over rtnetlink from the agent's
 * process. (Masquerading is masquerade.ts's, with its own reconciler.)
 * @module
 */
import { Netlink, NetlinkError } from './netlink/index.ts';

/** Holds the node's router address, so pods reach their node at their gateway. */
export const HOST_DEVICE = 'ciliate_host';
export const HOST_PEER_DEVICE = 'ciliate_net';

export interface NodeNetworkingOptions {
  /** The pods' gateway, put on ciliate_host as a /32. */
  routerIp: string;
}

/**
 * Idempotent: adopts the device pair and address an earlier run left.
 *
 * @example
 * await setUpNodeNetworking({ routerIp: '10.244.1.1' });
 */
export async function setUpNodeNetworking(options: NodeNetworkingOptions): Promise<void> {
  using nl = Netlink.open();
  nl.writeSysctl('net.ipv4.ip_forward', '1');
  // A veth pair rather than a dummy device: this kernel may lack dummy devices.
  if (!(await nl.link(HOST_DEVICE))) {
    try {
      await nl.createVeth({ name: HOST_DEVICE, peerName: HOST_PEER_DEVICE });
    } catch (error) {
      // Another start made it in between: it is ours all the same.
      if (!NetlinkError.is(error, 'EEXIST')) throw error;
    }
  }
  await nl.replaceAddress({ address: `${options.routerIp}/32`, dev: HOST_DEVICE });
  await nl.setLink(HOST_DEVICE, { up: true });
  await nl.setLink(HOST_PEER_DEVICE, { up: true });
}

/**
 * The first global IPv4 address outside Ciliate's own devices (lxc*, ciliate_*), by interface
 * order: the underlay address by default. Empty when there is none.
 */
export async function detectNodeIp(): Promise<string> {
  using nl = Netlink.open();
  const [links, addresses] = await Promise.all([nl.links(), nl.addresses({ family: 4 })]);
  const names = new Map(links.map((link) => [link.ifindex, link.name]));
  const candidates = addresses
    .filter((a) => a.scope === 'universe')
    .filter((a) => {
      const name = names.get(a.ifindex) ?? '';
      return !name.startsWith('lxc') && !name.startsWith('ciliate_');
    })
    .sort((a, b) => a.ifindex - b.ifindex);
  return candidates[0]?.address ?? '';
}
