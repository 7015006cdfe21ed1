/**
 * Policy files: multi-document YAML (`---`), each document a CiliumNetworkPolicy,
 * CiliumClusterwideNetworkPolicy, NetworkPolicy, or a `List` of them (`kubectl get -o yaml`).
 * Every document is validated; a file with any problem is rejected whole with a
 * `PolicyValidationError` listing all of them.
 *
 * Real manifests hold other kinds too (a Deployment and its Service beside its policy): those are
 * skipped and listed (`parsePolicyFile().skipped`), never refused, while a kind that looks like a
 * misspelt or unsupported network policy is refused, so a policy is never silently left out.
 *
 * @example
 * const rules = await loadPolicyFile('policies.yaml');
 * // or: parsePolicyYaml(text, { file: 'policies.yaml' })
 * @module
 */
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { isDeepStrictEqual } from 'node:util';
import { parseAllDocuments } from 'yaml';
import { readCiliumPolicy } from './cilium.ts';
import { at, caseVariant, Ctx, describe, isObj, join, readObj, type Obj } from './context.ts';
import { PolicyValidationError, type PolicyIssue } from './errors.ts';
import { readNetworkPolicy } from './k8s.ts';
import { readMetadata } from './parse-common.ts';
import { ruleKey, type PolicyRule } from './types.ts';

export interface ParseOptions {
  /** Names the source in errors and in `PolicyRule.sourceFile`. */
  file?: string;
}

/** A document (or List item) of another kind than a policy, left out of an import. */
export interface SkippedDocument {
  /** 1-based position of the YAML document in the file. */
  document: number;
  /** Field path inside the document: '' for the document, `items[i]` for a List item. */
  path: string;
  apiVersion: string;
  kind: string;
  /** `namespace/name` or `name`, when the object has one. */
  name?: string;
}

/** What a policy file yields: its rules, what was accepted with a change, and what was skipped. */
export interface ParsedPolicyFile {
  rules: PolicyRule[];
  warnings: PolicyIssue[];
  skipped: SkippedDocument[];
}

/** `Deployment default/web (apps/v1), document 2` */
export function formatSkipped(skipped: SkippedDocument): string {
  const where = skipped.path === '' ? `document ${skipped.document}` : `document ${skipped.document} ${skipped.path}`;
  return `${skipped.kind}${skipped.name === undefined ? '' : ` ${skipped.name}`} (${skipped.apiVersion}), ${where}`;
}

const API_VERSIONS: Record<string, string> = {
  CiliumNetworkPolicy: 'cilium.io/v2',
  CiliumClusterwideNetworkPolicy: 'cilium.io/v2',
  NetworkPolicy: 'networking.k8s.io/v1',
};
/** Versions old manifests still carry, with what to do: the fields did not change. */
const RETIRED_API_VERSIONS: Record<string, string> = {
  'NetworkPolicy extensions/v1beta1': 'Kubernetes 1.16 removed it; the fields are the same, change only apiVersion',
};
const LIST_KINDS: Record<string, string> = {
  List: 'v1',
  CiliumNetworkPolicyList: 'cilium.io/v2',
  CiliumClusterwideNetworkPolicyList: 'cilium.io/v2',
  NetworkPolicyList: 'networking.k8s.io/v1',
};

/** `Kind ns/name` for messages, from whatever the document has (before validation). */
function policyLabel(obj: Obj): string | undefined {
  const kind = typeof obj.kind === 'string' ? obj.kind : undefined;
  const meta = isObj(obj.metadata) ? obj.metadata : {};
  const name = typeof meta.name === 'string' && meta.name !== '' ? meta.name : undefined;
  if (kind === undefined) return undefined;
  if (name === undefined) return kind;
  if (kind === 'CiliumClusterwideNetworkPolicy') return `${kind} ${name}`;
  const ns = typeof meta.namespace === 'string' && meta.namespace !== '' ? meta.namespace : 'default';
  return `${kind} ${ns}/${name}`;
}

