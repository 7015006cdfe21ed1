import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connectObserver, timestampToNs, type GetFlowsResponse, type GetFlowsRequest, type ObserverClient, type ServerStatusResponse } from '../src/observer/index.ts';
import { createTestPki } from '../src/store/etcd-testing.ts';
import { ROOT, TestNode, Underlay, cli, echo, echoServer, killChild, sleep, spawnInNs } from './support/cluster.ts';

const CLI = join(ROOT, 'src', 'cli', 'main.ts');

/** `ciliate relay` in `netns` (by default the underlay's, where etcd and both nodes' addresses are), serving on a Unix socket (and as `extra` says). */
function startRelay(t: TestContext, underlay: Underlay, etcd: string[], netns = underlay.netns, extra: string[] = ['--listen-address', '']): { socket: string; log: () => string } {
  const dir = mkdtempSync(join(tmpdir(), 'ciliate-test-relay-'));
  const socket = join(dir, 'relay.sock');
  const relay = spawnInNs(netns, process.execPath, [
    CLI, 'relay', '--store', 'etcd', '--etcd-endpoints', etcd.join(','),
    ...extra, '--relay-socket-path', socket,
    '--check-interval', '200', '--dial-timeout', '1000', '--sort-buffer-drain-timeout', '100', '--log-level', 'debug',
  ]);
  let log = '';
  relay.stdout?.on('data', (chunk: Buffer) => (log += chunk.toString()));
  relay.stderr?.on('data', (chunk: Buffer) => (log += chunk.toString()));
  t.after(async () => {
    await killChild(relay);
    rmSync(dir, { recursive: true, force: true });
  });
  return { socket, log: () => log };
}

async function responses(client: ObserverClient, request: GetFlowsRequest): Promise<GetFlowsResponse[]> {
  const out: GetFlowsResponse[] = [];
  for await (const response of client.getFlows(request)) out.push(response);
  return out;
}

async function statusUntil(client: ObserverClient, what: string, ok: (status: ServerStatusResponse) => boolean, log: () => string): Promise<ServerStatusResponse> {
  const deadline = Date.now() + 20_000;
  let last: unknown;
  for (;;) {
    try {
      const status = await client.serverStatus();
      if (ok(status)) return status;
      last = status;
    } catch (error) {
      last = error;
    }
    assert.ok(Date.now() < deadline, `${what}; last: ${JSON.stringify(last)}\nrelay log:\n${log().slice(-4000)}`);
    await sleep(100);
  }
}

const timeOf = (r: GetFlowsResponse) => timestampToNs(r.time ?? {});
const isSorted = (list: GetFlowsResponse[]) => list.every((r, i) => i === 0 || timeOf(list[i - 1]) <= timeOf(r));

