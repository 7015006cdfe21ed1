/**
 * Benchmark runner: `npm run bench -- <name> [more names] [--rounds N]` runs bench/<name>.ts.
 *
 * A bench is any bench/<name>.ts exporting `run(ctx: BenchContext)` (see bench/lib.ts), so adding
 * one needs no registration here. Figures go to stdout as JSON lines; everything else to stderr.
 * Exit codes: 0 all ran, 1 a bench failed, 2 bad usage (unknown bench, no bench named).
 * @module
 */
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { type BenchContext, type BenchModule, emit, log, ROOT } from './lib.ts';

/** Files in bench/ that are not benches. */
const NOT_BENCHES = new Set(['run', 'lib']);

function availableBenches(): string[] {
  return readdirSync(join(ROOT, 'bench'))
    .filter((file) => file.endsWith('.ts') && !file.endsWith('.test.ts') && !file.endsWith('.d.ts'))
    .map((file) => file.slice(0, -'.ts'.length))
    .filter((name) => !NOT_BENCHES.has(name))
    .sort();
}

function usage(problem: string): never {
  log(`bench: ${problem}`);
  log('usage: npm run bench -- <name> [more names] [--rounds N]');
  log(`available benches: ${availableBenches().join(', ') || '(none)'}`);
  process.exit(2);
}

function isBenchModule(value: unknown): value is BenchModule {
  return typeof value === 'object' && value !== null && typeof (value as { run?: unknown }).run === 'function';
}

interface Options {
  names: string[];
  rounds: number | undefined;
}

function parseArgs(argv: readonly string[]): Options {
  const names: string[] = [];
  let rounds: number | undefined;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--rounds' || arg.startsWith('--rounds=')) {
      const text = arg.includes('=') ? arg.slice(arg.indexOf('=') + 1) : argv[++i];
      rounds = Number(text);
      if (!Number.isInteger(rounds) || rounds < 1) usage(`--rounds wants a positive integer, got ${text ?? 'nothing'}`);
    } else if (arg === '--list' || arg === '-l') {
      // Listing is for humans, so it goes to stderr like the rest of the diagnostics.
      for (const name of availableBenches()) log(name);
      process.exit(0);
    } else if (arg.startsWith('-')) {
      usage(`unknown option ${arg}`);
    } else {
      names.push(arg);
    }
  }
  return { names, rounds };
}

async function main(): Promise<void> {
  const { names, rounds } = parseArgs(process.argv.slice(2));
  if (names.length === 0) usage('no bench named');
  const available = new Set(availableBenches());
  // Check every name before running anything: a typo in the last name should not cost a full run.
  const unknown = names.filter((name) => !available.has(name));
  if (unknown.length > 0) usage(`unknown bench${unknown.length > 1 ? 'es' : ''}: ${unknown.join(', ')}`);

  let failed = false;
  for (const name of names) {
    const started = performance.now();
    try {
      const loaded: unknown = await import(pathToFileURL(join(ROOT, 'bench', `${name}.ts`)).href);
      if (!isBenchModule(loaded)) throw new TypeError(`bench/${name}.ts does not export run(ctx)`);
      const ctx: BenchContext = {
        name,
        rounds,
        emit: (figure) => emit({ bench: name, ...figure }),
        log: (message) => log(`${name}: ${message}`),
      };
      log(`bench ${name}: running`);
      await loaded.run(ctx);
      log(`bench ${name}: done in ${((performance.now() - started) / 1000).toFixed(1)} s`);
    } catch (error) {
      failed = true;
      log(`bench ${name}: failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
    }
  }
  process.exitCode = failed ? 1 : 0;
}

await main();
