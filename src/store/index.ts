/**
 * The agent's state store: a revisioned key-value store with etcd semantics (per-key
 * `modRevision`, one store-wide revision, compare-and-swap, multi-key transactions and watches
 * that replay from a revision).
 *
 * `LocalStateStore` is the embedded single-node default: a directory with a checksummed journal,
 * atomic snapshots and a pid lock; durable across restarts and crash-safe. `MemoryStateStore` has
 * the same semantics without a disk, for tests. An etcd (or Kubernetes) backend implements the
 * same `StateStore` interface.
 *
 * @example
 * const store = await LocalStateStore.open('/var/lib/ciliate/state');
 * const { revision } = await store.put('nodes/n1', { ip: '192.168.0.10' }, { expectedRevision: 0 });
 * const nodes = await store.list<{ ip: string }>('nodes/');
 * for await (const event of store.watch('nodes/', { afterRevision: nodes.revision })) console.log(event.type, event.key);
 * @module
 */
export * from './errors.ts';
export type { KeyValue, ListResult, WriteOptions, WriteResult, DeleteResult, TxnOp, TxnResult, WatchEvent, WatchOptions, StoreWatch, StateStore } from './types.ts';
export { LocalStateStore, type JournalRecovery, type LocalStateStoreOptions, type OpenReport } from './local-store.ts';
export { MemoryStateStore, type MemoryStateStoreOptions } from './memory-store.ts';
export { EtcdStateStore, type EtcdStateStoreOptions } from './etcd-store.ts';
export type { EtcdTlsOptions, EtcdAuthOptions } from './etcd-security.ts';
