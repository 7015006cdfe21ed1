/**
 * Labels as Cilium has them: `source:key=value`, where the source says where the label came from.
 *
 * - Sources: `k8s` (pod and namespace labels), `container` (runtime labels), `reserved` (the
 *   agent's own: `reserved:host`, `reserved:world`…), `cidr` (CIDR identities), `unspec`, and
 *   `any`, which only selectors use ("this key from any source").
 * - A label set holds each key once (Cilium keys its label map by key), sorted by key. Its
 *   canonical string — each label as `source:key=value` (or `source:key` without a value),
 *   joined by ';' — is the allocation key: equal sets give equal strings whatever the input order.
 * - `app=web` without a source gets the default source, `k8s` (the pod label case); `$host` is
 *   short for `reserved:host`, as in Cilium.
 * - `io.kubernetes.pod.namespace` is the label that carries the pod's namespace; policies select
 *   namespaces through it.
 * @module
 */
import { InvalidLabelsError, IdentityError } from './errors.ts';
import { parsePrefix, prefixLabelKey } from './prefix.ts';

export const LABEL_SOURCES = ['k8s', 'container', 'reserved', 'cidr', 'unspec', 'any'] as const;
export type LabelSource = (typeof LABEL_SOURCES)[number];

/** The pod's namespace: `k8s:io.kubernetes.pod.namespace=<ns>`. */
export const LABEL_NAMESPACE = 'io.kubernetes.pod.namespace';
/** The pod's service account: `k8s:io.cilium.k8s.policy.serviceaccount=<sa>`. */
export const LABEL_SERVICE_ACCOUNT = 'io.cilium.k8s.policy.serviceaccount';
/** The cluster name: `k8s:io.cilium.k8s.policy.cluster=<name>`. */
export const LABEL_CLUSTER = 'io.cilium.k8s.policy.cluster';
/** Namespace labels are copied onto pods under this prefix: `io.cilium.k8s.namespace.labels.<key>`. */
export const NAMESPACE_LABELS_PREFIX = 'io.cilium.k8s.namespace.labels.';

/**
 * Keys of `reserved:` labels, one per reserved identity (numbers in reserved.ts). Kept here, not
 * in reserved.ts, so label validation does not depend on the identity table.
 */
export const RESERVED_LABEL_KEYS = [
  'host',
  'world',
  'unmanaged',
  'health',
  'init',
  'remote-node',
  'kube-apiserver',
  'ingress',
  'world-ipv4',
  'world-ipv6',
  'encrypted-overlay',
] as const;
export type ReservedLabelKey = (typeof RESERVED_LABEL_KEYS)[number];

export interface Label {
  readonly source: LabelSource;
  readonly key: string;
  /** '' for labels without a value (all reserved and cidr labels). */
  readonly value: string;
}

export interface ParseOptions {
  /** Source for labels written without one (`app=web`). Default `k8s`. */
  readonly defaultSource?: LabelSource;
}

/** Anything the label APIs accept as a label set. */
export type LabelsInput = Labels | Iterable<string | Label> | Readonly<Record<string, string>>;

const MAX_K8S_KEY = 253 + 1 + 63;
const MAX_K8S_VALUE = 63;
const MAX_OTHER = 1024;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
const K8S_NAME = /^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/;
const K8S_VALUE = /^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$/;
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f]/;

export function isLabelSource(value: unknown): value is LabelSource {
  return typeof value === 'string' && (LABEL_SOURCES as readonly string[]).includes(value);
}

/** `source:key=value`, or `source:key` when the value is empty. */
export function formatLabel(label: Label): string {
  return label.value === '' ? `${label.source}:${label.key}` : `${label.source}:${label.key}=${label.value}`;
}

function checkK8sKey(key: string): string | undefined {
  if (key.length > MAX_K8S_KEY) return `key is longer than ${MAX_K8S_KEY} characters`;
  const slash = key.lastIndexOf('/');
  const prefix = slash < 0 ? undefined : key.slice(0, slash);
  const name = slash < 0 ? key : key.slice(slash + 1);
  if (prefix !== undefined && (prefix.length > 253 || !DNS_SUBDOMAIN.test(prefix))) {
    return `key prefix '${prefix}' must be a DNS subdomain (lowercase letters, digits, '-' and '.')`;
  }
  // Cilium-generated keys (io.cilium.k8s.namespace.labels.<key>) can run past Kubernetes' 63,
  // so only the character set of the name part is checked.
  if (!K8S_NAME.test(name)) return `key name '${name}' must be characters [A-Za-z0-9-_.] starting and ending alphanumeric`;
  return undefined;
}

function checkFreeForm(what: 'key' | 'value', text: string): string | undefined {
  if (text.length > MAX_OTHER) return `${what} is longer than ${MAX_OTHER} characters`;
  if (CONTROL.test(text)) return `${what} contains control characters`;
  if (text.includes(';')) return `${what} contains ';', which separates labels in the canonical form`;
  if (what === 'key' && (text.includes('=') || /\s/.test(text))) return `key contains '=' or whitespace`;
  return undefined;
}

