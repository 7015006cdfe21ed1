/**
 * The flow buffer: a ring of the most recent flows (and the lost-event markers between them),
 * numbered by a sequence that only grows, so a reader that fell behind knows exactly how many
 * entries were overwritten under it.
 * @module
 */
import type { Flow, LostEvent } from './types.ts';

export type RingEntry =
  | { readonly seq: number; readonly timeNs: bigint; readonly flow: Flow; readonly lost?: undefined }
  | { readonly seq: number; readonly timeNs: bigint; readonly lost: LostEvent; readonly flow?: undefined };

export type RingPayload = { flow: Flow; lost?: undefined } | { lost: LostEvent; flow?: undefined };

/**
 * @example
 * const ring = new FlowRing(4095);
 * ring.push(now, { flow });
 * for (let seq = ring.oldest; seq < ring.next; seq++) use(ring.at(seq)!);
 */
export class FlowRing {
  readonly capacity: number;
  readonly #slots: (RingEntry | undefined)[];
  #next = 0;
  #flows = 0;
  /** Flows among the entries held (lost-event markers take slots too). */
  #heldFlows = 0;
  #waiters: (() => void)[] = [];
  #listeners: ((entry: RingEntry) => void)[] = [];

  constructor(capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError(`flow buffer capacity must be a positive integer, got ${capacity}`);
    this.capacity = capacity;
    this.#slots = new Array<RingEntry | undefined>(capacity);
  }

  /** Sequence number the next entry gets. */
  get next(): number {
    return this.#next;
  }

  /** Sequence number of the oldest entry still held. */
  get oldest(): number {
    return Math.max(0, this.#next - this.capacity);
  }

  /** Entries held now. */
  get size(): number {
    return this.#next - this.oldest;
  }

  /** Flows held now. */
  get flows(): number {
    return this.#heldFlows;
  }

  /** Flows ever written (lost-event markers not counted). */
  get seenFlows(): number {
    return this.#flows;
  }

  /** Flows overwritten so far: the buffer held them, then needed their slots. */
  get overwritten(): number {
    return Math.max(0, this.#flows - this.capacity);
  }

  push(timeNs: bigint, payload: RingPayload): RingEntry {
    return this.#add({ seq: this.#next, timeNs, ...payload } as RingEntry);
  }

  /**
   * Adds a flow entry its producer made (the observer's, which builds its Flow only when read),
   * giving it its sequence number.
   */
  pushEntry(entry: { seq: number; readonly timeNs: bigint; readonly flow: Flow; readonly lost?: undefined }): RingEntry {
    entry.seq = this.#next;
    return this.#add(entry);
  }

  #add(entry: RingEntry): RingEntry {
    const slot = this.#next % this.capacity;
    // `lost`, not `flow`: reading an observer entry's flow builds it.
    const old = this.#slots[slot];
    if (old !== undefined && old.lost === undefined) this.#heldFlows--;
    this.#slots[slot] = entry;
    this.#next++;
    if (entry.lost === undefined) {
      this.#flows++;
      this.#heldFlows++;
    }
    for (const listener of this.#listeners) listener(entry);
    if (this.#waiters.length > 0) {
      const waiters = this.#waiters;
      this.#waiters = [];
      for (const wake of waiters) wake();
    }
    return entry;
  }

  /**
   * Calls `listener` with every entry as it is pushed (flows and loss markers), synchronously:
   * it runs on the observer's path, so it must only take the entry (the exporters queue it).
   */
  onPush(listener: (entry: RingEntry) => void): () => void {
    this.#listeners = [...this.#listeners, listener];
    return () => {
      this.#listeners = this.#listeners.filter((l) => l !== listener);
    };
  }

  /** The entry with this sequence number, while it is held. */
  at(seq: number): RingEntry | undefined {
    return seq >= this.oldest && seq < this.#next ? this.#slots[seq % this.capacity] : undefined;
  }

  /** Resolves at the next push, or when `signal` aborts. */
  wait(signal: AbortSignal): Promise<void> {
    if (signal.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        signal.removeEventListener('abort', done);
        resolve();
      };
      this.#waiters.push(done);
      signal.addEventListener('abort', done, { once: true });
    });
  }
}
