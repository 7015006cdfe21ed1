/**
 * Pod traffic between nodes. Each node owns a pod CIDR and has an underlay address; this module
 * makes the other nodes' pods reachable in one of two modes, as Cilium's routing modes:
 *
 * - `tunnel` (Cilium's default): one VXLAN device per node in external (collect_md) mode,
 *   `ciliate_vxlan`, dstport 8472. bpf_lxc encapsulates a pod's packet for another node's pod
 *   itself (bpf_skb_set_tunnel_key + bpf_redirect to the device), with the outer destination
 *   from the ipcache entry's tunnel endpoint and the sender's identity in the VNI; bpf_overlay's
 *   cil_from_overlay, at TCX ingress of the device, delivers what arrives to local pods with
 *   bpf_redirect_peer. The ipcache maps each remote pod CIDR to its node (HAS_TUNNEL_EP), and
 *   the node's own traffic to remote pods (health checks, probes) takes a kernel route through
 *   the device with lightweight-tunnel metadata (`encap ip id 6 dst <node>`), save the node
 *   proxy's connections, whose VNI cil_to_overlay (TCX egress) sets to their client's identity.
 * - `native`: no tunnel. The kernel routes each remote pod CIDR via that node's underlay
 *   address. bpf_lxc forwards pods' packets for the native routing CIDR itself after a FIB
 *   lookup (bpf_redirect, or bpf_redirect_neigh while the next hop is unresolved), or, without
 *   that CIDR, hands them to the stack. The ipcache still maps the CIDRs (and remote pods' /32s)
 *   to identities, without HAS_TUNNEL_EP.
 *
 * Everything is idempotent and writes only differences, and all of it survives the agent: the
 * device, the programs' TCX links (pinned at `<bpfRoot>/overlay/from-overlay` and `to-overlay`), the shared maps
 * (`<bpfRoot>/maps`) and the routes (tagged with their own routing protocol number, so a
 * restarted agent finds its routes among the others). A restarted agent calls setUp (adopts what
 * is there) and then syncRemoteNodes/syncRemoteEndpoints with the full lists, which removes what
 * belongs to nodes and endpoints that went away meanwhile.
 *
 * The kernel routes and the tunnel (device, its program's link, the node config entry) are two
 * tables, each with a reconciler: on every refresh it compares the kernel with the table and
 * repairs what drifted (a route deleted by hand, a device taken down) and deletes routes of our
 * protocol that no node wants. Every `ip` call sits in a small function named for what it does
 * (apply/delete/read routes, ensure/read/remove the tunnel device), to be swapped for netlink.
 *
 * Ownership in the ipcache: entries written here carry the owning node's underlay address as
 * tunnel_endpoint in both modes (only tunnel mode sets HAS_TUNNEL_EP, which is what makes
 * bpf_lxc encapsulate); local endpoints' entries (EndpointDatapath) have 0.0.0.0 there.
 * @module
 */
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { attachTcx, BpfMap, inNetns, unpinLink } from '../ebpf/index.ts';
import { Reconciler, Table, type ReconcilerHealth } from '../statedb/index.ts';
import { loadLxc } from './lxc.ts';
import {
  endpointInfo,
  endpointKey,
  ipcacheKey,
  IpcacheFlag,
  MapName,
  nodeConfig,
  nodeConfigKey,
  RoutingModeCode,
  remoteEndpointInfo,
  ReservedIdentity,
  SHARED_MAPS,
  type EndpointInfo,
  type NodeConfig,
  type RemoteEndpointInfo,
} from './maps.ts';
import { Netlink, type Link } from './netlink/index.ts';
import { NetParseError, parseIpv4, Prefix } from '../net/index.ts';
import { codedErrorFamily } from '../errors/index.ts';
import { loadOverlay, OverlayProgram } from './overlay.ts';
import { linkServesInterface } from './pins.ts';

export type RoutingMode = 'tunnel' | 'native';

/**
 * A node's underlay address is `underlayIp`, or `nodeIp` as the agent's NodeRecord names it:
 * either may be given, so the agent can pass its records as they are.
 */
interface Underlay {
  underlayIp?: string;
  nodeIp?: string;
}

/** The node this agent runs on. */
export interface LocalNode extends Underlay {
  name: string;
  podCidr: string;
  routingMode: RoutingMode;
  /**
   * The node's router address (on ciliate_host). In tunnel mode the node's own traffic to
   * remote pods leaves with it as source, so the replies come back through the tunnel.
   */
  routerIp?: string;
  /**
   * Native mode: the CIDR of every pod address in the cluster (the agent's clusterCidr;
   * Cilium's ipv4-native-routing-cidr). Pods' packets to it are forwarded by bpf_lxc after a FIB
   * lookup (bpf_redirect / bpf_redirect_neigh), past the node's netfilter and forward path;
   * without it they take the stack. Must not cover anything that needs masquerading.
   */
  nativeRoutingCidr?: string;
}

