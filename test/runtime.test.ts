/**
 * `ciliate agent --runtime-only` on a plain host, as a user runs it: Tetragon's API on a free
 * port, `ciliate runtime events` printing tetra's compact lines, `ciliate runtime status`, the
 * JSON export file, the tetragon_* metrics and `ciliate status`.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Program } from '../src/ebpf/index.ts';
import { connectTetragon, type TetragonClient, type TetragonEvent } from '../src/runtime/index.ts';
import type { Endpoint } from '../src/agent/index.ts';
import { testCgroup } from '../src/ebpf/internal/testutils.ts';
import { ROOT, TestNode, cli, freePort, sleep, uniqueName, until } from './support/cluster.ts';

const CLI = join(ROOT, 'src', 'cli', 'main.ts');


function ciliate(args: string[]): ChildProcess {
  return spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
}


/** Whether a BPF program with this id is still loaded in the kernel. */
/** The stream's first process_kprobe event of policy `name`; undefined when none came within 10 s. */
async function firstKprobeOf(t: TestContext, stream: ReturnType<TetragonClient['getEvents']>, name: string): Promise<TetragonEvent | undefined> {
  const timer = setTimeout(() => stream.cancel(), 10_000);
  t.after(() => clearTimeout(timer));
  for await (const e of stream) if ('process_kprobe' in e && e.process_kprobe.policy_name === name) return e;
  return undefined;
}

function programLoaded(id: number): boolean {
  try {
    Program.fromId(id).close();
    return true;
  } catch {
    return false;
  }
}

function runtimeStatus(dir: string): { enabled: boolean; programs: number[]; events: { PROCESS_EXEC: number }; processCache: { size: number } } {
  const out = spawnSync(process.execPath, [CLI, 'status', '--socket', join(dir, 'api.sock'), '-o', 'json'], { encoding: 'utf8' });
  return (JSON.parse(out.stdout) as { runtime: ReturnType<typeof runtimeStatus> }).runtime;
}

async function startRuntimeAgent(t: TestContext) {
  const dir = mkdtempSync(join(tmpdir(), 'ciliate-runtime-'));
  const grpcPort = await freePort();
  const metricsPort = await freePort();
  const nodeName = `rt-${randomBytes(3).toString('hex')}`;
  const agent = ciliate([
    'agent', '--runtime-only', '--node-name', nodeName, '--socket-path', join(dir, 'api.sock'),
    '--runtime-server-address', `127.0.0.1:${grpcPort}`, '--runtime-export-filename', join(dir, 'events.log'),
    '--runtime-metrics-server', `127.0.0.1:${metricsPort}`,
  ]);
  let log = '';
  agent.stdout!.on('data', (chunk) => (log += chunk));
  agent.stderr!.on('data', (chunk) => (log += chunk));
  t.after(async () => {
    if (agent.exitCode === null && agent.signalCode === null) {
      const exited = once(agent, 'exit');
      agent.kill('SIGKILL');
      await exited;
    }
    rmSync(dir, { recursive: true, force: true });
  });
  await until("the agent's API", () => log.includes('"API listening"'), 30_000).catch((error: Error) => {
    throw new Error(`${error.message}; agent log:\n${log}`);
  });
  return { dir, grpcPort, metricsPort, nodeName, agent, log: () => log };
}

