/**
 * Which identities each peer of a rule (endpoint selector, entity, CIDR) selects, kept up to date
 * as identities come and go (Cilium's SelectorCache). Identities are plain `{ id, labels }`
 * (labels as `source:key` → value, the identity allocator's canonical form): pods with `k8s:`
 * labels, reserved identities with their `reserved:*` label, CIDR identities with `cidr:<prefix>`
 * plus `reserved:world` (or `world-ipv4`/`-ipv6`).
 *
 * - An empty endpoint selector and the entity `all` are wildcards: they select identity 0, "any",
 *   which the datapath looks up separately (no per-identity entries).
 * - CIDR peers select CIDR identities whose prefix lies inside the CIDR and outside every
 *   `except`, and the world identities when the CIDR is /0: never pods, nodes or reserved
 *   identities with labels of their own.
 * - Lookups go through a label index (`source:key=value` and `any:key=value`), so a selector with
 *   matchLabels only looks at identities that have one of its labels; CIDR selectors and CIDR
 *   identities meet in prefix tries (prefix-trie.ts), so a new CIDR identity visits only the
 *   selectors whose CIDR contains its prefix and a new CIDR selector only the identities inside
 *   its CIDR: importing N CIDR peers costs O(N × prefix length), not O(N²).
 * @module
 */
import { selectorMatches, splitLabelKey } from './selector.ts';
import { cidrContains, parseCidr, type Cidr } from './cidr.ts';
import { Prefix } from '../net/index.ts';
import { PrefixTrie } from './prefix-trie.ts';
import type { CidrRule, Entity, Selector } from './types.ts';
import { RESERVED_IDENTITY } from '../identity/index.ts';

export type LabelMap = Readonly<Record<string, string>>;

export interface IdentityInfo {
  id: number;
  labels: LabelMap;
}

/** What the engine needs of an identity allocator: the identities it knows. */
export interface IdentitySource {
  identities(): Iterable<IdentityInfo>;
}

/** Reserved identity numbers: the identity subsystem's table, Cilium's numericidentity.go. */
export const RESERVED_IDENTITIES = RESERVED_IDENTITY;

/** The reserved identities 1–11 with their labels (kube-apiserver also carries remote-node). */
export function reservedIdentityInfos(): IdentityInfo[] {
  return Object.entries(RESERVED_IDENTITIES).map(([name, id]) => ({
    id,
    labels: name === 'kube-apiserver' ? { 'reserved:kube-apiserver': '', 'reserved:remote-node': '' } : { [`reserved:${name}`]: '' },
  }));
}

/** Labels of a CIDR identity, as the identity allocator gives them: `cidr:<prefix>` + world. */
export function cidrIdentityLabels(cidr: string, options: { dualStack?: boolean } = {}): Record<string, string> {
  const parsed = parseCidr(cidr);
  if ('error' in parsed) throw new RangeError(parsed.error);
  const world = options.dualStack ? (parsed.family === 4 ? 'world-ipv4' : 'world-ipv6') : 'world';
  const out: Record<string, string> = { [`reserved:${world}`]: '' };
  if (parsed.bits > 0) out[`cidr:${cidr.includes(':') ? cidr.replaceAll(':', '-') : cidr}`] = '';
  return out;
}

/** The most specific `cidr:` prefix of an identity's labels (IPv6 written with `-` or `:`). */
export function identityCidr(labels: LabelMap): Cidr | undefined {
  let best: Cidr | undefined;
  for (const key of Object.keys(labels)) {
    if (!key.startsWith('cidr:')) continue;
    let text = key.slice(5);
    if (text.includes('-')) text = text.replaceAll('-', ':');
    const c = parseCidr(text);
    if ('error' in c) continue;
    if (!best || c.bits > best.bits) best = c;
  }
  return best;
}

const ANY_IPV4: Cidr = Prefix.parse('0.0.0.0/0');
const ANY_IPV6: Cidr = Prefix.parse('::/0');

const CLUSTER_RESERVED = ['host', 'remote-node', 'init', 'ingress', 'health', 'unmanaged', 'kube-apiserver'];

