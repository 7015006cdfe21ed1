/**
 * End to end with a real CNI client: podman (CNI network backend, runc) runs busybox containers
 * on a Ciliate network. podman creates each container's netns from the root namespace and runs
 * our plugin, which asks the agent (in the TestNode's own "node" namespace) to create the veth
 * there: container traffic goes pod ↔ node netns ↔ pod, and no root-namespace interface is used.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type { Endpoint } from '../src/agent/index.ts';
import { Addr, Prefix } from '../src/net/index.ts';
import { TestNode, inNs, uniqueName, until } from './support/cluster.ts';
import { PodmanEnv } from './support/podman.ts';

const run = promisify(execFile);

test('podman with the CNI backend runs busybox containers on a Ciliate network', async (t) => {
  const started = Date.now();
  const lap = (what: string) => t.diagnostic(`${what}: ${Date.now() - started} ms`);
  // Before the node: its cleanup (rm -f, i.e. CNI DEL) then runs while the agent is still up.
  const podman = PodmanEnv.create(t);
  const node = await TestNode.start(t);
  const network = podman.addCiliateNetwork(node.socket);
  await podman.importBusybox();
  lap('agent up, busybox imported');

  const { ipam } = await node.client.get<{ ipam: { podCidr: string; routerIp: string } }>('/v1/status');
  const names = [uniqueName('pm-a'), uniqueName('pm-b')];
  const ids: string[] = [];
  for (const name of names) {
    // busybox httpd serving a page that names the container it runs in.
    ids.push(await podman.run(name, network, ['/bin/sh', '-c', `echo "hello from ${name}" > /www/index.html && exec /bin/httpd -f -p 80 -h /www`]));
  }
  lap('two containers running');

  const inspected = await Promise.all(ids.map((id) => podman.inspect(id)));
  const ips = inspected.map((info) => info.NetworkSettings.Networks?.[network]?.IPAddress ?? '');
  for (const [i, info] of inspected.entries()) {
    assert.equal(info.Id, ids[i]);
    assert.ok(info.State.Running, `${names[i]} is running`);
    assert.ok(Prefix.parse(ipam.podCidr).contains(Addr.parse(ips[i])), `podman shows ${names[i]} at ${ips[i]}, inside the agent's pod CIDR ${ipam.podCidr}`);
    assert.equal(info.NetworkSettings.Networks?.[network]?.Gateway, ipam.routerIp, 'the gateway is the agent\'s router address');
  }
  assert.notEqual(ips[0], ips[1]);

  const endpoints = await node.client.get<Endpoint[]>('/v1/endpoints');
  for (const [i, id] of ids.entries()) {
    const endpoint = endpoints.find((ep) => ep.containerId === id);
    assert.ok(endpoint, `the agent lists an endpoint for container ${id}`);
    assert.equal(endpoint.ifname, 'eth0');
    assert.equal(endpoint.ipv4, ips[i], 'podman reports the address the agent assigned');
    assert.equal(endpoint.netns, inspected[i].NetworkSettings.SandboxKey, 'the endpoint is in the netns podman created');
    assert.equal(endpoint.mac.toLowerCase(), inspected[i].NetworkSettings.Networks?.[network]?.MacAddress.toLowerCase());
    // The host side of the veth is in the node's namespace, not in the root namespace.
    await inNs(node.netns, 'ip', ['link', 'show', 'dev', endpoint.hostIfname]);
    await assert.rejects(run('ip', ['link', 'show', 'dev', endpoint.hostIfname]), `${endpoint.hostIfname} is not in the root namespace`);
  }
  const addr = await podman.exec(ids[0], ['ip', '-4', '-o', 'addr', 'show', 'dev', 'eth0']);
  assert.match(addr, new RegExp(`inet ${ips[0].replaceAll('.', '\\.')}/`), 'the container sees its address on eth0');
  lap('inspect and /v1/endpoints agree');

  // Each way: ICMP, and TCP with wget and nc against the other container's httpd.
  for (const [from, to] of [[0, 1], [1, 0]]) {
    const ping = await podman.exec(ids[from], ['ping', '-c', '2', '-W', '2', ips[to]]);
    assert.match(ping, /2 packets transmitted, 2 packets received/, `${names[from]} pings ${names[to]}`);
    // Debian's busybox-static wget lacks -T (it segfaults on it): bound it with busybox timeout.
    const page = await podman.exec(ids[from], ['timeout', '5', 'wget', '-q', '-O', '-', `http://${ips[to]}/index.html`]);
    assert.equal(page.trim(), `hello from ${names[to]}`, `${names[from]} fetches ${names[to]}'s page with wget`);
    const raw = await podman.exec(ids[from], ['sh', '-c', `printf 'GET /index.html HTTP/1.0\\r\\n\\r\\n' | nc -w 5 ${ips[to]} 80`]);
    assert.match(raw, /^HTTP\/1\.[01] 200/, `${names[from]} talks HTTP to ${names[to]} with nc`);
    assert.ok(raw.includes(`hello from ${names[to]}`));
  }
  lap('ping, wget and nc both ways');

  await podman.rm(...ids);
  const after = await node.client.get<Endpoint[]>('/v1/endpoints');
  for (const id of ids) assert.ok(!after.some((ep) => ep.containerId === id), `removing ${id} ran CNI DEL and its endpoint is gone`);
  assert.deepEqual(await podman.containerIds(), []);
  for (const info of inspected) assert.ok(!(await run('test', ['-e', info.NetworkSettings.SandboxKey]).then(() => true, () => false)), `${info.NetworkSettings.SandboxKey} is removed`);
  lap('containers removed, endpoints gone');
});

test('podman: the container podman ran is named on its endpoint (CNI_ARGS), and a containerSelector policy kills in it alone, by its cgroup', async (t) => {
  const podman = PodmanEnv.create(t);
  const node = await TestNode.start(t, { extraArgs: ['--runtime-enabled', '--runtime-server-address', ''] });
  const network = podman.addCiliateNetwork(node.socket);
  await podman.importBusybox();
  const names = [uniqueName('pm-app'), uniqueName('pm-other')];
  const ids: string[] = [];
  for (const name of names) ids.push(await podman.run(name, network, ['sh', '-c', 'echo x > /root/secret && exec sleep 600']));
  t.after(() => podman.rm(...ids).catch(() => undefined));
  const endpoints = await node.client.get<Endpoint[]>('/v1/endpoints');
  assert.deepEqual(endpoints.find((ep) => ep.containerId === ids[0])?.containers, [{ id: ids[0], name: names[0] }]);

  const policy = uniqueName('pm-app-only');
  await node.client.call('POST', '/v1/runtime/policies', { yaml: `apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: ${policy}}
spec:
  containerSelector: {matchLabels: {name: ${names[1]}}}
  kprobes:
  - call: sys_openat
    args: [{index: 1, type: string}]
    selectors:
    - matchArgs: [{index: 1, operator: Equal, values: [/root/secret]}]
      matchActions: [{action: Sigkill}]
` });
  // The shell reports how cat ended (137: SIGKILL); it opens nothing of the policy's itself (nor
  // does runc's exec, which reads /etc/passwd and /etc/group in the container).
  const cat = async (container: string) => (await podman.exec(container, ['sh', '-c', 'cat /root/secret >/dev/null; echo $?'])).trim();
  // The last container started: no endpoint changed after its cgroup was made, so the agent
  // learned that cgroup from the container's first process.
  await until('cat killed in the selected container', async () => (await cat(ids[1])) === '137');
  assert.equal(await cat(ids[0]), '0', 'the other container is not selected');
  await podman.rm(...ids);
});
