/**
 * The flow buffer keeps datapath records, not Flow messages, and builds each Flow when read: what
 * that must never get wrong. A refused record must not overwrite the record of an entry still
 * held; an entry read after its slot was reused must fail, not describe another packet; records
 * handed over in someone else's memory (the ring's) are copied, aligned or not.
 * @module
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import pino from 'pino';
import { encode } from '../ebpf/index.ts';
import { buildIpv4Frame, dropEvent, DropReasonCode, EVENT_CAPTURE_LEN, EventFlag, MonitorEventType, policyVerdictEvent, TcpFlag, TracePoint, traceEvent, type FrameSpec } from '../datapath/index.ts';
import { HubbleMetrics, Registry, flowMetricInput, parseHubbleMetrics } from '../metrics/index.ts';
import { parsePrometheusText, sampleValue } from '../metrics/text-format-testing.ts';
import { PolicyDirection, PolicyVerdict } from '../policy/index.ts';
import { FlowObserver, ObserverError, type FlowEntry, type FlowNames, type RecordSource } from './index.ts';

const names: FlowNames = {
  nodeName: 'n1',
  endpointByAddress: () => undefined,
  endpointById: () => undefined,
  identityLabels: () => undefined,
  policyForCookie: () => undefined,
};

/** A TCP SYN trace record to port `dport`. */
function trace(dport: number): Buffer {
  const frame = buildIpv4Frame({ src: '10.0.0.1', dst: '10.0.0.2', tcp: { sport: 40000, dport, flags: TcpFlag.SYN } });
  const hdr = {
    type: MonitorEventType.TRACE, subtype: TracePoint.TRACE_TO_LXC, source: 2, hash: dport, orig_len: frame.length, cap_len: frame.length,
    src_identity: 1001, dst_identity: 1002, ifindex: 7, dst_id: 2, reason: 0, flags: EventFlag.INGRESS, timestamp_ns: BigInt(dport),
  };
  return encode(traceEvent, { hdr, dst_ifindex: 7, data: Buffer.concat([frame, Buffer.alloc(EVENT_CAPTURE_LEN - frame.length)]) });
}

async function observe(capacity: number, flowNames: FlowNames = names, onFlow?: (entry: FlowEntry) => void) {
  type Listener = (record: Uint8Array, offset?: number, length?: number) => void;
  const source: RecordSource & { listener?: Listener } = {
    onRecord(listener: Listener) {
      source.listener = listener;
      return () => (source.listener = undefined);
    },
    lost: () => 0n,
    wallClockNs: (ns: bigint) => ns,
  };
  const observer = new FlowObserver(source, { capacity, queueSize: 64, names: flowNames, log: pino({ level: 'silent' }), onFlow });
  observer.start();
  const settled = async () => {
    while (observer.stats().queued > 0) await new Promise((resolve) => setImmediate(resolve));
  };
  const ports = () => {
    const out: (number | undefined)[] = [];
    for (let seq = observer.ring.oldest; seq < observer.ring.next; seq++) out.push(observer.ring.at(seq)!.flow?.l4?.TCP?.destinationPort);
    return out;
  };
  return { source, observer, settled, ports };
}

test('a record refused as malformed leaves every flow the buffer holds as it was', async (t) => {
  const { source, observer, settled, ports } = await observe(3);
  t.after(() => observer.stop());
  for (const port of [81, 82, 83]) source.listener!(trace(port));
  await settled();
  // Of a type this build does not know, as long as a trace: it would land in the slot of the flow to port 81.
  const bogus = trace(99);
  bogus[0] = 9;
  source.listener!(bogus);
  await settled();
  assert.equal(observer.stats().decodeErrors, 1);
  assert.deepEqual(ports(), [81, 82, 83]);
  source.listener!(trace(84));
  await settled();
  assert.deepEqual(ports(), [82, 83, 84], 'the next good record takes that slot');
});

test('a flow read after the buffer overwrote it fails instead of describing another packet', async (t) => {
  const { source, observer, settled } = await observe(2);
  t.after(() => observer.stop());
  source.listener!(trace(81));
  await settled();
  const first = observer.ring.at(0)!;
  assert.equal(first.flow?.l4?.TCP?.destinationPort, 81);
  const uuid = first.flow?.uuid;
  assert.equal(first.flow?.uuid, uuid, 'the uuid is drawn once');
  source.listener!(trace(82));
  source.listener!(trace(83));
  await settled();
  assert.equal(observer.ring.at(0), undefined);
  assert.throws(() => first.flow, (error: unknown) => error instanceof ObserverError && error.code === 'ERR_OBSERVER_OVERWRITTEN');
});

test('records in memory that is not the observer\'s are copied as they come, at any alignment', async (t) => {
  const { source, observer, settled, ports } = await observe(4);
  t.after(() => observer.stop());
  const a = trace(81);
  const b = trace(82);
  // As the ring hands them over: several records in one memory, one of them off word alignment.
  const memory = Buffer.alloc(8 + a.length + 3 + b.length);
  a.copy(memory, 8);
  b.copy(memory, 8 + a.length + 3);
  source.listener!(memory, 8, a.length);
  source.listener!(memory, 8 + a.length + 3, b.length);
  memory.fill(0);
  await settled();
  assert.deepEqual(ports(), [81, 82]);
});

