/**
 * The endpoint link pool (--endpoint-link-pool): adds served from links made ahead, with their
 * programs attached, give pods that work as any other; the pool refills; an empty pool falls
 * back to making the pair; a start removes what a previous agent left of the pool, also links an
 * add was taking when the agent died; a clean stop removes the pool; 0 turns it off; and a pool
 * link nobody took passes nothing.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import type { Endpoint } from '../src/agent/index.ts';
import { hostInterfaceName } from '../src/agent/endpoint.ts';
import { ENDPOINT_LINK_GROUP, POOL_LINK_GROUP } from '../src/agent/endpoint-links.ts';
import { linkServesInterface } from '../src/datapath/pins.ts';
import { addNetns, cli, echo, echoServer, httpRequest, inNs, ping, sleep, starWars, TestNode } from './support/cluster.ts';

interface PoolStatus {
  target: number;
  ready: number;
  taken: number;
  empty: number;
}

interface IpLink {
  ifname: string;
  ifindex: number;
  group?: string;
  flags: string[];
}

async function links(netns: string): Promise<IpLink[]> {
  return JSON.parse(await inNs(netns, 'ip', ['-j', 'link', 'show'])) as IpLink[];
}

async function poolLinks(node: TestNode): Promise<string[]> {
  return (await links(node.netns)).filter((l) => l.group === String(POOL_LINK_GROUP)).map((l) => l.ifname).sort();
}

async function poolStatus(node: TestNode): Promise<PoolStatus> {
  return (await node.client.get<{ linkPool: PoolStatus }>('/v1/status')).linkPool;
}

/** Waits until the pool holds its target; returns its status. */
async function refilled(node: TestNode, timeoutMs = 15_000): Promise<PoolStatus> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const status = await poolStatus(node);
    if (status.ready === status.target) return status;
    assert.ok(Date.now() < deadline, `the pool refills: ${JSON.stringify(status)}`);
    await sleep(50);
  }
}

const poolPins = (node: TestNode) => readdirSync(join(node.bpfRoot, 'pool')).sort();

/** The pool is the tcx attach mode's (default there): with tc-block an add attaches in one request, and the pool defaults to 0. */
const TCX = ['--datapath-attach', 'tcx'];

test('pods whose links came from the pool pass traffic and are held to policy as any pod, and the pool refills', async (t) => {
  const node = await TestNode.start(t, { extraArgs: TCX });
  assert.deepEqual(await refilled(node), { target: 4, ready: 4, taken: 0, empty: 0 }, 'the default pool: 4 links');
  const ready = await poolLinks(node);
  assert.equal(ready.length, 4);
  assert.deepEqual(poolPins(node), ready, 'each pool link has its programs pinned under the pool');
  for (const l of await links(node.netns)) if (ready.includes(l.ifname)) assert.ok(!l.flags.includes('UP'), `${l.ifname} is down`);

  const { deathstar, tiefighter, xwing, landing } = await starWars(t, node);
  const status = await poolStatus(node);
  assert.equal(status.taken, 3, `all three pods got pool links: ${JSON.stringify(status)}`);
  assert.equal(status.empty, 0);
  for (const pod of [deathstar, tiefighter, xwing]) {
    const ep = pod.endpoint;
    assert.equal(ep.hostIfname, hostInterfaceName(ep.containerId, 'eth0'), 'the host end has the endpoint\'s usual name');
    assert.deepEqual(await node.client.get(`/v1/endpoints/${ep.containerId}/eth0/check`), { problems: [] }, `${ep.containerId}: CNI CHECK finds it as made`);
    assert.ok(existsSync(join(node.bpfRoot, 'endpoints', String(ep.id), 'from-container')), 'the pins moved to the endpoint');
    const host = (await links(node.netns)).find((l) => l.ifname === ep.hostIfname);
    assert.equal(host?.group, String(ENDPOINT_LINK_GROUP), 'the host end is in the endpoints\' group');
  }
  const landed = await httpRequest(tiefighter.netns, 'POST', landing);
  assert.deepEqual([landed.status, landed.body?.trim()], [200, 'Ship landed'], 'rule1 lets the empire land');
  assert.equal((await httpRequest(xwing.netns, 'POST', landing)).error, 'timeout', 'and not the alliance');
  await echoServer(t, xwing.netns, 7000);
  assert.ok(await echo(tiefighter.netns, 'tcp', xwing.endpoint.ipv4, 7000), 'pod → pod TCP where no policy selects');
  assert.ok(await echo(tiefighter.netns, 'udp', xwing.endpoint.ipv4, 7000), 'pod → pod UDP');
  assert.ok(await ping(xwing.netns, tiefighter.endpoint.ipv4), 'pod → pod ICMP');

  const after = await refilled(node);
  assert.equal(after.ready, 4, 'back to the target');
  const now = await poolLinks(node);
  assert.equal(now.length, 4);
  assert.equal(now.filter((name) => ready.includes(name)).length, 1, 'three new links for the three taken');
  assert.deepEqual(poolPins(node), now);

  const shown = await cli(node, 'status');
  assert.match(shown.stdout, /linkPool/, `ciliate status shows the pool:\n${shown.stdout}`);

  await node.stopAgent('SIGTERM');
  assert.deepEqual(await poolLinks(node), [], 'a clean stop removes the pool links');
  assert.deepEqual(poolPins(node), [], 'and their pins');
  assert.ok(await ping(xwing.netns, tiefighter.endpoint.ipv4), 'the pods stay connected');
});

