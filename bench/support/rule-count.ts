/**
 * Rule sets of a given size for bench/policy.ts, for both sides of the comparison:
 *
 *   ciliumPolicyYaml  CiliumNetworkPolicy documents for an agent: `count - 1` filler rules, each
 *                     allowing a CIDR peer (a /32 in 172.16.0.0/12, far from the pods' 10.x
 *                     addresses) on some port, every fourth also a label peer that selects no pod;
 *                     even fillers select the server (ingress fromCIDR), odd ones the client
 *                     (egress toCIDR). The agent gives every CIDR a CIDR identity (and an ipcache
 *                     entry), so `count - 2` distinct CIDRs plus the client and server pods make
 *                     `count` identities besides the reserved ones. The last rule is the one that
 *                     allows client → server on the measured ports (one policy with two specs:
 *                     the server's ingress and the client's egress).
 *   iptablesRestore   iptables-restore input for the node namespace of the routed baseline: the
 *                     FORWARD chain with policy DROP, `count - 2` non-matching rules (alternating
 *                     ACCEPT/DROP, `-s <cidr> -p tcp --dport <port>`, the same CIDRs and ports as
 *                     the fillers above), then the two rules that accept the flow, one per
 *                     direction (stateless: no conntrack is loaded into the namespace).
 *
 * Also a pod with labels (BenchNode.addPod takes none), torn down like BenchNode's own pods.
 * @module
 */
import type { Endpoint } from '../../src/agent/index.ts';
import type { BenchNode } from './agent.ts';
import { addNetns, type Cleanups, netnsPath, uniqueName } from './ns.ts';

/** The largest POST body the agent takes is 1 MiB: the YAML is cut into documents of this many rules. */
export const RULES_PER_IMPORT = 2000;

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

/** The filler policies and the allowing policy as a list of YAML strings, each under 1 MiB. */
export function ciliumPolicyYaml(count: number, flow: FlowSpec): string[] {
  if (count < 3) throw new RangeError('count must be at least 3');
  const cidrs = count - 2;
  const docs: string[] = [];
  for (let i = 0; i < count - 1; i++) {
    const ingress = i % 2 === 0;
    const selector = labelsYaml(ingress ? flow.serverLabels : flow.clientLabels, '      ');
    const dir = ingress ? 'ingress' : 'egress';
    const peer = ingress ? 'from' : 'to';
    let doc =
      `apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: filler-${i}\nspec:\n  endpointSelector:\n    matchLabels:\n${selector}\n` +
      `  ${dir}:\n  - ${peer}CIDR: ["${fillerCidr(i % cidrs)}"]\n    toPorts:\n    - ports:\n      - port: "${fillerPort(i)}"\n        protocol: TCP\n`;
    if (i % 4 === 0) {
      doc += `  - ${peer}Endpoints:\n    - matchLabels:\n        app: other-${i}\n    toPorts:\n    - ports:\n      - port: "${fillerPort(i + 1)}"\n        protocol: TCP\n`;
    }
    docs.push(doc);
  }
  const ports = flow.ports.map((p) => `      - port: "${p}"\n        protocol: TCP`).join('\n');
  docs.push(
    `apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: allow-client-server\nspecs:\n` +
      `- endpointSelector:\n    matchLabels:\n${labelsYaml(flow.serverLabels, '      ')}\n  ingress:\n  - fromEndpoints:\n    - matchLabels:\n${labelsYaml(flow.clientLabels, '        ')}\n    toPorts:\n    - ports:\n${ports}\n` +
      `- endpointSelector:\n    matchLabels:\n${labelsYaml(flow.clientLabels, '      ')}\n  egress:\n  - toEndpoints:\n    - matchLabels:\n${labelsYaml(flow.serverLabels, '        ')}\n    toPorts:\n    - ports:\n${ports}\n`,
  );
  const chunks: string[] = [];
  for (let i = 0; i < docs.length; i += RULES_PER_IMPORT) chunks.push(docs.slice(i, i + RULES_PER_IMPORT).join('---\n'));
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
