/**
 * Tests of the identity allocator over a shared store, run against MemoryStateStore and
 * LocalStateStore: equal labels get equal numbers on two "nodes" (also under concurrent races),
 * filtering and order do not matter, reference counting and garbage collection, the watch-fed
 * cache, reserved and CIDR identities, exhaustion, invalid labels, and restarts.
 * @module
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { LocalStateStore, MemoryStateStore, StoreError, type StateStore, type StoreWatch, type WatchOptions } from '../store/index.ts';
import { IdentityAllocator, type IdentityAllocatorOptions, type IdentityChange } from './allocator.ts';
import { IdentityError, InvalidLabelsError } from './errors.ts';
import { refKey } from './keys.ts';
import { LabelFilter } from './label-filter.ts';
import { Labels } from './labels.ts';
import { LOCAL_IDENTITY_FLAG, wellKnownIdentities } from './reserved.ts';

type OpenStore = (t: TestContext) => Promise<StateStore>;

const backends: [string, OpenStore][] = [
  ['memory', async (t) => {
    const store = new MemoryStateStore();
    t.after(() => store.close());
    return store;
  }],
  ['local', async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'ciliate-identity-'));
    const store = await LocalStateStore.open(dir);
    t.after(async () => {
      await store.close();
      await rm(dir, { recursive: true, force: true });
    });
    return store;
  }],
];

function node(t: TestContext, store: StateStore, nodeName: string, options?: Partial<IdentityAllocatorOptions>): IdentityAllocator {
  const allocator = new IdentityAllocator({ store, nodeName, ...options });
  t.after(() => allocator.stop());
  return allocator;
}

/** Resolves when `predicate` holds for the allocator's view, failing after `timeoutMs`. */
async function until(allocator: IdentityAllocator, predicate: () => boolean, what: string, timeoutMs = 2000): Promise<void> {
  if (predicate()) return;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      unsubscribe();
      reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`));
    }, timeoutMs);
    const unsubscribe = allocator.subscribe(() => {
      if (!predicate()) return;
      clearTimeout(timer);
      unsubscribe();
      resolve();
    });
  });
}

const WEB = ['k8s:app=web', 'k8s:io.kubernetes.pod.namespace=default'];

async function storeKeys(store: StateStore): Promise<string[]> {
  return (await store.list('identities/')).entries.map((e) => e.key);
}

function code(expected: string, pattern?: RegExp): (error: unknown) => boolean {
  return (error: unknown) => {
    assert.ok(IdentityError.is(error), `expected an IdentityError, got ${String(error)}`);
    assert.equal(error.code, expected);
    if (pattern) assert.match(error.message, pattern);
    return true;
  };
}

for (const [backend, open] of backends) {
  test(`allocator (${backend}): same labels get the same id on two nodes; order and irrelevant labels do not matter`, async (t) => {
    const store = await open(t);
    const n1 = node(t, store, 'n1');
    const n2 = node(t, store, 'n2');
    const a = await n1.allocate(WEB);
    assert.ok(a.id >= 256 && a.id <= 65535, `cluster-wide range: ${a.id}`);
    assert.equal(a.isNew, true);
    assert.deepEqual(a.labels.toStrings(), WEB);
    const b = await n2.allocate({ 'io.kubernetes.pod.namespace': 'default', app: 'web', 'pod-template-hash': '5d8f7c9b4', 'controller-revision-hash': 'x1' });
    assert.equal(b.id, a.id);
    assert.equal(b.isNew, false);
    const c = await n1.allocate(['io.kubernetes.pod.namespace=default', 'app=web', 'pod-template-hash=other']);
    assert.equal(c.id, a.id);
    assert.equal(n1.references(a.id), 2);
    const other = await n2.allocate(['app=db', 'io.kubernetes.pod.namespace=default']);
    assert.notEqual(other.id, a.id);
    assert.deepEqual((await store.get(`identities/by-id/${a.id}`))?.value, {
      labels: WEB,
      createdAt: (await store.get<{ createdAt: number }>(`identities/by-id/${a.id}`))!.value.createdAt,
      lastUsedAt: (await store.get<{ lastUsedAt: number }>(`identities/by-id/${a.id}`))!.value.lastUsedAt,
    });
    assert.deepEqual((await store.get(`identities/by-labels/${WEB.join(';')}`))?.value, { id: a.id });
    assert.deepEqual((await storeKeys(store)).filter((k) => k.startsWith(`identities/refs/${a.id}/`)), [`identities/refs/${a.id}/n1`, `identities/refs/${a.id}/n2`]);
    // Allocating again on a node that holds a reference writes nothing.
    const revision = store.revision;
    await n2.allocate(WEB);
    assert.equal(store.revision, revision);
  });

  test(`allocator (${backend}): concurrent races between two nodes agree on every id`, async (t) => {
    const store = await open(t);
    const n1 = node(t, store, 'n1');
    const n2 = node(t, store, 'n2');
    await Promise.all([n1.start(), n2.start()]);
    const sets = Array.from({ length: 25 }, (_, i) => [`app=svc-${i}`, 'io.kubernetes.pod.namespace=race']);
    const results = await Promise.all(sets.flatMap((labels) => [n1.allocate(labels), n2.allocate([...labels].reverse()), n1.allocate(labels), n2.allocate(labels)]));
    for (let i = 0; i < sets.length; i++) {
      const ids = new Set(results.slice(i * 4, i * 4 + 4).map((r) => r.id));
      assert.equal(ids.size, 1, `label set ${i} got ids ${[...ids].join(', ')}`);
      assert.equal(results.slice(i * 4, i * 4 + 4).filter((r) => r.isNew).length, 1, `label set ${i} created once`);
    }
    const distinct = new Set(results.map((r) => r.id));
    assert.equal(distinct.size, sets.length, 'different label sets got different ids');
    const keys = await storeKeys(store);
    assert.equal(keys.filter((k) => k.startsWith('identities/by-id/')).length, sets.length);
    assert.equal(keys.filter((k) => k.startsWith('identities/by-labels/')).length, sets.length);
    assert.equal(keys.filter((k) => k.startsWith('identities/refs/')).length, sets.length * 2);
    for (const id of distinct) {
      assert.equal(n1.references(id), 2);
      assert.equal(n2.references(id), 2);
    }
    await until(n1, () => n1.list().length === sets.length, 'n1 to see every identity');
    await until(n2, () => n2.list().length === sets.length, 'n2 to see every identity');
  });

  test(`allocator (${backend}): racing nodes that pick the same numbers in a tight range retry and stay unique`, async (t) => {
    const store = await open(t);
    const range = { min: 256, max: 256 + 39 };
    const n1 = node(t, store, 'n1', { idRange: range });
    const n2 = node(t, store, 'n2', { idRange: range });
    const results = await Promise.all(Array.from({ length: 30 }, (_, i) => (i % 2 === 0 ? n1 : n2).allocate([`app=a${i}`])));
    const ids = results.map((r) => r.id);
    assert.equal(new Set(ids).size, 30);
    assert.ok(ids.every((id) => id >= range.min && id <= range.max));
    assert.ok(results.every((r) => r.isNew));
  });

  test(`allocator (${backend}): allocations of different labels are in flight together, one label set's allocations and releases stay ordered`, async (t) => {
    const store = await open(t);
    // A tight range: numbers picked by allocations in flight must not be picked again.
    const n1 = node(t, store, 'n1', { idRange: { min: 256, max: 256 + 59 } });
    const syncs = (): number => (store instanceof LocalStateStore ? store.journalSyncs : 0);
    const before = syncs();
    const results = await Promise.all(Array.from({ length: 60 }, (_, i) => n1.allocate([`app=b${i}`])));
    assert.equal(new Set(results.map((r) => r.id)).size, 60, 'every label set got its own number');
    if (store instanceof LocalStateStore) assert.ok(syncs() - before <= 12, `60 new identities took ${syncs() - before} journal syncs`);
    // One label set: allocate, release and allocate again at once; the count ends at 2, with a ref.
    const labels = ['app=b0'];
    const id = results[0].id;
    const [again, released, third] = await Promise.all([n1.allocate(labels), n1.release(id), n1.allocate(labels)]);
    assert.deepEqual([again.id, released, third.id], [id, false, id]);
    assert.equal(await n1.release(id), false);
    assert.equal(await n1.release(id), true, 'the last reference goes with the second release');
    assert.equal(await store.get(refKey(id, 'n1')), undefined, 'its ref key is gone');
    await assert.rejects(n1.release(id), (e: IdentityError) => e.code === 'ERR_IDENTITY_NOT_REFERENCED');
  });

  test(`allocator (${backend}): release counts references; GC removes unreferenced identities and keeps referenced ones`, async (t) => {
    const store = await open(t);
    let now = 1_000_000;
    const n1 = node(t, store, 'n1', { now: () => now });
    const n2 = node(t, store, 'n2', { now: () => now });
    await n2.start();
    const web = await n1.allocate(WEB);
    await n1.allocate(WEB);
    const db = await n1.allocate(['app=db']);
    await n2.allocate(['app=db']);
    const cache = await n1.allocate(['app=cache']);

    assert.equal(await n1.release(web.id), false, 'one reference left');
    assert.equal(n1.references(web.id), 1);
    assert.ok(await store.get(`identities/refs/${web.id}/n1`));
    assert.equal(await n1.release(web.id), true, 'last reference');
    assert.equal(await store.get(`identities/refs/${web.id}/n1`), undefined);
    await assert.rejects(n1.release(web.id), code('ERR_IDENTITY_NOT_REFERENCED', new RegExp(`identity ${web.id}: node n1 holds no reference`)));
    assert.equal(await n1.release(db.id), true);
    assert.equal(await n1.release(cache.id), true);

    // Released just now: a grace period keeps them.
    now += 1000;
    let gc = await n1.collectUnused({ olderThanMs: 60_000 });
    assert.deepEqual(gc, { removed: [], inUse: 1, tooRecent: 2, orphansRemoved: 0 });
    // cache is used again before the grace period ends.
    await n1.allocate(['app=cache']);
    now += 60_000;
    gc = await n1.collectUnused({ olderThanMs: 60_000 });
    assert.deepEqual(gc.removed.map((i) => i.id), [web.id]);
    assert.equal(gc.inUse, 2, 'db (n2) and cache (n1) are referenced');
    assert.equal(await store.get(`identities/by-id/${web.id}`), undefined);
    assert.equal(await store.get(`identities/by-labels/${WEB.join(';')}`), undefined);
    assert.ok(await store.get(`identities/by-id/${db.id}`));
    assert.equal(n1.get(web.id), undefined);
    await until(n2, () => n2.get(web.id) === undefined, 'n2 to learn that the identity was collected');
    assert.equal(n2.get(db.id)?.labels.canonical, 'k8s:app=db');

    // Labels of a collected identity allocate afresh.
    const again = await n2.allocate(WEB);
    assert.equal(again.isNew, true);
    assert.equal(await n2.release(db.id), true);
    gc = await n1.collectUnused();
    assert.deepEqual(gc.removed.map((i) => i.labels.canonical), ['k8s:app=db']);
  });

  test(`allocator (${backend}): GC racing with allocations never deletes an identity in use`, async (t) => {
    const store = await open(t);
    const n1 = node(t, store, 'n1');
    const n2 = node(t, store, 'gc');
    for (let round = 0; round < 20; round++) {
      const labels = [`app=churn-${round % 3}`];
      const [allocation] = await Promise.all([n1.allocate(labels), n2.collectUnused(), n2.collectUnused()]);
      const record = await store.get<{ labels: string[] }>(`identities/by-id/${allocation.id}`);
      assert.deepEqual(record?.value.labels, [`k8s:app=churn-${round % 3}`], `round ${round}: identity ${allocation.id} exists`);
      assert.deepEqual((await store.get(`identities/by-labels/k8s:app=churn-${round % 3}`))?.value, { id: allocation.id });
      const [released] = await Promise.all([n1.release(allocation.id), n2.collectUnused()]);
      assert.equal(released, true);
    }
    await n2.collectUnused();
    assert.deepEqual(await storeKeys(store), []);
  });

  test(`allocator (${backend}): a second node learns identities through list and watch`, async (t) => {
    const store = await open(t);
    const n1 = node(t, store, 'n1');
    const early = await n1.allocate(['app=early']);
    const n2 = node(t, store, 'n2');
    const changes: IdentityChange[] = [];
    n2.subscribe((change) => changes.push(change));
    await n2.start();
    assert.equal(n2.started, true);
    assert.equal(n2.get(early.id)?.labels.canonical, 'k8s:app=early', 'listed at start');
    const late = await n1.allocate(['app=late', 'io.kubernetes.pod.namespace=prod']);
    await until(n2, () => n2.get(late.id) !== undefined, 'the watch to deliver the new identity');
    assert.deepEqual(n2.lookup(['io.kubernetes.pod.namespace=prod', 'app=late'])?.id, late.id);
    assert.equal(n2.lookup(['app=unknown']), undefined);
    assert.deepEqual(
      n2.list().map((i) => i.id),
      [early.id, late.id].sort((a, b) => a - b),
    );
    assert.deepEqual(
      changes.map((c) => [c.type, c.identity.id]),
      [
        ['upsert', early.id],
        ['upsert', late.id],
      ],
    );
    // Reference changes touch the records but are no identity changes.
    await n1.allocate(['app=late', 'io.kubernetes.pod.namespace=prod']);
    await n2.allocate(['app=early']);
    await n1.release(early.id);
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(changes.length, 2);
    await n2.stop();
    assert.equal(n2.started, false);
    await n2.stop();
  });

  test(`allocator (${backend}): reserved and well-known labels map to fixed numbers without the store`, async (t) => {
    const store = await open(t);
    const n1 = node(t, store, 'n1');
    const revision = store.revision;
    assert.deepEqual(await n1.allocate(['reserved:host']), { id: 1, labels: Labels.parse(['reserved:host']), isNew: false });
    assert.equal((await n1.allocate(['reserved:host', 'k8s:node.kubernetes.io/instance-type=m5', 'k8s:zone=a'])).id, 1);
    assert.equal((await n1.allocate(['reserved:world'])).id, 2);
    assert.equal((await n1.allocate(['$health'])).id, 4);
    assert.equal((await n1.allocate(['reserved:kube-apiserver', 'reserved:remote-node'])).id, 7);
    const kubeDns = wellKnownIdentities().find((w) => w.id === 102)!;
    assert.equal((await n1.allocate([...kubeDns.labels.toStrings(), 'k8s:pod-template-hash=abc'])).id, 102);
    assert.equal(await n1.release(1), false);
    assert.equal(await n1.release(102), false);
    assert.equal(store.revision, revision, 'nothing written');
    assert.equal(n1.get(1)?.labels.canonical, 'reserved:host');
    assert.equal(n1.get(102)?.labels.canonical, kubeDns.labels.canonical);
    assert.equal(n1.lookup(['reserved:world'])?.id, 2);
    await assert.rejects(n1.allocate(['reserved:health', 'app=web']), code('ERR_IDENTITY_INVALID_LABELS', /reserved:health.*cannot be combined with "k8s:app=web"/));
    const noWellKnown = node(t, store, 'n2', { wellKnown: false });
    assert.ok((await noWellKnown.allocate(kubeDns.labels)).id >= 256);
  });

  test(`allocator (${backend}): CIDR identities are node-local, reference-counted and never stored`, async (t) => {
    const store = await open(t);
    const n1 = node(t, store, 'n1');
    const n2 = node(t, store, 'n2');
    const changes: IdentityChange[] = [];
    n1.subscribe((c) => changes.push(c));
    const revision = store.revision;
    const a = n1.allocateCidr('10.0.0.0/8');
    assert.equal(a.id, LOCAL_IDENTITY_FLAG | 1);
    assert.equal(a.id, 16777217);
    assert.deepEqual(a.labels.toStrings(), ['cidr:10.0.0.0/8', 'reserved:world']);
    assert.equal(a.isNew, true);
    const same = n1.allocateCidr('10.1.2.3/8');
    assert.deepEqual([same.id, same.isNew], [a.id, false]);
    assert.equal((await n1.allocate(['reserved:world', 'cidr:10.0.0.0/8'])).id, a.id);
    assert.equal(n1.references(a.id), 3);
    const v6 = n1.allocateCidr('2001:db8::/32');
    assert.equal(v6.id, LOCAL_IDENTITY_FLAG | 2);
    assert.deepEqual(v6.labels.toStrings(), ['cidr:2001-db8--0/32', 'reserved:world']);
    assert.deepEqual([n1.allocateCidr('0.0.0.0/0').id, n1.allocateCidr('::/0').id], [2, 2], '/0 is the world');
    assert.equal(n2.allocateCidr('192.168.0.0/16').id, LOCAL_IDENTITY_FLAG | 1, 'numbers are per node');
    assert.equal(n2.get(a.id)?.labels.canonical, 'cidr:192.168.0.0/16;reserved:world');
    assert.equal(n1.lookup(['cidr:10.0.0.0/8', 'reserved:world'])?.id, a.id);
    assert.equal(store.revision, revision, 'nothing written to the store');

    assert.equal(n1.releaseCidr('10.0.0.0/8'), false);
    assert.equal(await n1.release(a.id), false);
    assert.equal(n1.releaseCidr('10.0.0.0/8'), true);
    assert.equal(n1.get(a.id), undefined);
    assert.throws(() => n1.releaseCidr('10.0.0.0/8'), code('ERR_IDENTITY_NOT_REFERENCED', /10\.0\.0\.0\/8/));
    assert.throws(() => n1.allocateCidr('10.0.0.0/33'), code('ERR_IDENTITY_INVALID_CIDR', /"10.0.0.0\/33": prefix length 33 exceeds 32/));
    // Next-fit: the freed number is not reused at once.
    assert.equal(n1.allocateCidr('172.16.0.0/12').id, LOCAL_IDENTITY_FLAG | 3);
    assert.deepEqual(
      n1.listLocal().map((i) => i.id),
      [LOCAL_IDENTITY_FLAG | 2, LOCAL_IDENTITY_FLAG | 3],
    );
    assert.deepEqual(
      changes.map((c) => [c.type, c.identity.id]),
      [
        ['upsert', LOCAL_IDENTITY_FLAG | 1],
        ['upsert', LOCAL_IDENTITY_FLAG | 2],
        ['delete', LOCAL_IDENTITY_FLAG | 1],
        ['upsert', LOCAL_IDENTITY_FLAG | 3],
      ],
    );

    const dual = node(t, store, 'n3', { dualStack: true });
    assert.deepEqual(dual.allocateCidr('10.0.0.0/8').labels.toStrings(), ['cidr:10.0.0.0/8', 'reserved:world-ipv4']);
    assert.equal(dual.allocateCidr('0.0.0.0/0').id, 9);
    assert.equal(dual.allocateCidr('::/0').id, 10);
  });

  test(`allocator (${backend}): invalid labels are rejected with the label and the reason, nothing written`, async (t) => {
    const store = await open(t);
    const n1 = node(t, store, 'n1');
    const revision = store.revision;
    const rejects = async (input: Parameters<IdentityAllocator['allocate']>[0], label: string, reason: RegExp): Promise<void> => {
      await assert.rejects(n1.allocate(input), (error: unknown) => {
        assert.ok(error instanceof InvalidLabelsError, String(error));
        assert.equal(error.code, 'ERR_IDENTITY_INVALID_LABELS');
        assert.equal(error.label, label);
        assert.match(error.reason, reason);
        return true;
      });
    };
    await rejects(['any:app=web'], 'any:app=web', /source 'any' only matches in selectors/);
    await rejects(['pod-template-hash=5d8f', 'controller-revision-hash=1'], 'k8s:controller-revision-hash=1;k8s:pod-template-hash=5d8f', /no security-relevant labels left after filtering \(dropped k8s:controller-revision-hash=1, k8s:pod-template-hash=5d8f\)/);
    await rejects([], '', /the label set is empty/);
    await rejects(['bogus:app=web'], 'bogus:app=web', /unknown source 'bogus'/);
    await rejects(['app=web', 'app=db'], 'k8s:app=db', /key 'app' also appears/);
    await rejects(['k8s:app=a b'], 'k8s:app=a b', /value must be empty or 1–63/);
    await rejects(['reserved:nobody'], 'reserved:nobody', /unknown reserved label 'nobody'/);
    const huge = Array.from({ length: 80 }, (_, i) => `container:label-${i}=${'v'.repeat(60)}`);
    await rejects(huge, `${Labels.parse(huge).canonical.slice(0, 80)}…`, /is \d+ characters long; at most 3800 fit a store key/);
    assert.throws(() => n1.lookup(['any:app=web']), code('ERR_IDENTITY_INVALID_LABELS'));
    assert.equal(store.revision, revision);
    assert.throws(() => new IdentityAllocator({ store, nodeName: 'Bad/Node' }), code('ERR_IDENTITY_INVALID_ARGUMENT', /node name "Bad\/Node"/));
    assert.throws(() => new IdentityAllocator({ store, nodeName: 'n1', idRange: { min: 100, max: 300 } }), code('ERR_IDENTITY_INVALID_ARGUMENT', /within the cluster range 256–65535/));
    await assert.rejects(n1.release(0), code('ERR_IDENTITY_INVALID_ARGUMENT'));
  });

  test(`allocator (${backend}): an exhausted range fails cleanly and recovers after GC; cluster ids shift the range`, async (t) => {
    const store = await open(t);
    const n1 = node(t, store, 'n1', { idRange: { min: 256, max: 258 } });
    const n2 = node(t, store, 'n2', { idRange: { min: 256, max: 258 } });
    const ids = [(await n1.allocate(['app=a'])).id, (await n2.allocate(['app=b'])).id, (await n1.allocate(['app=c'])).id];
    assert.deepEqual([...ids].sort(), [256, 257, 258]);
    const revision = store.revision;
    await assert.rejects(n2.allocate(['app=d']), code('ERR_IDENTITY_EXHAUSTED', /"k8s:app=d".*range 256–258 is exhausted \(3 in use\)/));
    assert.equal(store.revision, revision, 'nothing written');
    assert.equal((await n2.allocate(['app=a'])).id, ids[0], 'existing labels still resolve');
    await n1.release(ids[2]);
    await n1.collectUnused();
    assert.equal((await n2.allocate(['app=d'])).id, ids[2]);

    const c1 = node(t, store, 'n3', { clusterId: 1 });
    const other = await c1.allocate(['app=in-cluster-1']);
    assert.ok(other.id >= 65536 && other.id <= 131071, String(other.id));
  });

  test(`allocator (${backend}): purgeNode and reconcileReferences drop refs of gone nodes and previous runs`, async (t) => {
    const store = await open(t);
    const n1 = node(t, store, 'n1');
    const n2 = node(t, store, 'n2');
    const web = await n1.allocate(['app=web']);
    const db = await n1.allocate(['app=db']);
    await n2.allocate(['app=web']);
    assert.equal(await n1.purgeNode('n2'), 1);
    await assert.rejects(n1.purgeNode('n1'), code('ERR_IDENTITY_INVALID_ARGUMENT', /names this node/));

    // n1 "restarts": a fresh allocator with no in-memory references re-allocates only web.
    const restarted = node(t, store, 'n1');
    await restarted.start();
    assert.equal((await restarted.allocate(['app=web'])).id, web.id);
    assert.equal(await restarted.reconcileReferences(), 1, 'the ref on db from the previous run is dropped');
    assert.equal(await store.get(`identities/refs/${db.id}/n1`), undefined);
    assert.ok(await store.get(`identities/refs/${web.id}/n1`));
    const gc = await restarted.collectUnused();
    assert.deepEqual(gc.removed.map((i) => i.id), [db.id]);
  });
}

