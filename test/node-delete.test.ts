import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { AgentApiError, type NodeRecord } from '../src/agent/index.ts';
import { inNs, ROOT, sleep, TestNode, Underlay, cli, type AgentOptions } from './support/cluster.ts';

const POLICIES = join(import.meta.dirname, 'policies');

/**
 * Every key of the shared store with its value, read by a client inside `node`'s namespace (etcd
 * listens on the underlay, which the test process is not on).
 */
async function storeContent(node: TestNode, etcd: string[]): Promise<{ key: string; value: unknown }[]> {
  const script = `
    const { EtcdStateStore } = await import(${JSON.stringify(pathToFileURL(join(ROOT, 'src', 'store', 'index.ts')).href)});
    const store = await EtcdStateStore.connect({ endpoints: ${JSON.stringify(etcd)} });
    try {
      const { entries } = await store.list('');
      process.stdout.write(JSON.stringify(entries.map((e) => ({ key: e.key, value: e.value }))));
    } finally {
      await store.close();
    }`;
  return JSON.parse(await inNs(node.netns, process.execPath, ['--input-type=module', '-e', script])) as { key: string; value: unknown }[];
}

/** The keys that belong to node `name`: named after it, or records saying they are its. */
function keysOf(content: readonly { key: string; value: unknown }[], name: string): string[] {
  return content
    .filter(({ key, value }) => key.split('/').includes(name) || (typeof value === 'object' && value !== null && (value as { node?: unknown }).node === name))
    .map((e) => e.key);
}

async function ipcacheIps(node: TestNode): Promise<string[]> {
  return (await node.client.get<{ key: { ip: string; prefixLen?: number } }[]>('/v1/bpf/ipcache')).map((e) => e.key.ip);
}

async function until(what: string, check: () => Promise<boolean>, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    assert.ok(Date.now() < deadline, `${what}: not within ${timeoutMs} ms`);
    await sleep(100);
  }
}

async function apiError(call: Promise<unknown>): Promise<AgentApiError> {
  try {
    await call;
  } catch (error) {
    if (error instanceof AgentApiError) return error;
    throw error;
  }
  assert.fail('the call succeeded');
}

