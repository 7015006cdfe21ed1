/**
 * East-west service load balancing at the socket, on the real kernel: a client process in the
 * node's socket-LB cgroup, inside a pod's network namespace, connects to a ClusterIP and reaches
 * a backend pod over TCP and UDP, with the service address as the peer it sees; backends share
 * the connections; a backend taken out gets no new connections while its established one goes
 * on; a service with no backends refuses connections (counted as Cilium's drop reason 158); and
 * the backend pod's ingress policy still decides.
 * @module
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Link } from '../src/ebpf/index.ts';
import { testCgroup } from '../src/ebpf/internal/testutils.ts';
import { connectObserver, type Flow } from '../src/observer/index.ts';
import { TestNode, WEB_FROM_EMPIRE_POLICY, addNetns, cli, inNs, sleep, spawnInNs } from './support/cluster.ts';
import type { Endpoint } from '../src/agent/index.ts';

/** Answers each TCP connection with its name (then echoes) and each datagram with its name. */
const SERVER = `
const net = require('node:net'), dgram = require('node:dgram');
const [name, port] = process.argv.slice(1);
let ready = 0;
const up = () => { if (++ready === 2) console.log('ready'); };
net.createServer((s) => { s.write(name + '\\n'); s.on('data', (d) => s.write(d)); s.on('error', () => {}); }).listen(Number(port), '0.0.0.0', up);
const u = dgram.createSocket('udp4');
u.on('message', (m, r) => u.send(name, r.port, r.address));
u.bind(Number(port), '0.0.0.0', up);
`;

/**
 * Joins the cgroup first (every socket it makes is then subject to the hooks), then: tcp — n
 * connections, each reporting who answered and the peer getpeername() gives; udp — n fresh
 * sockets each sending one datagram, reporting who answered and where from (recvmsg); udp-socket
 * — n fresh unconnected sockets each sending 6 datagrams one after the other, the answers by
 * socket; hold — one connection kept, printing its echoed byte count as it grows.
 */
const CLIENT = `
const fs = require('node:fs'), net = require('node:net'), dgram = require('node:dgram');
const [procs, mode, host, port, n] = process.argv.slice(1);
fs.writeFileSync(procs, String(process.pid));
const tcp = () => new Promise((resolve) => {
  const s = net.connect(Number(port), host);
  const timer = setTimeout(() => { s.destroy(); resolve({ error: 'timeout' }); }, 2000);
  s.once('data', (d) => { clearTimeout(timer); resolve({ name: String(d).trim(), peer: s.remoteAddress + ':' + s.remotePort }); s.destroy(); });
  s.on('error', (e) => { clearTimeout(timer); resolve({ error: e.code }); });
});
const udp = () => new Promise((resolve) => {
  const u = dgram.createSocket('udp4');
  const timer = setTimeout(() => { u.close(); resolve({ error: 'timeout' }); }, 2000);
  u.once('message', (m, r) => { clearTimeout(timer); u.close(); resolve({ name: String(m), peer: r.address + ':' + r.port }); });
  u.on('error', (e) => { clearTimeout(timer); resolve({ error: e.code }); });
  u.send('hi', Number(port), host);
});
const exchange = (u) => new Promise((resolve) => {
  const timer = setTimeout(() => { u.off('message', onMessage); resolve({ error: 'timeout' }); }, 2000);
  const onMessage = (m, r) => { clearTimeout(timer); resolve({ name: String(m), peer: r.address + ':' + r.port }); };
  u.once('message', onMessage);
  u.send('hi', Number(port), host);
});
const udpSocket = async () => {
  const u = dgram.createSocket('udp4');
  const answers = [];
  for (let i = 0; i < 6; i++) answers.push(await exchange(u));
  u.close();
  return answers;
};
(async () => {
  if (mode === 'hold') {
    let bytes = 0, name;
    const s = net.connect(Number(port), host);
    s.on('data', (d) => { if (!name) { name = String(d).trim(); console.log(JSON.stringify({ name })); return; } bytes += d.length; console.log(JSON.stringify({ bytes })); });
    s.on('connect', () => setInterval(() => s.write('x'), 50));
    s.on('error', (e) => { console.log(JSON.stringify({ error: e.code })); process.exit(1); });
    return;
  }
  const out = [];
  for (let i = 0; i < Number(n); i++) out.push(await (mode === 'tcp' ? tcp() : mode === 'udp' ? udp() : udpSocket()));
  console.log(JSON.stringify(out));
})();
`;

