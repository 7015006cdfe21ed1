/**
 * Reconcilers: the only writers of the kernel. Each one follows a table's changes and applies
 * them one object at a time — never a full rewrite — retrying failures with backoff, and keeps
 * a status per object so the API can say what is realized and what is stuck.
 * @module
 */
import type { Change, ChangeReader, Table } from './table.ts';

export interface ReconcilerOps<T> {
  /** Makes the kernel reflect `object`. Must be idempotent: it is retried after failures. */
  update(object: T, key: string): Promise<void> | void;
  /** Removes what update() created for `object`. Idempotent too. */
  delete(object: T, key: string): Promise<void> | void;
}

export type ReconcileState = 'pending' | 'done' | 'error';

export interface ReconcileStatus {
  state: ReconcileState;
  revision: number;
  error?: string;
  attempts: number;
}

export interface ReconcilerOptions<T> {
  name: string;
  table: Table<T>;
  ops: ReconcilerOps<T>;
  /** First retry delay; doubles per failure up to retryMaxMs. */
  retryBaseMs?: number;
  retryMaxMs?: number;
  onError?: (key: string, error: unknown, attempts: number) => void;
}

interface Retry<T> {
  change: Change<T>;
  attempts: number;
  due: number;
}

export class Reconciler<T> {
  readonly name: string;
  readonly #table: Table<T>;
  readonly #ops: ReconcilerOps<T>;
  readonly #retryBaseMs: number;
  readonly #retryMaxMs: number;
  readonly #onError: ReconcilerOptions<T>['onError'];
  readonly #status = new Map<string, ReconcileStatus>();
  readonly #retries = new Map<string, Retry<T>>();
  #reader: ChangeReader<T> | undefined;
  #abort: AbortController | undefined;
  #loop: Promise<void> | undefined;
  /** Revision up to which every change was applied successfully or is queued for retry. */
  #processed = 0;
  #progressWaiters: { revision: number; resolve: () => void }[] = [];

  constructor(options: ReconcilerOptions<T>) {
    this.name = options.name;
    this.#table = options.table;
    this.#ops = options.ops;
    this.#retryBaseMs = options.retryBaseMs ?? 50;
    this.#retryMaxMs = options.retryMaxMs ?? 10_000;
    this.#onError = options.onError;
  }

  start(): void {
    if (this.#loop) return;
    this.#reader = this.#table.changes();
    this.#abort = new AbortController();
    this.#loop = this.#run(this.#abort.signal);
  }

  async stop(): Promise<void> {
    this.#abort?.abort();
    await this.#loop;
    this.#reader?.close();
    this.#loop = this.#reader = this.#abort = undefined;
  }

  status(key: string): ReconcileStatus | undefined {
    return this.#status.get(key);
  }

  /** Keys whose last attempt failed, with why. */
  failures(): [string, ReconcileStatus][] {
    return [...this.#status].filter(([, s]) => s.state === 'error');
  }

  /** Resolves once every change up to `revision` was attempted and none of them is still failing. */
  waitFor(revision: number = this.#table.revision): Promise<void> {
    if (this.#settled(revision)) return Promise.resolve();
    return new Promise((resolve) => this.#progressWaiters.push({ revision, resolve }));
  }

  #settled(revision: number): boolean {
    if (this.#processed < revision) return false;
    for (const retry of this.#retries.values()) if (retry.change.revision <= revision) return false;
    return true;
  }

  async #run(signal: AbortSignal): Promise<void> {
    const reader = this.#reader!;
    while (!signal.aborted) {
      for (const change of reader.next()) {
        this.#retries.delete(change.key);
        await this.#apply(change, 1);
        if (signal.aborted) return;
      }
      this.#processed = reader.revision;
      const now = Date.now();
      for (const retry of [...this.#retries.values()]) {
        if (retry.due > now) continue;
        this.#retries.delete(retry.change.key);
        await this.#apply(retry.change, retry.attempts + 1);
      }
      this.#notify();
      const nextRetry = Math.min(...[...this.#retries.values()].map((r) => r.due));
      const timeout = Number.isFinite(nextRetry) ? Math.max(0, nextRetry - Date.now()) : undefined;
      await waitAny(reader.wait(signal), timeout);
    }
  }

  async #apply(change: Change<T>, attempts: number): Promise<void> {
    this.#status.set(change.key, { state: 'pending', revision: change.revision, attempts });
    try {
      if (change.deleted) await this.#ops.delete(change.object, change.key);
      else await this.#ops.update(change.object, change.key);
      if (change.deleted) this.#status.delete(change.key);
      else this.#status.set(change.key, { state: 'done', revision: change.revision, attempts });
    } catch (error) {
      const delay = Math.min(this.#retryMaxMs, this.#retryBaseMs * 2 ** (attempts - 1));
      this.#retries.set(change.key, { change, attempts, due: Date.now() + delay });
      this.#status.set(change.key, { state: 'error', revision: change.revision, attempts, error: (error as Error).message ?? String(error) });
      this.#onError?.(change.key, error, attempts);
    }
  }

  #notify(): void {
    const waiting = this.#progressWaiters;
    this.#progressWaiters = [];
    for (const waiter of waiting) {
      if (this.#settled(waiter.revision)) waiter.resolve();
      else this.#progressWaiters.push(waiter);
    }
  }
}

function waitAny(promise: Promise<void>, timeoutMs: number | undefined): Promise<void> {
  if (timeoutMs === undefined) return promise;
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([promise, new Promise<void>((resolve) => (timer = setTimeout(resolve, timeoutMs)))]).finally(() => clearTimeout(timer));
}
