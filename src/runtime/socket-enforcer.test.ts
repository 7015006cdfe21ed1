/**
 * TracingPolicies that override sys_connect, sys_bind and sys_socket, enforced at the cgroup
 * socket hooks of a cgroup this test makes, on the real kernel: per-binary network policy (one
 * copy of a client binary in a "pod" — a network namespace and a cgroup — is refused a
 * destination its other copy reaches), socket() and bind() refused, the verdict as Tetragon's
 * process_kprobe event naming the binary, bad policies refused by field with nothing loaded, and
 * nothing left in the kernel after delete or stop.
 */
import { after, before, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { Btf, checkLayout } from '../ebpf/index.ts';
import { RuntimeError, RuntimeObserver, type TetragonEvent, type TetragonProcessKprobe } from './index.ts';
import { SOCKET_OBJECT_PATH, SocketEnforcer, type SocketRecord } from './socket-enforcer.ts';
import { compileSocketPolicy, seEvent, seFilter, seList, sePodKey, seRule, seSelector, seStats, seValue } from './socket-policy.ts';
import { stringKeyLayout } from './policy.ts';
import { TestPod } from './socket-testutils.ts';
import { seAddrKey, seIdentityKey, type SocketDestinations } from './socket-destinations.ts';
import { BpfMap } from '../ebpf/index.ts';
import { pinDir } from '../ebpf/internal/testutils.ts';
import { ipcacheKey, remoteEndpointInfo } from '../datapath/index.ts';
import { until } from '../../test/support/cluster.ts';

const pod = new TestPod();
const { id, server, appBinary, otherBinary } = pod;
let observer: RuntimeObserver;
const events: TetragonEvent[] = [];

before(async () => {
  await pod.open();
  observer = new RuntimeObserver({ nodeName: 'test-node', enforceCgroup: pod.cgroup });
  observer.start();
  observer.subscribe((event) => events.push(event));
});

after(() => {
  observer?.stop();
  pod.close();
});

async function kprobeEvents(t: TestContext, policy: string, count: number): Promise<TetragonProcessKprobe[]> {
  const deadline = Date.now() + 5000;
  const matching = () => events.flatMap((e) => ('process_kprobe' in e && e.process_kprobe.policy_name === policy ? [e.process_kprobe] : []));
  while (matching().length < count && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
  t.diagnostic(`${matching().length} events of ${policy}`);
  return matching();
}

test('socket enforcement codecs match bpf/sock_enforce.h in size and field offsets', () => {
  const btf = Btf.fromElf(SOCKET_OBJECT_PATH);
  for (const codec of [seValue, seFilter, seSelector, seRule, seList, seStats, seEvent, sePodKey, seIdentityKey, seAddrKey, stringKeyLayout]) assert.deepEqual(checkLayout(codec, btf), [], codec.name);
});

test("one binary of a pod is refused a destination its other binary reaches, decided in the kernel and reported naming the binary", async (t) => {
  const name = `per-binary-${id}`;
  // Before the policy both copies connect.
  assert.match(pod.connect(otherBinary).stdout, /connected/, 'without a policy the other binary connects');
  observer.policies.add(pod.perBinaryPolicy(name));
  t.after(() => void (observer.policies.get(name) && observer.policies.delete(name)));

  const app = pod.connect(appBinary);
  assert.equal(app.status, 0, `the application connects: ${app.stderr}`);
  assert.match(app.stdout, /connected/);
  const other = pod.connect(otherBinary);
  assert.notEqual(other.status, 0, 'the other binary is refused');
  assert.match(other.stderr, /Operation not permitted/, 'refused with the policy\'s errno (EPERM)');
  // The rule is about that destination only: the other binary reaches another one.
  const local = pod.connect(otherBinary, '127.0.0.1');
  assert.match(local.stdout, /connected/, `another destination stays open to it: ${local.stderr}`);
  // The same binary in another pod (its own namespace holding the same address, nobody listening)
  // is out of the rule's scope (matchNamespaces Net): the kernel answers it, not the policy.
  const outside = pod.connect(otherBinary, server, pod.otherPodNetns());
  assert.match(outside.stderr, /Connection refused/, 'another pod\'s process is not judged by a rule scoped to this pod');

  const [event, ...more] = await kprobeEvents(t, name, 1);
  assert.ok(event, 'the refusal is reported');
  assert.equal(more.length, 0, `only the refused call is reported (the filter ran in the kernel): ${JSON.stringify(more)}`);
  assert.equal(event.process.binary, otherBinary, 'the event names the refused binary');
  assert.equal(event.action, 'KPROBE_ACTION_OVERRIDE');
  assert.equal(event.function_name, '__x64_sys_connect');
  assert.deepEqual(event.args, [{ sock_arg: { family: 'AF_INET', daddr: server, dport: 8080 } }]);
  const status = observer.policies.get(name) as { stats: { refused: bigint; matched: bigint } } | undefined;
  assert.equal(status?.stats.refused, 1n, 'the kernel counted one refusal');
  assert.equal(pod.cgroupPrograms().length, 4, 'connect4/6 and sendmsg4/6 on the enforced cgroup');

  // Deleted: nothing of it stays in the kernel, and the other binary connects again.
  observer.policies.delete(name);
  const runtime = observer.policies as unknown as { sockets: { loaded: boolean } };
  assert.equal(runtime.sockets.loaded, false, 'the enforcement object is closed with its last policy');
  assert.deepEqual(pod.cgroupPrograms(), [], 'no program stays on the cgroup');
  assert.match(pod.connect(otherBinary).stdout, /connected/, 'after delete the other binary connects');
});

test('a refused binary gets no way round the rule: not a dual-stack socket to the IPv4-mapped address, nor a datagram sent without connect', async (t) => {
  const name = `no-way-round-${id}`;
  observer.policies.add(pod.perBinaryPolicy(name));
  t.after(() => void (observer.policies.get(name) && observer.policies.delete(name)));
  // node is not the application binary: the rule refuses it the destination however it asks.
  const script = `
    const net = require('net'), dgram = require('dgram');
    const out = {};
    const c = net.connect({ host: '::ffff:${server}', port: 8080 });
    c.on('connect', () => { out.mapped = 'connected'; c.destroy(); udp(); });
    c.on('error', (e) => { out.mapped = e.code; udp(); });
    function udp() {
      const u = dgram.createSocket('udp4');
      u.send('x', 8080, '${server}', (e) => { out.datagram = e ? e.code : 'sent'; u.close(); console.log(JSON.stringify(out)); });
    }
  `;
  const r = pod.run(process.execPath, ['-e', script]);
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), { mapped: 'EPERM', datagram: 'EPERM' });
  const got = await kprobeEvents(t, name, 2);
  assert.deepEqual(got.map((e) => e.args?.[0]), [{ sock_arg: { family: 'AF_INET6', daddr: `::ffff:${server}`, dport: 8080 } }, { sock_arg: { family: 'AF_INET', daddr: server, dport: 8080 } }]);
  assert.ok(got.every((e) => e.process.binary === process.execPath));
});