interface Answer {
  name?: string;
  peer?: string;
  error?: string;
}

async function serve(t: TestContext, netns: string, name: string, port: number): Promise<void> {
  const server = spawnInNs(netns, process.execPath, ['-e', SERVER, name, String(port)]);
  t.after(() => {
    server.kill('SIGKILL');
  });
  await new Promise<void>((resolve, reject) => {
    server.stdout?.once('data', () => resolve());
    server.once('exit', (code) => reject(new Error(`server ${name} exited with ${code}`)));
  });
}

/** n connections (or datagrams) from a process in `node`'s cgroup inside `netns`. */
async function connect(node: TestNode, netns: string, mode: 'tcp' | 'udp', address: string, port: number, n: number, cgroup = node.cgroup): Promise<Answer[]> {
  return JSON.parse(await inNs(netns, process.execPath, ['-e', CLIENT, join(cgroup, 'cgroup.procs'), mode, address, String(port), String(n)], 60_000)) as Answer[];
}

/** n unconnected UDP sockets from a process in the cgroup, each sending 6 datagrams: the answers by socket. */
async function udpSockets(node: TestNode, netns: string, address: string, port: number, n: number): Promise<Answer[][]> {
  return JSON.parse(await inNs(netns, process.execPath, ['-e', CLIENT, join(node.cgroup, 'cgroup.procs'), 'udp-socket', address, String(port), String(n)], 60_000)) as Answer[][];
}

/** A connection held open from a process in the cgroup: who answered, and its echoed bytes so far. */
function hold(t: TestContext, node: TestNode, netns: string, address: string, port: number) {
  const client = spawnInNs(netns, process.execPath, ['-e', CLIENT, join(node.cgroup, 'cgroup.procs'), 'hold', address, String(port), '0']);
  t.after(() => {
    client.kill('SIGKILL');
  });
  const state: { name?: string; bytes: number; error?: string } = { bytes: 0 };
  let buffered = '';
  client.stdout?.on('data', (chunk: Buffer) => {
    buffered += chunk.toString();
    const lines = buffered.split('\n');
    buffered = lines.pop()!;
    for (const line of lines) Object.assign(state, JSON.parse(line));
  });
  return state;
}

async function ok(node: TestNode, ...args: string[]): Promise<string> {
  const result = await cli(node, ...args);
  assert.equal(result.code, 0, `ciliate ${args.join(' ')} exited ${result.code}: ${result.stderr}`);
  return result.stdout;
}

/** Imports a policy and waits until the node enforces it. */
async function importPolicy(t: TestContext, node: TestNode, yaml: string): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'ciliate-lb-test-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'policy.yaml'), yaml);
  const imported = await ok(node, 'policy', 'import', join(dir, 'policy.yaml'));
  await ok(node, 'policy', 'wait', /revision: (\d+)/.exec(imported)![1]);
}

async function addService(node: TestNode, ...args: string[]): Promise<string> {
  return (JSON.parse(await ok(node, 'service', 'add', ...args, '-o', 'json')) as { clusterIP: string }).clusterIP;
}

