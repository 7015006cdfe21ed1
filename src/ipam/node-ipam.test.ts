/**
 * Tests of per-node pod address allocation: reserved addresses, idempotency, release,
 * exhaustion without partial writes, restarts over a LocalStateStore, and concurrency (in one
 * instance and between two writers on one store).
 * @module
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { LocalStateStore, MemoryStateStore, StoreError, type StateStore } from '../store/index.ts';
import { contains, parseCidr, parseIpv4 } from './cidr.ts';
import { ClusterPool } from './cluster-pool.ts';
import { IpamError, type IpamExhaustedError } from './errors.ts';
import { NodeIpam, addressAllocator } from './node-ipam.ts';

const POOL = { clusterCidr: '10.244.0.0/16', nodeMaskSize: 24 };

async function localStore(t: TestContext): Promise<{ dir: string; store: LocalStateStore }> {
  const dir = await mkdtemp(join(tmpdir(), 'ciliate-ipam-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const store = await LocalStateStore.open(dir);
  t.after(() => store.close());
  return { dir, store };
}

/** IPAM for node n1, which gets 10.244.1.0/24 because n0 took the first CIDR. */
async function n1(store: StateStore): Promise<NodeIpam> {
  const pool = new ClusterPool(store, POOL);
  await pool.allocateNodeCidr('n0');
  return NodeIpam.open({ store, nodeName: 'n1', pool });
}

test('node ipam: allocates past the reserved addresses, idempotently per owner, and stores both records', async () => {
  const store = new MemoryStateStore();
  const ipam = await n1(store);
  assert.equal(ipam.cidr, '10.244.1.0/24');
  assert.equal(ipam.routerIp, '10.244.1.1');
  assert.equal(ipam.capacity, 253);
  assert.deepEqual(await ipam.allocate('c1:eth0'), { ip: '10.244.1.2', owner: 'c1:eth0', node: 'n1' });
  assert.deepEqual(await ipam.allocate('c2:eth0'), { ip: '10.244.1.3', owner: 'c2:eth0', node: 'n1' });
  const revision = store.revision;
  assert.deepEqual(await ipam.allocate('c1:eth0'), { ip: '10.244.1.2', owner: 'c1:eth0', node: 'n1' });
  assert.equal(store.revision, revision, 'allocating again for an owner writes nothing');
  assert.deepEqual((await store.get('ipam/ips/10.244.1.2'))?.value, { owner: 'c1:eth0', node: 'n1' });
  assert.deepEqual((await store.get('ipam/owners/n1/c1:eth0'))?.value, { ip: '10.244.1.2' });
  assert.equal(ipam.lookup('c2:eth0'), '10.244.1.3');
  assert.equal(ipam.lookup('nobody'), undefined);
});

test('node ipam: release by owner or by address; releasing twice is fine; no immediate reuse', async () => {
  const store = new MemoryStateStore();
  const ipam = await n1(store);
  await ipam.allocate('a');
  await ipam.allocate('b');
  assert.deepEqual(await ipam.release('a'), { ip: '10.244.1.2', owner: 'a', node: 'n1' });
  assert.equal(await ipam.release('a'), undefined);
  assert.deepEqual(await ipam.release('10.244.1.3'), { ip: '10.244.1.3', owner: 'b', node: 'n1' });
  assert.equal(await ipam.release('10.244.1.3'), undefined);
  assert.equal(await ipam.release('10.9.9.9'), undefined);
  assert.deepEqual((await store.list('ipam/ips/')).entries, []);
  assert.deepEqual((await store.list('ipam/owners/')).entries, []);
  // Next-fit: the freed .2 and .3 are not handed out straight away.
  assert.equal((await ipam.allocate('c')).ip, '10.244.1.4');
  // The same owner, released and allocated again, may get a new address.
  assert.equal((await ipam.allocate('a')).ip, '10.244.1.5');
});