/** A frame padded to the capture length, and how much of it the record says was captured. */
function captured(frame: Buffer, capLen = frame.length): { data: Buffer; orig_len: number; cap_len: number } {
  return { data: Buffer.concat([frame, Buffer.alloc(EVENT_CAPTURE_LEN - frame.length)]), orig_len: frame.length, cap_len: capLen };
}

function header(type: number, subtype: number, flags: number, hash: number, packet: { orig_len: number; cap_len: number }) {
  return { type, subtype, source: 2, hash, ...packet, src_identity: 1001, dst_identity: 1002, ifindex: 7, dst_id: 2, reason: 1, flags, timestamp_ns: BigInt(hash) };
}

function traceOf(spec: FrameSpec, point: number, flags: number, hash: number, frame = buildIpv4Frame(spec), capLen?: number): Buffer {
  const packet = captured(frame, capLen);
  return encode(traceEvent, { hdr: header(MonitorEventType.TRACE, point, flags, hash, packet), dst_ifindex: 7, data: packet.data });
}

function dropOf(spec: FrameSpec, reason: number, flags: number, hash: number): Buffer {
  const packet = captured(buildIpv4Frame(spec));
  return encode(dropEvent, { hdr: header(MonitorEventType.DROP, reason, flags, hash, packet), ext_error: 0, line: 1, data: packet.data });
}

function verdictOf(spec: FrameSpec, verdict: number, direction: number, matchType: number, dropReason: number, hash: number): Buffer {
  const packet = captured(buildIpv4Frame(spec));
  const { tcp, udp } = spec;
  return encode(policyVerdictEvent, {
    hdr: header(MonitorEventType.POLICY_VERDICT, 0, 0, hash, packet), remote_identity: 1001, cookie: 0, dport: tcp?.dport ?? udp?.dport ?? 0, endpoint_id: 2,
    protocol: tcp ? 6 : udp ? 17 : 1, direction, verdict, match_type: matchType, drop_reason: dropReason, data: packet.data,
  });
}