test('deleting one of two socket policies clears its rule and binaries from the kernel and leaves the other enforcing', () => {
  const [a, b] = [`first-${id}`, `second-${id}`];
  observer.policies.add(pod.perBinaryPolicy(a));
  observer.policies.add(pod.perBinaryPolicy(b).replace(`values: [${appBinary}]`, `values: [${appBinary}, /usr/bin/curl]`));
  const sockets = (observer.policies as unknown as { sockets: SocketEnforcer }).sockets;
  try {
    assert.deepEqual({ rules: sockets.kernelState().rules, strings: sockets.kernelState().strings }, { rules: 2, strings: 3 });
    observer.policies.delete(b);
    assert.deepEqual({ rules: sockets.kernelState().rules, strings: sockets.kernelState().strings }, { rules: 1, strings: 1 }, 'read back from the maps: only the first policy\'s rule and binary');
    assert.equal(pod.cgroupPrograms().length, 4);
    assert.match(pod.connect(otherBinary).stderr, /Operation not permitted/, 'the first policy still refuses');
  } finally {
    for (const name of [a, b]) if (observer.policies.get(name)) observer.policies.delete(name);
  }
  assert.equal(sockets.loaded, false);
});

test('a socket policy in monitor mode refuses nothing and reports what it would have refused; set to enforce, it refuses', async (t) => {
  const name = `per-binary-monitor-${id}`;
  observer.policies.add(pod.perBinaryPolicy(name), { mode: 'monitor' });
  t.after(() => void (observer.policies.get(name) && observer.policies.delete(name)));
  assert.equal(observer.policies.get(name)?.mode, 'monitor');
  const monitored = pod.connect(otherBinary);
  assert.match(monitored.stdout, /connected/, `monitor mode: the other binary connects: ${monitored.stderr}`);
  const [event] = await kprobeEvents(t, name, 1);
  assert.equal(event?.process.binary, otherBinary, 'the call the rule would have refused is reported, naming the binary');
  assert.equal(event.action, 'KPROBE_ACTION_OVERRIDE');
  assert.equal((observer.policies.get(name) as { stats: { refused: bigint } }).stats.refused, 0n, 'the kernel refused nothing');

  observer.policies.configure(name, { mode: 'enforce' });
  assert.match(pod.connect(otherBinary).stderr, /Operation not permitted/, 'enforced: refused');
});

