/**
 * The `StateStore` contract: a revisioned key-value store with etcd's semantics, so the
 * embedded single-node store and a later etcd (or Kubernetes) backend are interchangeable.
 *
 * Revisions work as in etcd:
 * - the store has one revision that every successful write (put, delete, transaction) raises by
 *   exactly one; all keys written by one transaction share that revision;
 * - each key carries `createRevision` (when it was created), `modRevision` (its last write) and
 *   `version` (writes since creation);
 * - a compare-and-swap names the `modRevision` it expects; `0` means "the key must not exist".
 *
 * Values are JSON. The store copies them on the way in and out, so a caller can never mutate
 * stored state by holding on to an object.
 * @module
 */

/** A stored key with its value and revisions. */
export interface KeyValue<T = unknown> {
  readonly key: string;
  readonly value: T;
  /** Store revision at which the key was (last) created. */
  readonly createRevision: number;
  /** Store revision of the key's last write; what `expectedRevision` compares against. */
  readonly modRevision: number;
  /** Number of writes since creation (1 after the first put). */
  readonly version: number;
}

/** Result of `list`: the entries plus the store revision they were read at. */
export interface ListResult<T = unknown> {
  /** Store revision the listing reflects: pass it as `afterRevision` to watch without gaps. */
  readonly revision: number;
  /** Matching entries, sorted by key. */
  readonly entries: readonly KeyValue<T>[];
}

export interface WriteOptions {
  /**
   * Compare-and-swap: the write happens only if the key's `modRevision` equals this; `0` means the
   * key must not exist. Otherwise a StoreConflictError (ERR_STORE_CONFLICT) is thrown.
   */
  readonly expectedRevision?: number;
}

export interface WriteResult {
  /** The store revision of this write (equal to the key's new `modRevision`). */
  readonly revision: number;
}

export interface DeleteResult {
  /** The store revision after the call; unchanged when nothing was deleted. */
  readonly revision: number;
  /** Whether the key existed. */
  readonly deleted: boolean;
}

/** One operation of a transaction. `check` only compares; it writes nothing. */
export type TxnOp =
  | { readonly type: 'put'; readonly key: string; readonly value: unknown; readonly expectedRevision?: number }
  | { readonly type: 'delete'; readonly key: string; readonly expectedRevision?: number }
  | { readonly type: 'check'; readonly key: string; readonly expectedRevision: number };

export interface TxnResult {
  /** The revision the transaction committed at; every written key has it as `modRevision`. */
  readonly revision: number;
}

/** A change to a key. Events of one transaction share a revision and arrive in operation order. */
export type WatchEvent<T = unknown> =
  | { readonly type: 'put'; readonly key: string; readonly value: T; readonly revision: number }
  | { readonly type: 'delete'; readonly key: string; readonly value: undefined; readonly revision: number };

export interface WatchOptions {
  /**
   * Deliver events with a revision greater than this (exclusive, unlike etcd's inclusive start
   * revision, so `list().revision` can be passed straight in). Defaults to the current revision:
   * only future changes. History older than the last compaction fails with ERR_STORE_COMPACTED.
   */
  readonly afterRevision?: number;
  /** Ends the watch (the iterator finishes) when aborted. */
  readonly signal?: AbortSignal;
}

/** A running watch: iterate it with `for await`; `close()` (or `break`) stops it. */
export interface StoreWatch<T = unknown> extends AsyncIterableIterator<WatchEvent<T>> {
  close(): void;
}

/**
 * The agent's state store. Implementations: `LocalStateStore` (a directory, one node),
 * `MemoryStateStore` (tests), later etcd.
 *
 * @example
 * const store = await LocalStateStore.open('/var/lib/ciliate/state');
 * const { revision } = await store.put('ipam/nodes/n1', { cidr: '10.244.1.0/24' }, { expectedRevision: 0 });
 * for await (const event of store.watch('ipam/', { afterRevision: revision - 1 })) console.log(event);
 */
export interface StateStore {
  /** The store revision as of the last committed write. */
  readonly revision: number;
  get<T = unknown>(key: string): Promise<KeyValue<T> | undefined>;
  /** All keys starting with `prefix` (`''` lists everything), sorted by key. */
  list<T = unknown>(prefix: string): Promise<ListResult<T>>;
  put<T = unknown>(key: string, value: T, options?: WriteOptions): Promise<WriteResult>;
  delete(key: string, options?: WriteOptions): Promise<DeleteResult>;
  /**
   * Applies all operations at one new revision, or none: if any `expectedRevision` does not hold,
   * nothing is written and a StoreConflictError lists every failed comparison.
   */
  transaction(ops: readonly TxnOp[]): Promise<TxnResult>;
  watch<T = unknown>(prefix: string, options?: WatchOptions): StoreWatch<T>;
  /** Flushes, ends all watches and releases the store (the directory lock, the connection). */
  close(): Promise<void>;
}
