/**
 * The ipcache as a table: every prefix the node knows an identity (and maybe a tunnel endpoint)
 * for, from several sources — local endpoints, remote nodes' pod CIDRs, remote endpoints. One
 * reconciler writes each change into the ciliate_ipcache map; nothing rewrites the map whole.
 * The table owns the whole map: every refresh rewrites entries that drifted and deletes entries
 * no source wants.
 * @module
 */
import type { Logger } from 'pino';
import type { BpfMap } from '../ebpf/index.ts';
import { IpcacheFlag, type RemoteEndpointInfo } from '../datapath/index.ts';
import { Reconciler, Table, type ReconcilerHealth } from '../statedb/index.ts';
import { Prefix } from '../net/index.ts';

export type IpcacheSource = 'local-node' | 'local-endpoint' | 'remote-node' | 'remote-endpoint' | 'cidr-policy';

export interface IpcacheEntry {
  /** a.b.c.d/len */
  prefix: string;
  identity: number;
  /** Underlay address of the node that hosts the prefix; absent for local prefixes. */
  tunnelEndpoint?: string;
  source: IpcacheSource;
}

type IpcacheMap = BpfMap<{ prefixlen: number; ip: string }, RemoteEndpointInfo>;

function mapKey(prefix: string): { prefixlen: number; ip: string } {
  const parsed = Prefix.parse(prefix, { bareAddress: true, hostBits: 'mask', family: 4 });
  return { ip: parsed.addr.toString(), prefixlen: parsed.bits };
}

function mapValue(entry: IpcacheEntry): RemoteEndpointInfo {
  return {
    sec_identity: entry.identity,
    tunnel_endpoint: entry.tunnelEndpoint ?? '0.0.0.0',
    flags: entry.tunnelEndpoint ? IpcacheFlag.HAS_TUNNEL_EP : 0,
  };
}

export interface IpcacheOptions {
  /** How often the map is compared with the table and repaired; 0: never. */
  refreshIntervalMs?: number;
}

export class Ipcache {
  readonly table = new Table<IpcacheEntry>('ipcache', (entry) => entry.prefix, {
    equals: (a, b) => a.identity === b.identity && a.tunnelEndpoint === b.tunnelEndpoint && a.source === b.source,
  });
  readonly #reconciler: Reconciler<IpcacheEntry, RemoteEndpointInfo>;

  constructor(map: IpcacheMap, log: Logger, options: IpcacheOptions = {}) {
    this.#reconciler = new Reconciler<IpcacheEntry, RemoteEndpointInfo>({
      name: 'ipcache',
      table: this.table,
      refreshIntervalMs: options.refreshIntervalMs,
      // Endpoints and remote nodes fill the table after the ipcache starts: a restarted agent
      // must not prune their entries before they are asked for again.
      refreshOnStart: false,
      ops: {
        update: (entry) => map.update(mapKey(entry.prefix), mapValue(entry)),
        delete: (entry) => void map.delete(mapKey(entry.prefix)),
        list: () => [...map.entries()].map(([key, value]) => [`${key.ip}/${key.prefixlen}`, value] as const),
        equal: (entry, actual) => {
          const want = mapValue(entry);
          return want.sec_identity === actual.sec_identity && want.tunnel_endpoint === actual.tunnel_endpoint && want.flags === actual.flags;
        },
        prune: (prefix) => void map.delete(mapKey(prefix)),
      },
      onError: (key, error, attempts) => log.warn({ prefix: key, attempts, err: error }, 'writing ipcache entry failed; will retry'),
      onRefresh: (kind, prefix) => log.info({ prefix, kind }, kind === 'repair' ? 'ipcache entry drifted; rewritten' : 'ipcache entry nobody wants; deleted'),
    });
  }

  health(): ReconcilerHealth {
    return this.#reconciler.health();
  }

  start(): void {
    this.#reconciler.start();
  }

  stop(): Promise<void> {
    return this.#reconciler.stop();
  }

  upsert(entry: IpcacheEntry): number {
    return this.table.upsert(entry);
  }

  delete(prefix: string): boolean {
    return this.table.delete(prefix);
  }

  /** Resolves when every change so far is in the map. */
  synced(): Promise<void> {
    return this.#reconciler.waitFor();
  }

  list(): IpcacheEntry[] {
    return [...this.table.all()];
  }
}
