/**
 * A policy workload at the scale for bench/policy-compute.ts: 10k pod identities and
 * endpoints, 1k policies (the generator of src/policy/engine.test.ts's scale test), kept as a
 * model that changes can be applied to, so that the same configuration can be given both to a
 * live PolicyEngine incrementally and to a fresh engine from scratch.
 *
 * Shape: 100 namespaces × 10 apps × 10 versions. Every (namespace, app, version) is one identity
 * and one endpoint. Every (namespace, app) has one CiliumNetworkPolicy selecting its 10
 * endpoints: ingress from app+1 on 80/TCP and 8000-8099/TCP, egress to app+2 (all ports) and to
 * world on 443/TCP, ingress from world denied. That is 56 map entries per endpoint.
 * @module
 */
import {
  PolicyEngine,
  POD_NAMESPACE_LABEL,
  reservedIdentityInfos,
  type EntriesDiff,
  type IdentityInfo,
  type LabelMap,
  type PolicyRule,
  type PolicyUpdate,
  type Selector,
} from '../../src/policy/index.ts';

export const NAMESPACES = 100;
export const APPS = 10;
export const VERSIONS = 10;
/** First pod identity (Cilium's first cluster-local identity). */
export const FIRST_IDENTITY = 256;
/** Identities allocated by label changes count up from here (below the CIDR identity space). */
export const FIRST_NEW_IDENTITY = 100_000;

export function podLabels(ns: number, app: number, version: number): LabelMap {
  return { 'k8s:app': `a${app}`, 'k8s:version': `v${version}`, [POD_NAMESPACE_LABEL]: `ns${ns}` };
}

function appSelector(ns: number, app: number): Selector {
  return { matchLabels: { 'any:app': `a${app}`, [POD_NAMESPACE_LABEL]: `ns${ns}` }, matchExpressions: [] };
}

function policy(ns: number, app: number, port: number): PolicyRule {
  return {
    name: `p${app}`,
    namespace: `ns${ns}`,
    kind: 'CiliumNetworkPolicy',
    endpointSelector: appSelector(ns, app),
    ingress: [
      {
        endpoints: [appSelector(ns, (app + 1) % APPS)],
        ports: [
          { port, protocol: 'TCP' },
          { port: 8000, endPort: 8099, protocol: 'TCP' },
        ],
      },
    ],
    egress: [{ endpoints: [appSelector(ns, (app + 2) % APPS)] }, { entities: ['world'], ports: [{ port: 443, protocol: 'TCP' }] }],
    ingressDeny: [{ entities: ['world'] }],
    egressDeny: [],
    enableDefaultDeny: {},
    labels: {},
  };
}

/** One rule replaced: the policy of (ns, app) moves its single port between 80 and 81. */
export interface PolicyChange {
  kind: 'policy';
  index: number;
  rule: PolicyRule;
}

/**
 * One endpoint's labels change (it moves to the next app of its namespace, with a new version),
 * so it moves to a newly allocated identity and its old identity, now unused, is released.
 */
export interface LabelChange {
  kind: 'label';
  endpoint: number;
  labels: LabelMap;
  oldIdentity: number;
  newIdentity: number;
}

export type Change = PolicyChange | LabelChange;

interface EndpointModel {
  labels: LabelMap;
  identity: number;
  ns: number;
  app: number;
}

/** The configuration (rules, identities, endpoints) as the agent would hold it, and its changes. */
export class PolicyScale {
  readonly rules: PolicyRule[] = [];
  /** Pod identities (the reserved ones are added by identityInfos()). */
  readonly identities = new Map<number, LabelMap>();
  /** Endpoint id (1..10000) → labels and identity. */
  readonly endpoints = new Map<number, EndpointModel>();
  readonly #ports: number[] = [];
  #policyChanges = 0;
  #labelChanges = 0;
  #nextIdentity = FIRST_NEW_IDENTITY;

  constructor() {
    let identity = FIRST_IDENTITY;
    let endpoint = 1;
    for (let ns = 0; ns < NAMESPACES; ns++) {
      for (let app = 0; app < APPS; app++) {
        this.rules.push(policy(ns, app, 80));
        this.#ports.push(80);
        for (let v = 0; v < VERSIONS; v++) {
          const labels = podLabels(ns, app, v);
          this.identities.set(identity, labels);
          this.endpoints.set(endpoint++, { labels, identity: identity++, ns, app });
        }
      }
    }
  }

  identityInfos(): IdentityInfo[] {
    const out = reservedIdentityInfos();
    for (const [id, labels] of this.identities) out.push({ id, labels });
    return out;
  }

  /**
   * The next policy change, already applied to the model. Successive changes pick rules spread
   * over namespaces (stride 337, coprime with 1000), each rule once before any repeats.
   */
  nextPolicyChange(): PolicyChange {
    const index = (this.#policyChanges++ * 337) % this.rules.length;
    const port = this.#ports[index] === 80 ? 81 : 80;
    this.#ports[index] = port;
    const rule = policy(Math.floor(index / APPS), index % APPS, port);
    this.rules[index] = rule;
    return { kind: 'policy', index, rule };
  }

  /** The next label change, already applied to the model (endpoints spread with stride 7919). */
  nextLabelChange(): LabelChange {
    const endpoint = 1 + ((this.#labelChanges++ * 7919) % this.endpoints.size);
    const ep = this.endpoints.get(endpoint)!;
    const app = (ep.app + 1) % APPS;
    const newIdentity = this.#nextIdentity++;
    const labels = podLabels(ep.ns, app, newIdentity);
    const oldIdentity = ep.identity;
    this.identities.delete(oldIdentity);
    this.identities.set(newIdentity, labels);
    this.endpoints.set(endpoint, { labels, identity: newIdentity, ns: ep.ns, app });
    return { kind: 'label', endpoint, labels, oldIdentity, newIdentity };
  }
}

/**
 * Applies a change to a live engine the way the agent does, calling `write` with each update as
 * soon as the engine returns it (the agent's PolicyManager#apply). For a label change, as Cilium:
 * the new identity first (peers learn it), then the endpoint, then the old identity's release.
 */
export function applyChange(engine: PolicyEngine, change: Change, write: (update: PolicyUpdate) => void): void {
  if (change.kind === 'policy') {
    write(engine.upsertRules([change.rule]));
    return;
  }
  write(engine.upsertIdentity(change.newIdentity, change.labels));
  write(engine.upsertEndpoint(change.endpoint, change.labels));
  write(engine.deleteIdentity(change.oldIdentity));
}

/** Entries written (upserts + deletes) by a diff. */
export function diffSize(diff: EntriesDiff): number {
  return diff.upserts.length + diff.deletes.length;
}
