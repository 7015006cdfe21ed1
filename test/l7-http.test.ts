import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { parsePrometheusText, sampleValue } from '../src/metrics/text-format-testing.ts';
import { proxyIngressMark } from '../src/proxy/index.ts';
import { TestNode, Underlay, addWorld, cli, connectMarked, grpcCall, grpcServer, httpRequest, httpServer, inNs, sleep, uniqueName, type AgentOptions } from './support/cluster.ts';

const POLICIES = join(import.meta.dirname, 'policies');
const HUBBLE_METRICS = '127.0.0.1:19965';
const FETCH = `fetch(process.argv[1]).then(async (r) => process.stdout.write(await r.text()))`;

/** A flow as `observe -o json` prints it (Hubble's proto field names). */
interface L7Flow {
  verdict?: string;
  Type?: string;
  source?: { pod_name?: string; identity?: number };
  destination?: { pod_name?: string };
  is_reply?: boolean;
  l7?: { type?: string; latency_ns?: string; http?: { code?: number; method?: string; url?: string; protocol?: string } };
  ingress_allowed_by?: { name?: string }[];
}

/** Two requests on one kept-alive connection: their statuses and whether the second reused the socket. */
const KEEPALIVE_CLIENT = `
const http = require('node:http');
const [base] = process.argv.slice(1);
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
const one = (method, path) => new Promise((resolve, reject) => {
  const req = http.request(base + path, { method, agent }, (res) => {
    let body = '';
    res.on('data', (d) => (body += d));
    res.on('end', () => resolve({ status: res.statusCode, body, reused: req.reusedSocket }));
  });
  req.on('error', reject);
  req.end();
});
(async () => {
  const out = [await one('POST', '/v1/request-landing'), await one('PUT', '/v1/exhaust-port'), await one('POST', '/v1/request-landing')];
  console.log(JSON.stringify(out));
  agent.destroy();
})().catch((e) => { console.log(JSON.stringify({ error: String(e) })); });
`;

async function l7Flows(node: TestNode): Promise<L7Flow[]> {
  const out = await cli(node, 'observe', '--last', '1000', '--protocol', 'http', '-o', 'json');
  assert.equal(out.code, 0, out.stderr);
  return out.stdout.trim().split('\n').filter(Boolean).map((l) => (JSON.parse(l) as { flow: L7Flow }).flow);
}

async function proxyPid(node: TestNode): Promise<number | undefined> {
  const status = await node.client.get<{ l7Proxy?: { pid?: number; ready?: boolean } }>('/v1/status');
  return status.l7Proxy?.ready ? status.l7Proxy.pid : undefined;
}

