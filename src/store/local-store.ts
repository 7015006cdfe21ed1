/**
 * `LocalStateStore`: the embedded default store, a directory on the node's disk.
 *
 * Layout of the directory:
 * - `journal.log`: one checksummed line per committed revision, appended and fdatasync'ed before
 *   the write is acknowledged or any watcher hears of it;
 * - `snapshot.json`: the full state at some revision, replaced atomically (temp + fsync + rename);
 *   journal records at or below its revision are skipped on open;
 * - `LOCK`: the owning process (see lock.ts).
 *
 * Open = load the snapshot, replay the journal, cut off a torn last line, delete leftover temp
 * files. After `compactAfter` records the state is snapshotted and the journal restarted, which
 * also ends the watch history (watching from older revisions then gives ERR_STORE_COMPACTED).
 *
 * Writes are serialised in-process: precondition check, journal append and in-memory apply run
 * as one step per write, so compare-and-swap holds without any file-level locking.
 * @module
 */
import { mkdir, open, readFile, rename, unlink, type FileHandle } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { StoreError } from './errors.ts';
import { fsyncDirectory, removeTempFiles, tempName, writeAll, writeFileAtomic } from './fs-util.ts';
import { decodeRecord, decodeSnapshot, encodeRecord, encodeSnapshot, readLines } from './journal.ts';
import { KvEngine } from './kv-engine.ts';
import { DirectoryLock } from './lock.ts';
import type { DeleteResult, KeyValue, ListResult, StateStore, StoreWatch, TxnOp, TxnResult, WatchOptions, WriteOptions, WriteResult } from './types.ts';

export const JOURNAL_FILE = 'journal.log';
export const SNAPSHOT_FILE = 'snapshot.json';

export interface LocalStateStoreOptions {
  /**
   * Journal records after which the state is snapshotted and the journal restarted. Bounds both
   * the journal's size and the time to open; also how far back watches can replay. Default 10 000.
   */
  readonly compactAfter?: number;
}

/** What opening found: useful for logs ("recovered from a torn write"). */
export interface OpenReport {
  readonly snapshotRevision: number;
  readonly replayedRecords: number;
  /** Bytes of a half-written last journal line that were cut off. */
  readonly truncatedBytes: number;
  /** Temp files of interrupted writes that were deleted. */
  readonly removedTempFiles: readonly string[];
}

function ioError(operation: string, cause: unknown): StoreError {
  if (StoreError.is(cause)) return cause;
  return new StoreError('ERR_STORE_IO', `store: ${operation}: ${(cause as Error).message}`, { cause });
}

/**
 * @example
 * const store = await LocalStateStore.open('/var/lib/ciliate/state');
 * await store.transaction([
 *   { type: 'put', key: 'ipam/ips/10.244.1.2', value: { owner: 'c1:eth0', node: 'n1' }, expectedRevision: 0 },
 *   { type: 'put', key: 'ipam/owners/n1/c1:eth0', value: { ip: '10.244.1.2' }, expectedRevision: 0 },
 * ]);
 * await store.close();
 */
export class LocalStateStore implements StateStore {
  readonly directory: string;
  readonly openReport: OpenReport;
  #engine: KvEngine;
  #lock: DirectoryLock;
  #journal: FileHandle;
  #journalSize: number;
  #compactAfter: number;
  /** Tail of the write queue: every write chains onto it. */
  #queue: Promise<unknown> = Promise.resolve();
  #closed = false;
  #closing: Promise<void> | undefined;
  /** Set when a failed write left the journal in an unknown state: the store refuses further use. */
  #failure: StoreError | undefined;

  private constructor(directory: string, engine: KvEngine, lock: DirectoryLock, journal: FileHandle, journalSize: number, compactAfter: number, report: OpenReport) {
    this.directory = directory;
    this.#engine = engine;
    this.#lock = lock;
    this.#journal = journal;
    this.#journalSize = journalSize;
    this.#compactAfter = compactAfter;
    this.openReport = report;
  }

