import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Reconciler, Table } from './index.ts';

interface Item {
  id: string;
  value: number;
}
const newTable = () => new Table<Item>('items', (i) => i.id, { equals: (a, b) => a.value === b.value });

test('a change reader sees each key once, at its latest state, and only what changed since', () => {
  const table = newTable();
  const reader = table.changes();
  table.upsert({ id: 'a', value: 1 });
  table.upsert({ id: 'b', value: 1 });
  table.upsert({ id: 'a', value: 2 });
  assert.deepEqual(reader.next().map((c) => [c.key, c.object.value, c.deleted]), [['b', 1, false], ['a', 2, false]]);
  assert.deepEqual(reader.next(), []);
  table.upsert({ id: 'b', value: 1 }); // equal: no new revision
  assert.deepEqual(reader.next(), []);
  table.delete('a');
  const changes = reader.next();
  assert.deepEqual(changes.map((c) => [c.key, c.object.value, c.deleted]), [['a', 2, true]]);
  assert.equal(table.get('a'), undefined);
  assert.equal(table.size, 1);
});

test('tombstones are kept until every reader has seen them, then dropped', () => {
  const table = newTable();
  const fast = table.changes();
  const slow = table.changes();
  table.upsert({ id: 'x', value: 1 });
  table.delete('x');
  assert.equal(fast.next().length, 1);
  assert.deepEqual(slow.next().map((c) => c.deleted), [true]);
  table.upsert({ id: 'y', value: 1 });
  table.delete('y');
  slow.close();
  assert.deepEqual(fast.next().map((c) => [c.key, c.deleted]), [['y', true]]);
  const late = table.changes();
  assert.deepEqual(late.next(), [], 'a reader that never saw y is not told of its deletion');
});

test('the reconciler applies only differences, retries failures, and reports per-object status', async () => {
  const table = newTable();
  const applied: string[] = [];
  let failNext = true;
  const reconciler = new Reconciler<Item>({
    name: 'test',
    table,
    retryBaseMs: 5,
    ops: {
      update(item) {
        if (item.id === 'flaky' && failNext) {
          failNext = false;
          throw new Error('kernel said EBUSY');
        }
        applied.push(`update ${item.id}=${item.value}`);
      },
      delete(item) {
        applied.push(`delete ${item.id}`);
      },
    },
  });
  reconciler.start();
  try {
    for (let i = 0; i < 3; i++) table.upsert({ id: `ep${i}`, value: i });
    await reconciler.waitFor();
    assert.deepEqual(applied, ['update ep0=0', 'update ep1=1', 'update ep2=2']);
    applied.length = 0;
    table.upsert({ id: 'ep1', value: 10 });
    table.delete('ep2');
    await reconciler.waitFor();
    assert.deepEqual(applied, ['update ep1=10', 'delete ep2'], 'one change touches one object');
    applied.length = 0;
    table.upsert({ id: 'flaky', value: 1 });
    await reconciler.waitFor();
    assert.deepEqual(applied, ['update flaky=1'], 'the failed update was retried');
    assert.equal(reconciler.status('flaky')?.state, 'done');
    assert.equal(reconciler.status('flaky')?.attempts, 2);
    assert.equal(reconciler.status('ep2'), undefined);
  } finally {
    await reconciler.stop();
  }
});