function has(labels: LabelMap, key: string): boolean {
  return Object.hasOwn(labels, key);
}
function isWorldLabelled(labels: LabelMap): boolean {
  return has(labels, 'reserved:world') || has(labels, 'reserved:world-ipv4') || has(labels, 'reserved:world-ipv6');
}
function hasSourcePrefix(labels: LabelMap, prefix: string): boolean {
  for (const k of Object.keys(labels)) if (k.startsWith(prefix)) return true;
  return false;
}

/** Whether an identity's world labels put it in `family` (world(2) is both). */
function worldFamily(labels: LabelMap, family: 4 | 6): boolean {
  if (has(labels, family === 4 ? 'reserved:world-ipv4' : 'reserved:world-ipv6')) return true;
  if (!has(labels, 'reserved:world')) return false;
  const c = identityCidr(labels);
  return c === undefined || c.family === family;
}

/** Whether an entity selects an identity (`all` is handled as a wildcard before this). */
export function entityMatches(entity: Entity, labels: LabelMap): boolean {
  switch (entity) {
    case 'all':
      return true;
    case 'none':
      return false;
    case 'world':
      return isWorldLabelled(labels);
    case 'world-ipv4':
      return worldFamily(labels, 4);
    case 'world-ipv6':
      return worldFamily(labels, 6);
    case 'cluster':
      if (CLUSTER_RESERVED.some((r) => has(labels, `reserved:${r}`))) return true;
      // Cluster-local identities: neither reserved nor CIDR.
      return !hasSourcePrefix(labels, 'reserved:') && !hasSourcePrefix(labels, 'cidr:');
    default:
      return has(labels, `reserved:${entity}`);
  }
}

/** A CIDR peer with its prefixes parsed. */
export interface ParsedCidrRule {
  cidr: Cidr;
  except: Cidr[];
}

/** Whether a CIDR peer (with excepts) selects an identity. */
export function cidrRuleMatches(rule: ParsedCidrRule, labels: LabelMap): boolean {
  return cidrRuleSelects(rule, identityCidr(labels), labels);
}

/** cidrRuleMatches with the identity's prefix (identityCidr of `labels`) already known. */
function cidrRuleSelects(rule: ParsedCidrRule, prefix: Cidr | undefined, labels: LabelMap): boolean {
  if (prefix === undefined) {
    // World identities stand for "every address not covered by a CIDR identity".
    return rule.cidr.bits === 0 && worldFamily(labels, rule.cidr.family);
  }
  if (!cidrContains(rule.cidr, prefix)) return false;
  return !rule.except.some((e) => cidrContains(e, prefix));
}

/** One peer of a PeerRule, as the cache keys it. */
export type PeerSelector =
  | { kind: 'endpoints'; selector: Selector }
  | { kind: 'entity'; entity: Entity }
  | { kind: 'cidr'; cidr: CidrRule };

function canonicalSelectorString(s: Selector): string {
  const labels = Object.keys(s.matchLabels)
    .sort()
    .map((k) => `${k}=${s.matchLabels[k]}`);
  const exprs = s.matchExpressions.map((r) => `${r.key} ${r.operator} (${[...r.values].sort().join(',')})`).sort();
  return `{${labels.join(',')}${exprs.length ? `;${exprs.join(';')}` : ''}}`;
}

/** The cache key of a peer selector: equal peers (in any rule) share one cache entry. */
export function peerSelectorKey(peer: PeerSelector): string {
  switch (peer.kind) {
    case 'endpoints':
      return `ep:${canonicalSelectorString(peer.selector)}`;
    case 'entity':
      return `entity:${peer.entity}`;
    case 'cidr':
      return `cidr:${peer.cidr.cidr}${peer.cidr.except.length ? `!${[...peer.cidr.except].sort().join(',')}` : ''}`;
  }
}

/** Index terms of a label set, without repeats: `source:key=value` and `any:key=value`. */
export function labelTerms(labels: LabelMap): string[] {
  const out = new Set<string>();
  for (const [k, v] of Object.entries(labels)) {
    out.add(`${k}=${v}`);
    const { source, key } = splitLabelKey(k);
    if (source !== 'any') out.add(`any:${key}=${v}`);
  }
  return [...out];
}

