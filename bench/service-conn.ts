/**
 * `service-conn`: new connections per second to a service when 1 and when 10k services are
 * defined, ours (the socket hooks translating the ClusterIP at connect) side by side with
 * kube-proxy's iptables mode (KUBE-SERVICES → KUBE-SVC → KUBE-SEP DNAT in the node namespace of
 * the kernel-routed topology, the measured service's rule last, as the 10,000th rule is for some
 * service). Each variant has its own node, client and server pod, all alive at once; samples are
 * bench/c/conn-rate.c runs (connect, 1-byte request and response, close), interleaved.
 *
 * Figures (rates, higher is better):
 *   conn_per_s_1, conn_per_s_10000   ours vs iptables with that many services
 *   scaling_10000_vs_1               ours at 10k / ours at 1 (target ≥ 0.95), iptables' the same as the baseline
 * @module
 */
import { existsSync } from 'node:fs';
import { type BenchContext, buildC, interleave, median, round } from './lib.ts';
import { BenchNode } from './support/agent.ts';
import { Cleanups, addCgroup, addNetns, inNs, sh, netnsPath } from './support/ns.ts';
import { RoutedNode } from './support/routed.ts';
import { CONN_PORT, startServers } from './support/traffic.ts';

export const description = 'new connections/s to a service with 1 vs 10k services: socket LB vs kube-proxy iptables DNAT';

const MANY = 10_000;
const SECONDS = 2;
const DEFAULT_ROUNDS = 5;
const TARGET_SCALING = 0.95;
const IPTABLES_RESTORE = ['/usr/sbin/iptables-legacy-restore', '/sbin/iptables-legacy-restore'].find(existsSync) ?? 'iptables-restore';
/** How many service creations are in flight against the agent at once. */
const CREATE_CONCURRENCY = 16;
const SERVICE_VIP = '10.96.255.250';

/** 10.96.0.1 onwards (10.96.0.0 is the CIDR's own address). */
function fillerVip(i: number): string {
  return `10.96.${(i + 1) >> 8}.${(i + 1) & 0xff}`;
}

function fillerBackend(i: number, j: number): string {
  const n = i * 4 + j;
  return `10.200.${(n >> 8) & 0xff}.${n & 0xff}`;
}

/** kube-proxy's nat table for `count` services, the measured one (to `server`) last. */
function kubeProxyRules(count: number, server: string): string {
  const declare = [':KUBE-SERVICES - [0:0]'];
  const services: string[] = [];
  const chains: string[] = [];
  for (let i = 0; i < count - 1; i++) {
    declare.push(`:KUBE-SVC-${i} - [0:0]`);
    services.push(`-A KUBE-SERVICES -d ${fillerVip(i)}/32 -p tcp -m comment --comment "bench/s${i} cluster IP" -m tcp --dport 80 -j KUBE-SVC-${i}`);
    for (let j = 0; j < 4; j++) {
      declare.push(`:KUBE-SEP-${i}-${j} - [0:0]`);
      chains.push(`-A KUBE-SVC-${i}${j < 3 ? ` -m statistic --mode random --probability ${(1 / (4 - j)).toFixed(10)}` : ''} -j KUBE-SEP-${i}-${j}`);
      chains.push(`-A KUBE-SEP-${i}-${j} -p tcp -m tcp -j DNAT --to-destination ${fillerBackend(i, j)}:8080`);
    }
  }
  declare.push(':KUBE-SVC-T - [0:0]', ':KUBE-SEP-T - [0:0]');
  services.push(`-A KUBE-SERVICES -d ${SERVICE_VIP}/32 -p tcp -m comment --comment "bench/measured cluster IP" -m tcp --dport 80 -j KUBE-SVC-T`);
  chains.push('-A KUBE-SVC-T -j KUBE-SEP-T', `-A KUBE-SEP-T -p tcp -m tcp -j DNAT --to-destination ${server}:${CONN_PORT}`);
  return ['*nat', ':PREROUTING ACCEPT [0:0]', ...declare, '-A PREROUTING -j KUBE-SERVICES', ...services, ...chains, 'COMMIT', ''].join('\n');
}

/** One conn-rate run from a process that first joins `cgroup` (if any). */
async function connRate(netns: string, cgroup: string | undefined): Promise<number> {
  const binary = buildC('conn-rate');
  const enter = cgroup ? `echo $$ > ${cgroup}/cgroup.procs && ` : '';
  const out = await inNs(netns, 'sh', ['-c', `${enter}exec ${binary} client ${SERVICE_VIP} 80 ${SECONDS}`], (SECONDS + 30) * 1000);
  const parsed = JSON.parse(out) as { conn_per_s: number; errors: number };
  if (parsed.errors > 0 || !(parsed.conn_per_s > 0)) throw new Error(`conn-rate from ${netns}: ${out.trim()}`);
  return parsed.conn_per_s;
}

