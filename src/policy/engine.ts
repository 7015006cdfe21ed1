/**
 * PolicyEngine: rules + identities + endpoints → each endpoint's policy map entries, kept up to
 * date incrementally. Every change returns, per affected endpoint, only the map writes it needs
 * (upserts and deletes), and bumps the policy revision.
 *
 * Only endpoints a change can affect are recomputed: a rule change touches the endpoints its old
 * and new subject selector select; an identity change touches the endpoints selected by rules
 * whose peer selectors gained or lost the identity (SelectorCache).
 *
 * @example
 * const engine = new PolicyEngine({ identities: [...reservedIdentityInfos(), { id: 260, labels: { 'k8s:org': 'empire' } }] });
 * engine.upsertRules(await loadPolicyFile('sw-l3-l4-policy.yaml'));
 * const update = engine.upsertEndpoint(1, { 'k8s:org': 'empire', 'k8s:class': 'deathstar', 'k8s:io.kubernetes.pod.namespace': 'default' });
 * update.endpoints.get(1); // { upserts: [260 → 80/TCP allow, egress allow-all], deletes: [] }
 * engine.trace({ src: { identity: 260 }, dst: { endpoint: 1 }, dport: 80 }).allowed; // true
 * @module
 */
import { isDeepStrictEqual } from 'node:util';
import { selectorMatches } from './selector.ts';
import { ruleKey, policyKey, type PolicyRule, type Protocol } from './types.ts';
import {
  LabelIndex,
  SelectorCache,
  selectorTerms,
  labelTerms,
  peerSelectorKey,
  identityCidr,
  type IdentityInfo,
  type IdentitySource,
  type LabelMap,
} from './selector-cache.ts';
import {
  collectRequirements,
  diffEntries,
  resolveEndpointPolicy,
  rulePeerSelectors,
  ruleEnforces,
  type EndpointNamedPort,
  type EntriesDiff,
  type NamedPortLookup,
  type Requirements,
  type ResolvedPolicy,
} from './resolve.ts';
import {
  POLICY_MATCH_NAME,
  PolicyDirection,
  PolicyVerdict,
  formatKeyL4,
  lookupPolicy,
  protocolName,
  protocolNumber,
  type LookupResult,
  type PolicyMapEntry,
} from './policy-map.ts';

export interface PolicyUpdate {
  revision: number;
  /** Endpoint id → map writes; endpoints with nothing to write are left out. */
  endpoints: Map<number, EntriesDiff>;
}

interface RuleState {
  rule: PolicyRule;
  id: number;
  key: string;
  selectorKeys: string[];
  /** Endpoints the rule selects. */
  endpoints: Set<number>;
  /** Names its egress rules give ports: a change of the ports they stand for recomputes its endpoints. */
  egressNames: Set<string>;
}

interface EndpointState {
  id: number;
  labels: LabelMap;
  /** Its containers' named ports: what a named port of an ingress rule selecting it stands for. */
  ports: readonly EndpointNamedPort[];
  rules: Set<string>;
  policy: ResolvedPolicy;
  /** The requirements of its rules, as of its last full resolve (its rules change only with one). */
  requirements: Requirements;
  /** Keys of policy.entries by remote identity: an identity change reads only its own entries. */
  keysByIdentity: Map<number, Set<string>>;
}

function keysByIdentity(entries: ReadonlyMap<string, PolicyMapEntry>): Map<number, Set<string>> {
  const out = new Map<number, Set<string>>();
  for (const [k, e] of entries) {
    let keys = out.get(e.key.identity);
    if (!keys) out.set(e.key.identity, (keys = new Set()));
    keys.add(k);
  }
  return out;
}

export interface PolicyEngineOptions {
  /** Initial identities (e.g. reservedIdentityInfos() plus the allocator's). */
  identities?: IdentitySource | Iterable<IdentityInfo>;
}

/**
 * Rules by the label terms of their subject selector's matchLabels: an endpoint is a candidate of
 * a rule when it has every term (counted), so only matchExpressions remain to check. Rules
 * without matchLabels are scanned.
 */
