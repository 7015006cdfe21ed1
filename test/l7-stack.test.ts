/**
 * Ingress HTTP rules on connections that reach the server pod through its node's stack (native
 * routing from a pod of another node, a client outside the cluster, the node itself):
 * cil_to_container meets their L7 verdict at TC egress, where no socket can be assigned, and
 * hairpins them to the ingress of the pod's veth marked for the proxy port (bpf/lib/proxy.h),
 * where cil_from_container hands them to the node proxy. The proxy answers from the pod's address
 * through the node's stack.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import { CtDirection, CtFlag, MapName, type CtEntry, type CtTuple } from '../src/datapath/index.ts';
import { BpfMap, u32, u64 } from '../src/ebpf/index.ts';
import { DNS_PROXY_PORT, L7_PROXY_PORT } from '../src/policy/policy-map.ts';
import { TestNode, Underlay, addNetns, addWorld, cli, connectMarked, httpRequest, httpServer, inNs, sleep, until, type AgentOptions } from './support/cluster.ts';
import { enforce, eventually } from './support/flows.ts';

/** The REQUEST records (verdict, URL, source identity) `node`'s proxy reported for `server`. */
async function requests(node: TestNode, server: string, count: number): Promise<[string | undefined, string | undefined, number | undefined][]> {
  const l7 = await eventually(node, ['--protocol', 'http', '--to-ip', server], (f) => f.filter((x) => x.l7?.type === 'REQUEST').length >= count);
  return l7.filter((f) => f.l7?.type === 'REQUEST').map((f) => [f.verdict, f.l7?.http?.url, f.source?.identity]);
}

const ingressHttp = (name: string, app: string, from: string): string => `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ${name}}
spec:
  endpointSelector: {matchLabels: {app: ${app}}}
  ingress:
  - ${from}
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http: [{method: GET, path: /public}]
`;

async function twoNativeNodes(t: TestContext): Promise<[TestNode, TestNode]> {
  const underlay = await Underlay.create(t);
  const etcd = await underlay.startEtcd(t);
  const options = (nodeName: string, nodeIp: string): AgentOptions => ({ nodeName, nodeIp, underlay, etcd, routingMode: 'native' });
  return [await TestNode.start(t, options('n1', '192.168.100.1')), await TestNode.start(t, options('n2', '192.168.100.2'))];
}

test('native mode: ingress HTTP rules judge a client pod of another node (hairpin to the server node\'s proxy), which names the client', async (t) => {
  const [n1, n2] = await twoNativeNodes(t);
  const client = await n1.addPod(t, 'client', { app: 'client' });
  const other = await n1.addPod(t, 'other', { app: 'other' });
  const api = await n2.addPod(t, 'api', { app: 'api' });
  await httpServer(t, api.netns, 80, { 'GET /public': 'api public', 'GET /private': 'api private' });
  await enforce(n1, 'api-ingress-http.yaml', ingressHttp('api-ingress-http', 'api', 'fromEndpoints: [{matchLabels: {app: client}}]'));
  const base = `http://${api.endpoint.ipv4}`;

  assert.deepEqual(await httpRequest(client.netns, 'GET', `${base}/public`, 4000), { status: 200, body: 'api public\n' });
  assert.deepEqual(await httpRequest(client.netns, 'GET', `${base}/private`, 4000), { status: 403, body: 'Access denied\r\n' });
  // Kept alive: several requests on one hairpinned connection (its later packets follow the first).
  const burst = await inNs(client.netns, process.execPath, ['-e', `
    const agent = new (require('node:http').Agent)({ keepAlive: true, maxSockets: 1 });
    const get = (p) => new Promise((ok, ko) => require('node:http').get('${base}' + p, { agent }, (r) => { let b = ''; r.on('data', (d) => (b += d)); r.on('end', () => ok(r.statusCode + ' ' + b.trim())); }).on('error', ko));
    (async () => { const out = []; for (const p of ['/public', '/private', '/public']) out.push(await get(p)); console.log(out.join('|')); agent.destroy(); })();
  `]);
  assert.equal(burst.trim(), '200 api public|403 Access denied|200 api public');
  assert.deepEqual((await requests(n2, api.endpoint.ipv4, 5)).slice(0, 2), [
    ['FORWARDED', `${base}/public`, client.endpoint.identity],
    ['DROPPED', `${base}/private`, client.endpoint.identity],
  ], 'node 2\'s proxy judged the client pod of node 1 by its identity');

  // A pod the rule does not admit is dropped at L3 by node 2, never handed to the proxy.
  assert.deepEqual(await httpRequest(other.netns, 'GET', `${base}/public`), { error: 'timeout' });
  const dropped = await eventually(n2, ['--to-ip', api.endpoint.ipv4, '--verdict', 'DROPPED'], (f) => f.some((x) => x.source?.identity === other.endpoint.identity));
  assert.ok(dropped.some((f) => f.source?.identity === other.endpoint.identity && f.drop_reason_desc === 'POLICY_DENIED'), JSON.stringify(dropped.map((f) => [f.source?.identity, f.drop_reason_desc])));
  assert.ok((await requests(n2, api.endpoint.ipv4, 5)).every(([, , identity]) => identity !== other.endpoint.identity), 'no request of the other pod reached the proxy');
});

