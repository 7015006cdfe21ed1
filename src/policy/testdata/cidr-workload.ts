/**
 * A large CIDR policy workload for the scale test (cidr-scale.test.ts), shaped like
 * bench/policy.ts's 10k-rule import and widened to cover what CIDR selection must get right:
 *
 * - `count` rule entries grouped 100 to a CiliumNetworkPolicy, alternating the server's ingress
 *   (fromCIDR) and the client's egress (toCIDR), each on its own port; most allow one distinct
 *   /32 in 172.16.0.0/12 (bench/support/rule-count.ts's fillerCidr sequence);
 * - every 50th a /24 CIDR set around those /32s with a /28 `except` (a different one per rule);
 *   three /16 sets with two excepts each; every 101st an IPv6 /48; every 211th a deny;
 *   a few with no ports (all L4);
 * - one policy with 0.0.0.0/0 except 172.16.0.0/12, ::/0, and the entities world, world-ipv4
 *   and cluster;
 * - CIDR identities, as the agent allocates them: one per prefix the rules name (`named`), plus
 *   `extra` ones the rules do not name (/32s inside the /24s and excepts, outside 172.16.0.0/12,
 *   IPv6 /128s, dual-stack labelled ones), which only wider prefixes select.
 * @module
 */
import { cidrIdentityLabels, type IdentityInfo, type LabelMap } from '../selector-cache.ts';
import { ruleCidrPrefixes } from '../resolve.ts';
import type { CidrRule, PeerRule, PolicyRule } from '../types.ts';

export interface CidrWorkload {
  rules: PolicyRule[];
  /** CIDR identities of the prefixes the rules name. */
  named: IdentityInfo[];
  /** CIDR identities no rule names. */
  extra: IdentityInfo[];
  /** Pod identities (also the endpoints' labels). */
  pods: IdentityInfo[];
  endpoints: { id: number; labels: LabelMap }[];
}

export const RULES_PER_POLICY = 100;
const LOCAL = 1 << 24;

/** The i-th /32: 172.16.0.1 ... 172.16.0.254, 172.16.1.1, ... (bench/support/rule-count.ts's fillerCidr). */
export function fillerCidr(i: number): string {
  const block = Math.floor(i / 254) % 4096;
  return `172.${16 + (block >> 8)}.${block & 255}.${(i % 254) + 1}`;
}

const pod = (app: string): LabelMap => ({ 'k8s:app': app, 'k8s:io.kubernetes.pod.namespace': 'default' });
const subject = (app: string) => ({ matchLabels: { 'any:app': app }, matchExpressions: [] });

function policy(name: string, app: string, parts: Partial<Pick<PolicyRule, 'ingress' | 'egress' | 'ingressDeny' | 'egressDeny'>>): PolicyRule {
  return {
    name,
    namespace: 'default',
    kind: 'CiliumNetworkPolicy',
    endpointSelector: subject(app),
    ingress: parts.ingress ?? [],
    egress: parts.egress ?? [],
    ingressDeny: parts.ingressDeny ?? [],
    egressDeny: parts.egressDeny ?? [],
    enableDefaultDeny: {},
    labels: {},
  };
}

export function cidrWorkload(count: number): CidrWorkload {
  const buckets = { in: [] as { deny: boolean; peer: PeerRule }[], out: [] as { deny: boolean; peer: PeerRule }[] };
  const blocks = Math.ceil(count / 254);
  let slash16 = 0;
  for (let i = 0; i < count; i++) {
    const block = Math.floor(i / 254) % blocks;
    let cidrs: CidrRule[];
    if (i % 50 === 25) {
      cidrs = [{ cidr: `172.16.${block}.0/24`, except: [`172.16.${block}.${16 * (Math.floor(i / 50) % 16)}/28`] }];
    } else if (i % 3001 === 1500 && slash16 < 3) {
      slash16++;
      cidrs = [{ cidr: '172.16.0.0/16', except: [`172.16.${slash16}.0/24`, `172.16.${slash16 + 1}.128/25`] }];
    } else if (i % 101 === 50) {
      cidrs = [{ cidr: `2001:db8:${i.toString(16)}::/48`, except: [] }];
    } else {
      cidrs = [{ cidr: `${fillerCidr(i)}/32`, except: [] }];
    }
    const peer: PeerRule = { cidrs };
    if (i % 37 !== 0) peer.ports = [{ port: 1024 + (i % 4000), protocol: 'TCP' }];
    (i % 2 === 0 ? buckets.in : buckets.out).push({ deny: i % 211 === 100, peer });
  }
  const rules: PolicyRule[] = [];
  for (const [dir, entries] of Object.entries(buckets)) {
    for (let j = 0; j < entries.length; j += RULES_PER_POLICY) {
      const chunk = entries.slice(j, j + RULES_PER_POLICY);
      const allow = chunk.filter((e) => !e.deny).map((e) => e.peer);
      const deny = chunk.filter((e) => e.deny).map((e) => e.peer);
      rules.push(
        dir === 'in'
          ? policy(`filler-in-${j / RULES_PER_POLICY}`, 'server', { ingress: allow, ingressDeny: deny })
          : policy(`filler-out-${j / RULES_PER_POLICY}`, 'client', { egress: allow, egressDeny: deny }),
      );
    }
  }
  rules.push(
    policy('world', 'client', {
      egress: [
        { cidrs: [{ cidr: '0.0.0.0/0', except: ['172.16.0.0/12'] }], ports: [{ port: 443, protocol: 'TCP' }] },
        { cidrs: [{ cidr: '::/0', except: [] }], ports: [{ port: 443, protocol: 'TCP' }] },
        { entities: ['world'], ports: [{ port: 80, protocol: 'TCP' }] },
        { entities: ['world-ipv4'], ports: [{ port: 8080, protocol: 'TCP' }] },
        { entities: ['cluster'], ports: [{ port: 53, protocol: 'UDP' }] },
        { endpoints: [subject('server')], ports: [{ port: 5201, protocol: 'TCP' }] },
      ],
    }),
  );

  let n = 0;
  const cidrIdentity = (prefix: string, dualStack = false): IdentityInfo => ({ id: LOCAL | ++n, labels: cidrIdentityLabels(prefix, { dualStack }) });
  // As the agent does: an identity per named prefix, but none for /0 (that is world itself).
  const named = ruleCidrPrefixes(rules)
    .filter((p) => !p.endsWith('/0'))
    .map((p) => cidrIdentity(p));
  const extra: IdentityInfo[] = [];
  for (let b = 0; b < blocks; b++) {
    extra.push(cidrIdentity(`172.16.${b}.255/32`), cidrIdentity(`172.16.${b}.17/32`), cidrIdentity(`172.16.${b}.200/29`));
  }
  for (let k = 0; k < 50; k++) {
    extra.push(cidrIdentity(`198.51.100.${k}/32`), cidrIdentity(`203.0.113.${k}/32`, true), cidrIdentity(`172.32.${k}.0/24`));
    extra.push(cidrIdentity(`2001:db8:${(101 * k + 50).toString(16)}::${k + 1}/128`));
  }
  const pods = [
    { id: 300, labels: pod('client') },
    { id: 301, labels: pod('server') },
    { id: 302, labels: pod('db') },
  ];
  const endpoints = pods.map((p, i) => ({ id: i + 1, labels: p.labels }));
  return { rules, named, extra, pods, endpoints };
}
