/**
 * TracingPolicy selectors beyond matchArgs, on the real kernel: followChildren, matchNamespaces,
 * matchCapabilities, their Changes variants, Post's rateLimit, SAddr/SPort and IPv6 CIDRs, and
 * pod scoping. Each test counts what the hook posted (its in-kernel counters) and what reached
 * user space, and each would fail if the selector were ignored: the processes it must reject
 * make the same calls as those it must report.
 */
import { after, before, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, closeSync, copyFileSync, mkdirSync, openSync, statSync, writeFileSync } from 'node:fs';
import { testCgroup } from '../ebpf/internal/testutils.ts';
import { join } from 'node:path';
import { createServer, connect, type AddressInfo } from 'node:net';
import { RuntimeError, RuntimeObserver } from './index.ts';
import { PolicyFixture, uniqueName } from './policy-fixture.ts';

let fixture: PolicyFixture;
let observer: RuntimeObserver;
let dir: string;
let helper: string;

before(() => {
  fixture = new PolicyFixture('ciliate-sel-');
  ({ observer, dir } = fixture);
  // Opens its file, changes something about itself (or not), and opens it again.
  const source = join(dir, 'helper.c');
  writeFileSync(source, `#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
  close(open(argv[1], O_RDONLY));
  char c;
  if (!strcmp(argv[2], "wait-unshare-net") && read(0, &c, 1) < 0) return 4;
  if (!strncmp(argv[2], "wait-", 5)) argv[2] += 5;
  if (!strcmp(argv[2], "unshare-net") && unshare(CLONE_NEWNET)) return 2;
  if (!strcmp(argv[2], "setuid") && setuid(65534)) return 3;
  close(open(argv[1], O_RDONLY));
  return 0;
}
`);
  helper = join(dir, 'helper');
  const built = spawnSync('gcc', ['-O2', '-o', helper, source], { encoding: 'utf8' });
  assert.equal(built.status, 0, built.stderr);
});

after(() => fixture?.close());

const unique = uniqueName;
const tempFile = (name: string) => fixture.tempFile(name);
const addPolicy = (t: TestContext, yaml: string) => fixture.addPolicy(t, yaml);
const kprobesOf = (policy: string) => fixture.kprobesOf(policy);

async function run(command: string, args: string[], options: { uid?: number; gid?: number } = {}): Promise<{ code: number | null; signal: NodeJS.Signals | null; pid: number }> {
  const child = spawn(command, args, { stdio: 'ignore', ...options });
  const [code, signal] = (await once(child, 'exit')) as [number | null, NodeJS.Signals | null];
  return { code, signal, pid: child.pid ?? 0 };
}

/** An openat hook on `files` (Equal) with `selector` lines added to its one selector. */
const openatPolicy = (name: string, files: string | string[], selector: string, kind = 'TracingPolicy', extraSpec = '') => `apiVersion: cilium.io/v1alpha1
kind: ${kind}
metadata:
  name: ${name}${kind === 'TracingPolicyNamespaced' ? '\n  namespace: prod' : ''}
spec:${extraSpec}
  kprobes:
  - call: sys_openat
    args: [{index: 1, type: string}]
    selectors:
    - matchArgs: [{index: 1, operator: Equal, values: ${JSON.stringify([files].flat())}}]
${selector}`;

test('followChildren: the children and descendants of a matching binary match, other callers of the same binary do not', async (t) => {
  const file = tempFile(unique('followed'));
  // A shell of its own, so that no other process on the machine is it.
  const shell = join(dir, unique('launcher'));
  copyFileSync('/usr/bin/dash', shell);
  chmodSync(shell, 0o755);
  const name = addPolicy(t, openatPolicy(unique('follow'), file, `      matchBinaries: [{operator: In, values: [${JSON.stringify(shell)}], followChildren: true}]\n`));
  // A child (cat, forked), a grandchild (sh, then its cat), and an exec'd last command (head).
  const launched = await run(shell, ['-c', `/usr/bin/cat ${file} >/dev/null; /usr/bin/sh -c '/usr/bin/cat ${file} >/dev/null; true'; /usr/bin/head -c1 ${file} >/dev/null`]);
  assert.equal(launched.code, 0);
  // The same binaries, not under the launcher.
  await run('/usr/bin/cat', [file]);
  await run('/usr/bin/sh', ['-c', `/usr/bin/cat ${file} >/dev/null; true`]);
  closeSync(openSync(file, 'r'));
  const seen = kprobesOf(name);
  assert.deepEqual(seen.map((e) => e.process.binary).sort(), ['/usr/bin/cat', '/usr/bin/cat', '/usr/bin/head']);
  assert.equal(observer.policies.get(name)!.stats.posted, 3n, 'the rest was rejected in the kernel');
  assert.equal(observer.policies.kernelState().follow, 1);
  observer.policies.delete(name);
  assert.equal(observer.policies.kernelState().follow, 0, 'the followChildren mark is released with its policy');
});

