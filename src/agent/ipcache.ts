/**
 * The ipcache as a table: every prefix the node knows an identity (and maybe a tunnel endpoint)
 * for, from several sources — local endpoints, remote nodes' pod CIDRs, remote endpoints. One
 * reconciler writes each change into the ciliate_ipcache map; nothing rewrites the map whole.
 * @module
 */
import type { Logger } from 'pino';
import type { BpfMap } from '../ebpf/index.ts';
import { IpcacheFlag, type RemoteEndpointInfo } from '../datapath/index.ts';
import { Reconciler, Table } from '../statedb/index.ts';
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

export class Ipcache {
  readonly table = new Table<IpcacheEntry>('ipcache', (entry) => entry.prefix, {
    equals: (a, b) => a.identity === b.identity && a.tunnelEndpoint === b.tunnelEndpoint && a.source === b.source,
  });
  readonly #reconciler: Reconciler<IpcacheEntry>;

  constructor(map: IpcacheMap, log: Logger) {
    this.#reconciler = new Reconciler<IpcacheEntry>({
      name: 'ipcache',
      table: this.table,
      ops: {
        update: (entry) =>
          map.update(mapKey(entry.prefix), {
            sec_identity: entry.identity,
            tunnel_endpoint: entry.tunnelEndpoint ?? '0.0.0.0',
            flags: entry.tunnelEndpoint ? IpcacheFlag.HAS_TUNNEL_EP : 0,
          }),
        delete: (entry) => void map.delete(mapKey(entry.prefix)),
      },
      onError: (key, error, attempts) => log.warn({ prefix: key, attempts, err: error }, 'writing ipcache entry failed; will retry'),
    });
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
