/**
 * Hubble's flow filters: each FlowFilter is an AND of the fields it sets, each field an OR of
 * its values; a flow passes when it matches some whitelist filter (or there is none) and no
 * blacklist filter. Filters are checked and compiled once per request, so a malformed one is
 * refused before any flow is sent, naming the field (`whitelist[0].source_ip[1]`).
 * @module
 */
import { Addr, Prefix } from '../net/index.ts';
import { selectorMatches, type Selector, type SelectorRequirement } from '../policy/index.ts';
import { InvalidRequestError } from './errors.ts';
import { TCP_FLAG_KEYS, TRAFFIC_DIRECTIONS, VERDICTS, type Flow, type FlowEndpoint, type FlowFilter, type TcpFlags } from './types.ts';

export type FlowPredicate = (flow: Flow) => boolean;

/** Hubble's DropReason names the filter accepts, by number (the .proto's enum). */
const DROP_REASON_ENUM: Readonly<Record<string, number>> = {
  DROP_REASON_UNKNOWN: 0,
  INVALID_SOURCE_IP: 132,
  POLICY_DENIED: 133,
  INVALID_PACKET_DROPPED: 134,
  CT_TRUNCATED_OR_INVALID_HEADER: 135,
  UNSUPPORTED_L3_PROTOCOL: 139,
  MISSED_TAIL_CALL: 140,
  STALE_OR_UNROUTABLE_IP: 151,
  CT_MAP_INSERTION_FAILED: 155,
  SERVICE_BACKEND_NOT_FOUND: 158,
  NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT: 160,
  FIB_LOOKUP_FAILED: 169,
  INVALID_IDENTITY: 171,
  POLICY_DENY: 181,
  AUTH_REQUIRED: 189,
  DROP_EP_NOT_READY: 203,
};

/** The L4 protocols `hubble observe --protocol` sends, and the flow field each means. */
const PROTOCOLS: Readonly<Record<string, (flow: Flow) => boolean>> = {
  tcp: (f) => f.l4?.TCP !== undefined,
  udp: (f) => f.l4?.UDP !== undefined,
  sctp: (f) => f.l4?.SCTP !== undefined,
  icmp: (f) => f.l4?.ICMPv4 !== undefined || f.l4?.ICMPv6 !== undefined,
  icmpv4: (f) => f.l4?.ICMPv4 !== undefined,
  icmpv6: (f) => f.l4?.ICMPv6 !== undefined,
  // L7 protocols: the node proxy's HTTP flows and the DNS proxy's (no Kafka proxy yet).
  http: (f) => f.l7?.http !== undefined,
  dns: (f) => f.l7?.dns !== undefined,
  kafka: () => false,
};

type Side = 'source' | 'destination';

/** snake_case of a camelCase field, as the .proto and Hubble's messages spell it. */
function protoName(field: string): string {
  return field.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
}

function invalid(path: string, reason: string): never {
  throw new InvalidRequestError('ERR_OBSERVER_INVALID_FILTER', path, reason);
}

/** An enum value as protobufjs hands it over: its name, or its number when it has none. */
function enumValue(path: string, value: string | number, names: readonly string[] | Readonly<Record<string, number>>): string {
  const known = Array.isArray(names) ? (names as readonly string[]) : Object.keys(names);
  if (typeof value === 'string' && known.includes(value)) return value;
  if (typeof value === 'number' && Array.isArray(names) && value >= 0 && value < known.length) return known[value];
  return invalid(path, `unknown value ${JSON.stringify(value)} (expected one of ${known.join(', ')})`);
}

function ipMatcher(path: string, values: readonly string[]): (address: string | undefined) => boolean {
  const prefixes = values.map((text, i) => {
    try {
      return Prefix.parse(text, { bareAddress: true, hostBits: 'mask' });
    } catch (error) {
      return invalid(`${path}[${i}]`, `not an IP address or CIDR: ${(error as Error).message}`);
    }
  });
  return (address) => {
    if (address === undefined) return false;
    const addr = Addr.tryParse(address);
    return addr !== undefined && prefixes.some((p) => p.addr.family === addr.family && p.contains(addr));
  };
}