test('relay: two agents over etcd, flows merged in time order, status and nodes, one agent stopping and coming back', async (t) => {
  const underlay = await Underlay.create(t);
  const etcd = await underlay.startEtcd(t);
  const hubble = ['--hubble-listen-address', ':4244'];
  const nodes = [
    await TestNode.start(t, { nodeName: 'n1', nodeIp: '192.168.100.1', underlay, etcd, extraArgs: hubble }),
    await TestNode.start(t, { nodeName: 'n2', nodeIp: '192.168.100.2', underlay, etcd, extraArgs: hubble }),
  ];
  const pods: { server: Awaited<ReturnType<TestNode['addPod']>>; client: Awaited<ReturnType<TestNode['addPod']>> }[] = [];
  for (const node of nodes) {
    const server = await node.addPod(t, undefined, { app: 'web' });
    const client = await node.addPod(t, undefined, { app: 'client' });
    await echoServer(t, server.netns, 7100);
    pods.push({ server, client });
  }
  const traffic = async (i: number) => assert.ok(await echo(pods[i].client.netns, 'tcp', pods[i].server.endpoint.ipv4, 7100), `TCP echo on n${i + 1}`);
  await traffic(0);
  await traffic(1);
  await traffic(0);

  const relay = startRelay(t, underlay, etcd);
  const client = connectObserver(`unix:${relay.socket}`, { callTimeoutMs: 5000 });
  t.after(() => client.close());
  const both = await statusUntil(client, 'the relay connects to both agents', (s) => s.numConnectedNodes?.value === 2, relay.log);
  assert.equal(both.numUnavailableNodes?.value, 0);
  assert.deepEqual(both.unavailableNodes ?? [], []);
  assert.equal(both.maxFlows, String(2 * 4095), 'the buffers of both agents');
  assert.ok(Number(both.numFlows) > 0 && Number(both.seenFlows) >= Number(both.numFlows));

  const { nodes: listed = [] } = await client.getNodes();
  assert.deepEqual(
    listed.map((n) => ({ name: n.name, address: n.address, state: n.state })),
    [
      { name: 'n1', address: '192.168.100.1:4244', state: 'NODE_CONNECTED' },
      { name: 'n2', address: '192.168.100.2:4244', state: 'NODE_CONNECTED' },
    ],
  );
  assert.ok(listed.every((n) => n.maxFlows === '4095' && Number(n.numFlows) > 0));
  const { namespaces = [] } = await client.getNamespaces();
  assert.deepEqual(namespaces.map((n) => n.namespace), ['default']);

  // Everything both agents hold, merged by time, each flow under the node that saw it.
  const all = (await responses(client, {})).filter((r) => r.flow);
  assert.ok(isSorted(all), 'flows in time order across nodes');
  assert.deepEqual(new Set(all.map((r) => r.nodeName)), new Set(['n1', 'n2']));
  assert.ok(all.every((r) => r.flow?.nodeName === r.nodeName), 'node_name is the node the flow was seen on');
  for (const [i, node] of ['n1', 'n2'].entries()) {
    const server = pods[i].server.endpoint.ipv4;
    assert.ok(all.some((r) => r.nodeName === node && r.flow?.IP?.destination === server && r.flow.l4?.TCP?.destinationPort === 7100), `${node}'s echo traffic through the relay`);
    const direct = connectObserver(`unix:${nodes[i].hubbleSocket}`);
    t.after(() => direct.close());
    const own = (await responses(direct, { first: true, number: 20 })).filter((r) => r.flow);
    const relayed = all.filter((r) => r.nodeName === node).slice(0, 20);
    assert.deepEqual(relayed.map((r) => r.time), own.map((r) => r.time), `the relay passes ${node}'s flows on unchanged`);
  }
  // first/number take the first or last N of all nodes together, not N per node.
  const first = (await responses(client, { number: 6, first: true })).filter((r) => r.flow);
  assert.deepEqual(first.map((r) => [r.nodeName, r.time]), all.slice(0, 6).map((r) => [r.nodeName, r.time]));
  const last = (await responses(client, { number: 6 })).filter((r) => r.flow);
  assert.equal(last.length, 6);
  assert.ok(isSorted(last));
  assert.ok(last.every((r) => timeOf(r) >= timeOf(all.at(-6)!)), 'the latest six of both nodes');

  // A follow through the relay, kept open while n2's agent goes and comes back.
  const follow = client.getFlows({ follow: true });
  const followed: GetFlowsResponse[] = [];
  const following = (async () => {
    for await (const response of follow) followed.push(response);
  })();
  t.after(() => follow.cancel());

  await nodes[1].stopAgent('SIGTERM');
  const one = await statusUntil(client, 'n2 counts as unavailable once its agent stops', (s) => s.numConnectedNodes?.value === 1, relay.log);
  assert.equal(one.numUnavailableNodes?.value, 1);
  assert.deepEqual(one.unavailableNodes, ['n2']);
  assert.equal(one.maxFlows, '4095');
  const stateOf = async () => Object.fromEntries(((await client.getNodes()).nodes ?? []).map((n) => [n.name, n.state]));
  assert.deepEqual(await stateOf(), { n1: 'NODE_CONNECTED', n2: 'NODE_UNAVAILABLE' });
  const during = await responses(client, { number: 50 });
  assert.deepEqual(during[0]?.nodeStatus, { stateChange: 'NODE_UNAVAILABLE', nodeNames: ['n2'], message: 'not answering; their flows are missing' });
  const duringFlows = during.filter((r) => r.flow);
  assert.ok(duringFlows.length > 0 && duringFlows.every((r) => r.nodeName === 'n1'), 'only n1 answers');
  const n1Direct = connectObserver(`unix:${nodes[0].hubbleSocket}`);
  t.after(() => n1Direct.close());
  const n1Own = (await responses(n1Direct, { number: 50 })).filter((r) => r.flow);
  assert.deepEqual(duringFlows.map((r) => r.time), n1Own.map((r) => r.time), "n1's flows, all of them");
  const stoppedAt = BigInt(Date.now()) * 1_000_000n;
  await traffic(0);
  const deadline = Date.now() + 10_000;
  while (!followed.some((r) => r.nodeName === 'n1' && timeOf(r) > stoppedAt)) {
    assert.ok(Date.now() < deadline, `the follow goes on with n1's flows after n2 stopped:\n${relay.log().slice(-3000)}`);
    await sleep(100);
  }
  assert.ok(followed.some((r) => r.nodeStatus?.stateChange === 'NODE_UNAVAILABLE' && r.nodeStatus.nodeNames?.includes('n2')), 'the follow was told n2 went away');

  await nodes[1].startAgent();
  await statusUntil(client, 'n2 is connected again after its agent restarts', (s) => s.numConnectedNodes?.value === 2 && s.numUnavailableNodes?.value === 0, relay.log);
  assert.deepEqual(await stateOf(), { n1: 'NODE_CONNECTED', n2: 'NODE_CONNECTED' });
  const restartedAt = BigInt(Date.now()) * 1_000_000n;
  await traffic(1);
  while (!followed.some((r) => r.nodeName === 'n2' && r.flow && timeOf(r) > restartedAt)) {
    assert.ok(Date.now() < deadline + 10_000, `the same follow picks n2 up again:\n${relay.log().slice(-3000)}`);
    await sleep(100);
  }
  follow.cancel();
  await following;
  const followedFlows = followed.filter((r) => r.flow);
  assert.ok(isSorted(followedFlows), 'followed flows in time order');

  // The CLI against the relay, as against an agent.
  const observed = await cli(nodes[0], 'observe', '--server', `unix:${relay.socket}`, '--last', '200', '-o', 'json');
  assert.equal(observed.code, 0, observed.stderr);
  const lines = observed.stdout.trim().split('\n').map((line) => JSON.parse(line) as { flow?: { node_name?: string }; node_name?: string });
  assert.deepEqual(new Set(lines.filter((l) => l.flow).map((l) => l.flow?.node_name)), new Set(['n1', 'n2']), observed.stdout.slice(0, 2000));

  // An agent killed outright withdraws nothing from the store: the relay finds it silent instead.
  await nodes[0].stopAgent('SIGKILL');
  const killed = await statusUntil(client, 'n1 counts as unavailable once its agent is killed', (st) => st.numConnectedNodes?.value === 1, relay.log);
  assert.deepEqual(killed.unavailableNodes, ['n1']);
  const killedAt = BigInt(Date.now()) * 1_000_000n;
  await traffic(1);
  const answerDeadline = Date.now() + 10_000;
  let afterKill: GetFlowsResponse[] = [];
  // The echo's flows reach n2's buffer a moment after the echo ends: wait for them rather than count on them.
  while (!afterKill.some((r) => timeOf(r) > killedAt)) {
    assert.ok(Date.now() < answerDeadline, `n2 still answers:\n${relay.log().slice(-3000)}`);
    await sleep(100);
    afterKill = (await responses(client, { number: 20 })).filter((r) => r.flow);
  }
  assert.ok(afterKill.every((r) => r.nodeName === 'n2'), 'only n2 answers once n1 is killed');
});

