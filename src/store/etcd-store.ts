/**
 * `EtcdStateStore`: the `StateStore` contract on a real etcd v3 cluster, for multi-node setups
 * where every agent must see the same IPAM/identity state.
 *
 * Client: the `etcd3` npm package (microsoft/etcd3, gRPC via @grpc/grpc-js). Only its raw KV RPCs
 * and its watch stream manager are used; all StateStore semantics are mapped here:
 *
 * - keys: `prefix + key` as UTF-8 bytes (default prefix `/ciliate/`); listing and watching use
 *   the etcd range `[prefix+p, prefixEnd(prefix+p))`;
 * - values: JSON text, parsed per read, so callers always get their own copies;
 * - revisions: etcd's cluster revision minus one. etcd starts an empty cluster at revision 1, the
 *   contract at 0, so a fresh etcd reads as revision 0 and its first write as 1, exactly like the
 *   embedded stores; the offset is constant, so all clients agree on every number. Writes outside
 *   the prefix (another user of the cluster) also raise the revision, as in etcd;
 * - compare-and-swap and `transaction()`: one etcd Txn. Every `expectedRevision` becomes a compare
 *   (`0` → `version == 0`, i.e. absent; `n` → `mod_revision == n + 1`), puts and deletes are the
 *   success branch, and the failure branch reads every compared key, so a conflict names each
 *   failed comparison from the same atomic snapshot without a second round trip;
 * - `watch()`: an etcd watch with `start_revision = afterRevision + 1` (in etcd numbers) that the
 *   client resumes from the last delivered revision after a reconnect; a watch from compacted
 *   history ends with ERR_STORE_COMPACTED;
 * - failures to reach etcd (refused, timed out) are `ERR_STORE_UNAVAILABLE` naming the endpoints.
 *   Reads are retried on another endpoint; writes are not (a write whose answer was lost might
 *   have been applied, and retrying a compare-and-swap would report a false conflict).
 * @module
 */
import { Etcd3, EtcdError, GRPCDeadlineExceededError, GRPCInvalidArgumentError, GRPCUnavailableError, GRPCOutOfRangeError, ClientClosedError, GRPCCancelledError, GRPCResourceExhastedError } from 'etcd3';
import type { ICompare, IOptions, IRequestOp, IResponseHeader, ITxnResponse, IKeyValue, IWatchResponse, Watcher as EtcdWatcher } from 'etcd3';
import { StoreConflictError, StoreError, type RevisionMismatch } from './errors.ts';
import { toJson, validateKey } from './kv-engine.ts';
import type { DeleteResult, KeyValue, ListResult, StateStore, StoreWatch, TxnOp, TxnResult, WatchOptions, WriteOptions, WriteResult } from './types.ts';
import { Watcher } from './watch.ts';

export interface EtcdStateStoreOptions {
  /** Client URLs of the etcd members, e.g. `['http://10.0.0.1:2379']` (or one string). */
  readonly endpoints: string | readonly string[];
  /** Key prefix in etcd for everything this store holds. Default `/ciliate/`. */
  readonly prefix?: string;
  /** Deadline of each request, and of connecting. Default 5000 ms. */
  readonly timeoutMs?: number;
}

type FaultHandling = NonNullable<IOptions['faultHandling']>;
type Policy = NonNullable<FaultHandling['global']>;
type Backoff = NonNullable<FaultHandling['watchBackoff']>;

/** No retries or circuit breakers inside the client: this store decides what may be retried. */
const passThrough = {
  execute: <R>(fn: (context: { signal: AbortSignal; attempt: number }) => R | Promise<R>) => Promise.resolve().then(() => fn({ signal: new AbortController().signal, attempt: 1 })),
} as unknown as Policy;

/** Watch reconnect backoff: 100 ms doubling up to 5 s (the client's default waits up to 30 s). */
function watchBackoff(duration = 100): Backoff {
  return { duration, next: () => watchBackoff(Math.min(duration * 2, 5000)) } as unknown as Backoff;
}

