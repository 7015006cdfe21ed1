/**
 * BpfMap on the real kernel: every map type the library creates from TypeScript, element
 * operations and their errors, batch operations, iteration, and bpffs pins.
 * @module
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { BpfMap, possibleCpus, type MapSpec } from './map.ts';
import { BpfObject } from './object.ts';
import { BpfError } from './errors.ts';
import { ipv4, struct, u32, u64, type Codec } from './codec.ts';
import { MapFlag, MapType, UpdateFlag } from './internal/constants.ts';
import { objectPath, pinDir, uniqueId } from './internal/testutils.ts';

/** Creates a map closed at test end; the name is unique per call (15 characters at most). */
function create<K = Buffer, V = Buffer>(t: TestContext, spec: Omit<MapSpec, 'name'> & { name?: string }, key?: Codec<K>, value?: Codec<V>): BpfMap<K, V> {
  const map = BpfMap.create({ ...spec, name: `${spec.name ?? 't'}_${uniqueId()}`.slice(0, 15) }, key, value);
  t.after(() => map.close());
  return map;
}

const hasCode = (code: string) => (error: unknown) => BpfError.is(error) && error.code === code;

/** Asserts no key comes twice and returns the keys. */
function once<K>(keys: Iterable<K>, what: string): Set<K> {
  const seen = new Set<K>();
  for (const key of keys) {
    assert.ok(!seen.has(key), `${what}: key ${String(key)} came twice`);
    seen.add(key);
  }
  return seen;
}

test('hash: lookup, update, delete and the NOEXIST/EXIST flags', (t) => {
  const map = create(t, { type: MapType.HASH, keySize: 4, valueSize: 8, maxEntries: 4, name: 'hash' }, u32, u64);
  assert.equal(map.lookup(1), undefined, 'a missing key looks up as undefined');
  map.update(1, 10n);
  assert.equal(map.lookup(1), 10n);
  map.update(1, 11n);
  assert.equal(map.lookup(1), 11n, 'ANY replaces');

  assert.throws(() => map.update(1, 12n, UpdateFlag.NOEXIST), hasCode('ERR_KEY_EXIST'));
  assert.equal(map.lookup(1), 11n, 'a refused NOEXIST leaves the value alone');
  assert.throws(() => map.update(2, 20n, UpdateFlag.EXIST), hasCode('ERR_NOT_FOUND'));
  assert.equal(map.lookup(2), undefined);
  map.update(2, 20n, UpdateFlag.NOEXIST);
  map.update(2, 21n, UpdateFlag.EXIST);
  assert.equal(map.lookup(2), 21n);

  assert.equal(map.delete(2), true);
  assert.equal(map.delete(2), false, 'deleting an absent key returns false');
  assert.equal(map.lookup(2), undefined);

  for (const key of [2, 3, 4]) map.update(key, BigInt(key));
  assert.throws(() => map.update(5, 5n), hasCode('ERR_MAP_FULL'));
  map.update(4, 40n, UpdateFlag.EXIST);
  assert.deepEqual(new Map(map.entries()), new Map([[1, 11n], [2, 2n], [3, 3n], [4, 40n]]));

  const info = map.info();
  assert.equal(info.type, MapType.HASH);
  assert.ok(info.id > 0);
  assert.equal(info.keySize, 4);
  assert.equal(info.valueSize, 8);
  assert.equal(info.maxEntries, 4);
  assert.equal(info.name, map.name);
});

test('array: every index exists, out of range is undefined, delete is refused', (t) => {
  const map = create(t, { type: MapType.ARRAY, keySize: 4, valueSize: 8, maxEntries: 3, name: 'arr' }, u32, u64);
  assert.equal(map.lookup(0), 0n, 'array slots start zeroed');
  assert.equal(map.lookup(3), undefined, 'past max_entries');
  map.update(2, 7n);
  assert.equal(map.lookup(2), 7n);
  assert.throws(() => map.update(1, 1n, UpdateFlag.NOEXIST), hasCode('ERR_KEY_EXIST'), 'array elements always exist');
  map.update(1, 1n, UpdateFlag.EXIST);
  assert.throws(() => map.update(3, 1n), (error: unknown) => BpfError.is(error) && /E2BIG|invalid/.test(error.message));
  assert.throws(() => map.delete(0), hasCode('ERR_INVALID_ARGUMENT'));
  assert.deepEqual([...map.entries()], [[0, 0n], [1, 1n], [2, 7n]]);
  assert.deepEqual([...map.keys()], [0, 1, 2]);
});