test('a process that execs another binary is judged as the new binary (no stale binary of its past)', async (t) => {
  const name = `exec-${id}`;
  observer.policies.add(pod.perBinaryPolicy(name));
  t.after(() => void (observer.policies.get(name) && observer.policies.delete(name)));
  // The application connects (its binary now known to the kernel), then the process execs the
  // other copy, which must be refused; and the other way round.
  const connect = `exec 3<>/dev/tcp/${server}/8080 && echo connected`;
  const appThenOther = pod.run(appBinary, ['-c', `${connect}; exec 3>&-; exec ${otherBinary} -c '${connect}'`]);
  assert.equal(appThenOther.stdout.trim(), 'connected', 'the application connected once, its exec did not');
  assert.match(appThenOther.stderr, /Operation not permitted/);
  const otherThenApp = pod.run(otherBinary, ['-c', `${connect}; exec ${appBinary} -c '${connect}'`]);
  assert.equal(otherThenApp.stdout.trim(), 'connected', 'the other binary was refused, the application it exec\'d connected');
  assert.match(otherThenApp.stderr, /Operation not permitted/);
  const got = await kprobeEvents(t, name, 2);
  assert.deepEqual(got.map((e) => e.process.binary), [otherBinary, otherBinary]);
});

test('a chroot does not pass another binary off as the allowed one', async (t) => {
  const name = `chroot-${id}`;
  observer.policies.add(pod.perBinaryPolicy(name));
  t.after(() => void (observer.policies.get(name) && observer.policies.delete(name)));
  // A jail holding a copy of the other binary at the allowed binary's path (with bash's libraries):
  // inside it, the copy's path from the process's root is the allowed one.
  const jail = join(pod.dir, 'jail');
  for (const lib of ['/lib/x86_64-linux-gnu/libtinfo.so.6', '/lib/x86_64-linux-gnu/libc.so.6', '/lib64/ld-linux-x86-64.so.2']) {
    mkdirSync(join(jail, dirname(lib)), { recursive: true });
    copyFileSync(lib, join(jail, lib));
  }
  mkdirSync(join(jail, dirname(appBinary)), { recursive: true });
  copyFileSync(otherBinary, join(jail, appBinary));
  chmodSync(join(jail, appBinary), 0o755);
  const jailed = pod.run('chroot', [jail, appBinary, '-c', `exec 3<>/dev/tcp/${server}/8080 && echo connected`]);
  assert.match(jailed.stderr, /Operation not permitted/, `the jailed copy is refused: ${jailed.stdout}${jailed.stderr}`);
  const [event] = await kprobeEvents(t, name, 1);
  assert.equal(event?.process.binary, join(jail, appBinary), 'the event names the binary by its path from the mount namespace\'s root');
});

