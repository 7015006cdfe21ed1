/**
 * Test helper: a real, throw-away single-member etcd on loopback.
 *
 * `startEtcd(t)` picks two free ports (binding port 0 first), starts `etcd` with a fresh data
 * directory under the system temp dir, waits until it answers on its client URL, and registers
 * `t.after` cleanup that SIGKILLs exactly the process it started and removes the data directory,
 * also when the test fails. Each call gives an independent cluster, so revisions start at 1
 * (store revision 0) and tests share nothing.
 *
 * Needs the `etcd` binary (Debian's etcd-server; scripts/setup.sh installs it). Set `ETCD_BIN` to
 * use another one.
 *
 * @example
 * test('agents share state', async (t) => {
 *   const etcd = await startEtcd(t);
 *   const store = await EtcdStateStore.connect({ endpoints: etcd.endpoints });
 *   t.after(() => store.close());
 * });
 * @module
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';

export interface EtcdInstance {
  /** Client URLs, e.g. `['http://127.0.0.1:40123']`. */
  readonly endpoints: string[];
  readonly clientUrl: string;
  readonly peerUrl: string;
  readonly dataDir: string;
  /** Pid of the current etcd process (a restart changes it). */
  readonly pid: number;
  /** The etcd process's output so far (bounded), for failure messages. */
  output(): string;
  /** SIGKILLs the process now (idempotent; cleanup does it anyway). Resolves once it has exited. */
  kill(): Promise<void>;
  /**
   * Kills etcd if it runs and starts it again on the same ports and data directory: its data and
   * revisions survive, as after a crash. Resolves once it answers again.
   */
  restart(): Promise<void>;
}

export interface StartEtcdOptions {
  /** How long to wait for etcd to answer. Default 20 000 ms. */
  readonly startTimeoutMs?: number;
  /** Extra command-line flags, e.g. `['--auto-compaction-retention=1']`. */
  readonly args?: readonly string[];
}

/** A port the kernel just handed out for 127.0.0.1 (bound, then released). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => (port > 0 ? resolve(port) : reject(new Error('freePort: no port assigned'))));
    });
  });
}

const MAX_OUTPUT = 64 * 1024;
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Whether etcd's /health endpoint reports healthy (its raft has a leader and it serves reads). */
async function healthy(clientUrl: string): Promise<boolean> {
  try {
    const response = await fetch(`${clientUrl}/health`, { signal: AbortSignal.timeout(1000) });
    if (!response.ok) return false;
    const body = (await response.json()) as { health?: string };
    return body.health === 'true';
  } catch {
    return false;
  }
}

function exited(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

/**
 * Starts a fresh etcd for test `t` and stops it (SIGKILL to its own pid, data dir removed) in
 * `t.after`. Retries once with new ports if the first pick was taken in between.
 */
export async function startEtcd(t: TestContext, options?: StartEtcdOptions): Promise<EtcdInstance> {
  try {
    return await startOnce(t, options);
  } catch (error) {
    if (!/address already in use/i.test(String((error as Error).message))) throw error;
    return startOnce(t, options);
  }
}

async function startOnce(t: TestContext, options?: StartEtcdOptions): Promise<EtcdInstance> {
  const startTimeoutMs = options?.startTimeoutMs ?? 20_000;
  const dataDir = await mkdtemp(join(tmpdir(), 'ciliate-etcd-'));
  const [clientPort, peerPort] = [await freePort(), await freePort()];
  const clientUrl = `http://127.0.0.1:${clientPort}`;
  const peerUrl = `http://127.0.0.1:${peerPort}`;
  const name = 't';
  const args = [
    '--name', name,
    '--data-dir', join(dataDir, 'data'),
    '--listen-client-urls', clientUrl,
    '--advertise-client-urls', clientUrl,
    '--listen-peer-urls', peerUrl,
    '--initial-advertise-peer-urls', peerUrl,
    '--initial-cluster', `${name}=${peerUrl}`,
    '--initial-cluster-state', 'new',
    '--initial-cluster-token', `ciliate-test-${clientPort}`,
    '--logger', 'zap',
    '--log-outputs', 'stderr',
    '--log-level', 'warn',
    // A single member elects itself; short timeouts make that (and so startup) quick.
    '--heartbeat-interval', '20',
    '--election-timeout', '200',
    ...(options?.args ?? []),
  ];
  const bin = process.env.ETCD_BIN ?? 'etcd';
  // etcd 3.4 refuses to start on arm64 unless told the architecture is "unsupported" on purpose.
  const env = process.arch === 'arm64' ? { ...process.env, ETCD_UNSUPPORTED_ARCH: 'arm64' } : process.env;
  let output = '';
  const collect = (chunk: Buffer): void => {
    output += chunk.toString('utf8');
    if (output.length > MAX_OUTPUT) output = output.slice(-MAX_OUTPUT);
  };

  let child: ChildProcess | undefined;
  // Should the test process exit without running t.after (an uncaught error), take etcd along.
  const killOnExit = (): void => {
    if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  };
  process.once('exit', killOnExit);
  const kill = async (): Promise<void> => {
    const current = child;
    if (current === undefined || current.pid === undefined) return;
    // Only the process this helper started, by its own handle (never by name).
    if (current.exitCode === null && current.signalCode === null) current.kill('SIGKILL');
    await exited(current);
  };
  t.after(async () => {
    process.removeListener('exit', killOnExit);
    await kill();
    await rm(dataDir, { recursive: true, force: true });
  });

  const launch = async (): Promise<void> => {
    const current = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
    child = current;
    current.stdout!.on('data', collect);
    current.stderr!.on('data', collect);
    let spawnError: Error | undefined;
    current.once('error', (error) => {
      spawnError = error;
    });
    const deadline = Date.now() + startTimeoutMs;
    for (;;) {
      if (spawnError) {
        const hint = (spawnError as NodeJS.ErrnoException).code === 'ENOENT' ? ` (is etcd installed? apt-get install etcd-server, or set ETCD_BIN)` : '';
        throw new Error(`startEtcd: cannot run ${bin}: ${spawnError.message}${hint}`);
      }
      if (current.exitCode !== null || current.signalCode !== null) {
        throw new Error(`startEtcd: etcd exited (${current.exitCode ?? current.signalCode}) before answering on ${clientUrl}:\n${output.slice(-4000)}`);
      }
      if (await healthy(clientUrl)) return;
      if (Date.now() > deadline) {
        throw new Error(`startEtcd: etcd did not become healthy on ${clientUrl} within ${startTimeoutMs} ms:\n${output.slice(-4000)}`);
      }
      await sleep(50);
    }
  };
  await launch();

  return {
    endpoints: [clientUrl],
    clientUrl,
    peerUrl,
    dataDir,
    get pid() {
      return child?.pid ?? 0;
    },
    output: () => output,
    kill,
    restart: async () => {
      await kill();
      await launch();
    },
  };
}
