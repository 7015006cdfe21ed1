/**
 * Maglev tables as the issue promises them: the same backends give the same table (whatever
 * order they are listed in, so every node agrees), each backend gets its share of slots, and
 * removing one backend leaves the others' slots where they were but for a small fraction.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DEFAULT_MAGLEV_TABLE_SIZE, MAGLEV_TABLE_SIZES, maglevSeed, maglevTable, type MaglevBackend } from './maglev.ts';
import { murmur3x64_128 } from './murmur3.ts';

function backends(n: number, port = 8080): MaglevBackend[] {
  return Array.from({ length: n }, (_, i) => ({ id: i + 1, name: `10.244.${i >> 8}.${i & 0xff}:${port}/TCP` }));
}

function counts(table: Uint32Array): Map<number, number> {
  const out = new Map<number, number>();
  for (const id of table) out.set(id, (out.get(id) ?? 0) + 1);
  return out;
}

test('murmur3 x64 128 gives the reference vectors', () => {
  assert.deepEqual(murmur3x64_128(Buffer.from('')), [0n, 0n]);
  assert.deepEqual(murmur3x64_128(Buffer.from('hello')), [0xcbd8a7b341bd9b02n, 0x5b1e906a48ae1d19n]);
  assert.deepEqual(murmur3x64_128(Buffer.from('The quick brown fox jumps over the lazy dog')), [0xe34bbc7bbc071b6cn, 0x7a433ca9c49a9347n]);
  assert.notDeepEqual(murmur3x64_128(Buffer.from('hello'), 1), murmur3x64_128(Buffer.from('hello'), 0), 'the seed changes the hash');
});

test('the same backends give the same table, in whatever order they are listed', () => {
  const list = backends(37);
  const a = maglevTable(list);
  const b = maglevTable([...list].reverse());
  assert.equal(a.length, DEFAULT_MAGLEV_TABLE_SIZE);
  assert.deepEqual(a, b);
  // Another seed is another table: the seed is what every node must share.
  assert.notDeepEqual(maglevTable(list, DEFAULT_MAGLEV_TABLE_SIZE, maglevSeed('AAAAAAAAAAAAAAAA')), a);
});

test('every slot holds a backend and each backend gets about M/N slots', () => {
  for (const size of [251, 16381, 65521]) {
    for (const n of [1, 3, 10, Math.min(100, Math.floor(size / 100))]) {
      const table = maglevTable(backends(n), size);
      const shares = counts(table);
      assert.equal(shares.size, n, `M=${size} N=${n}: every backend has slots`);
      assert.ok(!shares.has(0), `M=${size} N=${n}: no empty slot`);
      for (const [id, slots] of shares) {
        assert.ok(slots === Math.floor(size / n) || slots === Math.ceil(size / n), `M=${size} N=${n}: backend ${id} has ${slots} slots, want ⌊M/N⌋ or ⌈M/N⌉`);
      }
    }
  }
});

test('removing one of N backends moves at most 2 % of the remaining backends\' slots', () => {
  for (const n of [10, 25, 50, 100]) {
    const list = backends(n);
    const before = maglevTable(list);
    for (const removed of [0, Math.floor(n / 2), n - 1]) {
      const after = maglevTable(list.filter((_, i) => i !== removed));
      const gone = list[removed].id;
      let remaining = 0;
      let moved = 0;
      for (let slot = 0; slot < before.length; slot++) {
        if (before[slot] === gone) continue;
        remaining++;
        if (after[slot] !== before[slot]) moved++;
      }
      const fraction = moved / remaining;
      assert.ok(fraction <= 0.02, `N=${n}, removing backend ${removed}: ${(fraction * 100).toFixed(2)} % of the others' slots moved`);
      // The removed backend's slots all went to others.
      assert.ok(!after.includes(gone));
    }
  }
});

test('sizes other than Cilium\'s primes, and duplicate names, are refused', () => {
  assert.throws(() => maglevTable(backends(2), 16384), /must be one of 251, 509/);
  assert.throws(() => maglevTable(backends(2), 65537), /must be one of/);
  assert.throws(() => maglevTable([{ id: 1, name: 'a' }, { id: 2, name: 'a' }]), /two backends named a/);
  assert.deepEqual(MAGLEV_TABLE_SIZES.includes(DEFAULT_MAGLEV_TABLE_SIZE), true);
  assert.deepEqual(maglevTable([], 251), new Uint32Array(251), 'no backends: an empty table');
});

test('weights: slots in proportion, 0 takes none, equal weights give the unweighted table', () => {
  const names = ['10.0.0.1:80/TCP', '10.0.0.2:80/TCP', '10.0.0.3:80/TCP'];
  const plain = maglevTable(names.map((name, i) => ({ id: i + 1, name })));
  assert.deepEqual(maglevTable(names.map((name, i) => ({ id: i + 1, name, weight: 100 }))), plain, 'equal weights: the same table as none (nodes mixing both agree)');
  const count = (table: Uint32Array) => {
    const shares = new Map<number, number>();
    for (const id of table) shares.set(id, (shares.get(id) ?? 0) + 1);
    return shares;
  };
  const weighted = count(maglevTable([{ id: 1, name: names[0], weight: 1 }, { id: 2, name: names[1], weight: 3 }]));
  const share = weighted.get(1)! / DEFAULT_MAGLEV_TABLE_SIZE;
  assert.ok(Math.abs(share - 0.25) < 0.01, `weight 1 of 4: ${share}`);
  const drained = count(maglevTable([{ id: 1, name: names[0], weight: 0 }, { id: 2, name: names[1], weight: 5 }, { id: 3, name: names[2], weight: 5 }]));
  assert.equal(drained.get(1), undefined, 'weight 0: no slot');
  assert.ok(Math.abs(drained.get(2)! - drained.get(3)!) <= 1, 'the others share evenly');
  assert.equal(maglevTable([{ id: 1, name: names[0], weight: 0 }]).every((id) => id === 0), true, 'only weight 0: an empty table');
});
