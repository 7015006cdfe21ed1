import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { MonitorAggregation, openMonitorConfigMap, TcpFlag, writeMonitorConfig } from '../src/datapath/index.ts';
import { connectObserver, GrpcStatus, timestampToNs, type Flow, type GetFlowsRequest, type GetFlowsResponse, type ObserverClient } from '../src/observer/index.ts';
import { ROOT, TestNode, Underlay, cli, echo, echoServer, httpRequest, httpServer, inNs, ping, sleep, starWars } from './support/cluster.ts';

const POLICIES = join(import.meta.dirname, 'policies');

function observer(t: TestContext, node: TestNode): ObserverClient {
  const client = connectObserver(`unix:${node.hubbleSocket}`);
  t.after(() => client.close());
  return client;
}

async function responses(client: ObserverClient, request: GetFlowsRequest): Promise<GetFlowsResponse[]> {
  const out: GetFlowsResponse[] = [];
  for await (const response of client.getFlows(request)) out.push(response);
  return out;
}

async function flows(client: ObserverClient, request: GetFlowsRequest): Promise<Flow[]> {
  return (await responses(client, request)).flatMap((r) => (r.flow ? [r.flow] : []));
}

test('Star Wars: flows name the pods, identities, labels, verdicts, drop reasons and the deciding policy; filters, ranges, follow, status, ciliate observe', async (t) => {
  const node = await TestNode.start(t);
  const client = observer(t, node);
  const { deathstar, tiefighter, xwing, revision, landing } = await starWars(t, node);

  assert.equal((await httpRequest(tiefighter.netns, 'POST', landing)).status, 200);
  assert.equal((await httpRequest(xwing.netns, 'POST', landing, 1000)).error, 'timeout');
  await sleep(200);

  const all = await flows(client, {});
  const ds = deathstar.endpoint.ipv4;
  const toDeathstar80 = (f: Flow) => f.IP?.destination === ds && f.l4?.TCP?.destinationPort === 80;

  // The xwing's SYNs: a denied verdict at the Death Star's ingress, then the drop.
  const xwingDrops = all.filter((f) => f.verdict === 'DROPPED' && f.eventType?.type === 1 && f.IP?.source === xwing.endpoint.ipv4 && toDeathstar80(f));
  assert.ok(xwingDrops.length > 0, `the xwing's packets to the Death Star are dropped:\n${JSON.stringify(all.slice(-20), null, 1)}`);
  const drop = xwingDrops[0];
  assert.equal(drop.dropReason, 133);
  assert.equal(drop.dropReasonDesc, 'POLICY_DENIED');
  assert.equal(drop.trafficDirection, 'INGRESS');
  assert.equal(drop.l4?.TCP?.flags?.SYN, true);
  assert.equal(drop.nodeName, 'n1');
  assert.equal(drop.Type, 'L3_L4');
  assert.deepEqual(drop.source && { ID: drop.source.ID, identity: drop.source.identity, namespace: drop.source.namespace, podName: drop.source.podName }, {
    ID: xwing.endpoint.id,
    identity: xwing.endpoint.identity,
    namespace: 'default',
    podName: 'xwing',
  });
  assert.ok(drop.source?.labels?.includes('k8s:org=alliance') && drop.source.labels.includes('k8s:io.kubernetes.pod.namespace=default'), JSON.stringify(drop.source?.labels));
  assert.equal(drop.destination?.podName, 'deathstar');
  assert.equal(drop.destination?.identity, deathstar.endpoint.identity);
  assert.ok(drop.destination?.labels?.includes('k8s:class=deathstar'));
  assert.equal(drop.isReply?.value, false);

  const denied = all.find((f) => f.eventType?.type === 5 && f.trafficDirection === 'INGRESS' && f.IP?.source === xwing.endpoint.ipv4 && toDeathstar80(f));
  assert.ok(denied, 'a policy verdict for the xwing');
  assert.equal(denied.verdict, 'DROPPED');
  assert.equal(denied.dropReasonDesc, 'POLICY_DENIED');
  assert.equal(denied.trafficDirection, 'INGRESS');
  assert.equal(denied.ingressAllowedBy, undefined, 'denied by default: no rule allowed it');

  // The tiefighter: allowed by rule1 (named, with the revision enforced), then forwarded both ways.
  const allowed = all.find((f) => f.eventType?.type === 5 && f.trafficDirection === 'INGRESS' && f.IP?.source === tiefighter.endpoint.ipv4 && toDeathstar80(f));
  assert.ok(allowed, 'a policy verdict for the tiefighter');
  assert.equal(allowed.verdict, 'FORWARDED');
  assert.equal(allowed.policyMatchType, 2, 'L3-L4');
  assert.deepEqual(allowed.ingressAllowedBy?.map((p) => ({ name: p.name, namespace: p.namespace, kind: p.kind })), [{ name: 'rule1', namespace: 'default', kind: 'CiliumNetworkPolicy' }]);
  assert.ok(Number(allowed.ingressAllowedBy?.[0].revision) >= Number(revision));
  const forwarded = all.filter((f) => f.verdict === 'FORWARDED' && f.eventType?.type === 4 && f.source?.podName === 'tiefighter' && f.destination?.podName === 'deathstar');
  assert.ok(
    forwarded.some((f) => f.traceObservationPoint === 'TO_ENDPOINT' && f.l4?.TCP?.flags?.SYN && f.isReply?.value === false && f.trafficDirection === 'INGRESS'),
    `the SYN reaches the Death Star:\n${JSON.stringify(forwarded.slice(0, 3), null, 1)}`,
  );
  const replies = all.filter((f) => f.eventType?.type === 4 && f.isReply?.value === true && f.source?.podName === 'deathstar' && f.destination?.podName === 'tiefighter');
  assert.ok(replies.some((f) => f.l4?.TCP?.flags?.SYN && f.l4.TCP.flags.ACK), 'the SYN-ACK comes back as a reply');
  assert.ok(!all.some((f) => f.verdict === 'FORWARDED' && f.source?.podName === 'xwing' && f.destination?.podName === 'deathstar' && f.eventType?.type === 4), 'nothing of the xwing is forwarded to the Death Star');

  // Filters the way hubble sends them: alone, combined within one filter (AND), across
  // filters (OR), and minus a blacklist.
  const only = async (request: GetFlowsRequest, check: (f: Flow) => boolean, what: string) => {
    const got = await flows(client, request);
    assert.ok(got.length > 0, `${what}: some flows`);
    assert.deepEqual(got.filter((f) => !check(f)), [], `${what}: only matching flows`);
    const expected = all.filter(check).length;
    assert.ok(got.length >= expected, `${what}: every matching flow of the buffer (${got.length} < ${expected})`);
    return got;
  };
  await only({ whitelist: [{ verdict: ['DROPPED'] }] }, (f) => f.verdict === 'DROPPED', '--verdict DROPPED');
  await only({ whitelist: [{ sourcePod: ['default/xwing'] }] }, (f) => f.source?.podName === 'xwing', '--from-pod default/xwing');
  await only({ whitelist: [{ destinationPod: ['default/death'] }] }, (f) => f.destination?.podName === 'deathstar', 'a pod name prefix');
  await only({ whitelist: [{ sourcePod: ['default/'] }] }, (f) => f.source?.namespace === 'default', 'a namespace');
  await only({ whitelist: [{ sourceIp: [tiefighter.endpoint.ipv4] }] }, (f) => f.IP?.source === tiefighter.endpoint.ipv4, '--from-ip');
  const net24 = ds.split('.').slice(0, 3).join('.');
  await only({ whitelist: [{ destinationIp: [`${net24}.0/24`] }] }, (f) => f.IP?.destination?.startsWith(`${net24}.`) === true, '--to-ip CIDR');
  await only({ whitelist: [{ sourceLabel: ['k8s:org=alliance'] }] }, (f) => f.source?.labels?.includes('k8s:org=alliance') === true, '--from-label');
  await only({ whitelist: [{ destinationLabel: ['class in (deathstar, tiefighter),!nonexistent'] }] }, (f) => ['deathstar', 'tiefighter'].includes(f.destination?.podName ?? ''), 'label set and negation');
  await only({ whitelist: [{ sourceIdentity: [xwing.endpoint.identity] }] }, (f) => f.source?.identity === xwing.endpoint.identity, '--from-identity');
  await only({ whitelist: [{ eventType: [{ type: 5 }] }] }, (f) => f.eventType?.type === 5, '--type policy-verdict');
  await only({ whitelist: [{ eventType: [{ type: 4, matchSubType: true, subType: 0 }] }] }, (f) => f.traceObservationPoint === 'TO_ENDPOINT', '--type trace:to-endpoint');
  await only({ whitelist: [{ dropReasonDesc: ['POLICY_DENIED'] }] }, (f) => f.dropReason === 133, '--drop-reason-desc');
  await only({ whitelist: [{ protocol: ['TCP'] }] }, (f) => f.l4?.TCP !== undefined, '--protocol tcp');
  await only({ whitelist: [{ destinationPort: ['80'] }] }, (f) => f.l4?.TCP?.destinationPort === 80, '--to-port 80');
  await only({ whitelist: [{ sourcePort: ['80'] }, { destinationPort: ['80'] }] }, (f) => f.l4?.TCP?.destinationPort === 80 || f.l4?.TCP?.sourcePort === 80, '--port 80 (two filters, ORed)');
  await only({ whitelist: [{ tcpFlags: [{ SYN: true, ACK: true }] }] }, (f) => f.l4?.TCP?.flags?.SYN === true && f.l4.TCP.flags.ACK === true, '--tcp-flags SYN,ACK');
  await only({ whitelist: [{ trafficDirection: ['EGRESS'] }] }, (f) => f.trafficDirection === 'EGRESS', '--traffic-direction egress');
  await only({ whitelist: [{ reply: [true] }] }, (f) => f.isReply?.value === true, 'replies');
  await only({ whitelist: [{ nodeName: ['default/n*'] }] }, () => true, '--node-name with a wildcard');
  const combined = await only(
    { whitelist: [{ sourcePod: ['default/xwing'], verdict: ['DROPPED'], destinationPort: ['80'] }] },
    (f) => f.source?.podName === 'xwing' && f.verdict === 'DROPPED' && f.l4?.TCP?.destinationPort === 80,
    'pod AND verdict AND port',
  );
  assert.ok(combined.every((f) => f.dropReasonDesc === 'POLICY_DENIED'));
  await only(
    { whitelist: [{ destinationPod: ['default/deathstar'] }], blacklist: [{ verdict: ['DROPPED'] }, { sourcePod: ['default/xwing'] }] },
    (f) => f.destination?.podName === 'deathstar' && f.verdict !== 'DROPPED' && f.source?.podName !== 'xwing',
    'whitelist minus blacklist',
  );
  assert.deepEqual(await flows(client, { whitelist: [{ nodeName: ['other-node'] }] }), [], 'another node: nothing');
  assert.deepEqual(await flows(client, { whitelist: [{ httpMethod: ['GET'] }] }), [], 'L7 filters: no L7 flows here');

  // Malformed requests are refused, naming the field.
  const refused = async (request: GetFlowsRequest, field: RegExp) => {
    await assert.rejects(responses(client, request), (error: { code?: number; details?: string }) => {
      assert.equal(error.code, GrpcStatus.INVALID_ARGUMENT, String(error.details));
      assert.match(error.details ?? '', field);
      return true;
    });
  };
  await refused({ whitelist: [{ sourceIp: ['10.0.0.0/99'] }] }, /^whitelist\[0\]\.source_ip\[0\]: not an IP address or CIDR/);
  await refused({ blacklist: [{}, { verdict: [42] }] }, /^blacklist\[1\]\.verdict\[0\]: unknown value 42/);
  await refused({ whitelist: [{ protocol: ['tcpp'] }] }, /^whitelist\[0\]\.protocol\[0\]: unknown protocol "tcpp"/);
  await refused({ whitelist: [{ destinationPort: ['http'] }] }, /^whitelist\[0\]\.destination_port\[0\]: not a port number/);
  await refused({ first: true, follow: true }, /^first: /);

  // number, first, since, until.
  const last3 = await flows(client, { number: 3 });
  assert.deepEqual(last3.map((f) => f.uuid), all.slice(-3).map((f) => f.uuid), 'number: the last three, oldest first');
  const first2 = await flows(client, { number: 2, first: true });
  assert.deepEqual(first2.map((f) => f.uuid), all.slice(0, 2).map((f) => f.uuid), 'first: the first two');
  const middle = all[Math.floor(all.length / 2)];
  const at = (f: Flow) => timestampToNs(f.time!);
  const since = await flows(client, { since: middle.time });
  assert.ok(since.some((f) => f.uuid === middle.uuid) && since.every((f) => at(f) >= at(middle)), 'since: from the middle on');
  const until = await flows(client, { until: middle.time });
  assert.ok(until.some((f) => f.uuid === middle.uuid) && until.every((f) => at(f) <= at(middle)), 'until: up to the middle');
  const window = await flows(client, { since: middle.time, until: middle.time });
  assert.ok(window.every((f) => at(f) === at(middle)) && window.some((f) => f.uuid === middle.uuid), 'since and until together');

  // follow: the last matching flow first, then new traffic as it happens.
  const stream = client.getFlows({ number: 1, follow: true, whitelist: [{ sourcePod: ['default/tiefighter'], destinationPort: ['80'] }] });
  const seen: Flow[] = [];
  let backlogSent: () => void = () => {};
  const backlog = new Promise<void>((resolve) => (backlogSent = resolve));
  const followed = (async () => {
    for await (const response of stream) {
      if (response.flow) seen.push(response.flow);
      backlogSent();
      if (seen.length >= 3) stream.cancel();
    }
  })();
  // The last flow first: then the stream is open and what follows is new.
  await Promise.race([backlog, sleep(10_000)]);
  assert.equal(seen.length, 1, 'the backlog: one flow');
  assert.equal((await httpRequest(tiefighter.netns, 'POST', landing)).status, 200);
  await Promise.race([followed, sleep(5000)]);
  stream.cancel();
  await followed;
  assert.ok(seen.length >= 3, `follow delivered the backlog's last flow and then new ones (${seen.length})`);
  assert.ok(seen.every((f) => f.source?.podName === 'tiefighter' && f.l4?.TCP?.destinationPort === 80));
  assert.ok(seen.slice(1).some((f) => !all.some((old) => old.uuid === f.uuid)), 'new flows arrived');

  // The server's status, nodes and namespaces; nothing lost on a quiet node.
  const status = await client.serverStatus();
  assert.equal(status.maxFlows, '4095');
  assert.ok(Number(status.seenFlows) >= all.length && Number(status.numFlows) > 0);
  assert.deepEqual(status.numConnectedNodes, { value: 1 });
  assert.deepEqual(status.ciliateLostEvents?.map((l) => [l.source, l.numEventsLost ?? '0']), [['PERF_EVENT_RING_BUFFER', '0'], ['OBSERVER_EVENTS_QUEUE', '0'], ['HUBBLE_RING_BUFFER', '0']]);
  const nodes = await client.getNodes();
  assert.deepEqual(nodes.nodes?.map((n) => [n.name, n.state, n.maxFlows]), [['n1', 'NODE_CONNECTED', '4095']]);
  assert.deepEqual((await client.getNamespaces()).namespaces?.map((n) => n.namespace), ['default']);

  // ciliate observe, as hubble observe prints it.
  const compact = await cli(node, 'observe', '--last', '50', '--verdict', 'DROPPED', '--from-pod', 'default/xwing', '--to-port', '80');
  assert.equal(compact.code, 0, compact.stderr);
  const lines = compact.stdout.trim().split('\n');
  assert.ok(lines.length > 0 && lines.length <= 50);
  const line = new RegExp(
    String.raw`^[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d\.\d{3}: default/xwing:\d+ \(ID:${xwing.endpoint.identity}\) -> default/deathstar:80 \(ID:${deathstar.endpoint.identity}\) (Policy denied DROPPED|policy-verdict:none INGRESS DENIED) \(TCP Flags: SYN\)$`,
  );
  for (const l of lines) assert.match(l, line);
  const json = await cli(node, 'observe', '--last', '5', '--type', 'policy-verdict', '--to-pod', 'default/deathstar', '-o', 'json');
  assert.equal(json.code, 0, json.stderr);
  const parsed = json.stdout.trim().split('\n').map((l) => JSON.parse(l) as { flow: { event_type: { type: number }; node_name: string; time: string; is_reply: boolean } });
  assert.ok(parsed.length > 0 && parsed.length <= 5);
  for (const r of parsed) {
    assert.equal(r.flow.event_type.type, 5);
    assert.equal(r.flow.node_name, 'n1');
    assert.equal(typeof r.flow.is_reply, 'boolean');
    assert.match(r.flow.time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/);
  }
  // --follow prints new flows as they come and ends cleanly on Ctrl-C.
  const follower = spawn(process.execPath, [join(ROOT, 'src', 'cli', 'main.ts'), 'observe', '-f', '--last', '1', '--from-pod', 'default/tiefighter', '--socket', node.socket], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.after(() => {
    if (follower.exitCode === null && follower.signalCode === null) follower.kill('SIGKILL');
  });
  let printed = '';
  follower.stdout.on('data', (chunk: Buffer) => (printed += chunk.toString()));
  follower.stderr.on('data', (chunk: Buffer) => (printed += chunk.toString()));
  const tiefighterLine = /default\/tiefighter:\d+ \(ID:\d+\) -> /g;
  const linesPrinted = () => printed.match(tiefighterLine)?.length ?? 0;
  // The last flow first: then the stream is open and what follows is new.
  for (let i = 0; i < 150 && linesPrinted() === 0; i++) await sleep(100);
  assert.equal(linesPrinted(), 1, `observe -f --last 1 prints the last flow: ${printed}`);
  assert.equal((await httpRequest(tiefighter.netns, 'POST', landing)).status, 200);
  for (let i = 0; i < 50 && linesPrinted() < 2; i++) await sleep(100);
  assert.ok(linesPrinted() >= 2, `observe -f prints new flows as they come: ${printed}`);
  const exited = new Promise<number | null>((resolve) => follower.once('exit', (code) => resolve(code)));
  follower.kill('SIGINT');
  assert.equal(await exited, 0, `observe -f exits 0 on Ctrl-C: ${printed}`);

  const bad = await cli(node, 'observe', '--to-ip', '10.0.0.0/99');
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /destination_ip\[0\]/);
});