test('allocator (local): identities survive a restart of the store', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ciliate-identity-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  let store = await LocalStateStore.open(dir);
  const first = new IdentityAllocator({ store, nodeName: 'n1' });
  const web = await first.allocate(WEB);
  await store.close();

  store = await LocalStateStore.open(dir);
  t.after(() => store.close());
  const second = new IdentityAllocator({ store, nodeName: 'n1' });
  await second.start();
  t.after(() => second.stop());
  assert.equal(second.get(web.id)?.labels.canonical, WEB.join(';'));
  const again = await second.allocate(WEB);
  assert.deepEqual([again.id, again.isNew], [web.id, false]);
});

/** A store whose next watch fails as if its history had been compacted. */
class FlakyWatchStore implements StateStore {
  failNextWatch = true;
  readonly inner: StateStore;
  constructor(inner: StateStore) {
    this.inner = inner;
  }
  get revision(): number {
    return this.inner.revision;
  }
  get: StateStore['get'] = (key) => this.inner.get(key);
  list: StateStore['list'] = (prefix) => this.inner.list(prefix);
  put: StateStore['put'] = (key, value, options) => this.inner.put(key, value, options);
  delete: StateStore['delete'] = (key, options) => this.inner.delete(key, options);
  transaction: StateStore['transaction'] = (ops) => this.inner.transaction(ops);
  close: StateStore['close'] = () => this.inner.close();
  watch<T = unknown>(prefix: string, options?: WatchOptions): StoreWatch<T> {
    if (this.failNextWatch) {
      this.failNextWatch = false;
      throw new StoreError('ERR_STORE_COMPACTED', `store: watch ${prefix}: revision is compacted`);
    }
    return this.inner.watch<T>(prefix, options);
  }
}

