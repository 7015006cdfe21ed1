/**
 * CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy (`cilium.io/v2`) → `PolicyRule`s, with
 * Cilium's namespace scoping (`pkg/k8s/apis/cilium.io/utils`): a namespaced policy's
 * endpointSelector always gets `k8s:io.kubernetes.pod.namespace=<ns>`, and its
 * fromEndpoints/toEndpoints get it unless they name a namespace, select namespace labels or
 * reserved labels; a clusterwide policy's peers get `k8s:io.kubernetes.pod.namespace Exists`
 * (pods only) unless they name a namespace or reserved labels. `fromRequires`/`toRequires` are
 * scoped the same way, reserved labels or not, into `PeerRule.requires`.
 *
 * `toServices` is read into `PeerRule.services` and `toFQDNs` into `PeerRule.fqdns` (both
 * expanded by the policy manager), `toPorts[].rules.dns` into the ports' `rules`. Out-of-scope
 * upstream fields (HTTP and Kafka rules, …) are rejected by name, never ignored.
 * @module
 */
import { at, checkFields, Ctx, describe, join, portNameProblem, readBool, readList, readObj, readString, type Obj } from './context.ts';
import { ignoreStrayDescription, readCidr, readCidrRule, readSelector, type Metadata } from './parse-common.ts';
import { canonicalSelectorKey, selectorHasKey, selectorHasKeyPrefix, splitLabelKey } from './selector.ts';
import {
  ENTITIES,
  NAMESPACE_LABELS_PREFIX,
  POD_NAMESPACE_LABEL,
  POLICY_LABEL_DERIVED_FROM,
  POLICY_LABEL_NAME,
  POLICY_LABEL_NAMESPACE,
  POLICY_LABEL_UID,
  wildcardSelector,
  type CidrRule,
  type Entity,
  type PeerRule,
  type PolicyKind,
  type PolicyRule,
  type PortRule,
  type Selector,
  type ServicePeer,
} from './types.ts';
import { formatCidr } from './cidr.ts';
import { readFqdnSelectors } from './dns.ts';
import { readL7Rules } from './l7.ts';

const MAX_PORTS = 40;
const MAX_ICMP_FIELDS = 40;

const UNSUPPORTED_SPEC: Record<string, string> = {
  nodeSelector: 'not supported yet (host policies); select endpoints with endpointSelector',
  log: 'not supported yet (policy logging)',
  // Common mistakes, from NetworkPolicy habits.
  podSelector: 'unknown field "podSelector": a Cilium policy selects its endpoints with endpointSelector (podSelector is NetworkPolicy\'s)',
  policyTypes: 'unknown field "policyTypes" (NetworkPolicy\'s): a Cilium policy enforces the directions it has rules for, or says so with enableDefaultDeny',
};

const GROUPS = 'not supported yet (cloud provider groups); list the addresses with CIDR rules';
const NODES = 'not supported yet (node selectors); use the host or remote-node entity';
const AUTH = 'not supported yet (mutual authentication)';

const UNSUPPORTED_PORT_RULE: Record<string, string> = {
  serverNames: 'not supported yet (TLS SNI matching needs the L7 proxy)',
  terminatingTLS: 'not supported yet (TLS interception needs the L7 proxy)',
  originatingTLS: 'not supported yet (TLS origination needs the L7 proxy)',
  listener: 'not supported yet (redirects to an Envoy listener of a CiliumEnvoyConfig)',
};

const UNSUPPORTED_CIDR_RULE: Record<string, string> = {
  cidrGroupRef: 'not supported yet (CiliumCIDRGroup); list the prefixes with cidr',
  cidrGroupSelector: 'not supported yet (CiliumCIDRGroup); list the prefixes with cidr',
};

