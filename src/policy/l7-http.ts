/**
 * HTTP rules of a port (`toPorts[].rules.http`, Cilium's `PortRuleHTTP`): the model, its parser
 * and the one matcher the node proxy judges requests with.
 *
 * Matching is Cilium's (Envoy's `safe_regex`, RE2): `method`, `path` and `host` are regular
 * expressions matched against the whole value (anchored: `/v1/` does not match `/v1/x`);
 * `headers` entries are `Name` (present) or `Name: value` (present with exactly that value);
 * `headerMatches` `{name, value}` is the same as `Name: value` (no value: present). Every field of
 * one rule must match; the rules of a port are ORed. RE2 has no backreferences or lookaround, so
 * those are refused as Cilium (Envoy) refuses them, and the rest compiles as a JavaScript RegExp.
 * @module
 */
import { at, checkFields, describe, join, readList, readObj, readString, type Ctx } from './context.ts';

/** One `rules.http` entry as written (the policy model: plain JSON). */
export interface HttpRule {
  method?: string;
  path?: string;
  host?: string;
  /** `Name` or `Name: value`, as written. */
  headers?: string[];
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
  const matches = readList(ctx, join(path, 'headerMatches'), obj.headerMatches);
  matches?.forEach((m, i) => {
    const mp = at(join(path, 'headerMatches'), i);
    const hm = readObj(ctx, mp, m);
    if (hm === undefined) return;
    checkFields(ctx, mp, hm, ['name', 'value'], {
      mismatch: 'not supported yet (header rewriting on mismatch); without it a mismatch denies the request',
      secret: 'not supported yet (Kubernetes secrets)',
    });
    const name = readString(ctx, join(mp, 'name'), hm.name);
    if (name === undefined || !TOKEN.test(name)) {
      if (name !== undefined || hm.name === undefined) ctx.add(join(mp, 'name'), `must be a header name, got ${describe(hm.name)}`);
      return;
    }
    const v = readString(ctx, join(mp, 'value'), hm.value);
    headers.push(v === undefined || v === '' ? name : `${name}: ${v}`);
  });
  if (headers.length > 0) rule.headers = headers;
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
  };
}

/**
 * Whether a request matches a rule: every field given matches (an empty rule matches every
 * request).
 *
 * @example
 * httpRuleMatches(compileHttpRule({ method: 'POST', path: '/v1/request-landing' }), { method: 'POST', path: '/v1/request-landing', host: 'x', headers: {} }); // true
 */
export function httpRuleMatches(rule: CompiledHttpRule, req: HttpRequestView): boolean {
  if (rule.method && !rule.method.test(req.method)) return false;
  if (rule.path && !rule.path.test(req.path)) return false;
  if (rule.host && !rule.host.test(req.host)) return false;
  for (const h of rule.headers) {
    const got = req.headers[h.name];
    if (got === undefined) return false;
    if (h.value !== undefined && !(Array.isArray(got) ? got.includes(h.value) : got === h.value)) return false;
  }
  return true;
}