test('allocator: a failed watch is reported, re-listed and re-watched; closing the store ends it quietly', async (t) => {
  const store = new MemoryStateStore();
  const flaky = new FlakyWatchStore(store);
  const errors: unknown[] = [];
  const n1 = new IdentityAllocator({ store, nodeName: 'n1' });
  const n2 = new IdentityAllocator({ store: flaky, nodeName: 'n2', onWatchError: (e) => errors.push(e) });
  t.after(() => n2.stop());
  await n2.start();
  const a = await n1.allocate(['app=a']);
  await until(n2, () => n2.get(a.id) !== undefined, 'the re-list after the failed watch');
  const b = await n1.allocate(['app=b']);
  await until(n2, () => n2.get(b.id) !== undefined, 'the new watch');
  assert.equal(errors.length, 1);
  assert.ok(StoreError.is(errors[0], 'ERR_STORE_COMPACTED'));
  await store.close();
  await new Promise((resolve) => setTimeout(resolve, 100));
  await n2.stop();
  assert.equal(errors.length, 1, 'a closed store is not reported as a watch error');
});

test('allocator: a label filter option changes which labels count', async (t) => {
  const store = new MemoryStateStore();
  t.after(() => store.close());
  const n1 = new IdentityAllocator({ store, nodeName: 'n1', labelFilter: new LabelFilter(['k8s:app']) });
  const a = await n1.allocate(['app=web', 'tier=front', 'io.kubernetes.pod.namespace=default']);
  assert.deepEqual(a.labels.toStrings(), ['k8s:app=web', 'k8s:io.kubernetes.pod.namespace=default']);
  assert.equal((await n1.allocate(['app=web', 'tier=back', 'io.kubernetes.pod.namespace=default'])).id, a.id);
});

test('allocator: revision says up to where the view is complete; catchUp moves it on only when nothing is missing', async (t) => {
  const store = new MemoryStateStore();
  t.after(() => store.close());
  const n1 = node(t, store, 'n1');
  const n2 = node(t, store, 'n2');
  await Promise.all([n1.start(), n2.start()]);
  const web = await n1.allocate(WEB);
  await until(n2, () => n2.get(web.id) !== undefined, 'n2 to learn the identity');
  // Writes elsewhere in the store raise its revision without an identity event.
  await store.put('nodes/n3', { name: 'n3' });
  assert.ok(n2.revision < store.revision);
  assert.equal(await n2.catchUp(), store.revision, 'a listing equal to the view proves it current');

  // A view that misses an identity does not move on.
  await n2.stop();
  const db = await n1.allocate(['app=db']);
  const stale = n2.revision;
  assert.equal(await n2.catchUp(), stale);
  assert.ok(stale < store.revision);
  await n2.start();
  assert.equal(n2.revision, store.revision, 'the re-listing is complete up to its revision');
  assert.equal(n2.get(db.id)?.labels.canonical, 'k8s:app=db');
});
