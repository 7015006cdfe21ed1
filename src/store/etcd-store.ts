/**
 * `EtcdStateStore`: the `StateStore` contract on a real etcd v3 cluster, for multi-node setups
 * where every agent must see the same IPAM/identity state.
 *
 * Client: the `etcd3` npm package (microsoft/etcd3, gRPC via @grpc/grpc-js). Only its connection
 * handling and raw KV/Watch RPCs are used (not its builders, retry policies or watch manager); all
 * StateStore semantics are mapped here:
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
 * - `watch()`: one etcd Watch stream per StoreWatch, created with `start_revision` just after
 *   `afterRevision`; after a lost connection it is re-created from the last delivered revision
 *   (no gaps, no repeats), with backoff, for as long as the watch is open. etcd's
 *   `compact_revision` answer ends it with ERR_STORE_COMPACTED;
 * - security: `tls` (CA, client certificate and key, as PEM or files, read and checked before
 *   connecting) for https:// endpoints, `auth` (etcd username/password, exchanged for a token);
 *   https:// without `tls` verifies etcd against Node's public CAs. A refused handshake is
 *   `ERR_STORE_TLS` and refused credentials `ERR_STORE_AUTH`, both naming the endpoint and why;
 * - failures to reach etcd (refused, timed out) are `ERR_STORE_UNAVAILABLE` naming the endpoints.
 *   With several endpoints, reads move on to the next member; writes only when the request
 *   provably never left (no connection): a write whose answer was lost may have been applied, and
 *   resending a compare-and-swap would then report a false conflict.
 * @module
 */
import { Etcd3, EtcdAuthenticationFailedError, EtcdError, EtcdInvalidAuthTokenError, EtcdPermissionDeniedError, GRPCDeadlineExceededError, GRPCInvalidArgumentError, GRPCUnavailableError, GRPCOutOfRangeError, ClientClosedError, GRPCCancelledError, GRPCResourceExhastedError } from 'etcd3';
import type { ICompare, IDuplexStream, IOptions, KVClient, IRequestOp, IResponseHeader, ITxnResponse, IKeyValue, IWatchRequest, IWatchResponse } from 'etcd3';
import { StoreConflictError, StoreError, type RevisionMismatch } from './errors.ts';
import { checkEndpointSecurity, isTlsFailure, loadEtcdCredentials, tlsFailureHint, type EtcdAuthOptions, type EtcdTlsOptions } from './etcd-security.ts';
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
  /** TLS to etcd (https:// endpoints only): trusted CA, and the client certificate for `--client-cert-auth`. */
  readonly tls?: EtcdTlsOptions;
  /** etcd username/password (etcd's auth enabled). Over http:// the password crosses the network in clear. */
  readonly auth?: EtcdAuthOptions;
}

type FaultHandling = NonNullable<IOptions['faultHandling']>;
type Policy = NonNullable<FaultHandling['global']>;

/** No retries or circuit breakers inside the client: this store decides what may be retried. */
const passThrough = {
  execute: <R>(fn: (context: { signal: AbortSignal; attempt: number }) => R | Promise<R>) => Promise.resolve().then(() => fn({ signal: new AbortController().signal, attempt: 1 })),
} as unknown as Policy;

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

/** The request never reached a server (no connection could be made): safe to send elsewhere. */
function neverSent(error: unknown): boolean {
  return error instanceof GRPCUnavailableError && /No connection established|ECONNREFUSED|EHOSTUNREACH|ENETUNREACH|ENOTFOUND|Name resolution failed/.test(error.message);
}

function isCompacted(error: unknown): boolean {
  return error instanceof GRPCOutOfRangeError || /required revision has been compacted/.test(String((error as Error)?.message));
}

interface PreparedOp {
  readonly op: TxnOp;
  readonly etcdKey: Buffer;
  readonly json?: string;
}

/**
 * The StoreWatch of this store. `close()` (also via the abort signal) first delivers the events
 * up to the revision the client knew of when it was called — with a server in between, "already
 * queued" means "already committed and known here", not "already received" — then ends;
 * `return()` (a `for await` break) and the store's `close()` end it at once.
 */
class EtcdWatch<T> extends Watcher<T> {
  #onCloseRequest: (() => void) | undefined;

