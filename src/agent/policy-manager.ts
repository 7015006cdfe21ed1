/**
 * Network policy on one node: policies live in the shared store (every node enforces the same
 * rules), identities come from the allocator, and the policy engine turns both into per-endpoint
 * map entries. Every change — a policy, an identity, an endpoint — reaches the kernel as the
 * diff it causes, never as a rewrite.
 *
 * The policy revision is a store revision, so it means the same on every node: an import on one
 * node answers with its transaction's revision, and another node enforces that revision once it
 * has applied every policy and identity change of the store up to it and written its endpoints'
 * maps. (The engine's own revision is a node-local change counter and is not shown.)
 *
 * The engine's diffs are written as they come (the fast path). What that cannot fix — a write
 * that failed, an entry changed behind the agent's back — is a reconciler's: it compares an
 * endpoint's map with the engine's entries and writes only the difference, retrying with backoff,
 * and on every refresh does so for every endpoint.
 * @module
 */
import type { Logger } from 'pino';
import type { IdentityAllocator, Labels } from '../identity/index.ts';
import {
  PolicyEngine,
  diffEntries,
  dnsVerdict,
  expandFqdnPeers,
  hasFqdnPeers,
  parsePolicyFile,
  policyKeyString,
  expandServicePeers,
  hasServicePeers,
  policyKey,
  reservedIdentityInfos,
  ruleCidrPrefixes,
  ruleKey,
  tracePolicy,
  type DnsVerdict,
  type EntriesDiff,
  type FqdnSelector,
  type PolicyIssue,
  type PolicyKey,
  type PolicyRule,
  type PolicyUpdate,
  type ServiceResolver,
  type SkippedDocument,
  type TraceQuery,
  type TraceResult,
} from '../policy/index.ts';
import { Reconciler, Table, type ReconcilerHealth } from '../statedb/index.ts';
import { StoreError, type StateStore, type StoreWatch, type WatchEvent } from '../store/index.ts';
import { namedPortsSchema, type NamedPort } from '../loadbalancer/index.ts';
import { ENDPOINTS_PREFIX, type Endpoint } from './endpoint.ts';
import { followPrefix } from './follow.ts';
import type { Ipcache } from './ipcache.ts';

/** The per-endpoint policy maps (src/datapath implements it). */
export interface EndpointPolicyDatapath {
  /**
   * Creates (or adopts) the endpoint's policy map and makes it visible to the datapath, resolving
   * once it is; entries may be written meanwhile.
   */
  install(endpointId: number): Promise<void>;
  apply(endpointId: number, diff: EntriesDiff): void;
  /** What the endpoint's map holds in the kernel (after a restart: what the last agent left). */
  entries(endpointId: number): { key: PolicyKey; deny: boolean; cookie: number }[];
  remove(endpointId: number): void;
  /** Endpoint ids whose maps are installed for the datapath. */
  installedIds?(): number[];
  /** How many spare slots prepareSpares() keeps ready for the next adds' ids. */
  readonly spareSlots?: number;
  /** Installs empty maps ahead for these ids (the next adds'), so that their adds skip the install. */
  prepareSpares?(ids: readonly number[]): Promise<void>;
}

const POLICY_PREFIX = 'policies/';

/** An endpoint whose policy map this node writes; see PolicyManager's endpoint table. */
interface EndpointPolicySync {
  id: number;
  generation: number;
}

/** `source:key` → value, the engine's view of labels. */
export function labelMap(labels: Labels): Record<string, string> {
  return Object.fromEntries(labels.toArray().map((l) => [`${l.source}:${l.key}`, l.value]));
}

export interface ImportResult {
  /** Rule keys written (kind/namespace/name[#i]). */
  rules: string[];
  /** The store revision of the write: `policy wait` takes it on any node. This node enforces it. */
  revision: number;
  /** Accepted with a change (e.g. a clusterwide policy's namespace dropped). */
  warnings: PolicyIssue[];
  /** Documents of other kinds (Deployments, Services, …) the file also held, left out. */
  skipped: SkippedDocument[];
}

