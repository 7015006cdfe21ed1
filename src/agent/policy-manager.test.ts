/**
 * The policy manager's revisions: store revisions that mean the same on every node. Two "nodes"
 * (policy manager, identity allocator, real kernel policy maps and ipcache under a bpffs root of
 * their own) share one store; an import on one answers with its transaction's revision, and the
 * other enforces that revision — its rules, the identities they select, its endpoints' maps —
 * once `waitFor` returns.
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

const log = pino({ level: 'silent' });

/** A rule letting org=empire reach the deathstar on `port`. */
const deathstarRule = (name: string, port: number) => `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: { name: ${name} }
spec:
  endpointSelector: { matchLabels: { org: empire, class: deathstar } }
  ingress:
  - fromEndpoints: [{ matchLabels: { org: empire } }]
    toPorts: [{ ports: [{ port: "${port}", protocol: TCP }] }]
`;
/** Two documents: one transaction, one revision. */
const RULES = `${deathstarRule('rule1', 80)}---${deathstarRule('rule2', 443)}`;

interface Node {
  policy: PolicyManager;
  identities: IdentityAllocator;
  maps: EndpointPolicyMaps;
}

async function startNode(t: TestContext, store: StateStore, nodeName: string): Promise<Node> {
  const bpfRoot = `/sys/fs/bpf/ciliate-test-pm-${randomBytes(3).toString('hex')}`;
  t.after(() => rmSync(bpfRoot, { recursive: true, force: true }));
  const datapath = new EndpointDatapath(bpfRoot, log);
  t.after(() => datapath.close());
  const maps = new EndpointPolicyMaps(bpfRoot);
  t.after(() => maps.close());
  const ipcache = new Ipcache(datapath.ipcache, log);
  ipcache.start();
  t.after(() => ipcache.stop());
  const identities = new IdentityAllocator({ store, nodeName });
  await identities.start();
  t.after(() => identities.stop());
  const policy = new PolicyManager({ store, identities, ipcache, maps, log });
  await policy.start();
  t.after(() => policy.stop());
  return { policy, identities, maps };
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