  /** Opens (creating if needed) the store in `directory`; fails with ERR_STORE_LOCKED if another process has it. */
  static async open(directory: string, options?: LocalStateStoreOptions): Promise<LocalStateStore> {
    const dir = resolve(directory);
    const compactAfter = options?.compactAfter ?? 10_000;
    if (!Number.isSafeInteger(compactAfter) || compactAfter < 1) {
      throw new StoreError('ERR_STORE_INVALID_ARGUMENT', `store: opening ${dir}: compactAfter must be a positive integer`);
    }
    try {
      await mkdir(dir, { recursive: true, mode: 0o700 });
    } catch (cause) {
      throw ioError(`opening ${dir}`, cause);
    }
    const lock = await DirectoryLock.acquire(dir).catch((cause: unknown) => {
      throw ioError(`locking ${dir}`, cause);
    });
    try {
      const removedTempFiles = await removeTempFiles(dir);
      const engine = new KvEngine();
      const snapshotPath = join(dir, SNAPSHOT_FILE);
      const snapshotData = await readFile(snapshotPath).catch((error: NodeJS.ErrnoException) => {
        if (error.code === 'ENOENT') return undefined;
        throw error;
      });
      if (snapshotData !== undefined) engine.restore(decodeSnapshot(snapshotData, snapshotPath));
      const snapshotRevision = engine.revision;

      const journalPath = join(dir, JOURNAL_FILE);
      const journalData = await readFile(journalPath).catch((error: NodeJS.ErrnoException) => {
        if (error.code === 'ENOENT') return undefined;
        throw error;
      });
      let replayedRecords = 0;
      let truncatedBytes = 0;
      let journalSize = 0;
      if (journalData !== undefined) {
        const { lines, validBytes, torn } = readLines(journalData, journalPath);
        for (const line of lines) {
          const record = decodeRecord(line, journalPath);
          // Left over from a compaction that crashed before restarting the journal.
          if (record.revision <= engine.revision) continue;
          engine.commit(record, { replay: true });
          replayedRecords++;
        }
        journalSize = validBytes;
        if (torn) truncatedBytes = journalData.length - validBytes;
      }
      const journal = await open(journalPath, 'a', 0o600);
      try {
        if (truncatedBytes > 0) {
          // Cut the torn line now: the next append must start on a line boundary.
          await journal.truncate(journalSize);
          await journal.datasync();
        }
        if (journalData === undefined) await fsyncDirectory(dir);
      } catch (error) {
        await journal.close();
        throw error;
      }
      return new LocalStateStore(dir, engine, lock, journal, journalSize, compactAfter, { snapshotRevision, replayedRecords, truncatedBytes, removedTempFiles });
    } catch (cause) {
      await lock.release();
      throw ioError(`opening ${dir}`, cause);
    }
  }

  get revision(): number {
    return this.#engine.revision;
  }

  async get<T = unknown>(key: string): Promise<KeyValue<T> | undefined> {
    this.#assertUsable('get');
    return this.#engine.get<T>(key);
  }

  async list<T = unknown>(prefix: string): Promise<ListResult<T>> {
    this.#assertUsable('list');
    return this.#engine.list<T>(prefix);
  }

  async put<T = unknown>(key: string, value: T, options?: WriteOptions): Promise<WriteResult> {
    const { revision } = await this.#write(`put ${key}`, [{ type: 'put', key, value, expectedRevision: options?.expectedRevision }]);
    return { revision };
  }

  async delete(key: string, options?: WriteOptions): Promise<DeleteResult> {
    const { revision, wrote } = await this.#write(`delete ${key}`, [{ type: 'delete', key, expectedRevision: options?.expectedRevision }]);
    return { revision, deleted: wrote };
  }

  async transaction(ops: readonly TxnOp[]): Promise<TxnResult> {
    const { revision } = await this.#write('transaction', ops);
    return { revision };
  }

  watch<T = unknown>(prefix: string, options?: WatchOptions): StoreWatch<T> {
    this.#assertUsable('watch');
    return this.#engine.watch<T>(prefix, options);
  }

  /** Snapshots the state now and restarts the journal (also done automatically, see `compactAfter`). */
  async compact(): Promise<void> {
    await this.#serialise('compact', () => this.#compact());
  }