/** Another node of the cluster. */
export interface RemoteNode extends Underlay {
  name: string;
  podCidr: string;
  /** Identity of the pod CIDR as a whole (pods without their own /32 entry); default world. */
  identity?: number;
}

/** A pod of another node. */
export interface RemoteEndpoint {
  ip: string;
  identity: number;
  /** Underlay address of the node it runs on. */
  nodeUnderlayIp: string;
}

export interface NodeRoutingOptions {
  /** The agent's bpffs directory: maps under `maps/`, the overlay link under `overlay/`. */
  bpfRoot: string;
  log: Logger;
  /** Network namespace file to work in (tests simulating nodes); default the agent's own. */
  netns?: string;
  /** VXLAN device name; default `ciliate_vxlan`. */
  tunnelDevice?: string;
  /** VXLAN UDP port; default 8472 (Cilium's, the Linux kernel's historical default). */
  tunnelPort?: number;
  /** Routing protocol number the kernel routes are tagged with; default 211. */
  routeProtocol?: number;
  /**
   * Whether this module writes the remote entries of the ipcache (default true). The agent,
   * whose own ipcache reconciler owns that map, passes false: then only the device, program,
   * node config and kernel routes are this module's, and the RemoteEndpoint calls are refused.
   */
  manageIpcache?: boolean;
  /** How often routes and tunnel are compared with the kernel and repaired; 0 or absent: never. */
  refreshIntervalMs?: number;
}

export const TUNNEL_DEVICE = 'ciliate_vxlan';
export const TUNNEL_PORT = 8472;
/** Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14). */
export const VXLAN_OVERHEAD = 50;
export const ROUTE_PROTOCOL = 211;
/** The overlay programs' TCX links, pinned under `<bpfRoot>/overlay` by these names. */
const OVERLAY_LINKS = [
  { pin: 'from-overlay', program: OverlayProgram.FROM_OVERLAY, direction: 'ingress' },
  { pin: 'to-overlay', program: OverlayProgram.TO_OVERLAY, direction: 'egress' },
] as const;
const DEFAULT_MTU = 1500;

export class NodeRoutingError extends codedErrorFamily<'ERR_NODE_ROUTING'>('node-routing') {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_NODE_ROUTING', message, options);
  }
}

/** The nodes as kept here, their underlay address resolved. */
interface Local {
  name: string;
  underlayIp: string;
  podCidr: string;
  routingMode: RoutingMode;
  routerIp?: string;
  nativeRoutingCidr?: string;
}
interface Remote {
  name: string;
  underlayIp: string;
  podCidr: string;
  identity?: number;
}

function underlayOf(node: Underlay & { name: string }, what: string): string {
  const address = node.underlayIp || node.nodeIp;
  if (!address) throw new NodeRoutingError(`node routing: ${what} ${node.name} has no underlay address (underlayIp or nodeIp)`);
  assertIpv4(address, `${what} ${node.name} underlay address`);
  return address;
}

function remoteOf(node: RemoteNode): Remote {
  const remote: Remote = { name: node.name, underlayIp: underlayOf(node, 'node'), podCidr: canonicalCidr(node.podCidr), identity: node.identity };
  return remote;
}

/** A kernel route this module owns, reduced to what it compares. */
interface RouteSpec {
  prefix: string;
  via?: string;
  dev?: string;
  encapId?: number;
  encapDst?: string;
  src?: string;
  mtu?: number;
}

/** What the tunnel reconciler makes the kernel hold: the device (tunnel mode) and the node config. */
interface TunnelSpec {
  routingMode: RoutingMode;
  /** The device's MTU in tunnel mode. */
  mtu: number;
  nativeCidr: string;
  nativePrefixlen: number;
}

/** The tunnel as the kernel has it. */
interface TunnelState {
  device: Link | undefined;
  /** Whether the pinned overlay link serves the device. */
  programAttached: boolean;
  config: NodeConfig | undefined;
}

/** The one key of the tunnel table. */
const TUNNEL_KEY = 'tunnel';

/**
 * The node routing of one node.
 *
 * @example
 * const routing = new NodeRouting({ bpfRoot: '/sys/fs/bpf/ciliate', log });
 * await routing.setUp({ name: 'n1', underlayIp: '192.168.100.1', podCidr: '10.244.1.0/24', routingMode: 'tunnel', routerIp: '10.244.1.1' });
 * await routing.syncRemoteNodes([{ name: 'n2', underlayIp: '192.168.100.2', podCidr: '10.244.2.0/24' }]);
 * routing.upsertRemoteEndpoint({ ip: '10.244.2.7', identity: 12345, nodeUnderlayIp: '192.168.100.2' });
 */
