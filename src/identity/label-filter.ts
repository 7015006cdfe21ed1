/**
 * Which labels are security-relevant. Labels that differ per pod (hashes, pod names, indexes)
 * would give every pod its own identity and flood the policy maps, so Cilium drops them before
 * allocating; they stay "information labels" only.
 *
 * Rules use Cilium's `--labels` syntax: `[source:][!]regex`. The regex must match at the start
 * of the label key; `!` makes the rule exclusive (drop). A label is kept when
 * - no inclusive user rule exists and no exclusive rule matches it, or
 * - an inclusive rule matches a longer part of the key than the shortest matching exclusive rule
 *   (longest match wins, so `io.kubernetes.pod.namespace` survives `!io\.kubernetes`).
 * `reserved` and `cidr` labels are always kept: they are the agent's own.
 *
 * Default rules (DEFAULT_LABEL_FILTER_RULES):
 * - keep `io.kubernetes.pod.namespace`, `io.cilium.k8s.namespace.labels…`, `app.kubernetes.io…`;
 * - drop `io.kubernetes…`, `kubernetes.io…`, `….beta.kubernetes.io…`, `k8s.io…`,
 *   `statefulset.kubernetes.io/pod-name`, `apps.kubernetes.io/pod-index`,
 *   `batch.kubernetes.io/job-completion-index`, `batch.kubernetes.io/controller-uid`,
 *   `controller-uid`, `pod-template-generation`, `pod-template-hash`,
 *   `controller-revision-hash`, `annotation…`, `etcd_node`.
 * @module
 */
import { InvalidLabelsError } from './errors.ts';
import { isLabelSource, type Label, type LabelSource, type Labels } from './labels.ts';

/** Inclusive defaults: they only override exclusive rules, they never turn on allow-list mode. */
const DEFAULT_INCLUDES = [String.raw`io\.kubernetes\.pod\.namespace`, String.raw`io\.cilium\.k8s\.namespace\.labels`, String.raw`app\.kubernetes\.io`];

export const DEFAULT_LABEL_FILTER_RULES: readonly string[] = [
  ...DEFAULT_INCLUDES,
  String.raw`!io\.kubernetes`,
  String.raw`!kubernetes\.io`,
  String.raw`!.*beta\.kubernetes\.io`,
  String.raw`!k8s\.io`,
  String.raw`!statefulset\.kubernetes\.io/pod-name`,
  String.raw`!apps\.kubernetes\.io/pod-index`,
  String.raw`!batch\.kubernetes\.io/job-completion-index`,
  String.raw`!batch\.kubernetes\.io/controller-uid`,
  String.raw`!controller-uid`,
  String.raw`!pod-template-generation`,
  String.raw`!pod-template-hash`,
  String.raw`!controller-revision-hash`,
  String.raw`!annotation.*`,
  String.raw`!etcd_node`,
];

interface Rule {
  readonly text: string;
  readonly source: LabelSource | undefined;
  readonly pattern: RegExp;
  readonly exclude: boolean;
}

function parseRule(text: string): Rule {
  let rest = text;
  let source: LabelSource | undefined;
  const colon = rest.indexOf(':');
  if (colon > 0 && isLabelSource(rest.slice(0, colon))) {
    source = rest.slice(0, colon) as LabelSource;
    rest = rest.slice(colon + 1);
  }
  // `any:` means every source, as in Cilium.
  if (source === 'any') source = undefined;
  const exclude = rest.startsWith('!');
  if (exclude) rest = rest.slice(1);
  if (rest === '') throw new InvalidLabelsError(text, 'label filter rule has an empty pattern');
  let pattern: RegExp;
  try {
    // Sticky: matches only at position 0, i.e. at the start of the key.
    pattern = new RegExp(rest, 'y');
  } catch (error) {
    throw new InvalidLabelsError(text, `label filter rule is not a valid regular expression: ${(error as Error).message}`);
  }
  return { text, source, pattern, exclude };
}

function matchLength(rule: Rule, label: Label): number {
  if (rule.source !== undefined && rule.source !== label.source) return 0;
  rule.pattern.lastIndex = 0;
  const match = rule.pattern.exec(label.key);
  return match === null ? 0 : Math.max(match[0].length, 1);
}

export interface LabelFilterResult {
  /** The labels that count for the identity. */
  readonly identity: Labels;
  /** The labels that were dropped (kept for display only). */
  readonly dropped: Labels;
}

/**
 * @example
 * const { identity, dropped } = LabelFilter.default.apply(Labels.parse(['app=web', 'pod-template-hash=5d8f']));
 * identity.toStrings(); // ['k8s:app=web']
 * dropped.toStrings();  // ['k8s:pod-template-hash=5d8f']
 */
export class LabelFilter {
  /** Cilium's default filter; see the module comment for the rules. */
  static readonly default: LabelFilter = new LabelFilter([]);
  /** Keeps every label. */
  static readonly none: LabelFilter = new LabelFilter([], { defaults: false });

  readonly rules: readonly string[];
  readonly #rules: readonly Rule[];
  readonly #allowList: boolean;

  /**
   * `rules` are user rules in `[source:][!]regex` form; with `defaults` (the default) the
   * DEFAULT_LABEL_FILTER_RULES apply too. Any inclusive user rule turns on allow-list mode: only
   * labels an inclusive rule matches are kept.
   */
  constructor(rules: readonly string[], options?: { readonly defaults?: boolean }) {
    const user = rules.map(parseRule);
    const defaults = options?.defaults === false ? [] : DEFAULT_LABEL_FILTER_RULES.map(parseRule);
    this.#rules = [...defaults, ...user];
    this.#allowList = user.some((r) => !r.exclude);
    this.rules = this.#rules.map((r) => r.text);
  }

  /** Whether `label` counts for identities. */
  accepts(label: Label): boolean {
    if (label.source === 'reserved' || label.source === 'cidr') return true;
    let included = 0;
    let excluded = 0;
    for (const rule of this.#rules) {
      const length = matchLength(rule, label);
      if (length === 0) continue;
      if (rule.exclude) excluded = excluded === 0 ? length : Math.min(excluded, length);
      else included = Math.max(included, length);
    }
    return (!this.#allowList && excluded === 0) || included > excluded;
  }

  apply(labels: Labels): LabelFilterResult {
    return { identity: labels.filter((l) => this.accepts(l)), dropped: labels.filter((l) => !this.accepts(l)) };
  }
}
