/**
 * Policy files: multi-document YAML (`---`), each document a CiliumNetworkPolicy,
 * CiliumClusterwideNetworkPolicy, NetworkPolicy, or a `List` of them (`kubectl get -o yaml`).
 * Every document is validated; a file with any problem is rejected whole with a
 * `PolicyValidationError` listing all of them.
 *
 * @example
 * const rules = await loadPolicyFile('policies.yaml');
 * // or: parsePolicyYaml(text, { file: 'policies.yaml' })
 * @module
 */
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { parseAllDocuments } from 'yaml';
import { readCiliumPolicy } from './cilium.ts';
import { at, Ctx, describe, isObj, join, readObj, type Obj } from './context.ts';
import { PolicyValidationError } from './errors.ts';
import { readNetworkPolicy } from './k8s.ts';
import { readMetadata } from './parse-common.ts';
import { ruleKey, type PolicyRule } from './types.ts';

export interface ParseOptions {
  /** Names the source in errors and in `PolicyRule.sourceFile`. */
  file?: string;
}

const API_VERSIONS: Record<string, string> = {
  CiliumNetworkPolicy: 'cilium.io/v2',
  CiliumClusterwideNetworkPolicy: 'cilium.io/v2',
  NetworkPolicy: 'networking.k8s.io/v1',
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

function readObject(ctx: Ctx, path: string, value: unknown, inList: string | undefined): PolicyRule[] {
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
      ctx.add(kindPath, kind === undefined || kind === null ? 'is required' : `must be a string, got ${describe(kind)}`);
      return [];
    }
    if (typeof apiVersion !== 'string' || apiVersion === '') {
      ctx.add(versionPath, apiVersion === undefined || apiVersion === null ? 'is required' : `must be a string, got ${describe(apiVersion)}`);
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
      return readList(ctx, path, value, kind);
    }
    if (!Object.hasOwn(API_VERSIONS, kind)) {
      ctx.add(kindPath, `unsupported kind "${kind}" (expected CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, NetworkPolicy or List)`);
      return [];
    }
    if (apiVersion !== API_VERSIONS[kind]) {
      ctx.add(versionPath, `must be ${API_VERSIONS[kind]} for kind ${kind}, got "${apiVersion}"`);
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

function readList(ctx: Ctx, path: string, list: Obj, kind: string): PolicyRule[] {
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
  items.forEach((item, i) => rules.push(...readObject(ctx, at(join(path, 'items'), i), item, kind)));
  return rules;
}

/** Validates parsed documents (index i = document i+1) and returns their rules, or throws. */
function collect(ctx: Ctx, documents: Array<{ value: unknown; skip?: boolean }>, options: ParseOptions): PolicyRule[] {
  const rules: PolicyRule[] = [];
  const seen = new Map<string, number>();
  documents.forEach((doc, i) => {
    ctx.document = i + 1;
    ctx.policy = undefined;
    if (doc.skip) return;
    const before = ctx.issues.length;
    const found = readObject(ctx, '', doc.value, undefined);
    if (ctx.issues.length !== before) return;
    for (const rule of found) {
      const key = ruleKey(rule);
      const first = seen.get(key);
      if (first !== undefined) {
        ctx.policy = `${rule.kind} ${rule.namespace === undefined ? '' : `${rule.namespace}/`}${rule.name}`;
        ctx.add('metadata.name', `duplicate policy: document ${first} defines it too`);
        continue;
      }
      seen.set(key, i + 1);
      if (options.file !== undefined) rule.sourceFile = options.file;
      rules.push(rule);
    }
  });
  if (ctx.issues.length > 0) throw new PolicyValidationError(ctx.issues);
  return rules;
}

/** Aliases a document may expand: policies need few, and each one may copy a whole subtree. */
const MAX_ALIAS_COUNT = 100;

/**
 * Parses YAML text holding one or more policies. Throws `PolicyValidationError` (every problem
 * of every document) if anything is wrong; returns the rules otherwise. Empty documents are skipped.
 */
export function parsePolicyYaml(text: string, options: ParseOptions = {}): PolicyRule[] {
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
  );
}

/** Reads and parses a policy file; errors name the file as given. */
export async function loadPolicyFile(path: string): Promise<PolicyRule[]> {
  return parsePolicyYaml(await readFile(path, 'utf8'), { file: path });
}

export function loadPolicyFileSync(path: string): PolicyRule[] {
  return parsePolicyYaml(readFileSync(path, 'utf8'), { file: path });
}
