/**
 * From rules to the entries of one endpoint's policy map (Cilium's `resolvePolicy` + MapState).
 *
 * - A direction is enforced (default deny) when a rule selecting the endpoint has allow or deny
 *   rules in it, unless that rule sets `enableDefaultDeny.<dir>: false`; `true` turns it on by
 *   itself. A direction no rule enforces is allow-all: one wildcard entry (any identity, any
 *   protocol) with cookie 0, beside any deny entries.
 * - Each (peer identity × port block) of a PeerRule becomes a key; a wildcard peer (empty
 *   selector, entity `all`) uses identity 0. Without ports: every protocol and port (prefix 40).
 * - Same key from several rules: deny beats allow; otherwise the entry lists every rule and its
 *   cookie is the lowest rule id.
 * - Deny precedence inside one LPM lookup: an allow covered by a broader deny of the same identity
 *   (or of identity 0) is left out, since the trie would return the narrower allow.
 * - Requirements (`PeerRule.requires`) of the rules selecting the endpoint narrow the identities
 *   of every `endpoints` selector of the same kind (allow or deny) and direction to those matching
 *   all of them; entities, CIDRs and a ports-only rule's implied wildcard stay as they are.
 * - HTTP rules are ORed with those of the allows that cover their key (a broader key of the same
 *   peer, the same or a broader key of every peer); an allow without L7 rules among them allows all.
 * @module
 */
import { selectorMatches } from './selector.ts';
import { type PolicyRule, type PeerRule, type PortRule, type Selector, ruleKey } from './types.ts';
import type { HttpRule } from './l7-http.ts';
import {
  PolicyDirection,
  PREFIX_DIR,
  PREFIX_PROTO,
  PROTOCOL_NUMBER,
  keyCovers,
  policyKeyString,
  portRuleKeys,
  type PolicyKey,
  type PolicyMapEntry,
} from './policy-map.ts';
import { peerSelectorKey, type CachedSelector, type LabelMap, type PeerSelector, type SelectorCache } from './selector-cache.ts';

export interface ResolvedPolicy {
  ingressEnforced: boolean;
  egressEnforced: boolean;
  /** By policyKeyString(key). */
  entries: Map<string, PolicyMapEntry>;
  /** Rules that select the endpoint (ruleKeys), in input order. */
  selectingRules: string[];
}

export interface ResolveOptions {
  /** Cookie of a rule (its numeric id); default: position in `rules` + 1. */
  ruleId?: (rule: PolicyRule, index: number) => number;
  /** Rules already known to select the endpoint (skips selector evaluation on `endpointLabels`). */
  preselected?: boolean;
  /**
   * Compute only the entries of this remote identity (an identity change): `entries` then holds
   * just those. Pass the endpoint's current entries as `base`: their identity-0 denies decide
   * which of the identity's allows are covered.
   */
  onlyIdentity?: number;
  base?: ReadonlyMap<string, PolicyMapEntry>;
  /** What a named port is in each direction (see PortRule.name); absent: a named port allows nothing. */
  namedPorts?: NamedPortLookup;
  /**
   * The requirements of every rule selecting the endpoint, when `rules` are not all of them (an
   * identity change resolves only some); default: those of the rules in `rules` that select it.
   */
  requirements?: Requirements;
}

const RULE_LISTS = ['ingress', 'egress', 'ingressDeny', 'egressDeny'] as const;
type RuleList = (typeof RULE_LISTS)[number];

/** `fromRequires`/`toRequires` of the rules selecting an endpoint, per rule list, without repeats. */
export type Requirements = Record<RuleList, Selector[]>;

/** The requirements of `rules` (all of them: pass only those selecting the endpoint). */
export function collectRequirements(rules: Iterable<PolicyRule>): Requirements {
  const out: Requirements = { ingress: [], egress: [], ingressDeny: [], egressDeny: [] };
  const seen = new Set<string>();
  for (const rule of rules) {
    for (const list of RULE_LISTS) {
      for (const peer of rule[list]) {
        for (const sel of peer.requires ?? []) {
          const k = `${list}|${JSON.stringify(sel)}`;
          if (seen.has(k)) continue;
          seen.add(k);
          out[list].push(sel);
        }
      }
    }
  }
  return out;
}

