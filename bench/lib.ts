/**
 * Shared helpers of the benchmarks: the JSON-lines output, medians, interleaved measurement, and
 * building/running the C baselines.
 *
 * Output contract: stdout carries only JSON lines, one per figure, so that `npm run bench` can be
 * piped into jq or a results file; everything meant for humans goes to stderr through `log`.
 *
 * Measurement contract: the machine is shared and noisy, so a figure is never compared with a
 * number from another run. Ours and the baseline are measured side by side in the same run, in
 * alternating rounds (`interleave`), and we report the medians of the rounds and their ratio.
 * @module
 */
import { execFile, execFileSync } from 'node:child_process';
import { mkdirSync, renameSync, statSync, unlinkSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

/** The repository root (bench/ sits directly under it). */
export const ROOT: string = resolve(dirname(fileURLToPath(import.meta.url)), '..');
/** Where C baselines are compiled to; under build/, which git ignores. */
export const BUILD_DIR: string = join(ROOT, 'build', 'bench');

/** A JSON-compatible value for the extra fields of a figure. */
export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };

/** A figure without the bench's name, which the harness fills in. */
export interface FigureBody {
  metric: string;
  value: number;
  unit: string;
  /** What the figure is compared with, in words ("C bpf(2) same map"); null when nothing is. */
  baseline: string | null;
  /** ours / baseline_value; null without a baseline. */
  ratio: number | null;
  /** Extra fields: baseline_value, better, rounds, target... */
  [extra: string]: JsonValue | undefined;
}

/** One measured figure: one JSON line on stdout. */
export interface Figure extends FigureBody {
  bench: string;
}

/** Prints one figure as exactly one JSON line on stdout. */
export function emit(figure: Figure): void {
  // Written in one call so lines from a figure can never be split by other output.
  process.stdout.write(`${JSON.stringify(figure)}\n`);
}

/** Diagnostics for humans: stderr, so stdout stays machine-readable. */
export function log(message: string): void {
  process.stderr.write(`${message}\n`);
}

/** The median; the mean of the two middle values for an even count. Throws on an empty list. */
export function median(values: readonly number[]): number {
  if (values.length === 0) throw new RangeError('median of no values');
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** Rounds to `digits` decimals: the figures are noisy, more digits would only be noise. */
export function round(value: number, digits = 1): number {
  const scale = 10 ** digits;
  return Math.round(value * scale) / scale;
}

/** A variant measures one sample (a cost or a rate) each time it is called. */
export type Variant = () => number | Promise<number>;

export interface InterleaveOptions {
  /** Calls of every variant made before the measured rounds and thrown away (JIT, caches). Default 1. */
  warmup?: number;
  /** Called after each round with the samples so far, e.g. for progress on stderr. */
  onRound?: (round: number, samples: Readonly<Record<string, readonly number[]>>) => void;
}

/**
 * Runs the variants alternately for `rounds` rounds and returns each variant's samples in order.
 * Every round runs each variant once; odd rounds run them in reverse order, so that no variant
 * always runs right after the same neighbour (a spawn, a GC) or always first in a round.
 * Sequential by design: variants never overlap, they would compete for the same CPUs.
 */
export async function interleave<K extends string>(
  rounds: number,
  variants: Readonly<Record<K, Variant>>,
  options: InterleaveOptions = {},
): Promise<Record<K, number[]>> {
  const names = Object.keys(variants) as K[];
  const samples = Object.fromEntries(names.map((name) => [name, [] as number[]])) as Record<K, number[]>;
  for (let i = 0; i < (options.warmup ?? 1); i++) {
    for (const name of names) await variants[name]();
  }
  for (let round = 0; round < rounds; round++) {
    const order = round % 2 === 0 ? names : [...names].reverse();
    for (const name of order) samples[name].push(await variants[name]());
    options.onRound?.(round, samples);
  }
  return samples;
}

/**
 * Compiles a C baseline from bench/c/<name>.c into build/bench/<name> with gcc -O2, unless the
 * binary is newer than the source. Returns the binary's path. Compiler messages go to stderr.
 */
export function buildC(name: string, extraFlags: readonly string[] = []): string {
  const source = join(ROOT, 'bench', 'c', `${name}.c`);
  const output = join(BUILD_DIR, name);
  const sourceTime = statSync(source).mtimeMs;
  let outputTime = -1;
  try {
    outputTime = statSync(output).mtimeMs;
  } catch {
    // Not built yet.
  }
  if (outputTime >= sourceTime) return output;
  mkdirSync(BUILD_DIR, { recursive: true });
  // Compile to a private name and rename: two bench runs at once never see a half-written binary.
  const temp = `${output}.${process.pid}.tmp`;
  log(`bench: compiling ${basename(source)} -> ${output}`);
  try {
    execFileSync('gcc', ['-O2', '-Wall', '-Wextra', ...extraFlags, '-o', temp, source], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    renameSync(temp, output);
  } catch (error) {
    try {
      unlinkSync(temp);
    } catch {
      // Nothing was written.
    }
    throw error;
  }
  return output;
}

/** Runs a program that prints one JSON object on stdout and returns its numeric fields. */
export async function runJson(binary: string, args: readonly string[]): Promise<Record<string, number>> {
  const { stdout } = await execFileAsync(binary, args, { encoding: 'utf8' });
  const parsed: unknown = JSON.parse(stdout);
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new TypeError(`${basename(binary)} printed ${stdout.trim()}, not a JSON object`);
  }
  const out: Record<string, number> = {};
  for (const [key, value] of Object.entries(parsed)) {
    if (typeof value === 'number') out[key] = value;
  }
  return out;
}

/** Nanoseconds elapsed since `start` (from process.hrtime.bigint()), as a number. */
export function elapsedNs(start: bigint): number {
  return Number(process.hrtime.bigint() - start);
}

/** What a bench module receives from bench/run.ts. */
export interface BenchContext {
  /** The bench's name, as given on the command line; the `bench` field of its figures. */
  readonly name: string;
  /** Rounds requested with --rounds, when given; each bench has its own default. */
  readonly rounds: number | undefined;
  /** `emit` with `bench` filled in. */
  emit(figure: FigureBody): void;
  log(message: string): void;
}

/** The shape of bench/<name>.ts. */
export interface BenchModule {
  /** One line for the list of benches. */
  readonly description?: string;
  run(ctx: BenchContext): Promise<void> | void;
}