test('matchNamespaces: Net NotIn host_ns reports only callers in another network namespace; In an inode number', async (t) => {
  const file = tempFile(unique('netns'));
  const name = addPolicy(t, openatPolicy(unique('not-host-net'), file, '      matchNamespaces: [{namespace: Net, operator: NotIn, values: [host_ns]}]\n'));
  await run('/usr/bin/cat', [file]);
  const inside = await run('/usr/bin/unshare', ['-n', '/usr/bin/cat', file]);
  assert.equal(inside.code, 0);
  closeSync(openSync(file, 'r'));
  const seen = kprobesOf(name);
  assert.deepEqual(seen.map((e) => e.process.pid), [inside.pid]);
  assert.equal(observer.policies.get(name)!.stats.posted, 1n);

  // A named namespace, by its inode number (as lsns prints it).
  const netns = unique('ciliate-sel');
  assert.equal(spawnSync('ip', ['netns', 'add', netns]).status, 0);
  t.after(() => spawnSync('ip', ['netns', 'del', netns]));
  const inode = statSync(`/run/netns/${netns}`).ino;
  const byInode = addPolicy(t, openatPolicy(unique('in-netns'), file, `      matchNamespaces: [{namespace: Net, operator: In, values: ["${inode}"]}, {namespace: Mnt, operator: In, values: [host_ns]}]\n`));
  const entered = await run('/usr/bin/nsenter', [`--net=/run/netns/${netns}`, '/usr/bin/cat', file]);
  await run('/usr/bin/unshare', ['-n', '/usr/bin/cat', file]);
  await run('/usr/bin/cat', [file]);
  assert.deepEqual(kprobesOf(byInode).map((e) => e.process.pid), [entered.pid]);
});

test('matchNamespaceChanges: a process that left a namespace it exec\'d in matches, from that call on', async (t) => {
  const file = tempFile(unique('nschange'));
  const name = addPolicy(t, openatPolicy(unique('ns-change'), file, '      matchNamespaceChanges: [{operator: In, values: [Net]}]\n'));
  // The helper opens the file, unshares its network namespace, and opens it again.
  const changed = await run(helper, [file, 'unshare-net']);
  assert.equal(changed.code, 0);
  // unshare(1) changes namespace before it execs cat: cat exec'd in its namespace, no change.
  await run('/usr/bin/unshare', ['-n', '/usr/bin/cat', file]);
  await run(helper, [file, 'nothing']);
  const seen = kprobesOf(name);
  assert.deepEqual(seen.map((e) => e.process.pid), [changed.pid]);
  assert.equal(observer.policies.get(name)!.stats.posted, 1n);
});

test('matchNamespaceChanges also sees a process that was running before the sensor started', async (t) => {
  const file = tempFile(unique('nschange-old'));
  const old = spawn(helper, [file, 'wait-unshare-net'], { stdio: ['pipe', 'ignore', 'ignore'] });
  const exited = once(old, 'exit');
  t.after(() => old.kill('SIGKILL'));
  // Its exec came before this observer: its baseline is what /proc shows at the sensor's start.
  const own = new RuntimeObserver({ nodeName: 'test-node' });
  own.start();
  t.after(() => own.stop());
  const name = own.policies.add(openatPolicy(unique('ns-change-old'), file, '      matchNamespaceChanges: [{operator: In, values: [Net]}]\n')).name;
  old.stdin!.end('x');
  const [code] = (await exited) as [number | null];
  assert.equal(code, 0);
  assert.equal(own.policies.get(name)!.stats.posted, 1n);
});