/** The cached selectors of requirements that narrow anything (a wildcard requirement does not). */
function requirementSelectors(cache: SelectorCache, requires: readonly Selector[]): CachedSelector[] {
  return requires.map((selector) => cache.get({ kind: 'endpoints', selector })).filter((s) => !s.wildcard);
}

/** Whether a peer selector is one that requirements narrow. */
function narrowable(peer: PeerRule, ps: PeerSelector): boolean {
  return ps.kind === 'endpoints' && peer.portsOnly !== true;
}

/**
 * Whether one of `peer`'s selectors selects `identity` (a wildcard, such as a ports-only rule's,
 * every identity, as its identity-0 entries do), its `endpoints` narrowed by `requires` (the
 * requirements of its rule list for the endpoint, see collectRequirements). Selectors the cache
 * does not hold select nothing.
 */
export function peerSelectsIdentity(cache: SelectorCache, peer: PeerRule, identity: number, requires: readonly Selector[]): boolean {
  const reqs = requirementSelectors(cache, requires);
  return peerSelectors(peer).some((ps) => {
    const s = cache.getByKey(peerSelectorKey(ps));
    if (s === undefined || !(s.wildcard || s.selections.has(identity))) return false;
    return !narrowable(peer, ps) || reqs.every((r) => r.selections.has(identity));
  });
}

/** A port of an endpoint's container that has a name. */
export interface EndpointNamedPort {
  name: string;
  port: number;
  protocol: 'TCP' | 'UDP' | 'SCTP';
}

/**
 * The ports a name stands for in an endpoint's policy: for ingress its own port of that name, for
 * egress those of every endpoint known (the destinations').
 */
export type NamedPortLookup = (name: string, direction: 'ingress' | 'egress') => readonly EndpointNamedPort[];

/**
 * A port entry as numbers: itself, or for a named port one entry per port the name stands for
 * whose protocol the entry allows (ANY: each), with that port's protocol. Nothing when the name
 * stands for no port.
 */
export function resolvePortRule(rule: PortRule, direction: 'ingress' | 'egress', lookup: NamedPortLookup | undefined): PortRule[] {
  if (rule.name === undefined) return [rule];
  const out: PortRule[] = [];
  for (const np of lookup?.(rule.name, direction) ?? []) {
    if (rule.protocol !== 'ANY' && rule.protocol !== np.protocol) continue;
    const resolved: PortRule = { port: np.port, protocol: np.protocol };
    if (rule.l7 !== undefined) resolved.l7 = rule.l7;
    out.push(resolved);
  }
  return out;
}

/** The peers of a PeerRule, as SelectorCache keys them. */
export function peerSelectors(peer: PeerRule): PeerSelector[] {
  const out: PeerSelector[] = [];
  for (const selector of peer.endpoints ?? []) out.push({ kind: 'endpoints', selector });
  for (const entity of peer.entities ?? []) out.push({ kind: 'entity', entity });
  for (const cidr of peer.cidrs ?? []) out.push({ kind: 'cidr', cidr });
  return out;
}

/** Every peer selector a rule uses (all four lists), requirements included. */
export function rulePeerSelectors(rule: PolicyRule): PeerSelector[] {
  return [...rule.ingress, ...rule.egress, ...rule.ingressDeny, ...rule.egressDeny].flatMap((peer) => [
    ...peerSelectors(peer),
    ...(peer.requires ?? []).map((selector): PeerSelector => ({ kind: 'endpoints', selector })),
  ]);
}

const DIRS = [
  { dir: PolicyDirection.INGRESS, name: 'ingress', allow: 'ingress', deny: 'ingressDeny' },
  { dir: PolicyDirection.EGRESS, name: 'egress', allow: 'egress', deny: 'egressDeny' },
] as const;

