import { test } from 'node:test';
import assert from 'node:assert/strict';
import { TestNode, addWorld, inNs, ping, spawnInNs } from './support/cluster.ts';

const WHO_AM_I = `
require('node:net').createServer((s) => { s.end(s.remoteAddress + '\\n'); }).listen(8080, '0.0.0.0', () => console.log('ready'));
`;

test('pods reach the world with masquerade: the world sees the node address and needs no route to pods', async (t) => {
  const node = await TestNode.start(t);
  // The node's uplink to "the world": a veth into a namespace of our own, never a real interface.
  const world = await addWorld(t, node);

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
