/**
 * Traffic generators for bench/datapath.ts, each a server started once in the destination pod and
 * a client run per sample in the source pod:
 *
 *   throughput   iperf3, one TCP stream; Gbit/s received (end.sum_received).
 *   rr           sockperf ping-pong over TCP, 64-byte messages, as fast as they go (--mps=max):
 *                round trips per second of the measured window, i.e. ReceivedMessages / RunTime of
 *                sockperf's "[Valid Duration]" line (its warm-up and drain are left out). Client
 *                and server are pinned to the same CPU (RR_CPU): unpinned, the rate is bimodal
 *                (12k–60k/s on this 2-CPU VM) depending on whether the scheduler puts the two on one
 *                CPU or makes every round trip wake an idle one; pinned to one CPU a round trip is
 *                pure CPU work (both stacks plus the datapath between them), stable within a few %,
 *                and exactly the cost the datapath adds or saves.
 *   conn         bench/c/conn-rate.c: connect, 1-byte request, 1-byte response, close, in a loop,
 *                one connection at a time (netperf TCP_CRR's pattern): connections per second.
 * @module
 */
import { buildC } from '../lib.ts';
import { type Cleanups, inNs, sleep, spawnInNs } from './ns.ts';

export const IPERF_PORT = 5201;
export const SOCKPERF_PORT = 11111;
export const CONN_PORT = 7777;
/** The CPU both sockperf ends run on. */
export const RR_CPU = 1;

export interface TrafficOptions {
  /** Seconds per iperf3 sample. */
  throughputSeconds: number;
  /** Seconds per sockperf sample (sockperf measures this minus its ~0.45 s warm-up and drain). */
  rrSeconds: number;
  /** Seconds per connection-rate sample. */
  connSeconds: number;
  /** sockperf message size in bytes. */
  rrMessageSize: number;
}

export const DEFAULT_TRAFFIC: TrafficOptions = { throughputSeconds: 3, rrSeconds: 3, connSeconds: 2, rrMessageSize: 64 };

/** The servers of all three tests, started in `serverNetns`; they are killed at cleanup. */
export async function startServers(cleanups: Cleanups, serverNetns: string): Promise<void> {
  const connRate = buildC('conn-rate');
  const servers = [
    { port: IPERF_PORT, child: spawnInNs(cleanups, serverNetns, 'iperf3', ['-s', '-p', String(IPERF_PORT)]) },
    { port: SOCKPERF_PORT, child: spawnInNs(cleanups, serverNetns, 'taskset', ['-c', String(RR_CPU), 'sockperf', 'sr', '--tcp', '-i', '0.0.0.0', '-p', String(SOCKPERF_PORT)]) },
    { port: CONN_PORT, child: spawnInNs(cleanups, serverNetns, connRate, ['server', String(CONN_PORT)]) },
  ];
  // Banners are no sign of readiness (iperf3 buffers its stdout in a pipe): wait for the sockets.
  const deadline = Date.now() + 10_000;
  for (const { port, child } of servers) {
    for (;;) {
      if (child.exitCode !== null) throw new Error(`server for port ${port} in ${serverNetns} exited with ${child.exitCode}`);
      if ((await inNs(serverNetns, 'ss', ['-Hltn', `sport = :${port}`])).trim() !== '') break;
      if (Date.now() > deadline) throw new Error(`nothing listens on port ${port} in ${serverNetns} after 10 s`);
      await sleep(50);
    }
  }
}

/** One iperf3 sample: Gbit/s received by the server, and the sender's retransmits. */
export async function throughputSample(clientNetns: string, server: string, seconds: number): Promise<{ gbps: number; retransmits: number }> {
  const out = await inNs(clientNetns, 'iperf3', ['-c', server, '-p', String(IPERF_PORT), '-t', String(seconds), '-J'], (seconds + 20) * 1000);
  const report = JSON.parse(out) as { error?: string; end?: { sum_received?: { bits_per_second: number }; sum_sent?: { retransmits?: number } } };
  if (report.error || !report.end?.sum_received) throw new Error(`iperf3 to ${server}: ${report.error ?? 'no end.sum_received in its report'}`);
  return { gbps: report.end.sum_received.bits_per_second / 1e9, retransmits: report.end.sum_sent?.retransmits ?? 0 };
}

/** One sockperf ping-pong sample: round trips per second, and sockperf's average latency (µs, one way = RTT/2). */
export async function rrSample(clientNetns: string, server: string, seconds: number, messageSize: number): Promise<{ perSecond: number; latencyUs: number }> {
  const out = await inNs(
    clientNetns,
    'taskset',
    ['-c', String(RR_CPU), 'sockperf', 'pp', '--tcp', '-i', server, '-p', String(SOCKPERF_PORT), '-t', String(seconds), '-m', String(messageSize), '--mps=max'],
    (seconds + 20) * 1000,
  );
  // eslint-disable-next-line no-control-regex
  const text = out.replace(/\x1b\[[0-9;]*m/g, '');
  const valid = /\[Valid Duration\] RunTime=([\d.]+) sec; SentMessages=(\d+); ReceivedMessages=(\d+)/.exec(text);
  const latency = /avg-latency=([\d.]+)/.exec(text);
  if (!valid) throw new Error(`sockperf pp to ${server}: no [Valid Duration] line in:\n${text.slice(-1500)}`);
  const runTime = Number(valid[1]);
  const received = Number(valid[3]);
  if (!(runTime > 0) || received === 0) throw new Error(`sockperf pp to ${server}: ${received} messages in ${runTime} s`);
  return { perSecond: received / runTime, latencyUs: latency ? Number(latency[1]) : Number.NaN };
}

/** One connection-rate sample: completed connections per second. */
export async function connSample(clientNetns: string, server: string, seconds: number): Promise<{ perSecond: number; errors: number }> {
  const out = await inNs(clientNetns, buildC('conn-rate'), ['client', server, String(CONN_PORT), String(seconds)], (seconds + 20) * 1000);
  const parsed = JSON.parse(out) as { conn_per_s: number; errors: number };
  return { perSecond: parsed.conn_per_s, errors: parsed.errors };
}
