/**
 * A pool of endpoint links made ahead of the adds that take them. Most of an add's time went to
 * the kernel attaching bpf_lxc to the host end of its pair: each TCX attach holds RTNL across an
 * RCU grace period, two per endpoint, one after the other. A pool link is a veth pair in the
 * node's namespace, both ends down, no addresses, IPv6 off on the host end, bpf_lxc attached to
 * its host end through TCX and the links pinned under <bpfRoot>/pool/<name>/. An add takes one
 * (EndpointManager moves and renames its ends and hands its pins to the endpoint) and the pool
 * makes another in the background, one at a time and only while no add is in flight.
 *
 * Pool links are in the pool's own link group (POOL_LINK_GROUP): what holds no pod yet and what a
 * start removes. A link is never offered twice: once taken it becomes the endpoint's (and goes
 * with it) or is deleted. With bpf_lxc attached and no ciliate_lxc entry naming its interface,
 * the programs let nothing out of a pool link and nothing but ARP into it.
 *
 * The pool is a table of wanted links (by name) with a reconciler that makes them, retries with
 * backoff, and on the refresh interval repairs a link changed behind its back and removes pool
 * links nobody wants. A start removes every pool link a previous agent left, and a clean stop
 * removes the pool's: pool links are no endpoints, and a pod's traffic never depends on them.
 * @module
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { Reconciler, Table, type ReconcilerHealth } from '../statedb/index.ts';
import type { Link, Netlink } from '../datapath/netlink/index.ts';
import { isPoolLink, prepareHostLink, POOL_LINK_ALIAS, POOL_LINK_GROUP } from './endpoint-links.ts';

/** What the pool needs of the endpoint datapath (src/datapath's EndpointDatapath has it). */
export interface PoolDatapath {
  /** Attaches the endpoint programs to a pool link's host end; pins them under the pool. Idempotent. */
  attachPooled(name: string, ifindex: number): Promise<void>;
  /** Whether both pinned links of pool link `name` serve `ifindex`. */
  servesPooled(name: string, ifindex: number): boolean;
  /** Unpins a pool link's links. Idempotent. */
  removePooled(name: string): Promise<void>;
  /** The names of the pool links with pins. */
  pooled(): string[];
}

/** A pool link as an add takes it: its host end, and its pod end (still in the node's namespace). */
export interface PoolLink {
  name: string;
  ifindex: number;
  mac: string;
  peerIfindex: number;
}

/** How long after the last add the pool waits before making a link. */
const REFILL_QUIET_MS = 50;

/** A link the pool wants: the names of its host and pod ends in the node's namespace. */
interface PoolSlot {
  name: string;
  peer: string;
}

export interface EndpointLinkPoolOptions {
  /** The node namespace's rtnetlink socket (shared with the endpoint manager). */
  netlink: () => Netlink;
  datapath: PoolDatapath;
  /** How many links to keep ready; 0: none (start and stop still remove leftovers). */
  target: number;
  /** MTU of new pool links (the pods'); a take sets the current one anyway. */
  mtu: () => number;
  log: Logger;
  /** How often the pool links are compared with the kernel and repaired; 0: never. */
  refreshIntervalMs?: number;
}

export class EndpointLinkPool {
  readonly table = new Table<PoolSlot>('endpoint-link-pool', (slot) => slot.name);
  readonly target: number;
  readonly #reconciler: Reconciler<PoolSlot, Link>;
  readonly #netlink: () => Netlink;
  readonly #datapath: PoolDatapath;
  readonly #mtu: () => number;
  readonly #log: Logger;
  /** Links made and attached, not taken: what take() offers. */
  readonly #ready = new Map<string, PoolLink>();
  /** Links taken by adds still working on them: neither the reconciler nor a refresh touches them. */
  readonly #handedOut = new Set<string>();
  #addsInFlight = 0;
  #lastAddEnded = 0;
  #idleWaiters: (() => void)[] = [];
  #stopping = false;
  #taken = 0;
  #missed = 0;