/** etcd's first revision: an empty cluster reports 1, the contract 0. */
const REVISION_OFFSET = 1;
const toStoreRevision = (etcdRevision: string | number): number => Number(etcdRevision) - REVISION_OFFSET;
const toEtcdRevision = (storeRevision: number): number => storeRevision + REVISION_OFFSET;

/** The smallest key greater than every key starting with `prefix` (etcd's "prefix end"). */
function prefixEnd(prefix: Buffer): Buffer {
  const end = Buffer.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i] < 0xff) {
      end[i]++;
      return end.subarray(0, i + 1);
    }
  }
  // Empty or all 0xff: to the end of the keyspace.
  return Buffer.from([0]);
}

function validateRevision(operation: string, revision: unknown): void {
  if (revision === undefined) return;
  if (typeof revision !== 'number' || !Number.isSafeInteger(revision) || revision < 0) {
    throw new StoreError('ERR_STORE_INVALID_ARGUMENT', `store: ${operation}: expectedRevision must be a non-negative integer, got ${String(revision)}`);
  }
}

function isUnavailable(error: unknown): boolean {
  return (
    error instanceof GRPCUnavailableError ||
    error instanceof GRPCDeadlineExceededError ||
    error instanceof GRPCCancelledError ||
    error instanceof ClientClosedError ||
    // etcd without a leader (lost quorum): "etcdserver: no leader", "etcdserver: request timed out".
    (error instanceof EtcdError && /no leader|request timed out|leader changed|too many requests/.test(error.message))
  );
}

function isCompacted(error: unknown): boolean {
  return error instanceof GRPCOutOfRangeError || /required revision has been compacted/.test(String((error as Error)?.message));
}

interface PreparedOp {
  readonly op: TxnOp;
  readonly etcdKey: Buffer;
  readonly json?: string;
}

/** An etcd watch behind one StoreWatch. */
interface ActiveWatch {
  readonly watcher: Watcher<unknown>;
  etcd: EtcdWatcher | undefined;
  /** Set once etcd ended it (cancelled by the server): cancelling again would hang. */
  ended: boolean;
  cancelled: Promise<void> | undefined;
}

/**
 * @example
 * const store = await EtcdStateStore.connect({ endpoints: ['http://127.0.0.1:2379'], prefix: '/ciliate/' });
 * const { revision } = await store.put('ipam/nodes/n1', { cidr: '10.244.1.0/24' }, { expectedRevision: 0 });
 * for await (const event of store.watch('ipam/', { afterRevision: revision })) console.log(event);
 * await store.close();
 */
export class EtcdStateStore implements StateStore {
  readonly endpoints: readonly string[];
  readonly prefix: string;
  readonly timeoutMs: number;
  #client: Etcd3;
  #prefix: Buffer;
  /** Highest etcd revision seen in any response (ours or a watch's). */
  #etcdRevision: number;
  #inflight = new Set<Promise<unknown>>();
  #watches = new Set<ActiveWatch>();
  #closing: Promise<void> | undefined;

  private constructor(client: Etcd3, endpoints: readonly string[], prefix: string, timeoutMs: number, etcdRevision: number) {
    this.#client = client;
    this.endpoints = endpoints;
    this.prefix = prefix;
    this.#prefix = Buffer.from(prefix, 'utf8');
    this.timeoutMs = timeoutMs;
    this.#etcdRevision = etcdRevision;
  }

