/**
 * On-disk encoding of the local store (format 2): framed, checksummed records for the journal
 * and the snapshot.
 *
 * A frame is `<crc32 hex8> <length hex8> <payload>\n`: the length says where the record must end
 * and the checksum (over the length field and the payload) says whether what is there is what was
 * written. A frame whose length runs past the end of the file is a torn append; a complete frame
 * with a bad checksum is damage. JSON payloads hold no raw newline, so frames stay greppable lines.
 *
 * A journal starts with a header frame naming the store (a random id), its generation and the
 * revision it starts after; the snapshot names the store and the generation of the journal that
 * follows it. That is what makes an emptied, missing or swapped journal detectable: a journal
 * always has a header, written before anything else, atomically (temp + fsync + rename).
 *
 * Records written together by one group commit (one write, one fdatasync) share one frame,
 * `{"group":[<record>, …]}`, so a crash or power loss during that write damages at most the last
 * frame, whichever pages of it reached the disk, and the group is kept or dropped whole; a single
 * record is written as a plain frame, as before groups existed.
 *
 * Only the *last* frame can be torn by a crash (appends are fdatasync'ed one at a time), so a bad
 * last frame is cut off — and reported, see `JournalTail` — while a bad frame with a valid frame
 * after it cannot come from a crash and is refused as corruption.
 * @module
 */
import { crc32 } from 'node:zlib';
import { StoreError } from './errors.ts';
import type { CommitRecord, EngineSnapshot, RecordOp, StoredEntry } from './kv-engine.ts';