test('matchCapabilities: Effective NotIn CAP_SYS_ADMIN reports only the unprivileged caller; isNamespaceCapability only outside the host user namespace', async (t) => {
  const file = tempFile(unique('caps'));
  const name = addPolicy(t, openatPolicy(unique('no-admin'), file, '      matchCapabilities: [{type: Effective, operator: NotIn, values: [CAP_SYS_ADMIN]}]\n'));
  await run('/usr/bin/cat', [file]);
  const nobody = await run('/usr/bin/cat', [file], { uid: 65534, gid: 65534 });
  assert.equal(nobody.code, 0);
  assert.deepEqual(kprobesOf(name).map((e) => e.process.pid), [nobody.pid]);
  assert.equal(observer.policies.get(name)!.stats.posted, 1n);

  const nsCaps = addPolicy(t, openatPolicy(unique('ns-admin'), file, '      matchCapabilities: [{type: Effective, operator: In, isNamespaceCapability: true, values: [CAP_SYS_ADMIN]}]\n'));
  await run('/usr/bin/cat', [file]); // root on the host: CAP_SYS_ADMIN, but in the host's user namespace
  const userns = await run('/usr/bin/unshare', ['-U', '-r', '/usr/bin/cat', file]);
  assert.equal(userns.code, 0);
  assert.deepEqual(kprobesOf(nsCaps).map((e) => e.process.pid), [userns.pid]);
});

test('matchCapabilityChanges: a process that dropped capabilities since its exec matches, from that call on', async (t) => {
  const file = tempFile(unique('capchange'));
  const name = addPolicy(t, openatPolicy(unique('cap-change'), file, '      matchCapabilityChanges: [{type: Effective, operator: In, values: [CAP_SYS_ADMIN]}]\n'));
  const dropped = await run(helper, [file, 'setuid']);
  assert.equal(dropped.code, 0);
  await run(helper, [file, 'nothing']);
  await run('/usr/bin/cat', [file], { uid: 65534, gid: 65534 }); // without the capability since its exec: no change
  assert.deepEqual(kprobesOf(name).map((e) => e.process.pid), [dropped.pid]);
  assert.equal(observer.policies.get(name)!.stats.posted, 1n);
});

test('rateLimit: repeats of the same call within the limit stay in the kernel, per thread by default or globally', async (t) => {
  const file = tempFile(unique('rate'));
  const other = tempFile(unique('rate-other'));
  const name = addPolicy(t, openatPolicy(unique('rate'), [file, other], '      matchActions: [{action: Post, rateLimit: 1m}]\n'));
  for (let i = 0; i < 50; i++) closeSync(openSync(file, 'r'));
  for (let i = 0; i < 5; i++) closeSync(openSync(other, 'r'));
  await run('/usr/bin/cat', [file]); // another thread: its own limit
  const stats = observer.policies.get(name)!.stats;
  assert.equal(stats.matched, 56n);
  assert.equal(stats.posted, 3n);
  assert.equal(stats.ratelimited, 53n);
  assert.deepEqual(kprobesOf(name).map((e) => e.args?.[0]), [{ string_arg: file }, { string_arg: other }, { string_arg: file }]);
  const kept = observer.policies.kernelState().rate;
  assert.ok(kept >= 3, `rate entries ${kept}`);
  observer.policies.delete(name);
  assert.equal(observer.policies.kernelState().rate, kept - 3, "a deleted policy's rate memory goes with it");

  const global = addPolicy(t, openatPolicy(unique('rate-global'), file, '      matchActions: [{action: Post, rateLimit: "60", rateLimitScope: global}]\n'));
  for (let i = 0; i < 3; i++) await run('/usr/bin/cat', [file]);
  closeSync(openSync(file, 'r'));
  assert.equal(observer.policies.get(global)!.stats.posted, 1n);
  assert.equal(kprobesOf(global).length, 1);
});