/** Whether a rule turns default deny on for a direction (see module doc). */
export function ruleEnforces(rule: PolicyRule, direction: 'ingress' | 'egress'): boolean {
  const flag = rule.enableDefaultDeny[direction];
  if (flag !== undefined) return flag;
  const deny = direction === 'ingress' ? rule.ingressDeny : rule.egressDeny;
  return rule[direction].length > 0 || deny.length > 0;
}

/** The L7 rules an allow comes with: HTTP rules (the node proxy) or DNS rules (the DNS proxy). */
interface L7Allow {
  http?: HttpRule[];
  dns?: true;
}

type L4Key = { protocol: number; port: number; prefixLen: number; l7?: L7Allow };

const ALL_L4: L4Key[] = [{ protocol: 0, port: 0, prefixLen: PREFIX_DIR }];

/**
 * A port entry's keys. With HTTP rules only its TCP key, which carries them (the node proxy speaks
 * TCP); with DNS rules every key, UDP and TCP, all to the DNS proxy (a protocol it cannot take is
 * dropped by the datapath, never let through).
 */
function portKeysWithL7(rule: PortRule): L4Key[] {
  const keys = portRuleKeys(rule);
  if (rule.l7?.dns) return keys.map((k) => ({ ...k, l7: { dns: true } }));
  if (!rule.l7?.http) return keys;
  return keys.filter((k) => k.protocol === PROTOCOL_NUMBER.TCP).map((k) => ({ ...k, l7: { http: rule.l7!.http! } }));
}

class EntryBuilder {
  readonly entries = new Map<string, PolicyMapEntry>();
  /** `identity/dir` pairs that have deny entries: only their allows need the cover check. */
  readonly denied = new Set<string>();
  /** Entries that got HTTP rules (some may have lost them since): the only ones #widenHttp reads. */
  readonly #withHttp: PolicyMapEntry[] = [];

  /**
   * `l7`: the L7 rules the allow comes with (none: every request). Allows are ORed: a key keeps a
   * redirect only while every rule allowing it has L7 rules. DNS wins over HTTP on a key both
   * claim: its proxy answers what is not DNS with nothing, so the mix allows less, never more.
   */
  add(key: PolicyKey, deny: boolean, cookie: number, rk: string, l7?: L7Allow): void {
    const ks = policyKeyString(key);
    const e = this.entries.get(ks);
    if (!e) {
      const entry: PolicyMapEntry = { key, deny, cookie, ruleKeys: [rk] };
      if (l7?.http && !deny) {
        entry.l7 = [{ ruleKey: rk, http: l7.http }];
        this.#withHttp.push(entry);
      }
      if (l7?.dns && !deny) entry.dns = true;
      this.entries.set(ks, entry);
    } else if (e.deny === deny) {
      if (!e.ruleKeys.includes(rk)) e.ruleKeys.push(rk);
      if (cookie < e.cookie || e.cookie === 0) e.cookie = cookie;
      if (!deny && (e.l7 || e.dns)) {
        if (!l7) {
          delete e.l7;
          delete e.dns;
        } else if (l7.dns) {
          delete e.l7;
          e.dns = true;
        } else if (e.l7 && l7.http) e.l7.push({ ruleKey: rk, http: l7.http });
      }
    } else if (deny) {
      this.entries.set(ks, { key, deny, cookie, ruleKeys: [rk] });
    }
    if (deny) this.denied.add(`${key.identity}/${key.direction}`);
  }