test('agent --runtime-only serves events that `ciliate runtime events` prints in compact form, and exports them', async (t) => {
  const { dir, grpcPort, metricsPort, nodeName, agent } = await startRuntimeAgent(t);
  const marker = `rt-${randomBytes(4).toString('hex')}`;
  const events = ciliate(['runtime', 'events', '--server-address', `127.0.0.1:${grpcPort}`, '--process', '^/bin/true$', '--timeout', '20s']);
  t.after(() => void (events.exitCode === null && events.kill('SIGKILL')));
  let out = '';
  events.stdout!.on('data', (chunk) => (out += chunk));
  // The client subscribes on its own time: exec until its output shows one.
  await until('a compact exec line', () => {
    spawnSync('/bin/true', [marker]);
    return out.includes(`🚀 process ${nodeName} /bin/true ${marker}`);
  });
  await until('a compact exit line', () => out.includes(`💥 exit    ${nodeName} /bin/true ${marker} 0`));
  assert.ok(out.split('\n').filter(Boolean).every((line) => line.includes(' /bin/true ')), `only /bin/true passes --process: ${out}`);
  events.kill('SIGINT');

  const status = spawnSync(process.execPath, [CLI, 'runtime', 'status', '--server-address', `127.0.0.1:${grpcPort}`], { encoding: 'utf8' });
  assert.equal(status.stdout, 'Health Status: running\n', status.stderr);

  const agentStatus = runtimeStatus(dir);
  assert.equal(agentStatus.enabled, true);
  assert.ok(agentStatus.events.PROCESS_EXEC > 0);
  assert.ok(agentStatus.processCache.size > 0);
  assert.equal(agentStatus.programs.length, 3);
  assert.ok(agentStatus.programs.every(programLoaded));

  const metrics = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
  assert.match(metrics, /^tetragon_process_cache_size \d+$/m);
  assert.match(metrics, /^tetragon_process_cache_capacity 65536$/m);
  assert.match(metrics, new RegExp(`^tetragon_events_total\\{type="PROCESS_EXEC",namespace="",workload="",pod="",binary="/bin/true"\\} \\d+$`, 'm'));

  // The export file has Tetragon's JSON lines for the same processes.
  await until('the export file', () => readFileSync(join(dir, 'events.log'), 'utf8').includes(marker));
  const line = readFileSync(join(dir, 'events.log'), 'utf8').split('\n').find((l) => l.includes(marker) && l.startsWith('{"process_exec"'));
  assert.ok(line);
  const event = JSON.parse(line) as { process_exec: { process: { binary: string; arguments: string; exec_id: string } }; node_name: string; time: string };
  assert.equal(event.node_name, nodeName);
  assert.equal(event.process_exec.process.binary, '/bin/true');
  assert.equal(event.process_exec.process.arguments, marker);
  assert.match(event.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/);
  assert.ok(Buffer.from(event.process_exec.process.exec_id, 'base64').toString().startsWith(`${nodeName}:`));

  const exited = once(agent, 'exit');
  agent.kill('SIGTERM');
  const [code] = await exited;
  assert.equal(code, 0, 'a clean stop');
  await until('the programs to be unloaded', () => !agentStatus.programs.some(programLoaded), 5000);
});

test('an agent killed with SIGKILL leaves no runtime program in the kernel', async (t) => {
  const { dir, agent } = await startRuntimeAgent(t);
  const { programs } = runtimeStatus(dir);
  assert.equal(programs.length, 3);
  assert.ok(programs.every(programLoaded));
  const exited = once(agent, 'exit');
  agent.kill('SIGKILL');
  await exited;
  // Nothing is pinned: the links and programs go with the process's file descriptors.
  await until('the programs to be unloaded', () => !programs.some(programLoaded), 5000);
});

test("in the full agent, a process in a pod's network namespace carries the pod of the endpoint there", async (t) => {
  const node = await TestNode.start(t, { extraArgs: ['--runtime-enabled', '--runtime-server-address', ''] });
  const { netns } = await node.addPod(t, 'xwing', { org: 'alliance', class: 'xwing' }, 'default');
  const client = connectTetragon(`unix:${join(node.dir, 'tetragon.sock')}`);
  t.after(() => client.close());
  const marker = `rt-${randomBytes(4).toString('hex')}`;
  const stream = client.getEvents({ allow_list: [{ pod_regex: ['^xwing$'], arguments_regex: [marker] }] });
  t.after(() => stream.cancel());
  await stream.ready;
  const child = spawn('nsenter', [`--net=/run/netns/${netns}`, '/bin/sh', '-c', 'exit 0', marker], { stdio: 'ignore' });
  await once(child, 'exit');
  const timer = setTimeout(() => stream.cancel(), 10_000);
  let event: TetragonEvent | undefined;
  for await (const e of stream) {
    event = e;
    break;
  }
  clearTimeout(timer);
  assert.ok(event && 'process_exec' in event, 'the exec in the pod arrived');
  const pod = event.process_exec.process.pod;
  assert.equal(pod?.namespace, 'default');
  assert.equal(pod?.name, 'xwing');
  assert.deepEqual(pod?.pod_labels, { org: 'alliance', class: 'xwing' });
  assert.equal(event.process_exec.process.binary, '/bin/sh');
});