/** Cilium's names of ICMP types (`pkg/policy/api/icmp.go`). */
const ICMP_V4_TYPES: Record<string, number> = {
  EchoReply: 0,
  DestinationUnreachable: 3,
  Redirect: 5,
  Echo: 8,
  EchoRequest: 8,
  RouterAdvertisement: 9,
  RouterSelection: 10,
  TimeExceeded: 11,
  ParameterProblem: 12,
  Timestamp: 13,
  TimestampReply: 14,
  Photuris: 40,
  ExtendedEchoRequest: 42,
  ExtendedEchoReply: 43,
};
const ICMP_V6_TYPES: Record<string, number> = {
  DestinationUnreachable: 1,
  PacketTooBig: 2,
  TimeExceeded: 3,
  ParameterProblem: 4,
  EchoRequest: 128,
  EchoReply: 129,
  MulticastListenerQuery: 130,
  MulticastListenerReport: 131,
  MulticastListenerDone: 132,
  RouterSolicitation: 133,
  RouterAdvertisement: 134,
  NeighborSolicitation: 135,
  NeighborAdvertisement: 136,
  RedirectMessage: 137,
  RouterRenumbering: 138,
  ICMPNodeInformationQuery: 139,
  ICMPNodeInformationResponse: 140,
  InverseNeighborDiscoverySolicitation: 141,
  InverseNeighborDiscoveryAdvertisement: 142,
  HomeAgentAddressDiscoveryRequest: 144,
  HomeAgentAddressDiscoveryReply: 145,
  MobilePrefixSolicitation: 146,
  MobilePrefixAdvertisement: 147,
  DuplicateAddressRequestCodeSuffix: 157,
  DuplicateAddressConfirmationCodeSuffix: 158,
  ExtendedEchoRequest: 160,
  ExtendedEchoReply: 161,
};

interface Scope {
  kind: PolicyKind;
  /** Undefined for clusterwide policies. */
  namespace: string | undefined;
}

/** Selector key as written in a Cilium policy → canonical `source:key`. */
export function ciliumSelectorKey(raw: string): string | { error: string } {
  if (raw === '') return { error: 'label key must not be empty' };
  const parts = splitLabelKey(raw);
  if (parts.key === '') return { error: `label key "${raw}" has a source but no key` };
  if (/[\s=]/.test(raw)) return { error: `label key "${raw}" must not contain whitespace or '='` };
  if (parts.source !== '' && !/^[A-Za-z0-9][-A-Za-z0-9_.]*$/.test(parts.source)) return { error: `label key "${raw}": bad source "${parts.source}"` };
  return canonicalSelectorKey(raw);
}

/**
 * Whether `protocol` is one of the IP protocols without ports that Cilium matches in `ports`
 * when its extended IP protocols are enabled (`isExtendedIPProtocol`).
 */
function portlessProtocol(protocol: unknown): boolean {
  return typeof protocol === 'string' && ['VRRP', 'IGMP', 'GRE', 'IPIP', 'ESP', 'AH'].includes(protocol.toUpperCase());
}

/** Reads one `toPorts[].ports[]` entry. */
function readPort(ctx: Ctx, path: string, value: unknown): PortRule | undefined {
  const obj = readObj(ctx, path, value);
  if (obj === undefined) {
    if (value === null || value === undefined) ctx.add(path, 'empty list item');
    return undefined;
  }
  checkFields(ctx, path, obj, ['port', 'endPort', 'protocol']);
  let ok = true;
  const portPath = join(path, 'port');
  let port: number | undefined;
  let name: string | undefined;
  const raw = obj.port;
  if (raw === undefined || raw === null) {
    // A protocol without ports (VRRP) is written without one; its own issue says what is wrong.
    if (!portlessProtocol(obj.protocol)) ctx.add(portPath, 'is required (use 0 with a protocol for every port)');
  } else if (typeof raw === 'number') {
    if (Number.isInteger(raw) && raw >= 0 && raw <= 65535) port = raw;
    else ctx.add(portPath, `must be 1–65535 (or 0 for every port), got ${raw}`);
  } else if (typeof raw === 'string') {
    if (/^[0-9]+$/.test(raw)) {
      const n = Number(raw);
      if (raw.length > 1 && raw.startsWith('0')) ctx.add(portPath, `"${raw}": a port number must not have leading zeros`);
      else if (n > 65535) ctx.add(portPath, `must be 1–65535 (or 0 for every port), got ${raw}`);
      else port = n;
    } else {
      const problem = portNameProblem(raw);
      if (problem === undefined) {
        port = 0;
        name = raw;
      } else ctx.add(portPath, `"${raw}" is neither a port number (1–65535) nor a port name: a port name ${problem}`);
    }
  } else {
    ctx.add(portPath, `must be a port number, got ${describe(raw)}`);
  }
  if (port === undefined) ok = false;

  const protocolPath = join(path, 'protocol');
  let protocol: PortRule['protocol'] = 'ANY';
  const rawProtocol = readString(ctx, protocolPath, obj.protocol);
  if (rawProtocol === undefined) {
    if (obj.protocol !== undefined && obj.protocol !== null) ok = false;
  } else if (rawProtocol === 'TCP' || rawProtocol === 'UDP' || rawProtocol === 'SCTP' || rawProtocol === 'ANY') {
    protocol = rawProtocol;
  } else if (rawProtocol === '') {
    protocol = 'ANY';
  } else {
    const upper = rawProtocol.toUpperCase();
    if (upper === 'ICMP' || upper === 'ICMPV6') ctx.add(protocolPath, 'ICMP is matched with icmps (e.g. icmps: [{fields: [{type: 8}]}]), not with a port protocol');
    else if (portlessProtocol(upper)) ctx.add(protocolPath, `${upper} is not supported yet (IP protocols without ports)`);
    else if (['TCP', 'UDP', 'SCTP', 'ANY'].includes(upper)) ctx.add(protocolPath, `must be upper case: ${upper}, got "${rawProtocol}"`);
    else ctx.add(protocolPath, `must be one of TCP, UDP, SCTP, ANY, got "${rawProtocol}"`);
    ok = false;
  }

  let endPort: number | undefined;
  const endPath = join(path, 'endPort');
  if (obj.endPort !== undefined && obj.endPort !== null) {
    const e = obj.endPort;
    if (typeof e !== 'number' || !Number.isInteger(e) || e < 1 || e > 65535) {
      ctx.add(endPath, `must be a port number 1–65535, got ${describe(e)}`);
      ok = false;
    } else if (name !== undefined) {
      ctx.add(endPath, `may not be specified with a named port ("${name}"); give the range by number`);
      ok = false;
    } else if (port === 0) {
      ctx.add(endPath, 'needs a non-zero port to start the range');
      ok = false;
    } else if (port !== undefined && e < port) {
      ctx.add(endPath, `must be at least port (${port}), got ${e}`);
      ok = false;
    } else if (port !== undefined && e > port) {
      endPort = e;
    }
  }
  if (!ok || port === undefined) return undefined;
  const rule: PortRule = { port, protocol };
  if (endPort !== undefined) rule.endPort = endPort;
  if (name !== undefined) rule.name = name;
  return rule;
}

