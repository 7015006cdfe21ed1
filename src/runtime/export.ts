/**
 * Tetragon's JSON export: one `GetEventsResponse` a line (protojson, proto names) appended to a
 * size-rotated file, after the export allow and deny lists (--export-allowlist/--export-denylist:
 * JSON filters, one a line). Writes are batched and off the event path; a queue bound keeps a
 * slow disk from growing the agent, and what it drops is counted.
 * @module
 */
import { RotatingFile } from '../observer/index.ts';
import { RuntimeError } from './errors.ts';
import { compileFilters, type EventFilter } from './filter.ts';
import type { TetragonEvent } from './types.ts';

const FILTER_KEYS = new Set(['binary_regex', 'namespace', 'pid', 'pid_set', 'event_set', 'pod_regex', 'arguments_regex', 'labels']);

/** Events waiting for the file above which new ones are dropped (and counted). */
const EXPORT_QUEUE_LIMIT = 65536;

/**
 * Filters written as JSON objects, one a line (or several on one line, as Tetragon accepts).
 * @throws RuntimeError naming `setting`, the filter's position and the field
 */
export function parseEventFilters(text: string, setting: string): EventFilter[] {
  const filters: EventFilter[] = [];
  const trimmed = text.trim();
  if (!trimmed) return filters;
  // Concatenated objects: `{…}\n{…}` or `{…}{…}`, as a JSON array once joined by commas.
  let parsed: unknown;
  try {
    parsed = JSON.parse(`[${trimmed.replace(/}\s*{/g, '},{')}]`);
  } catch (error) {
    throw new RuntimeError('ERR_RUNTIME_FILTER', `${setting}: not JSON objects: ${(error as Error).message}`);
  }
  (parsed as unknown[]).forEach((item, i) => {
    if (typeof item !== 'object' || item === null || Array.isArray(item)) throw new RuntimeError('ERR_RUNTIME_FILTER', `${setting}[${i}]: want a JSON object`);
    for (const [key, value] of Object.entries(item)) {
      if (!FILTER_KEYS.has(key)) throw new RuntimeError('ERR_RUNTIME_FILTER', `${setting}[${i}].${key}: unknown filter field (known: ${[...FILTER_KEYS].join(', ')})`);
      if (!Array.isArray(value)) throw new RuntimeError('ERR_RUNTIME_FILTER', `${setting}[${i}].${key}: want a list`);
    }
    filters.push(item as EventFilter);
  });
  // Compiled once here so a bad regex is refused at start, naming the setting.
  try {
    compileFilters(filters);
  } catch (error) {
    throw new RuntimeError('ERR_RUNTIME_FILTER', `${setting}: ${(error as Error).message}`);
  }
  return filters;
}

export interface EventExporterOptions {
  path: string;
  maxSizeBytes: number;
  maxBackups: number;
  allowlist?: EventFilter[];
  denylist?: EventFilter[];
  onError?(error: unknown): void;
}

export interface EventExporterStats {
  path: string;
  written: number;
  dropped: number;
  rotations: number;
}

export class EventExporter {
  readonly #file: RotatingFile;
  readonly #pass: (event: TetragonEvent) => boolean;
  readonly #options: EventExporterOptions;
  #queue: string[] = [];
  #flushing: Promise<void> | undefined;
  #written = 0;
  #dropped = 0;

  constructor(options: EventExporterOptions) {
    this.#options = options;
    this.#file = new RotatingFile(options.path, { maxSizeBytes: options.maxSizeBytes, maxBackups: options.maxBackups });
    this.#pass = compileFilters(options.allowlist, options.denylist);
  }

  open(): Promise<void> {
    return this.#file.open();
  }

  /** Queues an event (when it passes the lists); the file is written on a later turn. */
  write(event: TetragonEvent): void {
    if (!this.#pass(event)) return;
    if (this.#queue.length >= EXPORT_QUEUE_LIMIT) {
      this.#dropped++;
      return;
    }
    this.#queue.push(`${JSON.stringify(event)}\n`);
    this.#flushing ??= this.#flush();
  }

  /** Resolves once everything queued so far is in the file. */
  async flush(): Promise<void> {
    while (this.#flushing) await this.#flushing;
  }

  async #flush(): Promise<void> {
    try {
      while (this.#queue.length > 0) {
        const lines = this.#queue;
        this.#queue = [];
        await this.#file.write(lines);
        this.#written += lines.length;
      }
    } catch (error) {
      this.#options.onError?.(error);
    } finally {
      this.#flushing = undefined;
    }
  }

  stats(): EventExporterStats {
    return { path: this.#options.path, written: this.#written, dropped: this.#dropped, rotations: this.#file.rotations };
  }

  async close(): Promise<void> {
    await this.flush();
    await this.#file.close();
  }
}
