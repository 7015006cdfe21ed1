/**
 * DNS-based policy: the `{matchName | matchPattern}` selectors of `toFQDNs` and of `rules.dns`,
 * read and matched as Cilium does (`pkg/policy/api/fqdn.go`, `pkg/fqdn/matchpattern`), and the
 * question a DNS proxy asks of an endpoint's policy: may it ask this resolver for this name?
 *
 * Matching (Cilium's): names and patterns compare lower-cased, as fully qualified names. In a
 * pattern `*` matches zero or more name characters within one label (`*.cilium.io` matches
 * `api.cilium.io`, not `a.b.cilium.io` nor `cilium.io`; `api-*.cilium.io` matches `api-v1.cilium.io`),
 * a leading `**.` one or more whole labels (`**.cilium.io` matches `a.b.cilium.io`), and a pattern
 * of stars alone every name.
 * @module
 */
import { at, checkFields, describe, join, readList, readObj, readString } from './context.ts';
import type { Ctx } from './context.ts';
import { lookupPolicy, PolicyDirection, PolicyVerdict, protocolNumber } from './policy-map.ts';
import type { PolicyEngine } from './engine.ts';
import { peerSelectsIdentity } from './resolve.ts';
import { type FqdnSelector, type PeerRule, type PolicyRule, type PortRule, type Protocol } from './types.ts';

/** Cilium's limit on a matchName or matchPattern (`matchpattern.MaxFQDNLength`). */
const MAX_FQDN_LENGTH = 255;
const NAME_CHARS = /^[-a-zA-Z0-9_.]+$/;
const PATTERN_CHARS = /^[-a-zA-Z0-9_.*]+$/;
const LABEL_CHARS = '[-a-z0-9_]';

/** A name as the selectors compare it: lower case, no trailing dot. */
export function normalizeDnsName(name: string): string {
  const lower = name.trim().toLowerCase();
  return lower.endsWith('.') && lower.length > 1 ? lower.slice(0, -1) : lower;
}

/** Cilium's regular expression of a matchPattern, over a name without its trailing dot. */
function patternSource(pattern: string): string {
  if (/^\*+\.?$/.test(pattern)) return `^(${LABEL_CHARS}+\\.)*${LABEL_CHARS}+$|^\\.?$`;
  let out = '';
  let rest = pattern;
  const deep = /^\*{2,}\./.exec(rest);
  if (deep !== null) {
    out += `(${LABEL_CHARS}+\\.)+`;
    rest = rest.slice(deep[0].length);
  }
  out += rest.replace(/\*+/g, '\u0000').replace(/\./g, '\\.').replaceAll('\u0000', `${LABEL_CHARS}*`);
  return `^${out}$`;
}

const compiled = new Map<string, RegExp>();

/** Whether `selector` selects `name` (any case, with or without the trailing dot). */
export function fqdnSelectorMatches(selector: FqdnSelector, name: string): boolean {
  const n = normalizeDnsName(name);
  if (selector.matchName !== undefined) return selector.matchName === n;
  const pattern = selector.matchPattern ?? '';
  let re = compiled.get(pattern);
  if (re === undefined) {
    re = new RegExp(patternSource(pattern));
    // Patterns come from policies: few, so the cache stays small; it is dropped whole if not.
    if (compiled.size > 10_000) compiled.clear();
    compiled.set(pattern, re);
  }
  return re.test(n);
}

/**
 * Reads a list of `{matchName | matchPattern}` (`toFQDNs`, `rules.dns`), normalised; undefined
 * when something was wrong (reported).
 */
export function readFqdnSelectors(ctx: Ctx, path: string, value: unknown): FqdnSelector[] | undefined {
  const list = readList(ctx, path, value);
  if (list === undefined) return undefined;
  const before = ctx.issues.length;
  if (list.length === 0) ctx.add(path, 'an empty list selects no name; remove the field or list matchName/matchPattern selectors');
  const out: FqdnSelector[] = [];
  list.forEach((item, i) => {
    const p = at(path, i);
    const obj = readObj(ctx, p, item);
    if (obj === undefined) {
      if (item === null || item === undefined) ctx.add(p, 'empty list item (write matchName or matchPattern)');
      return;
    }
    checkFields(ctx, p, obj, ['matchName', 'matchPattern']);
    const name = readString(ctx, join(p, 'matchName'), obj.matchName);
    const pattern = readString(ctx, join(p, 'matchPattern'), obj.matchPattern);
    if ((name === undefined || name === '') === (pattern === undefined || pattern === '')) {
      ctx.add(p, name === undefined || name === '' ? 'must have matchName or matchPattern' : 'matchName and matchPattern may not be combined in one selector; make them separate selectors');
      return;
    }
    if (name !== undefined && name !== '') {
      const n = name.trim();
      if (n.length > MAX_FQDN_LENGTH) ctx.add(join(p, 'matchName'), `must be at most ${MAX_FQDN_LENGTH} characters`);
      else if (!NAME_CHARS.test(n)) {
        ctx.add(join(p, 'matchName'), `${describe(name)} is not a DNS name (letters, digits, '-', '_' and '.'${n.includes('*') ? '; use matchPattern for wildcards' : ''})`);
      } else out.push({ matchName: normalizeDnsName(n) });
      return;
    }
    const pat = (pattern ?? '').trim();
    if (pat.length > MAX_FQDN_LENGTH) ctx.add(join(p, 'matchPattern'), `must be at most ${MAX_FQDN_LENGTH} characters`);
    else if (!PATTERN_CHARS.test(pat)) ctx.add(join(p, 'matchPattern'), `${describe(pattern)}: only letters, digits, '-', '_', '.' and '*' are allowed`);
    else out.push({ matchPattern: normalizeDnsName(pat) });
  });
  return ctx.issues.length === before ? out : undefined;
}

