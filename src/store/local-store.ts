/**
 * `LocalStateStore`: the embedded default store, a directory on the node's disk.
 *
 * Layout of the directory (format 2, see journal.ts):
 * - `journal.log`: a header (store id, generation, the revision it starts after), then one
 *   length-and-checksum framed record per group commit (one revision, or several written
 *   together), appended and fdatasync'ed before any of its writes is acknowledged or any watcher
 *   hears of it;
 * - `snapshot.json`: the full state at some revision and the generation of the journal that
 *   follows it, replaced atomically (temp + fsync + rename). A store always has one once opened,
 *   so a deleted journal is noticed rather than mistaken for a fresh store;
 * - `LOCK`: the owning process (see lock.ts).
 *
 * Open = load the snapshot, check the journal belongs to it, replay the journal, cut off a torn
 * last record (and report it: `recovery`), delete leftover temp files. Anything a crash cannot
 * explain (an emptied or missing journal, damage before the tail, a swapped file) refuses to open
 * with a message saying what was found and what the operator can do. After `compactAfter` records
 * the state is snapshotted and the journal restarted, which also ends the watch history (watching
 * from older revisions then gives ERR_STORE_COMPACTED).
 *
 * Writes are group-committed: the writes that arrive while one journal write and fdatasync is in
 * flight wait, and then go to the journal together, as one frame made durable by one fdatasync.
 * Each is checked (compare-and-swap) against the state including every write before it, in
 * arrival order, so the outcome is what writing them one at a time would give; each gets its own
 * revision; none is acknowledged, readable or seen by a watcher before its bytes are durable, and
 * watchers then see them in revision order. Everything runs in this process, so compare-and-swap
 * holds without any file-level locking.
 * @module
 */
import { randomUUID } from 'node:crypto';
import { access, mkdir, open, readFile, rename, unlink, type FileHandle } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { StoreError, type StoreErrorCode } from './errors.ts';
import { fsyncDirectory, removeTempFiles, tempName, writeAll, writeFileAtomic } from './fs-util.ts';
import { decodeSnapshot, encodeJournalHeader, encodeRecords, encodeSnapshot, readJournal, type JournalHeader, type JournalTail, type SnapshotFile } from './journal.ts';
import { KvEngine, type CommitRecord } from './kv-engine.ts';
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
  /**
   * Told when opening cut a torn tail off the journal (the store opens anyway). Without it the
   * store emits a process warning (`StoreRecoveryWarning`), so the loss is never silent.
   */
  readonly onRecovery?: (recovery: JournalRecovery) => void;
}

/**
 * A torn journal tail that opening cut off. A crash during an append leaves exactly this, and that
 * write was never acknowledged; a truncated file or a failing disk leaves the same picture but may
 * have taken acknowledged writes after `lastRevision` with it — the store cannot tell which.
 */
export interface JournalRecovery extends JournalTail {
  readonly file: string;
  /** The last revision the store still has. */
  readonly lastRevision: number;
  /** One line for a log, naming the file, the offset, what was dropped and the last revision kept. */
  readonly message: string;
}

/** What opening found: useful for logs ("recovered from a torn write"). */
export interface OpenReport {
  readonly snapshotRevision: number;
  readonly replayedRecords: number;
  /** A torn journal tail that was cut off, or undefined if the journal was intact. */
  readonly recovery: JournalRecovery | undefined;
  /** Temp files of interrupted writes that were deleted. */
  readonly removedTempFiles: readonly string[];
}

function ioError(operation: string, cause: unknown): StoreError {
  if (StoreError.is(cause)) return cause;
  return new StoreError('ERR_STORE_IO', `store: ${operation}: ${(cause as Error).message}`, { cause });
}

async function readOptional(path: string): Promise<Buffer | undefined> {
  return readFile(path).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return undefined;
    throw error;
  });
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  );
}

/** Damage opening refuses to work around: the operator has to decide. */
function refusal(code: 'ERR_STORE_CORRUPT' | 'ERR_STORE_TRUNCATED', detail: string): StoreError {
  return new StoreError(code, `store: ${detail}`);
}

