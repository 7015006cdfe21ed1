/**
 * North-south services: a client namespace on the underlay, outside the cluster, reaches a
 * NodePort at either node's address and a LoadBalancer IP routed to a node; bpf_host on each
 * node's underlay device translates, with backends on the node reached and on the other one (SNAT),
 * and with externalTrafficPolicy Local only the reached node's (none: dropped).
 * @module
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { TestNode, Underlay, addNetns, cli, inNs, sleep, spawnInNs } from './support/cluster.ts';
import { join } from 'node:path';
import { BpfMap } from '../src/ebpf/index.ts';
import { ctTuple } from '../src/datapath/index.ts';
import { LbMapName, lb4Nat, NatKind, type LbEntry } from '../src/loadbalancer/index.ts';

const SERVER = `
const [name, port] = process.argv.slice(1);
require('node:net').createServer((s) => s.on('data', () => s.write(name + ' ' + s.remoteAddress + '\\n'))).listen(Number(port), '0.0.0.0', () => console.log('ready'));
`;

/** One TCP exchange: who answered and the client address it saw, or the error. */
const CLIENT = `
const [host, port] = process.argv.slice(1);
const s = require('node:net').connect(Number(port), host, () => s.write('x'));
const timer = setTimeout(() => { console.log('timeout'); process.exit(0); }, 2000);
s.once('data', (d) => { console.log(String(d).trim()); clearTimeout(timer); s.destroy(); });
s.on('error', (e) => { console.log(e.code); clearTimeout(timer); });
`;

async function ask(netns: string, host: string, port: number): Promise<string> {
  return (await inNs(netns, process.execPath, ['-e', CLIENT, host, String(port)])).trim();
}

test('a client outside the cluster reaches a NodePort on either node and a LoadBalancer IP, served by backends on both nodes (Cluster) or the reached node only (Local)', async (t) => {
  const underlay = await Underlay.create(t);
  const etcd = await underlay.startEtcd(t);
  const n1 = await TestNode.start(t, { nodeName: 'n1', nodeIp: '192.168.100.1', underlay, etcd });
  const n2 = await TestNode.start(t, { nodeName: 'n2', nodeIp: '192.168.100.2', underlay, etcd });
  const outside = await addNetns(t, 'cto');
  await underlay.attach(outside, '192.168.100.50');
  await inNs(outside, 'ip', ['route', 'add', '192.168.200.0/24', 'via', '192.168.100.1']);

  const pods = [await n1.addPod(t, 'web-n1', { app: 'web' }), await n2.addPod(t, 'web-n2', { app: 'web', only: 'n2' })];
  for (const [i, pod] of pods.entries()) {
    const server = spawnInNs(pod.netns, process.execPath, ['-e', SERVER, `web-n${i + 1}`, '7000']);
    t.after(() => void server.kill('SIGKILL'));
    await new Promise((resolve) => server.stdout?.once('data', resolve));
  }
  const added = await cli(n1, 'service', 'add', 'web', '--type', 'LoadBalancer', '--selector', 'app=web', '--port', '80:7000:30080', '--load-balancer-ip', '192.168.200.10', '-o', 'json');
  assert.equal(added.code, 0, added.stderr);
  // externalTrafficPolicy Local: clients from outside get the backends of the node they reached.
  const local = await cli(n1, 'service', 'add', 'web-local', '--type', 'NodePort', '--selector', 'app=web', '--port', '81:7000:30081', '--external-traffic-policy', 'Local');
  assert.equal(local.code, 0, local.stderr);
  const only2 = await cli(n1, 'service', 'add', 'only-n2', '--type', 'NodePort', '--selector', 'only=n2', '--port', '82:7000:30082', '--external-traffic-policy', 'Local');
  assert.equal(only2.code, 0, only2.stderr);
  for (const deadline = Date.now() + 15_000; ; await sleep(200)) {
    const all = await Promise.all([n1, n2].map(async (n) => JSON.parse((await cli(n, 'bpf', 'lb', 'list', '-o', 'json')).stdout) as LbEntry[]));
    const want = (e: LbEntry) => (e.frontend.includes(':82/') || e.frontend.includes(':30082/') ? 1 : 2);
    if (all.every((entries) => entries.length >= 7 && entries.every((e) => e.backends.length === want(e)))) break;
    assert.ok(Date.now() < deadline, `every frontend with both backends on both nodes: ${JSON.stringify(all)}`);
  }

  const results: Record<string, string[]> = {};
  for (const [host, port] of [['192.168.100.1', 30080], ['192.168.100.2', 30080], ['192.168.200.10', 80]] as const) {
    const answers: string[] = (results[`${host}:${port}`] = []);
    for (let k = 0; k < 16 && new Set(answers).size < 2; k++) answers.push(await ask(outside, host, port));
  }
  for (const [target, answers] of Object.entries(results)) {
    assert.ok(answers.every((a) => /^web-n[12] /.test(a)), `${target}: every connection answered: ${JSON.stringify(results)}`);
    assert.deepEqual([...new Set(answers.map((a) => a.split(' ')[0]))].sort(), ['web-n1', 'web-n2'], `${target}: backends on both nodes`);
    // The backend on the node the client asked sees the client; the other sees that node (SNAT).
    const entry = target.startsWith('192.168.100.2') ? { local: 'web-n2', node: '192.168.100.2' } : { local: 'web-n1', node: '192.168.100.1' };
    for (const answer of new Set(answers)) {
      const [name, seen] = answer.split(' ');
      assert.equal(seen, name === entry.local ? '192.168.100.50' : entry.node, `${target}: ${answer}`);
    }
  }

  for (const [node, name] of [['192.168.100.1', 'web-n1'], ['192.168.100.2', 'web-n2']]) {
    const answers = new Set<string>();
    for (let k = 0; k < 8; k++) answers.add(await ask(outside, node, 30081));
    assert.deepEqual([...answers], [`${name} 192.168.100.50`], `Local at ${node}: its own backend only, which sees the client`);
  }
  assert.equal(await ask(outside, '192.168.100.2', 30082), 'web-n2 192.168.100.50');
  assert.equal(await ask(outside, '192.168.100.1', 30082), 'timeout', 'Local with no backend on the node: dropped');
  const metrics = JSON.parse((await cli(n1, 'bpf', 'metrics', 'list', '-o', 'json')).stdout) as { key: { reason: number }; value: { packets: number } }[];
  assert.ok((metrics.find((m) => m.key.reason === 158)?.value.packets ?? 0) > 0, 'counted as SERVICE_BACKEND_NOT_FOUND (158)');
});