test('loss is counted and reported, never hidden, under a burst bigger than the buffers', async (t) => {
  const node = await TestNode.start(t, { extraArgs: ['--hubble-buffer-capacity', '31', '--hubble-event-queue-size', '8'] });
  const client = observer(t, node);
  const a = await node.addPod(t, 'burst-a', { app: 'a' });
  const b = await node.addPod(t, 'burst-b', { app: 'b' });
  // b takes nothing from a: every echo of the flood is a policy verdict and a drop, which monitor
  // aggregation never folds away (forwarded echoes of one ping are one tracked flow, and quiet).
  const policy = join(node.dir, 'burst-deny.yaml');
  writeFileSync(
    policy,
    'apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: { name: burst-deny }\nspec:\n  endpointSelector: { matchLabels: { app: b } }\n  ingress:\n    - fromEndpoints: [{ matchLabels: { app: nobody } }]\n',
  );
  assert.equal((await cli(node, 'policy', 'import', policy)).code, 0);
  // A follower that stops reading: the server's writes back up and the 31-flow buffer
  // overtakes its reader.
  const stream = client.getFlows({ follow: true });
  const iterator = stream[Symbol.asyncIterator]();
  const first = iterator.next();
  await sleep(200);
  // A flood ping: thousands of packets, several events each, many per drain of the ring.
  await inNs(a.netns, 'ping', ['-f', '-i', '0.0005', '-c', '1500', '-q', b.endpoint.ipv4], 60_000).catch(() => undefined);
  await sleep(500);
  let lostToReader = 0n;
  const reader = (async () => {
    for (let next = await first; !next.done; next = await iterator.next()) {
      if (next.value.lostEvents?.source === 'HUBBLE_RING_BUFFER') lostToReader += BigInt(next.value.lostEvents.numEventsLost);
    }
  })();
  await sleep(1500);
  stream.cancel();
  await reader;

  const status = await client.serverStatus();
  const lost = Object.fromEntries((status.ciliateLostEvents ?? []).map((l) => [l.source, BigInt(l.numEventsLost ?? '0')]));
  assert.equal(status.maxFlows, '31');
  assert.ok(Number(status.numFlows) > 0 && Number(status.numFlows) <= 31, `the buffer holds at most its capacity, lost-event markers taking slots too (${status.numFlows})`);
  assert.ok(Number(status.seenFlows) > 31, `more flows than the buffer holds went through it (${status.seenFlows})`);
  // Whether the 8-record decode queue overflows depends on how the ring's records arrive per drain
  // (src/observer/observer.test.ts overflows it deterministically); the flow buffer always does.
  assert.ok(lost.HUBBLE_RING_BUFFER > 0n, `the 31-flow buffer overflowed under its stalled reader and says so: ${JSON.stringify(status.ciliateLostEvents)}`);
  assert.equal(lost.HUBBLE_RING_BUFFER, lostToReader, 'what followers missed is what the server counts');
  const agentStatus = await node.client.get<{ observer: { lost: { decodeQueue: string; flowBuffer: string; kernelRing: string } } }>('/v1/status');
  assert.equal(agentStatus.observer.lost.decodeQueue, String(lost.OBSERVER_EVENTS_QUEUE), "the agent's status reports the same loss");
  assert.equal(agentStatus.observer.lost.flowBuffer, String(lost.HUBBLE_RING_BUFFER));
});

