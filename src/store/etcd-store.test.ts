/**
 * Tests of the etcd-backed store against real etcd processes (one per test, see etcd-testing.ts):
 * the shared conformance suite, then what only a shared server has — several clients, races
 * between them, prefixes, compaction and an unreachable or dying server.
 * @module
 */
import assert from 'node:assert/strict';
import { createServer, type Socket } from 'node:net';
import { test, type TestContext } from 'node:test';
import { Etcd3 } from 'etcd3';
import { StoreError, type StoreConflictError } from './errors.ts';
import { EtcdStateStore, type EtcdStateStoreOptions } from './etcd-store.ts';
import { freePort, startEtcd } from './etcd-testing.ts';
import { runStateStoreConformance, take } from './state-store.case.ts';

const PREFIX = '/ciliate-test/';

async function connect(t: TestContext, options: EtcdStateStoreOptions): Promise<EtcdStateStore> {
  const store = await EtcdStateStore.connect(options);
  t.after(() => store.close());
  return store;
}

runStateStoreConformance('etcd', async (t) => {
  const etcd = await startEtcd(t);
  return EtcdStateStore.connect({ endpoints: etcd.endpoints, prefix: PREFIX });
});

test('etcd: two clients see each other’s writes at the same revisions', async (t) => {
  const etcd = await startEtcd(t);
  const a = await connect(t, { endpoints: etcd.endpoints, prefix: PREFIX });
  const b = await connect(t, { endpoints: etcd.endpoints, prefix: PREFIX });
  const { revision } = await a.put('nodes/n1', { ip: '192.168.0.10' });
  assert.deepEqual(await b.get('nodes/n1'), { key: 'nodes/n1', value: { ip: '192.168.0.10' }, createRevision: revision, modRevision: revision, version: 1 });
  await b.put('nodes/n2', { ip: '192.168.0.11' });
  const fromA = await a.list('nodes/');
  assert.deepEqual(fromA.entries.map((e) => e.key), ['nodes/n1', 'nodes/n2']);
  assert.equal(fromA.revision, 2);
  assert.equal(a.revision, 2, 'a list teaches the client the revision of the other client’s write');
  await a.delete('nodes/n2');
  assert.equal(await b.get('nodes/n2'), undefined);
  // b can compare-and-swap against the revision a's write produced.
  assert.deepEqual(await b.put('nodes/n1', { ip: '192.168.0.12' }, { expectedRevision: revision }), { revision: 4 });
  assert.equal((await a.get('nodes/n1'))?.version, 2);
});

test('etcd: a watch on one client sees another client’s puts, transactions and deletes', async (t) => {
  const etcd = await startEtcd(t);
  const writer = await connect(t, { endpoints: etcd.endpoints, prefix: PREFIX });
  const reader = await connect(t, { endpoints: etcd.endpoints, prefix: PREFIX });
  await writer.put('ipam/old', 0); // rev 1: before the watch's start
  const { revision: start } = await reader.list('ipam/');
  const watch = reader.watch('ipam/', { afterRevision: start });
  t.after(() => watch.close());
  await writer.put('ipam/a', { owner: 'c1' }); // 2
  await writer.put('other/x', 1); // 3: outside the watched prefix
  await writer.transaction([
    { type: 'put', key: 'ipam/b', value: 'b' },
    { type: 'delete', key: 'ipam/old' },
  ]); // 4
  await writer.delete('ipam/a'); // 5
  const events = await take(watch, 4, 5000);
  assert.deepEqual(
    events.map((e) => [e.revision, e.type, e.key, e.value]),
    [
      [2, 'put', 'ipam/a', { owner: 'c1' }],
      [4, 'put', 'ipam/b', 'b'],
      [4, 'delete', 'ipam/old', undefined],
      [5, 'delete', 'ipam/a', undefined],
    ],
  );
  assert.equal(reader.revision, 5, 'watch responses advance the reader’s revision');
});

