/**
 * TracingPolicies on the real kernel: the selectors run in the kernel (what they reject never
 * reaches user space, counted by the hook's own counters), Sigkill kills from the hook, matchBinaries
 * tells binaries apart, and a deleted policy leaves no attachment and no selector behind.
 */
import { after, before, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, openSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect, createServer, type AddressInfo } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import { RuntimeError, RuntimeObserver, TetragonServer, connectTetragon, type TetragonEvent, type TetragonProcessKprobe } from './index.ts';
import { PolicyFixture, uniqueName } from './policy-fixture.ts';

let fixture: PolicyFixture;
let observer: RuntimeObserver;
let dir: string;
let events: TetragonEvent[];

before(() => {
  fixture = new PolicyFixture('ciliate-tp-');
  ({ observer, dir, events } = fixture);
});

after(() => fixture?.close());

const tempFile = (name: string) => fixture.tempFile(name);
const addPolicy = (t: TestContext, yaml: string) => fixture.addPolicy(t, yaml);
const kprobesOf = (policy: string) => fixture.kprobesOf(policy);

/** The kernel's links of this observer's generic policy program (bpftool: the kernel's own view). */
function policyLinks(): number {
  const programId = observer.policies.programId();
  const links = JSON.parse(spawnSync('bpftool', ['-j', 'link', 'show'], { encoding: 'utf8' }).stdout || '[]') as { prog_id?: number }[];
  return links.filter((l) => l.prog_id === programId).length;
}

const openatPolicy = (name: string, operator: string, value: string, extra = '') => `apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata:
  name: ${name}
spec:
  kprobes:
  - call: sys_openat
    syscall: true
    args:
    - index: 0
      type: int
    - index: 1
      type: string
    selectors:
    - matchArgs:
      - index: 1
        operator: ${operator}
        values: [${JSON.stringify(value)}]
${extra}`;

test('an openat policy reports only the matching opens: the rest is rejected in the kernel', async (t) => {
  const target = tempFile(uniqueName('shadow'));
  const other = tempFile(uniqueName('other'));
  const name = addPolicy(t, openatPolicy(uniqueName('openat-equal'), 'Equal', target));
  const opens = 7;
  const misses = 300;
  for (let i = 0; i < misses; i++) closeSync(openSync(other, 'r'));
  for (let i = 0; i < opens; i++) closeSync(openSync(target, 'r'));
  // A longer path that starts with the target's is not Equal to it.
  closeSync(openSync(tempFile(`${target.slice(dir.length + 1)}.bak`), 'r'));
  const stats = observer.policies.get(name)!.stats;
  // Every open on the machine ran the hook; only ours of the target were posted.
  assert.equal(stats.posted, BigInt(opens), `posted ${stats.posted}`);
  assert.equal(stats.matched, BigInt(opens));
  assert.ok(stats.runs >= BigInt(opens + misses + 1), `runs ${stats.runs}`);
  const seen = kprobesOf(name);
  assert.equal(seen.length, opens);
  for (const e of seen) {
    assert.equal(e.function_name, '__x64_sys_openat');
    assert.equal(e.action, 'KPROBE_ACTION_POST');
    assert.deepEqual(e.args, [{ int_arg: -100 }, { string_arg: target }]);
    assert.equal(e.process.pid, process.pid);
  }
});

