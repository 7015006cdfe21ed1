/**
 * The agent's view of datapath events: it is the one consumer of the ciliate_events ring buffer,
 * decodes each trace, drop and policy-verdict record, names what the numbers mean (the rule a
 * cookie stands for, identities, endpoints) and keeps the most recent ones for `ciliate monitor`.
 * @module
 */
import { join } from 'node:path';
import type { Logger } from 'pino';
import { BpfMap, RingBuffer } from '../ebpf/index.ts';
import { decodeEvent, MapName, RecordSlots, type DatapathEvent } from '../datapath/index.ts';
import { identityName } from '../identity/index.ts';

export interface MonitorEvent {
  time: string;
  kind: DatapathEvent['kind'];
  /** One line, in the spirit of `hubble observe -o compact`. */
  summary: string;
  source: string;
  destination: string;
  srcIdentity: number;
  dstIdentity: number;
  /** policy-verdict: the rule that decided (kind/namespace/name), when one did. */
  rule?: string;
  /** drop: Cilium's drop reason name. */
  dropReason?: string;
  event: Omit<DatapathEvent, 'data'>;
}

/** How often the agent reads the events ring when the datapath has not woken it. */
const EVENT_DRAIN_INTERVAL_MS = 20;

export interface MonitorNames {
  ruleForCookie(cookie: number): string | undefined;
}

export class Monitor {
  readonly #ring: RingBuffer;
  readonly #names: MonitorNames;
  readonly #log: Logger;
  readonly #capacity: number;
  /**
   * Raw records in `capacity` slots of MAX_EVENT_BYTES (slot = count % capacity), decoded on
   * demand: one arena, so a busy datapath costs a copy per record and no allocation.
   */
  readonly #recent: RecordSlots;
  #next = 0;
  readonly #listeners = new Set<(event: MonitorEvent) => void>();
  readonly #recordListeners = new Set<(record: Uint8Array, offset: number, length: number) => void>();
  readonly #bootTimeOffsetNs: bigint;

  constructor(bpfRoot: string, names: MonitorNames, log: Logger, capacity = 4096) {
    const maps = join(bpfRoot, 'maps');
    using events = BpfMap.openPinned(join(maps, MapName.EVENTS));
    using lost = BpfMap.openPinned(join(maps, MapName.EVENTS_LOST));
    this.#ring = new RingBuffer(events, { lostCounter: lost });
    this.#names = names;
    this.#log = log;
    this.#capacity = capacity;
    this.#recent = new RecordSlots(capacity);
    // Events carry bpf_ktime_get_ns (monotonic since boot); wall clock = boot time + that.
    this.#bootTimeOffsetNs = BigInt(Date.now()) * 1_000_000n - process.hrtime.bigint();
  }

  start(): void {
    this.#ring.start(
      (_view, offset, length, bytes) => {
        // Copy only: decoding and naming wait until someone asks, so a busy datapath costs the
        // agent one small copy per event rather than a decode and string formatting.
        const slot = this.#next % this.#capacity;
        this.#recent.put(slot, bytes, offset, length);
        this.#next++;
        for (const listener of this.#recordListeners) listener(bytes, offset, length);
        if (this.#listeners.size > 0) {
          const event = this.#describeRecord(slot);
          if (event) for (const listener of this.#listeners) listener(event);
        }
      },
      {
        // The datapath wakes this reader only once a batch waits (CILIATE_EVENTS_WAKEUP_BYTES in
        // bpf/lib/events.h); the timer bounds how long a quiet node's events wait to be seen.
        drainIntervalMs: EVENT_DRAIN_INTERVAL_MS,
        onError: (error) => this.#log.warn({ err: error }, 'reading a datapath event failed'),
      },
    );
    this.#ring.unref();
  }

  #describeRecord(slot: number): MonitorEvent | undefined {
    try {
      return this.#describe(decodeEvent(this.#recent.bytes, this.#recent.offset(slot), this.#recent.lengths[slot]));
    } catch (error) {
      this.#log.warn({ err: error }, 'decoding a datapath event failed');
      return undefined;
    }
  }

