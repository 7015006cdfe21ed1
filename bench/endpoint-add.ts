/**
 * `endpoint-add`: how long a pod's network takes to come up through the agent, against the same
 * plumbing done with plain `ip` and no datapath, endpoint by endpoint in interleaved rounds.
 *
 *   ciliate   `ip netns add`, then POST /v1/endpoints to an agent running in its own node namespace
 *             with its defaults (--datapath-attach tc-block, no link pool): IPAM allocation, the
 *             veth pair made with its peer in the pod, one clsact qdisc bound to the node's shared
 *             tc blocks (bpf_lxc), pod-side and host-side addresses/routes/neighbour, the state
 *             store write, ciliate_lxc/ipcache entries. The API answers only once all is done.
 *   tcx       the same against a second agent with --datapath-attach tcx and its default link
 *             pool (4): a pair from the pool (bpf_lxc already attached through TCX) moved into
 *             the pod and renamed, its pinned links handed to the endpoint.
 * Before every sample (of any variant, untimed) the tcx agent's pool is allowed to refill, as it
 * has between pods that come one at a time: so no variant's sample shares the kernel with a
 * refill in the background (which holds RTNL across RCU grace periods).
 *   plain-ip  `ip netns add`, then what bench/support/routed.ts RoutedNode.attach runs against a node
 *             namespace without an agent: `ip link add … type veth peer … netns`, `ip -j link show`
 *             for the host veth's MAC, one `ip -batch` in the pod (lo, /32, up, gateway route,
 *             default route, permanent gateway neighbour) and one on the node (up, /32 route). Same
 *             resulting topology, no IPAM, no store, no BPF.
 *
 * Figures (costs in ms, better "lower", ratio = ours / baseline):
 *   endpoint_add_p50_ms / _p99_ms          netns creation + endpoint setup (issue 8: p50 < 20 ms, p99 < 50 ms)
 *   api_add_p50_ms / _p99_ms               the POST alone vs the plain ip setup alone
 *   endpoint_add_tcx_pool_p50_ms / _p99_ms and api_add_tcx_pool_…: the same with tcx and its pool
 *   netns_add_p50_ms               `ip netns add` alone (the same command in both variants)
 * N (default 40, --rounds N) endpoints of each kind; all are deleted (and their netns) afterwards.
 * @module
 */
import { type BenchContext, interleave, round } from './lib.ts';
import { BenchNode } from './support/agent.ts';
import { Cleanups, percentile, sh, uniqueName } from './support/ns.ts';
import { RoutedNode } from './support/routed.ts';

export const description = 'endpoint add latency through the agent API (netns + POST /v1/endpoints) vs plain ip setup';

const DEFAULT_ENDPOINTS = 40;
/** Both the agent's pod CIDR (/24) and the routed node's /24 hold 253 pods; leave room for warm-up. */
const MAX_ENDPOINTS = 200;
/** Issue 8's targets. */
const TARGET_MS = { 50: 20, 99: 50 } as const;
const BASELINE = 'plain ip: same veth/address/route/neighbour setup, no IPAM, store or datapath';

interface Timings {
  netns: number[];
  setup: number[];
  total: number[];
}

