/**
 * Services in the shared store and what each node makes of them. Definitions live under
 * `services/` (owned by the services module): `specs/<namespace>/<name>`, and one claim key per
 * ClusterIP (`cluster-ips/<ip>`) and node port (`node-ports/<PROTO>/<port>`) written in the same
 * transaction as the definition, so two services never share an address or a node port — not
 * even when two nodes create them at once — and a failed create writes nothing.
 *
 * Every node follows the definitions and the cluster's pods (every node's endpoints are in the
 * store) and keeps the frontends table: each address, port and protocol clients connect to, with
 * the backends it balances over. The datapath's reconciler follows that table.
 * @module
 */
import type { Logger } from 'pino';
import { Addr, Prefix } from '../net/index.ts';
import { POD_NAMESPACE_LABEL, selectorMatches, type CidrRule, type Selector, type ServiceBackendPeers, type ServicePeer } from '../policy/index.ts';
import { Table } from '../statedb/index.ts';
import { StoreConflictError, type StateStore, type TxnOp, type WatchEvent } from '../store/index.ts';
import { ServiceError } from './errors.ts';
import { selects, serviceFrontends, serviceKey, type BackendSource, type BackendState, type NamedPort, type Frontend, type Service, type ServiceProtocol, type ServiceRequest, type ServiceRequestLimits } from './service.ts';

export const SERVICES_PREFIX = 'services/';
export const SERVICE_SPECS_PREFIX = `${SERVICES_PREFIX}specs/`;
const CLUSTER_IPS_PREFIX = `${SERVICES_PREFIX}cluster-ips/`;
const NODE_PORTS_PREFIX = `${SERVICES_PREFIX}node-ports/`;

/** How many times a create retries when another node took the address or port it allocated. */
const ALLOCATION_ATTEMPTS = 5;

/** A pod as services select it: any node's endpoint. */
export interface ServicePod {
  /** The endpoint's store key. */
  key: string;
  ipv4: string;
  namespace: string;
  labels: Record<string, string>;
  /** Its named ports: what a service's named targetPort resolves to. */
  ports?: readonly NamedPort[];
  /** Being deleted: its services keep its established connections but give it no new ones. */
  terminating?: boolean;
}

interface Claim {
  service: string;
}

function specKey(namespace: string, name: string): string {
  return `${SERVICE_SPECS_PREFIX}${namespace}/${name}`;
}

function clusterIpKey(ip: string): string {
  return `${CLUSTER_IPS_PREFIX}${ip}`;
}

function nodePortKey(protocol: ServiceProtocol, port: number): string {
  return `${NODE_PORTS_PREFIX}${protocol}/${port}`;
}

const sameJson = <T>(a: T, b: T) => JSON.stringify(a) === JSON.stringify(b);

export interface ServiceManagerOptions {
  store: StateStore;
  limits: ServiceRequestLimits;
  log: Logger;
  /** Picks among free addresses and ports; Math.random by default (tests pass their own). */
  random?: () => number;
  /** This node's addresses: its NodePort frontends are at each of them too (see serviceFrontends). */
  nodeAddresses?: readonly string[];
}

export class ServiceManager {
  readonly services = new Table<Service>('services', serviceKey, { equals: sameJson });
  readonly frontends = new Table<Frontend>('frontends', (f) => f.key, { equals: sameJson });
  readonly #store: StateStore;
  readonly #cidr: Prefix;
  readonly #nodePorts: { min: number; max: number };
  readonly #log: Logger;
  readonly #random: () => number;
  readonly #nodeAddresses: readonly string[];
  readonly #pods = new Map<string, ServicePod>();
  /** The frontend keys each service has in the table now. */
  readonly #frontendsOf = new Map<string, Set<string>>();
  /** Store revision of the last service change applied, and who waits for a later one. */
  #applied = 0;
  #waiters: { revision: number; resolve: () => void }[] = [];
  readonly #listeners = new Set<() => void>();

  constructor(options: ServiceManagerOptions) {
    this.#store = options.store;
    this.#cidr = Prefix.parse(options.limits.serviceCidr, { family: 4 });
    this.#nodePorts = options.limits.nodePortRange;
    this.#log = options.log;
    this.#random = options.random ?? Math.random;
    this.#nodeAddresses = options.nodeAddresses ?? [];
  }

  list(): Service[] {
    return [...this.services.all()].sort((a, b) => serviceKey(a).localeCompare(serviceKey(b)));
  }

  get(namespace: string, name: string): Service {
    const service = this.services.get(`${namespace}/${name}`);
    if (!service) throw new ServiceError('ERR_SERVICE_NOT_FOUND', `no service ${namespace}/${name}`);
    return service;
  }

