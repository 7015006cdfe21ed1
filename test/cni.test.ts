import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { installCni } from '../src/cni/index.ts';
import { TestNode, addNetns, inNs, ping, uniqueName } from './support/cluster.ts';

interface PluginRun {
  code: number;
  out: Record<string, unknown>;
  raw: string;
}

function runPlugin(plugin: string, env: Record<string, string>, stdin: string): Promise<PluginRun> {
  return new Promise((resolve) => {
    const child = execFile(plugin, [], { env: { PATH: process.env.PATH ?? '', ...env }, encoding: 'utf8' }, (error, stdout) => {
      const raw = stdout.trim();
      resolve({ code: error ? Number((error as { code?: number }).code ?? 1) : 0, out: raw ? (JSON.parse(raw) as Record<string, unknown>) : {}, raw });
    });
    child.stdin?.end(stdin);
  });
}

test('the installed CNI plugin follows the spec through the agent: VERSION, ADD, CHECK, idempotent DEL, STATUS, error JSON for bad input and hostile namespaces', async (t) => {
  const node = await TestNode.start(t);
  const dir = mkdtempSync(join(tmpdir(), 'ciliate-cni-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const { plugin } = installCni({ binDir: join(dir, 'bin'), confDir: join(dir, 'net.d'), socketPath: node.socket });
  const conf = JSON.stringify({ cniVersion: '1.0.0', name: 'ciliate', type: 'ciliate', socketPath: node.socket });

  const version = await runPlugin(plugin, { CNI_COMMAND: 'VERSION' }, conf);
  assert.equal(version.code, 0);
  assert.ok((version.out.supportedVersions as string[]).includes('1.0.0'));

  const pods = [] as { netns: string; ip: string; id: string }[];
  for (const _ of [0, 1]) {
    const netns = await addNetns(t, 'ctc');
    const id = uniqueName('cni');
    const env = { CNI_COMMAND: 'ADD', CNI_CONTAINERID: id, CNI_NETNS: `/run/netns/${netns}`, CNI_IFNAME: 'eth0', CNI_PATH: join(dir, 'bin'), CNI_ARGS: 'K8S_POD_NAME=web;K8S_POD_NAMESPACE=shop;CILIATE_LABELS=app=web,tier=front' };
    const add = await runPlugin(plugin, env, conf);
    assert.equal(add.code, 0, add.raw);
    t.after(() => runPlugin(plugin, { ...env, CNI_COMMAND: 'DEL' }, conf));
    const ips = add.out.ips as { address: string; gateway: string; interface: number }[];
    assert.match(ips[0].address, /^10\.244\.\d+\.\d+\/32$/);
    assert.equal((add.out.interfaces as { sandbox?: string }[])[ips[0].interface].sandbox, `/run/netns/${netns}`);
    assert.equal(add.out.cniVersion, '1.0.0');
    pods.push({ netns, ip: ips[0].address.split('/')[0], id });
    // The pod's labels and namespace, from CNI_ARGS, are what its identity is made of.
    const endpoint = (await node.client.get<{ containerId: string; labels: Record<string, string>; namespace?: string; podName?: string }[]>('/v1/endpoints')).find((ep) => ep.containerId === id);
    assert.deepEqual({ labels: endpoint?.labels, namespace: endpoint?.namespace, podName: endpoint?.podName }, { labels: { app: 'web', tier: 'front' }, namespace: 'shop', podName: 'web' });

    const again = await runPlugin(plugin, env, conf);
    assert.equal(again.code, 1, 'a second ADD for the same container and interface is an error');
    assert.equal(again.out.code, 100);
    assert.match(String(again.out.msg), /already has interface eth0/);

    assert.equal((await runPlugin(plugin, { ...env, CNI_COMMAND: 'CHECK' }, conf)).code, 0);
  }
  assert.ok(await ping(pods[0].netns, pods[1].ip), 'containers added through CNI reach each other');

  // CHECK looks at the kernel, not only at the agent's records.
  const checkOf = (pod: (typeof pods)[number]) =>
    runPlugin(plugin, { CNI_COMMAND: 'CHECK', CNI_CONTAINERID: pod.id, CNI_NETNS: `/run/netns/${pod.netns}`, CNI_IFNAME: 'eth0', CNI_PATH: join(dir, 'bin') }, conf);
  await inNs(pods[1].netns, 'ip', ['route', 'del', 'default']);
  let broken = await checkOf(pods[1]);
  assert.deepEqual([broken.code, broken.out.code], [1, 100], broken.raw);
  assert.match(String(broken.out.msg), /no default route via/);
  await inNs(pods[1].netns, 'ip', ['link', 'del', 'eth0']);
  broken = await checkOf(pods[1]);
  assert.equal(broken.out.code, 100);
  assert.match(String(broken.out.msg), /host end lxc\w+ .* is gone; interface eth0 is gone in/);

  const del = { CNI_COMMAND: 'DEL', CNI_CONTAINERID: pods[0].id, CNI_NETNS: '', CNI_IFNAME: 'eth0', CNI_PATH: join(dir, 'bin') };
  assert.equal((await runPlugin(plugin, del, conf)).code, 0);
  assert.equal((await runPlugin(plugin, del, conf)).code, 0, 'DEL of what is gone succeeds');
  const check = await runPlugin(plugin, { ...del, CNI_COMMAND: 'CHECK' }, conf);
  assert.equal(check.out.code, 3);

  // A configuration that does not scan names no socket: the plugin asks the agent at its default
  // (here: CILIATE_SOCKET_PATH), which tells what is wrong with it.
  const bad = { CNI_COMMAND: 'ADD', CNI_CONTAINERID: 'x', CNI_NETNS: `/run/netns/${pods[1].netns}`, CNI_IFNAME: 'eth1', CNI_PATH: '', CILIATE_SOCKET_PATH: node.socket };
  const notJson = await runPlugin(plugin, bad, '{ not json');
  assert.deepEqual([notJson.code, notJson.out.code], [1, 6]);
  const noName = await runPlugin(plugin, bad, JSON.stringify({ cniVersion: '1.0.0', type: 'ciliate' }));
  assert.equal(noName.out.code, 7);
  assert.match(String(noName.out.msg), /field name/);
  const oldVersion = await runPlugin(plugin, bad, JSON.stringify({ cniVersion: '0.1.0', name: 'x', type: 'ciliate' }));
  assert.equal(oldVersion.out.code, 1);
  const noEnv = await runPlugin(plugin, { ...bad, CNI_CONTAINERID: '' }, conf);
  assert.equal(noEnv.out.code, 4);
  assert.match(String(noEnv.out.msg), /CNI_CONTAINERID/);
  const noNetns = await runPlugin(plugin, { ...bad, CNI_NETNS: '/run/netns/nope' }, conf);
  assert.equal(noNetns.out.code, 3);

  const unknown = await runPlugin(plugin, { ...bad, CNI_COMMAND: 'REBOOT' }, conf);
  assert.deepEqual([unknown.code, unknown.out.code, unknown.out.msg], [1, 4, 'CNI_COMMAND "REBOOT" is not one of ADD, DEL, CHECK, STATUS, VERSION']);

  // Namespaces that are no pod's own are refused through the plugin as through the API, naming why.
  const hostile = { CNI_COMMAND: 'ADD', CNI_CONTAINERID: uniqueName('hostile'), CNI_IFNAME: 'eth0', CNI_PATH: '' };
  for (const [netns, why] of [
    [`/run/netns/${node.netns}`, /is the agent's own network namespace/],
    ['/proc/self/ns/net', /is the agent's own network namespace/],
    [`/run/netns/${pods[1].netns}`, new RegExp(`is the network namespace of endpoint \\d+ \\(container ${pods[1].id}\\)`)],
  ] as const) {
    const refused = await runPlugin(plugin, { ...hostile, CNI_NETNS: netns }, conf);
    assert.deepEqual([refused.code, refused.out.code, refused.out.details], [1, 100, 'ERR_BAD_NETNS'], refused.raw);
    assert.match(String(refused.out.msg), why);
  }
  assert.ok(!(await node.client.get<{ containerId: string }[]>('/v1/endpoints')).some((ep) => ep.containerId === hostile.CNI_CONTAINERID), 'nothing was added');

  // What the plugin forwards arrives as it was: CNI_* values and stdin with quotes, backslashes,
  // control characters and UTF-8 come back whole in the agent's messages.
  const odd = 'x"\\\n\t\u0001é😀';
  const echoed = await runPlugin(plugin, { ...bad, CNI_COMMAND: odd }, conf);
  assert.equal(echoed.out.msg, `CNI_COMMAND "${odd}" is not one of ADD, DEL, CHECK, STATUS, VERSION`);
  const oddVersion = JSON.stringify({ cniVersion: odd, name: 'x', type: 'ciliate', socketPath: node.socket });
  assert.equal((await runPlugin(plugin, bad, oddVersion)).out.msg, `network configuration: cniVersion ${odd} is not supported (supported: 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0)`);

  // The route itself validates what it is sent, naming the field.
  await assert.rejects(node.client.call('POST', '/v1/cni', { env: { CNI_COMMAND: 5 }, stdin: '' }), (e: Error & { status?: number }) => e.status === 400 && /^CNI request: field env\.CNI_COMMAND/.test(e.message));
  await assert.rejects(node.client.call('POST', '/v1/cni', { env: { LD_PRELOAD: '/x.so' }, stdin: '' }), (e: Error & { status?: number }) => e.status === 400 && /^CNI request: field env/.test(e.message));

  assert.equal((await runPlugin(plugin, { CNI_COMMAND: 'STATUS' }, conf)).code, 0);
  await node.stopAgent();
  const down = await runPlugin(plugin, { CNI_COMMAND: 'STATUS' }, conf);
  assert.equal(down.out.code, 50);
  // Without an agent: try again later, for DEL too (the runtime retries; nothing was released).
  for (const command of ['ADD', 'DEL', 'CHECK']) {
    const run = await runPlugin(plugin, { CNI_COMMAND: command, CNI_CONTAINERID: pods[1].id, CNI_NETNS: `/run/netns/${pods[1].netns}`, CNI_IFNAME: 'eth0', CNI_PATH: '' }, conf);
    assert.deepEqual([run.code, run.out.code, run.out.cniVersion], [1, 11, '1.0.0'], `${command}: ${run.raw}`);
    assert.match(String(run.out.msg), new RegExp(`cannot reach the agent at ${node.socket}`));
  }
  await node.startAgent();
});
