/**
 * Per-binary network policy as a user runs it: `ciliate agent --runtime-only` enforcing on a
 * cgroup of the test, a TracingPolicy loaded with `ciliate runtime policy add`, the verdict in
 * `ciliate runtime events -o json`, and an agent killed with SIGKILL leaving no program on the
 * cgroup (a restart starts clean and loads the policy again from --runtime-tracing-policy-dir).
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TestPod } from '../src/runtime/socket-testutils.ts';
import { ROOT, freePort, killChild, until } from './support/cluster.ts';

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

test('one binary of a pod is refused a destination another reaches, through the agent and its CLI; a killed agent leaves no program behind', async (t) => {
  const pod = new TestPod();
  t.after(() => pod.close());
  await pod.open();
  const dir = mkdtempSync(join(tmpdir(), 'ciliate-rtnet-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const grpcPort = await freePort();
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
