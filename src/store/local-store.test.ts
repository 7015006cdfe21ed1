/**
 * Tests of the directory-backed store: the shared conformance suite, then what only a disk
 * has — restarts, compaction, torn writes, leftover temp files, real SIGKILLs and the lock
 * against a second process.
 * @module
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { appendFile, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { promisify } from 'node:util';
import { StoreError, type StoreLockedError } from './errors.ts';
import { encodeLine } from './journal.ts';
import { JOURNAL_FILE, LocalStateStore, SNAPSHOT_FILE } from './local-store.ts';
import { LOCK_FILE } from './lock.ts';
import { runStateStoreConformance, take } from './state-store.case.ts';

const run = promisify(execFile);
const STORE_MODULE = JSON.stringify(join(import.meta.dirname, 'index.ts'));

async function tempDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'ciliate-store-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

/** Runs an ES module snippet in a fresh node process and returns its stdout. */
async function node(script: string): Promise<string> {
  const { stdout } = await run(process.execPath, ['--input-type=module', '-e', script]);
  return stdout.trim();
}

runStateStoreConformance('local', async (t) => LocalStateStore.open(join(await tempDir(t), 'state')));

test('local: state and revisions survive a restart', async (t) => {
  const dir = await tempDir(t);
  const first = await LocalStateStore.open(dir);
  await first.put('a', { n: 1 });
  await first.put('a', { n: 2 });
  await first.transaction([
    { type: 'put', key: 'b', value: 'x' },
    { type: 'put', key: 'c', value: [1] },
  ]);
  await first.delete('c');
  await first.close();

  const second = await LocalStateStore.open(dir);
  t.after(() => second.close());
  assert.equal(second.revision, 4);
  assert.deepEqual(await second.get('a'), { key: 'a', value: { n: 2 }, createRevision: 1, modRevision: 2, version: 2 });
  assert.deepEqual((await second.list('')).entries.map((e) => [e.key, e.modRevision]), [['a', 2], ['b', 3]]);
  // Compare-and-swap keeps working against the persisted revisions.
  await assert.rejects(second.put('a', 3, { expectedRevision: 1 }), (e) => StoreError.is(e, 'ERR_STORE_CONFLICT'));
  assert.deepEqual(await second.put('a', 3, { expectedRevision: 2 }), { revision: 5 });
  assert.equal(second.openReport.replayedRecords, 4);
});

test('local: watch replays events from before a restart, in order, then follows new ones', async (t) => {
  const dir = await tempDir(t);
  const first = await LocalStateStore.open(dir);
  await first.put('ipam/ips/10.0.0.2', { owner: 'a' });
  await first.put('unrelated', 1);
  await first.put('ipam/ips/10.0.0.3', { owner: 'b' });
  await first.delete('ipam/ips/10.0.0.2');
  await first.close();

  const second = await LocalStateStore.open(dir);
  t.after(() => second.close());
  const watch = second.watch<{ owner: string }>('ipam/', { afterRevision: 0 });
  await second.put('ipam/ips/10.0.0.4', { owner: 'c' });
  const events = await take(watch, 4);
  assert.deepEqual(
    events.map((e) => [e.revision, e.type, e.key, e.value?.owner]),
    [
      [1, 'put', 'ipam/ips/10.0.0.2', 'a'],
      [3, 'put', 'ipam/ips/10.0.0.3', 'b'],
      [4, 'delete', 'ipam/ips/10.0.0.2', undefined],
      [5, 'put', 'ipam/ips/10.0.0.4', 'c'],
    ],
  );
  watch.close();
});

