/**
 * The kernel-routed baseline: the pod–node–pod topology the Ciliate agent builds (see
 * src/agent/agent.ts #setUpNodeNetworking and src/agent/endpoint-manager.ts #add), made with plain
 * `ip` commands and no BPF programs, so pod-to-pod packets are forwarded by the node's IPv4 stack.
 *
 *   node netns: ip_forward=1; a ciliate_host/ciliate_net veth pair holding the router address /32;
 *               per pod a host veth lxc<n>, up, with a /32 route to the pod's address.
 *   pod netns:  eth0 with the pod's /32, a scope-link route to the gateway (router address), the
 *               default route via it, and a permanent neighbour entry for the gateway with the host
 *               veth's MAC (the gateway answers no ARP).
 * @module
 */
import { addNetns, type Cleanups, netnsPath, sh } from './ns.ts';

export interface PlainPod {
  netns: string;
  ipv4: string;
  hostIfname: string;
}

export class RoutedNode {
  readonly netns: string;
  readonly routerIp: string;
  readonly #cleanups: Cleanups;
  readonly #prefix: string;
  #next = 2;
  #count = 0;

  private constructor(cleanups: Cleanups, netns: string, prefix: string) {
    this.#cleanups = cleanups;
    this.netns = netns;
    this.#prefix = prefix;
    this.routerIp = `${prefix}.1`;
  }

  /** A node namespace set up as the agent sets up its own; `prefix` is a /24's first three octets. */
  static async start(cleanups: Cleanups, prefix = '10.250.0', nsPrefix = 'cbr'): Promise<RoutedNode> {
    const netns = await addNetns(cleanups, nsPrefix);
    const node = new RoutedNode(cleanups, netns, prefix);
    await sh('nsenter', [`--net=${netnsPath(netns)}`, 'sysctl', '-q', '-w', 'net.ipv4.ip_forward=1']);
    await sh('ip', ['-n', netns, '-batch', '-'], {
      input: [
        'link add ciliate_host type veth peer name ciliate_net',
        `addr replace ${node.routerIp}/32 dev ciliate_host`,
        'link set dev ciliate_host up',
        'link set dev ciliate_net up',
      ].join('\n') + '\n',
    });
    return node;
  }

  /**
   * Joins an existing namespace to the node (both veth ends get `mtu`, as the agent sets its pods'
   * MTU), with the same steps as the agent's endpoint add minus
   * IPAM bookkeeping, the state store and the datapath: veth creation, the host veth's MAC, the
   * pod side (one `ip -batch`), the host side (one `ip -batch`). Returns once the pod is reachable.
   * The veth goes away with the pod namespace.
   */
  async attach(podNetns: string, mtu = 1500): Promise<PlainPod> {
    if (this.#next > 254) throw new RangeError(`routed node ${this.netns}: out of addresses`);
    const ipv4 = `${this.#prefix}.${this.#next++}`;
    const hostIfname = `lxc${(this.#count++).toString(16).padStart(4, '0')}`;
    await sh('ip', ['-n', this.netns, 'link', 'add', hostIfname, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', podNetns]);
    const [host] = JSON.parse(await sh('ip', ['-n', this.netns, '-j', 'link', 'show', 'dev', hostIfname])) as { address: string }[];
    await sh('nsenter', [`--net=${netnsPath(podNetns)}`, 'ip', '-batch', '-'], {
      input: [
        'link set dev lo up',
        `link set dev eth0 mtu ${mtu}`,
        `addr add ${ipv4}/32 dev eth0`,
        'link set dev eth0 up',
        `route add ${this.routerIp} dev eth0 scope link`,
        `route add default via ${this.routerIp} dev eth0`,
        `neigh replace ${this.routerIp} lladdr ${host.address} dev eth0 nud permanent`,
      ].join('\n') + '\n',
    });
    await sh('ip', ['-n', this.netns, '-batch', '-'], {
      input: [`link set dev ${hostIfname} mtu ${mtu}`, `link set dev ${hostIfname} up`, `route replace ${ipv4}/32 dev ${hostIfname} scope link`].join('\n') + '\n',
    });
    return { netns: podNetns, ipv4, hostIfname };
  }

  /** A pod: a new namespace attached to the node; both go away at cleanup. */
  async addPod(prefix = 'cbq', mtu = 1500): Promise<PlainPod> {
    const netns = await addNetns(this.#cleanups, prefix);
    return this.attach(netns, mtu);
  }
}