test('Prefix and Postfix match in the kernel; a Sigkill policy kills the offending process at once, others run on', async (t) => {
  const secret = tempFile(uniqueName('secret'));
  const plain = tempFile(uniqueName('plain'));
  const name = addPolicy(t, openatPolicy(uniqueName('kill'), 'Prefix', join(dir, 'secret-'), '      matchActions:\n      - action: Sigkill\n'));
  const run = async (path: string) => {
    const child = spawn('/usr/bin/cat', [path], { stdio: 'ignore' });
    const started = process.hrtime.bigint();
    const [code, signal] = (await once(child, 'exit')) as [number | null, NodeJS.Signals | null];
    return { code, signal, ms: Number(process.hrtime.bigint() - started) / 1e6 };
  };
  const killed = await run(secret);
  const fine = await run(plain);
  assert.equal(killed.signal, 'SIGKILL');
  assert.deepEqual([fine.code, fine.signal], [0, null]);
  const stats = observer.policies.get(name)!.stats;
  assert.equal(stats.signalled, 1n);
  const seen = kprobesOf(name);
  assert.equal(seen.length, 1);
  assert.equal(seen[0].action, 'KPROBE_ACTION_SIGKILL');
  assert.equal(seen[0].process.binary, '/usr/bin/cat');

  const key = tempFile(`${uniqueName('key')}.pem`);
  const notKey = tempFile(`${uniqueName('key')}.pem.txt`);
  const postfix = addPolicy(t, openatPolicy(uniqueName('postfix'), 'Postfix', '.pem'));
  closeSync(openSync(key, 'r'));
  closeSync(openSync(notKey, 'r'));
  const pems = kprobesOf(postfix).filter((e) => e.process.pid === process.pid);
  assert.deepEqual(pems.map((e) => e.args?.[1]), [{ string_arg: key }]);
});

test('matchBinaries restricts a hook to one binary, from the binary each process exec\'d', async (t) => {
  const file = tempFile(uniqueName('watched'));
  const name = addPolicy(t, openatPolicy(uniqueName('cat-only'), 'Equal', file, '      matchBinaries:\n      - operator: In\n        values: ["/usr/bin/cat"]\n'));
  for (const binary of ['/usr/bin/cat', '/usr/bin/head']) {
    const child = spawn(binary, [file], { stdio: 'ignore' });
    await once(child, 'exit');
  }
  closeSync(openSync(file, 'r')); // node itself: not cat
  const seen = kprobesOf(name);
  assert.deepEqual(seen.map((e) => e.process.binary), ['/usr/bin/cat']);
  assert.equal(observer.policies.get(name)!.stats.posted, 1n);
});

test('bad policies are refused whole, naming field and reason, and nothing of them is loaded', () => {
  const before = policyLinks();
  const bad = `apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: ${uniqueName('bad')}}
spec:
  kprobes:
  - call: sys_openat
    syscall: true
    args: [{index: 1, type: string}]
    selectors:
    - matchArgs: [{index: 1, operator: Equal, values: ["/etc/shadow"]}]
  - call: security_file_permission
    args: [{index: 0, type: file}]
  - call: sys_write
    argz: []
`;
  assert.throws(() => observer.policies.add(bad), (error: unknown) => {
    assert.ok(RuntimeError.is(error, 'ERR_RUNTIME_POLICY'));
    const fields = (error.details as { field: string; reason: string }[]).map((p) => `${p.field}: ${p.reason}`);
    assert.ok(fields.includes('spec.kprobes[2].argz: unknown field'), fields.join('\n'));
    assert.ok(fields.some((f) => f.startsWith('spec.kprobes[1].call: "security_file_permission"')), fields.join('\n'));
    return true;
  });
  assert.deepEqual(observer.policies.list(), []);
  assert.equal(policyLinks(), before);
});

test('deleting a policy detaches its hooks and removes its selectors from the kernel', async (t) => {
  const target = tempFile(uniqueName('gone'));
  const base = policyLinks();
  const kernel = observer.policies.kernelState();
  const name = addPolicy(t, `apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: ${uniqueName('two-hooks')}}
spec:
  tracepoints:
  - subsystem: sched
    event: sched_process_exec
    args: [{index: 4, type: string}]
    selectors:
    - matchArgs: [{index: 4, operator: Prefix, values: ["/nonexistent/"]}]
  kprobes:
  - call: sys_openat
    args: [{index: 1, type: string}]
    selectors:
    - matchArgs: [{index: 1, operator: Equal, values: [${JSON.stringify(target)}]}]
      matchBinaries: [{operator: NotPostfix, values: ["/sh"]}]
`);
  // sched_process_exec, and openat's entry and exit (where an unreadable path is decided).
  assert.equal(policyLinks(), base + 3);
  assert.deepEqual(observer.policies.kernelState(), { ...kernel, strings: kernel.strings + 3, hooks: kernel.hooks + 2 });
  observer.policies.delete(name);
  assert.equal(policyLinks(), base);
  assert.deepEqual(observer.policies.kernelState(), kernel);
  closeSync(openSync(target, 'r'));
  assert.deepEqual(kprobesOf(name), []);
  assert.throws(() => observer.policies.delete(name), (e: unknown) => RuntimeError.is(e, 'ERR_RUNTIME_POLICY_NOT_FOUND'));
});