function readObject(ctx: Ctx, skipped: SkippedDocument[], path: string, value: unknown, inList: string | undefined): PolicyRule[] {
  if (!isObj(value)) {
    ctx.add(path, `must be a policy object (a mapping with apiVersion and kind), got ${describe(value)}`);
    return [];
  }
  const outerPolicy = ctx.policy;
  ctx.policy = policyLabel(value);
  try {
    const kindPath = join(path, 'kind');
    const versionPath = join(path, 'apiVersion');
    const kind = value.kind;
    const apiVersion = value.apiVersion;
    if (typeof kind !== 'string' || kind === '') {
      ctx.add(kindPath, kind === undefined || kind === null ? missing(value, 'kind') : `must be a string, got ${describe(kind)}`);
      return [];
    }
    if (typeof apiVersion !== 'string' || apiVersion === '') {
      ctx.add(versionPath, apiVersion === undefined || apiVersion === null ? missing(value, 'apiVersion') : `must be a string, got ${describe(apiVersion)}`);
      return [];
    }
    if (Object.hasOwn(LIST_KINDS, kind)) {
      if (inList !== undefined) {
        ctx.add(kindPath, `a ${kind} cannot be nested in a ${inList}`);
        return [];
      }
      if (apiVersion !== LIST_KINDS[kind]) {
        ctx.add(versionPath, `must be ${LIST_KINDS[kind]} for kind ${kind}, got "${apiVersion}"`);
        return [];
      }
      return readList(ctx, skipped, path, value, kind);
    }
    if (!Object.hasOwn(API_VERSIONS, kind)) {
      const policyLike = policyLikeKind(kind);
      if (policyLike !== undefined) {
        ctx.add(kindPath, `unsupported kind "${kind}"${policyLike} (expected CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, NetworkPolicy or List)`);
        return [];
      }
      const meta = isObj(value.metadata) ? value.metadata : {};
      const name = typeof meta.name === 'string' && meta.name !== '' ? (typeof meta.namespace === 'string' && meta.namespace !== '' ? `${meta.namespace}/${meta.name}` : meta.name) : undefined;
      skipped.push({ document: ctx.document, path, apiVersion, kind, ...(name === undefined ? {} : { name }) });
      return [];
    }
    if (apiVersion !== API_VERSIONS[kind]) {
      const retired = RETIRED_API_VERSIONS[`${kind} ${apiVersion}`];
      ctx.add(versionPath, `must be ${API_VERSIONS[kind]} for kind ${kind}, got "${apiVersion}"${retired === undefined ? '' : ` (${retired})`}`);
      return [];
    }
    if (inList !== undefined && inList !== 'List' && inList !== `${kind}List`) {
      ctx.add(kindPath, `a ${inList} cannot hold a ${kind}`);
      return [];
    }
    const namespaced = kind !== 'CiliumClusterwideNetworkPolicy';
    const meta = readMetadata(ctx, join(path, 'metadata'), value.metadata, namespaced, kind);
    // Bad metadata still gets the spec checked, so one pass reports everything.
    const used = meta ?? { name: 'invalid', ...(namespaced ? { namespace: 'default' } : {}) };
    const rules =
      kind === 'NetworkPolicy'
        ? readNetworkPolicy(ctx, path, value, used)
        : readCiliumPolicy(ctx, path, value, kind as 'CiliumNetworkPolicy' | 'CiliumClusterwideNetworkPolicy', used);
    return meta === undefined ? [] : rules;
  } finally {
    ctx.policy = outerPolicy;
  }
}

function readList(ctx: Ctx, skipped: SkippedDocument[], path: string, list: Obj, kind: string): PolicyRule[] {
  for (const key of Object.keys(list)) {
    if (!['apiVersion', 'kind', 'metadata', 'items'].includes(key)) ctx.add(join(path, key), `unknown field "${key}"`);
  }
  readObj(ctx, join(path, 'metadata'), list.metadata);
  const items = list.items;
  if (items === undefined || items === null) return [];
  if (!Array.isArray(items)) {
    ctx.add(join(path, 'items'), `must be a list, got ${describe(items)}`);
    return [];
  }
  const rules: PolicyRule[] = [];
  items.forEach((item, i) => rules.push(...readObject(ctx, skipped, at(join(path, 'items'), i), item, kind)));
  return rules;
}

/**
 * Why a kind that is not supported is refused rather than skipped: it is a supported kind written
 * wrong, or another network policy, which a user would expect enforced. '' or a hint when so.
 */
function policyLikeKind(kind: string): string | undefined {
  const lower = kind.toLowerCase();
  const known = [...Object.keys(API_VERSIONS), ...Object.keys(LIST_KINDS)];
  const sameButCase = known.find((k) => k.toLowerCase() === lower);
  if (sameButCase !== undefined) return `: kinds are case-sensitive; write "${sameButCase}"`;
  const plural = known.find((k) => lower === `${k.toLowerCase()}s` || lower === `${k.toLowerCase().slice(0, -1)}ies`);
  if (plural !== undefined) return ` (did you mean "${plural}"?)`;
  return lower.endsWith('networkpolicy') || lower.endsWith('networkpolicylist') ? '' : undefined;
}

/** `is required`, or where the field is when it was written with other case (`apiversion`). */
function missing(obj: Obj, field: string): string {
  const variant = caseVariant(obj, field);
  return variant === undefined ? 'is required' : `is required (found "${variant}": field names are case-sensitive; write "${field}")`;
}

