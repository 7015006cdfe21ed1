/**
 * The policy manager's revisions: store revisions that mean the same on every node. Two "nodes"
 * (policy manager, identity allocator, real kernel policy maps and ipcache under a bpffs root of
 * their own) share one store; an import on one answers with its transaction's revision, and the
 * other enforces that revision — its rules, the identities they select, its endpoints' maps —
 * once `waitFor` returns. Each node publishes the revision it enforces, and a cluster wait
 * returns once every node registered in the store has.
 * @module
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { pino } from 'pino';
import { EndpointDatapath, EndpointPolicyMaps } from '../datapath/index.ts';
import { IdentityAllocator, podLabels } from '../identity/index.ts';
import { MemoryStateStore, type StateStore } from '../store/index.ts';
import { Ipcache } from './ipcache.ts';
import { PolicyManager, watchByRevision } from './policy-manager.ts';
import { describeLagging, POLICY_STATUS_PREFIX, PolicyStatus, type PolicyStatusRecord } from './policy-status.ts';

const log = pino({ level: 'silent' });

/** A rule letting org=empire reach the deathstar on `port` (or each of several). */
const deathstarRule = (name: string, port: number | number[]) => `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: { name: ${name} }
spec:
  endpointSelector: { matchLabels: { org: empire, class: deathstar } }
  ingress:
  - fromEndpoints: [{ matchLabels: { org: empire } }]
    toPorts: [{ ports: [${[port].flat().map((p) => `{ port: "${p}", protocol: TCP }`).join(', ')}] }]
`;
/** Two documents: one transaction, one revision. */
const RULES = `${deathstarRule('rule1', 80)}---${deathstarRule('rule2', 443)}`;

interface Node {
  policy: PolicyManager;
  ipcache: Ipcache;
  identities: IdentityAllocator;
  maps: EndpointPolicyMaps;
}

async function startNode(t: TestContext, store: StateStore, nodeName: string, options: { maxEntries?: number; refreshIntervalMs?: number } = {}): Promise<Node> {
  const bpfRoot = `/sys/fs/bpf/ciliate-test-pm-${randomBytes(3).toString('hex')}`;
  t.after(() => rmSync(bpfRoot, { recursive: true, force: true }));
  const datapath = new EndpointDatapath(bpfRoot, log);
  t.after(() => datapath.close());
  const maps = new EndpointPolicyMaps(bpfRoot, { maxEntries: options.maxEntries });
  t.after(() => maps.close());
  const ipcache = new Ipcache(datapath.ipcache, log);
  ipcache.start();
  t.after(() => ipcache.stop());
  const identities = new IdentityAllocator({ store, nodeName });
  await identities.start();
  t.after(() => identities.stop());
  const policy = new PolicyManager({ store, identities, ipcache, maps, log, refreshIntervalMs: options.refreshIntervalMs });
  await policy.start();
  t.after(() => policy.stop());
  return { policy, identities, maps, ipcache };
}

function sharedStore(t: TestContext): MemoryStateStore {
  const store = new MemoryStateStore();
  t.after(() => store.close());
  return store;
}

const deathstarLabels = podLabels({ namespace: 'default', labels: { org: 'empire', class: 'deathstar' } });

/** Ingress ports the endpoint's kernel map allows from `identity`. */
function allowedPorts(node: Node, endpointId: number, identity: number): number[] {
  return node.maps
    .entries(endpointId)
    .filter((e) => e.key.identity === identity && e.key.direction === 0 && !e.deny)
    .map((e) => e.key.port)
    .sort((a, b) => a - b);
}

