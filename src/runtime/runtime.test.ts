/**
 * The runtime sensor on the real kernel, read through Tetragon's gRPC API as a client would:
 * processes this test starts (plain, and in a network namespace standing for a pod) show their
 * exec and exit events with binary, arguments, parent linkage, uid, status and signal.
 */
import { after, before, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import { statSync } from 'node:fs';
import { compactLine, connectTetragon, processOf, RuntimeObserver, TetragonServer, type TetragonClient, type TetragonEvent } from './index.ts';

/** A unique argument sleep accepts (it sums its intervals): 0.<digits>. */
function numericMarker(): string {
  return `0.${randomBytes(4).readUInt32LE(0)}`;
}

const escapeRegex = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

let observer: RuntimeObserver;
let server: TetragonServer;
let client: TetragonClient;
let earlyProcess: ReturnType<typeof spawn>;
const pods = new Map<number, { namespace: string; name: string; pod_labels: Record<string, string> }>();

before(async () => {
  // Running before the sensor starts: it can only be known from /proc.
  earlyProcess = spawn('/bin/sleep', ['300', numericMarker()], { stdio: 'ignore' });
  await once(earlyProcess, 'spawn');
  observer = new RuntimeObserver({ nodeName: 'test-node', processCredentials: true, processNamespaces: true, resolvePod: ({ netns }) => pods.get(netns) });
  observer.start();
  server = new TetragonServer({ observer, version: 'test' });
  const port = await server.listenTcp('127.0.0.1:0');
  client = connectTetragon(`127.0.0.1:${port}`);
});

after(() => {
  client?.close();
  server?.close();
  observer?.stop();
  if (earlyProcess?.exitCode === null) earlyProcess.kill('SIGKILL');
});

/** Streams events whose arguments carry `marker` until `done` says it has what it wants. */
async function eventsFor(t: TestContext, marker: string, trigger: () => void | Promise<void>, done: (events: TetragonEvent[]) => boolean): Promise<TetragonEvent[]> {
  const stream = client.getEvents({ allow_list: [{ arguments_regex: [escapeRegex(marker)] }] });
  t.after(() => stream.cancel());
  await stream.ready;
  const events: TetragonEvent[] = [];
  const timeout = setTimeout(() => stream.cancel(), 10_000);
  try {
    await trigger();
    for await (const event of stream) {
      events.push(event);
      if (done(events)) break;
    }
  } finally {
    clearTimeout(timeout);
    stream.cancel();
  }
  return events;
}

const execs = (events: TetragonEvent[]) => events.flatMap((e) => ('process_exec' in e ? [e.process_exec] : []));
const exits = (events: TetragonEvent[]) => events.flatMap((e) => ('process_exit' in e ? [e.process_exit] : []));

test('a process shows its exec (binary, arguments, parent, uid) and its exit status through the gRPC API', async (t) => {
  const marker = `m-${randomBytes(4).toString('hex')}`;
  let childPid = 0;
  const events = await eventsFor(
    t,
    marker,
    async () => {
      const child = spawn('/bin/sh', ['-c', 'exit 3', marker], { stdio: 'ignore' });
      childPid = child.pid!;
      await once(child, 'exit');
    },
    (got) => exits(got).length >= 1,
  );
  const [exec] = execs(events);
  assert.ok(exec, `an exec event arrived: ${JSON.stringify(events)}`);
  assert.equal(exec.process.pid, childPid);
  assert.equal(exec.process.binary, '/bin/sh');
  assert.equal(exec.process.arguments, `-c "exit 3" ${marker}`);
  assert.equal(exec.process.uid, process.geteuid!());
  assert.equal(exec.process.cwd, process.cwd());
  assert.match(exec.process.flags, /\bexecve\b/);
  assert.equal(Buffer.from(exec.process.exec_id, 'base64').toString().replace(/:\d+:/, ':K:'), `test-node:K:${childPid}`);
  // The parent is this test process, which the sensor knew from /proc.
  assert.ok(exec.parent, 'the parent is known');
  assert.equal(exec.parent.pid, process.pid);
  assert.equal(exec.process.parent_exec_id, exec.parent.exec_id);
  assert.equal(exec.parent.binary, process.execPath);
  assert.ok(exec.process.ns?.net?.is_host, 'a host process is in the host network namespace');
  const [exit] = exits(events);
  assert.equal(exit.process.exec_id, exec.process.exec_id);
  assert.equal(exit.status, 3);
  assert.equal(exit.signal, undefined);
  // tetra's compact lines; root holds CAP_SYS_ADMIN, which tetra flags at column 120.
  const execLine = compactLine(events.find((e) => 'process_exec' in e)!);
  assert.ok(execLine.startsWith(`🚀 process test-node /bin/sh -c "exit 3" ${marker}`), execLine);
  assert.equal(execLine.endsWith('🛑 CAP_SYS_ADMIN'), process.geteuid!() === 0, execLine);
  const exitLine = compactLine(events.find((e) => 'process_exit' in e)!);
  assert.ok(exitLine.startsWith(`💥 exit    test-node /bin/sh -c "exit 3" ${marker} 3`), exitLine);
});

test('a process killed by a signal exits with the signal named', async (t) => {
  const marker = numericMarker();
  const events = await eventsFor(
    t,
    marker,
    async () => {
      const child = spawn('/bin/sleep', ['30', marker], { stdio: 'ignore' });
      t.after(() => void (child.exitCode === null && child.kill('SIGKILL')));
      await once(child, 'spawn');
      // The exec is in before the kill: the event stream has it first.
      await new Promise((resolve) => setTimeout(resolve, 100));
      const exited = once(child, 'exit');
      child.kill('SIGKILL');
      await exited;
    },
    (got) => exits(got).length >= 1,
  );
  const [exit] = exits(events);
  assert.equal(exit.signal, 'SIGKILL');
  assert.equal(exit.status, undefined);
  assert.equal(exit.process.binary, '/bin/sleep');
  assert.equal(execs(events)[0]?.process.exec_id, exit.process.exec_id);
});

test("a process in a pod's network namespace carries the pod, and namespace filters select it", async (t) => {
  const netns = `rt-${randomBytes(3).toString('hex')}`;
  assert.equal(spawnSync('ip', ['netns', 'add', netns]).status, 0);
  t.after(() => void spawnSync('ip', ['netns', 'del', netns]));
  const inum = statSync(`/run/netns/${netns}`).ino;
  pods.set(inum, { namespace: 'default', name: 'xwing', pod_labels: { app: 'xwing' } });
  t.after(() => pods.delete(inum));
  const marker = `m-${randomBytes(4).toString('hex')}`;
  // Only events of pods in `default`: the host's nsenter (same marker) is filtered out on the server.
  const stream = client.getEvents({ allow_list: [{ namespace: ['default'], arguments_regex: [marker] }] });
  t.after(() => stream.cancel());
  await stream.ready;
  const child = spawn('nsenter', [`--net=/run/netns/${netns}`, '/bin/sh', '-c', 'exit 0', marker], { stdio: 'ignore' });
  await once(child, 'exit');
  const events: TetragonEvent[] = [];
  const timeout = setTimeout(() => stream.cancel(), 10_000);
  for await (const event of stream) {
    events.push(event);
    if (exits(events).length >= 1) break;
  }
  clearTimeout(timeout);
  const [exec] = execs(events);
  assert.ok(exec, 'the exec in the pod arrived');
  assert.equal(exec.process.binary, '/bin/sh');
  assert.deepEqual(exec.process.pod && { namespace: exec.process.pod.namespace, name: exec.process.pod.name, labels: exec.process.pod.pod_labels }, { namespace: 'default', name: 'xwing', labels: { app: 'xwing' } });
  assert.equal(exec.process.ns?.net?.inum, inum);
  assert.equal(exec.process.ns?.net?.is_host, undefined);
  // nsenter entered the namespace and exec'd the shell in its own process: the parent is ours.
  assert.equal(exec.parent?.pid, process.pid);
  assert.ok(events.every((e) => processOf(e).pod?.namespace === 'default'));
  assert.ok(compactLine(events[0]).startsWith(`🚀 process default/xwing /bin/sh -c "exit 0" ${marker}`), compactLine(events[0]));
});

test('arguments past the 4096-byte limit are cut and flagged truncArgs', async (t) => {
  const marker = `m-${randomBytes(4).toString('hex')}`;
  const long = Array.from({ length: 100 }, (_, i) => `arg${i}-${'x'.repeat(60)}`);
  const events = await eventsFor(
    t,
    marker,
    async () => {
      const child = spawn('/bin/true', [marker, ...long], { stdio: 'ignore' });
      await once(child, 'exit');
    },
    (got) => exits(got).length >= 1,
  );
  const [exec] = execs(events);
  assert.ok(exec);
  assert.match(exec.process.flags, /\btruncArgs\b/);
  const args = exec.process.arguments ?? '';
  assert.ok(args.startsWith(`${marker} arg0-`), args.slice(0, 40));
  // argv[0] ("/bin/true") and the separators count towards the 4096 bytes.
  assert.ok(args.length < 4096 && args.length > 4000, `kept ${args.length} characters`);
  const short = await eventsFor(
    t,
    `${marker}-short`,
    async () => void (await once(spawn('/bin/true', [`${marker}-short`], { stdio: 'ignore' }), 'exit')),
    (got) => exits(got).length >= 1,
  );
  assert.doesNotMatch(execs(short)[0].process.flags, /truncArgs/, JSON.stringify(short).slice(0, 600));
});

test('a process running before the sensor started is known from /proc, and its exit is reported', async (t) => {
  const pid = earlyProcess.pid!;
  const known = observer.cache.byPid(pid);
  assert.ok(known, 'read from /proc at start');
  assert.ok(known.flags.includes('procFS'));
  assert.equal(known.binary, '/usr/bin/sleep');
  assert.equal(known.parentExecId, observer.cache.byPid(process.pid)?.execId);
  const marker = String(earlyProcess.spawnargs.at(-1));
  const events = await eventsFor(
    t,
    marker,
    async () => {
      const exited = once(earlyProcess, 'exit');
      earlyProcess.kill('SIGTERM');
      await exited;
    },
    (got) => exits(got).length >= 1,
  );
  const [exit] = exits(events);
  assert.equal(exit.process.pid, pid);
  assert.equal(exit.process.exec_id, known.execId);
  assert.match(exit.process.flags, /procFS/);
  assert.equal(exit.signal, 'SIGTERM');
});

test('the process cache stays within its bound through an exec storm five times its size, and collection empties it of the storm', async (t) => {
  // Its own sensor and cache, bounded at 1024 entries with a minute's grace: the storm's exited
  // processes must be dropped for the bound, not for their age.
  const small = new RuntimeObserver({ nodeName: 'storm', processCacheSize: 1024, processCacheGraceMs: 60_000 });
  small.start();
  t.after(() => small.stop());
  const observer = small;
  const before = observer.cache.stats();
  const marker = `storm-${randomBytes(4).toString('hex')}`;
  const storm = 5000;
  const stormIds: string[] = [];
  let largest = 0;
  const unsubscribe = observer.subscribe((event) => {
    if ('process_exec' in event && event.process_exec.process.arguments === marker) stormIds.push(event.process_exec.process.exec_id);
    largest = Math.max(largest, observer.cache.size);
  });
  t.after(unsubscribe);
  const shell = spawn('/bin/sh', ['-c', `i=0; while [ $i -lt ${storm} ]; do /bin/true ${marker}; i=$((i+1)); done`], { stdio: 'ignore' });
  await once(shell, 'exit');
  const deadline = Date.now() + 20_000;
  // Every exit too: the last exec's exit follows it.
  while ((stormIds.length < storm || observer.cache.byExecId(stormIds.at(-1)!)?.exited !== true) && Date.now() < deadline) {
    observer.drain();
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  assert.equal(stormIds.length, storm, `every exec arrived (lost in the kernel: ${observer.stats().lost})`);
  assert.equal(new Set(stormIds).size, storm, 'each exec has its own exec_id');
  // Within the grace period the storm's exited processes wait to be collected, none referenced.
  const waiting = stormIds.filter((id) => observer.cache.byExecId(id) !== undefined).length;
  observer.cache.collect(true);
  assert.deepEqual(stormIds.filter((id) => observer.cache.byExecId(id) !== undefined), [], 'no entry of the storm is left after collection');
  const after = observer.cache.stats();
  assert.ok(largest <= after.capacity, `the cache peaked at ${largest} entries, bound ${after.capacity}`);
  assert.ok(largest > 900, `the storm filled the cache to its bound (peak ${largest})`);
  assert.ok(waiting > 0 && waiting < storm, `only the newest storm entries were still there (${waiting})`);
  assert.ok(after.collected - before.collected >= storm, 'every storm entry was collected, most of them for the bound');
  assert.equal(after.evictions, before.evictions, 'no live process was evicted');
});

test('a GetEvents request with a bad filter fails with INVALID_ARGUMENT naming the field', async () => {
  const stream = client.getEvents({ allow_list: [{ binary_regex: ['curl'] }, { binary_regex: ['('] }] });
  await assert.rejects(
    async () => {
      for await (const _ of stream) break;
    },
    (error: { code?: number; details?: string }) => error.code === 3 && /allow_list\[1\]\.binary_regex\[0\]/.test(error.details ?? ''),
  );
});

test('AddTracingPolicy refuses a hook this kernel lacks with INVALID_ARGUMENT, and loads one it has', async () => {
  const kprobe = 'apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: fm}\nspec:\n  kprobes:\n  - call: security_file_permission\n';
  await assert.rejects(client.addTracingPolicy(kprobe), (error: { code?: number; details?: string }) => error.code === 3 && /spec\.kprobes\[0\]\.call: "security_file_permission" needs kprobes \(or fentry\/LSM\); this kernel has none/.test(error.details ?? ''));
  const tracepoint = 'apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: tp}\nspec:\n  tracepoints:\n  - {subsystem: syscalls, event: sys_enter_openat}\n';
  await client.addTracingPolicy(tracepoint);
  assert.deepEqual((await client.listTracingPolicies()).map((p) => [p.name, p.sensors]), [['tp', ['syscalls/sys_enter_openat']]]);
  await client.deleteTracingPolicy('tp');
  assert.deepEqual(await client.listTracingPolicies(), []);
});
