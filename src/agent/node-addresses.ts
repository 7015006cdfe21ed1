/**
 * The node's own IPv4 addresses, followed as interfaces gain and lose them, for the ipcache: in
 * Cilium every address of the node is the host identity, so that `fromEntities: host` means the
 * node whatever address it sends from (the pods' gateway, the underlay, an uplink added later)
 * and no CIDR rule or the world covers it. `ip monitor` is the follower: one long-lived child
 * process, started before the listing so that no change falls between the two, and bound to the
 * agent's life.
 * @module
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import type { Logger } from 'pino';
import { ip } from '../datapath/index.ts';

/** `ip -o -4 monitor address` lines: `[Deleted ]N: dev    inet A.B.C.D/len …`. */
const MONITOR_LINE = /^(Deleted )?\d+:\s+(\S+)\s+inet (\d+\.\d+\.\d+\.\d+)\//;

export interface NodeAddressEvents {
  added(address: string): void;
  removed(address: string): void;
}

export class NodeAddresses {
  readonly #events: NodeAddressEvents;
  readonly #log: Logger;
  /** Interfaces holding each address (an address may sit on two; the listing and the monitor may both report one). */
  readonly #held = new Map<string, Set<string>>();
  #monitor: ChildProcess | undefined;

  constructor(events: NodeAddressEvents, log: Logger) {
    this.#events = events;
    this.#log = log;
  }

  async start(): Promise<void> {
    // setpriv --pdeathsig: the monitor dies with the agent, even a kill -9'd one, instead of
    // living on in (and keeping alive) the agent's network namespace.
    const monitor = spawn('setpriv', ['--pdeathsig', 'KILL', '--', 'ip', '-o', '-4', 'monitor', 'address'], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.#monitor = monitor;
    monitor.on('error', (error) => this.#log.error({ err: error }, 'following node addresses failed; addresses added from now on are not the host'));
    monitor.on('exit', (code, signal) => {
      if (this.#monitor === monitor) this.#log.error({ code, signal }, 'ip monitor exited; addresses added from now on are not the host');
    });
    createInterface({ input: monitor.stdout! }).on('line', (line) => {
      const match = MONITOR_LINE.exec(line);
      if (match) this.#change(match[2], match[3], match[1] === undefined);
    });
    const links = JSON.parse(await ip(['-j', '-4', 'addr', 'show'])) as { ifname: string; addr_info?: { local?: string }[] }[];
    for (const link of links) for (const { local } of link.addr_info ?? []) if (local) this.#change(link.ifname, local, true);
  }

  stop(): void {
    const monitor = this.#monitor;
    this.#monitor = undefined;
    monitor?.kill();
  }

  /** The addresses held now. */
  list(): string[] {
    return [...this.#held.keys()];
  }

  #change(device: string, address: string, present: boolean): void {
    if (address.startsWith('127.')) return;
    const devices = this.#held.get(address) ?? new Set<string>();
    const wasHeld = devices.size > 0;
    if (present) devices.add(device);
    else devices.delete(device);
    if (devices.size > 0) this.#held.set(address, devices);
    else this.#held.delete(address);
    if (!wasHeld && devices.size > 0) this.#events.added(address);
    if (wasHeld && devices.size === 0) this.#events.removed(address);
  }
}
