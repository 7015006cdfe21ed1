/**
 * Security identities as Cilium has them: a label set (`k8s:app=web`, `reserved:host`,
 * `cidr:10.0.0.0/8`…) filtered to its security-relevant labels gets a number that policy and the
 * datapath use instead of addresses.
 *
 * - Reserved identities 1–11 and well-known identities 100–115 are fixed (reserved.ts).
 * - Cluster-wide identities (256–65535 for cluster 0) are allocated through the StateStore, so
 *   equal labels get equal numbers on every node (allocator.ts, keys.ts); references are counted
 *   per node and unreferenced identities are garbage-collected.
 * - Node-local CIDR identities (`1<<24 | n`) live in memory only (local.ts).
 *
 * @example
 * const store = new MemoryStateStore();
 * const n1 = new IdentityAllocator({ store, nodeName: 'n1' });
 * const n2 = new IdentityAllocator({ store, nodeName: 'n2' });
 * await Promise.all([n1.start(), n2.start()]);
 * const a = await n1.allocate(['app=web', 'io.kubernetes.pod.namespace=default', 'pod-template-hash=5d8f']);
 * const b = await n2.allocate({ 'io.kubernetes.pod.namespace': 'default', app: 'web' });
 * a.id === b.id; // true
 * identityName(1); // 'host'
 * @module
 */
export * from './errors.ts';
export {
  LABEL_SOURCES,
  LABEL_NAMESPACE,
  LABEL_SERVICE_ACCOUNT,
  LABEL_CLUSTER,
  NAMESPACE_LABELS_PREFIX,
  RESERVED_LABEL_KEYS,
  Labels,
  formatLabel,
  isLabelSource,
  makeLabel,
  parseLabel,
  podLabels,
  type Label,
  type LabelSource,
  type LabelsInput,
  type ParseOptions,
  type PodLabelsInput,
  type ReservedLabelKey,
} from './labels.ts';
export { LabelFilter, DEFAULT_LABEL_FILTER_RULES, type LabelFilterResult } from './label-filter.ts';
export {
  IDENTITY_UNKNOWN,
  RESERVED_IDENTITY,
  MIN_CLUSTER_IDENTITY,
  CLUSTER_ID_SHIFT,
  MAX_CLUSTER_ID,
  LOCAL_IDENTITY_FLAG,
  MAX_LOCAL_IDENTITY_INDEX,
  REMOTE_NODE_IDENTITY_SCOPE,
  clusterIdentityRange,
  identityName,
  identityScope,
  isLocalIdentity,
  isReservedIdentity,
  reservedIdentities,
  reservedIdentity,
  reservedIdentityForLabels,
  wellKnownIdentities,
  type IdentityScope,
  type ReservedIdentityInfo,
  type WellKnownIdentity,
  type WellKnownOptions,
} from './reserved.ts';
export { cidrLabels, type CidrLabelsOptions } from './local.ts';
export { parsePrefix, formatPrefix, prefixLabelKey, type Prefix } from './prefix.ts';
export {
  IdentityAllocator,
  type Identity,
  type AllocationResult,
  type IdentityChange,
  type IdentityAllocatorOptions,
  type CollectOptions,
  type CollectResult,
} from './allocator.ts';
export { IDENTITIES_PREFIX, BY_ID_PREFIX, BY_LABELS_PREFIX, REFS_PREFIX, type IdentityRecord, type LabelsRecord, type RefRecord } from './keys.ts';