test('LRU hash: writing past max_entries evicts old keys and keeps the recent ones', (t) => {
  const max = 256;
  const map = create(t, { type: MapType.LRU_HASH, keySize: 4, valueSize: 8, maxEntries: max, name: 'lru' }, u32, u64);
  const total = max * 4;
  for (let key = 0; key < total; key++) map.update(key, BigInt(key));
  const keys = once(map.keys(), 'LRU keys');
  assert.ok(keys.size <= max, `at most max_entries keys (${keys.size})`);
  assert.ok(keys.size > 0);
  for (let key = total - 16; key < total; key++) assert.equal(map.lookup(key), BigInt(key), `recent key ${key} kept`);
  assert.equal(map.lookup(0), undefined, 'the oldest key was evicted');
  for (const [key, value] of map.entries()) assert.equal(value, BigInt(key));
});

test('LPM trie: longest-prefix match over a {prefixlen, addr} struct key', (t) => {
  const lpmKey = struct('lpm_v4_key', { prefixlen: u32, addr: ipv4 });
  assert.equal(lpmKey.size, 8);
  const map = create(
    t,
    { type: MapType.LPM_TRIE, keySize: lpmKey.size, valueSize: 4, maxEntries: 16, flags: MapFlag.NO_PREALLOC, name: 'lpm' },
    lpmKey,
    u32,
  );
  map.update({ prefixlen: 8, addr: '10.0.0.0' }, 8);
  map.update({ prefixlen: 16, addr: '10.1.0.0' }, 16);
  map.update({ prefixlen: 32, addr: '10.1.2.3' }, 32);
  const match = (addr: string) => map.lookup({ prefixlen: 32, addr });
  assert.equal(match('10.1.2.3'), 32, 'the /32 wins');
  assert.equal(match('10.1.2.4'), 16, '10.1.0.0/16 beats 10.0.0.0/8');
  assert.equal(match('10.1.255.255'), 16);
  assert.equal(match('10.2.0.1'), 8);
  assert.equal(match('10.255.255.255'), 8);
  assert.equal(match('11.0.0.1'), undefined, 'no prefix covers it');
  assert.equal(map.lookup({ prefixlen: 12, addr: '10.1.0.0' }), 8, 'a shorter query prefix only matches shorter entries');

  assert.throws(() => map.update({ prefixlen: 16, addr: '10.1.0.0' }, 0, UpdateFlag.NOEXIST), hasCode('ERR_KEY_EXIST'));
  assert.equal(map.delete({ prefixlen: 16, addr: '10.1.0.0' }), true);
  assert.equal(map.delete({ prefixlen: 16, addr: '10.1.0.0' }), false);
  assert.equal(match('10.1.2.4'), 8, 'with the /16 gone the /8 matches');
  assert.equal(match('10.1.2.3'), 32);
  assert.deepEqual(
    [...map.entries()].map(([key, value]) => `${key.addr}/${key.prefixlen}=${value}`).sort(),
    ['10.0.0.0/8=8', '10.1.2.3/32=32'],
  );
});

