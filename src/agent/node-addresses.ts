/**
 * The node's own IPv4 addresses, followed as interfaces gain and lose them, for the ipcache: in
 * Cilium every address of the node is the host identity, so that `fromEntities: host` means the
 * node whatever address it sends from (the pods' gateway, the underlay, an uplink added later)
 * and no CIDR rule or the world covers it. The follower is an rtnetlink subscription to address
 * events, made before the listing so that no change falls between the two; should the kernel
 * drop events (ENOBUFS), the addresses are listed afresh.
 * @module
 */
import type { Logger } from 'pino';
import { AddressEvents, Netlink, NetlinkError } from '../datapath/index.ts';

export interface NodeAddressEvents {
  added(address: string): void;
  removed(address: string): void;
}

export class NodeAddresses {
  readonly #events: NodeAddressEvents;
  readonly #log: Logger;
  /** Interfaces (by ifindex) holding each address (an address may sit on two; the listing and the events may both report one). */
  readonly #held = new Map<string, Set<number>>();
  #subscription: AddressEvents | undefined;
  #netlink: Netlink | undefined;
  readonly #netns: string | undefined;

  /** `netns`: the namespace file to follow (tests); default the agent's own namespace. */
  constructor(events: NodeAddressEvents, log: Logger, options: { netns?: string } = {}) {
    this.#events = events;
    this.#log = log;
    this.#netns = options.netns;
  }

  async start(): Promise<void> {
    this.#netlink = Netlink.open({ netns: this.#netns });
    this.#subscription = AddressEvents.subscribe({
      netns: this.#netns,
      onEvent: (event) => this.#change(event.ifindex, event.address, event.type === 'added'),
      onError: (error) => {
        if (NetlinkError.is(error, 'ENOBUFS')) {
          this.#log.warn({ err: error }, 'address events were lost; listing the node addresses again');
          this.#resync().catch((resyncError: unknown) => this.#log.error({ err: resyncError }, 'listing the node addresses failed'));
        } else {
          this.#log.error({ err: error }, 'following node addresses failed; addresses added from now on are not the host');
        }
      },
    });
    await this.#resync();
  }

  stop(): void {
    this.#subscription?.close();
    this.#subscription = undefined;
    this.#netlink?.close();
    this.#netlink = undefined;
  }

  /** The addresses held now. */
  list(): string[] {
    return [...this.#held.keys()];
  }

  /** Makes the held set the kernel's: adds what the listing has, drops what it no longer has. */
  async #resync(): Promise<void> {
    if (!this.#netlink) return;
    const listed = await this.#netlink.addresses({ family: 4 });
    const present = new Set(listed.map((a) => `${a.ifindex} ${a.address}`));
    for (const [address, ifindexes] of [...this.#held]) {
      for (const ifindex of [...ifindexes]) if (!present.has(`${ifindex} ${address}`)) this.#change(ifindex, address, false);
    }
    for (const { ifindex, address } of listed) this.#change(ifindex, address, true);
  }

  #change(ifindex: number, address: string, present: boolean): void {
    if (address.startsWith('127.')) return;
    const devices = this.#held.get(address) ?? new Set<number>();
    const wasHeld = devices.size > 0;
    if (present) devices.add(ifindex);
    else devices.delete(ifindex);
    if (devices.size > 0) this.#held.set(address, devices);
    else this.#held.delete(address);
    if (!wasHeld && devices.size > 0) this.#events.added(address);
    if (wasHeld && devices.size === 0) this.#events.removed(address);
  }
}
