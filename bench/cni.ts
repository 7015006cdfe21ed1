/**
 * `cni`: what the installed CNI plugin costs a container runtime, which starts it once per pod and
 * command: `ciliate cni install` into a temp bin dir, against an agent in its own node namespace.
 *
 *   version   CNI_COMMAND=VERSION through the installed plugin binary (src/cni/shim), vs
 *             /bin/true, the cost of any process at all; bare Node (`node -e ''`) runs alongside
 *             for context, as what a Node plugin could not go under. Wall time and peak RSS
 *             (wait4's ru_maxrss) from bench/c/run-rusage.c.
 *   add/del   one ADD then one DEL of a fresh namespace through the plugin (which forwards it to
 *             the agent's POST /v1/cni), vs the same POST and DELETE sent to the endpoints API
 *             directly: what the process per call and the CNI logic add.
 *   parallel  50 ADDs started at once through the plugin (as a runtime starting a burst of pods),
 *             vs the same 50 POSTs sent to the API at once: pods/s, and the DELs after.
 *
 * Figures (ms and MB better "lower", pods/s better "higher", ratio = ours / baseline):
 *   cni_version_p50_ms / _p99_ms     target p50 < 50 ms
 *   cni_version_peak_rss_mb          the largest of the runs (ADD's too), target < 50 MB
 *   cni_add_p50_ms / _p99_ms, cni_del_p50_ms
 *   cni_parallel_add_pods_per_s      target >= 20
 * Rounds: N (default 30, --rounds N) sequential VERSION and ADD+DEL runs of each variant, four
 * parallel bursts of each after one unmeasured (the median: a shared machine's load swings a
 * burst's rate). Every namespace, endpoint and file made here is removed afterwards.
 * @module
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { Endpoint } from '../src/agent/endpoint.ts';
import { installCni } from '../src/cni/install.ts';
import { type BenchContext, buildC, interleave, type JsonValue, median, ROOT, round } from './lib.ts';
import { BenchNode } from './support/agent.ts';
import { Cleanups, netnsPath, percentile, sh, uniqueName } from './support/ns.ts';

const execFileAsync = promisify(execFile);

export const description = 'CNI plugin: invocation wall time and peak RSS (VERSION, ADD+DEL) and pods/s for 50 parallel ADDs, vs /bin/true and the agent API';

const DEFAULT_ROUNDS = 30;
const PARALLEL = 50;
const PARALLEL_ROUNDS = 4;
const TARGET_P50_MS = 50;
const TARGET_RSS_MB = 50;
const TARGET_PODS_PER_S = 20;

/** One process as run-rusage saw it. */
interface Run {
  wallMs: number;
  rssMb: number;
  /** User + system CPU time of the process. */
  cpuMs: number;
  exit: number;
  stdout: string;
}

/** `<stem>_p50_ms` and `<stem>_p99_ms`: ours against the baseline's same percentile. */
function emitPercentiles(
  ctx: BenchContext,
  stem: string,
  ours: readonly number[],
  base: readonly number[],
  baseline: string,
  extra: Record<string, JsonValue>,
  p50Extra: Record<string, JsonValue> = {},
): void {
  for (const p of [50, 99] as const) {
    const value = percentile(ours, p);
    const baselineValue = percentile(base, p);
    ctx.emit({
      metric: `${stem}_p${p}_ms`,
      value: round(value, 1),
      unit: 'ms',
      baseline,
      baseline_value: round(baselineValue, 1),
      ratio: round(value / baselineValue, 3),
      better: 'lower',
      ...extra,
      ...(p === 50 ? p50Extra : {}),
    });
  }
}

/**
 * CPU time of the agent and of the children it has reaped (its `ip` processes), from
 * /proc/<pid>/stat (utime, stime, cutime, cstime, in clock ticks of 10 ms).
 */
function agentCpuMs(pid: number | undefined): number {
  if (pid === undefined) return Number.NaN;
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return [11, 12, 13, 14].reduce((sum, i) => sum + Number(fields[i]), 0) * 10;
}

