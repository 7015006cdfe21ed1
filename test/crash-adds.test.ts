/**
 * A kill -9 of the agent in the middle of parallel endpoint adds leaves nothing orphaned: after a
 * restart every interface, address, pin and policy map the agent made belongs to an endpoint it
 * knows, no address is held twice, the interrupted containers can be added again (no "File
 * exists"), and a DEL of any of them — known or not — leaves nothing behind.
 */
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import type { Endpoint } from '../src/agent/index.ts';
import { hostInterfaceName } from '../src/agent/endpoint.ts';
import { ENDPOINT_LINK_GROUP } from '../src/agent/endpoint-links.ts';
import { addNetns, inNs, sleep, TestNode, uniqueName } from './support/cluster.ts';
import { BpfMap, u32 } from '../src/ebpf/index.ts';

const PODS = 20;

interface Kernel {
  /** Host ends of pod links the agent made (its link group), by name. */
  links: string[];
  /** Pod namespaces whose eth0 holds an address, and the address. */
  podAddresses: Map<string, string>;
  pinnedIds: number[];
}

async function kernel(node: TestNode, pods: readonly { netns: string }[]): Promise<Kernel> {
  const links = (JSON.parse(await inNs(node.netns, 'ip', ['-j', 'link', 'show'])) as { ifname: string; group?: string }[])
    .filter((l) => l.group === String(ENDPOINT_LINK_GROUP))
    .map((l) => l.ifname)
    .sort();
  const podAddresses = new Map<string, string>();
  for (const pod of pods) {
    const out = await inNs(pod.netns, 'ip', ['-4', '-o', 'addr', 'show', 'dev', 'eth0']).catch(() => '');
    const address = /inet (\d+\.\d+\.\d+\.\d+)\//.exec(out)?.[1];
    if (address) podAddresses.set(pod.netns, address);
  }
  const pinnedIds = readdirSync(join(node.bpfRoot, 'endpoints')).map(Number).sort((a, b) => a - b);
  return { links, podAddresses, pinnedIds };
}

/** Kills the agent once `killAfterAnswers` adds of the burst have answered, then `extraMs` later. */
async function trial(t: TestContext, node: TestNode, killAfterAnswers: number, extraMs: number): Promise<void> {
  const pods = await Promise.all(Array.from({ length: PODS }, async () => ({ netns: await addNetns(t, 'ctp'), containerId: uniqueName('crash') })));
  let answered = 0;
  const adds = pods.map((pod) =>
    node.client
      .call<Endpoint>('POST', '/v1/endpoints', { containerId: pod.containerId, ifname: 'eth0', netns: `/run/netns/${pod.netns}` })
      .then(() => answered++)
      .catch(() => undefined),
  );
  const began = Date.now();
  while (answered < killAfterAnswers && Date.now() - began < 60_000) await sleep(5);
  await sleep(extraMs);
  const killAfterMs = Date.now() - began;
  await node.stopAgent('SIGKILL');
  await Promise.all(adds);
  await node.startAgent();

  const endpoints = await node.client.get<Endpoint[]>('/v1/endpoints');
  const found = await kernel(node, pods);
  const label = `killed after ${killAfterMs} ms with ${endpoints.length} of ${PODS} endpoints recorded`;
  assert.deepEqual(found.links, endpoints.map((ep) => ep.hostIfname).sort(), `${label}: every pod link belongs to an endpoint`);
  assert.deepEqual(found.pinnedIds, endpoints.map((ep) => ep.id).sort((a, b) => a - b), `${label}: every pinned endpoint directory belongs to an endpoint`);
  const byNetns = new Map(endpoints.map((ep) => [ep.netns, ep.ipv4]));
  for (const [netns, address] of found.podAddresses) {
    assert.equal(byNetns.get(`/run/netns/${netns}`), address, `${label}: ${netns} holds ${address} only as its endpoint`);
  }
  const status = await node.client.get<{ ipam: { used: number } }>('/v1/status');
  assert.equal(status.ipam.used, endpoints.length, `${label}: no address is allocated without an endpoint`);

  // Every container again: the interrupted ones are added anew (no EEXIST), the others exist.
  const recorded = new Set(endpoints.map((ep) => ep.containerId));
  for (const pod of pods) {
    if (recorded.has(pod.containerId)) continue;
    await node.client.call<Endpoint>('POST', '/v1/endpoints', { containerId: pod.containerId, ifname: 'eth0', netns: `/run/netns/${pod.netns}` });
  }
  const all = await node.client.get<Endpoint[]>('/v1/endpoints');
  assert.equal(all.length, PODS);
  assert.equal(new Set(all.map((ep) => ep.ipv4)).size, PODS, 'no address is handed out twice');
  for (const pod of pods) await node.client.call('DELETE', `/v1/endpoints/${pod.containerId}/eth0`);
  const after = await kernel(node, pods);
  assert.deepEqual(after.links, []);
  assert.deepEqual(after.pinnedIds, []);
  assert.equal(after.podAddresses.size, 0);
  assert.equal((await node.client.get<{ ipam: { used: number } }>('/v1/status')).ipam.used, 0);
}

