/**
 * Identity garbage collection in running agents: an endpoint's identity is listed while the
 * endpoint exists, and a GC pass after its deletion removes it; identities still in use stay —
 * also when the only user is a pod on another node sharing the store.
 * @module
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { TestNode, Underlay, sleep, cli, type AgentOptions } from './support/cluster.ts';

/** Short enough for a test, long enough that several passes run while it waits. */
const GC: AgentOptions = { identityGcInterval: 0.3, identityGcGracePeriod: 0 };

/** Identity numbers `ciliate identity list -o json` shows on the node. */
async function listed(node: TestNode): Promise<number[]> {
  const result = await cli(node, 'identity', 'list', '-o', 'json');
  assert.equal(result.code, 0, result.stderr);
  return (JSON.parse(result.stdout) as { id: number }[]).map((i) => i.id);
}

async function gcRuns(node: TestNode): Promise<number> {
  return (await node.client.get<{ identityGc: { runs: number } }>('/v1/status')).identityGc.runs;
}

/** Waits until `id` is gone from the node's identity list. */
async function untilCollected(node: TestNode, id: number, what: string): Promise<void> {
  const deadline = Date.now() + 15_000;
  while ((await listed(node)).includes(id)) {
    assert.ok(Date.now() < deadline, `${what}: identity ${id} still listed after 15 s:\n${node.log.split('\n').filter((l) => l.includes('identity-gc')).slice(-5).join('\n')}`);
    await sleep(100);
  }
}

/** Waits for `passes` more GC passes on the node. */
async function afterPasses(node: TestNode, passes: number): Promise<void> {
  const target = (await gcRuns(node)) + passes;
  const deadline = Date.now() + 15_000;
  while ((await gcRuns(node)) < target) {
    assert.ok(Date.now() < deadline, `${passes} GC passes within 15 s`);
    await sleep(100);
  }
}

test('the agent collects the identity of a deleted endpoint and keeps the ones in use', async (t) => {
  const node = await TestNode.start(t, GC);
  const gone = await node.addPod(t, 'gc-gone', { app: 'gc-gone' });
  const kept = await node.addPod(t, 'gc-kept', { app: 'gc-kept' });
  assert.notEqual(gone.endpoint.identity, kept.endpoint.identity);

  await afterPasses(node, 2);
  const before = await listed(node);
  assert.ok(before.includes(gone.endpoint.identity) && before.includes(kept.endpoint.identity), 'identities of existing endpoints survive GC passes');

  await node.client.call('DELETE', `/v1/endpoints/gc-gone/eth0`);
  await untilCollected(node, gone.endpoint.identity, 'after the endpoint was deleted');
  const missing = await cli(node, 'identity', 'get', String(gone.endpoint.identity));
  assert.notEqual(missing.code, 0);
  assert.match(missing.stderr, new RegExp(`no identity ${gone.endpoint.identity}`));

  await afterPasses(node, 1);
  assert.ok((await listed(node)).includes(kept.endpoint.identity), 'the identity still in use is kept');
  const status = await node.client.get<{ identityGc: { enabled: boolean; intervalSeconds: number; removedTotal: number; lastError?: string } }>('/v1/status');
  assert.equal(status.identityGc.enabled, true);
  assert.equal(status.identityGc.intervalSeconds, 0.3);
  assert.ok(status.identityGc.removedTotal >= 1, JSON.stringify(status.identityGc));
  assert.equal(status.identityGc.lastError, undefined);
});

test('an identity another node still uses is never collected, however often the nodes collect', async (t) => {
  const underlay = await Underlay.create(t);
  const etcd = await underlay.startEtcd(t);
  const options = (nodeName: string, nodeIp: string): AgentOptions => ({ ...GC, nodeName, nodeIp, underlay, etcd, routingMode: 'tunnel' });
  const [n1, n2] = [await TestNode.start(t, options('n1', '192.168.100.1')), await TestNode.start(t, options('n2', '192.168.100.2'))];
  const sharedOnN1 = await n1.addPod(t, 'gc-shared-1', { app: 'gc-shared' });
  const sharedOnN2 = await n2.addPod(t, 'gc-shared-2', { app: 'gc-shared' });
  const solo = await n1.addPod(t, 'gc-solo', { app: 'gc-solo' });
  const shared = sharedOnN1.endpoint.identity;
  assert.equal(sharedOnN2.endpoint.identity, shared, 'equal labels, one identity cluster-wide');

  // n1 drops the shared identity first, then the solo one: once a pass has removed the solo
  // identity, a pass has seen the shared one with only n2's reference.
  await n1.client.call('DELETE', '/v1/endpoints/gc-shared-1/eth0');
  await n1.client.call('DELETE', '/v1/endpoints/gc-solo/eth0');
  await untilCollected(n2, solo.endpoint.identity, 'the solo identity, on the other node too');
  await Promise.all([afterPasses(n1, 2), afterPasses(n2, 2)]);
  for (const node of [n1, n2]) assert.ok((await listed(node)).includes(shared), `${node.options.nodeName} still lists the identity n2's pod uses`);
  const onN2 = await n2.client.get<{ identity: number }>('/v1/endpoints/gc-shared-2');
  assert.equal(onN2.identity, shared);

  await n2.client.call('DELETE', '/v1/endpoints/gc-shared-2/eth0');
  await untilCollected(n1, shared, 'once its last user is gone');
  await untilCollected(n2, shared, 'once its last user is gone');
});
