/**
 * The state directory's lock: a `LOCK` file naming the owning process, so a second agent gets a
 * clear error instead of two writers interleaving one journal.
 *
 * - The lock file appears with its content in one step (written to a temp file, then link(2)ed
 *   to `LOCK`, which fails if it exists), so nobody ever reads a half-written lock.
 * - A lock whose process is gone is stale and taken over. The process start time (from
 *   /proc/<pid>/stat) is recorded too, so a recycled pid does not keep a dead agent's lock alive.
 * - Taking over renames the stale file away first and checks that what it moved is the lock it
 *   judged stale, so two processes racing for a stale lock cannot both win.
 * @module
 */
import { link, readFile, rename, unlink, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { StoreError, StoreLockedError } from './errors.ts';
import { tempName } from './fs-util.ts';

export const LOCK_FILE = 'LOCK';

interface LockContent {
  pid: number;
  /** Process start time in clock ticks since boot, or null where /proc is not available. */
  startTime: string | null;
  hostname: string;
}

/** Field 22 of /proc/<pid>/stat; undefined if the process does not exist or /proc is absent. */
async function processStartTime(pid: number): Promise<string | undefined> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) may contain spaces and parentheses: count from the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return fields[19];
  } catch {
    return undefined;
  }
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    // EPERM: it exists but belongs to another user.
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function parseLock(text: string): LockContent | undefined {
  try {
    const parsed = JSON.parse(text) as Partial<LockContent>;
    if (typeof parsed.pid !== 'number' || !Number.isSafeInteger(parsed.pid) || parsed.pid <= 0) return undefined;
    return { pid: parsed.pid, startTime: typeof parsed.startTime === 'string' ? parsed.startTime : null, hostname: String(parsed.hostname ?? '') };
  } catch {
    return undefined;
  }
}

/** Whether the lock's owner still runs. An unreadable lock has no owner. */
async function held(lock: LockContent | undefined): Promise<boolean> {
  if (lock === undefined) return false;
  // A lock from another host (a state directory on shared storage) cannot be checked: respect it.
  if (lock.hostname !== '' && lock.hostname !== hostname()) return true;
  if (!processAlive(lock.pid)) return false;
  if (lock.startTime === null) return true;
  const startTime = await processStartTime(lock.pid);
  return startTime === undefined || startTime === lock.startTime;
}

export class DirectoryLock {
  readonly path: string;
  #content: string;
  #released = false;

  private constructor(path: string, content: string) {
    this.path = path;
    this.#content = content;
  }

  /** Takes the lock of `directory`, or throws StoreLockedError (ERR_STORE_LOCKED) naming the holder. */
  static async acquire(directory: string): Promise<DirectoryLock> {
    const path = join(directory, LOCK_FILE);
    const content = JSON.stringify({ pid: process.pid, startTime: (await processStartTime(process.pid)) ?? null, hostname: hostname() } satisfies LockContent);
    const temp = join(directory, tempName(LOCK_FILE));
    await writeFile(temp, content, { mode: 0o600, flag: 'wx' });
    try {
      // A few rounds: each lost race against another process re-reads the lock it created.
      for (let attempt = 0; attempt < 5; attempt++) {
        try {
          await link(temp, path);
          return new DirectoryLock(path, content);
        } catch (error) {
          const code = (error as NodeJS.ErrnoException).code;
          if (code === 'ENOENT') {
            // The holder, just opened, removed our temp file as a crash leftover: write it again.
            await writeFile(temp, content, { mode: 0o600 });
            continue;
          }
          if (code !== 'EEXIST') throw error;
        }
        const existingText = await readFile(path, 'utf8').catch((error: NodeJS.ErrnoException) => {
          if (error.code === 'ENOENT') return undefined; // released meanwhile: try again
          throw error;
        });
        if (existingText === undefined) continue;
        const existing = parseLock(existingText);
        if (await held(existing)) throw new StoreLockedError(directory, existing!.pid);
        await DirectoryLock.#removeStale(path, existingText);
      }
      throw new StoreError('ERR_STORE_LOCKED', `store: opening ${directory}: could not take the lock: other processes keep racing for it`);
    } finally {
      await unlink(temp).catch(() => {});
    }
  }

  /** Moves a stale lock out of the way, unless it changed since it was judged stale. */
  static async #removeStale(path: string, staleText: string): Promise<void> {
    const aside = tempName(`${path}.stale`);
    try {
      await rename(path, aside);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw error;
    }
    const moved = await readFile(aside, 'utf8');
    if (moved !== staleText) {
      // Another process took the stale lock over between our read and our rename: put its live
      // lock back (link fails if yet another one appeared, which then holds the lock anyway).
      await link(aside, path).catch(() => {});
    }
    await unlink(aside).catch(() => {});
  }

  /** Removes the lock file, if it is still ours. */
  async release(): Promise<void> {
    if (this.#released) return;
    this.#released = true;
    const current = await readFile(this.path, 'utf8').catch(() => undefined);
    if (current === this.#content) await unlink(this.path).catch(() => {});
  }
}