  /** The frontends of a service, as this node balances them. */
  frontendsOf(key: string): Frontend[] {
    return [...(this.#frontendsOf.get(key) ?? [])].map((k) => this.frontends.get(k)).filter((f): f is Frontend => f !== undefined);
  }

  /**
   * Stores a new service, allocating its ClusterIP and node ports unless the request names
   * them. Resolves with the service and the store revision of the write.
   */
  async create(request: ServiceRequest): Promise<{ service: Service; revision: number }> {
    const { services, revision } = await this.createMany([request]);
    return { service: services[0], revision };
  }

  /**
   * Stores several new services in one transaction: all of them or, when any is refused (it
   * exists, or asks for a ClusterIP or node port another service has, in the store or in the same
   * batch), none.
   */
  async createMany(requests: readonly ServiceRequest[]): Promise<{ services: Service[]; revision: number }> {
    const what = (r: ServiceRequest) => `creating service ${r.namespace}/${r.name}`;
    const names = new Map<string, string>();
    const ips = new Map<string, string>();
    const ports = new Map<string, string>();
    for (const r of requests) {
      const name = `${r.namespace}/${r.name}`;
      if (names.has(name)) throw new ServiceError('ERR_SERVICE_EXISTS', `${what(r)}: it is in the request twice`);
      names.set(name, name);
      if (r.clusterIP) {
        const other = ips.get(r.clusterIP);
        if (other) throw new ServiceError('ERR_CLUSTER_IP_IN_USE', `${what(r)}: field clusterIP: ${r.clusterIP} belongs to service ${other} (in the same request)`);
        ips.set(r.clusterIP, name);
      }
      r.ports.forEach((p, i) => {
        if (p.nodePort === undefined) return;
        const other = ports.get(`${p.protocol}/${p.nodePort}`);
        if (other) throw new ServiceError('ERR_NODE_PORT_IN_USE', `${what(r)}: field ports.${i}.nodePort: ${p.nodePort}/${p.protocol} belongs to service ${other} (in the same request)`);
        ports.set(`${p.protocol}/${p.nodePort}`, name);
      });
    }
    for (let attempt = 1; ; attempt++) {
      for (const r of requests) if (await this.#store.get(specKey(r.namespace, r.name))) throw new ServiceError('ERR_SERVICE_EXISTS', `${what(r)}: it exists already`);
      const takenIps = requests.some((r) => !r.clusterIP) ? await this.#takenClusterIps() : new Set<string>();
      for (const ip of ips.keys()) takenIps.add(ip);
      const takenPorts = requests.some((r) => r.type !== 'ClusterIP') ? await this.#takenNodePorts() : new Set<string>();
      for (const port of ports.keys()) takenPorts.add(port);
      const services: Service[] = [];
      const ops: TxnOp[] = [];
      for (const r of requests) {
        const clusterIP = r.clusterIP ?? this.#freeClusterIp(takenIps, what(r));
        takenIps.add(clusterIP);
        const service: Service = {
          namespace: r.namespace,
          name: r.name,
          type: r.type,
          clusterIP,
          ports: [],
          ...(r.labels && Object.keys(r.labels).length > 0 ? { labels: r.labels } : {}),
          ...(r.selector ? { selector: r.selector } : {}),
          ...(r.backends ? { backends: r.backends.map((b) => ({ ip: b.ip, ...(b.state === 'terminating' ? { state: b.state } : {}) })) } : {}),
          externalIPs: r.externalIPs,
          loadBalancerIPs: r.loadBalancerIPs,
          ...(r.sessionAffinity === 'ClientIP' ? { sessionAffinity: { timeoutSeconds: r.sessionAffinityConfig?.clientIP.timeoutSeconds ?? 10800 } } : {}),
          ...(r.externalTrafficPolicy === 'Local' ? { externalTrafficLocal: true as const } : {}),
          createdAt: new Date().toISOString(),
        };
        for (const p of r.ports) {
          let nodePort = p.nodePort;
          if (nodePort === undefined && r.type !== 'ClusterIP') {
            nodePort = this.#freeNodePort(p.protocol, takenPorts, what(r));
            takenPorts.add(`${p.protocol}/${nodePort}`);
          }
          service.ports.push({ ...(p.name ? { name: p.name } : {}), protocol: p.protocol, port: p.port, targetPort: p.targetPort ?? p.port, ...(nodePort !== undefined ? { nodePort } : {}) });
        }
        const claim: Claim = { service: serviceKey(service) };
        ops.push(
          { type: 'put', key: specKey(r.namespace, r.name), value: service, expectedRevision: 0 },
          { type: 'put', key: clusterIpKey(service.clusterIP), value: claim, expectedRevision: 0 },
          ...service.ports.filter((p) => p.nodePort !== undefined).map((p): TxnOp => ({ type: 'put', key: nodePortKey(p.protocol, p.nodePort!), value: claim, expectedRevision: 0 })),
        );
        services.push(service);
      }
      try {
        const { revision } = await this.#store.transaction(ops);
        return { services, revision };
      } catch (error) {
        if (!(error instanceof StoreConflictError)) throw error;
        const lost = new Set(error.mismatches.map((m) => m.key));
        for (const r of requests) await this.#refused(r, lost, what(r));
        // Someone took an address or port we had picked: pick again.
        if (attempt >= ALLOCATION_ATTEMPTS) throw error;
      }
    }
  }

  /** Throws the error that names why `r` lost a transaction, if it was one of its own claims. */
  async #refused(r: ServiceRequest, lost: ReadonlySet<string>, what: string): Promise<void> {
    if (lost.has(specKey(r.namespace, r.name))) throw new ServiceError('ERR_SERVICE_EXISTS', `${what}: it exists already`);
    if (r.clusterIP && lost.has(clusterIpKey(r.clusterIP))) {
      const owner = await this.#store.get<Claim>(clusterIpKey(r.clusterIP));
      throw new ServiceError('ERR_CLUSTER_IP_IN_USE', `${what}: field clusterIP: ${r.clusterIP} belongs to service ${owner?.value.service ?? '(another)'}`);
    }
    for (const [i, p] of r.ports.entries()) {
      if (p.nodePort === undefined || !lost.has(nodePortKey(p.protocol, p.nodePort))) continue;
      const owner = await this.#store.get<Claim>(nodePortKey(p.protocol, p.nodePort));
      throw new ServiceError('ERR_NODE_PORT_IN_USE', `${what}: field ports.${i}.nodePort: ${p.nodePort}/${p.protocol} belongs to service ${owner?.value.service ?? '(another)'}`);
    }
  }

  /** Deletes a service and its claims in one transaction. */
  async delete(namespace: string, name: string): Promise<{ revision: number }> {
    const key = specKey(namespace, name);
    const current = await this.#store.get<Service>(key);
    if (!current) throw new ServiceError('ERR_SERVICE_NOT_FOUND', `deleting service ${namespace}/${name}: no such service`);
    const service = current.value;
    const claims = [clusterIpKey(service.clusterIP), ...service.ports.filter((p) => p.nodePort !== undefined).map((p) => nodePortKey(p.protocol, p.nodePort!))];
    const ops: TxnOp[] = [{ type: 'delete', key, expectedRevision: current.modRevision }];
    for (const claimKey of claims) {
      // Only claims that are this service's: never another's after some manual repair.
      const claim = await this.#store.get<Claim>(claimKey);
      if (claim?.value.service === serviceKey(service)) ops.push({ type: 'delete', key: claimKey, expectedRevision: claim.modRevision });
    }
    try {
      return await this.#store.transaction(ops);
    } catch (error) {
      if (error instanceof StoreConflictError) throw new ServiceError('ERR_SERVICE_NOT_FOUND', `deleting service ${namespace}/${name}: it changed or went while being deleted; try again`, { cause: error });
      throw error;
    }
  }

  /**
   * Sets the state of an explicit backend of a service (`terminating`: drained, no new
   * connections; `active` again), or removes it (`state` undefined), as one compare-and-swap of
   * the definition. A service that selects its pods has its backends' states from the pods.
   */
  async setBackend(namespace: string, name: string, ip: string, state: BackendState | undefined): Promise<{ service: Service; revision: number }> {
    const what = `${state === undefined ? 'removing' : `setting to ${state}`} backend ${ip} of service ${namespace}/${name}`;
    const key = specKey(namespace, name);
    const current = await this.#store.get<Service>(key);
    if (!current) throw new ServiceError('ERR_SERVICE_NOT_FOUND', `${what}: no such service`);
    const service = current.value;
    if (!service.backends) throw new ServiceError('ERR_SERVICE_INVALID', `${what}: the service selects its backends (selector); a pod's backend terminates when the pod is deleted`);
    const index = service.backends.findIndex((b) => b.ip === ip);
    if (index < 0) throw new ServiceError('ERR_BACKEND_NOT_FOUND', `${what}: ${ip} is not one of its backends (${service.backends.map((b) => b.ip).join(', ') || 'none'})`);
    const backends = service.backends.slice();
    if (state === undefined) backends.splice(index, 1);
    else backends[index] = { ip, ...(state === 'terminating' ? { state } : {}) };
    const updated: Service = { ...service, backends };
    try {
      const { revision } = await this.#store.transaction([{ type: 'put', key, value: updated, expectedRevision: current.modRevision }]);
      return { service: updated, revision };
    } catch (error) {
      if (error instanceof StoreConflictError) throw new ServiceError('ERR_SERVICE_CONFLICT', `${what}: the service changed meanwhile; try again`, { cause: error });
      throw error;
    }
  }

  /**
   * Calls `listener` after every change of a service or a pod (what toServices policies resolve
   * through); returns the unsubscribe.
   */
  subscribe(listener: () => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  #notify(): void {
    for (const listener of this.#listeners) listener();
  }

  /**
   * A policy's `toServices` peer as the peers its services' backends are: a service's selector
   * (with its namespace) for the pods it selects, so a pod that joins is allowed as it comes; an
   * explicit backend that is a pod, that pod's labels (its identity); any other address, its /32.
   * Terminating backends count: their established connections go on.
   */
  policyPeers(peer: ServicePeer): ServiceBackendPeers {
    const endpoints: Selector[] = [];
    const cidrs: CidrRule[] = [];
    let podsByIp: Map<string, ServicePod> | undefined;
    const podSelector = (namespace: string, labels: Record<string, string>): Selector => ({
      matchLabels: { ...Object.fromEntries(Object.entries(labels).map(([k, v]) => [`any:${k}`, v])), [POD_NAMESPACE_LABEL]: namespace },
      matchExpressions: [],
    });
    for (const service of this.services.all()) {
      if (peer.namespace !== undefined && service.namespace !== peer.namespace) continue;
      if (peer.name !== undefined && service.name !== peer.name) continue;
      if (peer.selector && !selectorMatches(peer.selector, Object.fromEntries(Object.entries(service.labels ?? {}).map(([k, v]) => [`k8s:${k}`, v])))) continue;
      if (service.selector) {
        endpoints.push(podSelector(service.namespace, service.selector));
        continue;
      }
      for (const backend of service.backends ?? []) {
        podsByIp ??= new Map([...this.#pods.values()].map((p) => [p.ipv4, p]));
        const pod = podsByIp.get(backend.ip);
        if (pod) endpoints.push(podSelector(pod.namespace, pod.labels));
        else cidrs.push({ cidr: `${backend.ip}/32`, except: [] });
      }
    }
    return { endpoints, cidrs };
  }

  /** A change of `services/specs/…` from the store. */
  applyServiceEvent(event: WatchEvent<Service>): void {
    const key = event.key.slice(SERVICE_SPECS_PREFIX.length);
    if (event.type === 'delete') {
      this.services.delete(key);
      this.#setFrontends(key, []);
    } else {
      this.services.upsert(event.value);
      this.#resolve(event.value);
    }
    this.#advance(event.revision);
    this.#notify();
  }

  /**
   * The store's revision as far as this node's view of services is concerned: listed or watched
   * up to it (the follower calls this with the listing's revision too).
   */
  #advance(revision: number): void {
    if (revision <= this.#applied) return;
    this.#applied = revision;
    const waiting = this.#waiters;
    this.#waiters = [];
    for (const waiter of waiting) {
      if (waiter.revision <= revision) waiter.resolve();
      else this.#waiters.push(waiter);
    }
  }

  /** The listing of services was applied as of `revision`. */
  listed(revision: number): void {
    this.#advance(revision);
  }

  /**
   * Resolves once this node's tables hold every service change up to the store's `revision`, or
   * after `timeoutMs` (then false) when given.
   */
  synced(revision: number, timeoutMs?: number): Promise<boolean> {
    if (revision <= this.#applied) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = timeoutMs === undefined ? undefined : setTimeout(() => resolve(false), timeoutMs);
      this.#waiters.push({
        revision,
        resolve: () => {
          clearTimeout(timer);
          resolve(true);
        },
      });
    });
  }

  /** A pod (any node's endpoint) came or changed. */
  upsertPod(pod: ServicePod): void {
    const previous = this.#pods.get(pod.key);
    this.#pods.set(pod.key, pod);
    this.#podChanged(previous, pod);
  }

  /**
   * A pod's deletion began (its endpoint is being torn down): it stays a backend of its services
   * for its established connections, out of their selection, until deletePod.
   */
  terminatePod(key: string): void {
    const pod = this.#pods.get(key);
    if (!pod || pod.terminating) return;
    this.upsertPod({ ...pod, terminating: true });
  }

  deletePod(key: string): void {
    const previous = this.#pods.get(key);
    if (!previous) return;
    this.#pods.delete(key);
    this.#podChanged(previous, undefined);
  }

  /** Active backends of a service: its selected pods (with their named ports) or its explicit list. */
  backends(service: Service): BackendSource[] {
    return this.#backends(service, false);
  }

  /** Terminating backends of a service: no new connections, established ones kept. */
  terminatingBackends(service: Service): BackendSource[] {
    return this.#backends(service, true);
  }

  #backends(service: Service, terminating: boolean): BackendSource[] {
    if (service.backends) return service.backends.filter((b) => (b.state === 'terminating') === terminating).map((b) => ({ ip: b.ip }));
    if (!service.selector) return [];
    const out: BackendSource[] = [];
    for (const pod of this.#pods.values()) {
      if ((pod.terminating === true) === terminating && pod.namespace === service.namespace && selects(service.selector, pod.labels)) out.push({ ip: pod.ipv4, ...(pod.ports ? { ports: pod.ports } : {}) });
    }
    return out;
  }

  #podChanged(before: ServicePod | undefined, after: ServicePod | undefined): void {
    for (const service of this.services.all()) {
      if (!service.selector) continue;
      const wanted = (pod: ServicePod | undefined) => pod !== undefined && pod.namespace === service.namespace && selects(service.selector!, pod.labels);
      if (wanted(before) || wanted(after)) this.#resolve(service);
    }
    this.#notify();
  }

