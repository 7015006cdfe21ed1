/**
 * The agent's flow path on one core: crafted trace records written into a real BPF ring buffer
 * (build/bpf/ringbuf.o's rb_copy: 2,000 distinct records, each run 50 times in a row with
 * BPF_PROG_TEST_RUN), read by the agent's Monitor over that ring, queued, checked, named and kept
 * in the flow buffer by the FlowObserver, whose Flow messages are built when read
 * (read_flows_per_s is that side). The baseline is the same ring of the same records read by
 * the same RingBuffer with a handler that only touches each.
 *
 * Figures (medians of interleaved rounds):
 *  - flows_per_s: records in the ring → flows in the buffer, none lost, per CPU second (target
 *    ≥ 500k/s); the ratio is over the raw read rate of the same records. The wall-clock rates
 *    ride along (wall_value, wall_baseline_value).
 *  - flows_per_s_hubble_metrics: the same with the agent's default Hubble metrics counting each
 *    flow (read from its entry as it comes, as the agent does: no Flow built).
 *  - read_flows_per_s: flows the observer's GetFlows path streams out of a full buffer, per CPU
 *    second (each Flow built then).
 *  - filter_per_s: flows a compiled whitelist+blacklist checks per CPU second.
 *  - buffer_bytes_4095 / buffer_bytes_65535: memory (V8 heap and array buffers) an observer with
 *    a full buffer and the default event queue (8192) holds, the records it keeps included.
 * @module
 */
import { mkdirSync, rmSync } from 'node:fs';
import { constants } from 'node:os';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import pino from 'pino';
import { interleave, median, round, ROOT, type BenchContext } from './lib.ts';
import { Cleanups, uniqueName } from './support/ns.ts';
import { encode } from '../src/ebpf/index.ts';
import { BpfObject } from '../src/ebpf/object.ts';
import { RingBuffer } from '../src/ebpf/ringbuf.ts';
import { Monitor } from '../src/agent/monitor.ts';
import { buildIpv4Frame, EVENT_CAPTURE_LEN, EventFlag, MapName, MonitorEventType, TcpFlag, TracePoint, traceEvent } from '../src/datapath/index.ts';
import { HubbleMetrics, parseHubbleMetrics, Registry } from '../src/metrics/index.ts';
import { compileFilters, FlowObserver, parseFlowsRequest, type Flow, type FlowEntry, type FlowNames, type RecordSource } from '../src/observer/index.ts';

export const description = 'datapath records in a real ring → Hubble flows in the buffer (read, decode, name, buffer) vs the raw ring read; flow filters; buffer memory';

const RECORDS = 100_000;
/** Distinct records (sources, identities, ports); each is written REPEAT times in a row. */
const DISTINCT = 2_000;
const REPEAT = RECORDS / DISTINCT;
/** Room for RECORDS trace records (176 bytes + the ring's 8-byte header each), a power of two. */
const RING_BYTES = 32 << 20;
const OBJECT = join(ROOT, 'build', 'bpf', 'ringbuf.o');
const log = pino({ level: 'silent' });

function record(i: number): Buffer {
  const frame = buildIpv4Frame({ src: `10.0.${(i >> 8) & 255}.${i & 255}`, dst: '10.0.0.2', tcp: { sport: 30000 + (i % 30000), dport: 80, flags: TcpFlag.SYN } });
  const hdr = {
    type: MonitorEventType.TRACE, subtype: TracePoint.TRACE_TO_LXC, source: 2, hash: i, orig_len: frame.length, cap_len: frame.length,
    src_identity: 1000 + (i % 50), dst_identity: 1001, ifindex: 7, dst_id: 2, reason: 0, flags: EventFlag.INGRESS, timestamp_ns: BigInt(i),
  };
  return encode(traceEvent, { hdr, dst_ifindex: 7, data: Buffer.concat([frame, Buffer.alloc(EVENT_CAPTURE_LEN - frame.length)]) });
}

const deathstar = { id: 2, identity: 1001, namespace: 'default', podName: 'deathstar' };
/** Labels kept per identity, as the agent's names keep them (src/agent/modules/observer.ts). */
const labelsById = new Map<number, readonly string[]>();
const names: FlowNames = {
  nodeName: 'n1',
  endpointByAddress: (address) => (address === '10.0.0.2' ? deathstar : undefined),
  endpointById: () => undefined,
  identityLabels: (id) => {
    let labels = labelsById.get(id);
    if (labels === undefined) labelsById.set(id, (labels = [`k8s:app=a${id}`, 'k8s:io.kubernetes.pod.namespace=default']));
    return labels;
  },
  policyForCookie: () => undefined,
};
/** The agent's default hubble-event-queue-size. */
const QUEUE_SIZE = 8192;