class SubjectIndex {
  readonly #byTerm = new Map<string, Set<string>>();
  readonly #needed = new Map<string, number>();
  readonly #scan = new Set<string>();
  add(key: string, rule: PolicyRule): void {
    const terms = selectorTerms(rule.endpointSelector);
    if (terms.length === 0) {
      this.#scan.add(key);
      return;
    }
    this.#needed.set(key, terms.length);
    for (const t of terms) {
      let set = this.#byTerm.get(t);
      if (!set) this.#byTerm.set(t, (set = new Set()));
      set.add(key);
    }
  }
  delete(key: string, rule: PolicyRule): void {
    this.#scan.delete(key);
    this.#needed.delete(key);
    for (const t of selectorTerms(rule.endpointSelector)) {
      const set = this.#byTerm.get(t);
      set?.delete(key);
      if (set?.size === 0) this.#byTerm.delete(t);
    }
  }
  /** Rules whose matchLabels the labels satisfy, plus the scanned ones. */
  candidates(labels: LabelMap): Set<string> {
    const out = new Set(this.#scan);
    const counts = new Map<string, number>();
    for (const t of labelTerms(labels)) {
      for (const k of this.#byTerm.get(t) ?? []) {
        const c = (counts.get(k) ?? 0) + 1;
        counts.set(k, c);
        if (c === this.#needed.get(k)) out.add(k);
      }
    }
    return out;
  }
}

/** The names egress rules give ports (allow and deny). */
function egressPortNames(rule: PolicyRule): Set<string> {
  const out = new Set<string>();
  for (const peer of [...rule.egress, ...rule.egressDeny]) for (const p of peer.ports ?? []) if (p.name !== undefined) out.add(p.name);
  return out;
}

const namedPortKey = (p: EndpointNamedPort): string => `${p.port}/${p.protocol}`;

/**
 * The named ports of every endpoint known (this node's and, as their records say, other nodes'):
 * what a named port of an egress rule stands for, as Cilium resolves it (the destination's ports
 * are not known when the source's policy is looked up, so every port the name has anywhere).
 */
class KnownNamedPorts {
  /** Name → `port/protocol` → the sources (endpoints) giving it that port. */
  readonly #byName = new Map<string, Map<string, { port: EndpointNamedPort; sources: Set<string> }>>();
  readonly #bySource = new Map<string, readonly EndpointNamedPort[]>();

  /** Sets what `source` has (undefined: nothing); returns the names whose set of ports changed. */
  set(source: string, ports: readonly EndpointNamedPort[] | undefined): Set<string> {
    const old = this.#bySource.get(source) ?? [];
    const next = (ports ?? []).map((p) => ({ name: p.name, port: p.port, protocol: p.protocol }));
    const touched = new Set([...old, ...next].map((p) => p.name));
    const before = new Map([...touched].map((name) => [name, this.#portKeys(name)]));
    for (const p of old) {
      const byPort = this.#byName.get(p.name);
      const held = byPort?.get(namedPortKey(p));
      if (!byPort || !held) continue;
      held.sources.delete(source);
      if (held.sources.size > 0) continue;
      byPort.delete(namedPortKey(p));
      if (byPort.size === 0) this.#byName.delete(p.name);
    }
    if (next.length === 0) this.#bySource.delete(source);
    else this.#bySource.set(source, next);
    for (const p of next) {
      let byPort = this.#byName.get(p.name);
      if (!byPort) this.#byName.set(p.name, (byPort = new Map()));
      const k = namedPortKey(p);
      const held = byPort.get(k);
      if (held) held.sources.add(source);
      else byPort.set(k, { port: p, sources: new Set([source]) });
    }
    const changed = new Set<string>();
    for (const [name, keys] of before) if (keys !== this.#portKeys(name)) changed.add(name);
    return changed;
  }

  #portKeys(name: string): string {
    return [...(this.#byName.get(name)?.keys() ?? [])].sort().join(',');
  }

  get(name: string): EndpointNamedPort[] {
    return [...(this.#byName.get(name)?.values() ?? [])].map((h) => h.port);
  }
}

const localPortsSource = (id: number): string => `endpoint:${id}`;

const EMPTY_POLICY = (): ResolvedPolicy => ({ ingressEnforced: false, egressEnforced: false, entries: new Map(), selectingRules: [] });
const NO_REQUIREMENTS = (): Requirements => ({ ingress: [], egress: [], ingressDeny: [], egressDeny: [] });
const hasAny = (r: Requirements): boolean => r.ingress.length + r.egress.length + r.ingressDeny.length + r.egressDeny.length > 0;

export class PolicyEngine {
  readonly cache: SelectorCache;
  #revision = 0;
  #nextRuleId = 1;
  readonly #rules = new Map<string, RuleState>();
  readonly #rulesById = new Map<number, RuleState>();
  readonly #subjects = new SubjectIndex();
  /** Peer selector key → rules using it. */
  readonly #selectorUsers = new Map<string, Set<string>>();
  readonly #endpoints = new Map<number, EndpointState>();
  readonly #endpointIndex = new LabelIndex<number>();
  readonly #knownPorts = new KnownNamedPorts();
  /** Port name → rules whose egress rules use it. */
  readonly #egressNameUsers = new Map<string, Set<string>>();

  #generation = 0;

  /**
   * Counts every change (rules, identities, endpoints): a result computed from the engine holds
   * while this is the same.
   */
  get generation(): number {
    return this.#generation;
  }

  readonly #changeListeners = new Set<() => void>();

  /** Calls `listener` synchronously at every change of the generation, until the returned function is called. */
  onChange(listener: () => void): () => void {
    this.#changeListeners.add(listener);
    return () => void this.#changeListeners.delete(listener);
  }

  #changed(): void {
    this.#generation++;
    for (const listener of this.#changeListeners) listener();
  }

  constructor(options: PolicyEngineOptions = {}) {
    this.cache = new SelectorCache(options.identities);
  }

  /** Increments on every change (rules, identities, endpoints). */
  get revision(): number {
    return this.#revision;
  }

  rules(): PolicyRule[] {
    return this.#sortedRules([...this.#rules.keys()]).map((s) => s.rule);
  }
  /** Cookie of a rule: its numeric id, stable while the rule exists. */
  ruleId(key: string): number | undefined {
    return this.#rules.get(key)?.id;
  }
  ruleById(id: number): PolicyRule | undefined {
    return this.#rulesById.get(id)?.rule;
  }
  endpointIds(): number[] {
    return [...this.#endpoints.keys()];
  }
  endpointPolicy(id: number): ResolvedPolicy | undefined {
    return this.#endpoints.get(id)?.policy;
  }
  endpointLabels(id: number): LabelMap | undefined {
    return this.#endpoints.get(id)?.labels;
  }

  #sortedRules(keys: Iterable<string>): RuleState[] {
    const out: RuleState[] = [];
    for (const k of keys) {
      const s = this.#rules.get(k);
      if (s) out.push(s);
    }
    return out.sort((a, b) => a.id - b.id);
  }

  #resolve(ep: EndpointState): ResolvedPolicy {
    const states = this.#sortedRules(ep.rules);
    const rules = states.map((s) => s.rule);
    ep.requirements = collectRequirements(rules);
    return resolveEndpointPolicy(ep.labels, rules, this.cache, {
      preselected: true,
      ruleId: (_r, i) => states[i].id,
      namedPorts: this.#namedPortLookup(ep.ports),
      requirements: ep.requirements,
    });
  }

  /** The `fromRequires`/`toRequires` of the rules selecting an endpoint (see collectRequirements). */
  endpointRequirements(id: number): Requirements | undefined {
    return this.#endpoints.get(id)?.requirements;
  }

  /** Named ports in a policy of an endpoint with `own` ports: ingress by its own, egress by every known endpoint's. */
  #namedPortLookup(own: readonly EndpointNamedPort[]): NamedPortLookup {
    return (name, direction) => (direction === 'ingress' ? own.filter((p) => p.name === name) : this.#knownPorts.get(name));
  }

  /**
   * The ports `name` stands for: in an ingress rule of endpoint `endpointId`, that endpoint's own
   * port of that name (none for an endpoint not known); in an egress rule, those of every endpoint known.
   */
  namedPorts(name: string, direction: 'ingress' | 'egress', endpointId?: number): EndpointNamedPort[] {
    if (direction === 'egress') return this.#knownPorts.get(name);
    const ep = endpointId === undefined ? undefined : this.#endpoints.get(endpointId);
    return (ep?.ports ?? []).filter((p) => p.name === name);
  }

  endpointPorts(id: number): readonly EndpointNamedPort[] | undefined {
    return this.#endpoints.get(id)?.ports;
  }

  #endpointsUsingNames(names: Iterable<string>): Set<number> {
    const out = new Set<number>();
    for (const name of names) for (const rk of this.#egressNameUsers.get(name) ?? []) for (const ep of this.#rules.get(rk)?.endpoints ?? []) out.add(ep);
    return out;
  }

  #useNames(key: string, names: Iterable<string>, use: boolean): void {
    for (const name of names) {
      let users = this.#egressNameUsers.get(name);
      if (use) {
        if (!users) this.#egressNameUsers.set(name, (users = new Set()));
        users.add(key);
      } else {
        users?.delete(key);
        if (users?.size === 0) this.#egressNameUsers.delete(name);
      }
    }
  }

  #recompute(endpointIds: Iterable<number>): PolicyUpdate {
    const out = new Map<number, EntriesDiff>();
    for (const id of endpointIds) {
      const ep = this.#endpoints.get(id);
      if (!ep) continue;
      const next = this.#resolve(ep);
      const diff = diffEntries(ep.policy.entries, next.entries);
      ep.policy = next;
      ep.keysByIdentity = keysByIdentity(next.entries);
      if (diff.upserts.length > 0 || diff.deletes.length > 0) out.set(id, diff);
    }
    return { revision: ++this.#revision, endpoints: out };
  }

  /**
   * An identity's selections changed: rewrite only that identity's entries of each endpoint. Its
   * entries come only from rules with a peer selector that selects it (and the endpoint's
   * identity-0 denies, passed as `base`), so only those rules are resolved: an identity change
   * costs the rules that name it, not every rule of the endpoint.
   */
  #recomputeIdentity(endpointIds: Iterable<number>, identity: number): PolicyUpdate {
    const out = new Map<number, EntriesDiff>();
    const naming = new Set<string>();
    for (const sk of this.cache.selectorsSelecting(identity)) for (const rk of this.#selectorUsers.get(sk) ?? []) naming.add(rk);
    for (const id of endpointIds) {
      const ep = this.#endpoints.get(id);
      if (!ep) continue;
      // Requirements can narrow a wildcard selector (no selector names the identity) to the
      // identity: with requirements every rule of the endpoint is resolved.
      const states = this.#sortedRules(hasAny(ep.requirements) ? ep.rules : [...naming].filter((rk) => ep.rules.has(rk)));
      const entries = ep.policy.entries;
      const entriesOf = (remote: number) => {
        const m = new Map<string, PolicyMapEntry>();
        for (const k of ep.keysByIdentity.get(remote) ?? []) m.set(k, entries.get(k)!);
        return m;
      };
      // Of the base, resolve reads only the identity-0 denies.
      const fresh = resolveEndpointPolicy(
        ep.labels,
        states.map((s) => s.rule),
        this.cache,
        {
          preselected: true,
          ruleId: (_r, i) => states[i].id,
          onlyIdentity: identity,
          base: entriesOf(0),
          namedPorts: this.#namedPortLookup(ep.ports),
          requirements: ep.requirements,
        },
      ).entries;
      const old = entriesOf(identity);
      const diff = diffEntries(old, fresh);
      const mapSame = diff.upserts.length === 0 && diff.deletes.length === 0;
      // The proxy reads the HTTP rules from these entries, not from the map: rules that changed
      // behind an unchanged map value must still replace the old ones.
      if (mapSame && [...fresh].every(([k, e]) => isDeepStrictEqual(e.l7, old.get(k)?.l7))) continue;
      // The key set changes as the map does, so both keep the same order (that of later diffs).
      let keys = ep.keysByIdentity.get(identity);
      if (!keys) ep.keysByIdentity.set(identity, (keys = new Set()));
      for (const k of old.keys()) {
        if (fresh.has(k)) continue;
        entries.delete(k);
        keys.delete(k);
      }
      for (const [k, e] of fresh) {
        entries.set(k, e);
        keys.add(k);
      }
      if (keys.size === 0) ep.keysByIdentity.delete(identity);
      if (!mapSame) out.set(id, diff);
    }
    return { revision: ++this.#revision, endpoints: out };
  }

  #addRule(key: string, rule: PolicyRule, id: number): RuleState {
    const selectorKeys: string[] = [];
    for (const peer of rulePeerSelectors(rule)) {
      const sk = peerSelectorKey(peer);
      if (selectorKeys.includes(sk)) continue;
      selectorKeys.push(sk);
      this.cache.acquire(peer);
      let users = this.#selectorUsers.get(sk);
      if (!users) this.#selectorUsers.set(sk, (users = new Set()));
      users.add(key);
    }
    const endpoints = new Set(this.#endpointIndex.select(rule.endpointSelector));
    const egressNames = egressPortNames(rule);
    this.#useNames(key, egressNames, true);
    const state: RuleState = { rule, id, key, selectorKeys, endpoints, egressNames };
    this.#rules.set(key, state);
    this.#rulesById.set(id, state);
    this.#subjects.add(key, rule);
    for (const ep of endpoints) this.#endpoints.get(ep)!.rules.add(key);
    return state;
  }

  #removeRule(state: RuleState): void {
    this.#rules.delete(state.key);
    this.#rulesById.delete(state.id);
    this.#subjects.delete(state.key, state.rule);
    this.#useNames(state.key, state.egressNames, false);
    for (const sk of state.selectorKeys) {
      const users = this.#selectorUsers.get(sk);
      users?.delete(state.key);
      if (users?.size === 0) this.#selectorUsers.delete(sk);
      this.cache.release(sk);
    }
    for (const ep of state.endpoints) this.#endpoints.get(ep)?.rules.delete(state.key);
  }

  /** Adds or replaces rules (by ruleKey). A replaced rule keeps its id (cookie). */
  upsertRules(rules: readonly PolicyRule[]): PolicyUpdate {
    this.#changed();
    const affected = new Set<number>();
    for (const rule of rules) {
      const key = ruleKey(rule);
      const old = this.#rules.get(key);
      if (old && JSON.stringify(old.rule) === JSON.stringify(rule)) continue;
      // Add the new version first, so shared selectors are not dropped and recomputed.
      let id = this.#nextRuleId;
      if (old) {
        id = old.id;
        for (const ep of old.endpoints) affected.add(ep);
        const oldState = old;
        this.#rules.delete(key);
        const added = this.#addRule(key, rule, id);
        // Release the old version's selectors and its endpoint links that the new one lacks.
        for (const sk of oldState.selectorKeys) {
          const users = this.#selectorUsers.get(sk);
          if (!added.selectorKeys.includes(sk)) {
            users?.delete(key);
            if (users?.size === 0) this.#selectorUsers.delete(sk);
          }
          this.cache.release(sk);
        }
        this.#subjects.delete(key, oldState.rule);
        this.#subjects.add(key, rule);
        this.#useNames(key, [...oldState.egressNames].filter((n) => !added.egressNames.has(n)), false);
        for (const ep of oldState.endpoints) if (!added.endpoints.has(ep)) this.#endpoints.get(ep)?.rules.delete(key);
        for (const ep of added.endpoints) affected.add(ep);
      } else {
        this.#nextRuleId++;
        const added = this.#addRule(key, rule, id);
        for (const ep of added.endpoints) affected.add(ep);
      }
    }
    return this.#recompute(affected);
  }

  /** Deletes rules by ruleKey, or every rule of a policy by policyKey (all `#i` specs). */
  deleteRules(keys: readonly (string | PolicyRule)[]): PolicyUpdate {
    this.#changed();
    const affected = new Set<number>();
    for (const k of keys) {
      const wanted = typeof k === 'string' ? k : ruleKey(k);
      const matches = [...this.#rules.values()].filter((s) => s.key === wanted || policyKey(s.rule) === wanted);
      for (const s of matches) {
        for (const ep of s.endpoints) affected.add(ep);
        this.#removeRule(s);
      }
    }
    return this.#recompute(affected);
  }

  #endpointsUsing(selectorKeys: Iterable<string>): Set<number> {
    const out = new Set<number>();
    for (const sk of selectorKeys) {
      for (const rk of this.#selectorUsers.get(sk) ?? []) for (const ep of this.#rules.get(rk)?.endpoints ?? []) out.add(ep);
    }
    return out;
  }

  /** Adds an identity or changes its labels. */
  upsertIdentity(id: number, labels: LabelMap): PolicyUpdate {
    this.#changed();
    if (id === 0) throw new RangeError('identity 0 means "any" in policy maps and cannot be allocated');
    const changes = this.cache.upsertIdentity(id, labels);
    return this.#recomputeIdentity(this.#endpointsUsing(changes.map((c) => c.selector)), id);
  }

  deleteIdentity(id: number): PolicyUpdate {
    this.#changed();
    const changes = this.cache.deleteIdentity(id);
    return this.#recomputeIdentity(this.#endpointsUsing(changes.map((c) => c.selector)), id);
  }

  /**
   * Adds an endpoint or changes its labels or named ports. Its ports are known to every endpoint's
   * egress rules too: those naming a port whose numbers change are recomputed.
   */
  upsertEndpoint(id: number, labels: LabelMap, ports: readonly EndpointNamedPort[] = []): PolicyUpdate {
    this.#changed();
    let ep = this.#endpoints.get(id);
    const own = ports.map((p) => ({ name: p.name, port: p.port, protocol: p.protocol }));
    if (ep) for (const rk of ep.rules) this.#rules.get(rk)?.endpoints.delete(id);
    else {
      ep = { id, labels, ports: own, rules: new Set(), policy: EMPTY_POLICY(), requirements: NO_REQUIREMENTS(), keysByIdentity: new Map() };
      this.#endpoints.set(id, ep);
    }
    ep.labels = labels;
    ep.ports = own;
    const affected = this.#endpointsUsingNames(this.#knownPorts.set(localPortsSource(id), own));
    ep.rules = new Set();
    this.#endpointIndex.set(id, labels);
    for (const rk of this.#subjects.candidates(labels)) {
      const s = this.#rules.get(rk)!;
      const sel = s.rule.endpointSelector;
      // Candidates with matchLabels already satisfy them.
      if ((sel.matchExpressions.length === 0 && Object.keys(sel.matchLabels).length > 0) || selectorMatches(sel, labels)) {
        ep.rules.add(rk);
        s.endpoints.add(id);
      }
    }
    affected.add(id);
    return this.#recompute(affected);
  }

  /**
   * The named ports of an endpoint this engine has no policy for (another node's, from its
   * record), by a key of the caller's; undefined: it is gone. Egress rules naming a port whose
   * numbers change are recomputed.
   */
  setPeerPorts(key: string, ports: readonly EndpointNamedPort[] | undefined): PolicyUpdate {
    const changed = this.#knownPorts.set(`peer:${key}`, ports);
    if (changed.size === 0) return { revision: this.#revision, endpoints: new Map() };
    this.#changed();
    return this.#recompute(this.#endpointsUsingNames(changed));
  }

  /** Removes an endpoint; its diff deletes every entry of its map. */
  deleteEndpoint(id: number): PolicyUpdate {
    this.#changed();
    const ep = this.#endpoints.get(id);
    if (!ep) return { revision: ++this.#revision, endpoints: new Map() };
    for (const rk of ep.rules) this.#rules.get(rk)?.endpoints.delete(id);
    this.#endpoints.delete(id);
    this.#endpointIndex.delete(id);
    const update = this.#recompute(this.#endpointsUsingNames(this.#knownPorts.set(localPortsSource(id), undefined)));
    update.endpoints.set(id, diffEntries(ep.policy.entries, new Map()));
    return update;
  }

  /** `namespace/name` (or `name`, clusterwide; `#i` for specs) of a rule, for messages. */
  ruleName(key: string): string {
    const s = this.#rules.get(key);
    if (!s) return key;
    const r = s.rule;
    return `${r.namespace === undefined ? r.name : `${r.namespace}/${r.name}`}${r.specIndex === undefined ? '' : `#${r.specIndex}`}`;
  }

  /** See `tracePolicy`. */
  trace(query: TraceQuery): TraceResult {
    return tracePolicy(this, query);
  }
}

/** One side of a traced flow. */
export type TracePeer =
  | { labels: LabelMap }
  | { identity: number }
  /** An address or CIDR outside the cluster: its most specific CIDR identity, else world. */
  | { cidr: string }
  /** An endpoint the engine knows. */
  | { endpoint: number };

export interface TraceQuery {
  src: TracePeer;
  dst: TracePeer;
  dport: number;
  /** Default TCP. */
  protocol?: Exclude<Protocol, 'ANY'> | number;
}

export interface DirectionTrace {
  direction: 'ingress' | 'egress';
  /** Identity of the peer the lookup used. */
  remoteIdentity: number;
  enforced: boolean;
  allowed: boolean;
  /** Cilium match type of the deciding entry ('none' on a miss). */
  match: string;
  cookie: number;
  /** Rules of the deciding entry. */
  ruleKeys: string[];
  /** Rules selecting the endpoint whose policy was looked up. */
  selectingRules: string[];
  reason: string;
}

export interface TraceResult {
  allowed: boolean;
  verdict: 'allowed' | 'denied';
  /** The direction that denied, or the last one that allowed. */
  decidedBy: 'ingress' | 'egress';
  srcIdentity: number;
  dstIdentity: number;
  /** Absent when the source is not a local endpoint (no egress policy). */
  egress?: DirectionTrace;
  /** Absent when the destination is not a local endpoint (no ingress policy). */
  ingress?: DirectionTrace;
  /** Rules of the deciding entries. */
  ruleKeys: string[];
  reason: string;
}

/** A placeholder identity for labels no identity has yet (only during a trace). */
const TRACE_IDENTITY = 0xfffffffe;

interface Side {
  identity: number;
  /** Labels when the side is a local endpoint (policy subject). */
  subject?: LabelMap;
  /** The endpoint's named ports, when the side is one the engine knows. */
  ports?: readonly EndpointNamedPort[];
  temporary: boolean;
}

function resolveSide(engine: PolicyEngine, peer: TracePeer): Side {
  const cache = engine.cache;
  if ('endpoint' in peer) {
    const labels = engine.endpointLabels(peer.endpoint);
    if (!labels) throw new RangeError(`trace: no endpoint ${peer.endpoint}`);
    return { ...labelSide(cache, labels), ports: engine.endpointPorts(peer.endpoint) ?? [] };
  }
  if ('labels' in peer) return labelSide(cache, peer.labels);
  if ('identity' in peer) {
    const labels = cache.identityLabels(peer.identity);
    if (!labels) throw new RangeError(`trace: no identity ${peer.identity}`);
    const isPod = !Object.keys(labels).some((k) => k.startsWith('reserved:') || k.startsWith('cidr:'));
    return { identity: peer.identity, subject: isPod ? labels : undefined, temporary: false };
  }
  const ip = peer.cidr;
  return { identity: cache.identityForIp(ip), temporary: false };
}

function labelSide(cache: SelectorCache, labels: LabelMap): Side {
  const found = cache.findIdentity(labels);
  if (found !== undefined) return { identity: found, subject: labels, temporary: false };
  return { identity: TRACE_IDENTITY, subject: labels, temporary: true };
}

function describeIdentity(cache: SelectorCache, id: number): string {
  if (id === TRACE_IDENTITY) return 'the (unallocated) identity of those labels';
  const labels = cache.identityLabels(id);
  const c = labels && identityCidr(labels);
  if (c) return `identity ${id} (${Object.keys(labels).find((k) => k.startsWith('cidr:'))!.slice(5)})`;
  const reserved = labels && Object.keys(labels).find((k) => k.startsWith('reserved:'));
  return reserved ? `identity ${id} (${reserved})` : `identity ${id}`;
}

function traceDirection(
  engine: PolicyEngine,
  dir: 'ingress' | 'egress',
  subject: LabelMap,
  ports: readonly EndpointNamedPort[],
  remote: number,
  protocol: number,
  dport: number,
): DirectionTrace {
  const rules = engine.rules();
  const namedPorts: NamedPortLookup = (name, direction) => (direction === 'ingress' ? ports.filter((p) => p.name === name) : engine.namedPorts(name, 'egress'));
  const policy = resolveEndpointPolicy(subject, rules, engine.cache, { ruleId: (r) => engine.ruleId(ruleKey(r)) ?? 0, namedPorts });
  const direction = dir === 'ingress' ? PolicyDirection.INGRESS : PolicyDirection.EGRESS;
  const res: LookupResult = lookupPolicy(policy.entries, remote, direction, protocol, dport);
  const entry: PolicyMapEntry | undefined = res.entry;
  const enforced = dir === 'ingress' ? policy.ingressEnforced : policy.egressEnforced;
  const role = dir === 'ingress' ? 'destination' : 'source';
  const names = (keys: readonly string[]) => keys.map((k) => engine.ruleName(k)).join(', ');
  const l4 = `${dport}/${protocolName(protocol)}`;
  const who = describeIdentity(engine.cache, remote);
  let reason: string;
  if (res.verdict === PolicyVerdict.DENIED) {
    reason = `explicitly denied by ${names(entry!.ruleKeys)} (${who} on ${formatKeyL4(entry!.key)})`;
  } else if (res.verdict === PolicyVerdict.ALLOWED && entry!.ruleKeys.length === 0) {
    const byRules = rules.filter((r) => policy.selectingRules.includes(ruleKey(r)));
    if (byRules.length === 0) reason = `no rule selects the ${role} for ${dir}: allow-all`;
    else {
      const off = byRules.filter((r) => r.enableDefaultDeny[dir] === false).map((r) => ruleKey(r));
      reason = off.length
        ? `default deny for ${dir} is disabled (enableDefaultDeny.${dir}: false in ${names(off)}) and no other rule selecting the ${role} enforces it: allow-all`
        : `no rule selecting the ${role} (${names(policy.selectingRules)}) has ${dir} rules: allow-all`;
    }
  } else if (res.verdict === PolicyVerdict.ALLOWED) {
    reason = `allowed by ${names(entry!.ruleKeys)} (${POLICY_MATCH_NAME[res.match]} match: ${res.match === 3 || res.match === 4 || res.match === 6 ? 'any identity' : who} on ${formatKeyL4(entry!.key)})`;
    if (entry!.dns) reason += ', through the DNS proxy: only DNS queries for the names the DNS rules of these rules allow';
    else if (entry!.l7) reason += `, through the node proxy: only HTTP requests that ${entry!.l7.reduce((n, g) => n + g.http.length, 0)} HTTP rule(s) of ${names(entry!.l7.map((g) => g.ruleKey))} allow`;
  } else {
    const enforcing = rules.filter((r) => policy.selectingRules.includes(ruleKey(r)) && ruleEnforces(r, dir)).map((r) => ruleKey(r));
    reason = `denied by default: ${role} is selected by ${names(enforcing)} but no ${dir} rule allows ${who} on ${l4}`;
  }
  return {
    direction: dir,
    remoteIdentity: remote,
    enforced,
    allowed: res.verdict === PolicyVerdict.ALLOWED,
    match: POLICY_MATCH_NAME[res.match],
    cookie: res.cookie,
    ruleKeys: entry ? [...entry.ruleKeys] : [],
    selectingRules: policy.selectingRules,
    reason,
  };
}

/**
 * Why a flow is allowed or denied: the source's egress policy (when the source is a local
 * endpoint), then the destination's ingress policy (when it is), each evaluated as the datapath
 * does (the two-lookup decision over the computed map entries).
 *
 * @example
 * tracePolicy(engine, { src: { labels: xwing }, dst: { labels: deathstar }, dport: 80 }).reason;
 * // 'denied by default: destination is selected by default/rule1 but no ingress rule allows identity 261 on 80/TCP'
 */
export function tracePolicy(engine: PolicyEngine, query: TraceQuery): TraceResult {
  const protocol = protocolNumber(query.protocol ?? 'TCP');
  const src = resolveSide(engine, query.src);
  const dst = resolveSide(engine, query.dst);
  const temporary = src.temporary ? src : dst.temporary ? dst : undefined;
  if (src.temporary && dst.temporary) dst.identity = TRACE_IDENTITY - 1;
  try {
    if (src.temporary) engine.cache.upsertIdentity(src.identity, src.subject!);
    if (dst.temporary) engine.cache.upsertIdentity(dst.identity, dst.subject!);
    const egress = src.subject ? traceDirection(engine, 'egress', src.subject, src.ports ?? [], dst.identity, protocol, query.dport) : undefined;
    const ingress = dst.subject ? traceDirection(engine, 'ingress', dst.subject, dst.ports ?? [], src.identity, protocol, query.dport) : undefined;
    const denied = egress && !egress.allowed ? egress : ingress && !ingress.allowed ? ingress : undefined;
    const decided = denied ?? ingress ?? egress;
    const parts = [egress, ingress].filter((d): d is DirectionTrace => d !== undefined);
    const reason = denied
      ? `${denied.direction}: ${denied.reason}`
      : parts.length === 0
        ? 'neither side is a local endpoint: no policy applies'
        : parts.map((d) => `${d.direction}: ${d.reason}`).join('; ');
    return {
      allowed: denied === undefined,
      verdict: denied === undefined ? 'allowed' : 'denied',
      decidedBy: decided?.direction ?? 'ingress',
      srcIdentity: src.identity,
      dstIdentity: dst.identity,
      egress,
      ingress,
      ruleKeys: denied ? denied.ruleKeys : [...new Set(parts.flatMap((d) => d.ruleKeys))],
      reason,
    };
  } finally {
    if (temporary) {
      if (src.temporary) engine.cache.deleteIdentity(src.identity);
      if (dst.temporary) engine.cache.deleteIdentity(dst.identity);
    }
  }
}
