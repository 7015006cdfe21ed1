/**
 * `runtime-overhead`: what the runtime sensor costs the processes it watches, and what its
 * process cache holds after a long exec storm.
 *
 *   exec storm   a shell runs `/bin/true` N times (fork + exec + exit each); wall time with the
 *                process sensor loaded and every event built and serialized as the JSON export
 *                would (ours), vs the same storm with no sensor (baseline). Rounds interleave,
 *                the sensor is loaded before and unloaded after each of its rounds (untimed).
 *                Events lost in the kernel are counted and reported.
 *   cache memory 1,000,000 synthetic exec+exit records (and a live process per 100) through the
 *                process cache at its default bound: heap after collection, vs before (baseline).
 *
 *   openat policy bench/c/openat-loop.c opens one file 200,000 times: ns per open with the sensor
 *                and an openat TracingPolicy whose filter (Equal on a path nobody opens) rejects
 *                every call in the kernel (ours), vs no sensor (baseline); interleaved rounds.
 *   Sigkill      bench/c/sigkill-latency.c: 300 children each open a path a Sigkill policy
 *                forbids; from the child's last timestamp before the call to its parent reaping it.
 *
 *   sustained    the openat loop paced at rising rates with a policy posting every open: the
 *                highest rate whose every event reached a subscriber with none lost.
 *   workload     find + cat over every file of /usr/include: CPU time with the sensor and the same
 *                rejecting openat policy vs none (a real program's mix of calls, not only openat).
 * Figures: runtime_exec_storm_ms (target ratio <= 1.05), runtime_events_lost (target 0),
 * runtime_cache_heap_mb_after_1m_execs (target < 64 MB), runtime_cache_entries_after_1m_execs,
 * runtime_openat_policy_ns_per_open and _cpu_ns_per_open (the loop's CPU time: steadier on a
 * shared machine; target ratio <= 1.10), runtime_openat_policy_workload_cpu_ms (ratio <= 1.10),
 * runtime_sigkill_latency_us (p50, p99).
 * Rounds: N (default 7, --rounds N) storms of each variant, 2000 execs a storm.
 * @module
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { NAMESPACES, ProcessCache, RuntimeObserver, type ExecRecord, type NamespaceName } from '../src/runtime/index.ts';
import { type BenchContext, buildC, interleave, median, round } from './lib.ts';

export const description = 'runtime sensor: exec storm wall time with the process sensor on vs off, events lost, and process-cache heap after 1M execs';

const DEFAULT_ROUNDS = 7;
const STORM = 2000;
const CACHE_EXECS = 1_000_000;
const OPENS = 200_000;
const KILLS = 300;
/** Offered event rates (opens a second, each posted), tried in turn for SUSTAINED_SECONDS each. */
const SUSTAINED_RATES = [10_000, 25_000, 50_000, 100_000, 150_000, 200_000, 300_000];
const SUSTAINED_SECONDS = 2;
/** The workload's tree: thousands of small files wherever clang and libc's headers are installed. */
const WORKLOAD_TREE = existsSync('/usr/include') ? '/usr/include' : '/usr/share';

const openatPolicy = (name: string, path: string, action: string) => `apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: ${name}}
spec:
  kprobes:
  - call: sys_openat
    syscall: true
    args: [{index: 1, type: string}]
    selectors:
    - matchArgs: [{index: 1, operator: Equal, values: [${JSON.stringify(path)}]}]
      matchActions: [{action: ${action}}]
`;

