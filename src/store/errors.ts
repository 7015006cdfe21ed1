/**
 * Typed errors of the state store. Every error has a stable `code` so callers (IPAM, the
 * identity allocator, the CLI) branch on codes, never on message text. Messages start with the
 * operation that failed ("store: put ipam/ips/10.244.1.5: …").
 * @module
 */
import { codedErrorFamily } from '../errors/index.ts';

export type StoreErrorCode =
  /** A compare-and-swap precondition did not hold: someone else changed the key first. */
  | 'ERR_STORE_CONFLICT'
  /** The state directory is held by another live process. */
  | 'ERR_STORE_LOCKED'
  /** A watch asked for history older than the last compaction. */
  | 'ERR_STORE_COMPACTED'
  /** The on-disk state failed its checksum or revision checks in a way a crash cannot explain. */
  | 'ERR_STORE_CORRUPT'
  /**
   * State the store's own files say must exist is missing: an emptied or deleted journal, a journal
   * cut inside its header, a missing snapshot a journal starts after. Never the result of a crash.
   */
  | 'ERR_STORE_TRUNCATED'
  /** The files were written in a store format this version does not read. */
  | 'ERR_STORE_FORMAT'
  /** The store was closed, or a failed write left it unusable. */
  | 'ERR_STORE_CLOSED'
  /** A key, value or option the store cannot accept. */
  | 'ERR_STORE_INVALID_ARGUMENT'
  /** The file system refused a read or write. */
  | 'ERR_STORE_IO'
  /** The store's server (etcd) could not be reached or did not answer in time. */
  | 'ERR_STORE_UNAVAILABLE'
  /**
   * TLS to etcd failed: a CA, certificate or key file cannot be read or parsed, or the handshake
   * was refused (server certificate not signed by the CA, client certificate missing or untrusted).
   */
  | 'ERR_STORE_TLS'
  /** etcd refused the username/password, or the user lacks permission on the store's keys. */
  | 'ERR_STORE_AUTH';

/** An error of the state store; `StoreError.is(e, code?)` is exact (another family's like code is no StoreError). */
export class StoreError extends codedErrorFamily<StoreErrorCode>('store') {}

/** One failed precondition: `actualRevision` 0 means the key does not exist. */
export interface RevisionMismatch {
  readonly key: string;
  readonly expectedRevision: number;
  readonly actualRevision: number;
}

/**
 * A compare-and-swap lost. `mismatches` lists every precondition that failed, so a caller
 * can tell which of several keys in a transaction moved.
 */
export class StoreConflictError extends StoreError {
  readonly mismatches: readonly RevisionMismatch[];

  constructor(operation: string, mismatches: readonly RevisionMismatch[]) {
    const detail = mismatches
      .map((m) => `${m.key}: expected revision ${m.expectedRevision}, found ${m.actualRevision === 0 ? '0 (absent)' : m.actualRevision}`)
      .join('; ');
    super('ERR_STORE_CONFLICT', `store: ${operation}: conflict: ${detail}`);
    this.mismatches = mismatches;
  }
}

/** The state directory is locked by another process; the message names its pid. */
export class StoreLockedError extends StoreError {
  readonly directory: string;
  readonly pid: number;

  constructor(directory: string, pid: number) {
    const who = pid === process.pid ? 'this process (opened twice?)' : `pid ${pid}`;
    super(
      'ERR_STORE_LOCKED',
      `store: opening ${directory}: state directory is locked by ${who}; is another ciliate agent running? ` +
        `(a lock left by a dead process is taken over automatically)`,
    );
    this.directory = directory;
    this.pid = pid;
  }
}
