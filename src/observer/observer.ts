/**
 * The observer: datapath records in, flows out. Records are queued as the ring buffer hands
 * them over (a bounded queue: the read loop never waits for decoding), decoded and named into
 * flows a batch at a time off that loop, and kept in the flow buffer that GetFlows reads.
 * Loss is counted where it happens — the kernel ring, the decode queue, a reader overtaken by
 * the buffer — and written into the stream as LostEvent entries, so no reader misses that it
 * missed something.
 * @module
 */
import type { Logger } from 'pino';
import { RecordSlots } from '../datapath/index.ts';
import { FlowRing, type RingEntry } from './buffer.ts';
import { InvalidRequestError } from './errors.ts';
import { compileFilters, type FlowPredicate } from './filter.ts';
import { FlowIngest, type FlowEntry, type FlowNames } from './flow.ts';
import { timestampToNs, type Flow, type GetFlowsRequest, type LostEvent, type LostEventSource } from './types.ts';

/**
 * Where records come from: the agent's Monitor. A listener gets `length` bytes at `offset` in
 * `record` (the ring's own memory, say), valid during the call only; without offset and length,
 * all of it.
 */
export interface RecordSource {
  onRecord(listener: (record: Uint8Array, offset?: number, length?: number) => void): () => void;
  /** The kernel ring's lost counter. */
  lost(): bigint;
  wallClockNs(monotonicNs: bigint): bigint;
}

export interface FlowObserverOptions {
  /** Flows the buffer holds (Cilium's hubble-event-buffer-capacity). */
  capacity: number;
  /** Records waiting to be decoded before new ones are dropped (Cilium's hubble-event-queue-size). */
  queueSize: number;
  names: FlowNames;
  log: Logger;
  /**
   * Told of every flow as it enters the buffer (Hubble's metrics), synchronously: keep it cheap
   * (the entry's metricInput() rather than its flow, which builds the whole message).
   */
  onFlow?: (entry: FlowEntry) => void;
  /** Told of every loss, by Hubble's LostEvent source. */
  onLost?: (source: LostEventSource, count: number) => void;
}

/** Records decoded per turn of the event loop before others get a turn. */
const DECODE_BATCH = 512;
/** How often the kernel's lost counter is read when no record arrives to prompt it. */
const LOST_POLL_MS = 1000;
/**
 * How often, at most, a drain reads it: a syscall that was 5% of the agent's CPU per connection
 * when every drain made it. A loss still reaches the buffer as a LostEvent within this long of
 * the drain after it (or LOST_POLL_MS when nothing arrives), counted whole.
 */
const LOST_READ_MIN_MS = 100;

export interface LostCounts {
  /** Records the datapath could not put in the ring. */
  kernel: bigint;
  /** Records dropped because the decode queue was full. */
  queue: bigint;
  /** Entries overwritten under readers that fell behind. */
  buffer: bigint;
}

export interface ObserverStats {
  numFlows: number;
  maxFlows: number;
  seenFlows: number;
  /** Flows the buffer held and then overwrote (history, not loss). */
  overwritten: number;
  queued: number;
  decodeErrors: number;
  lost: LostCounts;
}

/** A GetFlows request, checked. */
export interface FlowQuery {
  number: number;
  first: boolean;
  follow: boolean;
  sinceNs?: bigint;
  untilNs?: bigint;
  matches: FlowPredicate;
}

/** What GetFlows streams: a flow, or a count of events lost before it. */
export type FlowStreamItem = RingEntry;

function lostEvent(source: LostEventSource, count: bigint): LostEvent {
  return { source, numEventsLost: String(count) };
}

/**
 * Checks a GetFlowsRequest and compiles its filters.
 * @throws InvalidRequestError naming the field (`first`, `whitelist[0].verdict[0]`, …)
 */
export function parseFlowsRequest(request: GetFlowsRequest): FlowQuery {
  const number = Number(request.number ?? 0);
  if (!Number.isSafeInteger(number) || number < 0) throw new InvalidRequestError('ERR_OBSERVER_INVALID_REQUEST', 'number', `not a count: ${String(request.number)}`);
  if (request.first && request.follow) throw new InvalidRequestError('ERR_OBSERVER_INVALID_REQUEST', 'first', 'first cannot be combined with follow');
  const sinceNs = request.since ? timestampToNs(request.since) : undefined;
  const untilNs = request.until ? timestampToNs(request.until) : undefined;
  if (sinceNs !== undefined && untilNs !== undefined && untilNs < sinceNs) {
    throw new InvalidRequestError('ERR_OBSERVER_INVALID_REQUEST', 'until', 'until is before since');
  }
  return { number, first: request.first === true, follow: request.follow === true, sinceNs, untilNs, matches: compileFilters(request.whitelist, request.blacklist) };
}