test('node ipam: allocateSpecific checks range, reserved addresses, holders and owners', async () => {
  const store = new MemoryStateStore();
  const ipam = await n1(store);
  assert.deepEqual(await ipam.allocateSpecific('10.244.1.100', 'c1:eth0'), { ip: '10.244.1.100', owner: 'c1:eth0', node: 'n1' });
  assert.deepEqual(await ipam.allocateSpecific('10.244.1.100', 'c1:eth0'), { ip: '10.244.1.100', owner: 'c1:eth0', node: 'n1' });
  const cases: [string, string, string, string][] = [
    ['10.244.2.5', 'x', 'ERR_IPAM_OUT_OF_RANGE', 'ipam: 10.244.2.5 is not in pool 10.244.1.0/24 of node n1'],
    ['10.244.1.0', 'x', 'ERR_IPAM_RESERVED', 'ipam: 10.244.1.0 is the network address of pool 10.244.1.0/24 of node n1 and cannot be allocated'],
    ['10.244.1.1', 'x', 'ERR_IPAM_RESERVED', 'ipam: 10.244.1.1 is the router address of pool 10.244.1.0/24 of node n1 and cannot be allocated'],
    ['10.244.1.255', 'x', 'ERR_IPAM_RESERVED', 'ipam: 10.244.1.255 is the broadcast address of pool 10.244.1.0/24 of node n1 and cannot be allocated'],
    ['10.244.1.100', 'c2:eth0', 'ERR_IPAM_ADDRESS_IN_USE', 'ipam: cannot allocate 10.244.1.100 to c2:eth0: it is already allocated to c1:eth0 on node n1'],
    ['10.244.1.101', 'c1:eth0', 'ERR_IPAM_DUPLICATE_OWNER', 'ipam: cannot allocate 10.244.1.101 to c1:eth0: it already holds 10.244.1.100 on node n1; release that first'],
    ['10.244.1', 'x', 'ERR_IPAM_INVALID_CIDR', "ipam: address '10.244.1': not an IPv4 address (expected a.b.c.d, each 0–255)"],
  ];
  for (const [ip, owner, code, message] of cases) {
    await assert.rejects(ipam.allocateSpecific(ip, owner), (e: IpamError) => e.code === code && e.message === message, `${ip} ${owner}`);
  }
  // Owners must be printable and must not look like addresses (release takes either).
  for (const owner of ['', '10.244.1.7', 'a\nb']) {
    await assert.rejects(ipam.allocate(owner), (e) => IpamError.is(e, 'ERR_IPAM_INVALID_ARGUMENT'), JSON.stringify(owner));
  }
  assert.equal(ipam.used, 1);
});

test('node ipam: exhaustion gives a clear error and leaves nothing half-allocated', async () => {
  const store = new MemoryStateStore();
  const ipam = await n1(store);
  for (let i = 0; i < 253; i++) await ipam.allocate(`c${i}:eth0`);
  const before = await store.list('');
  await assert.rejects(ipam.allocate('late:eth0'), (e: IpamExhaustedError) => {
    assert.equal(e.code, 'ERR_IPAM_EXHAUSTED');
    assert.equal(e.message, 'ipam: pool 10.244.1.0/24 of node n1 is exhausted: 253 of 253 addresses in use');
    assert.deepEqual([e.pool, e.node, e.used, e.capacity], ['10.244.1.0/24', 'n1', 253, 253]);
    return true;
  });
  assert.deepEqual(await store.list(''), before, 'the failed allocation wrote nothing');
  assert.equal(await store.get('ipam/owners/n1/late:eth0'), undefined);
  // Every address except network, router and broadcast is in use, each exactly once.
  const ips = (await store.list('ipam/ips/')).entries.map((e) => e.key.slice('ipam/ips/'.length));
  assert.equal(new Set(ips).size, 253);
  assert.ok(!ips.includes('10.244.1.0') && !ips.includes('10.244.1.1') && !ips.includes('10.244.1.255'));
  // Existing owners still get their address; after one release the next allocation fits.
  assert.equal((await ipam.allocate('c7:eth0')).ip, '10.244.1.9');
  await ipam.release('c7:eth0');
  assert.equal((await ipam.allocate('late:eth0')).ip, '10.244.1.9');
  assert.deepEqual(ipam.snapshot().available, 0);
});

test('node ipam: "exhausted" is re-checked against the store when another writer freed addresses', async () => {
  const store = new MemoryStateStore();
  const pool = new ClusterPool(store, { clusterCidr: '10.0.0.0/24', nodeMaskSize: 29 });
  const first = await NodeIpam.open({ store, nodeName: 'n1', pool });
  for (let i = 0; i < first.capacity; i++) await first.allocate(`c${i}`);
  const second = await NodeIpam.open({ store, nodeName: 'n1', pool });
  assert.deepEqual(await second.release('c2'), { ip: '10.0.0.4', owner: 'c2', node: 'n1' });
  // `first` still believes the pool is full; it must look again instead of failing.
  assert.equal((await first.allocate('new')).ip, '10.0.0.4');
  await assert.rejects(first.allocate('newer'), (e) => IpamError.is(e, 'ERR_IPAM_EXHAUSTED'));
});