test('Star Wars L7: the tiefighter may land but not reach the exhaust port, the xwing is dropped at L3/L4, every request is an HTTP flow; a proxy crash keeps the policy', async (t) => {
  const node = await TestNode.start(t, { extraArgs: ['--hubble-metrics-server', HUBBLE_METRICS, '--hubble-metrics', 'httpV2:sourceContext=pod;destinationContext=pod'] });
  const deathstar = await node.addPod(t, 'deathstar', { org: 'empire', class: 'deathstar' });
  const tiefighter = await node.addPod(t, 'tiefighter', { org: 'empire', class: 'tiefighter' });
  const xwing = await node.addPod(t, 'xwing', { org: 'alliance', class: 'xwing' });
  await httpServer(t, deathstar.netns, 80, { 'POST /v1/request-landing': 'Ship landed', 'PUT /v1/exhaust-port': 'Panic: deathstar exploded' });
  const base = `http://${deathstar.endpoint.ipv4}`;
  assert.deepEqual(await httpRequest(tiefighter.netns, 'PUT', `${base}/v1/exhaust-port`), { status: 200, body: 'Panic: deathstar exploded\n' }, 'no policy: anything goes');

  const imported = await cli(node, 'policy', 'import', join(POLICIES, 'starwars-l7.yaml'));
  assert.equal(imported.code, 0, imported.stderr);
  const revision = /revision: (\d+)/.exec(imported.stdout)?.[1];
  assert.ok(revision, imported.stdout);
  assert.equal((await cli(node, 'policy', 'wait', revision, '--local')).code, 0);

  assert.deepEqual(await httpRequest(tiefighter.netns, 'POST', `${base}/v1/request-landing`), { status: 200, body: 'Ship landed\n' }, 'the tiefighter lands');
  assert.deepEqual(await httpRequest(tiefighter.netns, 'PUT', `${base}/v1/exhaust-port`), { status: 403, body: 'Access denied\r\n' }, 'the proxy denies what no HTTP rule allows');
  assert.deepEqual(await httpRequest(tiefighter.netns, 'POST', `${base}/v1/request-landing/../exhaust-port`), { status: 403, body: 'Access denied\r\n' }, 'the path is matched whole');
  assert.deepEqual(await httpRequest(xwing.netns, 'POST', `${base}/v1/request-landing`), { error: 'timeout' }, 'the xwing is dropped at L3/L4');

  // Keep-alive: every request on one connection is judged on its own.
  const kept = JSON.parse(await inNs(tiefighter.netns, process.execPath, ['-e', KEEPALIVE_CLIENT, base])) as { status: number; body: string; reused: boolean }[];
  assert.deepEqual(kept.map((r) => [r.status, r.body]), [[200, 'Ship landed\n'], [403, 'Access denied\r\n'], [200, 'Ship landed\n']]);
  assert.deepEqual(kept.map((r) => r.reused), [false, true, true], 'one connection for the three requests');

  // L7 flows, as Hubble shows them.
  let flows: L7Flow[] = [];
  for (let i = 0; i < 20; i++) {
    flows = await l7Flows(node);
    if (flows.some((f) => f.l7?.type === 'RESPONSE')) break;
    await sleep(250);
  }
  assert.ok(flows.every((f) => f.Type === 'L7'), 'only L7 flows match --protocol http');
  const landing = flows.find((f) => f.l7?.type === 'REQUEST' && f.l7.http?.method === 'POST' && f.verdict === 'FORWARDED');
  assert.ok(landing, `a forwarded landing request among ${JSON.stringify(flows)}`);
  assert.equal(landing.l7?.http?.url, `${base}/v1/request-landing`);
  assert.equal(landing.l7?.http?.protocol, 'HTTP/1.1');
  assert.equal(landing.source?.pod_name, 'tiefighter');
  assert.equal(landing.source?.identity, tiefighter.endpoint.identity);
  assert.equal(landing.destination?.pod_name, 'deathstar');
  assert.deepEqual(landing.ingress_allowed_by?.map((p) => p.name), ['rule1']);
  const response = flows.find((f) => f.l7?.type === 'RESPONSE' && f.l7.http?.code === 200);
  assert.ok(response, 'the landing response with its code');
  assert.equal(response.is_reply, true);
  assert.equal(response.source?.pod_name, 'deathstar', 'a response goes from the server to the client');
  assert.ok(Number(response.l7?.latency_ns) > 0, 'with its latency');
  const denied = flows.find((f) => f.l7?.type === 'REQUEST' && f.l7.http?.method === 'PUT');
  assert.equal(denied?.verdict, 'DROPPED', 'the exhaust-port request is dropped');
  assert.equal(denied?.l7?.http?.url, `${base}/v1/exhaust-port`);
  assert.equal(denied?.l7?.http?.code, 403, 'with the code the client got, as Cilium logs a denial');
  const byStatus = await cli(node, 'observe', '--last', '1000', '--http-status', '403', '-o', 'json');
  assert.equal(byStatus.code, 0, byStatus.stderr);
  const denials = byStatus.stdout.trim().split('\n').map((l) => (JSON.parse(l) as { flow: L7Flow }).flow);
  assert.ok(denials.every((f) => f.verdict === 'DROPPED' && f.l7?.type === 'REQUEST' && f.l7.http?.code === 403), byStatus.stdout);
  assert.deepEqual(new Set(denials.map((f) => f.l7?.http?.method)), new Set(['PUT', 'POST']), 'the denied requests, and only they');
  const byMethod = await cli(node, 'observe', '--last', '1000', '--http-method', 'PUT', '-o', 'json');
  assert.equal(byMethod.code, 0, byMethod.stderr);
  assert.ok(byMethod.stdout.trim().split('\n').every((l) => (JSON.parse(l) as { flow: L7Flow }).flow.l7?.http?.method === 'PUT'));
  const compact = await cli(node, 'observe', '--last', '1000', '--protocol', 'http');
  assert.match(compact.stdout, /default\/tiefighter:\d+ \(ID:\d+\) -> default\/deathstar:80 \(ID:\d+\) http-request DROPPED \(HTTP\/1\.1 PUT http:\/\/[\d.]+\/v1\/exhaust-port\)/);

  // Hubble's HTTP metrics, from the proxy's responses.
  const metrics = parsePrometheusText(await inNs(node.netns, process.execPath, ['-e', FETCH, `http://${HUBBLE_METRICS}/metrics`]));
  const landed = { source: 'default/tiefighter', destination: 'default/deathstar', method: 'POST', protocol: 'HTTP/1.1', status: '200', reporter: 'server' };
  assert.ok((sampleValue(metrics, 'hubble_http_requests_total', landed) ?? 0) >= 3, 'the landings are counted, labelled as their requests');
  assert.ok((sampleValue(metrics, 'hubble_http_request_duration_seconds_count', { source: 'default/tiefighter', destination: 'default/deathstar', method: 'POST', reporter: 'server' }) ?? 0) >= 3);

  // A pod that forges the proxy's mark on its own socket (it is root in its namespace) gains
  // nothing: the mark does not survive the crossing into the node, and its SYNs are judged as its own.
  const forged = await connectMarked(xwing.netns, proxyIngressMark(tiefighter.endpoint.identity), deathstar.endpoint.ipv4);
  assert.equal(forged, 'timeout', 'the xwing with the proxy mark is still dropped');

  // The proxy process dies; it is restarted with the policy in force, and nothing gets through meanwhile.
  const pid = await proxyPid(node);
  assert.ok(pid, 'the proxy runs in a process of its own');
  assert.notEqual(pid, node.agent?.pid);
  process.kill(pid, 'SIGKILL');
  const during = await httpRequest(tiefighter.netns, 'PUT', `${base}/v1/exhaust-port`, 8000);
  assert.notEqual(during.status, 200, 'never past the proxy');
  let after: number | undefined;
  for (let i = 0; i < 40 && (after === undefined || after === pid); i++) {
    await sleep(250);
    after = await proxyPid(node);
  }
  assert.ok(after !== undefined && after !== pid, 'a new proxy process');
  assert.deepEqual(await httpRequest(tiefighter.netns, 'PUT', `${base}/v1/exhaust-port`), { status: 403, body: 'Access denied\r\n' }, 'the policy holds after the restart');
  assert.deepEqual(await httpRequest(tiefighter.netns, 'POST', `${base}/v1/request-landing`), { status: 200, body: 'Ship landed\n' });
  assert.deepEqual(await httpRequest(xwing.netns, 'POST', `${base}/v1/request-landing`), { error: 'timeout' });

  // Deleting the policy takes the proxy out of the path.
  assert.equal((await cli(node, 'policy', 'delete', 'CiliumNetworkPolicy/default/rule1')).code, 0);
  assert.deepEqual(await httpRequest(xwing.netns, 'PUT', `${base}/v1/exhaust-port`), { status: 200, body: 'Panic: deathstar exploded\n' });
});

