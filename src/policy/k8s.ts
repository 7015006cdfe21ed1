/**
 * Kubernetes NetworkPolicy (`networking.k8s.io/v1`) → one `PolicyRule`, translated as Cilium's
 * `pkg/k8s/network_policy.go` does:
 * - podSelector → endpointSelector (keys get source `k8s:`) plus `k8s:io.kubernetes.pod.namespace=<ns>`;
 * - a peer's podSelector alone → same namespace; namespaceSelector keys → `k8s:io.cilium.k8s.namespace.labels.<k>`
 *   (an empty namespaceSelector → any namespace: `k8s:io.kubernetes.pod.namespace Exists`);
 * - ipBlock → CIDR rule with except; one PeerRule per peer, each carrying the rule's ports;
 * - ports → TCP by default, a missing port = every port (0); a named port (`port: http`) is kept
 *   by name and resolved per endpoint by the engine (see PortRule.name);
 * - empty or missing from/to → every peer (the wildcard selector);
 * - a policyType without rules → `[{}]`: default deny in that direction.
 * @module
 */
import { at, checkFields, Ctx, describe, join, k8sLabelKeyProblem, portNameProblem, readList, readObj, readString, type Obj } from './context.ts';
import { readCidrRule, readSelector, type Metadata } from './parse-common.ts';
import {
  NAMESPACE_LABELS_PREFIX,
  POD_NAMESPACE_LABEL,
  POLICY_LABEL_DERIVED_FROM,
  POLICY_LABEL_NAME,
  POLICY_LABEL_NAMESPACE,
  POLICY_LABEL_UID,
  wildcardSelector,
  type PeerRule,
  type PolicyRule,
  type PortRule,
  type Selector,
} from './types.ts';

function k8sKey(prefix: string): (raw: string) => string | { error: string } {
  return (raw) => {
    const problem = k8sLabelKeyProblem(raw);
    return problem === undefined ? `k8s:${prefix}${raw}` : { error: problem };
  };
}

const podKey = k8sKey('');
const namespaceKey = k8sKey(NAMESPACE_LABELS_PREFIX);

function readKnpPort(ctx: Ctx, path: string, value: unknown): PortRule | undefined {
  const obj = readObj(ctx, path, value);
  if (obj === undefined) {
    if (value === null || value === undefined) ctx.add(path, 'empty list item');
    return undefined;
  }
  const before = ctx.issues.length;
  checkFields(ctx, path, obj, ['protocol', 'port', 'endPort']);
  let protocol: PortRule['protocol'] = 'TCP';
  const rawProtocol = readString(ctx, join(path, 'protocol'), obj.protocol);
  if (rawProtocol !== undefined) {
    if (rawProtocol === 'TCP' || rawProtocol === 'UDP' || rawProtocol === 'SCTP') protocol = rawProtocol;
    else ctx.add(join(path, 'protocol'), `must be one of TCP, UDP, SCTP, got "${rawProtocol}"`);
  }
  let port = 0;
  let name: string | undefined;
  const raw = obj.port;
  const portPath = join(path, 'port');
  if (raw === undefined || raw === null) {
    port = 0; // every port of the protocol
  } else if (typeof raw === 'number' || (typeof raw === 'string' && /^[0-9]+$/.test(raw))) {
    const n = Number(raw);
    if (!Number.isInteger(n) || n < 1 || n > 65535) ctx.add(portPath, `must be 1–65535, got ${raw}`);
    else port = n;
  } else if (typeof raw === 'string') {
    const problem = portNameProblem(raw);
    if (problem === undefined) name = raw;
    else ctx.add(portPath, `"${raw}" is neither a port number nor a port name: a port name ${problem}`);
  } else {
    ctx.add(portPath, `must be a port number, got ${describe(raw)}`);
  }
  let endPort: number | undefined;
  if (obj.endPort !== undefined && obj.endPort !== null) {
    const e = obj.endPort;
    const endPath = join(path, 'endPort');
    if (raw === undefined || raw === null) ctx.add(endPath, 'may not be specified without port');
    else if (typeof raw === 'string' && !/^[0-9]+$/.test(raw)) ctx.add(endPath, `may not be specified with a named port ("${raw}"); give the range by number`);
    else if (typeof e !== 'number' || !Number.isInteger(e) || e < 1 || e > 65535) ctx.add(endPath, `must be 1–65535, got ${describe(e)}`);
    else if (e < port) ctx.add(endPath, `must be at least port (${port}), got ${e}`);
    else if (e > port) endPort = e;
  }
  if (ctx.issues.length !== before) return undefined;
  const rule: PortRule = { port, protocol };
  if (endPort !== undefined) rule.endPort = endPort;
  if (name !== undefined) rule.name = name;
  return rule;
}