export class NodeRouting {
  readonly bpfRoot: string;
  readonly mapsDir: string;
  readonly tunnelDevice: string;
  readonly tunnelPort: number;
  readonly routeProtocol: number;
  readonly manageIpcache: boolean;
  readonly #netns: string | undefined;
  readonly #log: Logger;
  readonly #ipcache: BpfMap<{ prefixlen: number; ip: string }, RemoteEndpointInfo>;
  readonly #nodeCfg: BpfMap<number, NodeConfig>;
  readonly #lxc: BpfMap<{ ip: string }, EndpointInfo>;
  #local: Local | undefined;
  #tunnelIfindex = 0;
  #underlayMtu = DEFAULT_MTU;
  /** Remote nodes by name, as last upserted. */
  readonly #nodes = new Map<string, Remote>();
  /** The kernel routes this module wants, by prefix. */
  readonly #routeTable = new Table<RouteSpec>('routes', (route) => route.prefix, { equals: sameRoute });
  readonly #routeReconciler: Reconciler<RouteSpec, RouteSpec>;
  readonly #tunnelTable = new Table<TunnelSpec>('tunnel', () => TUNNEL_KEY, { equals: (a, b) => JSON.stringify(a) === JSON.stringify(b) });
  readonly #tunnelReconciler: Reconciler<TunnelSpec, TunnelState>;
  #netlink: Netlink | undefined;
  /** Serializes the async operations: each reads and writes the route cache. */
  #queue: Promise<unknown> = Promise.resolve();

  /** Opens (creating on first run) the node's shared maps under `bpfRoot`/maps. */
  constructor(options: NodeRoutingOptions) {
    this.bpfRoot = options.bpfRoot;
    this.mapsDir = join(options.bpfRoot, 'maps');
    this.tunnelDevice = options.tunnelDevice ?? TUNNEL_DEVICE;
    this.tunnelPort = options.tunnelPort ?? TUNNEL_PORT;
    this.routeProtocol = options.routeProtocol ?? ROUTE_PROTOCOL;
    this.manageIpcache = options.manageIpcache ?? true;
    this.#netns = options.netns;
    this.#log = options.log;
    mkdirSync(this.mapsDir, { recursive: true });
    if (SHARED_MAPS.some((name) => !existsSync(join(this.mapsDir, name)))) {
      // Loading once with pins creates the missing shared maps and reuses the existing ones.
      loadLxc({ pinDir: this.mapsDir }).close();
    }
    this.#ipcache = BpfMap.openPinned(join(this.mapsDir, MapName.IPCACHE), ipcacheKey, remoteEndpointInfo);
    this.#nodeCfg = BpfMap.openPinned(join(this.mapsDir, MapName.NODE_CFG), nodeConfigKey, nodeConfig);
    this.#lxc = BpfMap.openPinned(join(this.mapsDir, MapName.LXC), endpointKey, endpointInfo);
    const log = this.#log;
    this.#routeReconciler = new Reconciler<RouteSpec, RouteSpec>({
      name: 'routes',
      table: this.#routeTable,
      refreshIntervalMs: options.refreshIntervalMs,
      // The remote nodes come after setUp (syncRemoteNodes prunes then, on purpose).
      refreshOnStart: false,
      ops: {
        update: (route) => this.#applyRoute(route),
        delete: (route) => this.#deleteRoute(route.prefix),
        list: async () => [...(await this.#readRoutes())],
        equal: sameRoute,
        prune: (prefix) => this.#deleteRoute(prefix),
      },
      onError: (key, error, attempts) => log.warn({ route: key, attempts, err: error }, 'writing route failed; will retry'),
      onRefresh: (kind, route) => log.info({ route, kind }, kind === 'repair' ? 'route drifted or vanished; rewritten' : 'route of ours nobody wants; deleted'),
    });
    this.#tunnelReconciler = new Reconciler<TunnelSpec, TunnelState>({
      name: 'tunnel',
      table: this.#tunnelTable,
      refreshIntervalMs: options.refreshIntervalMs,
      ops: {
        update: (spec) => this.#applyTunnel(spec),
        // tearDown() removes the tunnel itself.
        delete: () => undefined,
        list: async () => [[TUNNEL_KEY, await this.#readTunnel()]],
        equal: (spec, actual) => this.#tunnelIsCurrent(spec, actual),
      },
      onError: (_key, error, attempts) => log.warn({ attempts, err: error }, 'setting up the tunnel failed; will retry'),
      onRefresh: () => log.info({ device: this.tunnelDevice }, 'tunnel device, program or node config drifted; repaired'),
    });
  }