test('node delete: a dead node is deregistered in one transaction, waits stop counting it, its CIDR and identities are free again', async (t) => {
  const underlay = await Underlay.create(t);
  const etcd = await underlay.startEtcd(t);
  const options = (nodeName: string, nodeIp: string): AgentOptions => ({ nodeName, nodeIp, underlay, etcd, routingMode: 'tunnel' });
  // n1 collects identities often and at once, so the one only n2 used goes soon after n2 does.
  const n1 = await TestNode.start(t, { ...options('n1', '192.168.100.1'), identityGcInterval: 0.3, identityGcGracePeriod: 0 });
  const n2 = await TestNode.start(t, options('n2', '192.168.100.2'));
  await n1.addPod(t, 'nd-pod-1', { app: 'nd-everywhere' });
  const pod2 = await n2.addPod(t, 'nd-pod-2', { app: 'nd-only-on-n2' });
  const n2Record = (await n1.client.get<NodeRecord[]>('/v1/nodes')).find((n) => n.name === 'n2');
  assert.ok(n2Record, 'n1 sees n2 registered');
  await until("n2's pod in n1's ipcache", async () => (await ipcacheIps(n1)).includes(pod2.endpoint.ipv4));

  // n2 dies for good: SIGKILL to the agent process this test started. What it owns stays.
  await n2.stopAgent('SIGKILL');
  const owned = keysOf(await storeContent(n1, etcd), 'n2');
  for (const prefix of ['nodes/', 'policy-status/', 'endpoints/n2/', 'ipam/nodes/', 'ipam/cidrs/', 'ipam/ips/', 'ipam/owners/n2/', 'identities/refs/']) {
    assert.ok(owned.some((k) => k.startsWith(prefix)), `n2 owns a key under ${prefix}: ${owned.join(', ')}`);
  }
  const imported = await cli(n1, 'policy', 'import', join(POLICIES, 'starwars-rule1.yaml'));
  assert.equal(imported.code, 0, imported.stderr);
  const revision = Number(/revision: (\d+)/.exec(imported.stdout)?.[1]);
  assert.ok(revision > 0, imported.stdout);
  const blocked = await cli(n1, 'policy', 'wait', String(revision), '--timeout', '1');
  assert.notEqual(blocked.code, 0, blocked.stdout);
  assert.match(blocked.stderr, new RegExp(`policy revision ${revision} not enforced by every node within 1000 ms; lagging: n2 \\(`));

  // Refusals leave every key in place.
  const self = await apiError(n1.client.call('DELETE', '/v1/nodes/n1'));
  assert.equal(self.status, 409);
  assert.equal(self.code, 'ERR_NODE_IS_SELF');
  assert.match(self.message, /refusing to delete node n1: this agent runs as n1/);
  const selfCli = await cli(n1, 'node', 'delete', 'n1');
  assert.notEqual(selfCli.code, 0);
  assert.match(selfCli.stderr, /^ciliate: node delete: refusing to delete node n1/);
  const unknown = await apiError(n1.client.call('DELETE', '/v1/nodes/n9'));
  assert.equal(unknown.status, 404);
  assert.equal(unknown.code, 'ERR_NODE_NOT_FOUND');
  assert.match(unknown.message, /^node delete: no node n9: the store holds nothing of it/);
  const bad = await apiError(n1.client.call('DELETE', `/v1/nodes/${encodeURIComponent('Bad_Name')}`));
  assert.equal(bad.status, 400);
  assert.equal(bad.code, 'ERR_BAD_REQUEST');
  assert.match(bad.message, /node name "Bad_Name" is invalid/);
  const afterRefusals = await storeContent(n1, etcd);
  assert.deepEqual(keysOf(afterRefusals, 'n2'), owned, 'no key of n2 went away on a refusal');
  assert.ok(afterRefusals.some((e) => e.key === 'nodes/n1'), 'n1 is still registered');

  const deleted = await cli(n1, 'node', 'delete', 'n2', '-o', 'json');
  assert.equal(deleted.code, 0, deleted.stderr);
  const result = JSON.parse(deleted.stdout) as { node: string; revision: number; deleted: string[]; podCidr?: string; identities: number[] };
  assert.equal(result.node, 'n2');
  assert.equal(result.podCidr, n2Record.podCidr);
  assert.ok(result.identities.includes(pod2.endpoint.identity), `n2's references are dropped: ${result.identities.join(', ')}`);

  // The wait no longer counts n2, and n1 alone is listed.
  const waited = await cli(n1, 'policy', 'wait', String(revision), '--timeout', '10');
  assert.equal(waited.code, 0, waited.stderr);
  assert.match(waited.stdout, new RegExp(`^revision ${revision} enforced on every node: n1 \\(at \\d+\\)\n$`));
  assert.deepEqual((await n1.client.get<NodeRecord[]>('/v1/nodes')).map((n) => n.name), ['n1']);
  const listed = await cli(n1, 'node', 'list');
  assert.equal(listed.code, 0, listed.stderr);
  assert.doesNotMatch(listed.stdout, /\bn2\b/);

  // n1's watches react: n2's pod and its pod CIDR leave the ipcache.
  const [cidrIp] = n2Record.podCidr.split('/');
  await until("n2's pod and CIDR gone from n1's ipcache", async () => {
    const ips = await ipcacheIps(n1);
    return !ips.includes(pod2.endpoint.ipv4) && !ips.includes(cidrIp) && !ips.includes(n2Record.nodeIp);
  });
  const table = await cli(n1, 'bpf', 'ipcache', 'list');
  assert.equal(table.code, 0, table.stderr);
  assert.doesNotMatch(table.stdout, new RegExp(`\\b${pod2.endpoint.ipv4.replaceAll('.', '\\.')}\\b`));

  // The store holds nothing of n2, and the response named exactly what went.
  const after = await storeContent(n1, etcd);
  assert.deepEqual(keysOf(after, 'n2'), []);
  assert.deepEqual(result.deleted, [...owned].sort(), 'the response names every key of n2, and only those');

  // Identity GC takes the identity only n2 referenced; n2's CIDR goes to the next node.
  await until(`identity ${pod2.endpoint.identity} collected`, async () => {
    const ids = (await n1.client.get<{ id: number }[]>('/v1/identities')).map((i) => i.id);
    return !ids.includes(pod2.endpoint.identity);
  }, 15_000);
  const n3 = await TestNode.start(t, options('n3', '192.168.100.3'));
  const n3Record = (await n3.client.get<NodeRecord[]>('/v1/nodes')).find((n) => n.name === 'n3');
  assert.equal(n3Record?.podCidr, n2Record.podCidr, "n3 gets n2's pod CIDR, free again");
  const again = await apiError(n1.client.call('DELETE', '/v1/nodes/n2'));
  assert.equal(again.status, 404, 'deleting it twice: nothing left');
});
