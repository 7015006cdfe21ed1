/**
 * On-disk encoding of the local store: checksummed lines for the journal and the snapshot.
 *
 * Every record is one line, `<crc32 hex> <json>\n`. A crash can only tear the line being
 * appended, so on open a bad *last* line is a torn write and is cut off, while a bad line with
 * valid lines after it cannot come from a crash and is reported as corruption instead of being
 * silently dropped.
 * @module
 */
import { crc32 } from 'node:zlib';
import { StoreError } from './errors.ts';
import type { CommitRecord, EngineSnapshot, RecordOp, StoredEntry } from './kv-engine.ts';

const NEWLINE = 0x0a;
const SNAPSHOT_FORMAT = 1;

function checksum(text: string): string {
  return crc32(text).toString(16).padStart(8, '0');
}

export function encodeLine(json: string): string {
  return `${checksum(json)} ${json}\n`;
}

/** The JSON of a line, or undefined if the line is damaged. */
function decodeLine(line: string): string | undefined {
  if (line.length < 10 || line[8] !== ' ') return undefined;
  const json = line.slice(9);
  return checksum(json) === line.slice(0, 8) ? json : undefined;
}

/**
 * Splits a journal into record JSON texts. `validBytes` is where the intact prefix ends: the
 * caller truncates the file there when `torn` says the tail was a half-written line.
 */
export function readLines(data: Buffer, file: string): { lines: string[]; validBytes: number; torn: boolean } {
  const lines: string[] = [];
  let offset = 0;
  while (offset < data.length) {
    const end = data.indexOf(NEWLINE, offset);
    const json = end === -1 ? undefined : decodeLine(data.toString('utf8', offset, end));
    if (json === undefined) {
      // Anything after the damaged line means the damage is not a torn append.
      const rest = end === -1 ? -1 : data.indexOf(NEWLINE, end + 1);
      if (rest !== -1) {
        throw new StoreError('ERR_STORE_CORRUPT', `store: reading ${file}: damaged record at byte ${offset} is followed by more records; refusing to guess (move the file away to start from the snapshot)`);
      }
      return { lines, validBytes: offset, torn: true };
    }
    lines.push(json);
    offset = end + 1;
  }
  return { lines, validBytes: offset, torn: false };
}

function opJson(op: RecordOp): string {
  // The value is already canonical JSON text: splice it in rather than parse and re-serialise.
  return op.op === 'put' ? `{"op":"put","key":${JSON.stringify(op.key)},"value":${op.json}}` : `{"op":"delete","key":${JSON.stringify(op.key)}}`;
}

export function encodeRecord(record: CommitRecord): string {
  return encodeLine(`{"revision":${record.revision},"ops":[${record.ops.map(opJson).join(',')}]}`);
}

function corrupt(file: string, detail: string): StoreError {
  return new StoreError('ERR_STORE_CORRUPT', `store: reading ${file}: ${detail}`);
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isRevision(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

export function decodeRecord(json: string, file: string): CommitRecord {
  const parsed: unknown = JSON.parse(json);
  if (!isRecord(parsed) || !isRevision(parsed.revision) || !Array.isArray(parsed.ops)) throw corrupt(file, 'malformed record');
  const ops: RecordOp[] = parsed.ops.map((op: unknown) => {
    if (!isRecord(op) || typeof op.key !== 'string') throw corrupt(file, `malformed operation in revision ${parsed.revision}`);
    if (op.op === 'put' && 'value' in op) return { op: 'put', key: op.key, json: JSON.stringify(op.value) };
    if (op.op === 'delete') return { op: 'delete', key: op.key };
    throw corrupt(file, `malformed operation in revision ${parsed.revision}`);
  });
  return { revision: parsed.revision, ops };
}

export function encodeSnapshot(snapshot: EngineSnapshot): string {
  const entries = [...snapshot.entries]
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(
      ([key, e]) =>
        `{"key":${JSON.stringify(key)},"value":${e.json},"createRevision":${e.createRevision},"modRevision":${e.modRevision},"version":${e.version}}`,
    );
  return encodeLine(`{"format":${SNAPSHOT_FORMAT},"revision":${snapshot.revision},"entries":[${entries.join(',')}]}`);
}

export function decodeSnapshot(data: Buffer, file: string): EngineSnapshot {
  // A snapshot is only ever renamed into place complete, so unlike the journal any damage is corruption.
  const { lines, torn } = readLines(data, file);
  if (torn || lines.length !== 1) throw corrupt(file, 'snapshot is damaged (checksum mismatch or truncated)');
  const parsed: unknown = JSON.parse(lines[0]);
  if (!isRecord(parsed) || parsed.format !== SNAPSHOT_FORMAT || !isRevision(parsed.revision) || !Array.isArray(parsed.entries)) {
    throw corrupt(file, `unknown snapshot format`);
  }
  const entries = new Map<string, StoredEntry>();
  for (const e of parsed.entries as unknown[]) {
    if (!isRecord(e) || typeof e.key !== 'string' || !('value' in e) || !isRevision(e.createRevision) || !isRevision(e.modRevision) || !isRevision(e.version)) {
      throw corrupt(file, 'malformed snapshot entry');
    }
    entries.set(e.key, { json: JSON.stringify(e.value), createRevision: e.createRevision, modRevision: e.modRevision, version: e.version });
  }
  return { revision: parsed.revision, entries };
}