  /** Whether a deny entry of `identity` covers `key` (same direction, shorter or equal prefix). */
  #coveredBy(identity: number, key: PolicyKey): boolean {
    if (!this.denied.has(`${identity}/${key.direction}`)) return false;
    const base = `${identity}/${key.direction}/`;
    const d = this.entries.get(`${base}0/0/${PREFIX_DIR}`);
    if (d?.deny) return true;
    if (key.prefixLen <= PREFIX_DIR) return false;
    for (let len = PREFIX_PROTO; len <= key.prefixLen; len++) {
      const bits = len - PREFIX_PROTO;
      const port = bits === 0 ? 0 : (key.port >>> (16 - bits)) << (16 - bits);
      const e = this.entries.get(`${base}${key.protocol}/${port}/${len}`);
      if (e?.deny) return true;
    }
    return false;
  }

  /** `wildcard`: the endpoint's identity-0 entries when this builder computes one identity's only. */
  finish(wildcard?: ReadonlyMap<string, PolicyMapEntry>): Map<string, PolicyMapEntry> {
    this.#splitUnderWildcardHttp(wildcard);
    if (this.denied.size > 0) {
      for (const [ks, e] of this.entries) {
        if (e.deny) continue;
        if (this.#coveredBy(e.key.identity, e.key) || (e.key.identity !== 0 && this.#coveredBy(0, e.key))) this.entries.delete(ks);
      }
    }
    this.#widenHttp(wildcard);
    return this.entries;
  }

  /**
   * An allow of every peer with HTTP rules on a narrower key than a peer's own allow wins that
   * peer's lookups there (longest prefix) and would hold it to those HTTP rules alone. So the peer
   * gets an entry of its own at that key, to which #widenHttp then gives both allows' HTTP rules,
   * or none when its own allow has none.
   */
  #splitUnderWildcardHttp(wildcard: ReadonlyMap<string, PolicyMapEntry> | undefined): void {
    const everyPeer =
      wildcard === undefined
        ? this.#withHttp.filter((e) => e.key.identity === 0 && e.l7 !== undefined && this.entries.get(policyKeyString(e.key)) === e)
        : [...wildcard.values()].filter((e) => !e.deny && e.l7 !== undefined);
    if (everyPeer.length === 0) return;
    for (const own of [...this.entries.values()]) {
      if (own.key.identity === 0 || own.deny || own.dns) continue;
      for (const w of everyPeer) {
        if (w.key.prefixLen <= own.key.prefixLen || !keyCovers({ ...own.key, identity: 0 }, w.key)) continue;
        const key = { ...w.key, identity: own.key.identity };
        const ks = policyKeyString(key);
        if (this.entries.has(ks)) continue;
        const split: PolicyMapEntry = { key, deny: false, cookie: own.cookie, ruleKeys: [...own.ruleKeys], l7: [] };
        this.entries.set(ks, split);
        this.#withHttp.push(split);
      }
    }
  }

  /**
   * Allows are ORed across keys too. The datapath and the proxy pick an entry by longest prefix,
   * identity before identity 0 at a tie, but Cilium's proxy judges a request by every rule on the
   * port (cilium/cilium#3509): a request of a peer is allowed by its own HTTP rules or by those of
   * any allow that also covers the key, a broader one of the same peer or one of every peer
   * (identity 0) at the same or a broader key, and an allow without L7 rules allows every request.
   * So an entry with HTTP rules takes the HTTP rules of the allows covering it, and has none (no
   * redirect) when one of them has none. Broad entries and identity 0 go first: what they end up
   * with is what the narrower ones take.
   */
  #widenHttp(wildcard: ReadonlyMap<string, PolicyMapEntry> | undefined): void {
    if (this.#withHttp.length === 0) return;
    const withHttp = this.#withHttp.filter((e) => e.l7 !== undefined && this.entries.get(policyKeyString(e.key)) === e);
    withHttp.sort((a, b) => Number(a.key.identity !== 0) - Number(b.key.identity !== 0) || a.key.prefixLen - b.key.prefixLen);
    const at = (key: PolicyKey): PolicyMapEntry | undefined => (key.identity === 0 && wildcard !== undefined ? wildcard : this.entries).get(policyKeyString(key));
    for (const e of withHttp) {
      const { identity, direction, protocol, port, prefixLen } = e.key;
      const covering: PolicyMapEntry[] = [];
      for (const id of identity === 0 ? [0] : [identity, 0]) {
        const dirEntry = at({ identity: id, direction, protocol: 0, port: 0, prefixLen: PREFIX_DIR });
        if (dirEntry) covering.push(dirEntry);
        // The same peer: strictly broader keys; every peer: the same key too.
        const maxLen = id === identity ? prefixLen - 1 : prefixLen;
        for (let len = PREFIX_PROTO; len <= maxLen; len++) {
          const bits = len - PREFIX_PROTO;
          const masked = bits === 0 ? 0 : (port >>> (16 - bits)) << (16 - bits);
          const c = at({ identity: id, direction, protocol, port: masked, prefixLen: len });
          if (c) covering.push(c);
        }
      }
      for (const c of covering) {
        if (c === e || c.deny || c.dns) continue;
        if (c.l7 === undefined) {
          delete e.l7;
          break;
        }
        for (const g of c.l7) if (!e.l7!.some((x) => x.ruleKey === g.ruleKey && x.http === g.http)) e.l7!.push(g);
      }
    }
  }
}

