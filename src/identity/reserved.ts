/**
 * Identity numbers that need no allocation: reserved identities (1–11, one `reserved:` label
 * each), well-known identities (100–115, fixed label sets of cluster components such as kube-dns)
 * and the layout of the 32-bit identity space.
 *
 * Layout (Cilium's `pkg/identity/numericidentity.go`):
 * - 0 unknown; 1–11 reserved; 100–115 well-known; 128–255 user-reserved (not modelled);
 * - cluster-wide identities: cluster 0 allocates 256–65535, cluster N allocates
 *   `N<<16 … ((N+1)<<16)-1` (shift 16 for the default 255 connected clusters);
 * - node-local identities (CIDRs): `1<<24 | n`; the remote-node scope is `2<<24`.
 * @module
 */
import { IdentityError, InvalidLabelsError } from './errors.ts';
import { LABEL_CLUSTER, LABEL_NAMESPACE, LABEL_SERVICE_ACCOUNT, Labels, formatLabel, type ReservedLabelKey } from './labels.ts';

export const IDENTITY_UNKNOWN = 0;

/** Reserved identity numbers by name (`RESERVED_IDENTITY.host === 1`). */
export const RESERVED_IDENTITY = {
  host: 1,
  world: 2,
  unmanaged: 3,
  health: 4,
  init: 5,
  'remote-node': 6,
  'kube-apiserver': 7,
  ingress: 8,
  'world-ipv4': 9,
  'world-ipv6': 10,
  'encrypted-overlay': 11,
} as const satisfies Record<ReservedLabelKey, number>;

/** Smallest cluster-wide identity of cluster 0; everything below is reserved. */
export const MIN_CLUSTER_IDENTITY = 256;
/** Bits of the identity below the cluster id. */
export const CLUSTER_ID_SHIFT = 16;
export const MAX_CLUSTER_ID = 255;
/** Bit that marks a node-local identity (CIDR identities): `LOCAL_IDENTITY_FLAG | n`. */
export const LOCAL_IDENTITY_FLAG = 1 << 24;
/** Largest `n` of a node-local identity. */
export const MAX_LOCAL_IDENTITY_INDEX = 0xffffff;
/** Scope bits of remote-node identities (`2<<24`). */
export const REMOTE_NODE_IDENTITY_SCOPE = 2 << 24;

export interface ReservedIdentityInfo {
  readonly id: number;
  readonly name: string;
  readonly labels: Labels;
}

const RESERVED: readonly ReservedIdentityInfo[] = Object.entries(RESERVED_IDENTITY).map(([name, id]) => ({
  id,
  name,
  // Cilium gives kube-apiserver the remote-node label too: it runs on (remote) nodes.
  labels: Labels.parse(name === 'kube-apiserver' ? ['reserved:kube-apiserver', 'reserved:remote-node'] : [`reserved:${name}`]),
}));
const RESERVED_BY_ID = new Map(RESERVED.map((r) => [r.id, r]));

/** The reserved identities 1–11 with their labels, by number. */
export function reservedIdentities(): readonly ReservedIdentityInfo[] {
  return RESERVED;
}

/** The reserved identity with this number, if it is one. */
export function reservedIdentity(id: number): ReservedIdentityInfo | undefined {
  return RESERVED_BY_ID.get(id);
}

/**
 * The name Hubble prints: a reserved name (`host`, `world`…), `unknown` for 0, else `ID:n`.
 *
 * @example
 * identityName(1);     // 'host'
 * identityName(12345); // 'ID:12345'
 */
export function identityName(id: number): string {
  if (id === IDENTITY_UNKNOWN) return 'unknown';
  return RESERVED_BY_ID.get(id)?.name ?? `ID:${id}`;
}

export type IdentityScope = 'unknown' | 'reserved' | 'well-known' | 'user-reserved' | 'cluster' | 'local' | 'remote-node' | 'invalid';

/** Where an identity number comes from. */
export function identityScope(id: number): IdentityScope {
  if (!Number.isInteger(id) || id < 0 || id > 0xffffffff) return 'invalid';
  if (id === IDENTITY_UNKNOWN) return 'unknown';
  const scope = id & 0xff000000;
  if (scope === LOCAL_IDENTITY_FLAG) return 'local';
  if (scope === REMOTE_NODE_IDENTITY_SCOPE) return 'remote-node';
  if (scope !== 0) return 'invalid';
  if (RESERVED_BY_ID.has(id)) return 'reserved';
  if (id >= 100 && id <= 115) return 'well-known';
  if (id < MIN_CLUSTER_IDENTITY) return 'user-reserved';
  return 'cluster';
}

/** Whether `id` is below 256: reserved, well-known or user-reserved; never allocated. */
export function isReservedIdentity(id: number): boolean {
  return Number.isInteger(id) && id > 0 && id < MIN_CLUSTER_IDENTITY;
}

export function isLocalIdentity(id: number): boolean {
  return identityScope(id) === 'local';
}

/**
 * The cluster-wide allocation range of a cluster: 256–65535 for cluster 0,
 * `N<<16 … ((N+1)<<16)-1` for cluster N.
 */
export function clusterIdentityRange(clusterId: number): { readonly min: number; readonly max: number } {
  if (!Number.isInteger(clusterId) || clusterId < 0 || clusterId > MAX_CLUSTER_ID) {
    throw new IdentityError('ERR_IDENTITY_INVALID_ARGUMENT', `identity: cluster id ${String(clusterId)} is invalid: expected an integer 0–${MAX_CLUSTER_ID}`);
  }
  return { min: clusterId === 0 ? MIN_CLUSTER_IDENTITY : clusterId << CLUSTER_ID_SHIFT, max: ((clusterId + 1) << CLUSTER_ID_SHIFT) - 1 };
}