/**
 * Reads `toPorts` into a flat port list (the union of the entries), each with its entry's L7
 * rules: HTTP rules on TCP ports or port ranges, which the node proxy judges request by request.
 */
function readToPorts(ctx: Ctx, path: string, value: unknown, deny: boolean, direction: 'ingress' | 'egress'): PortRule[] | undefined {
  const list = readList(ctx, path, value);
  if (list === undefined) return value === undefined || value === null ? [] : undefined;
  const out: PortRule[] = [];
  let ok = true;
  const unsupported: Record<string, string> = deny
    ? Object.fromEntries(['rules', ...Object.keys(UNSUPPORTED_PORT_RULE)].map((k) => [k, 'deny rules accept only ports']))
    : UNSUPPORTED_PORT_RULE;
  list.forEach((item, i) => {
    const p = at(path, i);
    const obj = readObj(ctx, p, item);
    if (obj === undefined) {
      if (item === null || item === undefined) ctx.add(p, 'empty list item');
      ok = false;
      return;
    }
    const before = ctx.issues.length;
    checkFields(ctx, p, obj, deny ? ['ports'] : ['ports', 'rules'], unsupported);
    const l7 = deny ? undefined : readL7Rules(ctx, join(p, 'rules'), obj.rules, direction);
    const portsPath = join(p, 'ports');
    const ports = readList(ctx, portsPath, obj.ports);
    if (ports === undefined || ports.length === 0) {
      if (ports !== undefined || obj.ports === undefined || obj.ports === null) ctx.add(portsPath, 'must list at least one port');
      ok = false;
      return;
    }
    if (ports.length > MAX_PORTS) ctx.add(portsPath, `at most ${MAX_PORTS} ports per entry, got ${ports.length}`);
    ports.forEach((port, j) => {
      const parsed = readPort(ctx, at(portsPath, j), port);
      if (parsed === undefined) return;
      if (l7 !== undefined) {
        const problem = l7.http ? l7PortProblem(parsed) : undefined;
        if (problem !== undefined) ctx.add(at(portsPath, j), problem);
        parsed.l7 = l7;
      }
      out.push(parsed);
    });
    if (ctx.issues.length !== before) ok = false;
  });
  return ok ? out : undefined;
}

/**
 * Why a port cannot carry HTTP rules: the proxy speaks TCP and needs a port, as Cilium's
 * PortRule.sanitize says. A range (endPort) is fine, as in Cilium (its connectivity tests enforce
 * HTTP rules on ranges): each of the range's map entries redirects, and the proxy finds the rules
 * by the connection's own port with the same longest-prefix lookup as the datapath.
 */
function l7PortProblem(port: PortRule): string | undefined {
  if (port.protocol !== 'TCP' && port.protocol !== 'ANY') return `HTTP rules need TCP, got ${port.protocol}`;
  if (port.port === 0 && port.name === undefined) return 'HTTP rules need a port (0 means every port)';
  return undefined;
}

