import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { AgentApiError, type Endpoint } from '../src/agent/index.ts';
import { hostInterfaceName } from '../src/agent/endpoint.ts';
import { LxcProgram, TC_BLOCKS } from '../src/datapath/index.ts';
import { TestNode, addNetns, echo, echoServer, inNs, ping, sleep, streamConnection } from './support/cluster.ts';

test('pods on one node reach each other and their node over ICMP, TCP and UDP', async (t) => {
  const node = await TestNode.start(t);
  const a = await node.addPod(t);
  const b = await node.addPod(t);
  assert.notEqual(a.endpoint.ipv4, b.endpoint.ipv4);
  await echoServer(t, b.netns, 7000);
  await echoServer(t, a.netns, 7000);
  assert.ok(await ping(a.netns, b.endpoint.ipv4), 'a → b ICMP');
  assert.ok(await ping(b.netns, a.endpoint.ipv4), 'b → a ICMP');
  assert.ok(await echo(a.netns, 'tcp', b.endpoint.ipv4, 7000), 'a → b TCP');
  assert.ok(await echo(b.netns, 'tcp', a.endpoint.ipv4, 7000), 'b → a TCP');
  assert.ok(await echo(a.netns, 'udp', b.endpoint.ipv4, 7000), 'a → b UDP');
  const status = await node.client.get<{ ipam: { routerIp: string } }>('/v1/status');
  assert.ok(await ping(a.netns, status.ipam.routerIp), 'pod → its node (router address)');

  const ct = await node.client.get<{ key: { saddr: string; daddr: string; dport: number } }[]>('/v1/bpf/ct');
  assert.ok(ct.some((e) => e.key.saddr === a.endpoint.ipv4 && e.key.daddr === b.endpoint.ipv4 && e.key.dport === 7000), 'the TCP connection is in conntrack');
  const ipcache = await node.client.get<{ key: { ip: string; prefixlen: number } }[]>('/v1/bpf/ipcache');
  for (const pod of [a, b]) assert.ok(ipcache.some((e) => e.key.ip === pod.endpoint.ipv4 && e.key.prefixlen === 32), `ipcache has ${pod.endpoint.ipv4}/32`);
  const lxc = await node.client.get<{ key: { ip: string }; value: { lxc_id: number } }[]>('/v1/bpf/endpoint');
  assert.deepEqual(lxc.map((e) => e.value.lxc_id).sort(), [a.endpoint.id, b.endpoint.id].sort());

  // The default attach mode: each host veth's clsact is bound to the node's two shared tc blocks,
  // which carry bpf_lxc once; no link pool.
  const { ingress, egress } = TC_BLOCKS;
  for (const pod of [a, b]) {
    assert.match(await inNs(node.netns, 'tc', ['qdisc', 'show', 'dev', pod.endpoint.hostIfname]), new RegExp(`clsact .*ingress_block ${ingress} egress_block ${egress}`));
  }
  for (const [block, program] of [[ingress, LxcProgram.FROM_CONTAINER], [egress, LxcProgram.TO_CONTAINER]] as const) {
    const filters = (await inNs(node.netns, 'tc', ['filter', 'show', 'block', String(block)])).split('\n').filter((line) => / bpf .*handle /.test(line));
    assert.equal(filters.length, 1, `one filter on block ${block}`);
    assert.match(filters[0], new RegExp(`${program} direct-action`));
  }
  const pool = await node.client.get<{ linkPool?: { target: number } }>('/v1/status');
  assert.equal(pool.linkPool?.target ?? 0, 0, 'no link pool by default with tc-block');
});

/**
 * Two pods with a TCP stream between them; `stop` ends the agent. With no agent the stream keeps
 * flowing and new traffic passes, and an agent started again adopts the pinned datapath.
 */
