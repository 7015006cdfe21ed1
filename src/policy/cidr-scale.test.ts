/**
 * A large CIDR workload (10k CIDR rule entries, ~10k CIDR identities: testdata/cidr-workload.ts)
 * through the engine, incrementally — identities before and after the rules, relabelled and
 * deleted identities, replaced and deleted rules — checked against a brute-force reference that
 * matches every selector against every identity the plain way. Plus a time bound that only a
 * return to matching every CIDR selector against every CIDR identity would break.
 * @module
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PolicyEngine, type PolicyUpdate } from './engine.ts';
import { parseCidr } from './cidr.ts';
import { policyKeyString, type PolicyMapEntry } from './policy-map.ts';
import { resolveEndpointPolicy, rulePeerSelectors } from './resolve.ts';
import {
  entityMatches,
  isWildcardPeer,
  peerSelectorKey,
  reservedIdentityInfos,
  cidrIdentityLabels,
  type IdentityInfo,
  type LabelMap,
  type PeerSelector,
  type SelectorCache,
} from './selector-cache.ts';
import { selectorMatches } from './selector.ts';
import { ruleKey, type PolicyRule } from './types.ts';
import { cidrWorkload } from './testdata/cidr-workload.ts';

/** A prefix in the reference's own form: IPv4 as a number, IPv6 as a bigint. */
interface RefPrefix {
  family: 4 | 6;
  v4: number;
  v6: bigint;
  length: number;
}

function refPrefix(text: string): RefPrefix {
  const c = parseCidr(text);
  if ('error' in c) throw new Error(c.error);
  return { family: c.family, v4: c.family === 4 ? Number(c.addr.toBigInt()) : 0, v6: c.addr.toBigInt(), length: c.bits };
}

function refContains(outer: RefPrefix, inner: RefPrefix): boolean {
  if (outer.family !== inner.family || inner.length < outer.length) return false;
  if (outer.length === 0) return true;
  if (outer.family === 4) return ((outer.v4 ^ inner.v4) >>> (32 - outer.length)) === 0;
  return (outer.v6 ^ inner.v6) >> BigInt(128 - outer.length) === 0n;
}

interface RefIdentity {
  id: number;
  labels: LabelMap;
  /** The longest `cidr:` label. */
  prefix: RefPrefix | undefined;
}

function refIdentity(id: number, labels: LabelMap): RefIdentity {
  let prefix: RefPrefix | undefined;
  for (const key of Object.keys(labels)) {
    if (!key.startsWith('cidr:')) continue;
    const p = refPrefix(key.slice(5).replaceAll('-', ':'));
    if (!prefix || p.length > prefix.length) prefix = p;
  }
  return { id, labels, prefix };
}

/** Whether a prefix-less identity stands for the rest of `family`'s address space. */
function refWorld(labels: LabelMap, family: 4 | 6): boolean {
  if (Object.hasOwn(labels, family === 4 ? 'reserved:world-ipv4' : 'reserved:world-ipv6')) return true;
  return Object.hasOwn(labels, 'reserved:world');
}

/**
 * The selections of every peer, by matching it against every identity. Stands in for the
 * SelectorCache in resolveEndpointPolicy, which only calls `get`.
 */
