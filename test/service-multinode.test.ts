/**
 * Services across nodes sharing etcd: a service created on one node is served by every node,
 * its backends are the selected pods of every node, a client on either node reaches a backend on
 * the other through the ClusterIP, and with Maglev both nodes' kernels hold the same table (by
 * backend address; the ids behind it are node-local).
 * @module
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { BpfMap, u16, u32 } from '../src/ebpf/index.ts';
import { LbMapName, readMaglevInner, type LbEntry } from '../src/loadbalancer/index.ts';
import { TestNode, Underlay, cli, inNs, sleep, spawnInNs } from './support/cluster.ts';

/** Who answered a TCP connection to host:port from a process in `cgroup`: the server's first line. */
const CLIENT = `
const fs = require('node:fs'), net = require('node:net');
const [procs, host, port] = process.argv.slice(1);
fs.writeFileSync(procs, String(process.pid));
const s = net.connect(Number(port), host);
const timer = setTimeout(() => { console.log('timeout'); process.exit(0); }, 3000);
s.once('data', (d) => { console.log(String(d).trim()); clearTimeout(timer); s.destroy(); });
s.on('error', (e) => { console.log(e.code); clearTimeout(timer); });
`;

const SERVER = `
const [name, port] = process.argv.slice(1);
require('node:net').createServer((s) => s.end(name + '\\n')).listen(Number(port), '0.0.0.0', () => console.log('ready'));
`;

async function whoAnswers(node: TestNode, netns: string, host: string, port: number): Promise<string> {
  return (await inNs(netns, process.execPath, ['-e', CLIENT, join(node.cgroup, 'cgroup.procs'), host, String(port)])).trim();
}

/** A node's Maglev table of `frontend`, slot by slot, as backend addresses. */
function maglevByAddress(node: TestNode, entry: LbEntry): string[] {
  using outer = BpfMap.openPinned(join(node.bpfRoot, 'maps', LbMapName.MAGLEV), u16, u32);
  using inner = BpfMap.fromId(outer.lookup(entry.revNat)!);
  const ids = readMaglevInner(inner)!;
  const address = new Map(entry.backends.map((b) => [b.id, b.address!]));
  return [...ids].map((id) => address.get(id) ?? `?${id}`);
}

test('a service defined on one node is served on both, with the same Maglev table', async (t) => {
  const underlay = await Underlay.create(t);
  const etcd = await underlay.startEtcd(t);
  const extraArgs = ['--lb-algorithm', 'maglev'];
  const n1 = await TestNode.start(t, { nodeName: 'n1', nodeIp: '192.168.100.1', underlay, etcd, extraArgs });
  const n2 = await TestNode.start(t, { nodeName: 'n2', nodeIp: '192.168.100.2', underlay, etcd, extraArgs });
  const backends = [await n2.addPod(t, 'web-n2a', { app: 'web' }), await n2.addPod(t, 'web-n2b', { app: 'web' }), await n1.addPod(t, 'web-n1', { app: 'web' })];
  const clients = [await n1.addPod(t, 'client-n1', { app: 'client' }), await n2.addPod(t, 'client-n2', { app: 'client' })];
  for (const [i, pod] of backends.entries()) {
    const server = spawnInNs(pod.netns, process.execPath, ['-e', SERVER, `web${i}`, '7000']);
    t.after(() => void server.kill('SIGKILL'));
    await new Promise((resolve) => server.stdout?.once('data', resolve));
  }
  const added = await cli(n1, 'service', 'add', 'web', '--selector', 'app=web', '--port', '80:7000', '-o', 'json');
  assert.equal(added.code, 0, added.stderr);
  const vip = (JSON.parse(added.stdout) as { clusterIP: string }).clusterIP;

  // Node 2 learns the service and all three backends (two of its own, one of node 1) from the store.
  let entries: LbEntry[][] = [];
  for (const deadline = Date.now() + 10_000; ; await sleep(200)) {
    entries = await Promise.all([n1, n2].map(async (node) => JSON.parse((await cli(node, 'bpf', 'lb', 'list', '-o', 'json')).stdout) as LbEntry[]));
    if (entries.every((e) => e.length === 1 && e[0].backends.length === 3)) break;
    assert.ok(Date.now() < deadline, `both nodes have the service with 3 backends: ${JSON.stringify(entries)}`);
  }
  assert.deepEqual(entries.map((e) => e[0].algorithm), ['maglev', 'maglev']);
  const [table1, table2] = [maglevByAddress(n1, entries[0][0]), maglevByAddress(n2, entries[1][0])];
  assert.equal(table1.filter((a) => a.startsWith('?')).length, 0, 'every slot names a backend');
  assert.deepEqual(table1, table2, 'the same backends give the same table on both nodes');

  // From either node, the ClusterIP reaches backends on both nodes.
  for (const [i, node] of [n1, n2].entries()) {
    const answered = new Set<string>();
    for (let k = 0; k < 12 && answered.size < 3; k++) answered.add(await whoAnswers(node, clients[i].netns, vip, 80));
    assert.ok([...answered].every((a) => /^web[0-2]$/.test(a)), `node ${node.options.nodeName}: ${[...answered].join(', ')}`);
    assert.ok(answered.size >= 2, `node ${node.options.nodeName}: connections reached several backends, across nodes: ${[...answered].join(', ')}`);
  }
});