test('per-CPU hash and array hold one value per possible CPU', (t) => {
  const cpus = possibleCpus();
  assert.ok(cpus >= 1);
  const values = (base: bigint) => Array.from({ length: cpus }, (_, cpu) => base + BigInt(cpu));

  const hash = create(t, { type: MapType.PERCPU_HASH, keySize: 4, valueSize: 8, maxEntries: 8, name: 'pch' }, u32, u64);
  assert.equal(hash.isPerCpu, true);
  assert.equal(hash.lookupPerCpu(1), undefined);
  hash.updatePerCpu(1, values(100n));
  assert.deepEqual(hash.lookupPerCpu(1), values(100n));
  assert.throws(() => hash.updatePerCpu(2, values(0n), UpdateFlag.EXIST), hasCode('ERR_NOT_FOUND'));
  assert.throws(() => hash.updatePerCpu(1, values(0n), UpdateFlag.NOEXIST), hasCode('ERR_KEY_EXIST'));
  assert.throws(() => hash.updatePerCpu(1, [1n, ...values(0n)]), hasCode('ERR_INVALID_ARGUMENT'));
  assert.throws(() => hash.lookup(1), hasCode('ERR_INVALID_ARGUMENT'), 'single-value calls are refused on per-CPU maps');
  assert.throws(() => hash.update(1, 1n), hasCode('ERR_INVALID_ARGUMENT'));
  hash.updatePerCpu(2, values(200n));
  assert.deepEqual(new Map(hash.entriesPerCpu()), new Map([[1, values(100n)], [2, values(200n)]]));
  assert.equal(hash.delete(1), true);
  assert.equal(hash.lookupPerCpu(1), undefined);

  // A 4-byte value: each CPU's slot is still 8 bytes apart.
  const array = create(t, { type: MapType.PERCPU_ARRAY, keySize: 4, valueSize: 4, maxEntries: 2, name: 'pca' }, u32, u32);
  assert.deepEqual(array.lookupPerCpu(0), new Array(cpus).fill(0));
  const small = Array.from({ length: cpus }, (_, cpu) => 0xa0 + cpu);
  array.updatePerCpu(1, small);
  assert.deepEqual(array.lookupPerCpu(1), small);
  assert.deepEqual(array.lookupPerCpu(0), new Array(cpus).fill(0), 'neighbouring slot untouched');
  assert.equal(array.lookupPerCpu(2), undefined);
  assert.deepEqual([...array.entriesPerCpu()], [[0, new Array(cpus).fill(0)], [1, small]]);

  // Batch writes of per-CPU values.
  const batch = create(t, { type: MapType.PERCPU_HASH, keySize: 4, valueSize: 8, maxEntries: 64, name: 'pcb' }, u32, u64);
  const entries = Array.from({ length: 64 }, (_, i) => [i, values(BigInt(i * 1000))] as const);
  assert.equal(batch.updateBatch(entries as unknown as [number, bigint][]), 64);
  const read = new Map(batch.entriesPerCpu());
  assert.equal(read.size, 64);
  for (const [key, perCpu] of entries) assert.deepEqual(read.get(key), perCpu);
});

test('LRU per-CPU hash: one value per CPU, and writing past max_entries evicts old keys', (t) => {
  const cpus = possibleCpus();
  const values = (key: number) => Array.from({ length: cpus }, (_, cpu) => BigInt(key) * 1000n + BigInt(cpu));
  const max = 256;
  const map = create(t, { type: MapType.LRU_PERCPU_HASH, keySize: 4, valueSize: 8, maxEntries: max, name: 'lrupc' }, u32, u64);
  assert.equal(map.isPerCpu, true);
  assert.equal(map.info().type, MapType.LRU_PERCPU_HASH);
  assert.throws(() => map.update(1, 1n), hasCode('ERR_INVALID_ARGUMENT'), 'single-value calls are refused here too');

  map.updatePerCpu(1, values(1));
  assert.deepEqual(map.lookupPerCpu(1), values(1), 'each CPU keeps its own value');
  assert.throws(() => map.updatePerCpu(1, values(1), UpdateFlag.NOEXIST), hasCode('ERR_KEY_EXIST'));
  assert.equal(map.delete(1), true);
  assert.equal(map.lookupPerCpu(1), undefined);

  // Unlike a plain hash (ERR_MAP_FULL), an LRU map makes room by evicting the least recently used.
  const total = max * 4;
  for (let key = 0; key < total; key++) map.updatePerCpu(key, values(key));
  const keys = once(map.keys(), 'LRU per-CPU keys');
  assert.ok(keys.size > 0 && keys.size <= max, `at most max_entries keys (${keys.size})`);
  const entries = new Map(map.entriesPerCpu());
  assert.deepEqual(new Set(entries.keys()), keys);
  for (let key = total - 16; key < total; key++) assert.deepEqual(map.lookupPerCpu(key), values(key), `recent key ${key} kept`);
  assert.equal(map.lookupPerCpu(0), undefined, 'the oldest key was evicted');
  for (const [key, perCpu] of entries) assert.deepEqual(perCpu, values(key), `key ${key}: no CPU slot mixed up by eviction`);
});