test('local: compaction snapshots the state, restarts the journal and ends older history', async (t) => {
  const dir = await tempDir(t);
  const store = await LocalStateStore.open(dir, { compactAfter: 3 });
  for (let i = 1; i <= 7; i++) await store.put(`k${i % 4}`, i);
  await store.close();
  // Compacted after revision 6: the journal holds only revision 7.
  assert.equal((await readFile(join(dir, JOURNAL_FILE), 'utf8')).trim().split('\n').length, 1);

  const reopened = await LocalStateStore.open(dir, { compactAfter: 3 });
  t.after(() => reopened.close());
  assert.deepEqual(reopened.openReport, { snapshotRevision: 6, replayedRecords: 1, truncatedBytes: 0, removedTempFiles: [] });
  assert.equal(reopened.revision, 7);
  assert.deepEqual((await reopened.list('')).entries.map((e) => [e.key, e.value, e.version]), [['k0', 4, 1], ['k1', 5, 2], ['k2', 6, 2], ['k3', 7, 2]]);
  await assert.rejects(reopened.watch('', { afterRevision: 5 }).next(), (e: StoreError) => {
    assert.equal(e.code, 'ERR_STORE_COMPACTED');
    assert.match(e.message, /revision 5 is compacted; history starts after revision 6/);
    return true;
  });
  const watch = reopened.watch('', { afterRevision: 6 });
  assert.deepEqual((await take(watch, 1)).map((e) => e.revision), [7]);
  watch.close();
});

test('local: a crash between writing the snapshot and restarting the journal loses nothing', async (t) => {
  const dir = await tempDir(t);
  const store = await LocalStateStore.open(dir);
  await store.put('a', 1);
  await store.put('b', 2);
  const oldJournal = await readFile(join(dir, JOURNAL_FILE));
  await store.compact();
  await store.put('c', 3);
  const newJournal = await readFile(join(dir, JOURNAL_FILE));
  await store.close();
  // As if the journal restart had not happened: old records (covered by the snapshot) then new.
  await writeFile(join(dir, JOURNAL_FILE), Buffer.concat([oldJournal, newJournal]));

  const reopened = await LocalStateStore.open(dir);
  t.after(() => reopened.close());
  assert.equal(reopened.revision, 3);
  assert.equal(reopened.openReport.replayedRecords, 1);
  assert.deepEqual((await reopened.list('')).entries.map((e) => e.value), [1, 2, 3]);
});

test('local: a torn journal tail and leftover temp files from a crash are cleaned up on open', async (t) => {
  const dir = await tempDir(t);
  const store = await LocalStateStore.open(dir);
  await store.put('a', 1);
  await store.compact();
  await store.put('b', 2);
  await store.close();
  const snapshotBefore = await readFile(join(dir, SNAPSHOT_FILE), 'utf8');
  // A crash mid-write: a half-written snapshot temp file and half a journal line.
  await writeFile(join(dir, `${SNAPSHOT_FILE}.tmp-4242-deadbeef`), '0000 {"format":1,"revis');
  const torn = encodeLine('{"revision":3,"ops":[{"op":"put","key":"c","value":3}]}').slice(0, 25);
  await appendFile(join(dir, JOURNAL_FILE), torn);

  const reopened = await LocalStateStore.open(dir);
  t.after(() => reopened.close());
  assert.deepEqual(reopened.openReport, { snapshotRevision: 1, replayedRecords: 1, truncatedBytes: 25, removedTempFiles: [`${SNAPSHOT_FILE}.tmp-4242-deadbeef`] });
  assert.equal(await readFile(join(dir, SNAPSHOT_FILE), 'utf8'), snapshotBefore);
  assert.deepEqual((await readdir(dir)).sort(), [LOCK_FILE, JOURNAL_FILE, SNAPSHOT_FILE].sort());
  assert.equal(reopened.revision, 2);
  assert.equal(await reopened.get('c'), undefined);
  // The next record starts on a clean line and survives another restart.
  await reopened.put('c', 'after');
  await reopened.close();
  const third = await LocalStateStore.open(dir);
  t.after(() => third.close());
  assert.deepEqual((await third.list('')).entries.map((e) => [e.key, e.value, e.modRevision]), [['a', 1, 1], ['b', 2, 2], ['c', 'after', 3]]);
});

