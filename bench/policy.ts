/**
 * `policy`: is the per-packet cost of policy independent of how many rules and identities there
 * are? Pod-to-pod traffic with 10 rules/identities (variant A) against 10,000 (variant B), through
 * Ciliate's datapath and, side by side in the same run, through legacy iptables.
 *
 *   ciliate A/B   one node namespace with its own agent per variant (BenchNode), a client and a
 *                 server pod with labels (app=bench-client, app=bench-server). The policies are
 *                 imported through the agent API (POST /v1/policies {yaml, file}, several posts
 *                 since the API takes bodies up to 1 MiB; then, as an import answers once the
 *                 agent has applied its first policy, polling GET /v1/policies until every policy
 *                 is listed, and GET /v1/policy/wait?revision=N). N rules, a rule being one
 *                 ingress/egress rule entry (bench/support/rule-count.ts): N-2 fillers, each
 *                 allowing some peer on some port — half the server's ingress (fromCIDR), half the
 *                 client's egress (toCIDR), every fifth a label peer that matches no pod — grouped
 *                 RULES_PER_POLICY to a CiliumNetworkPolicy, and the policy that allows client ->
 *                 server on the measured ports (two rules). The extra identities are made cheaply
 *                 by the CIDR peers: the agent allocates a local CIDR identity for each of the N-2
 *                 distinct /32s (in 172.16.0.0/12) and puts it in the ipcache, so with the two pods
 *                 there are N identities besides the reserved ones; the server's and the client's
 *                 policy maps get ~N/2 entries each. Maps and ipcache are in the kernel while the
 *                 traffic runs. The agent's import cost (import_seconds) is control-plane cost, not
 *                 what is measured here; its selector cache meets CIDR selectors and CIDR
 *                 identities in prefix tries, so it grows with N, not N^2 (in-process, the 10k
 *                 import takes ~1.5 s; it took ~100 s when every CIDR selector was matched
 *                 against every CIDR identity).
 *   iptables A/B  the same pod–node–pod topology with no BPF (bench/support/routed.ts), one node
 *                 namespace per variant, filtered by legacy iptables (iptables-legacy-restore, or
 *                 iptables-restore when there is no legacy one) in that namespace: FORWARD policy
 *                 DROP, N-2 rules that never match (alternating ACCEPT/DROP on the same CIDRs and
 *                 ports as the fillers), then the two rules that accept the flow, one per
 *                 direction (stateless, so no conntrack enters the picture).
 *
 * Before measuring, every variant is checked to drop a port no rule allows (conn-rate's server
 * port), so the rules are really in force. Traffic (bench/support/traffic.ts), client → server:
 *   throughput_gbps  iperf3, one TCP stream, 3 s per sample
 *   rr_per_s         sockperf ping-pong over TCP, 64-byte messages, --mps=max, 3 s per sample,
 *                    both ends pinned to one CPU
 * The four variants run interleaved over the rounds (bench/lib.ts interleave). Figures: one
 * throughput_gbps and rr_per_s line per variant (medians), and one `ratio` line per datapath and
 * metric: B/A, higher is better; Ciliate's target is >= 0.97, iptables' lines carry no target and
 * show its sensitivity to rule count for comparison.
 * @module
 */
import { existsSync } from 'node:fs';
import { AgentClient } from '../src/agent/index.ts';
import { type BenchContext, interleave, median, round } from './lib.ts';
import { BenchNode } from './support/agent.ts';
import { Cleanups, inNs, sh, sleep } from './support/ns.ts';
import { RoutedNode } from './support/routed.ts';
import { addLabelledPod, ciliumPolicyYaml, type FlowSpec, iptablesRestore, RULES_PER_POLICY } from './support/rule-count.ts';
import { CONN_PORT, DEFAULT_TRAFFIC, IPERF_PORT, RR_CPU, rrSample, SOCKPERF_PORT, startServers, throughputSample } from './support/traffic.ts';

export const description = 'pod-to-pod throughput and request/response with 10 vs 10,000 rules and identities: Ciliate policy vs legacy iptables';

const DEFAULT_ROUNDS = 5;
const SIZES = { A: 10, B: 10_000 } as const;
const RATIO_TARGET = 0.97;
const IMPORT_TIMEOUT_MS = 600_000;
const MEASURED_PORTS = [IPERF_PORT, SOCKPERF_PORT];
const CLIENT_LABELS = { app: 'bench-client' };
const SERVER_LABELS = { app: 'bench-server' };