test('node ipam: a restart over the same directory returns the same allocations', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ciliate-ipam-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  let store = await LocalStateStore.open(dir);
  let ipam = await n1(store);
  const a = await ipam.allocate('a:eth0');
  const b = await ipam.allocate('b:eth0');
  await ipam.allocateSpecific('10.244.1.50', 'c:eth0');
  await ipam.release('b:eth0');
  const snapshot = ipam.snapshot();
  await store.close();

  store = await LocalStateStore.open(dir);
  t.after(() => store.close());
  ipam = await NodeIpam.open({ store, nodeName: 'n1', pool: POOL });
  assert.equal(ipam.cidr, '10.244.1.0/24');
  assert.deepEqual(ipam.snapshot(), snapshot);
  assert.deepEqual(await ipam.allocate('a:eth0'), a);
  assert.equal(ipam.lookup('c:eth0'), '10.244.1.50');
  const fresh = await ipam.allocate('d:eth0');
  assert.ok(![a.ip, '10.244.1.50'].includes(fresh.ip));
  assert.equal(ipam.lookup('b:eth0'), undefined);
  await assert.rejects(ipam.allocateSpecific('10.244.1.50', 'e:eth0'), (e) => IpamError.is(e, 'ERR_IPAM_ADDRESS_IN_USE'));
});

test('node ipam: 100 concurrent allocations on a LocalStateStore yield 100 distinct addresses', async (t) => {
  const { store } = await localStore(t);
  const ipam = await n1(store);
  const results = await Promise.all(Array.from({ length: 100 }, (_, i) => ipam.allocate(`c${i}:eth0`)));
  const ips = results.map((r) => r.ip);
  assert.equal(new Set(ips).size, 100);
  const pool = parseCidr('10.244.1.0/24');
  for (const ip of ips) {
    assert.ok(contains(pool, parseIpv4(ip)), ip);
    assert.ok(!['10.244.1.0', '10.244.1.1', '10.244.1.255'].includes(ip), ip);
  }
  // Duplicated requests in the same burst (a retried CNI ADD) still get one address per owner.
  const again = await Promise.all([...results.map((r) => ipam.allocate(r.owner)), ...results.map((r) => ipam.allocate(r.owner))]);
  assert.deepEqual(again.map((r) => r.ip), [...ips, ...ips]);
  assert.equal((await store.list('ipam/ips/')).entries.length, 100);
  assert.equal(ipam.snapshot().used, 100);
});

test('node ipam: two writers for one node on one store never hand out the same address', async () => {
  const store = new MemoryStateStore();
  let conflicts = 0;
  const transaction = store.transaction.bind(store);
  store.transaction = async (ops) => {
    try {
      return await transaction(ops);
    } catch (error) {
      if (StoreError.is(error, 'ERR_STORE_CONFLICT')) conflicts++;
      throw error;
    }
  };
  // Two instances = two processes allocating for the same node (should not happen, but must not
  // corrupt anything): only the store's compare-and-swap keeps them apart.
  const first = await n1(store);
  const second = await NodeIpam.open({ store, nodeName: 'n1', pool: POOL });
  const results = await Promise.all(Array.from({ length: 100 }, (_, i) => (i % 2 ? first : second).allocate(`c${i}:eth0`)));
  assert.equal(new Set(results.map((r) => r.ip)).size, 100);
  const stored = (await store.list<{ owner: string }>('ipam/ips/')).entries;
  assert.equal(stored.length, 100);
  for (const r of results) assert.equal(stored.find((e) => e.key === `ipam/ips/${r.ip}`)?.value.owner, r.owner);
  assert.equal((await store.list('ipam/owners/n1/')).entries.length, 100);
  assert.ok(conflicts > 0, 'the writers did collide, and recovered');
});

test('node ipam: concurrent allocations do not wait for each other\'s disk sync: their transactions share group commits', async (t) => {
  const { store } = await localStore(t);
  const ipam = await n1(store);
  const before = store.journalSyncs;
  const results = await Promise.all(Array.from({ length: 100 }, (_, i) => ipam.allocate(`c${i}:eth0`)));
  const syncs = store.journalSyncs - before;
  assert.equal(new Set(results.map((r) => r.ip)).size, 100);
  // Serialised claims took one sync each (100); in flight together they take a handful.
  assert.ok(syncs <= 10, `100 concurrent allocations took ${syncs} journal syncs`);
  const releaseBefore = store.journalSyncs;
  const released = await Promise.all(results.map((r) => ipam.release(r.owner)));
  assert.deepEqual(released.map((r) => r?.ip), results.map((r) => r.ip));
  assert.ok(store.journalSyncs - releaseBefore <= 10, `100 concurrent releases took ${store.journalSyncs - releaseBefore} journal syncs`);
  assert.equal((await store.list('ipam/')).entries.filter((e) => e.key.startsWith('ipam/ips/') || e.key.startsWith('ipam/owners/')).length, 0);
  assert.equal(ipam.snapshot().used, 0);
});

