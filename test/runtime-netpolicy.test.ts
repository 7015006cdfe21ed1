/**
 * Per-binary network policy as a user runs it: `ciliate agent --runtime-only` enforcing on a
 * cgroup of the test, a TracingPolicy loaded with `ciliate runtime policy add`, the verdict in
 * `ciliate runtime events -o json`, and an agent killed with SIGKILL leaving no program on the
 * cgroup (a restart starts clean and loads the policy again from --runtime-tracing-policy-dir).
 * Then in the full agent, destinations by identity (labels) and by service: real pods, a real
 * service, two binaries of a client pod, the hooks before and after the socket LB's.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TestPod } from '../src/runtime/socket-testutils.ts';
import { ROOT, TestNode, cli, echoServer, freePort, killChild, uniqueName, until } from './support/cluster.ts';
import { connectTetragon, type TetragonEvent, type TetragonProcessKprobe } from '../src/runtime/index.ts';

const CLI = join(ROOT, 'src', 'cli', 'main.ts');



/** An agent enforcing on the pod's cgroup; resolves once its Tetragon API listens. */
async function startAgent(t: TestContext, pod: TestPod, dir: string, grpcPort: number, policyDir?: string): Promise<ChildProcess> {
  const agent = spawn(process.execPath, [
    CLI, 'agent', '--runtime-only', '--node-name', `rtnet-${pod.id}`, '--socket-path', join(dir, 'api.sock'),
    '--runtime-server-address', `127.0.0.1:${grpcPort}`, '--runtime-enforce-cgroup', pod.cgroup,
    ...(policyDir ? ['--runtime-tracing-policy-dir', policyDir] : []),
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  agent.stdout!.on('data', (chunk) => (log += chunk));
  agent.stderr!.on('data', (chunk) => (log += chunk));
  t.after(() => killChild(agent));
  await until("Tetragon's API", () => log.includes("Tetragon's API listening"), 30_000).catch((error: Error) => {
    throw new Error(`${error.message}; agent log:\n${log}`);
  });
  return agent;
}

/** A test pod, a directory and a port for the runtime-only agent's API, all removed at the end. */
async function runtimeOnlySetup(t: TestContext): Promise<{ pod: TestPod; dir: string; grpcPort: number }> {
  const pod = new TestPod();
  t.after(() => pod.close());
  await pod.open();
  const dir = mkdtempSync(join(tmpdir(), 'ciliate-rtnet-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return { pod, dir, grpcPort: await freePort() };
}

test('one binary of a pod is refused a destination another reaches, through the agent and its CLI; a killed agent leaves no program behind', async (t) => {
  const { pod, dir, grpcPort } = await runtimeOnlySetup(t);
  const server = ['--server-address', `127.0.0.1:${grpcPort}`];
  const agent = await startAgent(t, pod, dir, grpcPort);

  const name = `per-binary-${pod.id}`;
  const file = join(dir, 'policy.yaml');
  writeFileSync(file, pod.perBinaryPolicy(name));
  const added = spawnSync(process.execPath, [CLI, 'runtime', 'policy', 'add', file, ...server], { encoding: 'utf8' });
  assert.equal(added.status, 0, added.stderr);

  const events = spawn(process.execPath, [CLI, 'runtime', 'events', '-o', 'json', '--process', '/client$', '--timeout', '30s', ...server], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.after(() => void (events.exitCode === null && events.kill('SIGKILL')));
  let out = '';
  events.stdout!.on('data', (chunk) => (out += chunk));
  // The client subscribes on its own time: the application connects until its exec shows.
  await until('the event stream', () => {
    assert.match(pod.connect(pod.appBinary).stdout, /connected/, 'the application connects');
    return out.includes(`"binary":"${pod.appBinary}"`);
  });
  const refused = pod.connect(pod.otherBinary);
  assert.match(refused.stderr, /Operation not permitted/, 'the other binary is refused');
  await until('the refusal as an event', () => out.includes('KPROBE_ACTION_OVERRIDE')).catch((error: Error) => {
    throw new Error(`${error.message}; events:\n${out}`);
  });
  const event = JSON.parse(out.split('\n').find((l) => l.includes('KPROBE_ACTION_OVERRIDE'))!) as { process_kprobe: { process: { binary: string }; policy_name: string; function_name: string; args: unknown[] } };
  assert.equal(event.process_kprobe.process.binary, pod.otherBinary);
  assert.equal(event.process_kprobe.policy_name, name);
  assert.equal(event.process_kprobe.function_name, '__x64_sys_connect');
  assert.deepEqual(event.process_kprobe.args, [{ sock_arg: { family: 'AF_INET', daddr: pod.server, dport: 8080 } }]);

  const list = spawnSync(process.execPath, [CLI, 'runtime', 'policy', 'list', ...server], { encoding: 'utf8' });
  assert.match(list.stdout, new RegExp(`${name} sensors: cgroup/connect`), list.stdout);

  // Killed, not stopped: nothing is pinned, so the hooks go with the agent's file descriptors.
  const exited = once(agent, 'exit');
  agent.kill('SIGKILL');
  await exited;
  await until('the hooks off the cgroup', () => pod.cgroupPrograms().length === 0, 5000);
  assert.match(pod.connect(pod.otherBinary).stdout, /connected/, 'without the agent nothing refuses the other binary');

  // Restarted with the policy in its directory: enforced again from the start.
  const policyDir = join(dir, 'policies');
  mkdirSync(policyDir);
  writeFileSync(join(policyDir, 'per-binary.yaml'), pod.perBinaryPolicy(name));
  await startAgent(t, pod, dir, grpcPort, policyDir);
  assert.equal(pod.cgroupPrograms().length, 4, 'connect4/6 and sendmsg4/6 attached once');
  assert.match(pod.connect(pod.otherBinary).stderr, /Operation not permitted/, 'refused again after the restart');
  assert.match(pod.connect(pod.appBinary).stdout, /connected/);

  // Deleted: off the cgroup at once.
  const deleted = spawnSync(process.execPath, [CLI, 'runtime', 'policy', 'delete', name, ...server], { encoding: 'utf8' });
  assert.equal(deleted.status, 0, deleted.stderr);
  assert.deepEqual(pod.cgroupPrograms(), []);
  assert.match(pod.connect(pod.otherBinary).stdout, /connected/);
});

test('--runtime-only refuses a destination by identity or service, naming the field and why', async (t) => {
  const { pod, dir, grpcPort } = await runtimeOnlySetup(t);
  await startAgent(t, pod, dir, grpcPort);
  const file = join(dir, 'policy.yaml');
  writeFileSync(file, destinationPolicy(`by-identity-${pod.id}`, pod.appBinary, 'DIdentity', ['k8s:app=db'], -1));
  const added = spawnSync(process.execPath, [CLI, 'runtime', 'policy', 'add', file, '--server-address', `127.0.0.1:${grpcPort}`], { encoding: 'utf8' });
  assert.notEqual(added.status, 0);
  assert.match(added.stderr, /spec\.kprobes\[0\]\.selectors\[0\]\.matchArgs\[0\]\.operator: "DIdentity": a destination by identity needs .*--runtime-only/, added.stderr);
  assert.deepEqual(pod.cgroupPrograms(), [], 'nothing attached');
});

const CGROUP2 = '/sys/fs/cgroup/unified';

/** A cgroup of the test's and one below it, removed at the end (the child first). */
function nestedCgroups(t: TestContext): { parent: string; child: string } {
  const parent = join(CGROUP2, uniqueName('ciliate-rtdest'));
  const child = join(parent, 'enforce');
  mkdirSync(child, { recursive: true });
  t.after(() => {
    for (const dir of [child, parent]) {
      // A cgroup stays populated for a moment after its last process exits.
      for (let i = 0; i < 100; i++) {
        try {
          for (const pid of readFileSync(join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean)) writeFileSync(join(CGROUP2, 'cgroup.procs'), pid);
          rmdirSync(dir);
          break;
        } catch (error) {
          if ((error as NodeJS.ErrnoException).code === 'ENOENT') break;
          Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
        }
      }
    }
  });
  return { parent, child };
}

/** Two copies of bash at different paths: the client pod's application and another of its binaries. */
function clientBinaries(t: TestContext): { app: string; other: string } {
  const dir = mkdtempSync(join(tmpdir(), 'ciliate-rtdest-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const out = { app: join(dir, 'app', 'client'), other: join(dir, 'tools', 'client') };
  for (const binary of Object.values(out)) {
    mkdirSync(join(binary, '..'), { recursive: true });
    copyFileSync('/bin/bash', binary);
    chmodSync(binary, 0o755);
  }
  return out;
}

/** `binary` in `cgroup` and the pod's network namespace opens a TCP connection; `connected` or bash's error. */
function connectFrom(binary: string, cgroup: string, netns: string, address: string, port: number): string {
  const r = spawnSync('/bin/sh', ['-c', `echo $$ > ${cgroup}/cgroup.procs && exec nsenter --net=/run/netns/${netns} -- "$@"`, 'sh', binary, '-c', `exec 3<>/dev/tcp/${address}/${port} && echo connected`], { encoding: 'utf8', timeout: 20_000 });
  return r.stdout.includes('connected') ? 'connected' : /Operation not permitted/.test(r.stderr) ? 'EPERM' : /Connection refused/.test(r.stderr) ? 'ECONNREFUSED' : `failed: ${r.stderr.trim()}`;
}

function destinationPolicy(name: string, allowed: string, operator: string, values: string[], argError: number): string {
  return `apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: ${name}}
spec:
  kprobes:
  - call: sys_connect
    syscall: true
    args: [{index: 0, type: fd}, {index: 1, type: sockaddr}]
    selectors:
    - matchBinaries: [{operator: NotIn, values: [${allowed}]}]
      matchArgs: [{index: 1, operator: ${operator}, values: ${JSON.stringify(values)}}]
      matchActions: [{action: Override, argError: ${argError}}]
`;
}

/** The full agent with the runtime on, enforcing on `enforce`, the socket LB on `lb`. */
async function fullAgent(t: TestContext, lb: string, enforce: string): Promise<{ node: TestNode; kprobes: TetragonProcessKprobe[] }> {
  const node = await TestNode.start(t, { extraArgs: ['--runtime-enabled', '--runtime-server-address', '', '--socket-lb-cgroup', lb, '--runtime-enforce-cgroup', enforce] });
  const client = connectTetragon(`unix:${join(node.dir, 'tetragon.sock')}`);
  t.after(() => client.close());
  const stream = client.getEvents({ allow_list: [{ event_set: ['PROCESS_KPROBE'] }] });
  t.after(() => stream.cancel());
  await stream.ready;
  const kprobes: TetragonProcessKprobe[] = [];
  void (async () => {
    try {
      for await (const event of stream as AsyncIterable<TetragonEvent>) if ('process_kprobe' in event) kprobes.push(event.process_kprobe);
    } catch {
      // cancelled at the end
    }
  })();
  return { node, kprobes };
}

async function addPolicy(node: TestNode, yaml: string): Promise<void> {
  await node.client.call('POST', '/v1/runtime/policies', { yaml });
}

async function addService(node: TestNode, ...args: string[]): Promise<string> {
  const r = await cli(node, 'service', 'add', ...args, '-o', 'json');
  assert.equal(r.code, 0, r.stderr);
  return (JSON.parse(r.stdout) as { clusterIP: string }).clusterIP;
}

test('in the full agent, one binary of a pod reaches the app=db pods, another is refused them but reaches app=web; a new db pod is covered without a reload; a service by its ClusterIP or its name', async (t) => {
  // The hooks on a cgroup below the socket LB's: they run first and see the ClusterIP untranslated.
  const { parent, child } = nestedCgroups(t);
  const { node, kprobes } = await fullAgent(t, parent, child);
  const bin = clientBinaries(t);
  const db1 = await node.addPod(t, 'db-1', { app: 'db' });
  const web = await node.addPod(t, 'web', { app: 'web' });
  const client = await node.addPod(t, 'client', { app: 'client' });
  await echoServer(t, db1.netns, 8080);
  await echoServer(t, web.netns, 8080);
  const connect = (binary: string, address: string, port = 8080) => connectFrom(binary, child, client.netns, address, port);
  assert.equal(connect(bin.other, db1.endpoint.ipv4), 'connected', 'before the policy every binary reaches db');

  const name = uniqueName('db-only-from-app');
  await addPolicy(node, destinationPolicy(name, bin.app, 'DIdentity', ['k8s:app=db,k8s:io.kubernetes.pod.namespace=default'], -1));
  assert.equal(connect(bin.app, db1.endpoint.ipv4), 'connected', 'the application reaches db');
  assert.equal(connect(bin.other, db1.endpoint.ipv4), 'EPERM', 'the other binary is refused db');
  assert.equal(connect(bin.other, web.endpoint.ipv4), 'connected', 'the other binary still reaches web');
  await until('the refusal as an event', () => kprobes.some((k) => k.policy_name === name));
  const event = kprobes.find((k) => k.policy_name === name)!;
  assert.equal(event.process.binary, bin.other, 'the event names the refused binary');
  assert.equal(event.action, 'KPROBE_ACTION_OVERRIDE');
  const identities = (await node.client.get<{ id: number; labels: string[] }[]>('/v1/identities')).filter((i) => i.labels.includes('k8s:app=db'));
  assert.deepEqual(event.args, [{ sock_arg: { family: 'AF_INET', daddr: db1.endpoint.ipv4, dport: 8080 } }, { uint_arg: identities[0].id, label: 'destination_identity' }]);

  // A db pod that comes later is in the rule's set as its identity and address come: no reload.
  const db2 = await node.addPod(t, 'db-2', { app: 'db', tier: 'replica' });
  await echoServer(t, db2.netns, 8080);
  await until('the new db pod refused to the other binary', () => connect(bin.other, db2.endpoint.ipv4) === 'EPERM');
  assert.equal(connect(bin.app, db2.endpoint.ipv4), 'connected');

  // The db service's ClusterIP stands for its backends (db pods): refused to the other binary
  // before any translation; a web service stays open.
  const dbVip = await addService(node, 'db', '--selector', 'app=db', '--port', 'pg=80:8080/TCP');
  const webVip = await addService(node, 'web', '--selector', 'app=web', '--port', 'http=80:8080/TCP');
  await until('the db ClusterIP refused to the other binary', () => connect(bin.other, dbVip, 80) === 'EPERM');
  assert.equal(connect(bin.app, dbVip, 80), 'connected');
  assert.equal(connect(bin.other, webVip, 80), 'connected');
  // The hooks ran before the LB's connect4 (a cgroup's own programs run before its ancestors'):
  // what they judged was the ClusterIP, by its backends.
  await until('the refusal of the ClusterIP as an event', () => kprobes.some((k) => k.policy_name === name && JSON.stringify(k.args?.[0]).includes(`"daddr":"${dbVip}"`)));

  // By service name: the other binary may reach only the web service (NotDService), refused with
  // ECONNREFUSED anything else; a service that does not exist is refused at load (fail closed).
  await node.client.call('DELETE', `/v1/runtime/policies/${name}`);
  const missing = await node.client.call('POST', '/v1/runtime/policies', { yaml: destinationPolicy(`${name}-svc`, bin.app, 'NotDService', ['default/web', 'default/nope'], -111) }).then(
    () => undefined,
    (error: Error) => error.message,
  );
  assert.match(missing ?? 'loaded', /matchArgs\[0\]\.values\[1\]: no service default\/nope/);
  await addPolicy(node, destinationPolicy(`${name}-svc`, bin.app, 'NotDService', ['default/web'], -111));
  assert.equal(connect(bin.other, webVip, 80), 'connected', 'the web service, by its ClusterIP');
  assert.equal(connect(bin.other, web.endpoint.ipv4), 'connected', 'the web service\'s backend');
  assert.equal(connect(bin.other, dbVip, 80), 'ECONNREFUSED', 'another service is refused');
  assert.equal(connect(bin.other, db1.endpoint.ipv4), 'ECONNREFUSED', 'another pod is refused');
  assert.equal(connect(bin.app, dbVip, 80), 'connected', 'the application reaches every service');
});

test('with the hooks on the socket LB\'s own cgroup they run after its translation: the backend is judged, by identity and by service', async (t) => {
  const { parent } = nestedCgroups(t);
  const { node, kprobes } = await fullAgent(t, parent, parent);
  const bin = clientBinaries(t);
  const db = await node.addPod(t, 'db', { app: 'db' });
  const client = await node.addPod(t, 'client', { app: 'client' });
  await echoServer(t, db.netns, 8080);
  const dbVip = await addService(node, 'db', '--selector', 'app=db', '--port', 'pg=80:8080/TCP');
  const connect = (binary: string, address: string, port = 8080) => connectFrom(binary, parent, client.netns, address, port);
  await until('the service through the socket LB', () => connect(bin.other, dbVip, 80) === 'connected');

  const name = uniqueName('db-only-from-app');
  await addPolicy(node, destinationPolicy(name, bin.app, 'DIdentity', ['app=db'], -1));
  assert.equal(connect(bin.other, dbVip, 80), 'EPERM');
  assert.equal(connect(bin.app, dbVip, 80), 'connected');
  await until('the refusal as an event', () => kprobes.some((k) => k.policy_name === name));
  const event = kprobes.find((k) => k.policy_name === name)!;
  // The LB's connect4 ran first (attached first, on the same cgroup): the hook saw the backend.
  assert.deepEqual(event.args?.[0], { sock_arg: { family: 'AF_INET', daddr: db.endpoint.ipv4, dport: 8080 } });
  await node.client.call('DELETE', `/v1/runtime/policies/${name}`);

  await addPolicy(node, destinationPolicy(`${name}-svc`, bin.app, 'DService', ['default/db'], -111));
  assert.equal(connect(bin.other, dbVip, 80), 'ECONNREFUSED');
  assert.equal(connect(bin.app, dbVip, 80), 'connected');
});