type VariantName = 'ciliate_A' | 'ciliate_B' | 'iptables_A' | 'iptables_B';

interface Pair {
  client: string;
  server: string;
  serverIp: string;
  /** Facts about the variant reported with its figures. */
  info: Record<string, number | string>;
}

const IPTABLES_RESTORE = ['/usr/sbin/iptables-legacy-restore', '/sbin/iptables-legacy-restore'].find(existsSync) ?? 'iptables-restore';
const IPTABLES = IPTABLES_RESTORE.replace(/-restore$/, '');

const PROBE = `
const s = require('node:net').connect(Number(process.argv[2]), process.argv[1]);
const t = setTimeout(() => { console.log('timeout'); process.exit(0); }, Number(process.argv[3]));
s.on('connect', () => { console.log('open'); process.exit(0); });
s.on('error', (e) => { clearTimeout(t); console.log(e.code); process.exit(0); });
`;

/** Whether a TCP connect from `netns` to ip:port completes within `timeoutMs`. */
async function connects(netns: string, ip: string, port: number, timeoutMs = 1000): Promise<boolean> {
  return (await inNs(netns, process.execPath, ['-e', PROBE, ip, String(port), String(timeoutMs)], timeoutMs + 10_000)).trim() === 'open';
}

async function policyMapEntries(node: BenchNode, endpointId: number): Promise<number> {
  const out = await sh('bpftool', ['-j', 'map', 'dump', 'pinned', `${node.bpfRoot}/endpoints/${endpointId}/policy`], { timeoutMs: 60_000 });
  return (JSON.parse(out) as unknown[]).length;
}

async function ciliateVariant(ctx: BenchContext, cleanups: Cleanups, rules: number, tag: string): Promise<Pair & { mtu: number }> {
  const node = await BenchNode.start(cleanups, { prefix: `cbp${tag}n` });
  const client = await addLabelledPod(cleanups, node, `cbp${tag}c`, CLIENT_LABELS);
  const server = await addLabelledPod(cleanups, node, `cbp${tag}s`, SERVER_LABELS);
  const flow: FlowSpec = { clientLabels: CLIENT_LABELS, serverLabels: SERVER_LABELS, clientIp: client.endpoint.ipv4, serverIp: server.endpoint.ipv4, ports: MEASURED_PORTS };
  const started = performance.now();
  let revision = 0;
  let written = 0;
  const chunks = ciliumPolicyYaml(rules, flow);
  // The bench node's 30 s client timeout is for quick calls: an import is given as long as the
  // wait for it, so a slow agent shows up in import_seconds rather than as a timeout.
  const slowClient = new AgentClient(node.socket, IMPORT_TIMEOUT_MS);
  for (const [i, yaml] of chunks.entries()) {
    const t = performance.now();
    const result = await slowClient.call<{ rules: string[]; revision: number }>('POST', '/v1/policies', { yaml, file: `bench-policy-${rules}-${i}.yaml` });
    revision = Math.max(revision, result.revision);
    written += result.rules.length;
    if (chunks.length > 1) ctx.log(`ciliate ${tag}: import ${i + 1}/${chunks.length} (${result.rules.length} policies) answered after ${round((performance.now() - t) / 1000, 1)} s`);
  }
  // An import may answer once the agent has applied the first policy of its store transaction
  // (the store delivers one watch event per policy key, all with the transaction's revision), so
  // the agent may still be applying the rest: wait until it lists every one, then for its revision.
  const expected = written;
  const deadline = Date.now() + IMPORT_TIMEOUT_MS;
  for (;;) {
    const listed = (await slowClient.get<unknown[]>('/v1/policies')).length;
    if (listed >= expected) break;
    if (Date.now() > deadline) throw new Error(`ciliate ${tag}: the agent lists ${listed} of ${expected} rules after ${IMPORT_TIMEOUT_MS / 1000} s`);
    await sleep(1000);
  }
  revision = Math.max(revision, (await slowClient.get<{ revision: number }>('/v1/policy/revision')).revision);
  await slowClient.get(`/v1/policy/wait?revision=${revision}&timeoutMs=${IMPORT_TIMEOUT_MS}`);
  const importSeconds = (performance.now() - started) / 1000;
  // CIDR identities are node-local: /v1/identities lists the pods' (cluster-wide) ones, the
  // ipcache holds the CIDR ones, so the identities are the distinct non-reserved ids of both.
  const ids = new Set<number>();
  for (const identity of await node.client.get<{ id: number }[]>('/v1/identities')) if (identity.id >= 256) ids.add(identity.id);
  const ipcache = await node.client.get<{ value: { sec_identity: number } }[]>('/v1/bpf/ipcache');
  for (const entry of ipcache) if (entry.value.sec_identity >= 256) ids.add(entry.value.sec_identity);
  const info = {
    rules,
    policies: written,
    rules_per_policy: RULES_PER_POLICY,
    identities: ids.size,
    server_policy_map_entries: await policyMapEntries(node, server.endpoint.id),
    client_policy_map_entries: await policyMapEntries(node, client.endpoint.id),
    ipcache_entries: ipcache.length,
    import_seconds: round(importSeconds, 2),
  };
  ctx.log(`ciliate ${tag}: ${JSON.stringify(info)}`);
  const [link] = JSON.parse(await sh('ip', ['-n', client.netns, '-j', 'link', 'show', 'dev', 'eth0'])) as { mtu: number }[];
  return { client: client.netns, server: server.netns, serverIp: server.endpoint.ipv4, info, mtu: link.mtu };
}

