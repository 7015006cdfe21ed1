/**
 * Namespace labels end to end: a Kubernetes NetworkPolicy's namespaceSelector matches the pods of
 * the namespaces whose labels it names, labels set with `ciliate namespace label` move those pods
 * to new identities, and every namespace carries kubernetes.io/metadata.name as Kubernetes sets it.
 * Real agent, real pods, real traffic.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TestNode, echoServer, probeTcp, cli } from './support/cluster.ts';


// In namespace prod: the database takes 5432 from namespaces labelled team=payments, and 6379
// from the namespace named dev (by the label Kubernetes gives every namespace).
const POLICY = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: db
  namespace: prod
spec:
  podSelector:
    matchLabels:
      app: db
  ingress:
    - from:
        - namespaceSelector:
            matchLabels:
              team: payments
      ports:
        - port: 5432
    - from:
        - namespaceSelector:
            matchLabels:
              kubernetes.io/metadata.name: dev
      ports:
        - port: 6379
`;

test('namespaceSelector matches the pods of labelled namespaces; relabelling a namespace moves its pods to new identities', async (t) => {
  const node = await TestNode.start(t);
  const db = await node.addPod(t, 'db', { app: 'db' }, 'prod');
  const prodWeb = await node.addPod(t, 'prod-web', { app: 'web' }, 'prod');
  const devWeb = await node.addPod(t, 'dev-web', { app: 'web' }, 'dev');
  await echoServer(t, db.netns, 5432, 6379);
  const [pg, redis] = [`${db.endpoint.ipv4}:5432`, `${db.endpoint.ipv4}:6379`];

  const dir = mkdtempSync(join(tmpdir(), 'ciliate-ns-test-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'db.yaml'), POLICY);
  const imported = await cli(node, 'policy', 'import', join(dir, 'db.yaml'));
  assert.equal(imported.code, 0, imported.stderr);
  assert.equal((await cli(node, 'policy', 'wait', /revision: (\d+)/.exec(imported.stdout)![1])).code, 0);

  // No namespace has team=payments yet; dev is dev by name alone.
  assert.deepEqual(await probeTcp(devWeb.netns, [pg, redis]), { [pg]: false, [redis]: true }, 'dev before labels: 6379 by its name label only');
  assert.deepEqual(await probeTcp(prodWeb.netns, [pg, redis]), { [pg]: false, [redis]: false }, 'prod: neither (a KNP peer with only a namespaceSelector is no same-namespace allow)');

  const labelled = await cli(node, 'namespace', 'label', 'dev', 'team=payments', '-o', 'json');
  assert.equal(labelled.code, 0, labelled.stderr);
  assert.deepEqual(JSON.parse(labelled.stdout), { name: 'dev', labels: { team: 'payments' } });
  const listed = JSON.parse((await cli(node, 'namespace', 'list', '-o', 'json')).stdout) as { name: string }[];
  assert.deepEqual(listed.map((ns) => ns.name), ['dev']);

  const moved = JSON.parse((await cli(node, 'endpoint', 'get', String(devWeb.endpoint.id), '-o', 'json')).stdout) as { identity: number };
  assert.notEqual(moved.identity, devWeb.endpoint.identity, 'the dev pod has a new identity');
  const identity = JSON.parse((await cli(node, 'identity', 'get', String(moved.identity), '-o', 'json')).stdout) as { labels: string[] };
  assert.ok(identity.labels.includes('k8s:io.cilium.k8s.namespace.labels.team=payments'), identity.labels.join(' '));
  assert.ok(identity.labels.includes('k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=dev'), identity.labels.join(' '));
  const prodIdentity = JSON.parse((await cli(node, 'endpoint', 'get', String(prodWeb.endpoint.id), '-o', 'json')).stdout) as { identity: number };
  assert.equal(prodIdentity.identity, prodWeb.endpoint.identity, 'pods of other namespaces keep theirs');

  assert.deepEqual(await probeTcp(devWeb.netns, [pg, redis]), { [pg]: true, [redis]: true }, 'dev labelled team=payments: both');
  assert.deepEqual(await probeTcp(prodWeb.netns, [pg, redis]), { [pg]: false, [redis]: false }, 'prod still neither');

  // Bad input changes nothing.
  const badName = await cli(node, 'namespace', 'label', 'Not_A_Name', 'team=payments');
  assert.notEqual(badName.code, 0);
  assert.match(badName.stderr, /namespace "Not_A_Name": must be a DNS-1123 label/);
  const badLabel = await cli(node, 'namespace', 'label', 'dev', 'team=pay ments');
  assert.notEqual(badLabel.code, 0);
  assert.match(badLabel.stderr, /namespace dev: .*team/);
  const renamed = await cli(node, 'namespace', 'label', 'dev', 'kubernetes.io/metadata.name=prod');
  assert.match(renamed.stderr, /always the namespace's name/);
  assert.deepEqual(await probeTcp(devWeb.netns, [pg]), { [pg]: true }, 'dev keeps its labels after rejected changes');

  // Clearing the labels takes the access away again.
  assert.equal((await cli(node, 'namespace', 'label', 'dev')).code, 0);
  assert.deepEqual(await probeTcp(devWeb.netns, [pg, redis]), { [pg]: false, [redis]: true }, 'dev without labels: back to 6379 only');
  assert.deepEqual(JSON.parse((await cli(node, 'namespace', 'list', '-o', 'json')).stdout), []);
});
