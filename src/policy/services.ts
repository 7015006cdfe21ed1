/**
 * `toServices` peers into the peers the policy engine knows: egress to a service is egress to its
 * backends. Whoever knows the services (the agent's services module) resolves each service peer
 * into the pods the service selects (their selector, so a pod that joins is selected at once
 * through the selector cache) and the addresses of explicit backends (CIDRs). The policy manager
 * keeps each rule as written and hands the engine its expansion, expanded again when services
 * change; only rules whose expansion changed are recomputed.
 * @module
 */
import type { CidrRule, PeerRule, PolicyRule, Selector, ServicePeer } from './types.ts';

/** The backends of the services a peer names, as peers. */
export interface ServiceBackendPeers {
  endpoints: Selector[];
  cidrs: CidrRule[];
}

/** Resolves a `toServices` peer; a service that does not exist (yet) resolves to no peer. */
export type ServiceResolver = (peer: ServicePeer) => ServiceBackendPeers;

const DIRECTIONS = ['ingress', 'egress', 'ingressDeny', 'egressDeny'] as const;

/** Whether any peer of `rule` names services. */
export function hasServicePeers(rule: PolicyRule): boolean {
  return DIRECTIONS.some((dir) => rule[dir].some((peer) => peer.services !== undefined));
}

/**
 * `rule` with each service peer's backends added to its endpoints and CIDRs (`rule` as written,
 * never an earlier expansion). A peer whose services have no backend matches nothing.
 */
export function expandServicePeers(rule: PolicyRule, resolve: ServiceResolver): PolicyRule {
  if (!hasServicePeers(rule)) return rule;
  const expand = (peer: PeerRule): PeerRule => {
    if (peer.services === undefined) return peer;
    const endpoints = new Map((peer.endpoints ?? []).map((s) => [JSON.stringify(s), s]));
    const cidrs = new Map((peer.cidrs ?? []).map((c) => [JSON.stringify(c), c]));
    for (const service of peer.services) {
      const resolved = resolve(service);
      for (const s of resolved.endpoints) endpoints.set(JSON.stringify(s), s);
      for (const c of resolved.cidrs) cidrs.set(JSON.stringify(c), c);
    }
    const out: PeerRule = { ...peer };
    if (endpoints.size > 0 || peer.endpoints !== undefined) out.endpoints = [...endpoints.values()];
    if (cidrs.size > 0 || peer.cidrs !== undefined) out.cidrs = [...cidrs.values()];
    return out;
  };
  return { ...rule, ingress: rule.ingress.map(expand), egress: rule.egress.map(expand), ingressDeny: rule.ingressDeny.map(expand), egressDeny: rule.egressDeny.map(expand) };
}