function readIcmpType(ctx: Ctx, path: string, value: unknown, v6: boolean): number | undefined {
  const names = v6 ? ICMP_V6_TYPES : ICMP_V4_TYPES;
  if (typeof value === 'number' && Number.isInteger(value) && value >= 0 && value <= 255) return value;
  if (typeof value === 'string') {
    if (/^(0|[1-9][0-9]{0,2})$/.test(value) && Number(value) <= 255) return Number(value);
    if (Object.hasOwn(names, value)) return names[value];
  }
  if (value === undefined || value === null) ctx.add(path, 'is required');
  else ctx.add(path, `must be an ICMP${v6 ? 'v6' : ''} type 0–255 or one of its names (e.g. ${v6 ? 'EchoRequest' : 'EchoRequest, DestinationUnreachable'}), got ${describe(value)}`);
  return undefined;
}

/** Reads `icmps` into port entries with protocol ICMP/ICMPV6 and the type in `port`. */
function readIcmps(ctx: Ctx, path: string, value: unknown): PortRule[] | undefined {
  const list = readList(ctx, path, value);
  if (list === undefined) return value === undefined || value === null ? [] : undefined;
  const out: PortRule[] = [];
  const before = ctx.issues.length;
  list.forEach((item, i) => {
    const p = at(path, i);
    const obj = readObj(ctx, p, item);
    if (obj === undefined) {
      if (item === null || item === undefined) ctx.add(p, 'empty list item');
      return;
    }
    checkFields(ctx, p, obj, ['fields']);
    const fieldsPath = join(p, 'fields');
    const fields = readList(ctx, fieldsPath, obj.fields);
    if (fields === undefined || fields.length === 0) {
      if (fields !== undefined || obj.fields === undefined || obj.fields === null) ctx.add(fieldsPath, 'must list at least one ICMP type');
      return;
    }
    if (fields.length > MAX_ICMP_FIELDS) ctx.add(fieldsPath, `at most ${MAX_ICMP_FIELDS} types, got ${fields.length}`);
    fields.forEach((field, j) => {
      const fp = at(fieldsPath, j);
      const f = readObj(ctx, fp, field);
      if (f === undefined) {
        if (field === null || field === undefined) ctx.add(fp, 'empty list item');
        return;
      }
      checkFields(ctx, fp, f, ['family', 'type']);
      const family = readString(ctx, join(fp, 'family'), f.family) ?? 'IPv4';
      if (family !== 'IPv4' && family !== 'IPv6') {
        ctx.add(join(fp, 'family'), `must be IPv4 or IPv6, got "${family}"`);
        return;
      }
      const type = readIcmpType(ctx, join(fp, 'type'), f.type, family === 'IPv6');
      if (type !== undefined) out.push({ port: type, protocol: family === 'IPv6' ? 'ICMPV6' : 'ICMP' });
    });
  });
  return ctx.issues.length === before ? out : undefined;
}

function readEntities(ctx: Ctx, path: string, list: unknown[]): Entity[] | undefined {
  const out: Entity[] = [];
  let ok = true;
  list.forEach((item, i) => {
    if (typeof item === 'string' && (ENTITIES as readonly string[]).includes(item)) {
      if (!out.includes(item as Entity)) out.push(item as Entity);
    } else {
      ctx.add(at(path, i), `unknown entity ${describe(item)} (one of ${ENTITIES.join(', ')})`);
      ok = false;
    }
  });
  return ok ? out : undefined;
}

/**
 * Cilium's scoping of a peer selector (`getEndpointSelector`): reserved-label selectors stay as
 * written, except requirements (`fromRequires`/`toRequires`); otherwise, unless a namespace is
 * named, a namespaced policy adds its namespace (but not to selectors on namespace labels) and a
 * clusterwide one requires some namespace (pods only).
 */
function scopePeerSelector(selector: Selector, scope: Scope, subjectMatchesInit: boolean, requirement = false): Selector {
  // Cilium scopes requirements even on reserved labels (getEndpointSelector, addK8sPrefix false).
  if (!requirement && selectorHasKeyPrefix(selector, 'reserved:')) return selector;
  if (selectorHasKey(selector, POD_NAMESPACE_LABEL) || selectorHasKey(selector, 'any:io.kubernetes.pod.namespace')) return selector;
  if (scope.namespace === undefined) {
    if (!subjectMatchesInit) selector.matchExpressions.push({ key: POD_NAMESPACE_LABEL, operator: 'Exists', values: [] });
  } else if (!selectorHasKeyPrefix(selector, `k8s:${NAMESPACE_LABELS_PREFIX}`) && !selectorHasKeyPrefix(selector, `any:${NAMESPACE_LABELS_PREFIX}`)) {
    selector.matchLabels[POD_NAMESPACE_LABEL] = scope.namespace;
  }
  return selector;
}

