/**
 * Flow export to files, as Hubble's exporter writes them: one JSON object a line,
 * `{"flow":{…},"node_name":"n1","time":"…"}` with the flow in the same JSON as
 * `ciliate observe -o json` (proto field names, enums by name), filtered by an allowlist and a
 * denylist of FlowFilters, cut down to a field mask, into a file that rotates by size.
 *
 * The flow buffer hands every entry over as it is pushed, synchronously; an exporter only
 * filters it and queues it (bounded), and writes queued lines in batches, one write in flight at
 * a time. When
 * the file cannot keep up and the queue is full, flows are dropped and counted, and once there
 * is room again the file itself gets a `{"lost_events":{…}}` line with the count, so whoever reads
 * the file sees the gap. Loss the observer itself saw (kernel ring, decode queue) is exported as
 * `lost_events` lines too, whatever the filters: filters choose flows, they do not hide loss.
 * @module
 */
import type { Logger } from 'pino';
import type { RingEntry } from './buffer.ts';
import { compileFilters, type FlowPredicate } from './filter.ts';
import { FieldMask } from './flow-schema.ts';
import { responseJson } from './printer.ts';
import { RotatingFile } from './rotating-file.ts';
import { timestampFromNs, type FlowFilter, type LostEventSource } from './types.ts';

/** Entries waiting to be written before new ones are dropped: with flows of ~1.5 kB, some 6 MB. */
export const EXPORT_QUEUE_SIZE = 4096;

export interface FlowExporterOptions {
  /** Names the exporter in status and logs (`static` for the agent's settings, else the flow-logs config's name). */
  name: string;
  filePath: string;
  nodeName: string;
  allowlist?: readonly FlowFilter[];
  denylist?: readonly FlowFilter[];
  fieldMask?: readonly string[];
  maxSizeBytes: number;
  /** Rotated files kept; 0 keeps all. */
  maxBackups: number;
  /** Nothing is exported after this time (ms since the epoch): Cilium's flow-logs `end`. */
  endMs?: number;
  queueSize?: number;
  /** Field names for errors in the filters and mask (`flowLogs[0].includeFilters`, …). */
  fields?: { allowlist: string; denylist: string; fieldMask: string };
  log: Logger;
}

export interface ExporterStats {
  name: string;
  file: string;
  /** False once `end` has passed. */
  active: boolean;
  end?: string;
  allowlist: number;
  denylist: number;
  fieldMask: string[];
  flowsWritten: number;
  lostEventsWritten: number;
  /** Flows the filters left out. */
  filtered: number;
  /** Flows lost here: the queue was full, or a write failed. */
  dropped: number;
  queued: number;
  rotations: number;
  fileBytes: number;
  lastError?: string;
  lastErrorAt?: string;
}

/** What an exporter writes: a compiled flow predicate and mask, checked once. */
export interface CompiledExport {
  matches: FlowPredicate;
  mask: FieldMask;
}

/**
 * Compiles an exporter's filters and mask.
 * @throws InvalidRequestError naming the field (`hubbleExportAllowlist[0].verdict[0]`, `hubbleExportFieldmask[1]`)
 */
export function compileExport(options: Pick<FlowExporterOptions, 'allowlist' | 'denylist' | 'fieldMask' | 'fields'>): CompiledExport {
  const fields = options.fields ?? { allowlist: 'allowlist', denylist: 'denylist', fieldMask: 'fieldMask' };
  return {
    matches: compileFilters(options.allowlist, options.denylist, { whitelist: fields.allowlist, blacklist: fields.denylist }),
    mask: FieldMask.compile(options.fieldMask ?? [], fields.fieldMask),
  };
}

/**
 * @example
 * const exporter = new FlowExporter({ name: 'static', filePath: '/var/run/cilium/hubble/events.log', nodeName: 'n1', maxSizeBytes: 10 << 20, maxBackups: 5, log });
 * await exporter.open();
 * const off = observer.ring.onPush((entry) => exporter.offer(entry));
 */
export class FlowExporter {
  readonly name: string;
  readonly file: RotatingFile;
  readonly #options: FlowExporterOptions;
  readonly #compiled: CompiledExport;
  readonly #queue: RingEntry[] = [];
  readonly #queueSize: number;
  #flowsWritten = 0;
  #lostWritten = 0;
  #filtered = 0;
  #dropped = 0;
  /** Flows dropped since the last lost_events line. */
  #droppedPending = 0;
  /** Observer loss markers that found the queue full, by stage. */
  readonly #lostPending = new Map<LostEventSource, bigint>();
  #lastError: { message: string; at: string } | undefined;
  #writing: Promise<void> | undefined;
  #closed = false;

  /**
   * `file` lets a reconfigured exporter take over the file of the one it replaces, so the two
   * never write one path through two handles with two size counts.
   */
  constructor(options: FlowExporterOptions, file?: RotatingFile) {
    this.name = options.name;
    this.#options = options;
    this.#compiled = compileExport(options);
    this.#queueSize = options.queueSize ?? EXPORT_QUEUE_SIZE;
    this.file = file ?? new RotatingFile(options.filePath, { maxSizeBytes: options.maxSizeBytes, maxBackups: options.maxBackups });
    this.file.limits = { maxSizeBytes: options.maxSizeBytes, maxBackups: options.maxBackups };
  }