test('a pool link nobody took passes nothing: its programs find no endpoint on it', async (t) => {
  const node = await TestNode.start(t, { extraArgs: TCX });
  await refilled(node);
  const [name] = await poolLinks(node);
  const peer = name.replace(/^lxcp/, 'lxcq');
  const pod = await addNetns(t, 'ctp');
  const status = await node.client.get<{ ipam: { routerIp: string } }>('/v1/status');
  // What a pod handed a pool link behind the agent's back could do: addresses, routes, traffic.
  await inNs(node.netns, 'ip', ['link', 'set', peer, 'netns', pod, 'name', 'eth0']);
  await inNs(node.netns, 'ip', ['link', 'set', name, 'up']);
  await inNs(pod, 'ip', ['addr', 'add', '10.244.0.250/32', 'dev', 'eth0']);
  await inNs(pod, 'ip', ['link', 'set', 'eth0', 'up']);
  await inNs(pod, 'ip', ['route', 'add', status.ipam.routerIp, 'dev', 'eth0', 'scope', 'link']);
  await inNs(node.netns, 'ip', ['route', 'add', '10.244.0.250/32', 'dev', name, 'scope', 'link']);
  const drops = async () => Object.values((await node.client.get<{ drops: Record<string, number> }>('/v1/status')).drops).reduce((a, b) => a + b, 0);
  const before = await drops();
  assert.equal(await ping(pod, status.ipam.routerIp), false, 'the pod end reaches nothing');
  await inNs(node.netns, 'ping', ['-c', '2', '-i', '0.2', '-W', '1', '10.244.0.250']).then(
    () => assert.fail('the node reached the pool link'),
    () => undefined,
  );
  assert.ok((await drops()) > before, 'the programs dropped it');
});

test('an empty pool: adds make their pairs as without one, and the pods work', async (t) => {
  const node = await TestNode.start(t, { extraArgs: [...TCX, '--endpoint-link-pool', '1'] });
  await refilled(node);
  const pods = await Promise.all([node.addPod(t), node.addPod(t), node.addPod(t)]);
  const status = await poolStatus(node);
  assert.equal(status.taken, 1, JSON.stringify(status));
  assert.equal(status.empty, 2, 'two adds found the pool empty');
  assert.ok(await ping(pods[0].netns, pods[1].endpoint.ipv4));
  assert.ok(await ping(pods[2].netns, pods[0].endpoint.ipv4));
  await refilled(node);
});