/**
 * A validated label; cidr keys are normalised (host bits cleared, IPv6 in dashed form).
 * Throws InvalidLabelsError (ERR_IDENTITY_INVALID_LABELS) naming the label and the reason.
 *
 * @example
 * makeLabel('k8s', 'app', 'web'); // { source: 'k8s', key: 'app', value: 'web' }
 */
export function makeLabel(source: LabelSource, key: string, value = '', written?: string): Label {
  const shown = written ?? (typeof key === 'string' && typeof value === 'string' ? formatLabel({ source, key, value }) : String(key));
  const fail = (reason: string): never => {
    throw new InvalidLabelsError(shown, reason);
  };
  if (!isLabelSource(source)) fail(`unknown source '${String(source)}' (expected one of ${LABEL_SOURCES.join(', ')})`);
  if (typeof key !== 'string' || typeof value !== 'string') fail('key and value must be strings');
  if (key === '') fail('key is empty');
  let reason: string | undefined;
  switch (source) {
    case 'k8s':
      reason = checkK8sKey(key);
      if (reason === undefined && (value.length > MAX_K8S_VALUE || !K8S_VALUE.test(value))) {
        reason = `value must be empty or 1–${MAX_K8S_VALUE} characters [A-Za-z0-9-_.] starting and ending alphanumeric`;
      }
      break;
    case 'reserved':
      if (!(RESERVED_LABEL_KEYS as readonly string[]).includes(key)) reason = `unknown reserved label '${key}' (expected one of ${RESERVED_LABEL_KEYS.join(', ')})`;
      else if (value !== '') reason = 'reserved labels have no value';
      break;
    case 'cidr': {
      if (value !== '') {
        reason = 'cidr labels have no value';
        break;
      }
      try {
        return { source, key: prefixLabelKey(parsePrefix(key)), value: '' };
      } catch (error) {
        if (!IdentityError.is(error)) throw error;
        reason = `'${key}' is not a CIDR`;
      }
      break;
    }
    default:
      reason = checkFreeForm('key', key) ?? checkFreeForm('value', value);
  }
  if (reason !== undefined) fail(reason);
  return { source, key, value };
}

/**
 * Parses `source:key=value`, `key=value` (default source, `k8s` unless told), `source:key`, or
 * `$name` (= `reserved:name`). The first ':' before any '=' ends the source.
 *
 * @example
 * parseLabel('k8s:app=web');       // { source: 'k8s', key: 'app', value: 'web' }
 * parseLabel('tier=db');           // { source: 'k8s', key: 'tier', value: 'db' }
 * parseLabel('reserved:host');     // { source: 'reserved', key: 'host', value: '' }
 * parseLabel('cidr:10.1.0.0/16');  // { source: 'cidr', key: '10.1.0.0/16', value: '' }
 */
export function parseLabel(text: string, options?: ParseOptions): Label {
  if (typeof text !== 'string' || text.trim() === '') throw new InvalidLabelsError(String(text), 'label is empty');
  let source: LabelSource = options?.defaultSource ?? 'k8s';
  let rest = text;
  if (text.startsWith('$')) {
    source = 'reserved';
    rest = text.slice(1);
  } else {
    const colon = text.indexOf(':');
    const eq = text.indexOf('=');
    if (colon >= 0 && (eq < 0 || colon < eq)) {
      const candidate = text.slice(0, colon);
      if (!isLabelSource(candidate)) {
        throw new InvalidLabelsError(text, `unknown source '${candidate}' (expected one of ${LABEL_SOURCES.join(', ')})`);
      }
      source = candidate;
      rest = text.slice(colon + 1);
    }
  }
  const eq = rest.indexOf('=');
  return makeLabel(source, eq < 0 ? rest : rest.slice(0, eq), eq < 0 ? '' : rest.slice(eq + 1), text);
}

function compareKeys(a: Label, b: Label): number {
  return a.key < b.key ? -1 : a.key > b.key ? 1 : 0;
}

/**
 * An immutable, sorted set of labels with at most one label per key.
 *
 * @example
 * const a = Labels.parse(['k8s:app=web', 'k8s:io.kubernetes.pod.namespace=default']);
 * const b = Labels.parse('io.kubernetes.pod.namespace=default;app=web');
 * a.canonical === b.canonical; // true: 'k8s:app=web;k8s:io.kubernetes.pod.namespace=default'
 * a.namespace; // 'default'
 */
export class Labels implements Iterable<Label> {
  static readonly EMPTY: Labels = new Labels([]);
  readonly #labels: readonly Label[];
  #canonical: string | undefined;

  private constructor(sorted: readonly Label[]) {
    this.#labels = sorted;
  }

  /**
   * From label objects. Repeating a label is fine; the same key with a different source or
   * value is refused, because which one counts would depend on input order.
   */
  static of(labels: Iterable<Label>): Labels {
    const byKey = new Map<string, Label>();
    for (const raw of labels) {
      const label = makeLabel(raw.source, raw.key, raw.value);
      const other = byKey.get(label.key);
      if (other !== undefined && (other.source !== label.source || other.value !== label.value)) {
        throw new InvalidLabelsError(formatLabel(label), `key '${label.key}' also appears as ${JSON.stringify(formatLabel(other))}; a label set holds each key once`);
      }
      byKey.set(label.key, label);
    }
    return new Labels([...byKey.values()].sort(compareKeys));
  }

