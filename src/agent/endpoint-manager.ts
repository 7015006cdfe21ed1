/**
 * Endpoint lifecycle: what CNI ADD and DEL turn into. ADD allocates an address, creates the veth
 * pair and configures the pod side, records the endpoint, and returns only once the datapath
 * reconciler has realized it; any failure undoes every step, so nothing is left half-created.
 * @module
 */
import { statSync } from 'node:fs';
import type { Logger } from 'pino';
import type { StateStore } from '../store/index.ts';
import { Reconciler, Table, type ReconcilerHealth } from '../statedb/index.ts';
import { errnoOf, Netlink, NetlinkError, type Link } from '../datapath/netlink/index.ts';
import { EndpointError } from './errors.ts';
import { type Endpoint, type EndpointContainer, type EndpointWorkload, containerInterfaceKey, hostInterfaceName, MAX_ENDPOINT_ID, nodeEndpointsPrefix } from './endpoint.ts';
import type { NamedPort } from '../loadbalancer/index.ts';
import type { Ipcache, IpcacheEntry } from './ipcache.ts';
import { InvalidLabelsError, podLabels, type IdentityAllocator, type Labels } from '../identity/index.ts';
import { disableIpv6, endpointLinkAlias, prepareHostLink, ENDPOINT_LINK_GROUP, isEndpointLink } from './endpoint-links.ts';
import { EndpointLinkPool, type PoolDatapath, type PoolLink } from './endpoint-link-pool.ts';

/** The kernel side of an endpoint (programs, links, map entries); implemented in src/datapath. */
export interface EndpointDatapath {
  /** Makes the datapath serve `endpoint`; adopts what is already pinned for it. Idempotent. */
  realize(endpoint: Endpoint): Promise<void> | void;
  /** Removes the endpoint's links, pins and map entries. Idempotent. */
  remove(endpoint: Endpoint): Promise<void> | void;
  /**
   * Optional: starts realize()'s slow part (attaching the programs to the host interface, which
   * serves nothing until realize() writes the endpoint's entries) as soon as the interface exists,
   * so it overlaps the rest of an add; realize() then finds it done.
   */
  attach?(endpoint: { id: number; hostIfindex: number }): Promise<void>;
  /** Removes the pins of endpoint ids not in `keep`; returns them. For a start only. */
  sweep?(keep: ReadonlySet<number>): number[];
  /** Undoes attach() for an endpoint that will not be realized. */
  detach?(endpointId: number): Promise<void>;
  /**
   * Optional, for refreshes: what the kernel serves, by pod address; whether that serves an
   * endpoint as realize() would; and removing what serves an address no endpoint has.
   */
  observe?(): Iterable<[ipv4: string, ObservedDatapathEndpoint]> | Promise<Iterable<[ipv4: string, ObservedDatapathEndpoint]>>;
  serves?(endpoint: Endpoint, observed: ObservedDatapathEndpoint): boolean;
  prune?(observed: ObservedDatapathEndpoint): void;
  /**
   * Optional, for a pool of links made ahead of adds (see EndpointLinkPool): hands the programs
   * attached to pool link `name` to an endpoint, so realize() finds them in place.
   */
  adoptPooled?(name: string, endpoint: { id: number; hostIfindex: number }): void;
}

/** An endpoint as the kernel serves it; opaque here but for its address. */
export interface ObservedDatapathEndpoint {
  ipv4: string;
}

/** The policy manager's view of endpoints. */
export interface EndpointPolicyHooks {
  /**
   * Resolves once the endpoint's policy map holds its policy and is installed for the datapath.
   * `ports`: its named ports, what a named port of a rule selecting it stands for.
   */
  addEndpoint(endpointId: number, labels: Labels, ports?: readonly NamedPort[]): Promise<void>;
  removeEndpoint(endpointId: number): void;
  /** Removes the maps of endpoint ids not in `keep`; returns them. For a start only. */
  sweepEndpoints?(keep: ReadonlySet<number>): number[];
  /** Optional: prepares the policy maps of the ids `nextIds(n)` says the next n adds will get. */
  prepareSlots?(nextIds: (count: number) => number[]): Promise<void>;
}

/** Address management as the endpoint manager needs it (src/ipam implements it). */
export interface AddressAllocator {
  allocate(owner: string): Promise<string>;
  release(owner: string): Promise<void>;
  /** Every owner (container/interface key) holding an address of this node. */
  owners?(): string[];
  /** The node's router address: the pods' default gateway. */
  readonly gateway: string;
}

export interface AddEndpointRequest {
  containerId: string;
  ifname: string;
  netns: string;
  labels?: Record<string, string>;
  podName?: string;
  namespace?: string;
  workload?: EndpointWorkload;
  ports?: NamedPort[];
  containers?: EndpointContainer[];
}

/** Where pods without a namespace live, as in Kubernetes. */
const DEFAULT_NAMESPACE = 'default';