test("another node's pods are named in flows too: pod, namespace and identity through the shared store", async (t) => {
  const underlay = await Underlay.create(t);
  const etcd = await underlay.startEtcd(t);
  const n1 = await TestNode.start(t, { nodeName: 'n1', nodeIp: '192.168.100.1', underlay, etcd, routingMode: 'tunnel' });
  const n2 = await TestNode.start(t, { nodeName: 'n2', nodeIp: '192.168.100.2', underlay, etcd, routingMode: 'tunnel' });
  const deathstar = await n1.addPod(t, 'deathstar', { org: 'empire', class: 'deathstar' });
  const xwing = await n2.addPod(t, 'xwing', { org: 'alliance', class: 'xwing' }, 'rebels');
  await httpServer(t, deathstar.netns, 80, { 'POST /v1/request-landing': 'Ship landed' });
  const imported = await cli(n1, 'policy', 'import', join(POLICIES, 'starwars-rule1.yaml'));
  assert.equal(imported.code, 0, imported.stderr);
  assert.equal((await cli(n1, 'policy', 'wait', /revision: (\d+)/.exec(imported.stdout)![1], '--timeout', '20')).code, 0);
  assert.equal((await httpRequest(xwing.netns, 'POST', `http://${deathstar.endpoint.ipv4}/v1/request-landing`, 1000)).error, 'timeout');
  await sleep(200);

  const client = observer(t, n1);
  const dropped = await flows(client, { whitelist: [{ sourcePod: ['rebels/xwing'], verdict: ['DROPPED'], destinationPort: ['80'] }] });
  assert.ok(dropped.length > 0, "the Death Star's node names the xwing of the other node");
  for (const f of dropped) {
    assert.deepEqual(f.source && { ID: f.source.ID, identity: f.source.identity, namespace: f.source.namespace, podName: f.source.podName }, {
      ID: undefined,
      identity: xwing.endpoint.identity,
      namespace: 'rebels',
      podName: 'xwing',
    });
    assert.ok(f.source?.labels?.includes('k8s:org=alliance'));
    assert.equal(f.destination?.podName, 'deathstar');
    assert.equal(f.nodeName, 'n1');
  }
  assert.ok(dropped.some((f) => f.dropReasonDesc === 'POLICY_DENIED' && f.trafficDirection === 'INGRESS'));
  assert.deepEqual((await client.getNamespaces()).namespaces?.map((n) => n.namespace), ['default', 'rebels']);
});