test('etcd: a compare-and-swap race between two clients has exactly one winner per round', async (t) => {
  const etcd = await startEtcd(t);
  const a = await connect(t, { endpoints: etcd.endpoints, prefix: PREFIX });
  const b = await connect(t, { endpoints: etcd.endpoints, prefix: PREFIX });
  let { revision } = await a.put('counter', 0);
  for (let round = 1; round <= 20; round++) {
    const results = await Promise.allSettled([
      a.put('counter', { by: 'a', round }, { expectedRevision: revision }),
      b.put('counter', { by: 'b', round }, { expectedRevision: revision }),
    ]);
    const won = results.filter((r) => r.status === 'fulfilled');
    const lost = results.filter((r) => r.status === 'rejected');
    assert.equal(won.length, 1, `round ${round}: exactly one winner`);
    const winner = (won[0] as PromiseFulfilledResult<{ revision: number }>).value.revision;
    const reason = (lost[0] as PromiseRejectedResult).reason as StoreConflictError;
    assert.equal(reason.code, 'ERR_STORE_CONFLICT');
    // The loser is told which revision beat it.
    assert.deepEqual(reason.mismatches, [{ key: 'counter', expectedRevision: revision, actualRevision: winner }]);
    revision = winner;
  }
  const final = await b.get<{ round: number }>('counter');
  assert.equal(final?.value.round, 20);
  assert.equal(final?.version, 21);
});

test('etcd: create-if-absent race (expectedRevision 0) between two clients', async (t) => {
  const etcd = await startEtcd(t);
  const a = await connect(t, { endpoints: etcd.endpoints, prefix: PREFIX });
  const b = await connect(t, { endpoints: etcd.endpoints, prefix: PREFIX });
  const results = await Promise.allSettled(
    Array.from({ length: 10 }, (_, i) => (i % 2 ? a : b).transaction([
      { type: 'put', key: 'ipam/ips/10.244.1.5', value: { owner: `c${i}` }, expectedRevision: 0 },
      { type: 'put', key: `ipam/owners/c${i}`, value: { ip: '10.244.1.5' }, expectedRevision: 0 },
    ])),
  );
  assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1);
  const owner = (await a.get<{ owner: string }>('ipam/ips/10.244.1.5'))!.value.owner;
  assert.deepEqual((await b.list('ipam/owners/')).entries.map((e) => e.key), [`ipam/owners/${owner}`]);
});

test('etcd: a failed transaction names every failed comparison', async (t) => {
  const etcd = await startEtcd(t);
  const store = await connect(t, { endpoints: etcd.endpoints, prefix: PREFIX });
  await store.put('a', 1); // 1
  await store.put('b', 1); // 2
  await assert.rejects(
    store.transaction([
      { type: 'check', key: 'a', expectedRevision: 1 }, // holds
      { type: 'put', key: 'b', value: 2, expectedRevision: 0 }, // b exists at 2
      { type: 'delete', key: 'c', expectedRevision: 7 }, // c is absent
    ]),
    (e: StoreConflictError) => {
      assert.equal(e.code, 'ERR_STORE_CONFLICT');
      assert.deepEqual(e.mismatches, [
        { key: 'b', expectedRevision: 0, actualRevision: 2 },
        { key: 'c', expectedRevision: 7, actualRevision: 0 },
      ]);
      assert.match(e.message, /^store: transaction: conflict: b: expected revision 0, found 2; c: expected revision 7, found 0 \(absent\)$/);
      return true;
    },
  );
  assert.equal(store.revision, 2);
  assert.equal((await store.get('b'))?.value, 1);
});

test('etcd: prefixes keep stores apart on one cluster; revisions are the cluster’s', async (t) => {
  const etcd = await startEtcd(t);
  const one = await connect(t, { endpoints: etcd.endpoints, prefix: '/run-1/' });
  const two = await connect(t, { endpoints: etcd.endpoints, prefix: '/run-2/' });
  await one.put('k', 'one');
  await two.put('k', 'two');
  assert.equal((await one.get('k'))?.value, 'one');
  assert.deepEqual((await two.list('')).entries.map((e) => [e.key, e.value, e.modRevision]), [['k', 'two', 2]]);
  // Raw etcd shows the prefixed keys and JSON values, revisions one above the store's.
  const raw = new Etcd3({ hosts: etcd.endpoints });
  t.after(() => raw.close());
  assert.equal(await raw.get('/run-1/k').string(), '"one"');
  assert.equal((await raw.get('/run-2/k').exec()).kvs[0].mod_revision, '3');
});

