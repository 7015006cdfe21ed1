/**
 * Services for pods the socket hooks do not see (outside --socket-lb-cgroup): bpf_lxc translates
 * the frontend in TC. Two nodes in tunnel mode sharing etcd; the clients run in the test's own
 * cgroup, never the node's, so every connection here reaches a backend only through TC.
 * @module
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TestNode, Underlay, WEB_FROM_EMPIRE_POLICY, cli, inNs, sleep, spawnInNs } from './support/cluster.ts';
import type { LbEntry } from '../src/loadbalancer/index.ts';

/** TCP and UDP: answers each message with the server's name. */
const SERVER = `
const [name, port] = process.argv.slice(1);
const net = require('node:net'), dgram = require('node:dgram');
net.createServer((s) => s.on('data', () => s.write(name + '\\n'))).listen(Number(port), '0.0.0.0', () => {
  const u = dgram.createSocket('udp4');
  u.on('message', (m, r) => u.send(name, r.port, r.address));
  u.bind(Number(port), '0.0.0.0', () => console.log('ready'));
});
`;

/**
 * `count` messages on one connection (TCP) or one connected socket (UDP); prints JSON: the names
 * that answered, in order, and the peer address the socket saw the answers come from.
 */
const CLIENT = `
const net = require('node:net'), dgram = require('node:dgram');
const [proto, host, port, count] = process.argv.slice(1);
const names = [];
let peer;
const done = (error) => { console.log(JSON.stringify({ names, peer, error })); process.exit(0); };
const timer = setTimeout(() => done('timeout'), 4000);
if (proto === 'tcp') {
  const s = net.connect(Number(port), host, () => { peer = s.remoteAddress; s.write('x'); });
  let buf = '';
  s.on('data', (d) => {
    buf += d;
    const lines = buf.split('\\n'); buf = lines.pop();
    for (const l of lines) names.push(l);
    if (names.length >= Number(count)) { clearTimeout(timer); s.destroy(); done(); }
    else setTimeout(() => s.write('x'), 20);
  });
  s.on('error', (e) => { clearTimeout(timer); done(e.code); });
} else {
  const u = dgram.createSocket('udp4');
  u.on('message', (m, r) => {
    names.push(String(m)); peer = r.address;
    if (names.length >= Number(count)) { clearTimeout(timer); u.close(); done(); }
    else setTimeout(() => u.send('x', Number(port), host), 20);
  });
  u.send('x', Number(port), host);
}
`;

interface Answer {
  names: string[];
  peer?: string;
  error?: string;
}

async function ask(netns: string, proto: 'tcp' | 'udp', host: string, port: number, count = 1): Promise<Answer> {
  return JSON.parse(await inNs(netns, process.execPath, ['-e', CLIENT, proto, host, String(port), String(count)])) as Answer;
}

async function lbEntries(node: TestNode): Promise<LbEntry[]> {
  return JSON.parse((await cli(node, 'bpf', 'lb', 'list', '-o', 'json')).stdout) as LbEntry[];
}

/** Waits until every node's maps hold each frontend with the expected number of backends. */
async function waitForBackends(nodes: TestNode[], want: Record<string, number>): Promise<void> {
  for (const deadline = Date.now() + 15_000; ; await sleep(200)) {
    const all = await Promise.all(nodes.map(lbEntries));
    const ok = all.every((entries) => Object.entries(want).every(([frontend, n]) => entries.find((e) => e.frontend.startsWith(frontend))?.backends.length === n));
    if (ok) return;
    assert.ok(Date.now() < deadline, `frontends ${JSON.stringify(want)} on every node: ${JSON.stringify(all)}`);
  }
}

