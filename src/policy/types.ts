/**
 * The internal rule model every policy source (CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy,
 * Kubernetes NetworkPolicy) is translated into. Plain data only (JSON-serialisable), so rules can
 * be stored in tables, diffed and printed.
 *
 * Semantics (Cilium's, `pkg/policy/api`):
 * - A rule applies to the endpoints whose labels match `endpointSelector`.
 * - Within one `PeerRule`, the peer must match (any of `endpoints`, `entities`, `cidrs`) AND the
 *   traffic must match `ports` (absent = every port and protocol). Separate `PeerRule`s are ORed.
 * - A `PeerRule` with no L3 list at all (`{}`, written `ingress: [{}]`) matches nothing; it only
 *   turns default deny on for its direction. A rule that gave ports but no peer (`- toPorts: …`)
 *   is stored with `endpoints: [WILDCARD]` (an empty selector), which is how Cilium reads it:
 *   every peer, world included.
 * - Deny lists (`ingressDeny`, `egressDeny`) beat allow lists, across all policies.
 * - Requirements (`fromRequires`/`toRequires`, `PeerRule.requires`) allow nothing by themselves:
 *   those of every allow rule selecting an endpoint narrow the `endpoints` selectors of every
 *   allow rule (of any policy) selecting it in that direction, and those of deny rules narrow
 *   deny rules' likewise. Entities, CIDRs and the wildcard of a ports-only rule are not narrowed
 *   (Cilium's `GetSourceEndpointSelectorsWithRequirements`).
 * - `enableDefaultDeny.x` undefined means Cilium's default: deny is on for a direction that has
 *   allow or deny rules.
 * @module
 */

import type { HttpRule } from './l7-http.ts';

export const POLICY_KINDS = ['CiliumNetworkPolicy', 'CiliumClusterwideNetworkPolicy', 'NetworkPolicy'] as const;
export type PolicyKind = (typeof POLICY_KINDS)[number];

/** Cilium entities (`pkg/policy/api/entity.go`). */
export const ENTITIES = [
  'all',
  'world',
  'world-ipv4',
  'world-ipv6',
  'cluster',
  'host',
  'remote-node',
  'kube-apiserver',
  'ingress',
  'init',
  'health',
  'unmanaged',
  'none',
] as const;
export type Entity = (typeof ENTITIES)[number];

export type SelectorOperator = 'In' | 'NotIn' | 'Exists' | 'DoesNotExist';

export interface SelectorRequirement {
  /** `source:key`, e.g. `k8s:io.kubernetes.pod.namespace`, `any:app`. */
  key: string;
  operator: SelectorOperator;
  /** Non-empty for In/NotIn, empty for Exists/DoesNotExist. */
  values: string[];
}

/**
 * A label selector. Keys are canonical `source:key`: a key written without a source becomes
 * `any:key` (matches that key from any source), `$host` becomes `reserved:host`. An empty selector
 * (no labels, no expressions) selects everything.
 */
export interface Selector {
  matchLabels: Record<string, string>;
  matchExpressions: SelectorRequirement[];
}

/**
 * Protocols of a port entry. `ANY` = TCP, UDP and SCTP. `ICMP`/`ICMPV6` come from `icmps` fields,
 * with the ICMP type in `port`.
 */
export const PROTOCOLS = ['TCP', 'UDP', 'SCTP', 'ICMP', 'ICMPV6', 'ANY'] as const;
export type Protocol = (typeof PROTOCOLS)[number];

/**
 * A DNS name selector (`toFQDNs`, `rules.dns`): exactly one of the two, lower case, without the
 * trailing dot. Matched as Cilium does (see src/policy/dns.ts).
 */
export interface FqdnSelector {
  matchName?: string;
  matchPattern?: string;
}

/** The L7 rules of a `toPorts` entry, given to each of its ports. */
export interface L7Rules {
  /** `rules.http`: the requests the node proxy lets through (ingress only). */
  http?: HttpRule[];
  /** `rules.dns`: the names a DNS proxy lets the endpoint ask about (egress only). */
  dns?: FqdnSelector[];
}

export interface PortRule {
  /**
   * TCP/UDP/SCTP/ANY: 1–65535, or 0 = every port of `protocol` (e.g. a Kubernetes port entry
   * without `port`). ICMP/ICMPV6: the ICMP type, 0–255 (0 is EchoReply, not a wildcard).
   */
  port: number;
  /** Inclusive end of a range starting at `port`; only with a non-zero port. */
  endPort?: number;
  /**
   * A named port (`port: http`, an IANA_SVC_NAME); `port` is then 0 and stands for nothing. It is
   * resolved per endpoint when its policy is computed, as Kubernetes and Cilium do: in an ingress
   * rule, the selected endpoint's own port of that name; in an egress rule, the ports of that
   * name of every endpoint the node knows (its destinations'). The protocol must match the named
   * port's (ANY matches each). A name no endpoint has allows (or denies) nothing, never every port.
   */
  name?: string;
  protocol: Protocol;
  /**
   * L7 rules of the `toPorts` entry the port came from. `http` (ingress allows only; one TCP
   * port): the connections it allows go through the node proxy, which allows only matching
   * requests; with protocol ANY only TCP is allowed, through the proxy. `dns` (egress): the names
   * the DNS proxy lets the endpoint ask about; the port itself is allowed at L4.
   */
  l7?: L7Rules;
}