test('etcd: watching compacted history fails with ERR_STORE_COMPACTED', async (t) => {
  const etcd = await startEtcd(t);
  const store = await connect(t, { endpoints: etcd.endpoints, prefix: PREFIX });
  for (let i = 1; i <= 5; i++) await store.put(`k${i}`, i);
  const raw = new Etcd3({ hosts: etcd.endpoints });
  t.after(() => raw.close());
  await raw.kv.compact({ revision: 4, physical: true }); // etcd 4 = store 3
  await assert.rejects(take(store.watch('', { afterRevision: 1 }), 1), (e) => {
    assert.ok(StoreError.is(e, 'ERR_STORE_COMPACTED'), String(e));
    assert.match((e as Error).message, /revision 1 is compacted/);
    return true;
  });
  // From the compaction point on, history is still there.
  const watch = store.watch('', { afterRevision: 3 });
  t.after(() => watch.close());
  assert.deepEqual((await take(watch, 2)).map((e) => [e.revision, e.key]), [[4, 'k4'], [5, 'k5']]);
});

test('etcd: an unreachable endpoint gives ERR_STORE_UNAVAILABLE quickly, naming it', async (t) => {
  // Nothing listens on this port: connection refused.
  const refused = `http://127.0.0.1:${await freePort()}`;
  let started = Date.now();
  await assert.rejects(EtcdStateStore.connect({ endpoints: [refused], timeoutMs: 1000 }), (e) => {
    assert.ok(StoreError.is(e, 'ERR_STORE_UNAVAILABLE'), String(e));
    assert.ok((e as Error).message.includes(refused), (e as Error).message);
    return true;
  });
  assert.ok(Date.now() - started < 3000, `refused: gave up after ${Date.now() - started} ms`);

  // Something accepts the connection but never speaks gRPC: the deadline applies.
  const sockets = new Set<Socket>();
  const silent = createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => {});
  });
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  t.after(() => {
    for (const socket of sockets) socket.destroy();
    silent.close();
  });
  const address = silent.address();
  const hanging = `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`;
  started = Date.now();
  await assert.rejects(EtcdStateStore.connect({ endpoints: [hanging], timeoutMs: 500 }), (e) => {
    assert.ok(StoreError.is(e, 'ERR_STORE_UNAVAILABLE'), String(e));
    assert.match((e as Error).message, /unavailable/);
    assert.ok((e as Error).message.includes(hanging), (e as Error).message);
    return true;
  });
  assert.ok(Date.now() - started < 3000, `silent server: gave up after ${Date.now() - started} ms`);

  await assert.rejects(EtcdStateStore.connect({ endpoints: [] }), (e) => StoreError.is(e, 'ERR_STORE_INVALID_ARGUMENT'));
  await assert.rejects(EtcdStateStore.connect({ endpoints: ['127.0.0.1:2379'] }), (e) => StoreError.is(e, 'ERR_STORE_INVALID_ARGUMENT'));
});

test('etcd: when etcd dies, calls fail with ERR_STORE_UNAVAILABLE and close still returns', async (t) => {
  const etcd = await startEtcd(t);
  const store = await EtcdStateStore.connect({ endpoints: etcd.endpoints, prefix: PREFIX, timeoutMs: 1000 });
  await store.put('k', 1);
  const watch = store.watch('');
  await etcd.kill();
  const started = Date.now();
  await assert.rejects(store.put('k', 2), (e) => {
    assert.ok(StoreError.is(e, 'ERR_STORE_UNAVAILABLE'), String(e));
    assert.ok((e as Error).message.startsWith(`store: put k: etcd at ${etcd.clientUrl} is unavailable`), (e as Error).message);
    return true;
  });
  await assert.rejects(store.get('k'), (e) => StoreError.is(e, 'ERR_STORE_UNAVAILABLE'));
  assert.ok(Date.now() - started < 3000, `gave up after ${Date.now() - started} ms`);
  const pending = watch.next();
  await store.close();
  assert.equal((await pending).done, true);
});

