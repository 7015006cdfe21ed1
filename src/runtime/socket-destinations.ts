/**
 * Destinations of a socket-enforcing rule named by security identity (`DIdentity`/`NotDIdentity`)
 * or by service (`DService`/`NotDService`) rather than by address: the values a user writes, and
 * the kernel sets (bpf/sock_enforce.h `se_identity_key`, `se_addr_key`) they become, recomputed
 * whole from what the agent knows (identities, the ipcache, services) and written as differences.
 *
 * - An identity value is a label selector, `k8s:app=db` (several labels, comma-separated, are
 *   ANDed; a label without a source matches any source, as in Cilium's selectors), a reserved
 *   identity or entity name (`world`, `host`, `remote-node`, `cluster`, …) or a reserved identity's
 *   number (1–11). Allocated numbers are refused: they change with the identity's life, so a rule
 *   on one could come to name another workload.
 * - A service value is `namespace/name`: its frontends (ClusterIP, external and LoadBalancer IPs,
 *   this node's NodePort addresses; not the wildcard) and its backends, each address, port and
 *   protocol. The kernel's connect hook may run before the socket LB's translation (a cgroup below
 *   the LB's) or after it (the same cgroup or above): the sets hold both ends, so the verdict is the
 *   same either way.
 * - A frontend in an identity set stands for its backends, since the hook may see it untranslated:
 *   in the set of `DIdentity` when any backend's identity is, of `NotDIdentity` only when every
 *   backend's is (and there is one). A rule refusing db refuses a service that may lead to db; a rule
 *   allowing only db refuses a service that may lead elsewhere.
 * @module
 */
import { encode, struct, u16, u32, u64, u8, pad } from '../ebpf/index.ts';
import { ENTITIES, RESERVED_IDENTITIES, entityMatches, selectorMatches, type Entity, type Selector } from '../policy/index.ts';
import { Prefix } from '../net/index.ts';
import type { PolicyProblem } from './tracing-policy.ts';

export const seIdentityKey = struct('se_identity_key', { set: u32, identity: u32 });
export const seAddrKey = struct('se_addr_key', { set: u32, port: u16, protocol: u8, _pad: pad(1), lo: u64, hi: u64 });

/** One value of a DIdentity filter. */
export type IdentityValue = { kind: 'labels'; text: string; selector: Selector } | { kind: 'entity'; text: string; entity: Entity } | { kind: 'id'; text: string; id: number };

const RESERVED_NUMBERS = new Set<number>(Object.values(RESERVED_IDENTITIES));
/** Kubernetes object names: a service is a DNS-1035 label, a namespace a DNS-1123 label. */
const SERVICE_NAME = /^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$/;
const NAMESPACE_NAME = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;
const LABEL_KEY = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/;
const LABEL_VALUE = /^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$/;
const SOURCES = new Set(['k8s', 'container', 'reserved', 'any']);

/**
 * A DIdentity value: a selector of labels, an entity name or a reserved identity's number; a
 * problem naming `field` otherwise.
 */
export function parseIdentityValue(value: unknown, field: string, problems: PolicyProblem[]): IdentityValue | undefined {
  const bad = (reason: string) => void problems.push({ field, reason: `${JSON.stringify(value)}: ${reason}` });
  if (typeof value !== 'string' && typeof value !== 'number') return bad('want a label selector (k8s:app=db), an entity (world, host, cluster, …) or a reserved identity number');
  const text = String(value).trim();
  if (text === '') return bad('empty selector');
  if (/^\d+$/.test(text)) {
    const id = Number(text);
    if (!RESERVED_NUMBERS.has(id)) return bad('only reserved identities (1 to 11) by number: allocated numbers change as identities come and go; name workloads by labels');
    return { kind: 'id', text, id };
  }
  if ((ENTITIES as readonly string[]).includes(text)) return { kind: 'entity', text, entity: text as Entity };
  const matchLabels: Record<string, string> = {};
  for (const part of text.split(',')) {
    const label = part.trim();
    if (label === '') return bad('empty label (a stray comma?)');
    const colon = label.indexOf(':');
    const eq = label.indexOf('=');
    const hasSource = colon >= 0 && (eq < 0 || colon < eq);
    const source = hasSource ? label.slice(0, colon) : 'any';
    const rest = hasSource ? label.slice(colon + 1) : label;
    if (!SOURCES.has(source)) return bad(`label ${JSON.stringify(label)}: unknown source ${JSON.stringify(source)} (want k8s, container, reserved or any)`);
    if (source === 'reserved') {
      // reserved:host: a label without a value.
      if (!Object.hasOwn(RESERVED_IDENTITIES, rest)) return bad(`label ${JSON.stringify(label)}: unknown reserved identity (want one of ${Object.keys(RESERVED_IDENTITIES).join(', ')})`);
      matchLabels[`reserved:${rest}`] = '';
      continue;
    }
    const at = rest.indexOf('=');
    if (at < 0) return bad(`label ${JSON.stringify(label)}: want source:key=value`);
    const key = rest.slice(0, at);
    const labelValue = rest.slice(at + 1);
    if (!LABEL_KEY.test(key)) return bad(`label ${JSON.stringify(label)}: malformed key ${JSON.stringify(key)}`);
    if (!LABEL_VALUE.test(labelValue)) return bad(`label ${JSON.stringify(label)}: malformed value ${JSON.stringify(labelValue)}`);
    const canonical = `${source}:${key}`;
    if (canonical in matchLabels) return bad(`label key ${key} given twice`);
    matchLabels[canonical] = labelValue;
  }
  return { kind: 'labels', text, selector: { matchLabels, matchExpressions: [] } };
}