test('pods outside the socket-LB cgroup reach ClusterIP services through TC: both nodes, TCP and UDP, the ClusterIP as peer, one backend per connection, no backend is a drop', async (t) => {
  const underlay = await Underlay.create(t);
  const etcd = await underlay.startEtcd(t);
  const n1 = await TestNode.start(t, { nodeName: 'n1', nodeIp: '192.168.100.1', underlay, etcd });
  const n2 = await TestNode.start(t, { nodeName: 'n2', nodeIp: '192.168.100.2', underlay, etcd });
  const backends = [await n1.addPod(t, 'web-n1', { app: 'web' }), await n2.addPod(t, 'web-n2', { app: 'web' })];
  const client = await n1.addPod(t, 'client', { app: 'client' });
  for (const [i, pod] of backends.entries()) {
    const server = spawnInNs(pod.netns, process.execPath, ['-e', SERVER, `web-n${i + 1}`, '7000']);
    t.after(() => void server.kill('SIGKILL'));
    await new Promise((resolve) => server.stdout?.once('data', resolve));
  }
  const added = await cli(n1, 'service', 'add', 'web', '--selector', 'app=web', '--port', 'tcp=80:7000/TCP', '--port', 'udp=53:7000/UDP', '-o', 'json');
  assert.equal(added.code, 0, added.stderr);
  const vip = (JSON.parse(added.stdout) as { clusterIP: string }).clusterIP;
  const empty = await cli(n1, 'service', 'add', 'empty', '--selector', 'app=nobody', '--port', '81:7000/TCP', '-o', 'json');
  assert.equal(empty.code, 0, empty.stderr);
  const emptyVip = (JSON.parse(empty.stdout) as { clusterIP: string }).clusterIP;
  await waitForBackends([n1, n2], { [`${vip}:80/TCP`]: 2, [`${vip}:53/UDP`]: 2 });

  for (const proto of ['tcp', 'udp'] as const) {
    const port = proto === 'tcp' ? 80 : 53;
    const reached = new Set<string>();
    for (let k = 0; k < 16 && reached.size < 2; k++) {
      const answer = await ask(client.netns, proto, vip, port);
      assert.equal(answer.error, undefined, `${proto} to ${vip}:${port}: ${JSON.stringify(answer)}\n${n1.log.slice(-2000)}`);
      assert.equal(answer.peer, vip, `${proto}: the answers come from the ClusterIP, not the backend`);
      reached.add(answer.names[0]);
    }
    assert.deepEqual([...reached].sort(), ['web-n1', 'web-n2'], `${proto}: connections reach the backend on this node and on the other`);

    // One connection, one backend: 30 round trips (random selection would scatter them).
    const long = await ask(client.netns, proto, vip, port, 30);
    assert.equal(long.error, undefined, JSON.stringify(long));
    assert.equal(long.names.length, 30);
    assert.equal(new Set(long.names).size, 1, `${proto}: every packet of a connection goes to one backend: ${long.names.join(',')}`);
  }

  // No backend: the SYN is dropped as SERVICE_BACKEND_NOT_FOUND (158), visible as a Hubble flow.
  const refused = await ask(client.netns, 'tcp', emptyVip, 81);
  assert.equal(refused.error, 'timeout', JSON.stringify(refused));
  for (const deadline = Date.now() + 10_000; ; await sleep(200)) {
    const flows = (await cli(n1, 'observe', '--last', '1000', '--verdict', 'DROPPED', '-o', 'json')).stdout
      .split('\n')
      .filter(Boolean)
      .map((line) => JSON.parse(line) as { flow?: { drop_reason_desc?: string; IP?: { destination?: string }; source?: { pod_name?: string } } });
    const drop = flows.find((f) => f.flow?.drop_reason_desc === 'SERVICE_BACKEND_NOT_FOUND');
    if (drop) {
      assert.equal(drop.flow?.IP?.destination, emptyVip, 'the drop names the frontend the client asked for');
      break;
    }
    assert.ok(Date.now() < deadline, `a SERVICE_BACKEND_NOT_FOUND drop flow: ${JSON.stringify(flows.slice(-5))}`);
  }
  const metrics = JSON.parse((await cli(n1, 'bpf', 'metrics', 'list', '-o', 'json')).stdout) as { key: { reason: number }; value: { packets: number } }[];
  assert.ok((metrics.find((m) => m.key.reason === 158)?.value.packets ?? 0) > 0, 'counted under reason 158');
});

/** The backend accepts org=empire only; org=empire may send only to app=web (so not to the "world" a ClusterIP would be). */
const POLICY = `${WEB_FROM_EMPIRE_POLICY}---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: empire-to-web
spec:
  endpointSelector:
    matchLabels:
      org: empire
  egress:
    - toEndpoints:
        - matchLabels:
            app: web
`;

test('through TC the policies judge the backend: the client\'s egress toward it and its own ingress', async (t) => {
  const node = await TestNode.start(t, { nodeName: 'tcpol' });
  const web = await node.addPod(t, 'web', { app: 'web' });
  const empire = await node.addPod(t, 'tie', { org: 'empire' });
  const alliance = await node.addPod(t, 'xwing', { org: 'alliance' });
  const server = spawnInNs(web.netns, process.execPath, ['-e', SERVER, 'web', '7000']);
  t.after(() => void server.kill('SIGKILL'));
  await new Promise((resolve) => server.stdout?.once('data', resolve));
  const added = await cli(node, 'service', 'add', 'web', '--selector', 'app=web', '--port', '80:7000/TCP', '-o', 'json');
  assert.equal(added.code, 0, added.stderr);
  const vip = (JSON.parse(added.stdout) as { clusterIP: string }).clusterIP;
  const dir = mkdtempSync(join(tmpdir(), 'ciliate-tc-test-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'policy.yaml'), POLICY);
  const imported = await cli(node, 'policy', 'import', join(dir, 'policy.yaml'));
  assert.equal(imported.code, 0, imported.stderr);
  assert.equal((await cli(node, 'policy', 'wait', /revision: (\d+)/.exec(imported.stdout)![1])).code, 0);
  await waitForBackends([node], { [`${vip}:80/TCP`]: 1 });

  const allowed = await ask(empire.netns, 'tcp', vip, 80, 3);
  assert.deepEqual(allowed, { names: ['web', 'web', 'web'], peer: vip }, 'org=empire: its egress allows app=web, the backend\'s ingress allows it');
  assert.equal((await ask(alliance.netns, 'tcp', vip, 80)).error, 'timeout', 'org=alliance: dropped by the backend\'s ingress policy');
  const flows = (await cli(node, 'observe', '--last', '200', '--verdict', 'DROPPED', '-o', 'json')).stdout
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line) as { flow?: { drop_reason_desc?: string; IP?: { source?: string; destination?: string } } });
  const denied = flows.find((f) => f.flow?.drop_reason_desc === 'POLICY_DENIED' && f.flow.IP?.source === alliance.endpoint.ipv4);
  assert.equal(denied?.flow?.IP?.destination, web.endpoint.ipv4, `the policy drop names the backend, not the ClusterIP: ${JSON.stringify(flows.slice(-3))}`);
});
