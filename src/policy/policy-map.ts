/**
 * The per-endpoint policy map (bpf/lib/policy.h): codecs of its C structs, how rule ports become
 * LPM keys (ranges as prefixes, protocol ANY as a wildcard), and the datapath's two-lookup
 * decision mirrored in TypeScript (for `tracePolicy`, and to compare against the real lookup).
 *
 * Key prefix: identity (32 bits, never wildcarded: identity 0 is a separate lookup) + direction
 * (8) + protocol (8) + port (16). 40 = all protocols and ports, 48 = all ports of one protocol,
 * 48+n = a port block, 64 = one port.
 * @module
 */
import { BpfMap, MapFlag, MapType, be16, pad, struct, u32, u8, type StructValue } from '../ebpf/index.ts';
import type { PortRule, Protocol } from './types.ts';
import type { HttpRule } from './l7-http.ts';

export const PolicyDirection = { INGRESS: 0, EGRESS: 1 } as const;
export type PolicyDirection = (typeof PolicyDirection)[keyof typeof PolicyDirection];
export type DirectionName = 'ingress' | 'egress';
export function directionName(d: PolicyDirection): DirectionName {
  return d === PolicyDirection.INGRESS ? 'ingress' : 'egress';
}

export const PREFIX_DIR = 40;
export const PREFIX_PROTO = 48;
export const PREFIX_FULL = 64;
export const POLICY_MAP_MAX_ENTRIES = 16384;
export const POLICY_F_DENY = 0x01;

/** IP protocol numbers of the rule model's protocols (ANY has none: it is expanded or wildcarded). */
export const PROTOCOL_NUMBER = { TCP: 6, UDP: 17, SCTP: 132, ICMP: 1, ICMPV6: 58 } as const;
const PROTOCOL_NAME: Record<number, string> = { 0: 'ANY', 6: 'TCP', 17: 'UDP', 132: 'SCTP', 1: 'ICMP', 58: 'ICMPV6' };
export function protocolName(n: number): string {
  return PROTOCOL_NAME[n] ?? String(n);
}
/** `Protocol` or an IP protocol number → number. */
export function protocolNumber(p: Protocol | number): number {
  if (typeof p === 'number') return p;
  if (p === 'ANY') return 0;
  return PROTOCOL_NUMBER[p];
}

/** Verdicts of `policy_can_access` (enum ciliate_policy_verdict). */
export const PolicyVerdict = { DENIED_DEFAULT: 0, ALLOWED: 1, DENIED: 2 } as const;
export type PolicyVerdict = (typeof PolicyVerdict)[keyof typeof PolicyVerdict];

/** Cilium's policy match types (enum ciliate_policy_match). */
export const PolicyMatch = { NONE: 0, L3_ONLY: 1, L3_L4: 2, L4_ONLY: 3, ALL: 4, L3_PROTO: 5, PROTO_ONLY: 6 } as const;
export type PolicyMatch = (typeof PolicyMatch)[keyof typeof PolicyMatch];
export const POLICY_MATCH_NAME: Record<PolicyMatch, string> = {
  0: 'none',
  1: 'L3-Only',
  2: 'L3-L4',
  3: 'L4-Only',
  4: 'all',
  5: 'L3-Proto',
  6: 'Proto-Only',
};

export const policyKeyCodec = struct('ciliate_policy_key', {
  prefixlen: u32,
  sec_label: u32,
  egress: u8,
  protocol: u8,
  dport: be16,
});
export type PolicyKeyValue = StructValue<(typeof policyKeyCodec)['fields']>;

export const policyEntryCodec = struct('ciliate_policy_entry', {
  proxy_port: be16,
  flags: u8,
  prefix_len: u8,
  auth_type: u8,
  _pad: pad(3),
  cookie: u32,
});
export type PolicyEntryValue = StructValue<(typeof policyEntryCodec)['fields']>;