/** The terms a selector's matchLabels require (an identity matches them iff it has every term). */
export function selectorTerms(selector: Selector): string[] {
  const out = new Set<string>();
  for (const [k, v] of Object.entries(selector.matchLabels)) {
    const { source, key } = splitLabelKey(k);
    out.add(`${source === '' ? 'any' : source}:${key}=${v}`);
  }
  return [...out];
}

/**
 * Objects with labels, indexed by label, answering "which of them does this selector select"
 * without a full scan when the selector names a label. Used for identities (peers) and, by the
 * engine, for endpoints (rule subjects).
 */
export class LabelIndex<Id> {
  readonly #labels = new Map<Id, LabelMap>();
  readonly #postings = new Map<string, Set<Id>>();

  get size(): number {
    return this.#labels.size;
  }
  get(id: Id): LabelMap | undefined {
    return this.#labels.get(id);
  }
  entries(): IterableIterator<[Id, LabelMap]> {
    return this.#labels.entries();
  }

  set(id: Id, labels: LabelMap): void {
    this.delete(id);
    this.#labels.set(id, labels);
    for (const t of labelTerms(labels)) {
      let set = this.#postings.get(t);
      if (!set) this.#postings.set(t, (set = new Set()));
      set.add(id);
    }
  }

  delete(id: Id): boolean {
    const old = this.#labels.get(id);
    if (!old) return false;
    this.#labels.delete(id);
    for (const t of labelTerms(old)) {
      const set = this.#postings.get(t);
      set?.delete(id);
      if (set?.size === 0) this.#postings.delete(t);
    }
    return true;
  }

