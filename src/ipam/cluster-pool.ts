/**
 * Cluster-pool IPAM, operator side (Cilium's `ipam: cluster-pool`): one cluster CIDR split into
 * per-node pod CIDRs of a fixed mask size, handed out one per node.
 *
 * A node's CIDR is claimed in one transaction that creates both `ipam/nodes/<node>` and
 * `ipam/cidrs/<cidr>` with expectedRevision 0. The second key is what keeps CIDRs exclusive when
 * several processes allocate against one shared store (agents on etcd): whoever loses the race
 * gets ERR_STORE_CONFLICT, re-reads the claims and tries the next free CIDR.
 * @module
 */
import { StoreError, type StateStore } from '../store/index.ts';
import { containsCidr, formatCidr, overlaps, parseCidr, subnetCount, subnetIndex, nthSubnet, type Ipv4Cidr } from './cidr.ts';
import { IpamError, IpamExhaustedError } from './errors.ts';
import { CIDRS_PREFIX, IPS_PREFIX, NODES_PREFIX, cidrKey, nodeKey, validateNodeName, type CidrClaim, type IpRecord, type NodeRecord } from './keys.ts';
import { SerialQueue, backoff } from './serial.ts';

export interface ClusterPoolConfig {
  /** The cluster-wide pod CIDR, e.g. "10.244.0.0/16" (Cilium: cluster-pool-ipv4-cidr). */
  readonly clusterCidr: string;
  /** Prefix length of each node's pod CIDR, e.g. 24 (Cilium: cluster-pool-ipv4-mask-size). Default 24. */
  readonly nodeMaskSize?: number;
}

export interface NodeCidrAllocation {
  readonly node: string;
  readonly cidr: string;
}

/** Cluster pool usage, for `ciliate status`. */
export interface ClusterPoolSnapshot {
  readonly clusterCidr: string;
  readonly nodeMaskSize: number;
  /** How many node CIDRs the cluster CIDR holds. */
  readonly capacity: number;
  readonly used: number;
  /** Sorted by node name. */
  readonly nodes: readonly NodeCidrAllocation[];
}

/** Compare-and-swap rounds before giving up: each lost round means another writer made progress. */
const MAX_ATTEMPTS = 32;

/** Smallest useful pod CIDR: a /30 has network, router, one pod, broadcast. */
export const MAX_NODE_MASK_SIZE = 30;

/** Validates a cluster-pool config; throws IpamError (ERR_IPAM_INVALID_CIDR / ERR_IPAM_INVALID_CONFIG). */
export function parseClusterPoolConfig(config: ClusterPoolConfig): { clusterCidr: Ipv4Cidr; nodeMaskSize: number } {
  const clusterCidr = parseCidr(config.clusterCidr, 'cluster CIDR');
  const nodeMaskSize = config.nodeMaskSize ?? 24;
  if (!Number.isInteger(nodeMaskSize) || nodeMaskSize < clusterCidr.prefixLength || nodeMaskSize > MAX_NODE_MASK_SIZE) {
    throw new IpamError(
      'ERR_IPAM_INVALID_CONFIG',
      `ipam: node mask size ${String(nodeMaskSize)}: must be ${clusterCidr.prefixLength}–${MAX_NODE_MASK_SIZE} ` +
        `(at least the cluster CIDR ${config.clusterCidr}'s prefix length, at most /${MAX_NODE_MASK_SIZE} to leave room for a pod)`,
    );
  }
  return { clusterCidr, nodeMaskSize };
}

/**
 * @example
 * const pool = new ClusterPool(store, { clusterCidr: '10.244.0.0/16', nodeMaskSize: 24 });
 * await pool.allocateNodeCidr('n1'); // { node: 'n1', cidr: '10.244.0.0/24' }
 * await pool.allocateNodeCidr('n1'); // the same, again
 */
export class ClusterPool {
  readonly clusterCidr: Ipv4Cidr;
  readonly nodeMaskSize: number;
  #store: StateStore;
  #queue = new SerialQueue();

  constructor(store: StateStore, config: ClusterPoolConfig) {
    const parsed = parseClusterPoolConfig(config);
    this.clusterCidr = parsed.clusterCidr;
    this.nodeMaskSize = parsed.nodeMaskSize;
    this.#store = store;
  }

  /** Number of node CIDRs the cluster CIDR splits into. */
  get capacity(): number {
    return subnetCount(this.clusterCidr, this.nodeMaskSize);
  }