test('hash-of-maps and array-of-maps: inner maps set by fd, looked up as ids', (t) => {
  const innerSpec = { type: MapType.ARRAY, keySize: 4, valueSize: 8, maxEntries: 4 } as const;
  const template = create(t, { ...innerSpec, name: 'tmpl' }, u32, u64);
  const innerA = create(t, { ...innerSpec, name: 'ina' }, u32, u64);
  const innerB = create(t, { ...innerSpec, name: 'inb' }, u32, u64);
  const idA = innerA.info().id;
  const idB = innerB.info().id;
  assert.notEqual(idA, idB);

  const hom = create(t, { type: MapType.HASH_OF_MAPS, keySize: 4, valueSize: 4, maxEntries: 8, innerMap: template, name: 'hom' }, u32, u32);
  assert.equal(hom.lookup(1), undefined);
  hom.setInnerMap(1, innerA);
  hom.setInnerMap(2, innerB);
  assert.equal(hom.lookup(1), idA, 'lookup returns the inner map id');
  assert.equal(hom.lookup(2), idB);
  assert.throws(() => hom.setInnerMap(1, innerB, UpdateFlag.NOEXIST), hasCode('ERR_KEY_EXIST'));
  hom.setInnerMap(1, innerB, UpdateFlag.EXIST);
  assert.equal(hom.lookup(1), idB);
  assert.deepEqual(new Map(hom.entries()), new Map([[1, idB], [2, idB]]));
  assert.equal(hom.delete(1), true);
  assert.equal(hom.lookup(1), undefined);

  // An inner map of another shape is refused.
  const other = create(t, { type: MapType.HASH, keySize: 4, valueSize: 8, maxEntries: 4, name: 'oth' });
  assert.throws(() => hom.setInnerMap(3, other), hasCode('ERR_INVALID_ARGUMENT'));

  const aom = create(t, { type: MapType.ARRAY_OF_MAPS, keySize: 4, valueSize: 4, maxEntries: 2, innerMap: template, name: 'aom' }, u32, u32);
  assert.equal(aom.lookup(0), undefined, 'an empty slot has no map');
  aom.setInnerMap(0, innerA);
  assert.equal(aom.lookup(0), idA);
  aom.setInnerMap(0, innerB);
  assert.equal(aom.lookup(0), idB);
  assert.deepEqual([...aom.entries()], [[0, idB]]);
  assert.equal(aom.delete(0), true, 'array-of-maps slots can be cleared');
  assert.equal(aom.lookup(0), undefined);

  // The inner map stays alive through the outer one after the caller closes its fd.
  innerA.update(3, 33n);
  hom.setInnerMap(5, innerA);
  innerA.close();
  assert.equal(hom.lookup(5), idA);
});

