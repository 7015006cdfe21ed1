/**
 * `services`: programming services into the kernel, ours (the LB maps reconciler writing
 * bpf/lib/lb.h maps) side by side with kube-proxy's iptables mode (iptables-restore of the same
 * services as KUBE-SERVICES → KUBE-SVC-* → KUBE-SEP-* DNAT chains, in a namespace of its own).
 *
 * For 1k and 10k services × 4 backends:
 *   program_ms   every service from nothing: ours, all frontends written and reconciled; iptables,
 *                one iptables-restore of the whole table
 *   change_ms    one service gains (or loses) a fifth backend: ours, that frontend reconciled;
 *                iptables, kube-proxy's partial sync (iptables-restore --noflush rewriting
 *                KUBE-SERVICES whole and the changed service's chains), O(services) however small
 *                the change. Target: ours < 5 ms at any size.
 * Costs, so ratio = ours / iptables and lower is better. Interleaved rounds, medians.
 * @module
 */
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { pino } from 'pino';
import { LbDatapath, frontendKey, maglevSeed, DEFAULT_MAGLEV_HASH_SEED, type Frontend } from '../src/loadbalancer/index.ts';
import { Table } from '../src/statedb/index.ts';
import { type BenchContext, interleave, median, round } from './lib.ts';
import { Cleanups, addNetns, netnsPath, sh, uniqueName } from './support/ns.ts';

export const description = 'programming 1k/10k services × 4 backends and one change: LB maps reconciler vs kube-proxy iptables-restore';

const SIZES = [1_000, 10_000] as const;
const BACKENDS = 4;
const DEFAULT_ROUNDS = 5;
const CHANGES_PER_SAMPLE = 5;
const CHANGE_TARGET_MS = 5;
const IPTABLES_RESTORE = ['/usr/sbin/iptables-legacy-restore', '/sbin/iptables-legacy-restore'].find(existsSync) ?? 'iptables-restore';
const BASELINE = `kube-proxy iptables mode (${IPTABLES_RESTORE.split('/').pop()})`;

function vip(i: number): string {
  return `10.96.${i >> 8}.${i & 0xff}`;
}

function backendIp(i: number, j: number): string {
  const n = i * 8 + j;
  return `10.${244 + (n >> 16)}.${(n >> 8) & 0xff}.${n & 0xff}`;
}

function frontend(i: number, backends = BACKENDS): Frontend {
  return {
    key: frontendKey(vip(i), 80, 'TCP'),
    service: `bench/s${i}`,
    kind: 'ClusterIP',
    vip: vip(i),
    port: 80,
    protocol: 'TCP',
    backends: Array.from({ length: backends }, (_, j) => ({ ip: backendIp(i, j), port: 8080, protocol: 'TCP' as const })),
  };
}

/** One service's KUBE-SVC and KUBE-SEP chains as kube-proxy writes them (random probabilities). */
function serviceChains(i: number, backends: number): { declare: string[]; rules: string[] } {
  const svc = `KUBE-SVC-${i}`;
  const declare = [`:${svc} - [0:0]`];
  const rules: string[] = [];
  for (let j = 0; j < backends; j++) {
    const sep = `KUBE-SEP-${i}-${j}`;
    declare.push(`:${sep} - [0:0]`);
    const probability = j === backends - 1 ? '' : ` -m statistic --mode random --probability ${(1 / (backends - j)).toFixed(10)}`;
    rules.push(`-A ${svc} -m comment --comment "bench/s${i}"${probability} -j ${sep}`);
    rules.push(`-A ${sep} -p tcp -m comment --comment "bench/s${i}" -m tcp -j DNAT --to-destination ${backendIp(i, j)}:8080`);
  }
  return { declare, rules };
}

function kubeServicesRules(count: number): string[] {
  return Array.from({ length: count }, (_, i) => `-A KUBE-SERVICES -d ${vip(i)}/32 -p tcp -m comment --comment "bench/s${i} cluster IP" -m tcp --dport 80 -j KUBE-SVC-${i}`);
}

/** The whole nat table kube-proxy would restore for `count` services. */
function fullRestore(count: number): string {
  const declare = [':KUBE-SERVICES - [0:0]'];
  const rules = ['-A OUTPUT -j KUBE-SERVICES', '-A PREROUTING -j KUBE-SERVICES'];
  for (let i = 0; i < count; i++) {
    const chains = serviceChains(i, BACKENDS);
    declare.push(...chains.declare);
    rules.push(...chains.rules);
  }
  return ['*nat', ':PREROUTING ACCEPT [0:0]', ':OUTPUT ACCEPT [0:0]', ...declare, ...kubeServicesRules(count), ...rules, 'COMMIT', ''].join('\n');
}

