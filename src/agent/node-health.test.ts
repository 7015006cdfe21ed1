/**
 * Node health on loopback: agents answering each other's probes, one gone, and one whose address
 * another agent answers at.
 * @module
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import pino from 'pino';
import { freePort } from '../store/etcd-testing.ts';
import { NodeHealth } from './node-health.ts';
import type { NodeRecord } from './node.ts';

const log = pino({ level: 'silent' });
const record = (name: string, nodeIp: string): NodeRecord => ({ name, nodeIp, podCidr: '10.0.0.0/24', routerIp: '10.0.0.1', routingMode: 'native', agentVersion: 'test', startedAt: '' });

async function agent(t: TestContext, self: string, address: string, port: number, nodes: () => NodeRecord[]): Promise<NodeHealth> {
  const health = new NodeHealth({ self, address, port, intervalMs: 100, nodes, log });
  await health.start();
  t.after(() => health.stop());
  return health;
}

async function until(what: string, ok: () => boolean): Promise<void> {
  const deadline = Date.now() + 5000;
  while (!ok()) {
    assert.ok(Date.now() < deadline, what);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

test('a node counts as reachable only while the agent answering at its address is that node', async (t) => {
  const port = await freePort();
  let cluster = [record('n1', '127.0.0.1'), record('n2', '127.0.0.2'), record('n3', '127.0.0.3')];
  const n1 = await agent(t, 'n1', '127.0.0.1', port, () => cluster);
  const n2 = await agent(t, 'n2', '127.0.0.2', port, () => cluster);
  // n3's record names 127.0.0.3, where n4's agent answers (an address reused, a stale record).
  await agent(t, 'n4', '127.0.0.3', port, () => []);
  // n1 probed before the others listened; its next rounds find them.
  await until('n1 reaches n2 and has asked at n3', () => n1.reachability().some((r) => r.node === 'n2' && r.reachable) && n1.reachability().some((r) => r.reason?.includes('answers as') === true));
  assert.deepEqual(
    n1.reachability().map((r) => [r.node, r.reachable, r.reason]),
    [
      ['n2', true, undefined],
      ['n3', false, `127.0.0.3:${port} answers as "n4", not n3`],
    ],
  );
  assert.equal(n1.unreachable(), 1);

  await n2.stop();
  await until('n2 unreachable once its agent stops', () => n1.unreachable() === 2);
  assert.equal(n1.reachability().find((r) => r.node === 'n2')?.reason, `127.0.0.2:${port}: ECONNREFUSED`);

  // Gone from the cluster view: neither reachable nor unreachable.
  cluster = [record('n1', '127.0.0.1')];
  await until('nodes no longer registered are not counted', () => n1.unreachable() === 0 && n1.reachability().length === 0);
});
