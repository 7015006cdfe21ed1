/**
 * `policy-compute`: policy at the issue's scale, 10k endpoints (10k identities) and 1k policies
 * (bench/support/policy-scale.ts), computed by the PolicyEngine and written into real
 * per-endpoint BPF LPM tries (createPolicyMap + applyPolicyDiff, as src/datapath/policy-maps.ts).
 *
 * Figures (costs, so `better` is "lower"):
 *   compute_and_program_s      a fresh engine computes every endpoint's policy (compute_s), then
 *                              one map per endpoint is created and filled (program_s); value =
 *                              the sum, median of the build rounds [target < 2 s]. No baseline.
 *   change_to_enforcement_ms   with that state loaded, one change → its map writes done, p50 as
 *     change: "policy"         the value, p99 alongside [target < 50 ms, judged on p99]: one
 *                              rule upserted (it selects 10 endpoints);
 *     change: "label"          one endpoint relabelled so that it moves to a new identity
 *                              (upsertIdentity(new), upsertEndpoint, deleteIdentity(old), each
 *                              update written as it comes, as PolicyManager does).
 *                              Baseline, interleaved: the same kind of change applied by
 *                              recomputing everything from scratch (fresh engine with all rules,
 *                              identities and endpoints), diffing every endpoint against the
 *                              previous entries and writing only the differences; ratio =
 *                              ours p50 / baseline p50.
 *
 * Each baseline change is then also applied to the live engine (untimed) and the two results are
 * compared endpoint by endpoint; at the end the maps of every endpoint a change touched (and a
 * sample of the others) are read back and compared with the engine. A mismatch fails the bench.
 * Latencies are in-process: no store round-trip, no identity allocation, no ipcache update.
 * Alongside wall-clock latency, cpu_wait_p99_ms (run-queue delay, /proc/thread-self/schedstat)
 * says how long the thread waited for a CPU held by other processes, and
 * wall_minus_cpu_wait_p99_ms what the p99 is without that wait.
 * @module
 */
import { readdirSync, readFileSync } from 'node:fs';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import {
  applyPolicyDiff,
  createPolicyMap,
  decodeKey,
  diffEntries,
  PolicyEngine,
  policyKeyString,
  POLICY_F_DENY,
  type EntriesDiff,
  type PolicyBpfMap,
  type PolicyMapEntry,
  type PolicyUpdate,
} from '../src/policy/index.ts';
import { type BenchContext, interleave, median, round } from './lib.ts';
import { applyChange, diffSize, PolicyScale, type Change } from './support/policy-scale.ts';

export const description = 'policy for 10k endpoints / 1k policies into real BPF LPM maps; change-to-enforcement latency vs full recompute';

/** Measured rounds of the change phase; each runs CHANGES_PER_ROUND changes of ours per kind and one baseline change per kind. */
const DEFAULT_ROUNDS = 5;
const CHANGES_PER_ROUND = 10;
/** Full builds (10k maps each); the last one's state is kept for the change phase. */
const MAX_BUILD_ROUNDS = 3;
const BUILD_TARGET_S = 2;
const CHANGE_TARGET_MS = 50;
/** File descriptors left free for everything else when deciding how many maps to create. */
const FD_RESERVE = 512;
/** Untouched endpoints whose maps are also read back at the end. */
const VERIFY_SAMPLE = 50;

const BASELINE = 'full recompute: fresh PolicyEngine with all rules, identities and endpoints, every endpoint diffed against its previous entries, differences written';

const now = (): bigint => process.hrtime.bigint();
const ms = (ns: bigint | number): number => Number(ns) / 1e6;
/**
 * How long this thread has been runnable but waiting for a CPU, in ns (run_delay of
 * /proc/thread-self/schedstat; added when the thread is switched back in, so exact for a wait
 * that ended before the read). 0 when unreadable. The first field, time on CPU, is not used:
 * for the running thread it is only brought up to date at scheduler ticks (4 ms here).
 */
const cpuWaitNs = (): number => {
  try {
    return Number(readFileSync('/proc/thread-self/schedstat', 'utf8').split(' ')[1]);
  } catch {
    return 0;
  }
};