export const policyResultCodec = struct('ciliate_policy_result', {
  verdict: u32,
  match_type: u32,
  cookie: u32,
  prefix_len: u32,
  proxy_port: u32,
});
export type PolicyResultValue = StructValue<(typeof policyResultCodec)['fields']>;

/** One policy map key, TS side. `port` is the first port of the block the prefix covers. */
export interface PolicyKey {
  /** Remote identity; 0 = any. */
  identity: number;
  direction: PolicyDirection;
  /** IP protocol number; 0 only with prefixLen 40. */
  protocol: number;
  port: number;
  /** 40..64 (see module doc). */
  prefixLen: number;
}

/** Canonical string of a key: `identity/dir/proto/port/prefixLen`. */
export function policyKeyString(k: PolicyKey): string {
  return `${k.identity}/${k.direction}/${k.protocol}/${k.port}/${k.prefixLen}`;
}

export function parsePolicyKeyString(s: string): PolicyKey {
  const [identity, direction, protocol, port, prefixLen] = s.split('/').map(Number);
  return { identity, direction: direction as PolicyDirection, protocol, port, prefixLen };
}

/** `80/TCP`, `8080-8095/TCP`, `ANY`, `TCP` (all ports): a key's L4 part for people. */
export function formatKeyL4(k: Pick<PolicyKey, 'protocol' | 'port' | 'prefixLen'>): string {
  if (k.prefixLen <= PREFIX_DIR) return 'any protocol';
  if (k.prefixLen <= PREFIX_PROTO) return `${protocolName(k.protocol)} (all ports)`;
  const bits = k.prefixLen - PREFIX_PROTO;
  const last = k.port + (1 << (16 - bits)) - 1;
  return last === k.port ? `${k.port}/${protocolName(k.protocol)}` : `${k.port}-${last}/${protocolName(k.protocol)}`;
}

export function encodeKey(k: PolicyKey): PolicyKeyValue {
  return { prefixlen: k.prefixLen, sec_label: k.identity, egress: k.direction, protocol: k.protocol, dport: k.port };
}

export function decodeKey(v: PolicyKeyValue): PolicyKey {
  return { identity: v.sec_label, direction: v.egress as PolicyDirection, protocol: v.protocol, port: v.dport, prefixLen: v.prefixlen };
}

/**
 * The minimal set of aligned power-of-two blocks covering `port..endPort` (inclusive), as
 * (first port, prefix bits of the 16-bit port). Port 0 (no end) = every port: one block of 0 bits.
 *
 * @example
 * portRangePrefixes(80);          // [{ port: 80, bits: 16 }]
 * portRangePrefixes(8080, 8095);  // [{ port: 8080, bits: 12 }]
 * portRangePrefixes(1, 3);        // [{ port: 1, bits: 16 }, { port: 2, bits: 15 }]
 */
export function portRangePrefixes(port: number, endPort?: number): { port: number; bits: number }[] {
  if (port === 0 && (endPort === undefined || endPort === 0)) return [{ port: 0, bits: 0 }];
  const hi = endPort === undefined || endPort < port ? port : endPort;
  if (!Number.isInteger(port) || !Number.isInteger(hi) || port < 0 || hi > 0xffff) {
    throw new RangeError(`port range ${port}-${hi} is outside 0-65535`);
  }
  const out: { port: number; bits: number }[] = [];
  let lo = port;
  while (lo <= hi) {
    let size = 1;
    // Grow while the block stays aligned at lo and within hi.
    while (size < 0x10000 && lo % (size * 2) === 0 && lo + size * 2 - 1 <= hi) size *= 2;
    out.push({ port: lo, bits: 16 - Math.log2(size) });
    lo += size;
  }
  return out;
}

/**
 * The (protocol, port, prefixLen) parts of the keys one port entry needs. ANY with a port becomes
 * TCP, UDP and SCTP (the protocol is wildcarded only with the port); ANY without one, prefix 40.
 * ICMP types are single "ports" (type 0 is EchoReply, not a wildcard). A named port has none.
 */