/** A NetworkPolicyPeer's label part: podSelector and/or namespaceSelector as one Cilium selector. */
function readPeerSelector(ctx: Ctx, path: string, peer: Obj, namespace: string): Selector | undefined {
  const hasPod = peer.podSelector !== undefined && peer.podSelector !== null;
  const pod = hasPod ? readSelector(ctx, join(path, 'podSelector'), peer.podSelector, podKey) : undefined;
  if (peer.namespaceSelector !== undefined && peer.namespaceSelector !== null) {
    const ns = readSelector(ctx, join(path, 'namespaceSelector'), peer.namespaceSelector, namespaceKey);
    if (ns === undefined || (hasPod && pod === undefined)) return undefined;
    if (Object.keys(ns.matchLabels).length === 0 && ns.matchExpressions.length === 0) {
      ns.matchExpressions.push({ key: POD_NAMESPACE_LABEL, operator: 'Exists', values: [] });
    }
    return {
      matchLabels: { ...ns.matchLabels, ...(pod?.matchLabels ?? {}) },
      matchExpressions: [...ns.matchExpressions, ...(pod?.matchExpressions ?? [])],
    };
  }
  if (pod === undefined) return undefined;
  pod.matchLabels[POD_NAMESPACE_LABEL] = namespace;
  return pod;
}

/** Reads `ingress[i]` / `egress[i]` into one PeerRule per peer. */
function readKnpRule(ctx: Ctx, path: string, value: unknown, peersField: 'from' | 'to', namespace: string): PeerRule[] {
  const obj = readObj(ctx, path, value);
  if (obj === undefined) {
    if (value === null || value === undefined) ctx.add(path, 'empty list item (write {} to allow all)');
    return [];
  }
  checkFields(ctx, path, obj, [peersField, 'ports']);
  const before = ctx.issues.length;
  const ports: PortRule[] = [];
  const portsPath = join(path, 'ports');
  (readList(ctx, portsPath, obj.ports) ?? []).forEach((item, i) => {
    const port = readKnpPort(ctx, at(portsPath, i), item);
    if (port !== undefined) ports.push(port);
  });

  const peersPath = join(path, peersField);
  const peers = readList(ctx, peersPath, obj[peersField]) ?? [];
  const out: PeerRule[] = [];
  if (peers.length === 0) {
    // No from/to: every peer.
    out.push({ endpoints: [wildcardSelector()] });
  }
  peers.forEach((item, i) => {
    const p = at(peersPath, i);
    const peer = readObj(ctx, p, item);
    if (peer === undefined) {
      if (item === null || item === undefined) ctx.add(p, 'empty list item');
      return;
    }
    checkFields(ctx, p, peer, ['podSelector', 'namespaceSelector', 'ipBlock']);
    const hasLabels = (peer.podSelector !== undefined && peer.podSelector !== null) || (peer.namespaceSelector !== undefined && peer.namespaceSelector !== null);
    const hasBlock = peer.ipBlock !== undefined && peer.ipBlock !== null;
    if (hasLabels && hasBlock) {
      ctx.add(join(p, 'ipBlock'), 'may not be combined with podSelector or namespaceSelector in one peer; make them separate peers');
      return;
    }
    if (hasBlock) {
      const block = readObj(ctx, join(p, 'ipBlock'), peer.ipBlock);
      if (block === undefined) return;
      checkFields(ctx, join(p, 'ipBlock'), block, ['cidr', 'except']);
      const rule = readCidrRule(ctx, join(p, 'ipBlock'), block, 'cidr', 'except');
      if (rule !== undefined) out.push({ cidrs: [rule] });
      return;
    }
    if (!hasLabels) {
      ctx.add(p, 'must set podSelector, namespaceSelector or ipBlock');
      return;
    }
    const selector = readPeerSelector(ctx, p, peer, namespace);
    if (selector !== undefined) out.push({ endpoints: [selector] });
  });
  if (ctx.issues.length !== before) return [];
  if (ports.length > 0) for (const rule of out) rule.ports = ports.map((port) => ({ ...port }));
  return out;
}