test('workloads: given when an endpoint is added, they name both ends of its flows on both nodes and label the Hubble metrics', async (t) => {
  const underlay = await Underlay.create(t);
  const etcd = await underlay.startEtcd(t);
  const HUBBLE = '127.0.0.1:19965';
  const metrics = ['--hubble-metrics-server', HUBBLE, '--hubble-metrics', 'flow:sourceContext=workload;destinationContext=workload-name'];
  const n1 = await TestNode.start(t, { nodeName: 'n1', nodeIp: '192.168.100.1', underlay, etcd, routingMode: 'tunnel', extraArgs: metrics });
  const n2 = await TestNode.start(t, { nodeName: 'n2', nodeIp: '192.168.100.2', underlay, etcd, routingMode: 'tunnel' });
  const db = await n1.addPod(t, 'db-0', { app: 'db' }, 'shop', { kind: 'StatefulSet', name: 'db' });
  const web = await n2.addPod(t, 'web-7d4b9c-x2x5q', { app: 'web' }, 'shop', { kind: 'Deployment', name: 'web' });
  const loose = await n2.addPod(t, 'debug', { app: 'debug' }, 'shop');
  assert.deepEqual(db.endpoint.workload, { kind: 'StatefulSet', name: 'db' }, 'the endpoint record keeps it');
  assert.equal(loose.endpoint.workload, undefined);
  await echoServer(t, db.netns, 7100);
  const deadline = Date.now() + 10_000;
  while (!(await echo(web.netns, 'tcp', db.endpoint.ipv4, 7100))) {
    assert.ok(Date.now() < deadline, 'web (n2) reaches db (n1)');
    await sleep(200);
  }
  assert.ok(await echo(loose.netns, 'tcp', db.endpoint.ipv4, 7100), 'debug (n2) reaches db (n1)');
  await sleep(300);

  const webWorkload = [{ name: 'web', kind: 'Deployment' }];
  const dbWorkload = [{ name: 'db', kind: 'StatefulSet' }];
  for (const node of [n1, n2]) {
    const toDb = await flows(observer(t, node), { whitelist: [{ sourceIp: [web.endpoint.ipv4], destinationIp: [db.endpoint.ipv4], destinationPort: ['7100'] }] });
    assert.ok(toDb.length > 0, `${node.options.nodeName} has web's flows to db`);
    // One end is this node's endpoint, the other another node's, known through the store.
    for (const f of toDb) {
      assert.deepEqual(f.source?.workloads, webWorkload, `${node.options.nodeName}: source ${JSON.stringify(f.source)}`);
      assert.deepEqual(f.destination?.workloads, dbWorkload, `${node.options.nodeName}: destination ${JSON.stringify(f.destination)}`);
    }
    const replies = await flows(observer(t, node), { whitelist: [{ sourceIp: [db.endpoint.ipv4], destinationIp: [web.endpoint.ipv4] }] });
    assert.ok(replies.length > 0 && replies.every((f) => f.source?.workloads?.[0]?.name === 'db' && f.destination?.workloads?.[0]?.name === 'web'), 'and the replies, the other way round');
    const fromLoose = await flows(observer(t, node), { whitelist: [{ sourceIp: [loose.endpoint.ipv4] }] });
    assert.ok(fromLoose.length > 0 && fromLoose.every((f) => f.source?.workloads === undefined), 'a pod added without a workload has none');
  }
  // As hubble observe -o json prints them; and hubble's workload filter finds them.
  const json = await cli(n1, 'observe', '--last', '1000', '--from-ip', web.endpoint.ipv4, '-o', 'json');
  assert.equal(json.code, 0, json.stderr);
  assert.match(json.stdout, /"source":\{[^}]*"workloads":\[\{"name":"web","kind":"Deployment"\}\]/);
  assert.match(json.stdout, /"destination":\{[^}]*"workloads":\[\{"name":"db","kind":"StatefulSet"\}\]/);
  const byWorkload = await flows(observer(t, n1), { whitelist: [{ sourceWorkload: [{ kind: 'Deployment', name: 'web' }] }] });
  assert.ok(byWorkload.length > 0 && byWorkload.every((f) => f.IP?.source === web.endpoint.ipv4));
  const toDb = await cli(n1, 'observe', '--last', '1000', '--to-workload', 'StatefulSet/db', '-o', 'json');
  assert.equal(toDb.code, 0, toDb.stderr);
  const toDbFlows = toDb.stdout.trim().split('\n').map((line) => (JSON.parse(line) as { flow?: { IP?: { destination?: string } } }).flow).filter((f) => f !== undefined);
  assert.ok(toDbFlows.length > 0 && toDbFlows.every((f) => f.IP?.destination === db.endpoint.ipv4), 'ciliate observe --to-workload StatefulSet/db');

  const scraped = await inNs(n1.netns, process.execPath, ['-e', `fetch('http://${HUBBLE}/metrics').then(async (r) => process.stdout.write(await r.text()))`]);
  const sample = /^hubble_flows_processed_total\{([^}]*)\} (\d+)$/gm;
  const labelled = [...scraped.matchAll(sample)].filter(([, labels]) => labels.includes('source="shop/web"') && labels.includes('destination="db"'));
  assert.ok(labelled.length > 0 && labelled.some(([, , count]) => Number(count) > 0), `hubble_flows_processed_total{source="shop/web",destination="db"}:\n${scraped.split('\n').filter((l) => l.startsWith('hubble_flows_processed_total')).join('\n')}`);
  assert.ok(!/source="shop\/debug"/.test(scraped), 'no workload, no made-up context');

  // Refused with the field named: a workload goes into flows, labels and logs as given.
  const bad = await n1.client.call('POST', '/v1/endpoints', { containerId: 'bad', ifname: 'eth0', netns: '/run/netns/nope', workload: { kind: 'Deployment', name: 'Web App"' } }).catch((error: Error) => error);
  assert.match(String(bad), /workload\.name.*Kubernetes object name/);
  const badKind = await n1.client.call('POST', '/v1/endpoints', { containerId: 'bad', ifname: 'eth0', netns: '/run/netns/nope', workload: { kind: 'deploy ment', name: 'web' } }).catch((error: Error) => error);
  assert.match(String(badKind), /workload\.kind.*Kubernetes kind/);
});

