/**
 * A `StateStore` that lives only in memory: same semantics as `LocalStateStore` (it shares the
 * engine), nothing on disk. For tests and for callers that want the store's API without durability.
 * @module
 */
import { StoreError } from './errors.ts';
import { KvEngine } from './kv-engine.ts';
import type { DeleteResult, KeyValue, ListResult, StateStore, StoreWatch, TxnOp, TxnResult, WatchOptions, WriteOptions, WriteResult } from './types.ts';

export interface MemoryStateStoreOptions {
  /** Commit records kept for watch replay; older ones are compacted away. Default 10 000. */
  readonly historyLimit?: number;
}

/**
 * @example
 * const store = new MemoryStateStore();
 * await store.put('a', { n: 1 });
 * (await store.get<{ n: number }>('a'))?.value.n; // 1
 */
export class MemoryStateStore implements StateStore {
  #engine = new KvEngine();
  #closed = false;
  #historyLimit: number;

  constructor(options?: MemoryStateStoreOptions) {
    this.#historyLimit = options?.historyLimit ?? 10_000;
  }

  get revision(): number {
    return this.#engine.revision;
  }

  async get<T = unknown>(key: string): Promise<KeyValue<T> | undefined> {
    this.#assertOpen('get');
    return this.#engine.get<T>(key);
  }

  async list<T = unknown>(prefix: string): Promise<ListResult<T>> {
    this.#assertOpen('list');
    return this.#engine.list<T>(prefix);
  }

  async put<T = unknown>(key: string, value: T, options?: WriteOptions): Promise<WriteResult> {
    return this.#write(`put ${key}`, [{ type: 'put', key, value, expectedRevision: options?.expectedRevision }]);
  }

  async delete(key: string, options?: WriteOptions): Promise<DeleteResult> {
    const existed = this.#engine.get(key) !== undefined;
    const { revision } = await this.#write(`delete ${key}`, [{ type: 'delete', key, expectedRevision: options?.expectedRevision }]);
    return { revision, deleted: existed };
  }

  async transaction(ops: readonly TxnOp[]): Promise<TxnResult> {
    return this.#write('transaction', ops);
  }

  watch<T = unknown>(prefix: string, options?: WatchOptions): StoreWatch<T> {
    this.#assertOpen('watch');
    return this.#engine.watch<T>(prefix, options);
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#engine.closeWatchers();
  }

  #write(operation: string, ops: readonly TxnOp[]): TxnResult {
    this.#assertOpen(operation);
    const record = this.#engine.prepare(operation, ops);
    if (record === undefined) return { revision: this.#engine.revision };
    this.#engine.commit(record);
    if (this.#engine.historyLength > this.#historyLimit) this.#engine.compact(this.#engine.revision - this.#historyLimit);
    return { revision: record.revision };
  }

  #assertOpen(operation: string): void {
    if (this.#closed) throw new StoreError('ERR_STORE_CLOSED', `store: ${operation}: store is closed`);
  }
}