test('sys_socket and sys_bind overrides refuse socket creation and a bind, with their errno', async (t) => {
  const name = `sockets-${id}`;
  const policy = `apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: ${name}}
spec:
  kprobes:
  - call: __x64_sys_socket
    args: [{index: 0, type: int, label: domain}, {index: 1, type: int}]
    selectors:
    - matchArgs: [{index: 0, operator: Equal, values: [AF_INET6]}, {index: 1, operator: Equal, values: ["2"]}]
      matchActions: [{action: Override, argError: -97}]
  - call: sys_bind
    args: [{index: 1, type: sockaddr}]
    selectors:
    - matchArgs: [{index: 1, operator: SPort, values: ["9999"]}]
      matchActions: [{action: Override, argError: -13}]
`;
  observer.policies.add(policy);
  t.after(() => void (observer.policies.get(name) && observer.policies.delete(name)));
  const script = `
    const dgram = require('dgram'), net = require('net');
    const out = {};
    const u = dgram.createSocket('udp6');
    u.on('error', (e) => { out.udp6 = e.code; first(); });
    u.bind(0, () => { out.udp6 = 'ok'; u.close(); first(); });
    function first() {
    const s = net.createServer();
    s.on('error', (e) => { out.bind9999 = e.code; next(); });
    s.listen(9999, '127.0.0.1', () => { out.bind9999 = 'ok'; s.close(); next(); });
    }
    function next() {
      const s2 = net.createServer();
      s2.on('error', (e) => { out.bind9998 = e.code; done(); });
      s2.listen(9998, '127.0.0.1', () => { out.bind9998 = 'ok'; s2.close(); done(); });
    }
    function done() { console.log(JSON.stringify(out)); process.exit(0); }
  `;
  const r = pod.run(process.execPath, ['-e', script]);
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout) as Record<string, string>;
  assert.deepEqual(out, { udp6: 'EAFNOSUPPORT', bind9999: 'EACCES', bind9998: 'ok' }, 'an IPv6 datagram socket and a bind to 9999 are refused; other binds are not');
  const got = await kprobeEvents(t, name, 2);
  const socketEvent = got.find((e) => e.function_name === '__x64_sys_socket');
  const bindEvent = got.find((e) => e.function_name === '__x64_sys_bind');
  assert.deepEqual(socketEvent?.args, [{ int_arg: 10, label: 'domain' }, { int_arg: 2 }]);
  assert.deepEqual(bindEvent?.args, [{ sock_arg: { family: 'AF_INET', saddr: '127.0.0.1', sport: 9999 } }]);
  assert.equal(bindEvent?.process.binary, process.execPath);
  assert.equal(got.length, 2, 'only the refused calls are reported');
});

test('matchPIDs at the socket hooks: followForks takes in what a listed process forked, isNamespacePID a pid namespace\'s own numbers', async (t) => {
  const name = `pids-${id}`;
  const bindRule = (port: number, pids: string) => `  - call: sys_bind
    args: [{index: 1, type: sockaddr}]
    selectors:
    - matchArgs: [{index: 1, operator: SPort, values: ["${port}"]}]
      matchPIDs: [${pids}]
      matchActions: [{action: Override, argError: -13}]
`;
  observer.policies.add(`apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: ${name}}
spec:
  kprobes:
${bindRule(9997, `{operator: In, values: [${process.pid}], followForks: true}`)}${bindRule(9996, `{operator: In, values: [${process.pid}]}`)}${bindRule(9995, '{operator: In, values: [1], isNamespacePID: true}')}`);
  t.after(() => void (observer.policies.get(name) && observer.policies.delete(name)));
  const bind = (port: number, wrap: string[] = []) => {
    const script = `require('net').createServer().on('error', (e) => { console.log(e.code); process.exit(0); }).listen(${port}, '127.0.0.1', function () { console.log('ok'); this.close(); })`;
    const r = wrap.length ? pod.run(wrap[0], [...wrap.slice(1), process.execPath, '-e', script]) : pod.run(process.execPath, ['-e', script]);
    assert.equal(r.status, 0, r.stderr);
    return r.stdout.trim();
  };
  assert.equal(bind(9997), 'EACCES', 'a descendant of this test process, followed');
  assert.equal(bind(9996), 'ok', 'without followForks a descendant is not the listed process');
  assert.equal(bind(9995, ['unshare', '--pid', '--fork']), 'EACCES', 'process 1 of its own pid namespace');
  assert.equal(bind(9995), 'ok', 'not process 1 anywhere');
});

