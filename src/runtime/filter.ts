/**
 * Tetragon's event filters (tetragon.Filter): the fields inside one filter are ANDed, the
 * filters of a list ORed, and an event passes when it matches some allow filter (or there are
 * none) and no deny filter (pkg/filters in Tetragon). Regexes are JavaScript's, compiled once
 * per request; one that does not compile is an error naming the field.
 * @module
 */
import { RuntimeError } from './errors.ts';
import { EventType, eventBody, eventTypeOf, processOf, type EventTypeName, type TetragonEvent } from './types.ts';

/** A Filter as it arrives over gRPC (proto-loader, proto field names) or from the CLI. */
export interface EventFilter {
  binary_regex?: string[];
  namespace?: string[];
  pid?: number[];
  pid_set?: number[];
  event_set?: (EventTypeName | number)[];
  pod_regex?: string[];
  arguments_regex?: string[];
  labels?: string[];
}

type Predicate = (event: TetragonEvent) => boolean;

/** How many descendants a pid_set filter remembers before it stops adding (Tetragon warns at 8192). */
const CHILD_CACHE_LIMIT = 65536;

/**
 * Bounds on what one request may ask the agent to evaluate per event. Any local user can open the
 * TCP API (as Tetragon's), and JavaScript's regexes backtrack where Tetragon's RE2 does not: these
 * keep one client's filters from costing the agent more than a bounded amount per event.
 */
const MAX_PATTERNS = 64;
const MAX_PATTERN_LENGTH = 1024;

function compile(field: string, patterns: string[]): RegExp[] {
  if (patterns.length > MAX_PATTERNS) throw new RuntimeError('ERR_RUNTIME_FILTER', `filter field ${field}: ${patterns.length} patterns, at most ${MAX_PATTERNS}`);
  return patterns.map((pattern, i) => {
    if (pattern.length > MAX_PATTERN_LENGTH) throw new RuntimeError('ERR_RUNTIME_FILTER', `filter field ${field}[${i}]: ${pattern.length} characters, at most ${MAX_PATTERN_LENGTH}`);
    try {
      return new RegExp(pattern);
    } catch (error) {
      throw new RuntimeError('ERR_RUNTIME_FILTER', `filter field ${field}[${i}]: ${(error as Error).message}`);
    }
  });
}

interface LabelTerm {
  key: string;
  op: 'eq' | 'ne' | 'exists' | 'absent';
  value: string;
}

/** Kubernetes equality-based label selectors: `k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-separated. */
function parseSelector(field: string, selector: string): LabelTerm[] {
  const terms: LabelTerm[] = [];
  for (const raw of selector.split(',')) {
    const term = raw.trim();
    if (!term) continue;
    const match = /^(!?)([\w./-]+)\s*(?:(==|=|!=)\s*([\w./-]*))?$/.exec(term);
    if (!match) throw new RuntimeError('ERR_RUNTIME_FILTER', `filter field ${field}: cannot parse label selector term "${term}" (supported: k=v, k==v, k!=v, k, !k)`);
    const [, not, key, op, value] = match;
    if (not && op) throw new RuntimeError('ERR_RUNTIME_FILTER', `filter field ${field}: "${term}" negates a comparison`);
    terms.push({ key, op: not ? 'absent' : op === '!=' ? 'ne' : op ? 'eq' : 'exists', value: value ?? '' });
  }
  return terms;
}

function eventTypeNumber(field: string, value: EventTypeName | number): number {
  const number = typeof value === 'number' ? value : EventType[value];
  if (number === undefined) throw new RuntimeError('ERR_RUNTIME_FILTER', `filter field ${field}: unknown event type ${String(value)} (known: ${Object.keys(EventType).join(', ')})`);
  return number;
}

/** One filter's predicate: every field it sets must match. */
function compileFilter(filter: EventFilter, where: string): Predicate {
  const checks: Predicate[] = [];
  if (filter.binary_regex?.length) {
    const res = compile(`${where}.binary_regex`, filter.binary_regex);
    checks.push((e) => res.some((re) => re.test(processOf(e).binary)));
  }
  if (filter.namespace?.length) {
    const namespaces = new Set(filter.namespace);
    // Tetragon: "" stands for processes outside any pod.
    checks.push((e) => namespaces.has(processOf(e).pod?.namespace ?? ''));
  }
  if (filter.pid?.length) {
    const pids = new Set(filter.pid);
    checks.push((e) => pids.has(processOf(e).pid));
  }
  if (filter.pid_set?.length) {
    const roots = new Set(filter.pid_set);
    const children = new Set<number>();
    checks.push((e) => {
      const process = processOf(e);
      if (roots.has(process.pid) || children.has(process.pid)) return true;
      const parent = eventBody(e).body.parent;
      if (!parent || !(roots.has(parent.pid) || children.has(parent.pid))) return false;
      if (children.size < CHILD_CACHE_LIMIT) children.add(process.pid);
      return true;
    });
  }
  if (filter.event_set?.length) {
    const types = new Set(filter.event_set.map((t) => eventTypeNumber(`${where}.event_set`, t)));
    checks.push((e) => types.has(EventType[eventTypeOf(e)]));
  }
  if (filter.pod_regex?.length) {
    const res = compile(`${where}.pod_regex`, filter.pod_regex);
    checks.push((e) => {
      const pod = processOf(e).pod;
      return pod !== undefined && res.some((re) => re.test(pod.name));
    });
  }
  if (filter.arguments_regex?.length) {
    const res = compile(`${where}.arguments_regex`, filter.arguments_regex);
    checks.push((e) => res.some((re) => re.test(processOf(e).arguments ?? '')));
  }
  if (filter.labels?.length) {
    const selectors = filter.labels.map((s, i) => parseSelector(`${where}.labels[${i}]`, s));
    checks.push((e) => {
      const labels = processOf(e).pod?.pod_labels ?? {};
      return selectors.some((terms) =>
        terms.every((t) => {
          const has = Object.hasOwn(labels, t.key);
          if (t.op === 'exists') return has;
          if (t.op === 'absent') return !has;
          if (t.op === 'eq') return has && labels[t.key] === t.value;
          return !has || labels[t.key] !== t.value;
        }),
      );
    });
  }
  return (e) => checks.every((check) => check(e));
}

/**
 * The allow and deny lists of a GetEvents request as one predicate.
 *
 * @example
 * const pass = compileFilters([{ binary_regex: ['curl$'] }], [{ namespace: ['kube-system'] }]);
 */
export function compileFilters(allow: EventFilter[] = [], deny: EventFilter[] = []): Predicate {
  const allows = allow.map((f, i) => compileFilter(f, `allow_list[${i}]`));
  const denies = deny.map((f, i) => compileFilter(f, `deny_list[${i}]`));
  return (e) => (allows.length === 0 || allows.some((p) => p(e))) && !denies.some((p) => p(e));
}