async function oursVariant(ctx: BenchContext, cleanups: Cleanups, services: number, tag: string) {
  const cgroup = addCgroup(cleanups, `ciliate-bench-${tag}`);
  const node = await BenchNode.start(cleanups, { prefix: `cbsc${tag}`, socketLbCgroup: cgroup, logLevel: 'warn' });
  const client = await node.addPod(`cbsc${tag}c`);
  const server = await node.addPod(`cbsc${tag}s`);
  await startServers(cleanups, server.netns);
  const started = performance.now();
  const create = (body: unknown) => node.client.call('POST', '/v1/services', body);
  await create({ name: 'measured', clusterIP: SERVICE_VIP, ports: [{ port: 80, targetPort: CONN_PORT }], backends: [{ ip: server.endpoint.ipv4 }] });
  for (let next = 0; next < services - 1; ) {
    const batch: Promise<unknown>[] = [];
    for (let k = 0; k < CREATE_CONCURRENCY && next < services - 1; k++, next++) {
      const i = next;
      batch.push(create({ name: `s${i}`, clusterIP: fillerVip(i), ports: [{ port: 80, targetPort: 8080 }], backends: Array.from({ length: 4 }, (_, j) => ({ ip: fillerBackend(i, j) })) }));
    }
    await Promise.all(batch);
  }
  const listed = await node.client.get<unknown[]>('/v1/lb/maps');
  if (listed.length !== services) throw new Error(`ours ${tag}: the LB maps hold ${listed.length} frontends, want ${services}`);
  ctx.log(`ours ${tag}: ${services} services in ${round((performance.now() - started) / 1000, 1)} s`);
  return { sample: () => connRate(client.netns, cgroup) };
}

async function iptablesVariant(ctx: BenchContext, cleanups: Cleanups, services: number, tag: string, prefix: string) {
  const routed = await RoutedNode.start(cleanups, prefix, `cbsi${tag}`);
  const client = await routed.attach(await addNetns(cleanups, `cbsi${tag}c`));
  const server = await routed.attach(await addNetns(cleanups, `cbsi${tag}s`));
  await startServers(cleanups, server.netns);
  await sh('nsenter', [`--net=${netnsPath(routed.netns)}`, IPTABLES_RESTORE], { input: kubeProxyRules(services, server.ipv4) });
  ctx.log(`iptables ${tag}: ${services} services`);
  return { sample: () => connRate(client.netns, undefined) };
}

export async function run(ctx: BenchContext): Promise<void> {
  const rounds = ctx.rounds ?? DEFAULT_ROUNDS;
  const cleanups = new Cleanups((m) => ctx.log(m));
  try {
    const variants = {
      ours_1: (await oursVariant(ctx, cleanups, 1, 'o1')).sample,
      ours_10000: (await oursVariant(ctx, cleanups, MANY, 'o10k')).sample,
      iptables_1: (await iptablesVariant(ctx, cleanups, 1, 'i1', '10.251.0')).sample,
      iptables_10000: (await iptablesVariant(ctx, cleanups, MANY, 'i10k', '10.252.0')).sample,
    };
    const samples = await interleave(rounds, variants, {
      onRound: (r, s) => ctx.log(`round ${r + 1}: ${Object.entries(s).map(([k, v]) => `${k} ${Math.round(v.at(-1) ?? 0)}`).join(', ')}`),
    });
    const m = Object.fromEntries(Object.entries(samples).map(([k, v]) => [k, median(v)])) as Record<keyof typeof variants, number>;
    const baseline = `kube-proxy iptables DNAT (${IPTABLES_RESTORE.split('/').pop()})`;
    for (const count of [1, MANY] as const) {
      const ours = m[`ours_${count}`];
      const theirs = m[`iptables_${count}`];
      ctx.emit({ metric: `conn_per_s_${count}`, value: round(ours, 0), unit: 'conn/s', baseline, baseline_value: round(theirs, 0), ratio: round(ours / theirs, 3), better: 'higher', services: count, rounds });
    }
    const scaling = m.ours_10000 / m.ours_1;
    ctx.emit({
      metric: `scaling_${MANY}_vs_1`,
      value: round(scaling, 3),
      unit: 'ratio',
      baseline: `${baseline}: its own 10k/1`,
      baseline_value: round(m.iptables_10000 / m.iptables_1, 3),
      ratio: round(scaling / (m.iptables_10000 / m.iptables_1), 3),
      better: 'higher',
      target: `≥ ${TARGET_SCALING}`,
      met: scaling >= TARGET_SCALING,
      rounds,
    });
  } finally {
    await cleanups.run();
  }
}

