/**
 * Where cluster-wide identities live in the StateStore. One place, because every node, the
 * garbage collector, the CLI and a later etcd migration must agree on it:
 * - `identities/by-id/<id>` → `{ labels, createdAt, lastUsedAt }`: the identity (labels as
 *   sorted `source:key=value` strings); what the watch-fed caches read;
 * - `identities/by-labels/<canonical labels>` → `{ id }`: the index that makes equal labels get
 *   equal numbers on every node; written with the by-id key in one transaction, both with
 *   expectedRevision 0, so a number or a label set is never taken twice;
 * - `identities/refs/<id>/<node>` → `{ since }`: node `<node>` uses the identity. An identity
 *   without refs may be garbage-collected.
 *
 * Every write that adds or drops a ref also rewrites the by-id key (compare-and-swap on its
 * revision). The collector deletes by-id with its revision as seen in one consistent listing, so
 * a ref taken after that listing makes the delete fail instead of removing an identity in use.
 * @module
 */
import { IdentityError } from './errors.ts';

export const IDENTITIES_PREFIX = 'identities/';
export const BY_ID_PREFIX = 'identities/by-id/';
export const BY_LABELS_PREFIX = 'identities/by-labels/';
export const REFS_PREFIX = 'identities/refs/';

export interface IdentityRecord {
  /** Sorted `source:key=value` strings. */
  readonly labels: readonly string[];
  /** Milliseconds since the epoch. */
  readonly createdAt: number;
  /** Last time a node took or dropped a reference; garbage collection measures age from it. */
  readonly lastUsedAt: number;
}
export interface LabelsRecord {
  readonly id: number;
}
export interface RefRecord {
  readonly since: number;
}

export const byIdKey = (id: number): string => `${BY_ID_PREFIX}${id}`;
export const byLabelsKey = (canonical: string): string => `${BY_LABELS_PREFIX}${canonical}`;
export const refsPrefix = (id: number): string => `${REFS_PREFIX}${id}/`;
export const refKey = (id: number, node: string): string => `${refsPrefix(id)}${node}`;

/** The id of a by-id key, or undefined for anything else. */
export function idOfByIdKey(key: string): number | undefined {
  if (!key.startsWith(BY_ID_PREFIX)) return undefined;
  const text = key.slice(BY_ID_PREFIX.length);
  return /^[1-9][0-9]{0,9}$/.test(text) ? Number(text) : undefined;
}

/** `{ id, node }` of a ref key, or undefined. */
export function parseRefKey(key: string): { readonly id: number; readonly node: string } | undefined {
  if (!key.startsWith(REFS_PREFIX)) return undefined;
  const rest = key.slice(REFS_PREFIX.length);
  const slash = rest.indexOf('/');
  if (slash < 0) return undefined;
  const idText = rest.slice(0, slash);
  const node = rest.slice(slash + 1);
  if (!/^[1-9][0-9]{0,9}$/.test(idText) || node === '') return undefined;
  return { id: Number(idText), node };
}

/** Canonical label strings longer than this would not fit the store's key limit. */
export const MAX_CANONICAL_LENGTH = 3800;

/** Kubernetes node names are DNS subdomains; this also keeps '/' out of the ref keys. */
const NODE_NAME = /^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$/;

export function validateNodeName(node: string): void {
  if (typeof node !== 'string' || !NODE_NAME.test(node)) {
    throw new IdentityError('ERR_IDENTITY_INVALID_ARGUMENT', `identity: node name ${JSON.stringify(node)} is invalid: expected a DNS subdomain (lowercase letters, digits, '-' and '.')`);
  }
}
