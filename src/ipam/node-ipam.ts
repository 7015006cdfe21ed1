/**
 * Cluster-pool IPAM, agent side: hands out pod addresses from this node's CIDR.
 *
 * - Reserved in every node CIDR: the network address, the broadcast address and the first usable
 *   address, which is the node's router (gateway) address (cilium_host in Cilium). A /24 thus has
 *   253 pod addresses.
 * - Each allocation is one transaction writing `ipam/ips/<ip>` and `ipam/owners/<node>/<owner>`
 *   with expectedRevision 0: both land or neither does, and no address is handed out twice even
 *   if another process allocates from the same store.
 * - Allocation is idempotent per owner (a CNI ADD retried after a timeout gets the same address).
 * - Addresses are picked next-fit (after the last one handed out, wrapping), not lowest-first, so a
 *   just-released address is not immediately reused while stale conntrack or ARP entries for it
 *   may still exist.
 * - The in-memory view is the store's content for this node, loaded on open and kept current by
 *   our own writes; on a compare-and-swap conflict it is reloaded and the step retried.
 * - Only the pick is serialised (`SerialQueue`): the address is reserved in memory and the queue
 *   let go before its transaction is written, so the transactions of concurrent allocations and
 *   releases are in flight together and the store can make them durable with one sync (the local
 *   store's group commit). One owner has at most one transaction in flight; a second request for
 *   it waits for the first. A reload first waits for every transaction in flight, so the view it
 *   builds is never older than our own writes.
 * @module
 */
import { StoreError, type StateStore } from '../store/index.ts';
import { cidrSize, contains, formatIpv4, nthAddress, offsetOf, parseCidr, parseIpv4, tryParseIpv4, type Ipv4Cidr } from './cidr.ts';
import { ClusterPool, type ClusterPoolConfig } from './cluster-pool.ts';
import { IpamError, IpamExhaustedError } from './errors.ts';
import { IPS_PREFIX, ipKey, ownerKey, ownersPrefix, validateNodeName, validateOwner, type IpRecord, type OwnerRecord } from './keys.ts';
import { SerialQueue, backoff } from './serial.ts';

export interface NodeIpamOptions {
  readonly store: StateStore;
  readonly nodeName: string;
  /** The cluster pool to take this node's CIDR from, or its config. */
  readonly pool: ClusterPool | ClusterPoolConfig;
}

export interface Allocation {
  readonly ip: string;
  readonly owner: string;
  readonly node: string;
}

/** This node's pool usage, for `ciliate status`. */
export interface NodeIpamSnapshot {
  readonly node: string;
  readonly cidr: string;
  readonly routerIp: string;
  /** Allocatable pod addresses (size minus network, broadcast and router). */
  readonly capacity: number;
  readonly used: number;
  readonly available: number;
  /** Sorted by address. */
  readonly allocations: readonly { readonly ip: string; readonly owner: string }[];
}

/** An allocated address as the store has it: the revisions are what release compares against. */
interface Held {
  readonly owner: string;
  readonly ipRevision: number;
  /** Undefined if the owner index entry is missing (a hand-edited store): release then skips it. */
  readonly ownerRevision: number | undefined;
}

const MAX_ATTEMPTS = 16;

/**
 * What a step under the queue decided: answered from the view, wait for the owner's transaction
 * in flight, or a transaction of ours now in flight (`landed` says whether it won its compare-and-swap).
 */
type Step =
  | { readonly kind: 'done'; readonly offset: number }
  | { readonly kind: 'wait'; readonly busy: Promise<boolean> }
  | { readonly kind: 'write'; readonly offset: number; readonly owner?: string; readonly landed: Promise<boolean> };

/** Offsets inside a node CIDR that are never handed out. */
const NETWORK_OFFSET = 0;
const ROUTER_OFFSET = 1;

/**
 * @example
 * const ipam = await NodeIpam.open({ store, nodeName: 'n1', pool: { clusterCidr: '10.244.0.0/16', nodeMaskSize: 24 } });
 * const { ip } = await ipam.allocate('4f1c2a:eth0'); // '10.244.0.2'
 * await ipam.release('4f1c2a:eth0');
 */