  /** The routes' and the tunnel's reconcilers' health. */
  health(): ReconcilerHealth[] {
    return [this.#tunnelReconciler.health(), this.#routeReconciler.health()];
  }

  /** The local node as last set up. */
  get local(): Readonly<Local> | undefined {
    return this.#local;
  }

  /** The VXLAN device's ifindex in tunnel mode, else 0. */
  get tunnelIfindex(): number {
    return this.#tunnelIfindex;
  }

  /**
   * The MTU pods should use: the underlay's, less the VXLAN overhead in tunnel mode. Pods with a
   * larger MTU still work, at the cost of fragmenting the outer packets.
   */
  podMtu(): number {
    return this.#local?.routingMode === 'tunnel' ? this.#underlayMtu - VXLAN_OVERHEAD : this.#underlayMtu;
  }

  #serialize<T>(work: () => Promise<T>): Promise<T> {
    const next = this.#queue.catch(() => undefined).then(work);
    this.#queue = next.catch(() => undefined);
    return next;
  }

  /** The rtnetlink socket of the node's namespace, opened on first use. */
  #nl(): Netlink {
    this.#netlink ??= Netlink.open({ netns: this.#netns });
    return this.#netlink;
  }

  /**
   * Configures this node's side: in tunnel mode the VXLAN device (created, or adopted when it
   * already exists with the right settings), its program and the node config map; in native
   * mode removes any tunnel device. Switching modes rewrites the remote entries already known.
   * Idempotent.
   */
  setUp(node: LocalNode): Promise<void> {
    return this.#serialize(async () => {
      const local: Local = {
        name: node.name,
        underlayIp: underlayOf(node, 'local node'),
        podCidr: canonicalCidr(node.podCidr),
        routingMode: node.routingMode,
        routerIp: node.routerIp || undefined,
        nativeRoutingCidr: node.nativeRoutingCidr ? canonicalCidr(node.nativeRoutingCidr) : undefined,
      };
      if (local.routerIp !== undefined) assertIpv4(local.routerIp, 'local routerIp');
      if (local.routingMode !== 'tunnel' && local.routingMode !== 'native') {
        throw new NodeRoutingError(`node routing: unknown routing mode ${String(local.routingMode)}`);
      }
      this.#underlayMtu = await this.#underlayMtuOf(local.underlayIp);
      const [nativeCidr, nativePrefixlen] =
        local.routingMode === 'native' && local.nativeRoutingCidr ? parseCidr(local.nativeRoutingCidr, 'nativeRoutingCidr') : ['0.0.0.0', 0];
      this.#startReconcilers();
      const revision = this.#tunnelTable.upsert({ routingMode: local.routingMode, mtu: this.#underlayMtu - VXLAN_OVERHEAD, nativeCidr, nativePrefixlen });
      await this.#attempted(this.#tunnelReconciler, revision, TUNNEL_KEY, `setting up ${local.routingMode} mode`);
      this.#local = local;
      if (this.manageIpcache) {
        // A mode switch flips HAS_TUNNEL_EP on every remote entry, ours by their tunnel endpoint.
        const flags = this.#remoteFlags();
        for (const [key, value] of [...this.#ipcache.entries()]) {
          if (value.tunnel_endpoint !== '0.0.0.0' && value.flags !== flags) this.#ipcache.update(key, { ...value, flags });
        }
      }
      for (const node of this.#nodes.values()) await this.#applyNode(node);
      this.#log.info({ mode: local.routingMode, tunnelIfindex: this.#tunnelIfindex, podMtu: this.podMtu() }, 'node routing set up');
    });
  }

  /**
   * Makes another node's pods reachable: the ipcache entry of its pod CIDR (with the node as
   * tunnel endpoint in tunnel mode) and its kernel route. The local node itself is ignored, so
   * the agent can pass every node of the cluster. Idempotent; a node whose CIDR or address
   * changed has its old entries replaced.
   */
  upsertRemoteNode(remote: RemoteNode): Promise<void> {
    return this.#serialize(async () => {
      const local = this.#requireLocal();
      const node = remoteOf(remote);
      if (node.name === local.name || node.underlayIp === local.underlayIp) return;
      const previous = this.#nodes.get(node.name);
      if (previous && (previous.podCidr !== node.podCidr || previous.underlayIp !== node.underlayIp)) {
        await this.#withdrawNode(previous, previous.underlayIp !== node.underlayIp);
      }
      this.#nodes.set(node.name, node);
      await this.#applyNode(node);
    });
  }

  /** Withdraws another node: its pod CIDR's entry and route, and its pods' /32 entries. Idempotent. */
  removeRemoteNode(node: RemoteNode | string): Promise<void> {
    return this.#serialize(async () => {
      const known = this.#nodes.get(typeof node === 'string' ? node : node.name) ?? (typeof node === 'string' ? undefined : remoteOf(node));
      if (!known) return;
      this.#nodes.delete(known.name);
      await this.#withdrawNode(known, true);
    });
  }

  /**
   * Makes the remote node set exactly `nodes`: upserts each and withdraws every node this module
   * owns entries or routes for that is not listed. For the start of an agent, which may have
   * missed departures while it was down.
   */
  syncRemoteNodes(nodes: readonly RemoteNode[]): Promise<void> {
    return this.#serialize(async () => {
      const local = this.#requireLocal();
      const wanted = nodes.map(remoteOf).filter((n) => n.name !== local.name && n.underlayIp !== local.underlayIp);
      const names = new Set(wanted.map((n) => n.name));
      for (const [name, node] of this.#nodes) {
        if (!names.has(name)) {
          this.#nodes.delete(name);
          await this.#withdrawNode(node, true);
        }
      }
      for (const node of wanted) {
        const previous = this.#nodes.get(node.name);
        if (previous && (previous.podCidr !== node.podCidr || previous.underlayIp !== node.underlayIp)) {
          await this.#withdrawNode(previous, previous.underlayIp !== node.underlayIp);
        }
        this.#nodes.set(node.name, node);
        await this.#applyNode(node);
      }
      // What an earlier run left for nodes not listed: CIDR entries and routes (the refresh
      // prunes routes of our protocol that no node wants).
      const prefixes = new Set(wanted.map((n) => n.podCidr));
      const addresses = new Set(wanted.map((n) => n.underlayIp));
      if (this.manageIpcache) {
        for (const [key, value] of [...this.#ipcache.entries()]) {
          if (value.tunnel_endpoint === '0.0.0.0') continue;
          if (key.prefixlen < 32 ? !prefixes.has(`${key.ip}/${key.prefixlen}`) : !addresses.has(value.tunnel_endpoint)) {
            this.#ipcache.delete(key);
          }
        }
      }
      for (const [prefix] of [...this.#routeTable.entries()]) if (!prefixes.has(prefix)) this.#routeTable.delete(prefix);
      await this.#routeReconciler.refresh();
    });
  }

  /** The ipcache /32 entry of a pod on another node. Pods of this node are ignored. Idempotent. */
  upsertRemoteEndpoint(endpoint: RemoteEndpoint): void {
    const local = this.#requireLocal();
    this.#requireIpcache();
    assertIpv4(endpoint.ip, 'remote endpoint ip');
    assertIpv4(endpoint.nodeUnderlayIp, `remote endpoint ${endpoint.ip} nodeUnderlayIp`);
    if (endpoint.nodeUnderlayIp === local.underlayIp) return;
    const key = { prefixlen: 32, ip: endpoint.ip };
    // A local endpoint's entry is EndpointDatapath's; a pod moving here is that module's business.
    if (this.#lxc.lookup({ ip: endpoint.ip })) return;
    this.#writeIpcache(key, { sec_identity: endpoint.identity, tunnel_endpoint: endpoint.nodeUnderlayIp, flags: this.#remoteFlags() });
  }

  /** Removes a remote pod's /32 entry (only one this module wrote). Idempotent. */
  removeRemoteEndpoint(address: string): void {
    this.#requireIpcache();
    assertIpv4(address, 'remote endpoint ip');
    const key = { prefixlen: 32, ip: address };
    const current = this.#ipcache.lookup(key);
    if (current && current.tunnel_endpoint !== '0.0.0.0') this.#ipcache.delete(key);
  }

  /** Makes the remote endpoint set exactly `endpoints`, removing the /32 entries of others. */
  syncRemoteEndpoints(endpoints: readonly RemoteEndpoint[]): void {
    const local = this.#requireLocal();
    this.#requireIpcache();
    const wanted = new Set<string>();
    for (const endpoint of endpoints) {
      if (endpoint.nodeUnderlayIp === local.underlayIp) continue;
      this.upsertRemoteEndpoint(endpoint);
      wanted.add(endpoint.ip);
    }
    for (const [key, value] of [...this.#ipcache.entries()]) {
      if (key.prefixlen === 32 && value.tunnel_endpoint !== '0.0.0.0' && !wanted.has(key.ip)) this.#ipcache.delete(key);
    }
  }

  /**
   * Removes everything this module created: remote entries and routes, the VXLAN device and its
   * pinned link; resets the node config. For uninstalling and for tests; an agent that merely
   * stops leaves it all in place.
   */
  tearDown(): Promise<void> {
    return this.#serialize(async () => {
      // Stopped first, so no refresh puts back what is removed here; setUp starts them again.
      await this.#stopReconcilers();
      for (const [prefix] of [...this.#routeTable.entries()]) this.#routeTable.delete(prefix);
      this.#tunnelTable.delete(TUNNEL_KEY);
      if (this.manageIpcache) {
        for (const [key, value] of [...this.#ipcache.entries()]) if (value.tunnel_endpoint !== '0.0.0.0') this.#ipcache.delete(key);
      }
      for (const prefix of (await this.#readRoutes()).keys()) await this.#deleteRoute(prefix);
      await this.#removeTunnelDevice();
      this.#writeNodeConfig({ tunnel_ifindex: 0, routing_mode: RoutingModeCode.UNSET, native_cidr: '0.0.0.0', native_cidr_prefixlen: 0 });
      this.#nodes.clear();
      this.#local = undefined;
      this.#tunnelIfindex = 0;
    });
  }

  /** Stops the reconcilers and closes the maps; what is in the kernel stays. */
  async close(): Promise<void> {
    await this.#stopReconcilers();
    this.#netlink?.close();
    this.#netlink = undefined;
    this.#ipcache.close();
    this.#nodeCfg.close();
    this.#lxc.close();
  }

  #startReconcilers(): void {
    this.#tunnelReconciler.start();
    this.#routeReconciler.start();
  }

  async #stopReconcilers(): Promise<void> {
    await Promise.all([this.#tunnelReconciler.stop(), this.#routeReconciler.stop()]);
  }

  /**
   * Waits for the reconciler's first attempt at a change and throws its error, so the caller
   * hears of a failure; the reconciler goes on retrying.
   */
  async #attempted<T, A>(reconciler: Reconciler<T, A>, revision: number, key: string, what: string): Promise<void> {
    await reconciler.attempted(revision);
    const status = reconciler.status(key);
    if (status?.state === 'error') throw new NodeRoutingError(`node routing: ${what}: ${status.error} (retrying)`);
  }

  /** Tunnel mode: the device, its program and the node config; native mode: no device. */
  async #applyTunnel(spec: TunnelSpec): Promise<void> {
    let ifindex = 0;
    if (spec.routingMode === 'tunnel') {
      ifindex = await this.#ensureTunnelDevice(spec.mtu);
      this.#ensureOverlayProgram(ifindex);
    } else {
      await this.#removeTunnelDevice();
    }
    this.#writeNodeConfig(nodeConfigOf(spec, ifindex));
    const recreated = this.#tunnelIfindex !== 0 && ifindex !== this.#tunnelIfindex;
    this.#tunnelIfindex = ifindex;
    // Routes through a device that was deleted went with it: put them back now, not at the next refresh.
    if (recreated) void this.#routeReconciler.refresh();
  }

  async #readTunnel(): Promise<TunnelState> {
    const device = await this.#tunnelLink();
    return {
      device,
      programAttached: device !== undefined && OVERLAY_LINKS.every((l) => linkServesInterface(join(this.bpfRoot, 'overlay', l.pin), device.ifindex)),
      config: this.#nodeCfg.lookup(0),
    };
  }

  #tunnelIsCurrent(spec: TunnelSpec, actual: TunnelState): boolean {
    if (spec.routingMode === 'tunnel') {
      const device = actual.device;
      if (!device || !actual.programAttached) return false;
      const fix = tunnelDeviceFixes(device, spec.mtu, this.tunnelPort);
      if (fix.recreate || Object.keys(fix.changes).length > 0) return false;
    } else if (actual.device) {
      return false;
    }
    return JSON.stringify(actual.config) === JSON.stringify(nodeConfigOf(spec, actual.device?.ifindex ?? 0));
  }

  #requireLocal(): Local {
    if (!this.#local) throw new NodeRoutingError('node routing: setUp() the local node first');
    return this.#local;
  }

  #requireIpcache(): void {
    if (!this.manageIpcache) throw new NodeRoutingError('node routing: remote endpoints are the ipcache owner\'s (manageIpcache is false)');
  }

  #remoteFlags(): number {
    return this.#local?.routingMode === 'tunnel' ? IpcacheFlag.HAS_TUNNEL_EP : 0;
  }

  #writeIpcache(key: { prefixlen: number; ip: string }, value: RemoteEndpointInfo): void {
    const current = this.#ipcache.lookup(key);
    if (
      current &&
      current.sec_identity === value.sec_identity &&
      current.tunnel_endpoint === value.tunnel_endpoint &&
      current.flags === value.flags
    ) {
      return;
    }
    this.#ipcache.update(key, value);
  }

  #writeNodeConfig(config: NodeConfig): void {
    const current = this.#nodeCfg.lookup(0);
    if (!current || JSON.stringify(current) !== JSON.stringify(config)) this.#nodeCfg.update(0, config);
  }

  async #applyNode(node: Remote): Promise<void> {
    const local = this.#requireLocal();
    const [network, prefixlen] = parseCidr(node.podCidr, `node ${node.name} podCidr`);
    if (this.manageIpcache) {
      this.#writeIpcache(
        { prefixlen, ip: network },
        { sec_identity: node.identity ?? ReservedIdentity.WORLD, tunnel_endpoint: node.underlayIp, flags: this.#remoteFlags() },
      );
    }
    const prefix = `${network}/${prefixlen}`;
    const route: RouteSpec =
      local.routingMode === 'tunnel'
        ? {
            prefix,
            dev: this.tunnelDevice,
            encapId: ReservedIdentity.REMOTE_NODE,
            encapDst: node.underlayIp,
            src: local.routerIp,
            mtu: this.podMtu(),
          }
        : { prefix, via: node.underlayIp };
    const revision = this.#routeTable.upsert(route);
    await this.#attempted(this.#routeReconciler, revision, prefix, `route to node ${node.name}`);
    this.#log.debug({ node: node.name, route: prefix, via: route.via ?? route.encapDst }, 'remote node routed');
  }

  /** Writes one route (replacing what the kernel has for its prefix). */
  async #applyRoute(route: RouteSpec): Promise<void> {
    await this.#nl().replaceRoute({
      dst: route.prefix,
      gateway: route.via,
      encap: route.encapDst ? { id: route.encapId ?? 0, dst: route.encapDst, ttl: 64 } : undefined,
      dev: route.dev,
      prefsrc: route.src,
      mtu: route.mtu || undefined,
      protocol: this.routeProtocol,
    });
  }

  /** Removes a node's CIDR entry and route, and with `endpoints` its pods' /32 entries too. */
  async #withdrawNode(node: Remote, endpoints: boolean): Promise<void> {
    const [network, prefixlen] = parseCidr(node.podCidr, `node ${node.name} podCidr`);
    const key = { prefixlen, ip: network };
    if (this.manageIpcache && this.#ipcache.lookup(key)?.tunnel_endpoint === node.underlayIp) this.#ipcache.delete(key);
    if (this.manageIpcache && endpoints) {
      for (const [k, value] of [...this.#ipcache.entries()]) {
        if (k.prefixlen === 32 && value.tunnel_endpoint === node.underlayIp) this.#ipcache.delete(k);
      }
    }
    const prefix = `${network}/${prefixlen}`;
    if (this.#routeTable.delete(prefix)) await this.#attempted(this.#routeReconciler, this.#routeTable.revision, prefix, `withdrawing the route to node ${node.name}`);
    this.#log.debug({ node: node.name }, 'remote node withdrawn');
  }

  /** Deletes one route of ours; a route already gone is fine. */
  async #deleteRoute(prefix: string): Promise<void> {
    await this.#nl().deleteRoute({ dst: prefix, protocol: this.routeProtocol });
  }

  /** Our routes in the main table (those tagged with our protocol). */
  async #readRoutes(): Promise<Map<string, RouteSpec>> {
    const routes = new Map<string, RouteSpec>();
    for (const route of await this.#nl().routes({ protocol: this.routeProtocol })) {
      // Gateway routes go through the device the kernel picked; only tunnel routes name ours.
      const dev = route.encap && route.oif !== undefined ? (await this.#nl().link(route.oif))?.name : undefined;
      routes.set(route.dst, {
        prefix: route.dst,
        via: route.gateway,
        dev,
        encapId: route.encap ? Number(route.encap.id) : undefined,
        encapDst: route.encap?.dst,
        src: route.prefsrc,
        mtu: route.mtu,
      });
    }
    return routes;
  }

  async #underlayMtuOf(address: string): Promise<number> {
    const held = (await this.#nl().addresses({ family: 4 })).find((a) => a.address === address);
    const link = held && (await this.#nl().link(held.ifindex));
    if (!link) throw new NodeRoutingError(`node routing: underlay address ${address} is on no interface of this node`);
    return link.mtu;
  }

  /** Creates or adopts the VXLAN device; returns its ifindex. */
  async #ensureTunnelDevice(mtu: number): Promise<number> {
    let link = await this.#tunnelLink();
    if (link && tunnelDeviceFixes(link, mtu, this.tunnelPort).recreate) {
      this.#log.warn({ device: this.tunnelDevice }, 'tunnel device has other settings; recreating it');
      await this.#nl().deleteLink(link.ifindex);
      link = undefined;
    }
    // Created with its MTU in the same request: never a moment with the default 1500, which the
    // encapsulation would overflow.
    link ??= await this.#nl().createVxlan({ name: this.tunnelDevice, external: true, port: this.tunnelPort, mtu });
    const { changes } = tunnelDeviceFixes(link, mtu, this.tunnelPort);
    if (Object.keys(changes).length > 0) await this.#nl().setLink(link.ifindex, changes);
    return link.ifindex;
  }

  /** Reads the tunnel device; undefined when there is none. */
  #tunnelLink(): Promise<Link | undefined> {
    return this.#nl().link(this.tunnelDevice);
  }

  /**
   * Attaches the overlay programs to the device (cil_from_overlay at ingress, cil_to_overlay at
   * egress), adopting each pinned link that already serves it.
   */
  #ensureOverlayProgram(ifindex: number): void {
    const dir = join(this.bpfRoot, 'overlay');
    mkdirSync(dir, { recursive: true });
    const missing = OVERLAY_LINKS.filter((l) => !linkServesInterface(join(dir, l.pin), ifindex));
    if (missing.length === 0) return;
    const obj = loadOverlay({ pinDir: this.mapsDir });
    try {
      for (const { pin, program, direction } of missing) {
        unpinLink(join(dir, pin));
        const attach = () => attachTcx(obj.program(program), { interface: ifindex, direction });
        const link = this.#netns ? inNetns(this.#netns, attach) : attach();
        try {
          link.pin(join(dir, pin));
        } finally {
          link.close();
        }
      }
    } finally {
      obj.close();
    }
  }

  async #removeTunnelDevice(): Promise<void> {
    const dir = join(this.bpfRoot, 'overlay');
    for (const { pin } of OVERLAY_LINKS) unpinLink(join(dir, pin));
    rmSync(dir, { recursive: true, force: true });
    await this.#nl().deleteLink(this.tunnelDevice);
  }
}