  #resolve(service: Service): void {
    const frontends = serviceFrontends(service, this.backends(service), this.terminatingBackends(service), this.#nodeAddresses);
    const unresolved = frontends.find((f) => f.unresolved);
    // Said once per change of who lacks it, not on every pod event of the service.
    if (unresolved && !sameJson(this.frontends.get(unresolved.key)?.unresolved, unresolved.unresolved)) this.#log.warn({ service: serviceKey(service), frontend: unresolved.key, pods: unresolved.unresolved }, 'selected pods without the named target port are no backends of it');
    this.#setFrontends(serviceKey(service), frontends);
  }

  #setFrontends(service: string, frontends: Frontend[]): void {
    const keys = new Set(frontends.map((f) => f.key));
    for (const old of this.#frontendsOf.get(service) ?? []) if (!keys.has(old)) this.frontends.delete(old);
    for (const frontend of frontends) {
      const holder = this.frontends.get(frontend.key);
      if (holder && holder.service !== service) {
        // An external IP two services both list: the first keeps it (Kubernetes does not arbitrate either).
        this.#log.warn({ frontend: frontend.key, service, holder: holder.service }, 'frontend belongs to another service; ignored');
        keys.delete(frontend.key);
        continue;
      }
      this.frontends.upsert(frontend);
    }
    if (keys.size > 0) this.#frontendsOf.set(service, keys);
    else this.#frontendsOf.delete(service);
  }

