/**
 * Typed errors of IPAM. Every error has a stable `code`; messages start with "ipam: " and name
 * the pool, node and address involved, because they end up in CNI results and `ciliate status`.
 * @module
 */
import { codedErrorFamily } from '../errors/index.ts';

export type IpamErrorCode =
  /** No free address (or node CIDR) left in the pool. */
  | 'ERR_IPAM_EXHAUSTED'
  /** The owner already holds a different address. */
  | 'ERR_IPAM_DUPLICATE_OWNER'
  /** The requested address is held by another owner. */
  | 'ERR_IPAM_ADDRESS_IN_USE'
  /** The address is the network, broadcast or router address of the node's pool. */
  | 'ERR_IPAM_RESERVED'
  /** The address is outside the node's pool. */
  | 'ERR_IPAM_OUT_OF_RANGE'
  /** A CIDR or address that does not parse. */
  | 'ERR_IPAM_INVALID_CIDR'
  /** Configuration that cannot work (mask sizes, a node CIDR outside the cluster CIDR). */
  | 'ERR_IPAM_INVALID_CONFIG'
  /** A malformed owner or node name. */
  | 'ERR_IPAM_INVALID_ARGUMENT'
  /** Other writers kept winning the compare-and-swap; retrying did not help. */
  | 'ERR_IPAM_CONFLICT'
  /** A node CIDR cannot be released while addresses from it are allocated. */
  | 'ERR_IPAM_IN_USE';

/** An error of IPAM; `IpamError.is(e, code?)` is exact. */
export class IpamError extends codedErrorFamily<IpamErrorCode>('ipam') {}

/**
 * A pool ran dry. `pool` is the CIDR, `node` the node it belongs to (absent for the cluster
 * pool of node CIDRs).
 */
export class IpamExhaustedError extends IpamError {
  readonly pool: string;
  readonly node: string | undefined;
  readonly used: number;
  readonly capacity: number;

  constructor(pool: string, used: number, capacity: number, node?: string) {
    const message =
      node === undefined
        ? `ipam: cluster pool ${pool} is exhausted: ${used} of ${capacity} node CIDRs in use`
        : `ipam: pool ${pool} of node ${node} is exhausted: ${used} of ${capacity} addresses in use`;
    super('ERR_IPAM_EXHAUSTED', message);
    this.pool = pool;
    this.node = node;
    this.used = used;
    this.capacity = capacity;
  }
}