  /**
   * Ids whose labels the selector matches. matchLabels are answered from the index (the smallest
   * posting list, checked against the others); only matchExpressions are evaluated per id.
   */
  select(selector: Selector): Id[] {
    const terms = selectorTerms(selector);
    if (terms.length === 0) return this.filter((labels) => selectorMatches(selector, labels));
    let smallest: Set<Id> | undefined;
    const postings: Set<Id>[] = [];
    for (const t of terms) {
      const p = this.#postings.get(t);
      if (!p) return [];
      postings.push(p);
      if (!smallest || p.size < smallest.size) smallest = p;
    }
    const checkExpressions = selector.matchExpressions.length > 0;
    const out: Id[] = [];
    outer: for (const id of smallest!) {
      for (const p of postings) if (p !== smallest && !p.has(id)) continue outer;
      if (checkExpressions && !selectorMatches(selector, this.#labels.get(id)!)) continue;
      out.push(id);
    }
    return out;
  }

  /** Ids whose labels a predicate accepts (full scan). */
  filter(pred: (labels: LabelMap, id: Id) => boolean): Id[] {
    const out: Id[] = [];
    for (const [id, labels] of this.#labels) if (pred(labels, id)) out.push(id);
    return out;
  }
}

/** The label term a selector is indexed under: its first matchLabel, canonical. */
export function indexTerm(selector: Selector): string | undefined {
  for (const [k, v] of Object.entries(selector.matchLabels)) {
    const { source, key } = splitLabelKey(k);
    return `${source === '' ? 'any' : source}:${key}=${v}`;
  }
  return undefined;
}

export function isWildcardPeer(peer: PeerSelector): boolean {
  if (peer.kind === 'entity') return peer.entity === 'all';
  if (peer.kind === 'endpoints') return Object.keys(peer.selector.matchLabels).length === 0 && peer.selector.matchExpressions.length === 0;
  return false;
}

/** A cached peer selector and the identities it selects. */
export interface CachedSelector {
  readonly key: string;
  readonly peer: PeerSelector;
  /** Selects every identity: represented by identity 0 in the policy map. */
  readonly wildcard: boolean;
  /** Selected identities (empty for a wildcard). */
  readonly selections: ReadonlySet<number>;
  /** Rules (or other users) holding the selector; 0 = may be collected by `gc`. */
  readonly users: number;
}

interface SelectorState {
  key: string;
  peer: PeerSelector;
  wildcard: boolean;
  selections: Set<number>;
  users: number;
  /** Whether it selects an identity with these labels (CIDR selectors use `cidr` with the identity's parsed prefix instead). */
  matches: (labels: LabelMap) => boolean;
  /** Label term it is indexed under, or undefined (scanned on every identity change, unless a CIDR). */
  term: string | undefined;
  /** A CIDR peer, parsed: indexed in the CIDR selector trie instead of being scanned. */
  cidr: ParsedCidrRule | undefined;
  /** Creation order: candidates from the scan list and the CIDR trie are visited in it. */
  seq: number;
}

/** Which selectors gained or lost identities in an identity change. */
export interface SelectionChange {
  selector: string;
  added: number[];
  removed: number[];
}

export class SelectorCache {
  readonly #identities = new LabelIndex<number>();
  readonly #selectors = new Map<string, SelectorState>();
  /** Non-wildcard selectors by index term; CIDR selectors in #cidrSelectors; the rest in #scan. */
  readonly #byTerm = new Map<string, Set<SelectorState>>();
  readonly #scan = new Set<SelectorState>();
  readonly #cidrSelectors = new PrefixTrie<SelectorState>();
  #nextSelectorSeq = 0;
  /** Identity → selectors that select it. */
  readonly #selectedBy = new Map<number, Set<SelectorState>>();
  /** Identity → its most specific `cidr:` prefix, parsed once per upsert rather than per match. */
  readonly #prefixOf = new Map<number, Cidr>();
  /** Identities with a prefix, by prefix. */
  readonly #byPrefix = new PrefixTrie<number>();
  /** World-labelled identities without a prefix: the only others a /0 CIDR selects. */
  readonly #prefixlessWorld = new Set<number>();
  /**
   * Identity → position in #identities' iteration order (an upsert moves it to the end). Ids found
   * through a trie are sorted by it, so selections and lookups come out in the order a scan of
   * #identities gave.
   */
  readonly #identitySeq = new Map<number, number>();
  #nextIdentitySeq = 0;

  constructor(identities?: IdentitySource | Iterable<IdentityInfo>) {
    if (identities) {
      const list = Symbol.iterator in identities ? identities : identities.identities();
      for (const i of list) this.#index(i.id, i.labels);
    }
  }

  /** Stores an identity's labels in the label index and its prefix in the prefix trie. */
  #index(id: number, labels: LabelMap): Cidr | undefined {
    this.#unindexPrefix(id);
    this.#identities.set(id, labels);
    this.#identitySeq.set(id, this.#nextIdentitySeq++);
    const prefix = identityCidr(labels);
    if (prefix !== undefined) {
      this.#prefixOf.set(id, prefix);
      this.#byPrefix.add(prefix, id);
    } else if (isWorldLabelled(labels)) {
      this.#prefixlessWorld.add(id);
    }
    return prefix;
  }

  #unindexPrefix(id: number): void {
    const old = this.#prefixOf.get(id);
    if (old !== undefined) {
      this.#byPrefix.delete(old, id);
      this.#prefixOf.delete(id);
    }
    this.#prefixlessWorld.delete(id);
  }

  #bySeq(ids: number[]): number[] {
    const seq = this.#identitySeq;
    return ids.sort((a, b) => seq.get(a)! - seq.get(b)!);
  }

  get identityCount(): number {
    return this.#identities.size;
  }
  get selectorCount(): number {
    return this.#selectors.size;
  }
  identityLabels(id: number): LabelMap | undefined {
    return this.#identities.get(id);
  }
  identities(): IterableIterator<[number, LabelMap]> {
    return this.#identities.entries();
  }

  /** The identity whose labels are exactly `labels`, if any. */
  findIdentity(labels: LabelMap): number | undefined {
    const want = Object.keys(labels);
    const sel: Selector = { matchLabels: { ...labels }, matchExpressions: [] };
    for (const id of this.#identities.select(sel)) {
      const have = this.#identities.get(id)!;
      if (Object.keys(have).length === want.length) return id;
    }
    return undefined;
  }