test('a ClusterIP reaches the backends over TCP and UDP, spread, with the service as the peer; an unconnected UDP socket keeps one backend', async (t) => {
  const node = await TestNode.start(t, { nodeName: 'lb1' });
  const a = await node.addPod(t, 'web-a', { app: 'web' });
  const b = await node.addPod(t, 'web-b', { app: 'web' });
  const client = await node.addPod(t, 'client', { app: 'client' });
  await serve(t, a.netns, 'a', 7000);
  await serve(t, b.netns, 'b', 7000);
  const vip = await addService(node, 'web', '--selector', 'app=web', '--port', 'tcp=80:7000/TCP', '--port', 'udp=53:7000/UDP');

  const tcp = await connect(node, client.netns, 'tcp', vip, 80, 24);
  assert.deepEqual(tcp.filter((r) => r.error), [], 'every connection reached a backend');
  assert.deepEqual(new Set(tcp.map((r) => r.name)), new Set(['a', 'b']), 'both backends took connections');
  assert.deepEqual(new Set(tcp.map((r) => r.peer)), new Set([`${vip}:80`]), 'getpeername shows the service, not the backend');

  const udp = await connect(node, client.netns, 'udp', vip, 53, 16);
  assert.deepEqual(udp.filter((r) => r.error), [], 'every datagram was answered');
  assert.deepEqual(new Set(udp.map((r) => r.name)), new Set(['a', 'b']), 'both backends took datagrams');
  assert.deepEqual(new Set(udp.map((r) => r.peer)), new Set([`${vip}:53`]), 'replies come from the service address (recvmsg)');

  // An unconnected UDP socket is translated per datagram, yet keeps one backend (Cilium's
  // sock_select_slot by socket cookie): a conversation is never split between backends.
  const sockets = await udpSockets(node, client.netns, vip, 53, 10);
  for (const [i, answers] of sockets.entries()) {
    assert.deepEqual(answers.filter((r) => r.error), [], `socket ${i}: every datagram was answered`);
    assert.equal(new Set(answers.map((r) => r.name)).size, 1, `socket ${i}: one backend answered all its datagrams: ${JSON.stringify(answers)}`);
    assert.deepEqual(new Set(answers.map((r) => r.peer)), new Set([`${vip}:53`]), `socket ${i}: every reply comes from the service address`);
  }
  assert.deepEqual(new Set(sockets.map((answers) => answers[0].name)), new Set(['a', 'b']), 'the sockets are spread over both backends');

  // The kernel's maps, as `ciliate bpf lb list` shows them.
  const listed = await ok(node, 'bpf', 'lb', 'list');
  for (const line of [`${vip}:80/TCP`, `${vip}:53/UDP`, `${a.endpoint.ipv4}:7000`, `${b.endpoint.ipv4}:7000`]) assert.ok(listed.includes(line), `bpf lb list shows ${line}:\n${listed}`);
  // (A process outside the cgroup is translated in TC instead: test/service-tc.test.ts.)
});

test('a named target port reaches each pod on the port it names; a pod without it is no backend and is shown unresolved', async (t) => {
  const node = await TestNode.start(t, { nodeName: 'lb11' });
  const a = await node.addPod(t, 'web-a', { app: 'web' }, undefined, undefined, [{ name: 'http', port: 7000, protocol: 'TCP' }]);
  // The way a user adds one by hand: ciliate endpoint add --port.
  const bNetns = await addNetns(t, 'ctp');
  t.after(() => node.client.call('DELETE', '/v1/endpoints/web-b/eth0').catch(() => undefined));
  const b = { netns: bNetns, endpoint: JSON.parse(await ok(node, 'endpoint', 'add', '--container-id', 'web-b', '--netns', `/run/netns/${bNetns}`, '--labels', 'app=web', '--port', 'http=7001/tcp', '-o', 'json')) as Endpoint };
  assert.deepEqual(b.endpoint.ports, [{ name: 'http', port: 7001, protocol: 'TCP' }], 'the endpoint records its named ports');
  const c = await node.addPod(t, 'web-c', { app: 'web' });
  const client = await node.addPod(t, 'client', { app: 'client' });
  await serve(t, a.netns, 'a', 7000);
  await serve(t, b.netns, 'b', 7001);
  await serve(t, c.netns, 'c', 7000);
  assert.deepEqual(a.endpoint.ports, [{ name: 'http', port: 7000, protocol: 'TCP' }], 'the endpoint records its named ports');
  const vip = await addService(node, 'web', '--selector', 'app=web', '--port', '80:http');

  const view = JSON.parse(await ok(node, 'service', 'get', 'web', '-o', 'json')) as { ports: { targetPort: unknown }[]; frontends: { backends: string[]; unresolved?: string[] }[] };
  assert.equal(view.ports[0].targetPort, 'http');
  assert.deepEqual(view.frontends[0].backends, [`${a.endpoint.ipv4}:7000`, `${b.endpoint.ipv4}:7001`], 'each pod on its own number');
  assert.deepEqual(view.frontends[0].unresolved, [c.endpoint.ipv4], 'the pod without an http port is named');
  const answers = await connect(node, client.netns, 'tcp', vip, 80, 16);
  assert.deepEqual(answers.filter((r) => r.error), [], 'every connection reached a backend');
  assert.deepEqual(new Set(answers.map((r) => r.name)), new Set(['a', 'b']), 'both named-port pods answer, the third never');

  // A bad named port is refused by the endpoint API, naming the field.
  const refused = await node.client.call('POST', '/v1/endpoints', { containerId: 'bad-ports', ifname: 'eth0', netns: `/run/netns/${client.netns}`, ports: [{ name: 'HTTP', port: 80 }] }).then(() => undefined, (e: Error) => e);
  assert.match(String(refused?.message), /ports\.0\.name: must be lower case letters, digits and -/);
});