async function assertDatapathOutlivesAgent(t: TestContext, port: number, stop: (node: TestNode) => Promise<void>): Promise<void> {
  const node = await TestNode.start(t);
  const a = await node.addPod(t);
  const b = await node.addPod(t);
  await echoServer(t, b.netns, port);
  const stream = streamConnection(t, a.netns, b.endpoint.ipv4, port);
  await sleep(500);
  assert.ok(stream.received() > 0, 'the stream is flowing');

  await stop(node);
  const atStop = stream.received();
  await sleep(600);
  assert.ok(stream.received() > atStop, 'echoes keep coming with no agent running');
  assert.ok(await ping(a.netns, b.endpoint.ipv4), 'new traffic flows with no agent running');
  for (const pod of [a, b]) assert.ok(existsSync(join(node.bpfRoot, 'endpoints', String(pod.endpoint.id))), `endpoint ${pod.endpoint.id}'s pins stay`);

  node.log = '';
  await node.startAgent();
  const endpoints = await node.client.get<Endpoint[]>('/v1/endpoints');
  assert.deepEqual(endpoints.map((ep) => [ep.id, ep.ipv4]).sort(), [[a.endpoint.id, a.endpoint.ipv4], [b.endpoint.id, b.endpoint.ipv4]].sort());
  assert.match(node.log, /"msg":"adopted datapath"/);
  assert.doesNotMatch(node.log, /"msg":"(attached|replaced) datapath"/);
  const afterRestart = stream.received();
  await sleep(400);
  assert.ok(stream.alive() && stream.received() > afterRestart, 'the connection survived the restart');
  assert.ok(await echo(a.netns, 'tcp', b.endpoint.ipv4, port), 'new connections work after the restart');
}