test('a client outside the cluster (world), and the node itself, get through ingress HTTP rules that admit them: the allowed path 200, another 403; a rule that does not admit world drops at L3; a pod forging the hairpin mark gains nothing; a restart mends the host ends\' settings', async (t) => {
  const node = await TestNode.start(t);
  const world = await addWorld(t, node);
  const web = await node.addPod(t, 'web', { app: 'web' });
  const closed = await node.addPod(t, 'closed', { app: 'closed' });
  const intruder = await node.addPod(t, 'intruder', { app: 'intruder' });
  for (const pod of [web, closed]) {
    await httpServer(t, pod.netns, 80, { 'GET /public': 'public', 'GET /private': 'private' });
    await inNs(world, 'ip', ['route', 'add', `${pod.endpoint.ipv4}/32`, 'via', '198.51.100.1']);
  }
  await enforce(node, 'web-from-world.yaml', ingressHttp('web-from-world', 'web', 'fromEntities: [world, host]'));
  await enforce(node, 'closed-from-pods.yaml', ingressHttp('closed-from-pods', 'closed', 'fromEndpoints: [{matchLabels: {app: web}}]'));
  const base = `http://${web.endpoint.ipv4}`;

  assert.deepEqual(await httpRequest(world, 'GET', `${base}/public`, 4000), { status: 200, body: 'public\n' });
  assert.deepEqual(await httpRequest(world, 'GET', `${base}/private`, 4000), { status: 403, body: 'Access denied\r\n' });
  assert.deepEqual(await requests(node, web.endpoint.ipv4, 2), [
    ['FORWARDED', `${base}/public`, 2],
    ['DROPPED', `${base}/private`, 2],
  ], 'judged as world (identity 2), the identity the datapath noted for the connection');
  // The node itself as the client: its connection leaves through its own stack to the pod's veth
  // and comes back through the hairpin from one of its own addresses.
  assert.deepEqual(await httpRequest(node.netns, 'GET', `${base}/public`, 4000), { status: 200, body: 'public\n' });
  assert.deepEqual(await httpRequest(node.netns, 'GET', `${base}/private`, 4000), { status: 403, body: 'Access denied\r\n' });
  assert.deepEqual((await requests(node, web.endpoint.ipv4, 4)).slice(2).map(([verdict, , identity]) => [verdict, identity]), [['FORWARDED', 1], ['DROPPED', 1]], 'judged as host (identity 1)');

  // No rule of the closed pod admits world: dropped at L3 (the proxy never sees it).
  assert.deepEqual(await httpRequest(world, 'GET', `http://${closed.endpoint.ipv4}/public`), { error: 'timeout' });
  const dropped = await eventually(node, ['--to-ip', closed.endpoint.ipv4, '--verdict', 'DROPPED'], (f) => f.length > 0);
  assert.ok(dropped.length > 0 && dropped.every((f) => f.source?.identity === 2 && f.drop_reason_desc === 'POLICY_DENIED'), JSON.stringify(dropped.map((f) => [f.source?.identity, f.drop_reason_desc])));

  // A pod (root in its namespace) that puts the hairpin's mark on its own connection: the mark is
  // scrubbed when the packet leaves the pod's namespace, so cil_from_container judges it as the
  // pod's as always (the web pod admits world only: POLICY_DENIED as the intruder). Had the mark
  // survived, the hairpin path would have dropped it otherwise (not the intruder's veth: unroutable).
  const forged = await connectMarked(intruder.netns, (L7_PROXY_PORT << 16) | 0x0200, web.endpoint.ipv4);
  assert.equal(forged, 'timeout');
  const intruderDrops = await eventually(node, ['--from-ip', intruder.endpoint.ipv4, '--verdict', 'DROPPED'], (f) => f.length > 0);
  assert.ok(
    intruderDrops.length > 0 && intruderDrops.every((f) => f.source?.identity === intruder.endpoint.identity && f.drop_reason_desc === 'POLICY_DENIED'),
    JSON.stringify(intruderDrops.map((f) => [f.source?.identity, f.drop_reason_desc])),
  );
  assert.equal((await requests(node, web.endpoint.ipv4, 4)).length, 4, 'nothing of the intruder reached the proxy');

  // The host end as an agent before the hairpin left it (a strict reverse-path filter drops the
  // hairpinned SYN: the world is routed through another device); a restarted agent mends it.
  const conf = `net.ipv4.conf.${web.endpoint.hostIfname}`;
  await inNs(node.netns, 'sysctl', ['-qw', `${conf}.rp_filter=1`, `${conf}.accept_local=0`]);
  assert.deepEqual(await httpRequest(world, 'GET', `${base}/public`), { error: 'timeout' }, 'strict rp_filter drops the hairpin');
  await node.stopAgent();
  await node.startAgent();
  assert.equal((await inNs(node.netns, 'sysctl', ['-n', `${conf}.rp_filter`, `${conf}.accept_local`])).trim().split('\n').join(' '), '0 1');
  let again = await httpRequest(world, 'GET', `${base}/public`, 4000);
  for (let i = 0; i < 10 && again.error; i++) again = await httpRequest(world, 'GET', `${base}/public`, 4000);
  assert.deepEqual(again, { status: 200, body: 'public\n' });
});