/**
 * What it takes to make `link` the tunnel device wanted: recreating it (another kind, not
 * external, another port) or changing its settings. No ARP through the tunnel: routed frames take
 * the device's own MAC as destination, and cil_from_overlay on the other side delivers by IP
 * whatever the inner MACs say.
 */
function tunnelDeviceFixes(link: Link, mtu: number, port: number): { recreate: boolean; changes: { mtu?: number; noarp?: boolean; up?: boolean } } {
  const recreate = link.kind !== 'vxlan' || link.vxlan?.external !== true || link.vxlan.port !== port;
  const changes: { mtu?: number; noarp?: boolean; up?: boolean } = {};
  if (link.mtu !== mtu) changes.mtu = mtu;
  if (!link.noarp) changes.noarp = true;
  if (!link.up) changes.up = true;
  return { recreate, changes };
}

function nodeConfigOf(spec: TunnelSpec, tunnelIfindex: number): NodeConfig {
  return {
    tunnel_ifindex: tunnelIfindex,
    routing_mode: spec.routingMode === 'tunnel' ? RoutingModeCode.TUNNEL : RoutingModeCode.NATIVE,
    native_cidr: spec.nativeCidr,
    native_cidr_prefixlen: spec.nativePrefixlen,
  };
}

function sameRoute(a: RouteSpec, b: RouteSpec): boolean {
  return (
    a.prefix === b.prefix &&
    a.via === b.via &&
    a.dev === b.dev &&
    a.encapId === b.encapId &&
    a.encapDst === b.encapDst &&
    a.src === b.src &&
    a.mtu === b.mtu
  );
}

function assertIpv4(value: string, what: string): void {
  if (parseIpv4(value) === undefined) throw new NodeRoutingError(`node routing: ${what} ${JSON.stringify(value)} is not an IPv4 address`);
}

/** The network address and prefix length of an IPv4 CIDR (host bits cleared). */
function parseCidr(cidr: string, what: string): [string, number] {
  let prefix: Prefix;
  try {
    prefix = Prefix.parse(cidr, { hostBits: 'mask', family: 4 });
  } catch (error) {
    if (!NetParseError.is(error)) throw error;
    throw new NodeRoutingError(`node routing: ${what} ${JSON.stringify(cidr)} is not an IPv4 CIDR`, { cause: error });
  }
  return [prefix.addr.toString(), prefix.bits];
}

function canonicalCidr(cidr: string): string {
  const [network, prefixlen] = parseCidr(cidr, 'cidr');
  return `${network}/${prefixlen}`;
}
