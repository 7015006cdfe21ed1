/**
 * The observer's own path, without the kernel: crafted trace/drop/verdict records through the
 * decode queue, decoding, naming, and the flow buffer (with a filter compiled as GetFlows would),
 * on one core. The kernel ring's read rate is bench/ringbuf.ts; this is what the agent adds.
 *
 * Figures (medians of rounds):
 *  - flows_per_s: records in → flows in the buffer, none lost (target ≥ 500k/s).
 *  - filter_per_s: flows a compiled whitelist+blacklist checks per second.
 *  - buffer_bytes_4095 / buffer_bytes_65535: heap held by a full buffer.
 * @module
 */
import pino from 'pino';
import { median, round, type BenchContext } from './lib.ts';
import { encode } from '../src/ebpf/index.ts';
import { buildIpv4Frame, EVENT_CAPTURE_LEN, EventFlag, MonitorEventType, TcpFlag, TracePoint, traceEvent } from '../src/datapath/index.ts';
import { compileFilters, FlowObserver, type FlowNames, type RecordSource } from '../src/observer/index.ts';

export const description = 'datapath records → Hubble flows in the buffer (decode, name, buffer), and flow filters';

const RECORDS = 200_000;

function record(i: number): Buffer {
  const frame = buildIpv4Frame({ src: `10.0.${(i >> 8) & 255}.${i & 255}`, dst: '10.0.0.2', tcp: { sport: 30000 + (i % 30000), dport: 80, flags: TcpFlag.SYN } });
  const hdr = {
    type: MonitorEventType.TRACE, subtype: TracePoint.TRACE_TO_LXC, source: 2, hash: i, orig_len: frame.length, cap_len: frame.length,
    src_identity: 1000 + (i % 50), dst_identity: 1001, ifindex: 7, dst_id: 2, reason: 0, flags: EventFlag.INGRESS, timestamp_ns: BigInt(i),
  };
  return encode(traceEvent, { hdr, dst_ifindex: 7, data: Buffer.concat([frame, Buffer.alloc(EVENT_CAPTURE_LEN - frame.length)]) });
}

const names: FlowNames = {
  nodeName: 'n1',
  endpointByAddress: (address) => (address === '10.0.0.2' ? { id: 2, identity: 1001, namespace: 'default', podName: 'deathstar' } : undefined),
  endpointById: () => undefined,
  identityLabels: (id) => [`k8s:app=a${id}`, 'k8s:io.kubernetes.pod.namespace=default'],
  policyForCookie: () => undefined,
};

class Source implements RecordSource {
  listener: ((record: Buffer) => void) | undefined;
  onRecord(listener: (record: Buffer) => void) {
    this.listener = listener;
    return () => (this.listener = undefined);
  }
  lost() {
    return 0n;
  }
  wallClockNs(ns: bigint) {
    return ns;
  }
}

async function throughput(records: readonly Buffer[]): Promise<number> {
  const source = new Source();
  const observer = new FlowObserver(source, { capacity: 4095, queueSize: records.length, names, log: pino({ level: 'silent' }) });
  observer.start();
  const began = performance.now();
  for (const r of records) source.listener!(r);
  while (observer.stats().queued > 0) await new Promise((resolve) => setImmediate(resolve));
  const seconds = (performance.now() - began) / 1000;
  observer.stop();
  const stats = observer.stats();
  if (stats.seenFlows !== records.length || stats.lost.queue !== 0n) throw new Error(`flows bench lost records: ${JSON.stringify({ ...stats, lost: String(stats.lost.queue) })}`);
  return records.length / seconds;
}

async function heldBytes(capacity: number, records: readonly Buffer[]): Promise<number> {
  const gc = (globalThis as { gc?: () => void }).gc;
  gc?.();
  const before = process.memoryUsage().heapUsed;
  const source = new Source();
  const observer = new FlowObserver(source, { capacity, queueSize: records.length, names, log: pino({ level: 'silent' }) });
  observer.start();
  for (let i = 0; i < capacity; i++) source.listener!(records[i % records.length]);
  while (observer.stats().queued > 0) await new Promise((resolve) => setImmediate(resolve));
  gc?.();
  const after = process.memoryUsage().heapUsed;
  observer.stop();
  return after - before;
}

export async function run(ctx: BenchContext): Promise<void> {
  const records = Array.from({ length: RECORDS }, (_, i) => record(i));
  const rounds = ctx.rounds ?? 5;
  const rates: number[] = [];
  await throughput(records.slice(0, 20_000));
  for (let i = 0; i < rounds; i++) rates.push(await throughput(records));
  ctx.emit({ metric: 'flows_per_s', value: round(median(rates), 0), unit: 'flows/s', baseline: null, ratio: null, target: 500_000, rounds });

  const source = new Source();
  const observer = new FlowObserver(source, { capacity: 4095, queueSize: 4095, names, log: pino({ level: 'silent' }) });
  observer.start();
  for (const r of records.slice(0, 4095)) source.listener!(r);
  while (observer.stats().queued > 0) await new Promise((resolve) => setImmediate(resolve));
  observer.stop();
  const flows = Array.from({ length: 4095 }, (_, i) => observer.ring.at(i)!.flow!);
  const pass = compileFilters([{ sourcePod: ['default/x'] }, { destinationPod: ['default/death'], destinationPort: ['80'], verdict: ['FORWARDED'] }], [{ sourceIp: ['10.0.1.0/24'] }]);
  const filterRates: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const began = performance.now();
    let kept = 0;
    for (let n = 0; n < 50; n++) for (const f of flows) if (pass(f)) kept++;
    filterRates.push((50 * flows.length) / ((performance.now() - began) / 1000));
    if (kept === 0) throw new Error('flows bench: the filter kept nothing');
  }
  ctx.emit({ metric: 'filter_per_s', value: round(median(filterRates), 0), unit: 'flows/s', baseline: null, ratio: null, rounds });
  for (const capacity of [4095, 65535]) {
    ctx.emit({ metric: `buffer_bytes_${capacity}`, value: await heldBytes(capacity, records), unit: 'bytes', baseline: null, ratio: null });
  }
}