/** Raw records awaiting decoding, in fixed slots: a burst neither grows the heap nor allocates. */
class RecordQueue {
  readonly slots: RecordSlots;
  #head = 0;
  #length = 0;
  constructor(size: number) {
    this.slots = new RecordSlots(size);
  }
  get length(): number {
    return this.#length;
  }
  push(record: Uint8Array, offset: number, length: number): boolean {
    const size = this.slots.lengths.length;
    if (this.#length === size) return false;
    this.slots.put((this.#head + this.#length) % size, record, offset, length);
    this.#length++;
    return true;
  }
  /** The slot of the oldest record; -1 when there is none. */
  get head(): number {
    return this.#length === 0 ? -1 : this.#head;
  }
  shift(): void {
    if (this.#length === 0) return;
    this.#head = (this.#head + 1) % this.slots.lengths.length;
    this.#length--;
  }
}

export class FlowObserver {
  readonly ring: FlowRing;
  readonly #source: RecordSource;
  readonly #onFlow: FlowObserverOptions['onFlow'];
  readonly #onLost: FlowObserverOptions['onLost'];
  readonly #log: Logger;
  readonly #queue: RecordQueue;
  readonly #lost: LostCounts = { kernel: 0n, queue: 0n, buffer: 0n };
  /** Queue drops not yet written into the buffer as a LostEvent. */
  #queueLostPending = 0n;
  #kernelLostSeen = 0n;
  #kernelLostReadAt = Number.NEGATIVE_INFINITY;
  #decodeErrors = 0;
  readonly #ingest: FlowIngest;
  /** The records of the flows the buffer holds, each in the slot of its entry. */
  readonly #records: RecordSlots;
  #draining = false;
  #unsubscribe: (() => void) | undefined;
  #poll: NodeJS.Timeout | undefined;
  readonly startedAt = process.hrtime.bigint();

  constructor(source: RecordSource, options: FlowObserverOptions) {
    if (!Number.isInteger(options.queueSize) || options.queueSize < 1) throw new RangeError(`event queue size must be a positive integer, got ${options.queueSize}`);
    this.ring = new FlowRing(options.capacity);
    const ring = this.ring;
    this.#records = new RecordSlots(options.capacity);
    this.#source = source;
    this.#ingest = new FlowIngest({
      names: options.names,
      wallClockNs: (ns) => source.wallClockNs(ns),
      records: this.#records,
      holds: (entry) => ring.at(entry.seq) === entry,
    });
    this.#onFlow = options.onFlow;
    this.#onLost = options.onLost;
    this.#log = options.log;
    this.#queue = new RecordQueue(options.queueSize);
  }

  start(): void {
    // What the kernel lost before this observer started is not this observer's to report.
    this.#kernelLostSeen = this.#readKernelLost();
    this.#unsubscribe = this.#source.onRecord((record, offset = 0, length = record.length - offset) => this.#enqueue(record, offset, length));
    this.#poll = setInterval(() => this.#noteKernelLoss(), LOST_POLL_MS).unref();
  }

  stop(): void {
    this.#unsubscribe?.();
    this.#unsubscribe = undefined;
    clearInterval(this.#poll);
  }

  stats(): ObserverStats {
    return {
      numFlows: this.ring.flows,
      maxFlows: this.ring.capacity,
      seenFlows: this.ring.seenFlows,
      overwritten: this.ring.overwritten,
      queued: this.#queue.length,
      decodeErrors: this.#decodeErrors,
      lost: { ...this.#lost },
    };
  }

  /** Loss so far, one LostEvent per stage (zero counts included: nothing lost is also news). */
  lostEvents(): LostEvent[] {
    return [
      lostEvent('PERF_EVENT_RING_BUFFER', this.#lost.kernel),
      lostEvent('OBSERVER_EVENTS_QUEUE', this.#lost.queue),
      lostEvent('HUBBLE_RING_BUFFER', this.#lost.buffer),
    ];
  }

  /** Flows in the last minute, per second. */
  flowsRate(nowNs: bigint): number {
    const since = nowNs - 60_000_000_000n;
    let count = 0;
    for (let seq = this.ring.next - 1; seq >= this.ring.oldest; seq--) {
      const entry = this.ring.at(seq)!;
      if (entry.timeNs < since) break;
      if (entry.lost === undefined) count++;
    }
    return count / 60;
  }

  #readKernelLost(): bigint {
    try {
      return this.#source.lost();
    } catch (error) {
      this.#log.warn({ err: error }, 'reading the events ring lost counter failed');
      return this.#kernelLostSeen;
    }
  }

  #noteKernelLoss(): void {
    const lost = this.#readKernelLost();
    if (lost <= this.#kernelLostSeen) return;
    const count = lost - this.#kernelLostSeen;
    this.#kernelLostSeen = lost;
    this.#lost.kernel += count;
    this.#onLost?.('PERF_EVENT_RING_BUFFER', Number(count));
    this.ring.push(BigInt(Date.now()) * 1_000_000n, { lost: lostEvent('PERF_EVENT_RING_BUFFER', count) });
  }

  #enqueue(record: Uint8Array, offset: number, length: number): void {
    if (!this.#queue.push(record, offset, length)) {
      this.#lost.queue++;
      this.#queueLostPending++;
    }
    if (!this.#draining) {
      this.#draining = true;
      setImmediate(() => this.#drain());
    }
  }

  #drain(): void {
    const now = performance.now();
    if (now - this.#kernelLostReadAt >= LOST_READ_MIN_MS) {
      this.#kernelLostReadAt = now;
      this.#noteKernelLoss();
    }
    if (this.#queueLostPending > 0n) {
      this.#onLost?.('OBSERVER_EVENTS_QUEUE', Number(this.#queueLostPending));
      this.ring.push(BigInt(Date.now()) * 1_000_000n, { lost: lostEvent('OBSERVER_EVENTS_QUEUE', this.#queueLostPending) });
      this.#queueLostPending = 0n;
    }
    const queue = this.#queue;
    const waiting = queue.slots;
    for (let i = 0; i < DECODE_BATCH; i++) {
      const slot = queue.head;
      if (slot < 0) break;
      const from = waiting.offset(slot);
      const length = waiting.lengths[slot];
      try {
        const entry = this.#ingest.entry(waiting.bytes, from, length);
        // Into the slot of the entry it became, the buffer's next, only once it has been read
        // whole: a record refused must not overwrite the entry that still holds that slot.
        this.#records.put(this.ring.next % this.ring.capacity, waiting.bytes, from, length);
        this.ring.pushEntry(entry);
        this.#onFlow?.(entry);
      } catch (error) {
        this.#decodeErrors++;
        this.#log.warn({ err: error }, 'making a flow of a datapath event failed');
      } finally {
        queue.shift();
      }
    }
    if (this.#queue.length > 0 || this.#queueLostPending > 0n) setImmediate(() => this.#drain());
    else this.#draining = false;
  }

  /**
   * The entries a GetFlows request asks for, oldest first; with `follow`, then every new one
   * until `signal` aborts or `until` passes. A reader the buffer overtakes gets a LostEvent
   * (HUBBLE_RING_BUFFER) with the count it missed.
   */
  async *flows(query: FlowQuery, signal: AbortSignal): AsyncGenerator<FlowStreamItem> {
    const ring = this.ring;
    const inTime = (entry: RingEntry) => (query.sinceNs === undefined || entry.timeNs >= query.sinceNs) && (query.untilNs === undefined || entry.timeNs <= query.untilNs);
    // What is streamed of an entry: its flow built once (each read of an observer entry's flow
    // builds it), or nothing when the request does not want it.
    const wanted = (entry: RingEntry): FlowStreamItem | undefined => {
      if (entry.lost !== undefined) return entry;
      if (!inTime(entry)) return undefined;
      const flow = entry.flow;
      return query.matches(flow) ? { seq: entry.seq, timeNs: entry.timeNs, flow } : undefined;
    };
    let cursor: number;
    let limit = Infinity;
    if (query.first) {
      cursor = ring.oldest;
      if (query.number > 0) limit = query.number;
    } else if (query.number > 0) {
      // The last `number` matching flows: walk back to the earliest of them.
      cursor = ring.next;
      let found = 0;
      while (cursor > ring.oldest && found < query.number) {
        const entry = ring.at(cursor - 1)!;
        if (entry.lost === undefined && wanted(entry)) found++;
        cursor--;
      }
    } else if (query.follow && query.sinceNs === undefined) {
      cursor = ring.next;
    } else {
      cursor = ring.oldest;
    }
    let sent = 0;
    for (;;) {
      while (cursor < ring.next) {
        if (signal.aborted) return;
        if (cursor < ring.oldest) {
          const missed = BigInt(ring.oldest - cursor);
          this.#lost.buffer += missed;
          this.#onLost?.('HUBBLE_RING_BUFFER', Number(missed));
          cursor = ring.oldest;
          yield { seq: cursor, timeNs: BigInt(Date.now()) * 1_000_000n, lost: lostEvent('HUBBLE_RING_BUFFER', missed) };
          continue;
        }
        const entry = ring.at(cursor++)!;
        if (query.untilNs !== undefined && entry.lost === undefined && entry.timeNs > query.untilNs) return;
        const item = wanted(entry);
        if (item === undefined) continue;
        yield item;
        if (item.lost === undefined && ++sent >= limit) return;
      }
      if (!query.follow || signal.aborted) return;
      if (query.untilNs === undefined) {
        await ring.wait(signal);
        continue;
      }
      // Following up to `until`: the stream ends when that time comes, flows or not.
      const left = Number((query.untilNs - BigInt(Date.now()) * 1_000_000n) / 1_000_000n);
      if (left < 0) return;
      const timeout = AbortSignal.any([signal, AbortSignal.timeout(left + 1)]);
      await ring.wait(timeout);
      if (!signal.aborted && timeout.aborted) return;
    }
  }
}