test('setInnerMapAsync installs an inner map off the event loop, with the same flags and typed errors', async (t) => {
  const innerSpec = { type: MapType.ARRAY, keySize: 4, valueSize: 8, maxEntries: 4 } as const;
  const template = create(t, { ...innerSpec, name: 'tmpl_async' }, u32, u64);
  const inner = create(t, { ...innerSpec, name: 'in_async' }, u32, u64);
  const aom = create(t, { type: MapType.ARRAY_OF_MAPS, keySize: 4, valueSize: 4, maxEntries: 4, innerMap: template, name: 'aom_async' }, u32, u32);

  // The kernel holds a map-of-maps update for an RCU grace period; the loop turns meanwhile.
  let ticks = 0;
  const tick = setInterval(() => ticks++, 0);
  t.after(() => clearInterval(tick));
  const installs = [0, 1, 2, 3].map((slot) => aom.setInnerMapAsync(slot, inner));
  aom.lookup(0); // a synchronous call in between uses the shared scratch buffers, not the calls' own
  await Promise.all(installs);
  clearInterval(tick);
  for (const slot of [0, 1, 2, 3]) assert.equal(aom.lookup(slot), inner.info().id, `slot ${slot}`);
  assert.ok(ticks > 0, 'the event loop ran while the updates waited');

  await assert.rejects(aom.setInnerMapAsync(9, inner), hasCode('ERR_MAP_FULL'), 'a slot past max_entries (the kernel says E2BIG)');
  const hom = create(t, { type: MapType.HASH_OF_MAPS, keySize: 4, valueSize: 4, maxEntries: 4, innerMap: template, name: 'hom_async' }, u32, u32);
  await hom.setInnerMapAsync(7, inner);
  await assert.rejects(hom.setInnerMapAsync(7, inner, UpdateFlag.NOEXIST), hasCode('ERR_KEY_EXIST'));
  const plain = create(t, { type: MapType.HASH, keySize: 4, valueSize: 4, maxEntries: 4, name: 'plain_async' }, u32, u32);
  await assert.rejects(plain.setInnerMapAsync(1, inner), hasCode('ERR_INVALID_ARGUMENT'), 'not a map of maps');
});

test('prog array holds programs set by fd and looked up as program ids', (t) => {
  const obj = BpfObject.load(objectPath('net'), { programs: ['count_tc', 'count_tc_second'] });
  t.after(() => obj.close());
  const progs = create(t, { type: MapType.PROG_ARRAY, keySize: 4, valueSize: 4, maxEntries: 4, name: 'progs' }, u32, u32);
  assert.equal(progs.lookup(0), undefined);
  progs.setProgram(0, obj.program('count_tc'));
  progs.setProgram(1, obj.program('count_tc_second'));
  assert.equal(progs.lookup(0), obj.program('count_tc').info().id);
  assert.equal(progs.lookup(1), obj.program('count_tc_second').info().id);
  assert.deepEqual(
    [...progs.entries()],
    [
      [0, obj.program('count_tc').info().id],
      [1, obj.program('count_tc_second').info().id],
    ],
  );
  assert.equal(progs.delete(1), true);
  assert.equal(progs.delete(1), false);
  assert.equal(progs.lookup(1), undefined);
});

test('queue and stack: push, pop with no key, peek, full and empty', (t) => {
  const queue = create(t, { type: MapType.QUEUE, keySize: 0, valueSize: 8, maxEntries: 3, name: 'queue' }, undefined, u64);
  assert.equal(queue.lookupAndDelete(), undefined, 'popping an empty queue');
  for (const value of [1n, 2n, 3n]) queue.push(value);
  assert.throws(() => queue.push(4n), hasCode('ERR_MAP_FULL'));
  queue.push(4n, UpdateFlag.EXIST); // BPF_EXIST on a full queue drops the oldest
  assert.equal(queue.lookup(Buffer.alloc(0)), 2n, 'peek: a lookup with the empty key');
  assert.deepEqual([queue.lookupAndDelete(), queue.lookupAndDelete(), queue.lookupAndDelete()], [2n, 3n, 4n], 'FIFO');
  assert.equal(queue.lookupAndDelete(), undefined);

  const stack = create(t, { type: MapType.STACK, keySize: 0, valueSize: 4, maxEntries: 4, name: 'stack' }, undefined, u32);
  for (const value of [1, 2, 3]) stack.push(value);
  assert.deepEqual([stack.lookupAndDelete(), stack.lookupAndDelete(), stack.lookupAndDelete()], [3, 2, 1], 'LIFO');
  assert.equal(stack.lookupAndDelete(), undefined);
});

test('ring buffer: created with a page-multiple size and described by info', (t) => {
  const size = 64 * 1024;
  const ring = create(t, { type: MapType.RINGBUF, keySize: 0, valueSize: 0, maxEntries: size, name: 'ring' });
  const info = ring.info();
  assert.equal(info.type, MapType.RINGBUF);
  assert.equal(info.maxEntries, size);
  assert.equal(info.keySize, 0);
  assert.equal(info.valueSize, 0);
  assert.ok(info.id > 0);
  assert.throws(
    () => BpfMap.create({ type: MapType.RINGBUF, keySize: 0, valueSize: 0, maxEntries: 5000 }),
    hasCode('ERR_INVALID_ARGUMENT'),
    'not a power-of-2 number of pages',
  );
});