test('a revision an import returned on one node is enforced on another once waitFor returns: rules, identities, maps', async (t) => {
  const store = sharedStore(t);
  const [n1, n2] = [await startNode(t, store, 'n1'), await startNode(t, store, 'n2')];
  await n2.policy.addEndpoint(7, deathstarLabels);
  const tiefighter = await n1.identities.allocate(podLabels({ namespace: 'default', labels: { org: 'empire', class: 'tiefighter' } }));

  const imported = await n1.policy.import(RULES, 'inline.yaml');
  assert.deepEqual(imported.rules, ['CiliumNetworkPolicy/default/rule1', 'CiliumNetworkPolicy/default/rule2']);
  const written = await store.get('policies/CiliumNetworkPolicy/default/rule2');
  assert.equal(imported.revision, written?.modRevision, 'the revision is the store revision of the import');
  assert.equal(n1.policy.revision, imported.revision);

  assert.equal(await n2.policy.waitFor(imported.revision, 5000), true);
  assert.ok(n2.policy.revision >= imported.revision);
  assert.deepEqual(n2.policy.list().map((r) => r.key), imported.rules, 'both documents of the transaction are applied');
  assert.ok(n2.identities.get(tiefighter.id), 'the identity allocated before the import is known');
  assert.deepEqual(allowedPorts(n2, 7, tiefighter.id), [80, 443], 'the map holds both rules for the tiefighter');
  assert.ok(n2.policy.enforcedRevision(7)! >= imported.revision);
  assert.equal(n2.policy.enforcedRevision(8), undefined, 'an endpoint policy does not know has no revision');

  // And back: a delete on the other node, waited for on the first.
  await n1.policy.addEndpoint(3, deathstarLabels);
  const deleted = await n2.policy.delete('CiliumNetworkPolicy/default/rule2');
  assert.deepEqual(deleted.deleted, ['CiliumNetworkPolicy/default/rule2']);
  assert.equal(await n1.policy.waitFor(deleted.revision, 5000), true);
  assert.deepEqual(n1.policy.list().map((r) => r.key), ['CiliumNetworkPolicy/default/rule1']);
  assert.deepEqual(allowedPorts(n1, 3, tiefighter.id), [80]);
  assert.deepEqual(Object.fromEntries(n1.policy.enforcedRevisions()), { 3: n1.policy.revision });
});

test('a revision past the last policy change is understood through a store listing; one not yet written times out', async (t) => {
  const store = sharedStore(t);
  const [n1, n2] = [await startNode(t, store, 'n1'), await startNode(t, store, 'n2')];
  await n2.policy.addEndpoint(1, deathstarLabels);
  const { revision: imported } = await n1.policy.import(RULES, 'inline.yaml');
  // Writes that are no policy change (nodes, endpoints) raise the store revision too.
  for (let i = 0; i < 3; i++) await store.put(`nodes/other-${i}`, { i });
  const later = store.revision;
  assert.ok(later > imported);

  assert.equal(await n2.policy.waitFor(later, 5000), true);
  assert.equal(n2.policy.revision, later, 'a listing equal to what was applied moves the revision on');
  assert.equal(n2.policy.enforcedRevision(1), later);
  assert.equal(await n1.policy.waitFor(later, 5000), true, 'the importing node too');

  const began = Date.now();
  assert.equal(await n2.policy.waitFor(store.revision + 5, 300), false);
  assert.ok(Date.now() - began >= 290, 'waited for the timeout');
  const abort = new AbortController();
  abort.abort();
  assert.equal(await n2.policy.waitFor(store.revision + 5, 60_000, abort.signal), false, 'an aborted wait ends');
});

test('watchByRevision hands out one transaction as one batch, also when several are queued', async (t) => {
  const store = sharedStore(t);
  const abort = new AbortController();
  const batches = watchByRevision(store.watch('p/', { afterRevision: 0, signal: abort.signal }));
  await store.transaction([
    { type: 'put', key: 'p/a', value: 1 },
    { type: 'put', key: 'p/b', value: 2 },
    { type: 'put', key: 'other', value: 0 },
  ]);
  await store.put('p/c', 3);
  await store.transaction([
    { type: 'delete', key: 'p/a' },
    { type: 'put', key: 'p/d', value: 4 },
  ]);
  const shape = (batch: { type: string; key: string; revision: number }[]) => batch.map((e) => `${e.revision}:${e.type}:${e.key}`);
  assert.deepEqual(shape((await batches.next()).value!), ['1:put:p/a', '1:put:p/b']);
  assert.deepEqual(shape((await batches.next()).value!), ['2:put:p/c']);
  assert.deepEqual(shape((await batches.next()).value!), ['3:delete:p/a', '3:put:p/d']);
  // Nothing queued: the next batch is the next transaction, whenever it comes.
  const next = batches.next();
  await store.put('p/e', 5);
  assert.deepEqual(shape((await next).value!), ['4:put:p/e']);
  abort.abort();
  assert.equal((await batches.next()).done, true);
});

/** A node registered in the store (as the agent does) that publishes its policy status. */
async function startPublishingNode(t: TestContext, store: StateStore, nodeName: string): Promise<Node & { status: PolicyStatus }> {
  const startedAt = new Date().toISOString();
  await store.put(`nodes/${nodeName}`, { name: nodeName, startedAt });
  const node = await startNode(t, store, nodeName);
  const status = new PolicyStatus({ store, nodeName, startedAt, policy: node.policy, log });
  status.start();
  t.after(() => status.stop());
  return { ...node, status };
}

