import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ClusterPool, NodeIpam } from '../ipam/index.ts';
import { IdentityAllocator } from '../identity/index.ts';
import { MemoryStateStore, StoreError, type StateStore, type TxnOp, type TxnResult } from '../store/index.ts';
import { httpStatus } from './api-errors.ts';
import { NodeError } from './errors.ts';
import { deregisterNode } from './node-deregister.ts';

const POOL = { clusterCidr: '10.244.0.0/16', nodeMaskSize: 24 };

/** A store as two agents leave it: n1 and n2 each with a CIDR, a pod, a node record and refs. */
async function twoNodes(t: test.TestContext): Promise<MemoryStateStore> {
  const store = new MemoryStateStore();
  t.after(() => store.close());
  for (const node of ['n1', 'n2']) {
    const ipam = await NodeIpam.open({ store, nodeName: node, pool: POOL });
    const { ip } = await ipam.allocate(`ctr-${node}:eth0`);
    const identities = new IdentityAllocator({ store, nodeName: node });
    await identities.start();
    t.after(() => identities.stop());
    const shared = await identities.allocate({ app: 'shared' });
    const own = await identities.allocate({ app: `only-${node}` });
    await store.put(`nodes/${node}`, { name: node, podCidr: ipam.cidr, startedAt: 'x' });
    await store.put(`policy-status/${node}`, { revision: 1, startedAt: 'x' });
    await store.put(`endpoints/${node}/ctr-${node}/eth0`, { ipv4: ip, identity: own.id, shared: shared.id });
  }
  await store.put('policy-wait/n2', { revision: 1, timeoutMs: 1000 });
  return store;
}

async function keys(store: StateStore): Promise<string[]> {
  return (await store.list('')).entries.map((e) => e.key);
}

/** `store` with its transaction replaced (a Proxy: the store's private fields need the real receiver). */
function withTransaction(store: StateStore, transaction: (ops: readonly TxnOp[]) => Promise<TxnResult>): StateStore {
  return new Proxy(store, {
    get: (target, property) => {
      if (property === 'transaction') return transaction;
      const value: unknown = Reflect.get(target, property, target);
      return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
    },
  });
}

/** Keys with a path segment naming `node` (by-labels keys may merely contain the name). */
const named = (all: readonly string[], node: string): string[] => all.filter((k) => k.split('/').includes(node));

async function rejects(call: Promise<unknown>, status: number, code: string): Promise<void> {
  await assert.rejects(call, (error: unknown) => NodeError.is(error) && error.code === code && httpStatus(error) === status);
}

test('deregisterNode deletes exactly the keys of the node and frees its CIDR', async (t) => {
  const store = await twoNodes(t);
  const all = await keys(store);
  const result = await deregisterNode(store, 'n2', 'n1', () => 42);
  assert.equal(result.podCidr, '10.244.1.0/24');
  assert.equal(result.identities.length, 2, 'its refs on the shared identity and on its own');
  const left = await keys(store);
  assert.deepEqual(named(left, 'n2'), []);
  assert.deepEqual(all.filter((k) => !left.includes(k)), result.deleted, 'the deleted keys are those reported');
  assert.ok(result.deleted.includes('ipam/cidrs/10.244.1.0/24') && result.deleted.includes('ipam/ips/10.244.1.2'), result.deleted.join(', '));
  for (const id of result.identities) {
    const record = await store.get<{ lastUsedAt: number }>(`identities/by-id/${id}`);
    assert.equal(record?.value.lastUsedAt, 42, 'identities stay, their grace period starting now');
  }
  assert.equal((await new ClusterPool(store, POOL).allocateNodeCidr('n3')).cidr, '10.244.1.0/24');
  await rejects(deregisterNode(store, 'n2', 'n1'), 404, 'ERR_NODE_NOT_FOUND');
});

test('deregisterNode refuses its own node and bad names, and leaves the store untouched', async (t) => {
  const store = await twoNodes(t);
  const all = await keys(store);
  await rejects(deregisterNode(store, 'n1', 'n1'), 409, 'ERR_NODE_IS_SELF');
  await rejects(deregisterNode(store, 'N_2', 'n1'), 400, 'ERR_BAD_REQUEST');
  await rejects(deregisterNode(store, 'n9', 'n1'), 404, 'ERR_NODE_NOT_FOUND');
  assert.deepEqual(await keys(store), all);
});

test('deregisterNode: a node too large for one transaction goes in several, its record last', async (t) => {
  const store = await twoNodes(t);
  const ipam = await NodeIpam.open({ store, nodeName: 'n2', pool: POOL });
  for (let i = 0; i < 60; i++) {
    const { ip } = await ipam.allocate(`ctr-extra-${i}:eth0`);
    await store.put(`endpoints/n2/ctr-extra-${i}/eth0`, { ipv4: ip });
  }
  const before = await keys(store);
  // As etcd with its default --max-txn-ops: a transaction of more than 128 operations is refused.
  const transactions: string[][] = [];
  const capped = withTransaction(store, async (ops) => {
    if (ops.length > 128) throw new StoreError('ERR_STORE_INVALID_ARGUMENT', 'store: transaction: etcdserver: too many operations in txn request');
    transactions.push(ops.map((op) => op.key));
    return store.transaction(ops);
  });
  const result = await deregisterNode(capped, 'n2', 'n1');
  assert.ok(transactions.length > 1, `${transactions.length} transactions`);
  assert.deepEqual(transactions.at(-1), ['nodes/n2'], 'the node record goes last, alone');
  const cidrAt = transactions.findIndex((ks) => ks.includes('ipam/cidrs/10.244.1.0/24'));
  assert.ok(transactions.slice(cidrAt).flat().every((k) => !k.startsWith('ipam/ips/')), 'its addresses go before its CIDR');
  const left = await keys(store);
  assert.deepEqual(named(left, 'n2'), []);
  assert.deepEqual(before.filter((k) => !left.includes(k)), result.deleted);
  assert.equal(result.identities.length, 2);
  assert.equal((await new ClusterPool(store, POOL).allocateNodeCidr('n3')).cidr, '10.244.1.0/24');
});

test('deregisterNode: a store failure deletes nothing; a racing write makes it read again', async (t) => {
  const store = await twoNodes(t);
  const all = await keys(store);
  const failing = withTransaction(store, () => Promise.reject(new StoreError('ERR_STORE_UNAVAILABLE', 'store: transaction: etcd is unreachable')));
  await assert.rejects(deregisterNode(failing, 'n2', 'n1'), (error: unknown) => StoreError.is(error, 'ERR_STORE_UNAVAILABLE'));
  assert.deepEqual(await keys(store), all, 'all or nothing');

  // A write to one of the node's keys between the read and the transaction (as a live agent's
  // would be) fails the compare-and-swap; the retry reads it again and deletes it all.
  let attempts = 0;
  const racing = withTransaction(store, async (ops) => {
    if (attempts++ === 0) await store.put('endpoints/n2/ctr-n2/eth0', { ipv4: '10.244.1.2', identity: 0, rewritten: true });
    return store.transaction(ops);
  });
  const result = await deregisterNode(racing, 'n2', 'n1');
  assert.equal(attempts, 2, 'one conflict, one retry');
  assert.ok(result.deleted.includes('endpoints/n2/ctr-n2/eth0'), result.deleted.join(', '));
  assert.deepEqual(named(await keys(store), 'n2'), []);
});
