/**
 * Where IPAM keeps its state in the StateStore. One place, because the CLI, a future etcd
 * migration and tests all need to agree on it:
 * - `ipam/nodes/<node>` → `{ cidr }`: the node's pod CIDR;
 * - `ipam/cidrs/<a.b.c.d/n>` → `{ node }`: the claim that makes a CIDR exclusive (created with
 *   expectedRevision 0, so two nodes can never both claim it);
 * - `ipam/ips/<a.b.c.d>` → `{ owner, node }`: an allocated pod address;
 * - `ipam/owners/<node>/<owner>` → `{ ip }`: the reverse index that makes allocation idempotent
 *   per owner; always written in the same transaction as the address.
 * @module
 */
import { IpamError } from './errors.ts';
import { tryParseIpv4 } from './cidr.ts';

export const IPAM_PREFIX = 'ipam/';
export const NODES_PREFIX = 'ipam/nodes/';
export const CIDRS_PREFIX = 'ipam/cidrs/';
export const IPS_PREFIX = 'ipam/ips/';
export const OWNERS_PREFIX = 'ipam/owners/';

export interface NodeRecord {
  readonly cidr: string;
}
export interface CidrClaim {
  readonly node: string;
}
export interface IpRecord {
  readonly owner: string;
  readonly node: string;
}
export interface OwnerRecord {
  readonly ip: string;
}

export const nodeKey = (node: string): string => `${NODES_PREFIX}${node}`;
export const cidrKey = (cidr: string): string => `${CIDRS_PREFIX}${cidr}`;
export const ipKey = (ip: string): string => `${IPS_PREFIX}${ip}`;
export const ownersPrefix = (node: string): string => `${OWNERS_PREFIX}${node}/`;
export const ownerKey = (node: string, owner: string): string => `${ownersPrefix(node)}${owner}`;

/** Kubernetes node names are DNS subdomains; this also keeps "/" out of the keys. */
const NODE_NAME = /^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$/;

export function validateNodeName(node: string): void {
  if (typeof node !== 'string' || !NODE_NAME.test(node)) {
    throw new IpamError('ERR_IPAM_INVALID_ARGUMENT', `ipam: node name '${String(node)}' is invalid: expected a DNS subdomain (lowercase letters, digits, '-' and '.')`);
  }
}

export function validateOwner(owner: string): void {
  // Control characters would make keys and logs unreadable; an address-shaped owner would make
  // release(ownerOrIp) ambiguous.
  // eslint-disable-next-line no-control-regex
  if (typeof owner !== 'string' || owner.length === 0 || owner.length > 512 || /[\u0000-\u001f\u007f]/.test(owner)) {
    throw new IpamError('ERR_IPAM_INVALID_ARGUMENT', `ipam: owner ${JSON.stringify(owner)} is invalid: expected 1–512 printable characters (e.g. "<container id>:eth0")`);
  }
  if (tryParseIpv4(owner) !== undefined) {
    throw new IpamError('ERR_IPAM_INVALID_ARGUMENT', `ipam: owner '${owner}' is invalid: it looks like an IPv4 address`);
  }
}