test("over Tetragon's gRPC API: a connect policy's DAddr/DPort selectors, its events on the stream, list and delete", async (t) => {
  const server = new TetragonServer({ observer, version: 'test' });
  t.after(() => server.close());
  const port = await server.listenTcp('127.0.0.1:0');
  const client = connectTetragon(`127.0.0.1:${port}`);
  t.after(() => client.close());
  const listener = createServer((socket) => socket.destroy());
  listener.listen(0, '127.0.0.1');
  await once(listener, 'listening');
  t.after(() => listener.close());
  const watched = (listener.address() as AddressInfo).port;

  await assert.rejects(client.addTracingPolicy('apiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nmetadata: {name: x}\nspec:\n  kprobes:\n  - call: sys_connect\n    args: [{index: 1, type: sockaddr}]\n    selectors:\n    - matchArgs: [{index: 1, operator: SPort, values: ["80"]}]\n'), (error: { code?: number; details?: string }) => {
    assert.equal(error.code, grpc.status.INVALID_ARGUMENT);
    assert.match(error.details ?? '', /spec\.kprobes\[0\]\.selectors\[0\]\.matchArgs\[0\]\.operator: "SPort": this call's sockaddr holds only the destination: use DAddr \/ DPort/);
    return true;
  });
  const name = uniqueName('connect');
  await client.addTracingPolicy(`apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: ${name}}
spec:
  kprobes:
  - call: __x64_sys_connect
    args: [{index: 0, type: fd}, {index: 1, type: sockaddr}]
    selectors:
    - matchArgs:
      - {index: 1, operator: DAddr, values: ["127.0.0.0/8"]}
      - {index: 1, operator: DPort, values: ["${watched}"]}
`);
  t.after(() => observer.policies.get(name) && observer.policies.delete(name));
  const stream = client.getEvents({ allow_list: [{ event_set: ['PROCESS_KPROBE'] }] });
  t.after(() => stream.cancel());
  await stream.ready;
  const connectTo = (p: number) =>
    new Promise<void>((resolve) => {
      const socket = connect(p, '127.0.0.1');
      socket.on('error', () => resolve());
      socket.on('close', () => resolve());
    });
  await connectTo(watched + 1 > 65535 ? watched - 1 : watched + 1); // refused, and not watched
  await connectTo(watched);
  const timer = setTimeout(() => stream.cancel(), 10_000);
  t.after(() => clearTimeout(timer));
  const drain = setInterval(() => observer.drain(), 20);
  t.after(() => clearInterval(drain));
  let event: TetragonProcessKprobe | undefined;
  for await (const e of stream) {
    if ('process_kprobe' in e && e.process_kprobe.policy_name === name) {
      event = e.process_kprobe;
      break;
    }
  }
  assert.ok(event, 'a process_kprobe event on the stream');
  assert.equal(event.function_name, '__x64_sys_connect');
  assert.deepEqual(event.args?.[1], { sock_arg: { family: 'AF_INET', daddr: '127.0.0.1', dport: watched } });
  assert.equal(event.process.pid, process.pid);
  assert.equal(observer.policies.get(name)!.stats.posted, 1n);
  assert.deepEqual((await client.listTracingPolicies()).map((p) => [p.name, p.sensors]), [[name, ['syscalls/sys_enter_connect']]]);
  await client.deleteTracingPolicy(name);
  assert.deepEqual(await client.listTracingPolicies(), []);
  await assert.rejects(client.deleteTracingPolicy(name), (error: { code?: number }) => error.code === grpc.status.NOT_FOUND);
});

test('a tracepoint hook reports process_tracepoint events with the fields it names', async (t) => {
  const marker = uniqueName('tp');
  const name = addPolicy(t, `apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: ${marker}}
spec:
  tracepoints:
  - subsystem: sched
    event: sched_process_exec
    args: [{index: 4, type: string}, {index: 5, type: int32}]
    selectors:
    - matchArgs: [{index: 4, operator: Equal, values: ["/usr/bin/true"]}]
      matchPIDs: [{operator: NotIn, values: [1]}]
`);
  const child = spawn('/usr/bin/true', [marker], { stdio: 'ignore' });
  await once(child, 'exit');
  observer.drain();
  const seen = events.flatMap((e) => ('process_tracepoint' in e && e.process_tracepoint.policy_name === name ? [e.process_tracepoint] : []));
  assert.equal(seen.length, 1);
  assert.deepEqual([seen[0].subsys, seen[0].event, seen[0].args], ['sched', 'sched_process_exec', [{ string_arg: '/usr/bin/true' }, { int_arg: child.pid }]]);
  assert.equal(seen[0].action, 'KPROBE_ACTION_POST');
});

test('only root changes policies over TCP: another local user is PERMISSION_DENIED, nothing loads', async (t) => {
  const server = new TetragonServer({ observer, version: 'test' });
  t.after(() => server.close());
  const port = await server.listenTcp('127.0.0.1:0');
  // A real client process as nobody (uid 65534), as any local user could run one.
  const script = `import { connectTetragon } from ${JSON.stringify(join(import.meta.dirname, 'grpc.ts'))};
const client = connectTetragon('127.0.0.1:${port}');
const yaml = 'apiVersion: cilium.io/v1alpha1\\nkind: TracingPolicy\\nmetadata: {name: evil}\\nspec:\\n  kprobes:\\n  - call: sys_openat\\n    args: [{index: 1, type: string}]\\n    selectors:\\n    - matchActions: [{action: Sigkill}]\\n';
for (const call of [() => client.addTracingPolicy(yaml), () => client.deleteTracingPolicy('anything')]) {
  try { await call(); console.log('ok'); } catch (error) { console.log(error.code + ' ' + error.details); }
}
client.close();`;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { uid: 65534, gid: 65534, stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
  await once(child, 'exit');
  const lines = out.trim().split('\n');
  assert.equal(lines.length, 2, out);
  for (const line of lines) assert.match(line, new RegExp(`^${grpc.status.PERMISSION_DENIED} changing tracing policies takes root: the client at .* is uid 65534$`));
  assert.equal(observer.policies.get('evil'), undefined);
  // Root, over the same TCP listener, may.
  const client = connectTetragon(`127.0.0.1:${port}`);
  t.after(() => client.close());
  await assert.rejects(client.deleteTracingPolicy('evil'), (error: { code?: number }) => error.code === grpc.status.NOT_FOUND);
});

test('a path the hook cannot read on entry (an untouched mapped page) is decided on exit: Sigkill still kills', async (t) => {
  // The path sits in a file mapped and never touched by the program: on entry to openat its page
  // is not in the process's page tables, and a tracepoint program cannot fault it in.
  const source = join(dir, 'evade.c');
  writeFileSync(source, `#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/mman.h>
int main(int argc, char **argv) {
  int pf = open(argv[1], O_RDONLY);
  if (pf < 0) return 3;
  char *p = mmap(0, 4096, PROT_READ, MAP_PRIVATE, pf, 0);
  if (p == MAP_FAILED) return 4;
  return openat(AT_FDCWD, p, O_RDONLY) < 0 ? 1 : 0;
}
`);
  const binary = join(dir, 'evade');
  const built = spawnSync('gcc', ['-O2', '-o', binary, source], { encoding: 'utf8' });
  assert.equal(built.status, 0, built.stderr);
  const secret = tempFile(uniqueName('mapped-secret'));
  const name = addPolicy(t, openatPolicy(uniqueName('kill-mapped'), 'Equal', secret, '      matchActions:\n      - action: Sigkill\n'));
  const pathFile = join(dir, uniqueName('path'));
  writeFileSync(pathFile, `${secret}\0`);
  const child = spawn(binary, [pathFile], { stdio: 'ignore' });
  const [code, signal] = (await once(child, 'exit')) as [number | null, NodeJS.Signals | null];
  assert.deepEqual([code, signal], [null, 'SIGKILL']);
  const seen = kprobesOf(name);
  assert.equal(seen.length, 1);
  assert.deepEqual(seen[0].args?.[1], { string_arg: secret });
  assert.equal(seen[0].action, 'KPROBE_ACTION_SIGKILL');
});

test('stopping the sensor (an agent restart) leaves no program, link or selector of a policy in the kernel', () => {
  const own = new RuntimeObserver({ nodeName: 'test-node' });
  own.start();
  let stopped = false;
  try {
    own.policies.add(openatPolicy(uniqueName('restart'), 'Prefix', '/nonexistent/'));
    const programId = own.policies.programId();
    const linksOf = () => (JSON.parse(spawnSync('bpftool', ['-j', 'link', 'show'], { encoding: 'utf8' }).stdout || '[]') as { prog_id?: number }[]).filter((l) => l.prog_id === programId).length;
    assert.equal(linksOf(), 2);
    own.stop();
    stopped = true;
    assert.equal(linksOf(), 0);
    assert.notEqual(spawnSync('bpftool', ['prog', 'show', 'id', String(programId)]).status, 0, 'the program is gone');
  } finally {
    if (!stopped) own.stop();
  }
});

test('matchPIDs followForks matches the processes a listed one forked (and theirs); isNamespacePID matches ids as a pid namespace numbers them', async (t) => {
  const forked = tempFile(uniqueName('forked'));
  // A shell that waits for a line, then opens the file from two children and a grandchild.
  const shell = spawn('/bin/sh', ['-c', `read go; cat ${forked}; (cat ${forked}); sh -c 'cat ${forked}; true'; true`], { stdio: ['pipe', 'ignore', 'ignore'] });
  const pidSelector = (flags: string) => `      matchPIDs:\n      - {operator: In, values: [${shell.pid}]${flags}}\n`;
  const followed = addPolicy(t, openatPolicy(uniqueName('follow'), 'Equal', forked, pidSelector(', followForks: true')));
  const notFollowed = addPolicy(t, openatPolicy(uniqueName('nofollow'), 'Equal', forked, pidSelector('')));
  shell.stdin!.end('go\n');
  const [code] = (await once(shell, 'exit')) as [number | null];
  assert.equal(code, 0);
  closeSync(openSync(forked, 'r')); // this process: no descendant of the shell
  assert.equal(observer.policies.get(followed)!.stats.posted, 3n, 'the three cats the shell forked, one of them through a second shell');
  assert.deepEqual(new Set(kprobesOf(followed).map((e) => e.process.binary)), new Set(['/usr/bin/cat']));
  assert.equal(observer.policies.get(notFollowed)!.stats.posted, 0n, 'without followForks only the shell itself would match, and it opens nothing');

  const inNamespace = tempFile(uniqueName('pidns'));
  const nsPolicy = (flags: string) => `      matchPIDs:\n      - {operator: In, values: [1]${flags}}\n`;
  const byNsPid = addPolicy(t, openatPolicy(uniqueName('nspid'), 'Equal', inNamespace, nsPolicy(', isNamespacePID: true')));
  const byGlobalPid = addPolicy(t, openatPolicy(uniqueName('globalpid'), 'Equal', inNamespace, nsPolicy('')));
  // cat becomes process 1 of a new pid namespace.
  const contained = spawn('unshare', ['--pid', '--fork', '/bin/sh', '-c', `exec cat ${inNamespace}`], { stdio: 'ignore' });
  const [nsCode] = (await once(contained, 'exit')) as [number | null];
  assert.equal(nsCode, 0);
  closeSync(openSync(inNamespace, 'r'));
  assert.equal(observer.policies.get(byNsPid)!.stats.posted, 1n, 'cat, process 1 of its namespace; not this process');
  assert.equal(kprobesOf(byNsPid)[0]?.process.binary, '/usr/bin/cat');
  assert.equal(observer.policies.get(byGlobalPid)!.stats.posted, 0n, 'globally cat is not process 1');
});