  /** Waits for queued writes, ends all watches and releases the directory lock. Idempotent. */
  async close(): Promise<void> {
    if (this.#closing) return this.#closing;
    // Queued behind pending writes so they still commit; writes issued after close() fail.
    const finish = async (): Promise<void> => {
      this.#closed = true;
      this.#engine.closeWatchers();
      await this.#journal.close().catch(() => {});
      await this.#lock.release();
    };
    this.#closing = this.#queue.then(finish, finish);
    return this.#closing;
  }

  #write(operation: string, ops: readonly TxnOp[]): Promise<{ revision: number; wrote: boolean }> {
    return this.#serialise(operation, async () => {
      const record = this.#engine.prepare(operation, ops);
      if (record === undefined) return { revision: this.#engine.revision, wrote: false };
      await this.#append(operation, Buffer.from(encodeRecord(record)));
      // Only now, with the record durable, does anyone (readers, watchers) see the change.
      this.#engine.commit(record);
      if (this.#engine.historyLength >= this.#compactAfter) {
        // The write is already durable in the journal; a failed compaction just retries next time.
        await this.#compact().catch(() => {});
      }
      return { revision: record.revision, wrote: true };
    });
  }

  #serialise<R>(operation: string, step: () => Promise<R>): Promise<R> {
    // Checked when queued, not when run: writes queued before close() still go through.
    if (this.#closing) return Promise.reject(new StoreError('ERR_STORE_CLOSED', `store: ${operation}: store ${this.directory} is closed`));
    const run = async (): Promise<R> => {
      this.#assertUsable(operation);
      return step();
    };
    const result = this.#queue.then(run, run);
    this.#queue = result.catch(() => {});
    return result;
  }

  async #append(operation: string, data: Buffer): Promise<void> {
    try {
      await writeAll(this.#journal, data);
    } catch (cause) {
      // Cut off whatever part of the line made it, so the next append starts on a line boundary.
      try {
        await this.#journal.truncate(this.#journalSize);
      } catch {
        this.#fail(operation, cause);
      }
      throw ioError(`${operation}: appending to the journal`, cause);
    }
    try {
      await this.#journal.datasync();
    } catch (cause) {
      // After a failed fsync the kernel may have dropped the dirty pages and a retry can report
      // success for data that never reached the disk: stop, and let a reopen read back the truth.
      this.#fail(operation, cause);
      throw ioError(`${operation}: syncing the journal`, cause);
    }
    this.#journalSize += data.length;
  }

  async #compact(): Promise<void> {
    await writeFileAtomic(this.directory, SNAPSHOT_FILE, encodeSnapshot(this.#engine.snapshot()));
    // From here the snapshot covers the journal; if restarting the journal fails, reopening still
    // works (journal records at or below the snapshot's revision are skipped).
    const journalPath = join(this.directory, JOURNAL_FILE);
    const temp = join(this.directory, tempName(JOURNAL_FILE));
    const fresh = await open(temp, 'ax', 0o600);
    try {
      await fresh.sync();
      await rename(temp, journalPath);
    } catch (error) {
      await fresh.close().catch(() => {});
      await unlink(temp).catch(() => {});
      throw error;
    }
    // The old handle now points at an unlinked file: switch before anything else is appended.
    const old = this.#journal;
    this.#journal = fresh;
    this.#journalSize = 0;
    await old.close().catch(() => {});
    try {
      await fsyncDirectory(this.directory);
    } catch (cause) {
      // Unknown whether the rename is durable: appending could lose acknowledged writes.
      this.#fail('compact', cause);
      throw ioError('compact', cause);
    }
    this.#engine.compact();
  }

  #fail(operation: string, cause: unknown): void {
    this.#failure = new StoreError('ERR_STORE_CLOSED', `store: ${this.directory} is unusable after a failed write (${operation}); reopen it to recover from the journal`, { cause });
    this.#engine.closeWatchers(this.#failure);
  }

  #assertUsable(operation: string): void {
    if (this.#failure) throw this.#failure;
    if (this.#closed) throw new StoreError('ERR_STORE_CLOSED', `store: ${operation}: store ${this.directory} is closed`);
  }
}