export function portRuleKeys(rule: PortRule): { protocol: number; port: number; prefixLen: number }[] {
  // A name must be resolved to numbers first (resolvePortRule): unresolved, its port 0 would read as every port.
  if (rule.name !== undefined) return [];
  if (rule.protocol === 'ICMP' || rule.protocol === 'ICMPV6') {
    return [{ protocol: PROTOCOL_NUMBER[rule.protocol], port: rule.port, prefixLen: PREFIX_FULL }];
  }
  const blocks = portRangePrefixes(rule.port, rule.endPort);
  if (rule.protocol === 'ANY' && rule.port === 0) return [{ protocol: 0, port: 0, prefixLen: PREFIX_DIR }];
  const protocols = rule.protocol === 'ANY' ? [6, 17, 132] : [PROTOCOL_NUMBER[rule.protocol]];
  const out: { protocol: number; port: number; prefixLen: number }[] = [];
  for (const protocol of protocols) for (const b of blocks) out.push({ protocol, port: b.port, prefixLen: PREFIX_PROTO + b.bits });
  return out;
}

/** Whether key `outer` covers `inner` (same identity and direction, outer's prefix contains inner's). */
export function keyCovers(outer: PolicyKey, inner: PolicyKey): boolean {
  if (outer.identity !== inner.identity || outer.direction !== inner.direction || outer.prefixLen > inner.prefixLen) return false;
  if (outer.prefixLen <= PREFIX_DIR) return true;
  if (outer.protocol !== inner.protocol) return false;
  const bits = outer.prefixLen - PREFIX_PROTO;
  return bits === 0 || inner.port >>> (16 - bits) === outer.port >>> (16 - bits);
}

/**
 * The node proxy's port: what an entry with L7 rules carries as `proxy_port`, and where the
 * datapath finds the proxy's listener (127.0.0.1 in the node's network namespace). One port for
 * every redirect: the proxy knows the original destination and the source, so it finds the rules
 * itself.
 */
export const L7_PROXY_PORT = 10080;

/**
 * The DNS proxy's port: what an entry with DNS rules carries as `proxy_port`; the DNS proxy
 * listens there on 127.0.0.1 for UDP (each datagram assigned to it by the datapath) and TCP.
 */
export const DNS_PROXY_PORT = 10053;

/** The HTTP rules one policy rule grants on an entry's port. */
export interface L7Grant {
  ruleKey: string;
  http: HttpRule[];
}

/** What an entry says, TS side; `ruleKeys` are the rules it came from (not in the map). */
export interface PolicyMapEntry {
  key: PolicyKey;
  deny: boolean;
  /** Numeric id of the deciding rule (lowest id among ruleKeys); 0 for the allow-all default. */
  cookie: number;
  ruleKeys: string[];
  /**
   * Set when every rule that allows this key does so with L7 rules: connections go to the node
   * proxy (`proxy_port`), which allows a request when any grant's rule matches it. A rule allowing
   * the key without L7 rules allows everything at L7, so then this is absent.
   */
  l7?: L7Grant[];
  /** Set when every rule that allows this key does so with DNS rules: its traffic goes to the DNS proxy. */
  dns?: true;
}

export function encodeEntry(e: Pick<PolicyMapEntry, 'key' | 'deny' | 'cookie' | 'l7' | 'dns'>): PolicyEntryValue {
  return {
    proxy_port: e.deny ? 0 : e.dns ? DNS_PROXY_PORT : e.l7 ? L7_PROXY_PORT : 0,
    flags: e.deny ? POLICY_F_DENY : 0,
    prefix_len: e.key.prefixLen,
    auth_type: 0,
    cookie: e.cookie,
  };
}

export interface LookupResult {
  verdict: PolicyVerdict;
  match: PolicyMatch;
  cookie: number;
  prefixLen: number;
  /** The deciding entry, when there is one. */
  entry?: PolicyMapEntry;
}

