/**
 * The process sensor: bpf_runtime.o loaded, its exec, fork and exit programs attached to BTF
 * tracepoints, and its ring buffer read into decoded records. Unpinned on purpose: the cache it
 * feeds is rebuilt from /proc at every start, so nothing has to survive a restart, and a crashed
 * agent leaves no program behind (the links die with their fds).
 * @module
 */
import { join } from 'node:path';
import { BpfObject, RingBuffer, attachTracing, type Link } from '../ebpf/index.ts';
import { decodeRuntimeRecord, type RuntimeRecord } from './events.ts';

const PROGRAMS = ['runtime_exec', 'runtime_fork', 'runtime_exit'] as const;

/** Longest an event waits in the ring when fewer than the wakeup mark's bytes have come. */
const DRAIN_INTERVAL_MS = 20;

export interface SensorOptions {
  /** build/bpf/bpf_runtime.o by default. */
  objectPath?: string;
  /** Ring buffer bytes (a power of two, a multiple of the page size). Default 4 MiB. */
  ringBytes?: number;
  onRecord(record: RuntimeRecord): void;
  onError(error: unknown): void;
}

export interface SensorStats {
  records: number;
  /** Records the kernel side could not put into the full ring. */
  lost: bigint;
  /** Records this reader could not decode. */
  undecodable: number;
}

export const DEFAULT_OBJECT_PATH = join(import.meta.dirname, '../../build/bpf/bpf_runtime.o');

export class ProcessSensor implements Disposable {
  readonly #object: BpfObject;
  readonly #links: Link[] = [];
  readonly #ring: RingBuffer;
  readonly #handler: (view: DataView, offset: number, length: number, bytes: Uint8Array) => void;
  #undecodable = 0;

  constructor(options: SensorOptions) {
    const object = BpfObject.load(options.objectPath ?? DEFAULT_OBJECT_PATH, { maxEntries: options.ringBytes ? { runtime_events: options.ringBytes } : undefined });
    let ring: RingBuffer | undefined;
    try {
      ring = new RingBuffer(object.map('runtime_events'), { lostCounter: object.map('runtime_events_lost') });
      this.#ring = ring;
      this.#handler = (_view, offset, length, bytes) => {
        // A view, not a copy: decoding is synchronous and copies what it keeps (strings, numbers).
        const record = decodeRuntimeRecord(Buffer.from(bytes.buffer, bytes.byteOffset + offset, length));
        if (record) options.onRecord(record);
        else this.#undecodable++;
      };
      // The reader runs before the programs attach: the first events wait in the ring, not nowhere.
      // The programs wake the reader per 16 KiB of events (bpf_runtime.c): the timer bounds how
      // long a lone event waits.
      this.#ring.start(this.#handler, { onError: options.onError, drainIntervalMs: DRAIN_INTERVAL_MS });
      for (const name of PROGRAMS) this.#links.push(attachTracing(object.program(name)));
    } catch (error) {
      for (const link of this.#links) link.close();
      ring?.close();
      object.close();
      throw error;
    }
    this.#object = object;
  }

  /** The loaded object: TracingPolicies attach its generic program and write its maps. */
  get object(): BpfObject {
    return this.#object;
  }

  /** Reads what is in the ring now (the started reader also does, from the event loop). */
  drain(): void {
    this.#ring.consume(this.#handler);
  }

  /** The kernel's ids of the attached programs (for status, and to check nothing outlives us). */
  programIds(): number[] {
    return PROGRAMS.map((name) => this.#object.program(name).info().id);
  }

  stats(): SensorStats {
    const stats = this.#ring.stats();
    return { records: stats.records, lost: stats.lost, undecodable: this.#undecodable };
  }

  close(): void {
    for (const link of this.#links.splice(0)) link.close();
    this.#ring.close();
    this.#object.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