/** How often a wait compares store listings with what this node applied (see #catchUp). */
const CATCH_UP_INTERVAL_MS = 100;
const WAIT_POLL_MS = 20;

/**
 * A watch's events grouped by revision: one transaction's writes arrive as one batch, so a
 * multi-document import is applied (and counted as applied) whole. Both stores hand a revision's
 * events to the watcher in one synchronous go (the local store when it commits; etcd in one watch
 * response), so a batch ends at an event of another revision or when nothing more is queued.
 */
export async function* watchByRevision<T>(watch: StoreWatch<T>): AsyncGenerator<WatchEvent<T>[], void, undefined> {
  const nothingQueued = Symbol('nothing queued');
  let pending: Promise<IteratorResult<WatchEvent<T>, undefined>> | undefined;
  let batch: WatchEvent<T>[] = [];
  for (;;) {
    pending ??= watch.next();
    // A queued event's promise is already settled and so wins the race against the marker
    // (reactions run in the order they were registered); an empty queue loses, and its promise
    // stays pending for the next round.
    const result = batch.length === 0 ? await pending : await Promise.race([pending, Promise.resolve(nothingQueued)]);
    if (result === nothingQueued) {
      yield batch;
      batch = [];
      continue;
    }
    pending = undefined;
    if (result.done) {
      if (batch.length > 0) yield batch;
      return;
    }
    if (batch.length > 0 && result.value.revision !== batch[0].revision) {
      yield batch;
      batch = [];
    }
    batch.push(result.value);
  }
}

/** DNS verdicts kept at once; past it they are all computed again. */
const DNS_VERDICTS_MAX = 16_384;

export class PolicyManager {
  readonly engine = new PolicyEngine({ identities: reservedIdentityInfos() });
  readonly #dnsVerdicts: { generation: number; ipcache: number; verdicts: Map<string, DnsVerdict> } = { generation: -1, ipcache: -1, verdicts: new Map() };
  readonly #store: StateStore;
  readonly #identities: IdentityAllocator;
  readonly #ipcache: Ipcache;
  readonly #maps: EndpointPolicyDatapath;
  readonly #log: Logger;
  readonly #abort = new AbortController();
  #unsubscribe: (() => void) | undefined;
  #loop: Promise<void> | undefined;
  #peersLoop: Promise<void> | undefined;
  /** Store revision up to which every policy change is in the engine and the maps. */
  #appliedStoreRevision = 0;
  #storeWaiters: { revision: number; resolve: () => void }[] = [];
  readonly #changes = { success: 0, fail: 0 };
  /** Store key → modRevision of every rule applied: what #catchUp compares a listing with. */
  readonly #ruleRevisions = new Map<string, number>();
  /** CIDR prefixes the current rules use, with the identity allocated for each. */
  readonly #cidrs = new Map<string, number>();
  /**
   * Endpoints whose map write failed, with the last revision they fully enforced. Later diffs
   * build on what the engine believes the map holds, so such a map stays wrong (and its revision
   * stays put) until the endpoint is added again, which rewrites it from the kernel's content.
   */
  readonly #failedAt = new Map<number, number>();
  readonly #changeListeners = new Set<() => void>();
  /** Rules as written that name services (toServices), by rule key: the engine holds their expansion. */
  readonly #serviceRules = new Map<string, PolicyRule>();
  /** Until the services module sets its resolver, a service peer has no backends. */
  #resolveServices: ServiceResolver = () => ({ endpoints: [], cidrs: [] });
  /** Rules as written that select by name (toFQDNs), by rule key: the engine holds their expansion. */
  readonly #fqdnRules = new Map<string, PolicyRule>();
  /** Until the DNS proxy module sets it, a name has no addresses. */
  #resolveFqdn: (selector: FqdnSelector) => readonly string[] = () => [];
  /**
   * The endpoints whose maps this node writes. A generation other than 0 asks the reconciler to
   * compare the map with the engine's entries and write the difference (the fast path failed).
   */
  readonly #endpointTable = new Table<EndpointPolicySync>('endpoint-policy', (o) => String(o.id), { equals: (a, b) => a.generation === b.generation });
  readonly #reconciler: Reconciler<EndpointPolicySync, number>;
  #generation = 0;

