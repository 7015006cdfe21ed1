/**
 * A FIFO of async steps. IPAM reads its in-memory view, picks an address and reserves it in one
 * step; running those steps one at a time per pool means concurrent callers in this process never
 * pick the same address and never waste a compare-and-swap round against each other. The writes
 * themselves run outside the queue, together. Other processes (other agents on a shared etcd) are
 * still kept apart by the store's compare-and-swap.
 * @module
 */
export class SerialQueue {
  #tail: Promise<unknown> = Promise.resolve();

  run<T>(step: () => Promise<T>): Promise<T> {
    const result = this.#tail.then(step, step);
    this.#tail = result.catch(() => {});
    return result;
  }
}

/**
 * Waits a random 0–2^attempt ms (capped at 50 ms) before a compare-and-swap retry, so writers that
 * collided do not collide again in lockstep.
 */
export function backoff(attempt: number): Promise<void> {
  const ms = Math.random() * Math.min(50, 2 ** attempt);
  return new Promise((resolve) => setTimeout(resolve, ms));
}
