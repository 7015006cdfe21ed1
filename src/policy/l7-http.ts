/**
 * HTTP rules of a port (`toPorts[].rules.http`, Cilium's `PortRuleHTTP`): the model, its parser
 * and the one matcher the node proxy judges requests with.
 *
 * Matching is Cilium's (Envoy's `safe_regex`, RE2): `method`, `path` and `host` are regular
 * expressions matched against the whole value (anchored: `/v1/` does not match `/v1/x`);
 * `headers` entries are `Name` (present) or `Name: value` (present with exactly that value);
 * `headerMatches` `{name, value}` is the same as `Name: value` (no value: present); with a
 * `mismatch` action (LOG, ADD, DELETE, REPLACE) a mismatch no longer fails the rule and the proxy
 * applies the action to the request it forwards. Every field of one rule must match; the rules of
 * a port are ORed. RE2 has no backreferences or lookaround, so
 * those are refused as Cilium (Envoy) refuses them, and the rest compiles as a JavaScript RegExp.
 * @module
 */
import { at, checkFields, describe, join, readList, readObj, readString, type Ctx } from './context.ts';

/** What the proxy does when a `headerMatches` entry with a `mismatch` action does not match (Cilium's MismatchAction). */
export type HeaderMismatchAction = 'LOG' | 'ADD' | 'DELETE' | 'REPLACE';
export const HEADER_MISMATCH_ACTIONS: readonly HeaderMismatchAction[] = ['LOG', 'ADD', 'DELETE', 'REPLACE'];

/**
 * A `headerMatches` entry with a mismatch action: a mismatch no longer fails the rule; the proxy
 * logs it (LOG), adds the value to the header (ADD), removes the header (DELETE), or sets the
 * header to the value (REPLACE) on the request it forwards.
 */
export interface HeaderMatchAction {
  /** As written. */
  name: string;
  value?: string;
  mismatch: HeaderMismatchAction;
}

/** One `rules.http` entry as written (the policy model: plain JSON). */
export interface HttpRule {
  method?: string;
  path?: string;
  host?: string;
  /** `Name` or `Name: value`, as written; `headerMatches` without a mismatch action too. */
  headers?: string[];
  /** `headerMatches` entries with a mismatch action. */
  headerMatches?: HeaderMatchAction[];
}

const MAX_HTTP_RULES = 100;
const MAX_REGEX_LENGTH = 1024;
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/** What Node's parser accepts as methods (RFC 9110 plus WebDAV and friends). */
const KNOWN_METHODS = new Set([
  'ACL', 'BIND', 'CHECKOUT', 'CONNECT', 'COPY', 'DELETE', 'GET', 'HEAD', 'LINK', 'LOCK', 'M-SEARCH', 'MERGE', 'MKACTIVITY',
  'MKCALENDAR', 'MKCOL', 'MOVE', 'NOTIFY', 'OPTIONS', 'PATCH', 'POST', 'PROPFIND', 'PROPPATCH', 'PURGE', 'PUT', 'QUERY',
  'REBIND', 'REPORT', 'SEARCH', 'SOURCE', 'SUBSCRIBE', 'TRACE', 'UNBIND', 'UNLINK', 'UNLOCK', 'UNSUBSCRIBE',
]);

/**
 * An RE2 pattern as an anchored JavaScript RegExp, or the reason it cannot be one. JavaScript
 * syntax that RE2 lacks (backreferences, lookaround) is refused: Cilium would refuse the policy,
 * and those are what makes a backtracking matcher slow on hostile input.
 */