test('DSR: a backend on another node sees the client and answers it directly, as from the NodePort', async (t) => {
  const { n1, n2, outside, pod } = await nodePortCluster(t, 'dsr', 'tunnel');
  for (let k = 0; k < 3; k++) assert.equal(await ask(outside, '192.168.100.1', 30080), 'web-n2 192.168.100.50', `connection ${k}: the backend on n2 sees the client`);
  // n1 translated no address back (no SNAT); n2 learnt the frontend its replies came from.
  const nat = natEntries;
  assert.deepEqual(nat(n1).filter((e) => e.kind === NatKind.REV_DST), [], 'n1 SNATed nothing');
  const learnt = nat(n2).filter((e) => e.kind === NatKind.REV_SRC);
  assert.equal(learnt.length, 3, 'n2 learnt each connection\'s frontend');
  assert.ok(learnt.every((e) => e.frontend === '192.168.100.1:30080'), JSON.stringify(learnt));

  // A pod is no bpf_host: a DSR option it writes itself (root in its namespace may) names no frontend.
  const rogue = await n1.addPod(t, 'rogue', { app: 'rogue' });
  const send = `import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, bytes([0x9a, 8, 0, 53, 6, 6, 6, 6])); [s.sendto(b'x', ('${pod.endpoint.ipv4}', 7000)) for _ in range(3)]`;
  await inNs(rogue.netns, 'python3', ['-c', send]);
  await sleep(300);
  assert.deepEqual(nat(n2).filter((e) => e.frontend.startsWith('6.6.6.6')), [], 'an option from a pod is not learnt');
});

/** Two nodes on an underlay and a client namespace outside the cluster; a web pod on n2 serving NodePort 30080. */
async function nodePortCluster(t: TestContext, lbMode: 'snat' | 'dsr', routingMode: 'tunnel' | 'native') {
  const underlay = await Underlay.create(t);
  const etcd = await underlay.startEtcd(t);
  const extraArgs = ['--lb-mode', lbMode];
  const n1 = await TestNode.start(t, { nodeName: 'n1', nodeIp: '192.168.100.1', underlay, etcd, extraArgs, routingMode });
  const n2 = await TestNode.start(t, { nodeName: 'n2', nodeIp: '192.168.100.2', underlay, etcd, extraArgs, routingMode });
  const outside = await addNetns(t, 'cto');
  await underlay.attach(outside, '192.168.100.50');
  const pod = await n2.addPod(t, 'web-n2', { app: 'web' });
  const server = spawnInNs(pod.netns, process.execPath, ['-e', SERVER, 'web-n2', '7000']);
  t.after(() => void server.kill('SIGKILL'));
  await new Promise((resolve) => server.stdout?.once('data', resolve));
  const added = await cli(n1, 'service', 'add', 'web', '--type', 'NodePort', '--selector', 'app=web', '--port', '80:7000:30080');
  assert.equal(added.code, 0, added.stderr);
  for (const deadline = Date.now() + 15_000; ; await sleep(200)) {
    const entries = JSON.parse((await cli(n1, 'bpf', 'lb', 'list', '-o', 'json')).stdout) as LbEntry[];
    // The ClusterIP, the node port at any node address and at n1's own.
    if (entries.length === 3 && entries.every((e) => e.backends.length === 1)) break;
    assert.ok(Date.now() < deadline, `the service on n1: ${JSON.stringify(entries)}`);
  }
  return { n1, n2, outside, pod };
}

