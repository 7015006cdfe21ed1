/**
 * Readers shared by the CiliumNetworkPolicy and NetworkPolicy parsers: label selectors, CIDR
 * rules, policy metadata.
 * @module
 */
import { cidrContains, formatCidr, parseCidr, type Cidr } from './cidr.ts';
import { at, checkFields, Ctx, describe, DNS_LABEL, DNS_SUBDOMAIN, join, LABEL_VALUE, readList, readObj, readString, type Obj } from './context.ts';
import type { CidrRule, Selector, SelectorOperator, SelectorRequirement } from './types.ts';

const OPERATORS: readonly SelectorOperator[] = ['In', 'NotIn', 'Exists', 'DoesNotExist'];

/**
 * Why a selector's unknown field with a scalar value is refused: it is a label written beside
 * matchLabels, often under an empty `matchLabels:` by a lost indent. Kubernetes drops the field,
 * which would leave {}: a selector of everything.
 */
function strayLabels(obj: Obj): Record<string, string> {
  const stray: Record<string, string> = {};
  for (const [key, value] of Object.entries(obj)) {
    if (key === 'matchLabels' || key === 'matchExpressions' || (typeof value !== 'string' && typeof value !== 'number' && typeof value !== 'boolean')) continue;
    stray[key] =
      Object.hasOwn(obj, 'matchLabels') && (obj.matchLabels === null || obj.matchLabels === undefined)
        ? `unknown field "${key}": matchLabels is empty; indent the label "${key}" under it (dropped, it would leave {}, which selects everything)`
        : `unknown field "${key}": a label goes under matchLabels`;
  }
  return stray;
}

/**
 * Reads a `{matchLabels, matchExpressions}` selector. `mapKey` turns a written key into the
 * model's key, or returns a reason to reject it.
 */
