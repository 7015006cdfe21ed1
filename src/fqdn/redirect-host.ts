/**
 * The agent's side of the DNS redirect worker (redirect-worker.ts): starts it, answers what it
 * asks, and starts it again when it dies.
 *
 * A worker thread, not a child process as the HTTP proxy has: the worker's copies of the agent's
 * answers must go stale the instant policy changes (a narrowed `rules.dns` refuses the very next
 * query), which a shared counter gives with no message in between and only threads can share;
 * every query's flow crosses to the agent, which a thread's message port does for a fraction of a
 * pipe's cost. What a process would add, a separate heap, the worker gets from its own heap limit
 * (past it only the worker ends, ERR_WORKER_OUT_OF_MEMORY); an exception in it ends only it. Policy
 * stays in force across a restart: it lives in the agent and the datapath, and a datagram that
 * arrives while nothing listens is dropped and asked again by the pod's resolver library.
 * @module
 */
import { Worker } from 'node:worker_threads';
import type { Logger } from 'pino';
import type { DnsVerdict } from '../policy/index.ts';
import { learnedExpiry, type AnswerAddress } from './cache.ts';
import { fastFlowOutcome, parseFastFlows } from './fast-path.ts';
import type { Resolver } from './proxy.ts';
import { EPOCH_ALL, EPOCH_TOLD, REDIRECT_COUNTERS, tellsLonger, toldKey, type EndpointContext, type FromWorker, type HandledQuery, type RedirectCounter, type RedirectSettings, type RedirectWorkerData, type ToWorker } from './redirect-protocol.ts';

export interface DnsRedirectWorkerOptions extends Omit<RedirectSettings, 'host' | 'retryListenMs'> {
  host?: string;
  retryListenMs?: number;
  /** The local endpoint at `address`. */
  endpoint(address: string): EndpointContext | undefined;
  /** What `endpoint`'s policy lets it ask `resolver` over `protocol`. */
  verdict(endpoint: number, resolver: Resolver, protocol: 'UDP' | 'TCP'): DnsVerdict;
  /** Allows the addresses an answer for `endpoint` holds; the answer waits for it. */
  learned(endpoint: number, addresses: AnswerAddress[]): Promise<void>;
  /** Queries the worker handled, for their flows. */
  handled(queries: HandledQuery[]): void;
  log: Pick<Logger, 'info' | 'warn' | 'error'>;
  /** Heap cap of the worker, MiB. */
  maxHeapMb?: number;
}

const BACKOFF_MIN_MS = 100;
const BACKOFF_MAX_MS = 5_000;
/** Up this long, a worker counts as healthy: the next death restarts it at once again. */
const HEALTHY_MS = 30_000;
const CLOSE_TIMEOUT_MS = 2_000;
/** Addresses kept as told (#toldUntil) before the map is dropped whole and fills again. */
const MAX_TOLD = 65_536;

export class DnsRedirectWorker {
  readonly #options: DnsRedirectWorkerOptions;
  /** [EPOCH_ALL, EPOCH_TOLD] (redirect-protocol.ts). */
  readonly #epoch = new Int32Array(new SharedArrayBuffer(Int32Array.BYTES_PER_ELEMENT * 2));
  readonly #counters = new Float64Array(new SharedArrayBuffer(Float64Array.BYTES_PER_ELEMENT * REDIRECT_COUNTERS.length));
  /** Counts of workers that died, so the counts run on across restarts. */
  readonly #carried = new Float64Array(REDIRECT_COUNTERS.length);
  /** toldKey() → until when (ms) the agent was told an address is allowed. */
  readonly #toldUntil = new Map<string, number>();
  #worker: Worker | undefined;
  #listening = false;
  #failure: string | undefined;
  #restarts = 0;
  #failures = 0;
  #startedAt = 0;
  #stopping = false;
  #timer: NodeJS.Timeout | undefined;
  #settled: (() => void)[] = [];

  constructor(options: DnsRedirectWorkerOptions) {
    this.#options = options;
  }