/** Format of both files; format 1 (unframed `<crc> <json>` lines, no header) is refused. */
export const STORE_FORMAT = 2;
/** `<crc32 hex8> <length hex8> `. */
const PREFIX_BYTES = 18;
const NEWLINE = 0x0a;
const SPACE = 0x20;
const HEX8 = /^[0-9a-f]{8}$/;
/** Format 1 files start with a checksum and then JSON directly. */
const LEGACY = /^[0-9a-f]{8} \{/;

/** The first frame of a journal. */
export interface JournalHeader {
  /** Random id of the store, shared by its snapshot and every journal it has had. */
  readonly store: string;
  /** Incremented by every compaction: the snapshot names the generation that follows it. */
  readonly generation: number;
  /** The revision the journal starts after: its first record is `after + 1`. */
  readonly after: number;
}

/** What a snapshot file holds: the state, and which journal must follow it. */
export interface SnapshotFile {
  readonly store: string;
  readonly journalGeneration: number;
  readonly state: EngineSnapshot;
}

/** A torn tail of the journal that opening cut off. */
export interface JournalTail {
  /** Byte offset where the intact journal ends (and where the file was truncated). */
  readonly truncatedAt: number;
  readonly droppedBytes: number;
  /** Why the frame at `truncatedAt` was not accepted. */
  readonly reason: 'incomplete record' | 'checksum mismatch' | 'malformed record';
}

export interface JournalContents {
  readonly header: JournalHeader;
  readonly records: CommitRecord[];
  /** Bytes of the intact prefix: the file's size once a torn tail is cut off. */
  readonly validBytes: number;
  readonly tail: JournalTail | undefined;
}

function frameChecksum(body: Buffer): string {
  return crc32(body).toString(16).padStart(8, '0');
}

export function encodeFrame(json: string): Buffer {
  const payload = Buffer.from(json);
  const body = Buffer.concat([Buffer.from(`${payload.length.toString(16).padStart(8, '0')} `), payload]);
  return Buffer.concat([Buffer.from(`${frameChecksum(body)} `), body, Buffer.from('\n')]);
}

type Frame = { kind: 'ok'; json: string; end: number } | { kind: 'incomplete' } | { kind: 'bad'; reason: 'checksum mismatch' | 'malformed record' };

/** The frame at `offset`; `end` is the offset just after it. */
function frameAt(data: Buffer, offset: number): Frame {
  const available = data.length - offset;
  const prefix = data.toString('latin1', offset, offset + Math.min(PREFIX_BYTES, available));
  // A prefix cut short is incomplete only if what is there could still be a valid prefix.
  const plausible = /^[0-9a-f]{0,8}( [0-9a-f]{0,8} ?)?$/.test(prefix);
  if (available < PREFIX_BYTES) return plausible ? { kind: 'incomplete' } : { kind: 'bad', reason: 'malformed record' };
  const crc = prefix.slice(0, 8);
  const length = prefix.slice(9, 17);
  if (!HEX8.test(crc) || !HEX8.test(length) || data[offset + 8] !== SPACE || data[offset + 17] !== SPACE) return { kind: 'bad', reason: 'malformed record' };
  const end = offset + PREFIX_BYTES + Number.parseInt(length, 16);
  if (end >= data.length) return { kind: 'incomplete' };
  if (data[end] !== NEWLINE) return { kind: 'bad', reason: 'malformed record' };
  if (frameChecksum(data.subarray(offset + 9, end)) !== crc) return { kind: 'bad', reason: 'checksum mismatch' };
  return { kind: 'ok', json: data.toString('utf8', offset + PREFIX_BYTES, end), end: end + 1 };
}

/** Offset of the first intact frame that starts on a line after `offset`, if any. */
function intactFrameAfter(data: Buffer, offset: number): number | undefined {
  for (let newline = data.indexOf(NEWLINE, offset); newline !== -1 && newline + 1 < data.length; newline = data.indexOf(NEWLINE, newline + 1)) {
    if (frameAt(data, newline + 1).kind === 'ok') return newline + 1;
  }
  return undefined;
}

function storeError(code: 'ERR_STORE_CORRUPT' | 'ERR_STORE_FORMAT' | 'ERR_STORE_TRUNCATED', file: string, detail: string): StoreError {
  return new StoreError(code, `store: reading ${file}: ${detail}`);
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isRevision(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

function parseJson(json: string, file: string, what: string): unknown {
  try {
    return JSON.parse(json);
  } catch {
    // The checksum matched, so this was written like this: not a crash.
    throw storeError('ERR_STORE_CORRUPT', file, `${what} is not valid JSON`);
  }
}

function legacyError(file: string): StoreError {
  return storeError(
    'ERR_STORE_FORMAT',
    file,
    `written in store format 1 (a development version); this version reads only format ${STORE_FORMAT} and does not migrate it`,
  );
}

export function encodeJournalHeader(header: JournalHeader): Buffer {
  return encodeFrame(`{"format":${STORE_FORMAT},"store":${JSON.stringify(header.store)},"generation":${header.generation},"after":${header.after}}`);
}

function decodeJournalHeader(json: string, file: string): JournalHeader {
  const parsed = parseJson(json, file, 'the journal header');
  if (!isRecord(parsed) || parsed.format !== STORE_FORMAT || typeof parsed.store !== 'string' || !isRevision(parsed.generation) || !isRevision(parsed.after)) {
    throw storeError('ERR_STORE_CORRUPT', file, 'the journal header is not a format 2 header');
  }
  return { store: parsed.store, generation: parsed.generation, after: parsed.after };
}

/**
 * Parses a whole journal. Throws ERR_STORE_TRUNCATED for a journal without its header (emptied,
 * or cut inside the header, which is never appended to), ERR_STORE_CORRUPT for damage a crash
 * cannot explain, ERR_STORE_FORMAT for a format 1 journal; returns a torn tail in `tail`.
 */
export function readJournal(data: Buffer, file: string): JournalContents {
  if (data.length === 0) throw storeError('ERR_STORE_TRUNCATED', file, 'the journal is empty (0 bytes), without even its header');
  if (LEGACY.test(data.toString('latin1', 0, 10))) throw legacyError(file);
  const first = frameAt(data, 0);
  if (first.kind === 'incomplete') throw storeError('ERR_STORE_TRUNCATED', file, `the journal is cut inside its header (${data.length} bytes)`);
  if (first.kind === 'bad') throw storeError('ERR_STORE_CORRUPT', file, `the journal header is damaged (${first.reason})`);
  const header = decodeJournalHeader(first.json, file);
  const records: CommitRecord[] = [];
  let offset = first.end;
  while (offset < data.length) {
    const frame = frameAt(data, offset);
    if (frame.kind !== 'ok') {
      const next = intactFrameAfter(data, offset);
      if (next !== undefined) {
        const last = records.at(-1)?.revision ?? header.after;
        throw storeError('ERR_STORE_CORRUPT', file, `damaged record at byte ${offset} (${frame.kind === 'bad' ? frame.reason : 'its length runs past the next record'}, after revision ${last}) is followed by intact records at byte ${next}; a crash cannot cause that`);
      }
      return { header, records, validBytes: offset, tail: { truncatedAt: offset, droppedBytes: data.length - offset, reason: frame.kind === 'bad' ? frame.reason : 'incomplete record' } };
    }
    for (const record of decodeRecords(frame.json, file)) {
      const expected = (records.at(-1)?.revision ?? header.after) + 1;
      if (record.revision !== expected) {
        throw storeError('ERR_STORE_CORRUPT', file, `record at byte ${offset} has revision ${record.revision}, expected ${expected}: records are missing or out of order`);
      }
      records.push(record);
    }
    offset = frame.end;
  }
  return { header, records, validBytes: offset, tail: undefined };
}

function opJson(op: RecordOp): string {
  // The value is already canonical JSON text: splice it in rather than parse and re-serialise.
  return op.op === 'put' ? `{"op":"put","key":${JSON.stringify(op.key)},"value":${op.json}}` : `{"op":"delete","key":${JSON.stringify(op.key)}}`;
}

function recordJson(record: CommitRecord): string {
  return `{"revision":${record.revision},"ops":[${record.ops.map(opJson).join(',')}]}`;
}

/** One frame holding `records` (consecutive revisions): a plain record frame if there is one, else a group. */
export function encodeRecords(records: readonly CommitRecord[]): Buffer {
  if (records.length === 0) throw new StoreError('ERR_STORE_INVALID_ARGUMENT', 'store: encoding an empty group of records');
  return encodeFrame(records.length === 1 ? recordJson(records[0]) : `{"group":[${records.map(recordJson).join(',')}]}`);
}

function decodeRecords(json: string, file: string): CommitRecord[] {
  const parsed = parseJson(json, file, 'a record');
  if (isRecord(parsed) && 'group' in parsed) {
    if (!Array.isArray(parsed.group) || parsed.group.length === 0) throw storeError('ERR_STORE_CORRUPT', file, 'malformed record group');
    return parsed.group.map((record: unknown) => decodeRecord(record, file));
  }
  return [decodeRecord(parsed, file)];
}

function decodeRecord(parsed: unknown, file: string): CommitRecord {
  if (!isRecord(parsed) || !isRevision(parsed.revision) || !Array.isArray(parsed.ops)) throw storeError('ERR_STORE_CORRUPT', file, 'malformed record');
  const ops: RecordOp[] = parsed.ops.map((op: unknown) => {
    if (!isRecord(op) || typeof op.key !== 'string') throw storeError('ERR_STORE_CORRUPT', file, `malformed operation in revision ${parsed.revision}`);
    if (op.op === 'put' && 'value' in op) return { op: 'put', key: op.key, json: JSON.stringify(op.value) };
    if (op.op === 'delete') return { op: 'delete', key: op.key };
    throw storeError('ERR_STORE_CORRUPT', file, `malformed operation in revision ${parsed.revision}`);
  });
  return { revision: parsed.revision, ops };
}

export function encodeSnapshot(snapshot: SnapshotFile): Buffer {
  const entries = [...snapshot.state.entries]
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(
      ([key, e]) =>
        `{"key":${JSON.stringify(key)},"value":${e.json},"createRevision":${e.createRevision},"modRevision":${e.modRevision},"version":${e.version}}`,
    );
  return encodeFrame(
    `{"format":${STORE_FORMAT},"store":${JSON.stringify(snapshot.store)},"journalGeneration":${snapshot.journalGeneration},"revision":${snapshot.state.revision},"entries":[${entries.join(',')}]}`,
  );
}

export function decodeSnapshot(data: Buffer, file: string): SnapshotFile {
  if (LEGACY.test(data.toString('latin1', 0, 10))) throw legacyError(file);
  // A snapshot is only ever renamed into place complete, so unlike the journal any damage is corruption.
  const frame = frameAt(data, 0);
  if (frame.kind !== 'ok' || frame.end !== data.length) throw storeError('ERR_STORE_CORRUPT', file, 'snapshot is damaged (checksum mismatch or truncated)');
  const parsed = parseJson(frame.json, file, 'the snapshot');
  if (!isRecord(parsed) || parsed.format !== STORE_FORMAT || typeof parsed.store !== 'string' || !isRevision(parsed.journalGeneration) || !isRevision(parsed.revision) || !Array.isArray(parsed.entries)) {
    throw storeError('ERR_STORE_CORRUPT', file, 'unknown snapshot format');
  }
  const entries = new Map<string, StoredEntry>();
  for (const e of parsed.entries as unknown[]) {
    if (!isRecord(e) || typeof e.key !== 'string' || !('value' in e) || !isRevision(e.createRevision) || !isRevision(e.modRevision) || !isRevision(e.version)) {
      throw storeError('ERR_STORE_CORRUPT', file, 'malformed snapshot entry');
    }
    entries.set(e.key, { json: JSON.stringify(e.value), createRevision: e.createRevision, modRevision: e.modRevision, version: e.version });
  }
  return { store: parsed.store, journalGeneration: parsed.journalGeneration, state: { revision: parsed.revision, entries } };
}