class BruteForceSelections {
  readonly #identities: RefIdentity[];
  readonly #memo = new Map<string, { key: string; wildcard: boolean; selections: Set<number> }>();
  constructor(identities: ReadonlyMap<number, LabelMap>) {
    this.#identities = [...identities].map(([id, labels]) => refIdentity(id, labels));
  }
  get(peer: PeerSelector): { key: string; wildcard: boolean; selections: Set<number> } {
    const key = peerSelectorKey(peer);
    let s = this.#memo.get(key);
    if (!s) this.#memo.set(key, (s = { key, wildcard: isWildcardPeer(peer), selections: this.#select(peer) }));
    return s;
  }
  #select(peer: PeerSelector): Set<number> {
    const out = new Set<number>();
    if (isWildcardPeer(peer)) return out;
    if (peer.kind === 'endpoints') for (const i of this.#identities) if (selectorMatches(peer.selector, i.labels)) out.add(i.id);
    if (peer.kind === 'entity') for (const i of this.#identities) if (entityMatches(peer.entity, i.labels)) out.add(i.id);
    if (peer.kind === 'cidr') {
      const cidr = refPrefix(peer.cidr.cidr);
      const except = peer.cidr.except.map(refPrefix);
      for (const i of this.#identities) {
        const selected = i.prefix
          ? refContains(cidr, i.prefix) && !except.some((e) => refContains(e, i.prefix!))
          : cidr.length === 0 && refWorld(i.labels, cidr.family);
        if (selected) out.add(i.id);
      }
    }
    return out;
  }
}

/** An endpoint's entries as comparable rows. */
function rows(entries: Iterable<PolicyMapEntry>): string[] {
  return [...entries].map((e) => `${policyKeyString(e.key)} deny=${e.deny} cookie=${e.cookie} rules=${e.ruleKeys.join(',')}`).sort();
}

/** The engine, the policy maps its diffs build, and what the engine was told (the reference's input). */
class Harness {
  readonly engine = new PolicyEngine({ identities: reservedIdentityInfos() });
  readonly identities = new Map<number, LabelMap>(reservedIdentityInfos().map((i) => [i.id, i.labels]));
  readonly endpoints = new Map<number, LabelMap>();
  /** Endpoint → key → `deny/cookie`: the kernel's maps, written only through the updates' diffs. */
  readonly maps = new Map<number, Map<string, string>>();

  apply(update: PolicyUpdate): void {
    for (const [id, diff] of update.endpoints) {
      let map = this.maps.get(id);
      if (!map) this.maps.set(id, (map = new Map()));
      for (const k of diff.deletes) assert.ok(map.delete(policyKeyString(k)), `endpoint ${id}: deleting ${policyKeyString(k)}, which the map does not hold`);
      for (const e of diff.upserts) map.set(policyKeyString(e.key), `${e.deny}/${e.cookie}`);
    }
  }
  upsertIdentities(list: readonly IdentityInfo[]): void {
    for (const i of list) {
      this.identities.set(i.id, i.labels);
      this.apply(this.engine.upsertIdentity(i.id, i.labels));
    }
  }
  deleteIdentities(ids: readonly number[]): void {
    for (const id of ids) {
      this.identities.delete(id);
      this.apply(this.engine.deleteIdentity(id));
    }
  }
  upsertEndpoint(id: number, labels: LabelMap): void {
    this.endpoints.set(id, labels);
    this.apply(this.engine.upsertEndpoint(id, labels));
  }

