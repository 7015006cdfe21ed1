/**
 * Shared plumbing of the policy parsers: an issue collector that knows the file, document and
 * policy being read, and small typed readers over untrusted YAML values that report instead of
 * throwing, so one pass finds every problem.
 * @module
 */
import type { PolicyIssue } from './errors.ts';

export class Ctx {
  readonly file: string;
  readonly issues: PolicyIssue[] = [];
  /** What was accepted but changed or ignored on the way (e.g. a clusterwide policy's namespace). */
  readonly warnings: PolicyIssue[] = [];
  document = 0;
  policy: string | undefined;

  constructor(file: string) {
    this.file = file;
  }

  add(path: string, reason: string): void {
    this.issues.push(this.#issue(path, reason));
  }

  warn(path: string, reason: string): void {
    this.warnings.push(this.#issue(path, reason));
  }

  #issue(path: string, reason: string): PolicyIssue {
    const issue: PolicyIssue = { file: this.file, document: this.document, path, reason };
    if (this.policy !== undefined) issue.policy = this.policy;
    return issue;
  }
}

export function join(path: string, key: string): string {
  return path === '' ? key : `${path}.${key}`;
}

export function at(path: string, index: number): string {
  return `${path}[${index}]`;
}

export type Obj = Record<string, unknown>;

export function isObj(value: unknown): value is Obj {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Date);
}

export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'a list';
  if (value instanceof Date) return `a timestamp`;
  if (typeof value === 'object') return 'a mapping';
  if (typeof value === 'string') return `"${value}"`;
  return `${typeof value} ${String(value)}`;
}

function editDistance(a: string, b: string): number {
  const prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let diag = prev[0];
    prev[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = prev[j];
      prev[j] = Math.min(prev[j] + 1, prev[j - 1] + 1, diag + (a[i - 1] === b[j - 1] ? 0 : 1));
      diag = tmp;
    }
  }
  return prev[b.length];
}

/**
 * Reports every key of `obj` that is neither in `known` nor in `unsupported` (a known upstream
 * field this project does not implement yet, or a common mistake: key → reason).
 */
export function checkFields(ctx: Ctx, path: string, obj: Obj, known: readonly string[], unsupported: Readonly<Record<string, string>> = {}): void {
  for (const key of Object.keys(obj)) {
    if (known.includes(key)) continue;
    if (Object.hasOwn(unsupported, key)) {
      ctx.add(join(path, key), unsupported[key]);
      continue;
    }
    ctx.add(join(path, key), unknownField(key, [...known, ...Object.keys(unsupported)]));
  }
}

/** `unknown field "x"`, with the known field it most likely meant. */
export function unknownField(key: string, known: readonly string[]): string {
  const sameButCase = known.find((k) => k !== key && k.toLowerCase() === key.toLowerCase());
  if (sameButCase !== undefined) return `unknown field "${key}": field names are case-sensitive; write "${sameButCase}"`;
  const close = known.find((k) => editDistance(k, key) <= 2);
  return close === undefined ? `unknown field "${key}"` : `unknown field "${key}" (did you mean "${close}"?)`;
}

/** The key of `obj` that differs from `field` only by case, if any (`apiversion` for `apiVersion`). */
export function caseVariant(obj: Obj, field: string): string | undefined {
  return Object.keys(obj).find((k) => k !== field && k.toLowerCase() === field.toLowerCase());
}

/** The value as an object; null/undefined → undefined silently; anything else reported. */
export function readObj(ctx: Ctx, path: string, value: unknown): Obj | undefined {
  if (value === undefined || value === null) return undefined;
  if (isObj(value)) return value;
  ctx.add(path, `must be a mapping, got ${describe(value)}`);
  return undefined;
}

/** The value as a list; null/undefined → undefined silently; anything else reported. */
export function readList(ctx: Ctx, path: string, value: unknown): unknown[] | undefined {
  if (value === undefined || value === null) return undefined;
  if (Array.isArray(value)) return value;
  ctx.add(path, `must be a list, got ${describe(value)}`);
  return undefined;
}

export function readString(ctx: Ctx, path: string, value: unknown): string | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value === 'string') return value;
  ctx.add(path, `must be a string, got ${describe(value)}`);
  return undefined;
}

export function readBool(ctx: Ctx, path: string, value: unknown): boolean | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value === 'boolean') return value;
  ctx.add(path, `must be true or false, got ${describe(value)}`);
  return undefined;
}

/** Kubernetes DNS subdomain (object names). */
export const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
/** Kubernetes DNS label (namespace names). */
export const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
/** Kubernetes label value: at most 63 characters, alphanumeric at both ends. */
export const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;
/** Kubernetes qualified name (the part of a label key after an optional `prefix/`). */
export const QUALIFIED_NAME = /^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$/;

/** Why `key` is not a valid Kubernetes label key, or undefined if it is. */
export function k8sLabelKeyProblem(key: string): string | undefined {
  const slash = key.lastIndexOf('/');
  const prefix = slash === -1 ? undefined : key.slice(0, slash);
  const name = slash === -1 ? key : key.slice(slash + 1);
  if (prefix !== undefined && (prefix.length > 253 || !DNS_SUBDOMAIN.test(prefix))) return `label key "${key}": prefix must be a DNS subdomain`;
  if (name.length > 63 || !QUALIFIED_NAME.test(name)) {
    return `label key "${key}": name must be at most 63 characters of [A-Za-z0-9-_.], alphanumeric at both ends`;
  }
  return undefined;
}

/**
 * Why `name` is no port name as Kubernetes validates one (IANA_SVC_NAME, RFC 6335: a container
 * port's name, a named targetPort, a policy's named port), or undefined when it is one: 1–15
 * lower-case letters, digits and '-', at least one letter (so it never reads as a number), no '-'
 * at either end and no "--".
 */
export function portNameProblem(name: string): string | undefined {
  if (name.length === 0) return 'must not be empty';
  if (name.length > 15) return 'must be at most 15 characters';
  if (!/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(name)) return 'must be lower case letters, digits and -';
  if (!/[a-z]/.test(name) || name.includes('--')) return 'must contain a letter and no "--"';
  return undefined;
}
