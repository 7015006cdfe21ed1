/**
 * The event decoder and packet summaries on crafted bytes (no kernel needed).
 * @module
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { encode } from '../ebpf/index.ts';
import { DropReasonCode } from './drop-reasons.ts';
import { EVENT_CAPTURE_LEN, EventFlag, MonitorEventType, TracePoint, decodeEvent, dropEvent, hubbleObservationPoint, policyVerdictEvent, traceEvent, tracePointName } from './events.ts';
import { ETH_HLEN, buildIpv4Frame, internetChecksum, summarizePacket } from './packet.ts';
import { TcpFlag } from './maps.ts';

const frame = buildIpv4Frame({ src: '10.244.0.1', dst: '10.244.0.2', tcp: { sport: 1234, dport: 80, flags: TcpFlag.SYN | TcpFlag.ACK } });

function header(type: number, subtype: number, capLen: number) {
  return {
    type,
    subtype,
    source: 3,
    hash: 0xdeadbeef,
    orig_len: frame.length,
    cap_len: capLen,
    src_identity: 1001,
    dst_identity: 2,
    ifindex: 9,
    dst_id: 0,
    reason: 2,
    flags: EventFlag.REPLY,
    timestamp_ns: 123n,
  };
}

const captured = (bytes: Buffer): Buffer => Buffer.concat([bytes, Buffer.alloc(EVENT_CAPTURE_LEN - bytes.length)]);

test('a trace record decodes with its packet summary, at an offset inside a larger buffer', () => {
  const record = encode(traceEvent, { hdr: header(MonitorEventType.TRACE, TracePoint.TRACE_TO_STACK, frame.length), dst_ifindex: 0, data: captured(frame) });
  const ring = Buffer.concat([Buffer.alloc(8), record, Buffer.alloc(8)]);
  const ev = decodeEvent(new Uint8Array(ring.buffer, ring.byteOffset, ring.length), 8, record.length);
  assert.equal(ev.kind, 'trace');
  assert.equal(ev.kind === 'trace' && ev.observationPointName, 'to-stack');
  assert.equal(ev.isReply, true);
  assert.equal(ev.ingress, false);
  assert.equal(ev.hash, 0xdeadbeef);
  assert.equal(ev.data.length, frame.length);
  assert.deepEqual(ev.packet.l4, { protocol: 'TCP', sourcePort: 1234, destinationPort: 80, flags: 0x12, flagNames: ['SYN', 'ACK'] });
  assert.equal(ev.packet.ipv4?.checksumValid, true);
});

test('a drop record decodes with Hubble\'s reason name; unknown reasons keep their number', () => {
  const drop = (reason: number) =>
    decodeEvent(encode(dropEvent, { hdr: header(MonitorEventType.DROP, reason, 20), ext_error: -28, line: 99, data: captured(frame.subarray(0, 20)) }));
  const ev = drop(DropReasonCode.DROP_POLICY);
  assert.equal(ev.kind, 'drop');
  assert.ok(ev.kind === 'drop');
  assert.equal(ev.reason, 133);
  assert.equal(ev.reasonName, 'POLICY_DENIED');
  assert.equal(ev.extError, -28);
  assert.equal(ev.line, 99);
  assert.deepEqual(ev.packet.ipv4, undefined, 'an IP header cut short is not summarised');
  assert.equal(ev.packet.ethernet?.type, 0x0800);
  const unknown = drop(250);
  assert.ok(unknown.kind === 'drop');
  assert.equal(unknown.reasonName, 'UNKNOWN_DROP_REASON(250)');
});

test('a policy-verdict record decodes with direction, verdict, match type and cookie', () => {
  const record = encode(policyVerdictEvent, {
    hdr: header(MonitorEventType.POLICY_VERDICT, 0, frame.length),
    remote_identity: 1002,
    cookie: 4242,
    dport: 80,
    endpoint_id: 12,
    protocol: 6,
    direction: 0,
    verdict: 2,
    match_type: 3,
    drop_reason: DropReasonCode.DROP_POLICY_DENY,
    data: captured(frame),
  });
  assert.equal(record.length, 192);
  const ev = decodeEvent(record);
  assert.ok(ev.kind === 'policy-verdict');
  assert.equal(ev.directionName, 'ingress');
  assert.equal(ev.verdict, 2);
  assert.equal(ev.allowed, false);
  assert.equal(ev.matchName, 'L4-Only');
  assert.equal(ev.cookie, 4242);
  assert.equal(ev.remoteIdentity, 1002);
  assert.equal(ev.endpointId, 12);
  assert.equal(ev.protocolName, 'TCP');
  assert.equal(ev.dport, 80);
  assert.equal(ev.dropReason, 181);
  assert.equal(ev.packet.ipv4?.destination, '10.244.0.2');
  assert.throws(() => decodeEvent(record.subarray(0, 100)), /100 bytes, want 192/);
});

test('records of unknown type or too short are refused', () => {
  assert.throws(() => decodeEvent(Buffer.from([9, 0, 0, 0])), /unknown monitor event type 9/);
  assert.throws(() => decodeEvent(Buffer.from([MonitorEventType.TRACE, 0, 0, 0])), /4 bytes, want 176/);
  assert.throws(() => decodeEvent(Buffer.alloc(0)), /empty record/);
});

test('observation point names and Hubble numbers', () => {
  assert.equal(tracePointName(TracePoint.TRACE_TO_LXC), 'to-endpoint');
  assert.equal(hubbleObservationPoint(TracePoint.TRACE_TO_LXC), 101);
  assert.equal(hubbleObservationPoint(TracePoint.TRACE_TO_STACK), 3);
  assert.equal(tracePointName(77), 'unknown-trace-point(77)');
});

test('built frames carry valid checksums and summarise back to what was built', () => {
  assert.equal(internetChecksum(frame.subarray(ETH_HLEN, ETH_HLEN + 20)), 0);
  const udp = buildIpv4Frame({ src: '1.2.3.4', dst: '5.6.7.8', udp: { sport: 53, dport: 5353 }, payload: Buffer.from('x') });
  // A UDP checksum over pseudo header and datagram verifies to 0 as well.
  const pseudo = Buffer.concat([udp.subarray(ETH_HLEN + 12, ETH_HLEN + 20), Buffer.from([0, 17, 0, 9])]);
  assert.equal(internetChecksum(Buffer.concat([pseudo, udp.subarray(ETH_HLEN + 20)])), 0);
  assert.deepEqual(summarizePacket(udp).l4, { protocol: 'UDP', sourcePort: 53, destinationPort: 5353 });
  const icmp = buildIpv4Frame({ src: '1.2.3.4', dst: '5.6.7.8', icmp: { type: 8, id: 5, sequence: 6 } });
  assert.equal(internetChecksum(icmp.subarray(ETH_HLEN + 20)), 0);
  assert.deepEqual(summarizePacket(icmp).l4, { protocol: 'ICMPv4', type: 8, code: 0, id: 5, sequence: 6 });
  assert.deepEqual(summarizePacket(Buffer.alloc(10)), {});
  assert.deepEqual([summarizePacket(udp).ipv4?.source, summarizePacket(udp).ipv4?.destination], ['1.2.3.4', '5.6.7.8']);
  // A bad address is an error, not a frame from 0.0.0.0.
  for (const bad of ['10.0.0.256', '10.0.0', '2001:db8::1']) {
    assert.throws(() => buildIpv4Frame({ src: bad, dst: '5.6.7.8', udp: { sport: 1, dport: 2 } }), (e: unknown) => e instanceof Error && e.message.includes(bad), bad);
  }
});
