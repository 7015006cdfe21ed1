/**
 * The state store module: the embedded store on disk (one node, the default) or etcd (several
 * nodes sharing one cluster state).
 *
 * A torn journal tail that opening had to cut off is never passed over: it is logged at error
 * level, recorded in the store (under `store/recoveries/`, so it outlives restarts) and keeps the
 * module degraded until an operator, having checked the node's endpoints against the kernel,
 * acknowledges it (`ciliate store acknowledge`, `POST /v1/store/recoveries/acknowledge`).
 * @module
 */
import { join } from 'node:path';
import type { Logger } from 'pino';
import { z } from 'zod';
import { EtcdStateStore, LocalStateStore, StoreError, type JournalRecovery } from '../../store/index.ts';
import { ConfigError } from '../config.ts';
import { defineModule } from '../module.ts';
import { StoreCell } from './cells.ts';


export const storeConfig = {
  store: z.enum(['local', 'etcd']).default('local').describe('local (embedded in --state-dir, one node) or etcd (shared by several nodes)'),
  stateDir: z.string().min(1).default('/var/lib/ciliate').describe('where the embedded state store keeps its files'),
  etcdEndpoints: z.array(z.string().url()).default([]).describe('etcd client URLs, comma-separated (with --store etcd)'),
};

/** Unacknowledged losses of the embedded store, one key per recovery: what a reconciler can check the kernel against. */
export const STORE_RECOVERIES_PREFIX = 'store/recoveries/';

/** A dropped journal tail as kept in the store: where, how much, the last revision kept, and when. */
export interface StoreRecoveryRecord extends Omit<JournalRecovery, 'message'> {
  /** When the agent opened the store and cut the tail off (ISO 8601). */
  readonly at: string;
}

export const storeModule = defineModule({
  name: 'store',
  description: 'the state store: embedded on disk, or etcd',
  config: storeConfig,
  needs: {},
  provides: StoreCell,
  async start(_, { config, log, api }) {
    if (config.store === 'etcd') {
      if (config.etcdEndpoints.length === 0) throw new ConfigError('store etcd: set etcdEndpoints (--etcd-endpoints)');
      const store = await EtcdStateStore.connect({ endpoints: config.etcdEndpoints });
      return { value: store, stop: () => store.close(), status: () => ({ store: { kind: config.store, revision: store.revision } }) };
    }
    const store = await openStoreWaitingForLock(join(config.stateDir, 'store'), log);
    if (store.recovery !== undefined) {
      const { message, ...fields } = store.recovery;
      log.error({ recovery: fields }, `${message}; the agent stays degraded until this is acknowledged (ciliate store acknowledge)`);
      const record: StoreRecoveryRecord = { ...fields, at: new Date().toISOString() };
      await store.put(`${STORE_RECOVERIES_PREFIX}${record.at}`, record);
    }
    // Read once, then kept current by this module's own writes: health() must not wait on the store.
    let recoveries = (await store.list<StoreRecoveryRecord>(STORE_RECOVERIES_PREFIX)).entries.map((e) => e.value);
    api.route('POST', '/v1/store/recoveries/acknowledge', async () => {
      const { entries, revision } = await store.list<StoreRecoveryRecord>(STORE_RECOVERIES_PREFIX);
      const deleted = entries.length === 0 ? { revision } : await store.transaction(entries.map((e) => ({ type: 'delete', key: e.key, expectedRevision: e.modRevision })));
      recoveries = [];
      if (entries.length > 0) log.warn({ acknowledged: entries.length }, 'store recoveries acknowledged');
      return { acknowledged: entries.map((e) => e.value), revision: deleted.revision };
    });
    return {
      value: store,
      stop: () => store.close(),
      health: () => {
        const last = recoveries.at(-1);
        if (last === undefined) return { degraded: false };
        return {
          degraded: true,
          reason:
            `the state store lost a journal tail of ${last.droppedBytes} bytes at byte ${last.truncatedAt} of ${last.file} (${last.reason}) at ${last.at}; ` +
            `state after revision ${last.lastRevision} may be missing: check the node's endpoints against the kernel, then run ciliate store acknowledge`,
        };
      },
      status: () => ({ store: { kind: config.store, revision: store.revision, ...(recoveries.length > 0 ? { recovered: recoveries } : {}) } }),
    };
  },
});

/** How long a starting agent waits for the store lock of a predecessor that is still exiting. */
const LOCK_WAIT_MS = 10_000;

/**
 * Opens the local store, waiting while another process holds its lock: an agent restarted right
 * after a kill -9 can find the old process still tearing down (closing BPF fds takes RCU grace periods).
 * The loss a recovery reports is logged by the caller, so the store's own warning is turned off.
 */
async function openStoreWaitingForLock(dir: string, log: Logger): Promise<LocalStateStore> {
  const deadline = Date.now() + LOCK_WAIT_MS;
  for (let attempt = 0; ; attempt++) {
    try {
      return await LocalStateStore.open(dir, { onRecovery: () => {} });
    } catch (error) {
      if (!StoreError.is(error, 'ERR_STORE_LOCKED') || Date.now() > deadline) throw error;
      if (attempt === 0) log.warn({ err: error }, 'state store is locked; waiting for its holder to exit');
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }
}