/** The openat policy variant and the Sigkill latency, in a temp dir removed whatever happens. */
async function policyFigures(ctx: BenchContext, rounds: number): Promise<void> {
  const loop = buildC('openat-loop');
  const killer = buildC('sigkill-latency');
  const dir = mkdtempSync(join(tmpdir(), 'ciliate-bench-tp-'));
  const cleanup = () => rmSync(dir, { recursive: true, force: true });
  process.once('exit', cleanup);
  try {
    const file = join(dir, 'opened');
    writeFileSync(file, 'x');
    // Wall time per open, and the loop's CPU time per open (its syscalls and the hooks' programs),
    // which other load on a shared machine does not inflate.
    const cpu: { off: number[]; on: number[] } = { off: [], on: [] };
    const opens = (variant: 'off' | 'on') => {
      const result = JSON.parse(execFileSync(loop, [file, String(OPENS)], { encoding: 'utf8' })) as { ns_per_open: number; cpu_ns_per_open: number };
      cpu[variant].push(result.cpu_ns_per_open);
      return result.ns_per_open;
    };
    let posted = 0n;
    let runs = 0n;
    const samples = await interleave(rounds, {
      off: async () => opens('off'),
      on: async () => {
        const observer = new RuntimeObserver({ nodeName: 'bench' });
        observer.start();
        try {
          observer.policies.add(openatPolicy('bench-reject', join(dir, 'never-opened'), 'Post'));
          const ns = opens('on');
          const stats = observer.policies.get('bench-reject')!.stats;
          posted += stats.posted;
          runs += stats.runs;
          return ns;
        } finally {
          observer.stop();
        }
      },
    }, { onRound: (i, s) => ctx.log(`openat round ${i + 1}/${rounds}: off ${round(s.off.at(-1)!)} ns, on ${round(s.on.at(-1)!)} ns`) });
    const on = median(samples.on);
    const off = median(samples.off);
    ctx.emit({ metric: 'runtime_openat_policy_ns_per_open', value: round(on), unit: 'ns', baseline: 'same opens, no sensor', baseline_value: round(off), ratio: round(on / off, 3), better: 'lower', opens: OPENS, rounds, hook_runs: Number(runs), posted: Number(posted), target: 'ratio <= 1.10' });
    const cpuOn = median(cpu.on);
    const cpuOff = median(cpu.off);
    ctx.emit({ metric: 'runtime_openat_policy_cpu_ns_per_open', value: round(cpuOn), unit: 'ns', baseline: 'same opens, no sensor (CPU time)', baseline_value: round(cpuOff), ratio: round(cpuOn / cpuOff, 3), better: 'lower', opens: OPENS, rounds, target: 'ratio <= 1.10' });

    await workloadFigure(ctx, rounds, join(dir, 'never-opened'));
    await sustainedFigure(ctx, loop, file);

    const observer = new RuntimeObserver({ nodeName: 'bench' });
    observer.start();
    try {
      const forbidden = join(dir, 'forbidden');
      writeFileSync(forbidden, 'x');
      observer.policies.add(openatPolicy('bench-kill', forbidden, 'Sigkill'));
      const result = JSON.parse(execFileSync(killer, [forbidden, String(KILLS)], { encoding: 'utf8' })) as { runs: number; killed: number; p50_us: number; p99_us: number; max_us: number };
      ctx.emit({ metric: 'runtime_sigkill_latency_us', value: result.p50_us, unit: 'us', baseline: null, ratio: null, p50_us: result.p50_us, p99_us: result.p99_us, max_us: result.max_us, killed: result.killed, runs: result.runs, better: 'lower', target: 'within milliseconds' });
    } finally {
      observer.stop();
    }
  } finally {
    cleanup();
    process.off('exit', cleanup);
  }
}

/**
 * A syscall-heavy program rather than a loop of one call: find walks WORKLOAD_TREE (getdents,
 * newfstatat, openat of every directory) and cat reads every file in it (openat, fstat, read,
 * close): the CPU time of both (user + sys, from bash's `times`), with the sensor and the same
 * rejecting openat policy vs none. The openat loop above is the worst case (every call an openat);
 * this is what a real program that opens many files pays.
 */