test('in the full agent, a podSelector policy reports only its pods, decided in the kernel, and follows pods that come later', async (t) => {
  const node = await TestNode.start(t, { extraArgs: ['--runtime-enabled', '--runtime-server-address', ''] });
  const xwing = await node.addPod(t, 'xwing', { org: 'alliance' }, 'default');
  const fighter = await node.addPod(t, 'tiefighter', { org: 'empire' }, 'default');
  const client = connectTetragon(`unix:${join(node.dir, 'tetragon.sock')}`);
  t.after(() => client.close());
  const dir = mkdtempSync(join(tmpdir(), 'ciliate-podsel-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'plans');
  writeFileSync(file, 'x\n');
  const name = `empire-${randomBytes(4).toString('hex')}`;
  await node.client.call('POST', '/v1/runtime/policies', { yaml: `apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: ${name}}
spec:
  podSelector:
    matchLabels: {org: empire}
  kprobes:
  - call: sys_openat
    args: [{index: 1, type: string}]
    selectors:
    - matchArgs: [{index: 1, operator: Equal, values: [${JSON.stringify(file)}]}]
` });
  const stream = client.getEvents({ allow_list: [{ event_set: ['PROCESS_KPROBE'] }] });
  t.after(() => stream.cancel());
  await stream.ready;
  const cat = async (netns?: string) => {
    const child = spawn(netns ? 'nsenter' : '/usr/bin/cat', netns ? [`--net=/run/netns/${netns}`, '/usr/bin/cat', file] : [file], { stdio: 'ignore' });
    await once(child, 'exit');
  };
  await cat(xwing.netns);
  await cat();
  await cat(fighter.netns);
  // A pod that comes after the policy: the agent adds its namespace to the policy's scope.
  const bomber = await node.addPod(t, 'tiebomber', { org: 'empire' }, 'default');
  const posted = async () => Number(/: (\d+) events/.exec((await client.listTracingPolicies()).find((p) => p.name === name)?.info ?? '')?.[1]);
  await until('the new pod in scope', async () => {
    await cat(bomber.netns);
    return (await posted()) >= 2;
  });
  const timer = setTimeout(() => stream.cancel(), 10_000);
  t.after(() => clearTimeout(timer));
  const pods: string[] = [];
  for await (const e of stream) {
    if (!('process_kprobe' in e) || e.process_kprobe.policy_name !== name) continue;
    pods.push(e.process_kprobe.process.pod?.name ?? 'host');
    if (pods.length === 2) break;
  }
  assert.deepEqual(pods, ['tiefighter', 'tiebomber']);
  assert.equal(await posted(), 2, 'the xwing and the host were rejected in the kernel');
});

test('in the full agent, a containerSelector policy acts on the selected container of a pod only (by its cgroup), and stops when the container leaves the endpoint', async (t) => {
  const node = await TestNode.start(t, { extraArgs: ['--runtime-enabled', '--runtime-server-address', ''] });
  const podId = uniqueName('web');
  const { netns, endpoint } = await node.addPod(t, podId, { app: 'web' }, 'prod');
  // Two "containers": each its own cgroup, named as podman's runc names them, under the test's cgroup.
  const parent = testCgroup(t);
  const ids = { app: uniqueName('app'), sidecar: uniqueName('side') };
  for (const id of Object.values(ids)) mkdirSync(join(parent, `libpod-${id}.scope`));
  const containers = [{ id: ids.app, name: 'app', image: 'docker.io/library/nginx:1.27' }, { id: ids.sidecar, name: 'sidecar', image: 'docker.io/envoyproxy/envoy:v1.31' }];
  // A bad container list is refused whole, naming the field.
  await assert.rejects(node.client.call('PUT', `/v1/endpoints/${endpoint.id}/containers`, { containers: [{ id: 'a/b' }] }), /containers\.0\.id/);
  await assert.rejects(node.client.call('PUT', `/v1/endpoints/${endpoint.id}/containers`, { containers: [{ id: 'a' }, { id: 'a' }] }), /unique/);
  const updated = await node.client.call<Endpoint>('PUT', `/v1/endpoints/${endpoint.id}/containers`, { containers });
  assert.deepEqual(updated.containers, containers);

  const dir = mkdtempSync(join(tmpdir(), 'ciliate-ctrsel-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'secret');
  writeFileSync(file, 'x\n');
  const name = `app-only-${randomBytes(4).toString('hex')}`;
  await node.client.call('POST', '/v1/runtime/policies', { yaml: `apiVersion: cilium.io/v1alpha1
kind: TracingPolicyNamespaced
metadata: {name: ${name}, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  containerSelector:
    matchExpressions: [{key: name, operator: In, values: [app]}]
  kprobes:
  - call: sys_openat
    args: [{index: 1, type: string}]
    selectors:
    - matchArgs: [{index: 1, operator: Equal, values: [${JSON.stringify(file)}]}]
      matchActions: [{action: Sigkill}]
` });
  const client = connectTetragon(`unix:${join(node.dir, 'tetragon.sock')}`);
  t.after(() => client.close());
  const stream = client.getEvents({ allow_list: [{ event_set: ['PROCESS_KPROBE'] }] });
  t.after(() => stream.cancel());
  await stream.ready;
  // Joins the container's cgroup, then the pod's network namespace, then execs cat: as a runtime starts a container.
  const cat = async (cgroup: string) => {
    const child = spawn('/bin/sh', ['-c', `echo $$ > ${cgroup}/cgroup.procs && exec nsenter --net=/run/netns/${netns} -- /usr/bin/cat ${file}`], { stdio: 'ignore' });
    const [code, signal] = (await once(child, 'exit')) as [number | null, NodeJS.Signals | null];
    return signal ?? code;
  };
  const app = join(parent, `libpod-${ids.app}.scope`);
  await until('the app container killed', async () => (await cat(app)) === 'SIGKILL');
  assert.equal(await cat(join(parent, `libpod-${ids.sidecar}.scope`)), 0, "the sidecar's cat is spared");
  assert.equal(await cat(parent), 0, "a process of the pod in none of its containers is spared");
  const event = await firstKprobeOf(t, stream, name);
  assert.ok(event && 'process_kprobe' in event);
  assert.equal(event.process_kprobe.action, 'KPROBE_ACTION_SIGKILL');
  // Through gRPC and back: fields left out come back as undefined.
  assert.deepEqual(JSON.parse(JSON.stringify(event.process_kprobe.process.pod?.container)), { id: ids.app, name: 'app', image: { name: 'docker.io/library/nginx:1.27' } });
  assert.equal(event.process_kprobe.process.pod?.name, podId);

  // The app container gone from the endpoint (as a user tells the agent): its cgroup leaves the policy.
  const removed = await cli(node, 'endpoint', 'containers', String(endpoint.id), `id=${ids.sidecar},name=sidecar,image=docker.io/envoyproxy/envoy:v1.31`);
  assert.equal(removed.stdout, `endpoint ${endpoint.id}: 1 containers\n`, removed.stderr);
  await until('the app container no longer selected', async () => (await cat(app)) === 0);
  // Containers unknown again: the policy selects none (fail closed).
  assert.equal((await cli(node, 'endpoint', 'containers', String(endpoint.id), '--unknown')).stdout, `endpoint ${endpoint.id}: containers unknown\n`);
  assert.equal((await node.client.get<Endpoint>(`/v1/endpoints/${endpoint.id}`)).containers, undefined);
  assert.equal(await cat(app), 0);
  const bad = await cli(node, 'endpoint', 'containers', String(endpoint.id), 'name=app');
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /container "name=app": want id=ID/);
});

test('policy modes (Tetragon\'s): a Sigkill policy in monitor mode posts its events naming Sigkill and kills nothing; set-mode enforce kills; disable unloads it but keeps it listed; enable loads it again; a monitor_only policy refuses a mode', async (t) => {
  const { grpcPort } = await startRuntimeAgent(t);
  const server = ['--server-address', `127.0.0.1:${grpcPort}`];
  const dir = mkdtempSync(join(tmpdir(), 'ciliate-mode-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const secret = join(dir, 'secret');
  writeFileSync(secret, 'x\n');
  const name = `mode-${randomBytes(4).toString('hex')}`;
  const policyFile = join(dir, 'policy.yaml');
  writeFileSync(policyFile, `apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: ${name}}
spec:
  options:
  - {name: policy-mode, value: monitor}
  kprobes:
  - call: sys_openat
    args: [{index: 1, type: string}]
    selectors:
    - matchBinaries: [{operator: In, values: [/usr/bin/cat]}]
      matchArgs: [{index: 1, operator: Equal, values: [${JSON.stringify(secret)}]}]
      matchActions: [{action: Sigkill}]
`);
  const run = (...args: string[]) => spawnSync(process.execPath, [CLI, 'runtime', 'policy', ...args, ...server], { encoding: 'utf8' });
  assert.equal(run('add', policyFile).status, 0);
  const cat = () => {
    const out = spawnSync('/usr/bin/cat', [secret]);
    return out.signal ?? out.status;
  };
  const list = () => run('list', '-o', 'json');
  const listed = () => (JSON.parse(list().stdout) as { name: string; enabled: boolean; mode: string; state: string }[]).find((p) => p.name === name);
  assert.deepEqual(listed() && [listed()!.enabled, listed()!.state, listed()!.mode], [true, 'TP_STATE_ENABLED', 'TP_MODE_MONITOR']);

  const client = connectTetragon(`127.0.0.1:${grpcPort}`);
  t.after(() => client.close());
  const stream = client.getEvents({ allow_list: [{ event_set: ['PROCESS_KPROBE'] }] });
  t.after(() => stream.cancel());
  await stream.ready;
  assert.equal(cat(), 0, 'monitor mode: the process lives');
  const event = await firstKprobeOf(t, stream, name);
  assert.ok(event && 'process_kprobe' in event, 'the monitored match is posted');
  assert.equal(event.process_kprobe.action, 'KPROBE_ACTION_SIGKILL', 'naming what the policy would have done');

  // Enforce at runtime (ConfigureTracingPolicy): the same policy now kills.
  assert.equal(run('set-mode', name, 'enforce').status, 0);
  assert.equal(listed()?.mode, 'TP_MODE_ENFORCE');
  assert.equal(cat(), 'SIGKILL');
  // Disabled: nothing of it runs, and it is still listed to enable again.
  assert.equal(run('disable', name).status, 0);
  assert.deepEqual(listed() && [listed()!.enabled, listed()!.state], [false, 'TP_STATE_DISABLED']);
  assert.equal(cat(), 0);
  const again = run('add', policyFile);
  assert.notEqual(again.status, 0, 'the name stays taken while disabled');
  assert.equal(run('enable', name).status, 0);
  assert.equal(cat(), 'SIGKILL', 'enabled again, in the mode it was set to');
  // Back to monitor mode: nothing is killed.
  assert.equal(run('set-mode', name, 'monitor').status, 0);
  assert.equal(cat(), 0);
  const bad = run('set-mode', name, 'audit');
  assert.match(bad.stderr, /mode "audit": want enforce or monitor/);
  assert.equal(run('delete', name).status, 0);
  assert.equal(listed(), undefined);

  // A policy with nothing to enforce is monitor_only, and says so when asked to enforce.
  const postOnly = join(dir, 'post.yaml');
  writeFileSync(postOnly, readFileSync(policyFile, 'utf8').replace('{action: Sigkill}', '{action: Post}').replace(`name: ${name}`, `name: ${name}-post`));
  assert.equal(run('add', postOnly, '--mode', 'enforce').status, 0);
  const postListed = (JSON.parse(list().stdout) as { name: string; mode: string }[]).find((p) => p.name === `${name}-post`);
  assert.equal(postListed?.mode, 'TP_MODE_MONITOR_ONLY');
  const refused = run('set-mode', `${name}-post`, 'enforce');
  assert.notEqual(refused.status, 0);
  assert.match(refused.stderr, /monitor_only/);

  // A malformed option refuses the policy whole, naming the field.
  const badOption = join(dir, 'bad.yaml');
  writeFileSync(badOption, readFileSync(policyFile, 'utf8').replace('value: monitor', 'value: audit').replace(`name: ${name}`, `name: ${name}-bad`));
  const refusedAdd = run('add', badOption);
  assert.notEqual(refusedAdd.status, 0);
  assert.match(refusedAdd.stderr, /spec\.options\[0\]\.value: "audit": want enforce or monitor/);
});