/** A hook on `call`'s sockaddr with an address and a port filter: [operator, YAML values]. */
const sockPolicy = (call: string, address: [string, string], port: [string, string]) => `apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: ${unique(call)}}
spec:
  kprobes:
  - call: sys_${call}
    args: [{index: 0, type: fd}, {index: 1, type: sockaddr}]
    selectors:
    - matchArgs:
      - {index: 1, operator: ${address[0]}, values: [${address[1]}]}
      - {index: 1, operator: ${port[0]}, values: [${port[1]}]}
`;

test('SAddr/SPort on bind, DAddr with IPv6 CIDRs on connect: decided in the kernel', async (t) => {
  const listen = (host: string, port = 0) =>
    new Promise<number>((resolve, reject) => {
      const server = createServer((socket) => socket.destroy());
      server.on('error', reject);
      server.listen(port, host, () => resolve((server.address() as AddressInfo).port));
      t.after(() => server.close());
    });
  // A port free now: the policy watches binds of 127.0.0.1 to it.
  const port = await new Promise<number>((resolve) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const p = (server.address() as AddressInfo).port;
      server.close(() => resolve(p));
    });
  });
  const bindPolicy = addPolicy(t, sockPolicy('bind', ['SAddr', '"127.0.0.1/32", "fd00:c1::/64"'], ['SPort', `"${port}"`]));
  assert.equal(await listen('127.0.0.2', port), port); // the port, another address
  await listen('127.0.0.1'); // the address, another port
  assert.equal(observer.policies.get(bindPolicy)!.stats.posted, 0n);
  assert.equal(await listen('127.0.0.1', port), port);
  const seen = kprobesOf(bindPolicy);
  assert.equal(seen.length, 1);
  assert.deepEqual(seen[0].args?.[1], { sock_arg: { family: 'AF_INET', saddr: '127.0.0.1', sport: port } });

  const v6 = { port: await listen('::1') };
  const connectPolicy = addPolicy(t, sockPolicy('connect', ['DAddr', '"::1/128", "10.255.255.0/24"'], ['DPort', `"${v6.port}"`]));
  const connectTo = (host: string, port: number) =>
    new Promise<void>((resolve) => {
      const socket = connect(port, host);
      socket.on('error', () => resolve());
      socket.on('close', () => resolve());
      socket.on('connect', () => socket.destroy());
    });
  await connectTo('127.0.0.1', v6.port); // the port, but IPv4 loopback: not in the CIDRs
  await connectTo('::1', v6.port);
  const connects = kprobesOf(connectPolicy);
  assert.equal(connects.length, 1);
  assert.deepEqual(connects[0].args?.[1], { sock_arg: { family: 'AF_INET6', daddr: '::1', dport: v6.port } });
  assert.equal(observer.policies.get(connectPolicy)!.stats.posted, 1n);
});