test('a backend taken out gets no new connections; its established connection goes on', async (t) => {
  const node = await TestNode.start(t, { nodeName: 'lb2' });
  const pods = { a: await node.addPod(t, 'web-a', { app: 'web' }), b: await node.addPod(t, 'web-b', { app: 'web' }) };
  const client = await node.addPod(t, 'client', { app: 'client' });
  await serve(t, pods.a.netns, 'a', 7000);
  await serve(t, pods.b.netns, 'b', 7000);
  const vip = await addService(node, 'web', '--selector', 'app=web', '--port', '80:7000');
  const held = hold(t, node, client.netns, vip, 80);
  for (let i = 0; i < 100 && held.bytes < 5; i++) await sleep(50);
  assert.ok(held.name === 'a' || held.name === 'b', `the held connection reached a backend: ${JSON.stringify(held)}`);
  const gone = held.name as 'a' | 'b';
  const stays = gone === 'a' ? 'b' : 'a';

  // Relabelled, the pod lives on but is no backend any more.
  await ok(node, 'endpoint', 'labels', String(pods[gone].endpoint.id), 'app=retired');
  const view = JSON.parse(await ok(node, 'service', 'get', 'web', '-o', 'json')) as { frontends: { backends: string[] }[] };
  assert.deepEqual(view.frontends[0].backends, [`${pods[stays].endpoint.ipv4}:7000`]);
  const fresh = await connect(node, client.netns, 'tcp', vip, 80, 12);
  assert.deepEqual(new Set(fresh.map((r) => r.name ?? r.error)), new Set([stays]), 'new connections go to the remaining backend only');
  const before = held.bytes;
  await sleep(500);
  assert.ok(held.bytes > before, `the established connection to ${gone} still echoes (${before} → ${held.bytes} bytes)`);
  assert.equal(held.error, undefined);
});