test('--endpoint-link-pool 0: no pool links, and adds attach the programs themselves', async (t) => {
  const node = await TestNode.start(t, { extraArgs: [...TCX, '--endpoint-link-pool', '0'] });
  const a = await node.addPod(t);
  const b = await node.addPod(t);
  assert.ok(await ping(a.netns, b.endpoint.ipv4));
  assert.deepEqual(await poolStatus(node), { target: 0, ready: 0, taken: 0, empty: 0 });
  assert.deepEqual(await poolLinks(node), []);
  assert.deepEqual(poolPins(node), []);
  assert.match(node.log, /"msg":"attached datapath"/);
});

test('a start removes the pool links a killed agent left, also those an add was taking at each step, and the containers can be added', async (t) => {
  const node = await TestNode.start(t, { extraArgs: TCX });
  await refilled(node);
  const [leftover, moved, renamed, repinned] = await poolLinks(node);
  const peerOf = (name: string) => name.replace(/^lxcp/, 'lxcq');
  await node.stopAgent('SIGKILL');
  // The states a take goes through, one request each: pod end moved into the pod and named;
  // host end renamed and put in the endpoints' group; pins handed to the endpoint's id.
  const pods = { moved: await addNetns(t, 'ctp'), renamed: await addNetns(t, 'ctp'), repinned: await addNetns(t, 'ctp') };
  for (const [name, pod] of [[moved, pods.moved], [renamed, pods.renamed], [repinned, pods.repinned]]) {
    await inNs(node.netns, 'ip', ['link', 'set', peerOf(name), 'netns', pod, 'name', 'eth0']);
  }
  for (const [name, container] of [[renamed, 'renamed'], [repinned, 'repinned']]) {
    await inNs(node.netns, 'ip', ['link', 'set', name, 'name', hostInterfaceName(container, 'eth0'), 'group', String(ENDPOINT_LINK_GROUP)]);
  }
  renameSync(join(node.bpfRoot, 'pool', repinned), join(node.bpfRoot, 'endpoints', '77'));

  await node.startAgent();
  const all = (await links(node.netns)).map((l) => l.ifname);
  for (const name of [leftover, moved, renamed, repinned, hostInterfaceName('renamed', 'eth0'), hostInterfaceName('repinned', 'eth0')]) {
    assert.ok(!all.includes(name), `${name} is gone`);
  }
  for (const pod of Object.values(pods)) assert.equal((await links(pod)).filter((l) => l.ifname === 'eth0').length, 0, `${pod} has no eth0 left`);
  assert.deepEqual(readdirSync(join(node.bpfRoot, 'endpoints')), [], 'no pins of an endpoint id nobody has');
  await refilled(node);
  const fresh = await poolLinks(node);
  assert.equal(fresh.length, 4, 'a new pool');
  assert.deepEqual(poolPins(node), fresh, 'only the new pool links have pool pins');

  for (const [container, pod] of Object.entries(pods)) {
    const endpoint = await node.client.call<Endpoint>('POST', '/v1/endpoints', { containerId: container, ifname: 'eth0', netns: `/run/netns/${pod}` });
    t.after(() => node.client.call('DELETE', `/v1/endpoints/${container}/eth0`).catch(() => undefined));
    assert.equal(endpoint.hostIfname, hostInterfaceName(container, 'eth0'));
  }
  const eps = await node.client.get<Endpoint[]>('/v1/endpoints');
  assert.ok(await ping(pods.moved, eps.find((ep) => ep.containerId === 'repinned')!.ipv4), 'the re-added pods work');
});

test('an add from the pool takes over the host end an interrupted add of the same container left', async (t) => {
  const node = await TestNode.start(t, { extraArgs: TCX });
  await refilled(node);
  // What an add killed after making its pair leaves: the host end, marked as the agent's.
  const elsewhere = await addNetns(t, 'ctp');
  const host = hostInterfaceName('stale', 'eth0');
  await inNs(node.netns, 'ip', ['link', 'add', host, 'group', String(ENDPOINT_LINK_GROUP), 'type', 'veth', 'peer', 'name', 'eth0', 'netns', elsewhere]);
  const pod = await addNetns(t, 'ctp');
  const added = await node.client.call<Endpoint>('POST', '/v1/endpoints', { containerId: 'stale', ifname: 'eth0', netns: `/run/netns/${pod}` });
  t.after(() => node.client.call('DELETE', '/v1/endpoints/stale/eth0').catch(() => undefined));
  assert.equal(added.hostIfname, host);
  assert.equal((await poolStatus(node)).taken, 1, 'the add took a pool link');
  assert.equal((await links(elsewhere)).filter((l) => l.ifname === 'eth0').length, 0, 'the stale pair is gone');
  const other = await node.addPod(t);
  assert.ok(await ping(pod, other.endpoint.ipv4));
});

