/**
 * The in-memory core shared by every embedded store: keys with etcd-style revisions, the
 * precondition checks of compare-and-swap, the history of committed records since the last
 * compaction, and the watchers fed from it.
 *
 * Writing is split so a persistent store can put a journal write in between: `prepare` checks
 * preconditions and builds a `CommitRecord`, `stage` makes later `prepare`s see it (readers and
 * watchers do not), and `commit` applies it once it is durable; `unstage` forgets staged records
 * whose write failed. All are synchronous. A store that group-commits prepares and stages several
 * records one after another, writes them with one sync, then commits them in order: each record's
 * preconditions were checked against the state including every record before it, so the result is
 * the same as if they had been written one at a time.
 * @module
 */
import { StoreConflictError, StoreError, type RevisionMismatch } from './errors.ts';
import type { KeyValue, ListResult, TxnOp, WatchEvent, WatchOptions } from './types.ts';
import { Watcher } from './watch.ts';

/** One write of a committed record. Values are kept as canonical JSON text. */
export type RecordOp = { readonly op: 'put'; readonly key: string; readonly json: string } | { readonly op: 'delete'; readonly key: string };

/** Everything one revision changed: the unit of journaling and of watch replay. */
export interface CommitRecord {
  readonly revision: number;
  readonly ops: readonly RecordOp[];
}

export interface StoredEntry {
  readonly json: string;
  readonly createRevision: number;
  readonly modRevision: number;
  readonly version: number;
}

/** The full state at one revision: what a snapshot file holds. */
export interface EngineSnapshot {
  readonly revision: number;
  readonly entries: ReadonlyMap<string, StoredEntry>;
}

/** Longest key accepted; etcd's default request limit is far above, this just stops mistakes. */
const MAX_KEY_LENGTH = 4096;

export function validateKey(operation: string, key: unknown): asserts key is string {
  if (typeof key !== 'string' || key.length === 0) {
    throw new StoreError('ERR_STORE_INVALID_ARGUMENT', `store: ${operation}: key must be a non-empty string`);
  }
  if (key.length > MAX_KEY_LENGTH) {
    throw new StoreError('ERR_STORE_INVALID_ARGUMENT', `store: ${operation}: key is longer than ${MAX_KEY_LENGTH} characters`);
  }
}

function validateRevision(operation: string, revision: unknown): void {
  if (revision === undefined) return;
  if (typeof revision !== 'number' || !Number.isSafeInteger(revision) || revision < 0) {
    throw new StoreError('ERR_STORE_INVALID_ARGUMENT', `store: ${operation}: expectedRevision must be a non-negative integer, got ${String(revision)}`);
  }
}

/** JSON text of `value`, or a typed error for what JSON cannot hold (undefined, bigint, cycles). */
export function toJson(operation: string, value: unknown): string {
  let json: string | undefined;
  try {
    json = JSON.stringify(value);
  } catch (cause) {
    throw new StoreError('ERR_STORE_INVALID_ARGUMENT', `store: ${operation}: value is not JSON-serialisable: ${(cause as Error).message}`, { cause });
  }
  if (json === undefined) {
    throw new StoreError('ERR_STORE_INVALID_ARGUMENT', `store: ${operation}: value is not JSON-serialisable (got ${typeof value})`);
  }
  return json;
}

function toKeyValue<T>(key: string, entry: StoredEntry): KeyValue<T> {
  return {
    key,
    // Parsing per read hands every caller its own copy: stored state cannot be mutated from outside.
    value: JSON.parse(entry.json) as T,
    createRevision: entry.createRevision,
    modRevision: entry.modRevision,
    version: entry.version,
  };
}

function eventOf<T>(op: RecordOp, revision: number): WatchEvent<T> {
  return op.op === 'put'
    ? { type: 'put', key: op.key, value: JSON.parse(op.json) as T, revision }
    : { type: 'delete', key: op.key, value: undefined, revision };
}

