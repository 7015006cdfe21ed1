/**
 * Node-local identities: CIDR identities (and any label set with a `cidr:` label) numbered
 * `1<<24 | n`. They are never shared through the store: each node derives them from its own
 * policy (toCIDR rules, FQDN answers), and the local flag keeps their numbers out of the
 * cluster-wide range. Reference-counted in memory; a number is freed when its count drops to 0.
 *
 * Labels of a CIDR identity, as Cilium builds them: `cidr:<prefix>` plus `reserved:world` (or
 * `reserved:world-ipv4` / `reserved:world-ipv6` on dual-stack nodes). `/0` is the world itself and
 * maps to the reserved world identity, not a CIDR identity.
 * @module
 */
import { IdentityError, IdentityExhaustedError } from './errors.ts';
import { Labels, makeLabel } from './labels.ts';
import { parsePrefix, prefixLabelKey } from './prefix.ts';
import { LOCAL_IDENTITY_FLAG, MAX_LOCAL_IDENTITY_INDEX } from './reserved.ts';

export interface CidrLabelsOptions {
  /** Dual-stack nodes label CIDRs `reserved:world-ipv4`/`-ipv6` instead of `reserved:world`. */
  readonly dualStack?: boolean;
}

/**
 * The labels of a CIDR identity. Host bits are cleared (`10.1.2.3/8` → `cidr:10.0.0.0/8`).
 * Throws IdentityError ERR_IDENTITY_INVALID_CIDR for text that is not a CIDR.
 *
 * @example
 * cidrLabels('10.0.0.0/8').toStrings(); // ['cidr:10.0.0.0/8', 'reserved:world']
 */
export function cidrLabels(cidr: string, options?: CidrLabelsOptions): Labels {
  const prefix = parsePrefix(cidr);
  const world = options?.dualStack ? (prefix.family === 4 ? 'world-ipv4' : 'world-ipv6') : 'world';
  const labels = [makeLabel('reserved', world)];
  if (prefix.length > 0) labels.push(makeLabel('cidr', prefixLabelKey(prefix)));
  return Labels.of(labels);
}

interface LocalEntry {
  readonly id: number;
  readonly labels: Labels;
  refs: number;
}

export interface LocalAllocation {
  readonly id: number;
  readonly labels: Labels;
  readonly isNew: boolean;
}

/** The in-memory allocator of `1<<24 | n` identities. */
export class LocalIdentities {
  #byCanonical = new Map<string, LocalEntry>();
  #byId = new Map<number, LocalEntry>();
  /** Next-fit cursor, so a just-freed number is not handed out again at once (stale ipcache entries). */
  #next = 1;
  #maxIndex: number;
  #onChange: (type: 'upsert' | 'delete', id: number, labels: Labels) => void;

  constructor(onChange: (type: 'upsert' | 'delete', id: number, labels: Labels) => void, maxIndex = MAX_LOCAL_IDENTITY_INDEX) {
    this.#onChange = onChange;
    this.#maxIndex = maxIndex;
  }

  get size(): number {
    return this.#byId.size;
  }

  allocate(labels: Labels): LocalAllocation {
    const existing = this.#byCanonical.get(labels.canonical);
    if (existing !== undefined) {
      existing.refs++;
      return { id: existing.id, labels: existing.labels, isNew: false };
    }
    if (this.#byId.size >= this.#maxIndex) {
      throw new IdentityExhaustedError('node-local', LOCAL_IDENTITY_FLAG | 1, LOCAL_IDENTITY_FLAG | this.#maxIndex, this.#byId.size, labels.canonical);
    }
    let index = this.#next;
    while (this.#byId.has(LOCAL_IDENTITY_FLAG | index)) index = index >= this.#maxIndex ? 1 : index + 1;
    this.#next = index >= this.#maxIndex ? 1 : index + 1;
    const entry: LocalEntry = { id: (LOCAL_IDENTITY_FLAG | index) >>> 0, labels, refs: 1 };
    this.#byCanonical.set(labels.canonical, entry);
    this.#byId.set(entry.id, entry);
    this.#onChange('upsert', entry.id, labels);
    return { id: entry.id, labels, isNew: true };
  }

  /** Drops one reference; true when that was the last and the identity is gone. */
  release(id: number): boolean {
    const entry = this.#byId.get(id);
    if (entry === undefined) {
      throw new IdentityError('ERR_IDENTITY_NOT_REFERENCED', `identity: cannot release node-local identity ${id}: it is not allocated on this node`);
    }
    if (--entry.refs > 0) return false;
    this.#byId.delete(id);
    this.#byCanonical.delete(entry.labels.canonical);
    this.#onChange('delete', id, entry.labels);
    return true;
  }

  get(id: number): { readonly id: number; readonly labels: Labels } | undefined {
    const entry = this.#byId.get(id);
    return entry === undefined ? undefined : { id: entry.id, labels: entry.labels };
  }

  lookup(labels: Labels): { readonly id: number; readonly labels: Labels } | undefined {
    const entry = this.#byCanonical.get(labels.canonical);
    return entry === undefined ? undefined : { id: entry.id, labels: entry.labels };
  }

  references(id: number): number {
    return this.#byId.get(id)?.refs ?? 0;
  }

  list(): { readonly id: number; readonly labels: Labels }[] {
    return [...this.#byId.values()].sort((a, b) => a.id - b.id).map((e) => ({ id: e.id, labels: e.labels }));
  }
}