/**
 * The policy map entries of an endpoint with `endpointLabels`, under `rules`, with peers resolved
 * through `cache`.
 *
 * @example
 * const cache = new SelectorCache([{ id: 260, labels: { 'k8s:org': 'empire' } }]);
 * const p = resolveEndpointPolicy({ 'k8s:org': 'empire', 'k8s:class': 'deathstar' }, rules, cache);
 * p.ingressEnforced; // true
 * [...p.entries.keys()]; // ['260/0/6/80/64', '0/1/0/0/40']
 */
export function resolveEndpointPolicy(
  endpointLabels: LabelMap,
  rules: readonly PolicyRule[],
  cache: SelectorCache,
  options: ResolveOptions = {},
): ResolvedPolicy {
  const builder = new EntryBuilder();
  const selectingRules: string[] = [];
  const enforced = { ingress: false, egress: false };
  const ids = new Map<string, number[]>();
  const only = options.onlyIdentity;
  if (only !== undefined && options.base) {
    for (const e of options.base.values()) {
      if (e.key.identity === 0 && e.deny) builder.add(e.key, true, e.cookie, e.ruleKeys[0] ?? '');
    }
  }
  const onlyList = only === undefined ? [] : [only];
  const identitiesOf = (peer: PeerSelector): number[] => {
    const s = cache.get(peer);
    if (only !== undefined) return !s.wildcard && s.selections.has(only) ? onlyList : [];
    if (s.wildcard) return [0];
    let list = ids.get(s.key);
    if (!list) ids.set(s.key, (list = [...s.selections]));
    return list;
  };
  const selected = rules.map((rule) => options.preselected === true || selectorMatches(rule.endpointSelector, endpointLabels));
  const requirements = options.requirements ?? collectRequirements(rules.filter((_r, i) => selected[i]));
  const reqs = {} as Record<RuleList, CachedSelector[]>;
  for (const list of RULE_LISTS) reqs[list] = requirementSelectors(cache, requirements[list]);
  const narrowedIds = new Map<string, number[]>();
  /** The identities of an `endpoints` selector that match every requirement of its rule list. */
  const narrowedOf = (ps: PeerSelector, list: RuleList): number[] => {
    const s = cache.get(ps);
    const all = s.wildcard ? reqs[list] : [s, ...reqs[list]];
    if (only !== undefined) return all.every((x) => x.selections.has(only)) ? onlyList : [];
    const ck = `${list}|${s.key}`;
    let out = narrowedIds.get(ck);
    if (!out) {
      const [first, ...rest] = all;
      narrowedIds.set(ck, (out = [...first.selections].filter((id) => rest.every((r) => r.selections.has(id)))));
    }
    return out;
  };
  rules.forEach((rule, index) => {
    if (!selected[index]) return;
    const rk = ruleKey(rule);
    selectingRules.push(rk);
    const cookie = options.ruleId ? options.ruleId(rule, index) : index + 1;
    for (const d of DIRS) {
      if (ruleEnforces(rule, d.name)) enforced[d.name] = true;
      for (const [listName, deny] of [
        [d.allow, false],
        [d.deny, true],
      ] as const) {
        const narrowing = reqs[listName].length > 0;
        for (const peer of rule[listName]) {
          // A peer whose ports are all names that stand for nothing here matches nothing.
          const l4 =
            peer.ports && peer.ports.length > 0
              ? peer.ports.flatMap((p) => (p.name === undefined ? portKeysWithL7(p) : resolvePortRule(p, d.name, options.namedPorts).flatMap(portKeysWithL7)))
              : ALL_L4;
          for (const ps of peerSelectors(peer)) {
            for (const identity of narrowing && narrowable(peer, ps) ? narrowedOf(ps, listName) : identitiesOf(ps)) {
              for (const k of l4) {
                builder.add({ identity, direction: d.dir, protocol: k.protocol, port: k.port, prefixLen: k.prefixLen }, deny, cookie, rk, k.l7);
              }
            }
          }
        }
      }
    }
  });
  if (only !== undefined) {
    const wildcard = new Map<string, PolicyMapEntry>();
    for (const [k, e] of options.base ?? []) if (e.key.identity === 0) wildcard.set(k, e);
    const entries = builder.finish(only === 0 ? undefined : wildcard);
    for (const [k, e] of entries) if (e.key.identity !== only) entries.delete(k);
    return { ingressEnforced: enforced.ingress, egressEnforced: enforced.egress, entries, selectingRules };
  }
  for (const d of DIRS) {
    if (enforced[d.name]) continue;
    const key: PolicyKey = { identity: 0, direction: d.dir, protocol: 0, port: 0, prefixLen: PREFIX_DIR };
    const ks = policyKeyString(key);
    if (!builder.entries.has(ks)) builder.entries.set(ks, { key, deny: false, cookie: 0, ruleKeys: [] });
  }
  return { ingressEnforced: enforced.ingress, egressEnforced: enforced.egress, entries: builder.finish(), selectingRules };
}