  stop(): void {
    this.#ring.close();
  }

  recent(last: number): MonitorEvent[] {
    const count = Math.min(last, this.#next, this.#capacity);
    const out: MonitorEvent[] = [];
    for (let i = this.#next - count; i < this.#next; i++) {
      const event = this.#describeRecord(i % this.#capacity);
      if (event) out.push(event);
    }
    return out;
  }

  stats() {
    return this.#ring.stats();
  }

  /** Records the datapath could not reserve in the ring, so far (its lost counter, summed over CPUs). */
  lost(): bigint {
    return this.#ring.lost();
  }

  /**
   * Every raw record from now on, undecoded, as it is read: `length` bytes at `offset` in the
   * ring's own memory, valid during the call only. The listener must only copy it into a queue
   * (it runs inside the ring's read loop). Returns the unsubscribe.
   */
  onRecord(listener: (record: Uint8Array, offset: number, length: number) => void): () => void {
    this.#recordListeners.add(listener);
    return () => this.#recordListeners.delete(listener);
  }

  /** Nanoseconds since the epoch of an event's bpf_ktime_get_ns timestamp. */
  wallClockNs(monotonicNs: bigint): bigint {
    return this.#bootTimeOffsetNs + monotonicNs;
  }

  /** Every event from now on, as an async iterable that ends when `signal` aborts. */
  async *follow(signal: AbortSignal): AsyncGenerator<MonitorEvent> {
    const queue: MonitorEvent[] = [];
    let wake: (() => void) | undefined;
    const listener = (event: MonitorEvent) => {
      if (queue.length < 10_000) queue.push(event);
      wake?.();
    };
    this.#listeners.add(listener);
    const onAbort = () => wake?.();
    signal.addEventListener('abort', onAbort);
    try {
      while (!signal.aborted) {
        while (queue.length > 0) yield queue.shift()!;
        await new Promise<void>((resolve) => (wake = resolve));
        wake = undefined;
      }
    } finally {
      this.#listeners.delete(listener);
      signal.removeEventListener('abort', onAbort);
    }
  }

  #describe(event: DatapathEvent): MonitorEvent {
    const { data: _data, ...rest } = event;
    const ip = event.packet.ipv4;
    const l4 = event.packet.l4 && 'sourcePort' in event.packet.l4 ? event.packet.l4 : undefined;
    const endpoint = (addr: string | undefined, port: number | undefined, identity: number) =>
      `${addr ?? '?'}${port ? `:${port}` : ''} (${identityName(identity)})`;
    const source = endpoint(ip?.source, l4?.sourcePort, event.srcIdentity);
    const destination = endpoint(ip?.destination, l4?.destinationPort, event.dstIdentity);
    const arrow = event.isReply ? '<-' : '->';
    const [from, to] = event.isReply ? [destination, source] : [source, destination];
    const flagNames = l4 && 'flagNames' in l4 ? l4.flagNames : [];
    const flags = flagNames.length ? ` (TCP Flags: ${flagNames.join(', ')})` : '';
    let summary: string;
    let rule: string | undefined;
    let dropReason: string | undefined;
    if (event.kind === 'policy-verdict') {
      rule = event.cookie ? this.#names.ruleForCookie(event.cookie) : undefined;
      const verdict = event.allowed ? 'ALLOWED' : 'DENIED';
      summary = `${from} ${arrow} ${to} policy-verdict:${event.matchName} ${event.directionName.toUpperCase()} ${verdict} (${event.protocolName})${rule ? ` [${rule}]` : ''}`;
    } else if (event.kind === 'drop') {
      dropReason = event.reasonName;
      summary = `${from} ${arrow} ${to} ${event.reasonName} DROPPED${flags}`;
    } else {
      summary = `${from} ${arrow} ${to} ${event.observationPointName} FORWARDED${flags}`;
    }
    const time = new Date(Number(this.wallClockNs(event.timestampNs) / 1_000_000n)).toISOString();
    return { time, kind: event.kind, summary, source, destination, srcIdentity: event.srcIdentity, dstIdentity: event.dstIdentity, rule, dropReason, event: rest };
  }
}
