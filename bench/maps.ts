/**
 * `maps`: what BpfMap costs over the bare syscall. TypeScript single lookups, single updates and
 * batch updates are measured against bench/c/map-syscall.c doing the same operations on a map of
 * the same shape (hash, u32 -> u64, 65536 entries, KEYS keys pre-filled), in interleaved rounds.
 *
 * Figures (costs, so `better` is "lower" and ratio = TS / C):
 *   lookup_ns                        BpfMap.lookup            vs C BPF_MAP_LOOKUP_ELEM
 *   update_ns                        BpfMap.update            vs C BPF_MAP_UPDATE_ELEM
 *   batch_update_ns_per_elem         BpfMap.updateBatchRaw    vs C BPF_MAP_UPDATE_BATCH (target <= 700 ns)
 *   batch_update_codec_ns_per_elem   BpfMap.updateBatch       vs C BPF_MAP_UPDATE_BATCH
 * @module
 */
import { u32, u64 } from '../src/ebpf/codec.ts';
import { MapType } from '../src/ebpf/internal/constants.ts';
import { BpfMap } from '../src/ebpf/map.ts';
import { type BenchContext, buildC, elapsedNs, interleave, median, round, runJson } from './lib.ts';

export const description = 'BpfMap lookup/update/batch update vs the same bpf(2) calls from C';

/** Keys pre-filled and cycled through by the single-op loops; lookups always hit. */
const KEYS = 10_000;
/** Timed single operations per sample: long enough (~0.2 s) that timer and spawn noise vanish. */
const OPS = 200_000;
/** Entries per batch call; keys 0..BATCH-1, all already present, so every element is a replace. */
const BATCH = 10_000;
/** Batch calls per sample. */
const BATCH_REPS = 20;
const DEFAULT_ROUNDS = 7;
/** Budget for BpfMap.updateBatchRaw per element. */
const BATCH_TARGET_NS = 700;

const C_BASELINE = 'C bpf(2) same map';
const C_BATCH_BASELINE = 'C BPF_MAP_UPDATE_BATCH same map';

export async function run(ctx: BenchContext): Promise<void> {
  if (process.getuid?.() !== 0) ctx.log('not running as root: creating BPF maps will probably fail');
  const binary = buildC('map-syscall');
  const rounds = ctx.rounds ?? DEFAULT_ROUNDS;

  const map = BpfMap.create({ type: MapType.HASH, keySize: 4, valueSize: 8, maxEntries: 65536, name: 'bench_maps' }, u32, u64);
  try {
    // Precomputed so that the loops time the map API, not BigInt allocation (C's values are free too).
    const values = Array.from({ length: Math.max(KEYS, BATCH) }, (_, i) => BigInt(i) * 3n);
    for (let k = 0; k < KEYS; k++) map.update(k, values[k]);
    if (map.lookup(KEYS - 1) !== values[KEYS - 1]) throw new Error('pre-fill check failed: lookup does not return what update wrote');

    const rawKeys = Buffer.alloc(BATCH * 4);
    const rawValues = Buffer.alloc(BATCH * 8);
    for (let i = 0; i < BATCH; i++) {
      rawKeys.writeUInt32LE(i, i * 4);
      rawValues.writeBigUInt64LE(values[i], i * 8);
    }
    const entries: Array<readonly [number, bigint]> = Array.from({ length: BATCH }, (_, i) => [i, values[i]] as const);

    const cSample = async (mode: string, field: string): Promise<number> => {
      const out = await runJson(binary, [mode, String(KEYS), String(OPS), String(BATCH), String(BATCH_REPS)]);
      const value = out[field];
      if (value === undefined) throw new Error(`map-syscall ${mode} printed no ${field}`);
      return value;
    };

    const samples = await interleave(
      rounds,
      {
        tsLookup: () => {
          let key = 0;
          const start = process.hrtime.bigint();
          for (let i = 0; i < OPS; i++) {
            if (map.lookup(key) === undefined) throw new Error(`key ${key} missing`);
            if (++key === KEYS) key = 0;
          }
          return elapsedNs(start) / OPS;
        },
        cLookup: () => cSample('lookup', 'lookup_ns'),
        tsUpdate: () => {
          let key = 0;
          const start = process.hrtime.bigint();
          for (let i = 0; i < OPS; i++) {
            map.update(key, values[key]);
            if (++key === KEYS) key = 0;
          }
          return elapsedNs(start) / OPS;
        },
        cUpdate: () => cSample('update', 'update_ns'),
        tsBatchRaw: () => {
          const start = process.hrtime.bigint();
          for (let r = 0; r < BATCH_REPS; r++) {
            const written = map.updateBatchRaw(rawKeys, rawValues, BATCH);
            if (written !== BATCH) throw new Error(`updateBatchRaw wrote ${written} of ${BATCH}`);
          }
          return elapsedNs(start) / (BATCH_REPS * BATCH);
        },
        tsBatchCodec: () => {
          const start = process.hrtime.bigint();
          for (let r = 0; r < BATCH_REPS; r++) {
            const written = map.updateBatch(entries);
            if (written !== BATCH) throw new Error(`updateBatch wrote ${written} of ${BATCH}`);
          }
          return elapsedNs(start) / (BATCH_REPS * BATCH);
        },
        cBatch: () => cSample('batch', 'batch_update_ns_per_elem'),
      },
      {
        onRound: (i, soFar) => {
          const last = (name: string): string => round(soFar[name][i]).toString();
          ctx.log(
            `round ${i + 1}/${rounds}: lookup ts ${last('tsLookup')} c ${last('cLookup')}, update ts ${last('tsUpdate')} ` +
              `c ${last('cUpdate')}, batch/elem raw ${last('tsBatchRaw')} codec ${last('tsBatchCodec')} c ${last('cBatch')} (ns)`,
          );
        },
      },
    );

    const figure = (metric: string, ours: number[], theirs: number[], baseline: string, extra: Record<string, number | boolean> = {}): void => {
      const value = median(ours);
      const baselineValue = median(theirs);
      ctx.emit({
        metric,
        value: round(value),
        unit: 'ns',
        baseline,
        baseline_value: round(baselineValue),
        ratio: round(value / baselineValue, 2),
        better: 'lower',
        rounds,
        value_min: round(Math.min(...ours)),
        baseline_min: round(Math.min(...theirs)),
        ...extra,
      });
    };
    figure('lookup_ns', samples.tsLookup, samples.cLookup, C_BASELINE, { ops: OPS, keys: KEYS });
    figure('update_ns', samples.tsUpdate, samples.cUpdate, C_BASELINE, { ops: OPS, keys: KEYS });
    figure('batch_update_ns_per_elem', samples.tsBatchRaw, samples.cBatch, C_BATCH_BASELINE, {
      batch: BATCH,
      target: BATCH_TARGET_NS,
      meets_target: median(samples.tsBatchRaw) <= BATCH_TARGET_NS,
    });
    figure('batch_update_codec_ns_per_elem', samples.tsBatchCodec, samples.cBatch, C_BATCH_BASELINE, { batch: BATCH });
  } finally {
    map.close();
  }
}
