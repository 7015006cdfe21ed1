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
import { buildIpv4Frame, EVENT_CAPTURE_LEN, EventFlag, MonitorEventType, TcpFlag, TracePoint, traceEvent } from '../datapath/index.ts';
import { FlowObserver, ObserverError, type FlowNames, type RecordSource } from './index.ts';

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

async function observe(capacity: number) {
  type Listener = (record: Uint8Array, offset?: number, length?: number) => void;
  const source: RecordSource & { listener?: Listener } = {
    onRecord(listener: Listener) {
      source.listener = listener;
      return () => (source.listener = undefined);
    },
    lost: () => 0n,
    wallClockNs: (ns: bigint) => ns,
  };
  const observer = new FlowObserver(source, { capacity, queueSize: 64, names, log: pino({ level: 'silent' }) });
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