const turn = () => new Promise((resolve) => setImmediate(resolve));

/**
 * CPU seconds the process spent since `since` (all its threads: GC helpers count). The rates are
 * per CPU second, "on one core": on this shared VM the wall clock mostly measures the neighbours.
 */
function cpuSeconds(since: NodeJS.CpuUsage): number {
  const used = process.cpuUsage(since);
  return (used.user + used.system) / 1e6;
}

/** Records handed straight to the observer, for the memory figures. */
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

function collectGarbage(): () => void {
  setFlagsFromString('--expose-gc');
  return runInNewContext('gc') as () => void;
}

function heldBytes(gc: () => void): number {
  gc();
  gc();
  const usage = process.memoryUsage();
  return usage.heapUsed + usage.arrayBuffers;
}

async function memory(capacity: number, records: readonly Buffer[], gc: () => void): Promise<number> {
  const before = heldBytes(gc);
  const source = new Source();
  const observer = new FlowObserver(source, { capacity, queueSize: QUEUE_SIZE, names, log });
  observer.start();
  for (let i = 0; i < capacity; i++) {
    source.listener!(records[i % records.length]);
    if (observer.stats().queued === QUEUE_SIZE) while (observer.stats().queued > 0) await turn();
  }
  while (observer.stats().queued > 0) await turn();
  const after = heldBytes(gc);
  observer.stop();
  if (observer.stats().numFlows !== capacity) throw new Error(`flows bench: ${observer.stats().numFlows} flows held, want ${capacity}`);
  return after - before;
}