export function readSelector(ctx: Ctx, path: string, value: unknown, mapKey: (key: string) => string | { error: string }): Selector | undefined {
  if (value === undefined || value === null) {
    ctx.add(path, 'must be a selector ({} selects everything), got null');
    return undefined;
  }
  const obj = readObj(ctx, path, value);
  if (obj === undefined) return undefined;
  checkFields(ctx, path, obj, ['matchLabels', 'matchExpressions'], strayLabels(obj));
  const selector: Selector = { matchLabels: {}, matchExpressions: [] };
  let ok = true;
  const key = (p: string, raw: string): string | undefined => {
    const mapped = mapKey(raw);
    if (typeof mapped === 'string') return mapped;
    ctx.add(p, mapped.error);
    ok = false;
    return undefined;
  };

  const labelsPath = join(path, 'matchLabels');
  const labels = readObj(ctx, labelsPath, obj.matchLabels);
  if (obj.matchLabels !== undefined && obj.matchLabels !== null && labels === undefined) ok = false;
  for (const [raw, v] of Object.entries(labels ?? {})) {
    const p = join(labelsPath, raw);
    const k = key(p, raw);
    if (typeof v !== 'string') {
      ctx.add(p, `label value must be a string, got ${describe(v)} (quote it)`);
      ok = false;
      continue;
    }
    if (v.length > 63 || !LABEL_VALUE.test(v)) {
      ctx.add(p, `label value "${v}" must be at most 63 characters of [A-Za-z0-9-_.], alphanumeric at both ends`);
      ok = false;
      continue;
    }
    if (k === undefined) continue;
    if (Object.hasOwn(selector.matchLabels, k) && selector.matchLabels[k] !== v) {
      ctx.add(p, `conflicts with another matchLabels entry for ${k}`);
      ok = false;
    }
    selector.matchLabels[k] = v;
  }

  const exprPath = join(path, 'matchExpressions');
  const exprs = readList(ctx, exprPath, obj.matchExpressions);
  if (obj.matchExpressions !== undefined && obj.matchExpressions !== null && exprs === undefined) ok = false;
  (exprs ?? []).forEach((item, i) => {
    const p = at(exprPath, i);
    const expr = readObj(ctx, p, item);
    if (expr === undefined) {
      if (item === null || item === undefined) ctx.add(p, 'empty list item');
      ok = false;
      return;
    }
    checkFields(ctx, p, expr, ['key', 'operator', 'values']);
    const rawKey = readString(ctx, join(p, 'key'), expr.key);
    if (rawKey === undefined && (expr.key === undefined || expr.key === null)) ctx.add(join(p, 'key'), 'is required');
    const op = readString(ctx, join(p, 'operator'), expr.operator);
    if (op === undefined && (expr.operator === undefined || expr.operator === null)) ctx.add(join(p, 'operator'), 'is required');
    if (op !== undefined && !OPERATORS.includes(op as SelectorOperator)) {
      // Cilium's CRD schema lists the operators as an enum: "in" is refused by the API server too.
      const sameButCase = OPERATORS.find((o) => o.toLowerCase() === op.toLowerCase());
      const hint = sameButCase === undefined ? '' : ` (operators are case-sensitive; write "${sameButCase}")`;
      ctx.add(join(p, 'operator'), `must be one of ${OPERATORS.join(', ')}, got "${op}"${hint}`);
      ok = false;
      return;
    }
    const valuesPath = join(p, 'values');
    const rawValues = readList(ctx, valuesPath, expr.values) ?? [];
    const values: string[] = [];
    rawValues.forEach((v, j) => {
      if (typeof v !== 'string') {
        ctx.add(at(valuesPath, j), `must be a string, got ${describe(v)} (quote it)`);
        ok = false;
      } else values.push(v);
    });
    if (rawKey === undefined || op === undefined) {
      ok = false;
      return;
    }
    if ((op === 'In' || op === 'NotIn') && rawValues.length === 0) {
      ctx.add(valuesPath, `must list at least one value for operator ${op}`);
      ok = false;
    }
    if ((op === 'Exists' || op === 'DoesNotExist') && rawValues.length > 0) {
      ctx.add(valuesPath, `must be empty for operator ${op}`);
      ok = false;
    }
    const k = key(join(p, 'key'), rawKey);
    if (k === undefined) return;
    const requirement: SelectorRequirement = { key: k, operator: op as SelectorOperator, values };
    selector.matchExpressions.push(requirement);
  });
  return ok ? selector : undefined;
}

/** Reads a CIDR string; returns the parsed prefix or reports. */
export function readCidr(ctx: Ctx, path: string, value: unknown): Cidr | undefined {
  if (typeof value !== 'string') {
    ctx.add(path, `must be a CIDR string such as 10.0.0.0/8, got ${describe(value)}`);
    return undefined;
  }
  const parsed = parseCidr(value);
  if ('error' in parsed) {
    ctx.add(path, parsed.error);
    return undefined;
  }
  return parsed;
}

/** A `{cidr, except}` rule (Cilium CIDRRule, k8s IPBlock); `except` must lie inside `cidr`. */
export function readCidrRule(ctx: Ctx, path: string, obj: Obj, cidrField: string, exceptField: string): CidrRule | undefined {
  const cidrPath = join(path, cidrField);
  if (obj[cidrField] === undefined || obj[cidrField] === null) {
    ctx.add(cidrPath, 'is required');
    return undefined;
  }
  const cidr = readCidr(ctx, cidrPath, obj[cidrField]);
  const exceptPath = join(path, exceptField);
  const list = readList(ctx, exceptPath, obj[exceptField]) ?? [];
  const except: string[] = [];
  let ok = cidr !== undefined;
  list.forEach((item, i) => {
    const p = at(exceptPath, i);
    const sub = readCidr(ctx, p, item);
    if (sub === undefined) {
      ok = false;
      return;
    }
    if (cidr !== undefined && !cidrContains(cidr, sub)) {
      ctx.add(p, `${formatCidr(sub)} is not inside ${formatCidr(cidr)}`);
      ok = false;
      return;
    }
    except.push(formatCidr(sub));
  });
  return ok && cidr !== undefined ? { cidr: formatCidr(cidr), except } : undefined;
}