test("the metrics read of a flow's record give what the same metrics read of its Flow give, record by record and scraped", async (t) => {
  const x = { src: '10.0.0.1', dst: '10.0.0.2' };
  const syn = { ...x, tcp: { sport: 40000, dport: 80, flags: TcpFlag.SYN } };
  const synAck = { src: x.dst, dst: x.src, tcp: { sport: 80, dport: 40000, flags: TcpFlag.SYN | TcpFlag.ACK } };
  const arp = Buffer.alloc(42);
  arp.writeUInt16BE(0x0806, 12);
  const later = buildIpv4Frame({ ...x, udp: { sport: 5000, dport: 53 } });
  later.writeUInt16BE(0x0020, 14 + 6); // a later fragment: no UDP header there
  const records = [
    traceOf(syn, TracePoint.TRACE_TO_LXC, EventFlag.INGRESS, 1),
    traceOf(syn, TracePoint.TRACE_FROM_LXC, 0, 2),
    traceOf(synAck, TracePoint.TRACE_TO_LXC, EventFlag.INGRESS | EventFlag.REPLY, 3),
    traceOf({ ...x, tcp: { sport: 40000, dport: 80, flags: TcpFlag.FIN | TcpFlag.ACK } }, TracePoint.TRACE_TO_STACK, 0, 4),
    traceOf({ ...x, tcp: { sport: 40000, dport: 80, flags: TcpFlag.RST } }, TracePoint.TRACE_FROM_NETWORK, EventFlag.REPLY, 5),
    traceOf({ ...x, udp: { sport: 5000, dport: 53 } }, TracePoint.TRACE_TO_LXC, EventFlag.INGRESS, 6),
    traceOf({ ...x, icmp: { type: 8, id: 1, sequence: 1 } }, TracePoint.TRACE_FROM_LXC, 0, 7),
    traceOf(syn, TracePoint.TRACE_TO_LXC, EventFlag.INGRESS, 8, undefined, 14 + 20 + 10), // TCP cut short: no L4
    traceOf(syn, TracePoint.TRACE_TO_HOST, 0, 9, arp),
    traceOf(syn, TracePoint.TRACE_TO_OVERLAY, 0, 10, later),
    // A denied verdict, then the drop of the same packet: the drop takes the verdict's direction.
    verdictOf(syn, PolicyVerdict.DENIED, PolicyDirection.INGRESS, 0, DropReasonCode.DROP_POLICY, 11),
    dropOf(syn, DropReasonCode.DROP_POLICY, 0, 11),
    dropOf(syn, DropReasonCode.DROP_POLICY_DENY, EventFlag.INGRESS, 12),
    dropOf({ ...x, udp: { sport: 5000, dport: 53 } }, DropReasonCode.DROP_CT_INVALID_HDR, 0, 13),
    dropOf({ ...x, icmp: { type: 8 } }, 250, 0, 14), // a reason this build has no name for
    verdictOf(syn, PolicyVerdict.ALLOWED, PolicyDirection.INGRESS, 2, 0, 15),
    verdictOf({ ...x, udp: { sport: 5000, dport: 53 } }, PolicyVerdict.ALLOWED, PolicyDirection.EGRESS, 1, 0, 16),
    verdictOf(syn, PolicyVerdict.DENIED_DEFAULT, PolicyDirection.EGRESS, 4, 0, 17),
    verdictOf(syn, PolicyVerdict.ALLOWED, PolicyDirection.INGRESS, 9, 0, 18), // a match type with no name
  ];
  const web = { id: 2, identity: 1002, namespace: 'shop', podName: 'web-1', workload: { name: 'web', kind: 'Deployment' } };
  const named: FlowNames = {
    ...names,
    endpointByAddress: (address) => (address === '10.0.0.2' ? web : undefined),
    identityLabels: (id) => (id === 1001 ? ['k8s:app=client', 'k8s:io.kubernetes.pod.namespace=store'] : undefined),
  };
  // Every metric, with every context kind on one side or the other.
  const options = parseHubbleMetrics([
    'flow:sourceContext=namespace;destinationContext=pod',
    'drop:sourceContext=workload|identity;destinationContext=workload-name',
    'tcp:destinationContext=pod-name|reserved-identity',
    'policy:sourceContext=identity;destinationContext=workload',
    'port-distribution:sourceContext=pod|namespace',
  ]);
  assert.ok(typeof options !== 'string', String(options));
  const fast = new Registry();
  const fromFlow = new Registry();
  const fastMetrics = new HubbleMetrics(fast, options);
  const flowMetrics = new HubbleMetrics(fromFlow, options);
  const { source, observer, settled } = await observe(64, named, (entry) => {
    const input = entry.metricInput();
    const flow = entry.flow;
    // Its sides are getters: made when read.
    assert.deepEqual({ ...input, source: input.source, destination: input.destination }, flowMetricInput(flow), `flow ${entry.seq}: ${flow.Summary}`);
    fastMetrics.observeFlow(input);
    flowMetrics.observeFlow(flowMetricInput(flow));
  });
  t.after(() => observer.stop());
  for (const record of records) source.listener!(record);
  await settled();
  assert.equal(observer.stats().seenFlows, records.length);
  assert.equal(observer.stats().decodeErrors, 0);
  for (const metrics of [fastMetrics, flowMetrics]) metrics.lostEvents('observer_events_queue', 3);
  const scraped = await fast.metrics();
  assert.equal(scraped, await fromFlow.metrics());
  // Not vacuous: each kind of record shows in the scrape.
  const m = parsePrometheusText(scraped);
  const flows = (labels: Record<string, string>) => sampleValue(m, 'hubble_flows_processed_total', { source: 'store', destination: 'shop/web-1', subtype: '', ...labels });
  assert.equal(flows({ protocol: 'UDP', type: 'Trace', subtype: 'to-endpoint', verdict: 'FORWARDED' }), 1);
  assert.equal(flows({ protocol: 'ICMPv4', type: 'Trace', subtype: 'from-endpoint', verdict: 'FORWARDED' }), 1);
  assert.equal(flows({ protocol: '', type: 'Trace', subtype: 'to-overlay', verdict: 'FORWARDED' }), 1, 'a later fragment has no L4');
  assert.equal(flows({ protocol: 'TCP', type: 'PolicyVerdict', verdict: 'DROPPED' }), 2);
  assert.equal(sampleValue(m, 'hubble_drop_total', { source: '1001', destination: 'web', reason: 'POLICY_DENIED', protocol: 'TCP' }), 2, 'the denied verdict and its drop');
  assert.equal(sampleValue(m, 'hubble_drop_total', { source: '1001', destination: 'web', reason: 'DROP_REASON_UNKNOWN', protocol: 'ICMPv4' }), 1);
  assert.equal(sampleValue(m, 'hubble_tcp_flags_total', { destination: '', flag: 'SYN-ACK', family: 'IPv4' }), 1);
  assert.equal(sampleValue(m, 'hubble_tcp_flags_total', { destination: 'web-1', flag: 'RST', family: 'IPv4' }), 1);
  assert.equal(sampleValue(m, 'hubble_policy_verdicts_total', { source: '1001', destination: 'shop/web', direction: 'egress', match: 'all', action: 'dropped' }), 1);
  assert.equal(sampleValue(m, 'hubble_policy_verdicts_total', { source: '1001', destination: 'shop/web', direction: 'ingress', match: 'none', action: 'forwarded' }), 1, 'a match type with no name');
  assert.equal(sampleValue(m, 'hubble_port_distribution_total', { source: 'store', protocol: 'UDP', port: '53' }), 2);
  assert.equal(sampleValue(m, 'hubble_lost_events_total', { source: 'observer_events_queue' }), 3);
});