  /** Selections, entries and maps equal what brute force computes from the same input. */
  check(what: string): void {
    const ref = new BruteForceSelections(this.identities);
    const rules = this.engine.rules();
    for (const peer of rules.flatMap(rulePeerSelectors)) {
      const cached = this.engine.cache.getByKey(peerSelectorKey(peer));
      assert.ok(cached, `${what}: selector ${peerSelectorKey(peer)} is cached`);
      const want = ref.get(peer).selections;
      if (cached.selections.size !== want.size || [...want].some((id) => !cached.selections.has(id))) {
        assert.deepEqual([...cached.selections].sort(), [...want].sort(), `${what}: selections of ${cached.key}`);
      }
    }
    for (const [id, labels] of this.endpoints) {
      const want = resolveEndpointPolicy(labels, rules, ref as unknown as SelectorCache, { ruleId: (r: PolicyRule) => this.engine.ruleId(ruleKey(r))! }).entries;
      assert.deepEqual(rows(this.engine.endpointPolicy(id)!.entries.values()), rows(want.values()), `${what}: entries of endpoint ${id}`);
      const map = [...(this.maps.get(id) ?? [])].map(([k, v]) => `${k} ${v}`).sort();
      assert.deepEqual(map, [...want].map(([k, e]) => `${k} ${e.deny}/${e.cookie}`).sort(), `${what}: map of endpoint ${id}`);
    }
  }
}

/** Imports at most this many policies per call, as the agent applies one store batch. */
const POLICIES_PER_IMPORT = 30;
const COUNT = 10_000;
/**
 * The engine's part (everything but the reference) takes ~3 s here. Before, it took 160 s:
 * every CIDR selector matched against every CIDR identity, and every identity change resolving
 * every rule of the endpoint and scanning all its entries (57 s with only the former fixed).
 * The bound leaves a loaded machine ten times the room and still catches either coming back.
 */
const ENGINE_SECONDS_BOUND = 30;

test(`${COUNT} CIDR rules, ~${COUNT} CIDR identities: incremental updates give what brute-force matching gives, fast`, (t) => {
  const w = cidrWorkload(COUNT);
  const h = new Harness();
  let engineMs = 0;
  const timed = (step: () => void) => {
    const t = performance.now();
    step();
    engineMs += performance.now() - t;
  };
  assert.ok(w.named.length > COUNT * 0.95, `${w.named.length} CIDR identities`);
  const half = Math.floor(w.named.length / 2);

  // As the agent imports: pods and most CIDR identities exist before the rules that select them.
  timed(() => {
    h.upsertIdentities([...w.pods, ...w.named.slice(0, half)]);
    for (const ep of w.endpoints) h.upsertEndpoint(ep.id, ep.labels);
    h.upsertIdentities(w.named.slice(half, half + 50));
    for (let i = 0; i < w.rules.length; i += POLICIES_PER_IMPORT) h.apply(h.engine.upsertRules(w.rules.slice(i, i + POLICIES_PER_IMPORT)));
  });
  // Later ones arrive with rules in force: each changes only its own entries.
  timed(() => h.upsertIdentities([...w.named.slice(half + 50, half + 300), ...w.extra]));
  h.check('after the import');
  assert.ok(h.engine.endpointPolicy(2)!.entries.size > COUNT / 2, 'the server allows about half the CIDRs');

  timed(() => {
    h.upsertIdentities(w.named.slice(half + 300));
    // Identities that change prefix, gain dual-stack labels, or go.
    const moved = w.named.slice(100, 160).map((i, k) => ({ id: i.id, labels: cidrIdentityLabels(k % 2 ? `172.16.3.${k}/32` : `2001:db8:${k}::/64`) }));
    h.upsertIdentities(moved);
    h.upsertIdentities(w.extra.slice(0, 20).map((i) => ({ id: i.id, labels: { ...i.labels, 'reserved:world-ipv4': '' } })));
    h.deleteIdentities(w.named.slice(2000, 2500).map((i) => i.id));
    h.deleteIdentities(w.extra.slice(40, 60).map((i) => i.id));
    // A policy replaced (other CIDRs, an except that splits a /24), another deleted.
    const replaced = structuredClone(w.rules[3]);
    replaced.ingress = [{ cidrs: [{ cidr: '172.16.1.0/24', except: ['172.16.1.64/26', '172.16.1.17/32'] }], ports: [{ port: 9000, protocol: 'TCP' }] }];
    h.apply(h.engine.upsertRules([replaced]));
    h.apply(h.engine.deleteRules([ruleKey(w.rules[5])]));
  });
  h.check('after identity and rule changes');

  // Every CIDR rule and identity gone: nothing left selected.
  timed(() => {
    h.apply(h.engine.deleteRules(w.rules.map(ruleKey)));
    h.deleteIdentities([...h.identities.keys()].filter((id) => id >= 1 << 24));
  });
  h.check('after deleting everything');
  assert.equal(h.engine.cache.selectorCount, 0);

  t.diagnostic(`engine: ${(engineMs / 1000).toFixed(2)} s`);
  assert.ok(engineMs / 1000 < ENGINE_SECONDS_BOUND, `the engine took ${(engineMs / 1000).toFixed(1)} s (bound ${ENGINE_SECONDS_BOUND} s): CIDR selection is quadratic again?`);
});