interface Direction {
  field: 'ingress' | 'egress' | 'ingressDeny' | 'egressDeny';
  deny: boolean;
  prefix: 'from' | 'to';
}

/** Reads one ingress/egress (deny) rule. */
function readPeerRule(ctx: Ctx, path: string, value: unknown, dir: Direction, scope: Scope, subjectMatchesInit: boolean): PeerRule | undefined {
  const obj = readObj(ctx, path, value);
  if (obj === undefined) {
    if (value === null || value === undefined) ctx.add(path, 'empty list item (write {} for a rule that allows nothing)');
    return undefined;
  }
  const x = dir.prefix;
  const endpointsField = `${x}Endpoints`;
  const cidrField = `${x}CIDR`;
  const cidrSetField = `${x}CIDRSet`;
  const entitiesField = `${x}Entities`;
  const unsupported: Record<string, string> = {
    [`${x}Groups`]: GROUPS,
    [`${x}Nodes`]: NODES,
  };
  if (dir.deny) {
    if (x === 'to') unsupported.toFQDNs = 'not allowed in deny rules (Cilium cannot know every address of a name)';
    unsupported.authentication = 'not allowed in deny rules';
  } else {
    unsupported.authentication = AUTH;
  }
  unsupported.auth = 'unknown field "auth": Cilium\'s field is authentication (mutual authentication, not supported yet)';
  const before = ctx.issues.length;
  const fqdnField = x === 'to' && !dir.deny ? ['toFQDNs'] : [];
  const requiresField = `${x}Requires`;
  checkFields(ctx, path, obj, [endpointsField, requiresField, cidrField, cidrSetField, entitiesField, ...(x === 'to' ? ['toServices'] : []), ...fqdnField, 'toPorts', 'icmps'], unsupported);

  const peer: PeerRule = {};
  if (x === 'to') {
    const services = readList(ctx, join(path, 'toServices'), obj.toServices);
    if (services !== undefined) {
      if (services.length === 0) ctx.add(join(path, 'toServices'), 'an empty list selects no service; remove the field or name a service');
      peer.services = services.map((item, i) => readServicePeer(ctx, at(join(path, 'toServices'), i), item, scope)).filter((s): s is ServicePeer => s !== undefined);
    }
  }
  const emptyList = (field: string): void =>
    ctx.add(join(path, field), `an empty list selects no peer (Cilium then ignores the whole rule); remove the field, or use ${field === endpointsField ? '[{}]' : 'a non-empty list'}`);

  const endpoints = readList(ctx, join(path, endpointsField), obj[endpointsField]);
  if (endpoints !== undefined) {
    if (endpoints.length === 0) emptyList(endpointsField);
    const selectors: Selector[] = [];
    endpoints.forEach((item, i) => {
      const sel = readSelector(ctx, at(join(path, endpointsField), i), item, ciliumSelectorKey);
      if (sel !== undefined) selectors.push(scopePeerSelector(sel, scope, subjectMatchesInit));
    });
    peer.endpoints = selectors;
  }

  const requires = readList(ctx, join(path, requiresField), obj[requiresField]);
  if (requires !== undefined && requires.length > 0) {
    const selectors: Selector[] = [];
    requires.forEach((item, i) => {
      const sel = readSelector(ctx, at(join(path, requiresField), i), item, ciliumSelectorKey);
      if (sel !== undefined) selectors.push(scopePeerSelector(sel, scope, subjectMatchesInit, true));
    });
    peer.requires = selectors;
  }

  const entities = readList(ctx, join(path, entitiesField), obj[entitiesField]);
  if (entities !== undefined) {
    if (entities.length === 0) emptyList(entitiesField);
    peer.entities = readEntities(ctx, join(path, entitiesField), entities) ?? [];
  }

  const cidrs: CidrRule[] = [];
  let haveCidrs = false;
  const cidrList = readList(ctx, join(path, cidrField), obj[cidrField]);
  if (cidrList !== undefined) {
    haveCidrs = true;
    if (cidrList.length === 0) emptyList(cidrField);
    cidrList.forEach((item, i) => {
      const c = readCidr(ctx, at(join(path, cidrField), i), item);
      if (c !== undefined) cidrs.push({ cidr: formatCidr(c), except: [] });
    });
  }
  const cidrSet = readList(ctx, join(path, cidrSetField), obj[cidrSetField]);
  if (cidrSet !== undefined) {
    haveCidrs = true;
    if (cidrSet.length === 0) emptyList(cidrSetField);
    cidrSet.forEach((item, i) => {
      const p = at(join(path, cidrSetField), i);
      const o = readObj(ctx, p, item);
      if (o === undefined) {
        if (item === null || item === undefined) ctx.add(p, 'empty list item');
        return;
      }
      checkFields(ctx, p, o, ['cidr', 'except'], UNSUPPORTED_CIDR_RULE);
      if ((o.cidr === undefined || o.cidr === null) && (o.cidrGroupRef !== undefined || o.cidrGroupSelector !== undefined)) return;
      const rule = readCidrRule(ctx, p, o, 'cidr', 'except');
      if (rule !== undefined) cidrs.push(rule);
    });
  }
  if (haveCidrs) peer.cidrs = cidrs;

  if (fqdnField.length > 0 && obj.toFQDNs !== undefined && obj.toFQDNs !== null) {
    const fqdns = readFqdnSelectors(ctx, join(path, 'toFQDNs'), obj.toFQDNs);
    if (fqdns !== undefined) peer.fqdns = fqdns;
    const others = [endpointsField, cidrField, cidrSetField, entitiesField, 'toServices'].filter((f) => obj[f] !== undefined && obj[f] !== null);
    // Cilium refuses the combination too: the peer would be the union, which readers get wrong.
    if (others.length > 0) ctx.add(join(path, 'toFQDNs'), `may not be combined with ${others.join(', ')} in one rule; make them separate egress rules`);
  }

  const toPorts = readToPorts(ctx, join(path, 'toPorts'), obj.toPorts, dir.deny, x === 'from' ? 'ingress' : 'egress');
  const icmps = readIcmps(ctx, join(path, 'icmps'), obj.icmps);
  const ports = [...(toPorts ?? []), ...(icmps ?? [])];
  if (ports.length > 0) peer.ports = ports;

  if (ctx.issues.length !== before) return undefined;
  // Ports without any peer: Cilium applies them to every peer (the wildcard selector).
  if (peer.services === undefined && peer.fqdns === undefined && peer.endpoints === undefined && peer.entities === undefined && peer.cidrs === undefined && peer.ports !== undefined) {
    peer.endpoints = [wildcardSelector()];
    peer.portsOnly = true;
  }
  return peer;
}

