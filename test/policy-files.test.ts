/**
 * Real-world policy files through the running agent: `ciliate policy import` and `POST
 * /v1/policies` import the policies of an application manifest and list what they skipped, say
 * what they changed, and refuse a file with a malformed policy whole.
 * @module
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { TestNode, cli } from './support/cluster.ts';
import type { ImportResult } from '../src/agent/index.ts';

const REAL_WORLD = join(import.meta.dirname, '..', 'src', 'policy', 'testdata', 'real-world');

test('policy import of real-world files: other kinds skipped and listed, namespaces dropped with a warning, a bad policy refuses the file', async (t) => {
  const node = await TestNode.start(t);
  const app = join(REAL_WORLD, 'app-with-policies.yaml');
  const imported = await cli(node, 'policy', 'import', app);
  assert.equal(imported.code, 0, imported.stderr);
  assert.equal(
    imported.stdout.replace(/revision: \d+/, 'revision: N'),
    `${app}: imported CiliumNetworkPolicy/shop/web-from-frontend, NetworkPolicy/shop/web-default-deny-egress\n` +
      `${app}: skipped ConfigMap shop/web-config (v1), document 1: not a policy\n` +
      `${app}: skipped Deployment shop/web (apps/v1), document 2: not a policy\n` +
      `${app}: skipped Service shop/web (v1), document 3: not a policy\n` +
      'revision: N\n',
  );

  const ccnp = join(REAL_WORLD, 'ccnp-with-namespace.yaml');
  const api = await node.client.call<ImportResult>('POST', '/v1/policies', { yaml: readFileSync(ccnp, 'utf8'), file: 'ccnp-with-namespace.yaml' });
  assert.deepEqual(api.rules, ['CiliumClusterwideNetworkPolicy/allow-dns-everywhere']);
  assert.deepEqual(api.skipped, []);
  assert.deepEqual(
    api.warnings.map((w) => `${w.path}: ${w.reason}`),
    ['metadata.namespace: CiliumClusterwideNetworkPolicy is cluster-scoped: namespace "kube-system" is ignored (as Kubernetes drops it); remove metadata.namespace'],
  );
  const viaCli = await cli(node, 'policy', 'import', ccnp);
  assert.equal(viaCli.code, 0, viaCli.stderr);
  assert.match(viaCli.stderr, /^warning: .*ccnp-with-namespace\.yaml: document 1 \(CiliumClusterwideNetworkPolicy allow-dns-everywhere\): metadata\.namespace: .* is ignored/m);

  const appJson = JSON.parse((await cli(node, 'policy', 'import', app, '-o', 'json')).stdout) as Array<ImportResult & { file: string }>;
  assert.deepEqual(appJson[0].skipped.map((s) => `${s.document} ${s.kind} ${s.name}`), ['1 ConfigMap shop/web-config', '2 Deployment shop/web', '3 Service shop/web']);

  const keys = async () => (JSON.parse((await cli(node, 'policy', 'list', '-o', 'json')).stdout) as { key: string }[]).map((r) => r.key).sort();
  const before = await keys();
  const bad = await cli(node, 'policy', 'import', join(REAL_WORLD, 'app-with-bad-policy.yaml'));
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /app-with-bad-policy\.yaml: document 4 \(CiliumNetworkPolicy shop\/web-from-frontend\): spec\.ingress\[0\]\.toPorts\[0\]\.ports\[0\]\.port: must be 1–65535/);
  assert.deepEqual(await keys(), before, 'nothing of the refused file was applied');
  assert.deepEqual(before, ['CiliumClusterwideNetworkPolicy/allow-dns-everywhere', 'CiliumNetworkPolicy/shop/web-from-frontend', 'NetworkPolicy/shop/web-default-deny-egress']);

  const mistakes = await cli(node, 'policy', 'import', join(REAL_WORLD, 'common-mistakes.yaml'));
  assert.notEqual(mistakes.code, 0);
  assert.match(mistakes.stderr, /spec\.podSelector: unknown field "podSelector": a Cilium policy selects its endpoints with endpointSelector/);
  assert.match(mistakes.stderr, /apiVersion: is required \(found "apiversion": field names are case-sensitive; write "apiVersion"\)/);
});
