/**
 * Services on a running agent, as a user drives them with the CLI: a service selects pods by
 * labels and follows them as they come and go, bad definitions are refused naming the field and
 * write nothing, and the service CIDR may not overlap the pods'.
 * @module
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TestNode, cli } from './support/cluster.ts';

interface View {
  namespace: string;
  name: string;
  clusterIP: string;
  frontends: { address: string; kind: string; backends: string[] }[];
}

async function ok(node: TestNode, ...args: string[]): Promise<string> {
  const result = await cli(node, ...args);
  assert.equal(result.code, 0, `ciliate ${args.join(' ')} exited ${result.code}: ${result.stderr}`);
  return result.stdout;
}

test('a service selects the pods of its namespace by label and follows them', async (t) => {
  const node = await TestNode.start(t, { nodeName: 'svc1' });
  const a = await node.addPod(t, undefined, { app: 'web' });
  await node.addPod(t, undefined, { app: 'db' });
  const added = JSON.parse(await ok(node, 'service', 'add', 'web', '--selector', 'app=web', '--port', 'http=80:8080/TCP', '--port', 'dns=53/udp', '-o', 'json')) as View;
  assert.match(added.clusterIP, /^10\.96\./, 'allocated from the default service CIDR');
  const frontend = (view: View, address: string) => view.frontends.find((f) => f.address === address);
  assert.deepEqual(frontend(added, `${added.clusterIP}:80/TCP`)?.backends, [`${a.endpoint.ipv4}:8080`]);
  assert.deepEqual(frontend(added, `${added.clusterIP}:53/UDP`)?.backends, [`${a.endpoint.ipv4}:53`]);

  // A new pod with the label joins; the table output names the service and its ClusterIP.
  const b = await node.addPod(t, undefined, { app: 'web' });
  const got = JSON.parse(await ok(node, 'service', 'get', 'default/web', '-o', 'json')) as View;
  assert.deepEqual(new Set(frontend(got, `${added.clusterIP}:80/TCP`)?.backends), new Set([`${a.endpoint.ipv4}:8080`, `${b.endpoint.ipv4}:8080`]));
  const table = await ok(node, 'service', 'list');
  assert.match(table, new RegExp(`default/web\\s+ClusterIP\\s+${added.clusterIP.replaceAll('.', '\\.')}\\s+http=80/TCP→8080,dns=53/UDP→53\\s+2`));

  // A pod deleted leaves the backends.
  await node.client.call('DELETE', `/v1/endpoints/${a.endpoint.containerId}/eth0`);
  const after = JSON.parse(await ok(node, 'service', 'get', 'web', '-o', 'json')) as View;
  assert.deepEqual(frontend(after, `${added.clusterIP}:80/TCP`)?.backends, [`${b.endpoint.ipv4}:8080`]);

  assert.match(await ok(node, 'service', 'delete', 'web'), /deleted default\/web/);
  assert.equal((await ok(node, 'service', 'list')).trim(), '(no services)');
  const gone = await cli(node, 'service', 'get', 'web');
  assert.equal(gone.code, 1);
  assert.match(gone.stderr, /no service default\/web/);
});

test('bad service definitions are refused with the field and reason, and nothing is applied', async (t) => {
  const node = await TestNode.start(t, { nodeName: 'svc2' });
  await ok(node, 'service', 'add', 'web', '--cluster-ip', '10.96.0.10', '--port', '80');
  const before = await ok(node, 'service', 'list', '-o', 'json');
  const refused = async (pattern: RegExp, ...args: string[]) => {
    const result = await cli(node, 'service', 'add', ...args);
    assert.equal(result.code, 1, `service add ${args.join(' ')} must fail`);
    assert.match(result.stderr, pattern);
    assert.equal(await ok(node, 'service', 'list', '-o', 'json'), before, 'nothing was applied');
  };
  await refused(/field ports\.0\.port: must be 1-65535/, 'bad1', '--port', '70000');
  await refused(/field ports\.0\.protocol: must be one of TCP, UDP, SCTP/, 'bad2', '--port', '80/ICMP');
  await refused(/field selector\.app: label value "a b"/, 'bad3', '--port', '80', '--selector', 'app=a b');
  await refused(/field clusterIP: 10\.96\.0\.10 belongs to service default\/web/, 'bad4', '--port', '80', '--cluster-ip', '10.96.0.10');
  await refused(/field ports\.1\.name: every port needs a name/, 'bad5', '--port', 'a=80', '--port', '81');
  await refused(/default\/web: it exists already/, 'web', '--port', '81');
  // Paths are checked like bodies: a namespace that is no DNS label never reaches the store.
  await assert.rejects(node.client.get('/v1/services/a%2F..%2Fb/web'), /service: field namespace: must be a DNS label/);
});

test('the agent refuses a service CIDR that overlaps the pods\'', async (t) => {
  await assert.rejects(TestNode.start(t, { nodeName: 'svc3', extraArgs: ['--service-cidr', '10.244.128.0/20'] }), /serviceCidr 10\.244\.128\.0\/20 overlaps clusterCidr 10\.244\.0\.0\/16/);
});

test('service import creates the Services of a Kubernetes manifest, or none when any document is bad', async (t) => {
  const node = await TestNode.start(t, { nodeName: 'svc4' });
  const dir = mkdtempSync(join(tmpdir(), 'ciliate-svc-test-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const doc = (name: string, port: number) => `apiVersion: v1\nkind: Service\nmetadata: { name: ${name}, namespace: shop }\nspec:\n  selector: { app: ${name} }\n  ports: [{ port: ${port}, targetPort: 8080 }]\n`;
  writeFileSync(join(dir, 'bad.yaml'), `${doc('web', 80)}---\n${doc('api', 70000)}`);
  const bad = await cli(node, 'service', 'import', join(dir, 'bad.yaml'));
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /bad\.yaml: document 2: spec\.ports\[0\]\.port: must be 1-65535; nothing was created/);
  assert.equal((await ok(node, 'service', 'list')).trim(), '(no services)', 'the good document was not created either');

  writeFileSync(join(dir, 'good.yaml'), `${doc('web', 80)}---\n${doc('api', 81)}`);
  assert.match(await ok(node, 'service', 'import', join(dir, 'good.yaml')), /good\.yaml: created shop\/web \(10\.96\.\d+\.\d+\), shop\/api \(10\.96\.\d+\.\d+\)/);
  const web = JSON.parse(await ok(node, 'service', 'get', 'shop/web', '-o', 'json')) as View & { ports: { port: number; targetPort: number }[] };
  assert.deepEqual(web.ports.map((p) => [p.port, p.targetPort]), [[80, 8080]]);
});
