/**
 * Conformance suite for `StateStore` implementations (hono's `common.case.test.ts` pattern):
 * every backend — memory, local directory, later etcd — runs the same cases through
 * `runStateStoreConformance`, so they cannot drift apart in semantics.
 * @module
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { StoreError, type StoreConflictError } from './errors.ts';
import type { StateStore, StoreWatch, WatchEvent } from './types.ts';

/** Opens a fresh, empty store for one test; the suite closes it. */
export type OpenStore = (t: TestContext) => Promise<StateStore>;

/** Takes `count` events from a watch, failing after `timeoutMs` instead of hanging the run. */
export async function take<T>(watch: StoreWatch<T>, count: number, timeoutMs = 2000): Promise<WatchEvent<T>[]> {
  const events: WatchEvent<T>[] = [];
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`watch: got ${events.length} of ${count} events within ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    while (events.length < count) {
      const result = await Promise.race([watch.next(), timeout]);
      if (result.done) break;
      events.push(result.value);
    }
  } finally {
    clearTimeout(timer);
  }
  return events;
}

function brief(events: readonly WatchEvent[]): string[] {
  return events.map((e) => `${e.revision} ${e.type} ${e.key}${e.type === 'put' ? ` ${JSON.stringify(e.value)}` : ''}`);
}

export function runStateStoreConformance(name: string, openStore: OpenStore): void {
  const open = async (t: TestContext): Promise<StateStore> => {
    const store = await openStore(t);
    t.after(() => store.close());
    return store;
  };

  test(`${name}: put/get/list/delete with revisions`, async (t) => {
    const store = await open(t);
    assert.equal(store.revision, 0);
    assert.equal(await store.get('a'), undefined);
    assert.deepEqual(await store.put('a', { n: 1 }), { revision: 1 });
    assert.deepEqual(await store.put('b/x', [1, 'two']), { revision: 2 });
    assert.deepEqual(await store.put('a', { n: 2 }), { revision: 3 });
    assert.deepEqual(await store.get('a'), { key: 'a', value: { n: 2 }, createRevision: 1, modRevision: 3, version: 2 });
    await store.put('b/y', 'text');
    await store.put('c', null);
    const listed = await store.list('b/');
    assert.equal(listed.revision, 5);
    assert.deepEqual(listed.entries.map((e) => [e.key, e.value]), [['b/x', [1, 'two']], ['b/y', 'text']]);
    assert.deepEqual((await store.list('')).entries.map((e) => e.key), ['a', 'b/x', 'b/y', 'c']);
    assert.deepEqual(await store.delete('a'), { revision: 6, deleted: true });
    assert.equal(await store.get('a'), undefined);
    // Deleting nothing changes nothing, as in etcd: the revision stays.
    assert.deepEqual(await store.delete('a'), { revision: 6, deleted: false });
    // Re-creating a key starts a new life: new createRevision, version 1.
    await store.put('a', 1);
    assert.deepEqual(await store.get('a'), { key: 'a', value: 1, createRevision: 7, modRevision: 7, version: 1 });
  });

  test(`${name}: values are copies, not shared objects`, async (t) => {
    const store = await open(t);
    const value = { list: [1] };
    await store.put('k', value);
    value.list.push(2);
    const read = await store.get<{ list: number[] }>('k');
    assert.deepEqual(read?.value, { list: [1] });
    read!.value.list.push(3);
    assert.deepEqual((await store.get('k'))?.value, { list: [1] });
  });

  test(`${name}: invalid keys and values are rejected with ERR_STORE_INVALID_ARGUMENT`, async (t) => {
    const store = await open(t);
    await assert.rejects(store.put('', 1), (e) => StoreError.is(e, 'ERR_STORE_INVALID_ARGUMENT'));
    await assert.rejects(store.put('k', undefined), (e) => StoreError.is(e, 'ERR_STORE_INVALID_ARGUMENT'));
    await assert.rejects(store.put('k', 10n), (e) => StoreError.is(e, 'ERR_STORE_INVALID_ARGUMENT'));
    await assert.rejects(store.put('k', 1, { expectedRevision: -1 }), (e) => StoreError.is(e, 'ERR_STORE_INVALID_ARGUMENT'));
    assert.equal(store.revision, 0);
  });

  test(`${name}: compare-and-swap conflicts give ERR_STORE_CONFLICT and write nothing`, async (t) => {
    const store = await open(t);
    // expectedRevision 0: create only if absent.
    const { revision } = await store.put('k', 'first', { expectedRevision: 0 });
    await assert.rejects(store.put('k', 'second', { expectedRevision: 0 }), (e: StoreConflictError) => {
      assert.equal(e.code, 'ERR_STORE_CONFLICT');
      assert.deepEqual(e.mismatches, [{ key: 'k', expectedRevision: 0, actualRevision: revision }]);
      assert.match(e.message, /^store: put k: conflict: k: expected revision 0, found 1$/);
      return true;
    });
    await store.put('k', 'second', { expectedRevision: revision });
    await assert.rejects(store.put('k', 'third', { expectedRevision: revision }), (e) => StoreError.is(e, 'ERR_STORE_CONFLICT'));
    await assert.rejects(store.delete('k', { expectedRevision: revision }), (e) => StoreError.is(e, 'ERR_STORE_CONFLICT'));
    await assert.rejects(store.put('absent', 1, { expectedRevision: 5 }), (e) => StoreError.is(e, 'ERR_STORE_CONFLICT'));
    assert.equal((await store.get('k'))?.value, 'second');
    assert.equal(store.revision, 2);
    assert.deepEqual(await store.delete('k', { expectedRevision: 2 }), { revision: 3, deleted: true });
  });

  test(`${name}: transactions are all-or-nothing at one revision`, async (t) => {
    const store = await open(t);
    await store.put('owner/c1', { ip: 'old' });
    const before = await store.list('');
    await assert.rejects(
      store.transaction([
        { type: 'put', key: 'ip/1', value: { owner: 'c2' }, expectedRevision: 0 },
        { type: 'put', key: 'owner/c2', value: { ip: '1' }, expectedRevision: 0 },
        { type: 'check', key: 'owner/c1', expectedRevision: 99 },
      ]),
      (e: StoreConflictError) => e.code === 'ERR_STORE_CONFLICT' && e.mismatches.length === 1 && e.mismatches[0].key === 'owner/c1',
    );
    assert.deepEqual(await store.list(''), before, 'a failed transaction writes nothing');

    const { revision } = await store.transaction([
      { type: 'put', key: 'ip/1', value: { owner: 'c2' }, expectedRevision: 0 },
      { type: 'put', key: 'owner/c2', value: { ip: '1' }, expectedRevision: 0 },
      { type: 'delete', key: 'owner/c1' },
      { type: 'check', key: 'nothing', expectedRevision: 0 },
    ]);
    assert.equal(revision, 2);
    assert.equal((await store.get('ip/1'))?.modRevision, 2);
    assert.equal((await store.get('owner/c2'))?.modRevision, 2);
    assert.equal(await store.get('owner/c1'), undefined);

    // One key twice in a transaction is ambiguous: rejected outright.
    await assert.rejects(
      store.transaction([
        { type: 'put', key: 'x', value: 1 },
        { type: 'delete', key: 'x' },
      ]),
      (e) => StoreError.is(e, 'ERR_STORE_INVALID_ARGUMENT'),
    );
    // A transaction of checks only writes nothing and keeps the revision.
    assert.deepEqual(await store.transaction([{ type: 'check', key: 'ip/1', expectedRevision: 2 }]), { revision: 2 });
  });

  test(`${name}: concurrent compare-and-swap: exactly one writer wins each revision`, async (t) => {
    const store = await open(t);
    await store.put('counter', 0);
    // 50 writers all read revision 1 and try to move it: one wins, 49 conflict.
    const results = await Promise.allSettled(Array.from({ length: 50 }, (_, i) => store.put('counter', i + 1, { expectedRevision: 1 })));
    assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1);
    assert.ok(results.filter((r) => r.status === 'rejected').every((r) => StoreError.is(r.reason, 'ERR_STORE_CONFLICT')));
    assert.equal(store.revision, 2);
  });

  test(`${name}: watch replays history after a revision, then follows live, filtered by prefix`, async (t) => {
    const store = await open(t);
    await store.put('ipam/a', 1); // rev 1
    await store.put('other', 1); // rev 2
    await store.transaction([
      { type: 'put', key: 'ipam/b', value: 2 },
      { type: 'put', key: 'ipam/c', value: 3 },
    ]); // rev 3
    const watch = store.watch('ipam/', { afterRevision: 1 });
    t.after(() => watch.close());
    await store.delete('ipam/a'); // rev 4
    await store.put('other', 2); // rev 5
    await store.put('ipam/b', 22); // rev 6
    assert.deepEqual(brief(await take(watch, 4)), ['3 put ipam/b 2', '3 put ipam/c 3', '4 delete ipam/a', '6 put ipam/b 22']);

    // Without afterRevision only future changes arrive.
    const future = store.watch('');
    await store.put('z', true);
    assert.deepEqual(brief(await take(future, 1)), ['7 put z true']);
    future.close();
    assert.deepEqual(await future.next(), { value: undefined, done: true });
  });

  test(`${name}: for-await break and abort signals end a watch; close ends them all`, async (t) => {
    const store = await openStore(t);
    const watch = store.watch('k');
    const controller = new AbortController();
    const aborted = store.watch('k', { signal: controller.signal });
    await store.put('k', 1);
    for await (const event of watch) {
      assert.equal(event.key, 'k');
      break;
    }
    assert.equal((await watch.next()).done, true);
    controller.abort();
    // Already-queued events are still delivered, then the watch ends.
    assert.equal((await aborted.next()).value?.key, 'k');
    assert.equal((await aborted.next()).done, true);

    const open = store.watch('');
    const pending = open.next();
    await store.close();
    assert.equal((await pending).done, true);
    await assert.rejects(store.put('k', 2), (e) => StoreError.is(e, 'ERR_STORE_CLOSED'));
  });
}