  constructor(options: {
    store: StateStore;
    identities: IdentityAllocator;
    ipcache: Ipcache;
    maps: EndpointPolicyDatapath;
    log: Logger;
    /** How often every endpoint's map is compared with its policy and repaired; 0: never. */
    refreshIntervalMs?: number;
  }) {
    this.#store = options.store;
    this.#identities = options.identities;
    this.#ipcache = options.ipcache;
    this.#maps = options.maps;
    this.#log = options.log;
    this.#reconciler = new Reconciler<EndpointPolicySync, number>({
      name: 'endpoint-policy',
      table: this.#endpointTable,
      refreshIntervalMs: options.refreshIntervalMs,
      // The policy retries quickly: an endpoint waits for it in `policy wait`.
      retryMaxMs: 5_000,
      ops: {
        // Generation 0: the fast path wrote the map (addEndpoint); there is nothing to compare.
        update: (o) => (o.generation === 0 ? undefined : this.#sync(o.id)),
        // removeEndpoint removes the map itself.
        delete: () => undefined,
        // The entries are read in equal(), one endpoint at a time, not all held at once.
        list: () => [...this.#endpointTable.all()].map((o) => [String(o.id), o.id] as const),
        equal: (o) => {
          const diff = this.#kernelDiff(o.id);
          return diff.upserts.length === 0 && diff.deletes.length === 0;
        },
        repair: (o) => this.#sync(o.id),
      },
      onError: (key, error, attempts) => {
        const endpointId = Number(key);
        if (Number.isInteger(endpointId) && !this.#failedAt.has(endpointId)) {
          this.#failedAt.set(endpointId, this.#appliedStoreRevision);
          this.#changed();
        }
        this.#log.warn({ err: error, endpoint: key, attempts }, 'writing policy map failed; will retry');
      },
      onRefresh: (_kind, key) => this.#log.info({ endpoint: key }, 'policy map drifted from the endpoint\'s policy; repaired'),
    });
  }

  /** The endpoint policy reconciler's health. */
  health(): ReconcilerHealth {
    return this.#reconciler.health();
  }

