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
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { request } from 'node:https';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';

export interface EtcdInstance {
  /** Client URLs, e.g. `['http://127.0.0.1:40123']` (`https://` when started with `tls`). */
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
  /**
   * Serve clients over https with these files (from `createTestPki`); with `clientCertAuth`, etcd
   * also demands a client certificate signed by `caFile`. The health check then uses `client`.
   */
  readonly tls?: {
    readonly pki: TestPki;
    readonly clientCertAuth?: boolean;
  };
}

/** A throw-away CA with certificates for etcd (127.0.0.1 by default) and clients; `other` is a second, unrelated CA. */
export interface TestPki {
  readonly dir: string;
  readonly caFile: string;
  readonly server: { readonly certFile: string; readonly keyFile: string };
  /** Client certificate with CN `root`, signed by `caFile`. */
  readonly client: { readonly certFile: string; readonly keyFile: string };
  /** A CA etcd does not trust, and a client certificate it signed. */
  readonly other: { readonly caFile: string; readonly certFile: string; readonly keyFile: string };
}

function openssl(cwd: string, args: readonly string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile('openssl', args, { cwd }, (error, _stdout, stderr) => {
      if (error) reject(new Error(`createTestPki: openssl ${args.join(' ')} failed: ${stderr || error.message}`));
      else resolve();
    });
  });
}

/**
 * Generates a CA, an etcd server certificate for `serverIps` (default 127.0.0.1), a client
 * certificate, and a second CA with its own client certificate, in a temp dir that `t.after`
 * removes. Needs the `openssl` CLI (Node's crypto cannot issue X.509 certificates).
 */
export async function createTestPki(t: TestContext, serverIps: readonly string[] = ['127.0.0.1']): Promise<TestPki> {
  const dir = await mkdtemp(join(tmpdir(), 'ciliate-pki-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const ca = async (name: string): Promise<void> =>
    openssl(dir, ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.crt`, '-days', '1', '-subj', `/CN=${name}`]);
  const issue = async (name: string, cn: string, issuer: string, extensions: string): Promise<void> => {
    await writeFile(join(dir, `${name}.ext`), extensions);
    await openssl(dir, ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${cn}`]);
    await openssl(dir, ['x509', '-req', '-in', `${name}.csr`, '-CA', `${issuer}.crt`, '-CAkey', `${issuer}.key`, '-CAcreateserial', '-out', `${name}.crt`, '-days', '1', '-extfile', `${name}.ext`]);
  };
  await ca('ca');
  await ca('other-ca');
  await issue('server', 'etcd', 'ca', `subjectAltName=${serverIps.map((ip) => `IP:${ip}`).join(',')}\nextendedKeyUsage=serverAuth,clientAuth\n`);
  await issue('client', 'root', 'ca', 'extendedKeyUsage=clientAuth\n');
  await issue('other-client', 'root', 'other-ca', 'extendedKeyUsage=clientAuth\n');
  const pair = (name: string) => ({ certFile: join(dir, `${name}.crt`), keyFile: join(dir, `${name}.key`) });
  return {
    dir,
    caFile: join(dir, 'ca.crt'),
    server: pair('server'),
    client: pair('client'),
    other: { caFile: join(dir, 'other-ca.crt'), ...pair('other-client') },
  };
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

interface HealthTls {
  readonly ca: Buffer;
  readonly cert: Buffer;
  readonly key: Buffer;
}

/** Whether etcd's /health endpoint reports healthy (its raft has a leader and it serves reads). */
async function healthy(clientUrl: string, tls: HealthTls | undefined): Promise<boolean> {
  if (tls !== undefined) return healthyOverTls(clientUrl, tls);
  try {
    const response = await fetch(`${clientUrl}/health`, { signal: AbortSignal.timeout(1000) });
    if (!response.ok) return false;
    const body = (await response.json()) as { health?: string };
    return body.health === 'true';
  } catch {
    return false;
  }
}

/** The https form of `healthy`: fetch() cannot be given a CA or client certificate. */
function healthyOverTls(clientUrl: string, tls: HealthTls): Promise<boolean> {
  return new Promise((resolve) => {
    const req = request(`${clientUrl}/health`, { ...tls, timeout: 1000 }, (response) => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => (body += chunk));
      response.on('end', () => {
        try {
          resolve(response.statusCode === 200 && (JSON.parse(body) as { health?: string }).health === 'true');
        } catch {
          resolve(false);
        }
      });
      response.on('error', () => resolve(false));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(false));
    req.end();
  });
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
  const tls = options?.tls;
  const clientUrl = `${tls ? 'https' : 'http'}://127.0.0.1:${clientPort}`;
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
    ...(tls ? ['--cert-file', tls.pki.server.certFile, '--key-file', tls.pki.server.keyFile] : []),
    // etcd 3.4 demands client certificates whenever it has a trusted CA, --client-cert-auth or not.
    ...(tls?.clientCertAuth ? ['--client-cert-auth', '--trusted-ca-file', tls.pki.caFile] : []),
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

  const healthTls = tls && { ca: readFileSync(tls.pki.caFile), cert: readFileSync(tls.pki.client.certFile), key: readFileSync(tls.pki.client.keyFile) };
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
      if (await healthy(clientUrl, healthTls)) return;
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
