/**
 * Reconcilers: the only writers of the kernel. Each one follows a table's changes and applies
 * them one object at a time — never a full rewrite — retrying failures with backoff, and keeps
 * a status per object so the API can say what is realized and what is stuck.
 * @module
 */
import type { Change, ChangeReader, Table } from './table.ts';

export interface ReconcilerOps<T, A = unknown> {
  /** Makes the kernel reflect `object`. Must be idempotent: it is retried after failures. */
  update(object: T, key: string): Promise<void> | void;
  /** Removes what update() created for `object`. Idempotent too. */
  delete(object: T, key: string): Promise<void> | void;
  /**
   * Everything this reconciler owns in the kernel, by the table's keys: what a refresh compares
   * the table with. Without it there is no refresh. The values may be lazy (read in equal()):
   * the listing is taken whole before anything is written.
   */
  list?(): Iterable<readonly [key: string, actual: A]> | Promise<Iterable<readonly [key: string, actual: A]>>;
  /** Whether the kernel's object is the desired one; without it, present counts as equal. */
  equal?(desired: T, actual: A, key: string): boolean;
  /**
   * Rewrites a desired object the kernel lacks (`actual` undefined) or has otherwise. Default
   * update(); an object whose update() writes only what changed since the last one (a diff) needs
   * this to compare with the kernel instead. Failed repairs are retried through repair() too.
   */
  repair?(desired: T, actual: A | undefined, key: string): Promise<void> | void;
  /** Removes an owned kernel object that no table object wants. Without it nothing is pruned. */
  prune?(key: string, actual: A): Promise<void> | void;
}

export type ReconcileState = 'pending' | 'done' | 'error';

export interface ReconcileStatus {
  state: ReconcileState;
  revision: number;
  error?: string;
  attempts: number;
}

/** A reconciler's health, as `ciliate status` shows it. */
export interface ReconcilerHealth {
  name: string;
  /** Objects in the table. */
  desired: number;
  /** Objects not yet in the kernel as wanted: unread changes and queued retries. */
  pending: number;
  /** Objects whose last attempt failed. */
  errors: number;
  lastError?: string;
  lastErrorAt?: string;
  /** Desired objects found missing or different in the kernel by a refresh, and rewritten. */
  repairs: number;
  /** Kernel objects nobody wanted, removed by a refresh. */
  prunes: number;
  refreshes: number;
  lastRefreshAt?: string;
  /** An object failed degradedAfterAttempts times in a row, or so did listing the kernel. */
  degraded: boolean;
  /** Why it is degraded: the first object that keeps failing, with its error. */
  reason?: string;
}

export interface ReconcilerOptions<T, A = unknown> {
  name: string;
  table: Table<T>;
  ops: ReconcilerOps<T, A>;
  /** First retry delay; doubles per failure up to retryMaxMs. */
  retryBaseMs?: number;
  retryMaxMs?: number;
  /**
   * How often to compare the kernel with the table (needs ops.list); 0 or absent: never, unless
   * refresh() is called.
   */
  refreshIntervalMs?: number;
  /**
   * Whether the first refresh runs as soon as the reconciler starts (default true). Owners whose
   * sources fill the table after start pass false, so a restart does not prune what they are
   * about to ask for again: the first refresh then comes one interval later.
   */
  refreshOnStart?: boolean;
  /** Consecutive failed attempts after which an object makes the reconciler degraded (default 3). */
  degradedAfterAttempts?: number;
  onError?: (key: string, error: unknown, attempts: number) => void;
  /** Told of every repair and prune a refresh did (for logs). */
  onRefresh?: (kind: 'repair' | 'prune', key: string) => void;
}

interface Retry<T> {
  change: Change<T>;
  attempts: number;
  due: number;
  /** A refresh found the object wrong in the kernel: retried through ops.repair. */
  repair: boolean;
}

/** Consecutive failed listings after which a reconciler reports itself degraded. */
const DEGRADED_LIST_FAILURES = 3;

export class Reconciler<T, A = unknown> {
  readonly name: string;
  readonly #table: Table<T>;
  readonly #ops: ReconcilerOps<T, A>;
  readonly #retryBaseMs: number;
  readonly #retryMaxMs: number;
  readonly #refreshIntervalMs: number;
  readonly #refreshOnStart: boolean;
  readonly #degradedAfter: number;
  readonly #onError: ReconcilerOptions<T, A>['onError'];
  readonly #onRefresh: ReconcilerOptions<T, A>['onRefresh'];
  readonly #status = new Map<string, ReconcileStatus>();
  readonly #retries = new Map<string, Retry<T>>();
  #reader: ChangeReader<T> | undefined;
  #abort: AbortController | undefined;
  #loop: Promise<void> | undefined;
  /** Revision up to which every change was applied successfully or is queued for retry. */
  #processed = 0;
  #progressWaiters: { revision: number; resolve: () => void }[] = [];
  #attemptWaiters: { revision: number; resolve: () => void }[] = [];
  #refreshDue = Number.POSITIVE_INFINITY;
  #refreshWaiters: (() => void)[] = [];
  #wake: (() => void) | undefined;
  #repairs = 0;
  #prunes = 0;
  #refreshes = 0;
  #lastRefreshAt: number | undefined;
  #lastError: { message: string; at: number } | undefined;
  #listFailures = 0;

