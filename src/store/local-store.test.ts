/**
 * Tests of the directory-backed store: the shared conformance suite, then what only a disk
 * has — restarts, compaction, torn writes, leftover temp files, real SIGKILLs and the lock
 * against a second process.
 * @module
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { appendFile, mkdtemp, readdir, readFile, rm, stat, truncate, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { test, type TestContext } from 'node:test';
import { promisify } from 'node:util';
import { StoreError, type StoreLockedError } from './errors.ts';
import { encodeFrame } from './journal.ts';
import { JOURNAL_FILE, LocalStateStore, SNAPSHOT_FILE, type JournalRecovery } from './local-store.ts';
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
  // Compacted after revision 6: the journal holds its header and revision 7.
  assert.equal((await readFile(join(dir, JOURNAL_FILE), 'utf8')).trim().split('\n').length, 2);

  const reopened = await LocalStateStore.open(dir, { compactAfter: 3 });
  t.after(() => reopened.close());
  assert.deepEqual(reopened.openReport, { snapshotRevision: 6, replayedRecords: 1, recovery: undefined, removedTempFiles: [] });
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
  await store.close();
  // As if the journal restart had not happened: the new snapshot, followed by the old journal.
  await writeFile(join(dir, JOURNAL_FILE), oldJournal);

  const reopened = await LocalStateStore.open(dir);
  assert.equal(reopened.revision, 2);
  assert.equal(reopened.openReport.replayedRecords, 0);
  assert.equal(reopened.recovery, undefined);
  await reopened.put('c', 3);
  await reopened.close();
  const third = await LocalStateStore.open(dir);
  t.after(() => third.close());
  assert.equal(third.revision, 3);
  assert.deepEqual((await third.list('')).entries.map((e) => e.value), [1, 2, 3]);
});

/** A store with `a`, `b`, `c` at revisions 1–3 (`a` in the snapshot), closed; the byte offset where revision 3 starts. */
async function threeRevisions(dir: string): Promise<number> {
  const store = await LocalStateStore.open(dir);
  await store.put('a', 1);
  await store.compact();
  await store.put('b', 2);
  const before = (await stat(join(dir, JOURNAL_FILE))).size;
  await store.put('c', 3);
  await store.close();
  return before;
}

test('local: a torn journal tail and leftover temp files from a crash are cleaned up on open, and the loss reported', async (t) => {
  const dir = await tempDir(t);
  const store = await LocalStateStore.open(dir);
  await store.put('a', 1);
  await store.compact();
  await store.put('b', 2);
  await store.close();
  const snapshotBefore = await readFile(join(dir, SNAPSHOT_FILE), 'utf8');
  const intact = (await stat(join(dir, JOURNAL_FILE))).size;
  // A crash mid-write: a half-written snapshot temp file and half a journal record.
  await writeFile(join(dir, `${SNAPSHOT_FILE}.tmp-4242-deadbeef`), '0000 {"format":2,"revis');
  const torn = encodeFrame('{"revision":3,"ops":[{"op":"put","key":"c","value":3}]}').subarray(0, 25);
  await appendFile(join(dir, JOURNAL_FILE), torn);

  const recoveries: JournalRecovery[] = [];
  const reopened = await LocalStateStore.open(dir, { onRecovery: (r) => recoveries.push(r) });
  t.after(() => reopened.close());
  const { recovery, ...rest } = reopened.openReport;
  assert.deepEqual(rest, { snapshotRevision: 1, replayedRecords: 1, removedTempFiles: [`${SNAPSHOT_FILE}.tmp-4242-deadbeef`] });
  assert.equal(recovery?.droppedBytes, 25);
  assert.deepEqual(recoveries, [recovery]);
  assert.equal(await readFile(join(dir, SNAPSHOT_FILE), 'utf8'), snapshotBefore);
  assert.deepEqual((await readdir(dir)).sort(), [LOCK_FILE, JOURNAL_FILE, SNAPSHOT_FILE].sort());
  assert.equal((await stat(join(dir, JOURNAL_FILE))).size, intact, 'the journal is cut back to where it was intact');
  assert.equal(reopened.revision, 2);
  assert.equal(await reopened.get('c'), undefined);
  // The next record starts on a clean boundary and survives another restart, which finds nothing to repair.
  await reopened.put('c', 'after');
  await reopened.close();
  const third = await LocalStateStore.open(dir, { onRecovery: (r) => recoveries.push(r) });
  t.after(() => third.close());
  assert.equal(third.recovery, undefined);
  assert.equal(recoveries.length, 1);
  assert.deepEqual((await third.list('')).entries.map((e) => [e.key, e.value, e.modRevision]), [['a', 1, 1], ['b', 2, 2], ['c', 'after', 3]]);
});