test('relay: a node that published a loopback address is not mistaken for the agent that answers there', async (t) => {
  const underlay = await Underlay.create(t);
  const etcd = await underlay.startEtcd(t);
  const n1 = await TestNode.start(t, { nodeName: 'n1', nodeIp: '192.168.100.1', underlay, etcd, extraArgs: ['--hubble-listen-address', ':4244'] });
  await TestNode.start(t, { nodeName: 'n2', nodeIp: '192.168.100.2', underlay, etcd, extraArgs: ['--hubble-listen-address', 'localhost:4244'] });
  // On n1, n2's published localhost:4244 reaches n1's own agent.
  const relay = startRelay(t, underlay, etcd, n1.netns);
  const client = connectObserver(`unix:${relay.socket}`, { callTimeoutMs: 5000 });
  t.after(() => client.close());
  const status = await statusUntil(client, 'n1 connected, n2 not', (s) => s.numConnectedNodes?.value === 1 && s.numUnavailableNodes?.value === 1, relay.log);
  assert.deepEqual(status.unavailableNodes, ['n2']);
  assert.equal(status.maxFlows, '4095', "n1's buffer counted once");
  const nodes = (await client.getNodes()).nodes ?? [];
  assert.deepEqual(nodes.map((n) => [n.name, n.address, n.state]), [
    ['n1', '192.168.100.1:4244', 'NODE_CONNECTED'],
    ['n2', 'localhost:4244', 'NODE_UNAVAILABLE'],
  ]);
  assert.match(relay.log(), /localhost:4244 answers as n1, not n2/);
});