/** `ns/pod-prefix`, `ns/` (a whole namespace) or `pod-prefix` (any namespace). */
function podMatcher(path: string, values: readonly string[]): (ep: FlowEndpoint | undefined) => boolean {
  const wanted = values.map((text, i) => {
    const slash = text.indexOf('/');
    const namespace = slash < 0 ? undefined : text.slice(0, slash);
    const pod = slash < 0 ? text : text.slice(slash + 1);
    if (namespace === '' || (namespace === undefined && pod === '')) invalid(`${path}[${i}]`, `empty namespace or pod in ${JSON.stringify(text)} (expected namespace/pod-prefix)`);
    return { namespace, pod };
  });
  return (ep) =>
    ep !== undefined &&
    wanted.some((w) => (w.namespace === undefined || ep.namespace === w.namespace) && (w.pod === '' ? w.namespace !== undefined : (ep.podName ?? '').startsWith(w.pod)));
}

/** Splits at commas outside parentheses: `a in (x,y),b` → [`a in (x,y)`, `b`]. */
function splitTerms(text: string): string[] {
  const terms: string[] = [];
  let depth = 0;
  let start = 0;
  for (let i = 0; i < text.length; i++) {
    if (text[i] === '(') depth++;
    else if (text[i] === ')') depth--;
    else if (text[i] === ',' && depth === 0) {
      terms.push(text.slice(start, i));
      start = i + 1;
    }
  }
  terms.push(text.slice(start));
  return terms.map((t) => t.trim());
}

const LABEL_KEY = /^[A-Za-z0-9$][A-Za-z0-9_.\-/:]*$/;

/**
 * A Kubernetes label selector string (`k8s:app=web,tier!=db,env in (a,b),!legacy`) as a
 * Selector; keys may carry Cilium's `source:` prefix.
 */
export function parseLabelSelector(path: string, text: string): Selector {
  const selector: Selector = { matchLabels: {}, matchExpressions: [] };
  const key = (k: string): string => {
    if (!LABEL_KEY.test(k)) invalid(path, `bad label key ${JSON.stringify(k)} in selector ${JSON.stringify(text)}`);
    return k;
  };
  for (const term of splitTerms(text)) {
    if (term === '') invalid(path, `empty term in label selector ${JSON.stringify(text)}`);
    const set = /^(\S+)\s+(in|notin)\s+\(([^)]*)\)$/.exec(term);
    let requirement: SelectorRequirement;
    if (set) {
      const values = set[3].split(',').map((v) => v.trim()).filter((v) => v !== '');
      if (values.length === 0) invalid(path, `no values in ${JSON.stringify(term)}`);
      requirement = { key: key(set[1]), operator: set[2] === 'in' ? 'In' : 'NotIn', values };
    } else if (term.startsWith('!')) {
      requirement = { key: key(term.slice(1).trim()), operator: 'DoesNotExist', values: [] };
    } else {
      const op = /^([^=!\s]+)\s*(==|=|!=)\s*(.*)$/.exec(term);
      if (!op) requirement = { key: key(term), operator: 'Exists', values: [] };
      else requirement = { key: key(op[1]), operator: op[2] === '!=' ? 'NotIn' : 'In', values: [op[3].trim()] };
    }
    selector.matchExpressions.push(requirement);
  }
  return selector;
}

const labelMaps = new WeakMap<FlowEndpoint, Record<string, string>>();

/** An endpoint's `source:key=value` labels as `source:key` → value (computed once per endpoint). */
function labelMap(ep: FlowEndpoint): Record<string, string> {
  let map = labelMaps.get(ep);
  if (!map) {
    map = {};
    for (const label of ep.labels ?? []) {
      const eq = label.indexOf('=');
      map[eq < 0 ? label : label.slice(0, eq)] = eq < 0 ? '' : label.slice(eq + 1);
    }
    labelMaps.set(ep, map);
  }
  return map;
}

function portMatcher(path: string, values: readonly string[], side: Side): FlowPredicate {
  const ports = values.map((text, i) => {
    const port = /^\d{1,5}$/.test(text) ? Number(text) : NaN;
    if (!(port >= 0 && port <= 65535)) invalid(`${path}[${i}]`, `not a port number: ${JSON.stringify(text)}`);
    return port;
  });
  const key = side === 'source' ? 'sourcePort' : 'destinationPort';
  return (flow) => {
    const l4 = flow.l4?.TCP ?? flow.l4?.UDP ?? flow.l4?.SCTP;
    return l4 !== undefined && ports.includes(l4[key] ?? 0);
  };
}

/** Glob (`*`) patterns over the node name; `cluster/node` patterns match the node part. */
function nodeMatcher(path: string, values: readonly string[]): FlowPredicate {
  const patterns = values.map((text, i) => {
    if (text === '') invalid(`${path}[${i}]`, 'empty node name pattern');
    const node = text.includes('/') ? text.slice(text.indexOf('/') + 1) : text;
    return new RegExp(`^${node.split('*').map((part) => part.replace(/[.+?^${}()|[\]\\]/g, '\\$&')).join('.*')}$`);
  });
  return (flow) => patterns.some((p) => p.test(flow.nodeName ?? ''));
}