test('a client outside the cluster through a NodePort (externalTrafficPolicy Local) to a pod with ingress HTTP rules: the proxy judges it as world, its answers leave as from the NodePort', async (t) => {
  const underlay = await Underlay.create(t);
  const etcd = await underlay.startEtcd(t);
  const node = await TestNode.start(t, { nodeName: 'n1', nodeIp: '192.168.100.1', underlay, etcd });
  const outside = await addNetns(t, 'cto');
  await underlay.attach(outside, '192.168.100.50');
  const web = await node.addPod(t, 'web', { app: 'web' });
  await httpServer(t, web.netns, 80, { 'GET /public': 'public', 'GET /private': 'private' });
  await enforce(node, 'web-from-world.yaml', ingressHttp('web-from-world', 'web', 'fromEntities: [world]'));
  const added = await cli(node, 'service', 'add', 'web', '--type', 'NodePort', '--selector', 'app=web', '--port', '80:80:30080', '--external-traffic-policy', 'Local');
  assert.equal(added.code, 0, added.stderr);
  const frontend = 'http://192.168.100.1:30080';
  let first = await httpRequest(outside, 'GET', `${frontend}/public`, 4000);
  for (let i = 0; i < 20 && first.error; i++, await sleep(250)) first = await httpRequest(outside, 'GET', `${frontend}/public`, 4000);
  assert.deepEqual(first, { status: 200, body: 'public\n' });
  assert.deepEqual(await httpRequest(outside, 'GET', `${frontend}/private`, 4000), { status: 403, body: 'Access denied\r\n' });
  const judged = (await requests(node, web.endpoint.ipv4, 2)).map(([verdict, , identity]) => [verdict, identity]);
  assert.deepEqual(judged, [['FORWARDED', 2], ['DROPPED', 2]]);
});

/**
 * One request with `Connection: close` from local port `lport`, so the proxy closes first and its
 * socket of the connection waits out TIME_WAIT; prints how long the connection took and the status.
 */
const CLOSING_REQUEST = `
const net = require('node:net');
const [host, lport] = process.argv.slice(1);
const started = performance.now();
const socket = net.connect({ host, port: 80, localPort: Number(lport) });
let connectMs, head = '';
socket.on('connect', () => { connectMs = Math.round(performance.now() - started); socket.write('GET /public HTTP/1.1\\r\\nHost: web\\r\\nConnection: close\\r\\n\\r\\n'); });
socket.on('data', (d) => (head += d));
socket.on('end', () => { console.log(JSON.stringify({ connectMs, status: head.split(' ')[1], body: head.split('\\r\\n\\r\\n')[1]?.trim() })); socket.end(); });
socket.on('error', (e) => console.log(JSON.stringify({ error: e.code ?? String(e) })));
setTimeout(() => { console.log(JSON.stringify({ error: 'timeout' })); process.exit(0); }, 4000).unref();
`;