  /** Starts the worker; resolves once it listens or has said why it cannot (it keeps trying). */
  start(): Promise<void> {
    const settled = new Promise<void>((resolve) => this.#settled.push(resolve));
    this.#spawn();
    return settled;
  }

  /**
   * Marks everything the worker kept from the callbacks stale. Call it synchronously at every
   * change of what they answer, before anything else happens.
   */
  invalidate(): void {
    Atomics.add(this.#epoch, EPOCH_ALL, 1);
  }

  /**
   * As invalidate(), and what the worker kept of addresses already told to the agent goes too:
   * at a change of endpoints (an address may now be another pod's) and when the FQDN cache let
   * addresses go before they expired. A policy change alone leaves those: the agent still holds
   * what it was told.
   */
  invalidateTold(): void {
    this.#toldUntil.clear();
    Atomics.add(this.#epoch, EPOCH_TOLD, 1);
    Atomics.add(this.#epoch, EPOCH_ALL, 1);
  }

  get port(): number {
    return this.#options.port;
  }

  get listening(): boolean {
    return this.#listening;
  }

  /** Why the worker does not listen, when it does not. */
  get failure(): string | undefined {
    return this.#failure;
  }

  get restarts(): number {
    return this.#restarts;
  }

  /** The workers' counts (the listener's and its proxy's) since the first started, as of at most 50 ms ago. */
  stats(): Record<RedirectCounter, number> {
    return Object.fromEntries(REDIRECT_COUNTERS.map((name, i) => [name, this.#carried[i] + this.#counters[i]])) as Record<RedirectCounter, number>;
  }

  /** Ends the worker as a crash would; it is started again. */
  async restart(): Promise<void> {
    await this.#worker?.terminate();
  }

  async close(): Promise<void> {
    this.#stopping = true;
    clearTimeout(this.#timer);
    const worker = this.#worker;
    if (worker === undefined) return;
    const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
    worker.postMessage({ type: 'close' } satisfies ToWorker);
    const timer = setTimeout(() => void worker.terminate(), CLOSE_TIMEOUT_MS);
    await exited;
    clearTimeout(timer);
  }

  #spawn(): void {
    const o = this.#options;
    const { endpoint: _e, verdict: _v, learned: _l, handled: _h, log: _log, maxHeapMb: _m, ...settings } = o;
    const workerData: RedirectWorkerData = {
      ...settings,
      host: o.host ?? '127.0.0.1',
      retryListenMs: o.retryListenMs ?? 5_000,
      epoch: this.#epoch.buffer as SharedArrayBuffer,
      counters: this.#counters.buffer as SharedArrayBuffer,
    };
    // Nothing kept by an earlier worker is trusted by this one.
    this.invalidateTold();
    const worker = new Worker(new URL('./redirect-worker.ts', import.meta.url), {
      workerData,
      resourceLimits: { maxOldGenerationSizeMb: o.maxHeapMb ?? 256 },
    });
    this.#worker = worker;
    this.#startedAt = Date.now();
    worker.on('message', (message: FromWorker) => this.#onMessage(worker, message));
    worker.on('error', (error) => o.log.error({ err: error }, 'the DNS redirect worker failed'));
    worker.on('exit', (code) => this.#onExit(worker, code));
  }

  #reply(worker: Worker, message: ToWorker): void {
    // A worker that died meanwhile has a successor, which asks again.
    if (worker === this.#worker) worker.postMessage(message);
  }

  #onMessage(worker: Worker, message: FromWorker): void {
    const o = this.#options;
    const epoch = () => Atomics.load(this.#epoch, EPOCH_ALL);
    switch (message.type) {
      case 'endpoint':
        this.#reply(worker, { type: 'endpoint', id: message.id, epoch: epoch(), endpoint: o.endpoint(message.address) ?? null });
        return;
      case 'verdict': {
        let verdict: DnsVerdict;
        try {
          verdict = o.verdict(message.endpoint, message.resolver, message.protocol);
        } catch (error) {
          verdict = { allowed: false, reason: `judging the query failed: ${(error as Error).message}` };
        }
        this.#reply(worker, { type: 'verdict', id: message.id, epoch: epoch(), verdict });
        return;
      }
      case 'learned':
        o.learned(message.endpoint, message.addresses).then(
          () => {
            this.#noteTold(message.endpoint, message.addresses, Date.now());
            this.#reply(worker, { type: 'learned', id: message.id });
          },
          (error: unknown) => this.#reply(worker, { type: 'learned', id: message.id, error: (error as Error).message }),
        );
        return;
      case 'handled':
        o.handled(message.queries);
        return;
      case 'fast-flows':
        this.#fastFlows(message.bytes);
        return;
      case 'listening':
        if (this.#failure !== undefined) o.log.info({ port: o.port }, 'listening for pod DNS at last');
        this.#listening = true;
        this.#failure = undefined;
        this.#settle();
        return;
      case 'listen-failed':
        if (this.#failure === undefined) o.log.error({ port: o.port, reason: message.message }, 'cannot listen for pod DNS; DNS that policy sends to the proxy is dropped until it can');
        this.#listening = false;
        this.#failure = message.message;
        this.#settle();
        return;
      case 'warning':
        o.log.warn({ reason: message.message }, 'DNS redirect');
        return;
    }
  }

  /**
   * The fast path's answers: their flows, and their addresses' longer life told to the FQDN cache
   * (at most a second's worth of change is lost if the agent ignores one: the next answer tells it
   * again), without anyone waiting: the fast path let them through only while already allowed.
   */
  #fastFlows(bytes: Uint8Array): void {
    const o = this.#options;
    const now = Date.now();
    const queries: HandledQuery[] = [];
    for (const flow of parseFastFlows(bytes)) {
      const outcome = fastFlowOutcome(flow, o.forwardTimeoutMs);
      if (outcome === undefined) continue;
      const { response: _response, ...rest } = outcome;
      queries.push({ endpoint: flow.endpoint, sourcePort: flow.sourcePort, resolver: { address: flow.resolver, port: flow.resolverPort }, protocol: 'UDP', outcome: rest, requestNs: flow.requestNs, responseNs: flow.responseNs });
      const longer = outcome.learned.some((a) => tellsLonger(a.ttl, o.minTtl, this.#toldUntil.get(toldKey(flow.endpoint, a)) ?? 0, now));
      if (!longer) continue;
      this.#noteTold(flow.endpoint, outcome.learned, now);
      o.learned(flow.endpoint, outcome.learned).catch((error: unknown) => o.log.warn({ err: error, endpoint: flow.endpoint }, 'telling the FQDN cache of addresses the fast path answered failed'));
    }
    if (queries.length > 0) o.handled(queries);
  }

  /** What the agent was told allows, until when: a fast path answer tells it again only when that grows. */
  #noteTold(endpoint: number, addresses: readonly AnswerAddress[], now: number): void {
    if (this.#toldUntil.size > MAX_TOLD) this.#toldUntil.clear();
    for (const a of addresses) this.#toldUntil.set(toldKey(endpoint, a), learnedExpiry(a.ttl, this.#options.minTtl, now));
  }

  #settle(): void {
    for (const resolve of this.#settled.splice(0)) resolve();
  }

  #onExit(worker: Worker, code: number): void {
    if (worker !== this.#worker) return;
    this.#worker = undefined;
    this.#listening = false;
    REDIRECT_COUNTERS.forEach((name, i) => {
      // Queries in flight died with it.
      if (name !== 'inFlight') this.#carried[i] += this.#counters[i];
      this.#counters[i] = 0;
    });
    this.#settle();
    if (this.#stopping) return;
    this.#restarts++;
    this.#failure = `the worker exited with code ${code}; restarting`;
    this.#failures = Date.now() - this.#startedAt > HEALTHY_MS ? 1 : this.#failures + 1;
    const delay = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** (this.#failures - 1));
    this.#options.log.error({ code, restarts: this.#restarts, delayMs: delay }, 'the DNS redirect worker exited; starting it again');
    this.#timer = setTimeout(() => this.#spawn(), delay);
  }
}
