/**
 * `sock-enforce`: what per-binary network policy costs a connection. bench/c/conn-rate.c
 * (connect, 1-byte request and response, close; one at a time) to a server in the same network
 * namespace, from a process in a cgroup with the socket enforcement hooks and the issue's
 * per-binary rule (ours: matchBinaries NotIn, matchNamespaces Net, DAddr and DPort all match up
 * to the binary, so every connect runs the whole selector, the exe path walk included, and is
 * allowed because conn-rate is an allowed binary) vs the same client in a cgroup without hooks
 * (baseline). Rounds interleave.
 *
 * The hooks' own cost is a few hundred ns against a connection's tens of µs, under the noise of a
 * shared machine; bench/c/udp-connect-loop.c shows it: a UDP socket connect()ed 200,000 times
 * (no packet: the system call and its hooks), ns per connect, same two cgroups.
 *
 * Figures: sock_enforce_conn_per_s (target ratio ≥ 0.95), sock_enforce_ns_per_connect (the cost
 * the hooks add, ours - baseline, is also given).
 * Rounds: N (default 7, --rounds N) samples per variant (2 s of connections; 200,000 connects).
 * @module
 */
import { statSync } from 'node:fs';
import { compileSocketPolicy, SocketEnforcer } from '../src/runtime/index.ts';
import { type BenchContext, buildC, interleave, median, round } from './lib.ts';
import { Cleanups, addCgroup, addNetns, inNs, sh, spawnInNs, waitForOutput } from './support/ns.ts';

export const description = 'per-binary network policy: connections per second with the socket enforcement hooks and a matching rule vs without';

const DEFAULT_ROUNDS = 7;
const SECONDS = 2;
const PORT = 8090;
const SERVER = '10.78.0.1';
const TARGET_RATIO = 0.95;
const CONNECTS = 200_000;

function policy(binaries: string[], netnsInode: number): string {
  return `apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: bench-per-binary}
spec:
  kprobes:
  - call: sys_connect
    args: [{index: 1, type: sockaddr}]
    selectors:
    - matchBinaries: [{operator: NotIn, values: [${binaries.join(', ')}]}]
      matchNamespaces: [{namespace: Net, operator: In, values: ["${netnsInode}"]}]
      matchArgs: [{index: 1, operator: DAddr, values: [${SERVER}/32]}, {index: 1, operator: DPort, values: ["${PORT}"]}]
      matchActions: [{action: Override, argError: -1}]
`;
}

export async function run(ctx: BenchContext): Promise<void> {
  const rounds = ctx.rounds ?? DEFAULT_ROUNDS;
  const cleanups = new Cleanups((m) => ctx.log(m));
  try {
    const binary = buildC('conn-rate');
    const loop = buildC('udp-connect-loop');
    const netns = await addNetns(cleanups, 'cbse');
    await sh('ip', ['-n', netns, 'link', 'add', 'v0', 'type', 'veth', 'peer', 'name', 'v1']);
    await sh('ip', ['-n', netns, 'addr', 'add', `${SERVER}/24`, 'dev', 'v0']);
    await sh('ip', ['-n', netns, 'link', 'set', 'v0', 'up']);
    await sh('ip', ['-n', netns, 'link', 'set', 'v1', 'up']);
    const server = spawnInNs(cleanups, netns, binary, ['server', String(PORT)]);
    await waitForOutput(server, 'ready');
    const enforced = addCgroup(cleanups, 'ciliate-bench-se');
    const plain = addCgroup(cleanups, 'ciliate-bench-sp');
    const enforcer = new SocketEnforcer({ cgroup: enforced, onRecord: () => {}, onError: (error) => ctx.log(`sock-enforce: ${String(error)}`) });
    cleanups.defer('close the socket enforcer', () => enforcer.close());
    enforcer.add(compileSocketPolicy(policy([binary, loop], statSync(`/run/netns/${netns}`).ino))!);

    const sample = (cgroup: string) => async () => {
      const out = await inNs(netns, 'sh', ['-c', `echo $$ > ${cgroup}/cgroup.procs && exec ${binary} client ${SERVER} ${PORT} ${SECONDS}`], (SECONDS + 30) * 1000);
      const parsed = JSON.parse(out) as { conn_per_s: number; errors: number };
      if (parsed.errors > 0 || !(parsed.conn_per_s > 0)) throw new Error(`conn-rate: ${out.trim()}`);
      return parsed.conn_per_s;
    };
    const connects = (cgroup: string) => async () => {
      const out = await inNs(netns, 'sh', ['-c', `echo $$ > ${cgroup}/cgroup.procs && exec ${loop} ${SERVER} ${PORT} ${CONNECTS}`]);
      const parsed = JSON.parse(out) as { ns_per_connect: number; errors: number };
      if (parsed.errors > 0) throw new Error(`udp-connect-loop: ${out.trim()}`);
      return parsed.ns_per_connect;
    };
    const calls = await interleave(rounds, { ours: connects(enforced), baseline: connects(plain) });
    const [oursNs, theirsNs] = [median(calls.ours), median(calls.baseline)];
    ctx.emit({
      metric: 'sock_enforce_ns_per_connect',
      value: round(oursNs, 0),
      unit: 'ns',
      baseline: 'the same UDP connect() in a cgroup without socket hooks',
      baseline_value: round(theirsNs, 0),
      ratio: round(oursNs / theirsNs, 3),
      added_ns: round(oursNs - theirsNs, 0),
      better: 'lower',
      rounds,
    });
    const samples = await interleave(rounds, { ours: sample(enforced), baseline: sample(plain) }, {
      onRound: (r, s) => ctx.log(`round ${r + 1}: ours ${Math.round(s.ours.at(-1) ?? 0)}, baseline ${Math.round(s.baseline.at(-1) ?? 0)} conn/s`),
    });
    const [ours, theirs] = [median(samples.ours), median(samples.baseline)];
    const status = enforcer.list()[0];
    ctx.emit({
      metric: 'sock_enforce_conn_per_s',
      value: round(ours, 0),
      unit: 'conn/s',
      baseline: 'the same client in a cgroup without socket hooks',
      baseline_value: round(theirs, 0),
      ratio: round(ours / theirs, 3),
      better: 'higher',
      target: `≥ ${TARGET_RATIO}`,
      met: ours / theirs >= TARGET_RATIO,
      judged: Number(status.stats.runs),
      refused: Number((status.stats as { refused: bigint }).refused),
      rounds,
    });
  } finally {
    await cleanups.run();
  }
}
