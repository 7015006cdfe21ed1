/**
 * Network policy on one node: policies live in the shared store (every node enforces the same
 * rules), identities come from the allocator, and the policy engine turns both into per-endpoint
 * map entries. Every change — a policy, an identity, an endpoint — reaches the kernel as the
 * diff it causes, never as a rewrite. The engine's revision counts changes; an endpoint enforces
 * a revision once its diff is in its map.
 * @module
 */
import type { Logger } from 'pino';
import type { IdentityAllocator, Labels } from '../identity/index.ts';
import {
  PolicyEngine,
  diffEntries,
  parsePolicyYaml,
  policyKeyString,
  policyKey,
  reservedIdentityInfos,
  ruleCidrPrefixes,
  ruleKey,
  tracePolicy,
  type EntriesDiff,
  type PolicyKey,
  type PolicyRule,
  type PolicyUpdate,
  type TraceQuery,
  type TraceResult,
} from '../policy/index.ts';
import { StoreError, type StateStore, type WatchEvent } from '../store/index.ts';
import type { Ipcache } from './ipcache.ts';

/** The per-endpoint policy maps (src/datapath implements it). */
export interface EndpointPolicyDatapath {
  /** Creates (or adopts) the endpoint's policy map and makes it visible to the datapath. */
  ensure(endpointId: number): unknown;
  apply(endpointId: number, diff: EntriesDiff): void;
  /** What the endpoint's map holds in the kernel (after a restart: what the last agent left). */
  entries(endpointId: number): { key: PolicyKey; deny: boolean; cookie: number }[];
  remove(endpointId: number): void;
}

const POLICY_PREFIX = 'policies/';

/** `source:key` → value, the engine's view of labels. */
export function labelMap(labels: Labels): Record<string, string> {
  return Object.fromEntries(labels.toArray().map((l) => [`${l.source}:${l.key}`, l.value]));
}

export interface ImportResult {
  /** Rule keys written (kind/namespace/name[#i]). */
  rules: string[];
  /** The policy revision once this node enforces them. */
  revision: number;
}

export class PolicyManager {
  readonly engine = new PolicyEngine({ identities: reservedIdentityInfos() });
  readonly #store: StateStore;
  readonly #identities: IdentityAllocator;
  readonly #ipcache: Ipcache;
  readonly #maps: EndpointPolicyDatapath;
  readonly #log: Logger;
  readonly #abort = new AbortController();
  #unsubscribe: (() => void) | undefined;
  #loop: Promise<void> | undefined;
  /** Store revision the engine has applied up to. */
  #appliedStoreRevision = 0;
  #storeWaiters: { revision: number; resolve: () => void }[] = [];
  /** CIDR prefixes the current rules use, with the identity allocated for each. */
  readonly #cidrs = new Map<string, number>();
  /** Policy revision each endpoint enforces. */
  readonly #enforced = new Map<number, number>();

  constructor(options: { store: StateStore; identities: IdentityAllocator; ipcache: Ipcache; maps: EndpointPolicyDatapath; log: Logger }) {
    this.#store = options.store;
    this.#identities = options.identities;
    this.#ipcache = options.ipcache;
    this.#maps = options.maps;
    this.#log = options.log;
  }

  get revision(): number {
    return this.engine.revision;
  }

