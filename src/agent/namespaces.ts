/**
 * Namespace labels, the cluster's view of Kubernetes namespaces without a Kubernetes API: records
 * `namespaces/<name>` → { name, labels } in the shared store, written by `ciliate namespace label`
 * on any node and followed by every agent. A pod's identity carries its namespace's labels as
 * `io.cilium.k8s.namespace.labels.<key>`, as Cilium's does, so that Kubernetes NetworkPolicy
 * `namespaceSelector`s and CiliumNetworkPolicy selectors on namespace labels match live pods.
 *
 * Like the Kubernetes API server (≥ 1.21), every namespace has `kubernetes.io/metadata.name` set to
 * its own name, record or not: that is the label people select namespaces by.
 * @module
 */
import type { Logger } from 'pino';
import { InvalidLabelsError, podLabels } from '../identity/index.ts';
import { Table } from '../statedb/index.ts';
import type { StateStore } from '../store/index.ts';
import { NamespaceError } from './errors.ts';
import { followPrefix } from './follow.ts';

export interface NamespaceRecord {
  name: string;
  labels: Record<string, string>;
}

/** The label Kubernetes puts on every namespace: its own name. */
export const NAMESPACE_NAME_LABEL = 'kubernetes.io/metadata.name';

const PREFIX = 'namespaces/';
/** DNS-1123 label, as Kubernetes requires of namespace names. */
const NAMESPACE_NAME = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/;

export class Namespaces {
  readonly table = new Table<NamespaceRecord>('namespaces', (ns) => ns.name, { equals: (a, b) => JSON.stringify(a) === JSON.stringify(b) });
  readonly #store: StateStore;
  readonly #log: Logger;
  readonly #listeners = new Set<(namespace: string) => Promise<void> | void>();
  /** The latest onChange work per namespace, which setLabels() waits for. */
  readonly #changing = new Map<string, Promise<void>>();
  readonly #abort = new AbortController();
  #loop: Promise<void> | undefined;
  #appliedRevision = 0;
  readonly #waiters: { revision: number; resolve: () => void }[] = [];

  constructor(options: { store: StateStore; log: Logger }) {
    this.#store = options.store;
    this.#log = options.log;
  }

  /**
   * `listener` hears of every namespace whose labels changed, after the table has them; what it
   * returns is awaited by the setLabels() that caused it (it should not reject). Returns the
   * unsubscribe function.
   */
  onChange(listener: (namespace: string) => Promise<void> | void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  async #changed(namespace: string): Promise<void> {
    for (const listener of this.#listeners) await listener(namespace);
  }

  async start(): Promise<void> {
    const { loop } = await followPrefix<NamespaceRecord>(this.#store, PREFIX, {
      signal: this.#abort.signal,
      apply: (event) => {
        const name = event.key.slice(PREFIX.length);
        const before = this.labelsOf(name);
        if (event.type === 'delete') this.table.delete(name);
        else this.table.upsert(event.value);
        this.#applied(event.revision);
        if (JSON.stringify(this.labelsOf(name)) !== JSON.stringify(before)) {
          const previous = this.#changing.get(name) ?? Promise.resolve();
          this.#changing.set(name, previous.then(() => this.#changed(name)));
        }
      },
      onEnd: (error, compacted) => this.#log.error({ err: error, prefix: PREFIX, compacted }, 'namespace watch ended; namespace labels are stale'),
    });
    this.#loop = loop;
  }

  async stop(): Promise<void> {
    this.#abort.abort();
    await this.#loop;
  }

  /** The labels of `namespace` that pods inherit: its record's, plus its name label. */
  labelsOf(namespace: string): Record<string, string> {
    return { ...this.table.get(namespace)?.labels, [NAMESPACE_NAME_LABEL]: namespace };
  }

  /** Every namespace with a record, by name. */
  list(): NamespaceRecord[] {
    return [...this.table.all()].sort((a, b) => a.name.localeCompare(b.name));
  }

  /**
   * Replaces the labels of `name` (an empty set deletes the record). Validated whole before
   * anything is written; resolves once this node has applied the change, its pods' identities
   * included (other nodes follow on their own).
   */
  async setLabels(name: string, labels: Record<string, string>): Promise<NamespaceRecord> {
    if (typeof name !== 'string' || !NAMESPACE_NAME.test(name)) {
      throw new NamespaceError('ERR_BAD_NAMESPACE', `namespace ${JSON.stringify(name)}: must be a DNS-1123 label (lower-case letters, digits and '-', at most 63)`);
    }
    if (NAMESPACE_NAME_LABEL in labels && labels[NAMESPACE_NAME_LABEL] !== name) {
      throw new NamespaceError('ERR_BAD_NAMESPACE', `namespace ${name}: label ${NAMESPACE_NAME_LABEL} is always the namespace's name`);
    }
    try {
      podLabels({ namespace: name, labels: {}, namespaceLabels: labels });
    } catch (error) {
      if (error instanceof InvalidLabelsError) throw new NamespaceError('ERR_BAD_NAMESPACE', `namespace ${name}: ${error.message}`, { cause: error });
      throw error;
    }
    const record: NamespaceRecord = { name, labels: Object.fromEntries(Object.entries(labels).filter(([key]) => key !== NAMESPACE_NAME_LABEL)) };
    if (Object.keys(record.labels).length === 0) {
      const { revision, deleted } = await this.#store.delete(`${PREFIX}${name}`);
      // Nothing deleted, no event to wait for (and the store's revision may be past any of ours).
      if (deleted) await this.#reached(revision);
    } else {
      await this.#reached((await this.#store.put(`${PREFIX}${name}`, record)).revision);
    }
    await this.#changing.get(name);
    return record;
  }

  #applied(revision: number): void {
    this.#appliedRevision = Math.max(this.#appliedRevision, revision);
    for (let i = this.#waiters.length - 1; i >= 0; i--) {
      if (this.#waiters[i].revision <= this.#appliedRevision) this.#waiters.splice(i, 1)[0].resolve();
    }
  }

  #reached(revision: number): Promise<void> {
    if (revision <= this.#appliedRevision) return Promise.resolve();
    return new Promise((resolve) => this.#waiters.push({ revision, resolve }));
  }
}
