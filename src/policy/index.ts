/**
 * Network policy, part 1: the policies users already have (CiliumNetworkPolicy,
 * CiliumClusterwideNetworkPolicy, Kubernetes NetworkPolicy, as YAML) validated strictly and
 * translated into one rule model (`PolicyRule`), plus label-selector matching.
 *
 * @example
 * import { loadPolicyFile, selectorMatches, ruleKey } from './policy/index.ts';
 * const rules = await loadPolicyFile('sw_l3_l4_policy.yaml');
 * selectorMatches(rules[0].endpointSelector, { 'k8s:org': 'empire', 'k8s:class': 'deathstar', 'k8s:io.kubernetes.pod.namespace': 'default' }); // true
 * @module
 */
export * from './types.ts';
export { PolicyError, PolicyValidationError, formatIssue, type PolicyErrorCode, type PolicyIssue } from './errors.ts';
export { selectorMatches, canonicalSelectorKey, splitLabelKey, selectorHasKey } from './selector.ts';
export {
  parsePolicyYaml,
  parsePolicyFile,
  parsePolicyObjects,
  loadPolicyFile,
  loadPolicyFileSync,
  formatSkipped,
  type ParseOptions,
  type ParsedPolicyFile,
  type SkippedDocument,
} from './load.ts';
export { parseCidr, formatCidr, cidrContains, ipInCidr, type Cidr } from './cidr.ts';
export { k8sLabelKeyProblem, LABEL_VALUE, portNameProblem } from './context.ts';
// Part 2: what the datapath enforces (bpf/lib/policy.h), computed incrementally.
export * from './policy-map.ts';
export {
  SelectorCache,
  LabelIndex,
  RESERVED_IDENTITIES,
  reservedIdentityInfos,
  cidrIdentityLabels,
  identityCidr,
  entityMatches,
  cidrRuleMatches,
  peerSelectorKey,
  isWildcardPeer,
  type IdentityInfo,
  type IdentitySource,
  type LabelMap,
  type PeerSelector,
  type CachedSelector,
  type SelectionChange,
} from './selector-cache.ts';
export {
  resolveEndpointPolicy,
  collectRequirements,
  diffEntries,
  peerSelectors,
  rulePeerSelectors,
  ruleEnforces,
  ruleCidrPrefixes,
  resolvePortRule,
  type EndpointNamedPort,
  type NamedPortLookup,
  type ResolvedPolicy,
  type ResolveOptions,
  type Requirements,
  type EntriesDiff,
} from './resolve.ts';
export {
  PolicyEngine,
  tracePolicy,
  type PolicyEngineOptions,
  type PolicyUpdate,
  type TracePeer,
  type TraceQuery,
  type TraceResult,
  type DirectionTrace,
} from './engine.ts';
export {
  dnsVerdict,
  dnsVerdictAllows,
  expandFqdnPeers,
  fqdnSelectorMatches,
  hasFqdnPeers,
  normalizeDnsName,
  type DnsVerdict,
} from './dns.ts';
export { expandServicePeers, hasServicePeers, type ServiceBackendPeers, type ServiceResolver } from './services.ts';
export {
  applyHeaderEdits,
  compileHttpRule,
  compileRe2,
  HEADER_MISMATCH_ACTIONS,
  httpRuleMatch,
  httpRuleMatches,
  type CompiledHttpRule,
  type HeaderEdit,
  type HeaderMatchAction,
  type HeaderMismatchAction,
  type HttpRequestView,
  type HttpRule,
  type HttpRuleMatch,
} from './l7-http.ts';
