/**
 * The IPv6 side door. Pods have no IPv6, and the endpoint datapath polices IPv4 only, so any IPv6
 * to or from a pod is dropped as UNSUPPORTED_L3_PROTOCOL: a pod whose egress policy allows one
 * service cannot reach the node over IPv6 link-local instead, even when it (being root in its
 * namespace) turns IPv6 back on.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { TestNode, cli, echo, echoServer, inNs, sleep, spawnInNs } from './support/cluster.ts';

/** A TCP service of the node on every IPv6 address (`::`, v6 only); "ready" once listening. */
const NODE_SERVICE_V6 = `
require('node:net').createServer((s) => s.end('node service')).listen({ port: Number(process.argv[1]), host: '::', ipv6Only: true }, () => console.log('ready'));
`;

async function nodeServiceV6(t: TestContext, netns: string, port: number): Promise<void> {
  const server = spawnInNs(netns, process.execPath, ['-e', NODE_SERVICE_V6, String(port)]);
  t.after(() => void server.kill('SIGKILL'));
  await new Promise<void>((resolve, reject) => {
    server.stdout?.once('data', () => resolve());
    server.once('exit', (code) => reject(new Error(`IPv6 node service exited with ${code}`)));
  });
}

const LINK_LOCAL_TCP = `
const net = require('node:net');
const [host, port] = process.argv.slice(1);
const s = net.connect({ host, port: Number(port), timeout: 1500 }, () => { console.log('connected'); s.destroy(); });
s.on('timeout', () => { console.log('timeout'); s.destroy(); });
s.on('error', (e) => console.log(e.code));
`;

test('a pod reaches nothing over IPv6, not even the node on link-local, and the drops are reported', async (t) => {
  const node = await TestNode.start(t);
  const client = await node.addPod(t, undefined, { app: 'client' });
  const service = await node.addPod(t, undefined, { app: 'service' });
  await echoServer(t, service.netns, 8080);

  // Egress only to the service, on 8080/TCP.
  const policy = join(node.dir, 'egress-only-service.yaml');
  writeFileSync(
    policy,
    `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: { name: client-egress, namespace: default }
spec:
  endpointSelector: { matchLabels: { app: client } }
  egress:
    - toEndpoints: [{ matchLabels: { app: service } }]
      toPorts: [{ ports: [{ port: "8080", protocol: TCP }] }]
`,
  );
  assert.equal((await cli(node, 'policy', 'import', policy)).code, 0);
  assert.equal(await echo(client.netns, 'tcp', service.endpoint.ipv4, 8080), true, 'the allowed service answers');

  // By default neither end of a pod's link has IPv6, so a pod's start sends nothing to drop.
  assert.equal((await inNs(client.netns, 'cat', ['/proc/sys/net/ipv6/conf/eth0/disable_ipv6'])).trim(), '1', 'no IPv6 on the pod end');
  assert.equal((await inNs(node.netns, 'cat', [`/proc/sys/net/ipv6/conf/${client.endpoint.hostIfname}/disable_ipv6`])).trim(), '1', 'no IPv6 on the host end');
  const quiet = await node.client.get<{ drops: Record<string, number> }>('/v1/status');
  assert.equal(quiet.drops.UNSUPPORTED_L3_PROTOCOL, undefined, `no IPv6 drops from pods starting: ${JSON.stringify(quiet.drops)}`);

  // The worst case: IPv6 on both ends of the pod's link, as a pod that is root in its namespace
  // and a node whose interfaces get IPv6 by default could arrange.
  await inNs(client.netns, 'sysctl', ['-qw', 'net.ipv6.conf.eth0.disable_ipv6=0']);
  await inNs(node.netns, 'sysctl', ['-qw', `net.ipv6.conf.${client.endpoint.hostIfname}.disable_ipv6=0`, 'net.ipv6.conf.lo.disable_ipv6=0']);
  let hostLinkLocal: string | undefined;
  for (let i = 0; i < 50 && !hostLinkLocal; i++) {
    const out = await inNs(node.netns, 'ip', ['-6', '-o', 'addr', 'show', 'dev', client.endpoint.hostIfname, 'scope', 'link']);
    hostLinkLocal = /inet6 (fe80::[0-9a-f:]+)\//.exec(out)?.[1];
    if (!hostLinkLocal) await sleep(100);
  }
  assert.ok(hostLinkLocal, 'the host side of the pod link has a link-local address');
  await nodeServiceV6(t, node.netns, 9090);
  await sleep(2500); // past duplicate address detection on both ends
  const attempt = (await inNs(client.netns, process.execPath, ['-e', LINK_LOCAL_TCP, `${hostLinkLocal}%eth0`, '9090'])).trim();
  assert.notEqual(attempt, 'connected', 'no TCP connection to the node over IPv6 link-local');

  const drops = await node.client.get<{ dropReason?: string; srcIdentity: number; dstIdentity: number }[]>('/v1/monitor?type=drop&last=1000');
  assert.ok(
    drops.some((d) => d.dropReason === 'UNSUPPORTED_L3_PROTOCOL' && d.srcIdentity === client.endpoint.identity),
    `the pod's IPv6 is dropped and reported: ${JSON.stringify(drops.map((d) => d.dropReason))}`,
  );
  const status = await node.client.get<{ drops: Record<string, number> }>('/v1/status');
  assert.ok((status.drops.UNSUPPORTED_L3_PROTOCOL ?? 0) > 0, `status counts them: ${JSON.stringify(status.drops)}`);
  assert.equal(await echo(client.netns, 'tcp', service.endpoint.ipv4, 8080), true, 'IPv4 to the service is untouched');
});