test('--monitor-aggregation reaches the datapath: at none every echo is a flow, status says so, and a stray write to the kernel is undone', async (t) => {
  const node = await TestNode.start(t, { extraArgs: ['--monitor-aggregation', 'none', '--monitor-aggregation-interval', '7', '--reconcile-refresh-interval', '0.2'] });
  const client = observer(t, node);
  const a = await node.addPod(t, 'agg-a', { app: 'a' });
  const b = await node.addPod(t, 'agg-b', { app: 'b' });
  assert.ok(await ping(a.netns, b.endpoint.ipv4, 5));
  await sleep(300);
  const echoes = await flows(client, { whitelist: [{ sourceIp: [a.endpoint.ipv4], destinationIp: [b.endpoint.ipv4], eventType: [{ type: 4 }], protocol: ['ICMPv4'] }] });
  // Medium would report the first echo only (a tracked flow with nothing new); none reports all five.
  assert.equal(echoes.length, 5, JSON.stringify(echoes.map((f) => f.traceObservationPoint)));
  const status = await node.client.get<{ monitor: { aggregation: string; aggregationFlags: string[]; aggregationInterval: number } }>('/v1/status');
  assert.deepEqual(status.monitor, { aggregation: 'none', aggregationFlags: ['syn', 'fin', 'rst'], aggregationInterval: 7 });

  using map = openMonitorConfigMap(node.bpfRoot);
  assert.deepEqual(map.lookup(0), { aggregation: MonitorAggregation.none, report_flags: TcpFlag.SYN | TcpFlag.FIN | TcpFlag.RST, report_interval: 7 });
  writeMonitorConfig(map, { level: 'medium', flags: ['all'], intervalSeconds: 5 });
  for (let i = 0; i < 50 && map.lookup(0)?.aggregation !== MonitorAggregation.none; i++) await sleep(100);
  assert.deepEqual(map.lookup(0), { aggregation: MonitorAggregation.none, report_flags: TcpFlag.SYN | TcpFlag.FIN | TcpFlag.RST, report_interval: 7 }, 'the agent rewrote its setting');
});