test('a drained backend keeps its live connection, takes no new one, and goes when removed', async (t) => {
  const node = await TestNode.start(t, { nodeName: 'lb9' });
  const pods = { a: await node.addPod(t, 'web-a', { app: 'web' }), b: await node.addPod(t, 'web-b', { app: 'web' }) };
  const client = await node.addPod(t, 'client', { app: 'client' });
  await serve(t, pods.a.netns, 'a', 7000);
  await serve(t, pods.b.netns, 'b', 7000);
  const vip = await addService(node, 'web', '--backend', pods.a.endpoint.ipv4, '--backend', pods.b.endpoint.ipv4, '--port', '80:7000');
  const held = hold(t, node, client.netns, vip, 80);
  for (let i = 0; i < 100 && held.bytes < 5; i++) await sleep(50);
  assert.ok(held.name === 'a' || held.name === 'b', `the held connection reached a backend: ${JSON.stringify(held)}`);
  const gone = held.name as 'a' | 'b';
  const stays = gone === 'a' ? 'b' : 'a';

  const drained = JSON.parse(await ok(node, 'service', 'backend', 'drain', 'web', pods[gone].endpoint.ipv4, '-o', 'json')) as { backends: { ip: string; state?: string }[]; frontends: { backends: string[]; terminating?: string[] }[] };
  assert.deepEqual(drained.backends.find((b) => b.ip === pods[gone].endpoint.ipv4)?.state, 'terminating');
  assert.deepEqual(drained.frontends[0].backends, [`${pods[stays].endpoint.ipv4}:7000`]);
  assert.deepEqual(drained.frontends[0].terminating, [`${pods[gone].endpoint.ipv4}:7000`]);
  const listed = await ok(node, 'bpf', 'lb', 'list');
  assert.match(listed, new RegExp(`${pods[gone].endpoint.ipv4.replaceAll('.', '\\.')}:7000 \\(-, \\d+\\) terminating`), `the drained backend's entry stays, in no slot:\n${listed}`);
  const fresh = await connect(node, client.netns, 'tcp', vip, 80, 12);
  assert.deepEqual(new Set(fresh.map((r) => r.name ?? r.error)), new Set([stays]), 'new connections go to the remaining backend only');
  let before = held.bytes;
  await sleep(500);
  assert.ok(held.bytes > before, `the established connection to ${gone} still exchanges data (${before} → ${held.bytes} bytes)`);

  await ok(node, 'service', 'backend', 'remove', 'web', pods[gone].endpoint.ipv4);
  const after = await ok(node, 'bpf', 'lb', 'list');
  assert.ok(!after.includes(`${pods[gone].endpoint.ipv4}:7000`), `the removed backend's entry is gone:\n${after}`);
  before = held.bytes;
  await sleep(300);
  assert.ok(held.bytes > before, 'a connected socket has its address: it goes on at the socket LB');
  assert.equal(held.error, undefined);

  // Draining what is not a backend, or a service that selects its pods, is refused by name.
  const notOne = await cli(node, 'service', 'backend', 'drain', 'web', '10.244.99.99');
  assert.notEqual(notOne.code, 0);
  assert.match(notOne.stderr, /10\.244\.99\.99 is not one of its backends/);
});

test('a service with no backends refuses connections, counted as SERVICE_BACKEND_NOT_FOUND and shown as DROPPED flows', async (t) => {
  const node = await TestNode.start(t, { nodeName: 'lb3' });
  const client = await node.addPod(t, 'client', { app: 'client' });
  const vip = await addService(node, 'empty', '--selector', 'app=nobody', '--port', '80');
  const answers = await connect(node, client.netns, 'tcp', vip, 80, 3);
  assert.deepEqual(answers, [{ error: 'ECONNREFUSED' }, { error: 'ECONNREFUSED' }, { error: 'ECONNREFUSED' }]);
  const metrics = JSON.parse(await ok(node, 'bpf', 'metrics', 'list', '-o', 'json')) as { key: { reason: number; reasonName: string }; value: { packets: number } }[];
  const refused = metrics.find((m) => m.key.reason === 158);
  assert.equal(refused?.key.reasonName, 'SERVICE_BACKEND_NOT_FOUND');
  assert.ok((refused?.value.packets ?? 0) >= 3, `three refusals counted: ${JSON.stringify(refused)}`);

  // And visibly: a DROPPED flow per refusal, through the Observer API and as hubble observe prints it.
  const observer = connectObserver(`unix:${node.hubbleSocket}`);
  t.after(() => observer.close());
  const dropped: Flow[] = [];
  for (let i = 0; i < 50 && dropped.length < 3; i++) {
    if (i > 0) await sleep(100);
    dropped.length = 0;
    for await (const r of observer.getFlows({ whitelist: [{ verdict: ['DROPPED'], dropReasonDesc: ['SERVICE_BACKEND_NOT_FOUND'] }] })) if (r.flow) dropped.push(r.flow);
  }
  assert.equal(dropped.length, 3, `one flow per refused connect: ${JSON.stringify(dropped)}`);
  for (const flow of dropped) {
    assert.equal(flow.verdict, 'DROPPED');
    assert.equal(flow.dropReason, 158);
    assert.equal(flow.IP?.destination, vip);
    assert.equal(flow.l4?.TCP?.destinationPort, 80);
    assert.equal(flow.trafficDirection, 'EGRESS');
    assert.equal(flow.IP?.source, client.endpoint.ipv4, 'the source is the client pod, named by its network namespace');
    assert.equal(flow.source?.ID, client.endpoint.id);
    assert.equal(flow.source?.identity, client.endpoint.identity);
  }
  const printed = await ok(node, 'observe', '--verdict', 'DROPPED', '--to-ip', vip);
  const lines = printed.trim().split('\n');
  assert.equal(lines.length, 3, printed);
  for (const line of lines) assert.match(line, new RegExp(`^.*: default/client .*-> ${vip.replaceAll('.', '\\.')}:80 .*Service backend not found DROPPED \\(TCP Flags: SYN\\)$`));
});