function natEntries(node: TestNode) {
  using map = BpfMap.openPinned(join(node.bpfRoot, 'maps', LbMapName.NAT), ctTuple, lb4Nat);
  return [...map.entries()].map(([key, value]) => ({ kind: key.flags, frontend: `${value.frontend_addr}:${value.frontend_port}` }));
}

test('native routing, SNAT: a client outside reaches a NodePort whose backend is on the other node, which sees the node it reached; so does a pod outside the socket-LB cgroup', async (t) => {
  const { n1, outside } = await nodePortCluster(t, 'snat', 'native');
  for (let k = 0; k < 3; k++) assert.equal(await ask(outside, '192.168.100.1', 30080), 'web-n2 192.168.100.1', `connection ${k}: through n1, SNATed`);
  assert.equal(await ask(outside, '192.168.100.2', 30080), 'web-n2 192.168.100.50', 'at the backend\'s own node: the client itself');

  // A pod the socket hooks do not see (the test's process is in no node's cgroup): its own node's
  // bpf_lxc translates the node port at that node's address in TC, and the reply comes back from it.
  const client = await n1.addPod(t, 'client-n1', { app: 'client' });
  for (let k = 0; k < 3; k++) assert.equal(await ask(client.netns, '192.168.100.1', 30080), `web-n2 ${client.endpoint.ipv4}`, `connection ${k}: its own node's NodePort, through TC`);
  const ct = JSON.parse((await cli(n1, 'bpf', 'ct', 'list', '-o', 'json')).stdout) as { key: { saddr: string; daddr: string; dport: number } }[];
  assert.equal(ct.filter((e) => e.key.saddr === client.endpoint.ipv4 && e.key.daddr === '192.168.100.1' && e.key.dport === 30080).length, 3, 'n1 tracked each frontend tuple in TC');
  assert.match(await ask(client.netns, '192.168.100.2', 30080), /^web-n2 /, 'another node\'s NodePort: that node translates');
});

test('native routing, DSR: the backend on the other node sees the client and answers it directly, as from the NodePort; a forged option is not learnt', async (t) => {
  const { n1, n2, outside, pod } = await nodePortCluster(t, 'dsr', 'native');
  for (let k = 0; k < 3; k++) assert.equal(await ask(outside, '192.168.100.1', 30080), 'web-n2 192.168.100.50', `connection ${k}: the backend on n2 sees the client`);
  assert.deepEqual(natEntries(n1).filter((e) => e.kind === NatKind.REV_DST), [], 'n1 SNATed nothing');
  const learnt = natEntries(n2).filter((e) => e.kind === NatKind.REV_SRC);
  assert.equal(learnt.length, 3, `n2 learnt each connection's frontend: ${JSON.stringify(learnt)}`);
  assert.ok(learnt.every((e) => e.frontend === '192.168.100.1:30080'), JSON.stringify(learnt));

  // Anyone outside can put the option on a packet routed to a pod: only a real frontend is learnt,
  // else the backend's replies would leave from whatever address the sender chose.
  await inNs(outside, 'ip', ['route', 'add', pod.endpoint.ipv4, 'via', '192.168.100.2']);
  const forge = (addr: number[], port: number) =>
    `import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, bytes([0x9a, 8, ${port >> 8}, ${port & 0xff}, ${addr.join(', ')}])); [s.sendto(b'x', ('${pod.endpoint.ipv4}', 7000)) for _ in range(3)]`;
  await inNs(outside, 'python3', ['-c', forge([6, 6, 6, 6], 53)]);
  await inNs(outside, 'python3', ['-c', forge([192, 168, 100, 1], 30999)]);
  await sleep(300);
  assert.deepEqual(natEntries(n2).filter((e) => e.frontend.startsWith('6.6.6.6') || e.frontend.endsWith(':30999')), [], 'an option naming no frontend is not learnt');
});