  /** The node's CIDR, if it has one. */
  async nodeCidr(node: string): Promise<string | undefined> {
    validateNodeName(node);
    return (await this.#store.get<NodeRecord>(nodeKey(node)))?.value.cidr;
  }

  /**
   * Gives `node` a pod CIDR, or returns the one it already has: idempotent, so an agent calls it
   * on every start. The lowest free CIDR is chosen, so allocation is deterministic.
   */
  async allocateNodeCidr(node: string): Promise<NodeCidrAllocation> {
    validateNodeName(node);
    return this.#queue.run(async () => {
      for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
        const existing = await this.#store.get<NodeRecord>(nodeKey(node));
        if (existing !== undefined) return { node, cidr: this.#checkExisting(node, existing.value.cidr) };
        const claims = await this.#store.list<CidrClaim>(CIDRS_PREFIX);
        // After a lost race, all racers would pick the same lowest CIDR again and the same one
        // would keep losing: pick a random free one instead, and back off a little.
        if (attempt > 0) await backoff(attempt);
        const cidr = this.#free(claims.entries.map((e) => e.key.slice(CIDRS_PREFIX.length)), attempt > 0);
        const text = formatCidr(cidr);
        try {
          await this.#store.transaction([
            { type: 'put', key: nodeKey(node), value: { cidr: text } satisfies NodeRecord, expectedRevision: 0 },
            { type: 'put', key: cidrKey(text), value: { node } satisfies CidrClaim, expectedRevision: 0 },
          ]);
          return { node, cidr: text };
        } catch (error) {
          // Another writer claimed this CIDR (or gave this node one) first: look again.
          if (!StoreError.is(error, 'ERR_STORE_CONFLICT')) throw error;
        }
      }
      throw new IpamError('ERR_IPAM_CONFLICT', `ipam: allocating a CIDR for node ${node}: lost ${MAX_ATTEMPTS} compare-and-swap rounds to other writers`);
    });
  }

  /**
   * Returns a node's CIDR to the pool (the node left the cluster). Refused with ERR_IPAM_IN_USE
   * while addresses from it are still allocated. Returns whether the node had a CIDR.
   */
  async releaseNodeCidr(node: string): Promise<boolean> {
    validateNodeName(node);
    return this.#queue.run(async () => {
      const existing = await this.#store.get<NodeRecord>(nodeKey(node));
      if (existing === undefined) return false;
      const { cidr } = existing.value;
      const ips = (await this.#store.list<IpRecord>(IPS_PREFIX)).entries.filter((e) => e.value.node === node);
      if (ips.length > 0) {
        throw new IpamError('ERR_IPAM_IN_USE', `ipam: releasing ${cidr} of node ${node}: ${ips.length} addresses are still allocated (e.g. ${ips[0].key.slice(IPS_PREFIX.length)} to ${ips[0].value.owner})`);
      }
      const claim = await this.#store.get<CidrClaim>(cidrKey(cidr));
      await this.#store.transaction([
        { type: 'delete', key: nodeKey(node), expectedRevision: existing.modRevision },
        // Only drop the claim if it is this node's: a hand-edited store must not free someone else's.
        ...(claim?.value.node === node ? [{ type: 'delete' as const, key: cidrKey(cidr), expectedRevision: claim.modRevision }] : []),
      ]);
      return true;
    });
  }

  async snapshot(): Promise<ClusterPoolSnapshot> {
    const nodes = (await this.#store.list<NodeRecord>(NODES_PREFIX)).entries.map((e) => ({ node: e.key.slice(NODES_PREFIX.length), cidr: e.value.cidr }));
    return { clusterCidr: formatCidr(this.clusterCidr), nodeMaskSize: this.nodeMaskSize, capacity: this.capacity, used: nodes.length, nodes };
  }

  /** A node keeps its CIDR across restarts, but not if the cluster CIDR was changed underneath it. */
  #checkExisting(node: string, text: string): string {
    let cidr: Ipv4Cidr;
    try {
      cidr = parseCidr(text, `stored CIDR of node ${node}`);
    } catch (cause) {
      throw new IpamError('ERR_IPAM_INVALID_CONFIG', (cause as Error).message, { cause });
    }
    if (!containsCidr(this.clusterCidr, cidr)) {
      throw new IpamError(
        'ERR_IPAM_INVALID_CONFIG',
        `ipam: node ${node} holds ${text}, which is outside the cluster CIDR ${formatCidr(this.clusterCidr)}: restore the previous cluster CIDR or release the node's CIDR`,
      );
    }
    return text;
  }

  /** The lowest free node CIDR, or (`random`) any free one. */
  #free(claimed: readonly string[], random: boolean): Ipv4Cidr {
    const taken = new Set<number>();
    // Claims of another size (the mask size was changed) are checked by overlap; same-size ones by index.
    const odd: Ipv4Cidr[] = [];
    for (const text of claimed) {
      let cidr: Ipv4Cidr;
      try {
        cidr = parseCidr(text);
      } catch {
        continue; // not ours to interpret; it cannot overlap a well-formed CIDR we would hand out
      }
      if (cidr.prefixLength === this.nodeMaskSize && containsCidr(this.clusterCidr, cidr)) taken.add(subnetIndex(this.clusterCidr, cidr));
      else if (overlaps(cidr, this.clusterCidr)) odd.push(cidr);
    }
    const capacity = this.capacity;
    const free: Ipv4Cidr[] = [];
    for (let index = 0; index < capacity; index++) {
      if (taken.has(index)) continue;
      const candidate = nthSubnet(this.clusterCidr, this.nodeMaskSize, index);
      if (odd.some((c) => overlaps(c, candidate))) continue;
      if (!random) return candidate;
      free.push(candidate);
    }
    if (free.length > 0) return free[Math.floor(Math.random() * free.length)];
    throw new IpamExhaustedError(formatCidr(this.clusterCidr), Math.min(capacity, taken.size + odd.length), capacity);
  }
}
