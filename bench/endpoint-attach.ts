/**
 * `endpoint-attach`: what attaching bpf_lxc to a new endpoint's host veth costs, by attach mode,
 * from the agent's own netlink/bpf calls (no process spawns), interleaved round by round in one
 * node namespace:
 *
 *   tc-block  one RTM_NEWQDISC: a clsact qdisc whose hooks are bound to the node's two shared
 *             filter blocks, which already carry bpf_lxc as direct-action cls_bpf filters (added
 *             once, on an anchor dummy device, before the rounds).
 *   tcx       two TCX link creates (ingress and egress, at once, off the event loop), as
 *             EndpointDatapath does in `--datapath-attach tcx`: each waits out an RCU grace period.
 *
 * Each round makes a veth pair with its peer in a pod namespace (timed too: the same in both),
 * then attaches. Afterwards every pair is deleted, timed by mode (the kernel detaches on delete).
 * Figures: attach_p50_ms/_p99_ms (tc-block, baseline tcx), veth_and_attach_p50_ms, delete_p50_ms.
 * N (default 50, --rounds N) endpoints per mode.
 * @module
 */
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { attachTcxAsync, type Link as BpfLink } from '../src/ebpf/index.ts';
import { LxcProgram, loadLxc } from '../src/datapath/lxc.ts';
import { Netlink } from '../src/datapath/netlink/index.ts';
import { type BenchContext, round } from './lib.ts';
import { addNetns, Cleanups, netnsPath, percentile, uniqueName } from './support/ns.ts';

export const description = 'bpf_lxc attach per endpoint: clsact bound to shared tc blocks vs two TCX links';

const DEFAULT_ROUNDS = 50;
const INGRESS_BLOCK = 0x11c0;
const EGRESS_BLOCK = 0x11c1;
const BASELINE = 'tcx: two TCX links per endpoint (ingress + egress, concurrently)';

type Mode = 'tc-block' | 'tcx';

export async function run(ctx: BenchContext): Promise<void> {
  const rounds = ctx.rounds ?? DEFAULT_ROUNDS;
  const cleanups = new Cleanups((message) => ctx.log(message));
  try {
    const node = await addNetns(cleanups, 'cbat');
    const pods = await addNetns(cleanups, 'cbap');
    const pinDir = join('/sys/fs/bpf', uniqueName('cbat'));
    mkdirSync(pinDir);
    cleanups.defer(`rm ${pinDir}`, () => rmSync(pinDir, { recursive: true, force: true }));
    const programs = loadLxc({ pinDir });
    cleanups.defer('close programs', () => programs.close());
    const nl = Netlink.open({ netns: netnsPath(node) });
    cleanups.defer('close netlink', () => nl.close());
    const links: BpfLink[] = [];
    cleanups.defer('close tcx links', () => links.forEach((l) => l.close()));

    await nl.createVeth({ name: 'blocks', peerName: 'blocks-p' });
    await nl.addClsact('blocks', { ingressBlock: INGRESS_BLOCK, egressBlock: EGRESS_BLOCK });
    await nl.replaceBpfFilter({ block: INGRESS_BLOCK, priority: 1, handle: 1, programFd: programs.program(LxcProgram.FROM_CONTAINER).fd, name: LxcProgram.FROM_CONTAINER });
    await nl.replaceBpfFilter({ block: EGRESS_BLOCK, priority: 1, handle: 1, programFd: programs.program(LxcProgram.TO_CONTAINER).fd, name: LxcProgram.TO_CONTAINER });

    const timings: Record<Mode, { attach: number[]; total: number[]; del: number[] }> = {
      'tc-block': { attach: [], total: [], del: [] },
      tcx: { attach: [], total: [], del: [] },
    };
    const made: { mode: Mode; name: string }[] = [];
    const addOne = async (mode: Mode, i: number): Promise<void> => {
      const name = `${mode === 'tcx' ? 'tx' : 'tb'}${i}`;
      const start = performance.now();
      const host = await nl.createVeth({ name, peerName: `p${name}`, peerNetns: netnsPath(pods) });
      made.push({ mode, name });
      const attachStart = performance.now();
      if (mode === 'tc-block') {
        await nl.addClsact(host.ifindex, { ingressBlock: INGRESS_BLOCK, egressBlock: EGRESS_BLOCK });
      } else {
        const attached = await Promise.all([
          attachTcxAsync(programs.program(LxcProgram.FROM_CONTAINER), { interface: host.ifindex, direction: 'ingress', netns: netnsPath(node) }),
          attachTcxAsync(programs.program(LxcProgram.TO_CONTAINER), { interface: host.ifindex, direction: 'egress', netns: netnsPath(node) }),
        ]);
        links.push(...attached);
      }
      const end = performance.now();
      timings[mode].attach.push(end - attachStart);
      timings[mode].total.push(end - start);
    };
    // Warm-up (first clsact/TCX on the namespace flips static keys), not counted.
    await addOne('tc-block', 9000);
    await addOne('tcx', 9000);
    timings['tc-block'] = { attach: [], total: [], del: [] };
    timings.tcx = { attach: [], total: [], del: [] };
    for (let i = 0; i < rounds; i++) {
      const order: Mode[] = i % 2 === 0 ? ['tc-block', 'tcx'] : ['tcx', 'tc-block'];
      for (const mode of order) await addOne(mode, i);
    }
    const blockFilters = (await nl.bpfFilters(INGRESS_BLOCK)).length + (await nl.bpfFilters(EGRESS_BLOCK)).length;
    if (blockFilters !== 2) throw new Error(`expected 2 filters on the shared blocks, found ${blockFilters}`);
    const bound = (await nl.clsacts()).filter((c) => c.ingressBlock === INGRESS_BLOCK && c.egressBlock === EGRESS_BLOCK).length;
    ctx.log(`${bound} devices bound to the shared blocks`);
    // Deleting: tcx links are closed first (no pins: the device delete detaches anyway).
    for (const link of links.splice(0)) link.close();
    for (const { mode, name } of made) {
      const start = performance.now();
      await nl.deleteLink(name);
      timings[mode].del.push(performance.now() - start);
    }

    const figure = (metric: string, ours: number[], base: number[], p: number) => {
      const value = round(percentile(ours, p), 2);
      const baseline = round(percentile(base, p), 2);
      ctx.emit({ metric, value, unit: 'ms', baseline: BASELINE, baseline_value: baseline, ratio: round(value / baseline, 3), better: 'lower' });
    };
    const tb = timings['tc-block'];
    const tx = timings.tcx;
    figure('attach_p50_ms', tb.attach, tx.attach, 50);
    figure('attach_p99_ms', tb.attach, tx.attach, 99);
    figure('veth_and_attach_p50_ms', tb.total, tx.total, 50);
    figure('veth_and_attach_p99_ms', tb.total, tx.total, 99);
    figure('delete_p50_ms', tb.del, tx.del, 50);
    figure('delete_p99_ms', tb.del, tx.del, 99);
  } finally {
    await cleanups.run();
  }
}