export async function run(ctx: BenchContext): Promise<void> {
  if (process.getuid?.() !== 0) ctx.log('not running as root: creating namespaces and loading BPF will fail');
  const rounds = ctx.rounds ?? DEFAULT_ROUNDS;
  const cleanups = new Cleanups((message) => ctx.log(message));
  try {
    const rusage = buildC('run-rusage');
    const dir = mkdtempSync(join(tmpdir(), 'ciliate-bench-cni-'));
    cleanups.defer(`rm ${dir}`, () => rmSync(dir, { recursive: true, force: true }));
    const node = await BenchNode.start(cleanups, { prefix: 'ccni' });
    const binDir = join(dir, 'bin');
    const { plugin } = installCni({ binDir, confDir: join(dir, 'net.d'), socketPath: node.socket });
    const node24 = join(ROOT, 'node_modules', '.bin', 'node');
    const confFile = join(dir, 'conf.json');
    writeFileSync(confFile, JSON.stringify({ cniVersion: '1.0.0', name: 'bench', type: 'ciliate', socketPath: node.socket }));

    // Namespaces and endpoints are tracked in sets that one cleanup step each empties, so a
    // failure anywhere leaves nothing behind and nothing is looked up by name.
    const namespaces = new Set<string>();
    const endpoints = new Set<string>();
    cleanups.defer('namespaces of the bench pods', async () => {
      for (const name of namespaces) await sh('ip', ['netns', 'del', name]);
    });
    cleanups.defer('endpoints of the bench pods', async () => {
      for (const containerId of endpoints) await node.deleteEndpoint(containerId);
    });
    const newNetns = async (): Promise<string> => {
      const name = uniqueName('ccnp');
      await sh('ip', ['netns', 'add', name]);
      namespaces.add(name);
      return name;
    };
    const dropNetns = async (name: string): Promise<void> => {
      await sh('ip', ['netns', 'del', name]);
      namespaces.delete(name);
    };

    let runs = 0;
    const measure = async (command: string, env: Record<string, string>, args: readonly string[] = []): Promise<Run> => {
      const out = join(dir, `out-${runs++}.json`);
      const { stdout } = await execFileAsync(rusage, [confFile, out, command, ...args], { env: { PATH: process.env.PATH ?? '', ...env }, encoding: 'utf8' });
      const usage = JSON.parse(stdout) as { wall_ns: number; maxrss_kb: number; user_us: number; sys_us: number; exit: number };
      const result = {
        wallMs: usage.wall_ns / 1e6,
        rssMb: usage.maxrss_kb / 1024,
        cpuMs: (usage.user_us + usage.sys_us) / 1000,
        exit: usage.exit,
        stdout: readFileSync(out, 'utf8'),
      };
      rmSync(out);
      return result;
    };
    const cniEnv = (command: string, containerId: string, netns: string): Record<string, string> => ({
      CNI_COMMAND: command,
      CNI_CONTAINERID: containerId,
      CNI_NETNS: netnsPath(netns),
      CNI_IFNAME: 'eth0',
      CNI_PATH: binDir,
    });
    const pluginAdd = async (netns: string): Promise<Run> => {
      const containerId = uniqueName('cbcni');
      endpoints.add(containerId);
      const add = await measure(plugin, cniEnv('ADD', containerId, netns));
      if (add.exit !== 0) throw new Error(`plugin ADD exited ${add.exit}: ${add.stdout}`);
      return { ...add, stdout: containerId };
    };
    const pluginDel = async (containerId: string, netns: string): Promise<Run> => {
      const del = await measure(plugin, cniEnv('DEL', containerId, netns));
      if (del.exit !== 0) throw new Error(`plugin DEL exited ${del.exit}: ${del.stdout}`);
      endpoints.delete(containerId);
      return del;
    };
    const apiAdd = async (netns: string): Promise<string> => {
      const containerId = uniqueName('cbapi');
      endpoints.add(containerId);
      await node.client.call<Endpoint>('POST', '/v1/endpoints', { containerId, ifname: 'eth0', netns: netnsPath(netns) });
      return containerId;
    };
    const apiDel = async (containerId: string): Promise<void> => {
      await node.client.call('DELETE', `/v1/endpoints/${containerId}/eth0`);
      endpoints.delete(containerId);
    };

    // VERSION vs /bin/true, with bare Node for context.
    const rss: Record<'plugin' | 'bare' | 'node', number[]> = { plugin: [], bare: [], node: [] };
    const cpu: Record<'plugin' | 'bare' | 'node', number[]> = { plugin: [], bare: [], node: [] };
    const version = await interleave(rounds, {
      plugin: async () => {
        const r = await measure(plugin, { CNI_COMMAND: 'VERSION' });
        if (r.exit !== 0 || !r.stdout.includes('supportedVersions')) throw new Error(`plugin VERSION exited ${r.exit}: ${r.stdout}`);
        rss.plugin.push(r.rssMb);
        cpu.plugin.push(r.cpuMs);
        return r.wallMs;
      },
      bare: async () => {
        const r = await measure('/bin/true', {});
        rss.bare.push(r.rssMb);
        cpu.bare.push(r.cpuMs);
        return r.wallMs;
      },
      node: async () => {
        const r = await measure(node24, {}, ['-e', '']);
        rss.node.push(r.rssMb);
        cpu.node.push(r.cpuMs);
        return r.wallMs;
      },
    });
    // interleave's warm-up call is not a sample.
    for (const list of [...Object.values(rss), ...Object.values(cpu)]) list.shift();
    ctx.log(
      `VERSION: plugin p50 ${round(median(version.plugin), 2)} ms / max ${round(Math.max(...rss.plugin), 2)} MB, /bin/true p50 ${round(median(version.bare), 2)} ms, node -e '' p50 ${round(median(version.node))} ms / max ${round(Math.max(...rss.node))} MB`,
    );

    // ADD then DEL, one pod at a time, through the plugin vs straight to the API.
    const seq = { pluginAdd: [] as number[], pluginDel: [] as number[], apiAdd: [] as number[], apiDel: [] as number[], addRss: [] as number[] };
    await interleave(
      rounds,
      {
        plugin: async () => {
          const netns = await newNetns();
          const add = await pluginAdd(netns);
          const del = await pluginDel(add.stdout, netns);
          await dropNetns(netns);
          seq.pluginAdd.push(add.wallMs);
          seq.pluginDel.push(del.wallMs);
          seq.addRss.push(add.rssMb);
          return add.wallMs + del.wallMs;
        },
        api: async () => {
          const netns = await newNetns();
          const start = performance.now();
          const containerId = await apiAdd(netns);
          const added = performance.now();
          await apiDel(containerId);
          const end = performance.now();
          await dropNetns(netns);
          seq.apiAdd.push(added - start);
          seq.apiDel.push(end - added);
          return end - start;
        },
      },
      {
        onRound: (i) => {
          if ((i + 1) % 10 === 0 || i + 1 === rounds) ctx.log(`ADD+DEL ${i + 1}/${rounds}: plugin ADD ${round(seq.pluginAdd.at(-1)!)} ms, API POST ${round(seq.apiAdd.at(-1)!)} ms`);
        },
      },
    );
    for (const list of Object.values(seq)) list.shift();

    // Bursts of PARALLEL pods. The namespaces exist before the clock starts; each burst's pods are
    // deleted (also in parallel, timed for context) before the next, so the pod CIDR never fills.
    const dels: Record<'plugin' | 'api', number[]> = { plugin: [], api: [] };
    const burstWall: number[] = [];
    const burstCpu: number[] = [];
    const agentCpuPerPod: Record<'plugin' | 'api', number[]> = { plugin: [], api: [] };
    const burst = async (variant: 'plugin' | 'api'): Promise<number> => {
      const pods: string[] = [];
      for (let i = 0; i < PARALLEL; i++) pods.push(await newNetns());
      const agentCpu = agentCpuMs(node.agent?.pid);
      const start = performance.now();
      let ids: string[];
      if (variant === 'plugin') {
        const added = await Promise.all(pods.map((netns) => pluginAdd(netns)));
        burstWall.push(...added.map((r) => r.wallMs));
        burstCpu.push(...added.map((r) => r.cpuMs));
        ids = added.map((r) => r.stdout);
      } else ids = await Promise.all(pods.map((netns) => apiAdd(netns)));
      const addSeconds = (performance.now() - start) / 1000;
      agentCpuPerPod[variant].push((agentCpuMs(node.agent?.pid) - agentCpu) / PARALLEL);
      const delStart = performance.now();
      if (variant === 'plugin') await Promise.all(ids.map((id, i) => pluginDel(id, pods[i])));
      else await Promise.all(ids.map((id) => apiDel(id)));
      dels[variant].push(PARALLEL / ((performance.now() - delStart) / 1000));
      for (const netns of pods) await dropNetns(netns);
      ctx.log(`${PARALLEL} parallel ADDs via ${variant}: ${round(PARALLEL / addSeconds)} pods/s (${round(addSeconds, 2)} s)`);
      return PARALLEL / addSeconds;
    };
    // One unmeasured burst of each first: the agent's first burst of adds pays one-time costs
    // (tables and caches growing) that would otherwise fall on whichever variant goes first.
    await burst('plugin');
    await burst('api');
    for (const list of [burstWall, burstCpu, agentCpuPerPod.plugin, agentCpuPerPod.api, dels.plugin, dels.api]) list.length = 0;
    const parallel = await interleave(PARALLEL_ROUNDS, { plugin: () => burst('plugin'), api: () => burst('api') }, { warmup: 0 });

    const versionP50 = median(version.plugin);
    emitPercentiles(
      ctx,
      'cni_version',
      version.plugin,
      version.bare,
      '/bin/true (any process at all), run the same way',
      { runs: version.plugin.length, bare_node_p50_ms: round(median(version.node), 1) },
      { target_ms: TARGET_P50_MS, meets_target: versionP50 < TARGET_P50_MS },
    );
    const peak = Math.max(...rss.plugin);
    const barePeak = Math.max(...rss.bare);
    const addPeak = Math.max(...seq.addRss);
    ctx.emit({
      metric: 'cni_version_peak_rss_mb',
      value: round(peak, 2),
      unit: 'MB',
      baseline: '/bin/true',
      baseline_value: round(barePeak, 2),
      ratio: round(peak / barePeak, 3),
      better: 'lower',
      target_mb: TARGET_RSS_MB,
      meets_target: Math.max(peak, addPeak) < TARGET_RSS_MB,
      p50_mb: round(median(rss.plugin), 2),
      cpu_p50_ms: round(median(cpu.plugin), 2),
      bare_cpu_p50_ms: round(median(cpu.bare), 2),
      bare_node_peak_rss_mb: round(Math.max(...rss.node), 1),
      bare_node_cpu_p50_ms: round(median(cpu.node), 1),
      add_peak_rss_mb: round(addPeak, 2),
      runs: rss.plugin.length,
    });
    emitPercentiles(ctx, 'cni_add', seq.pluginAdd, seq.apiAdd, 'POST /v1/endpoints straight to the agent API', { pods: seq.pluginAdd.length });
    const delP50 = median(seq.pluginDel);
    const apiDelP50 = median(seq.apiDel);
    ctx.emit({
      metric: 'cni_del_p50_ms',
      value: round(delP50, 1),
      unit: 'ms',
      baseline: 'DELETE /v1/endpoints/<id>/eth0 straight to the agent API',
      baseline_value: round(apiDelP50, 1),
      ratio: round(delP50 / apiDelP50, 3),
      better: 'lower',
      p99_ms: round(percentile(seq.pluginDel, 99), 1),
    });
    const podsPerS = median(parallel.plugin);
    const apiPodsPerS = median(parallel.api);
    ctx.emit({
      metric: 'cni_parallel_add_pods_per_s',
      value: round(podsPerS, 1),
      unit: 'pods/s',
      baseline: `the same ${PARALLEL} adds as concurrent POSTs straight to the agent API`,
      baseline_value: round(apiPodsPerS, 1),
      ratio: round(podsPerS / apiPodsPerS, 3),
      better: 'higher',
      target_pods_per_s: TARGET_PODS_PER_S,
      meets_target: podsPerS >= TARGET_PODS_PER_S,
      parallel: PARALLEL,
      rounds: parallel.plugin.length,
      invocation_p50_ms_under_load: round(median(burstWall), 1),
      // CPU is what two shared cores run out of; these hold still when wall times do not.
      plugin_cpu_ms_per_pod: round(median(burstCpu), 1),
      agent_cpu_ms_per_pod: round(median(agentCpuPerPod.plugin), 1),
      api_agent_cpu_ms_per_pod: round(median(agentCpuPerPod.api), 1),
      del_pods_per_s: round(median(dels.plugin), 1),
      api_del_pods_per_s: round(median(dels.api), 1),
    });
  } finally {
    await cleanups.run();
  }
}
