/**
 * `flows-latency`: how long a datapath event takes to reach a `GetFlows` follower.
 *
 * An agent node (bench/support/agent.ts, default settings) with two pods; a policy lets nothing
 * into the server pod. A sender in the client pod makes connection attempts, spaced apart, each
 * from its own source port: every SYN is dropped by policy in bpf_lxc within the connect()
 * syscall that sends it. The bench follows two streams of the same agent at once:
 *
 *   ours      GetFlows follow over the agent's Observer socket (hubble.sock, the project's gRPC
 *             client), whitelisting drops from the client pod: ring reader → decode queue →
 *             flow → buffer → gRPC.
 *   baseline  `ciliate monitor -f -t drop`'s path, GET /v1/monitor?follow=true&type=drop on the
 *             agent's API socket: the same ring reader, with its batching (the datapath wakes it
 *             per 64 KiB, a 20 ms timer otherwise), but none of the observer's pipeline. A second
 *             raw ring-buffer reader is no baseline: a BPF ring buffer has one consumer position,
 *             and two readers would take records from each other.
 *
 * Latency of an event = its arrival in the bench process − the sender's clock just before its
 * connect(), both CLOCK_MONOTONIC (process.hrtime in two processes of one machine: one clock), so
 * no wall-clock offset enters. As a cross-check, `kernel_to_client` compares the flow's `time`
 * (the kernel's timestamp as wall clock, through the agent's boot-time offset, good to ~1 ms)
 * with the bench's wall clock at arrival.
 *
 * Figures: latency_p50_ms and latency_p99_ms (ours, baseline, ratio ours/baseline; p99 target
 * < 50 ms); every event must arrive on both streams.
 * @module
 */
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import { AgentClient } from '../src/agent/index.ts';
import { connectObserver, timestampToNs } from '../src/observer/index.ts';
import { round, type BenchContext } from './lib.ts';
import { BenchNode } from './support/agent.ts';
import { Cleanups, percentile, sleep, spawnInNs } from './support/ns.ts';
import { addLabelledPod } from './support/rule-count.ts';

export const description = 'datapath drop → GetFlows follower latency (p50, p99), vs the ciliate monitor stream of the same agent';

const DEFAULT_EVENTS = 300;
const WARMUP_EVENTS = 20;
/** Between connection attempts: spaced out, so each event is measured alone, not a burst. */
const SPACING_MS = 30;
const SERVER_PORT = 8080;
const P99_TARGET_MS = 50;
const BASELINE = "ciliate monitor -f -t drop (GET /v1/monitor?follow=true): the same agent's ring reader, without the observer pipeline and gRPC";

/**
 * In the client pod: `count` connection attempts to ip:port, `spacing` ms apart, the i-th from local
 * port firstPort+i; prints "port monotonic-ns" just before each connect() and drops the socket
 * before the SYN would be retransmitted.
 */
const SENDER = `
const net = require('node:net');
const [ip, port, firstPort, count, spacing] = process.argv.slice(1).map((v, i) => (i === 0 ? v : Number(v)));
let i = 0;
function next() {
  if (i === count) return setTimeout(() => process.exit(0), 300);
  const localPort = firstPort + i++;
  process.stdout.write(localPort + ' ' + process.hrtime.bigint() + '\\n');
  const socket = net.connect({ host: ip, port, localPort });
  socket.on('error', () => {});
  setTimeout(() => socket.destroy(), 300);
  setTimeout(next, spacing);
}
next();
`;

/** Runs the sender; fills `sent` (port → send time) and resolves once it has sent everything. */
function send(cleanups: Cleanups, netns: string, ip: string, firstPort: number, count: number, sent: Map<number, bigint>): Promise<void> {
  const child = spawnInNs(cleanups, netns, process.execPath, ['-e', SENDER, ip, String(SERVER_PORT), String(firstPort), String(count), String(SPACING_MS)]);
  createInterface({ input: child.stdout! }).on('line', (line) => {
    const [port, ns] = line.split(' ');
    sent.set(Number(port), BigInt(ns));
  });
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`sender exited with ${code}`))));
  });
}