function longestMatch(
  entries: ReadonlyMap<string, PolicyMapEntry>,
  identity: number,
  direction: PolicyDirection,
  protocol: number,
  port: number,
): PolicyMapEntry | undefined {
  for (let bits = 16; bits >= 0; bits--) {
    const masked = bits === 0 ? 0 : (port >>> (16 - bits)) << (16 - bits);
    const e = entries.get(`${identity}/${direction}/${protocol}/${masked}/${PREFIX_PROTO + bits}`);
    if (e) return e;
  }
  return entries.get(`${identity}/${direction}/0/0/${PREFIX_DIR}`);
}

function matchType(e: PolicyMapEntry, l3: boolean): PolicyMatch {
  if (e.key.prefixLen <= PREFIX_DIR) return l3 ? PolicyMatch.L3_ONLY : PolicyMatch.ALL;
  if (e.key.prefixLen <= PREFIX_PROTO) return l3 ? PolicyMatch.L3_PROTO : PolicyMatch.PROTO_ONLY;
  return l3 ? PolicyMatch.L3_L4 : PolicyMatch.L4_ONLY;
}

/** policy_can_access in TypeScript, over the entries the engine computed. */
export function lookupPolicy(
  entries: ReadonlyMap<string, PolicyMapEntry>,
  identity: number,
  direction: PolicyDirection,
  protocol: number,
  port: number,
): LookupResult {
  const l3 = longestMatch(entries, identity, direction, protocol, port);
  const l4 = longestMatch(entries, 0, direction, protocol, port);
  let pickL3: boolean;
  if (l3 && l4) pickL3 = l3.deny !== l4.deny ? l3.deny : l3.key.prefixLen >= l4.key.prefixLen;
  else if (l3) pickL3 = true;
  else if (l4) pickL3 = false;
  else return { verdict: PolicyVerdict.DENIED_DEFAULT, match: PolicyMatch.NONE, cookie: 0, prefixLen: 0 };
  if (identity === 0) pickL3 = false;
  const e = (pickL3 ? l3 : l4)!;
  return {
    verdict: e.deny ? PolicyVerdict.DENIED : PolicyVerdict.ALLOWED,
    match: matchType(e, pickL3),
    cookie: e.cookie,
    prefixLen: e.key.prefixLen,
    entry: e,
  };
}

/** Pin name of an endpoint's policy map in bpffs (as Cilium's cilium_policy_v2_<id>). */
export function policyMapPinName(endpointId: number): string {
  return `ciliate_policy_${endpointId}`;
}

export type PolicyBpfMap = BpfMap<PolicyKeyValue, PolicyEntryValue>;

/**
 * Creates an endpoint's policy map (LPM trie). The kernel name is at most 15 characters, so it
 * is `cpol_<id>`; the pin name (policyMapPinName) is the one to look for.
 */
export function createPolicyMap(endpointId: number, maxEntries = POLICY_MAP_MAX_ENTRIES): PolicyBpfMap {
  return BpfMap.create(
    {
      type: MapType.LPM_TRIE,
      keySize: policyKeyCodec.size,
      valueSize: policyEntryCodec.size,
      maxEntries,
      flags: MapFlag.NO_PREALLOC,
      name: `cpol_${endpointId}`,
    },
    policyKeyCodec,
    policyEntryCodec,
  );
}

/** Applies a diff (diffEntries) to a policy map: upserts first, then deletes. */
export function applyPolicyDiff(
  map: BpfMap<PolicyKeyValue, PolicyEntryValue>,
  diff: { upserts: readonly PolicyMapEntry[]; deletes: readonly PolicyKey[] },
): void {
  // One BPF_MAP_UPDATE_BATCH for all upserts: a new endpoint's policy is dozens of entries, and a
  // syscall per entry was most of the time it took to program thousands of endpoints.
  if (diff.upserts.length === 1) map.update(encodeKey(diff.upserts[0].key), encodeEntry(diff.upserts[0]));
  else if (diff.upserts.length > 1) map.updateBatch(diff.upserts.map((e) => [encodeKey(e.key), encodeEntry(e)] as const));
  for (const k of diff.deletes) map.delete(encodeKey(k));
}