/**
 * The reserved identity a label set maps to, if any, by Cilium's rules:
 * - no `reserved:` label: undefined (an allocated identity);
 * - `reserved:host` → host (1), whatever else the set holds (node labels);
 * - `reserved:remote-node` → remote-node (6), or kube-apiserver (7) with `reserved:kube-apiserver`;
 * - `reserved:world*` next to `cidr:` labels: undefined (a CIDR identity);
 * - otherwise exactly one reserved label and nothing else → its number.
 * Other mixtures throw InvalidLabelsError.
 */
export function reservedIdentityForLabels(labels: Labels): number | undefined {
  const reserved = labels.toArray().filter((l) => l.source === 'reserved');
  if (reserved.length === 0) return undefined;
  if (labels.has('host', 'reserved')) return RESERVED_IDENTITY.host;
  if (labels.has('remote-node', 'reserved')) return labels.has('kube-apiserver', 'reserved') ? RESERVED_IDENTITY['kube-apiserver'] : RESERVED_IDENTITY['remote-node'];
  const worldOnly = reserved.every((l) => l.key === 'world' || l.key === 'world-ipv4' || l.key === 'world-ipv6');
  if (labels.hasSource('cidr')) {
    if (worldOnly) return undefined;
    const bad = reserved.find((l) => !l.key.startsWith('world'))!;
    throw new InvalidLabelsError(formatLabel(bad), `a reserved label other than world cannot be combined with cidr labels (${labels.canonical})`);
  }
  if (labels.size === 1) return RESERVED_IDENTITY[reserved[0].key as ReservedLabelKey];
  const other = labels.toArray().find((l) => l !== reserved[0])!;
  throw new InvalidLabelsError(
    formatLabel(reserved[0]),
    `reserved label cannot be combined with ${JSON.stringify(formatLabel(other))}; only reserved:host and reserved:remote-node carry extra labels (${labels.canonical})`,
  );
}

export interface WellKnownIdentity {
  readonly id: number;
  readonly name: string;
  readonly labels: Labels;
}

export interface WellKnownOptions {
  /** Default `default`. */
  readonly clusterName?: string;
  /** Namespace Cilium runs in. Default `kube-system`. */
  readonly ciliumNamespace?: string;
}

/** `io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name`: the namespace's own name label. */
const NAMESPACE_NAME_LABEL = 'io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name';

/**
 * Cluster components with fixed identities 100–115, so that they can talk (DNS, kvstore) before
 * identities are allocated. Each has a second number (108–115) for the same labels plus the
 * namespace-name label that Kubernetes ≥ 1.21 adds.
 *
 * @example
 * wellKnownIdentities().find((w) => w.name === 'kube-dns')?.id; // 102
 */
export function wellKnownIdentities(options?: WellKnownOptions): readonly WellKnownIdentity[] {
  const cluster = options?.clusterName ?? 'default';
  const ns = options?.ciliumNamespace ?? 'kube-system';
  const common = (namespace: string, serviceAccount: string): string[] => [
    `k8s:${LABEL_NAMESPACE}=${namespace}`,
    `k8s:${LABEL_SERVICE_ACCOUNT}=${serviceAccount}`,
    `k8s:${LABEL_CLUSTER}=${cluster}`,
  ];
  const components: readonly [number, string, string, string[]][] = [
    [100, 'etcd-operator', ns, ['k8s:io.cilium/app=etcd-operator', ...common(ns, 'cilium-etcd-sa')]],
    [101, 'cilium-kvstore', ns, ['k8s:app=etcd', 'k8s:etcd_cluster=cilium-etcd', 'k8s:io.cilium/app=etcd-operator', ...common(ns, 'default')]],
    [102, 'kube-dns', 'kube-system', ['k8s:k8s-app=kube-dns', ...common('kube-system', 'kube-dns')]],
    [103, 'eks-kube-dns', 'kube-system', ['k8s:k8s-app=kube-dns', 'k8s:eks.amazonaws.com/component=kube-dns', ...common('kube-system', 'kube-dns')]],
    [104, 'coredns', 'kube-system', ['k8s:k8s-app=kube-dns', ...common('kube-system', 'coredns')]],
    [
      105,
      'cilium-operator',
      ns,
      ['k8s:name=cilium-operator', 'k8s:io.cilium/app=operator', 'k8s:app.kubernetes.io/part-of=cilium', 'k8s:app.kubernetes.io/name=cilium-operator', ...common(ns, 'cilium-operator')],
    ],
    [106, 'eks-coredns', 'kube-system', ['k8s:k8s-app=kube-dns', 'k8s:eks.amazonaws.com/component=coredns', ...common('kube-system', 'coredns')]],
    [
      107,
      'cilium-etcd-operator',
      ns,
      ['k8s:name=cilium-etcd-operator', 'k8s:io.cilium/app=etcd-operator', 'k8s:app.kubernetes.io/name=cilium-etcd-operator', 'k8s:app.kubernetes.io/part-of=cilium', ...common(ns, 'cilium-etcd-operator')],
    ],
  ];
  return components.flatMap(([id, name, namespace, labels]) => [
    { id, name, labels: Labels.parse(labels) },
    { id: id + 8, name, labels: Labels.parse([...labels, `k8s:${NAMESPACE_NAME_LABEL}=${namespace}`]) },
  ]);
}
