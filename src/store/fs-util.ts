/**
 * Crash-safe file primitives: a file is replaced by writing a temp file, fsyncing it, renaming it
 * over the target and fsyncing the directory. rename(2) is atomic, so after a crash the target is
 * either the old or the new file, never a mix; the directory fsync makes the rename itself durable.
 * @module
 */
import { randomBytes } from 'node:crypto';
import { open, readdir, rename, unlink, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';

/** Marker in temp file names, so a leftover from a crash is recognised and removed on open. */
export const TEMP_MARKER = '.tmp-';

export function tempName(name: string): string {
  return `${name}${TEMP_MARKER}${process.pid}-${randomBytes(4).toString('hex')}`;
}

/** Writes all of `data`; FileHandle.write may write less than asked (e.g. near ENOSPC). */
export async function writeAll(handle: FileHandle, data: Buffer): Promise<void> {
  let offset = 0;
  while (offset < data.length) {
    const { bytesWritten } = await handle.write(data, offset, data.length - offset);
    offset += bytesWritten;
  }
}

export async function fsyncDirectory(directory: string): Promise<void> {
  const handle = await open(directory, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Atomically replaces `directory/name` with `data` (see the module comment). */
export async function writeFileAtomic(directory: string, name: string, data: string | Buffer): Promise<void> {
  const temp = join(directory, tempName(name));
  const handle = await open(temp, 'wx', 0o600);
  try {
    await writeAll(handle, typeof data === 'string' ? Buffer.from(data) : data);
    await handle.sync();
  } catch (error) {
    await handle.close().catch(() => {});
    await unlink(temp).catch(() => {});
    throw error;
  }
  await handle.close();
  try {
    await rename(temp, join(directory, name));
  } catch (error) {
    await unlink(temp).catch(() => {});
    throw error;
  }
  await fsyncDirectory(directory);
}

/** Removes temp files a crash left behind; returns their names. Only safe while holding the lock. */
export async function removeTempFiles(directory: string): Promise<string[]> {
  const removed: string[] = [];
  for (const name of await readdir(directory)) {
    if (!name.includes(TEMP_MARKER)) continue;
    await unlink(join(directory, name)).catch(() => {});
    removed.push(name);
  }
  return removed;
}