test('a TracingPolicyNamespaced with a podSelector holds only its pods: the rule follows the pods as they come and go', async (t) => {
  const name = `scoped-${id}`;
  // The per-binary rule without its matchNamespaces: the scope says which pod.
  const yaml = pod
    .perBinaryPolicy(name)
    .replace('kind: TracingPolicy', 'kind: TracingPolicyNamespaced')
    .replace(`  name: ${name}\n`, `  name: ${name}\n  namespace: shop\n`)
    .replace('spec:\n', 'spec:\n  podSelector:\n    matchLabels: {app: web}\n')
    .replace(`      matchNamespaces:\n      - namespace: Net\n        operator: In\n        values: ["${pod.netnsInode}"]\n`, '');
  assert.doesNotMatch(yaml, /matchNamespaces/);
  observer.policies.add(yaml);
  t.after(() => {
    if (observer.policies.get(name)) observer.policies.delete(name);
    observer.setScopePods([]);
  });
  const podOf = (namespace: string, app: string) => ({ netns: pod.netnsInode, namespace, labels: { 'k8s:app': app } });
  const refused = () => pod.connect(otherBinary).status !== 0;
  assert.equal(refused(), false, 'no pod known yet: the rule holds nobody');
  observer.setScopePods([podOf('shop', 'web')]);
  assert.equal(refused(), true, 'the pod is selected: its other binary is refused');
  assert.match(pod.connect(appBinary).stdout, /connected/, 'its application still connects');
  const runtime = observer.policies as unknown as { sockets: { podsOf(name: string): number[] | undefined } };
  assert.deepEqual(runtime.sockets.podsOf(name), [pod.netnsInode]);
  observer.setScopePods([podOf('other', 'web')]);
  assert.equal(refused(), false, 'the same labels in another namespace are not this policy\'s');
  observer.setScopePods([podOf('shop', 'db')]);
  assert.equal(refused(), false, 'relabelled out of the selector: released');
  assert.deepEqual(runtime.sockets.podsOf(name), []);
});