async function iptablesVariant(ctx: BenchContext, cleanups: Cleanups, rules: number, tag: string, subnet: string, mtu: number): Promise<Pair> {
  const node = await RoutedNode.start(cleanups, subnet, `cbp${tag}r`);
  const client = await node.addPod(`cbp${tag}c`, mtu);
  const server = await node.addPod(`cbp${tag}s`, mtu);
  const flow: FlowSpec = { clientLabels: CLIENT_LABELS, serverLabels: SERVER_LABELS, clientIp: client.ipv4, serverIp: server.ipv4, ports: MEASURED_PORTS };
  // Registered after the node namespace: runs before it is deleted (which would drop the rules too).
  cleanups.defer(`${IPTABLES} flush in ${node.netns}`, async () => {
    await inNs(node.netns, IPTABLES, ['-w', '10', '-P', 'FORWARD', 'ACCEPT']);
    await inNs(node.netns, IPTABLES, ['-w', '10', '-F', 'FORWARD']);
  });
  const started = performance.now();
  await sh('nsenter', [`--net=/run/netns/${node.netns}`, IPTABLES_RESTORE, '-w', '10'], { input: iptablesRestore(rules, flow) });
  const loaded = (await inNs(node.netns, IPTABLES, ['-w', '10', '-S', 'FORWARD'])).split('\n').filter((line) => line.startsWith('-A FORWARD')).length;
  const info = { rules: loaded, iptables: IPTABLES, load_seconds: round((performance.now() - started) / 1000, 2) };
  ctx.log(`iptables ${tag}: ${JSON.stringify(info)}`);
  return { client: client.netns, server: server.netns, serverIp: server.ipv4, info };
}

