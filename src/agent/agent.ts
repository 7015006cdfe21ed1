/**
 * One node's agent: the state store, IPAM, node networking, the endpoint datapath and the local
 * API, started in that order and stopped in reverse. Killing the agent leaves the datapath
 * running (maps and links are pinned); starting it again adopts what it finds.
 * @module
 */
import { join } from 'node:path';
import type { Logger } from 'pino';
import { z } from 'zod';
import { detectNodeIp, EndpointDatapath, EndpointPolicyMaps, NodeRouting, ReservedIdentity, setUpNodeNetworking } from '../datapath/index.ts';
import { addressAllocator, NodeIpam } from '../ipam/index.ts';
import { EtcdStateStore, LocalStateStore, StoreError, type StateStore } from '../store/index.ts';
import { ApiError, ApiServer } from './api-server.ts';
import type { AgentConfig } from './config.ts';
import { EndpointManager } from './endpoint-manager.ts';
import { Lifecycle } from './lifecycle.ts';
import { readBpfState } from './bpf-state.ts';
import { Ipcache } from './ipcache.ts';
import { ClusterWatcher } from './cluster.ts';
import { PolicyManager } from './policy-manager.ts';
import { PolicyStatus } from './policy-status.ts';
import { deregisterNode } from './node-deregister.ts';
import { IdentityGc } from './identity-gc.ts';
import { Namespaces } from './namespaces.ts';
import { NodeAddresses } from './node-addresses.ts';
import type { Endpoint } from './endpoint.ts';
import { registerPolicyRoutes } from './policy-api.ts';
import { Monitor, type MonitorEvent } from './monitor.ts';
import { ruleKey } from '../policy/index.ts';
import { IdentityAllocator, identityName, reservedIdentities, type Identity } from '../identity/index.ts';

export const VERSION = '0.1.0';
export { HOST_DEVICE, HOST_PEER_DEVICE } from '../datapath/index.ts';

export interface NodeRecord {
  name: string;
  /** Underlay address other nodes reach this one at (tunnel endpoint, native-routing next hop). */
  nodeIp: string;
  podCidr: string;
  routerIp: string;
  routingMode: AgentConfig['routingMode'];
  agentVersion: string;
  startedAt: string;
}

/** An endpoint as the API shows it: the record plus the policy revision its map enforces. */
export type EndpointView = Endpoint & {
  /** Store revision of the policy state the endpoint's map holds (see `policy wait`). */
  policyRevision?: number;
};

const AddEndpointBody = z
  .object({
    containerId: z.string().min(1).max(256),
    ifname: z.string().min(1).max(15).regex(/^[^\s/]+$/, 'must be an interface name'),
    netns: z.string().min(1).startsWith('/', 'must be an absolute path to a network namespace'),
    labels: z.record(z.string(), z.string()).optional(),
    podName: z.string().optional(),
    namespace: z.string().optional(),
  })
  .strict();

export class Agent {
  readonly config: AgentConfig;
  readonly log: Logger;
  readonly startedAt = Date.now();
  readonly #lifecycle: Lifecycle;
  #store: StateStore | undefined;
  #ipam: NodeIpam | undefined;
  #datapath: EndpointDatapath | undefined;
  #namespaces: Namespaces | undefined;
  #nodeAddresses: NodeAddresses | undefined;
  #endpoints: EndpointManager | undefined;
  #ipcache: Ipcache | undefined;
  #node: NodeRecord | undefined;
  #routing: NodeRouting | undefined;
  #cluster: ClusterWatcher | undefined;
  #identities: IdentityAllocator | undefined;
  #policyMaps: EndpointPolicyMaps | undefined;
  #policy: PolicyManager | undefined;
  #policyStatus: PolicyStatus | undefined;
  #monitor: Monitor | undefined;
  #identityGc: IdentityGc | undefined;
  readonly #api: ApiServer;

  constructor(config: AgentConfig, log: Logger) {
    this.config = config;
    this.log = log;
    this.#lifecycle = new Lifecycle(log);
    this.#api = new ApiServer(log.child({ module: 'api' }));
    this.#register();
  }

