/**
 * In-memory tables with revisions, the middle of the control plane: sources write objects in,
 * reconcilers read what changed since they last looked and push only that into the kernel.
 *
 * Every write stamps the object with the table's next revision and moves it to the tail of a
 * revision-ordered list, so "what changed since revision r" costs O(changes), not O(table).
 * Deletions stay in the list as tombstones until every change reader has seen them.
 * @module
 */

export interface Change<T> {
  key: string;
  /** The object as written; for a deletion, the object as it was before. */
  object: T;
  deleted: boolean;
  revision: number;
}

interface Entry<T> {
  key: string;
  object: T;
  revision: number;
  deleted: boolean;
  prev: Entry<T> | undefined;
  next: Entry<T> | undefined;
}

export interface TableOptions<T> {
  /** Equal objects are not rewritten: no new revision, no work for reconcilers. */
  equals?: (a: T, b: T) => boolean;
}

/**
 * A table of objects by primary key.
 *
 * @example
 * const endpoints = new Table<Endpoint>('endpoints', (ep) => String(ep.id));
 * endpoints.upsert({ id: 12, ip: '10.244.1.5' });
 * const changes = endpoints.changes();
 * for (const change of changes.next()) reconcile(change);
 */
export class Table<T> {
  readonly name: string;
  readonly #primaryKey: (object: T) => string;
  readonly #equals: ((a: T, b: T) => boolean) | undefined;
  readonly #entries = new Map<string, Entry<T>>();
  #head: Entry<T> | undefined;
  #tail: Entry<T> | undefined;
  #revision = 0;
  #waiters: (() => void)[] = [];
  readonly #readers = new Set<ChangeReader<T>>();
  readonly #writeListeners = new Set<() => void>();

  constructor(name: string, primaryKey: (object: T) => string, options: TableOptions<T> = {}) {
    this.name = name;
    this.#primaryKey = primaryKey;
    this.#equals = options.equals;
  }

  /** The revision of the latest write (0 before any). */
  get revision(): number {
    return this.#revision;
  }

  get size(): number {
    let live = 0;
    for (const entry of this.#entries.values()) if (!entry.deleted) live++;
    return live;
  }

  get(key: string): T | undefined {
    const entry = this.#entries.get(key);
    return entry && !entry.deleted ? entry.object : undefined;
  }

  /** The revision an object was last written at, or undefined. */
  revisionOf(key: string): number | undefined {
    const entry = this.#entries.get(key);
    return entry && !entry.deleted ? entry.revision : undefined;
  }

  *all(): Generator<T> {
    for (const entry of this.#entries.values()) if (!entry.deleted) yield entry.object;
  }

  /** Live objects with their keys and the revision each was written at. */
  *entries(): Generator<[key: string, object: T, revision: number]> {
    for (const entry of this.#entries.values()) if (!entry.deleted) yield [entry.key, entry.object, entry.revision];
  }

  /** Inserts or replaces; returns the revision written, or the current one when nothing changed. */
  upsert(object: T): number {
    const key = this.#primaryKey(object);
    const existing = this.#entries.get(key);
    if (existing && !existing.deleted && this.#equals?.(existing.object, object)) return existing.revision;
    return this.#write(key, object, false, existing);
  }

  /** Deletes by key; returns false when there was nothing to delete. */
  delete(key: string): boolean {
    const existing = this.#entries.get(key);
    if (!existing || existing.deleted) return false;
    this.#write(key, existing.object, true, existing);
    return true;
  }

  #write(key: string, object: T, deleted: boolean, existing: Entry<T> | undefined): number {
    const revision = ++this.#revision;
    if (existing) this.#unlink(existing);
    const entry: Entry<T> = { key, object, revision, deleted, prev: this.#tail, next: undefined };
    if (this.#tail) this.#tail.next = entry;
    else this.#head = entry;
    this.#tail = entry;
    this.#entries.set(key, entry);
    if (deleted && this.#readers.size === 0) this.#drop(entry);
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const wake of waiters) wake();
    for (const listener of this.#writeListeners) listener();
    return revision;
  }

  /**
   * Calls `listener` synchronously after every write, until the returned function is called: for
   * state derived from the table outside this thread, which must be marked stale before the writer
   * goes on (waitForChange wakes a microtask later).
   */
  onWrite(listener: () => void): () => void {
    this.#writeListeners.add(listener);
    return () => void this.#writeListeners.delete(listener);
  }

  #unlink(entry: Entry<T>): void {
    if (entry.prev) entry.prev.next = entry.next;
    else this.#head = entry.next;
    if (entry.next) entry.next.prev = entry.prev;
    else this.#tail = entry.prev;
    entry.prev = entry.next = undefined;
  }

  #drop(entry: Entry<T>): void {
    this.#unlink(entry);
    this.#entries.delete(entry.key);
  }

  /** Resolves at the next write (or at once if `afterRevision` is already behind). */
  waitForChange(afterRevision: number, signal?: AbortSignal): Promise<void> {
    if (this.#revision > afterRevision) return Promise.resolve();
    return new Promise((resolve) => {
      const wake = () => {
        signal?.removeEventListener('abort', wake);
        resolve();
      };
      signal?.addEventListener('abort', wake, { once: true });
      this.#waiters.push(wake);
    });
  }

  /** A reader of changes, starting from the beginning (every live object is a change at first). */
  changes(): ChangeReader<T> {
    const reader = new ChangeReader(this, (since) => this.#since(since), () => this.#collect());
    this.#readers.add(reader);
    return reader;
  }

  /** @internal */
  closeReader(reader: ChangeReader<T>): void {
    this.#readers.delete(reader);
    this.#collect();
  }

  #since(revision: number): Change<T>[] {
    const out: Change<T>[] = [];
    for (let entry = this.#tail; entry && entry.revision > revision; entry = entry.prev) {
      out.push({ key: entry.key, object: entry.object, deleted: entry.deleted, revision: entry.revision });
    }
    return out.reverse();
  }

  /** Drops tombstones every reader has passed. */
  #collect(): void {
    let low = Number.POSITIVE_INFINITY;
    for (const reader of this.#readers) low = Math.min(low, reader.revision);
    for (let entry = this.#head; entry && entry.revision <= low; ) {
      const next = entry.next;
      if (entry.deleted) this.#drop(entry);
      entry = next;
    }
  }
}

/** Where one consumer is in a table's history. */
export class ChangeReader<T> {
  readonly #table: Table<T>;
  readonly #since: (revision: number) => Change<T>[];
  readonly #collect: () => void;
  #revision = 0;

  constructor(table: Table<T>, since: (revision: number) => Change<T>[], collect: () => void) {
    this.#table = table;
    this.#since = since;
    this.#collect = collect;
  }

  /** The revision up to which changes were handed out. */
  get revision(): number {
    return this.#revision;
  }

  /** Changes since the last call, oldest first, each key once (its latest state). */
  next(): Change<T>[] {
    const changes = this.#since(this.#revision);
    if (changes.length > 0) {
      this.#revision = changes[changes.length - 1].revision;
      this.#collect();
    }
    return changes;
  }

  wait(signal?: AbortSignal): Promise<void> {
    return this.#table.waitForChange(this.#revision, signal);
  }

  close(): void {
    this.#table.closeReader(this);
  }
}