test('Star Wars L7 across nodes: the tiefighter on another node goes through the Death Star node\'s proxy; the xwing is dropped', async (t) => {
  const underlay = await Underlay.create(t);
  const etcd = await underlay.startEtcd(t);
  const options = (nodeName: string, nodeIp: string): AgentOptions => ({ nodeName, nodeIp, underlay, etcd, routingMode: 'tunnel' });
  const [n1, n2] = [await TestNode.start(t, options('n1', '192.168.100.1')), await TestNode.start(t, options('n2', '192.168.100.2'))];
  const deathstar = await n1.addPod(t, 'deathstar', { org: 'empire', class: 'deathstar' });
  const tiefighter = await n2.addPod(t, 'tiefighter', { org: 'empire', class: 'tiefighter' });
  const xwing = await n2.addPod(t, 'xwing', { org: 'alliance', class: 'xwing' });
  await httpServer(t, deathstar.netns, 80, { 'POST /v1/request-landing': 'Ship landed', 'PUT /v1/exhaust-port': 'Panic: deathstar exploded' });
  const base = `http://${deathstar.endpoint.ipv4}`;
  const imported = await cli(n2, 'policy', 'import', join(POLICIES, 'starwars-l7.yaml'));
  assert.equal(imported.code, 0, imported.stderr);
  const revision = /revision: (\d+)/.exec(imported.stdout)?.[1];
  assert.ok(revision, imported.stdout);
  assert.equal((await cli(n1, 'policy', 'wait', revision, '--timeout', '20')).code, 0);

  assert.deepEqual(await httpRequest(tiefighter.netns, 'POST', `${base}/v1/request-landing`, 4000), { status: 200, body: 'Ship landed\n' }, 'the tiefighter lands');
  assert.deepEqual(await httpRequest(tiefighter.netns, 'PUT', `${base}/v1/exhaust-port`, 4000), { status: 403, body: 'Access denied\r\n' });
  assert.deepEqual(await httpRequest(xwing.netns, 'POST', `${base}/v1/request-landing`), { error: 'timeout' });
  const flows = await l7Flows(n1);
  assert.ok(flows.some((f) => f.l7?.http?.method === 'PUT' && f.verdict === 'DROPPED' && f.source?.identity === tiefighter.endpoint.identity), 'the Death Star node reports the denied request with the remote tiefighter\'s identity');
});