async function workloadFigure(ctx: BenchContext, rounds: number, neverOpened: string): Promise<void> {
  // Three passes a sample: a few hundred ms of CPU each, well above the accounting's granularity.
  const script = `for pass in 1 2 3; do find ${WORKLOAD_TREE} -type f -exec cat {} + > /dev/null; done; times`;
  const cpuMs = () => {
    // `times`: the shell's own user and sys, then its children's, as 0m0.563s.
    const lines = execFileSync('/bin/bash', ['-c', script], { encoding: 'utf8' }).trim().split('\n');
    const seconds = [...(lines.at(-1) ?? '').matchAll(/(\d+)m([\d.]+)s/g)].map((m) => Number(m[1]) * 60 + Number(m[2]));
    return (seconds[0] + seconds[1]) * 1000;
  };
  cpuMs(); // the tree into the page cache
  const samples = await interleave(rounds, {
    off: async () => cpuMs(),
    on: async () => {
      const observer = new RuntimeObserver({ nodeName: 'bench' });
      observer.start();
      try {
        observer.policies.add(openatPolicy('bench-reject-workload', neverOpened, 'Post'));
        return cpuMs();
      } finally {
        observer.stop();
      }
    },
  }, { onRound: (i, s) => ctx.log(`workload round ${i + 1}/${rounds}: off ${round(s.off.at(-1)!)} ms, on ${round(s.on.at(-1)!)} ms CPU`) });
  const on = median(samples.on);
  const off = median(samples.off);
  ctx.emit({ metric: 'runtime_openat_policy_workload_cpu_ms', value: round(on), unit: 'ms', baseline: `find ${WORKLOAD_TREE} -exec cat, no sensor (CPU time)`, baseline_value: round(off), ratio: round(on / off, 3), better: 'lower', rounds, target: 'ratio <= 1.10' });
}

/**
 * Events a second the sensor delivers without loss: the openat loop paced at a rising rate, with a
 * policy that posts every open it makes (Equal on the very path), each event built in full and
 * serialized for a subscriber (as a gRPC stream or the export file takes it). A step counts when
 * every event arrived and the kernel lost none; the figure is the highest such step, with the
 * first step that lost events beside it.
 */