test('local: damage in the middle of the journal is reported as ERR_STORE_CORRUPT, not skipped', async (t) => {
  const dir = await tempDir(t);
  const store = await LocalStateStore.open(dir);
  for (let i = 0; i < 3; i++) await store.put(`k${i}`, i);
  await store.close();
  const lines = (await readFile(join(dir, JOURNAL_FILE), 'utf8')).split('\n');
  lines[1] = lines[1].replace('"k1"', '"kX"');
  await writeFile(join(dir, JOURNAL_FILE), lines.join('\n'));
  await assert.rejects(LocalStateStore.open(dir), (e: StoreError) => {
    assert.equal(e.code, 'ERR_STORE_CORRUPT');
    assert.match(e.message, /journal\.log: damaged record at byte \d+ is followed by more records/);
    return true;
  });
  // The failed open released the lock again.
  await assert.rejects(readFile(join(dir, LOCK_FILE)), { code: 'ENOENT' });
});

test('local: after SIGKILL mid-write every acknowledged transaction is there, complete', async (t) => {
  const dir = await tempDir(t);
  // The child acknowledges each committed transaction on stdout; we kill it without warning.
  const script = `
    import { LocalStateStore } from ${STORE_MODULE};
    const store = await LocalStateStore.open(${JSON.stringify(dir)}, { compactAfter: 25 });
    for (let i = 0; ; i++) {
      const { revision } = await store.transaction([
        { type: 'put', key: 'ip/' + i, value: { owner: 'o' + i }, expectedRevision: 0 },
        { type: 'put', key: 'owner/o' + i, value: { ip: i }, expectedRevision: 0 },
      ]);
      process.stdout.write(revision + '\\n');
    }`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  let acknowledged = 0;
  await new Promise<void>((resolve) => {
    child.stdout.on('data', (chunk: Buffer) => {
      const lines = chunk.toString().trim().split('\n');
      acknowledged = Number(lines[lines.length - 1]);
      if (acknowledged >= 60) child.kill('SIGKILL');
    });
    child.on('exit', () => resolve());
  });

  // The dead child's lock is stale and is taken over.
  const store = await LocalStateStore.open(dir);
  t.after(() => store.close());
  assert.ok(store.revision >= acknowledged, `revision ${store.revision} < acknowledged ${acknowledged}`);
  const ips = (await store.list('ip/')).entries;
  const owners = (await store.list('owner/')).entries;
  assert.equal(ips.length, store.revision);
  assert.equal(owners.length, store.revision, 'each transaction landed with both keys or not at all');
});

test('local: a second process gets ERR_STORE_LOCKED naming the holder; a dead holder is taken over', async (t) => {
  const dir = await tempDir(t);
  const store = await LocalStateStore.open(dir);
  const tryOpen = `
    import { LocalStateStore } from ${STORE_MODULE};
    try { const s = await LocalStateStore.open(${JSON.stringify(dir)}); console.log('opened'); await s.close(); }
    catch (e) { console.log(e.code + ': ' + e.message); }`;
  const output = await node(tryOpen);
  assert.match(output, new RegExp(`^ERR_STORE_LOCKED: store: opening ${dir}: state directory is locked by pid ${process.pid}; is another ciliate agent running\\?`));

  // The same process opening twice is refused too, and says so.
  await assert.rejects(LocalStateStore.open(dir), (e: StoreLockedError) => e.code === 'ERR_STORE_LOCKED' && e.pid === process.pid && /this process/.test(e.message));

  await store.close();
  assert.equal(await node(tryOpen), 'opened');

  // A lock left by a process that has exited: its pid is dead, so the lock is stale.
  const deadPid = Number(await node('console.log(process.pid)'));
  await writeFile(join(dir, LOCK_FILE), JSON.stringify({ pid: deadPid, startTime: '1', hostname: '' }));
  const reopened = await LocalStateStore.open(dir);
  t.after(() => reopened.close());
  assert.equal(JSON.parse(await readFile(join(dir, LOCK_FILE), 'utf8')).pid, process.pid);
});

test('local: a recycled pid (same pid, other start time) does not keep a stale lock alive', async (t) => {
  const dir = await tempDir(t);
  // Our own pid, but a start time that is not ours: the process that wrote this lock is gone.
  await writeFile(join(dir, LOCK_FILE), JSON.stringify({ pid: process.pid, startTime: '1', hostname: '' }));
  const store = await LocalStateStore.open(dir);
  t.after(() => store.close());
  await store.put('k', 1);
});