/** `gc()` through the V8 flag, so garbage of one variant is not collected on another's clock; undefined if unavailable. */
function exposeGc(): (() => void) | undefined {
  try {
    setFlagsFromString('--expose-gc');
    const gc: unknown = runInNewContext('gc');
    return typeof gc === 'function' ? (gc as () => void) : undefined;
  } catch {
    return undefined;
  }
}

/** How many more file descriptors this process may open. */
function freeFds(): number {
  const match = /^Max open files\s+(\S+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
  const limit = match === null || match[1] === 'unlimited' ? Number.MAX_SAFE_INTEGER : Number(match[1]);
  return limit - readdirSync('/proc/self/fd').length;
}

/** Nearest-rank percentile (p in 0..1); for 50 samples p99 is the maximum. */
function percentile(values: readonly number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.max(0, Math.ceil(p * sorted.length) - 1)];
}

/** The per-endpoint policy maps of one build; every map created is closed by close(). */
class EndpointMaps {
  readonly #maps = new Map<number, PolicyBpfMap>();
  /** Writes for endpoints that have no map (only when fewer maps than endpoints could be created). */
  skipped = 0;

  create(ids: Iterable<number>): void {
    for (const id of ids) this.#maps.set(id, createPolicyMap(id));
  }
  get size(): number {
    return this.#maps.size;
  }
  get(id: number): PolicyBpfMap | undefined {
    return this.#maps.get(id);
  }
  ids(): number[] {
    return [...this.#maps.keys()];
  }
  apply(id: number, diff: EntriesDiff): void {
    const map = this.#maps.get(id);
    if (map) applyPolicyDiff(map, diff);
    else this.skipped++;
  }
  close(): void {
    for (const map of this.#maps.values()) map.close();
    this.#maps.clear();
  }
}

interface BuildSample {
  computeNs: number;
  createNs: number;
  writeNs: number;
  cpuUserUs: number;
  cpuSystemUs: number;
  entries: number;
}

/** One change measured: total latency and its parts, and how much it wrote. */
interface ChangeSample {
  totalMs: number;
  /** Time this thread was runnable but waiting for a CPU (other processes on the shared machine). */
  waitMs: number;
  computeMs: number;
  writeMs: number;
  endpoints: number;
  entries: number;
}

export async function run(ctx: BenchContext): Promise<void> {
  if (process.getuid?.() !== 0) ctx.log('not running as root: creating BPF maps will probably fail');
  const rounds = ctx.rounds ?? DEFAULT_ROUNDS;
  const buildRounds = Math.min(MAX_BUILD_ROUNDS, rounds);
  const gc = exposeGc();
  if (!gc) ctx.log('gc() unavailable: garbage of the baseline may be collected during our measurements');

  const model = new PolicyScale();
  const endpointIds = [...model.endpoints.keys()];
  const programmed = Math.max(0, Math.min(endpointIds.length, freeFds() - FD_RESERVE));
  if (programmed < endpointIds.length) {
    ctx.log(`only ${programmed} of ${endpointIds.length} endpoints get a map: the open-file limit is too low (raise ulimit -n)`);
  }

  const open = new Set<EndpointMaps>();
  try {
    // Phase 1: full builds. The last build's engine and maps stay loaded for phase 2.
    const builds: BuildSample[] = [];
    let engine: PolicyEngine | undefined;
    let maps: EndpointMaps | undefined;
    for (let r = 0; r < buildRounds; r++) {
      if (maps) {
        maps.close();
        open.delete(maps);
      }
      engine = undefined;
      maps = undefined;
      gc?.();
      const t0 = now();
      const fresh = new PolicyEngine({ identities: model.identityInfos() });
      fresh.upsertRules(model.rules);
      const diffs: Array<[number, EntriesDiff]> = [];
      for (const [id, ep] of model.endpoints) {
        const diff = fresh.upsertEndpoint(id, ep.labels).endpoints.get(id);
        if (diff) diffs.push([id, diff]);
      }
      const t1 = now();
      const built = new EndpointMaps();
      open.add(built);
      built.create(endpointIds.slice(0, programmed));
      const t2 = now();
      const cpu0 = process.cpuUsage();
      let entries = 0;
      for (const [id, diff] of diffs) {
        if (!built.get(id)) continue;
        applyPolicyDiff(built.get(id)!, diff);
        entries += diffSize(diff);
      }
      const t3 = now();
      const cpu = process.cpuUsage(cpu0);
      const sample: BuildSample = {
        computeNs: Number(t1 - t0),
        createNs: Number(t2 - t1),
        writeNs: Number(t3 - t2),
        cpuUserUs: cpu.user,
        cpuSystemUs: cpu.system,
        entries,
      };
      builds.push(sample);
      engine = fresh;
      maps = built;
      ctx.log(
        `build ${r + 1}/${buildRounds}: compute ${ms(sample.computeNs).toFixed(0)} ms, create ${built.size} maps ${ms(sample.createNs).toFixed(0)} ms, ` +
          `write ${entries} entries ${ms(sample.writeNs).toFixed(0)} ms (user ${(cpu.user / 1000).toFixed(0)} ms, sys ${(cpu.system / 1000).toFixed(0)} ms), ` +
          `rss ${(process.memoryUsage().rss / 2 ** 20).toFixed(0)} MiB`,
      );
    }
    if (!engine || !maps) throw new Error('no build ran');
    const live = engine;
    const liveMaps = maps;

    const totals = builds.map((b) => (b.computeNs + b.createNs + b.writeNs) / 1e9);
    const total = median(totals);
    const entriesWritten = builds[builds.length - 1].entries;
    ctx.emit({
      metric: 'compute_and_program_s',
      value: round(total, 3),
      unit: 's',
      baseline: null,
      ratio: null,
      better: 'lower',
      rounds: buildRounds,
      value_min: round(Math.min(...totals), 3),
      value_max: round(Math.max(...totals), 3),
      first_build_s: round(totals[0], 3),
      compute_s: round(median(builds.map((b) => b.computeNs / 1e9)), 3),
      program_s: round(median(builds.map((b) => (b.createNs + b.writeNs) / 1e9)), 3),
      create_maps_s: round(median(builds.map((b) => b.createNs / 1e9)), 3),
      write_s: round(median(builds.map((b) => b.writeNs / 1e9)), 3),
      write_cpu_user_s: round(median(builds.map((b) => b.cpuUserUs / 1e6)), 3),
      write_cpu_sys_s: round(median(builds.map((b) => b.cpuSystemUs / 1e6)), 3),
      write_ns_per_entry: round(median(builds.map((b) => b.writeNs / b.entries)), 0),
      endpoints: endpointIds.length,
      endpoints_programmed: programmed,
      policies: model.rules.length,
      identities: model.identities.size,
      entries_written: entriesWritten,
      compute_order: 'rules first, then upsertEndpoint per endpoint',
      program_method: 'createPolicyMap (LPM trie) per endpoint + applyPolicyDiff (upserts in one BPF_MAP_UPDATE_BATCH per endpoint)',
      target_s: BUILD_TARGET_S,
      meets_target: total < BUILD_TARGET_S && programmed === endpointIds.length,
    });

    // Phase 2: single changes on the loaded state, ours and the full-recompute baseline interleaved.
    const touched = new Set<number>();
    const writeUpdate = (update: PolicyUpdate): void => {
      for (const [id, diff] of update.endpoints) liveMaps.apply(id, diff);
    };

    const ours = async (next: () => Change, out: ChangeSample[]): Promise<number> => {
      gc?.();
      const batch: number[] = [];
      for (let i = 0; i < CHANGES_PER_ROUND; i++) {
        const change = next();
        const endpoints = new Set<number>();
        let entries = 0;
        let computeNs = 0n;
        let writeNs = 0n;
        const wait0 = cpuWaitNs();
        const start = now();
        let mark = start;
        applyChange(live, change, (update) => {
          const computed = now();
          computeNs += computed - mark;
          writeUpdate(update);
          mark = now();
          writeNs += mark - computed;
          for (const [id, diff] of update.endpoints) {
            endpoints.add(id);
            entries += diffSize(diff);
          }
        });
        const totalMs = ms(mark - start);
        const waitMs = ms(cpuWaitNs() - wait0);
        for (const id of endpoints) touched.add(id);
        out.push({ totalMs, waitMs, computeMs: ms(computeNs), writeMs: ms(writeNs), endpoints: endpoints.size, entries });
        batch.push(totalMs);
        // Yield now and then, as the agent's event loop would between events.
        await Promise.resolve();
      }
      return median(batch);
    };

    const fromScratch = (next: () => Change, out: ChangeSample[]): number => {
      gc?.();
      const change = next();
      const wait0 = cpuWaitNs();
      const start = now();
      const fresh = new PolicyEngine({ identities: model.identityInfos() });
      fresh.upsertRules(model.rules);
      for (const [id, ep] of model.endpoints) fresh.upsertEndpoint(id, ep.labels);
      const diffs: Array<[number, EntriesDiff]> = [];
      for (const id of model.endpoints.keys()) {
        const diff = diffEntries(live.endpointPolicy(id)!.entries, fresh.endpointPolicy(id)!.entries);
        if (diffSize(diff) > 0) diffs.push([id, diff]);
      }
      const computed = now();
      let entries = 0;
      for (const [id, diff] of diffs) {
        liveMaps.apply(id, diff);
        entries += diffSize(diff);
      }
      const end = now();
      const waitMs = ms(cpuWaitNs() - wait0);
      out.push({ totalMs: ms(end - start), waitMs, computeMs: ms(computed - start), writeMs: ms(end - computed), endpoints: diffs.length, entries });

      // Untimed: bring the live engine to the same configuration (the maps already are) and check
      // that incremental and from-scratch agree on every endpoint either one touched.
      const incremental = new Set<number>();
      applyChange(live, change, (update) => {
        for (const id of update.endpoints.keys()) incremental.add(id);
      });
      const check = new Set([...incremental, ...diffs.map(([id]) => id)]);
      for (const id of check) {
        touched.add(id);
        const left = diffEntries(live.endpointPolicy(id)!.entries, fresh.endpointPolicy(id)!.entries);
        if (diffSize(left) > 0) throw new Error(`${change.kind} change: endpoint ${id} differs between incremental and full recompute (${diffSize(left)} entries)`);
        if (!incremental.has(id)) throw new Error(`${change.kind} change: full recompute changed endpoint ${id}, the incremental update did not`);
      }
      return out[out.length - 1].totalMs;
    };

    const samples = { oursPolicy: [] as ChangeSample[], basePolicy: [] as ChangeSample[], oursLabel: [] as ChangeSample[], baseLabel: [] as ChangeSample[] };
    const nextPolicy = (): Change => model.nextPolicyChange();
    const nextLabel = (): Change => model.nextLabelChange();
    const warmup = 1;
    await interleave(
      rounds,
      {
        oursPolicy: () => ours(nextPolicy, samples.oursPolicy),
        basePolicy: () => fromScratch(nextPolicy, samples.basePolicy),
        oursLabel: () => ours(nextLabel, samples.oursLabel),
        baseLabel: () => fromScratch(nextLabel, samples.baseLabel),
      },
      {
        warmup,
        onRound: (i) => {
          const last = (list: ChangeSample[], n: number): string => median(list.slice(-n).map((s) => s.totalMs)).toFixed(2);
          ctx.log(
            `round ${i + 1}/${rounds}: policy change ours ${last(samples.oursPolicy, CHANGES_PER_ROUND)} ms vs full ${last(samples.basePolicy, 1)} ms; ` +
              `label change ours ${last(samples.oursLabel, CHANGES_PER_ROUND)} ms vs full ${last(samples.baseLabel, 1)} ms ` +
              `(rss ${(process.memoryUsage().rss / 2 ** 20).toFixed(0)} MiB)`,
          );
        },
      },
    );

    // Read back every touched map (and a sample of the rest) and compare with the engine.
    const verify = new Set(touched);
    const ids = liveMaps.ids();
    // A stride unlike the label changes' (7919), so the sample is mostly untouched endpoints.
    for (let i = 0; i < VERIFY_SAMPLE && ids.length > 0; i++) verify.add(ids[(i * 4099 + 17) % ids.length]);
    let verified = 0;
    for (const id of verify) {
      const map = liveMaps.get(id);
      if (!map) continue;
      const problem = compareMap(map, live.endpointPolicy(id)!.entries);
      if (problem) throw new Error(`endpoint ${id}: policy map does not match the engine: ${problem}`);
      verified++;
    }
    ctx.log(
      `verified ${verified} policy maps against the engine (${touched.size} touched by changes, ${verify.size - touched.size} untouched); ` +
        `${liveMaps.skipped} writes skipped for endpoints without a map`,
    );

    const figure = (change: 'policy' | 'label', what: string, oursAll: ChangeSample[], baseAll: ChangeSample[]): void => {
      const o = oursAll.slice(warmup * CHANGES_PER_ROUND);
      const b = baseAll.slice(warmup);
      const lat = o.map((s) => s.totalMs);
      const baseLat = b.map((s) => s.totalMs);
      const p50 = percentile(lat, 0.5);
      const p99 = percentile(lat, 0.99);
      const baseP50 = percentile(baseLat, 0.5);
      const slowest = o
        .map((s, i) => ({ ms: s.totalMs, wait: s.waitMs, round: Math.floor(i / CHANGES_PER_ROUND) + 1, index: i % CHANGES_PER_ROUND }))
        .sort((x, y) => y.ms - x.ms)
        .slice(0, 3);
      ctx.log(`${change} changes, slowest: ${slowest.map((s) => `${s.ms.toFixed(2)} ms (${s.wait.toFixed(2)} ms waiting for a CPU; round ${s.round}, change ${s.index + 1})`).join(', ')}`);
      ctx.emit({
        metric: 'change_to_enforcement_ms',
        change,
        what,
        value: round(p50, 3),
        unit: 'ms',
        baseline: BASELINE,
        baseline_value: round(baseP50, 1),
        ratio: round(p50 / baseP50, 5),
        better: 'lower',
        p50: round(p50, 3),
        p99: round(p99, 3),
        max: round(Math.max(...lat), 3),
        samples: lat.length,
        cpu_wait_p99_ms: round(percentile(o.map((s) => s.waitMs), 0.99), 3),
        wall_minus_cpu_wait_p99_ms: round(percentile(o.map((s) => s.totalMs - s.waitMs), 0.99), 3),
        compute_p50_ms: round(percentile(o.map((s) => s.computeMs), 0.5), 3),
        write_p50_ms: round(percentile(o.map((s) => s.writeMs), 0.5), 3),
        endpoints_written: median(o.map((s) => s.endpoints)),
        entries_written: median(o.map((s) => s.entries)),
        baseline_p99: round(percentile(baseLat, 0.99), 1),
        baseline_samples: baseLat.length,
        baseline_compute_p50_ms: round(percentile(b.map((s) => s.computeMs), 0.5), 1),
        baseline_write_p50_ms: round(percentile(b.map((s) => s.writeMs), 0.5), 3),
        baseline_endpoints_written: median(b.map((s) => s.endpoints)),
        baseline_entries_written: median(b.map((s) => s.entries)),
        rounds,
        endpoints: endpointIds.length,
        endpoints_programmed: programmed,
        policies: model.rules.length,
        scope: 'in-process: engine update + policy map writes; no store round-trip, identity allocation or ipcache update',
        target_ms: CHANGE_TARGET_MS,
        target_applies_to: 'p99',
        meets_target: p99 < CHANGE_TARGET_MS,
      });
    };
    figure('policy', 'one rule upserted (ports changed), selecting 10 endpoints', samples.oursPolicy, samples.basePolicy);
    figure(
      'label',
      'one endpoint relabelled to a new identity: upsertIdentity(new) + upsertEndpoint + deleteIdentity(old), each written as it comes',
      samples.oursLabel,
      samples.baseLabel,
    );
  } finally {
    for (const maps of open) maps.close();
  }
}

/** Differences between a map's contents and the engine's entries, or undefined when they agree. */
function compareMap(map: PolicyBpfMap, entries: ReadonlyMap<string, PolicyMapEntry>): string | undefined {
  let count = 0;
  for (const [rawKey, value] of map.entries()) {
    count++;
    const key = policyKeyString(decodeKey(rawKey));
    const want = entries.get(key);
    if (!want) return `extra entry ${key}`;
    const deny = (value.flags & POLICY_F_DENY) !== 0;
    if (deny !== want.deny || value.cookie !== want.cookie) return `entry ${key} is deny=${deny} cookie=${value.cookie}, want deny=${want.deny} cookie=${want.cookie}`;
  }
  return count === entries.size ? undefined : `${count} entries, want ${entries.size}`;
}