/**
 * What the operator can do about a store that will not open. Names only files that exist, and
 * says what starting without them costs: the agent learns its endpoints from the store alone.
 */
async function remedy(dir: string, snapshot: SnapshotFile | undefined, code: StoreErrorCode): Promise<string> {
  // Files restored one by one from different moments would fail the same checks; a backup of
  // files in another format would be refused just the same.
  const restore = code === 'ERR_STORE_FORMAT' ? '' : `restore ${dir} from a backup of the whole directory, if you have one; or `;
  const kept = snapshot !== undefined && (await exists(join(dir, SNAPSHOT_FILE))) ? ` (its ${SNAPSHOT_FILE} still holds the state at revision ${snapshot.state.revision})` : '';
  return (
    `The store's files were left as they are. To recover: ${restore}stop the agent and move the store directory away (mv ${dir} ${dir}.damaged)${kept}, then start again. ` +
    `The agent then starts with an empty store: it no longer knows this node's endpoints, their addresses or identities, while their ` +
    `interfaces and datapath entries stay in the kernel; re-create the node's pods (or drain the node) so no address is handed out twice.`
  );
}

/** A write waiting for the next group commit. */
interface PendingWrite {
  readonly operation: string;
  readonly ops: readonly TxnOp[];
  readonly resolve: (result: { revision: number; wrote: boolean }) => void;
  readonly reject: (error: unknown) => void;
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
  /** Id of the store and generation of the current journal, as its header says. */
  #header: JournalHeader;
  #compactAfter: number;
  /** Tail of the step queue: group commits, compactions and close chain onto it, one at a time. */
  #queue: Promise<unknown> = Promise.resolve();
  /** Writes for the next group commit, in arrival order. */
  #pending: PendingWrite[] = [];
  /** Whether a group commit is queued that has not yet taken `#pending`. */
  #flushQueued = false;
  #journalSyncs = 0;
  #closed = false;
  #closing: Promise<void> | undefined;
  /** Set when a failed write left the journal in an unknown state: the store refuses further use. */
  #failure: StoreError | undefined;

  private constructor(directory: string, engine: KvEngine, lock: DirectoryLock, journal: FileHandle, journalSize: number, header: JournalHeader, compactAfter: number, report: OpenReport) {
    this.directory = directory;
    this.#engine = engine;
    this.#lock = lock;
    this.#journal = journal;
    this.#journalSize = journalSize;
    this.#header = header;
    this.#compactAfter = compactAfter;
    this.openReport = report;
  }

  /** The torn journal tail opening cut off, if any (see `JournalRecovery`). */
  get recovery(): JournalRecovery | undefined {
    return this.openReport.recovery;
  }