  /** The most specific CIDR identity containing `ip` (a world identity when none does). */
  identityForIp(ip: string): number {
    const addr = parseCidr(ip);
    if ('error' in addr) throw new RangeError(addr.error);
    // The longest prefix containing the address; on a tie, the identity a scan would meet first.
    const longest = this.#byPrefix.containing(addr).at(-1);
    if (longest) return this.#bySeq([...longest[1]])[0];
    const familyWorld = addr.family === 4 ? RESERVED_IDENTITIES['world-ipv4'] : RESERVED_IDENTITIES['world-ipv6'];
    return this.#identities.get(RESERVED_IDENTITIES.world) || !this.#identities.get(familyWorld) ? RESERVED_IDENTITIES.world : familyWorld;
  }

  /** The cached selector for a peer, computed (without a user) on first use. */
  get(peer: PeerSelector): CachedSelector {
    const key = peerSelectorKey(peer);
    const existing = this.#selectors.get(key);
    if (existing) return existing;
    return this.#create(key, peer);
  }

  getByKey(key: string): CachedSelector | undefined {
    return this.#selectors.get(key);
  }

  /** Adds a user to a peer's selector (creating it). */
  acquire(peer: PeerSelector): CachedSelector {
    const s = this.get(peer) as SelectorState;
    s.users++;
    return s;
  }

  /** Drops a user; the selector is removed when it has none left. */
  release(key: string): void {
    const s = this.#selectors.get(key);
    if (!s) return;
    if (--s.users <= 0) this.#remove(s);
  }

  /** Removes selectors without users (those made by `get` alone). */
  gc(): number {
    let n = 0;
    for (const s of [...this.#selectors.values()]) {
      if (s.users <= 0) {
        this.#remove(s);
        n++;
      }
    }
    return n;
  }

  #create(key: string, peer: PeerSelector): SelectorState {
    const wildcard = isWildcardPeer(peer);
    let matches: (labels: LabelMap) => boolean;
    let term: string | undefined;
    let cidrRule: ParsedCidrRule | undefined;
    if (peer.kind === 'endpoints') {
      const sel = peer.selector;
      matches = (labels) => selectorMatches(sel, labels);
      term = indexTerm(sel);
    } else if (peer.kind === 'entity') {
      const entity = peer.entity;
      matches = (labels) => entityMatches(entity, labels);
    } else {
      const cidr = parseCidr(peer.cidr.cidr);
      if ('error' in cidr) throw new RangeError(`CIDR peer ${peer.cidr.cidr}: ${cidr.error}`);
      const except = peer.cidr.except.map((e) => parseCidr(e)).filter((e): e is Cidr => !('error' in e));
      const rule = (cidrRule = { cidr, except });
      matches = (labels) => cidrRuleMatches(rule, labels);
    }
    const s: SelectorState = { key, peer, wildcard, selections: new Set(), users: 0, matches, term, cidr: cidrRule, seq: this.#nextSelectorSeq++ };
    this.#selectors.set(key, s);
    if (wildcard) return s;
    if (term !== undefined) {
      let set = this.#byTerm.get(term);
      if (!set) this.#byTerm.set(term, (set = new Set()));
      set.add(s);
    } else if (cidrRule !== undefined) {
      this.#cidrSelectors.add(cidrRule.cidr, s);
    } else {
      this.#scan.add(s);
    }
    const ids =
      peer.kind === 'endpoints' ? this.#identities.select(peer.selector) : cidrRule !== undefined ? this.#cidrSelections(cidrRule) : this.#identities.filter(matches);
    for (const id of ids) this.#link(s, id);
    return s;
  }

  /** Identities a CIDR rule selects: those whose prefix is inside it, plus world ones for a /0. */
  #cidrSelections(rule: ParsedCidrRule): number[] {
    const out: number[] = [];
    for (const id of this.#byPrefix.within(rule.cidr)) {
      if (cidrRuleSelects(rule, this.#prefixOf.get(id), this.#identities.get(id)!)) out.push(id);
    }
    if (rule.cidr.bits === 0) {
      for (const id of this.#prefixlessWorld) if (cidrRuleSelects(rule, undefined, this.#identities.get(id)!)) out.push(id);
    }
    return this.#bySeq(out);
  }

  #link(s: SelectorState, id: number): void {
    s.selections.add(id);
    let set = this.#selectedBy.get(id);
    if (!set) this.#selectedBy.set(id, (set = new Set()));
    set.add(s);
  }
  #unlink(s: SelectorState, id: number): void {
    s.selections.delete(id);
    const set = this.#selectedBy.get(id);
    set?.delete(s);
    if (set?.size === 0) this.#selectedBy.delete(id);
  }

  #remove(s: SelectorState): void {
    this.#selectors.delete(s.key);
    for (const id of s.selections) this.#selectedBy.get(id)?.delete(s);
    if (s.term !== undefined) this.#byTerm.get(s.term)?.delete(s);
    else if (s.cidr !== undefined) this.#cidrSelectors.delete(s.cidr.cidr, s);
    else this.#scan.delete(s);
  }

