/**
 * `load`: load-and-attach time of the largest datapath object (build/bpf/*.o by size), through
 * BpfObject.load + attachTcx, against iproute2's `tc filter add … bpf da obj` doing the same job
 * (libbpf load plus a cls_bpf attach) on an identical veth in its own namespace. tc's figure includes
 * its process start, so the baseline also runs `tc` once with nothing to do and subtracts that.
 * TCX attach waits for an RCU grace period (tcx_entry_sync) where cls_bpf frees the old filter
 * through call_rcu, so the figure also reports load and attach separately.
 * @module
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { BpfObject, attachTcx, inNetns } from '../src/ebpf/index.ts';
import { type BenchContext, interleave, median, round, ROOT } from './lib.ts';

export const description = 'load-and-attach time of the largest datapath object vs tc filter add';

const DEFAULT_ROUNDS = 9;

function largestObject(): string {
  const dir = join(ROOT, 'build', 'bpf');
  const datapath = readdirSync(join(ROOT, 'bpf')).filter((f) => f.endsWith('.c')).map((f) => f.replace(/\.c$/, '.o'));
  return datapath.map((f) => join(dir, f)).sort((a, b) => statSync(b).size - statSync(a).size)[0];
}

function sh(args: string[]): void {
  execFileSync(args[0], args.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
}

export async function run(ctx: BenchContext): Promise<void> {
  const object = largestObject();
  const program = firstTcProgram(object);
  const ns = `ciliate-bench-load-${randomBytes(3).toString('hex')}`;
  sh(['ip', 'netns', 'add', ns]);
  try {
    sh(['ip', '-n', ns, 'link', 'add', 'ours', 'type', 'veth', 'peer', 'name', 'ours-peer']);
    sh(['ip', '-n', ns, 'link', 'add', 'tc0', 'type', 'veth', 'peer', 'name', 'tc0-peer']);
    sh(['ip', 'netns', 'exec', ns, 'tc', 'qdisc', 'add', 'dev', 'tc0', 'clsact']);
    const loadOnly: number[] = [];
    const samples = await interleave(ctx.rounds ?? DEFAULT_ROUNDS, {
      ciliate: () => {
        const start = performance.now();
        const obj = BpfObject.load(object);
        const loaded = performance.now();
        const link = inNetns(`/run/netns/${ns}`, () => attachTcx(obj.program(program), { interface: 'ours', direction: 'ingress' }));
        const elapsed = performance.now() - start;
        loadOnly.push(loaded - start);
        link.close();
        obj.close();
        return elapsed;
      },
      tc: () => {
        const start = performance.now();
        sh(['ip', 'netns', 'exec', ns, 'tc', 'filter', 'replace', 'dev', 'tc0', 'ingress', 'pref', '1', 'handle', '1', 'bpf', 'da', 'obj', object, 'sec', 'tc']);
        return performance.now() - start;
      },
      tcProcessStart: () => {
        const start = performance.now();
        sh(['ip', 'netns', 'exec', ns, 'tc', 'filter', 'show', 'dev', 'tc0', 'egress']);
        return performance.now() - start;
      },
    });
    const ours = median(samples.ciliate);
    const baseline = median(samples.tc) - median(samples.tcProcessStart);
    ctx.emit({
      metric: 'load_attach_ms',
      value: round(ours, 2),
      unit: 'ms',
      baseline: 'tc filter add bpf da obj (iproute2 + libbpf), minus tc process start',
      baseline_value: round(baseline, 2),
      ratio: round(ours / baseline, 3),
      better: 'lower',
      object: object.slice(ROOT.length + 1),
      // The rest of ours is BPF_LINK_CREATE for TCX, which waits for an RCU grace period in the kernel.
      load_ms: round(median(loadOnly), 2),
      attach_ms: round(ours - median(loadOnly), 2),
      rounds: samples.ciliate.length,
    });
  } finally {
    sh(['ip', 'netns', 'del', ns]);
  }
}

function firstTcProgram(object: string): string {
  using obj = BpfObject.load(object);
  const prog = [...obj.programs.values()].find((p) => p.section === 'tc');
  if (!prog) throw new Error(`${object} has no SEC("tc") program to attach`);
  return prog.name;
}
