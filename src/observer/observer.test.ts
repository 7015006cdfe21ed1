/**
 * The observer and its gRPC API over crafted datapath records (no kernel): flows and their
 * names, ranges, follow, filters through the wire, refused requests, and loss at each stage.
 * The same paths against a real agent and real traffic are in test/observer.test.ts.
 * @module
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { createTestPki } from '../store/etcd-testing.ts';
import { encode } from '../ebpf/index.ts';
import { buildIpv4Frame, EVENT_CAPTURE_LEN, EventFlag, MonitorEventType, TcpFlag, TracePoint, traceEvent } from '../datapath/index.ts';
import { checkHealth, connectObserver, FlowObserver, GrpcStatus, ObserverServer, readServerTls, timestampToNs, type FlowNames, type GetFlowsRequest, type GetFlowsResponse, type ObserverClient, type RecordSource } from './index.ts';

const log = pino({ level: 'silent' });

class FakeSource implements RecordSource {
  listener: ((record: Buffer) => void) | undefined;
  kernelLost = 0n;
  onRecord(listener: (record: Buffer) => void) {
    this.listener = listener;
    return () => (this.listener = undefined);
  }
  lost() {
    return this.kernelLost;
  }
  wallClockNs(ns: bigint) {
    return 1_700_000_000_000_000_000n + ns;
  }
  /** A TCP trace record from 10.0.0.<src> to 10.0.0.<dst>:<dport>, at `ns`. */
  trace(ns: number, src: number, dst: number, dport: number, flags: number = TcpFlag.SYN, reply = false) {
    const frame = buildIpv4Frame({ src: `10.0.0.${src}`, dst: `10.0.0.${dst}`, tcp: { sport: 40000 + ns, dport, flags } });
    const data = Buffer.concat([frame, Buffer.alloc(EVENT_CAPTURE_LEN - frame.length)]);
    const hdr = {
      type: MonitorEventType.TRACE, subtype: TracePoint.TRACE_TO_LXC, source: dst, hash: ns, orig_len: frame.length, cap_len: frame.length,
      src_identity: 1000 + src, dst_identity: 1000 + dst, ifindex: 7, dst_id: dst, reason: 0, flags: (reply ? EventFlag.REPLY : 0) | EventFlag.INGRESS, timestamp_ns: BigInt(ns),
    };
    this.listener?.(encode(traceEvent, { hdr, dst_ifindex: 7, data }));
  }
}

const names: FlowNames = {
  nodeName: 'n1',
  endpointByAddress: (address) => {
    const n = Number(address.split('.')[3]);
    return n < 10 ? { id: n, identity: 1000 + n, namespace: n % 2 ? 'odd' : 'even', podName: `pod-${n}` } : undefined;
  },
  endpointById: () => undefined,
  identityLabels: (id) => (id === 2 ? ['reserved:world'] : id > 1000 ? [`k8s:app=app${id - 1000}`, `k8s:io.kubernetes.pod.namespace=${(id - 1000) % 2 ? 'odd' : 'even'}`] : undefined),
  policyForCookie: () => undefined,
};