export class KvEngine {
  #entries = new Map<string, StoredEntry>();
  #revision = 0;
  /** Revision of the last compaction: history at or below it is gone. */
  #compactedRevision = 0;
  /** Records after `#compactedRevision`, oldest first. */
  #history: CommitRecord[] = [];
  #watchers = new Set<Watcher<unknown>>();
  /**
   * Keys written by staged (prepared, not yet durable) records, with the revision of the last
   * record that wrote them: what `prepare` compares against before the committed entries.
   */
  #staged = new Map<string, { readonly revision: number; readonly exists: boolean }>();
  #stagedRevision = 0;

  get revision(): number {
    return this.#revision;
  }

  get compactedRevision(): number {
    return this.#compactedRevision;
  }

  /** Number of records kept for watch replay since the last compaction. */
  get historyLength(): number {
    return this.#history.length;
  }

  get<T>(key: string): KeyValue<T> | undefined {
    validateKey('get', key);
    const entry = this.#entries.get(key);
    return entry === undefined ? undefined : toKeyValue<T>(key, entry);
  }

  list<T>(prefix: string): ListResult<T> {
    if (typeof prefix !== 'string') throw new StoreError('ERR_STORE_INVALID_ARGUMENT', 'store: list: prefix must be a string');
    // A linear scan: the agent's state is thousands of keys, not millions; a sorted index would
    // cost more on every write than it saves here.
    const keys = [...this.#entries.keys()].filter((key) => key.startsWith(prefix)).sort();
    return { revision: this.#revision, entries: keys.map((key) => toKeyValue<T>(key, this.#entries.get(key)!)) };
  }

  /**
   * Checks the preconditions of `ops` against the current state and returns the record that
   * would commit them, without changing anything. Returns `undefined` when there is nothing to
   * write (only checks, or deletes of absent keys), which, as in etcd, does not raise the revision.
   */
  prepare(operation: string, ops: readonly TxnOp[]): CommitRecord | undefined {
    if (!Array.isArray(ops)) throw new StoreError('ERR_STORE_INVALID_ARGUMENT', `store: ${operation}: operations must be an array`);
    const seen = new Set<string>();
    const mismatches: RevisionMismatch[] = [];
    const recordOps: RecordOp[] = [];
    for (const op of ops) {
      validateKey(operation, op?.key);
      validateRevision(operation, op.expectedRevision);
      // etcd rejects a transaction that writes one key twice; the result would depend on order.
      if (seen.has(op.key)) {
        throw new StoreError('ERR_STORE_INVALID_ARGUMENT', `store: ${operation}: key ${op.key} appears more than once`);
      }
      seen.add(op.key);
      const staged = this.#staged.get(op.key);
      const actual = staged === undefined ? (this.#entries.get(op.key)?.modRevision ?? 0) : staged.exists ? staged.revision : 0;
      if (op.expectedRevision !== undefined && op.expectedRevision !== actual) {
        mismatches.push({ key: op.key, expectedRevision: op.expectedRevision, actualRevision: actual });
      }
      switch (op.type) {
        case 'put':
          recordOps.push({ op: 'put', key: op.key, json: toJson(`${operation} ${op.key}`, op.value) });
          break;
        case 'delete':
          if (actual !== 0) recordOps.push({ op: 'delete', key: op.key });
          break;
        case 'check':
          if (op.expectedRevision === undefined) {
            throw new StoreError('ERR_STORE_INVALID_ARGUMENT', `store: ${operation}: check of ${op.key} needs an expectedRevision`);
          }
          break;
        default:
          throw new StoreError('ERR_STORE_INVALID_ARGUMENT', `store: ${operation}: unknown operation type ${String((op as { type: unknown }).type)}`);
      }
    }
    if (mismatches.length > 0) throw new StoreConflictError(operation, mismatches);
    if (recordOps.length === 0) return undefined;
    return { revision: this.stagedRevision + 1, ops: recordOps };
  }

  /** The revision after every staged record: what a no-op write prepared now would report. */
  get stagedRevision(): number {
    return Math.max(this.#revision, this.#stagedRevision);
  }

  /** Makes `prepare` see `record` (its revision must follow the last staged one) before it is committed. */
  stage(record: CommitRecord): void {
    if (record.revision !== this.stagedRevision + 1) {
      throw new StoreError('ERR_STORE_CORRUPT', `store: staging revision ${record.revision}, expected ${this.stagedRevision + 1}`);
    }
    for (const op of record.ops) this.#staged.set(op.key, { revision: record.revision, exists: op.op === 'put' });
    this.#stagedRevision = record.revision;
  }

  /** Forgets every staged record not yet committed (their write failed). */
  unstage(): void {
    this.#staged.clear();
    this.#stagedRevision = this.#revision;
  }

  /** Applies a prepared (or replayed) record and, unless replaying, tells the watchers. */
  commit(record: CommitRecord, options?: { replay?: boolean }): void {
    if (record.revision !== this.#revision + 1) {
      throw new StoreError('ERR_STORE_CORRUPT', `store: record has revision ${record.revision}, expected ${this.#revision + 1}`);
    }
    for (const op of record.ops) {
      if (op.op === 'put') {
        const previous = this.#entries.get(op.key);
        this.#entries.set(op.key, {
          json: op.json,
          createRevision: previous?.createRevision ?? record.revision,
          modRevision: record.revision,
          version: (previous?.version ?? 0) + 1,
        });
      } else {
        this.#entries.delete(op.key);
      }
      // A later staged record may have written the key again; only its own overlay entry goes.
      if (this.#staged.get(op.key)?.revision === record.revision) this.#staged.delete(op.key);
    }
    this.#revision = record.revision;
    this.#history.push(record);
    if (options?.replay) return;
    for (const watcher of this.#watchers) {
      for (const op of record.ops) if (op.key.startsWith(watcher.prefix)) watcher.push(eventOf(op, record.revision));
    }
  }

  /** Replaces the whole state with a snapshot (used when opening a store). */
  restore(snapshot: EngineSnapshot): void {
    this.#entries = new Map(snapshot.entries);
    this.#revision = snapshot.revision;
    this.#compactedRevision = snapshot.revision;
    this.#history = [];
  }

  /** The current state, for writing a snapshot. */
  snapshot(): EngineSnapshot {
    return { revision: this.#revision, entries: new Map(this.#entries) };
  }

  /**
   * Forgets history up to and including `upTo` (default: everything, e.g. after a snapshot made
   * the journal redundant). Watches from before it then fail with ERR_STORE_COMPACTED.
   */
  compact(upTo: number = this.#revision): void {
    const target = Math.min(upTo, this.#revision);
    if (target <= this.#compactedRevision) return;
    this.#compactedRevision = target;
    this.#history = this.#history.filter((record) => record.revision > target);
  }

  watch<T>(prefix: string, options?: WatchOptions): Watcher<T> {
    if (typeof prefix !== 'string') throw new StoreError('ERR_STORE_INVALID_ARGUMENT', 'store: watch: prefix must be a string');
    const after = options?.afterRevision ?? this.#revision;
    validateRevision('watch', after);
    const watcher = new Watcher<T>(prefix, (w) => this.#watchers.delete(w as Watcher<unknown>), options?.signal);
    if (after < this.#compactedRevision) {
      watcher.fail(
        new StoreError(
          'ERR_STORE_COMPACTED',
          `store: watch ${prefix || '(all keys)'}: revision ${after} is compacted; history starts after revision ${this.#compactedRevision}: list and watch again`,
        ),
      );
      return watcher;
    }
    // Replay and registration happen in one synchronous step, so no commit can fall in between.
    for (const record of this.#history) {
      if (record.revision <= after) continue;
      for (const op of record.ops) if (op.key.startsWith(prefix)) watcher.push(eventOf<T>(op, record.revision));
    }
    if (options?.signal?.aborted) return watcher;
    this.#watchers.add(watcher as Watcher<unknown>);
    return watcher;
  }

  /** Ends every watch, e.g. on close. */
  closeWatchers(error?: unknown): void {
    for (const watcher of [...this.#watchers]) {
      if (error === undefined) watcher.close();
      else watcher.fail(error);
    }
  }
}
