/**
 * The async-iterator side of `StateStore.watch`: a queue per watcher that the store pushes
 * committed events into, and that `for await` drains.
 *
 * The queue is unbounded on purpose: the store commits synchronously and must never wait for a
 * slow consumer (that would stall every writer), and agent-side watchers (IPAM, identity cache)
 * drain fast. A consumer that stops reading should `close()` its watch.
 * @module
 */
import type { StoreWatch, WatchEvent } from './types.ts';

export class Watcher<T = unknown> implements StoreWatch<T> {
  readonly prefix: string;
  #queue: WatchEvent<T>[] = [];
  #waiter: { resolve: (result: IteratorResult<WatchEvent<T>, undefined>) => void; reject: (error: unknown) => void } | undefined;
  #done = false;
  #error: unknown;
  #onClose: (watcher: Watcher<T>) => void;
  #signal: AbortSignal | undefined;
  #abort = (): void => this.close();

  constructor(prefix: string, onClose: (watcher: Watcher<T>) => void, signal?: AbortSignal) {
    this.prefix = prefix;
    this.#onClose = onClose;
    this.#signal = signal;
    if (signal?.aborted) this.#finish();
    else signal?.addEventListener('abort', this.#abort, { once: true });
  }

  /** Queues an event, or hands it straight to a pending `next()`. */
  push(event: WatchEvent<T>): void {
    if (this.#done) return;
    if (this.#waiter) {
      const waiter = this.#waiter;
      this.#waiter = undefined;
      waiter.resolve({ value: event, done: false });
    } else {
      this.#queue.push(event);
    }
  }

  /** Ends the watch with an error; queued events are still delivered first. */
  fail(error: unknown): void {
    if (this.#done) return;
    this.#error = error;
    this.#finish();
  }

  /** Ends the watch; queued events are still delivered, then the iterator is done. */
  close(): void {
    this.#finish();
  }

  next(): Promise<IteratorResult<WatchEvent<T>, undefined>> {
    const event = this.#queue.shift();
    if (event !== undefined) return Promise.resolve({ value: event, done: false });
    if (this.#done) {
      if (this.#error !== undefined) {
        const error = this.#error;
        // Report the error once; afterwards the iterator is simply finished.
        this.#error = undefined;
        return Promise.reject(error);
      }
      return Promise.resolve({ value: undefined, done: true });
    }
    return new Promise((resolve, reject) => {
      this.#waiter = { resolve, reject };
    });
  }

  /** Called by `for await` on `break`/`throw`: stop at once and drop what is queued. */
  return(): Promise<IteratorResult<WatchEvent<T>, undefined>> {
    this.#queue = [];
    this.#error = undefined;
    this.#finish();
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  #finish(): void {
    if (this.#done) return;
    this.#done = true;
    this.#signal?.removeEventListener('abort', this.#abort);
    this.#onClose(this);
    if (this.#waiter) {
      const waiter = this.#waiter;
      this.#waiter = undefined;
      if (this.#error !== undefined) {
        const error = this.#error;
        this.#error = undefined;
        waiter.reject(error);
      } else {
        waiter.resolve({ value: undefined, done: true });
      }
    }
  }
}