  /**
   * Opens (creating if needed) the store in `directory`; fails with ERR_STORE_LOCKED if another
   * process has it. A torn journal tail is cut off and reported (`recovery`, `onRecovery`); a
   * missing or emptied journal, a missing snapshot the journal needs, or damage before the tail
   * fail with ERR_STORE_TRUNCATED or ERR_STORE_CORRUPT and say what the operator can do;
   * files of store format 1 fail with ERR_STORE_FORMAT.
   */
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
    let snapshot: SnapshotFile | undefined;
    try {
      const removedTempFiles = await removeTempFiles(dir);
      const engine = new KvEngine();
      const snapshotPath = join(dir, SNAPSHOT_FILE);
      const snapshotData = await readOptional(snapshotPath);
      if (snapshotData !== undefined) snapshot = decodeSnapshot(snapshotData, snapshotPath);
      if (snapshot !== undefined) engine.restore(snapshot.state);
      const snapshotRevision = engine.revision;

      const journalPath = join(dir, JOURNAL_FILE);
      const journalData = await readOptional(journalPath);
      let header: JournalHeader;
      let replayedRecords = 0;
      let journalSize: number;
      let tail: JournalTail | undefined;
      // A journal without the snapshot it names (a fresh store, a crash mid-compaction): write
      // the snapshot now, so from here on a lost journal is always noticed.
      let snapshotNeeded = false;
      if (journalData === undefined) {
        if (snapshot !== undefined) {
          throw refusal(
            'ERR_STORE_TRUNCATED',
            `opening ${dir}: ${JOURNAL_FILE} is missing, but ${SNAPSHOT_FILE} (revision ${snapshot.state.revision}) says journal generation ${snapshot.journalGeneration} follows it: the writes after revision ${snapshot.state.revision}, if there were any, are lost`,
          );
        }
        // A fresh store. The journal comes first: a crash before the snapshot leaves a journal that
        // starts at revision 0, which is a complete store on its own.
        header = { store: randomUUID(), generation: 1, after: 0 };
        const data = encodeJournalHeader(header);
        await writeFileAtomic(dir, JOURNAL_FILE, data);
        journalSize = data.length;
        snapshotNeeded = true;
      } else {
        const contents = readJournal(journalData, journalPath);
        header = contents.header;
        const last = contents.records.at(-1)?.revision ?? header.after;
        if (snapshot === undefined) {
          if (header.after !== 0) {
            throw refusal('ERR_STORE_TRUNCATED', `opening ${dir}: ${SNAPSHOT_FILE} is missing, but ${JOURNAL_FILE} starts after revision ${header.after}: the state up to revision ${header.after} is lost`);
          }
          snapshotNeeded = true;
        } else if (header.store !== snapshot.store) {
          throw refusal('ERR_STORE_CORRUPT', `opening ${dir}: ${JOURNAL_FILE} belongs to store ${header.store}, but ${SNAPSHOT_FILE} to store ${snapshot.store}: one of them was copied from another store`);
        } else if (header.generation === snapshot.journalGeneration - 1 && last <= snapshot.state.revision) {
          // A compaction crashed between writing the snapshot and restarting the journal: the
          // snapshot covers all of the old journal. Restart it now.
          snapshotNeeded = true;
        } else if (header.generation !== snapshot.journalGeneration || header.after !== snapshot.state.revision) {
          throw refusal(
            'ERR_STORE_CORRUPT',
            `opening ${dir}: ${JOURNAL_FILE} is generation ${header.generation} starting after revision ${header.after} (up to revision ${last}), but ${SNAPSHOT_FILE} ` +
              `(revision ${snapshot.state.revision}) is followed by generation ${snapshot.journalGeneration}: the journal was replaced`,
          );
        }
        for (const record of contents.records) {
          if (record.revision <= engine.revision) continue;
          engine.commit(record, { replay: true });
          replayedRecords++;
        }
        journalSize = contents.validBytes;
        tail = contents.tail;
      }
      const journal = await open(journalPath, 'a', 0o600);
      try {
        if (tail !== undefined) {
          // Cut the torn frame now: the next append must start where the intact journal ends.
          await journal.truncate(journalSize);
          await journal.datasync();
        }
      } catch (error) {
        await journal.close();
        throw error;
      }
      const recovery = tail === undefined ? undefined : describeRecovery(journalPath, tail, engine.revision);
      const store = new LocalStateStore(dir, engine, lock, journal, journalSize, header, compactAfter, { snapshotRevision, replayedRecords, recovery, removedTempFiles });
      if (snapshotNeeded) {
        try {
          await store.compact();
        } catch (error) {
          await store.close();
          throw error;
        }
      }
      if (recovery !== undefined) {
        if (options?.onRecovery) options.onRecovery(recovery);
        else process.emitWarning(recovery.message, { type: 'StoreRecoveryWarning', code: 'CILIATE_STORE_TAIL_DROPPED' });
      }
      return store;
    } catch (cause) {
      await lock.release();
      if (StoreError.is(cause) && (cause.code === 'ERR_STORE_CORRUPT' || cause.code === 'ERR_STORE_TRUNCATED' || cause.code === 'ERR_STORE_FORMAT')) {
        throw new StoreError(cause.code, `${cause.message}. ${await remedy(dir, snapshot, cause.code)}`, { cause });
      }
      throw ioError(`opening ${dir}`, cause);
    }
  }

  get revision(): number {
    return this.#engine.revision;
  }

  /**
   * fdatasyncs of the journal since opening (appends only, not compactions): fewer than writes
   * when group commit shared them.
   */
  get journalSyncs(): number {
    return this.#journalSyncs;
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
    // Checked when issued, not when flushed: writes issued before close() still go through.
    if (this.#closing) return Promise.reject(new StoreError('ERR_STORE_CLOSED', `store: ${operation}: store ${this.directory} is closed`));
    return new Promise((resolve, reject) => {
      this.#pending.push({ operation, ops, resolve, reject });
      if (this.#flushQueued) return;
      this.#flushQueued = true;
      // Not through #serialise: #flush checks usability per write and settles every write it
      // takes, so the step itself never fails and no write is left unanswered.
      const flush = (): Promise<void> => this.#flush();
      this.#queue = this.#queue.then(flush, flush).catch(() => {});
    });
  }

  /**
   * One group commit: everything pending now, checked in order, written as one frame and made
   * durable by one fdatasync, then committed (readers and watchers see it) and acknowledged.
   */
  async #flush(): Promise<void> {
    this.#flushQueued = false;
    const batch = this.#pending.splice(0);
    const staged: { write: PendingWrite; record: CommitRecord | undefined; revision: number }[] = [];
    for (const write of batch) {
      try {
        this.#assertUsable(write.operation);
        const record = this.#engine.prepare(write.operation, write.ops);
        if (record !== undefined) this.#engine.stage(record);
        // A write with nothing to write (only checks, deletes of absent keys) may have been checked
        // against staged records: it too is answered only once they are durable.
        staged.push({ write, record, revision: this.#engine.stagedRevision });
      } catch (error) {
        // A conflict or a bad argument fails this write alone; nothing of it was staged.
        write.reject(error);
      }
    }
    const records = staged.flatMap(({ record }) => (record === undefined ? [] : [record]));
    if (records.length > 0) {
      const operation = records.length === 1 ? staged.find((s) => s.record !== undefined)!.write.operation : `group commit of ${records.length} writes (revisions ${records[0].revision}–${records.at(-1)!.revision})`;
      try {
        await this.#append(operation, encodeRecords(records));
      } catch (error) {
        this.#engine.unstage();
        for (const { write } of staged) write.reject(error);
        return;
      }
    }
    // Only now, with the records durable, does anyone (readers, watchers) see them.
    for (const record of records) this.#engine.commit(record);
    for (const { write, record, revision } of staged) write.resolve({ revision, wrote: record !== undefined });
    if (this.#engine.historyLength >= this.#compactAfter) {
      // The writes are already durable in the journal; a failed compaction just retries next time.
      await this.#compact().catch(() => {});
    }
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
      // Cut off whatever part of the record made it, so the next append starts on a record boundary.
      try {
        await this.#journal.truncate(this.#journalSize);
      } catch {
        this.#fail(operation, cause);
      }
      throw ioError(`${operation}: appending to the journal`, cause);
    }
    try {
      this.#journalSyncs++;
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
    const next: JournalHeader = { store: this.#header.store, generation: this.#header.generation + 1, after: this.#engine.revision };
    await writeFileAtomic(this.directory, SNAPSHOT_FILE, encodeSnapshot({ store: next.store, journalGeneration: next.generation, state: this.#engine.snapshot() }));
    // From here the snapshot covers the journal; if restarting the journal fails, reopening still
    // works (a journal one generation behind the snapshot, with nothing past it, is accepted).
    const journalPath = join(this.directory, JOURNAL_FILE);
    const temp = join(this.directory, tempName(JOURNAL_FILE));
    const headerData = encodeJournalHeader(next);
    const fresh = await open(temp, 'ax', 0o600);
    try {
      await writeAll(fresh, headerData);
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
    this.#journalSize = headerData.length;
    this.#header = next;
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

function describeRecovery(file: string, tail: JournalTail, lastRevision: number): JournalRecovery {
  const message =
    `store: ${file}: dropped a torn tail of ${tail.droppedBytes} bytes at byte ${tail.truncatedAt} (${tail.reason}); the store now ends at revision ${lastRevision}. ` +
    `A crash during a write leaves this, and that write was never acknowledged; a truncated file or a failing disk may also have lost acknowledged ` +
    `writes after revision ${lastRevision} (e.g. endpoints whose interfaces and addresses still exist in the kernel)`;
  return { file, ...tail, lastRevision, message };
}