test('egress HTTP rules: a pod may GET /public from a server outside the cluster and from a pod of its node, and make one gRPC call (HTTP/2) there, nothing else; the flows name its egress rule', async (t) => {
  const node = await TestNode.start(t);
  const world = await addWorld(t, node, ['198.51.100.20/24']);
  await httpServer(t, world, 80, { 'GET /public': 'outside public', 'GET /private': 'outside private' });
  const web = await node.addPod(t, uniqueName('web'), { app: 'web' });
  await httpServer(t, web.netns, 80, { 'GET /public': 'pod public', 'POST /public': 'pod post' });
  await grpcServer(t, web.netns, 50051);
  const client = await node.addPod(t, uniqueName('client'), { app: 'client' });
  await node.client.call('POST', '/v1/policies', {
    file: 'client-egress-http.yaml',
    yaml: `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: client-egress-http}
spec:
  endpointSelector: {matchLabels: {app: client}}
  egress:
  - toCIDR: [198.51.100.20/32]
    toEndpoints: [{matchLabels: {app: web}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: /public}]
  - toEndpoints: [{matchLabels: {app: web}}]
    toPorts:
    - ports: [{port: "50051", protocol: TCP}]
      rules:
        http: [{method: POST, path: /pkg.Greeter/SayHello}]
`,
  });
  const outside = await httpRequest(client.netns, 'GET', 'http://198.51.100.20/public');
  assert.deepEqual([outside.status, outside.body?.trim()], [200, 'outside public'], JSON.stringify(outside));
  const denied = await httpRequest(client.netns, 'GET', 'http://198.51.100.20/private');
  assert.deepEqual([denied.status, denied.body], [403, 'Access denied\r\n'], 'a path no egress rule allows');
  const inPod = await httpRequest(client.netns, 'GET', `http://${web.endpoint.ipv4}/public`);
  assert.deepEqual([inPod.status, inPod.body?.trim()], [200, 'pod public'], JSON.stringify(inPod));
  const post = await httpRequest(client.netns, 'POST', `http://${web.endpoint.ipv4}/public`);
  assert.equal(post.status, 403, 'a method no egress rule allows');

  // gRPC (HTTP/2) through the same proxy and rules: the allowed method answers with its trailer.
  const call = await grpcCall(client.netns, web.endpoint.ipv4, 50051, '/pkg.Greeter/SayHello');
  assert.deepEqual(call, { status: 200, body: 'reply to /pkg.Greeter/SayHello', grpcStatus: '0' });
  const stolen = await grpcCall(client.netns, web.endpoint.ipv4, 50051, '/pkg.Greeter/Steal');
  assert.deepEqual([stolen.status, stolen.body, stolen.grpcStatus], [403, 'Access denied\r\n', undefined]);

  const flows = (await l7Flows(node)).filter((f) => f.l7?.http?.protocol !== 'HTTP/2');
  const requests = flows.filter((f) => f.l7?.type === 'REQUEST').map((f) => [f.verdict, f.l7?.http?.method, f.l7?.http?.url, (f as { traffic_direction?: string }).traffic_direction]);
  assert.deepEqual(requests, [
    ['FORWARDED', 'GET', 'http://198.51.100.20/public', 'EGRESS'],
    ['DROPPED', 'GET', 'http://198.51.100.20/private', 'EGRESS'],
    ['FORWARDED', 'GET', `http://${web.endpoint.ipv4}/public`, 'EGRESS'],
    ['DROPPED', 'POST', `http://${web.endpoint.ipv4}/public`, 'EGRESS'],
  ]);
  const allowed = flows.find((f) => f.verdict === 'FORWARDED' && f.l7?.type === 'REQUEST') as { egress_allowed_by?: { name?: string }[] } | undefined;
  assert.deepEqual(allowed?.egress_allowed_by?.map((p) => p.name), ['client-egress-http']);
});