async function setup(t: TestContext, capacity = 15, queueSize = 64) {
  const dir = mkdtempSync(join(tmpdir(), 'ciliate-observer-'));
  const source = new FakeSource();
  const observer = new FlowObserver(source, { capacity, queueSize, names, log });
  observer.start();
  const server = new ObserverServer({ observer, nodeName: 'n1', nodeAddress: '192.0.2.1', version: 'test', namespaces: () => ['even', 'odd'], log });
  const socket = join(dir, 'hubble.sock');
  await server.listenUnix(socket);
  const client = connectObserver(`unix:${socket}`);
  t.after(async () => {
    client.close();
    observer.stop();
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return { source, observer, client, socket };
}

const settle = () => new Promise((resolve) => setTimeout(resolve, 20));

async function responses(client: ObserverClient, request: GetFlowsRequest): Promise<GetFlowsResponse[]> {
  const out: GetFlowsResponse[] = [];
  for await (const response of client.getFlows(request)) out.push(response);
  return out;
}

const ports = (rs: GetFlowsResponse[]) => rs.flatMap((r) => (r.flow ? [r.flow.l4?.TCP?.destinationPort] : []));

test('records become named flows; number, first, since and until pick from the buffer; the socket is root only', async (t) => {
  const { source, client, socket } = await setup(t);
  assert.equal(statSync(socket).mode & 0o777, 0o600);
  for (let i = 1; i <= 10; i++) source.trace(i, 1, 2, i);
  await settle();
  const all = await responses(client, {});
  assert.deepEqual(ports(all), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  const flow = all[0].flow!;
  assert.equal(all[0].nodeName, 'n1');
  assert.deepEqual(flow.source, { ID: 1, identity: 1001, namespace: 'odd', podName: 'pod-1', labels: ['k8s:app=app1', 'k8s:io.kubernetes.pod.namespace=odd'] });
  assert.equal(flow.destination?.podName, 'pod-2');
  assert.equal(flow.verdict, 'FORWARDED');
  assert.equal(flow.traceObservationPoint, 'TO_ENDPOINT');
  assert.equal(flow.trafficDirection, 'INGRESS');
  assert.deepEqual(flow.eventType, { type: 4, subType: 0 });
  assert.deepEqual(flow.l4?.TCP?.flags, { SYN: true });
  assert.equal(flow.IP?.ipVersion, 'IPv4');
  assert.equal(timestampToNs(flow.time!), 1_700_000_000_000_000_001n);

  assert.deepEqual(ports(await responses(client, { number: 3 })), [8, 9, 10]);
  assert.deepEqual(ports(await responses(client, { number: 3, first: true })), [1, 2, 3]);
  const at = (i: number) => all[i - 1].flow!.time!;
  assert.deepEqual(ports(await responses(client, { since: at(8) })), [8, 9, 10]);
  assert.deepEqual(ports(await responses(client, { until: at(2) })), [1, 2]);
  assert.deepEqual(ports(await responses(client, { since: at(4), until: at(6) })), [4, 5, 6]);
  assert.deepEqual(ports(await responses(client, { since: at(4), number: 1 })), [10]);
});

test('follow sends the backlog asked for, then each new flow as it comes, until cancelled', async (t) => {
  const { source, client } = await setup(t);
  for (let i = 1; i <= 5; i++) source.trace(i, 1, 2, i);
  await settle();
  const stream = client.getFlows({ follow: true, number: 2, whitelist: [{ destinationPort: ['4', '5', '7'] }] });
  const got: number[] = [];
  const done = (async () => {
    for await (const r of stream) {
      if (r.flow) got.push(r.flow.l4!.TCP!.destinationPort!);
      if (got.length === 3) stream.cancel();
    }
  })();
  await settle();
  for (let i = 6; i <= 8; i++) source.trace(i, 1, 2, i);
  await done;
  assert.deepEqual(got, [4, 5, 7]);

  // Following until a time: the stream ends then, even with nothing new.
  const began = Date.now();
  const until = { seconds: String(Math.floor((began + 300) / 1000)), nanos: ((began + 300) % 1000) * 1_000_000 };
  const ended = await responses(client, { follow: true, until, whitelist: [{ destinationPort: ['9999'] }] });
  assert.deepEqual(ended, []);
  assert.ok(Date.now() - began >= 250 && Date.now() - began < 3000, `ended at until (${Date.now() - began} ms)`);
});

test('filters travel the wire: whitelist ORed, fields ANDed, blacklist subtracted', async (t) => {
  const { source, client } = await setup(t);
  source.trace(1, 1, 2, 80);
  source.trace(2, 3, 4, 80, TcpFlag.SYN | TcpFlag.ACK, true);
  source.trace(3, 1, 20, 443);
  source.trace(4, 3, 2, 53);
  await settle();
  const pick = async (request: GetFlowsRequest) => ports(await responses(client, request)).join(',');
  assert.equal(await pick({ whitelist: [{ sourcePod: ['odd/pod-1'] }] }), '80,443');
  assert.equal(await pick({ whitelist: [{ sourcePod: ['odd/'], destinationPort: ['80'] }] }), '80,80');
  assert.equal(await pick({ whitelist: [{ sourcePod: ['odd/pod-3'] }, { destinationIp: ['10.0.0.16/28'] }] }), '80,443,53');
  assert.equal(await pick({ whitelist: [{ destinationLabel: ['k8s:app in (app2, app4)'] }], blacklist: [{ reply: [true] }] }), '80,53');
  assert.equal(await pick({ whitelist: [{ tcpFlags: [{ ACK: true }] }] }), '80');
  assert.equal(await pick({ whitelist: [{ sourceIdentity: [1003] }], blacklist: [{ destinationIdentity: [1002] }] }), '80');
  assert.equal(await pick({ whitelist: [{ verdict: ['DROPPED'] }] }), '');
  assert.equal(await pick({ blacklist: [{ destinationPod: ['even/pod-'] }] }), '443', 'a namespace from the identity, no pod: not a pod of even');
  assert.equal(await pick({ blacklist: [{ destinationPod: ['even/'] }] }), '', 'the namespace alone matches it');
});

test('malformed requests are INVALID_ARGUMENT naming the field', async (t) => {
  const { client } = await setup(t);
  const cases: [GetFlowsRequest, RegExp][] = [
    [{ whitelist: [{ sourceIp: ['10.0.0.300'] }] }, /^whitelist\[0\]\.source_ip\[0\]: not an IP address or CIDR/],
    [{ whitelist: [{}, { destinationIp: ['10.0.0.0/8', 'nope/1'] }] }, /^whitelist\[1\]\.destination_ip\[1\]/],
    [{ blacklist: [{ verdict: [99] }] }, /^blacklist\[0\]\.verdict\[0\]: unknown value 99/],
    [{ whitelist: [{ trafficDirection: [7] }] }, /^whitelist\[0\]\.traffic_direction\[0\]/],
    [{ whitelist: [{ sourceLabel: ['app in ()'] }] }, /^whitelist\[0\]\.source_label\[0\]: no values/],
    [{ whitelist: [{ sourcePod: ['/x'] }] }, /^whitelist\[0\]\.source_pod\[0\]/],
    [{ whitelist: [{ sourcePort: ['70000'] }] }, /^whitelist\[0\]\.source_port\[0\]: not a port number/],
    [{ first: true, follow: true }, /^first: first cannot be combined with follow/],
    [{ since: { seconds: '20', nanos: 0 }, until: { seconds: '10', nanos: 0 } }, /^until: until is before since/],
  ];
  for (const [request, message] of cases) {
    await assert.rejects(responses(client, request), (error: { code?: number; details?: string }) => {
      assert.equal(error.code, GrpcStatus.INVALID_ARGUMENT, `${JSON.stringify(request)}: ${error.details}`);
      assert.match(error.details ?? '', message);
      return true;
    });
  }
});

test('loss is counted at every stage and streamed as LostEvents: kernel ring, decode queue, a reader the buffer overtook', async (t) => {
  const { source, observer, client } = await setup(t, 15, 4);
  // The kernel ring: its lost counter moves, a LostEvent says by how much.
  source.kernelLost = 7n;
  // The decode queue: ten records at once into a queue of four.
  for (let i = 1; i <= 10; i++) source.trace(i, 1, 2, i);
  await settle();
  const stream = await responses(client, {});
  const lost = stream.filter((r) => r.lostEvents).map((r) => [r.lostEvents!.source, r.lostEvents!.numEventsLost]);
  assert.deepEqual(lost, [['PERF_EVENT_RING_BUFFER', '7'], ['OBSERVER_EVENTS_QUEUE', '6']]);
  assert.deepEqual(ports(stream), [1, 2, 3, 4]);

  // A follower that does not read while the 15-entry buffer turns over many times.
  const follow = client.getFlows({ follow: true });
  const iterator = follow[Symbol.asyncIterator]();
  const first = iterator.next();
  await settle();
  for (let round = 0; round < 200; round++) {
    for (let i = 0; i < 4; i++) source.trace(100 + round * 4 + i, 1, 2, 1000 + i);
    await new Promise((resolve) => setImmediate(resolve));
  }
  await settle();
  let missed = 0n;
  let flows = 0;
  let newest = false;
  const reader = (async () => {
    for (let next = await first; !next.done; next = await iterator.next()) {
      if (next.value.lostEvents?.source === 'HUBBLE_RING_BUFFER') missed += BigInt(next.value.lostEvents.numEventsLost);
      if (next.value.flow) flows++;
      // The last record written (ns 899): past it, the server has nothing left to send or count.
      if (next.value.flow?.l4?.TCP?.sourcePort === 40000 + 100 + 199 * 4 + 3) newest = true;
    }
  })();
  // Until the follower has caught up with the buffer (on a loaded machine that takes a while).
  const deadline = Date.now() + 20_000;
  while (!newest && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
  follow.cancel();
  await reader;
  assert.ok(newest, `the follower caught up with the newest flow within 20 s (got ${flows} flows, told of ${missed} missed)`);
  assert.ok(missed > 0n, `the follower was told it missed entries (got ${flows} flows)`);

  const status = await client.serverStatus();
  assert.equal(status.maxFlows, '15');
  assert.equal(status.seenFlows, String(observer.stats().seenFlows));
  const counted = Object.fromEntries((status.ciliateLostEvents ?? []).map((l) => [l.source, BigInt(l.numEventsLost ?? 0)]));
  assert.equal(counted.PERF_EVENT_RING_BUFFER, 7n);
  assert.equal(counted.OBSERVER_EVENTS_QUEUE, 6n);
  assert.equal(counted.HUBBLE_RING_BUFFER, missed, 'what the follower was told is what the server counts');
  const nodes = await client.getNodes();
  assert.deepEqual(nodes.nodes?.map((n) => [n.name, n.address, n.state]), [['n1', '192.0.2.1', 'NODE_CONNECTED']]);
  assert.deepEqual((await client.getNamespaces()).namespaces?.map((n) => n.namespace), ['even', 'odd']);
});

test('the standard gRPC health check answers SERVING, as hubble status asks', async (t) => {
  const { socket } = await setup(t);
  assert.equal(await checkHealth(`unix:${socket}`), 'SERVING');
});

test('over TCP with TLS: a client with a certificate of the trusted CA is served; plaintext and unknown clients are not', async (t) => {
  const pki = await createTestPki(t);
  const { observer } = await setup(t);
  const server = new ObserverServer({ observer, nodeName: 'n1', nodeAddress: '192.0.2.1', version: 'test', namespaces: () => [], log });
  t.after(() => server.close());
  const names = { cert: 'cert', key: 'key', cas: 'cas' };
  const port = await server.listenTcp('127.0.0.1:0', readServerTls({ certFile: pki.server.certFile, keyFile: pki.server.keyFile, clientCaFiles: [pki.caFile] }, names));
  const connect = (options: Parameters<typeof connectObserver>[1]) => {
    const client = connectObserver(`127.0.0.1:${port}`, options);
    t.after(() => client.close());
    return client;
  };
  const ca = readFileSync(pki.caFile);
  const trusted = connect({ tlsCa: ca, tlsCert: readFileSync(pki.client.certFile), tlsKey: readFileSync(pki.client.keyFile) });
  assert.equal((await trusted.serverStatus()).maxFlows, '15');
  await assert.rejects(connect({}).serverStatus(), (error: { code?: number }) => error.code === GrpcStatus.UNAVAILABLE, 'plaintext');
  const stranger = connect({ tlsCa: ca, tlsCert: readFileSync(pki.other.certFile), tlsKey: readFileSync(pki.other.keyFile) });
  await assert.rejects(stranger.serverStatus(), (error: { code?: number }) => error.code === GrpcStatus.UNAVAILABLE, 'a client certificate of another CA');
});
