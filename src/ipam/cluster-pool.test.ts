/**
 * Tests of node CIDR allocation from the cluster pool: config validation, idempotency,
 * exhaustion, and exclusivity when several allocators race on one store.
 * @module
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MemoryStateStore } from '../store/index.ts';
import { overlaps, parseCidr } from './cidr.ts';
import { ClusterPool } from './cluster-pool.ts';
import { IpamError, type IpamExhaustedError } from './errors.ts';
import { NodeIpam } from './node-ipam.ts';

test('cluster pool: invalid config is refused with a clear message', () => {
  const store = new MemoryStateStore();
  assert.throws(
    () => new ClusterPool(store, { clusterCidr: '10.0.0.0/33' }),
    (e: IpamError) => e.code === 'ERR_IPAM_INVALID_CIDR' && e.message === "ipam: cluster CIDR '10.0.0.0/33': prefix length must be 0–32",
  );
  for (const nodeMaskSize of [15, 31, 24.5]) {
    assert.throws(
      () => new ClusterPool(store, { clusterCidr: '10.244.0.0/16', nodeMaskSize }),
      (e: IpamError) => e.code === 'ERR_IPAM_INVALID_CONFIG' && e.message.startsWith(`ipam: node mask size ${nodeMaskSize}: must be 16–30`),
    );
  }
  assert.equal(new ClusterPool(store, { clusterCidr: '10.244.0.0/16' }).nodeMaskSize, 24);
});

test('cluster pool: node CIDRs are lowest-free, idempotent per node and stored', async () => {
  const store = new MemoryStateStore();
  const pool = new ClusterPool(store, { clusterCidr: '10.244.0.0/16', nodeMaskSize: 24 });
  assert.deepEqual(await pool.allocateNodeCidr('n0'), { node: 'n0', cidr: '10.244.0.0/24' });
  assert.deepEqual(await pool.allocateNodeCidr('n1'), { node: 'n1', cidr: '10.244.1.0/24' });
  assert.deepEqual(await pool.allocateNodeCidr('n0'), { node: 'n0', cidr: '10.244.0.0/24' });
  assert.deepEqual((await store.get('ipam/nodes/n1'))?.value, { cidr: '10.244.1.0/24' });
  assert.deepEqual((await store.get('ipam/cidrs/10.244.1.0/24'))?.value, { node: 'n1' });
  assert.equal(await pool.nodeCidr('n1'), '10.244.1.0/24');
  assert.equal(await pool.nodeCidr('n9'), undefined);
  await assert.rejects(pool.allocateNodeCidr('Bad/Name'), (e) => IpamError.is(e, 'ERR_IPAM_INVALID_ARGUMENT'));
  const snapshot = await pool.snapshot();
  assert.deepEqual(snapshot, {
    clusterCidr: '10.244.0.0/16',
    nodeMaskSize: 24,
    capacity: 256,
    used: 2,
    nodes: [
      { node: 'n0', cidr: '10.244.0.0/24' },
      { node: 'n1', cidr: '10.244.1.0/24' },
    ],
  });
});

test('cluster pool: exhaustion names the pool; nothing is written for the node that did not fit', async () => {
  const store = new MemoryStateStore();
  const pool = new ClusterPool(store, { clusterCidr: '10.0.0.0/22', nodeMaskSize: 24 });
  const cidrs = await Promise.all(['a', 'b', 'c', 'd'].map(async (n) => (await pool.allocateNodeCidr(n)).cidr));
  assert.deepEqual(cidrs.sort(), ['10.0.0.0/24', '10.0.1.0/24', '10.0.2.0/24', '10.0.3.0/24']);
  const revision = store.revision;
  await assert.rejects(pool.allocateNodeCidr('e'), (e: IpamExhaustedError) => {
    assert.equal(e.code, 'ERR_IPAM_EXHAUSTED');
    assert.equal(e.message, 'ipam: cluster pool 10.0.0.0/22 is exhausted: 4 of 4 node CIDRs in use');
    return true;
  });
  assert.equal(store.revision, revision);
  assert.equal(await store.get('ipam/nodes/e'), undefined);
});

test('cluster pool: allocators racing on one store never hand out overlapping CIDRs', async () => {
  const store = new MemoryStateStore();
  // Three allocators = three agents sharing etcd; each only serialises its own calls, so they
  // interleave and must be kept apart by the store's compare-and-swap.
  const pools = [0, 1, 2].map(() => new ClusterPool(store, { clusterCidr: '10.244.0.0/16', nodeMaskSize: 24 }));
  const nodes = Array.from({ length: 90 }, (_, i) => `node-${i}`);
  const results = await Promise.all(nodes.map((node, i) => pools[i % 3].allocateNodeCidr(node)));
  const cidrs = results.map((r) => parseCidr(r.cidr));
  assert.equal(new Set(results.map((r) => r.cidr)).size, nodes.length);
  for (let i = 0; i < cidrs.length; i++) for (let j = i + 1; j < cidrs.length; j++) assert.ok(!overlaps(cidrs[i], cidrs[j]), `${results[i].cidr} vs ${results[j].cidr}`);
  // The same node asked for by all three at once still ends up with one CIDR.
  const same = await Promise.all(pools.map((p) => p.allocateNodeCidr('shared')));
  assert.equal(new Set(same.map((r) => r.cidr)).size, 1);
  assert.equal((await pools[0].snapshot()).used, 91);

  // Filling the whole /16: every /24 exactly once.
  const rest = Array.from({ length: 256 - 91 }, (_, i) => `fill-${i}`);
  await Promise.all(rest.map((node, i) => pools[i % 3].allocateNodeCidr(node)));
  const all = (await pools[0].snapshot()).nodes.map((n) => n.cidr);
  assert.equal(new Set(all).size, 256);
  await assert.rejects(pools[1].allocateNodeCidr('one-too-many'), (e) => IpamError.is(e, 'ERR_IPAM_EXHAUSTED'));
});

test('cluster pool: a CIDR is released only when empty, and then handed out again', async () => {
  const store = new MemoryStateStore();
  const pool = new ClusterPool(store, { clusterCidr: '10.244.0.0/16', nodeMaskSize: 24 });
  const ipam = await NodeIpam.open({ store, nodeName: 'n0', pool });
  await pool.allocateNodeCidr('n1');
  await ipam.allocate('c1:eth0');
  await assert.rejects(pool.releaseNodeCidr('n0'), (e: IpamError) => {
    assert.equal(e.code, 'ERR_IPAM_IN_USE');
    assert.equal(e.message, 'ipam: releasing 10.244.0.0/24 of node n0: 1 addresses are still allocated (e.g. 10.244.0.2 to c1:eth0)');
    return true;
  });
  await ipam.release('c1:eth0');
  assert.equal(await pool.releaseNodeCidr('n0'), true);
  assert.equal(await pool.releaseNodeCidr('n0'), false);
  assert.equal(await store.get('ipam/cidrs/10.244.0.0/24'), undefined);
  assert.deepEqual(await pool.allocateNodeCidr('n2'), { node: 'n2', cidr: '10.244.0.0/24' });
});

test('cluster pool: a node whose stored CIDR is outside a changed cluster CIDR gets a config error', async () => {
  const store = new MemoryStateStore();
  await new ClusterPool(store, { clusterCidr: '10.244.0.0/16' }).allocateNodeCidr('n1');
  const changed = new ClusterPool(store, { clusterCidr: '10.96.0.0/12' });
  await assert.rejects(changed.allocateNodeCidr('n1'), (e: IpamError) => {
    assert.equal(e.code, 'ERR_IPAM_INVALID_CONFIG');
    assert.match(e.message, /^ipam: node n1 holds 10\.244\.0\.0\/24, which is outside the cluster CIDR 10\.96\.0\.0\/12/);
    return true;
  });
  // A different mask size inside the same cluster CIDR: existing CIDRs stay, new ones avoid them.
  const resized = new ClusterPool(store, { clusterCidr: '10.244.0.0/16', nodeMaskSize: 26 });
  assert.equal((await resized.allocateNodeCidr('n1')).cidr, '10.244.0.0/24');
  assert.equal((await resized.allocateNodeCidr('n2')).cidr, '10.244.1.0/26');
});
