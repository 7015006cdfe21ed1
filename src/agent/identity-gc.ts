/**
 * Periodic garbage collection of cluster-wide identities: without it, every label set a pod
 * ever had keeps its number (and its selector-cache and policy-map entries on every node).
 *
 * Every node runs it, uncoordinated. That is safe because the allocator's references live in the
 * store, one ref key per node and identity: `collectUnused` deletes only identities no node has a
 * ref key on, and deletes each by compare-and-swap on the revision it listed, so a reference any
 * node takes meanwhile makes the delete fail and the identity stays. A node whose agent is down
 * keeps its ref keys (stopping releases nothing), so its pods' identities survive it; and after a
 * restart the agent re-takes its endpoints' references before it drops its stale ones.
 * @module
 */
import type { Logger } from 'pino';
import type { CollectOptions, CollectResult } from '../identity/index.ts';

export interface IdentityCollector {
  collectUnused(options?: CollectOptions): Promise<CollectResult>;
}

export interface IdentityGcOptions {
  identities: IdentityCollector;
  /** Milliseconds between passes; 0 disables the collector. */
  intervalMs: number;
  /** Identities whose last reference went less than this long ago are kept. */
  gracePeriodMs: number;
  log: Logger;
}

export interface IdentityGcStatus {
  enabled: boolean;
  intervalSeconds: number;
  gracePeriodSeconds: number;
  /** Passes finished since the agent started (successful or not). */
  runs: number;
  lastRunAt?: string;
  /** Identity numbers the last successful pass deleted. */
  lastRemoved: number[];
  removedTotal: number;
  lastError?: string;
}

export class IdentityGc {
  readonly #options: IdentityGcOptions;
  #timer: NodeJS.Timeout | undefined;
  #running: Promise<void> | undefined;
  #stopped = true;
  #runs = 0;
  #lastRunAt: number | undefined;
  #lastRemoved: number[] = [];
  #removedTotal = 0;
  #lastError: string | undefined;

  constructor(options: IdentityGcOptions) {
    this.#options = options;
  }

  /** Schedules passes; the first one after an interval, so restored endpoints have re-taken their references. */
  start(): void {
    if (this.#options.intervalMs === 0 || !this.#stopped) return;
    this.#stopped = false;
    this.#schedule();
  }

  /** Cancels the next pass and waits for one in progress. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.#running;
  }

  /** One pass now (also while stopped). Resolves when it is done; errors are reported in status(). */
  runOnce(): Promise<void> {
    this.#running ??= this.#pass().finally(() => {
      this.#running = undefined;
    });
    return this.#running;
  }

  status(): IdentityGcStatus {
    return {
      enabled: this.#options.intervalMs > 0,
      intervalSeconds: this.#options.intervalMs / 1000,
      gracePeriodSeconds: this.#options.gracePeriodMs / 1000,
      runs: this.#runs,
      lastRunAt: this.#lastRunAt === undefined ? undefined : new Date(this.#lastRunAt).toISOString(),
      lastRemoved: this.#lastRemoved,
      removedTotal: this.#removedTotal,
      lastError: this.#lastError,
    };
  }

  #schedule(): void {
    if (this.#stopped) return;
    // ±10 %, so agents started together do not all list the identities at the same moment.
    const delay = this.#options.intervalMs * (0.9 + Math.random() * 0.2);
    this.#timer = setTimeout(() => {
      void this.runOnce().then(() => this.#schedule());
    }, delay);
    // A pending pass must not keep a stopping process alive.
    this.#timer.unref();
  }

  async #pass(): Promise<void> {
    const { identities, gracePeriodMs, log } = this.#options;
    try {
      const result = await identities.collectUnused({ olderThanMs: gracePeriodMs });
      this.#lastRemoved = result.removed.map((i) => i.id);
      this.#removedTotal += result.removed.length;
      this.#lastError = undefined;
      const summary = { removed: this.#lastRemoved, inUse: result.inUse, tooRecent: result.tooRecent, orphansRemoved: result.orphansRemoved };
      if (result.removed.length > 0 || result.orphansRemoved > 0) log.info(summary, 'identity garbage collection removed unused identities');
      else log.debug(summary, 'identity garbage collection pass');
    } catch (error) {
      // The store may be briefly unreachable (etcd leader change): the next pass tries again.
      this.#lastError = (error as Error).message;
      log.warn({ err: error }, 'identity garbage collection pass failed; retrying at the next interval');
    } finally {
      this.#runs++;
      this.#lastRunAt = Date.now();
    }
  }
}
