/**
 * What this node learns of the rest of the cluster from the shared store: the other nodes (their
 * pod CIDRs and underlay addresses) and their endpoints (IP → identity). Both become tables; the
 * ipcache and node routing follow those tables. List first, then watch from the listed revision,
 * so nothing written in between is missed.
 * @module
 */
import type { Logger } from 'pino';
import { ReservedIdentity } from '../datapath/index.ts';
import { Reconciler, Table } from '../statedb/index.ts';
import type { StateStore, WatchEvent } from '../store/index.ts';
import { followPrefix } from './follow.ts';
import { NODES_PREFIX, nodeNameOfKey, type NodeRecord } from './node.ts';
import { ENDPOINTS_PREFIX, nodeOfEndpointKey, type Endpoint, type EndpointWorkload } from './endpoint.ts';
import type { Ipcache } from './ipcache.ts';

/** Kernel routing towards other nodes (VXLAN or native routes); implemented in src/datapath. */
export interface RemoteNodeRouting {
  upsertRemoteNode(node: NodeRecord): Promise<void> | void;
  removeRemoteNode(node: NodeRecord): Promise<void> | void;
  /** Makes the kernel hold routes for exactly these nodes (drops those of nodes gone while we were down). */
  syncRemoteNodes(nodes: readonly NodeRecord[]): Promise<void> | void;
}

export interface RemoteEndpoint {
  key: string;
  node: string;
  ipv4: string;
  identity: number;
  /** Names for flows (Hubble shows a remote pod as namespace/pod too). */
  podName: string;
  namespace?: string;
  workload?: EndpointWorkload;
}

export class ClusterWatcher {
  readonly nodes = new Table<NodeRecord>('nodes', (n) => n.name, { equals: (a, b) => JSON.stringify(a) === JSON.stringify(b) });
  readonly remoteEndpoints = new Table<RemoteEndpoint>('remote-endpoints', (e) => e.key, {
    equals: (a, b) =>
      a.ipv4 === b.ipv4 && a.identity === b.identity && a.podName === b.podName && a.namespace === b.namespace && a.workload?.kind === b.workload?.kind && a.workload?.name === b.workload?.name,
  });
  readonly #store: StateStore;
  readonly #self: string;
  readonly #tunnel: boolean;
  readonly #ipcache: Ipcache;
  readonly #log: Logger;
  readonly #routing: Reconciler<NodeRecord>;
  readonly #routingOps: RemoteNodeRouting;
  readonly #abort = new AbortController();
  #loops: Promise<void>[] = [];

  constructor(options: { store: StateStore; self: string; tunnel: boolean; ipcache: Ipcache; routing: RemoteNodeRouting; log: Logger }) {
    this.#store = options.store;
    this.#self = options.self;
    this.#tunnel = options.tunnel;
    this.#ipcache = options.ipcache;
    this.#log = options.log;
    const routing = options.routing;
    this.#routingOps = routing;
    this.#routing = new Reconciler<NodeRecord>({
      name: 'node-routing',
      table: this.nodes,
      ops: {
        update: (node) => (node.name === this.#self ? undefined : routing.upsertRemoteNode(node)),
        delete: (node) => (node.name === this.#self ? undefined : routing.removeRemoteNode(node)),
      },
      onError: (key, error, attempts) => this.#log.warn({ node: key, attempts, err: error }, 'routing to node failed; will retry'),
    });
  }

