/**
 * The agent's side of the node proxy. The proxy runs in a child process, not in worker threads:
 * a request that makes a rule's regular expression backtrack, a leak, or a crash in the HTTP
 * machinery then costs the proxy, never the agent's event loop or heap (a worker shares the
 * process: its fatal errors and an out-of-memory end the agent too); its heap is capped; and it is
 * killed and restarted without the agent noticing more than an exit code.
 *
 * Policy stays in force across a restart: the datapath keeps redirecting to the proxy's port, a
 * SYN that arrives while nothing listens is dropped (DROP_PROXY_LOOKUP_FAILED) and retransmitted,
 * and the new process gets the whole policy before it listens.
 * @module
 */
import { fork, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { L7HttpRecord } from '../observer/index.ts';
import { readWireRecords, type FromProxy, type ProxyState, type ToProxy } from './protocol.ts';

export interface ProxySupervisorOptions {
  port: number;
  log: Logger;
  onRecords: (records: L7HttpRecord[], lost: number) => void;
  /** Heap cap of the proxy process, MiB. */
  maxHeapMb?: number;
  /** The datapath's ciliate_proxy4 pin (HttpProxyOptions.origins). */
  originsPin?: string;
  /** The datapath's ciliate_proxy_listeners pin (HttpProxyOptions.listeners). */
  listenersPin?: string;
}

export interface ProxyStatus {
  pid: number | undefined;
  ready: boolean;
  restarts: number;
  lastExit?: string;
  stateRevision: number;
}

const BACKOFF_MIN_MS = 100;
const BACKOFF_MAX_MS = 5_000;
/** Up this long, a process counts as healthy: the next crash restarts at once again. */
const HEALTHY_MS = 30_000;

export class ProxySupervisor {
  readonly #options: ProxySupervisorOptions;
  #child: ChildProcess | undefined;
  #state: ProxyState = { revision: 0, identities: [], policies: [] };
  #ready = false;
  #stopping = false;
  #restarts = 0;
  #failures = 0;
  #lastExit: string | undefined;
  #timer: NodeJS.Timeout | undefined;
  #readyWaiters: ((error?: Error) => void)[] = [];

  constructor(options: ProxySupervisorOptions) {
    this.#options = options;
  }

  /** Starts the proxy process and waits until it listens. */
  start(timeoutMs = 15_000): Promise<void> {
    this.#spawn();
    return this.whenReady(timeoutMs);
  }

  whenReady(timeoutMs: number): Promise<void> {
    if (this.#ready) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the L7 proxy did not listen on 127.0.0.1:${this.#options.port} within ${timeoutMs} ms${this.#lastExit ? ` (last exit: ${this.#lastExit})` : ''}`)), timeoutMs);
      this.#readyWaiters.push((error) => {
        clearTimeout(timer);
        if (error) reject(error);
        else resolve();
      });
    });
  }

  /** What the proxy judges with from now on (sent at once, and to every later process). */
  setState(state: ProxyState): void {
    this.#state = state;
    this.#send({ type: 'state', state });
  }

  status(): ProxyStatus {
    return { pid: this.#child?.pid, ready: this.#ready, restarts: this.#restarts, lastExit: this.#lastExit, stateRevision: this.#state.revision };
  }

  /** The proxy process's pid (tests kill it to see it come back). */
  get pid(): number | undefined {
    return this.#child?.pid;
  }

  async stop(): Promise<void> {
    this.#stopping = true;
    clearTimeout(this.#timer);
    const child = this.#child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 2_000);
    await exited;
    clearTimeout(timer);
  }

  #send(message: ToProxy): void {
    const child = this.#child;
    if (child?.connected) child.send(message);
  }

  #spawn(): void {
    const { port, log } = this.#options;
    const startedAt = Date.now();
    const child = fork(join(import.meta.dirname, 'child.ts'), [], {
      env: { ...process.env, CILIATE_PROXY_PORT: String(port), CILIATE_PROXY_PARENT: String(process.pid), CILIATE_PROXY_ORIGINS: this.#options.originsPin ?? '', CILIATE_PROXY_LISTENERS: this.#options.listenersPin ?? '' },
      // Rules are regular expressions and requests hostile: past V8's backtrack limit a match
      // falls back to its linear-time engine (RE2's guarantee, which Cilium's Envoy has).
      execArgv: [`--max-old-space-size=${this.#options.maxHeapMb ?? 256}`, '--enable-experimental-regexp-engine-on-excessive-backtracks'],
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    this.#child = child;
    this.#ready = false;
    child.on('message', (message: FromProxy) => {
      if (message.type === 'ready') {
        this.#ready = true;
        log.info({ pid: child.pid, port: message.port }, 'L7 proxy listening');
        for (const wake of this.#readyWaiters.splice(0)) wake();
      } else if (message.type === 'records') {
        this.#options.onRecords(readWireRecords(message.records), message.lost);
      } else if (message.type === 'fatal') {
        this.#lastExit = message.message;
        log.error({ pid: child.pid, reason: message.message }, 'L7 proxy failed');
      }
    });
    child.on('error', (error) => log.warn({ err: error }, 'L7 proxy process error'));
    child.on('exit', (code, signal) => {
      if (this.#child === child) this.#child = undefined;
      this.#ready = false;
      if (this.#stopping) return;
      this.#lastExit = this.#lastExit && code === 1 ? this.#lastExit : signal ? `signal ${signal}` : `exit code ${code}`;
      this.#failures = Date.now() - startedAt > HEALTHY_MS ? 1 : this.#failures + 1;
      const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** (this.#failures - 1));
      log.warn({ pid: child.pid, code, signal, restartInMs: delay }, 'L7 proxy exited; restarting it');
      this.#timer = setTimeout(() => {
        this.#restarts++;
        this.#spawn();
      }, delay);
    });
    // The policy first: the process listens only once it has it.
    child.send({ type: 'state', state: this.#state } satisfies ToProxy);
  }
}
