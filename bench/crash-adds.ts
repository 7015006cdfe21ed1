/**
 * `crash-adds`: what a kill -9 of the agent at a random moment during 50 parallel endpoint adds
 * leaves behind once a new agent has started (issue 9's crash-safety figure). Per trial: 50 pod
 * namespaces, 50 POST /v1/endpoints at once, a kill -9 at a moment drawn uniformly from how long
 * such a burst takes on this machine (measured first), a restart; then
 * the orphans are counted:
 *
 *   links        host ends of pod links the agent made (its link group) that no endpoint owns
 *   addresses    pod namespaces whose eth0 still holds an address that is not their endpoint's
 *   allocations  IPAM allocations beyond the endpoints the agent lists
 *   pins         pinned endpoint directories of no endpoint
 *   unbound      (not an orphan, a loss) recorded endpoints whose host veth, 5 s after the
 *                restart, still has no clsact bound to the node's tc blocks (tc-block mode)
 *   pool         once the pool has refilled: pool links (the pool's link group) beyond its target,
 *                and pool links without pinned programs or pool pins without a link
 *
 * Then every interrupted container is added again (no "File exists"), the addresses checked for
 * duplicates, and everything deleted. Figures: orphans in total over all trials (target 0), and
 * adds that had completed when the agent died (how far the trials got). No baseline: the target is
 * absolute. Trials: 20 by default (--rounds N).
 * @module
 */
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import type { Endpoint } from '../src/agent/index.ts';
import { ENDPOINT_LINK_GROUP, POOL_LINK_GROUP } from '../src/agent/endpoint-links.ts';
import { TC_BLOCKS } from '../src/datapath/index.ts';
import type { BenchContext } from './lib.ts';
import { BenchNode } from './support/agent.ts';
import { addNetns, Cleanups, inNs, netnsPath, sleep, uniqueName } from './support/ns.ts';

export const description = 'orphans left by a kill -9 during 50 parallel endpoint adds, after a restart (target 0 over 20 trials)';

const PODS = 50;
const DEFAULT_TRIALS = 20;

interface Orphans {
  links: number;
  addresses: number;
  allocations: number;
  pins: number;
  unbound: number;
  pool: number;
  duplicates: number;
}

async function countOrphans(node: BenchNode, pods: readonly { netns: string }[]): Promise<{ orphans: Orphans; recorded: Endpoint[] }> {
  const endpoints = await node.client.get<Endpoint[]>('/v1/endpoints');
  const owned = new Set(endpoints.map((ep) => ep.hostIfname));
  const refilled = await node.poolRefilled(10_000);
  const all = JSON.parse(await inNs(node.netns, 'ip', ['-j', 'link', 'show'])) as { ifname: string; group?: string }[];
  const links = all.filter((l) => l.group === String(ENDPOINT_LINK_GROUP) && !owned.has(l.ifname)).length;
  const poolLinks = new Set(all.filter((l) => l.group === String(POOL_LINK_GROUP)).map((l) => l.ifname));
  const poolPins = new Set(readdirSync(join(node.bpfRoot, 'pool')));
  const { linkPool } = await node.client.get<{ linkPool: { target: number } }>('/v1/status');
  const pool = refilled
    ? Math.max(0, poolLinks.size - linkPool.target) + [...poolLinks].filter((name) => !poolPins.has(name)).length + [...poolPins].filter((name) => !poolLinks.has(name)).length
    : poolLinks.size + poolPins.size;
  const byNetns = new Map(endpoints.map((ep) => [ep.netns, ep.ipv4]));
  let addresses = 0;
  const held = new Map<string, number>();
  for (const pod of pods) {
    const out = await inNs(pod.netns, 'ip', ['-4', '-o', 'addr', 'show', 'dev', 'eth0']).catch(() => '');
    const address = /inet (\d+\.\d+\.\d+\.\d+)\//.exec(out)?.[1];
    if (!address) continue;
    held.set(address, (held.get(address) ?? 0) + 1);
    if (byNetns.get(netnsPath(pod.netns)) !== address) addresses++;
  }
  const status = await node.client.get<{ ipam: { used: number } }>('/v1/status');
  const ids = new Set(endpoints.map((ep) => String(ep.id)));
  const pins = readdirSync(join(node.bpfRoot, 'endpoints')).filter((id) => !ids.has(id)).length;
  const duplicates = [...held.values()].filter((n) => n > 1).length;
  const unbound = await unboundEndpoints(node, endpoints);
  return { orphans: { links, addresses, allocations: Math.max(0, status.ipam.used - endpoints.length), pins, unbound, pool, duplicates }, recorded: endpoints };
}