/** Every policy status write from now on, as `node@revision`. */
function statusWrites(t: TestContext, store: StateStore): string[] {
  const writes: string[] = [];
  const abort = new AbortController();
  t.after(() => abort.abort());
  void (async () => {
    for await (const event of store.watch<PolicyStatusRecord>(POLICY_STATUS_PREFIX, { signal: abort.signal })) {
      if (event.type === 'put') writes.push(`${event.key.slice(POLICY_STATUS_PREFIX.length)}@${event.value.revision}`);
    }
  })();
  return writes;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

test('each node publishes the revision it enforces, once per change; a cluster wait returns once every registered node enforces it', async (t) => {
  const store = sharedStore(t);
  const writes = statusWrites(t, store);
  const [n1, n2] = [await startPublishingNode(t, store, 'n1'), await startPublishingNode(t, store, 'n2')];
  await n2.policy.addEndpoint(7, deathstarLabels);

  const { revision } = await n1.policy.import(RULES, 'inline.yaml');
  const waited = await n1.status.waitForCluster(revision, 5000);
  assert.equal(waited.enforced, true, describeLagging(waited.nodes, revision));
  assert.deepEqual(waited.nodes.map((n) => n.node), ['n1', 'n2']);
  assert.ok(waited.nodes.every((n) => n.revision! >= revision), JSON.stringify(waited.nodes));
  assert.ok(n2.policy.enforcedRevision(7)! >= revision, 'n2 enforces it on its endpoint');

  // A burst of changes: coalesced, and nothing is written again for a value already published.
  const before = writes.length;
  let last = 0;
  for (let i = 0; i < 20; i++) last = (await n1.policy.import(deathstarRule(`burst${i}`, 1000 + i), 'burst.yaml')).revision;
  assert.equal((await n2.status.waitForCluster(last, 5000)).enforced, true);
  await sleep(300);
  const burst = writes.slice(before);
  assert.ok(burst.length <= 10, `20 changes, ${burst.length} writes: ${burst.join(' ')}`);
  t.diagnostic(`20 changes: ${burst.join(' ')}`);
  for (const node of ['n1', 'n2']) {
    const values = burst.filter((w) => w.startsWith(`${node}@`)).map((w) => Number(w.split('@')[1]));
    assert.deepEqual(values, [...new Set(values)].sort((a, b) => a - b), `${node} writes each value once, rising: ${values.join(' ')}`);
    assert.ok(values.at(-1)! >= last, `${node} published the last change`);
  }
  const quiet = writes.length;
  await sleep(300);
  assert.equal(writes.length, quiet, 'no change, no write');
});

test('a cluster wait names the nodes that lag; a node whose record is deleted stops counting, also mid-wait', async (t) => {
  const store = sharedStore(t);
  const n1 = await startPublishingNode(t, store, 'n1');
  await startPublishingNode(t, store, 'n2');
  const { revision } = await n1.policy.import(RULES, 'inline.yaml');
  // n3 has a record but no agent, and the status an earlier run of its agent left is not its.
  await store.put('nodes/n3', { name: 'n3', startedAt: '2026-01-01T00:00:00.000Z' });
  await store.put(`${POLICY_STATUS_PREFIX}n3`, { revision: revision + 1000, startedAt: '2025-01-01T00:00:00.000Z' });

  const timedOut = await n1.status.waitForCluster(revision, 300);
  assert.equal(timedOut.enforced, false);
  assert.equal(describeLagging(timedOut.nodes, revision), 'n3 (no revision published)');

  const waiting = n1.status.waitForCluster(revision, 10_000);
  await sleep(100);
  const began = Date.now();
  await store.delete('nodes/n3');
  const waited = await waiting;
  assert.equal(waited.enforced, true);
  assert.deepEqual(waited.nodes.map((n) => n.node), ['n1', 'n2']);
  assert.ok(Date.now() - began < 1000, 'the deletion ends the wait at once');
});

test('a revision past the last policy change: the waiter asks, and the other node catches up and publishes it', async (t) => {
  const store = sharedStore(t);
  const n1 = await startPublishingNode(t, store, 'n1');
  const n2 = await startPublishingNode(t, store, 'n2');
  const { revision } = await n1.policy.import(RULES, 'inline.yaml');
  assert.equal((await n1.status.waitForCluster(revision, 5000)).enforced, true);
  // Writes that change no policy and no identity: no node moves by itself.
  for (let i = 0; i < 3; i++) await store.put(`endpoints/elsewhere/${i}`, { i });
  const later = store.revision;
  await sleep(200);
  assert.ok(n2.status.published! < later, 'n2 has not published the later revision by itself');

  const waited = await n1.status.waitForCluster(later, 5000);
  assert.equal(waited.enforced, true, describeLagging(waited.nodes, later));
  assert.equal((await store.get<{ revision: number }>('policy-wait/n1'))?.value.revision, later, 'n1 asked for the revision');
  assert.ok(n2.status.published! >= later, `n2 published ${n2.status.published}`);
});

async function until(what: string, check: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

test('a policy map write that fails (map full) is retried and reported, the endpoint lags, and it recovers once the policy shrinks', async (t) => {
  const store = sharedStore(t);
  // 8 entries: the deathstar's default-deny wildcards and a couple of ports fit, twelve ports do not.
  const node = await startNode(t, store, 'n1', { maxEntries: 8 });
  await node.policy.addEndpoint(7, deathstarLabels);
  const tiefighter = await node.identities.allocate(podLabels({ namespace: 'default', labels: { org: 'empire', class: 'tiefighter' } }));
  const small = await node.policy.import(deathstarRule('small', 80), 'small.yaml');
  assert.equal(node.policy.health().degraded, false);
  assert.equal(node.policy.enforcedRevision(7), small.revision);

  const big = await node.policy.import(
    deathstarRule('big', Array.from({ length: 12 }, (_, i) => 8000 + i)),
    'big.yaml',
  );
  await until('the policy reconciler to report itself degraded', () => node.policy.health().degraded);
  const health = node.policy.health();
  assert.match(health.reason ?? '', /endpoint-policy: 7 failed \d+ times/, 'the failing endpoint is named');
  assert.ok(health.errors >= 1 && health.pending >= 1, 'the failed write is pending, not forgotten');
  assert.ok(health.lastError, 'the last error is reported');
  assert.ok(node.policy.enforcedRevision(7)! < big.revision, 'the endpoint does not claim the revision it could not write');
  assert.deepEqual(node.policy.lagging(big.revision), [7]);
  assert.equal(node.policy.enforces(big.revision), false);

  const shrunk = await node.policy.delete('CiliumNetworkPolicy/default/big');
  await until('the reconciler to recover', () => !node.policy.health().degraded && node.policy.health().pending === 0);
  assert.equal(await node.policy.waitFor(shrunk.revision, 5000), true, 'the endpoint catches up');
  assert.equal(node.policy.enforcedRevision(7), node.policy.revision);
  assert.deepEqual(node.policy.lagging(shrunk.revision), []);
  assert.deepEqual(allowedPorts(node, 7, tiefighter.id), [80], 'the map holds exactly the remaining policy');
  assert.equal(node.policy.health().errors, 0);
});

test('a policy map entry changed or deleted behind the agent\'s back is repaired at the next refresh and counted', async (t) => {
  const store = sharedStore(t);
  const node = await startNode(t, store, 'n1', { refreshIntervalMs: 50 });
  await node.policy.addEndpoint(7, deathstarLabels);
  const tiefighter = await node.identities.allocate(podLabels({ namespace: 'default', labels: { org: 'empire', class: 'tiefighter' } }));
  await node.policy.import(RULES, 'inline.yaml');
  assert.deepEqual(allowedPorts(node, 7, tiefighter.id), [80, 443]);
  const port80 = node.maps.entries(7).find((e) => e.key.identity === tiefighter.id && e.key.port === 80)!;
  // Behind the policy manager's back: port 80 turned into a deny, port 443 gone, a stray allow added.
  node.maps.apply(7, {
    upserts: [{ ...port80, deny: true, ruleKeys: [] }, { key: { ...port80.key, port: 22 }, deny: false, cookie: 0, ruleKeys: [] }],
    deletes: [{ ...port80.key, port: 443 }],
  });
  assert.deepEqual(allowedPorts(node, 7, tiefighter.id), [22]);
  await until('the drift to be repaired', () => JSON.stringify(allowedPorts(node, 7, tiefighter.id)) === '[80,443]');
  assert.ok(node.maps.entries(7).every((e) => !(e.key.identity === tiefighter.id && e.deny)), 'the deny is gone');
  assert.ok(node.policy.health().repairs >= 1);
  assert.equal(node.policy.health().degraded, false);
});

test('a CIDR rule of a pod\'s or node\'s own /32 never relabels it in the ipcache, nor deletes its entry when the rule goes', async (t) => {
  const store = sharedStore(t);
  const node = await startNode(t, store, 'n1');
  node.ipcache.upsert({ prefix: '10.244.0.9/32', identity: 4242, source: 'local-endpoint' });
  node.ipcache.upsert({ prefix: '192.0.2.10/32', identity: 6, source: 'remote-node' });
  const yaml = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: { name: cidrs }
spec:
  endpointSelector: {}
  egress:
  - toCIDR: [10.244.0.9/32, 192.0.2.10/32, 198.51.100.1/32]
`;
  await node.policy.import(yaml, 'inline.yaml');
  const entry = (prefix: string) => node.ipcache.table.get(prefix);
  assert.deepEqual([entry('10.244.0.9/32')?.source, entry('10.244.0.9/32')?.identity], ['local-endpoint', 4242]);
  assert.deepEqual([entry('192.0.2.10/32')?.source, entry('192.0.2.10/32')?.identity], ['remote-node', 6]);
  assert.equal(entry('198.51.100.1/32')?.source, 'cidr-policy', 'an address nobody has gets the CIDR identity');
  await node.policy.delete('CiliumNetworkPolicy/default/cidrs');
  assert.equal(entry('10.244.0.9/32')?.identity, 4242, 'the pod keeps its entry');
  assert.equal(entry('192.0.2.10/32')?.identity, 6, 'the node keeps its entry');
  assert.equal(entry('198.51.100.1/32'), undefined);
});

test('named ports: ingress by the endpoint\'s own ports as added; egress by every endpoint record in the store, other nodes\' included, as they come and go', async (t) => {
  const store = sharedStore(t);
  const node = await startNode(t, store, 'n1');
  const tiefighterLabels = podLabels({ namespace: 'default', labels: { org: 'empire', class: 'tiefighter' } });
  const tiefighter = await node.identities.allocate(tiefighterLabels);
  const deathstar = await node.identities.allocate(deathstarLabels);
  await node.policy.import(
    `${deathstarRule('named-in', 80).replace('port: "80"', 'port: http')}---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: { name: named-out }
spec:
  endpointSelector: { matchLabels: { class: tiefighter } }
  egress:
  - toEndpoints: [{ matchLabels: { class: deathstar } }]
    toPorts: [{ ports: [{ port: http, protocol: TCP }] }]
`,
    'named.yaml',
  );
  await node.policy.addEndpoint(7, deathstarLabels, [{ name: 'http', port: 8080, protocol: 'TCP' }]);
  await node.policy.addEndpoint(8, tiefighterLabels);
  assert.deepEqual(allowedPorts(node, 7, tiefighter.id), [8080], 'ingress: the deathstar\'s own http');
  const egressPorts = () =>
    node.maps
      .entries(8)
      .filter((e) => e.key.identity === deathstar.id && e.key.direction === 1 && !e.deny)
      .map((e) => e.key.port)
      .sort((a, b) => a - b);
  assert.deepEqual(egressPorts(), [8080], 'egress: the local deathstar\'s http, known from its add');
  const until = async (want: number[]) => {
    for (let i = 0; i < 200 && JSON.stringify(egressPorts()) !== JSON.stringify(want); i++) await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(egressPorts(), want);
  };
  // Another node's endpoint, as its agent records it.
  await store.put('endpoints/n2/c1/eth0', { id: 3, ipv4: '10.244.2.3', identity: deathstar.id, labels: { org: 'empire', class: 'deathstar' }, ports: [{ name: 'http', port: 9090, protocol: 'TCP' }] });
  await until([8080, 9090]);
  // Malformed ports in a record are ignored, not half taken.
  await store.put('endpoints/n2/c2/eth0', { id: 4, ipv4: '10.244.2.4', identity: deathstar.id, labels: {}, ports: [{ name: 'HTTP', port: 7070 }] });
  await store.delete('endpoints/n2/c1/eth0');
  await until([8080]);
  node.policy.removeEndpoint(7);
  assert.deepEqual(egressPorts(), [], 'no endpoint has the name any more: nothing, not every port');
});
