/**
 * `dns-proxy`: what the DNS proxy adds to a query's latency under load. A DNS server (its own
 * process, on loopback) answers A queries; at a fixed rate (10k queries/s, open loop: a query is
 * sent when due, whether or not earlier ones were answered) queries go either straight to it from
 * a UDP socket (the baseline) or through `DnsProxy.handle()` (policy check against a DNS rule,
 * forward on a fresh connected socket, answer decoded and its addresses learned into the FQDN
 * cache). Rounds alternate the two; figures are the medians over rounds of each round's p50/p99.
 *
 * Figures: latency_p50_us and latency_p99_us (ours through the proxy, baseline direct, ratio),
 * added_p99_us (ours p99 − direct p99) [target < 1000 µs at 10k queries/s, the issue's], and
 * answered_ratio (answers / queries sent through the proxy).
 *
 * Not measured: the redirect's own cost (the datapath does not steer pod DNS to the proxy yet),
 * which adds a socket hop from the pod to the proxy.
 * @module
 */
import { spawn } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { join } from 'node:path';
import { encode } from 'dns-packet';
import { DnsProxy, FqdnCache } from '../src/fqdn/index.ts';
import { fqdnSelectorMatches } from '../src/policy/index.ts';
import { type BenchContext, interleave, median, ROOT, round } from './lib.ts';
import { Cleanups, stopChild } from './support/ns.ts';

export const description = 'DNS proxy added latency p50/p99 at 10k queries/s vs querying the resolver directly';

const RATE = Number(process.env.DNS_PROXY_BENCH_RATE ?? 10_000);
const SECONDS = 1;
const DEFAULT_ROUNDS = 5;
const TARGET_ADDED_P99_US = 1000;
const NAMES = Array.from({ length: 100 }, (_, i) => `svc-${i}.example.com`);
const RECORDS = Object.fromEntries(NAMES.map((n, i) => [n, { a: [`192.0.2.${i + 1}`], ttl: 300 }]));

function percentile(sorted: readonly number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
}

/** Sends `RATE` queries a second for `SECONDS` through `ask`; latencies (µs) of those answered. */
async function load(ask: (id: number, name: string) => Promise<void>): Promise<{ latencies: number[]; sent: number }> {
  const total = RATE * SECONDS;
  const latencies: number[] = [];
  const pending: Promise<void>[] = [];
  const start = process.hrtime.bigint();
  let sent = 0;
  while (sent < total) {
    const due = Math.min(total, Math.floor((Number(process.hrtime.bigint() - start) / 1e9) * RATE) + 1);
    for (; sent < due; sent++) {
      const t0 = process.hrtime.bigint();
      const id = sent & 0xffff;
      pending.push(ask(id, NAMES[sent % NAMES.length]).then(() => void latencies.push(Number(process.hrtime.bigint() - t0) / 1000), () => undefined));
    }
    await new Promise((r) => setImmediate(r));
  }
  await Promise.all(pending);
  return { latencies: latencies.sort((a, b) => a - b), sent: total };
}

export async function run(ctx: BenchContext): Promise<void> {
  const server = spawn(process.execPath, [join(ROOT, 'test', 'support', 'dns-server.ts'), '127.0.0.1', '0', JSON.stringify(RECORDS)], { stdio: ['ignore', 'pipe', 'inherit'] });
  // Cleanups, not a signal listener of our own: its handler also exits, so Ctrl-C ends the bench.
  const cleanups = new Cleanups((message) => ctx.log(message));
  cleanups.defer(`stop the DNS server (pid ${server.pid})`, () => stopChild(server));
  try {
    const port = await new Promise<number>((resolve, reject) => {
      server.stdout.once('data', (d: Buffer) => resolve(Number(/ready (\d+)/.exec(String(d))?.[1])));
      server.once('exit', (code) => reject(new Error(`DNS server exited with ${code}`)));
    });
    const resolver = { address: '127.0.0.1', port };
    const queries = NAMES.map((name) => (id: number) => encode({ type: 'query', id, flags: 1 << 8, questions: [{ type: 'A', name }] }));
    const byName = new Map(NAMES.map((n, i) => [n, queries[i]]));

    // Direct: one client socket, answers matched by id.
    const client = createSocket('udp4');
    const waiting = new Map<number, () => void>();
    client.on('message', (bytes) => waiting.get(bytes.readUInt16BE(0))?.());
    await new Promise<void>((r) => client.connect(port, '127.0.0.1', r));
    const direct = (id: number, name: string) =>
      new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => {
          waiting.delete(id);
          reject(new Error('timeout'));
        }, 2000);
        waiting.set(id, () => {
          clearTimeout(timer);
          waiting.delete(id);
          resolve();
        });
        client.send(byName.get(name)!(id));
      });

    const cache = new FqdnCache();
    const rules = [{ matchPattern: '*.example.com' }];
    const proxy = new DnsProxy({
      allows: (_e, _r, _p, name) => rules.some((s) => fqdnSelectorMatches(s, name)),
      learned: (endpoint, addresses) => void cache.learn(endpoint, addresses),
      forwardTimeoutMs: 2000,
    });
    let answered = 0;
    let sentViaProxy = 0;
    const viaProxy = async (id: number, name: string) => {
      sentViaProxy++;
      const outcome = await proxy.handle({ endpoint: 1, resolver, protocol: 'UDP', payload: byName.get(name)!(id) });
      if (outcome.verdict !== 'forwarded') throw new Error(outcome.reason ?? outcome.verdict);
      answered++;
    };

    const p50: Record<'ours' | 'direct', number[]> = { ours: [], direct: [] };
    const p99: Record<'ours' | 'direct', number[]> = { ours: [], direct: [] };
    const measure = (name: 'ours' | 'direct', ask: (id: number, n: string) => Promise<void>) => async () => {
      const { latencies } = await load(ask);
      p50[name].push(percentile(latencies, 0.5));
      p99[name].push(percentile(latencies, 0.99));
      return latencies.length;
    };
    const rounds = ctx.rounds ?? DEFAULT_ROUNDS;
    await interleave(rounds, { ours: measure('ours', viaProxy), direct: measure('direct', direct) }, {
      onRound: (i) => ctx.log(`round ${i + 1}/${rounds}: proxy p99 ${round(p99.ours.at(-1)!)} µs, direct p99 ${round(p99.direct.at(-1)!)} µs`),
    });
    client.close();
    // The warm-up round's samples are in the lists too: drop them.
    for (const list of [p50.ours, p50.direct, p99.ours, p99.direct]) list.shift();

    const base = `direct UDP queries to the same resolver at ${RATE}/s`;
    const fig = (metric: string, ours: number, baseline: number, extra: Record<string, number | string> = {}) =>
      ctx.emit({ metric, value: round(ours), unit: 'us', baseline: base, baseline_value: round(baseline), ratio: round(ours / baseline, 2), better: 'lower', rounds, rate: RATE, ...extra });
    fig('latency_p50_us', median(p50.ours), median(p50.direct));
    fig('latency_p99_us', median(p99.ours), median(p99.direct));
    ctx.emit({ metric: 'added_p99_us', value: round(median(p99.ours) - median(p99.direct)), unit: 'us', baseline: null, ratio: null, better: 'lower', target: TARGET_ADDED_P99_US, rounds, rate: RATE });
    ctx.emit({ metric: 'answered_ratio', value: round(answered / sentViaProxy, 4), unit: 'ratio', baseline: null, ratio: null, better: 'higher', rounds });
  } finally {
    await cleanups.run();
  }
}