/** Reads a NetworkPolicy document (apiVersion and kind already checked, metadata already read). */
export function readNetworkPolicy(ctx: Ctx, path: string, doc: Obj, meta: Metadata): PolicyRule[] {
  checkFields(ctx, path, doc, ['apiVersion', 'kind', 'metadata', 'spec', 'status']);
  const namespace = meta.namespace ?? 'default';
  const specPath = join(path, 'spec');
  if (doc.spec === undefined || doc.spec === null) {
    ctx.add(specPath, 'is required');
    return [];
  }
  const spec = readObj(ctx, specPath, doc.spec);
  if (spec === undefined) return [];
  const before = ctx.issues.length;
  checkFields(ctx, specPath, spec, ['podSelector', 'policyTypes', 'ingress', 'egress']);

  const subject =
    spec.podSelector === undefined || spec.podSelector === null ? wildcardSelector() : readSelector(ctx, join(specPath, 'podSelector'), spec.podSelector, podKey);
  if (subject !== undefined) subject.matchLabels[POD_NAMESPACE_LABEL] = namespace;

  const typesPath = join(specPath, 'policyTypes');
  const types = new Set<string>();
  const rawTypes = readList(ctx, typesPath, spec.policyTypes);
  (rawTypes ?? []).forEach((t, i) => {
    if (t !== 'Ingress' && t !== 'Egress') ctx.add(at(typesPath, i), `must be Ingress or Egress, got ${describe(t)}`);
    else if (types.has(t)) ctx.add(at(typesPath, i), `duplicate policy type ${t}`);
    else types.add(t);
  });
  const typesGiven = rawTypes !== undefined && rawTypes.length > 0;

  const ingressList = readList(ctx, join(specPath, 'ingress'), spec.ingress) ?? [];
  const egressList = readList(ctx, join(specPath, 'egress'), spec.egress) ?? [];
  // Kubernetes ignores rules of a direction missing from an explicit policyTypes; Cilium would
  // enforce them. Refuse the ambiguity.
  if (typesGiven && ingressList.length > 0 && !types.has('Ingress')) ctx.add(join(specPath, 'ingress'), 'has rules but policyTypes does not list Ingress (Kubernetes would ignore them); add Ingress to policyTypes or remove the rules');
  if (typesGiven && egressList.length > 0 && !types.has('Egress')) ctx.add(join(specPath, 'egress'), 'has rules but policyTypes does not list Egress (Kubernetes would ignore them); add Egress to policyTypes or remove the rules');

  const ingress: PeerRule[] = [];
  ingressList.forEach((item, i) => ingress.push(...readKnpRule(ctx, at(join(specPath, 'ingress'), i), item, 'from', namespace)));
  const egress: PeerRule[] = [];
  egressList.forEach((item, i) => egress.push(...readKnpRule(ctx, at(join(specPath, 'egress'), i), item, 'to', namespace)));

  // Kubernetes default deny: policyTypes absent means Ingress (plus Egress when there are egress rules).
  if (ingress.length === 0 && (types.has('Ingress') || !types.has('Egress'))) ingress.push({});
  if (egress.length === 0 && types.has('Egress')) egress.push({});

  if (ctx.issues.length !== before || subject === undefined) return [];
  const labels: Record<string, string> = {
    [POLICY_LABEL_DERIVED_FROM]: 'NetworkPolicy',
    [POLICY_LABEL_NAME]: meta.name,
    [POLICY_LABEL_NAMESPACE]: namespace,
  };
  if (meta.uid !== undefined) labels[POLICY_LABEL_UID] = meta.uid;
  return [
    {
      name: meta.name,
      namespace,
      kind: 'NetworkPolicy',
      endpointSelector: subject,
      ingress,
      egress,
      ingressDeny: [],
      egressDeny: [],
      enableDefaultDeny: {},
      labels,
    },
  ];
}