test('a bad socket policy is refused naming each field, and nothing of it is loaded', () => {
  const bad = `apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: bad-${id}}
spec:
  kprobes:
  - call: sys_bind
    args: [{index: 1, type: sockaddr}]
    selectors:
    - matchArgs: [{index: 1, operator: DAddr, values: [10.0.0.0/8]}]
      matchBinaries: [{operator: In, values: [client]}]
      matchActions: [{action: Override, argError: 1}]
  - call: sys_openat
    selectors:
    - matchActions: [{action: Override, argError: -1}]
  - call: sys_socket
    args: [{index: 0, type: int}]
    selectors:
    - matchArgs: [{index: 0, operator: Equal, values: [AF_PACKET]}]
      matchActions: [{action: Override, argError: -1}]
  - call: sys_connect
    args: [{index: 1, type: sockaddr}]
    selectors:
    - matchArgs: [{index: 1, operator: DAddr, values: [10.0.0.1/8]}]
      matchActions: [{action: Sigkill}]
      matchCapabilities: [{type: Effective}]
`;
  let error: unknown;
  try {
    observer.policies.add(bad);
  } catch (e) {
    error = e;
  }
  assert.ok(RuntimeError.is(error, 'ERR_RUNTIME_POLICY'), String(error));
  const fields = Object.fromEntries((error.details as { field: string; reason: string }[]).map((p) => [p.field, p.reason]));
  assert.match(fields['spec.kprobes[0].selectors[0].matchArgs[0].operator'], /bind's sockaddr is the local address: use SAddr/);
  assert.match(fields['spec.kprobes[0].selectors[0].matchBinaries[0].values[0]'], /want an absolute path/);
  assert.match(fields['spec.kprobes[0].selectors[0].matchActions[0].argError'], /want a negative errno/);
  assert.match(fields['spec.kprobes[1].call'], /needs kprobe override/);
  assert.match(fields['spec.kprobes[2].selectors[0].matchArgs[0].values[0]'], /AF_INET or AF_INET6 \(the socket hook sees only IPv4 and IPv6 sockets\)/, 'a rule that could never fire is refused, not ignored');
  assert.match(fields['spec.kprobes[3].selectors[0].matchArgs[0].values[0]'], /without host bits/);
  assert.match(fields['spec.kprobes[3].selectors[0].matchActions[0].action'], /not at a socket hook/);
  assert.match(fields['spec.kprobes[3].selectors[0].matchCapabilities'], /not supported yet/);
  assert.equal(observer.policies.get(`bad-${id}`), undefined, 'not listed');
  assert.deepEqual(pod.cgroupPrograms(), [], 'nothing attached');
  // A policy without Override is not this compiler's: the tracepoint engine takes it.
  assert.equal(compileSocketPolicy(bad.replaceAll('Override', 'Post')), undefined);
});

test('by identity in the kernel: the ipcache names the destination, the rule\'s set follows identities and the ipcache as they change, a dual-stack socket meets the IPv4 rule', async (t) => {
  const ipcacheDir = pinDir(t);
  const identities = [
    { id: 300, labels: { 'k8s:app': 'db' } as Record<string, string> },
    { id: 302, labels: { 'k8s:app': 'web' } as Record<string, string> },
  ];
  const listeners = new Set<() => void>();
  const destinations: SocketDestinations = {
    ipcachePinDir: ipcacheDir,
    identities: () => identities,
    hasService: () => false,
    frontends: () => [],
    identityOf: () => 2,
    subscribe: (listener) => (listeners.add(listener), () => listeners.delete(listener)),
  };
  const records: SocketRecord[] = [];
  const enforcer = new SocketEnforcer({ cgroup: pod.cgroup, destinations, onRecord: (r) => records.push(r), onError: (error) => assert.fail(String(error)) });
  t.after(() => enforcer.close());
  const name = `web-only-${id}`;
  // Every binary but the application may reach web only.
  enforcer.add(compileSocketPolicy(`apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: ${name}}
spec:
  kprobes:
  - call: sys_connect
    args: [{index: 1, type: sockaddr}]
    selectors:
    - matchBinaries: [{operator: NotIn, values: [${appBinary}]}]
      matchArgs: [{index: 1, operator: NotDIdentity, values: ["k8s:app=web"]}]
      matchActions: [{action: Override, argError: -1}]
`, 0, { destinations: true })!);
  // The object made the pin (in the agent it is the datapath's, made first): the test fills it as the datapath's ipcache.
  const ipcache = BpfMap.openPinned(join(ipcacheDir, 'ciliate_ipcache'), ipcacheKey, remoteEndpointInfo);
  t.after(() => ipcache.close());
  const mapped = () => {
    const r = pod.run(process.execPath, ['-e', `const c = require('net').connect({ host: '::ffff:${server}', port: 8080 }); c.on('connect', () => { console.log('connected'); c.destroy(); }); c.on('error', (e) => console.log(e.code));`]);
    return r.stdout.trim();
  };
  const at = (identity: number) => ipcache.update({ prefixlen: 32, ip: server }, { sec_identity: identity, tunnel_endpoint: '0.0.0.0', flags: 0 });

  assert.match(pod.connect(otherBinary).stderr, /Operation not permitted/, 'unknown to the ipcache: world, not web');
  assert.match(pod.connect(appBinary).stdout, /connected/, 'the application is not judged');
  at(302);
  assert.match(pod.connect(otherBinary).stdout, /connected/, 'the ipcache says web');
  assert.equal(mapped(), 'connected');
  at(300);
  assert.match(pod.connect(otherBinary).stderr, /Operation not permitted/, 'the ipcache says db');
  assert.equal(mapped(), 'EPERM', 'a dual-stack socket to the IPv4-mapped address is judged by the same identity');
  await until('the refusal records', () => records.length >= 2, 5000);
  assert.deepEqual(records.slice(-2).map((r) => [r.dstIdentity, r.binary]), [[300, otherBinary], [300, process.execPath]], 'the identity the kernel found, and the binary');
  // The identity's labels change (as a new identity would come): the set follows without a reload.
  identities[0].labels = { 'k8s:app': 'web' };
  for (const listener of listeners) listener();
  await until('db relabelled web reachable', () => /connected/.test(pod.connect(otherBinary).stdout), 5000);
  enforcer.delete(name);
  assert.equal(enforcer.loaded, false, 'the last policy closed the object, its sets with it');
});

test('stopping the observer with a socket policy loaded leaves no program on the cgroup', () => {
  const other = new RuntimeObserver({ nodeName: 'test-node', enforceCgroup: pod.cgroup });
  other.start();
  try {
    other.policies.add(pod.perBinaryPolicy(`restart-${id}`));
    assert.equal(pod.cgroupPrograms().length, 4);
  } finally {
    other.stop();
  }
  assert.deepEqual(pod.cgroupPrograms(), [], 'the links went with the agent: a restart starts clean');
});