test('the backend\'s ingress policy decides connections through the service', async (t) => {
  const node = await TestNode.start(t, { nodeName: 'lb4' });
  const web = await node.addPod(t, 'web', { app: 'web' });
  const empire = await node.addPod(t, 'tie', { org: 'empire' });
  const alliance = await node.addPod(t, 'xwing', { org: 'alliance' });
  await serve(t, web.netns, 'web', 7000);
  const vip = await addService(node, 'web', '--selector', 'app=web', '--port', '80:7000');
  await importPolicy(t, node, WEB_FROM_EMPIRE_POLICY);

  assert.deepEqual(await connect(node, empire.netns, 'tcp', vip, 80, 2), [{ name: 'web', peer: `${vip}:80` }, { name: 'web', peer: `${vip}:80` }], 'org=empire is allowed');
  assert.deepEqual(await connect(node, alliance.netns, 'tcp', vip, 80, 1), [{ error: 'timeout' }], 'org=alliance is dropped by the backend\'s ingress policy, through the service too');
});

const TO_SERVICES = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: client-to-web
spec:
  endpointSelector:
    matchLabels:
      app: client
  egress:
    - toServices:
        - k8sService:
            serviceName: web
        - k8sServiceSelector:
            selector:
              matchLabels:
                tier: legacy
      toPorts:
        - ports:
            - port: "7000"
              protocol: TCP