async function sustainedFigure(ctx: BenchContext, loop: string, file: string): Promise<void> {
  const observer = new RuntimeObserver({ nodeName: 'bench' });
  observer.start();
  try {
    let received = 0;
    observer.subscribe((event) => {
      if ('process_kprobe' in event && JSON.stringify(event).length > 0) received++;
    });
    observer.policies.add(openatPolicy('bench-post-every-open', file, 'Post'));
    let sustained = 0;
    let failed: { rate: number; received: number; lost: number } | undefined;
    for (const rate of SUSTAINED_RATES) {
      received = 0;
      const lostBefore = observer.stats().lost;
      const child = spawn(loop, [file, String(rate * SUSTAINED_SECONDS), String(rate)], { stdio: 'ignore' });
      await once(child, 'exit');
      // What the kernel posted, read to the end.
      const deadline = performance.now() + 2_000;
      while (received < rate * SUSTAINED_SECONDS && performance.now() < deadline) {
        observer.drain();
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
      const lost = Number(observer.stats().lost - lostBefore);
      ctx.log(`sustained ${rate}/s: ${received} of ${rate * SUSTAINED_SECONDS} events, ${lost} lost in the kernel`);
      if (lost > 0 || received < rate * SUSTAINED_SECONDS) {
        failed = { rate, received, lost };
        break;
      }
      sustained = rate;
    }
    ctx.emit({ metric: 'runtime_events_per_s_sustained', value: sustained, unit: '1/s', baseline: null, ratio: null, better: 'higher', seconds_per_step: SUSTAINED_SECONDS, first_loss: failed ?? null, target: 'no loss' });
  } finally {
    observer.stop();
  }
}

async function storm(marker: string): Promise<number> {
  const began = performance.now();
  const shell = spawn('/bin/sh', ['-c', `i=0; while [ $i -lt ${STORM} ]; do /bin/true ${marker}; i=$((i+1)); done`], { stdio: 'ignore' });
  await once(shell, 'exit');
  return performance.now() - began;
}

function heapMb(gc: () => void): number {
  gc();
  gc();
  return process.memoryUsage().heapUsed / (1 << 20);
}

export async function run(ctx: BenchContext): Promise<void> {
  const rounds = ctx.rounds ?? DEFAULT_ROUNDS;
  let lost = 0n;
  let events = 0;
  const samples = await interleave(rounds, {
    off: () => storm('off'),
    on: async () => {
      const observer = new RuntimeObserver({ nodeName: 'bench' });
      observer.start();
      let bytes = 0;
      observer.subscribe((event) => {
        bytes += JSON.stringify(event).length;
        events++;
      });
      try {
        const ms = await storm('on');
        observer.drain();
        lost += observer.stats().lost;
        if (bytes === 0) throw new Error('the sensor saw no events');
        return ms;
      } finally {
        observer.stop();
      }
    },
  }, { onRound: (i, s) => ctx.log(`round ${i + 1}/${rounds}: off ${round(s.off.at(-1)!)} ms, on ${round(s.on.at(-1)!)} ms`) });
  const on = median(samples.on);
  const off = median(samples.off);
  ctx.emit({ metric: 'runtime_exec_storm_ms', value: round(on), unit: 'ms', baseline: 'same storm, no sensor', baseline_value: round(off), ratio: round(on / off, 3), better: 'lower', execs: STORM, rounds, target: 'ratio <= 1.05' });
  await policyFigures(ctx, rounds);
  ctx.emit({ metric: 'runtime_events_lost', value: Number(lost), unit: 'events', baseline: null, ratio: null, events_seen: events, better: 'lower', target: 0 });

  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const before = heapMb(gc);
  const cache = new ProcessCache({ nodeName: 'bench', graceMs: 0 });
  const ns = Object.fromEntries(NAMESPACES.map((n, i) => [n, 4026531830 + i])) as Record<NamespaceName, number>;
  const caps = { effective: 0x1ffffffffffn, permitted: 0x1ffffffffffn, inheritable: 0n };
  cache.addSnapshot({ pid: 1, ppid: 0, ktime: 1n, binary: '/sbin/init', args: [], cwd: '/', uid: 0, auid: 4294967295, caps, ns });
  const record = (pid: number, ktime: bigint): ExecRecord => ({
    type: 'exec', pid, tid: pid, ppid: 1, ktime, uid: 0, euid: 0, gid: 0, auid: 4294967295, caps, cgroupId: 1n, nspid: pid, ns,
    binary: '/usr/bin/curl', args: ['-s', `https://example.com/${pid}`], cwd: '/root', flags: 0, argsSize: 40,
  });
  for (let i = 0; i < CACHE_EXECS; i++) {
    const pid = 2 + (i % 4_000_000);
    cache.exec(record(pid, BigInt(1000 + i)));
    // One in a hundred stays alive (a long-running server started by the storm).
    if (i % 100 !== 0) cache.exit({ type: 'exit', pid, tid: pid, ppid: 1, ktime: BigInt(2000 + i), exitCode: 0 });
    if (i % 10_000 === 0) cache.collect();
  }
  cache.collect(true);
  const after = heapMb(gc);
  const stats = cache.stats();
  ctx.emit({ metric: 'runtime_cache_heap_mb_after_1m_execs', value: round(after - before), unit: 'MB', baseline: 'heap before', baseline_value: round(before), ratio: null, better: 'lower', target: '< 64 MB', entries: stats.size, evictions: stats.evictions });
  ctx.emit({ metric: 'runtime_cache_entries_after_1m_execs', value: stats.size, unit: 'entries', baseline: null, ratio: null, capacity: stats.capacity, live_processes: stats.live });
}