  constructor(options: ReconcilerOptions<T, A>) {
    this.name = options.name;
    this.#table = options.table;
    this.#ops = options.ops;
    this.#retryBaseMs = options.retryBaseMs ?? 50;
    this.#retryMaxMs = options.retryMaxMs ?? 10_000;
    this.#refreshIntervalMs = options.refreshIntervalMs ?? 0;
    this.#refreshOnStart = options.refreshOnStart ?? true;
    this.#degradedAfter = options.degradedAfterAttempts ?? 3;
    this.#onError = options.onError;
    this.#onRefresh = options.onRefresh;
  }

  start(): void {
    if (this.#loop) return;
    this.#reader = this.#table.changes();
    this.#abort = new AbortController();
    if (this.#ops.list && this.#refreshIntervalMs > 0) this.#refreshDue = this.#refreshOnStart ? 0 : Date.now() + this.#refreshIntervalMs;
    this.#loop = this.#run(this.#abort.signal);
  }

  async stop(): Promise<void> {
    this.#abort?.abort();
    this.#wake?.();
    await this.#loop;
    this.#reader?.close();
    this.#loop = this.#reader = this.#abort = undefined;
    this.#refreshDue = Number.POSITIVE_INFINITY;
    const waiting = this.#refreshWaiters;
    this.#refreshWaiters = [];
    for (const resolve of waiting) resolve();
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

  /**
   * Resolves once every change up to `revision` was attempted at least once, failed or not (read
   * status() then): for callers that report the first failure while retries go on.
   */
  attempted(revision: number = this.#table.revision): Promise<void> {
    if (this.#processed >= revision) return Promise.resolve();
    return new Promise((resolve) => this.#attemptWaiters.push({ revision, resolve }));
  }

  /** Compares the kernel with the table now (needs ops.list); resolves when that refresh is done. */
  refresh(): Promise<void> {
    if (!this.#loop || !this.#ops.list) return Promise.resolve();
    this.#refreshDue = 0;
    const done = new Promise<void>((resolve) => this.#refreshWaiters.push(resolve));
    this.#wake?.();
    return done;
  }

  health(): ReconcilerHealth {
    let errors = 0;
    let failing: [string, ReconcileStatus] | undefined;
    for (const entry of this.#status) {
      if (entry[1].state !== 'error') continue;
      errors++;
      if (entry[1].attempts >= this.#degradedAfter && (!failing || entry[1].attempts > failing[1].attempts)) failing = entry;
    }
    let unread = 0;
    const read = this.#reader?.revision ?? 0;
    for (const [, , revision] of this.#table.entries()) if (revision > read) unread++;
    const listing = this.#listFailures >= DEGRADED_LIST_FAILURES;
    return {
      name: this.name,
      desired: this.#table.size,
      pending: unread + this.#retries.size,
      errors,
      lastError: this.#lastError?.message,
      lastErrorAt: this.#lastError && new Date(this.#lastError.at).toISOString(),
      repairs: this.#repairs,
      prunes: this.#prunes,
      refreshes: this.#refreshes,
      lastRefreshAt: this.#lastRefreshAt === undefined ? undefined : new Date(this.#lastRefreshAt).toISOString(),
      degraded: failing !== undefined || listing,
      reason: failing
        ? `${this.name}: ${failing[0]} failed ${failing[1].attempts} times: ${failing[1].error}`
        : listing
          ? `${this.name}: reading the kernel failed ${this.#listFailures} times: ${this.#lastError?.message}`
          : undefined,
    };
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
        await this.#apply(change, 1, false);
        if (signal.aborted) return;
      }
      this.#processed = reader.revision;
      const now = Date.now();
      for (const retry of [...this.#retries.values()]) {
        if (retry.due > now) continue;
        this.#retries.delete(retry.change.key);
        const done = await this.#apply(retry.change, retry.attempts + 1, retry.repair);
        if (done && retry.repair) this.#repaired(retry.change.key);
        if (signal.aborted) return;
      }
      if (Date.now() >= this.#refreshDue) {
        // refresh() calls made while this one runs wait for the next: this one may have listed
        // the kernel before what they wrote.
        const waiting = this.#refreshWaiters;
        this.#refreshWaiters = [];
        this.#refreshDue = this.#refreshIntervalMs > 0 ? Date.now() + this.#refreshIntervalMs : Number.POSITIVE_INFINITY;
        await this.#refresh(reader.revision);
        if (this.#refreshWaiters.length === 0 && this.#refreshIntervalMs > 0) this.#refreshDue = Date.now() + this.#refreshIntervalMs;
        for (const resolve of waiting) resolve();
      }
      this.#notify();
      const nextRetry = Math.min(this.#refreshDue, ...[...this.#retries.values()].map((r) => r.due));
      const timeout = Number.isFinite(nextRetry) ? Math.max(0, nextRetry - Date.now()) : undefined;
      const woken = new Promise<void>((resolve) => (this.#wake = resolve));
      await waitAny(Promise.race([reader.wait(signal), woken]), timeout);
      this.#wake = undefined;
    }
  }

  /**
   * One comparison of the kernel with the table as applied up to `applied`: objects written
   * since are left to the change loop, and objects with a retry queued to their retry.
   */
  async #refresh(applied: number): Promise<void> {
    const ops = this.#ops;
    if (!ops.list) return;
    let observed: (readonly [string, A])[];
    try {
      observed = [...(await ops.list())];
      this.#listFailures = 0;
    } catch (error) {
      this.#listFailures++;
      this.#lastError = { message: `listing the kernel: ${errorMessage(error)}`, at: Date.now() };
      this.#onError?.('(refresh)', error, this.#listFailures);
      return;
    }
    const seen = new Set<string>();
    for (const [key, actual] of observed) {
      seen.add(key);
      if (this.#retries.has(key)) continue;
      const desired = this.#table.get(key);
      if (desired === undefined) {
        // A key deleted after `applied` is pruned here and then deleted again by the change loop:
        // deletes are idempotent, only the count is one too high.
        if (!ops.prune) continue;
        try {
          await ops.prune(key, actual);
          this.#prunes++;
          this.#onRefresh?.('prune', key);
        } catch (error) {
          this.#lastError = { message: `pruning ${key}: ${errorMessage(error)}`, at: Date.now() };
          this.#onError?.(key, error, 1);
        }
        continue;
      }
      if ((this.#table.revisionOf(key) ?? 0) > applied) continue;
      if (ops.equal && !equalOrThrew(ops.equal, desired, actual, key)) await this.#repair(key, desired, actual);
    }
    for (const [key, desired, revision] of [...this.#table.entries()]) {
      if (seen.has(key) || revision > applied || this.#retries.has(key)) continue;
      await this.#repair(key, desired, undefined);
    }
    this.#refreshes++;
    this.#lastRefreshAt = Date.now();
  }

  async #repair(key: string, desired: T, actual: A | undefined): Promise<void> {
    const change: Change<T> = { key, object: desired, deleted: false, revision: this.#table.revisionOf(key) ?? 0 };
    if (await this.#apply(change, 1, true, actual)) this.#repaired(key);
  }

  #repaired(key: string): void {
    this.#repairs++;
    this.#onRefresh?.('repair', key);
  }

  async #apply(change: Change<T>, attempts: number, repair: boolean, actual?: A): Promise<boolean> {
    this.#status.set(change.key, { state: 'pending', revision: change.revision, attempts });
    try {
      if (change.deleted) await this.#ops.delete(change.object, change.key);
      else if (repair && this.#ops.repair) await this.#ops.repair(change.object, actual, change.key);
      else await this.#ops.update(change.object, change.key);
      if (change.deleted) this.#status.delete(change.key);
      else this.#status.set(change.key, { state: 'done', revision: change.revision, attempts });
      return true;
    } catch (error) {
      const delay = Math.min(this.#retryMaxMs, this.#retryBaseMs * 2 ** (attempts - 1));
      const message = errorMessage(error);
      this.#retries.set(change.key, { change, attempts, due: Date.now() + delay, repair });
      this.#status.set(change.key, { state: 'error', revision: change.revision, attempts, error: message });
      this.#lastError = { message: `${change.key}: ${message}`, at: Date.now() };
      this.#onError?.(change.key, error, attempts);
      return false;
    }
  }

  #notify(): void {
    const waiting = this.#progressWaiters;
    this.#progressWaiters = [];
    for (const waiter of waiting) {
      if (this.#settled(waiter.revision)) waiter.resolve();
      else this.#progressWaiters.push(waiter);
    }
    const attempting = this.#attemptWaiters;
    this.#attemptWaiters = [];
    for (const waiter of attempting) {
      if (this.#processed >= waiter.revision) waiter.resolve();
      else this.#attemptWaiters.push(waiter);
    }
  }
}

/** An equal() that cannot read the kernel's object counts it as different: repair rewrites it. */
function equalOrThrew<T, A>(equal: (desired: T, actual: A, key: string) => boolean, desired: T, actual: A, key: string): boolean {
  try {
    return equal(desired, actual, key);
  } catch {
    return false;
  }
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function waitAny(promise: Promise<void>, timeoutMs: number | undefined): Promise<void> {
  if (timeoutMs === undefined) return promise;
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([promise, new Promise<void>((resolve) => (timer = setTimeout(resolve, timeoutMs)))]).finally(() => clearTimeout(timer));
}