test('node ipam: a release issued while its owner or address is being allocated waits for that allocation, then releases it', async (t) => {
  const { store } = await localStore(t);
  const ipam = await n1(store);
  // Next-fit on a fresh pool: the first allocation gets the first pod address.
  const allocating = ipam.allocate('a:eth0');
  const byAddress = ipam.release('10.244.1.2');
  const [allocated, released] = await Promise.all([allocating, byAddress]);
  assert.equal(allocated.ip, '10.244.1.2');
  assert.deepEqual(released, { ip: '10.244.1.2', owner: 'a:eth0', node: 'n1' });
  const [b, releasedB] = await Promise.all([ipam.allocate('b:eth0'), ipam.release('b:eth0')]);
  assert.deepEqual(releasedB, b);
  assert.equal((await store.list('ipam/ips/')).entries.length, 0);
  assert.equal(ipam.snapshot().used, 0);
});

test('node ipam: two writers on one local store, allocating and releasing at once, never give one address to two owners', async (t) => {
  const { store } = await localStore(t);
  const first = await n1(store);
  const second = await NodeIpam.open({ store, nodeName: 'n1', pool: POOL });
  const owners = Array.from({ length: 120 }, (_, i) => `c${i}:eth0`);
  // Both pick next-fit from the same cursor with dozens of claims in flight: most collide and retry.
  const firstRound = await Promise.all(owners.map((owner, i) => (i % 2 ? first : second).allocate(owner)));
  assert.equal(new Set(firstRound.map((r) => r.ip)).size, owners.length);
  // Release every third owner (through the writer that allocated it: the other one's view only
  // learns of it on a conflict) while the others allocate again, on the other writer too
  // (idempotent), and new owners arrive; one owner asked of both writers at once gets one address.
  const extra = Array.from({ length: 60 }, (_, i) => `d${i}:eth0`);
  const [released, again, fresh, twice] = await Promise.all([
    Promise.all(owners.map((owner, i) => (i % 3 === 0 ? (i % 2 ? first : second).release(owner) : undefined))),
    Promise.all(owners.filter((_, i) => i % 3 !== 0).map((owner, i) => (i % 2 ? first : second).allocate(owner))),
    Promise.all(extra.map((owner, i) => (i % 2 ? first : second).allocate(owner))),
    Promise.all(['e:eth0', 'e:eth0'].map((owner, i) => (i % 2 ? first : second).allocate(owner))),
  ]);
  assert.equal(released.filter((r) => r !== undefined).length, owners.length / 3);
  assert.equal(twice[0].ip, twice[1].ip, 'one owner, one address');
  const byOwner = new Map(firstRound.map((r) => [r.owner, r.ip]));
  for (const r of again) assert.equal(r.ip, byOwner.get(r.owner), `${r.owner} kept its address`);
  const stored = (await store.list<{ owner: string }>('ipam/ips/')).entries;
  const storedOwners = (await store.list<{ ip: string }>('ipam/owners/n1/')).entries;
  const live = [...again, ...fresh, twice[0]];
  assert.equal(stored.length, live.length, 'one address record per live owner');
  assert.equal(storedOwners.length, live.length, 'one owner record per live owner');
  assert.equal(new Set(live.map((r) => r.ip)).size, live.length, 'no address handed to two owners');
  for (const r of live) {
    assert.equal(stored.find((e) => e.key === `ipam/ips/${r.ip}`)?.value.owner, r.owner);
    assert.equal(storedOwners.find((e) => e.key === `ipam/owners/n1/${r.owner}`)?.value.ip, r.ip);
  }
});

test('node ipam: nodes sharing a store allocate from their own CIDRs only', async () => {
  const store = new MemoryStateStore();
  const pool = new ClusterPool(store, POOL);
  const [a, b] = await Promise.all([NodeIpam.open({ store, nodeName: 'a', pool }), NodeIpam.open({ store, nodeName: 'b', pool })]);
  assert.notEqual(a.cidr, b.cidr);
  await Promise.all([a.allocate('x'), b.allocate('x'), a.allocate('y')]);
  const reopened = await NodeIpam.open({ store, nodeName: 'b', pool });
  assert.deepEqual(reopened.snapshot(), b.snapshot());
  assert.equal(reopened.snapshot().used, 1);
  assert.deepEqual(a.snapshot(), {
    node: 'a',
    cidr: a.cidr,
    routerIp: a.routerIp,
    capacity: 253,
    used: 2,
    available: 251,
    allocations: [
      { ip: a.lookup('x'), owner: 'x' },
      { ip: a.lookup('y'), owner: 'y' },
    ],
  });
});

test('node ipam: the endpoint manager\'s allocator view (owner "<container>/<ifname>")', async () => {
  const store = new MemoryStateStore();
  const ipam = await n1(store);
  const allocator = addressAllocator(ipam);
  assert.equal(allocator.gateway, '10.244.1.1');
  const ip = await allocator.allocate('4f1c2a9e/eth0');
  assert.equal(ip, '10.244.1.2');
  assert.equal(await allocator.allocate('4f1c2a9e/eth0'), ip);
  await allocator.release('4f1c2a9e/eth0');
  await allocator.release('4f1c2a9e/eth0');
  assert.equal(ipam.used, 0);
});