export interface EntriesDiff {
  /** New entries and entries whose value (deny, cookie) changed. */
  upserts: PolicyMapEntry[];
  deletes: PolicyKey[];
}

function sameValue(a: PolicyMapEntry, b: PolicyMapEntry): boolean {
  return a.deny === b.deny && a.cookie === b.cookie && (a.l7 === undefined) === (b.l7 === undefined) && a.dns === b.dns;
}

/**
 * What to write to move a policy map from `old` to `next`. Only the map's value counts: an entry
 * whose ruleKeys changed but whose deny bit and cookie did not is not rewritten.
 */
export function diffEntries(old: ReadonlyMap<string, PolicyMapEntry>, next: ReadonlyMap<string, PolicyMapEntry>): EntriesDiff {
  const upserts: PolicyMapEntry[] = [];
  const deletes: PolicyKey[] = [];
  for (const [k, e] of next) {
    const o = old.get(k);
    if (!o || !sameValue(o, e)) upserts.push(e);
  }
  for (const [k, o] of old) if (!next.has(k)) deletes.push(o.key);
  return { upserts, deletes };
}

/**
 * Every prefix the rules name (CIDRs and their excepts), sorted and without repeats. CIDR peers
 * select CIDR identities, so — as Cilium does — the agent should hold a CIDR identity for each
 * of these: an `except` only takes effect for addresses whose identity is the except prefix (or
 * inside it); without one they resolve to a wider prefix or to world.
 */
export function ruleCidrPrefixes(rules: readonly PolicyRule[]): string[] {
  const out = new Set<string>();
  for (const rule of rules) {
    for (const peer of [...rule.ingress, ...rule.egress, ...rule.ingressDeny, ...rule.egressDeny]) {
      for (const c of peer.cidrs ?? []) {
        out.add(c.cidr);
        for (const e of c.except) out.add(e);
      }
    }
  }
  return [...out].sort();
}