/** tc-block: endpoints whose host veth is not bound to the node's blocks within 5 s (the restart realizes them). */
async function unboundEndpoints(node: BenchNode, endpoints: readonly Endpoint[]): Promise<number> {
  const { datapathAttach } = (await node.client.get<{ config?: { datapathAttach?: string } }>('/v1/status')).config ?? {};
  if (datapathAttach !== undefined && datapathAttach !== 'tc-block') return 0;
  const deadline = Date.now() + 5000;
  for (;;) {
    const qdiscs = await inNs(node.netns, 'tc', ['qdisc', 'show']);
    const bound = new Set([...qdiscs.matchAll(/qdisc clsact \S+ dev (\S+) .*ingress_block (\d+) egress_block (\d+)/g)].filter((m) => Number(m[2]) === TC_BLOCKS.ingress && Number(m[3]) === TC_BLOCKS.egress).map((m) => m[1]));
    const unbound = endpoints.filter((ep) => !bound.has(ep.hostIfname)).length;
    if (unbound === 0 || Date.now() > deadline) return unbound;
    await sleep(100);
  }
}

export async function run(ctx: BenchContext): Promise<void> {
  const trials = ctx.rounds ?? DEFAULT_TRIALS;
  const cleanups = new Cleanups((message) => ctx.log(message));
  const total: Orphans = { links: 0, addresses: 0, allocations: 0, pins: 0, unbound: 0, pool: 0, duplicates: 0 };
  let completedAtKill = 0;
  let reAddFailures = 0;
  try {
    const node = await BenchNode.start(cleanups, { prefix: 'ccra' });
    // How long 50 parallel adds take on this machine now: the window the kills are spread over.
    const calibration = await Promise.all(Array.from({ length: PODS }, async () => ({ netns: await addNetns(cleanups, 'ccrc'), containerId: uniqueName('calib') })));
    const calibrationStart = Date.now();
    await Promise.all(calibration.map((pod) => node.client.call('POST', '/v1/endpoints', { containerId: pod.containerId, ifname: 'eth0', netns: netnsPath(pod.netns) })));
    const burstMs = Date.now() - calibrationStart;
    for (const pod of calibration) await node.client.call('DELETE', `/v1/endpoints/${pod.containerId}/eth0`);
    ctx.log(`50 parallel adds take ${burstMs} ms here: kills land uniformly within that`);
    for (let trial = 1; trial <= trials; trial++) {
      const pods = await Promise.all(Array.from({ length: PODS }, async () => ({ netns: await addNetns(cleanups, 'ccrp'), containerId: uniqueName('crash') })));
      const adds = pods.map((pod) =>
        node.client.call<Endpoint>('POST', '/v1/endpoints', { containerId: pod.containerId, ifname: 'eth0', netns: netnsPath(pod.netns) }).then(
          () => true,
          () => false,
        ),
      );
      // A random moment of the burst, whatever the machine's speed: uniform over how long a whole
      // burst took here (the agent answers adds in batches, so counting answers would not spread it).
      const killAfter = Math.floor(Math.random() * burstMs);
      await sleep(killAfter);
      await node.killAndRestart();
      const done = (await Promise.all(adds)).filter(Boolean).length;
      const { orphans, recorded } = await countOrphans(node, pods);
      for (const key of Object.keys(total) as (keyof Orphans)[]) total[key] += orphans[key];
      completedAtKill += done;
      const known = new Set(recorded.map((ep) => ep.containerId));
      for (const pod of pods) {
        if (known.has(pod.containerId)) continue;
        try {
          await node.client.call('POST', '/v1/endpoints', { containerId: pod.containerId, ifname: 'eth0', netns: netnsPath(pod.netns) });
        } catch (error) {
          reAddFailures++;
          ctx.log(`trial ${trial}: adding ${pod.containerId} again failed: ${(error as Error).message}`);
        }
      }
      const all = await node.client.get<Endpoint[]>('/v1/endpoints');
      total.duplicates += all.length - new Set(all.map((ep) => ep.ipv4)).size;
      for (const pod of pods) await node.client.call('DELETE', `/v1/endpoints/${pod.containerId}/eth0`).catch(() => undefined);
      ctx.log(`trial ${trial}: killed after ${killAfter} ms, ${recorded.length} recorded (${done} answered), orphans ${JSON.stringify(orphans)}`);
    }
  } finally {
    await cleanups.run();
  }
  const orphans = total.links + total.addresses + total.allocations + total.pins + total.pool;
  ctx.emit({ metric: 'orphans', value: orphans, unit: 'count', baseline: null, ratio: null, better: 'lower', target: 0, trials, pods_per_trial: PODS, ...total });
  ctx.emit({ metric: 'unbound_endpoints', value: total.unbound, unit: 'count', baseline: null, ratio: null, better: 'lower', target: 0, trials });
  ctx.emit({ metric: 'duplicate_addresses', value: total.duplicates, unit: 'count', baseline: null, ratio: null, better: 'lower', target: 0, trials });
  ctx.emit({ metric: 're_add_failures', value: reAddFailures, unit: 'count', baseline: null, ratio: null, better: 'lower', target: 0, trials });
  ctx.emit({ metric: 'adds_answered_before_kill', value: completedAtKill, unit: 'count', baseline: null, ratio: null, trials, of: trials * PODS });
}