export async function run(ctx: BenchContext): Promise<void> {
  if (process.getuid?.() !== 0) ctx.log('not running as root: creating namespaces and loading BPF will fail');
  const count = ctx.rounds ?? DEFAULT_ENDPOINTS;
  if (count > MAX_ENDPOINTS) throw new RangeError(`at most ${MAX_ENDPOINTS} endpoints per variant (one /24 each), asked for ${count}`);
  const cleanups = new Cleanups((message) => ctx.log(message));
  const created: { ciliate: string[]; tcx: string[]; plain: string[] } = { ciliate: [], tcx: [], plain: [] };
  try {
    const node = await BenchNode.start(cleanups, { prefix: 'cben' });
    const tcx = await BenchNode.start(cleanups, { prefix: 'cbeo', extraArgs: ['--datapath-attach', 'tcx'] });
    const routed = await RoutedNode.start(cleanups, '10.251.0', 'cber');
    const timings: Record<'ciliate' | 'tcx' | 'plain', Timings> = {
      ciliate: { netns: [], setup: [], total: [] },
      tcx: { netns: [], setup: [], total: [] },
      plain: { netns: [], setup: [], total: [] },
    };
    let unrefilled = 0;
    const settle = async (): Promise<void> => {
      if (!(await node.poolRefilled()) || !(await tcx.poolRefilled())) unrefilled++;
    };

    // The namespace is registered for deletion right after it exists, the endpoint right after
    // the POST returns, so a failure halfway still leaves nothing behind.
    const newNetns = async (prefix: string): Promise<string> => {
      const name = uniqueName(prefix);
      await sh('ip', ['netns', 'add', name]);
      cleanups.defer(`ip netns del ${name}`, () => sh('ip', ['netns', 'del', name]));
      return name;
    };
    const record = (t: Timings, start: number, afterNetns: number, end: number): number => {
      t.netns.push(afterNetns - start);
      t.setup.push(end - afterNetns);
      t.total.push(end - start);
      return end - start;
    };

    const agentAdd = async (variant: 'ciliate' | 'tcx', agent: BenchNode, prefix: string): Promise<number> => {
      await settle();
      const start = performance.now();
      const netns = await newNetns(prefix);
      const afterNetns = performance.now();
      const containerId = uniqueName('bench');
      await agent.addEndpoint(netns, containerId);
      const end = performance.now();
      created[variant].push(containerId);
      return record(timings[variant], start, afterNetns, end);
    };

    await interleave(
      count,
      {
        ciliate: () => agentAdd('ciliate', node, 'cbep'),
        tcx: () => agentAdd('tcx', tcx, 'cbeo'),
        plain: async () => {
          await settle();
          const start = performance.now();
          const netns = await newNetns('cbeq');
          const afterNetns = performance.now();
          await routed.attach(netns);
          const end = performance.now();
          created.plain.push(netns);
          return record(timings.plain, start, afterNetns, end);
        },
      },
      {
        onRound: (i, samples) => {
          if ((i + 1) % 10 === 0 || i + 1 === count) {
            ctx.log(`${i + 1}/${count}: last ciliate ${round(samples.ciliate.at(-1)!, 1)} ms, tcx+pool ${round(samples.tcx.at(-1)!, 1)} ms, plain ip ${round(samples.plain.at(-1)!, 1)} ms`);
          }
        },
      },
    );
    // interleave's warm-up call of each variant is not a sample.
    for (const t of Object.values(timings)) for (const list of Object.values(t) as number[][]) list.shift();

    // Deleting is part of the job too; timed for context, not a target.
    const deleteMs: number[] = [];
    for (const containerId of created.ciliate) {
      const start = performance.now();
      await node.deleteEndpoint(containerId);
      deleteMs.push(performance.now() - start);
    }
    for (const containerId of created.tcx) await tcx.deleteEndpoint(containerId);
    if (unrefilled > 0) ctx.log(`the pool had not refilled within 5 s before ${unrefilled} samples`);

    const base = timings.plain;
    for (const [suffix, ours] of [['', timings.ciliate], ['_tcx_pool', timings.tcx]] as const) emitAdds(ctx, suffix, ours, base, suffix === '' ? deleteMs : undefined);
    const netnsAll = [...timings.ciliate.netns, ...timings.tcx.netns, ...base.netns];
    ctx.emit({
      metric: 'netns_add_p50_ms',
      value: round(percentile(netnsAll, 50), 1),
      unit: 'ms',
      baseline: null,
      ratio: null,
      better: 'lower',
      p99_ms: round(percentile(netnsAll, 99), 1),
      samples: netnsAll.length,
      command: 'ip netns add (process spawn included)',
    });
  } finally {
    await cleanups.run();
  }
}

/** The add figures of one variant against the plain ip baseline; `suffix` names the variant. */
function emitAdds(ctx: BenchContext, suffix: string, ours: Timings, base: Timings, deleteMs: number[] | undefined): void {
  for (const p of [50, 99] as const) {
    const value = percentile(ours.total, p);
    const baseline = percentile(base.total, p);
    ctx.emit({
      metric: `endpoint_add${suffix}_p${p}_ms`,
      value: round(value, 1),
      unit: 'ms',
      baseline: `${BASELINE}; both include ip netns add`,
      baseline_value: round(baseline, 1),
      ratio: round(value / baseline, 3),
      better: 'lower',
      target_ms: TARGET_MS[p],
      meets_target: value < TARGET_MS[p],
      api_ms: round(percentile(ours.setup, p), 1),
      netns_ms: round(percentile(ours.netns, p), 1),
      endpoints: ours.total.length,
    });
  }
  for (const p of [50, 99] as const) {
    const value = percentile(ours.setup, p);
    const baseline = percentile(base.setup, p);
    ctx.emit({
      metric: `api_add${suffix}_p${p}_ms`,
      value: round(value, 1),
      unit: 'ms',
      baseline: BASELINE,
      baseline_value: round(baseline, 1),
      ratio: round(value / baseline, 3),
      better: 'lower',
      endpoints: ours.setup.length,
      ...(p === 50 && deleteMs ? { delete_p50_ms: round(percentile(deleteMs, 50), 1), delete_p99_ms: round(percentile(deleteMs, 99), 1) } : {}),
    });
  }
}