  /** From label strings, or one string of labels separated by ';' (the canonical form). */
  static parse(input: string | Iterable<string>, options?: ParseOptions): Labels {
    const texts = typeof input === 'string' ? (input.trim() === '' ? [] : input.split(';')) : [...input];
    return Labels.of(texts.map((t) => parseLabel(t, options)));
  }

  /** From a `{ key: value }` map (a pod's `metadata.labels`), all with one source. */
  static fromRecord(record: Readonly<Record<string, string>>, source: LabelSource = 'k8s'): Labels {
    return Labels.of(Object.entries(record).map(([key, value]) => makeLabel(source, key, value)));
  }

  /** Whatever the APIs accept: a Labels (returned as is), strings and labels, or a record. */
  static from(input: LabelsInput, options?: ParseOptions): Labels {
    if (input instanceof Labels) return input;
    if (input === null || typeof input !== 'object') throw new InvalidLabelsError(String(input), 'expected labels (strings, label objects or a record)');
    if (typeof (input as Iterable<unknown>)[Symbol.iterator] !== 'function') return Labels.fromRecord(input as Record<string, string>, options?.defaultSource);
    return Labels.of([...(input as Iterable<string | Label>)].map((l) => (typeof l === 'string' ? parseLabel(l, options) : l)));
  }

  get size(): number {
    return this.#labels.length;
  }

  get(key: string): Label | undefined {
    return this.#labels.find((l) => l.key === key);
  }

  has(key: string, source?: LabelSource): boolean {
    const label = this.get(key);
    return label !== undefined && (source === undefined || label.source === source);
  }

  /** Whether any label has this source. */
  hasSource(source: LabelSource): boolean {
    return this.#labels.some((l) => l.source === source);
  }

  /** The pod namespace (`k8s:io.kubernetes.pod.namespace`), if present. */
  get namespace(): string | undefined {
    const label = this.get(LABEL_NAMESPACE);
    return label?.source === 'k8s' ? label.value : undefined;
  }

  /** The canonical string: sorted `source:key=value` joined by ';'. The allocation key. */
  get canonical(): string {
    this.#canonical ??= this.#labels.map(formatLabel).join(';');
    return this.#canonical;
  }

  toArray(): readonly Label[] {
    return this.#labels;
  }

  toStrings(): string[] {
    return this.#labels.map(formatLabel);
  }

  equals(other: Labels): boolean {
    return this.canonical === other.canonical;
  }

  /** The labels for which `predicate` holds. */
  filter(predicate: (label: Label) => boolean): Labels {
    return new Labels(this.#labels.filter(predicate));
  }

  /** This set plus `other` (the same key twice is refused unless identical). */
  merge(other: LabelsInput): Labels {
    return Labels.of([...this.#labels, ...Labels.from(other)]);
  }

  [Symbol.iterator](): Iterator<Label> {
    return this.#labels[Symbol.iterator]();
  }

  toString(): string {
    return this.canonical;
  }

  toJSON(): string[] {
    return this.toStrings();
  }

  /** `Labels(k8s:app=web;…)` in console.log and assertion diffs. */
  [Symbol.for('nodejs.util.inspect.custom')](): string {
    return `Labels(${this.canonical})`;
  }
}

export interface PodLabelsInput {
  readonly namespace: string;
  /** The pod's `metadata.labels`. */
  readonly labels?: Readonly<Record<string, string>>;
  readonly serviceAccount?: string;
  /** Cluster name; Cilium adds it so identities of different clusters stay apart. */
  readonly cluster?: string;
  /** The namespace's `metadata.labels`, copied as `io.cilium.k8s.namespace.labels.<key>`. */
  readonly namespaceLabels?: Readonly<Record<string, string>>;
}

/**
 * A pod's labels as Cilium derives them: its own labels plus namespace, service account, cluster
 * and namespace labels, all with source `k8s`. Not filtered: the allocator applies its label filter.
 *
 * @example
 * podLabels({ namespace: 'default', labels: { app: 'web' }, serviceAccount: 'web' }).toStrings();
 * // ['k8s:app=web', 'k8s:io.cilium.k8s.policy.serviceaccount=web', 'k8s:io.kubernetes.pod.namespace=default']
 */
export function podLabels(input: PodLabelsInput): Labels {
  const labels: Label[] = Object.entries(input.labels ?? {}).map(([k, v]) => makeLabel('k8s', k, v));
  labels.push(makeLabel('k8s', LABEL_NAMESPACE, input.namespace));
  if (input.serviceAccount !== undefined) labels.push(makeLabel('k8s', LABEL_SERVICE_ACCOUNT, input.serviceAccount));
  if (input.cluster !== undefined) labels.push(makeLabel('k8s', LABEL_CLUSTER, input.cluster));
  for (const [k, v] of Object.entries(input.namespaceLabels ?? {})) labels.push(makeLabel('k8s', `${NAMESPACE_LABELS_PREFIX}${k}`, v));
  return Labels.of(labels);
}
