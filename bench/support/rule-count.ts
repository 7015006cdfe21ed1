/**
 * Rule sets of a given size for bench/policy.ts, for both sides of the comparison:
 *
 *   ciliumPolicyYaml  CiliumNetworkPolicy YAML for an agent with `count` rules, a rule being one
 *                     ingress/egress rule entry (Cilium's IngressRule/EgressRule: peers + ports).
 *                     `count - 2` filler rules, each allowing some peer on some port: even ones
 *                     are the server's ingress (fromCIDR), odd ones the client's egress (toCIDR);
 *                     every fifth allows a label peer (app=other-<i>, no such pod) instead. The
 *                     CIDR fillers share `count - 2` /32s in 172.16.0.0/12 (far from the pods'
 *                     10.x addresses), so the agent allocates `count - 2` CIDR identities (each
 *                     also an ipcache entry): with the client and server pods, `count` identities
 *                     besides the reserved ones. Fillers are grouped RULES_PER_POLICY to a policy
 *                     (the agent applies one policy per store event and recomputes the endpoint
 *                     each time: 10k one-rule policies take it minutes to import). Last, the
 *                     policy that allows client -> server on the measured ports (two rules: the
 *                     server's ingress and the client's egress).
 *   iptablesRestore   iptables-restore input for the node namespace of the routed baseline: the
 *                     FORWARD chain with policy DROP, `count - 2` non-matching rules (alternating
 *                     ACCEPT/DROP, `-s <cidr> -p tcp --dport <port>`), then the two rules that
 *                     accept the flow, one per direction (stateless: no conntrack is loaded into
 *                     the namespace).
 *
 * Also a pod with labels (BenchNode.addPod takes none), torn down like BenchNode's own pods.
 * @module
 */
import type { Endpoint } from '../../src/agent/index.ts';
import type { BenchNode } from './agent.ts';
import { addNetns, type Cleanups, netnsPath, uniqueName } from './ns.ts';

/** The i-th filler CIDR: 172.16.0.1 ... 172.16.0.254, 172.16.1.1, ... (no .0 or .255; ~1M distinct, in 172.16.0.0/12, none a pod address). */
export function fillerCidr(i: number): string {
  const block = Math.floor(i / 254) % 4096;
  return `172.${16 + (block >> 8)}.${block & 255}.${(i % 254) + 1}/32`;
}

/** The i-th filler port: 1024..5023, none of the measured ports. */
export function fillerPort(i: number): number {
  return 1024 + (i % 4000);
}

export interface FlowSpec {
  clientLabels: Record<string, string>;
  serverLabels: Record<string, string>;
  clientIp: string;
  serverIp: string;
  /** TCP ports the flow uses (the measured ones). */
  ports: readonly number[];
}

function labelsYaml(labels: Record<string, string>, indent: string): string {
  return Object.entries(labels).map(([k, v]) => `${indent}${k}: "${v}"`).join('\n');
}

/** Rule entries per CiliumNetworkPolicy: the agent applies one policy per store event, recomputing the endpoint each time. */
export const RULES_PER_POLICY = 100;
/** Policies per POST /v1/policies (the agent takes bodies up to 1 MiB). */
export const POLICIES_PER_IMPORT = 30;

/**
 * `count` rules as CiliumNetworkPolicy YAML, in strings each under 1 MiB (one POST each). A rule
 * is one ingress/egress rule entry (Cilium's IngressRule/EgressRule: peers + ports):
 * `count - 2` fillers, grouped RULES_PER_POLICY to a policy, and the allowing policy last (two
 * rules: the server's ingress and the client's egress).
 */