test('batch: 10k entries written in one call, read back once each, deleted in one call', (t) => {
  const count = 10_000;
  const map = create(t, { type: MapType.HASH, keySize: 4, valueSize: 8, maxEntries: count, name: 'batch' }, u32, u64);
  const entries = Array.from({ length: count }, (_, i) => [i * 7 + 1, BigInt(i) * 3n] as [number, bigint]);
  assert.equal(map.updateBatch(entries), count);
  assert.equal(map.lookup(1), 0n);
  assert.equal(map.lookup((count - 1) * 7 + 1), BigInt(count - 1) * 3n);

  // Chunk 1 is smaller than some hash buckets: the kernel's ENOSPC makes entries() grow its buffers.
  for (const chunk of [256, 7, 1024, 1]) {
    const read = [...map.entries(chunk)];
    assert.equal(read.length, count, `chunk ${chunk}: every entry`);
    const seen = once(read.map(([key]) => key), `entries(${chunk})`);
    assert.equal(seen.size, count);
    for (const [key, value] of read) assert.equal(value, BigInt((key - 1) / 7) * 3n);
  }
  assert.equal(once(map.keys(), 'keys()').size, count, 'GET_NEXT_KEY walk sees every key once too');

  // NOEXIST in a batch: the kernel's batch update takes no such flag, so entries go one by one.
  assert.throws(() => map.updateBatch([[1, 5n]], UpdateFlag.NOEXIST), hasCode('ERR_KEY_EXIST'));
  assert.equal(map.lookup(1), 0n);

  const half = entries.slice(0, count / 2).map(([key]) => key);
  assert.equal(map.deleteBatch(half), count / 2);
  assert.equal(map.lookup(1), undefined);
  assert.equal([...map.entries()].length, count / 2);
  assert.throws(() => map.deleteBatch([half[0]]), hasCode('ERR_NOT_FOUND'), 'deleting absent keys stops the batch');

  // Arrays batch through the kernel's generic batch code.
  const array = create(t, { type: MapType.ARRAY, keySize: 4, valueSize: 8, maxEntries: count, name: 'batcha' }, u32, u64);
  assert.equal(array.updateBatch(Array.from({ length: count }, (_, i) => [i, BigInt(i)] as [number, bigint])), count);
  const read = [...array.entries(300)];
  assert.deepEqual(read.map(([key]) => key), Array.from({ length: count }, (_, i) => i));
  assert.ok(read.every(([key, value]) => value === BigInt(key)));
});