/** A DService value: `namespace/name`. */
export function parseServiceValue(value: unknown, field: string, problems: PolicyProblem[]): string | undefined {
  const text = typeof value === 'string' ? value.trim() : '';
  const [namespace, name, ...more] = text.split('/');
  if (more.length > 0 || name === undefined || !NAMESPACE_NAME.test(namespace) || !SERVICE_NAME.test(name)) {
    return void problems.push({ field, reason: `${JSON.stringify(value)}: want a service as namespace/name` });
  }
  return `${namespace}/${name}`;
}

/** Whether an identity with `labels` (and number `id`) is one a DIdentity value names. */
export function identityValueMatches(value: IdentityValue, id: number, labels: Readonly<Record<string, string>>): boolean {
  switch (value.kind) {
    case 'id':
      return id === value.id;
    case 'entity':
      return entityMatches(value.entity, labels);
    case 'labels':
      return selectorMatches(value.selector, labels);
  }
}

/** A service frontend as the sets need it: where clients connect, and where it leads. */
export interface DestinationFrontend {
  /** `namespace/name` */
  service: string;
  vip: string;
  port: number;
  protocol: string;
  /** Active and terminating backends. */
  backends: readonly { ip: string; port: number; protocol: string }[];
}

/**
 * What the agent knows of destinations, for `DIdentity` and `DService`: given to the socket
 * enforcer by the full agent (the runtime-only agent has none, and such rules are refused).
 */
export interface SocketDestinations {
  /** The bpffs directory where the datapath pins `ciliate_ipcache`, which the hooks share. */
  ipcachePinDir: string;
  /** Every identity the node knows (the reserved ones included), with its labels (`source:key` → value). */
  identities(): Iterable<{ id: number; labels: Readonly<Record<string, string>> }>;
  hasService(key: string): boolean;
  frontends(): Iterable<DestinationFrontend>;
  /** The identity the ipcache gives an IPv4 address (its longest prefix), world when none. */
  identityOf(ip: string): number;
  /** Calls `listener` after any of the above changed; returns the unsubscribe. */
  subscribe(listener: () => void): () => void;
}

/** A DIdentity or DService filter of a loaded rule, with its kernel set. */
export interface DestinationFilter {
  set: number;
  negated: boolean;
  identities?: readonly IdentityValue[];
  services?: readonly string[];
}

const PROTOCOLS: Record<string, number> = { TCP: 6, UDP: 17, SCTP: 132 };

/** An address as the kernel holds it (struct se_value's lo, hi): IPv4 as ::ffff:a.b.c.d. */
export function seAddress(prefix: Prefix): { lo: bigint; hi: bigint } {
  const bytes = Buffer.alloc(16);
  if (prefix.family === 4) {
    bytes[10] = 0xff;
    bytes[11] = 0xff;
    bytes.set(prefix.addr.toBytes(), 12);
  } else {
    bytes.set(prefix.addr.toBytes());
  }
  return { lo: bytes.readBigUInt64LE(0), hi: bytes.readBigUInt64LE(8) };
}

function addrKey(set: number, ip: string, port: number, protocol: string): Buffer | undefined {
  const proto = PROTOCOLS[protocol.toUpperCase()];
  const addr = Prefix.tryParse(ip, { bareAddress: true });
  if (proto === undefined || !addr) return undefined;
  return encode(seAddrKey, { set, port, protocol: proto, ...seAddress(addr) });
}

/** The kernel entries of every filter: identity keys and address keys (hex) with their values. */
export interface DestinationEntries {
  identities: Map<string, Buffer>;
  addrs: Map<string, { key: Buffer; value: number }>;
}

/** Computes what the kernel's sets must hold for `filters`, from what `source` knows now. */
export function destinationEntries(filters: readonly DestinationFilter[], source: SocketDestinations): DestinationEntries {
  const out: DestinationEntries = { identities: new Map(), addrs: new Map() };
  if (filters.length === 0) return out;
  const addr = (set: number, ip: string, port: number, protocol: string, value: number) => {
    const key = addrKey(set, ip, port, protocol);
    // Not an address, or not a protocol the hook sees: nothing to write.
    if (key) out.addrs.set(key.toString('hex'), { key, value });
  };
  const identityFilters = filters.filter((f) => f.identities);
  const frontends = [...source.frontends()].filter((f) => f.vip !== '0.0.0.0');
  if (identityFilters.length > 0) {
    const identities = [...source.identities()];
    const identityOf = new Map<string, number>();
    const backendIdentity = (ip: string) => {
      let id = identityOf.get(ip);
      if (id === undefined) identityOf.set(ip, (id = source.identityOf(ip)));
      return id;
    };
    for (const filter of identityFilters) {
      const members = new Set<number>();
      for (const { id, labels } of identities) if (filter.identities!.some((v) => identityValueMatches(v, id, labels))) members.add(id);
      for (const id of members) {
        const key = encode(seIdentityKey, { set: filter.set, identity: id });
        out.identities.set(key.toString('hex'), key);
      }
      for (const f of frontends) {
        const ids = f.backends.map((b) => backendIdentity(b.ip));
        const inSet = filter.negated ? ids.length > 0 && ids.every((id) => members.has(id)) : ids.some((id) => members.has(id));
        addr(filter.set, f.vip, f.port, f.protocol, inSet ? 1 : 0);
      }
    }
  }
  for (const filter of filters) {
    if (!filter.services) continue;
    const wanted = new Set(filter.services);
    for (const f of frontends) {
      if (!wanted.has(f.service)) continue;
      addr(filter.set, f.vip, f.port, f.protocol, 1);
      for (const b of f.backends) addr(filter.set, b.ip, b.port, b.protocol, 1);
    }
  }
  return out;
}