/**
 * One `toServices` item: `k8sService: {serviceName, namespace}` or `k8sServiceSelector: {selector,
 * namespace}`. A namespaced policy's services are in its own namespace unless another is named; a
 * clusterwide policy must name the namespace of a service it names by name.
 */
function readServicePeer(ctx: Ctx, path: string, value: unknown, scope: Scope): ServicePeer | undefined {
  const obj = readObj(ctx, path, value);
  if (obj === undefined) {
    if (value === null || value === undefined) ctx.add(path, 'empty list item (write k8sService or k8sServiceSelector)');
    return undefined;
  }
  const before = ctx.issues.length;
  checkFields(ctx, path, obj, ['k8sService', 'k8sServiceSelector']);
  const byName = obj.k8sService !== undefined && obj.k8sService !== null;
  const bySelector = obj.k8sServiceSelector !== undefined && obj.k8sServiceSelector !== null;
  if (byName === bySelector) {
    ctx.add(path, byName ? 'k8sService and k8sServiceSelector may not be combined in one item; make them separate items' : 'must have k8sService (a service by name) or k8sServiceSelector (services by label)');
    return undefined;
  }
  const field = byName ? 'k8sService' : 'k8sServiceSelector';
  const inner = readObj(ctx, join(path, field), obj[field]);
  if (inner === undefined) return undefined;
  checkFields(ctx, join(path, field), inner, byName ? ['serviceName', 'namespace'] : ['selector', 'namespace']);
  let namespace = readString(ctx, join(join(path, field), 'namespace'), inner.namespace);
  if (namespace !== undefined && !DNS_LABEL.test(namespace)) ctx.add(join(join(path, field), 'namespace'), `"${namespace}" is not a namespace name (a DNS label)`);
  namespace ??= scope.namespace;
  const peer: ServicePeer = namespace === undefined ? {} : { namespace };
  if (byName) {
    const name = readString(ctx, join(join(path, field), 'serviceName'), inner.serviceName);
    if (name === undefined) {
      if (inner.serviceName === undefined || inner.serviceName === null) ctx.add(join(join(path, field), 'serviceName'), 'required: the name of the service');
    } else if (!DNS_LABEL.test(name)) ctx.add(join(join(path, field), 'serviceName'), `"${name}" is not a service name (a DNS label)`);
    else peer.name = name;
    if (namespace === undefined) ctx.add(join(join(path, field), 'namespace'), 'required in a clusterwide policy: the namespace of the service');
  } else {
    if (inner.selector === undefined || inner.selector === null) ctx.add(join(join(path, field), 'selector'), 'required: the labels of the services ({} selects every service)');
    else peer.selector = readSelector(ctx, join(join(path, field), 'selector'), inner.selector, ciliumSelectorKey);
  }
  return ctx.issues.length === before ? peer : undefined;
}