export function compileRe2(pattern: string): RegExp | { error: string } {
  if (pattern.length > MAX_REGEX_LENGTH) return { error: `regular expression longer than ${MAX_REGEX_LENGTH} characters` };
  if (/\\[1-9]|\\k</.test(pattern)) return { error: `"${pattern}": backreferences are not RE2 syntax` };
  if (/\(\?<?[=!]/.test(pattern)) return { error: `"${pattern}": lookahead and lookbehind are not RE2 syntax` };
  try {
    return new RegExp(`^(?:${pattern})$`);
  } catch (err) {
    return { error: `"${pattern}" is not a valid regular expression: ${(err as Error).message.replace(/^Invalid regular expression: /, '')}` };
  }
}

function readRegexField(ctx: Ctx, path: string, value: unknown): string | undefined {
  const s = readString(ctx, path, value);
  if (s === undefined || s === '') return undefined;
  const re = compileRe2(s);
  if ('error' in re) {
    ctx.add(path, re.error);
    return undefined;
  }
  return s;
}

function readHeader(ctx: Ctx, path: string, value: unknown): string | undefined {
  const s = readString(ctx, path, value);
  if (s === undefined) return undefined;
  const colon = s.indexOf(':');
  const name = (colon < 0 ? s : s.slice(0, colon)).trim();
  if (!TOKEN.test(name)) {
    ctx.add(path, `"${s}": a header is "Name" or "Name: value" with a valid header name`);
    return undefined;
  }
  return s;
}

/** Reads one `rules.http` entry. */
function readHttpRule(ctx: Ctx, path: string, value: unknown): HttpRule | undefined {
  const obj = readObj(ctx, path, value);
  if (obj === undefined) {
    if (value === null || value === undefined) ctx.add(path, 'empty list item (write {} to allow every request)');
    return undefined;
  }
  const before = ctx.issues.length;
  checkFields(ctx, path, obj, ['method', 'path', 'host', 'headers', 'headerMatches']);
  const rule: HttpRule = {};
  const methodPath = join(path, 'method');
  const method = readRegexField(ctx, methodPath, obj.method);
  if (method !== undefined) {
    // A plain word must be a method a server could receive; a regex (GET|HEAD) is taken as written.
    if (/^[A-Za-z-]+$/.test(method) && !KNOWN_METHODS.has(method)) {
      ctx.add(methodPath, KNOWN_METHODS.has(method.toUpperCase()) ? `methods are upper case: ${method.toUpperCase()}, got "${method}"` : `unknown HTTP method "${method}"`);
    } else rule.method = method;
  }
  const p = readRegexField(ctx, join(path, 'path'), obj.path);
  if (p !== undefined) rule.path = p;
  const host = readRegexField(ctx, join(path, 'host'), obj.host);
  if (host !== undefined) rule.host = host;
  const headers: string[] = [];
  const list = readList(ctx, join(path, 'headers'), obj.headers);
  list?.forEach((h, i) => {
    const header = readHeader(ctx, at(join(path, 'headers'), i), h);
    if (header !== undefined) headers.push(header);
  });
  const actions: HeaderMatchAction[] = [];
  const matches = readList(ctx, join(path, 'headerMatches'), obj.headerMatches);
  matches?.forEach((m, i) => {
    const mp = at(join(path, 'headerMatches'), i);
    const hm = readObj(ctx, mp, m);
    if (hm === undefined) return;
    checkFields(ctx, mp, hm, ['name', 'value', 'mismatch'], { secret: 'not supported yet (Kubernetes secrets)' });
    const name = readString(ctx, join(mp, 'name'), hm.name);
    if (name === undefined || !TOKEN.test(name)) {
      if (name !== undefined || hm.name === undefined) ctx.add(join(mp, 'name'), `must be a header name, got ${describe(hm.name)}`);
      return;
    }
    const v = readString(ctx, join(mp, 'value'), hm.value);
    if (hm.mismatch === undefined || hm.mismatch === null || hm.mismatch === '') {
      headers.push(v === undefined || v === '' ? name : `${name}: ${v}`);
      return;
    }
    const mismatch = readString(ctx, join(mp, 'mismatch'), hm.mismatch);
    if (mismatch === undefined) return;
    if (!(HEADER_MISMATCH_ACTIONS as readonly string[]).includes(mismatch)) {
      ctx.add(join(mp, 'mismatch'), `must be one of ${HEADER_MISMATCH_ACTIONS.join(', ')} (or absent: a mismatch fails the rule), got "${mismatch}"`);
      return;
    }
    if ((mismatch === 'ADD' || mismatch === 'REPLACE') && (v === undefined || v === '')) {
      ctx.add(join(mp, 'value'), `mismatch ${mismatch} sets the header to its value: give one`);
      return;
    }
    if (v !== undefined && /[\r\n\0]/.test(v)) {
      ctx.add(join(mp, 'value'), 'a header value cannot hold CR, LF or NUL');
      return;
    }
    actions.push(v === undefined || v === '' ? { name, mismatch: mismatch as HeaderMismatchAction } : { name, value: v, mismatch: mismatch as HeaderMismatchAction });
  });
  if (headers.length > 0) rule.headers = headers;
  if (actions.length > 0) rule.headerMatches = actions;
  return ctx.issues.length === before ? rule : undefined;
}

/** Reads `toPorts[].rules.http` of an ingress allow rule; undefined when it is wrong (reported). */
export function readHttpRules(ctx: Ctx, path: string, value: unknown): HttpRule[] | undefined {
  const before = ctx.issues.length;
  const list = readList(ctx, path, value);
  if (list === undefined) return undefined;
  if (list.length > MAX_HTTP_RULES) ctx.add(path, `at most ${MAX_HTTP_RULES} rules per port entry, got ${list.length}`);
  const http = list.map((item, i) => readHttpRule(ctx, at(path, i), item)).filter((r): r is HttpRule => r !== undefined);
  return ctx.issues.length === before ? http : undefined;
}

/** The request fields a rule looks at; header names in lower case (as Node gives them). */
export interface HttpRequestView {
  method: string;
  /** The request target as sent (path and query). */
  path: string;
  host: string;
  headers: Readonly<Record<string, string | string[] | undefined>>;
}

/** A rule compiled for matching. */
export interface CompiledHttpRule {
  method?: RegExp;
  path?: RegExp;
  host?: RegExp;
  headers: { name: string; value?: string }[];
  /** Header names in lower case. */
  mismatches: { name: string; value?: string; action: HeaderMismatchAction }[];
}

/** A change the proxy makes to a request it forwards (a mismatch action's); name in lower case. */
export type HeaderEdit = { action: 'ADD' | 'REPLACE'; name: string; value: string } | { action: 'DELETE'; name: string };

/** A rule that matched a request: what its mismatch actions do to it. */
export interface HttpRuleMatch {
  edits: HeaderEdit[];
  /** Headers whose LOG mismatch was seen (lower case). */
  logged: string[];
}

function mustCompile(pattern: string): RegExp {
  const re = compileRe2(pattern);
  if ('error' in re) throw new SyntaxError(re.error);
  return re;
}

/** Compiles a (validated) rule. */
export function compileHttpRule(rule: HttpRule): CompiledHttpRule {
  return {
    method: rule.method === undefined ? undefined : mustCompile(rule.method),
    path: rule.path === undefined ? undefined : mustCompile(rule.path),
    host: rule.host === undefined ? undefined : mustCompile(rule.host),
    headers: (rule.headers ?? []).map((h) => {
      const colon = h.indexOf(':');
      return colon < 0 ? { name: h.trim().toLowerCase() } : { name: h.slice(0, colon).trim().toLowerCase(), value: h.slice(colon + 1).trim() };
    }),
    mismatches: (rule.headerMatches ?? []).map((m) => ({ name: m.name.toLowerCase(), value: m.value, action: m.mismatch })),
  };
}

function headerHas(got: string | string[] | undefined, value: string | undefined): boolean {
  if (got === undefined) return false;
  return value === undefined || (Array.isArray(got) ? got.includes(value) : got === value);
}

/**
 * Whether a request matches a rule: every field given matches (an empty rule matches every
 * request).
 *
 * @example
 * httpRuleMatches(compileHttpRule({ method: 'POST', path: '/v1/request-landing' }), { method: 'POST', path: '/v1/request-landing', host: 'x', headers: {} }); // true
 */
export function httpRuleMatches(rule: CompiledHttpRule, req: HttpRequestView): boolean {
  return httpRuleMatch(rule, req) !== undefined;
}

const NO_CHANGE: HttpRuleMatch = { edits: [], logged: [] };

/**
 * A rule's verdict on a request: undefined when it does not match; otherwise the edits its
 * `headerMatches` mismatch actions make (a mismatch with an action never fails the rule).
 */
export function httpRuleMatch(rule: CompiledHttpRule, req: HttpRequestView): HttpRuleMatch | undefined {
  if (rule.method && !rule.method.test(req.method)) return undefined;
  if (rule.path && !rule.path.test(req.path)) return undefined;
  if (rule.host && !rule.host.test(req.host)) return undefined;
  for (const h of rule.headers) if (!headerHas(req.headers[h.name], h.value)) return undefined;
  if (rule.mismatches.length === 0) return NO_CHANGE;
  const out: HttpRuleMatch = { edits: [], logged: [] };
  for (const m of rule.mismatches) {
    if (headerHas(req.headers[m.name], m.value)) continue;
    if (m.action === 'LOG') out.logged.push(m.name);
    else if (m.action === 'DELETE') out.edits.push({ action: 'DELETE', name: m.name });
    else out.edits.push({ action: m.action, name: m.name, value: m.value! });
  }
  return out;
}

/**
 * Raw headers (name, value, name, value, … as Node gives them) after `edits`: DELETE removes every
 * field of the name, REPLACE removes them and adds the value, ADD adds the value as one more field
 * (a multi-valued header).
 */
export function applyHeaderEdits(raw: readonly string[], edits: readonly HeaderEdit[]): string[] {
  if (edits.length === 0) return [...raw];
  const removed = new Set(edits.filter((e) => e.action !== 'ADD').map((e) => e.name));
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) if (!removed.has(raw[i].toLowerCase())) out.push(raw[i], raw[i + 1]);
  for (const e of edits) if (e.action !== 'DELETE') out.push(e.name, e.value);
  return out;
}