  async start(): Promise<void> {
    this.#routing.start();
    // Nodes first: remote endpoints need their node's address.
    const nodes = await this.#follow<NodeRecord>(NODES_PREFIX, (event) => this.#onNode(event));
    await this.#routingOps.syncRemoteNodes([...this.nodes.all()].filter((n) => n.name !== this.#self));
    const endpoints = await this.#follow<Endpoint>(ENDPOINTS_PREFIX, (event) => this.#onEndpoint(event));
    this.#loops = [nodes.loop, endpoints.loop];
    await Promise.all([this.#routing.waitFor(), this.#ipcache.synced()]);
  }

  async stop(): Promise<void> {
    this.#abort.abort();
    await Promise.allSettled(this.#loops);
    await this.#routing.stop();
  }

  /** Lists `prefix`, applies it, then returns the loop that applies every later change. */
  #follow<T>(prefix: string, apply: (event: WatchEvent<T>) => void): Promise<{ loop: Promise<void> }> {
    return followPrefix<T>(this.#store, prefix, {
      apply,
      signal: this.#abort.signal,
      onEnd: (error, compacted) => this.#log.error({ err: error, prefix, compacted }, 'watch ended; cluster view is stale'),
    });
  }

  #onNode(event: WatchEvent<NodeRecord>): void {
    const name = nodeNameOfKey(event.key);
    const previous = this.nodes.get(name);
    if (event.type === 'delete') {
      if (previous) this.#forgetNode(previous);
      this.nodes.delete(name);
      return;
    }
    const node = event.value;
    if (previous && previous.podCidr !== node.podCidr) this.#forgetNode(previous);
    this.nodes.upsert(node);
    if (node.name === this.#self) {
      if (node.nodeIp) this.#ipcache.upsert({ prefix: `${node.nodeIp}/32`, identity: ReservedIdentity.HOST, source: 'remote-node' });
      return;
    }
    const tunnelEndpoint = this.#tunnel && node.nodeIp ? node.nodeIp : undefined;
    // Until a remote pod's own /32 arrives, its node's pod CIDR says where to send it.
    this.#ipcache.upsert({ prefix: node.podCidr, identity: ReservedIdentity.WORLD, tunnelEndpoint, source: 'remote-node' });
    if (node.nodeIp) this.#ipcache.upsert({ prefix: `${node.nodeIp}/32`, identity: ReservedIdentity.REMOTE_NODE, source: 'remote-node' });
    for (const ep of this.remoteEndpoints.all()) if (ep.node === node.name) this.#upsertRemoteEndpointIpcache(ep);
  }

  #forgetNode(node: NodeRecord): void {
    if (node.name !== this.#self) this.#ipcache.delete(node.podCidr);
    if (node.nodeIp) this.#ipcache.delete(`${node.nodeIp}/32`);
  }

  #onEndpoint(event: WatchEvent<Endpoint>): void {
    // endpoints/<node>/<container>/<ifname>
    const node = nodeOfEndpointKey(event.key);
    if (node === this.#self) return; // local endpoints are the endpoint manager's
    const previous = this.remoteEndpoints.get(event.key);
    if (event.type === 'delete') {
      if (previous) {
        this.remoteEndpoints.delete(event.key);
        this.#ipcache.delete(`${previous.ipv4}/32`);
      }
      return;
    }
    const { ipv4, identity, podName, containerId, namespace, workload } = event.value;
    const ep: RemoteEndpoint = { key: event.key, node, ipv4, identity, podName: podName ?? containerId, namespace };
    // Another node's record is taken as far as it has the shape of one, no further.
    if (typeof workload?.kind === 'string' && typeof workload.name === 'string') ep.workload = { kind: workload.kind, name: workload.name };
    if (previous && previous.ipv4 !== ep.ipv4) this.#ipcache.delete(`${previous.ipv4}/32`);
    this.remoteEndpoints.upsert(ep);
    this.#upsertRemoteEndpointIpcache(ep);
  }

  #upsertRemoteEndpointIpcache(ep: RemoteEndpoint): void {
    const node = this.nodes.get(ep.node);
    const tunnelEndpoint = this.#tunnel && node?.nodeIp ? node.nodeIp : undefined;
    this.#ipcache.upsert({ prefix: `${ep.ipv4}/32`, identity: ep.identity, tunnelEndpoint, source: 'remote-endpoint' });
  }
}