`;

/** Connects until `want` (a backend's name, or an error) answers, for up to `ms`: policy follows services asynchronously. */
async function eventually(node: TestNode, netns: string, address: string, port: number, want: string, ms = 10_000): Promise<string | undefined> {
  let got: string | undefined;
  for (const end = Date.now() + ms; Date.now() < end; ) {
    const [answer] = await connect(node, netns, 'tcp', address, port, 1);
    got = answer.name ?? answer.error;
    if (got === want) return got;
    await sleep(200);
  }
  return got;
}

test('egress toServices allows the service and its backends, follows backends as they come, and nothing else', async (t) => {
  const node = await TestNode.start(t, { nodeName: 'lb10' });
  const a = await node.addPod(t, 'web-a', { app: 'web' });
  const other = await node.addPod(t, 'other', { app: 'other' });
  const client = await node.addPod(t, 'client', { app: 'client' });
  await serve(t, a.netns, 'a', 7000);
  await serve(t, other.netns, 'other', 7000);
  const vip = await addService(node, 'web', '--selector', 'app=web', '--port', '80:7000');
  await importPolicy(t, node, TO_SERVICES);

  assert.deepEqual(await connect(node, client.netns, 'tcp', vip, 80, 2), [{ name: 'a', peer: `${vip}:80` }, { name: 'a', peer: `${vip}:80` }], 'the service is reachable');
  assert.deepEqual((await connect(node, client.netns, 'tcp', a.endpoint.ipv4, 7000, 1)).map((r) => r.name ?? r.error), ['a'], 'its backend directly too');
  assert.deepEqual((await connect(node, client.netns, 'tcp', other.endpoint.ipv4, 7000, 1)).map((r) => r.name ?? r.error), ['timeout'], 'another pod is not (egress default deny)');

  // A backend that joins the service is allowed as it comes.
  const b = await node.addPod(t, 'web-b', { app: 'web' });
  await serve(t, b.netns, 'b', 7000);
  assert.equal(await eventually(node, client.netns, b.endpoint.ipv4, 7000, 'b'), 'b', 'the added backend becomes reachable');

  // A service selected by its labels, whose explicit backend is the other pod: allowed once it exists.
  await addService(node, 'legacy', '--labels', 'tier=legacy', '--backend', other.endpoint.ipv4, '--port', '81:7000');
  assert.equal(await eventually(node, client.netns, other.endpoint.ipv4, 7000, 'other'), 'other', 'the labelled service\'s backend becomes reachable');
  await ok(node, 'service', 'delete', 'legacy');
  assert.equal(await eventually(node, client.netns, other.endpoint.ipv4, 7000, 'timeout'), 'timeout', 'and is denied again when the service goes');
});

test('services keep working while the agent is down; a restart adopts the maps and follows a new cgroup', async (t) => {
  const extraArgs: string[] = [];
  const node = await TestNode.start(t, { nodeName: 'lb5', extraArgs });
  const web = await node.addPod(t, 'web', { app: 'web' });
  const client = await node.addPod(t, 'client', { app: 'client' });
  await serve(t, web.netns, 'web', 7000);
  const vip = await addService(node, 'web', '--selector', 'app=web', '--port', '80:7000');
  const maps = await ok(node, 'bpf', 'lb', 'list', '-o', 'json');

  await node.stopAgent('SIGKILL');
  assert.deepEqual(await connect(node, client.netns, 'tcp', vip, 80, 1), [{ name: 'web', peer: `${vip}:80` }], 'translated with no agent running');

  // Restarted with the socket LB on another cgroup: the hooks move there, the maps stay as they were.
  const other = testCgroup(t);
  extraArgs.push('--socket-lb-cgroup', other);
  await node.startAgent();
  assert.equal(await ok(node, 'bpf', 'lb', 'list', '-o', 'json'), maps, 'the restarted agent adopted the maps as they were');
  assert.deepEqual(await connect(node, client.netns, 'tcp', vip, 80, 1, other), [{ name: 'web', peer: `${vip}:80` }], 'the new cgroup is served');
  // Processes left in the old cgroup still reach the service, through TC (bpf_lxc): what must be
  // gone is the hooks themselves.
  const linksDir = join(node.bpfRoot, 'links', 'sock');
  const cgroups = readdirSync(linksDir).map((name) => {
    using link = Link.openPinned(join(linksDir, name));
    return link.info().cgroupId;
  });
  assert.equal(cgroups.length, 4, 'four socket hooks pinned');
  assert.deepEqual(new Set(cgroups), new Set([statSync(other, { bigint: true }).ino]), 'every hook is on the new cgroup, none on the old');
});

test('ClientIP session affinity: each client pod keeps its backend until that backend leaves the service', async (t) => {
  const node = await TestNode.start(t, { nodeName: 'lb6' });
  const pods = { a: await node.addPod(t, 'web-a', { app: 'web' }), b: await node.addPod(t, 'web-b', { app: 'web' }) };
  const clients = [await node.addPod(t, 'client-1', { app: 'client' }), await node.addPod(t, 'client-2', { app: 'client' }), await node.addPod(t, 'client-3', { app: 'client' })];
  await serve(t, pods.a.netns, 'a', 7000);
  await serve(t, pods.b.netns, 'b', 7000);
  const vip = await addService(node, 'sticky', '--selector', 'app=web', '--port', '80:7000', '--session-affinity', 'ClientIP', '--session-affinity-timeout', '600');
  const chosen: string[] = [];
  for (const client of clients) {
    const names = new Set((await connect(node, client.netns, 'tcp', vip, 80, 10)).map((r) => r.name ?? r.error));
    assert.equal(names.size, 1, `one client, one backend: ${[...names].join(', ')}`);
    chosen.push([...names][0]!);
  }
  // The first client's backend leaves: its affinity no longer holds, the other backend takes it, and keeps it.
  const gone = chosen[0] as 'a' | 'b';
  await ok(node, 'endpoint', 'labels', String(pods[gone].endpoint.id), 'app=retired');
  const stays = gone === 'a' ? 'b' : 'a';
  const view = JSON.parse(await ok(node, 'service', 'get', 'sticky', '-o', 'json')) as { frontends: { backends: string[] }[] };
  assert.deepEqual(view.frontends[0].backends, [`${pods[stays].endpoint.ipv4}:7000`]);
  const after = new Set((await connect(node, clients[0].netns, 'tcp', vip, 80, 6)).map((r) => r.name ?? r.error));
  assert.deepEqual(after, new Set([stays]));
});

/** Joins the cgroup, then connects every 20 ms for `ms`, each attempt reading who answered; prints all attempts. */
const CHURN_CLIENT = `
const fs = require('node:fs'), net = require('node:net');
const [procs, host, port, ms] = process.argv.slice(1);
fs.writeFileSync(procs, String(process.pid));
const attempts = [];
const end = Date.now() + Number(ms);
const once = () => new Promise((resolve) => {
  const at = Date.now();
  const s = net.connect(Number(port), host);
  const timer = setTimeout(() => { s.destroy(); resolve({ at, error: 'timeout' }); }, 1000);
  s.once('data', (d) => { clearTimeout(timer); s.destroy(); resolve({ at, name: String(d).trim() }); });
  s.on('error', (e) => { clearTimeout(timer); resolve({ at, error: e.code }); });
});
(async () => {
  while (Date.now() < end) { attempts.push(await once()); await new Promise((r) => setTimeout(r, 20)); }
  console.log(JSON.stringify(attempts));
})();
`;

test('backend pods deleted and added while a client keeps connecting: every connection finds a live backend', async (t) => {
  const node = await TestNode.start(t, { nodeName: 'lb7' });
  const a = await node.addPod(t, 'web-a', { app: 'web' });
  const b = await node.addPod(t, 'web-b', { app: 'web' });
  const client = await node.addPod(t, 'client', { app: 'client' });
  await serve(t, a.netns, 'a', 7000);
  await serve(t, b.netns, 'b', 7000);
  const vip = await addService(node, 'web', '--selector', 'app=web', '--port', '80:7000');
  const run = inNs(client.netns, process.execPath, ['-e', CHURN_CLIENT, join(node.cgroup, 'cgroup.procs'), vip, '80', '9000'], 60_000);
  await sleep(2000);
  const deleting = Date.now();
  await node.client.call('DELETE', `/v1/endpoints/${a.endpoint.containerId}/eth0`);
  const deleted = Date.now();
  await sleep(1500);
  // A pod joins once it serves (what a readiness probe gives Kubernetes): created, serving, then labelled.
  const c = await node.addPod(t, 'web-c', { app: 'starting' });
  await serve(t, c.netns, 'c', 7000);
  await ok(node, 'endpoint', 'labels', String(c.endpoint.id), 'app=web');
  const added = Date.now();
  const attempts = JSON.parse(await run) as { at: number; name?: string; error?: string }[];
  assert.ok(attempts.length > 100, `the client kept connecting: ${attempts.length} attempts`);
  const failed = attempts.filter((x) => x.error);
  assert.deepEqual(failed, [], `every attempt reached a backend (a deleted ${deleting}→${deleted}, c added by ${added})`);
  assert.deepEqual(attempts.filter((x) => x.at > deleted && x.name === 'a'), [], 'no connection to the deleted pod once it is gone');
  assert.ok(attempts.some((x) => x.at > added && x.name === 'c'), 'the added pod takes connections');
});

test('a NodePort service is reached at a node address and its node port, a ClusterIP port is not', async (t) => {
  const node = await TestNode.start(t, { nodeName: 'lb8' });
  const web = await node.addPod(t, 'web', { app: 'web' });
  const client = await node.addPod(t, 'client', { app: 'client' });
  await serve(t, web.netns, 'web', 7000);
  const vip = await addService(node, 'web', '--type', 'NodePort', '--selector', 'app=web', '--port', '80:7000:30080');
  await addService(node, 'internal', '--selector', 'app=web', '--port', '81:7000');
  const nodeIp = node.options.nodeIp ?? '192.0.2.1';
  assert.deepEqual(await connect(node, client.netns, 'tcp', nodeIp, 30080, 2), [{ name: 'web', peer: `${nodeIp}:30080` }, { name: 'web', peer: `${nodeIp}:30080` }]);
  assert.deepEqual(await connect(node, client.netns, 'tcp', vip, 80, 1), [{ name: 'web', peer: `${vip}:80` }], 'the ClusterIP still works');
  const [internal] = await connect(node, client.netns, 'tcp', nodeIp, 81, 1);
  assert.notEqual(internal.name, 'web', 'a ClusterIP service\'s port is no node port');
  assert.match(await ok(node, 'bpf', 'lb', 'list'), /0\.0\.0\.0:30080\/TCP/);
});