  async start(): Promise<void> {
    for (const identity of this.#identities.list()) this.#apply(this.engine.upsertIdentity(identity.id, labelMap(identity.labels)));
    this.#unsubscribe = this.#identities.subscribe((change) => {
      if (change.type === 'upsert') this.#apply(this.engine.upsertIdentity(change.identity.id, labelMap(change.identity.labels)));
      else this.#apply(this.engine.deleteIdentity(change.identity.id));
    });
    const { revision, entries } = await this.#store.list<PolicyRule>(POLICY_PREFIX);
    this.#applyRules(entries.map((e) => e.value), []);
    this.#appliedStoreRevision = revision;
    const watch = this.#store.watch<PolicyRule>(POLICY_PREFIX, { afterRevision: revision, signal: this.#abort.signal });
    this.#loop = (async () => {
      try {
        for await (const event of watch) this.#onEvent(event);
      } catch (error) {
        if (!this.#abort.signal.aborted) this.#log.error({ err: error, compacted: StoreError.is(error, 'ERR_STORE_COMPACTED') }, 'policy watch ended; policies are stale');
      }
    })();
  }

  async stop(): Promise<void> {
    this.#abort.abort();
    this.#unsubscribe?.();
    await this.#loop;
  }

  #onEvent(event: WatchEvent<PolicyRule>): void {
    if (event.type === 'put') this.#applyRules([event.value], []);
    else this.#applyRules([], [event.key.slice(POLICY_PREFIX.length)]);
    this.#appliedStoreRevision = event.revision;
    const waiting = this.#storeWaiters;
    this.#storeWaiters = [];
    for (const waiter of waiting) {
      if (waiter.revision <= event.revision) waiter.resolve();
      else this.#storeWaiters.push(waiter);
    }
  }

  #applyRules(upserts: PolicyRule[], deletes: string[]): void {
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
    // The ipcache is longest-prefix: pods and nodes keep their own more specific entries.
    if (!prefix.endsWith('/0')) this.#ipcache.upsert({ prefix, identity: id, source: 'cidr-policy' });
  }

  #releaseUnusedCidrs(): void {
    const used = new Set(ruleCidrPrefixes(this.engine.rules()));
    for (const [prefix, id] of this.#cidrs) {
      if (used.has(prefix)) continue;
      this.#cidrs.delete(prefix);
      this.#ipcache.delete(prefix);
      this.#apply(this.engine.deleteIdentity(id));
      this.#identities.releaseCidr(prefix);
    }
  }

  #apply(update: PolicyUpdate): void {
    for (const [endpointId, diff] of update.endpoints) {
      try {
        this.#maps.apply(endpointId, diff);
        this.#enforced.set(endpointId, update.revision);
      } catch (error) {
        this.#log.error({ err: error, endpoint: endpointId, revision: update.revision }, 'writing policy map failed');
      }
    }
    for (const id of this.engine.endpointIds()) if (!update.endpoints.has(id)) this.#enforced.set(id, update.revision);
  }

  /** Before an endpoint's programs are attached: its map exists and holds its policy. */
  addEndpoint(endpointId: number, labels: Labels): void {
    this.#maps.ensure(endpointId);
    const installed = this.#maps.entries(endpointId);
    const update = this.engine.upsertEndpoint(endpointId, labelMap(labels));
    if (installed.length === 0) {
      this.#apply(update);
      return;
    }
    // Adopting a map a previous agent filled: write only what differs from what the kernel holds.
    const have = new Map(installed.map((e) => [policyKeyString(e.key), { ...e, ruleKeys: [] }]));
    const want = this.engine.endpointPolicy(endpointId)?.entries ?? new Map();
    this.#maps.apply(endpointId, diffEntries(have, want));
    this.#enforced.set(endpointId, update.revision);
  }

  removeEndpoint(endpointId: number): void {
    this.#apply(this.engine.deleteEndpoint(endpointId));
    this.#enforced.delete(endpointId);
    this.#maps.remove(endpointId);
  }

  /**
   * Validates every document first (nothing is written if one is bad), then writes all rules in
   * one store transaction, and resolves once this node enforces them.
   */
  async import(yaml: string, file: string): Promise<ImportResult> {
    const rules = parsePolicyYaml(yaml, { file });
    const { revision } = await this.#store.transaction(rules.map((rule) => ({ type: 'put' as const, key: `${POLICY_PREFIX}${ruleKey(rule)}`, value: rule })));
    await this.#storeApplied(revision);
    return { rules: rules.map(ruleKey), revision: this.engine.revision };
  }

  /** Deletes a policy by kind/namespace/name (all of its specs), or one rule key. */
  async delete(key: string): Promise<{ deleted: string[]; revision: number }> {
    const keys = this.engine.rules().map(ruleKey).filter((k) => k === key || k.startsWith(`${key}#`) || policyKey(this.#rule(k)!) === key);
    if (keys.length === 0) return { deleted: [], revision: this.engine.revision };
    const { revision } = await this.#store.transaction(keys.map((k) => ({ type: 'delete' as const, key: `${POLICY_PREFIX}${k}` })));
    await this.#storeApplied(revision);
    return { deleted: keys, revision: this.engine.revision };
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

  /** Policy revision each endpoint enforces. */
  enforcedRevisions(): Map<number, number> {
    return new Map(this.#enforced);
  }

  /** Whether every endpoint enforces `revision` (or later). */
  enforces(revision: number): boolean {
    return revision <= this.engine.revision && [...this.#enforced.values()].every((r) => r >= revision);
  }
}

