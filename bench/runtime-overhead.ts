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
 * Figures: runtime_exec_storm_ms (target ratio <= 1.05), runtime_events_lost (target 0),
 * runtime_cache_heap_mb_after_1m_execs (target < 64 MB), runtime_cache_entries_after_1m_execs.
 * Rounds: N (default 7, --rounds N) storms of each variant, 2000 execs a storm.
 * @module
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { NAMESPACES, ProcessCache, RuntimeObserver, type ExecRecord, type NamespaceName } from '../src/runtime/index.ts';
import { type BenchContext, interleave, median, round } from './lib.ts';

export const description = 'runtime sensor: exec storm wall time with the process sensor on vs off, events lost, and process-cache heap after 1M execs';

const DEFAULT_ROUNDS = 7;
const STORM = 2000;
const CACHE_EXECS = 1_000_000;

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