  get endpoints(): EndpointManager {
    if (!this.#endpoints) throw new Error('agent not started');
    return this.#endpoints;
  }

  #register(): void {
    const { config, log } = this;
    this.#lifecycle.append({
      name: 'store',
      start: async () => {
        if (config.store === 'etcd') {
          if (config.etcdEndpoints.length === 0) throw new ApiError(500, 'ERR_CONFIG', 'store etcd: set etcdEndpoints (--etcd-endpoints)');
          this.#store = await EtcdStateStore.connect({ endpoints: config.etcdEndpoints });
        } else {
          this.#store = await openStoreWaitingForLock(join(config.stateDir, 'store'), log);
        }
      },
      stop: () => this.#store?.close(),
    });
    this.#lifecycle.append({
      name: 'ipam',
      start: async () => {
        this.#ipam = await NodeIpam.open({
          store: this.#store!,
          nodeName: config.nodeName,
          pool: { clusterCidr: config.clusterCidr, nodeMaskSize: config.nodeCidrMaskSize },
        });
        const node: NodeRecord = {
          name: config.nodeName,
          nodeIp: config.nodeIp || (await detectNodeIp()),
          podCidr: this.#ipam.cidr,
          routerIp: this.#ipam.routerIp,
          routingMode: config.routingMode,
          agentVersion: VERSION,
          startedAt: new Date(this.startedAt).toISOString(),
        };
        await this.#store!.put(`nodes/${config.nodeName}`, node);
        this.#node = node;
        log.info({ podCidr: node.podCidr, router: node.routerIp }, 'node registered');
      },
    });
    this.#lifecycle.append({
      name: 'identities',
      start: async () => {
        this.#identities = new IdentityAllocator({ store: this.#store!, nodeName: config.nodeName });
        await this.#identities.start();
      },
      stop: () => this.#identities?.stop(),
    });
    this.#lifecycle.append({ name: 'node-networking', start: () => setUpNodeNetworking({ routerIp: this.#ipam!.routerIp, clusterCidr: config.clusterCidr, masquerade: config.masquerade }) });
    this.#lifecycle.append({
      name: 'datapath',
      start: () => {
        this.#datapath = new EndpointDatapath(config.bpfRoot, log.child({ module: 'datapath' }));
      },
      stop: () => this.#datapath?.close(),
    });
    this.#lifecycle.append({
      name: 'node-routing',
      start: async () => {
        // The ipcache stays with the agent's own table and reconciler (manageIpcache: false).
        this.#routing = new NodeRouting({ bpfRoot: config.bpfRoot, log: log.child({ module: 'node-routing' }), manageIpcache: false });
        if (!this.#node!.nodeIp) {
          throw new ApiError(500, 'ERR_CONFIG', `node ${config.nodeName} has no underlay address: set nodeIp (--node-ip) or give the node a global IPv4 address`);
        }
        await this.#routing.setUp({
          name: config.nodeName,
          nodeIp: this.#node!.nodeIp,
          podCidr: this.#ipam!.cidr,
          routerIp: this.#ipam!.routerIp,
          routingMode: config.routingMode,
          nativeRoutingCidr: config.clusterCidr,
        });
      },
      stop: () => this.#routing?.close(),
    });
    this.#lifecycle.append({
      name: 'ipcache',
      start: async () => {
        const ipcache = new Ipcache(this.#datapath!.ipcache, log.child({ module: 'ipcache' }));
        this.#ipcache = ipcache;
        // Whatever address the node sends from — the pods' gateway (Cilium's cilium_host address),
        // the underlay, an uplink added later — is the host, so that fromEntities: host and
        // toEntities: host mean the node and not some CIDR or the world.
        const host = (address: string) => ({ prefix: `${address}/32`, identity: ReservedIdentity.HOST, source: 'local-node' as const });
        ipcache.upsert(host(this.#ipam!.routerIp));
        this.#nodeAddresses = new NodeAddresses(
          {
            added: (address) => ipcache.upsert(host(address)),
            removed: (address) => {
              if (address !== this.#ipam!.routerIp && ipcache.table.get(`${address}/32`)?.source === 'local-node') ipcache.delete(`${address}/32`);
            },
          },
          log.child({ module: 'node-addresses' }),
        );
        await this.#nodeAddresses.start();
        ipcache.start();
      },
      stop: () => {
        this.#nodeAddresses?.stop();
        return this.#ipcache?.stop();
      },
    });
    this.#lifecycle.append({
      name: 'monitor',
      start: () => {
        this.#monitor = new Monitor(
          config.bpfRoot,
          {
            ruleForCookie: (cookie) => {
              const rule = this.#policy?.engine.ruleById(cookie);
              return rule && ruleKey(rule);
            },
          },
          log.child({ module: 'monitor' }),
        );
        this.#monitor.start();
      },
      stop: () => this.#monitor?.stop(),
    });
    this.#lifecycle.append({
      name: 'policy',
      start: async () => {
        this.#policyMaps = new EndpointPolicyMaps(config.bpfRoot);
        this.#policy = new PolicyManager({
          store: this.#store!,
          identities: this.#identities!,
          ipcache: this.#ipcache!,
          maps: this.#policyMaps,
          log: log.child({ module: 'policy' }),
        });
        await this.#policy.start();
      },
      stop: async () => {
        await this.#policy?.stop();
        this.#policyMaps?.close();
      },
    });
    this.#lifecycle.append({
      // Before the endpoints: their identities carry their namespace's labels.
      name: 'namespaces',
      start: async () => {
        this.#namespaces = new Namespaces({
          store: this.#store!,
          log: log.child({ module: 'namespaces' }),
          onChange: (namespace) =>
            this.#endpoints?.namespaceChanged(namespace).catch((error: unknown) => {
              log.error({ err: error, namespace }, 'moving endpoints to the identities of their new namespace labels failed');
            }),
        });
        await this.#namespaces.start();
      },
      stop: () => this.#namespaces?.stop(),
    });
    this.#lifecycle.append({
      name: 'endpoints',
      start: async () => {
        this.#endpoints = new EndpointManager({
          store: this.#store!,
          ipam: addressAllocator(this.#ipam!),
          datapath: this.#datapath!,
          ipcache: this.#ipcache!,
          identities: this.#identities!,
          policy: this.#policy!,
          mtu: () => this.#routing!.podMtu(),
          namespaceLabels: (namespace) => this.#namespaces!.labelsOf(namespace),
          log: log.child({ module: 'endpoints' }),
          nodeName: config.nodeName,
        });
        await this.#endpoints.start();
      },
      stop: () => this.#endpoints?.stop(),
    });
    this.#lifecycle.append({
      // After the endpoints: a restarted agent claims a revision only once its endpoints' maps
      // are adopted again.
      name: 'policy-status',
      start: () => {
        this.#policyStatus = new PolicyStatus({
          store: this.#store!,
          nodeName: config.nodeName,
          startedAt: this.#node!.startedAt,
          policy: this.#policy!,
          log: log.child({ module: 'policy-status' }),
        });
        this.#policyStatus.start();
      },
      stop: () => this.#policyStatus?.stop(),
    });
    this.#lifecycle.append({
      // After the endpoints: a restarted agent has re-taken its references by then (collecting
      // before would be safe too, as the previous run's refs are still in the store).
      name: 'identity-gc',
      start: () => {
        this.#identityGc = new IdentityGc({
          identities: this.#identities!,
          intervalMs: config.identityGcInterval * 1000,
          gracePeriodMs: config.identityGcGracePeriod * 1000,
          log: log.child({ module: 'identity-gc' }),
        });
        this.#identityGc.start();
      },
      stop: () => this.#identityGc?.stop(),
    });
    this.#lifecycle.append({
      name: 'cluster',
      start: async () => {
        this.#cluster = new ClusterWatcher({
          store: this.#store!,
          self: config.nodeName,
          tunnel: config.routingMode === 'tunnel',
          ipcache: this.#ipcache!,
          routing: this.#routing!,
          log: log.child({ module: 'cluster' }),
        });
        await this.#cluster.start();
      },
      stop: () => this.#cluster?.stop(),
    });
    this.#lifecycle.append({
      name: 'api',
      start: async () => {
        this.#routes();
        await this.#api.listen(config.socketPath);
        log.info({ socket: config.socketPath }, 'API listening');
      },
      stop: () => this.#api.close(),
    });
  }

  #routes(): void {
    const api = this.#api;
    api.route('GET', '/v1/healthz', () => ({ ok: true }));
    api.route('GET', '/v1/status', () => this.status());
    api.route('GET', '/v1/endpoints', () => this.endpoints.list().map((ep) => this.#endpointView(ep)));
    api.route('GET', '/v1/endpoints/:id', ({ params }) => {
      const endpoint = this.endpoints.get(params.id);
      if (!endpoint) throw new ApiError(404, 'ERR_ENDPOINT_NOT_FOUND', `no endpoint ${params.id}`);
      return { ...this.#endpointView(endpoint), datapath: this.endpoints.status(`${endpoint.containerId}/${endpoint.ifname}`) };
    });
    api.route('POST', '/v1/endpoints', async ({ body }) => {
      const parsed = AddEndpointBody.safeParse(body);
      if (!parsed.success) {
        const issue = parsed.error.issues[0];
        throw new ApiError(400, 'ERR_BAD_REQUEST', `endpoint request: field ${issue.path.join('.') || '(body)'}: ${issue.message}`);
      }
      return this.endpoints.add(parsed.data);
    });
    api.route('PUT', '/v1/endpoints/:id/labels', async ({ params, body }) => {
      const parsed = z.record(z.string(), z.string()).safeParse(body);
      if (!parsed.success) throw new ApiError(400, 'ERR_BAD_REQUEST', `endpoint labels: body must be an object of string labels: ${parsed.error.issues[0].message}`);
      return this.endpoints.updateLabels(params.id, parsed.data);
    });
    api.route('GET', '/v1/namespaces', () => this.#namespaces!.list());
    api.route('PUT', '/v1/namespaces/:name/labels', async ({ params, body }) => {
      const parsed = z.record(z.string(), z.string()).safeParse(body);
      if (!parsed.success) throw new ApiError(400, 'ERR_BAD_REQUEST', `namespace labels: body must be an object of string labels: ${parsed.error.issues[0].message}`);
      return this.#namespaces!.setLabels(params.name, parsed.data);
    });
    api.route('DELETE', '/v1/endpoints/:containerId/:ifname', async ({ params }) => ({
      deleted: await this.endpoints.delete(params.containerId, params.ifname),
    }));
    api.route('GET', '/v1/identities', () => [...reservedIdentities(), ...this.#identities!.list()].map(identityView));
    api.route('GET', '/v1/identities/:id', ({ params }) => {
      const identity = this.#identities!.get(Number(params.id));
      if (!identity) throw new ApiError(404, 'ERR_IDENTITY_NOT_FOUND', `no identity ${params.id}`);
      return identityView(identity);
    });
    api.route('GET', '/v1/nodes', async () => (await this.#store!.list<NodeRecord>('nodes/')).entries.map((e) => e.value));
    api.route('DELETE', '/v1/nodes/:name', ({ params }) => deregisterNode(this.#store!, params.name, this.config.nodeName));
    registerPolicyRoutes(api, () => this.#policy!, () => this.endpoints, () => this.#policyStatus!);
    api.route('GET', '/v1/monitor', ({ query, signal }) => {
      const kinds = query.getAll('type');
      const wanted = (e: MonitorEvent) => kinds.length === 0 || kinds.includes(e.kind);
      if (query.get('follow') === 'true') {
        const monitor = this.#monitor!;
        return (async function* () {
          for (const event of monitor.recent(Number(query.get('last') ?? 0))) if (wanted(event)) yield event;
          for await (const event of monitor.follow(signal)) if (wanted(event)) yield event;
        })();
      }
      return this.#monitor!.recent(Number(query.get('last') ?? 100)).filter(wanted);
    });
    api.route('GET', '/v1/bpf/:map', ({ params }) => readBpfState(this.config.bpfRoot, params.map));
  }

  #endpointView(endpoint: Endpoint): EndpointView {
    return { ...endpoint, policyRevision: this.#policy?.enforcedRevision(endpoint.id) };
  }

  status() {
    const ipam = this.#ipam?.snapshot();
    return {
      node: this.config.nodeName,
      version: VERSION,
      uptimeSeconds: Math.round((Date.now() - this.startedAt) / 1000),
      store: { kind: this.config.store, revision: this.#store?.revision },
      routingMode: this.config.routingMode,
      ipam: ipam && { podCidr: ipam.cidr, routerIp: ipam.routerIp, used: ipam.used, capacity: ipam.capacity },
      endpoints: this.#endpoints?.list().length ?? 0,
      policy: this.#policy && { revision: this.#policy.revision, rules: this.#policy.list().length },
      identityGc: this.#identityGc?.status(),
      datapath: { bpfRoot: this.config.bpfRoot, failures: this.#endpoints ? this.#endpoints.failures() : [] },
    };
  }

  async start(): Promise<void> {
    await this.#lifecycle.start();
  }

  async stop(): Promise<void> {
    await this.#lifecycle.stop();
  }
}

/** How long a starting agent waits for the store lock of a predecessor that is still exiting. */
const LOCK_WAIT_MS = 10_000;

/**
 * Opens the local store, waiting while another process holds its lock: an agent restarted right
 * after a kill -9 can find the old process still tearing down (closing BPF fds takes RCU grace periods).
 */
async function openStoreWaitingForLock(dir: string, log: Logger): Promise<StateStore> {
  const deadline = Date.now() + LOCK_WAIT_MS;
  for (let attempt = 0; ; attempt++) {
    try {
      return await LocalStateStore.open(dir);
    } catch (error) {
      if (!StoreError.is(error, 'ERR_STORE_LOCKED') || Date.now() > deadline) throw error;
      if (attempt === 0) log.warn({ err: error }, 'state store is locked; waiting for its holder to exit');
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }
}

function identityView(identity: Pick<Identity, 'id' | 'labels'>) {
  return { id: identity.id, name: identityName(identity.id), labels: identity.labels.toStrings() };
}