export interface Metadata {
  name: string;
  namespace?: string;
  uid?: string;
}

const METADATA_FIELDS = [
  'name',
  'namespace',
  'labels',
  'annotations',
  'uid',
  'resourceVersion',
  'generation',
  'creationTimestamp',
  'deletionTimestamp',
  'deletionGracePeriodSeconds',
  'managedFields',
  'ownerReferences',
  'finalizers',
  'generateName',
  'selfLink',
];

/**
 * A `description` where the object has none (a policy's top level, its metadata), as published
 * examples write it: Kubernetes drops the field (kubectl's default --validate=strict refuses it)
 * and Cilium never sees it, so it is ignored aloud. `where` names the object; `instead` says where
 * a description belongs. The caller lists `description` as a known field.
 */
export function ignoreStrayDescription(ctx: Ctx, path: string, obj: Obj, where: string, instead: string): void {
  const value = obj.description;
  if (value === undefined || value === null) return;
  const p = join(path, 'description');
  if (typeof value !== 'string') {
    ctx.add(p, `unknown field "description" (${where} has none), holding ${describe(value)}`);
    return;
  }
  ctx.warn(p, `${where} has no description field: Kubernetes drops it (kubectl --validate=strict refuses it), so it is ignored; ${instead}`);
}

/**
 * Reads `metadata`. Namespaced kinds get `default` when the namespace is missing; cluster-scoped
 * kinds must not set one. Informational fields (labels, uid, managedFields, …) are accepted, and a
 * stray `description` is ignored with a warning.
 */
export function readMetadata(ctx: Ctx, path: string, value: unknown, namespaced: boolean, kind: string): Metadata | undefined {
  if (value === undefined || value === null) {
    ctx.add(join(path, 'name'), 'is required (metadata is missing)');
    return undefined;
  }
  const obj = readObj(ctx, path, value);
  if (obj === undefined) return undefined;
  checkFields(ctx, path, obj, [...METADATA_FIELDS, 'description']);
  ignoreStrayDescription(ctx, path, obj, 'metadata', kind === 'NetworkPolicy' ? 'keep it in an annotation' : 'write it as spec.description');
  let ok = true;
  const name = readString(ctx, join(path, 'name'), obj.name);
  if (name === undefined) {
    if (obj.name === undefined || obj.name === null) {
      ctx.add(join(path, 'name'), obj.generateName === undefined ? 'is required' : 'is required (generateName is not supported)');
    }
    ok = false;
  } else if (name.length > 253 || !DNS_SUBDOMAIN.test(name)) {
    ctx.add(join(path, 'name'), `"${name}" is not a valid name (lower-case letters, digits, '-' and '.', at most 253)`);
    ok = false;
  }
  let namespace: string | undefined;
  const rawNs = readString(ctx, join(path, 'namespace'), obj.namespace);
  if (obj.namespace !== undefined && obj.namespace !== null && rawNs === undefined) ok = false;
  if (namespaced) {
    namespace = rawNs === undefined || rawNs === '' ? 'default' : rawNs;
    if (namespace.length > 63 || !DNS_LABEL.test(namespace)) {
      ctx.add(join(path, 'namespace'), `"${namespace}" is not a valid namespace (lower-case letters, digits and '-', at most 63)`);
      ok = false;
    }
  } else if (rawNs !== undefined && rawNs !== '') {
    // Kubernetes accepts a cluster-scoped object with a namespace and drops it; so do we, aloud.
    ctx.warn(join(path, 'namespace'), `${kind} is cluster-scoped: namespace "${rawNs}" is ignored (as Kubernetes drops it); remove metadata.namespace`);
  }
  readObj(ctx, join(path, 'labels'), obj.labels);
  readObj(ctx, join(path, 'annotations'), obj.annotations);
  const uid = readString(ctx, join(path, 'uid'), obj.uid);
  if (!ok || name === undefined) return undefined;
  const meta: Metadata = { name };
  if (namespace !== undefined) meta.namespace = namespace;
  if (uid !== undefined && uid !== '') meta.uid = uid;
  return meta;
}