test('podSelector and TracingPolicyNamespaced: only processes in the selected pods\' network namespaces, decided in the kernel', async (t) => {
  const file = tempFile(unique('pods'));
  const netnsOf = (name: string) => {
    assert.equal(spawnSync('ip', ['netns', 'add', name]).status, 0);
    t.after(() => spawnSync('ip', ['netns', 'del', name]));
    return statSync(`/run/netns/${name}`).ino;
  };
  const web = unique('ciliate-web');
  const db = unique('ciliate-db');
  const dev = unique('ciliate-dev');
  const pods = [
    { netns: netnsOf(web), namespace: 'prod', labels: { 'k8s:app': 'web' } },
    { netns: netnsOf(db), namespace: 'prod', labels: { 'k8s:app': 'db' } },
    { netns: netnsOf(dev), namespace: 'dev', labels: { 'k8s:app': 'web' } },
  ];
  observer.policies.setPods(pods);
  t.after(() => observer.policies.setPods([]));
  const inPod = (netns: string, args: string[]) => run('/usr/bin/nsenter', [`--net=/run/netns/${netns}`, ...args]);

  const selected = addPolicy(t, openatPolicy(unique('web-pods'), file, '', 'TracingPolicy', '\n  podSelector:\n    matchLabels: {app: web}'));
  assert.deepEqual(observer.policies.podsOf(selected), [pods[0].netns, pods[2].netns].sort((a, b) => a - b));
  const webCat = await inPod(web, ['/usr/bin/cat', file]);
  const devCat = await inPod(dev, ['/usr/bin/cat', file]);
  await inPod(db, ['/usr/bin/cat', file]);
  await run('/usr/bin/cat', [file]);
  assert.deepEqual(kprobesOf(selected).map((e) => e.process.pid).sort(), [webCat.pid, devCat.pid].sort());
  assert.equal(observer.policies.get(selected)!.stats.posted, 2n);

  // A namespaced policy enforces in its namespace only: Sigkill in prod's web pod, not dev's.
  const namespaced = addPolicy(t, openatPolicy(unique('prod-kill'), file, '      matchActions: [{action: Sigkill}]\n', 'TracingPolicyNamespaced', '\n  podSelector:\n    matchExpressions: [{key: app, operator: In, values: [web]}]'));
  assert.deepEqual(observer.policies.podsOf(namespaced), [pods[0].netns]);
  const killed = await inPod(web, ['/usr/bin/cat', file]);
  const spared = await inPod(dev, ['/usr/bin/cat', file]);
  const host = await run('/usr/bin/cat', [file]);
  assert.deepEqual([killed.signal, spared.code, host.code], ['SIGKILL', 0, 0]);
  // Leaving the pod's network namespace (a new one in a user namespace: no privilege needed)
  // does not leave the pod's policies.
  const escaped = await inPod(web, ['/usr/bin/unshare', '-Urn', '/usr/bin/cat', file]);
  assert.equal(escaped.signal, 'SIGKILL', 'a process that unshared its pod\'s network namespace is still in scope');
  assert.equal(observer.policies.get(namespaced)!.stats.signalled, 2n);

  // A pod gone from the endpoints: its namespace leaves the kernel's scope at once.
  const before = observer.policies.kernelState().pods;
  observer.policies.setPods(pods.slice(1));
  assert.equal(observer.policies.kernelState().pods, before - 2);
  const after = await inPod(web, ['/usr/bin/cat', file]);
  assert.equal(after.code, 0, 'no longer a pod of the namespaced policy');
  observer.policies.delete(namespaced);
  observer.policies.delete(selected);
  assert.equal(observer.policies.kernelState().pods, 0, 'no scope entry outlives its policy');
});

