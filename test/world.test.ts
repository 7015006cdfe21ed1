import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { TestNode, addNetns, inNs, ping, spawnInNs, uniqueName } from './support/cluster.ts';

const run = promisify(execFile);

const WHO_AM_I = `
require('node:net').createServer((s) => { s.end(s.remoteAddress + '\\n'); }).listen(8080, '0.0.0.0', () => console.log('ready'));
`;

test('pods reach the world with masquerade: the world sees the node address and needs no route to pods', async (t) => {
  const node = await TestNode.start(t);
  const world = await addNetns(t, 'ctw');
  // The node's uplink to "the world": a veth into a namespace of our own, never a real interface.
  const up = uniqueName('up').slice(0, 12);
  await run('ip', ['link', 'add', up, 'netns', `/run/netns/${node.netns}`, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', `/run/netns/${world}`]);
  await inNs(node.netns, 'ip', ['addr', 'add', '198.51.100.1/24', 'dev', up]);
  await inNs(node.netns, 'ip', ['link', 'set', up, 'up']);
  await inNs(world, 'ip', ['addr', 'add', '198.51.100.2/24', 'dev', 'eth0']);
  await inNs(world, 'ip', ['link', 'set', 'eth0', 'up']);

  const server = spawnInNs(world, process.execPath, ['-e', WHO_AM_I]);
  t.after(() => {
    server.kill('SIGKILL');
  });
  await new Promise((resolve) => server.stdout?.once('data', resolve));

  const pod = await node.addPod(t);
  assert.ok(await ping(pod.netns, '198.51.100.2'), 'pod → world ICMP');
  const seen = (await inNs(pod.netns, process.execPath, ['-e', `require('node:net').connect(8080, '198.51.100.2').on('data', (d) => { process.stdout.write(String(d)); process.exit(0); })`])).trim();
  assert.equal(seen, '198.51.100.1', 'the world sees the node address, not the pod address');
  assert.notEqual(seen, pod.endpoint.ipv4);
  assert.match(await inNs(world, 'ip', ['route']), /^198\.51\.100\.0\/24 dev eth0/m);
  assert.doesNotMatch(await inNs(world, 'ip', ['route']), /10\.244/, 'the world has no route to pods');
});