  set onCloseRequest(handler: () => void) {
    this.#onCloseRequest = handler;
  }

  override close(): void {
    if (this.#onCloseRequest) this.#onCloseRequest();
    else super.close();
  }

  /** Ends the watch now (queued events are still handed out). */
  closeNow(): void {
    super.close();
  }
}

type WatchStream = IDuplexStream<IWatchRequest, IWatchResponse>;

const MIN_WATCH_BACKOFF_MS = 100;
const MAX_WATCH_BACKOFF_MS = 5000;

/** Ends a watch stream of ours; its late 'error' (CANCELLED) must still have a listener. */
function endStream(stream: WatchStream): void {
  stream.on('error', () => {});
  stream.end();
  stream.cancel();
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
  /** Watch streams: a client of its own over all endpoints (a reconnect picks any member). */
  #client: Etcd3;
  /** Requests: one client per endpoint, used in turn, so a dead member is skipped deterministically. */
  #kvClients: readonly KVClient[];
  #allClients: readonly Etcd3[];
  /** Index into `#kvClients` of the member that answered last. */
  #current = 0;
  #prefix: Buffer;
  /** Highest etcd revision seen in any response (ours or a watch's). */
  #etcdRevision: number;
  #inflight = new Set<Promise<unknown>>();
  /** Ends each running watch at once, for close(). */
  #watchClosers = new Set<() => void>();
  #closing: Promise<void> | undefined;

  private constructor(client: Etcd3, kvClients: readonly Etcd3[], endpoints: readonly string[], prefix: string, timeoutMs: number, etcdRevision: number) {
    this.#client = client;
    this.#kvClients = kvClients.map((c) => c.kv);
    this.#allClients = [client, ...kvClients];
    this.endpoints = endpoints;
    this.prefix = prefix;
    this.#prefix = Buffer.from(prefix, 'utf8');
    this.timeoutMs = timeoutMs;
    this.#etcdRevision = etcdRevision;
  }

  /**
   * Connects to etcd and reads the current revision. Fails with ERR_STORE_UNAVAILABLE (naming the
   * endpoints) if no member answers within `timeoutMs`, ERR_STORE_TLS if a TLS file is unusable
   * or the handshake is refused, ERR_STORE_AUTH if etcd refuses the credentials. TLS files are
   * read here only: after rotating them, connect again.
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
    checkEndpointSecurity(endpoints, options.tls, options.auth);
    const credentials = options.tls === undefined ? undefined : await loadEtcdCredentials(options.tls);
    const auth = options.auth === undefined ? undefined : { username: options.auth.username, password: options.auth.password };
    const hosts = endpoints.map((e) => e.replace(/\/$/, ''));
    const newClient = (clientHosts: string[]): Etcd3 =>
      new Etcd3({
        hosts: clientHosts,
        credentials,
        auth,
        // Unary calls get the deadline; watch streams live until cancelled.
        defaultCallOptions: (context) => (context.isStream ? {} : { deadline: Date.now() + timeoutMs }),
        faultHandling: { global: passThrough, host: () => passThrough },
      });
    const kvClients = hosts.map((host) => newClient([host]));
    // Separate from the request clients: a failed stream resets its client's connection.
    const client = newClient(hosts);
    const store = new EtcdStateStore(client, kvClients, hosts, prefix, timeoutMs, 0);
    try {
      await store.#call('connect', true, (kv) => kv.range({ key: store.#range('').key, limit: 1, keys_only: true }));
    } catch (error) {
      for (const c of store.#allClients) c.close();
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
    const response = await this.#call(`get ${key}`, true, (kv) => kv.range({ key: this.#etcdKey(key) }));
    const kv = response.kvs[0];
    return kv === undefined ? undefined : this.#toKeyValue<T>(`get ${key}`, kv);
  }

  async list<T = unknown>(prefix: string): Promise<ListResult<T>> {
    this.#assertUsable('list');
    if (typeof prefix !== 'string') throw new StoreError('ERR_STORE_INVALID_ARGUMENT', 'store: list: prefix must be a string');
    const range = this.#range(prefix);
    const response = await this.#call(`list ${prefix}`, true, (kv) => kv.range({ key: range.key, range_end: range.end }));
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
    const range = this.#range(prefix);

    /** Store revision of the last event handed on; a (re)created etcd watch starts after it. */
    let delivered = after;
    let stream: WatchStream | undefined;
    let stopped = false;
    let retryTimer: NodeJS.Timeout | undefined;
    let backoff = MIN_WATCH_BACKOFF_MS;
    /** Set by close(): deliver up to this revision, then end. */
    let drainTo: number | undefined;
    let drainTimer: NodeJS.Timeout | undefined;
    /** Whether the current etcd watch started at the head of history, so progress reports are exact. */
    let synced = false;

    // Ends the StoreWatch now, which (through its onClose) stops the etcd side.
    const finish = (): void => watcher.closeNow();
    const stop = (): void => {
      if (stopped) return;
      stopped = true;
      this.#watchClosers.delete(finish);
      clearTimeout(retryTimer);
      clearTimeout(drainTimer);
      const current = stream;
      stream = undefined;
      if (current) endStream(current);
    };
    const watcher = new EtcdWatch<T>(prefix, stop, options?.signal);
    if (options?.signal?.aborted) return watcher;
    this.#watchClosers.add(finish);
    const fail = (error: StoreError): void => {
      stop();
      watcher.fail(error);
    };
    watcher.onCloseRequest = () => {
      if (drainTo !== undefined) return;
      drainTo = this.revision;
      if (delivered >= drainTo || this.#closing) return finish();
      // Ask etcd where the stream stands; events this client knows were committed may still be on
      // their way. A stream still being set up drains once etcd has created it (onResponse). A
      // bounded wait either way: an older etcd might not answer the progress request.
      if (stream !== undefined && synced) stream.write({ progress_request: {} });
      drainTimer = setTimeout(finish, Math.min(this.timeoutMs, 2000));
    };

    const retry = (): void => {
      if (stopped) return;
      if (drainTo !== undefined) return finish();
      retryTimer = setTimeout(() => void open(), backoff);
      backoff = Math.min(backoff * 2, MAX_WATCH_BACKOFF_MS);
    };
    const onResponse = (response: IWatchResponse): void => {
      this.#observe(response.header);
      const compactRevision = Number(response.compact_revision ?? 0);
      if (compactRevision > 0) {
        return fail(
          new StoreError(
            'ERR_STORE_COMPACTED',
            `store: ${label}: revision ${delivered} is compacted in etcd (${this.endpoints.join(', ')}); history starts at revision ${toStoreRevision(compactRevision)}: list and watch again`,
          ),
        );
      }
      if (response.canceled) {
        return fail(new StoreError('ERR_STORE_IO', `store: ${label}: etcd (${this.endpoints.join(', ')}) cancelled the watch: ${response.cancel_reason || 'no reason given'}`));
      }
      if (response.created) {
        backoff = MIN_WATCH_BACKOFF_MS;
        // etcd sends a watcher that starts past its current revision only live events, in order.
        synced = toEtcdRevision(delivered) >= Number(response.header.revision);
        if (drainTo !== undefined && synced) stream?.write({ progress_request: {} });
        return;
      }
      let last = delivered;
      for (const event of response.events) {
        const revision = toStoreRevision(event.kv.mod_revision);
        // Replayed again after a reconnect: already delivered (a revision never spans responses).
        if (revision <= delivered) continue;
        if (drainTo !== undefined && revision > drainTo) break;
        const key = this.#storeKey(event.kv.key);
        if (event.type === 'Put') {
          let value: T;
          try {
            value = JSON.parse(event.kv.value.toString('utf8')) as T;
          } catch (cause) {
            return fail(new StoreError('ERR_STORE_CORRUPT', `store: ${label}: value of ${key} at revision ${revision} is not JSON`, { cause }));
          }
          watcher.push({ type: 'put', key, value, revision });
        } else {
          watcher.push({ type: 'delete', key, value: undefined, revision });
        }
        last = revision;
      }
      delivered = last;
      if (drainTo === undefined) return;
      // A progress report (no events): everything up to the header's revision has been sent.
      const progress = response.events.length === 0 && synced ? toStoreRevision(response.header.revision) : delivered;
      if (Math.max(delivered, progress) >= drainTo) finish();
    };
    const open = async (): Promise<void> => {
      let current: WatchStream;
      try {
        current = await this.#client.watchClient.watch();
      } catch {
        // No member reachable now: keep trying, as etcd's own clients do; close() ends it.
        return retry();
      }
      if (stopped) return endStream(current);
      stream = current;
      synced = false;
      current.on('data', (response: IWatchResponse) => {
        if (current !== stream) return;
        try {
          onResponse(response);
        } catch (error) {
          fail(new StoreError('ERR_STORE_IO', `store: ${label}: ${(error as Error).message}`, { cause: error }));
        }
      });
      const lost = (): void => {
        if (current !== stream) return;
        stream = undefined;
        endStream(current);
        retry();
      };
      current.on('error', lost);
      current.on('end', lost);
      try {
        current.write({
          create_request: { key: range.key, range_end: range.end, start_revision: toEtcdRevision(delivered) + 1, progress_notify: true },
        });
      } catch {
        lost();
      }
    };
    void open();
    return watcher;
  }

  /** Waits for requests in flight, ends all watches and closes the connections. Idempotent. */
  async close(): Promise<void> {
    this.#closing ??= (async () => {
      await Promise.allSettled([...this.#inflight]);
      for (const close of [...this.#watchClosers]) close();
      for (const client of this.#allClients) client.close();
    })();
    return this.#closing;
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
    const response: ITxnResponse = await this.#call(operation, false, (kv) => kv.txn({ compare, success, failure }));
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
   * Runs one etcd request with typed errors. With several endpoints, a failed request is sent to
   * the next member (each at most once, each with its own `timeoutMs` deadline): reads on any
   * connection failure, writes only when no connection could be made at all — a write whose
   * answer was lost may have been applied.
   */
  async #call<R>(operation: string, idempotent: boolean, request: (kv: KVClient) => Promise<R>): Promise<R> {
    const run = async (): Promise<R> => {
      let lastError: unknown;
      let lastEndpoint = this.endpoints[this.#current];
      // Each member at most once, starting with the one that answered last.
      for (let attempt = 0; attempt < this.#kvClients.length; attempt++) {
        const index = this.#current;
        try {
          const response = await request(this.#kvClients[index]);
          this.#observe((response as { header?: IResponseHeader } | undefined)?.header);
          return response;
        } catch (error) {
          lastError = error;
          lastEndpoint = this.endpoints[index];
          if (!(idempotent ? isUnavailable(error) : neverSent(error))) break;
          // Concurrent calls may have moved on already; only advance past the member that failed.
          if (this.#current === index) this.#current = (index + 1) % this.#kvClients.length;
        }
      }
      throw this.#storeError(operation, lastError, lastEndpoint);
    };
    const promise = run();
    this.#inflight.add(promise);
    try {
      return await promise;
    } finally {
      this.#inflight.delete(promise);
    }
  }

  /** `endpoint`: the member that gave `error`, named by TLS and auth errors (they are per member). */
  #storeError(operation: string, error: unknown, endpoint?: string): StoreError {
    if (StoreError.is(error)) return error;
    const message = (error as Error)?.message ?? String(error);
    const where = `etcd at ${this.endpoints.join(', ')}`;
    const member = `etcd at ${endpoint ?? this.endpoints.join(', ')}`;
    if (error instanceof GRPCUnavailableError && isTlsFailure(message)) {
      return new StoreError('ERR_STORE_TLS', `store: ${operation}: TLS to ${member} failed: ${tlsFailureHint(message)}: ${message.trim()}`, { cause: error });
    }
    if (error instanceof EtcdAuthenticationFailedError) {
      return new StoreError('ERR_STORE_AUTH', `store: ${operation}: ${member} refused the username/password (wrong user or password): ${message}`, { cause: error });
    }
    if (error instanceof EtcdPermissionDeniedError || error instanceof EtcdInvalidAuthTokenError || /user name is empty|auth: (not|invalid)/.test(message)) {
      return new StoreError('ERR_STORE_AUTH', `store: ${operation}: ${member} denied the request (etcd auth is enabled: the user, from username/password or the client certificate's CN, lacks permission on ${this.prefix}, or none was given): ${message}`, { cause: error });
    }
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
