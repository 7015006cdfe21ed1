/**
 * List a store prefix, then watch it from the listed revision: the way every agent view of shared
 * state starts, so that nothing written between the list and the watch is missed.
 * @module
 */
import { StoreError, type StateStore, type WatchEvent } from '../store/index.ts';

export interface FollowOptions<T> {
  /** Called for every listed entry (as a put at its modRevision), then for every change. */
  apply: (event: WatchEvent<T>) => void;
  signal: AbortSignal;
  /** The watch ended other than through `signal` (e.g. compacted history): the view is stale. */
  onEnd: (error: unknown, compacted: boolean) => void;
}

/** Resolves once the listing is applied, with the loop that applies every later change. */
export async function followPrefix<T>(store: StateStore, prefix: string, options: FollowOptions<T>): Promise<{ revision: number; loop: Promise<void> }> {
  const { revision, entries } = await store.list<T>(prefix);
  for (const entry of entries) options.apply({ type: 'put', key: entry.key, value: entry.value, revision: entry.modRevision });
  const watch = store.watch<T>(prefix, { afterRevision: revision, signal: options.signal });
  const loop = (async () => {
    try {
      for await (const event of watch) options.apply(event);
    } catch (error) {
      if (!options.signal.aborted) options.onEnd(error, StoreError.is(error, 'ERR_STORE_COMPACTED'));
    }
  })();
  return { revision, loop };
}