test('local: a journal truncated in the middle of a record opens without it, reporting the offset, the bytes dropped and the last revision kept', async (t) => {
  const dir = await tempDir(t);
  const lastStart = await threeRevisions(dir);
  const file = join(dir, JOURNAL_FILE);
  const size = (await stat(file)).size;
  await truncate(file, size - 10);

  const recoveries: JournalRecovery[] = [];
  const store = await LocalStateStore.open(dir, { onRecovery: (r) => recoveries.push(r) });
  t.after(() => store.close());
  assert.deepEqual(
    { ...store.recovery, message: undefined },
    { file, truncatedAt: lastStart, droppedBytes: size - 10 - lastStart, reason: 'incomplete record', lastRevision: 2, message: undefined },
  );
  assert.deepEqual(recoveries, [store.recovery]);
  assert.equal(
    store.recovery?.message.split('. ')[0],
    `store: ${file}: dropped a torn tail of ${size - 10 - lastStart} bytes at byte ${lastStart} (incomplete record); the store now ends at revision 2`,
  );
  assert.equal(store.revision, 2);
  assert.equal(await store.get('c'), undefined);
  assert.equal((await stat(file)).size, lastStart);
});

test('local: a damaged byte in the last record is caught by its checksum, and without onRecovery a process warning says so', async (t) => {
  const dir = await tempDir(t);
  const lastStart = await threeRevisions(dir);
  const journal = await readFile(join(dir, JOURNAL_FILE));
  // Inside the value of `c` (3 → 4): same length, so only the checksum can tell.
  const at = journal.indexOf('"value":3', lastStart) + 8;
  journal[at] = 0x34;
  await writeFile(join(dir, JOURNAL_FILE), journal);

  const warned = once(process, 'warning');
  const store = await LocalStateStore.open(dir);
  t.after(() => store.close());
  assert.equal(store.recovery?.reason, 'checksum mismatch');
  assert.equal(store.recovery?.truncatedAt, lastStart);
  assert.equal(store.recovery?.droppedBytes, journal.length - lastStart);
  assert.equal(store.recovery?.lastRevision, 2);
  const [warning] = (await warned) as [Error & { code?: string }];
  assert.equal(warning.name, 'StoreRecoveryWarning');
  assert.equal(warning.code, 'CILIATE_STORE_TAIL_DROPPED');
  assert.equal(warning.message, store.recovery?.message);
  assert.equal(await store.get('c'), undefined);
});

/** The error of an open that must be refused (closing the store if it opened after all). */
async function refusedOpen(dir: string): Promise<StoreError> {
  let store: LocalStateStore | undefined;
  try {
    store = await LocalStateStore.open(dir);
  } catch (error) {
    assert.ok(StoreError.is(error), `a StoreError: ${String(error)}`);
    return error;
  }
  await store.close();
  assert.fail('the store opened');
}

