/**
 * `datapath`: pod-to-pod traffic through Ciliate's datapath against the same topology routed by
 * the kernel with no programs attached, in interleaved rounds.
 *
 *   ciliate   a node namespace running a Ciliate agent; two pods created through POST /v1/endpoints
 *             (veth, IPAM, bpf_lxc on the host veths through TCX). Pod-to-pod packets leave the
 *             client through cil_from_container, which hands them to the server pod's eth0 with
 *             bpf_redirect_peer, skipping the node's stack.
 *   routed    the same pod–node–pod shape built with plain `ip` (bench/support/routed.ts): veth
 *             pairs, /32 addresses, routes via the node, ip_forward=1, no BPF; the node's IPv4
 *             stack forwards between the two host veths.
 *
 * Traffic (bench/support/traffic.ts), client in pod A, server in pod B:
 *   throughput_gbps  iperf3, one TCP stream, 3 s per sample
 *   rr_per_s         sockperf ping-pong over TCP, 64-byte messages, --mps=max, 3 s per sample, client
 *                    and server pinned to one CPU (why: bench/support/traffic.ts)
 *   conn_per_s       bench/c/conn-rate.c: connect + 1-byte request/response + close, one at a time, 2 s
 *
 * Figures (rates, so better is "higher" and ratio = ours / baseline): the three above, with the
 * baseline's median as baseline_value, and one `ratio` line each for throughput and request/response
 * (target >= 1.0). The throughput line also reports the host veths' packet counters over the whole
 * bench: with redirect_peer working, the server pod's host veth transmits (almost) nothing, since
 * its traffic is redirected past it.
 *
 * What the observer costs: a second agent node, `observer-off`, identical but started with
 * --no-hubble-enabled, is measured in the same interleaved rounds. That is what a user gets who turns
 * the observer off: no flows, no Observer API, nothing decoded; the datapath still sends its events
 * at the default monitor aggregation (medium: a connection's opening, first reply and closes, every
 * drop and policy verdict) and the agent's monitor still keeps the raw records for `ciliate monitor`,
 * as Cilium's datapath keeps emitting with Hubble off. One `observer_cost` line per metric: ours
 * with the observer on / off (target >= 0.95).
 *
 * What the default attach mode costs per packet: a third agent node, `tcx`, identical to the first
 * but with --datapath-attach tcx, in the same rounds. One `attach_mode` line per metric: ours
 * (tc-block) / tcx, with tcx's own ratio to the baseline beside it.
 * @module
 */
import { readFileSync } from 'node:fs';
import { type BenchContext, interleave, median, round } from './lib.ts';
import { BenchNode } from './support/agent.ts';
import { Cleanups, inNs, sh } from './support/ns.ts';
import { RoutedNode } from './support/routed.ts';
import { connSample, DEFAULT_TRAFFIC, RR_CPU, rrSample, startServers, throughputSample } from './support/traffic.ts';

export const description = 'pod-to-pod TCP throughput, request/response and connection rate: Ciliate datapath vs kernel routing';

const DEFAULT_ROUNDS = 5;
const BASELINE = 'kernel routing: same pod-node-pod veth topology, ip_forward, no BPF programs';
const RATIO_TARGET = 1.0;
const OBSERVER_OFF = 'the same agent with --no-hubble-enabled (datapath events still sent at the default monitor aggregation, no flows decoded)';
const OBSERVER_TARGET = 0.95;
const TCX = 'the same agent with --datapath-attach tcx (two TCX links per pod instead of a clsact bound to the shared tc blocks)';
type Variant = 'ciliate' | 'observer_off' | 'tcx' | 'routed';
/** USER_HZ: what /proc's times count in (100 on Linux, whatever the kernel's HZ). */
const CLOCK_TICKS = 100;

interface Pair {
  client: string;
  server: string;
  serverIp: string;
}

interface LinkCounters {
  rxPackets: number;
  txPackets: number;
}

/** CPU time (user + system, every thread) a process has used, from /proc/<pid>/stat. */
function processCpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name (which may hold spaces, inside parentheses): utime and stime are the 12th and 13th.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
}

async function linkCounters(netns: string, ifname: string): Promise<LinkCounters> {
  const [link] = JSON.parse(await sh('ip', ['-n', netns, '-s', '-j', 'link', 'show', 'dev', ifname])) as {
    stats64: { rx: { packets: number }; tx: { packets: number } };
  }[];
  return { rxPackets: link.stats64.rx.packets, txPackets: link.stats64.tx.packets };
}