/** `ciliate <args>` inside `netns` (none: here), as a user there would run it; never rejects. */
function cliIn(netns: string | undefined, args: string[], timeoutMs = 20_000): Promise<{ code: number; stdout: string; stderr: string }> {
  const [command, ...prefix] = netns ? ['nsenter', `--net=/run/netns/${netns}`, process.execPath] : [process.execPath];
  return new Promise((resolve) => {
    execFile(command, [...prefix, CLI, ...args], { encoding: 'utf8', timeout: timeoutMs }, (error, stdout, stderr) => {
      resolve({ code: error ? Number((error as { code?: number }).code ?? 1) || 1 : 0, stdout, stderr });
    });
  });
}

test('relay over TLS: mTLS to an agent that demands it, and its own listener TLS with client certificates; ciliate observe with the CA gets flows, others are refused', async (t) => {
  const RELAY = '192.168.100.254';
  const pki = await createTestPki(t, ['192.168.100.1', RELAY]);
  const underlay = await Underlay.create(t);
  const etcd = await underlay.startEtcd(t, RELAY);
  const agentTls = ['--hubble-tls-cert-file', pki.server.certFile, '--hubble-tls-key-file', pki.server.keyFile, '--hubble-tls-client-ca-files', pki.caFile];
  const node = await TestNode.start(t, { nodeName: 'n1', nodeIp: '192.168.100.1', underlay, etcd, extraArgs: ['--hubble-listen-address', ':4244', ...agentTls] });
  const server = await node.addPod(t, undefined, { app: 'web' });
  const client = await node.addPod(t, undefined, { app: 'client' });
  await echoServer(t, server.netns, 7100);
  assert.ok(await echo(client.netns, 'tcp', server.endpoint.ipv4, 7100));

  const relay = startRelay(t, underlay, etcd, underlay.netns, [
    '--listen-address', `${RELAY}:4245`,
    '--tls-relay-server-cert-file', pki.server.certFile, '--tls-relay-server-key-file', pki.server.keyFile, '--tls-relay-client-ca-files', pki.caFile,
    '--tls-hubble-server-ca-files', pki.caFile, '--tls-hubble-client-cert-file', pki.client.certFile, '--tls-hubble-client-key-file', pki.client.keyFile,
  ]);
  const observe = (...args: string[]) => cliIn(underlay.netns, ['observe', '--server', `${RELAY}:4245`, '--last', '100', '-o', 'json', ...args]);
  const withCert = ['--tls-client-cert-file', pki.client.certFile, '--tls-client-key-file', pki.client.keyFile];

  // The relay dials the agent over mTLS (the agent refuses anything else), so flows mean both ends work.
  const deadline = Date.now() + 20_000;
  let trusted = await observe('--tls', '--tls-ca-cert-files', pki.caFile, ...withCert);
  while (!trusted.stdout.includes('"destination_port":7100')) {
    assert.ok(Date.now() < deadline, `flows through the TLS relay: ${trusted.stderr}\nrelay log:\n${relay.log().slice(-3000)}`);
    await sleep(200);
    trusted = await observe('--tls', '--tls-ca-cert-files', pki.caFile, ...withCert);
  }
  assert.equal(trusted.code, 0, trusted.stderr);
  const flows = trusted.stdout.trim().split('\n').map((line) => JSON.parse(line) as { flow?: { node_name?: string } });
  assert.ok(flows.some((r) => r.flow?.node_name === 'n1'), 'the flows are n1\'s');
  assert.match(relay.log(), /"tls":"mtls"/, 'the relay says its listener requires client certificates');

  const plaintext = await observe();
  assert.notEqual(plaintext.code, 0, 'a plaintext client is refused');
  assert.doesNotMatch(plaintext.stdout, /"flow"/);
  const wrongCa = await observe('--tls-ca-cert-files', pki.other.caFile, ...withCert);
  assert.notEqual(wrongCa.code, 0, 'a client trusting another CA does not accept the relay');
  assert.doesNotMatch(wrongCa.stdout, /"flow"/);
  const noCert = await observe('--tls-ca-cert-files', pki.caFile);
  assert.notEqual(noCert.code, 0, 'without a client certificate the relay refuses the client');
  assert.doesNotMatch(noCert.stdout, /"flow"/);
  const strangerCert = await observe('--tls-ca-cert-files', pki.caFile, '--tls-client-cert-file', pki.other.certFile, '--tls-client-key-file', pki.other.keyFile);
  assert.notEqual(strangerCert.code, 0, 'a client certificate of another CA is refused');
  // Not verifying the server still encrypts and still needs the client certificate.
  const insecure = await observe('--tls-allow-insecure', ...withCert);
  assert.equal(insecure.code, 0, insecure.stderr);
  assert.match(insecure.stdout, /"flow"/);

  // A relay told to dial agents in plaintext only does not reach this one, and says why.
  const plainRelay = startRelay(t, underlay, etcd, underlay.netns, ['--listen-address', '', '--disable-client-tls']);
  const plainClient = connectObserver(`unix:${plainRelay.socket}`, { callTimeoutMs: 5000 });
  t.after(() => plainClient.close());
  const status = await statusUntil(plainClient, 'n1 unavailable to a relay without client TLS', (st) => st.numUnavailableNodes?.value === 1, plainRelay.log);
  assert.deepEqual(status.unavailableNodes, ['n1']);
  assert.match(plainRelay.log(), /192\.168\.100\.1:4244 serves TLS only, and client TLS is off \(--disable-client-tls\)/);
  // The first relay serves TCP beyond loopback with TLS: no warning. This one serves no TCP at all.
  assert.doesNotMatch(relay.log() + plainRelay.log(), /plaintext beyond loopback/);
  const exposed = startRelay(t, underlay, etcd, underlay.netns, ['--listen-address', `${RELAY}:4246`, '--tls-hubble-server-ca-files', pki.caFile]);
  const warned = Date.now() + 15_000;
  while (!/relay: Observer API listening/.test(exposed.log())) {
    assert.ok(Date.now() < warned, `the plaintext relay starts:\n${exposed.log()}`);
    await sleep(100);
  }
  assert.match(exposed.log(), /serving flows in plaintext beyond loopback/, 'a plaintext listener on the underlay is warned about');
});