/** Kubernetes' name of a namespace or service. */
const DNS_LABEL = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

/** `spec.labels`: a list of `{key, value, source}` or `"[source:]key[=value]"` strings. */
function readRuleLabels(ctx: Ctx, path: string, value: unknown): Record<string, string> | undefined {
  const list = readList(ctx, path, value);
  const out: Record<string, string> = {};
  if (list === undefined) return value === undefined || value === null ? out : undefined;
  const before = ctx.issues.length;
  list.forEach((item, i) => {
    const p = at(path, i);
    let source = 'unspec';
    let key: string | undefined;
    let val = '';
    if (typeof item === 'string') {
      const eq = item.indexOf('=');
      const keyPart = eq === -1 ? item : item.slice(0, eq);
      val = eq === -1 ? '' : item.slice(eq + 1);
      const parts = splitLabelKey(keyPart);
      if (parts.source !== '') source = parts.source;
      key = parts.key;
    } else {
      const o = readObj(ctx, p, item);
      if (o === undefined) {
        if (item === null || item === undefined) ctx.add(p, 'empty list item');
        return;
      }
      checkFields(ctx, p, o, ['key', 'value', 'source']);
      key = readString(ctx, join(p, 'key'), o.key);
      val = readString(ctx, join(p, 'value'), o.value) ?? '';
      source = readString(ctx, join(p, 'source'), o.source) || 'unspec';
    }
    if (key === undefined || key === '') {
      ctx.add(p, 'label key must not be empty');
      return;
    }
    const full = `${source}:${key}`;
    if (Object.hasOwn(out, full)) ctx.add(p, `duplicate label ${full}`);
    out[full] = val;
  });
  return ctx.issues.length === before ? out : undefined;
}