export async function run(ctx: BenchContext): Promise<void> {
  if (process.getuid?.() !== 0) ctx.log('not running as root: creating namespaces and loading BPF will fail');
  const rounds = ctx.rounds ?? DEFAULT_ROUNDS;
  const traffic = DEFAULT_TRAFFIC;
  const cleanups = new Cleanups((message) => ctx.log(message));
  try {
    // Ciliate: agent-managed node and pods.
    const node = await BenchNode.start(cleanups, { prefix: 'cbdn' });
    const podA = await node.addPod('cbda');
    const podB = await node.addPod('cbdb');
    const ours: Pair = { client: podA.netns, server: podB.netns, serverIp: podB.endpoint.ipv4 };
    const offNode = await BenchNode.start(cleanups, { prefix: 'cbdo', extraArgs: ['--no-hubble-enabled'] });
    const offA = await offNode.addPod('cbdoa');
    const offB = await offNode.addPod('cbdob');
    const observerOff: Pair = { client: offA.netns, server: offB.netns, serverIp: offB.endpoint.ipv4 };
    const tcxNode = await BenchNode.start(cleanups, { prefix: 'cbdt', extraArgs: ['--datapath-attach', 'tcx'] });
    const tcxA = await tcxNode.addPod('cbdta');
    const tcxB = await tcxNode.addPod('cbdtb');
    const tcx: Pair = { client: tcxA.netns, server: tcxB.netns, serverIp: tcxB.endpoint.ipv4 };
    // Baseline: the same shape, routed by the node's stack, with the MTU the agent gave its pods.
    const [podLink] = JSON.parse(await sh('ip', ['-n', podA.netns, '-j', 'link', 'show', 'dev', 'eth0'])) as { mtu: number }[];
    const mtu = podLink.mtu;
    const routed = await RoutedNode.start(cleanups, '10.250.0', 'cbrn');
    const plainA = await routed.addPod('cbra', mtu);
    const plainB = await routed.addPod('cbrb', mtu);
    const baseline: Pair = { client: plainA.netns, server: plainB.netns, serverIp: plainB.ipv4 };

    const pairs: Record<Variant, Pair> = { ciliate: ours, observer_off: observerOff, tcx, routed: baseline };
    for (const [name, pair] of Object.entries(pairs)) {
      await inNs(pair.client, 'ping', ['-c', '1', '-W', '2', pair.serverIp]).catch((error: unknown) => {
        throw new Error(`${name}: pod A cannot reach pod B (${pair.serverIp}): ${(error as Error).message}`);
      });
      await startServers(cleanups, pair.server);
    }
    ctx.log(`ciliate pods ${podA.endpoint.ipv4} -> ${podB.endpoint.ipv4} on ${node.netns}; routed pods ${plainA.ipv4} -> ${plainB.ipv4} on ${routed.netns}; pod MTU ${mtu}`);

    const hostA = podA.endpoint.hostIfname;
    const hostB = podB.endpoint.hostIfname;
    const before = { a: await linkCounters(node.netns, hostA), b: await linkCounters(node.netns, hostB) };

    // The agents' CPU while each sample runs: where the observer's cost shows on a busy machine.
    const agents: Partial<Record<Variant, BenchNode>> = { ciliate: node, observer_off: offNode, tcx: tcxNode };
    const agentCpu: Record<string, Record<Variant, { cpuSeconds: number; wallSeconds: number }>> = {};
    const variants = <T>(what: string, sample: (pair: Pair) => Promise<T>, value: (s: T) => number, extra: (name: Variant, s: T) => void) => {
      const cpu = (agentCpu[what] = { ciliate: { cpuSeconds: 0, wallSeconds: 0 }, observer_off: { cpuSeconds: 0, wallSeconds: 0 }, tcx: { cpuSeconds: 0, wallSeconds: 0 }, routed: { cpuSeconds: 0, wallSeconds: 0 } });
      return Object.fromEntries(
        (Object.keys(pairs) as Variant[]).map((name) => [
          name,
          async () => {
            const pid = agents[name]?.agent?.pid;
            const cpuBefore = pid ? processCpuSeconds(pid) : 0;
            const began = performance.now();
            const s = await sample(pairs[name]);
            cpu[name].wallSeconds += (performance.now() - began) / 1000;
            if (pid) cpu[name].cpuSeconds += processCpuSeconds(pid) - cpuBefore;
            extra(name, s);
            return value(s);
          },
        ]),
      ) as Record<Variant, () => Promise<number>>;
    };
    const progress = (what: string, unit: string, digits: number) => (i: number, s: Readonly<Record<string, readonly number[]>>) =>
      ctx.log(`${what} round ${i + 1}: ${Object.entries(s).map(([name, v]) => `${name} ${round(v.at(-1)!, digits)}${unit}`).join(', ')}`);

    const retransmits: Record<Variant, number[]> = { ciliate: [], observer_off: [], tcx: [], routed: [] };
    const tput = await interleave(
      rounds,
      variants('throughput_gbps', (pair) => throughputSample(pair.client, pair.serverIp, traffic.throughputSeconds), (s) => s.gbps, (name, s) => retransmits[name].push(s.retransmits)),
      { onRound: progress('throughput', ' Gbit/s', 2) },
    );

    const latency: Record<Variant, number[]> = { ciliate: [], observer_off: [], tcx: [], routed: [] };
    const rr = await interleave(
      rounds,
      variants('rr_per_s', (pair) => rrSample(pair.client, pair.serverIp, traffic.rrSeconds, traffic.rrMessageSize), (s) => s.perSecond, (name, s) => latency[name].push(s.latencyUs)),
      { onRound: progress('rr', '/s', 0) },
    );

    const connErrors: Record<Variant, number> = { ciliate: 0, observer_off: 0, tcx: 0, routed: 0 };
    // Connections made in every call, warm-up included, as the agents' CPU is counted over every call.
    const connections: Record<Variant, number> = { ciliate: 0, observer_off: 0, tcx: 0, routed: 0 };
    const conn = await interleave(
      rounds,
      variants('conn_per_s', (pair) => connSample(pair.client, pair.serverIp, traffic.connSeconds), (s) => s.perSecond, (name, s) => {
        connErrors[name] += s.errors;
        connections[name] += s.perSecond * traffic.connSeconds;
      }),
      { onRound: progress('conn', '/s', 0) },
    );

    const after = { a: await linkCounters(node.netns, hostA), b: await linkCounters(node.netns, hostB) };
    // Pod A's packets arrive on host veth A (rx); with redirect_peer they never leave through host
    // veth B (tx), and pod B's replies likewise never leave through host veth A.
    const intoNode = after.a.rxPackets - before.a.rxPackets + (after.b.rxPackets - before.b.rxPackets);
    const outOfNode = after.a.txPackets - before.a.txPackets + (after.b.txPackets - before.b.txPackets);
    const redirectPeer = intoNode > 0 && outOfNode < intoNode * 0.01;
    if (!redirectPeer) ctx.log(`host veths transmitted ${outOfNode} packets for ${intoNode} received: traffic is NOT bypassing them (redirect_peer not in effect?)`);

    const pairedRatio = (samples: Record<Variant, number[]>, base: Variant = 'routed'): number =>
      median(samples.ciliate.map((value, i) => value / samples[base][i]));
    const common = (samples: Record<Variant, number[]>) => ({
      better: 'higher',
      rounds: samples.ciliate.length,
      samples: samples.ciliate.map((v) => round(v, 3)),
      baseline_samples: samples.routed.map((v) => round(v, 3)),
      paired_ratio_median: round(pairedRatio(samples), 3),
    });

    const tputOurs = median(tput.ciliate);
    const tputBase = median(tput.routed);
    ctx.emit({
      metric: 'throughput_gbps',
      value: round(tputOurs, 2),
      unit: 'Gbit/s',
      baseline: BASELINE,
      baseline_value: round(tputBase, 2),
      ratio: round(tputOurs / tputBase, 3),
      ...common(tput),
      tool: `iperf3, 1 TCP stream, ${traffic.throughputSeconds} s per sample`,
      pod_mtu: mtu,
      retransmits_median: median(retransmits.ciliate),
      baseline_retransmits_median: median(retransmits.routed),
      redirect_peer: redirectPeer,
      host_veth_rx_packets: intoNode,
      host_veth_tx_packets: outOfNode,
    });

    const rrOurs = median(rr.ciliate);
    const rrBase = median(rr.routed);
    ctx.emit({
      metric: 'rr_per_s',
      value: round(rrOurs, 0),
      unit: 'round trips/s',
      baseline: BASELINE,
      baseline_value: round(rrBase, 0),
      ratio: round(rrOurs / rrBase, 3),
      ...common(rr),
      tool: `sockperf ping-pong, TCP, ${traffic.rrMessageSize}-byte messages, --mps=max, ${traffic.rrSeconds} s per sample, both ends on CPU ${RR_CPU}`,
      avg_latency_us: round(median(latency.ciliate), 2),
      baseline_avg_latency_us: round(median(latency.routed), 2),
    });

    const connOurs = median(conn.ciliate);
    const connBase = median(conn.routed);
    ctx.emit({
      metric: 'conn_per_s',
      value: round(connOurs, 0),
      unit: 'connections/s',
      baseline: BASELINE,
      baseline_value: round(connBase, 0),
      ratio: round(connOurs / connBase, 3),
      ...common(conn),
      tool: `bench/c/conn-rate.c: connect, 1-byte request/response, close; sequential, ${traffic.connSeconds} s per sample`,
      errors: connErrors.ciliate,
      baseline_errors: connErrors.routed,
    });

    for (const [of, ours, base, samples] of [
      ['throughput_gbps', tputOurs, tputBase, tput],
      ['rr_per_s', rrOurs, rrBase, rr],
    ] as const) {
      const ratio = ours / base;
      ctx.emit({
        metric: 'ratio',
        of,
        value: round(ratio, 3),
        unit: 'ours/baseline',
        baseline: BASELINE,
        ratio: round(ratio, 3),
        better: 'higher',
        target: RATIO_TARGET,
        meets_target: ratio >= RATIO_TARGET,
        paired_ratio_median: round(pairedRatio(samples), 3),
        rounds: samples.ciliate.length,
      });
    }

    // Ours against another agent variant measured in the same rounds.
    const against = (samples: Record<Variant, number[]>, base: Variant) => ({
      value: round(median(samples.ciliate), 3),
      baseline_value: round(median(samples[base]), 3),
      ratio: round(median(samples.ciliate) / median(samples[base]), 3),
      better: 'higher',
      paired_ratio_median: round(pairedRatio(samples, base), 3),
      rounds: samples.ciliate.length,
      samples: samples.ciliate.map((v) => round(v, 3)),
      baseline_samples: samples[base].map((v) => round(v, 3)),
    });
    for (const [of, unit, samples] of [
      ['throughput_gbps', 'Gbit/s', tput],
      ['rr_per_s', 'round trips/s', rr],
      ['conn_per_s', 'connections/s', conn],
    ] as const) {
      ctx.emit({
        metric: 'observer_cost',
        of,
        unit,
        baseline: OBSERVER_OFF,
        ...against(samples, 'observer_off'),
        target: OBSERVER_TARGET,
        meets_target: median(samples.ciliate) / median(samples.observer_off) >= OBSERVER_TARGET,
        ...(of === 'conn_per_s'
          ? {
              errors: connErrors.ciliate,
              baseline_errors: connErrors.observer_off,
              // What each connection costs the agent, whatever the rate the noisy machine allowed.
              agent_cpu_us_per_conn: round((1e6 * agentCpu[of].ciliate.cpuSeconds) / connections.ciliate, 1),
              baseline_agent_cpu_us_per_conn: round((1e6 * agentCpu[of].observer_off.cpuSeconds) / connections.observer_off, 1),
            }
          : {}),
        // Agent CPU (user + system, all threads) over the samples, in % of one CPU.
        agent_cpu_pct: round((100 * agentCpu[of].ciliate.cpuSeconds) / agentCpu[of].ciliate.wallSeconds, 1),
        baseline_agent_cpu_pct: round((100 * agentCpu[of].observer_off.cpuSeconds) / agentCpu[of].observer_off.wallSeconds, 1),
      });
      // The default attach mode against tcx, same agent otherwise: what the shared tc blocks cost
      // (or save) per packet, beside what they save per endpoint add (bench endpoint-attach).
      ctx.emit({ metric: 'attach_mode', of, unit, baseline: TCX, ...against(samples, 'tcx'), tcx_vs_routed: round(median(samples.tcx) / median(samples.routed), 3) });
    }
  } finally {
    await cleanups.run();
  }
}