test('relay TLS settings: a bad file is named with its flag before the relay connects anywhere', async (t) => {
  const pki = await createTestPki(t);
  // An etcd nobody listens on: the relay must fail on its certificates before it tries it.
  const relay = (...args: string[]) => cliIn(undefined, ['relay', '--store', 'etcd', '--etcd-endpoints', 'http://127.0.0.1:9', ...args], 10_000);
  const missing = join(pki.dir, 'nope.crt');
  const cases: [string[], RegExp][] = [
    [['--tls-relay-server-cert-file', missing, '--tls-relay-server-key-file', pki.server.keyFile], new RegExp(`--tls-relay-server-cert-file ${missing}: cannot be read \\(ENOENT\\)`)],
    [['--tls-relay-server-cert-file', pki.server.certFile, '--tls-relay-server-key-file', pki.client.keyFile], new RegExp(`--tls-relay-server-key-file ${pki.client.keyFile}: is not the key of --tls-relay-server-cert-file`)],
    [['--tls-relay-server-cert-file', pki.server.keyFile, '--tls-relay-server-key-file', pki.server.keyFile], new RegExp(`--tls-relay-server-cert-file ${pki.server.keyFile}: holds no PEM certificate`)],
    [['--tls-relay-server-cert-file', pki.server.certFile, '--tls-relay-server-key-file', pki.server.keyFile, '--tls-relay-client-ca-files', `${pki.caFile},${missing}`], new RegExp(`--tls-relay-client-ca-files ${missing}: cannot be read`)],
    [['--tls-relay-client-ca-files', pki.caFile], /TLS needs both --tls-relay-server-cert-file and --tls-relay-server-key-file \(--tls-relay-client-ca-files asks for client certificates over TLS\)/],
    [['--tls-hubble-server-ca-files', missing], new RegExp(`--tls-hubble-server-ca-files ${missing}: cannot be read`)],
    [['--tls-hubble-client-cert-file', pki.client.certFile], /--tls-hubble-client-cert-file and --tls-hubble-client-key-file go together/],
    [['--disable-server-tls', '--tls-relay-server-cert-file', pki.server.certFile, '--tls-relay-server-key-file', pki.server.keyFile], /--disable-server-tls contradicts/],
  ];
  for (const [args, message] of cases) {
    const started = Date.now();
    const result = await relay(...args);
    assert.notEqual(result.code, 0, `${args.join(' ')} fails`);
    assert.match(result.stderr, message, args.join(' '));
    assert.ok(Date.now() - started < 8000, 'at once, not after trying the store');
  }
});