test('etcd: a second client that connects later starts at the cluster revision', async (t) => {
  const etcd = await startEtcd(t);
  const a = await connect(t, { endpoints: etcd.endpoints, prefix: PREFIX });
  await a.put('x', 1);
  await a.put('y', 2);
  const b = await connect(t, { endpoints: etcd.endpoints, prefix: PREFIX });
  assert.equal(b.revision, 2);
  // Its default watch starts there: only later writes arrive.
  const watch = b.watch('');
  t.after(() => watch.close());
  await a.put('z', 3);
  assert.deepEqual((await take(watch, 1)).map((e) => [e.revision, e.key]), [[3, 'z']]);
});

test('etcd: with a dead endpoint in the list, reads and writes go to the live one', async (t) => {
  const etcd = await startEtcd(t);
  const dead = `http://127.0.0.1:${await freePort()}`;
  const store = await connect(t, { endpoints: [dead, etcd.clientUrl], prefix: PREFIX, timeoutMs: 2000 });
  for (let i = 1; i <= 20; i++) {
    assert.deepEqual(await store.put(`k${i}`, i, { expectedRevision: 0 }), { revision: i });
    assert.equal((await store.get(`k${i}`))?.value, i);
  }
  assert.equal((await store.list('')).entries.length, 20);
});

test('etcd: a watch survives an etcd restart and resumes without gaps or repeats', async (t) => {
  const etcd = await startEtcd(t);
  const store = await connect(t, { endpoints: etcd.endpoints, prefix: PREFIX, timeoutMs: 2000 });
  const watch = store.watch('w/', { afterRevision: 0 });
  t.after(() => watch.close());
  await store.put('w/1', 1);
  await store.put('w/2', 2);
  assert.deepEqual((await take(watch, 2)).map((e) => e.revision), [1, 2]);

  await etcd.restart();
  // Data and revisions survive the crash; writes work again on the same connection.
  assert.equal((await store.get('w/2'))?.modRevision, 2);
  await store.put('w/3', 3);
  await store.transaction([
    { type: 'put', key: 'w/4', value: 4 },
    { type: 'delete', key: 'w/1' },
  ]);
  assert.deepEqual(
    (await take(watch, 3, 10_000)).map((e) => `${e.revision} ${e.type} ${e.key}`),
    ['3 put w/3', '4 put w/4', '4 delete w/1'],
  );
});

test('etcd: closing a watch delivers what the client already knew was committed, then ends', async (t) => {
  const etcd = await startEtcd(t);
  const writer = await connect(t, { endpoints: etcd.endpoints, prefix: PREFIX });
  const reader = await connect(t, { endpoints: etcd.endpoints, prefix: PREFIX });
  const watch = reader.watch('k/');
  await writer.put('k/1', 1);
  await writer.put('other', 1);
  await reader.get('k/1'); // the reader now knows revision 2
  const later = writer.put('k/2', 2);
  watch.close();
  await later;
  const events = await take(watch, 5, 5000);
  // k/1 (revision 1) is delivered; k/2 might or might not have been known: never past revision 2
  // unless the reader had learned of it.
  assert.deepEqual(events.map((e) => e.key).slice(0, 1), ['k/1']);
  assert.ok(events.every((e) => e.revision <= 3));
  assert.equal((await watch.next()).done, true);
});

test('etcd: a watch opened while etcd is down starts once it is back', async (t) => {
  const etcd = await startEtcd(t);
  const store = await connect(t, { endpoints: etcd.endpoints, prefix: PREFIX, timeoutMs: 1000 });
  await store.put('a', 1);
  await etcd.kill();
  const watch = store.watch('', { afterRevision: 0 });
  t.after(() => watch.close());
  await new Promise((resolve) => setTimeout(resolve, 300)); // a few failed attempts
  await etcd.restart();
  await store.put('b', 2);
  assert.deepEqual((await take(watch, 2, 10_000)).map((e) => `${e.revision} ${e.key}`), ['1 a', '2 b']);
});
