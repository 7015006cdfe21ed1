/**
 * The state store module: the embedded store on disk (one node, the default) or etcd (several
 * nodes sharing one cluster state).
 * @module
 */
import { join } from 'node:path';
import type { Logger } from 'pino';
import { z } from 'zod';
import { EtcdStateStore, LocalStateStore, StoreError, type StateStore } from '../../store/index.ts';
import { ConfigError } from '../config.ts';
import { defineModule } from '../module.ts';
import { StoreCell } from './cells.ts';


export const storeConfig = {
  store: z.enum(['local', 'etcd']).default('local').describe('local (embedded in --state-dir, one node) or etcd (shared by several nodes)'),
  stateDir: z.string().min(1).default('/var/lib/ciliate').describe('where the embedded state store keeps its files'),
  etcdEndpoints: z.array(z.string().url()).default([]).describe('etcd client URLs, comma-separated (with --store etcd)'),
};

export const storeModule = defineModule({
  name: 'store',
  description: 'the state store: embedded on disk, or etcd',
  config: storeConfig,
  needs: {},
  provides: StoreCell,
  async start(_, { config, log }) {
    let store: StateStore;
    if (config.store === 'etcd') {
      if (config.etcdEndpoints.length === 0) throw new ConfigError('store etcd: set etcdEndpoints (--etcd-endpoints)');
      store = await EtcdStateStore.connect({ endpoints: config.etcdEndpoints });
    } else {
      store = await openStoreWaitingForLock(join(config.stateDir, 'store'), log);
    }
    return {
      value: store,
      stop: () => store.close(),
      status: () => ({ store: { kind: config.store, revision: store.revision } }),
    };
  },
});

/** How long a starting agent waits for the store lock of a predecessor that is still exiting. */
const LOCK_WAIT_MS = 10_000;

/**
 * Opens the local store, waiting while another process holds its lock: an agent restarted right
 * after a kill -9 can find the old process still tearing down (closing BPF fds takes RCU grace periods).
 */
async function openStoreWaitingForLock(dir: string, log: Logger): Promise<StateStore> {
  const deadline = Date.now() + LOCK_WAIT_MS;
  for (let attempt = 0; ; attempt++) {
    try {
      return await LocalStateStore.open(dir);
    } catch (error) {
      if (!StoreError.is(error, 'ERR_STORE_LOCKED') || Date.now() > deadline) throw error;
      if (attempt === 0) log.warn({ err: error }, 'state store is locked; waiting for its holder to exit');
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  }
}