test('a client reusing the 4-tuple of a connection the proxy closed first (its socket in TIME_WAIT) connects at once to the proxy, a pod and the node itself (hairpin) alike: the SYN is not dropped for a minute, nor taken by a listener of the node on that port', async (t) => {
  const node = await TestNode.start(t);
  const web = await node.addPod(t, 'web', { app: 'web' });
  const client = await node.addPod(t, 'client', { app: 'client' });
  await httpServer(t, web.netns, 80, { 'GET /public': 'public' });
  // The node's own server on the same port, on every address: the stack's choice for that SYN.
  await httpServer(t, node.netns, 80, { 'GET /public': 'the node' });
  await enforce(node, 'web-from-client-and-host.yaml', ingressHttp('web-from-client-and-host', 'web', 'fromEndpoints: [{matchLabels: {app: client}}]\n    fromEntities: [host]'));
  // Both proxies' listeners, where the lookup finds them (the DNS proxy's TCP one closes idle connections first too).
  {
    using listeners = BpfMap.openPinned(join(node.bpfRoot, 'maps', MapName.PROXY_LISTENERS), u32, u64);
    assert.deepEqual([...listeners.keys()].sort(), [DNS_PROXY_PORT, L7_PROXY_PORT].sort());
  }
  const reconnectsAtOnce = async (who: string, netns: string, lport: string) => {
    const first = JSON.parse(await inNs(netns, process.execPath, ['-e', CLOSING_REQUEST, web.endpoint.ipv4, lport]));
    assert.deepEqual([first.status, first.body], ['200', 'public'], `${who}: ${JSON.stringify(first)}`);
    // The proxy's side of it (the pod's address as its own, in the node's namespace) in TIME_WAIT.
    const timeWait = await inNs(node.netns, 'ss', ['-Htn', 'state', 'time-wait', 'src', `${web.endpoint.ipv4}:80`, 'dport', `= :${lport}`]);
    assert.notEqual(timeWait.trim(), '', `${who}: the proxy's socket is in TIME_WAIT`);
    const again = JSON.parse(await inNs(netns, process.execPath, ['-e', CLOSING_REQUEST, web.endpoint.ipv4, lport]));
    assert.deepEqual([again.status, again.body], ['200', 'public'], `${who}: ${JSON.stringify(again)}`);
    assert.ok(again.connectMs < 500, `${who}: connected after ${again.connectMs} ms`);
  };
  await reconnectsAtOnce('pod', client.netns, '40001');
  await reconnectsAtOnce('node', node.netns, '40001');

  // A restarted agent adopts the lookup an earlier one attached (one link on the namespace, not
  // two), and its new proxies put their listeners in.
  await node.stopAgent();
  await node.startAgent();
  const netnsIno = statSync(`/run/netns/${node.netns}`).ino;
  const links = (JSON.parse(execFileSync('bpftool', ['-j', 'link', 'show'], { encoding: 'utf8' })) as { type?: string; netns_ino?: number; attach_type?: string }[]).filter((l) => l.type === 'netns' && l.netns_ino === netnsIno);
  assert.deepEqual(links.map((l) => l.attach_type), ['sk_lookup']);
  await until('the restarted proxy listens', async () => (await httpRequest(client.netns, 'GET', `http://${web.endpoint.ipv4}/public`)).status === 200);
  await reconnectsAtOnce('pod, after a restart', client.netns, '40003');
});

/** One request on a kept-alive connection from local port `lport`, the connection then held open for `holdMs`. */
const HELD_REQUEST = `
const http = require('node:http');
const [url, lport, holdMs] = process.argv.slice(1);
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
http.get(url, { agent, localPort: Number(lport) }, (res) => {
  res.resume();
  res.on('end', () => { console.log(res.statusCode); setTimeout(() => agent.destroy(), Number(holdMs)); });
}).on('error', (e) => console.log(e.code));
`;

test('a hairpinned connection the proxy holds lives in conntrack as an established one, not as an unanswered SYN: kept idle, it is not judged again after a minute', async (t) => {
  const node = await TestNode.start(t);
  const web = await node.addPod(t, 'web', { app: 'web' });
  await httpServer(t, web.netns, 80, { 'GET /public': 'public' });
  await enforce(node, 'web-from-host.yaml', ingressHttp('web-from-host', 'web', 'fromEntities: [host]'));
  const lport = 40002;
  const held = inNs(node.netns, process.execPath, ['-e', HELD_REQUEST, `http://${web.endpoint.ipv4}/public`, String(lport), '4000']);
  // The proxy answers through the node's stack: the entry at the pod's veth never sees a reply.
  let entry: CtEntry | undefined;
  await until('the hairpinned connection is tracked as answered', async () => {
    const entries = await node.client.get<{ key: CtTuple; value: CtEntry }[]>('/v1/bpf/ct');
    entry = entries.find((e) => e.key.sport === lport && e.key.dport === 80 && e.key.flags === CtDirection.INGRESS)?.value;
    return entry !== undefined && (entry.flags & CtFlag.SEEN_REPLY) !== 0;
  }, 3000);
  assert.ok((entry!.flags & CtFlag.PROXY_REDIRECT) !== 0, 'sent to the proxy');
  // Lifetimes are seconds of CLOCK_BOOTTIME, which /proc/uptime counts.
  const now = Number(readFileSync('/proc/uptime', 'utf8').split(' ')[0]);
  assert.ok(entry!.lifetime - now > 3600, `lives ${Math.round(entry!.lifetime - now)} s more`);
  assert.equal((await held).trim(), '200');
});

