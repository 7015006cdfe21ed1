/**
 * The in-memory view of cluster-wide identities: id ↔ labels, fed by the store watch and by the
 * allocator's own writes (so an identity is visible the moment `allocate` returns, before the
 * watch echoes it).
 *
 * Both feeds race, so every entry remembers the by-id key's revision and older news is ignored.
 * A delete leaves a tombstone with its revision until the watch has passed it, so a late
 * replayed put cannot resurrect a collected identity.
 * @module
 */
import type { Labels } from './labels.ts';

export interface CachedIdentity {
  readonly id: number;
  readonly labels: Labels;
}

interface Entry {
  readonly revision: number;
  readonly identity: CachedIdentity | undefined;
}

export type CacheListener = (type: 'upsert' | 'delete', identity: CachedIdentity) => void;

export class IdentityCache {
  #byId = new Map<number, Entry>();
  #byCanonical = new Map<string, number>();
  #tombstones = 0;
  #listener: CacheListener;

  constructor(listener: CacheListener) {
    this.#listener = listener;
  }

  /** Live identities. */
  get size(): number {
    return this.#byCanonical.size;
  }

  get(id: number): CachedIdentity | undefined {
    return this.#byId.get(id)?.identity;
  }

  lookup(canonical: string): CachedIdentity | undefined {
    const id = this.#byCanonical.get(canonical);
    return id === undefined ? undefined : this.get(id);
  }

  /** Whether `id` is taken (live) as far as this view knows. */
  has(id: number): boolean {
    return this.#byId.get(id)?.identity !== undefined;
  }

  ids(): IterableIterator<number> {
    return this.#byCanonical.values();
  }

  list(): CachedIdentity[] {
    const out: CachedIdentity[] = [];
    for (const entry of this.#byId.values()) if (entry.identity !== undefined) out.push(entry.identity);
    return out.sort((a, b) => a.id - b.id);
  }

  /** Applies a put (`labels` set) or delete of `id` at `revision`, unless the view is already newer. */
  apply(id: number, revision: number, labels: Labels | undefined): void {
    const current = this.#byId.get(id);
    if (current !== undefined && current.revision >= revision) return;
    const old = current?.identity;
    if (labels === undefined) {
      this.#byId.set(id, { revision, identity: undefined });
      if (current?.identity !== undefined || current === undefined) this.#tombstones++;
      if (old !== undefined) {
        this.#unindex(old);
        this.#listener('delete', old);
      }
      return;
    }
    if (current !== undefined && current.identity === undefined) this.#tombstones--;
    if (old !== undefined && old.labels.canonical === labels.canonical) {
      // A touch (lastUsedAt) of an identity we know: only the revision moves.
      this.#byId.set(id, { revision, identity: old });
      return;
    }
    if (old !== undefined) {
      this.#unindex(old);
      this.#listener('delete', old);
    }
    const identity = { id, labels };
    this.#byId.set(id, { revision, identity });
    this.#byCanonical.set(labels.canonical, id);
    this.#listener('upsert', identity);
  }

  /**
   * Replaces the view with a full listing taken at `revision`. Entries newer than the listing (our
   * own writes that raced it) are kept.
   */
  replace(entries: readonly { readonly id: number; readonly revision: number; readonly labels: Labels }[], revision: number): void {
    const seen = new Set<number>();
    for (const e of entries) {
      seen.add(e.id);
      this.apply(e.id, e.revision, e.labels);
    }
    for (const [id, entry] of this.#byId) {
      if (seen.has(id) || entry.revision > revision) continue;
      this.apply(id, revision, undefined);
    }
    this.prune(revision);
  }

  /**
   * Whether the live identities are exactly `entries` (id and by-id revision each), i.e. the view
   * equals a listing of the store. Tombstones do not count: they stand for absent keys.
   */
  matches(entries: readonly { readonly id: number; readonly revision: number }[]): boolean {
    let live = 0;
    for (const entry of this.#byId.values()) if (entry.identity !== undefined) live++;
    if (entries.length !== live) return false;
    for (const e of entries) {
      const entry = this.#byId.get(e.id);
      if (entry?.identity === undefined || entry.revision !== e.revision) return false;
    }
    return true;
  }

  /** Forgets tombstones at or below `revision`: no event that old can arrive any more. */
  prune(revision: number): void {
    if (this.#tombstones === 0) return;
    for (const [id, entry] of this.#byId) {
      if (entry.identity === undefined && entry.revision <= revision) {
        this.#byId.delete(id);
        this.#tombstones--;
      }
    }
  }

  #unindex(identity: CachedIdentity): void {
    if (this.#byCanonical.get(identity.labels.canonical) === identity.id) this.#byCanonical.delete(identity.labels.canonical);
  }
}