  async #takenClusterIps(): Promise<Set<string>> {
    const { entries } = await this.#store.list(CLUSTER_IPS_PREFIX);
    return new Set(entries.map((e) => e.key.slice(CLUSTER_IPS_PREFIX.length)));
  }

  #freeClusterIp(taken: ReadonlySet<string>, what: string): string {
    // Neither the network nor the last address; a random start spreads concurrent creators apart.
    const first = this.#cidr.first().toBigInt() + 1n;
    const count = BigInt(this.#cidr.size()) - 2n;
    const start = BigInt(Math.floor(this.#random() * Number(count)));
    for (let i = 0n; i < count; i++) {
      const ip = Addr.fromBigInt(4, first + ((start + i) % count)).toString();
      if (!taken.has(ip)) return ip;
    }
    throw new ServiceError('ERR_SERVICE_EXHAUSTED', `${what}: every address of the service CIDR ${this.#cidr} is taken`);
  }

  async #takenNodePorts(): Promise<Set<string>> {
    const { entries } = await this.#store.list(NODE_PORTS_PREFIX);
    return new Set(entries.map((e) => e.key.slice(NODE_PORTS_PREFIX.length)));
  }

  #freeNodePort(protocol: ServiceProtocol, taken: ReadonlySet<string>, what: string): number {
    const { min, max } = this.#nodePorts;
    const count = max - min + 1;
    const start = Math.floor(this.#random() * count);
    for (let i = 0; i < count; i++) {
      const port = min + ((start + i) % count);
      if (!taken.has(`${protocol}/${port}`)) return port;
    }
    throw new ServiceError('ERR_SERVICE_EXHAUSTED', `${what}: every ${protocol} node port of ${min}-${max} is taken`);
  }
}
