/**
 * Maglev at a configured table size, differential on the real kernel: with `--lb-algorithm
 * maglev --maglev-table-size 1021`, every connection a pod outside the socket-LB cgroup makes to
 * a ClusterIP reaches the backend the TS reference predicts from the connection's tuple (its
 * hash, bpf/lib/lb_skb.h) and the reference table of that size, and the socket hooks balance
 * over the same table.
 * @module
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { TestNode, cli, inNs, spawnInNs } from './support/cluster.ts';
import { backendName, lb4TupleHash, maglevSeed, maglevTable, DEFAULT_MAGLEV_HASH_SEED, type LbEntry } from '../src/loadbalancer/index.ts';

const SERVER = `
const [name, port] = process.argv.slice(1);
require('node:net').createServer((s) => s.end(name + '\\n')).listen(Number(port), '0.0.0.0', () => console.log('ready'));
`;

/** One TCP connection per local port (joining `procs`' cgroup first when given): who answered, and the peer seen. */
const CLIENT = `
const fs = require('node:fs'), net = require('node:net');
const [procs, host, port, ...locals] = process.argv.slice(1);
if (procs) fs.writeFileSync(procs, String(process.pid));
const one = (localPort) => new Promise((resolve) => {
  const s = net.connect({ port: Number(port), host, ...(localPort ? { localPort: Number(localPort) } : {}) });
  const timer = setTimeout(() => { s.destroy(); resolve({ error: 'timeout' }); }, 2000);
  s.once('data', (d) => { clearTimeout(timer); resolve({ name: String(d).trim(), peer: s.remoteAddress }); s.destroy(); });
  s.on('error', (e) => { clearTimeout(timer); resolve({ error: e.code }); });
});
(async () => { const out = []; for (const l of locals) out.push(await one(l)); console.log(JSON.stringify(out)); })();
`;

const SIZE = 1021;

test('at a configured Maglev table size, each connection through TC reaches the backend the TS reference picks for its tuple', async (t) => {
  const node = await TestNode.start(t, { nodeName: 'mg1', extraArgs: ['--lb-algorithm', 'maglev', '--maglev-table-size', String(SIZE)] });
  const pods = [await node.addPod(t, 'web-a', { app: 'web' }), await node.addPod(t, 'web-b', { app: 'web' }), await node.addPod(t, 'web-c', { app: 'web' })];
  const client = await node.addPod(t, 'client', { app: 'client' });
  const names = new Map<string, string>();
  for (const [i, pod] of pods.entries()) {
    const server = spawnInNs(pod.netns, process.execPath, ['-e', SERVER, `web${i}`, '7000']);
    t.after(() => void server.kill('SIGKILL'));
    await new Promise((resolve) => server.stdout?.once('data', resolve));
    names.set(pod.endpoint.ipv4, `web${i}`);
  }
  const added = await cli(node, 'service', 'add', 'web', '--selector', 'app=web', '--port', '80:7000', '-o', 'json');
  assert.equal(added.code, 0, added.stderr);
  const vip = (JSON.parse(added.stdout) as { clusterIP: string }).clusterIP;
  const entries = JSON.parse((await cli(node, 'bpf', 'lb', 'list', '-o', 'json')).stdout) as LbEntry[];
  const entry = entries.find((e) => e.frontend === `${vip}:80/TCP`);
  assert.equal(entry?.backends.length, 3, JSON.stringify(entries));

  // The reference: the table of this size for these backends, by the node's ids.
  const table = maglevTable(entry!.backends.map((b) => ({ id: b.id, name: backendName({ ip: b.address!.split(':')[0], port: 7000, protocol: 'TCP' }) })), SIZE, maglevSeed(DEFAULT_MAGLEV_HASH_SEED));
  const nameOfId = new Map(entry!.backends.map((b) => [b.id, names.get(b.address!.split(':')[0])]));
  const ports = Array.from({ length: 30 }, (_, i) => 41000 + i * 7);
  const answers = JSON.parse(await inNs(client.netns, process.execPath, ['-e', CLIENT, '', vip, '80', ...ports.map(String)], 60_000)) as { name?: string; peer?: string; error?: string }[];
  const predicted = ports.map((sport) => nameOfId.get(table[lb4TupleHash({ saddr: client.endpoint.ipv4, daddr: vip, sport, dport: 80 }) % SIZE]));
  assert.deepEqual(answers.map((a) => a.name ?? a.error), predicted, 'the kernel picked the reference\'s backend for every tuple');
  assert.ok(new Set(predicted).size > 1, 'the tuples spread over several backends');
  assert.deepEqual(new Set(answers.map((a) => a.peer)), new Set([vip]), 'replies come from the ClusterIP');

  // The socket hooks read the same tables (hashed by socket cookie, which the test cannot know): they reach backends.
  const viaSocket = JSON.parse(await inNs(client.netns, process.execPath, ['-e', CLIENT, join(node.cgroup, 'cgroup.procs'), vip, '80', ...Array(12).fill('0')], 60_000)) as { name?: string; error?: string }[];
  assert.deepEqual(viaSocket.filter((a) => a.error), [], 'every connection through the socket hooks reached a backend');
});
