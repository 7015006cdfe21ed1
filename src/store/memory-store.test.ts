/**
 * Runs the StateStore conformance suite on the in-memory store, plus its history limit.
 * @module
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { StoreError } from './errors.ts';
import { MemoryStateStore } from './memory-store.ts';
import { runStateStoreConformance, take } from './state-store.case.ts';

runStateStoreConformance('memory', async () => new MemoryStateStore());

test('memory: history beyond the limit is compacted; watching from it gives ERR_STORE_COMPACTED', async (t) => {
  const store = new MemoryStateStore({ historyLimit: 3 });
  t.after(() => store.close());
  for (let i = 1; i <= 5; i++) await store.put(`k${i}`, i);
  await assert.rejects(store.watch('', { afterRevision: 1 }).next(), (e) => StoreError.is(e, 'ERR_STORE_COMPACTED'));
  const watch = store.watch('', { afterRevision: 2 });
  assert.deepEqual((await take(watch, 3)).map((e) => e.revision), [3, 4, 5]);
  watch.close();
});