  /**
   * Connects to etcd and reads the current revision. Fails with ERR_STORE_UNAVAILABLE (naming the
   * endpoints) if no member answers within `timeoutMs`.
   */
  static async connect(options: EtcdStateStoreOptions): Promise<EtcdStateStore> {
    const endpoints = typeof options?.endpoints === 'string' ? [options.endpoints] : [...(options?.endpoints ?? [])];
    const prefix = options?.prefix ?? '/ciliate/';
    const timeoutMs = options?.timeoutMs ?? 5000;
    if (endpoints.length === 0 || endpoints.some((e) => typeof e !== 'string' || !/^https?:\/\/[^/]+\/?$/.test(e))) {
      throw new StoreError('ERR_STORE_INVALID_ARGUMENT', `store: connecting to etcd: endpoints must be http(s)://host:port URLs, got ${JSON.stringify(options?.endpoints)}`);
    }
    if (typeof prefix !== 'string') throw new StoreError('ERR_STORE_INVALID_ARGUMENT', 'store: connecting to etcd: prefix must be a string');
    if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) {
      throw new StoreError('ERR_STORE_INVALID_ARGUMENT', `store: connecting to etcd: timeoutMs must be a positive number, got ${String(timeoutMs)}`);
    }
    const hosts = endpoints.map((e) => e.replace(/\/$/, ''));
    const client = new Etcd3({
      hosts,
      // Unary calls get the deadline; watch streams live until cancelled.
      defaultCallOptions: (context) => (context.isStream ? {} : { deadline: Date.now() + timeoutMs }),
      faultHandling: { global: passThrough, host: () => passThrough, watchBackoff: watchBackoff() },
    });
    const store = new EtcdStateStore(client, hosts, prefix, timeoutMs, 0);
    try {
      const response = await store.#call('connect', true, () => client.kv.range({ key: store.#prefix.length > 0 ? store.#prefix : Buffer.from([0]), limit: 1, keys_only: true }));
      store.#observe(response.header);
    } catch (error) {
      client.close();
      throw error;
    }
    return store;
  }

  get revision(): number {
    return toStoreRevision(this.#etcdRevision);
  }

  async get<T = unknown>(key: string): Promise<KeyValue<T> | undefined> {
    this.#assertUsable('get');
    validateKey('get', key);
    const response = await this.#call(`get ${key}`, true, () => this.#client.kv.range({ key: this.#etcdKey(key) }));
    const kv = response.kvs[0];
    return kv === undefined ? undefined : this.#toKeyValue<T>(`get ${key}`, kv);
  }

  async list<T = unknown>(prefix: string): Promise<ListResult<T>> {
    this.#assertUsable('list');
    if (typeof prefix !== 'string') throw new StoreError('ERR_STORE_INVALID_ARGUMENT', 'store: list: prefix must be a string');
    const range = this.#range(prefix);
    const response = await this.#call(`list ${prefix}`, true, () => this.#client.kv.range({ key: range.key, range_end: range.end }));
    const entries = response.kvs.map((kv) => this.#toKeyValue<T>(`list ${prefix}`, kv));
    // Same order as the embedded stores (UTF-16 code units; etcd's is UTF-8 bytes).
    entries.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    return { revision: toStoreRevision(response.header.revision), entries };
  }

  async put<T = unknown>(key: string, value: T, options?: WriteOptions): Promise<WriteResult> {
    const { revision } = await this.#transact(`put ${key}`, [{ type: 'put', key, value, expectedRevision: options?.expectedRevision }]);
    return { revision };
  }

  async delete(key: string, options?: WriteOptions): Promise<DeleteResult> {
    const { revision, deleted } = await this.#transact(`delete ${key}`, [{ type: 'delete', key, expectedRevision: options?.expectedRevision }]);
    return { revision, deleted };
  }

  async transaction(ops: readonly TxnOp[]): Promise<TxnResult> {
    const { revision } = await this.#transact('transaction', ops);
    return { revision };
  }

  watch<T = unknown>(prefix: string, options?: WatchOptions): StoreWatch<T> {
    this.#assertUsable('watch');
    if (typeof prefix !== 'string') throw new StoreError('ERR_STORE_INVALID_ARGUMENT', 'store: watch: prefix must be a string');
    // Default: from the last revision this client saw, so a write that returned before watch()
    // was called is never delivered, and one after it never missed (etcd's own default, "now",
    // would race with the watch being set up).
    const after = options?.afterRevision ?? this.revision;
    validateRevision('watch', after);
    const label = `watch ${prefix || '(all keys)'}`;
    const active: ActiveWatch = { watcher: undefined as unknown as Watcher<unknown>, etcd: undefined, ended: false, cancelled: undefined };
    const watcher = new Watcher<T>(prefix, () => this.#stopWatch(active), options?.signal);
    (active as { watcher: Watcher<unknown> }).watcher = watcher as Watcher<unknown>;
    if (options?.signal?.aborted) return watcher;
    this.#watches.add(active);

    /** Store revision of the last event handed on; a resumed watch starts after it. */
    let delivered = after;
    const range = this.#range(prefix);
    const etcd = this.#client.watch().inRange({ start: range.key, end: range.end }).startRevision(String(toEtcdRevision(delivered) + 1)).watcher();
    active.etcd = etcd;
    etcd.on('connected', (response: IWatchResponse) => this.#observe(response.header));
    etcd.on('data', (response: IWatchResponse) => {
      this.#observe(response.header);
      let last = delivered;
      for (const event of response.events) {
        const revision = toStoreRevision(event.kv.mod_revision);
        // Replayed again after a reconnect: already delivered (a revision never spans responses).
        if (revision <= delivered) continue;
        const key = this.#storeKey(event.kv.key);
        if (event.type === 'Put') {
          let value: T;
          try {
            value = JSON.parse(event.kv.value.toString('utf8')) as T;
          } catch (cause) {
            watcher.fail(new StoreError('ERR_STORE_CORRUPT', `store: ${label}: value of ${key} at revision ${revision} is not JSON`, { cause }));
            return;
          }
          watcher.push({ type: 'put', key, value, revision });
        } else {
          watcher.push({ type: 'delete', key, value: undefined, revision });
        }
        last = revision;
      }
      delivered = last;
    });
    etcd.on('disconnected', () => {
      // The client resumes from the newest revision it heard of, which can be past events not yet
      // received (the header of a catching-up batch is the cluster's current revision); resume
      // from what was actually delivered instead.
      etcd.request.start_revision = String(toEtcdRevision(delivered) + 1);
    });
    etcd.on('error', (error: Error) => {
      // etcd cancelled the watch: in practice its start revision was compacted away.
      active.ended = true;
      void this.#watchFailure(label, delivered, error).then((failure) => watcher.fail(failure));
    });
    return watcher;
  }

  /** Waits for requests in flight, ends all watches and closes the connection. Idempotent. */
  async close(): Promise<void> {
    this.#closing ??= (async () => {
      await Promise.allSettled([...this.#inflight]);
      for (const active of [...this.#watches]) active.watcher.close();
      const cancels = [...this.#watches].map((a) => a.cancelled).filter((p) => p !== undefined);
      let timer: NodeJS.Timeout | undefined;
      const settled = await Promise.race([
        Promise.allSettled(cancels).then(() => true),
        new Promise<false>((resolve) => {
          timer = setTimeout(() => resolve(false), Math.min(this.timeoutMs, 2000));
        }),
      ]);
      clearTimeout(timer);
      if (!settled) {
        // etcd did not confirm the cancels (unreachable): drop the watchers from the client so it
        // stops trying to re-establish their stream after the connection is closed.
        const manager = (this.#client as unknown as { watchManager?: { watchers?: unknown[] } }).watchManager;
        if (manager?.watchers) manager.watchers = [];
      }
      this.#watches.clear();
      this.#client.close();
    })();
    return this.#closing;
  }

  #stopWatch(active: ActiveWatch): void {
    const etcd = active.etcd;
    if (etcd === undefined || active.cancelled !== undefined) return;
    if (active.ended) {
      this.#watches.delete(active);
      return;
    }
    active.cancelled = etcd.cancel().then(
      () => undefined,
      () => undefined,
    );
    void active.cancelled.then(() => this.#watches.delete(active));
  }

  /** Why etcd ended a watch: compacted history (checked with a read at that revision) or not. */
  async #watchFailure(label: string, delivered: number, error: Error): Promise<StoreError> {
    const startRevision = toEtcdRevision(delivered) + 1;
    try {
      await this.#client.kv.range({ key: this.#prefix.length > 0 ? this.#prefix : Buffer.from([0]), limit: 1, keys_only: true, revision: startRevision });
    } catch (probe) {
      if (isCompacted(probe)) {
        return new StoreError(
          'ERR_STORE_COMPACTED',
          `store: ${label}: revision ${delivered} is compacted in etcd (${this.endpoints.join(', ')}); list and watch again`,
          { cause: error },
        );
      }
    }
    return new StoreError('ERR_STORE_IO', `store: ${label}: etcd (${this.endpoints.join(', ')}) ended the watch: ${error.message}`, { cause: error });
  }

  async #transact(operation: string, ops: readonly TxnOp[]): Promise<{ revision: number; deleted: boolean }> {
    this.#assertUsable(operation);
    const prepared = this.#prepare(operation, ops);
    const compared = prepared.filter((p) => p.op.expectedRevision !== undefined);
    const compare: ICompare[] = compared.map(({ op, etcdKey }) =>
      op.expectedRevision === 0
        ? { key: etcdKey, target: 'Version', result: 'Equal', version: 0 }
        : { key: etcdKey, target: 'Mod', result: 'Equal', mod_revision: toEtcdRevision(op.expectedRevision!) },
    );
    const success: IRequestOp[] = [];
    for (const { op, etcdKey, json } of prepared) {
      if (op.type === 'put') success.push({ request_put: { key: etcdKey, value: Buffer.from(json!, 'utf8') } });
      else if (op.type === 'delete') success.push({ request_delete_range: { key: etcdKey } });
    }
    // On failure, read every compared key at the same revision to say which comparisons failed.
    const failure: IRequestOp[] = compared.map(({ etcdKey }) => ({ request_range: { key: etcdKey, keys_only: true } }));
    const response: ITxnResponse = await this.#call(operation, false, () => this.#client.kv.txn({ compare, success, failure }));
    this.#observe(response.header);
    if (!response.succeeded) {
      const mismatches: RevisionMismatch[] = [];
      compared.forEach(({ op }, i) => {
        const kv = response.responses[i]?.response_range?.kvs[0];
        const actualRevision = kv === undefined ? 0 : toStoreRevision(kv.mod_revision);
        if (actualRevision !== op.expectedRevision) mismatches.push({ key: op.key, expectedRevision: op.expectedRevision!, actualRevision });
      });
      throw new StoreConflictError(operation, mismatches);
    }
    const deleted = response.responses.some((r) => r.response_delete_range !== undefined && r.response_delete_range !== null && Number(r.response_delete_range.deleted) > 0);
    return { revision: toStoreRevision(response.header.revision), deleted };
  }

  /** The same validation as the embedded stores (kv-engine), so all backends reject alike. */
  #prepare(operation: string, ops: readonly TxnOp[]): PreparedOp[] {
    if (!Array.isArray(ops)) throw new StoreError('ERR_STORE_INVALID_ARGUMENT', `store: ${operation}: operations must be an array`);
    const seen = new Set<string>();
    const prepared: PreparedOp[] = [];
    for (const op of ops as readonly TxnOp[]) {
      validateKey(operation, op?.key);
      validateRevision(operation, op.expectedRevision);
      // etcd rejects a transaction that writes one key twice; the result would depend on order.
      if (seen.has(op.key)) throw new StoreError('ERR_STORE_INVALID_ARGUMENT', `store: ${operation}: key ${op.key} appears more than once`);
      seen.add(op.key);
      const etcdKey = this.#etcdKey(op.key);
      switch (op.type) {
        case 'put':
          prepared.push({ op, etcdKey, json: toJson(`${operation} ${op.key}`, op.value) });
          break;
        case 'delete':
          prepared.push({ op, etcdKey });
          break;
        case 'check':
          if (op.expectedRevision === undefined) {
            throw new StoreError('ERR_STORE_INVALID_ARGUMENT', `store: ${operation}: check of ${op.key} needs an expectedRevision`);
          }
          prepared.push({ op, etcdKey });
          break;
        default:
          throw new StoreError('ERR_STORE_INVALID_ARGUMENT', `store: ${operation}: unknown operation type ${String((op as { type: unknown }).type)}`);
      }
    }
    return prepared;
  }

  /**
   * Runs one etcd request with typed errors. `idempotent` requests (reads) are retried while
   * another endpoint may answer; writes are tried once.
   */
  async #call<R>(operation: string, idempotent: boolean, request: () => Promise<R>): Promise<R> {
    const run = async (): Promise<R> => {
      const attempts = idempotent ? Math.max(1, this.endpoints.length) : 1;
      let lastError: unknown;
      for (let attempt = 0; attempt < attempts; attempt++) {
        try {
          return await request();
        } catch (error) {
          lastError = error;
          if (!isUnavailable(error)) break;
        }
      }
      throw this.#storeError(operation, lastError);
    };
    const promise = run();
    this.#inflight.add(promise);
    try {
      return await promise;
    } finally {
      this.#inflight.delete(promise);
    }
  }

  #storeError(operation: string, error: unknown): StoreError {
    if (StoreError.is(error)) return error;
    const message = (error as Error)?.message ?? String(error);
    const where = `etcd at ${this.endpoints.join(', ')}`;
    if (isUnavailable(error)) {
      const timedOut = error instanceof GRPCDeadlineExceededError ? ` (no answer within ${this.timeoutMs} ms)` : '';
      return new StoreError('ERR_STORE_UNAVAILABLE', `store: ${operation}: ${where} is unavailable${timedOut}: ${message}`, { cause: error });
    }
    if (error instanceof GRPCInvalidArgumentError || error instanceof GRPCResourceExhastedError) {
      // "too many operations in txn request", "request is too large".
      return new StoreError('ERR_STORE_INVALID_ARGUMENT', `store: ${operation}: rejected by ${where}: ${message}`, { cause: error });
    }
    if (isCompacted(error)) return new StoreError('ERR_STORE_COMPACTED', `store: ${operation}: ${message}`, { cause: error });
    return new StoreError('ERR_STORE_IO', `store: ${operation}: ${where}: ${message}`, { cause: error });
  }

  #observe(header: IResponseHeader | undefined): void {
    const revision = Number(header?.revision ?? 0);
    if (revision > this.#etcdRevision) this.#etcdRevision = revision;
  }

  #etcdKey(key: string): Buffer {
    return Buffer.concat([this.#prefix, Buffer.from(key, 'utf8')]);
  }

  #storeKey(etcdKey: Buffer): string {
    return etcdKey.subarray(this.#prefix.length).toString('utf8');
  }

  #range(prefix: string): { key: Buffer; end: Buffer } {
    const start = this.#etcdKey(prefix);
    // An empty range start means "the whole keyspace" to etcd only as [\0, \0).
    return start.length === 0 ? { key: Buffer.from([0]), end: Buffer.from([0]) } : { key: start, end: prefixEnd(start) };
  }

  #toKeyValue<T>(operation: string, kv: IKeyValue): KeyValue<T> {
    const key = this.#storeKey(kv.key);
    let value: T;
    try {
      value = JSON.parse(kv.value.toString('utf8')) as T;
    } catch (cause) {
      throw new StoreError('ERR_STORE_CORRUPT', `store: ${operation}: value of ${key} in etcd is not JSON`, { cause });
    }
    return {
      key,
      value,
      createRevision: toStoreRevision(kv.create_revision),
      modRevision: toStoreRevision(kv.mod_revision),
      version: Number(kv.version),
    };
  }

  #assertUsable(operation: string): void {
    if (this.#closing) throw new StoreError('ERR_STORE_CLOSED', `store: ${operation}: etcd store (${this.endpoints.join(', ')}) is closed`);
  }
}