test('a kill -9 of the agent drops no established connection, and the restarted agent adopts the datapath', async (t) => {
  await assertDatapathOutlivesAgent(t, 7001, async (node) => {
    // Endpoints, routes and address events all go over the agent's own netlink sockets: in its
    // steady state its one child process is the L7 proxy, which must not outlive a kill -9.
    const children = readFileSync(`/proc/${node.agent!.pid}/task/${node.agent!.pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
    const { l7Proxy } = await node.client.get<{ l7Proxy?: { pid?: number } }>('/v1/status');
    assert.deepEqual(children, [l7Proxy?.pid], 'the agent runs no child process but the L7 proxy once it serves');
    await node.stopAgent('SIGKILL');
    // Gone, or a zombie waiting for whoever inherited it to reap it: either way it serves nothing.
    const state = () => (existsSync(`/proc/${children[0]}/stat`) ? readFileSync(`/proc/${children[0]}/stat`, 'utf8').replace(/^.*\) /, '')[0] : 'gone');
    for (let i = 0; i < 40 && !['gone', 'Z'].includes(state()); i++) await sleep(25);
    assert.ok(['gone', 'Z'].includes(state()), `the L7 proxy goes with its agent (state ${state()})`);
  });
});

test('SIGTERM stops the agent promptly and cleanly, leaving the datapath for the next agent to adopt', async (t) => {
  await assertDatapathOutlivesAgent(t, 7002, async (node) => {
    const agent = node.agent!;
    const exited = new Promise<[number | null, NodeJS.Signals | null]>((resolve) => agent.once('exit', (code, signal) => resolve([code, signal])));
    const sent = performance.now();
    agent.kill('SIGTERM');
    // Raced against a timer, so an agent that never exits fails here rather than at the test timeout.
    const status = await Promise.race([exited, sleep(10_000).then(() => undefined)]);
    const stopMs = performance.now() - sent;
    assert.ok(status, `the agent exits after SIGTERM:\n${node.log}`);
    assert.deepEqual(status, [0, null], `exit status after SIGTERM:\n${node.log}`);
    assert.ok(stopMs < 5000, `stopped within 5 s (took ${Math.round(stopMs)} ms)`);
    const lines = node.log.split('\n').filter((line) => line.startsWith('{')).map((line) => JSON.parse(line) as { level: number; msg: string; signal?: string; node?: string });
    const stopping = lines.find((line) => line.msg === 'stopping; the datapath stays in place');
    assert.ok(stopping, `a structured "stopping" line:\n${node.log}`);
    assert.deepEqual([stopping.level, stopping.signal, stopping.node], [30, 'SIGTERM', 'n1']);
    assert.deepEqual(lines.filter((line) => line.level >= 50).map((line) => line.msg), [], 'no error logged while stopping');
    assert.equal(existsSync(node.socket), false, 'the API socket is removed');
  });
});

/** Asserts that `request` is refused with this status, code and message. */
async function answers(request: Promise<unknown>, status: number, code: string, message: RegExp): Promise<void> {
  await assert.rejects(request, (error: unknown) => {
    assert.ok(error instanceof AgentApiError, String(error));
    assert.deepEqual([error.status, error.code], [status, code], error.message);
    assert.match(error.message, message);
    return true;
  });
}

test('bad endpoint requests get clear errors and leave nothing half-created', async (t) => {
  const node = await TestNode.start(t, { clusterCidr: '10.244.0.0/16', nodeCidrMaskSize: 30 });
  const rejects = (body: unknown, status: number, code: string, message: RegExp) => answers(node.client.call('POST', '/v1/endpoints', body), status, code, message);
  // The host end's name taken by an interface that is not the agent's: refused with the kernel's
  // errno, and that interface is left alone.
  const squatted = hostInterfaceName('squatter', 'eth0');
  await inNs(node.netns, 'ip', ['link', 'add', squatted, 'type', 'veth', 'peer', 'name', 'squat-peer']);
  const squatterNetns = await addNetns(t, 'ctp');
  await rejects({ containerId: 'squatter', ifname: 'eth0', netns: `/run/netns/${squatterNetns}` }, 500, 'ERR_NETLINK', new RegExp(`creating veth ${squatted} .*: EEXIST`));
  assert.match(await inNs(node.netns, 'ip', ['-o', 'link', 'show', 'dev', squatted]), /squat-peer/, 'the existing interface stays');
  assert.equal(await inNs(squatterNetns, 'ip', ['-o', 'link', 'show', 'dev', 'eth0']).catch(() => 'absent'), 'absent', 'no pod end was made');
  await inNs(node.netns, 'ip', ['link', 'del', squatted]);

  const first = await node.addPod(t, 'dup-container');
  await rejects({ containerId: 'dup-container', ifname: 'eth0', netns: first.endpoint.netns }, 409, 'ERR_ENDPOINT_EXISTS', /dup-container already has interface eth0/);
  await rejects({ containerId: 'x', ifname: 'eth0', netns: '/run/netns/does-not-exist' }, 400, 'ERR_BAD_NETNS', /does-not-exist does not exist/);
  await rejects({ containerId: 'x', ifname: 'eth0' }, 400, 'ERR_BAD_REQUEST', /^endpoint request: field netns/);
  await rejects({ containerId: 'x', ifname: 'eth0', netns: 'relative', extra: 1 }, 400, 'ERR_BAD_REQUEST', /field/);

  // Namespaces that are no pod's own: by identity, whatever the path.
  const nodeRoutes = await inNs(node.netns, 'ip', ['-o', 'route']);
  await rejects({ containerId: 'x', ifname: 'eth0', netns: `/run/netns/${node.netns}` }, 400, 'ERR_BAD_NETNS', /is the agent's own network namespace/);
  await rejects({ containerId: 'x', ifname: 'eth0', netns: '/proc/self/ns/net' }, 400, 'ERR_BAD_NETNS', /is the agent's own network namespace/);
  // (Where the agent may not read init's namespace, as in a sandbox, it is refused as unreadable.)
  await rejects({ containerId: 'x', ifname: 'eth0', netns: '/proc/1/ns/net' }, 400, 'ERR_BAD_NETNS', /is the host's network namespace|cannot be read \(EACCES\)/);
  await rejects({ containerId: 'dup-container', ifname: 'eth1', netns: first.endpoint.netns }, 400, 'ERR_BAD_NETNS', new RegExp(`is the network namespace of endpoint ${first.endpoint.id} \\(container dup-container\\)`));
  await rejects({ containerId: 'x', ifname: 'eth0', netns: '/proc/self/ns/mnt' }, 400, 'ERR_BAD_NETNS', /is not a network namespace/);
  await rejects({ containerId: 'x', ifname: 'eth0', netns: '/etc/hostname' }, 400, 'ERR_BAD_NETNS', /is not a network namespace/);
  // Nothing reaches a command line: a path with a newline is just a path that does not exist.
  await rejects({ containerId: 'x', ifname: 'eth0', netns: `/run/netns/${node.netns}\nlink del ciliate_host` }, 400, 'ERR_BAD_NETNS', /does not exist/);
  assert.match(await inNs(node.netns, 'ip', ['-o', 'link', 'show', 'dev', 'ciliate_host']), /ciliate_host/);
  assert.equal(await inNs(node.netns, 'ip', ['-o', 'route']), nodeRoutes, "the node's routes are untouched");

  // Every other family's refusals, through the one table of statuses.
  const { client } = node;
  await answers(client.call('PUT', `/v1/endpoints/${first.endpoint.id}/labels`, { app: 1 }), 400, 'ERR_BAD_REQUEST', /^endpoint labels: field app: label values must be strings/);
  await answers(client.call('PUT', `/v1/endpoints/${first.endpoint.id}/labels`, { 'app!': 'x' }), 400, 'ERR_BAD_LABELS', /^endpoint labels: identity: invalid label/);
  await answers(client.call('PUT', '/v1/endpoints/4000/labels', { app: 'x' }), 404, 'ERR_ENDPOINT_NOT_FOUND', /^no endpoint 4000$/);
  await answers(client.call('PUT', '/v1/namespaces/Bad_Name/labels', { team: 'x' }), 400, 'ERR_BAD_NAMESPACE', /must be a DNS-1123 label/);
  await answers(client.get('/v1/identities/99999999'), 404, 'ERR_IDENTITY_NOT_FOUND', /^no identity 99999999$/);
  await answers(client.call('POST', '/v1/policies', { yaml: 'kind: Nonsense\n' }), 400, 'ERR_POLICY_INVALID', /document 1/);
  await answers(client.call('DELETE', '/v1/policies?key=CiliumNetworkPolicy/default/none'), 404, 'ERR_POLICY_NOT_FOUND', /no policy/);
  await answers(client.call('POST', '/v1/policy/trace', { src: 'a', dst: 'b', dport: 'http' }), 400, 'ERR_BAD_REQUEST', /^policy trace: field dport: /);
  await answers(client.get('/v1/policy/wait?revision=-1'), 400, 'ERR_BAD_REQUEST', /^policy wait: field revision: must be a non-negative integer$/);
  await answers(client.get('/v1/bpf/nope'), 404, 'ERR_NOT_FOUND', /^no datapath map nope/);
  await answers(client.get('/v1/nope'), 404, 'ERR_NOT_FOUND', /^no API route GET \/v1\/nope$/);

  const linksBefore = await inNs(node.netns, 'ip', ['-o', 'link']);
  const pod = await node.addPod(t).catch((error: unknown) => error);
  assert.ok(pod instanceof AgentApiError && pod.code === 'ERR_IPAM_EXHAUSTED', `second pod on a /30 node: ${String(pod)}`);
  assert.equal(pod.status, 507, 'insufficient storage, as for any exhausted pool');
  assert.match(pod.message, /exhausted: 1 of 1 addresses in use/);
  assert.equal(await inNs(node.netns, 'ip', ['-o', 'link']), linksBefore, 'no veth left behind');
  const status = await node.client.get<{ ipam: { used: number }; endpoints: number }>('/v1/status');
  assert.equal(status.ipam.used, 1);
  assert.equal(status.endpoints, 1);
  assert.ok(await ping(first.netns, (await node.client.get<{ ipam: { routerIp: string } }>('/v1/status')).ipam.routerIp), 'the existing pod still works');
});

test('API edges: ambiguous endpoint ids, bad escapes, prototype names and oversized bodies get 4xx answers at once', async (t) => {
  const node = await TestNode.start(t);
  const a = await node.addPod(t, 'twin-aaaa');
  const b = await node.addPod(t, 'twin-bbbb');
  const { client } = node;
  // A prefix that fits two endpoints names both instead of picking one.
  await answers(client.get('/v1/endpoints/twin-'), 409, 'ERR_ENDPOINT_AMBIGUOUS', new RegExp(`matches 2 endpoints \\(${a.endpoint.id} twin-aaaa/eth0, ${b.endpoint.id} twin-bbbb/eth0\\)`));
  assert.equal((await client.get<Endpoint>('/v1/endpoints/twin-a')).id, a.endpoint.id, 'a unique prefix still reads');
  // A change takes an exact name: a prefix, however unique, is refused.
  await answers(client.call('PUT', '/v1/endpoints/twin-b/labels', { app: 'x' }), 404, 'ERR_ENDPOINT_NOT_FOUND', /^no endpoint twin-b$/);
  assert.deepEqual((await client.get<Endpoint>(`/v1/endpoints/${b.endpoint.id}`)).labels, {}, 'nothing was relabelled');
  assert.deepEqual((await client.call<Endpoint>('PUT', '/v1/endpoints/twin-bbbb/labels', { app: 'x' })).labels, { app: 'x' });

  await answers(client.get('/v1/endpoints/%zz'), 400, 'ERR_BAD_REQUEST', /not valid percent-encoding/);
  for (const name of ['constructor', '__proto__', 'toString', 'hasOwnProperty']) {
    await answers(client.get(`/v1/bpf/${name}`), 404, 'ERR_NOT_FOUND', /^no datapath map/);
  }
  const began = Date.now();
  await answers(client.call('POST', '/v1/policies', { yaml: 'x'.repeat(2 << 20) }), 413, 'ERR_TOO_LARGE', /over the limit of 1048576 bytes/);
  assert.ok(Date.now() - began < 2000, `the limit is said at once (${Date.now() - began} ms)`);
  assert.equal((await client.get<{ ok: boolean }>('/v1/healthz')).ok, true, 'the agent keeps serving');
});

test('deleted endpoints leave nothing under the bpffs root: no pins, no directories', async (t) => {
  const node = await TestNode.start(t);
  const endpointsDir = join(node.bpfRoot, 'endpoints');
  for (let i = 0; i < 5; i++) {
    const pod = await node.addPod(t);
    assert.ok(readdirSync(join(endpointsDir, String(pod.endpoint.id))).length > 0, 'pins while the endpoint lives');
    await node.client.call('DELETE', `/v1/endpoints/${pod.endpoint.containerId}/eth0`);
  }
  assert.deepEqual(readdirSync(endpointsDir), []);
});

test('an endpoint whose interface was deleted by hand keeps failing visibly without holding up other adds, deletes or a restart', async (t) => {
  const node = await TestNode.start(t, { reconcileRefreshInterval: 0.3 });
  const broken = await node.addPod(t);
  await inNs(node.netns, 'ip', ['link', 'del', broken.endpoint.hostIfname]);
  // The refresh finds the programs gone and cannot put them back on an interface that is no more.
  const deadline = Date.now() + 10_000;
  for (;;) {
    const status = await node.client.get<{ state: string; reasons: string[] }>('/v1/status');
    if (status.state === 'degraded') {
      assert.match(status.reasons.join('; '), /^endpoints: /);
      break;
    }
    assert.ok(Date.now() < deadline, `the agent reports the broken endpoint: ${JSON.stringify(status)}`);
    await sleep(200);
  }
  const began = Date.now();
  const other = await node.addPod(t);
  await node.client.call('DELETE', `/v1/endpoints/${other.endpoint.containerId}/eth0`);
  assert.ok(Date.now() - began < 5000, `an add and a delete beside it take ${Date.now() - began} ms`);
  await node.stopAgent('SIGKILL');
  await node.startAgent();
  assert.deepEqual(await node.client.call('DELETE', `/v1/endpoints/${broken.endpoint.containerId}/eth0`), { deleted: true });
  assert.equal((await node.client.get<{ state: string }>('/v1/status')).state, 'ok');
});