test('kill -9 during 20 parallel adds leaves no orphans after a restart, and every container can be added and deleted again', async (t) => {
  const node = await TestNode.start(t);
  // Early (most adds in flight), and later (some done, some in their last steps).
  // (The agent answers adds in batches, so the later kill is timed, not counted in answers.)
  await trial(t, node, 0, 50);
  await trial(t, node, 0, 200 + Math.floor(Math.random() * 600));
});

test('DEL removes the interface of a container the agent has no record of, and ADD takes over one an interrupted add left', async (t) => {
  const node = await TestNode.start(t);
  // What an add killed after making the pair leaves: the host end, marked as the agent's, and a
  // pod end holding an address.
  const leave = async (containerId: string) => {
    const netns = await addNetns(t, 'ctp');
    const host = hostInterfaceName(containerId, 'eth0');
    await inNs(node.netns, 'ip', ['link', 'add', host, 'group', String(ENDPOINT_LINK_GROUP), 'type', 'veth', 'peer', 'name', 'eth0', 'netns', netns]);
    await inNs(netns, 'ip', ['addr', 'add', '10.244.0.200/32', 'dev', 'eth0']);
    return { netns, host };
  };
  const ghost = await leave('ghost');
  assert.deepEqual(await node.client.call('DELETE', '/v1/endpoints/ghost/eth0'), { deleted: false });
  assert.deepEqual((await kernel(node, [ghost])).links, [], 'the DEL removed the link');
  assert.equal((await kernel(node, [ghost])).podAddresses.size, 0, 'and with it the pod end and its address');

  const stale = await leave('stale');
  const added = await node.client.call<Endpoint>('POST', '/v1/endpoints', { containerId: 'stale', ifname: 'eth0', netns: `/run/netns/${stale.netns}` });
  t.after(() => node.client.call('DELETE', '/v1/endpoints/stale/eth0').catch(() => undefined));
  assert.equal(added.hostIfname, stale.host, 'the add made the pair anew instead of failing with EEXIST');
  assert.deepEqual((await kernel(node, [stale])).podAddresses, new Map([[stale.netns, added.ipv4]]), 'the pod holds only its new address');
});

test('spare policy map slots: installed ahead for the next ids, taken by an add as they are, and a killed agent\'s swept and made anew', async (t) => {
  const node = await TestNode.start(t);
  const outer = BpfMap.openPinned(join(node.bpfRoot, 'maps', 'ciliate_policy_maps'), u32, u32);
  t.after(() => outer.close());
  const slots = async (want: number[]): Promise<Map<number, number>> => {
    const began = Date.now();
    for (;;) {
      const found = new Map([...outer.entries()].sort(([a], [b]) => a - b));
      if (JSON.stringify([...found.keys()]) === JSON.stringify(want)) return found;
      if (Date.now() - began > 10_000) assert.fail(`outer map ids ${[...found.keys()]}, want ${want}`);
      await sleep(20);
    }
  };
  // Default --policy-map-spares 4: ids 1-4 are ready before any add.
  const spares = await slots([1, 2, 3, 4]);
  const pod = { netns: await addNetns(t, 'ctp'), containerId: uniqueName('slot') };
  const added = await node.client.call<Endpoint>('POST', '/v1/endpoints', { containerId: pod.containerId, ifname: 'eth0', netns: `/run/netns/${pod.netns}` });
  t.after(() => node.client.call('DELETE', `/v1/endpoints/${pod.containerId}/eth0`).catch(() => undefined));
  assert.equal(added.id, 1);
  const refilled = await slots([1, 2, 3, 4, 5]);
  assert.equal(refilled.get(1), spares.get(1), 'the add took the spare map in place (no outer-map write)');

  await node.stopAgent('SIGKILL');
  await node.startAgent();
  const restarted = await slots([1, 2, 3, 4, 5]);
  assert.equal(restarted.get(1), refilled.get(1), 'the endpoint keeps its map');
  for (const id of [2, 3, 4, 5]) assert.notEqual(restarted.get(id), refilled.get(id), `id ${id}: the dead agent's spare was swept, not adopted`);
});