export async function run(ctx: BenchContext): Promise<void> {
  const rounds = ctx.rounds ?? 5;
  const records = Array.from({ length: DISTINCT }, (_, i) => record(i));
  const cleanups = new Cleanups((message) => ctx.log(message));
  try {
    const obj = BpfObject.load(OBJECT, { maxEntries: { events: RING_BYTES }, programs: ['rb_copy'] });
    cleanups.defer('close the ring object', () => obj.close());
    // The Monitor opens the ring where the agent pins it: <bpf root>/maps/<name>.
    const bpfRoot = join('/sys/fs/bpf', uniqueName('ciliate-bench-flows'));
    mkdirSync(join(bpfRoot, 'maps'), { recursive: true });
    cleanups.defer(`rm ${bpfRoot}`, () => rmSync(bpfRoot, { recursive: true, force: true }));
    obj.map('events').pin(join(bpfRoot, 'maps', MapName.EVENTS));
    obj.map('events_lost').pin(join(bpfRoot, 'maps', MapName.EVENTS_LOST));
    const copy = obj.program('rb_copy');
    // Only looks: the positions tell how many records wait, whoever reads them.
    const probe = new RingBuffer(obj.map('events'));
    cleanups.defer('close the probe', () => probe.close());
    const recordBytes = traceEvent.size + 8;
    /** Fills the ring with `count` records (a signal can cut a repeated run short: topped up). */
    const fill = (count: number): void => {
      for (let i = 0; probe.pendingBytes() < count * recordBytes; i++) {
        const left = count - probe.pendingBytes() / recordBytes;
        try {
          copy.testRun({ data: records[i % DISTINCT], repeat: Math.min(REPEAT, left) });
        } catch (error) {
          if ((error as { errno?: number }).errno !== constants.errno.EINTR) throw error;
        }
      }
    };

    let observer: FlowObserver | undefined;
    const wall = { ours: [] as number[], metrics: [] as number[], raw: [] as number[] };
    // The agent's default Hubble metrics, for the variant with them on (the agent's default).
    const metricOptions = parseHubbleMetrics(['drop', 'tcp', 'flow', 'port-distribution', 'policy']);
    if (typeof metricOptions === 'string') throw new Error(metricOptions);
    const ours = async (count: number, withMetrics: boolean): Promise<number> => {
      fill(count);
      const monitor = new Monitor(bpfRoot, { ruleForCookie: () => undefined }, log);
      const metrics = withMetrics ? new HubbleMetrics(new Registry(), metricOptions) : undefined;
      const onFlow = metrics && ((entry: FlowEntry) => metrics.observeFlow(entry.metricInput()));
      // The queue holds the whole burst: the figure is the rate without loss, loss is checked.
      observer = new FlowObserver(monitor, { capacity: 4095, queueSize: count, names, log, onFlow });
      observer.start();
      const cpu = process.cpuUsage();
      const began = performance.now();
      monitor.start();
      while (observer.stats().seenFlows + observer.stats().decodeErrors < count && observer.stats().lost.queue === 0n) await turn();
      const seconds = cpuSeconds(cpu);
      (withMetrics ? wall.metrics : wall.ours).push(count / ((performance.now() - began) / 1000));
      const kernelLost = monitor.lost();
      monitor.stop();
      observer.stop();
      const stats = observer.stats();
      if (stats.seenFlows !== count || stats.lost.queue !== 0n || kernelLost !== 0n) {
        throw new Error(`flows bench lost records: ${JSON.stringify({ ...stats, lost: String(stats.lost.queue), kernel: String(kernelLost) })}`);
      }
      return count / seconds;
    };
    const raw = async (count: number): Promise<number> => {
      fill(count);
      const ring = new RingBuffer(obj.map('events'), { lostCounter: obj.map('events_lost') });
      let read = 0;
      let checksum = 0;
      const cpu = process.cpuUsage();
      const began = performance.now();
      ring.start((view, offset) => {
        checksum = (checksum + view.getUint32(offset + 4, true)) | 0; // touch every record, as a real consumer would
        read++;
      });
      while (read < count) await turn();
      const seconds = cpuSeconds(cpu);
      wall.raw.push(count / ((performance.now() - began) / 1000));
      ring.close();
      ctx.log(`raw checksum ${checksum}`);
      return count / seconds;
    };
    const samples = await interleave(rounds, { ours: () => ours(RECORDS, false), metrics: () => ours(RECORDS, true), raw: () => raw(RECORDS) }, {
      onRound: (i, s) =>
        ctx.log(`round ${i + 1}/${rounds}: ours ${Math.round(s.ours.at(-1)!)}/s, with metrics ${Math.round(s.metrics.at(-1)!)}/s, raw ring read ${Math.round(s.raw.at(-1)!)}/s`),
    });
    const oursRate = median(samples.ours);
    const rawRate = median(samples.raw);
    ctx.emit({
      metric: 'flows_per_s',
      value: Math.round(oursRate),
      unit: 'flows/s',
      baseline: 'the same records in the same ring read by the same RingBuffer, each only touched',
      ratio: round(oursRate / rawRate, 3),
      baseline_value: Math.round(rawRate),
      better: 'higher',
      target: 500_000,
      rounds,
      records_per_round: RECORDS,
      wall_value: Math.round(median(wall.ours)),
      wall_baseline_value: Math.round(median(wall.raw)),
    });
    const metricsRate = median(samples.metrics);
    ctx.emit({
      metric: 'flows_per_s_hubble_metrics',
      value: Math.round(metricsRate),
      unit: 'flows/s',
      baseline: 'the same records in the same ring read by the same RingBuffer, each only touched',
      ratio: round(metricsRate / rawRate, 3),
      baseline_value: Math.round(rawRate),
      better: 'higher',
      target: 500_000,
      rounds,
      records_per_round: RECORDS,
      hubble_metrics: 'drop,tcp,flow,port-distribution,policy',
      wall_value: Math.round(median(wall.metrics)),
    });

    // The last round's buffer, full: what a GetFlows of all of it costs, and the filters.
    const full = observer!;
    const readRates: number[] = [];
    const flows: Flow[] = [];
    for (let i = 0; i < rounds; i++) {
      flows.length = 0;
      const cpu = process.cpuUsage();
      for await (const item of full.flows(parseFlowsRequest({ first: true }), new AbortController().signal)) if (item.flow) flows.push(item.flow);
      readRates.push(flows.length / cpuSeconds(cpu));
    }
    if (flows.length !== 4095) throw new Error(`flows bench: GetFlows streamed ${flows.length} flows, want 4095`);
    ctx.emit({ metric: 'read_flows_per_s', value: Math.round(median(readRates)), unit: 'flows/s', baseline: null, ratio: null, rounds });

    const pass = compileFilters([{ sourcePod: ['default/x'] }, { destinationPod: ['default/death'], destinationPort: ['80'], verdict: ['FORWARDED'] }], [{ sourceIp: ['10.0.1.0/24'] }]);
    const filterRates: number[] = [];
    for (let i = 0; i < rounds; i++) {
      const cpu = process.cpuUsage();
      let kept = 0;
      for (let n = 0; n < 50; n++) for (const f of flows) if (pass(f)) kept++;
      filterRates.push((50 * flows.length) / cpuSeconds(cpu));
      if (kept === 0) throw new Error('flows bench: the filter kept nothing');
    }
    ctx.emit({ metric: 'filter_per_s', value: round(median(filterRates), 0), unit: 'flows/s', baseline: null, ratio: null, rounds });
    flows.length = 0;
    observer = undefined;

    const gc = collectGarbage();
    for (const capacity of [4095, 65535]) {
      ctx.emit({ metric: `buffer_bytes_${capacity}`, value: await memory(capacity, records, gc), unit: 'bytes', baseline: null, ratio: null });
    }
  } finally {
    await cleanups.run();
  }
}