export function ciliumPolicyYaml(count: number, flow: FlowSpec): string[] {
  if (count < 3) throw new RangeError('count must be at least 3');
  const cidrs = count - 2;
  const buckets: { ingress: boolean; entries: string[] }[] = [
    { ingress: true, entries: [] },
    { ingress: false, entries: [] },
  ];
  // Every fifth filler allows a label peer (selecting no pod); the others share the count - 2
  // CIDRs between them, one or two each (Cilium does not take CIDR and label peers in one rule).
  const cidrRules = Array.from({ length: count - 2 }, (_, i) => i).filter((i) => i % 5 !== 4).length;
  let k = 0;
  for (let i = 0; i < count - 2; i++) {
    const ingress = i % 2 === 0;
    const peer = ingress ? 'from' : 'to';
    let entry: string;
    if (i % 5 === 4) {
      entry = `  - ${peer}Endpoints: [{matchLabels: {app: other-${i}}}]\n`;
    } else {
      const first = Math.floor((k * cidrs) / cidrRules);
      const last = Math.floor(((k + 1) * cidrs) / cidrRules);
      k++;
      const list = Array.from({ length: last - first }, (_, j) => `"${fillerCidr(first + j)}"`).join(', ');
      entry = `  - ${peer}CIDR: [${list}]\n`;
    }
    entry += `    toPorts: [{ports: [{port: "${fillerPort(i)}", protocol: TCP}]}]\n`;
    buckets[ingress ? 0 : 1].entries.push(entry);
  }
  const docs: string[] = [];
  for (const { ingress, entries } of buckets) {
    const selector = labelsYaml(ingress ? flow.serverLabels : flow.clientLabels, '      ');
    for (let j = 0; j < entries.length; j += RULES_PER_POLICY) {
      docs.push(
        `apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: filler-${ingress ? 'in' : 'out'}-${j / RULES_PER_POLICY}\nspec:\n  endpointSelector:\n    matchLabels:\n${selector}\n` +
          `  ${ingress ? 'ingress' : 'egress'}:\n${entries.slice(j, j + RULES_PER_POLICY).join('')}`,
      );
    }
  }
  const ports = flow.ports.map((p) => `      - port: "${p}"\n        protocol: TCP`).join('\n');
  docs.push(
    `apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: allow-client-server\nspecs:\n` +
      `- endpointSelector:\n    matchLabels:\n${labelsYaml(flow.serverLabels, '      ')}\n  ingress:\n  - fromEndpoints:\n    - matchLabels:\n${labelsYaml(flow.clientLabels, '        ')}\n    toPorts:\n    - ports:\n${ports}\n` +
      `- endpointSelector:\n    matchLabels:\n${labelsYaml(flow.clientLabels, '      ')}\n  egress:\n  - toEndpoints:\n    - matchLabels:\n${labelsYaml(flow.serverLabels, '        ')}\n    toPorts:\n    - ports:\n${ports}\n`,
  );
  const chunks: string[] = [];
  for (let i = 0; i < docs.length; i += POLICIES_PER_IMPORT) chunks.push(docs.slice(i, i + POLICIES_PER_IMPORT).join('---\n'));
  return chunks;
}

/** iptables-restore input: FORWARD policy DROP, `count - 2` non-matching rules, the two accepting ones. */
export function iptablesRestore(count: number, flow: FlowSpec): string {
  if (count < 3) throw new RangeError('count must be at least 3');
  const lines = ['*filter', ':INPUT ACCEPT [0:0]', ':FORWARD DROP [0:0]', ':OUTPUT ACCEPT [0:0]'];
  for (let i = 0; i < count - 2; i++) {
    lines.push(`-A FORWARD -s ${fillerCidr(i)} -p tcp -m tcp --dport ${fillerPort(i)} -j ${i % 2 === 0 ? 'ACCEPT' : 'DROP'}`);
  }
  const ports = flow.ports.join(',');
  lines.push(`-A FORWARD -s ${flow.clientIp}/32 -d ${flow.serverIp}/32 -p tcp -m multiport --dports ${ports} -j ACCEPT`);
  lines.push(`-A FORWARD -s ${flow.serverIp}/32 -d ${flow.clientIp}/32 -p tcp -m multiport --sports ${ports} -j ACCEPT`);
  lines.push('COMMIT', '');
  return lines.join('\n');
}

/** A pod with labels on a BenchNode: a new namespace plus its endpoint, both removed at cleanup. */
export async function addLabelledPod(cleanups: Cleanups, node: BenchNode, prefix: string, labels: Record<string, string>): Promise<{ netns: string; endpoint: Endpoint }> {
  const netns = await addNetns(cleanups, prefix);
  const containerId = uniqueName('ctr');
  const endpoint = await node.client.call<Endpoint>('POST', '/v1/endpoints', { containerId, ifname: 'eth0', netns: netnsPath(netns), labels });
  cleanups.defer(`DELETE endpoint ${containerId}`, () => node.deleteEndpoint(containerId));
  return { netns, endpoint };
}