test('ciliate config MonitorAggregationLevel=… changes the level of a running agent: the kernel at once, events at the new level, bad values refused naming the option', async (t) => {
  const node = await TestNode.start(t, { extraArgs: ['--reconcile-refresh-interval', '0.2'] });
  const client = observer(t, node);
  const a = await node.addPod(t, 'rcfg-a', { app: 'a' });
  const b = await node.addPod(t, 'rcfg-b', { app: 'b' });
  using map = openMonitorConfigMap(node.bpfRoot);
  // Trace flows of a's echo requests to b that a new 5-echo ping adds to the buffer.
  const echoFlows = async () => (await flows(client, { whitelist: [{ sourceIp: [a.endpoint.ipv4], destinationIp: [b.endpoint.ipv4], eventType: [{ type: 4 }], protocol: ['ICMPv4'] }] })).length;
  const echoesOf = async (before: number) => {
    assert.ok(await ping(a.netns, b.endpoint.ipv4, 5));
    await sleep(300);
    return (await echoFlows()) - before;
  };

  let listed = await cli(node, 'config', '-o', 'json');
  assert.equal(listed.code, 0, listed.stderr);
  assert.deepEqual(JSON.parse(listed.stdout), { MonitorAggregationLevel: 'medium' });
  // Medium: the first echo of the ping is news, the other four are a tracked flow with nothing new.
  const atMedium = await echoesOf(0);
  assert.equal(atMedium, 1);

  const set = await cli(node, 'config', 'MonitorAggregationLevel=none');
  assert.equal(set.code, 0, set.stderr);
  assert.match(set.stdout, /MonitorAggregationLevel\s+none/);
  assert.equal(map.lookup(0)?.aggregation, MonitorAggregation.none, 'in the kernel when the command returns');
  assert.equal(await echoesOf(atMedium), 5, 'every echo of the next ping is a flow');

  for (const [args, named] of [
    [['MonitorAggregationLevel=loud'], /MonitorAggregationLevel: "loud" is not a level \(none, lowest, low, medium, maximum\)/],
    [['MonitorAggregationLevel=medium', 'Debug=true'], /Debug is not an option that changes at run time/],
    [['MonitorAggregationLevel'], /config "MonitorAggregationLevel": want Option=value/],
  ] as const) {
    const refused = await cli(node, 'config', ...args);
    assert.notEqual(refused.code, 0, `${args.join(' ')} is refused`);
    assert.match(refused.stderr, named);
  }
  await sleep(500);
  assert.equal(map.lookup(0)?.aggregation, MonitorAggregation.none, 'nothing of a refused change was applied, and the drift repair keeps the new level');
  const status = await node.client.get<{ monitor: { aggregation: string } }>('/v1/status');
  assert.equal(status.monitor.aggregation, 'none');
  listed = await cli(node, 'config');
  assert.match(listed.stdout, /MonitorAggregationLevel\s+none/);
});