/** kube-proxy's partial sync after service `i` changed to `backends` backends. */
function partialRestore(count: number, i: number, backends: number): string {
  const chains = serviceChains(i, backends);
  // A fifth backend's chain is new; when it goes, kube-proxy deletes its chain (-X) after the flush.
  const gone = backends < BACKENDS + 1 ? [`:KUBE-SEP-${i}-${BACKENDS} - [0:0]`] : [];
  const deletes = backends < BACKENDS + 1 ? [`-X KUBE-SEP-${i}-${BACKENDS}`] : [];
  return ['*nat', ':KUBE-SERVICES - [0:0]', ...chains.declare, ...gone, ...kubeServicesRules(count), ...chains.rules, ...deletes, 'COMMIT', ''].join('\n');
}

async function timeMs(action: () => Promise<unknown>): Promise<number> {
  const start = performance.now();
  await action();
  return performance.now() - start;
}

export async function run(ctx: BenchContext): Promise<void> {
  const rounds = ctx.rounds ?? DEFAULT_ROUNDS;
  const log = pino({ level: 'silent' });
  const seed = maglevSeed(DEFAULT_MAGLEV_HASH_SEED);
  for (const count of SIZES) {
    const cleanups = new Cleanups((m) => ctx.log(m));
    try {
      const all = Array.from({ length: count }, (_, i) => frontend(i));
      /** A fresh reconciler on a fresh bpffs directory, torn down at cleanup. */
      const fresh = () => {
        const bpfRoot = `/sys/fs/bpf/${uniqueName('ciliate-bench-svc')}`;
        mkdirSync(bpfRoot, { recursive: true });
        const frontends = new Table<Frontend>('frontends', (f) => f.key);
        const lb = new LbDatapath({ bpfRoot, frontends, algorithm: 'random', maglevSeed: seed, log });
        lb.start();
        let disposed = false;
        const dispose = async () => {
          if (disposed) return;
          disposed = true;
          await lb.stop();
          rmSync(bpfRoot, { recursive: true, force: true });
        };
        cleanups.defer(`remove ${bpfRoot}`, dispose);
        return { lb, frontends, dispose };
      };
      const program = await interleave(rounds, {
        ours: async () => {
          const { lb, frontends, dispose } = fresh();
          const ms = await timeMs(async () => {
            for (const f of all) frontends.upsert(f);
            await lb.synced();
          });
          await dispose();
          return ms;
        },
        iptables: async () => {
          const netns = await addNetns(cleanups, 'cbsvc');
          return timeMs(() => sh('nsenter', [`--net=${netnsPath(netns)}`, IPTABLES_RESTORE], { input: fullRestore(count) }));
        },
      });

      // One change, against a full table: ours keeps one reconciler, iptables one namespace.
      const kept = fresh();
      for (const f of all) kept.frontends.upsert(f);
      await kept.lb.synced();
      const netns = await addNetns(cleanups, 'cbsvc');
      await sh('nsenter', [`--net=${netnsPath(netns)}`, IPTABLES_RESTORE], { input: fullRestore(count) });
      let oursFifth = false;
      let iptablesFifth = false;
      const target = count >> 1;
      const change = await interleave(rounds, {
        ours: async () => {
          let total = 0;
          for (let k = 0; k < CHANGES_PER_SAMPLE; k++) {
            oursFifth = !oursFifth;
            total += await timeMs(async () => {
              kept.frontends.upsert(frontend(target, oursFifth ? BACKENDS + 1 : BACKENDS));
              await kept.lb.synced();
            });
          }
          return total / CHANGES_PER_SAMPLE;
        },
        iptables: async () => {
          let total = 0;
          for (let k = 0; k < CHANGES_PER_SAMPLE; k++) {
            iptablesFifth = !iptablesFifth;
            const input = partialRestore(count, target, iptablesFifth ? BACKENDS + 1 : BACKENDS);
            total += await timeMs(() => sh('nsenter', [`--net=${netnsPath(netns)}`, IPTABLES_RESTORE, '--noflush'], { input }));
          }
          return total / CHANGES_PER_SAMPLE;
        },
      });
      // The change really is in the kernel: the maps list the fifth backend when it is wanted.
      if (!oursFifth) {
        kept.frontends.upsert(frontend(target, BACKENDS + 1));
        await kept.lb.synced();
      }
      const entry = kept.lb.entries().find((e) => e.frontend === frontendKey(vip(target), 80, 'TCP'));
      if (entry?.backends.length !== BACKENDS + 1) throw new Error(`the change is not in the maps: ${JSON.stringify(entry)}`);

      for (const [metric, samples, extra] of [
        ['program_ms', program, {}],
        ['change_ms', change, { target: `ours < ${CHANGE_TARGET_MS} ms`, met: median(change.ours) < CHANGE_TARGET_MS }],
      ] as const) {
        const ours = median(samples.ours);
        const baseline = median(samples.iptables);
        ctx.emit({
          metric: `${metric}_${count}`,
          value: round(ours, 2),
          unit: 'ms',
          baseline: BASELINE,
          baseline_value: round(baseline, 2),
          ratio: round(ours / baseline, 5),
          better: 'lower',
          services: count,
          backends_per_service: BACKENDS,
          rounds,
          ...extra,
        });
      }
    } finally {
      await cleanups.run();
    }
  }
}