  /** What the endpoint's map lacks and holds too much of, compared with its policy. */
  #kernelDiff(endpointId: number): EntriesDiff {
    const installed = this.#maps.entries(endpointId);
    const have = new Map(installed.map((e) => [policyKeyString(e.key), { ...e, ruleKeys: [] }]));
    const want = this.engine.endpointPolicy(endpointId)?.entries ?? new Map();
    return diffEntries(have, want);
  }

  /**
   * Makes the endpoint's map hold its policy, whatever it holds now. Deletes go first: a map
   * that filled up takes the new entries only once the old are gone.
   */
  #sync(endpointId: number): void {
    if (this.engine.endpointPolicy(endpointId) === undefined) return;
    const diff = this.#kernelDiff(endpointId);
    if (diff.deletes.length > 0) this.#maps.apply(endpointId, { upserts: [], deletes: diff.deletes });
    this.#maps.apply(endpointId, { upserts: diff.upserts, deletes: [] });
    if (this.#failedAt.delete(endpointId)) {
      this.#log.info({ endpoint: endpointId, revision: this.#appliedStoreRevision }, 'policy map repaired; the endpoint enforces the current revision');
      this.#changed();
    }
  }

  /** The policy revision this node has applied: a store revision. */
  get revision(): number {
    return this.#appliedStoreRevision;
  }

  async start(): Promise<void> {
    for (const identity of this.#identities.list()) this.#apply(this.engine.upsertIdentity(identity.id, labelMap(identity.labels)));
    this.#unsubscribe = this.#identities.subscribe((change) => {
      if (change.type === 'upsert') this.#apply(this.engine.upsertIdentity(change.identity.id, labelMap(change.identity.labels)));
      else this.#apply(this.engine.deleteIdentity(change.identity.id));
      // The allocator moves its revision after telling us, so listeners must read it later.
      this.#changed();
    });
    const { revision, entries } = await this.#store.list<PolicyRule>(POLICY_PREFIX);
    this.#applyRules(entries.map((e) => e.value), []);
    for (const entry of entries) this.#ruleRevisions.set(entry.key, entry.modRevision);
    this.#appliedStoreRevision = revision;
    // Every endpoint's named ports, this node's and others' (their records carry them): what a
    // named port of an egress rule stands for. A record whose ports are not what an endpoint add
    // accepts gives none.
    const peers = await followPrefix<Endpoint>(this.#store, ENDPOINTS_PREFIX, {
      signal: this.#abort.signal,
      onEnd: (error, compacted) => this.#log.error({ err: error, compacted }, 'endpoints watch ended; named ports of egress rules are stale'),
      apply: (event) => {
        const parsed = event.type === 'put' && event.value.ports !== undefined ? namedPortsSchema.safeParse(event.value.ports) : undefined;
        if (parsed?.success === false) this.#log.warn({ endpoint: event.key }, 'endpoint record with malformed ports; its named ports are ignored');
        this.#apply(this.engine.setPeerPorts(event.key, parsed?.success ? parsed.data : undefined));
      },
    });
    this.#peersLoop = peers.loop;
    this.#reconciler.start();
    const watch = this.#store.watch<PolicyRule>(POLICY_PREFIX, { afterRevision: revision, signal: this.#abort.signal });
    this.#loop = (async () => {
      try {
        for await (const batch of watchByRevision(watch)) this.#onBatch(batch);
      } catch (error) {
        if (!this.#abort.signal.aborted) this.#log.error({ err: error, compacted: StoreError.is(error, 'ERR_STORE_COMPACTED') }, 'policy watch ended; policies are stale');
      }
    })();
  }

  async stop(): Promise<void> {
    this.#abort.abort();
    this.#unsubscribe?.();
    await this.#loop;
    await this.#peersLoop;
    await this.#reconciler.stop();
  }

  /** One store revision's policy changes: applied together, then the revision counts as applied. */
  #onBatch(events: WatchEvent<PolicyRule>[]): void {
    const upserts: PolicyRule[] = [];
    const deletes: string[] = [];
    for (const event of events) {
      if (event.type === 'put') {
        upserts.push(event.value);
        this.#ruleRevisions.set(event.key, event.revision);
      } else {
        deletes.push(event.key.slice(POLICY_PREFIX.length));
        this.#ruleRevisions.delete(event.key);
      }
    }
    this.#applyRules(upserts, deletes);
    this.#advance(events[0].revision);
  }

  #advance(revision: number): void {
    if (revision <= this.#appliedStoreRevision) return;
    this.#appliedStoreRevision = revision;
    this.#changed();
    const waiting = this.#storeWaiters;
    this.#storeWaiters = [];
    for (const waiter of waiting) {
      if (waiter.revision <= revision) waiter.resolve();
      else this.#storeWaiters.push(waiter);
    }
  }

  /**
   * The watch moves the applied revision only when a policy changes, while every store write
   * (endpoints, identities, nodes) raises the store's revision: a revision another node reports
   * may lie past the last policy change. A fresh listing equal to what this node applied proves
   * that nothing changed up to the listing's revision.
   */
  async #catchUp(): Promise<void> {
    const { revision, entries } = await this.#store.list<PolicyRule>(POLICY_PREFIX);
    if (revision <= this.#appliedStoreRevision) return;
    if (entries.length !== this.#ruleRevisions.size) return;
    if (entries.every((e) => this.#ruleRevisions.get(e.key) === e.modRevision)) this.#advance(revision);
  }

  /**
   * Who resolves `toServices` peers into backends (the services module). Rules naming services
   * are expanded anew at once and on each servicesChanged().
   */
  setServiceResolver(resolve: ServiceResolver): void {
    this.#resolveServices = resolve;
    this.servicesChanged();
  }

  /** Services or their backends changed: rules naming services whose expansion differs are recomputed. */
  servicesChanged(): void {
    if (this.#serviceRules.size > 0) this.#applyRules([...this.#serviceRules.values()], []);
  }

  /**
   * Who knows the addresses of names (the FQDN cache of the DNS proxy module). Rules with
   * `toFQDNs` are expanded anew at once and on each fqdnsChanged().
   */
  setFqdnResolver(resolve: (selector: FqdnSelector) => readonly string[]): Promise<void> {
    this.#resolveFqdn = resolve;
    return this.fqdnsChanged();
  }

  /**
   * Names gained or lost addresses: rules with `toFQDNs` are recomputed. Resolves once the
   * endpoints' maps and the ipcache hold the result, so an answer held until then reaches a pod
   * whose policy already allows the address.
   */
  async fqdnsChanged(): Promise<void> {
    if (this.#fqdnRules.size === 0) return;
    this.#applyRules([...this.#fqdnRules.values()], []);
    await this.#ipcache.synced();
  }

  /**
   * Calls `listener` synchronously whenever a `dnsVerdict` may have changed (the engine's
   * generation, the ipcache): a DNS proxy in another thread drops what it kept before going on.
   */
  onDnsInputsChange(listener: () => void): () => void {
    const offEngine = this.engine.onChange(listener);
    const offIpcache = this.#ipcache.table.onWrite(listener);
    return () => {
      offEngine();
      offIpcache();
    };
  }

  /**
   * What endpoint `endpointId`'s policy lets it ask the resolver at `address` on `port`: the
   * question its DNS proxy asks. The resolver's identity is the ipcache's (a pod, a node, a CIDR
   * identity), else the world's.
   */
  dnsVerdict(endpointId: number, address: string, port: number, protocol: 'UDP' | 'TCP'): DnsVerdict {
    // The DNS proxy asks this per query: the verdict is kept while nothing it reads has changed
    // (the engine's rules, identities and endpoints, and the ipcache naming the resolver).
    const cache = this.#dnsVerdicts;
    if (cache.generation !== this.engine.generation || cache.ipcache !== this.#ipcache.table.revision || cache.verdicts.size >= DNS_VERDICTS_MAX) {
      cache.generation = this.engine.generation;
      cache.ipcache = this.#ipcache.table.revision;
      cache.verdicts.clear();
    }
    const key = `${endpointId}|${address}|${port}|${protocol}`;
    const known = cache.verdicts.get(key);
    if (known) return known;
    const own = this.#ipcache.table.get(address.includes(':') ? `${address}/128` : `${address}/32`);
    const identity = own?.identity ?? this.engine.cache.identityForIp(address);
    const verdict = dnsVerdict(this.engine, endpointId, identity, port, protocol);
    cache.verdicts.set(key, verdict);
    return verdict;
  }

  /** `rule` with its services' backends and its names' addresses, as the engine gets it. */
  #expand(rule: PolicyRule): PolicyRule {
    const key = ruleKey(rule);
    const services = hasServicePeers(rule);
    const fqdns = hasFqdnPeers(rule);
    if (services) this.#serviceRules.set(key, rule);
    else this.#serviceRules.delete(key);
    if (fqdns) this.#fqdnRules.set(key, rule);
    else this.#fqdnRules.delete(key);
    const expanded = services ? expandServicePeers(rule, this.#resolveServices) : rule;
    return fqdns ? expandFqdnPeers(expanded, this.#resolveFqdn) : expanded;
  }

  #applyRules(written: PolicyRule[], deletes: string[]): void {
    for (const key of deletes) {
      this.#serviceRules.delete(key);
      this.#fqdnRules.delete(key);
    }
    const upserts = written.map((rule) => this.#expand(rule));
    if (deletes.length > 0) this.#apply(this.engine.deleteRules(deletes));
    if (upserts.length > 0) {
      // CIDR peers need identities before their rules resolve, so selectors can select them.
      for (const prefix of ruleCidrPrefixes(upserts)) this.#ensureCidr(prefix);
      this.#apply(this.engine.upsertRules(upserts));
    }
    this.#releaseUnusedCidrs();
  }

  #ensureCidr(prefix: string): void {
    if (this.#cidrs.has(prefix) || prefix.includes(':')) return;
    const { id, labels } = this.#identities.allocateCidr(prefix);
    this.#cidrs.set(prefix, id);
    this.#apply(this.engine.upsertIdentity(id, labelMap(labels)));
    // The ipcache is longest-prefix: pods and nodes keep their own more specific entries, and
    // their own entries of the same prefix (a /32 naming a pod or node, e.g. an explicit service
    // backend a toServices rule allows): a policy never relabels a pod or a node.
    const held = this.#ipcache.table.get(prefix);
    if (!prefix.endsWith('/0') && (held === undefined || held.source === 'cidr-policy')) this.#ipcache.upsert({ prefix, identity: id, source: 'cidr-policy' });
  }

  #releaseUnusedCidrs(): void {
    const used = new Set(ruleCidrPrefixes(this.engine.rules()));
    for (const [prefix, id] of this.#cidrs) {
      if (used.has(prefix)) continue;
      this.#cidrs.delete(prefix);
      if (this.#ipcache.table.get(prefix)?.source === 'cidr-policy') this.#ipcache.delete(prefix);
      this.#apply(this.engine.deleteIdentity(id));
      this.#identities.releaseCidr(prefix);
    }
  }

  #apply(update: PolicyUpdate): void {
    for (const [endpointId, diff] of update.endpoints) {
      try {
        this.#maps.apply(endpointId, diff);
      } catch (error) {
        if (!this.#failedAt.has(endpointId)) {
          this.#failedAt.set(endpointId, this.#appliedStoreRevision);
          this.#changed();
        }
        this.#log.error({ err: error, endpoint: endpointId, revision: this.#appliedStoreRevision }, 'writing policy map failed; the endpoint stays at its last revision until the reconciler has repaired it');
        // A new generation: the reconciler compares the map with the policy and retries.
        if (this.engine.endpointPolicy(endpointId) !== undefined) this.#endpointTable.upsert({ id: endpointId, generation: ++this.#generation });
      }
    }
  }

  /**
   * Before an endpoint's programs are attached: its map exists and holds its policy. `ports`: its
   * named ports (what a named port of an ingress rule selecting it stands for); the egress rules of
   * every endpoint know them at once, before its record reaches the store.
   */
  async addEndpoint(endpointId: number, labels: Labels, ports: readonly NamedPort[] = []): Promise<void> {
    // The outer map is written off the event loop while the entries go into the inner map.
    const installing = this.#maps.install(endpointId);
    try {
      const installed = this.#maps.entries(endpointId);
      const update = this.engine.upsertEndpoint(endpointId, labelMap(labels), ports);
      if (installed.length === 0 && !this.#failedAt.has(endpointId)) {
        if (!this.#endpointTable.get(String(endpointId))) this.#endpointTable.upsert({ id: endpointId, generation: 0 });
        this.#apply(update);
        return;
      }
      // Adopting a map a previous agent filled, or one a failed write left behind: write only what
      // differs from what the kernel holds. Other endpoints' changes (its named ports) as they come.
      this.#apply({ revision: update.revision, endpoints: new Map([...update.endpoints].filter(([id]) => id !== endpointId)) });
      this.#endpointTable.upsert({ id: endpointId, generation: 0 });
      this.#sync(endpointId);
    } finally {
      await installing;
    }
  }

  /**
   * Removes the policy maps of endpoint ids not in `keep` (left by an agent killed during an add);
   * only for a start, before endpoints are added. Returns the ids removed.
   */
  sweepEndpoints(keep: ReadonlySet<number>): number[] {
    const orphans = (this.#maps.installedIds?.() ?? []).filter((id) => !keep.has(id) && this.engine.endpointPolicy(id) === undefined);
    for (const id of orphans) this.#maps.remove(id);
    return orphans;
  }

  /**
   * While no add is in flight: installs spare policy maps for the ids `nextIds(n)` says the next
   * n adds will get, so that those adds skip the outer-map write (an RCU grace period). After the
   * start's sweepEndpoints only, which removes the spares a previous agent left.
   */
  prepareSlots(nextIds: (count: number) => number[]): Promise<void> {
    const count = this.#maps.spareSlots ?? 0;
    if (count === 0 || !this.#maps.prepareSpares) return Promise.resolve();
    return this.#maps.prepareSpares(nextIds(count)).catch((error: unknown) => this.#log.warn({ err: error }, 'preparing spare policy map slots failed; adds install their maps themselves'));
  }

  removeEndpoint(endpointId: number): void {
    this.#endpointTable.delete(String(endpointId));
    this.#apply(this.engine.deleteEndpoint(endpointId));
    if (this.#failedAt.delete(endpointId)) this.#changed();
    this.#maps.remove(endpointId);
  }

  /**
   * Validates every document first (nothing is written if one is bad), then writes all rules in
   * one store transaction, and resolves once this node's maps hold them.
   */
  async import(yaml: string, file: string): Promise<ImportResult> {
    return this.#counted(async () => {
      const { rules, warnings, skipped } = parsePolicyFile(yaml, { file });
      const { revision } = await this.#store.transaction(rules.map((rule) => ({ type: 'put' as const, key: `${POLICY_PREFIX}${ruleKey(rule)}`, value: rule })));
      await this.#storeApplied(revision);
      return { rules: rules.map(ruleKey), revision, warnings, skipped };
    });
  }

  /** Deletes a policy by kind/namespace/name (all of its specs), or one rule key. */
  async delete(key: string): Promise<{ deleted: string[]; revision: number }> {
    const keys = this.engine.rules().map(ruleKey).filter((k) => k === key || k.startsWith(`${key}#`) || policyKey(this.#rule(k)!) === key);
    if (keys.length === 0) return { deleted: [], revision: this.#appliedStoreRevision };
    return this.#counted(async () => {
      const { revision } = await this.#store.transaction(keys.map((k) => ({ type: 'delete' as const, key: `${POLICY_PREFIX}${k}` })));
      await this.#storeApplied(revision);
      return { deleted: keys, revision };
    });
  }

  /**
   * Policy changes asked of this agent (imports and deletes that changed something), by outcome:
   * a rejected file or a failed store write is a failure. Cilium's cilium_policy_change_total.
   */
  get changes(): Readonly<{ success: number; fail: number }> {
    return { ...this.#changes };
  }

  async #counted<T>(change: () => Promise<T>): Promise<T> {
    try {
      const result = await change();
      this.#changes.success++;
      return result;
    } catch (error) {
      this.#changes.fail++;
      throw error;
    }
  }

  #rule(key: string): PolicyRule | undefined {
    return this.engine.rules().find((r) => ruleKey(r) === key);
  }

  #storeApplied(revision: number): Promise<void> {
    if (this.#appliedStoreRevision >= revision) return Promise.resolve();
    return new Promise((resolve) => this.#storeWaiters.push({ revision, resolve }));
  }

  list(): { key: string; rule: PolicyRule; id: number | undefined }[] {
    return this.engine.rules().map((rule) => ({ key: ruleKey(rule), rule, id: this.engine.ruleId(ruleKey(rule)) }));
  }

  trace(query: TraceQuery): TraceResult {
    return tracePolicy(this.engine, query);
  }

  /** The policy revision an endpoint enforces; undefined for an endpoint policy does not know. */
  enforcedRevision(endpointId: number): number | undefined {
    if (this.engine.endpointPolicy(endpointId) === undefined) return undefined;
    return this.#failedAt.get(endpointId) ?? this.#appliedStoreRevision;
  }

  /** Policy revision each endpoint enforces. */
  enforcedRevisions(): Map<number, number> {
    return new Map(this.engine.endpointIds().map((id) => [id, this.#failedAt.get(id) ?? this.#appliedStoreRevision]));
  }

  /** Store revisions up to which this node has applied the policy and the identity changes. */
  progress(): { policies: number; identities: number } {
    return { policies: this.#appliedStoreRevision, identities: this.#identities.revision };
  }

  /** Endpoints that do not enforce `revision` (their map writes failed before it). */
  lagging(revision: number): number[] {
    return [...this.#failedAt].filter(([, at]) => at < revision).map(([id]) => id);
  }

  /**
   * Whether this node enforces `revision`: every policy and identity change of the store up to it
   * is applied, and every endpoint's map holds the result.
   */
  enforces(revision: number): boolean {
    return revision <= this.enforcedNodeRevision();
  }

  /** The highest revision this node enforces (what it publishes for cluster-wide waits). */
  enforcedNodeRevision(): number {
    return Math.min(this.#appliedStoreRevision, this.#identities.revision, ...this.#failedAt.values());
  }

  /**
   * Calls `listener` (synchronously, often in bursts) whenever enforcedNodeRevision() may have
   * moved; read it later than the call. Returns the unsubscribe function.
   */
  onChange(listener: () => void): () => void {
    this.#changeListeners.add(listener);
    return () => this.#changeListeners.delete(listener);
  }

  #changed(): void {
    for (const listener of this.#changeListeners) listener();
  }

  /**
   * After a policy change the identity view usually lags: its revision moves only when an
   * identity changes. One listing brings it up to the store's revision when nothing is missing,
   * so this node enforces the policy change without waiting for someone to ask. Its caller reads
   * enforcedNodeRevision() afterwards (no change is signalled).
   */
  async settle(): Promise<void> {
    if (this.#identities.revision >= this.#appliedStoreRevision) return;
    await this.#identities.catchUp();
  }

  /**
   * Resolves true once this node enforces `revision` (a store revision from any node), false
   * after `timeoutMs` or when `signal` aborts.
   */
  async waitFor(revision: number, timeoutMs: number, signal?: AbortSignal): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    let nextCatchUp = 0;
    while (!this.enforces(revision)) {
      const now = Date.now();
      if (now >= deadline || signal?.aborted) return false;
      if (now >= nextCatchUp && (this.#appliedStoreRevision < revision || this.#identities.revision < revision)) {
        nextCatchUp = now + CATCH_UP_INTERVAL_MS;
        try {
          if (this.#appliedStoreRevision < revision) await this.#catchUp();
          if (this.#identities.revision < revision) {
            await this.#identities.catchUp();
            this.#changed();
          }
        } catch (error) {
          this.#log.warn({ err: error, revision }, 'policy wait: reading the store failed; retrying');
        }
        continue;
      }
      await new Promise((resolve) => setTimeout(resolve, Math.min(WAIT_POLL_MS, deadline - now)));
    }
    return true;
  }
}