  /**
   * Selectors that could select an identity with these labels and prefix: the scanned ones and
   * the CIDR selectors containing the prefix (the /0 ones when it has none) in creation order,
   * then the indexed ones by its terms.
   */
  #candidates(labels: LabelMap, prefix: Cidr | undefined): Set<SelectorState> {
    const cidr: SelectorState[] = [];
    for (const p of prefix === undefined ? [ANY_IPV4, ANY_IPV6] : [prefix]) {
      for (const [, selectors] of this.#cidrSelectors.containing(p)) for (const s of selectors) cidr.push(s);
    }
    let out: Set<SelectorState>;
    if (cidr.length === 0) out = new Set(this.#scan);
    else {
      // Merge two lists in creation order (the scan set is: selectors join it when created).
      cidr.sort((a, b) => a.seq - b.seq);
      out = new Set();
      let i = 0;
      for (const s of this.#scan) {
        while (i < cidr.length && cidr[i].seq < s.seq) out.add(cidr[i++]);
        out.add(s);
      }
      while (i < cidr.length) out.add(cidr[i++]);
    }
    for (const t of labelTerms(labels)) for (const s of this.#byTerm.get(t) ?? []) out.add(s);
    return out;
  }

  /**
   * Adds an identity, or changes its labels; returns the selectors whose selections changed.
   *
   * @example
   * cache.upsertIdentity(260, { 'k8s:org': 'empire' }); // [{ selector: 'ep:{any:org=empire}', added: [260], removed: [] }]
   */
  upsertIdentity(id: number, labels: LabelMap): SelectionChange[] {
    const before = new Set(this.#selectedBy.get(id) ?? []);
    const prefix = this.#index(id, labels);
    const after = new Set<SelectorState>();
    for (const s of this.#candidates(labels, prefix)) {
      if (s.cidr !== undefined ? cidrRuleSelects(s.cidr, prefix, labels) : s.matches(labels)) after.add(s);
    }
    const changes: SelectionChange[] = [];
    for (const s of before) {
      if (!after.has(s)) {
        this.#unlink(s, id);
        changes.push({ selector: s.key, added: [], removed: [id] });
      }
    }
    for (const s of after) {
      if (!before.has(s)) {
        this.#link(s, id);
        changes.push({ selector: s.key, added: [id], removed: [] });
      }
    }
    return changes;
  }

  /** Removes an identity; returns the selectors that lost it. */
  deleteIdentity(id: number): SelectionChange[] {
    if (!this.#identities.delete(id)) return [];
    this.#unindexPrefix(id);
    this.#identitySeq.delete(id);
    const changes: SelectionChange[] = [];
    for (const s of [...(this.#selectedBy.get(id) ?? [])]) {
      this.#unlink(s, id);
      changes.push({ selector: s.key, added: [], removed: [id] });
    }
    return changes;
  }

  /** Keys of the selectors that select an identity (wildcards aside: they select identity 0). */
  selectorsSelecting(id: number): string[] {
    return [...(this.#selectedBy.get(id) ?? [])].map((s) => s.key);
  }

  /** Identities a peer selects: `[0]` for a wildcard (any identity). */
  selectionsOf(peer: PeerSelector): number[] {
    const s = this.get(peer);
    return s.wildcard ? [0] : [...s.selections];
  }
}
