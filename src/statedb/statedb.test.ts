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

/** A fake kernel object store: what the reconciler writes, and what drifts behind its back. */
function fakeKernel() {
  const kernel = new Map<string, number>();
  const ops = {
    update: (item: Item) => void kernel.set(item.id, item.value),
    delete: (item: Item) => void kernel.delete(item.id),
    list: () => [...kernel],
    equal: (item: Item, actual: number) => item.value === actual,
    prune: (key: string) => void kernel.delete(key),
  };
  return { kernel, ops };
}

async function until(what: string, check: () => boolean, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

test('a refresh rewrites what drifted, recreates what vanished and prunes what nobody wants, counting each', async () => {
  const table = newTable();
  const { kernel, ops } = fakeKernel();
  kernel.set('orphan', 9); // left by an earlier run
  table.upsert({ id: 'a', value: 1 });
  table.upsert({ id: 'b', value: 2 });
  const reconciler = new Reconciler<Item, number>({ name: 'items', table, ops, refreshIntervalMs: 30 });
  reconciler.start();
  try {
    await reconciler.waitFor();
    await until('the start refresh', () => reconciler.health().refreshes >= 1);
    assert.equal(kernel.has('orphan'), false, 'the refresh on start prunes what no object wants');
    assert.equal(reconciler.health().prunes, 1);
    assert.equal(reconciler.health().repairs, 0, 'objects the change loop wrote are not repairs');

    kernel.set('a', 100); // changed behind the reconciler's back
    kernel.delete('b'); // deleted behind its back
    kernel.set('stray', 1);
    await until('the drift to be repaired', () => kernel.get('a') === 1 && kernel.get('b') === 2 && !kernel.has('stray'));
    const health = reconciler.health();
    assert.equal(health.repairs, 2, 'one rewrite and one re-creation');
    assert.equal(health.prunes, 2);
    assert.equal(health.degraded, false);
    assert.equal(health.desired, 2);
    assert.equal(health.pending, 0);
    assert.ok(health.lastRefreshAt, 'the refresh time is reported');
  } finally {
    await reconciler.stop();
  }
});

test('without a refresh interval nothing is compared until refresh() is asked for', async () => {
  const table = newTable();
  const { kernel, ops } = fakeKernel();
  table.upsert({ id: 'a', value: 1 });
  const reconciler = new Reconciler<Item, number>({ name: 'items', table, ops });
  reconciler.start();
  try {
    await reconciler.waitFor();
    kernel.delete('a');
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(kernel.has('a'), false);
    await reconciler.refresh();
    assert.equal(kernel.get('a'), 1);
    assert.equal(reconciler.health().repairs, 1);
  } finally {
    await reconciler.stop();
  }
});

test('refreshOnStart: false leaves what the kernel holds alone until the first interval has passed', async () => {
  const table = newTable();
  const { kernel, ops } = fakeKernel();
  kernel.set('restored-later', 1);
  const reconciler = new Reconciler<Item, number>({ name: 'items', table, ops, refreshIntervalMs: 80, refreshOnStart: false });
  reconciler.start();
  try {
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(kernel.has('restored-later'), true, 'not pruned at start');
    await until('the first refresh', () => reconciler.health().refreshes === 1);
    assert.equal(kernel.has('restored-later'), false);
  } finally {
    await reconciler.stop();
  }
});

test('an object that keeps failing makes the reconciler degraded, naming it, until it succeeds', async () => {
  const table = newTable();
  const { kernel, ops } = fakeKernel();
  let full = true;
  const reconciler = new Reconciler<Item, number>({
    name: 'items',
    table,
    retryBaseMs: 5,
    retryMaxMs: 20,
    ops: {
      ...ops,
      update(item) {
        if (full && item.id === 'big') throw new Error('map is full');
        ops.update(item);
      },
    },
  });
  reconciler.start();
  try {
    table.upsert({ id: 'big', value: 1 });
    await reconciler.attempted();
    assert.equal(reconciler.status('big')?.state, 'error', 'attempted() resolves after a failed first attempt');
    await until('degraded', () => reconciler.health().degraded);
    const health = reconciler.health();
    assert.equal(health.errors, 1);
    assert.match(health.reason ?? '', /items: big failed \d+ times: map is full/);
    assert.match(health.lastError ?? '', /map is full/);
    assert.ok(health.lastErrorAt);
    assert.equal(health.pending, 1, 'the failing object is still pending: it is not forgotten');
    full = false;
    await reconciler.waitFor();
    assert.equal(kernel.get('big'), 1);
    assert.equal(reconciler.health().degraded, false);
    assert.equal(reconciler.health().errors, 0);
  } finally {
    await reconciler.stop();
  }
});

test('a failed repair is retried through repair(), with what it needs to compare again', async () => {
  const table = newTable();
  const { kernel, ops } = fakeKernel();
  const calls: string[] = [];
  let failRepair = 1;
  const reconciler = new Reconciler<Item, number>({
    name: 'items',
    table,
    retryBaseMs: 5,
    ops: {
      ...ops,
      repair(item, actual) {
        calls.push(`repair ${item.id} from ${actual}`);
        if (failRepair-- > 0) throw new Error('EBUSY');
        ops.update(item);
      },
    },
  });
  reconciler.start();
  try {
    table.upsert({ id: 'a', value: 1 });
    await reconciler.waitFor();
    kernel.set('a', 7);
    await reconciler.refresh();
    await until('the repair retry', () => kernel.get('a') === 1);
    assert.deepEqual(calls, ['repair a from 7', 'repair a from undefined']);
    assert.equal(reconciler.health().repairs, 1, 'counted once, when it succeeded');
  } finally {
    await reconciler.stop();
  }
});

test('listing the kernel failing again and again makes the reconciler degraded', async () => {
  const table = newTable();
  const { ops } = fakeKernel();
  const reconciler = new Reconciler<Item, number>({
    name: 'items',
    table,
    refreshIntervalMs: 5,
    ops: { ...ops, list: () => Promise.reject(new Error('permission denied')) },
  });
  reconciler.start();
  try {
    await until('degraded', () => reconciler.health().degraded);
    assert.match(reconciler.health().reason ?? '', /reading the kernel failed \d+ times: listing the kernel: permission denied/);
  } finally {
    await reconciler.stop();
  }
});

test('refresh() asked for while a refresh runs gets one of its own, which sees what was written meanwhile', async () => {
  const table = newTable();
  const { kernel, ops } = fakeKernel();
  let releaseList: (() => void) | undefined;
  let listing = 0;
  const reconciler = new Reconciler<Item, number>({
    name: 'items',
    table,
    ops: {
      ...ops,
      list: async () => {
        const snapshot = [...kernel];
        if (listing++ === 0) await new Promise<void>((resolve) => (releaseList = resolve));
        return snapshot;
      },
    },
  });
  reconciler.start();
  try {
    kernel.set('leftover', 1);
    const first = reconciler.refresh();
    await until('the first listing', () => releaseList !== undefined);
    kernel.set('late-leftover', 2); // after the first listing was taken
    const second = reconciler.refresh();
    releaseList!();
    await first;
    await second;
    assert.equal(kernel.has('leftover'), false);
    assert.equal(kernel.has('late-leftover'), false, 'the second refresh listed again');
    assert.equal(reconciler.health().refreshes, 2);
  } finally {
    await reconciler.stop();
  }
});