/** Validates parsed documents (index i = document i+1) and returns their rules, or throws. */
function collect(ctx: Ctx, documents: Array<{ value: unknown; skip?: boolean }>, options: ParseOptions): ParsedPolicyFile {
  const rules: PolicyRule[] = [];
  const skipped: SkippedDocument[] = [];
  const seen = new Map<string, { document: number; rule: PolicyRule }>();
  documents.forEach((doc, i) => {
    ctx.document = i + 1;
    ctx.policy = undefined;
    if (doc.skip) return;
    const before = ctx.issues.length;
    const found = readObject(ctx, skipped, '', doc.value, undefined);
    if (ctx.issues.length !== before) return;
    for (const rule of found) {
      const key = ruleKey(rule);
      const first = seen.get(key);
      if (first !== undefined) {
        ctx.policy = `${rule.kind} ${rule.namespace === undefined ? '' : `${rule.namespace}/`}${rule.name}`;
        // A manifest that repeats a policy word for word (generated files do) means one object,
        // as `kubectl apply` leaves one; a repeat that differs is ambiguous.
        if (isDeepStrictEqual(first.rule, rule)) ctx.warn('metadata.name', `repeats document ${first.document} exactly: kept once`);
        else ctx.add('metadata.name', `duplicate policy: document ${first.document} defines it too, differently`);
        continue;
      }
      seen.set(key, { document: i + 1, rule });
      rules.push(rule);
    }
  });
  if (options.file !== undefined) for (const rule of rules) rule.sourceFile = options.file;
  if (rules.length === 0 && skipped.length > 0 && ctx.issues.length === 0) {
    ctx.document = skipped[0].document;
    ctx.policy = undefined;
    ctx.add('', `holds no policy (CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy or NetworkPolicy); skipped: ${skipped.map(formatSkipped).join('; ')}`);
  }
  if (ctx.issues.length > 0) throw new PolicyValidationError(ctx.issues);
  return { rules, warnings: ctx.warnings, skipped };
}

/** Aliases a document may expand: policies need few, and each one may copy a whole subtree. */
const MAX_ALIAS_COUNT = 100;

/**
 * Parses YAML text holding one or more policies. Throws `PolicyValidationError` (every problem
 * of every document) if anything is wrong; returns the rules otherwise. Empty documents are skipped.
 */
export function parsePolicyYaml(text: string, options: ParseOptions = {}): PolicyRule[] {
  return parsePolicyFile(text, options).rules;
}

/**
 * Parses YAML text holding policies and maybe other kinds: the rules, the warnings (accepted with
 * a change, e.g. a clusterwide policy's namespace dropped) and the documents of other kinds
 * skipped. Throws `PolicyValidationError` as parsePolicyYaml does.
 */
export function parsePolicyFile(text: string, options: ParseOptions = {}): ParsedPolicyFile {
  const ctx = new Ctx(options.file ?? '<input>');
  const docs = parseAllDocuments(text, { prettyErrors: true, uniqueKeys: true });
  const list = Array.isArray(docs) ? docs : [];
  const documents: Array<{ value: unknown; skip?: boolean }> = [];
  list.forEach((doc, i) => {
    if (doc.errors.length > 0) {
      ctx.document = i + 1;
      for (const error of doc.errors) {
        ctx.add('', `YAML syntax error: ${error.message.split('\n')[0].replace(/:\s*$/, '')}`);
      }
      documents.push({ value: undefined, skip: true });
      return;
    }
    let value: unknown;
    try {
      value = doc.toJS({ maxAliasCount: MAX_ALIAS_COUNT }) as unknown;
    } catch (error) {
      // An alias bomb (aliases of aliases, expanding exponentially) is refused while it expands.
      ctx.document = i + 1;
      ctx.add('', `YAML aliases expand past the limit of ${MAX_ALIAS_COUNT} (${(error as Error).message})`);
      documents.push({ value: undefined, skip: true });
      return;
    }
    documents.push(value === null || value === undefined ? { value, skip: true } : { value });
  });
  return collect(ctx, documents, options);
}

/**
 * Validates already-decoded policy objects (e.g. from JSON); each element counts as a document.
 */
export function parsePolicyObjects(objects: readonly unknown[], options: ParseOptions = {}): PolicyRule[] {
  const ctx = new Ctx(options.file ?? '<input>');
  return collect(
    ctx,
    objects.map((value) => ({ value })),
    options,
  ).rules;
}

/** Reads and parses a policy file; errors name the file as given. */
export async function loadPolicyFile(path: string): Promise<PolicyRule[]> {
  return parsePolicyYaml(await readFile(path, 'utf8'), { file: path });
}

export function loadPolicyFileSync(path: string): PolicyRule[] {
  return parsePolicyYaml(readFileSync(path, 'utf8'), { file: path });
}
