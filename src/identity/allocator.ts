/**
 * The identity allocator: label set → security identity number, the same on every node.
 *
 * - Reserved and well-known label sets map to their fixed numbers without touching the store.
 * - Label sets with a `cidr:` label get node-local identities (`1<<24 | n`, local.ts).
 * - Everything else gets a cluster-wide identity from the store (layout in keys.ts): one
 *   transaction writes the by-labels index, the by-id record and this node's ref, each with
 *   "must not exist". Two nodes racing for the same labels: one transaction wins, the other
 *   conflicts on the by-labels key, re-reads it and takes a ref on the winner's number. Two nodes
 *   picking the same number for different labels: the loser conflicts on by-id and picks another.
 *   Numbers are picked at random among those the local view considers free, as Cilium does, so
 *   racing nodes rarely collide.
 * - References: in memory per allocator (`allocate` +1, `release` −1), mirrored in the store as
 *   one ref key per node and identity while the count is above zero. `collectUnused` deletes
 *   identities no node references.
 * - In one allocator, allocations and releases of one label set run one at a time; those of
 *   different label sets run together (their numbers kept apart in memory), so a burst of pods
 *   with new labels does not wait for one store round trip after another.
 * - A watch on `identities/by-id/` keeps an in-memory cache (cache.ts), so `get` and `lookup` are
 *   synchronous and every node learns identities others allocated (policy needs their labels to
 *   resolve selectors). Watch failures (compaction, a lost etcd connection) re-list and re-watch.
 * @module
 */
import { StoreError, type StateStore, type StoreConflictError, type TxnOp } from '../store/index.ts';
import { IdentityCache, type CachedIdentity } from './cache.ts';
import { IdentityError, IdentityExhaustedError, InvalidLabelsError } from './errors.ts';
import {
  BY_ID_PREFIX,
  BY_LABELS_PREFIX,
  IDENTITIES_PREFIX,
  MAX_CANONICAL_LENGTH,
  REFS_PREFIX,
  byIdKey,
  byLabelsKey,
  idOfByIdKey,
  parseRefKey,
  refKey,
  validateNodeName,
  type IdentityRecord,
  type LabelsRecord,
  type RefRecord,
} from './keys.ts';
import { LabelFilter } from './label-filter.ts';
import { Labels, formatLabel, type LabelsInput } from './labels.ts';
import { LocalIdentities, cidrLabels } from './local.ts';
import {
  clusterIdentityRange,
  identityScope,
  reservedIdentity,
  reservedIdentityForLabels,
  wellKnownIdentities,
  type WellKnownIdentity,
  type WellKnownOptions,
} from './reserved.ts';

export interface Identity {
  readonly id: number;
  /** The identity-relevant labels (after filtering). */
  readonly labels: Labels;
}

export interface AllocationResult extends Identity {
  /** True if this call created the identity (in the store, or the node-local table). */
  readonly isNew: boolean;
}

/** A change of the set of known identities (cluster-wide from any node, or node-local). */
export interface IdentityChange {
  readonly type: 'upsert' | 'delete';
  readonly identity: Identity;
}

export interface IdentityAllocatorOptions {
  readonly store: StateStore;
  /** This node's name: the ref keys carry it. */
  readonly nodeName: string;
  /** Cluster id 0–255; selects the allocation range (cluster 0: 256–65535). Default 0. */
  readonly clusterId?: number;
  /** A sub-range of the cluster's range to allocate from (tests, or splitting a range). */
  readonly idRange?: { readonly min: number; readonly max: number };
  /** Which labels count. Default: LabelFilter.default. */
  readonly labelFilter?: LabelFilter;
  /** Cluster and Cilium namespace for the well-known identities, or false to disable them. */
  readonly wellKnown?: WellKnownOptions | false;
  /** CIDR identities get `reserved:world-ipv4`/`-ipv6` instead of `reserved:world`. */
  readonly dualStack?: boolean;
  /** Clock in ms since the epoch (tests). Default Date.now. */
  readonly now?: () => number;
  /** Called with errors of the background watch before it re-lists; default: ignored. */
  readonly onWatchError?: (error: unknown) => void;
}

