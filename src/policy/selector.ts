/**
 * Label selectors as Cilium evaluates them: keys are `source:key`; a selector key with source
 * `any` (or none) matches that key from any source; `k8s:app` only matches a `k8s`-sourced `app`.
 * Endpoint labels are given as a map `source:key` → value.
 * @module
 */
import type { Selector, SelectorRequirement } from './types.ts';

/** Splits `source:key`; no source gives source ''. A leading `$` means `reserved:` (Cilium). */
export function splitLabelKey(key: string): { source: string; key: string } {
  if (key.startsWith('$')) return { source: 'reserved', key: key.slice(1) };
  const colon = key.indexOf(':');
  if (colon === -1) return { source: '', key };
  return { source: key.slice(0, colon), key: key.slice(colon + 1) };
}

/** Canonical selector key: `app` → `any:app`, `$host` → `reserved:host`, `k8s:app` unchanged. */
export function canonicalSelectorKey(key: string): string {
  const parts = splitLabelKey(key);
  return `${parts.source === '' ? 'any' : parts.source}:${parts.key}`;
}

/** The values the endpoint has for a selector key (several when `any` matches several sources). */
function lookup(labels: Readonly<Record<string, string>>, selectorKey: string): string[] {
  const wanted = splitLabelKey(selectorKey);
  if (wanted.source !== '' && wanted.source !== 'any') {
    const value = labels[`${wanted.source}:${wanted.key}`];
    return value === undefined ? [] : [value];
  }
  const values: string[] = [];
  for (const [labelKey, value] of Object.entries(labels)) {
    if (splitLabelKey(labelKey).key === wanted.key) values.push(value);
  }
  return values;
}

function requirementMatches(req: SelectorRequirement, labels: Readonly<Record<string, string>>): boolean {
  const values = lookup(labels, req.key);
  switch (req.operator) {
    case 'In':
      return values.some((v) => req.values.includes(v));
    case 'NotIn':
      return !values.some((v) => req.values.includes(v));
    case 'Exists':
      return values.length > 0;
    case 'DoesNotExist':
      return values.length === 0;
  }
}

/**
 * Whether an endpoint with `labels` is selected. All matchLabels and matchExpressions must hold
 * (k8s semantics: NotIn and DoesNotExist hold when the key is absent). An empty selector selects
 * everything.
 *
 * @example
 * selectorMatches({ matchLabels: { 'any:org': 'empire' }, matchExpressions: [] }, { 'k8s:org': 'empire' }); // true
 */
export function selectorMatches(selector: Selector, labels: Readonly<Record<string, string>>): boolean {
  for (const [key, value] of Object.entries(selector.matchLabels)) {
    if (!lookup(labels, key).includes(value)) return false;
  }
  for (const req of selector.matchExpressions) {
    if (!requirementMatches(req, labels)) return false;
  }
  return true;
}

/** Whether the selector has a requirement (label or expression) on exactly `key` (canonical). */
export function selectorHasKey(selector: Selector, key: string): boolean {
  return Object.hasOwn(selector.matchLabels, key) || selector.matchExpressions.some((r) => r.key === key);
}

/** Whether any requirement key starts with `prefix` (canonical keys). */
export function selectorHasKeyPrefix(selector: Selector, prefix: string): boolean {
  return Object.keys(selector.matchLabels).some((k) => k.startsWith(prefix)) || selector.matchExpressions.some((r) => r.key.startsWith(prefix));
}