export class EndpointManager {
  readonly table = new Table<Endpoint>('endpoints', (ep) => containerInterfaceKey(ep.containerId, ep.ifname), { equals: sameEndpoint });
  readonly #reconciler: Reconciler<Endpoint>;
  readonly #store: StateStore;
  readonly #ipam: AddressAllocator;
  readonly #log: Logger;
  readonly #nodeName: string;
  /** Endpoint ids taken by adds still in progress, before their endpoints reach the table. */
  readonly #reservedIds = new Set<number>();
  /** #prepareSlots: a preparation is running; one more was asked for meanwhile; none after stop(). */
  #preparingSlots = false;
  #slotsAgain = false;
  #slotsStopped = true;
  #orphansRemoved = 0;
  /** The network namespace of each endpoint (and add in progress), by key: who holds which. */
  readonly #netnsIds = new Map<string, { identity: string; path: string }>();
  readonly #datapath: EndpointDatapath;
  /** Keys being added or deleted right now: a second request for the same key waits its turn. */
  readonly #busy = new Map<string, Promise<unknown>>();

  readonly #ipcache: Ipcache;
  readonly #identities: IdentityAllocator;
  readonly #policy: EndpointPolicyHooks | undefined;

  readonly #mtu: () => number;
  readonly #namespaceLabels: (namespace: string) => Record<string, string>;
  #netlink: Netlink | undefined;
  /** Pairs made ahead of adds, their programs attached; none without a pool datapath or with a target of 0. */
  readonly #pool: EndpointLinkPool | undefined;

