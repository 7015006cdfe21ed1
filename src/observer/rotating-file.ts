/**
 * An append-only file that rotates by size, as lumberjack (what Cilium's exporter writes
 * through) does: before a write would take the file past its maximum size, the file is renamed
 * to `<name>-<UTC time>.<ext>` (lumberjack's `2006-01-02T15-04-05.000`, e.g.
 * `events-2026-12-03T14-31-21.123.log`), a new one is started, and only the newest
 * `maxBackups` renamed files are kept (0 keeps them all, as lumberjack's default). Rotation
 * happens between lines, never inside one; a line longer than the maximum gets a file to itself.
 * Writes are serialized, so lines of concurrent writers never interleave.
 * @module
 */
import { mkdir, open, readdir, rename, rm, type FileHandle } from 'node:fs/promises';
import { basename, dirname, extname, join } from 'node:path';
import { ObserverError } from './errors.ts';

export interface RotationLimits {
  maxSizeBytes: number;
  /** Rotated files kept; 0 keeps all. */
  maxBackups: number;
}

const STAMP = /^(\d{4})-(\d{2})-(\d{2})T(\d{2})-(\d{2})-(\d{2})\.(\d{3})$/;

function stamp(ms: number): string {
  return new Date(ms).toISOString().replace(/:/g, '-').replace(/Z$/, '');
}

/**
 * @example
 * const file = new RotatingFile('/var/run/cilium/hubble/events.log', { maxSizeBytes: 10 << 20, maxBackups: 5 });
 * await file.write(['{"flow":…}\n']);
 */
export class RotatingFile {
  readonly path: string;
  limits: RotationLimits;
  #handle: FileHandle | undefined;
  #size = 0;
  #rotations = 0;
  #tail: Promise<void> = Promise.resolve();
  #lastBackupMs = 0;

  constructor(path: string, limits: RotationLimits) {
    this.path = path;
    this.limits = limits;
  }

  /** Bytes in the current file. */
  get size(): number {
    return this.#size;
  }

  get rotations(): number {
    return this.#rotations;
  }

  /** Opens (creating the directory and the file, mode 0600: flows name workloads) for appending. */
  open(): Promise<void> {
    return this.#serial(() => this.#open());
  }

  /** Appends `lines` (each ending in a newline), rotating between lines as the size demands. */
  write(lines: readonly string[]): Promise<void> {
    return this.#serial(async () => {
      let chunk: Buffer[] = [];
      let chunkBytes = 0;
      const flush = async () => {
        if (chunkBytes === 0) return;
        await this.#writeAll(Buffer.concat(chunk, chunkBytes));
        chunk = [];
        chunkBytes = 0;
      };
      for (const line of lines) {
        const bytes = Buffer.from(line);
        if (this.#size + chunkBytes + bytes.length > this.limits.maxSizeBytes && this.#size + chunkBytes > 0) {
          await flush();
          await this.#rotate();
        }
        chunk.push(bytes);
        chunkBytes += bytes.length;
      }
      await flush();
    });
  }

  close(): Promise<void> {
    return this.#serial(async () => {
      const handle = this.#handle;
      this.#handle = undefined;
      await handle?.close();
    });
  }

  #serial(task: () => Promise<void>): Promise<void> {
    const run = this.#tail.then(task);
    this.#tail = run.catch(() => undefined);
    return run;
  }

  async #open(): Promise<void> {
    if (this.#handle) return;
    try {
      await mkdir(dirname(this.path), { recursive: true, mode: 0o755 });
      this.#handle = await open(this.path, 'a', 0o600);
      this.#size = (await this.#handle.stat()).size;
    } catch (error) {
      throw new ObserverError('ERR_OBSERVER_EXPORT_FILE', `opening export file ${this.path}: ${(error as Error).message}`, { cause: error });
    }
  }

  async #writeAll(data: Buffer): Promise<void> {
    await this.#open();
    let offset = 0;
    try {
      while (offset < data.length) {
        const { bytesWritten } = await this.#handle!.write(data, offset, data.length - offset);
        offset += bytesWritten;
      }
    } catch (error) {
      // Reopened on the next write: the file may have been removed or its disk freed meanwhile.
      await this.#handle?.close().catch(() => undefined);
      this.#handle = undefined;
      throw new ObserverError('ERR_OBSERVER_EXPORT_FILE', `writing export file ${this.path}: ${(error as Error).message}`, { cause: error });
    } finally {
      this.#size += offset;
    }
  }

  async #rotate(): Promise<void> {
    const handle = this.#handle;
    this.#handle = undefined;
    await handle?.close();
    const ext = extname(this.path);
    const prefix = `${basename(this.path, ext)}-`;
    // Two rotations within a millisecond would get one name and the second would overwrite the first.
    const ms = Math.max(Date.now(), this.#lastBackupMs + 1);
    this.#lastBackupMs = ms;
    const backup = join(dirname(this.path), `${prefix}${stamp(ms)}${ext}`);
    try {
      await rename(this.path, backup);
    } catch (error) {
      throw new ObserverError('ERR_OBSERVER_EXPORT_FILE', `rotating export file ${this.path} to ${backup}: ${(error as Error).message}`, { cause: error });
    }
    this.#rotations++;
    this.#size = 0;
    await this.#open();
    await this.#prune();
  }

  /** Removes the oldest backups beyond maxBackups, ordered by the time in their names, as lumberjack does. */
  async #prune(): Promise<void> {
    if (this.limits.maxBackups <= 0) return;
    const backups = await this.backups();
    for (const old of backups.slice(0, Math.max(0, backups.length - this.limits.maxBackups))) await rm(old, { force: true });
  }

  /** The rotated files of this path, oldest first. */
  async backups(): Promise<string[]> {
    const ext = extname(this.path);
    const prefix = `${basename(this.path, ext)}-`;
    const names = await readdir(dirname(this.path)).catch(() => [] as string[]);
    return names
      .filter((name) => name.startsWith(prefix) && name.endsWith(ext) && STAMP.test(name.slice(prefix.length, name.length - ext.length)))
      .sort()
      .map((name) => join(dirname(this.path), name));
  }
}