function flagsMatch(have: TcpFlags | undefined, want: TcpFlags): boolean {
  return TCP_FLAG_KEYS.every((k) => !want[k] || have?.[k] === true);
}

/** One FlowFilter as a predicate; throws InvalidRequestError naming the field at `path`. */
export function compileFilter(filter: FlowFilter, path: string): FlowPredicate {
  const checks: FlowPredicate[] = [];
  const field = (name: keyof FlowFilter) => `${path}.${protoName(name)}`;
  const has = <K extends keyof FlowFilter>(name: K): NonNullable<FlowFilter[K]> | undefined => {
    const value = filter[name];
    return Array.isArray(value) && value.length > 0 ? (value as NonNullable<FlowFilter[K]>) : undefined;
  };
  const endpointOf = (side: Side) => (flow: Flow) => flow[side];
  for (const side of ['source', 'destination'] as const) {
    const ep = endpointOf(side);
    const ips = has(`${side}Ip`);
    if (ips) {
      const match = ipMatcher(field(`${side}Ip`), ips);
      checks.push((f) => match(f.IP?.[side]));
    }
    const pods = has(`${side}Pod`);
    if (pods) {
      const match = podMatcher(field(`${side}Pod`), pods);
      checks.push((f) => match(ep(f)));
    }
    const labels = has(`${side}Label`);
    if (labels) {
      const selectors = labels.map((text, i) => parseLabelSelector(`${field(`${side}Label`)}[${i}]`, text));
      checks.push((f) => {
        const e = ep(f);
        return e !== undefined && selectors.some((s) => selectorMatches(s, labelMap(e)));
      });
    }
    const identities = has(`${side}Identity`);
    if (identities) checks.push((f) => identities.includes(ep(f)?.identity ?? 0));
    const ports = has(`${side}Port`);
    if (ports) checks.push(portMatcher(field(`${side}Port`), ports, side));
    const workloads = has(`${side}Workload`);
    if (workloads) {
      checks.push((f) => (ep(f)?.workloads ?? []).some((w) => workloads.some((want) => (!want.name || want.name === w.name) && (!want.kind || want.kind === w.kind))));
    }
    const clusters = has(`${side}ClusterName`);
    if (clusters) checks.push((f) => clusters.includes(ep(f)?.clusterName ?? ''));
    // Names from DNS and services: this build's flows carry neither, so these match nothing.
    const fqdns = has(`${side}Fqdn`);
    if (fqdns) checks.push((f) => (f[`${side}Names`] ?? []).some((n) => fqdns.includes(n)));
    const services = has(`${side}Service`);
    if (services) {
      checks.push((f) => {
        const s = f[`${side}Service`];
        return s !== undefined && services.some((want) => want === `${s.namespace}/${s.name}` || want === s.name);
      });
    }
  }
  const verdicts = has('verdict');
  if (verdicts) {
    const wanted = verdicts.map((v, i) => enumValue(`${field('verdict')}[${i}]`, v, VERDICTS));
    checks.push((f) => wanted.includes(f.verdict ?? 'VERDICT_UNKNOWN'));
  }
  const directions = has('trafficDirection');
  if (directions) {
    const wanted = directions.map((v, i) => enumValue(`${field('trafficDirection')}[${i}]`, v, TRAFFIC_DIRECTIONS));
    checks.push((f) => wanted.includes(f.trafficDirection ?? 'TRAFFIC_DIRECTION_UNKNOWN'));
  }
  const reasons = has('dropReasonDesc');
  if (reasons) {
    const wanted = reasons.map((v, i) => {
      if (typeof v === 'number') return v;
      const code = DROP_REASON_ENUM[v];
      return code ?? invalid(`${field('dropReasonDesc')}[${i}]`, `unknown drop reason ${JSON.stringify(v)}`);
    });
    checks.push((f) => f.dropReason !== undefined && wanted.includes(f.dropReason));
  }
  const eventTypes = has('eventType');
  if (eventTypes) {
    checks.push((f) =>
      eventTypes.some((e) => (e.type ?? 0) === (f.eventType?.type ?? 0) && (!e.matchSubType || (e.subType ?? 0) === (f.eventType?.subType ?? 0))),
    );
  }
  const protocols = has('protocol');
  if (protocols) {
    const matchers = protocols.map((p, i) => PROTOCOLS[p.toLowerCase()] ?? invalid(`${field('protocol')}[${i}]`, `unknown protocol ${JSON.stringify(p)} (expected one of ${Object.keys(PROTOCOLS).join(', ')})`));
    checks.push((f) => matchers.some((m) => m(f)));
  }
  const replies = has('reply');
  if (replies) checks.push((f) => f.isReply !== undefined && replies.includes(f.isReply.value === true));
  const flags = has('tcpFlags');
  if (flags) checks.push((f) => f.l4?.TCP !== undefined && flags.some((want) => flagsMatch(f.l4?.TCP?.flags, want)));
  const nodes = has('nodeName');
  if (nodes) checks.push(nodeMatcher(field('nodeName'), nodes));
  const versions = has('ipVersion');
  if (versions) {
    const wanted = versions.map((v, i) => enumValue(`${field('ipVersion')}[${i}]`, v, ['IP_NOT_USED', 'IPv4', 'IPv6']));
    checks.push((f) => wanted.includes(f.IP?.ipVersion ?? 'IP_NOT_USED'));
  }
  const uuids = has('uuid');
  if (uuids) checks.push((f) => uuids.includes(f.uuid ?? ''));
  const encrypted = has('encrypted');
  if (encrypted) checks.push((f) => encrypted.includes(f.IP?.encrypted === true));
  // HTTP, as hubble's --http-method, --http-status (`403`, or `4+` for a class) and --http-path (a regex).
  const methods = has('httpMethod');
  if (methods) {
    const wanted = methods.map((m) => m.toUpperCase());
    checks.push((f) => f.l7?.http?.method !== undefined && wanted.includes(f.l7.http.method.toUpperCase()));
  }
  const codes = has('httpStatusCode');
  if (codes) {
    const tests = codes.map((c, i) => {
      const m = /^([1-5])(?:\+|([0-9]{2}))$/.exec(c);
      if (!m) invalid(`${field('httpStatusCode')}[${i}]`, `"${c}" is not a status code (403) or class (4+)`);
      return m[2] === undefined ? (code: number) => Math.floor(code / 100) === Number(m[1]) : (code: number) => code === Number(c);
    });
    checks.push((f) => f.l7?.http?.code !== undefined && f.l7.http.code !== 0 && tests.some((t) => t(f.l7!.http!.code!)));
  }
  const regexes = (name: 'httpPath' | 'dnsQuery', patterns: readonly string[]) =>
    patterns.map((p, i) => {
      try {
        return new RegExp(p);
      } catch (error) {
        invalid(`${field(name)}[${i}]`, (error as Error).message);
      }
    });
  const paths = has('httpPath');
  if (paths) {
    const res = regexes('httpPath', paths);
    checks.push((f) => {
      const url = f.l7?.http?.url;
      if (url === undefined) return false;
      const path = /^[a-z]+:\/\/[^/]*(\/[^?]*)?/.exec(url)?.[1] ?? url;
      return res.some((re) => re.test(path));
    });
  }
  // As hubble's --dns-query: a regex on the question's name (`example.com.`).
  const queries = has('dnsQuery');
  if (queries) {
    const res = regexes('dnsQuery', queries);
    checks.push((f) => f.l7?.dns?.query !== undefined && res.some((re) => re.test(f.l7!.dns!.query!)));
  }
  // Other HTTP fields and tracing: no flow of this build carries them, so a filter on them matches nothing.
  for (const name of ['httpUrl', 'httpHeader', 'traceId'] as const) {
    if (has(name)) checks.push(() => false);
  }
  return (flow) => checks.every((check) => check(flow));
}

/**
 * The request's whitelist and blacklist as one predicate: (∪ whitelist) − (∪ blacklist). `paths`
 * names the lists in errors (an exporter's allowlist and denylist are the same lists).
 *
 * @example
 * const pass = compileFilters([{ verdict: ['DROPPED'] }], [{ sourcePod: ['kube-system/'] }]);
 */
export function compileFilters(whitelist: readonly FlowFilter[] = [], blacklist: readonly FlowFilter[] = [], paths = { whitelist: 'whitelist', blacklist: 'blacklist' }): FlowPredicate {
  const allow = whitelist.map((f, i) => compileFilter(f, `${paths.whitelist}[${i}]`));
  const deny = blacklist.map((f, i) => compileFilter(f, `${paths.blacklist}[${i}]`));
  return (flow) => (allow.length === 0 || allow.some((p) => p(flow))) && !deny.some((p) => p(flow));
}