test('a take that fails falls back to making the pair, the link is not offered again, and pool links changed behind the agent\'s back are made anew', async (t) => {
  const node = await TestNode.start(t, { reconcileRefreshInterval: 0.5, extraArgs: TCX });
  await refilled(node);
  const before = await poolLinks(node);
  // Their programs detached behind the agent's back: no take may hand out such a link.
  for (const name of poolPins(node)) rmSync(join(node.bpfRoot, 'pool', name), { recursive: true });
  const a = await node.addPod(t);
  const b = await node.addPod(t);
  assert.ok(await ping(a.netns, b.endpoint.ipv4), 'the pods made without the pool work');
  assert.match(node.log, /taking a pool link failed; making the pair instead/);
  // The pod already has the interface: the pool link cannot move in, and the add fails as it
  // would without a pool, leaving that interface alone.
  const taken = await addNetns(t, 'ctp');
  await inNs(taken, 'ip', ['link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth1']);
  await assert.rejects(node.client.call('POST', '/v1/endpoints', { containerId: 'taken', ifname: 'eth0', netns: `/run/netns/${taken}` }), /EEXIST/);
  assert.equal((await links(taken)).filter((l) => l.ifname === 'eth0').length, 1);

  // Each pool link again has both programs pinned and attached to it.
  const served = async (): Promise<boolean> => {
    const pool = (await links(node.netns)).filter((l) => l.group === String(POOL_LINK_GROUP));
    return (
      pool.length === 4 &&
      pool.every((l) => ['from-container', 'to-container'].every((pin) => linkServesInterface(join(node.bpfRoot, 'pool', l.ifname, pin), l.ifindex)))
    );
  };
  const deadline = Date.now() + 15_000;
  while (!(await served())) {
    assert.ok(Date.now() < deadline, `every broken pool link is made anew: ${(await poolLinks(node)).join()} (were ${before.join()}; pins ${poolPins(node).join()})`);
    await sleep(100);
  }
  const { reconcilers } = await node.client.get<{ reconcilers: { module: string; name: string; repairs: number }[] }>('/v1/status');
  const pool = reconcilers.find((r) => r.name === 'endpoint-link-pool');
  assert.equal(pool?.module, 'endpoints');
  assert.ok(pool.repairs > 0, `the pool's reconciler counts the repairs: ${JSON.stringify(pool)}`);
  const c = await node.addPod(t);
  assert.ok(await ping(c.netns, a.endpoint.ipv4));
});

test('the pool makes no link while adds are in flight: it refills once they are done', async (t) => {
  const node = await TestNode.start(t, { extraArgs: [...TCX, '--endpoint-link-pool', '2'] });
  await refilled(node);
  node.log = '';
  await Promise.all(Array.from({ length: 6 }, () => node.addPod(t)));
  await refilled(node);
  const lines = node.log.split('\n').filter((line) => line.startsWith('{')).map((line) => JSON.parse(line) as { msg: string; time: string });
  const added = lines.filter((line) => line.msg === 'endpoint added').map((line) => Date.parse(line.time));
  const made = lines.filter((line) => line.msg === 'attached datapath to a pool link').map((line) => Date.parse(line.time));
  assert.equal(added.length, 6);
  assert.equal(made.length, 2, 'two links made, for the two taken');
  assert.ok(Math.min(...made) > Math.max(...added), `links made after the last add: made at ${made.join()}, adds ended at ${added.join()}`);
});