test('containerSelector: only the selected containers of the selected pods, by their cgroups, decided in the kernel', async (t) => {
  const file = tempFile(unique('containers'));
  const netns = unique('ciliate-ctr');
  assert.equal(spawnSync('ip', ['netns', 'add', netns]).status, 0);
  t.after(() => spawnSync('ip', ['netns', 'del', netns]));
  // Each container's cgroup as runc names it under the test's own cgroup (never the root).
  const parent = testCgroup(t);
  const cgroup = (path: string) => {
    mkdirSync(path);
    return { path, id: statSync(path, { bigint: true }).ino };
  };
  const app = cgroup(join(parent, 'libpod-app1.scope'));
  const sidecar = cgroup(join(parent, 'libpod-side1.scope'));
  const nested = cgroup(join(app.path, 'worker'));
  const containers = [
    { id: 'app1', name: 'app', image: 'docker.io/library/nginx:1.27', cgroups: [app.id] },
    { id: 'side1', name: 'sidecar', image: 'docker.io/envoyproxy/envoy@sha256:00', cgroups: [sidecar.id] },
  ];
  const pod = { netns: statSync(`/run/netns/${netns}`).ino, namespace: 'prod', labels: { 'k8s:app': 'web' } };
  observer.policies.setPods([{ ...pod, containers }]);
  t.after(() => observer.policies.setPods([]));
  // Joins the cgroup first, then the pod's network namespace, then execs: as a runtime starts a container.
  const inCgroup = (path: string, podNetns: boolean) => run('/bin/sh', ['-c', `echo $$ > ${path}/cgroup.procs && exec "$@"`, 'sh', ...(podNetns ? ['/usr/bin/nsenter', `--net=/run/netns/${netns}`, '--'] : []), '/usr/bin/cat', file]);

  const name = addPolicy(t, openatPolicy(unique('app-kill'), file, '      matchActions: [{action: Sigkill}]\n', 'TracingPolicyNamespaced', '\n  podSelector:\n    matchLabels: {app: web}\n  containerSelector:\n    matchExpressions: [{key: name, operator: In, values: [app]}]'));
  assert.deepEqual(observer.policies.cgroupsOf(name), [app.id]);
  const results = {
    app: await inCgroup(app.path, true),
    below: await inCgroup(nested.path, true),
    sidecar: await inCgroup(sidecar.path, true),
    podOnly: await inCgroup(parent, true),
    hostInAppCgroup: await inCgroup(app.path, false),
  };
  assert.deepEqual(Object.fromEntries(Object.entries(results).map(([k, r]) => [k, r.signal ?? r.code])), { app: 'SIGKILL', below: 'SIGKILL', sidecar: 0, podOnly: 0, hostInAppCgroup: 0 });
  assert.equal(observer.policies.get(name)!.stats.signalled, 2n);

  // repo is the image's repository, without tag or digest.
  const byRepo = addPolicy(t, openatPolicy(unique('repo'), file, '', 'TracingPolicy', '\n  containerSelector:\n    matchLabels: {repo: docker.io/envoyproxy/envoy}'));
  assert.deepEqual(observer.policies.cgroupsOf(byRepo), [sidecar.id]);
  observer.policies.delete(byRepo);

  // The container gone from its pod: its cgroup leaves the policy at once.
  observer.policies.setPods([{ ...pod, containers: containers.slice(1) }]);
  assert.deepEqual(observer.policies.cgroupsOf(name), []);
  assert.equal((await inCgroup(app.path, true)).code, 0, 'no longer a selected container');
  // A pod whose containers are unknown has none to select: the policy holds nothing (fail closed).
  observer.policies.setPods([{ ...pod, containers: containers.map((c) => ({ ...c, cgroups: [] })) }]);
  assert.equal(observer.policies.kernelState().cgroups, 0);
  observer.policies.setPods([{ ...pod, containers }]);
  assert.equal(observer.policies.kernelState().cgroups, 1);
  observer.policies.delete(name);
  assert.equal(observer.policies.kernelState().cgroups, 0, 'no container entry outlives its policy');
});

test('bad selector values are refused naming the field, and nothing of the policy is loaded', () => {
  const before = observer.policies.kernelState();
  const yaml = `apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: ${unique('bad')}}
spec:
  podSelector: {matchExpressions: [{key: app, operator: Has}]}
  kprobes:
  - call: sys_openat
    args: [{index: 1, type: string}]
    selectors:
    - matchArgs: [{index: 1, operator: Prefix, values: ["/etc/"]}]
      matchBinaries: [{operator: In, values: ["/usr/bin/sshd"], followChildren: true}]
      matchCapabilities: [{type: Effective, operator: In, values: [CAP_SYS_ADMIN, CAP_FLY]}]
  - call: sys_connect
    args: [{index: 1, type: sockaddr}]
    selectors:
    - matchArgs: [{index: 1, operator: DAddr, values: ["10.0.0.0/33", "fd00::/64"]}]
`;
  assert.throws(() => observer.policies.add(yaml), (error: unknown) => {
    assert.ok(RuntimeError.is(error, 'ERR_RUNTIME_POLICY'));
    const fields = (error.details as { field: string; reason: string }[]).map((p) => `${p.field}: ${p.reason}`);
    assert.deepEqual(fields.sort(), [
      'spec.kprobes[0].selectors[0].matchCapabilities[0].values[1]: "CAP_FLY": not a capability (want a name from linux/capability.h, e.g. CAP_NET_RAW)',
      'spec.kprobes[1].selectors[0].matchArgs[0].values[0]: "10.0.0.0/33": want an IPv4 or IPv6 address or CIDR',
      'spec.podSelector.matchExpressions[0].operator: "Has": want In, NotIn, Exists or DoesNotExist',
    ]);
    return true;
  });
  assert.deepEqual(observer.policies.kernelState(), before);
});