export async function run(ctx: BenchContext): Promise<void> {
  if (process.getuid?.() !== 0) ctx.log('not running as root: creating namespaces and loading BPF will fail');
  const rounds = ctx.rounds ?? DEFAULT_ROUNDS;
  const traffic = DEFAULT_TRAFFIC;
  const cleanups = new Cleanups((message) => ctx.log(message));
  try {
    const ciliateA = await ciliateVariant(ctx, cleanups, SIZES.A, 'a');
    const ciliateB = await ciliateVariant(ctx, cleanups, SIZES.B, 'b');
    const pairs: Record<VariantName, Pair> = {
      ciliate_A: ciliateA,
      ciliate_B: ciliateB,
      iptables_A: await iptablesVariant(ctx, cleanups, SIZES.A, 'x', '10.250.0', ciliateA.mtu),
      iptables_B: await iptablesVariant(ctx, cleanups, SIZES.B, 'y', '10.250.1', ciliateA.mtu),
    };
    const names = Object.keys(pairs) as VariantName[];

    for (const name of names) {
      const pair = pairs[name];
      await startServers(cleanups, pair.server);
      // The measured ports must pass and a port no rule allows must not: the rules are in force.
      if (!(await connects(pair.client, pair.serverIp, IPERF_PORT, 3000))) throw new Error(`${name}: client cannot connect to ${pair.serverIp}:${IPERF_PORT}`);
      if (await connects(pair.client, pair.serverIp, CONN_PORT)) throw new Error(`${name}: port ${CONN_PORT} is not allowed by any rule, yet it connects`);
    }
    ctx.log(`all variants pass ${MEASURED_PORTS.join(',')} and drop ${CONN_PORT}; pod MTU ${ciliateA.mtu}; ${rounds} rounds`);

    const each = (sample: (pair: Pair) => Promise<number>): Record<VariantName, () => Promise<number>> =>
      Object.fromEntries(names.map((name) => [name, () => sample(pairs[name])])) as Record<VariantName, () => Promise<number>>;
    const progress = (what: string, digits: number) => (i: number, s: Readonly<Record<string, readonly number[]>>) =>
      ctx.log(`${what} round ${i + 1}: ${names.map((n) => `${n} ${round(s[n].at(-1)!, digits)}`).join(', ')}`);

    const tput = await interleave(rounds, each(async (p) => (await throughputSample(p.client, p.serverIp, traffic.throughputSeconds)).gbps), {
      onRound: progress('throughput Gbit/s', 2),
    });
    // The throughput rounds have warmed every path already.
    const rr = await interleave(rounds, each(async (p) => (await rrSample(p.client, p.serverIp, traffic.rrSeconds, traffic.rrMessageSize)).perSecond), {
      warmup: 0,
      onRound: progress('rr/s', 0),
    });

    const metrics = [
      { metric: 'throughput_gbps', unit: 'Gbit/s', samples: tput, digits: 2, tool: `iperf3, 1 TCP stream, ${traffic.throughputSeconds} s per sample` },
      {
        metric: 'rr_per_s',
        unit: 'round trips/s',
        samples: rr,
        digits: 0,
        tool: `sockperf ping-pong, TCP, ${traffic.rrMessageSize}-byte messages, --mps=max, ${traffic.rrSeconds} s per sample, both ends on CPU ${RR_CPU}`,
      },
    ] as const;

    for (const { metric, unit, samples, digits, tool } of metrics) {
      for (const name of names) {
        const [datapath, variant] = name.split('_') as ['ciliate' | 'iptables', 'A' | 'B'];
        const isB = variant === 'B';
        const base = `${datapath}_A` as VariantName;
        ctx.emit({
          metric,
          datapath,
          variant,
          value: round(median(samples[name]), digits),
          unit,
          baseline: isB ? `${datapath} variant A (${SIZES.A} rules), same run` : null,
          ...(isB ? { baseline_value: round(median(samples[base]), digits) } : {}),
          ratio: isB ? round(median(samples[name]) / median(samples[base]), 3) : null,
          better: 'higher',
          rounds: samples[name].length,
          samples: samples[name].map((v) => round(v, digits)),
          tool,
          ...pairs[name].info,
        });
      }
    }

    for (const { metric, samples } of metrics) {
      const ratioOf = (datapath: 'ciliate' | 'iptables'): { ratio: number; paired: number } => {
        const a = samples[`${datapath}_A`];
        const b = samples[`${datapath}_B`];
        return { ratio: median(b) / median(a), paired: median(b.map((v, i) => v / a[i])) };
      };
      const ours = ratioOf('ciliate');
      const theirs = ratioOf('iptables');
      ctx.emit({
        metric: 'ratio',
        of: metric,
        datapath: 'ciliate',
        value: round(ours.ratio, 3),
        unit: `B/A (${SIZES.B} vs ${SIZES.A} rules and identities)`,
        baseline: `${IPTABLES} FORWARD chain, ${SIZES.B} vs ${SIZES.A} rules, same topology without BPF, same run`,
        baseline_value: round(theirs.ratio, 3),
        ratio: round(ours.ratio, 3),
        better: 'higher',
        target: RATIO_TARGET,
        meets_target: ours.ratio >= RATIO_TARGET,
        paired_ratio_median: round(ours.paired, 3),
        rounds: samples.ciliate_A.length,
      });
      ctx.emit({
        metric: 'ratio',
        of: metric,
        datapath: 'iptables',
        value: round(theirs.ratio, 3),
        unit: `B/A (${SIZES.B} vs ${SIZES.A} rules)`,
        baseline: null,
        ratio: round(theirs.ratio, 3),
        better: 'higher',
        tool: IPTABLES,
        paired_ratio_median: round(theirs.paired, 3),
        rounds: samples.iptables_A.length,
      });
    }
  } finally {
    await cleanups.run();
  }
}