/** Reads a Cilium rule (`spec` or one `specs` entry) into a PolicyRule. */
function readCiliumRule(ctx: Ctx, path: string, value: unknown, scope: Scope, meta: Metadata): PolicyRule | undefined {
  const obj = readObj(ctx, path, value);
  if (obj === undefined) {
    if (value === null) ctx.add(path, 'must be a rule, got null');
    return undefined;
  }
  const before = ctx.issues.length;
  checkFields(ctx, path, obj, ['endpointSelector', 'ingress', 'ingressDeny', 'egress', 'egressDeny', 'enableDefaultDeny', 'labels', 'description'], UNSUPPORTED_SPEC);

  const selPath = join(path, 'endpointSelector');
  let subject: Selector | undefined;
  if (obj.endpointSelector === undefined) {
    if (obj.nodeSelector === undefined) ctx.add(selPath, 'is required ({} selects every endpoint)');
  } else {
    subject = readSelector(ctx, selPath, obj.endpointSelector, ciliumSelectorKey);
  }
  const subjectMatchesInit = subject !== undefined && selectorHasKey(subject, 'reserved:init');
  if (subject !== undefined && scope.namespace !== undefined) {
    // A namespaced policy always applies in its own namespace; another namespace here is a mistake.
    const ns = scope.namespace;
    for (const key of [POD_NAMESPACE_LABEL, 'any:io.kubernetes.pod.namespace']) {
      const v = subject.matchLabels[key];
      if (v !== undefined && v !== ns) ctx.add(selPath, `a ${scope.kind} in namespace ${ns} only selects endpoints of ${ns}; it cannot select namespace "${v}"`);
      for (const req of subject.matchExpressions) {
        if (req.key === key && !(req.operator === 'In' && req.values.length === 1 && req.values[0] === ns)) {
          ctx.add(selPath, `a ${scope.kind} in namespace ${ns} only selects endpoints of ${ns}; remove the ${req.operator} expression on ${key}`);
        }
      }
    }
    subject.matchLabels[POD_NAMESPACE_LABEL] = ns;
  }

  const directions: Direction[] = [
    { field: 'ingress', deny: false, prefix: 'from' },
    { field: 'egress', deny: false, prefix: 'to' },
    { field: 'ingressDeny', deny: true, prefix: 'from' },
    { field: 'egressDeny', deny: true, prefix: 'to' },
  ];
  const lists: Record<Direction['field'], PeerRule[]> = { ingress: [], egress: [], ingressDeny: [], egressDeny: [] };
  for (const dir of directions) {
    const p = join(path, dir.field);
    const items = readList(ctx, p, obj[dir.field]) ?? [];
    items.forEach((item, i) => {
      const peer = readPeerRule(ctx, at(p, i), item, dir, scope, subjectMatchesInit);
      if (peer !== undefined) lists[dir.field].push(peer);
    });
  }

  const enableDefaultDeny: PolicyRule['enableDefaultDeny'] = {};
  const eddPath = join(path, 'enableDefaultDeny');
  const edd = readObj(ctx, eddPath, obj.enableDefaultDeny);
  if (edd !== undefined) {
    checkFields(ctx, eddPath, edd, ['ingress', 'egress']);
    const ingress = readBool(ctx, join(eddPath, 'ingress'), edd.ingress);
    const egress = readBool(ctx, join(eddPath, 'egress'), edd.egress);
    if (ingress !== undefined) enableDefaultDeny.ingress = ingress;
    if (egress !== undefined) enableDefaultDeny.egress = egress;
  }

  const description = readString(ctx, join(path, 'description'), obj.description);
  const userLabels = readRuleLabels(ctx, join(path, 'labels'), obj.labels);

  const labels: Record<string, string> = {
    [POLICY_LABEL_DERIVED_FROM]: scope.kind,
    [POLICY_LABEL_NAME]: meta.name,
  };
  if (scope.namespace !== undefined) labels[POLICY_LABEL_NAMESPACE] = scope.namespace;
  if (meta.uid !== undefined) labels[POLICY_LABEL_UID] = meta.uid;
  for (const [k, v] of Object.entries(userLabels ?? {})) {
    // Cilium appends the labels it derives to the user's and keeps both, so a policy exported
    // from a cluster (`kubectl get cnp -o yaml` lists the derived labels in specs[].labels) comes
    // back as it was. One value per key here: the metadata's wins, and a different one is said.
    if (Object.hasOwn(labels, k)) {
      if (labels[k] !== v) ctx.warn(join(path, 'labels'), `label ${k}=${v} is ignored: Cilium derives ${k}=${labels[k]} from the policy metadata`);
    } else labels[k] = v;
  }

  if (ctx.issues.length !== before || subject === undefined) return undefined;
  const rule: PolicyRule = {
    name: meta.name,
    ...(scope.namespace !== undefined ? { namespace: scope.namespace } : {}),
    kind: scope.kind,
    ...(description !== undefined && description !== '' ? { description } : {}),
    endpointSelector: subject,
    ingress: lists.ingress,
    egress: lists.egress,
    ingressDeny: lists.ingressDeny,
    egressDeny: lists.egressDeny,
    enableDefaultDeny,
    labels,
  };
  return rule;
}

/**
 * Reads a CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy document (apiVersion and kind
 * already checked, metadata already read). One rule per `spec` and per `specs` entry.
 */
export function readCiliumPolicy(ctx: Ctx, path: string, doc: Obj, kind: 'CiliumNetworkPolicy' | 'CiliumClusterwideNetworkPolicy', meta: Metadata): PolicyRule[] {
  checkFields(ctx, path, doc, ['apiVersion', 'kind', 'metadata', 'spec', 'specs', 'status', 'description']);
  ignoreStrayDescription(ctx, path, doc, `the top level of a ${kind}`, 'write it as spec.description');
  const scope: Scope = { kind, namespace: meta.namespace };
  const rules: PolicyRule[] = [];
  const hasSpec = doc.spec !== undefined && doc.spec !== null;
  const specs = readList(ctx, join(path, 'specs'), doc.specs);
  if (!hasSpec && (specs === undefined || specs.length === 0)) {
    if (doc.specs === undefined || doc.specs === null || specs !== undefined) ctx.add(join(path, 'spec'), 'is required (or a non-empty specs list)');
    return rules;
  }
  if (hasSpec) {
    const rule = readCiliumRule(ctx, join(path, 'spec'), doc.spec, scope, meta);
    if (rule !== undefined) rules.push(rule);
  }
  (specs ?? []).forEach((item, i) => {
    const rule = readCiliumRule(ctx, at(join(path, 'specs'), i), item, scope, meta);
    if (rule !== undefined) {
      rule.specIndex = i;
      rules.push(rule);
    }
  });
  return rules;
}