/** The part of a refusal that tells the operator what to do: every state file it names must exist. */
async function assertHintNamesExistingFiles(dir: string, message: string): Promise<string> {
  const [, hint] = message.split("The store's files were left as they are. ");
  assert.ok(hint, `the message has a hint: ${message}`);
  const present = await readdir(dir);
  for (const name of [JOURNAL_FILE, SNAPSHOT_FILE]) {
    if (hint.includes(name)) assert.ok(present.includes(name), `the hint names ${name}, which does not exist: ${hint}`);
  }
  assert.ok(hint.includes(`move the store directory away (mv ${dir} ${dir}.damaged)`), hint);
  assert.match(hint, /no longer knows this node's endpoints/);
  return hint;
}

test('local: an emptied journal is refused with ERR_STORE_TRUNCATED, with or without a compaction before', async (t) => {
  for (const compacted of [false, true]) {
    const dir = await tempDir(t);
    const store = await LocalStateStore.open(dir);
    await store.put('a', 1);
    if (compacted) await store.compact();
    await store.put('b', 2);
    await store.close();
    await truncate(join(dir, JOURNAL_FILE), 0);

    const e = await refusedOpen(dir);
    assert.equal(e.code, 'ERR_STORE_TRUNCATED');
    assert.match(e.message, /journal\.log: the journal is empty \(0 bytes\), without even its header/);
    const hint = await assertHintNamesExistingFiles(dir, e.message);
    assert.ok(hint.includes(`restore ${dir} from a backup of the whole directory`), hint);
    assert.ok(hint.includes(`its snapshot.json still holds the state at revision ${compacted ? 1 : 0}`), hint);
    assert.equal((await stat(join(dir, JOURNAL_FILE))).size, 0, 'a refused open changes nothing');
    await assert.rejects(readFile(join(dir, LOCK_FILE)), { code: 'ENOENT' });
  }
});

test('local: a deleted journal or snapshot is refused with ERR_STORE_TRUNCATED; the hint names only the file left', async (t) => {
  const dir = await tempDir(t);
  await threeRevisions(dir);
  const journal = await readFile(join(dir, JOURNAL_FILE));
  await unlink(join(dir, JOURNAL_FILE));
  {
    const e = await refusedOpen(dir);
    assert.equal(e.code, 'ERR_STORE_TRUNCATED');
    assert.match(e.message, /journal\.log is missing, but snapshot\.json \(revision 1\) says journal generation \d+ follows it/);
    const hint = await assertHintNamesExistingFiles(dir, e.message);
    assert.match(hint, /its snapshot\.json still holds the state at revision 1/);
  }
  assert.deepEqual(await readdir(dir), [SNAPSHOT_FILE], 'no fresh journal was made up');

  await writeFile(join(dir, JOURNAL_FILE), journal);
  await unlink(join(dir, SNAPSHOT_FILE));
  {
    const e = await refusedOpen(dir);
    assert.equal(e.code, 'ERR_STORE_TRUNCATED');
    assert.match(e.message, /snapshot\.json is missing, but journal\.log starts after revision 1/);
    const hint = await assertHintNamesExistingFiles(dir, e.message);
    assert.doesNotMatch(hint, /snapshot/);
  }
});

test('local: a journal from another store, or from an older generation, is refused as ERR_STORE_CORRUPT', async (t) => {
  const dir = await tempDir(t);
  const other = await tempDir(t);
  await threeRevisions(dir);
  await threeRevisions(other);
  const ours = await readFile(join(dir, JOURNAL_FILE));
  await writeFile(join(dir, JOURNAL_FILE), await readFile(join(other, JOURNAL_FILE)));
  await assert.rejects(LocalStateStore.open(dir), (e: StoreError) => e.code === 'ERR_STORE_CORRUPT' && /journal\.log belongs to store .* but snapshot\.json to store/.test(e.message));

  // Our own journal from two compactions ago, with a write in between that only the lost journal had.
  await writeFile(join(dir, JOURNAL_FILE), ours);
  const store = await LocalStateStore.open(dir);
  await store.compact();
  await store.put('d', 4);
  await store.compact();
  await store.close();
  await writeFile(join(dir, JOURNAL_FILE), ours);
  await assert.rejects(LocalStateStore.open(dir), (e: StoreError) => e.code === 'ERR_STORE_CORRUPT' && /followed by generation \d+: the journal was replaced/.test(e.message));
});

test('local: files of store format 1 are refused with ERR_STORE_FORMAT and an instruction', async (t) => {
  const dir = await tempDir(t);
  // Format 1: `<crc32> <json>` lines without a journal header.
  await writeFile(join(dir, JOURNAL_FILE), '0a1b2c3d {"revision":1,"ops":[{"op":"put","key":"a","value":1}]}\n');
  {
    const e = await refusedOpen(dir);
    assert.equal(e.code, 'ERR_STORE_FORMAT');
    assert.match(e.message, /journal\.log: written in store format 1 \(a development version\); this version reads only format 2 and does not migrate it/);
    await assertHintNamesExistingFiles(dir, e.message);
  }
});

test('local: damage in the middle of the journal is reported as ERR_STORE_CORRUPT, not skipped', async (t) => {
  const dir = await tempDir(t);
  const store = await LocalStateStore.open(dir);
  for (let i = 0; i < 3; i++) await store.put(`k${i}`, i);
  await store.close();
  const lines = (await readFile(join(dir, JOURNAL_FILE), 'utf8')).split('\n');
  // Line 0 is the header. A changed key (caught by the checksum), and a length that runs past the
  // records after it (which on its own would look like a torn tail).
  const damaged = [lines.with(2, lines[2].replace('"k1"', '"kX"')), lines.with(2, `${lines[2].slice(0, 9)}ffffffff${lines[2].slice(17)}`)].map((l) => l.join('\n'));
  for (const journal of damaged) {
    await writeFile(join(dir, JOURNAL_FILE), journal);
    {
      const e = await refusedOpen(dir);
      assert.equal(e.code, 'ERR_STORE_CORRUPT');
      assert.match(e.message, /journal\.log: damaged record at byte \d+ \((checksum mismatch|its length runs past the next record), after revision 1\) is followed by intact records at byte \d+/);
      await assertHintNamesExistingFiles(dir, e.message);
    }
    // The failed open released the lock again and left the journal as it was.
    await assert.rejects(readFile(join(dir, LOCK_FILE)), { code: 'ENOENT' });
    assert.equal(await readFile(join(dir, JOURNAL_FILE), 'utf8'), journal);
  }
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

test('local: concurrent transactions share fsyncs (group commit), keep arrival order, one revision each, and watches see each once', async (t) => {
  const dir = await tempDir(t);
  const store = await LocalStateStore.open(dir);
  t.after(() => store.close());
  const watch = store.watch('k/');
  const syncsBefore = store.journalSyncs;
  const count = 100;
  // The last write is checked against an earlier one of its group, which is not yet durable.
  const writes = Array.from({ length: count }, (_, i) => store.transaction([{ type: 'put', key: `k/${i}`, value: i, expectedRevision: 0 }]));
  const conflicting = assert.rejects(store.put('k/0', 'second', { expectedRevision: 0 }), (e: StoreError) => e.code === 'ERR_STORE_CONFLICT');
  const results = await Promise.all(writes);
  await conflicting;
  const syncs = store.journalSyncs - syncsBefore;
  assert.deepEqual(
    results.map((r) => r.revision),
    Array.from({ length: count }, (_, i) => i + 1),
    'revisions follow arrival order, one per transaction',
  );
  assert.ok(syncs < count / 10, `${count} concurrent transactions took ${syncs} journal syncs`);
  const events = await take(watch, count);
  assert.deepEqual(
    events.map((e) => [e.key, e.revision]),
    Array.from({ length: count }, (_, i) => [`k/${i}`, i + 1]),
  );
  // A no-op write checked against the group it arrived with answers only once that is durable.
  const [put, check] = await Promise.all([store.put('k/x', 1), store.transaction([{ type: 'check', key: 'k/0', expectedRevision: 1 }])]);
  assert.equal(check.revision, put.revision);
  assert.equal((await take(watch, 1))[0].key, 'k/x', 'nothing but the put was seen');
  await store.close();

  const reopened = await LocalStateStore.open(dir);
  t.after(() => reopened.close());
  assert.equal(reopened.revision, count + 1);
  assert.equal((await reopened.list('k/')).entries.length, count + 1);
  assert.equal((await reopened.get('k/0'))?.value, 0);
});

test('local: a group commit torn by a crash is dropped whole and reported; the groups before it stay', async (t) => {
  const dir = await tempDir(t);
  const store = await LocalStateStore.open(dir);
  await Promise.all([store.put('a', 1), store.put('b', 2), store.put('c', 3)]);
  await store.close();
  const file = join(dir, JOURNAL_FILE);
  const intact = (await stat(file)).size;
  // A power loss can persist any pages of an unsynced write: here the end of a group but not its middle.
  const group = Buffer.from(encodeFrame('{"group":[{"revision":4,"ops":[{"op":"put","key":"d","value":4}]},{"revision":5,"ops":[{"op":"put","key":"e","value":5}]}]}'));
  group.fill(0, 20, 40);
  await appendFile(file, group);

  const recoveries: JournalRecovery[] = [];
  const reopened = await LocalStateStore.open(dir, { onRecovery: (r) => recoveries.push(r) });
  t.after(() => reopened.close());
  assert.equal(recoveries.length, 1);
  assert.equal(reopened.recovery?.truncatedAt, intact);
  assert.equal(reopened.recovery?.droppedBytes, group.length);
  assert.equal(reopened.revision, 3);
  assert.deepEqual((await reopened.list('')).entries.map((e) => [e.key, e.value]), [['a', 1], ['b', 2], ['c', 3]]);
});

test('local: after SIGKILL during concurrent group-committed writes every acknowledged transaction is there, complete', async (t) => {
  const dir = await tempDir(t);
  // The child keeps 32 transactions in flight and acknowledges each on stdout once it resolved,
  // with the journal syncs so far; we kill it without warning.
  const script = `
    import { LocalStateStore } from ${STORE_MODULE};
    const store = await LocalStateStore.open(${JSON.stringify(dir)}, { compactAfter: 200 });
    let next = 0;
    const writer = async () => {
      for (;;) {
        const i = next++;
        await store.transaction([
          { type: 'put', key: 'ip/' + i, value: { owner: 'o' + i }, expectedRevision: 0 },
          { type: 'put', key: 'owner/o' + i, value: { ip: i }, expectedRevision: 0 },
        ]);
        process.stdout.write(i + ' ' + store.journalSyncs + '\\n');
      }
    };
    for (let w = 0; w < 32; w++) void writer();`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  const acknowledged = new Set<number>();
  let syncs = 0;
  let buffered = '';
  await new Promise<void>((resolve) => {
    child.stdout.on('data', (chunk: Buffer) => {
      buffered += chunk.toString();
      const lines = buffered.split('\n');
      buffered = lines.pop() ?? '';
      for (const line of lines) {
        const [i, s] = line.split(' ').map(Number);
        acknowledged.add(i);
        syncs = Math.max(syncs, s);
      }
      if (acknowledged.size >= 600) child.kill('SIGKILL');
    });
    child.on('exit', () => resolve());
  });
  assert.ok(syncs < acknowledged.size / 4, `${acknowledged.size} acknowledged transactions took ${syncs} journal syncs`);

  const store = await LocalStateStore.open(dir);
  t.after(() => store.close());
  const ips = new Set((await store.list('ip/')).entries.map((e) => Number(e.key.slice('ip/'.length))));
  const owners = (await store.list('owner/')).entries;
  const lost = [...acknowledged].filter((i) => !ips.has(i));
  assert.deepEqual(lost, [], 'every acknowledged transaction survived');
  assert.equal(ips.size, store.revision);
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