export interface CollectOptions {
  /** Keep identities whose last reference was dropped less than this long ago. Default 0. */
  readonly olderThanMs?: number;
}

export interface CollectResult {
  /** Identities deleted from the store. */
  readonly removed: readonly Identity[];
  /** Identities kept because some node references them (or took a reference during the run). */
  readonly inUse: number;
  /** Unreferenced identities kept because they were used within `olderThanMs`. */
  readonly tooRecent: number;
  /** Index entries and refs without an identity (hand edits, older bugs) that were deleted. */
  readonly orphansRemoved: number;
}

type Resolved =
  | { readonly kind: 'fixed'; readonly id: number; readonly labels: Labels }
  | { readonly kind: 'local'; readonly labels: Labels }
  | { readonly kind: 'cluster'; readonly labels: Labels };

interface Held {
  readonly id: number;
  readonly labels: Labels;
  count: number;
}

const MAX_ATTEMPTS = 16;

/**
 * Steps serialised per key (one label set: its reference count and its store records), and
 * exclusive steps that wait for every keyed step issued before them and hold back those issued
 * after. Allocations of different label sets thus have their store round trips in flight together
 * (a group-committing store makes them durable with one sync), while one label set never has two.
 */
class KeyedQueue {
  #tails = new Map<string, Promise<void>>();
  #exclusive: Promise<void> = Promise.resolve();

