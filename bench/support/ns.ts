/**
 * Plumbing for the benches that build network topologies: a cleanup stack that runs even when a
 * bench fails, uniquely named network namespaces, and commands run inside them.
 *
 * Commands enter a namespace with `nsenter --net` (not `ip netns exec`, which remounts /sys and
 * hides bpffs). Every namespace, process and directory made here is registered with the Cleanups
 * it was made under, and only those are removed: nothing is ever looked up or killed by name.
 * @module
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

/** Every Cleanups not yet run: what a SIGINT or SIGTERM of the bench must still undo. */
const pending = new Set<Cleanups>();

/**
 * A bench stopped by Ctrl-C or `kill` undoes what it made before it exits (a kill -9 cannot be
 * caught: its children at least die with it, see spawnInNs).
 */
function onStopSignal(signal: NodeJS.Signals): void {
  process.stderr.write(`bench: ${signal}: cleaning up\n`);
  const all = [...pending];
  const runAll = () => Promise.allSettled(all.map((cleanups) => cleanups.run()));
  // Twice: the bench goes on until exit, and what it made during the first pass is undone in the second.
  void runAll()
    .then(runAll)
    .then(() => process.exit(signal === 'SIGINT' ? 130 : 143));
}

/** Undo steps, run last-in first-out; a failing step is logged and the rest still run. */
export class Cleanups {
  readonly #steps: { what: string; step: () => unknown }[] = [];
  readonly #log: (message: string) => void;

  constructor(log: (message: string) => void = (message) => process.stderr.write(`${message}\n`)) {
    this.#log = log;
    if (pending.size === 0) {
      process.once('SIGINT', onStopSignal);
      process.once('SIGTERM', onStopSignal);
    }
    pending.add(this);
  }

  /** Registers `step` to run at cleanup time, before every step registered earlier. */
  defer(what: string, step: () => unknown): void {
    this.#steps.push({ what, step });
  }

  async run(): Promise<void> {
    while (this.#steps.length > 0) {
      const { what, step } = this.#steps.pop()!;
      try {
        await step();
      } catch (error) {
        this.#log(`cleanup: ${what}: ${error instanceof Error ? error.message : String(error)}`);
      }
    }
    pending.delete(this);
    if (pending.size === 0) {
      process.off('SIGINT', onStopSignal);
      process.off('SIGTERM', onStopSignal);
    }
  }
}

export function uniqueName(prefix: string): string {
  return `${prefix}-${randomBytes(3).toString('hex')}`;
}

/** Runs a command and returns its stdout; rejects with its stderr in the message. */
export async function sh(command: string, args: readonly string[], options: { input?: string; timeoutMs?: number } = {}): Promise<string> {
  if (options.input !== undefined) return shWithInput(command, args, options.input);
  try {
    const { stdout } = await execFileAsync(command, [...args], { encoding: 'utf8', timeout: options.timeoutMs ?? 60_000, maxBuffer: 64 << 20 });
    return stdout;
  } catch (error) {
    const stderr = (error as { stderr?: string }).stderr?.trim();
    throw new Error(`${command} ${args.join(' ')}: ${stderr || (error as Error).message}`);
  }
}

function shWithInput(command: string, args: readonly string[], input: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, [...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      if (code === 0) resolve(stdout);
      else reject(new Error(`${command} ${args.join(' ')}: ${stderr.trim() || `exit ${code}`}`));
    });
    child.stdin.end(input);
  });
}

/** The path of a named namespace, as `ip netns add` creates it. */
export function netnsPath(name: string): string {
  return `/run/netns/${name}`;
}

/** Creates a namespace (with lo up) that `cleanups` deletes. */
export async function addNetns(cleanups: Cleanups, prefix: string): Promise<string> {
  const name = uniqueName(prefix);
  await sh('ip', ['netns', 'add', name]);
  cleanups.defer(`ip netns del ${name}`, () => sh('ip', ['netns', 'del', name]));
  await sh('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
  return name;
}

/** Runs a command inside the namespace and returns its stdout. */
export function inNs(netns: string, command: string, args: readonly string[], timeoutMs = 60_000): Promise<string> {
  return sh('nsenter', [`--net=${netnsPath(netns)}`, command, ...args], { timeoutMs });
}

/**
 * A long-running process inside the namespace, killed (by its pid) at cleanup, and by the kernel
 * should the bench die without cleaning up (setpriv --pdeathsig: nsenter and setpriv exec, so the
 * bench stays its parent).
 */
export function spawnInNs(cleanups: Cleanups, netns: string, command: string, args: readonly string[]): ChildProcess {
  const child = spawn('nsenter', [`--net=${netnsPath(netns)}`, 'setpriv', '--pdeathsig', 'KILL', '--', command, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  cleanups.defer(`stop ${command} (pid ${child.pid})`, () => stopChild(child));
  return child;
}

/** Kills a child we started and waits for it to exit. nsenter execs the command, so the pid is the command's. */
export async function stopChild(child: ChildProcess, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill(signal);
  await exited;
}

/** Resolves once the child prints `marker` on stdout or stderr; rejects if it exits first or times out. */
export function waitForOutput(child: ChildProcess, marker: string | RegExp, timeoutMs = 10_000): Promise<void> {
  return new Promise((resolve, reject) => {
    let seen = '';
    const timer = setTimeout(() => done(new Error(`no "${String(marker)}" within ${timeoutMs} ms; output so far: ${seen.slice(-500)}`)), timeoutMs);
    const onData = (chunk: Buffer): void => {
      seen += chunk.toString();
      if (typeof marker === 'string' ? seen.includes(marker) : marker.test(seen)) done();
    };
    const onExit = (code: number | null): void => done(new Error(`exited (${code}) before printing "${String(marker)}": ${seen.slice(-500)}`));
    function done(error?: Error): void {
      clearTimeout(timer);
      child.stdout?.off('data', onData);
      child.stderr?.off('data', onData);
      child.off('exit', onExit);
      if (error) reject(error);
      else resolve();
    }
    child.stdout?.on('data', onData);
    child.stderr?.on('data', onData);
    child.once('exit', onExit);
  });
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The p-th percentile (0..100) by nearest rank. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) throw new RangeError('percentile of no values');
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1];
}

const CGROUP2_ROOT = existsSync('/sys/fs/cgroup/unified/cgroup.procs') ? '/sys/fs/cgroup/unified' : '/sys/fs/cgroup';

/**
 * A cgroup v2 of the bench's own (never the root), removed at cleanup once what is left in it is
 * moved back to the root.
 */
export function addCgroup(cleanups: Cleanups, prefix: string): string {
  const path = join(CGROUP2_ROOT, uniqueName(prefix));
  mkdirSync(path);
  cleanups.defer(`rmdir ${path}`, () => {
    for (const pid of readFileSync(join(path, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean)) writeFileSync(join(CGROUP2_ROOT, 'cgroup.procs'), pid);
    rmdirSync(path);
  });
  return path;
}