  /** Opens the file now, so a path that cannot be written is an error at configuration time. */
  open(): Promise<void> {
    return this.file.open();
  }

  get active(): boolean {
    return !this.#closed && (this.#options.endMs === undefined || Date.now() < this.#options.endMs);
  }

  /** Takes one buffer entry: the observer's hot path, so only a filter check and a push. */
  offer(entry: RingEntry): void {
    if (!this.active) return;
    // Read once: an observer entry builds its flow at each read.
    const flow = entry.flow;
    if (flow && !this.#compiled.matches(flow)) {
      this.#filtered++;
      return;
    }
    if (this.#queue.length >= this.#queueSize) {
      if (flow) {
        this.#dropped++;
        this.#droppedPending++;
      } else {
        // The observer's own loss report must not be lost in turn: kept as a count per stage.
        this.#lostPending.set(entry.lost.source, (this.#lostPending.get(entry.lost.source) ?? 0n) + BigInt(entry.lost.numEventsLost));
      }
      this.#schedule();
      return;
    }
    this.#queue.push(flow ? { seq: entry.seq, timeNs: entry.timeNs, flow } : entry);
    this.#schedule();
  }

  #schedule(): void {
    if (!this.#writing) this.#writing = new Promise((resolve) => setImmediate(resolve)).then(() => this.#drain());
  }

  async #drain(): Promise<void> {
    try {
      await this.#writeQueued();
    } catch (error) {
      this.#lastError = { message: (error as Error).message, at: new Date().toISOString() };
      this.#options.log.error({ exporter: this.name, err: error }, 'flow export failed');
    } finally {
      this.#writing = undefined;
    }
  }

  async #writeQueued(): Promise<void> {
    while (this.#queue.length > 0 || this.#droppedPending > 0 || this.#lostPending.size > 0) {
      const batch = this.#queue.splice(0, this.#queue.length);
      const lines: string[] = [];
      let flows = 0;
      let losses = 0;
      for (const entry of batch) {
        if (entry.flow) {
          flows++;
          lines.push(`${responseJson({ flow: this.#compiled.mask.apply(entry.flow), nodeName: this.#options.nodeName, time: entry.flow.time ?? timestampFromNs(entry.timeNs) }, 'json')}\n`);
        } else {
          losses++;
          lines.push(`${responseJson({ lostEvents: entry.lost, nodeName: this.#options.nodeName, time: timestampFromNs(entry.timeNs) }, 'json')}\n`);
        }
      }
      // Every flow dropped so far came after every flow of this batch: the queue was full of them.
      const now = timestampFromNs(BigInt(Date.now()) * 1_000_000n);
      for (const [source, count] of this.#lostPending) {
        losses++;
        lines.push(`${responseJson({ lostEvents: { source, numEventsLost: String(count) }, nodeName: this.#options.nodeName, time: now }, 'json')}\n`);
      }
      this.#lostPending.clear();
      const dropped = this.#droppedPending;
      this.#droppedPending = 0;
      if (dropped > 0) {
        losses++;
        const lost = { source: 'UNKNOWN_LOST_EVENT_SOURCE' as const, numEventsLost: String(dropped) };
        lines.push(`${responseJson({ lostEvents: lost, nodeName: this.#options.nodeName, time: now }, 'json')}\n`);
        this.#options.log.warn({ exporter: this.name, file: this.#options.filePath, dropped }, 'flow export could not keep up: flows dropped');
      }
      try {
        await this.file.write(lines);
        this.#flowsWritten += flows;
        this.#lostWritten += losses;
      } catch (error) {
        this.#dropped += flows;
        this.#lastError = { message: (error as Error).message, at: new Date().toISOString() };
        this.#options.log.warn({ exporter: this.name, err: error, dropped: flows }, 'flow export write failed: flows dropped');
      }
    }
  }

  /** Writes what is queued, then stops taking entries. The file stays open unless `closeFile`. */
  async close(closeFile = true): Promise<void> {
    this.#closed = true;
    while (this.#writing) await this.#writing;
    if (closeFile) await this.file.close();
  }

  stats(): ExporterStats {
    return {
      name: this.name,
      file: this.#options.filePath,
      active: this.active,
      end: this.#options.endMs === undefined ? undefined : new Date(this.#options.endMs).toISOString(),
      allowlist: this.#options.allowlist?.length ?? 0,
      denylist: this.#options.denylist?.length ?? 0,
      fieldMask: [...this.#compiled.mask.paths],
      flowsWritten: this.#flowsWritten,
      lostEventsWritten: this.#lostWritten,
      filtered: this.#filtered,
      dropped: this.#dropped,
      queued: this.#queue.length,
      rotations: this.file.rotations,
      fileBytes: this.file.size,
      lastError: this.#lastError?.message,
      lastErrorAt: this.#lastError?.at,
    };
  }
}