  run<T>(key: string, step: () => Promise<T>): Promise<T> {
    const result = Promise.all([this.#tails.get(key), this.#exclusive]).then(step);
    const tail = result.then(
      () => {},
      () => {},
    );
    this.#tails.set(key, tail);
    void tail.then(() => {
      if (this.#tails.get(key) === tail) this.#tails.delete(key);
    });
    return result;
  }

  runExclusive<T>(step: () => Promise<T>): Promise<T> {
    const result = Promise.all([this.#exclusive, ...this.#tails.values()]).then(step);
    this.#exclusive = result.then(
      () => {},
      () => {},
    );
    return result;
  }
}

/** A random 0–2^attempt ms pause (capped at 50 ms) so writers that collided do not collide again in lockstep. */
function backoff(attempt: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, Math.random() * Math.min(50, 2 ** attempt)));
}

function isConflict(error: unknown): error is StoreConflictError {
  return StoreError.is(error, 'ERR_STORE_CONFLICT');
}

function labelsOfRecord(record: IdentityRecord | undefined): Labels | undefined {
  if (record === undefined || !Array.isArray(record.labels)) return undefined;
  try {
    return Labels.parse(record.labels, { defaultSource: 'unspec' });
  } catch {
    return undefined;
  }
}

/**
 * @example
 * const allocator = new IdentityAllocator({ store, nodeName: 'n1' });
 * await allocator.start();
 * const { id } = await allocator.allocate(['k8s:app=web', 'k8s:io.kubernetes.pod.namespace=default']); // e.g. 48213
 * allocator.get(id)?.labels.toStrings(); // ['k8s:app=web', 'k8s:io.kubernetes.pod.namespace=default']
 * allocator.allocateCidr('10.0.0.0/8').id; // 16777217 (1<<24 | 1)
 * await allocator.release(id);
 * await allocator.stop();
 */
export class IdentityAllocator {
  readonly nodeName: string;
  /** The cluster-wide numbers this allocator hands out. */
  readonly range: { readonly min: number; readonly max: number };
  readonly labelFilter: LabelFilter;
  #store: StateStore;
  #now: () => number;
  #dualStack: boolean;
  #onWatchError: ((error: unknown) => void) | undefined;
  #queue = new KeyedQueue();
  #cache: IdentityCache;
  #local: LocalIdentities;
  #wellKnown: Map<string, WellKnownIdentity>;
  #wellKnownById: Map<number, WellKnownIdentity>;
  /** This node's references to cluster-wide identities, by canonical labels and by id. */
  #held = new Map<string, Held>();
  #heldById = new Map<number, Held>();
  /** Numbers found taken by a lost compare-and-swap that the cache did not know yet. */
  #taken = new Set<number>();
  /** Numbers picked for allocations in flight here: two label sets must not race for one. */
  #picked = new Set<number>();
  #listeners = new Set<(change: IdentityChange) => void>();
  #watchAbort: AbortController | undefined;
  #watchLoop: Promise<void> | undefined;
  /** Store revision the cache is complete up to (a listing's, or the last watch event's). */
  #syncedRevision = 0;

  constructor(options: IdentityAllocatorOptions) {
    validateNodeName(options.nodeName);
    this.nodeName = options.nodeName;
    this.#store = options.store;
    const cluster = clusterIdentityRange(options.clusterId ?? 0);
    const range = options.idRange ?? cluster;
    if (!Number.isInteger(range.min) || !Number.isInteger(range.max) || range.min > range.max || range.min < cluster.min || range.max > cluster.max) {
      throw new IdentityError(
        'ERR_IDENTITY_INVALID_ARGUMENT',
        `identity: id range ${range.min}–${range.max} is invalid: expected integers min ≤ max within the cluster range ${cluster.min}–${cluster.max}`,
      );
    }
    this.range = { min: range.min, max: range.max };
    this.labelFilter = options.labelFilter ?? LabelFilter.default;
    this.#now = options.now ?? Date.now;
    this.#dualStack = options.dualStack ?? false;
    this.#onWatchError = options.onWatchError;
    const wellKnown = options.wellKnown === false ? [] : wellKnownIdentities(options.wellKnown);
    this.#wellKnown = new Map(wellKnown.map((w) => [w.labels.canonical, w]));
    this.#wellKnownById = new Map(wellKnown.map((w) => [w.id, w]));
    this.#cache = new IdentityCache((type, identity) => this.#emit(type, identity));
    this.#local = new LocalIdentities((type, id, labels) => this.#emit(type, { id, labels }));
  }

  /** Whether the watch-fed cache is running. */
  get started(): boolean {
    return this.#watchAbort !== undefined;
  }

  /**
   * Lists the identities in the store into the cache, then watches for changes in the
   * background. Resolves once the listing is in the cache. Calling it twice is harmless.
   */
  async start(): Promise<void> {
    if (this.#watchAbort !== undefined) return;
    const abort = new AbortController();
    this.#watchAbort = abort;
    let revision: number;
    try {
      revision = await this.#relist();
    } catch (error) {
      this.#watchAbort = undefined;
      throw error;
    }
    this.#watchLoop = this.#watch(revision, abort.signal);
  }

  /** Stops the watch. The cache keeps its content; references are not released. */
  async stop(): Promise<void> {
    const abort = this.#watchAbort;
    if (abort === undefined) return;
    abort.abort();
    await this.#watchLoop;
    this.#watchAbort = undefined;
    this.#watchLoop = undefined;
  }

  /**
   * The store revision this node's view of cluster-wide identities is complete up to: every
   * identity created or deleted at or before it is known here and has reached the subscribers.
   */
  get revision(): number {
    return this.#syncedRevision;
  }

  /**
   * Moves `revision` up to the store's current revision if the view already holds everything.
   * The watch only moves it when an identity changes, so after a quiet stretch the view is
   * current while `revision` lags behind the store (whose revision every write raises). A fresh
   * listing that equals the view proves it current; while they differ (the watch has not caught
   * up yet) nothing moves. Returns `revision`.
   */
  async catchUp(): Promise<number> {
    const listing = await this.#store.list<IdentityRecord>(BY_ID_PREFIX);
    if (listing.revision <= this.#syncedRevision) return this.#syncedRevision;
    const entries: { id: number; revision: number }[] = [];
    for (const entry of listing.entries) {
      const id = idOfByIdKey(entry.key);
      if (id !== undefined && labelsOfRecord(entry.value) !== undefined) entries.push({ id, revision: entry.modRevision });
    }
    if (this.#cache.matches(entries)) this.#syncedRevision = listing.revision;
    return this.#syncedRevision;
  }

  /**
   * Calls `listener` for every identity that appears or disappears (cluster-wide from any node
   * via the watch, or node-local). Returns the unsubscribe function.
   */
  subscribe(listener: (change: IdentityChange) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /**
   * The identity for a label set, taking one reference on it. Labels without a source are `k8s`
   * labels; labels the filter drops do not count. Throws InvalidLabelsError
   * (ERR_IDENTITY_INVALID_LABELS), IdentityExhaustedError (ERR_IDENTITY_EXHAUSTED), or
   * ERR_IDENTITY_CONFLICT after losing too many compare-and-swap rounds.
   */
  async allocate(input: LabelsInput): Promise<AllocationResult> {
    const resolved = this.#resolve(input);
    switch (resolved.kind) {
      case 'fixed':
        return { id: resolved.id, labels: resolved.labels, isNew: false };
      case 'local':
        return this.#local.allocate(resolved.labels);
      case 'cluster':
        return this.#queue.run(resolved.labels.canonical, () => this.#allocateCluster(resolved.labels));
    }
  }

  /**
   * A node-local CIDR identity (`1<<24 | n`) with labels `cidr:<prefix>` and `reserved:world`,
   * taking one reference. `/0` is the world: reserved identity 2 (9 or 10 when dual-stack).
   *
   * @example
   * allocator.allocateCidr('10.0.0.0/8'); // { id: 16777217, labels: cidr:10.0.0.0/8;reserved:world, isNew: true }
   */
  allocateCidr(cidr: string): AllocationResult {
    const labels = cidrLabels(cidr, { dualStack: this.#dualStack });
    const fixed = reservedIdentityForLabels(labels);
    if (fixed !== undefined) return { id: fixed, labels, isNew: false };
    return this.#local.allocate(labels);
  }

  /** Releases one reference to a CIDR identity by its CIDR; true when the identity is gone. */
  releaseCidr(cidr: string): boolean {
    const labels = cidrLabels(cidr, { dualStack: this.#dualStack });
    if (reservedIdentityForLabels(labels) !== undefined) return false;
    const found = this.#local.lookup(labels);
    if (found === undefined) {
      throw new IdentityError('ERR_IDENTITY_NOT_REFERENCED', `identity: cannot release CIDR identity of ${cidr}: it is not allocated on this node`);
    }
    return this.#local.release(found.id);
  }

  /**
   * Drops one reference. Returns true when this node's last reference went (for a cluster-wide
   * identity: its ref key is deleted; the identity itself stays until garbage collection).
   * Reserved and well-known identities are not counted: releasing them returns false.
   * Throws ERR_IDENTITY_NOT_REFERENCED for an identity this node does not hold.
   */
  async release(id: number): Promise<boolean> {
    const scope = identityScope(id);
    switch (scope) {
      case 'reserved':
      case 'well-known':
      case 'user-reserved':
        return false;
      case 'local':
        return this.#local.release(id);
      case 'cluster':
        break;
      default:
        throw new IdentityError('ERR_IDENTITY_INVALID_ARGUMENT', `identity: cannot release ${String(id)}: not an allocatable identity number (${scope})`);
    }
    const labels = this.#heldById.get(id)?.labels.canonical;
    const step = async (): Promise<boolean> => {
      const held = this.#heldById.get(id);
      if (held === undefined) {
        throw new IdentityError('ERR_IDENTITY_NOT_REFERENCED', `identity: cannot release identity ${id}: node ${this.nodeName} holds no reference to it`);
      }
      if (held.count > 1) {
        held.count--;
        return false;
      }
      await this.#dropRef(id, this.nodeName);
      this.#held.delete(held.labels.canonical);
      this.#heldById.delete(id);
      return true;
    };
    // Not held (yet): answered once nothing is in flight, as a single queue would.
    return labels === undefined ? this.#queue.runExclusive(step) : this.#queue.run(labels, step);
  }

  /** The identity with this number, from memory: reserved, well-known, node-local or cached cluster-wide. */
  get(id: number): Identity | undefined {
    switch (identityScope(id)) {
      case 'reserved': {
        const r = reservedIdentity(id)!;
        return { id: r.id, labels: r.labels };
      }
      case 'well-known': {
        const w = this.#wellKnownById.get(id);
        return w === undefined ? undefined : { id: w.id, labels: w.labels };
      }
      case 'local':
        return this.#local.get(id);
      case 'cluster':
        return this.#cache.get(id);
      default:
        return undefined;
    }
  }

  /** The identity a label set has, from memory, without allocating. Invalid labels throw. */
  lookup(input: LabelsInput): Identity | undefined {
    const resolved = this.#resolve(input);
    switch (resolved.kind) {
      case 'fixed':
        return { id: resolved.id, labels: resolved.labels };
      case 'local':
        return this.#local.lookup(resolved.labels);
      case 'cluster':
        return this.#cache.lookup(resolved.labels.canonical);
    }
  }

  /** Cluster-wide identities known to this node (all of the store's once started), by number. */
  list(): Identity[] {
    return this.#cache.list();
  }

  /** This node's node-local (CIDR) identities, by number. */
  listLocal(): Identity[] {
    return this.#local.list();
  }

  /** How many references this node holds on `id` (0 for reserved identities). */
  references(id: number): number {
    return identityScope(id) === 'local' ? this.#local.references(id) : (this.#heldById.get(id)?.count ?? 0);
  }

  /**
   * Deletes cluster-wide identities that no node references (and that nobody used within
   * `olderThanMs`), plus index entries and refs that point at no identity. Safe to run on any node
   * at any time: a reference taken concurrently makes the delete fail, and the identity is kept.
   */
  async collectUnused(options?: CollectOptions): Promise<CollectResult> {
    const olderThanMs = options?.olderThanMs ?? 0;
    if (!Number.isFinite(olderThanMs) || olderThanMs < 0) {
      throw new IdentityError('ERR_IDENTITY_INVALID_ARGUMENT', `identity: olderThanMs ${String(olderThanMs)} is invalid: expected a number ≥ 0`);
    }
    const now = this.#now();
    const listing = await this.#store.list(IDENTITIES_PREFIX);
    const byId = new Map<number, { key: string; revision: number; record: IdentityRecord; labels: Labels | undefined }>();
    const byLabels = new Map<string, { key: string; revision: number; id: unknown }>();
    const refs = new Map<number, { key: string; revision: number }[]>();
    for (const entry of listing.entries) {
      const id = idOfByIdKey(entry.key);
      if (id !== undefined) {
        const record = entry.value as IdentityRecord;
        byId.set(id, { key: entry.key, revision: entry.modRevision, record, labels: labelsOfRecord(record) });
        continue;
      }
      if (entry.key.startsWith(BY_LABELS_PREFIX)) {
        byLabels.set(entry.key.slice(BY_LABELS_PREFIX.length), { key: entry.key, revision: entry.modRevision, id: (entry.value as LabelsRecord | undefined)?.id });
        continue;
      }
      const ref = parseRefKey(entry.key);
      if (ref !== undefined) {
        const list = refs.get(ref.id) ?? [];
        list.push({ key: entry.key, revision: entry.modRevision });
        refs.set(ref.id, list);
      }
    }

    const removed: Identity[] = [];
    let inUse = 0;
    let tooRecent = 0;
    let orphansRemoved = 0;
    const tryDelete = async (ops: TxnOp[]): Promise<number | undefined> => {
      try {
        return (await this.#store.transaction(ops)).revision;
      } catch (error) {
        if (isConflict(error)) return undefined;
        throw error;
      }
    };

    for (const [id, entry] of byId) {
      if (refs.has(id)) {
        inUse++;
        continue;
      }
      const lastUsed = typeof entry.record?.lastUsedAt === 'number' ? entry.record.lastUsedAt : 0;
      if (now - lastUsed < olderThanMs) {
        tooRecent++;
        continue;
      }
      const ops: TxnOp[] = [{ type: 'delete', key: entry.key, expectedRevision: entry.revision }];
      const index = entry.labels === undefined ? undefined : byLabels.get(entry.labels.canonical);
      if (index !== undefined && index.id === id) {
        ops.push({ type: 'delete', key: index.key, expectedRevision: index.revision });
        byLabels.delete(entry.labels!.canonical);
      }
      const revision = await tryDelete(ops);
      if (revision === undefined) {
        inUse++;
        continue;
      }
      this.#cache.apply(id, revision, undefined);
      this.#taken.delete(id);
      if (entry.labels !== undefined) removed.push({ id, labels: entry.labels });
    }

    // Index entries whose identity is missing or carries other labels: allocation would repair
    // them too, but collecting them keeps the store tidy.
    for (const [canonical, index] of byLabels) {
      const target = typeof index.id === 'number' ? byId.get(index.id) : undefined;
      if (target !== undefined && target.labels?.canonical === canonical) continue;
      if ((await tryDelete([{ type: 'delete', key: index.key, expectedRevision: index.revision }])) !== undefined) orphansRemoved++;
    }
    for (const [id, list] of refs) {
      if (byId.has(id)) continue;
      for (const ref of list) if ((await tryDelete([{ type: 'delete', key: ref.key, expectedRevision: ref.revision }])) !== undefined) orphansRemoved++;
    }
    return { removed, inUse, tooRecent, orphansRemoved };
  }

  /**
   * After a restart: deletes this node's ref keys for identities it has not re-allocated since
   * (references are counted in memory, so those of a previous run are unknown). Call once the
   * restored endpoints have allocated their identities. Returns how many refs were dropped.
   */
  async reconcileReferences(): Promise<number> {
    return this.#queue.runExclusive(async () => {
      let dropped = 0;
      for (const id of await this.#refsOf(this.nodeName)) {
        if (this.#heldById.has(id)) continue;
        if (await this.#dropRef(id, this.nodeName)) dropped++;
      }
      return dropped;
    });
  }

  /**
   * Drops every reference of another node (it left the cluster or its agent is gone for good),
   * so garbage collection can reclaim identities only it used. Returns how many refs were dropped.
   */
  async purgeNode(node: string): Promise<number> {
    validateNodeName(node);
    if (node === this.nodeName) {
      throw new IdentityError('ERR_IDENTITY_INVALID_ARGUMENT', `identity: purgeNode(${node}) names this node; use release() or reconcileReferences()`);
    }
    let dropped = 0;
    for (const id of await this.#refsOf(node)) if (await this.#dropRef(id, node)) dropped++;
    return dropped;
  }

  // --- internals ---------------------------------------------------------------------------

  #resolve(input: LabelsInput): Resolved {
    const all = Labels.from(input);
    const any = all.toArray().find((l) => l.source === 'any');
    if (any !== undefined) {
      throw new InvalidLabelsError(formatLabel(any), "source 'any' only matches in selectors; an identity needs labels with a concrete source (k8s, container, reserved, cidr, unspec)");
    }
    const { identity: labels, dropped } = this.labelFilter.apply(all);
    if (labels.size === 0) {
      throw new InvalidLabelsError(
        all.canonical,
        dropped.size === 0 ? 'the label set is empty' : `no security-relevant labels left after filtering (dropped ${dropped.toStrings().join(', ')})`,
      );
    }
    if (labels.canonical.length > MAX_CANONICAL_LENGTH) {
      throw new InvalidLabelsError(`${labels.canonical.slice(0, 80)}…`, `the label set is ${labels.canonical.length} characters long; at most ${MAX_CANONICAL_LENGTH} fit a store key`);
    }
    const reserved = reservedIdentityForLabels(labels);
    if (reserved !== undefined) return { kind: 'fixed', id: reserved, labels };
    const wellKnown = this.#wellKnown.get(labels.canonical);
    if (wellKnown !== undefined) return { kind: 'fixed', id: wellKnown.id, labels: wellKnown.labels };
    if (labels.hasSource('cidr')) return { kind: 'local', labels };
    return { kind: 'cluster', labels };
  }

  async #allocateCluster(labels: Labels): Promise<AllocationResult> {
    const canonical = labels.canonical;
    const held = this.#held.get(canonical);
    if (held !== undefined) {
      held.count++;
      return { id: held.id, labels: held.labels, isNew: false };
    }
    const strings = labels.toStrings();
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      if (attempt > 0) await backoff(attempt);
      // Read the store, not the cache: the cache may lag behind another node's allocation.
      const index = await this.#store.get<LabelsRecord>(byLabelsKey(canonical));
      if (index !== undefined) {
        const id = index.value?.id;
        const existing = typeof id === 'number' && identityScope(id) === 'cluster' ? await this.#store.get<IdentityRecord>(byIdKey(id)) : undefined;
        if (existing !== undefined && labelsOfRecord(existing.value)?.canonical === canonical) {
          const ref = await this.#store.get<RefRecord>(refKey(id!, this.nodeName));
          const now = this.#now();
          try {
            const { revision } = await this.#store.transaction([
              { type: 'check', key: index.key, expectedRevision: index.modRevision },
              // Rewriting by-id makes a concurrent garbage collection of this identity fail.
              { type: 'put', key: existing.key, value: { ...existing.value, lastUsedAt: now } satisfies IdentityRecord, expectedRevision: existing.modRevision },
              { type: 'put', key: refKey(id!, this.nodeName), value: { since: now } satisfies RefRecord, expectedRevision: ref?.modRevision ?? 0 },
            ]);
            return this.#took(id!, labels, revision, false);
          } catch (error) {
            if (!isConflict(error)) throw error;
            continue;
          }
        }
        // The index points at nothing or at other labels (a hand edit): overwritten below, by revision.
      }
      const id = await this.#pickFreeId(canonical);
      const now = this.#now();
      this.#picked.add(id);
      try {
        const { revision } = await this.#store.transaction([
          { type: 'put', key: byLabelsKey(canonical), value: { id } satisfies LabelsRecord, expectedRevision: index?.modRevision ?? 0 },
          { type: 'put', key: byIdKey(id), value: { labels: strings, createdAt: now, lastUsedAt: now } satisfies IdentityRecord, expectedRevision: 0 },
          { type: 'put', key: refKey(id, this.nodeName), value: { since: now } satisfies RefRecord, expectedRevision: 0 },
        ]);
        return this.#took(id, labels, revision, true);
      } catch (error) {
        if (!isConflict(error)) throw error;
        // Lost the number (or a stray ref sits on it): avoid it. Lost the labels: the next round
        // reads the winner's number.
        if (error.mismatches.some((m) => m.key !== byLabelsKey(canonical))) this.#taken.add(id);
      } finally {
        this.#picked.delete(id);
      }
    }
    throw new IdentityError(
      'ERR_IDENTITY_CONFLICT',
      `identity: allocating ${JSON.stringify(canonical)} on node ${this.nodeName}: lost ${MAX_ATTEMPTS} compare-and-swap rounds to other writers`,
    );
  }

  #took(id: number, labels: Labels, revision: number, isNew: boolean): AllocationResult {
    const held: Held = { id, labels, count: 1 };
    this.#held.set(labels.canonical, held);
    this.#heldById.set(id, held);
    this.#taken.delete(id);
    this.#cache.apply(id, revision, labels);
    return { id, labels, isNew };
  }

  /** A random number of the range that the local view considers free. */
  async #pickFreeId(canonical: string): Promise<number> {
    const size = this.range.max - this.range.min + 1;
    const isUsed = (id: number): boolean => this.#cache.has(id) || this.#taken.has(id) || this.#picked.has(id);
    if (this.#cache.size + this.#taken.size + this.#picked.size >= size && this.#usedInRange(isUsed) >= size) {
      // Full by our view; the view may be stale (identities collected since): look again.
      await this.#relist();
      this.#taken.clear();
      const used = this.#usedInRange(isUsed);
      if (used >= size) throw new IdentityExhaustedError('cluster-wide', this.range.min, this.range.max, used, canonical);
    }
    const start = Math.floor(Math.random() * size);
    for (let i = 0; i < size; i++) {
      const id = this.range.min + ((start + i) % size);
      if (!isUsed(id)) return id;
    }
    // Unreachable while used < size; kept so a bookkeeping bug fails loudly.
    throw new IdentityExhaustedError('cluster-wide', this.range.min, this.range.max, size, canonical);
  }

  #usedInRange(isUsed: (id: number) => boolean): number {
    let used = 0;
    for (let id = this.range.min; id <= this.range.max; id++) if (isUsed(id)) used++;
    return used;
  }

  /**
   * Deletes `node`'s ref on `id` and touches the identity's lastUsedAt (the garbage-collection
   * grace period starts now). False if there was no ref.
   */
  async #dropRef(id: number, node: string): Promise<boolean> {
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      if (attempt > 0) await backoff(attempt);
      const [record, ref] = await Promise.all([this.#store.get<IdentityRecord>(byIdKey(id)), this.#store.get<RefRecord>(refKey(id, node))]);
      if (ref === undefined) return false;
      const ops: TxnOp[] = [{ type: 'delete', key: ref.key, expectedRevision: ref.modRevision }];
      if (record !== undefined) {
        ops.push({ type: 'put', key: record.key, value: { ...record.value, lastUsedAt: this.#now() } satisfies IdentityRecord, expectedRevision: record.modRevision });
      }
      try {
        const { revision } = await this.#store.transaction(ops);
        const labels = labelsOfRecord(record?.value);
        if (labels !== undefined) this.#cache.apply(id, revision, labels);
        return true;
      } catch (error) {
        if (!isConflict(error)) throw error;
      }
    }
    throw new IdentityError('ERR_IDENTITY_CONFLICT', `identity: dropping the reference of node ${node} to identity ${id}: lost ${MAX_ATTEMPTS} compare-and-swap rounds to other writers`);
  }

  async #refsOf(node: string): Promise<number[]> {
    const { entries } = await this.#store.list(REFS_PREFIX);
    const ids: number[] = [];
    for (const entry of entries) {
      const ref = parseRefKey(entry.key);
      if (ref !== undefined && ref.node === node) ids.push(ref.id);
    }
    return ids;
  }

  /** Loads every identity from the store into the cache; returns the listing's revision. */
  async #relist(): Promise<number> {
    const listing = await this.#store.list<IdentityRecord>(BY_ID_PREFIX);
    const entries: { id: number; revision: number; labels: Labels }[] = [];
    for (const entry of listing.entries) {
      const id = idOfByIdKey(entry.key);
      const labels = labelsOfRecord(entry.value);
      if (id !== undefined && labels !== undefined) entries.push({ id, revision: entry.modRevision, labels });
    }
    this.#cache.replace(entries, listing.revision);
    this.#syncedRevision = Math.max(this.#syncedRevision, listing.revision);
    return listing.revision;
  }

  async #watch(afterRevision: number, signal: AbortSignal): Promise<void> {
    let after = afterRevision;
    let failures = 0;
    while (!signal.aborted) {
      try {
        const watch = this.#store.watch<IdentityRecord>(BY_ID_PREFIX, { afterRevision: after, signal });
        for await (const event of watch) {
          failures = 0;
          const id = idOfByIdKey(event.key);
          if (id !== undefined) this.#cache.apply(id, event.revision, event.type === 'put' ? labelsOfRecord(event.value) : undefined);
          after = event.revision;
          // Everything before this event is in; more of its own transaction may still follow
          // (catchUp settles that).
          this.#syncedRevision = Math.max(this.#syncedRevision, after - 1);
          this.#cache.prune(after);
        }
        if (signal.aborted) return;
        // The watch ended without being asked to (store closed, connection lost): resync below.
      } catch (error) {
        if (signal.aborted) return;
        if (StoreError.is(error, 'ERR_STORE_CLOSED')) return;
        this.#onWatchError?.(error);
      }
      failures++;
      await backoff(Math.min(failures + 3, 10));
      if (signal.aborted) return;
      try {
        after = await this.#relist();
      } catch (error) {
        if (StoreError.is(error, 'ERR_STORE_CLOSED')) return;
        this.#onWatchError?.(error);
      }
    }
  }

  #emit(type: 'upsert' | 'delete', identity: CachedIdentity): void {
    for (const listener of this.#listeners) {
      try {
        listener({ type, identity });
      } catch {
        // A failing subscriber must not break the cache or other subscribers.
      }
    }
  }
}