export class NodeIpam {
  readonly nodeName: string;
  /** This node's pod CIDR, e.g. "10.244.1.0/24". */
  readonly cidr: string;
  /** The node's own address in its pod CIDR (first usable), never given to a pod. */
  readonly routerIp: string;
  readonly capacity: number;
  #pool: Ipv4Cidr;
  #store: StateStore;
  #queue = new SerialQueue();
  #byOffset = new Map<number, Held>();
  #byOwner = new Map<string, number>();
  /** Owner index entries without an address record: overwritten (by revision) when that owner allocates. */
  #orphanOwners = new Map<string, number>();
  /** Next-fit cursor: the offset after the last address handed out. */
  #cursor = ROUTER_OFFSET + 1;
  /** Offsets picked for an allocation whose transaction is in flight (not free, not yet held), and for whom. */
  #reserved = new Map<number, string>();
  /** The transaction in flight per owner (allocation or release); it resolves to whether it landed. */
  #busy = new Map<string, Promise<boolean>>();

  private constructor(store: StateStore, nodeName: string, cidr: string) {
    this.#store = store;
    this.nodeName = nodeName;
    this.cidr = cidr;
    this.#pool = parseCidr(cidr, `CIDR of node ${nodeName}`);
    this.routerIp = formatIpv4(nthAddress(this.#pool, ROUTER_OFFSET));
    this.capacity = cidrSize(this.#pool) - 3;
  }

  /** Takes (or finds) this node's CIDR in the cluster pool and loads its allocations from the store. */
  static async open(options: NodeIpamOptions): Promise<NodeIpam> {
    validateNodeName(options.nodeName);
    const pool = options.pool instanceof ClusterPool ? options.pool : new ClusterPool(options.store, options.pool);
    const { cidr } = await pool.allocateNodeCidr(options.nodeName);
    const ipam = new NodeIpam(options.store, options.nodeName, cidr);
    await ipam.#reload();
    return ipam;
  }

  /** Number of allocated pod addresses. */
  get used(): number {
    return this.#byOffset.size;
  }

  /** The address held by `owner`, if any. */
  lookup(owner: string): string | undefined {
    const offset = this.#byOwner.get(owner);
    return offset === undefined ? undefined : formatIpv4(nthAddress(this.#pool, offset));
  }

  /**
   * An address for `owner` (e.g. "<container id>:eth0"): the one it already holds, or a free one.
   * Throws IpamExhaustedError (ERR_IPAM_EXHAUSTED) when the pool is full; nothing is written then.
   */
  async allocate(owner: string): Promise<Allocation> {
    validateOwner(owner);
    for (let attempt = 0; attempt < MAX_ATTEMPTS; ) {
      const step = await this.#queue.run(async (): Promise<Step> => {
        const busy = this.#busy.get(owner);
        if (busy !== undefined) return { kind: 'wait', busy };
        const held = this.#byOwner.get(owner);
        if (held !== undefined) return { kind: 'done', offset: held };
        // After a lost race the view is reloaded; a random free address and a short pause keep
        // two writers that picked the same next-fit address from colliding again.
        if (attempt > 0) {
          await backoff(attempt);
          await this.#reload();
        }
        let offset: number;
        try {
          offset = this.#nextFree(attempt > 0);
        } catch (error) {
          // Full by our view; another writer may have released addresses since we last looked.
          if (attempt > 0 || !IpamError.is(error, 'ERR_IPAM_EXHAUSTED')) throw error;
          await this.#reload();
          offset = this.#nextFree(false);
        }
        this.#cursor = offset + 1;
        return { kind: 'write', offset, landed: this.#claim(offset, owner) };
      });
      if (step.kind === 'done') return this.#allocation(step.offset, owner);
      if (step.kind === 'wait') {
        // Another request for this owner is in flight: its outcome decides ours (a failure of it
        // is its caller's to report; we look again).
        await step.busy.catch(() => false);
        continue;
      }
      if (await step.landed) return this.#allocation(step.offset, owner);
      attempt++;
    }
    throw this.#conflict(`allocating for ${owner}`);
  }

  /**
   * Allocates exactly `ip` to `owner` (restoring an endpoint's address after a restart, or a
   * user-requested address). Idempotent if `owner` already holds `ip`.
   * Errors: ERR_IPAM_OUT_OF_RANGE, ERR_IPAM_RESERVED, ERR_IPAM_ADDRESS_IN_USE, ERR_IPAM_DUPLICATE_OWNER.
   */
  async allocateSpecific(ip: string, owner: string): Promise<Allocation> {
    validateOwner(owner);
    const address = parseIpv4(ip);
    const offset = this.#checkAllocatable(ip, address);
    // Rare (restores, requested addresses): it waits for everything in flight and writes under
    // the queue, so "in use" and "already holds" are answered from a settled view.
    return this.#queue.run(async () => {
      for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
        if (attempt > 0) await this.#reload();
        else await this.#settle();
        const held = this.#byOwner.get(owner);
        if (held === offset) return this.#allocation(offset, owner);
        if (held !== undefined) {
          throw new IpamError(
            'ERR_IPAM_DUPLICATE_OWNER',
            `ipam: cannot allocate ${ip} to ${owner}: it already holds ${formatIpv4(nthAddress(this.#pool, held))} on node ${this.nodeName}; release that first`,
          );
        }
        const other = this.#byOffset.get(offset);
        if (other !== undefined) {
          throw new IpamError('ERR_IPAM_ADDRESS_IN_USE', `ipam: cannot allocate ${ip} to ${owner}: it is already allocated to ${other.owner} on node ${this.nodeName}`);
        }
        if (await this.#claim(offset, owner)) return this.#allocation(offset, owner);
      }
      throw this.#conflict(`allocating ${ip} for ${owner}`);
    });
  }

  /**
   * Releases the address held by an owner, or the given address (a dotted quad is taken as an
   * address, which is why owners may not look like one). Returns what was released, or undefined
   * if nothing was held: releasing twice is not an error (CNI DEL must be idempotent).
   */
  async release(ownerOrIp: string): Promise<Allocation | undefined> {
    const address = tryParseIpv4(ownerOrIp);
    if (address === undefined) validateOwner(ownerOrIp);
    for (let attempt = 0; attempt < MAX_ATTEMPTS; ) {
      const step = await this.#queue.run(async (): Promise<Exclude<Step, { kind: 'done' }> | undefined> => {
        if (attempt > 0) await this.#reload();
        const busy = address === undefined ? this.#busy.get(ownerOrIp) : undefined;
        if (busy !== undefined) return { kind: 'wait', busy };
        const offset = address === undefined ? this.#byOwner.get(ownerOrIp) : offsetOf(this.#pool, address);
        // An address being allocated is released once that allocation has landed, as if queued after it.
        const claimant = offset === undefined ? undefined : this.#reserved.get(offset);
        const claim = claimant === undefined ? undefined : this.#busy.get(claimant);
        if (claim !== undefined) return { kind: 'wait', busy: claim };
        const held = offset === undefined || offset < 0 ? undefined : this.#byOffset.get(offset);
        if (offset === undefined || held === undefined) return undefined;
        const holderBusy = this.#busy.get(held.owner);
        if (holderBusy !== undefined) return { kind: 'wait', busy: holderBusy };
        // The address stays in the view (not free) until its deletion is durable.
        return { kind: 'write', offset, owner: held.owner, landed: this.#track(held.owner, this.#remove(offset, held)) };
      });
      if (step === undefined) return undefined;
      if (step.kind === 'wait') {
        await step.busy.catch(() => false);
        continue;
      }
      if (await step.landed) return { ip: formatIpv4(nthAddress(this.#pool, step.offset)), owner: step.owner ?? ownerOrIp, node: this.nodeName };
      attempt++;
    }
    throw this.#conflict(`releasing ${ownerOrIp}`);
  }

  snapshot(): NodeIpamSnapshot {
    const allocations = [...this.#byOffset]
      .sort(([a], [b]) => a - b)
      .map(([offset, held]) => ({ ip: formatIpv4(nthAddress(this.#pool, offset)), owner: held.owner }));
    return {
      node: this.nodeName,
      cidr: this.cidr,
      routerIp: this.routerIp,
      capacity: this.capacity,
      used: allocations.length,
      available: this.capacity - allocations.length,
      allocations,
    };
  }

  /**
   * Writes the address and owner records for `offset` in one transaction, with `offset` reserved
   * and `owner` busy meanwhile. Resolves false if another writer got there first (the caller
   * reloads and retries).
   */
  #claim(offset: number, owner: string): Promise<boolean> {
    const ip = formatIpv4(nthAddress(this.#pool, offset));
    const ownerRevision = this.#orphanOwners.get(owner) ?? 0;
    const write = async (): Promise<boolean> => {
      let revision: number;
      try {
        ({ revision } = await this.#store.transaction([
          { type: 'put', key: ipKey(ip), value: { owner, node: this.nodeName } satisfies IpRecord, expectedRevision: 0 },
          { type: 'put', key: ownerKey(this.nodeName, owner), value: { ip } satisfies OwnerRecord, expectedRevision: ownerRevision },
        ]));
      } catch (error) {
        if (!StoreError.is(error, 'ERR_STORE_CONFLICT')) throw error;
        return false;
      }
      this.#orphanOwners.delete(owner);
      this.#byOffset.set(offset, { owner, ipRevision: revision, ownerRevision: revision });
      this.#byOwner.set(owner, offset);
      return true;
    };
    this.#reserved.set(offset, owner);
    return this.#track(owner, write()).finally(() => this.#reserved.delete(offset));
  }

  /** Deletes the records of `held` at `offset`; resolves false if another writer changed them first. */
  async #remove(offset: number, held: Held): Promise<boolean> {
    const ip = formatIpv4(nthAddress(this.#pool, offset));
    try {
      await this.#store.transaction([
        { type: 'delete', key: ipKey(ip), expectedRevision: held.ipRevision },
        ...(held.ownerRevision === undefined ? [] : [{ type: 'delete' as const, key: ownerKey(this.nodeName, held.owner), expectedRevision: held.ownerRevision }]),
      ]);
    } catch (error) {
      if (!StoreError.is(error, 'ERR_STORE_CONFLICT')) throw error;
      return false;
    }
    if (this.#byOffset.get(offset) === held) this.#byOffset.delete(offset);
    if (this.#byOwner.get(held.owner) === offset) this.#byOwner.delete(held.owner);
    return true;
  }

  /** Marks `owner` busy until `write` settles. */
  #track(owner: string, write: Promise<boolean>): Promise<boolean> {
    const tracked = write.finally(() => {
      if (this.#busy.get(owner) === tracked) this.#busy.delete(owner);
    });
    this.#busy.set(owner, tracked);
    return tracked;
  }

  /** Waits until no transaction of ours is in flight. Only under the queue, which starts no new ones. */
  async #settle(): Promise<void> {
    while (this.#busy.size > 0) await Promise.allSettled(this.#busy.values());
  }

  /**
   * Next free pod offset from the cursor (or from a random point), wrapping; throws
   * IpamExhaustedError when there is none.
   */
  #nextFree(random: boolean): number {
    const taken = this.#byOffset.size + this.#reserved.size;
    if (taken >= this.capacity) throw new IpamExhaustedError(this.cidr, taken, this.capacity, this.nodeName);
    const first = ROUTER_OFFSET + 1;
    const last = cidrSize(this.#pool) - 2; // before the broadcast address
    const span = last - first + 1;
    const from = random ? first + Math.floor(Math.random() * span) : this.#cursor;
    const start = from > last || from < first ? first : from;
    for (let i = 0; i < span; i++) {
      const offset = first + ((start - first + i) % span);
      if (!this.#byOffset.has(offset) && !this.#reserved.has(offset)) return offset;
    }
    // Unreachable while size < capacity; kept so a bookkeeping bug fails loudly, not silently.
    throw new IpamExhaustedError(this.cidr, taken, this.capacity, this.nodeName);
  }

  #checkAllocatable(ip: string, address: number): number {
    if (!contains(this.#pool, address)) {
      throw new IpamError('ERR_IPAM_OUT_OF_RANGE', `ipam: ${ip} is not in pool ${this.cidr} of node ${this.nodeName}`);
    }
    const offset = offsetOf(this.#pool, address);
    const role = offset === NETWORK_OFFSET ? 'network' : offset === ROUTER_OFFSET ? 'router' : offset === cidrSize(this.#pool) - 1 ? 'broadcast' : undefined;
    if (role !== undefined) {
      throw new IpamError('ERR_IPAM_RESERVED', `ipam: ${ip} is the ${role} address of pool ${this.cidr} of node ${this.nodeName} and cannot be allocated`);
    }
    return offset;
  }

  /** Rebuilds the in-memory view from the store: this node's address records and owner index. */
  async #reload(): Promise<void> {
    await this.#settle();
    const [ips, owners] = await Promise.all([this.#store.list<IpRecord>(IPS_PREFIX), this.#store.list<OwnerRecord>(ownersPrefix(this.nodeName))]);
    const ownerEntries = new Map(owners.entries.map((e) => [e.key.slice(ownersPrefix(this.nodeName).length), e]));
    this.#byOffset.clear();
    this.#byOwner.clear();
    this.#orphanOwners.clear();
    for (const entry of ips.entries) {
      const address = tryParseIpv4(entry.key.slice(IPS_PREFIX.length));
      if (address === undefined || !contains(this.#pool, address)) continue;
      const offset = offsetOf(this.#pool, address);
      const ownerEntry = ownerEntries.get(entry.value.owner);
      const consistent = ownerEntry !== undefined && ownerEntry.value.ip === formatIpv4(address);
      // Any record inside our CIDR makes the address taken, whatever its node field says.
      this.#byOffset.set(offset, { owner: entry.value.owner, ipRevision: entry.modRevision, ownerRevision: consistent ? ownerEntry.modRevision : undefined });
      if (!this.#byOwner.has(entry.value.owner)) this.#byOwner.set(entry.value.owner, offset);
    }
    for (const [owner, entry] of ownerEntries) {
      const offset = this.#byOwner.get(owner);
      if (offset === undefined || this.#byOffset.get(offset)?.ownerRevision !== entry.modRevision) this.#orphanOwners.set(owner, entry.modRevision);
    }
  }

  #allocation(offset: number, owner: string): Allocation {
    return { ip: formatIpv4(nthAddress(this.#pool, offset)), owner, node: this.nodeName };
  }

  #conflict(operation: string): IpamError {
    return new IpamError('ERR_IPAM_CONFLICT', `ipam: ${operation} on node ${this.nodeName}: lost ${MAX_ATTEMPTS} compare-and-swap rounds to other writers`);
  }
}

/**
 * The narrow view of a NodeIpam that the endpoint manager takes (its `AddressAllocator`):
 * addresses as strings, the router address as the pods' gateway.
 */
export interface AddressAllocatorView {
  allocate(owner: string): Promise<string>;
  release(owner: string): Promise<void>;
  /** Every owner holding an address of this node. */
  owners(): string[];
  readonly gateway: string;
}

/**
 * @example
 * new EndpointManager({ store, ipam: addressAllocator(await NodeIpam.open({ store, nodeName, pool })), … });
 */
export function addressAllocator(ipam: NodeIpam): AddressAllocatorView {
  return {
    allocate: async (owner) => (await ipam.allocate(owner)).ip,
    owners: () => ipam.snapshot().allocations.map((a) => a.owner),
    release: async (owner) => {
      await ipam.release(owner);
    },
    gateway: ipam.routerIp,
  };
}