  constructor(options: {
    store: StateStore;
    ipam: AddressAllocator;
    datapath: EndpointDatapath;
    ipcache: Ipcache;
    identities: IdentityAllocator;
    /** Policy for each endpoint, installed before its programs are attached. */
    policy?: EndpointPolicyHooks;
    log: Logger;
    nodeName: string;
    /** MTU for pod interfaces: smaller than the underlay's when traffic is tunnelled. */
    mtu?: () => number;
    /** The labels pods inherit from their namespace (Namespaces.labelsOf); none without it. */
    namespaceLabels?: (namespace: string) => Record<string, string>;
    /** How often the kernel's endpoints are compared with the table and repaired; 0: never. */
    refreshIntervalMs?: number;
    /**
     * Links to keep ready for adds (EndpointLinkPool), with the datapath that attaches their
     * programs; without it (or with a target of 0) every add makes its pair. Pool links left by
     * a previous agent are removed at start either way.
     */
    linkPool?: { target: number; datapath: PoolDatapath };
  }) {
    this.#namespaceLabels = options.namespaceLabels ?? (() => ({}));
    this.#mtu = options.mtu ?? (() => 1500);
    this.#store = options.store;
    this.#ipcache = options.ipcache;
    this.#identities = options.identities;
    this.#policy = options.policy;
    this.#ipam = options.ipam;
    this.#datapath = options.datapath;
    this.#log = options.log;
    this.#nodeName = options.nodeName;
    const datapath = options.datapath;
    if (options.linkPool) {
      this.#pool = new EndpointLinkPool({
        netlink: () => this.#hostNetlink(),
        datapath: options.linkPool.datapath,
        target: datapath.adoptPooled ? options.linkPool.target : 0,
        mtu: this.#mtu,
        log: this.#log.child({ part: 'link-pool' }),
        refreshIntervalMs: options.refreshIntervalMs,
      });
    }
    const observe = datapath.observe?.bind(datapath);
    this.#reconciler = new Reconciler<Endpoint, ObservedDatapathEndpoint>({
      name: 'endpoint-datapath',
      table: this.table,
      refreshIntervalMs: options.refreshIntervalMs,
      ops: {
        update: (ep) => datapath.realize(ep),
        delete: (ep) => datapath.remove(ep),
        list: observe && (async () => this.#observed(await observe())),
        equal: datapath.serves && ((ep, observed) => datapath.serves!(ep, observed)),
        prune: datapath.prune && ((_key, observed) => datapath.prune!(observed)),
      },
      onError: (key, error, attempts) => this.#log.warn({ endpoint: key, attempts, err: error }, 'realizing endpoint datapath failed; will retry'),
      onRefresh: (kind, key) =>
        this.#log.info({ endpoint: key, kind }, kind === 'repair' ? 'endpoint datapath drifted (map entry or links); realized again' : 'endpoint map entry of no endpoint; deleted'),
    });
  }

  /** The kernel's endpoints by table key; an address no endpoint has keeps its own key, to be pruned. */
  #observed(observed: Iterable<[string, ObservedDatapathEndpoint]>): [string, ObservedDatapathEndpoint][] {
    const keyOf = new Map<string, string>();
    for (const [key, endpoint] of this.table.entries()) keyOf.set(endpoint.ipv4, key);
    return [...observed].map(([ipv4, endpoint]) => [keyOf.get(ipv4) ?? `address/${ipv4}`, endpoint]);
  }

  /** The endpoint datapath reconciler's health. */
  health(): ReconcilerHealth {
    return this.#reconciler.health();
  }

  /** The link pool's reconciler's health, when there is a pool. */
  poolHealth(): ReconcilerHealth | undefined {
    return this.#pool?.health();
  }

  /** The link pool: links ready of its target, taken by adds, adds that found it empty. */
  poolStatus(): ReturnType<EndpointLinkPool['status']> | undefined {
    return this.#pool?.status();
  }

  #storeKey(key: string): string {
    return `${nodeEndpointsPrefix(this.#nodeName)}${key}`;
  }

  /** Loads the endpoints this node had (a restart), and starts realizing them. */
  async start(): Promise<void> {
    const { entries } = await this.#store.list<Endpoint>(nodeEndpointsPrefix(this.#nodeName));
    for (const { value } of entries) {
      // Re-take this node's references on the identities its endpoints use. Should an identity
      // have been collected while the agent was away, the endpoint moves to the new number.
      const { id } = await this.#identities.allocate(this.#securityLabels(value));
      let endpoint = value;
      if (id !== value.identity) {
        this.#log.warn({ endpoint: value.id, was: value.identity, now: id }, 'endpoint identity changed while the agent was down');
        endpoint = { ...value, identity: id };
        await this.#store.put(this.#storeKey(containerInterfaceKey(value.containerId, value.ifname)), endpoint);
      }
      await this.#policy?.addEndpoint(endpoint.id, this.#securityLabels(endpoint), endpoint.ports);
      this.table.upsert(endpoint);
      this.#ipcache.upsert(localIpcacheEntry(endpoint));
      // Links an agent before the hairpin to the proxy made lack its settings; the same for the rest.
      try {
        prepareHostLink(this.#hostNetlink(), endpoint.hostIfname);
      } catch (error) {
        // Gone while the agent was away: the reconciler reports the endpoint.
        if (!NetlinkError.is(error, 'ENOENT')) throw error;
      }
      const identity = tryNamespaceIdentity(endpoint.netns);
      if (identity) this.#netnsIds.set(containerInterfaceKey(endpoint.containerId, endpoint.ifname), { identity, path: endpoint.netns });
    }
    await this.#identities.reconcileReferences();
    await this.#sweepOrphans();
    // After the sweep: a link a take had renamed before the agent died is an endpoint's link
    // without an endpoint, gone by now; one it had only moved into the pod is still the pool's.
    await this.#pool?.start();
    this.#reconciler.start();
    // Attempted, not succeeded: an endpoint whose interface vanished while the agent was away
    // keeps failing (and is reported) without keeping the agent from serving the others.
    await this.#reconciler.attempted();
    this.#log.info({ endpoints: entries.length, failing: this.failures().length }, 'restored endpoints');
    // After the sweep, which removed the spare slots a previous agent left.
    this.#slotsStopped = false;
    this.#prepareSlots();
  }

  async stop(): Promise<void> {
    this.#slotsStopped = true;
    await this.#pool?.stop();
    await this.#reconciler.stop();
    this.#netlink?.close();
    this.#netlink = undefined;
  }

  /** The agent namespace's rtnetlink socket, shared by every add and delete (requests queue on it). */
  #hostNetlink(): Netlink {
    this.#netlink ??= Netlink.open();
    return this.#netlink;
  }

  /**
   * The pod's side: lo up, its /32 on the interface, up, a route to the gateway and the default
   * route through it, and the gateway's MAC (the host end's) as a permanent neighbour, since the
   * gateway is no real interface and answers no ARP. Returns the pod interface.
   */
  async #plumbPod(request: AddEndpointRequest, address: string, gatewayMac: string): Promise<Link> {
    using pod = Netlink.open({ netns: request.netns });
    const link = await pod.link(request.ifname);
    if (!link) throw new NetlinkError(`configuring ${request.ifname} in ${request.netns}: no such interface`, errnoOf('ENODEV'));
    const gateway = this.#ipam.gateway;
    await pod.setLink('lo', { up: true });
    await pod.addAddress({ address: `${address}/32`, dev: link.ifindex });
    disableIpv6(pod, request.ifname);
    await pod.setLink(link.ifindex, { up: true });
    await pod.addRoute({ dst: `${gateway}/32`, dev: link.ifindex, scope: 'link' });
    await pod.addRoute({ dst: 'default', gateway, dev: link.ifindex });
    await pod.replaceNeighbour({ dst: gateway, lladdr: gatewayMac, dev: link.ifindex });
    return link;
  }

  list(): Endpoint[] {
    return [...this.table.all()].sort((a, b) => a.id - b.id);
  }

  /**
   * The endpoint an id names: its endpoint id, its `containerId/ifname` key, its container id, or
   * with `prefix` (for reading, as `docker ps` ids are typed) a prefix of its container id. Several
   * matches are an error naming them, never the first one found: a caller acting on the wrong pod
   * would relabel it.
   */
  find(idOrKey: string, options: { prefix?: boolean } = {}): Endpoint {
    if (/^\d+$/.test(idOrKey)) {
      const byId = this.list().find((ep) => ep.id === Number(idOrKey));
      if (byId) return byId;
    }
    const byKey = this.table.get(idOrKey);
    if (byKey) return byKey;
    let matches = this.list().filter((ep) => ep.containerId === idOrKey);
    if (matches.length === 0 && options.prefix && idOrKey !== '') matches = this.list().filter((ep) => ep.containerId.startsWith(idOrKey));
    if (matches.length === 1) return matches[0];
    if (matches.length === 0) throw new EndpointError('ERR_ENDPOINT_NOT_FOUND', `no endpoint ${idOrKey}`);
    throw new EndpointError(
      'ERR_ENDPOINT_AMBIGUOUS',
      `${JSON.stringify(idOrKey)} matches ${matches.length} endpoints (${matches.map((ep) => `${ep.id} ${ep.containerId}/${ep.ifname}`).join(', ')}): name one by its endpoint id or container/interface`,
    );
  }

  /** find() for callers that take "none" for an answer. */
  get(idOrKey: string, options: { prefix?: boolean } = {}): Endpoint | undefined {
    try {
      return this.find(idOrKey, options);
    } catch (error) {
      if (EndpointError.is(error, 'ERR_ENDPOINT_NOT_FOUND')) return undefined;
      throw error;
    }
  }

  /**
   * CNI CHECK: whether the endpoint's networking is still what ADD made: both ends of its link,
   * the pod's address and routes, the node's route to it, and its programs attached. Returns what
   * is wrong, nothing when all is as made; throws ERR_ENDPOINT_NOT_FOUND for no such endpoint.
   */
  async check(containerId: string, ifname: string): Promise<string[]> {
    const key = containerInterfaceKey(containerId, ifname);
    const endpoint = this.table.get(key);
    if (!endpoint) throw new EndpointError('ERR_ENDPOINT_NOT_FOUND', `no endpoint ${key}`);
    const problems: string[] = [];
    const host = await this.#hostNetlink().link(endpoint.hostIfname);
    if (!host || host.ifindex !== endpoint.hostIfindex) problems.push(`the host end ${endpoint.hostIfname} (ifindex ${endpoint.hostIfindex}) is gone`);
    else {
      if (!host.up) problems.push(`the host end ${endpoint.hostIfname} is down`);
      const routes = await this.#hostNetlink().routes({ family: 4 });
      if (!routes.some((r) => r.dst === `${endpoint.ipv4}/32` && r.oif === host.ifindex)) problems.push(`the node has no route to ${endpoint.ipv4} through ${endpoint.hostIfname}`);
    }
    problems.push(...(await this.#checkPod(endpoint)));
    const status = this.#reconciler.status(key);
    if (status?.state !== 'done') problems.push(`its datapath is ${status?.state ?? 'not realized'}${status?.error ? `: ${status.error}` : ''}`);
    else if (this.#datapath.observe && this.#datapath.serves) {
      const observed = [...(await this.#datapath.observe())].find(([address]) => address === endpoint.ipv4)?.[1];
      if (!observed || !this.#datapath.serves(endpoint, observed)) problems.push(`its programs or endpoint map entry are not in place for ${endpoint.hostIfname}`);
    }
    return problems;
  }

  async #checkPod(endpoint: Endpoint): Promise<string[]> {
    const where = `in ${endpoint.netns}`;
    let pod: Netlink;
    try {
      pod = Netlink.open({ netns: endpoint.netns });
    } catch (error) {
      return [`its network namespace ${endpoint.netns} cannot be entered (${(error as Error).message})`];
    }
    try {
      const link = await pod.link(endpoint.ifname);
      if (!link) return [`interface ${endpoint.ifname} is gone ${where}`];
      const problems: string[] = [];
      if (!link.up) problems.push(`interface ${endpoint.ifname} is down ${where}`);
      const addresses = await pod.addresses({ family: 4 });
      if (!addresses.some((a) => a.ifindex === link.ifindex && a.address === endpoint.ipv4)) problems.push(`interface ${endpoint.ifname} ${where} does not hold ${endpoint.ipv4}`);
      const routes = await pod.routes({ family: 4 });
      const gateway = this.#ipam.gateway;
      if (!routes.some((r) => r.dst === '0.0.0.0/0' && r.gateway === gateway && r.oif === link.ifindex)) problems.push(`no default route via ${gateway} ${where}`);
      if (!routes.some((r) => r.dst === `${gateway}/32` && r.oif === link.ifindex)) problems.push(`no route to the gateway ${gateway} ${where}`);
      return problems;
    } finally {
      pod.close();
    }
  }

  status(key: string) {
    return this.#reconciler.status(key);
  }

  /** Endpoints whose datapath could not be realized, with the reason. */
  failures() {
    return this.#reconciler.failures().map(([key, status]) => ({ endpoint: key, error: status.error, attempts: status.attempts }));
  }

  #serialize<T>(key: string, work: () => Promise<T>): Promise<T> {
    const previous = this.#busy.get(key) ?? Promise.resolve();
    const next = previous.catch(() => undefined).then(work);
    const tracked = next.finally(() => {
      if (this.#busy.get(key) === tracked) this.#busy.delete(key);
    });
    // The caller handles `next`; this copy only orders later requests and must not surface twice.
    tracked.catch(() => undefined);
    this.#busy.set(key, tracked);
    return next;
  }

  add(request: AddEndpointRequest): Promise<Endpoint> {
    return this.#serialize(containerInterfaceKey(request.containerId, request.ifname), () => this.#add(request));
  }

  async #add(request: AddEndpointRequest): Promise<Endpoint> {
    const key = containerInterfaceKey(request.containerId, request.ifname);
    const existing = this.table.get(key);
    if (existing) {
      throw new EndpointError('ERR_ENDPOINT_EXISTS', `container ${request.containerId} already has interface ${request.ifname} (endpoint ${existing.id}, ${existing.ipv4}); delete it first`);
    }
    // Taken from here on, so a concurrent add into the same namespace is refused too.
    this.#netnsIds.set(key, { identity: this.#checkNetns(request), path: request.netns });
    const hostIfname = hostInterfaceName(request.containerId, request.ifname);
    const id = this.#reserveId();
    const undo: (() => Promise<unknown>)[] = [];
    const ended = this.#pool?.busy();
    // When each step finished, in ms since the add began: the log line of every add says where
    // its time went (several steps overlap, so they do not add up).
    const started = performance.now();
    const ms: Record<string, number> = {};
    const mark = (step: string) => (ms[step] = Math.round((performance.now() - started) * 10) / 10);
    try {
      const address = await this.#ipam.allocate(key);
      mark('address');
      undo.push(() => this.#ipam.release(key));
      const labels = request.labels ?? {};
      const namespace = request.namespace ?? DEFAULT_NAMESPACE;
      const identity = await this.#allocateIdentity({ labels, namespace });
      mark('identity');
      undo.push(() => this.#identities.release(identity));

      // Everything that waits in the kernel runs at once, off the event loop: the policy map goes
      // in (its outer-map write waits out an RCU grace period on libuv's thread pool), the pair is
      // taken from the pool or made, and then the programs are attached to its host end (each
      // TCX attach waits out a grace period too; a pool link has them already). The programs
      // serve the endpoint only once the reconciler writes its map entry (below), after the
      // policy is in place. A take goes first: its move into the pod waits out an RCU barrier,
      // which should not also wait for the callbacks the policy's map writes queue, nor for the
      // policy computed on the event loop.
      const mtu = this.#mtu();
      const taking = this.#takePooled(id, key, hostIfname, request, mtu);
      // Until the add has the link in hand (below), a failure in between must not leave it.
      let tookOver = false;
      undo.push(async () => {
        const link = tookOver ? undefined : await taking.catch(() => undefined);
        if (!link) return;
        await this.#hostNetlink().deleteLink(link.ifindex);
        await this.#datapath.detach?.(id);
      });
      const policy = Promise.resolve(this.#policy?.addEndpoint(id, this.#securityLabels({ labels, namespace }), request.ports));
      // Awaited below; until then a failure must not count as unhandled.
      policy.then(() => mark('policy'), () => undefined);
      undo.push(async () => {
        await policy.catch(() => undefined);
        this.#policy?.removeEndpoint(id);
      });
      // A failed take or creation left nothing, and EEXIST means the name is someone else's: no undo.
      const host = (await taking) ?? (await this.#createVeth(key, hostIfname, request, mtu));
      tookOver = true;
      undo.push(() => this.#hostNetlink().deleteLink(host.ifindex));
      mark('veth');
      const attaching = Promise.resolve(this.#datapath.attach?.({ id, hostIfindex: host.ifindex }));
      attaching.then(() => mark('attach'), () => undefined);
      undo.push(async () => {
        await attaching.catch(() => undefined);
        await this.#datapath.detach?.(id);
      });
      const [pod] = await Promise.all([
        this.#plumbPod(request, address, host.mac).then((link) => (mark('pod'), link)),
        Promise.resolve()
          .then(() => prepareHostLink(this.#hostNetlink(), hostIfname))
          .then(() => this.#hostNetlink().setLink(host.ifindex, { up: true }))
          .then(() => this.#hostNetlink().replaceRoute({ dst: `${address}/32`, dev: host.ifindex, scope: 'link' }))
          .then(() => mark('host')),
        policy,
        attaching,
      ]);
      mark('plumbed');

      const endpoint: Endpoint = {
        id,
        containerId: request.containerId,
        ifname: request.ifname,
        netns: request.netns,
        ipv4: address,
        mac: pod.mac,
        hostIfname,
        hostIfindex: host.ifindex,
        hostMac: host.mac,
        identity,
        labels,
        podName: request.podName,
        namespace,
        ...(request.workload ? { workload: { kind: request.workload.kind, name: request.workload.name } } : {}),
        ...(request.ports && request.ports.length > 0 ? { ports: request.ports.map((p) => ({ name: p.name, port: p.port, protocol: p.protocol })) } : {}),
        ...(request.containers ? { containers: request.containers.map(copyContainer) } : {}),
        createdAt: new Date().toISOString(),
      };
      await this.#store.put(this.#storeKey(key), endpoint, { expectedRevision: 0 });
      mark('stored');
      undo.push(() => this.#store.delete(this.#storeKey(key)));
      this.#ipcache.upsert(localIpcacheEntry(endpoint));
      undo.push(async () => {
        this.#ipcache.delete(`${endpoint.ipv4}/32`);
      });
      const revision = this.table.upsert(endpoint);
      undo.push(async () => {
        this.table.delete(key);
        await this.#reconciler.attempted();
      });
      // This endpoint's own attempt decides: another endpoint that keeps failing must not hold it up.
      await Promise.all([this.#reconciler.attempted(revision), this.#ipcache.synced()]);
      const status = this.#reconciler.status(key);
      if (status?.state !== 'done') throw new EndpointError('ERR_DATAPATH', `realizing endpoint ${endpoint.id}: ${status?.error ?? 'not realized'}`);
      mark('realized');
      this.#log.info({ endpoint: endpoint.id, container: request.containerId, ip: address, host: hostIfname, ms }, 'endpoint added');
      return endpoint;
    } catch (error) {
      for (const step of undo.reverse()) {
        try {
          await step();
        } catch (undoError) {
          this.#log.warn({ err: undoError, container: request.containerId }, 'undoing a failed endpoint add');
        }
      }
      this.#netnsIds.delete(key);
      throw error;
    } finally {
      this.#reservedIds.delete(id);
      ended?.();
      this.#prepareSlots();
    }
  }

  /**
   * New labels for an endpoint: a new identity when they differ in what counts, its policy
   * recomputed (only the entries that change are written), the ipcache updated, and its endpoint
   * map entry rewritten in one update (the programs stay attached throughout).
   */
  async updateLabels(idOrKey: string, labels: Record<string, string>): Promise<Endpoint> {
    // A change takes an exact name: no prefix of a container id.
    const found = this.find(idOrKey);
    const key = containerInterfaceKey(found.containerId, found.ifname);
    return this.#serialize(key, async () => {
      const endpoint = this.table.get(key);
      if (!endpoint) throw new EndpointError('ERR_ENDPOINT_NOT_FOUND', `no endpoint ${idOrKey}`);
      return this.#reidentify(key, endpoint, labels);
    });
  }

  /**
   * The pod's containers as they are now (a CRI integration calls this as containers come and go):
   * only the record changes; nothing of the datapath depends on them. `undefined`: unknown again.
   */
  async updateContainers(idOrKey: string, containers: EndpointContainer[] | undefined): Promise<Endpoint> {
    const found = this.find(idOrKey);
    const key = containerInterfaceKey(found.containerId, found.ifname);
    return this.#serialize(key, async () => {
      const endpoint = this.table.get(key);
      if (!endpoint) throw new EndpointError('ERR_ENDPOINT_NOT_FOUND', `no endpoint ${idOrKey}`);
      const { containers: _old, ...rest } = endpoint;
      const updated: Endpoint = containers ? { ...rest, containers: containers.map(copyContainer) } : rest;
      await this.#store.put(this.#storeKey(key), updated);
      this.table.upsert(updated);
      return updated;
    });
  }

  /**
   * The labels of `namespace` changed: its endpoints on this node move to the identities their
   * labels now make, one at a time, each as updateLabels() would move it.
   */
  async namespaceChanged(namespace: string): Promise<void> {
    const keys = this.list()
      .filter((ep) => (ep.namespace ?? DEFAULT_NAMESPACE) === namespace)
      .map((ep) => containerInterfaceKey(ep.containerId, ep.ifname));
    for (const key of keys) {
      await this.#serialize(key, async () => {
        const endpoint = this.table.get(key);
        if (endpoint) await this.#reidentify(key, endpoint, endpoint.labels);
      });
    }
  }

  async #reidentify(key: string, endpoint: Endpoint, labels: Record<string, string>): Promise<Endpoint> {
    const identity = await this.#allocateIdentity({ labels, namespace: endpoint.namespace });
    const updated: Endpoint = { ...endpoint, labels, identity };
    try {
      await this.#store.put(this.#storeKey(key), updated);
    } catch (error) {
      await this.#identities.release(identity);
      throw error;
    }
    await this.#policy?.addEndpoint(updated.id, this.#securityLabels(updated), updated.ports);
    this.#ipcache.upsert(localIpcacheEntry(updated));
    const revision = this.table.upsert(updated);
    await Promise.all([this.#reconciler.attempted(revision), this.#ipcache.synced()]);
    const status = this.#reconciler.status(key);
    // The record holds the new identity: a failed swap keeps being retried and is reported.
    if (status?.state === 'error') this.#log.warn({ endpoint: updated.id, err: status.error }, 'programs for the new identity not attached yet; retrying');
    await this.#identities.release(endpoint.identity);
    if (identity !== endpoint.identity) this.#log.info({ endpoint: updated.id, from: endpoint.identity, to: identity }, 'endpoint identity changed');
    return updated;
  }

  /** CNI DEL: idempotent; deleting what does not exist succeeds. */
  delete(containerId: string, ifname: string): Promise<boolean> {
    return this.#serialize(containerInterfaceKey(containerId, ifname), () => this.#delete(containerId, ifname));
  }

  async #delete(containerId: string, ifname: string): Promise<boolean> {
    const key = containerInterfaceKey(containerId, ifname);
    const endpoint = this.table.get(key);
    if (endpoint) {
      this.#ipcache.delete(`${endpoint.ipv4}/32`);
      this.table.delete(key);
      await this.#reconciler.attempted();
      this.#policy?.removeEndpoint(endpoint.id);
      await this.#hostNetlink().deleteLink(endpoint.hostIfname);
      this.#netnsIds.delete(key);
      // Its id is the next add's now.
      this.#prepareSlots();
    } else {
      // No record (an agent killed during the add, a store that lost it): what the kernel still
      // has for the container goes all the same, so a DEL always leaves nothing behind.
      const link = await this.#hostNetlink().link(hostInterfaceName(containerId, ifname));
      if (link && isEndpointLink(link)) {
        await this.#hostNetlink().deleteLink(link.ifindex);
        this.#log.warn({ container: containerId, ifname, link: link.name }, 'deleted the interface of an endpoint the agent had no record of');
      }
    }
    await this.#store.delete(this.#storeKey(key));
    await this.#ipam.release(key);
    if (endpoint) await this.#identities.release(endpoint.identity);
    if (endpoint) this.#log.info({ endpoint: endpoint.id, container: containerId }, 'endpoint deleted');
    return endpoint !== undefined;
  }

  /**
   * The veth pair of an add, its host end marked as the agent's (its alias) in the same request.
   * A host end of the same name that the agent marked, but that no endpoint has, is what an agent
   * killed during an add left: it is removed and the pair made anew. Any other interface of that
   * name is someone else's and is refused (EEXIST).
   */
  async #createVeth(key: string, hostIfname: string, request: AddEndpointRequest, mtu: number): Promise<Link> {
    const spec = { name: hostIfname, peerName: request.ifname, peerNetns: request.netns, mtu, peerMtu: mtu, group: ENDPOINT_LINK_GROUP };
    return this.#takingOverStale(hostIfname, request, async () => {
      const link = await this.#hostNetlink().createVeth(spec);
      // For people reading `ip link`; the group (set with the link) is what the agent goes by.
      await this.#hostNetlink().setLink(link.ifindex, { alias: endpointLinkAlias(key) });
      return link;
    });
  }

  /**
   * Runs `name`, which gives a host end the name `hostIfname`. On EEXIST from a host end of that
   * name the agent marked but no endpoint has (what an interrupted add left), removes that link
   * and runs it again; any other EEXIST is someone else's link and stands.
   */
  async #takingOverStale<T>(hostIfname: string, request: AddEndpointRequest, name: () => Promise<T>): Promise<T> {
    try {
      return await name();
    } catch (error) {
      if (!NetlinkError.is(error, 'EEXIST')) throw error;
      const stale = await this.#hostNetlink().link(hostIfname);
      if (!stale || !isEndpointLink(stale) || [...this.table.all()].some((ep) => ep.hostIfname === hostIfname)) throw error;
      this.#log.warn({ link: hostIfname, container: request.containerId }, 'removing the interface an interrupted add left for this container');
      await this.#hostNetlink().deleteLink(stale.ifindex);
      return name();
    }
  }

  /**
   * The add's pair from the link pool, its programs already attached; undefined when the pool has
   * none ready or the take failed (the pod end could not move in, the host end's name is held by a
   * link not the agent's, …: the link is deleted, never offered again): the add then makes its
   * pair as without a pool, and fails as it would without one. In
   * order, each step one request, so a crash between any two leaves what a start removes: the pod
   * end moved into the pod's namespace under its name (the host end still in the pool's group: a
   * start removes pool links); the host end renamed while down, put in the endpoints' group and
   * given its alias (now an endpoint's link without an endpoint: the start's sweep, or an add of
   * the same container, removes it); the pinned programs handed to the endpoint's id (pins of an
   * id without an endpoint: swept too).
   */
  async #takePooled(id: number, key: string, hostIfname: string, request: AddEndpointRequest, mtu: number): Promise<Link | undefined> {
    const pooled = this.#pool?.take();
    if (!pooled) return undefined;
    const nl = this.#hostNetlink();
    let taken = false;
    try {
      await nl.setLink(pooled.peerIfindex, { netns: request.netns, name: request.ifname, mtu });
      await this.#takingOverStale(hostIfname, request, () =>
        nl.setLink(pooled.ifindex, { name: hostIfname, group: ENDPOINT_LINK_GROUP, alias: endpointLinkAlias(key), mtu }),
      );
      this.#datapath.adoptPooled!(pooled.name, { id, hostIfindex: pooled.ifindex });
      taken = true;
      return linkOf(pooled, hostIfname, mtu);
    } catch (error) {
      // By index: whatever name or group the take had given it. Should even this fail, the link
      // is the pool's or a marked one no endpoint has, which the pair's creation takes over.
      await nl.deleteLink(pooled.ifindex).catch(() => undefined);
      this.#log.warn({ err: error, pool: pooled.name, container: request.containerId }, 'taking a pool link failed; making the pair instead');
      return undefined;
    } finally {
      this.#pool!.release(pooled.name, { failed: !taken });
    }
  }

  /**
   * What an agent killed in the middle of adds or deletes left in the kernel and the store, with
   * no endpoint to own it: the host ends of pod links it made (deleting one deletes its pod end,
   * which held the pod's address), addresses still allocated to them, pinned programs and policy
   * maps of endpoint ids nobody has. Runs at start, before the API takes an add, so nothing here
   * can be half-made by this agent.
   */
  async #sweepOrphans(): Promise<void> {
    const endpoints = [...this.table.all()];
    const hostIfnames = new Set(endpoints.map((ep) => ep.hostIfname));
    const links = (await this.#hostNetlink().links()).filter((link) => isEndpointLink(link) && !hostIfnames.has(link.name));
    for (const link of links) await this.#hostNetlink().deleteLink(link.ifindex);
    const keys = new Set(endpoints.map((ep) => containerInterfaceKey(ep.containerId, ep.ifname)));
    const owners = (this.#ipam.owners?.() ?? []).filter((owner) => !keys.has(owner));
    for (const owner of owners) await this.#ipam.release(owner);
    const ids = new Set(endpoints.map((ep) => ep.id));
    const pins = this.#datapath.sweep?.(ids) ?? [];
    const policyMaps = this.#policy?.sweepEndpoints?.(ids) ?? [];
    this.#orphansRemoved += links.length + owners.length + pins.length + policyMaps.length;
    if (links.length + owners.length + pins.length + policyMaps.length > 0) {
      this.#log.warn(
        { links: links.map((l) => l.name), addresses: owners, pinnedEndpoints: pins, policyMaps },
        'removed what interrupted adds and deletes left behind',
      );
    }
  }

  /** How many orphans (links, addresses, pins, policy maps) starts have removed. */
  get orphansRemoved(): number {
    return this.#orphansRemoved;
  }

  /**
   * A pod's namespace must be a network namespace of its own: never the agent's (the node's
   * interfaces and routes would be the pod's), the host's, or another pod's. Namespaces are
   * compared by identity (device and inode of the nsfs file), not by path, so a bind mount or a
   * /proc/<pid>/ns/net path of the same namespace is caught too.
   */
  #checkNetns(request: AddEndpointRequest): string {
    const refuse = (why: string): never => {
      // Quoted only when it holds something a log line should not carry raw (a newline).
      const path = /^[\w./:-]+$/.test(request.netns) ? request.netns : JSON.stringify(request.netns);
      throw new EndpointError('ERR_BAD_NETNS', `network namespace ${path} ${why}`);
    };
    let requested: string;
    try {
      requested = namespaceIdentity(request.netns);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      return refuse(code === 'ENOENT' || code === 'ENOTDIR' ? 'does not exist' : `cannot be read (${code})`);
    }
    if (requested === namespaceIdentity('/proc/self/ns/net')) refuse("is the agent's own network namespace, not a pod's");
    // Where the agent may not read init's namespace (a sandbox), it cannot open it either.
    if (requested === tryNamespaceIdentity('/proc/1/ns/net')) refuse("is the host's network namespace, not a pod's");
    // Also a second interface into one pod: its plumbing (default route, gateway) is the first's.
    // The identities were taken when each endpoint came; a match is confirmed on its path, since
    // nsfs reuses the numbers of namespaces that are gone.
    for (const [other, taken] of this.#netnsIds) {
      if (taken.identity !== requested || tryNamespaceIdentity(taken.path) !== requested) continue;
      const endpoint = this.table.get(other);
      refuse(endpoint ? `is the network namespace of endpoint ${endpoint.id} (container ${endpoint.containerId})` : `is the network namespace of ${other}, being added`);
    }
    try {
      // setns(CLONE_NEWNET) is the test of what the file is: it refuses anything else with EINVAL.
      Netlink.open({ netns: request.netns }).close();
    } catch (error) {
      if (NetlinkError.is(error, 'EINVAL')) refuse('is not a network namespace');
      throw error;
    }
    return requested;
  }

  /** The identity for these labels; labels that are no valid labels are the request's fault (ERR_BAD_LABELS). */
  async #allocateIdentity(endpoint: { labels: Record<string, string>; namespace?: string }): Promise<number> {
    try {
      return (await this.#identities.allocate(this.#securityLabels(endpoint))).id;
    } catch (error) {
      if (error instanceof InvalidLabelsError) throw new EndpointError('ERR_BAD_LABELS', `endpoint labels: ${error.message}`, { cause: error });
      throw error;
    }
  }

  /** The labels an endpoint's identity derives from: its pod labels, its namespace and that namespace's labels. */
  #securityLabels(endpoint: { labels: Record<string, string>; namespace?: string }): Labels {
    const namespace = endpoint.namespace ?? DEFAULT_NAMESPACE;
    return podLabels({ namespace, labels: endpoint.labels, namespaceLabels: this.#namespaceLabels(namespace) });
  }

  /** The `count` lowest ids #reserveId would hand out next, in order. */
  #nextIds(count: number): number[] {
    const used = new Set([...this.table.all()].map((ep) => ep.id));
    const ids: number[] = [];
    for (let id = 1; id <= MAX_ENDPOINT_ID && ids.length < count; id++) {
      if (!used.has(id) && !this.#reservedIds.has(id)) ids.push(id);
    }
    return ids;
  }

  /**
   * Has the policy manager prepare the next adds' policy map slots, once no add is in flight (its
   * outer-map writes would compete with an add's for the kernel and libuv's thread pool).
   */
  #prepareSlots(): void {
    if (!this.#policy?.prepareSlots || this.#slotsStopped || this.#reservedIds.size > 0) return;
    if (this.#preparingSlots) {
      this.#slotsAgain = true;
      return;
    }
    this.#preparingSlots = true;
    this.#slotsAgain = false;
    void this.#policy.prepareSlots((count) => this.#nextIds(count)).finally(() => {
      this.#preparingSlots = false;
      if (this.#slotsAgain) this.#prepareSlots();
    });
  }

  /** The lowest id neither in the table nor held by an add in progress (released by that add). */
  #reserveId(): number {
    const [id] = this.#nextIds(1);
    if (id === undefined) throw new EndpointError('ERR_ENDPOINTS_EXHAUSTED', `this node already has ${MAX_ENDPOINT_ID} endpoints`);
    this.#reservedIds.add(id);
    return id;
  }

}

/** A namespace file's identity (`device:inode`); throws what stat(2) said when there is none. */
function namespaceIdentity(path: string): string {
  const stat = statSync(path);
  return `${stat.dev}:${stat.ino}`;
}

function tryNamespaceIdentity(path: string): string | undefined {
  try {
    return namespaceIdentity(path);
  } catch {
    return undefined;
  }
}

/** The fields of a container the record keeps (no more than the API took). */
function copyContainer(container: EndpointContainer): EndpointContainer {
  return { id: container.id, ...(container.name ? { name: container.name } : {}), ...(container.image ? { image: container.image } : {}) };
}

function sameEndpoint(a: Endpoint, b: Endpoint): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

function localIpcacheEntry(endpoint: Endpoint): IpcacheEntry {
  return { prefix: `${endpoint.ipv4}/32`, identity: endpoint.identity, source: 'local-endpoint' };
}


/** A taken pool link's host end as the add goes on with it (down, renamed, in the endpoints' group). */
function linkOf(pooled: PoolLink, name: string, mtu: number): Link {
  return { ifindex: pooled.ifindex, name, mac: pooled.mac, mtu, up: false, noarp: false, kind: 'veth', alias: undefined, group: ENDPOINT_LINK_GROUP };
}