test('iteration while deleting and updating never repeats a key (batch, generic batch and GET_NEXT_KEY paths)', (t) => {
  const n = 2000;
  // LPM keys named by a number i: the /24 10.<i / 256>.<i % 256>.0.
  const lpmKey = struct('lpm_v4_key', { prefixlen: u32, addr: ipv4 });
  const prefixByIndex: Codec<number> = {
    size: lpmKey.size,
    align: lpmKey.align,
    encode: (i, buffer, offset) => lpmKey.encode({ prefixlen: 24, addr: `10.${i >> 8}.${i & 0xff}.0` }, buffer, offset),
    decode: (buffer, offset) => (buffer[offset + 5] << 8) | buffer[offset + 6],
  };
  const maps = {
    // htab's own LOOKUP_BATCH, by bucket.
    hash: create(t, { type: MapType.HASH, keySize: 4, valueSize: 4, maxEntries: n * 2, name: 'ith' }, u32, u32),
    // The kernel's generic LOOKUP_BATCH, which resumes from the last key it returned.
    lpm: create(t, { type: MapType.LPM_TRIE, keySize: 8, valueSize: 4, maxEntries: n * 2, flags: MapFlag.NO_PREALLOC, name: 'itl' }, prefixByIndex, u32),
    // No batch support at all: GET_NEXT_KEY, where a deleted or re-inserted key restarts the walk.
    devmap: create(t, { type: MapType.DEVMAP_HASH, keySize: 4, valueSize: 4, maxEntries: n * 2, name: 'itd' }, u32, u32),
  };
  const LO = 1; // devmap values are interface indexes; lo is 1 in every namespace

  for (const [name, map] of Object.entries(maps)) {
    const value = (key: number) => (name === 'devmap' ? LO : key);
    const fill = () => map.updateBatch(Array.from({ length: n }, (_, i) => [i, value(i)] as [number, number]));
    assert.equal(fill(), n, `${name}: filled`);
    assert.equal(once(map.keys(), `${name} keys`).size, n);
    assert.equal(once([...map.entries()].map(([k]) => k), `${name} entries`).size, n);

    // Delete keys as they are returned, as a garbage collector would: two in three, so a walk
    // that resumes after a deleted key and starts over hands back the survivors again.
    const doomed = (key: number) => key % 3 !== 0;
    const seenWhileDeleting = once((function* () {
      for (const [key] of map.entries(64)) {
        if (doomed(key)) assert.ok(map.delete(key), `${name}: ${key} was there`);
        yield key;
      }
    })(), `${name} while deleting`);
    assert.equal(seenWhileDeleting.size, n, `${name}: every key seen while deleting`);
    const left = once(map.keys(), `${name} keys after deleting`);
    assert.deepEqual([...left].sort((a, b) => a - b), Array.from({ length: n }, (_, i) => i).filter((key) => !doomed(key)));
    assert.equal(map.deleteBatch([...left]), left.size, `${name}: deleteBatch`);
    assert.equal([...map.keys()].length, 0, `${name}: empty afterwards`);

    // Rewrite every key as it is returned (moves it to the head of its hash bucket), and add new ones.
    fill();
    let added = 0;
    const updated = once((function* () {
      for (const [key] of map.entries(64)) {
        map.update(key, value(key));
        if (added < 100) map.update(n + added++, value(n));
        yield key;
      }
    })(), `${name} while updating`);
    for (let key = 0; key < n; key++) assert.ok(updated.has(key), `${name}: ${key} seen while updating`);
    assert.equal(map.deleteBatch(Array.from({ length: n }, (_, i) => i)), n, `${name}: deleteBatch`);
    assert.equal([...map.keys()].length, added, `${name}: only the added keys are left`);
  }
});

test('pinned map: reopened by path after the original is closed, with the same contents', (t) => {
  const dir = pinDir(t);
  const path = `${dir}/pinned_hash`;
  const map = BpfMap.create({ type: MapType.HASH, keySize: 4, valueSize: 8, maxEntries: 16, name: `pin_${uniqueId()}` }, u32, u64);
  let mapOpen = true;
  t.after(() => {
    if (mapOpen) map.close();
  });
  for (let key = 0; key < 10; key++) map.update(key, BigInt(key * key));
  const id = map.info().id;
  map.pin(path);
  assert.throws(() => map.pin(path), hasCode('ERR_KEY_EXIST'), 'the path is taken');
  map.close();
  mapOpen = false;

  const reopened = BpfMap.openPinned(path, u32, u64);
  t.after(() => reopened.close());
  assert.equal(reopened.info().id, id, 'the same kernel map');
  assert.equal(reopened.type, MapType.HASH);
  assert.equal(reopened.maxEntries, 16);
  assert.deepEqual(new Map(reopened.entries()), new Map(Array.from({ length: 10 }, (_, k) => [k, BigInt(k * k)])));
  reopened.update(10, 100n);

  const again = BpfMap.openPinned(path, u32, u64);
  t.after(() => again.close());
  assert.equal(again.lookup(10), 100n, 'writes through one fd are seen through another');

  assert.throws(() => BpfMap.openPinned(`${dir}/absent`), hasCode('ERR_NOT_FOUND'));
  assert.throws(() => BpfMap.openPinned(path, u32, u32), hasCode('ERR_CODEC'), 'a codec of the wrong size is refused');
});