export async function run(ctx: BenchContext): Promise<void> {
  if (process.getuid?.() !== 0) ctx.log('not running as root: creating namespaces and loading BPF will fail');
  const events = ctx.rounds ? ctx.rounds * 60 : DEFAULT_EVENTS;
  const cleanups = new Cleanups((message) => ctx.log(message));
  try {
    const node = await BenchNode.start(cleanups, { prefix: 'cbfl' });
    const client = await addLabelledPod(cleanups, node, 'cbflc', { app: 'latency-client' });
    const server = await addLabelledPod(cleanups, node, 'cbfls', { app: 'latency-server' });
    const yaml = [
      'apiVersion: cilium.io/v2',
      'kind: CiliumNetworkPolicy',
      'metadata: { name: latency-deny }',
      'spec:',
      '  endpointSelector: { matchLabels: { app: latency-server } }',
      '  ingress:',
      '    - fromEndpoints: [{ matchLabels: { app: nobody } }]',
      '',
    ].join('\n');
    const imported = await node.client.call<{ revision: number }>('POST', '/v1/policies', { yaml, file: 'latency-deny.yaml' });
    await node.client.get(`/v1/policy/wait?revision=${imported.revision}&scope=node&timeoutMs=30000`);

    // Arrival times (monotonic) and the flows' own timestamps, by the SYN's source port.
    const viaFlows = new Map<number, { at: bigint; wallMs: number; flowNs: bigint }>();
    const viaMonitor = new Map<number, bigint>();
    const observer = connectObserver(`unix:${join(node.dir, 'hubble.sock')}`);
    cleanups.defer('observer client', () => observer.close());
    const stream = observer.getFlows({
      follow: true,
      whitelist: [{ sourceIp: [client.endpoint.ipv4], destinationPort: [String(SERVER_PORT)], verdict: ['DROPPED'], eventType: [{ type: 1 }] }],
    });
    const reading = (async () => {
      for await (const response of stream) {
        const at = process.hrtime.bigint();
        const wallMs = performance.timeOrigin + performance.now();
        const port = response.flow?.l4?.TCP?.sourcePort;
        if (port !== undefined && !viaFlows.has(port) && response.flow?.time) viaFlows.set(port, { at, wallMs, flowNs: timestampToNs(response.flow.time) });
      }
    })();
    const abort = new AbortController();
    const monitorClient = new AgentClient(node.socket, 30_000);
    const monitoring = monitorClient.stream<{ event: { packet?: { l4?: { sourcePort?: number; destinationPort?: number } }; srcIdentity: number } }>(
      '/v1/monitor?follow=true&type=drop',
      (item) => {
        const at = process.hrtime.bigint();
        const l4 = item.event.packet?.l4;
        if (l4?.destinationPort === SERVER_PORT && l4.sourcePort !== undefined && !viaMonitor.has(l4.sourcePort)) viaMonitor.set(l4.sourcePort, at);
      },
      abort.signal,
    );
    cleanups.defer('monitor stream', () => abort.abort());
    // Both streams are open once an event reaches each.
    await sleep(500);

    const firstPort = 20000 + Math.floor(Math.random() * 20000);
    const sent = new Map<number, bigint>();
    ctx.log(`${WARMUP_EVENTS} warm-up and ${events} measured connection attempts, ${SPACING_MS} ms apart, ${client.endpoint.ipv4} -> ${server.endpoint.ipv4}:${SERVER_PORT}`);
    await send(cleanups, client.netns, server.endpoint.ipv4, firstPort, WARMUP_EVENTS + events, sent);
    const deadline = Date.now() + 5000;
    const measured = [...sent.keys()].filter((port) => port >= firstPort + WARMUP_EVENTS);
    while (Date.now() < deadline && measured.some((port) => !viaFlows.has(port) || !viaMonitor.has(port))) await sleep(50);
    stream.cancel();
    abort.abort();
    await reading;
    await monitoring;

    const missing = measured.filter((port) => !viaFlows.has(port) || !viaMonitor.has(port));
    if (missing.length > 0) throw new Error(`${missing.length} of ${measured.length} drops never arrived (flows ${viaFlows.size}, monitor ${viaMonitor.size})`);
    const ms = (ns: bigint) => Number(ns) / 1e6;
    const ours = measured.map((port) => ms(viaFlows.get(port)!.at - sent.get(port)!));
    const base = measured.map((port) => ms(viaMonitor.get(port)! - sent.get(port)!));
    const kernelToClient = measured.map((port) => {
      const f = viaFlows.get(port)!;
      return f.wallMs - Number(f.flowNs) / 1e6;
    });

    for (const p of [50, 99] as const) {
      const value = percentile(ours, p);
      const baseline = percentile(base, p);
      ctx.emit({
        metric: `latency_p${p}_ms`,
        value: round(value, 2),
        unit: 'ms',
        baseline: BASELINE,
        baseline_value: round(baseline, 2),
        ratio: round(value / baseline, 3),
        better: 'lower',
        ...(p === 99 ? { target: P99_TARGET_MS, meets_target: value < P99_TARGET_MS } : {}),
        events: measured.length,
        spacing_ms: SPACING_MS,
        clock: 'CLOCK_MONOTONIC: sender before connect() to arrival in the bench',
        kernel_to_client_ms: round(percentile(kernelToClient, p), 2),
        max_ms: round(Math.max(...ours), 2),
        baseline_max_ms: round(Math.max(...base), 2),
      });
    }
  } finally {
    await cleanups.run();
  }
}