export interface CidrRule {
  /** Canonical network address, e.g. `10.0.0.0/8` (host bits cleared) or `2001:db8::/32`. */
  cidr: string;
  /** Sub-prefixes of `cidr` excluded from this rule (canonical, same family). */
  except: string[];
}

/**
 * One `toServices` entry: a service by name (`k8sService`) or services by their own labels
 * (`k8sServiceSelector`). Egress to it means egress to its backends: the policy manager expands it
 * into `endpoints` (the pods the service selects) and `cidrs` (explicit backends that are no pod)
 * and expands it again whenever the service or its backends change.
 */
export interface ServicePeer {
  /** Absent only for a clusterwide policy's `k8sServiceSelector` without one: every namespace. */
  namespace?: string;
  /** k8sService.serviceName */
  name?: string;
  /** k8sServiceSelector.selector, over the services' labels (canonical `source:key` keys). */
  selector?: Selector;
}

export interface PeerRule {
  /** `toServices`, as written; `endpoints` and `cidrs` carry its expansion once resolved. */
  services?: ServicePeer[];
  endpoints?: Selector[];
  entities?: Entity[];
  /** `fromCIDR`/`toCIDR` (with empty `except`) and `fromCIDRSet`/`toCIDRSet`, in that order. */
  cidrs?: CidrRule[];
  /**
   * `toFQDNs`, as written (egress only); `cidrs` carries the addresses the FQDN cache learned for
   * them, once expanded.
   */
  fqdns?: FqdnSelector[];
  /** Absent or empty = all ports. */
  ports?: PortRule[];
  /**
   * `fromRequires`/`toRequires`: label selectors (scoped like `endpoints`) a peer selected by
   * `endpoints` must match, all of them, in every rule of this kind (allow or deny) and direction
   * selecting the same endpoint, from any policy. They select no peer themselves.
   */
  requires?: Selector[];
  /**
   * Set when the rule gave ports but no peer: `endpoints` then holds the implied wildcard, which
   * requirements do not narrow (Cilium adds that wildcard after applying them).
   */
  portsOnly?: true;
}

export interface PolicyRule {
  name: string;
  /** Set for CiliumNetworkPolicy and NetworkPolicy (default `default`); absent for clusterwide. */
  namespace?: string;
  kind: PolicyKind;
  sourceFile?: string;
  /** Position in a CNP/CCNP `specs` list; absent for `spec` and for NetworkPolicy. */
  specIndex?: number;
  description?: string;
  endpointSelector: Selector;
  ingress: PeerRule[];
  egress: PeerRule[];
  ingressDeny: PeerRule[];
  egressDeny: PeerRule[];
  enableDefaultDeny: { ingress?: boolean; egress?: boolean };
  /**
   * `source:key` → value: the policy's own labels (`spec.labels`, source `unspec` unless given)
   * plus the labels Cilium derives (`k8s:io.cilium.k8s.policy.name`, `.namespace`, `.derived-from`,
   * `.uid` when metadata.uid is set).
   */
  labels: Record<string, string>;
}

/** The label every namespaced endpoint carries. */
export const POD_NAMESPACE_LABEL = 'k8s:io.kubernetes.pod.namespace';
/** Prefix of namespace labels as Cilium exposes them on endpoints. */
export const NAMESPACE_LABELS_PREFIX = 'io.cilium.k8s.namespace.labels.';

export const POLICY_LABEL_NAME = 'k8s:io.cilium.k8s.policy.name';
export const POLICY_LABEL_NAMESPACE = 'k8s:io.cilium.k8s.policy.namespace';
export const POLICY_LABEL_DERIVED_FROM = 'k8s:io.cilium.k8s.policy.derived-from';
export const POLICY_LABEL_UID = 'k8s:io.cilium.k8s.policy.uid';

/** A new empty selector: selects every endpoint. */
export function wildcardSelector(): Selector {
  return { matchLabels: {}, matchExpressions: [] };
}

/** `kind/namespace/name` (or `kind/name` when clusterwide): identifies the policy object. */
export function policyKey(rule: Pick<PolicyRule, 'kind' | 'namespace' | 'name'>): string {
  return rule.namespace === undefined ? `${rule.kind}/${rule.name}` : `${rule.kind}/${rule.namespace}/${rule.name}`;
}

/**
 * Identifies one rule: the policy key, plus `#i` for the i-th entry of a `specs` list (a policy
 * with `specs` yields one rule per entry).
 */
export function ruleKey(rule: Pick<PolicyRule, 'kind' | 'namespace' | 'name' | 'specIndex'>): string {
  return rule.specIndex === undefined ? policyKey(rule) : `${policyKey(rule)}#${rule.specIndex}`;
}