  constructor(options: EndpointLinkPoolOptions) {
    this.target = options.target;
    this.#netlink = options.netlink;
    this.#datapath = options.datapath;
    this.#mtu = options.mtu;
    this.#log = options.log;
    this.#reconciler = new Reconciler<PoolSlot, Link>({
      name: 'endpoint-link-pool',
      table: this.table,
      refreshIntervalMs: options.refreshIntervalMs,
      // start() has just removed every pool link there was.
      refreshOnStart: false,
      ops: {
        update: (slot) => this.#make(slot),
        delete: (slot) => this.#remove(slot.name),
        list: () => this.#observe(),
        equal: (slot, link) => !link.up && this.#ready.get(slot.name)?.ifindex === link.ifindex && this.#datapath.servesPooled(slot.name, link.ifindex),
        prune: (name) => this.#remove(name),
      },
      onError: (name, error, attempts) => this.#log.warn({ pool: name, attempts, err: error }, 'making a pool link failed; will retry'),
      onRefresh: (kind, name) => this.#log.info({ pool: name, kind }, kind === 'repair' ? 'a pool link drifted; made again' : 'removed a pool link nobody wanted'),
    });
  }

  /** Removes what a previous agent left in the pool, then starts filling it. */
  async start(): Promise<void> {
    const removed = await this.#removeAll();
    if (removed > 0) this.#log.info({ links: removed }, 'removed the pool links a previous agent left');
    for (let i = 0; i < this.target; i++) this.table.upsert(newSlot());
    this.#reconciler.start();
  }

  /** Stops filling and removes the pool's links: none outlives a clean stop. */
  async stop(): Promise<void> {
    this.#stopping = true;
    this.#wakeIdle();
    await this.#reconciler.stop();
    this.#ready.clear();
    await this.#removeAll();
  }

  /**
   * A ready link, no longer the pool's (a new one is wanted in its place); undefined when none is
   * ready. The caller makes it an endpoint's or deletes it, then calls release().
   */
  take(): PoolLink | undefined {
    const next = this.#ready.values().next();
    if (next.done) {
      if (this.target > 0) this.#missed++;
      return undefined;
    }
    const link = next.value;
    this.#ready.delete(link.name);
    this.#handedOut.add(link.name);
    this.table.delete(link.name);
    this.table.upsert(newSlot());
    this.#taken++;
    return link;
  }

  /**
   * The add that took `name` is done with it. After a failed take whose pins did not move to an
   * endpoint, they are removed (their interface is gone: cheap, in the background).
   */
  release(name: string, options: { failed: boolean }): void {
    this.#handedOut.delete(name);
    if (options.failed) {
      this.#datapath.removePooled(name).catch((error: unknown) => this.#log.warn({ pool: name, err: error }, 'unpinning the links of a pool link an add failed to take'));
    }
  }

  /**
   * An add starts; the returned function says it ended. The pool makes links only while no add is
   * in flight, and not right after one ended (adds come in runs): making a link holds RTNL across
   * two RCU grace periods, which an add arriving meanwhile would wait out.
   */
  busy(): () => void {
    this.#addsInFlight++;
    let ended = false;
    return () => {
      if (ended) return;
      ended = true;
      this.#lastAddEnded = Date.now();
      if (--this.#addsInFlight === 0) this.#wakeIdle();
    };
  }

  /** For `ciliate status`: links ready of the target, links taken by adds, adds that found none. */
  status(): { target: number; ready: number; taken: number; empty: number } {
    return { target: this.target, ready: this.#ready.size, taken: this.#taken, empty: this.#missed };
  }

  health(): ReconcilerHealth {
    return this.#reconciler.health();
  }

  #wakeIdle(): void {
    const waiters = this.#idleWaiters;
    this.#idleWaiters = [];
    for (const wake of waiters) wake();
  }

  /** Resolves once no add is in flight and none has ended for REFILL_QUIET_MS, or at stop. */
  async #idle(): Promise<void> {
    for (;;) {
      if (this.#stopping) return;
      const quiet = this.#lastAddEnded + REFILL_QUIET_MS - Date.now();
      if (this.#addsInFlight === 0 && quiet <= 0) return;
      await new Promise<void>((resolve) => {
        const timer = this.#addsInFlight === 0 ? setTimeout(resolve, quiet) : undefined;
        this.#idleWaiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /** Makes the slot's link (again, if what has its name is not ready): pair, alias, IPv6 off, programs. */
  async #make(slot: PoolSlot): Promise<void> {
    this.#ready.delete(slot.name);
    await this.#idle();
    if (this.#stopping) return;
    const nl = this.#netlink();
    const existing = await nl.link(slot.name);
    if (existing) {
      // A name of the pool's own making (random), so something of ours that is not ready: made anew.
      if (!isPoolLink(existing)) throw new Error(`pool link ${slot.name}: the name is taken by a link not in the pool`);
      await nl.deleteLink(existing.ifindex);
    }
    const mtu = this.#mtu();
    const host = await nl.createVeth({ name: slot.name, peerName: slot.peer, mtu, peerMtu: mtu, group: POOL_LINK_GROUP });
    try {
      await nl.setLink(host.ifindex, { alias: POOL_LINK_ALIAS });
      // The pod end needs none: a move into the pod's namespace starts its IPv6 settings afresh.
      prepareHostLink(nl, slot.name);
      const peer = await nl.link(slot.peer);
      if (!peer) throw new Error(`pool link ${slot.name}: its pod end ${slot.peer} vanished`);
      await this.#datapath.attachPooled(slot.name, host.ifindex);
      this.#ready.set(slot.name, { name: slot.name, ifindex: host.ifindex, mac: host.mac, peerIfindex: peer.ifindex });
    } catch (error) {
      await nl.deleteLink(host.ifindex).catch(() => undefined);
      await this.#datapath.removePooled(slot.name).catch(() => undefined);
      throw error;
    }
  }

  /** Removes a pool link and its pins, unless an add has it. The link goes first: unpinning is cheap then. */
  async #remove(name: string): Promise<void> {
    this.#ready.delete(name);
    if (this.#handedOut.has(name)) return;
    const nl = this.#netlink();
    const link = await nl.link(name);
    if (link && isPoolLink(link)) await nl.deleteLink(link.ifindex);
    await this.#datapath.removePooled(name);
  }

  /** The pool links in the kernel, by name, but those adds are taking. */
  async #observe(): Promise<[string, Link][]> {
    const links = await this.#netlink().links();
    return links.filter((link) => isPoolLink(link) && !this.#handedOut.has(link.name)).map((link) => [link.name, link]);
  }

  /** Removes every pool link and pool pin there is (but those adds are taking); returns how many links. */
  async #removeAll(): Promise<number> {
    const nl = this.#netlink();
    const links = (await nl.links()).filter((link) => isPoolLink(link) && !this.#handedOut.has(link.name));
    for (const link of links) await nl.deleteLink(link.ifindex);
    for (const name of this.#datapath.pooled()) if (!this.#handedOut.has(name)) await this.#datapath.removePooled(name);
    return links.length;
  }
}

/**
 * Names no endpoint's host end has (those are lxc and hex digits): lxcp/lxcq and ten hex digits,
 * random, so no two agents' (or two starts') links share one.
 */
function newSlot(): PoolSlot {
  const suffix = randomBytes(5).toString('hex');
  return { name: `lxcp${suffix}`, peer: `lxcq${suffix}` };
}