/** What an endpoint's policy lets it ask one resolver on one port. */
export type DnsVerdict =
  /** The query may not even reach the resolver at L3/L4 (or the endpoint is unknown). */
  | { allowed: false; reason: string }
  /** Every name (no DNS rule applies to this resolver and port), or the names `selectors` select. */
  | { allowed: true; allNames: true; ruleKeys: string[] }
  | { allowed: true; allNames: false; selectors: FqdnSelector[]; ruleKeys: string[] };

function portCovers(engine: PolicyEngine, rule: PortRule, protocol: Protocol, port: number): boolean {
  if (rule.protocol !== 'ANY' && rule.protocol !== protocol) return false;
  // An egress rule's name stands for that port of any endpoint known, as its map entries do.
  if (rule.name !== undefined) return engine.namedPorts(rule.name, 'egress').some((p) => p.port === port && p.protocol === protocol);
  if (rule.port === 0) return true;
  return port >= rule.port && port <= (rule.endPort ?? rule.port);
}


/**
 * The DNS rules that decide whether endpoint `endpointId` may ask the resolver of identity
 * `resolverIdentity` on `port`/`protocol`: the rules of the policy map entry the datapath would
 * pick for that packet, as Cilium merges L7 rules per port: a peer of those rules that covers the
 * port without DNS rules allows every name, otherwise the names of the union of their DNS rules.
 */
export function dnsVerdict(engine: PolicyEngine, endpointId: number, resolverIdentity: number, port: number, protocol: 'UDP' | 'TCP'): DnsVerdict {
  const policy = engine.endpointPolicy(endpointId);
  if (policy === undefined) return { allowed: false, reason: `endpoint ${endpointId} is not known to the policy engine` };
  if (!policy.egressEnforced) return { allowed: true, allNames: true, ruleKeys: [] };
  const result = lookupPolicy(policy.entries, resolverIdentity, PolicyDirection.EGRESS, protocolNumber(protocol), port);
  if (result.verdict !== PolicyVerdict.ALLOWED || result.entry === undefined) {
    return { allowed: false, reason: `egress to identity ${resolverIdentity} on ${port}/${protocol} is ${result.verdict === PolicyVerdict.DENIED ? 'denied' : 'not allowed'} by the endpoint's policy` };
  }
  const keys = new Set(result.entry.ruleKeys);
  // Asked for every query a pod sends: the entry's rules by key, not a walk of every rule, and a
  // peer's selectors (a toFQDNs peer has one per learned address) only once one of its ports covers the query's.
  const rules = [...keys].flatMap((key) => {
    const id = engine.ruleId(key);
    const rule = id === undefined ? undefined : engine.ruleById(id);
    return rule === undefined ? [] : [rule];
  });
  const selectors: FqdnSelector[] = [];
  const requires = engine.endpointRequirements(endpointId)?.egress ?? [];
  for (const rule of rules) {
    for (const peer of rule.egress) {
      const ports = (peer.ports ?? []).filter((p) => portCovers(engine, p, protocol, port));
      if (ports.length === 0 && (peer.ports ?? []).length > 0) continue;
      if (!peerSelectsIdentity(engine.cache, peer, resolverIdentity, requires)) continue;
      if (ports.length === 0) return { allowed: true, allNames: true, ruleKeys: [...keys] };
      for (const p of ports) {
        if (p.l7?.dns === undefined) return { allowed: true, allNames: true, ruleKeys: [...keys] };
        selectors.push(...p.l7.dns);
      }
    }
  }
  return { allowed: true, allNames: false, selectors, ruleKeys: [...keys] };
}

/** Whether a verdict allows `name`. */
export function dnsVerdictAllows(verdict: DnsVerdict, name: string): boolean {
  if (!verdict.allowed) return false;
  return verdict.allNames || verdict.selectors.some((s) => fqdnSelectorMatches(s, name));
}


/** Whether any peer of `rule` selects by name (toFQDNs). */
export function hasFqdnPeers(rule: PolicyRule): boolean {
  return rule.egress.some((peer) => peer.fqdns !== undefined);
}

/**
 * `rule` with each `toFQDNs` peer's learned addresses added as /32 and /128 CIDRs (from `rule` as
 * written, never an earlier expansion). A peer whose names resolved to nothing matches nothing.
 */
export function expandFqdnPeers(rule: PolicyRule, addresses: (selector: FqdnSelector) => readonly string[]): PolicyRule {
  if (!hasFqdnPeers(rule)) return rule;
  const expand = (peer: PeerRule): PeerRule => {
    if (peer.fqdns === undefined) return peer;
    const prefixes = new Set<string>();
    for (const selector of peer.fqdns) for (const ip of addresses(selector)) prefixes.add(ip.includes(':') ? `${ip}/128` : `${ip}/32`);
    if (prefixes.size === 0) return peer;
    return { ...peer, cidrs: [...(peer.cidrs ?? []), ...[...prefixes].sort().map((cidr) => ({ cidr, except: [] }))] };
  };
  return { ...rule, egress: rule.egress.map(expand) };
}
