/**
 * TracingPolicies that refuse socket calls: kprobes on `sys_connect`, `sys_bind` and `sys_socket`
 * whose selectors say `Override` (Tetragon's way of failing a call with `argError`), compiled for
 * the cgroup socket hooks of bpf/bpf_sock_enforce.c, since this kernel has no kprobe override.
 * A selector is what a Tetragon user writes, limited to what the hook knows at the call:
 *
 * - sys_connect (connect4/6, and sendmsg4/6 for a datagram sent to an address): `args` index 1 of
 *   type `sockaddr`; matchArgs `DAddr`/`NotDAddr` (IPv4 and IPv6 addresses and CIDRs; an IPv4
 *   rule also meets a dual-stack socket's `::ffff:a.b.c.d`), `DIdentity`/`NotDIdentity` (label
 *   selectors, entities, reserved identities) and `DService`/`NotDService` (`namespace/name`) in
 *   the full agent (socket-destinations.ts), `DPort`/`NotDPort`, `Family`.
 * - sys_bind (bind4/6): the sockaddr is the local address: `SAddr`/`NotSAddr`, `SPort`/`NotSPort`,
 *   `Family`.
 * - sys_socket (sock_create): `args` 0, 1, 2 (domain, type, protocol) as ints; `Equal`,
 *   `NotEqual`, `Mask`, `GT`, `LT`. The type is the socket's, without SOCK_NONBLOCK/SOCK_CLOEXEC
 *   (a flag cannot slip a socket past a rule). The hook runs for IPv4 and IPv6 sockets only, so
 *   the domain must be AF_INET or AF_INET6 (a rule on AF_PACKET would never fire: refused).
 * - matchBinaries (In, NotIn, Prefix, NotPrefix, Postfix, NotPostfix) on the binary the process
 *   runs (its exe, walked in the kernel at the call up to the mount namespace's root, so a chroot
 *   cannot rename it), matchPIDs (In, NotIn; followForks, isNamespacePID), matchNamespaces
 *   `Net` (In, NotIn: network namespace inode numbers, or `host_ns`) to scope a rule to a pod.
 * - matchActions: `Override` with `argError` (a negative errno: -1 EPERM, -13 EACCES, …),
 *   `Post`, `NoPost`. Override refuses the call and posts a `process_kprobe` event with action
 *   `KPROBE_ACTION_OVERRIDE` naming the process and its binary.
 *
 * Anything else in such a policy is refused by field; nothing is half-loaded.
 * @module
 */
import { parse } from 'yaml';
import { array, pad, struct, u16, u32, u64, u8, i32 } from '../ebpf/index.ts';
import { Prefix } from '../net/index.ts';
import { RuntimeError } from './errors.ts';
import { parseIdentityValue, parseServiceValue, seAddress, type IdentityValue } from './socket-destinations.ts';
import { DNS_SUBDOMAIN, MISSING_HOOK_REASON, Op, STRING_KEY_BYTES, isMap, parseInteger, readMatchPids, readPolicyScope, stringValues, syscallName, unknownFields, type CompiledStrings, type Json, type PolicyProblem, type PolicyScope, type TracingPolicyHeader, type CompileOptions } from './tracing-policy.ts';
import { hooksInMode, policyMode } from './policy-mode.ts';

/** Kernel limits (bpf/sock_enforce.h); Tetragon's in comments. */
export const SOCKET_POLICY_LIMITS = {
  rules: 64,
  selectors: 5, // Tetragon: 5
  matchArgs: 5, // Tetragon: 5
  values: 8, // Tetragon: 4
  pids: 8, // Tetragon: 4
  netns: 8, // Tetragon: 4
} as const;

export const SocketHook = { CONNECT: 0, BIND: 1, SOCKET: 2 } as const;
export type SocketHookName = 'connect' | 'bind' | 'socket';
const HOOK_OF: Record<string, SocketHookName> = { connect: 'connect', bind: 'bind', socket: 'socket' };
export const SeField = { FAMILY: 1, TYPE: 2, PROTOCOL: 3, ADDR: 4, PORT: 5 } as const;
export const SeOp = { EQUAL: 1, NOT_EQUAL: 2, MASK: 3, GT: 4, LT: 5, CIDR: 6, NOT_CIDR: 7, IN: 8, NOT_IN: 9, PREFIX: 10, NOT_PREFIX: 11, POSTFIX: 12, NOT_POSTFIX: 13, IDENTITY: 14, NOT_IDENTITY: 15, SERVICE: 16, NOT_SERVICE: 17 } as const;
export const SeAction = { POST: 0, NOPOST: 1, OVERRIDE: 2 } as const;
export type SeActionName = keyof typeof SeAction;

// ---- codecs of bpf/sock_enforce.h (socket-policy.test.ts checks them against the BTF) ----

export const seValue = struct('se_value', { lo: u64, hi: u64, mask_lo: u64, mask_hi: u64 });
export const seFilter = struct('se_filter', { field: u8, op: u8, nvalues: u8, _pad: pad(1), set: u32, values: array(seValue, SOCKET_POLICY_LIMITS.values) });
export const seSelector = struct('se_selector', {
  nargs: u8,
  bin_op: u8,
  pid_op: u8,
  npids: u8,
  netns_op: u8,
  nnetns: u8,
  action: u8,
  pid_flags: u8,
  error: i32,
  bin_key: u32,
  pids: array(u32, SOCKET_POLICY_LIMITS.pids),
  netns: array(u32, SOCKET_POLICY_LIMITS.netns),
  args: array(seFilter, SOCKET_POLICY_LIMITS.matchArgs),
});
export const sePodKey = struct('se_pod_key', { policy_id: u32, netns: u32 });
export const seRule = struct('se_rule', { policy_id: u32, hook: u8, nselectors: u8, scoped: u8, _pad: pad(1), selectors: array(seSelector, SOCKET_POLICY_LIMITS.selectors) });
export const seList = struct('se_list', { n: u32, slots: array(u16, SOCKET_POLICY_LIMITS.rules) });
export const seStats = struct('se_stats', { runs: u64, matched: u64, posted: u64, refused: u64 });
export const seEvent = struct('se_event', {
  hook: u8,
  action: u8,
  selector: u8,
  flags: u8,
  pid: u32,
  tid: u32,
  slot: u32,
  ktime: u64,
  cgroup_id: u64,
  policy_id: u32,
  error: i32,
  netns: u32,
  family: u16,
  port: u16,
  type: u32,
  protocol: u32,
  addr: array(u8, 16),
  binary_len: u32,
  dst_identity: u32,
  binary: array(u8, STRING_KEY_BYTES),
});
export const SE_EVENT_FLAG_BINARY_UNKNOWN = 1;

// ---- the compiled form ----

export interface SeValue {
  lo: bigint;
  hi: bigint;
  mask_lo: bigint;
  mask_hi: bigint;
}

export interface SocketFilter {
  field: number;
  op: number;
  values: SeValue[];
  /** DIdentity / NotDIdentity: the selectors, ORed. */
  identities?: IdentityValue[];
  /** DService / NotDService: `namespace/name` of each service. */
  services?: string[];
  /** Where it is in the policy (`spec.kprobes[0].selectors[0].matchArgs[1]`), for errors found at load. */
  at: string;
}

export interface SocketSelector {
  action: SeActionName;
  /** A monitored policy's selector runs `action` Post; this is what it would have done. */
  monitored?: SeActionName;
  /** Override's errno, negative. */
  error: number;
  binOp: number;
  binaries?: CompiledStrings;
  pidOp: number;
  pids: number[];
  /** PidFlag bits: followForks, isNamespacePID. */
  pidFlags: number;
  netnsOp: number;
  netns: number[];
  args: SocketFilter[];
}

/** An argument as the event reports it. */
export interface SocketArg {
  index: number;
  report: 'sock_arg' | 'int_arg';
  /** socket(): which of the socket's fields (family, type, protocol). */
  field?: number;
  label?: string;
}

export interface SocketRule {
  field: string;
  hook: SocketHookName;
  /** As Tetragon names it: `__x64_sys_connect`. */
  functionName: string;
  args: SocketArg[];
  selectors: SocketSelector[];
  message?: string;
  tags?: string[];
}

export interface CompiledSocketPolicy {
  header: TracingPolicyHeader;
  rules: SocketRule[];
  /** The pods it applies to (TracingPolicyNamespaced, podSelector); undefined: every process in the cgroup. */
  scope?: PolicyScope;
  text: string;
}

const KPROBE_FIELDS = new Set(['call', 'syscall', 'args', 'selectors', 'message', 'tags', 'return', 'returnArg', 'returnArgAction', 'data', 'ignore']);
const SELECTOR_FIELDS = new Set(['matchArgs', 'matchBinaries', 'matchPIDs', 'matchActions', 'matchNamespaces', 'matchCapabilities', 'matchNamespaceChanges', 'matchCapabilityChanges', 'matchReturnArgs', 'matchReturnActions', 'matchData', 'matchParentBinaries', 'matchWorkloads']);
const BINARY_OPS: Record<string, number> = { In: SeOp.IN, NotIn: SeOp.NOT_IN, Prefix: SeOp.PREFIX, NotPrefix: SeOp.NOT_PREFIX, Postfix: SeOp.POSTFIX, NotPostfix: SeOp.NOT_POSTFIX };
const INT_OPS: Record<string, number> = { Equal: SeOp.EQUAL, NotEqual: SeOp.NOT_EQUAL, Mask: SeOp.MASK, GT: SeOp.GT, GreaterThan: SeOp.GT, LT: SeOp.LT, LessThan: SeOp.LT };
const FAMILIES: Record<string, bigint> = { AF_UNIX: 1n, AF_INET: 2n, AF_INET6: 10n, AF_NETLINK: 16n, AF_PACKET: 17n };
/** Operators on a sockaddr, by hook: connect's is the destination, bind's the local address. */
const SOCKADDR_OPS: Record<'connect' | 'bind', Record<string, { field: number; op: number }>> = {
  connect: { DAddr: { field: SeField.ADDR, op: SeOp.CIDR }, NotDAddr: { field: SeField.ADDR, op: SeOp.NOT_CIDR }, DIdentity: { field: SeField.ADDR, op: SeOp.IDENTITY }, NotDIdentity: { field: SeField.ADDR, op: SeOp.NOT_IDENTITY }, DService: { field: SeField.ADDR, op: SeOp.SERVICE }, NotDService: { field: SeField.ADDR, op: SeOp.NOT_SERVICE }, DPort: { field: SeField.PORT, op: SeOp.EQUAL }, NotDPort: { field: SeField.PORT, op: SeOp.NOT_EQUAL }, Family: { field: SeField.FAMILY, op: SeOp.EQUAL } },
  bind: { SAddr: { field: SeField.ADDR, op: SeOp.CIDR }, NotSAddr: { field: SeField.ADDR, op: SeOp.NOT_CIDR }, SPort: { field: SeField.PORT, op: SeOp.EQUAL }, NotSPort: { field: SeField.PORT, op: SeOp.NOT_EQUAL }, Family: { field: SeField.FAMILY, op: SeOp.EQUAL } },
};
const SOCKET_FIELDS = [SeField.FAMILY, SeField.TYPE, SeField.PROTOCOL];

/** A prefix as the kernel compares it: IPv4 as ::ffff:a.b.c.d/96+bits. */
export function seCidr(prefix: Prefix): SeValue {
  const bits = prefix.family === 4 ? prefix.bits + 96 : prefix.bits;
  const mask = new Uint8Array(16);
  for (let i = 0; i < 16; i++) mask[i] = bits >= 8 * (i + 1) ? 0xff : bits > 8 * i ? (0xff << (8 - (bits - 8 * i))) & 0xff : 0;
  const m = Buffer.from(mask);
  return { ...seAddress(prefix), mask_lo: m.readBigUInt64LE(0), mask_hi: m.readBigUInt64LE(8) };
}

const number = (lo: bigint): SeValue => ({ lo, hi: 0n, mask_lo: 0n, mask_hi: 0n });

const DESTINATION_OPERATORS = new Set(['DIdentity', 'NotDIdentity', 'DService', 'NotDService']);

/**
 * Whether a policy document asks for Override anywhere, or names a destination by identity or
 * service (which only the socket hooks know, even to post): then it is compiled here, or refused.
 */
export function wantsSocketEnforcement(doc: unknown): boolean {
  if (!isMap(doc) || !isMap(doc.spec) || !Array.isArray(doc.spec.kprobes)) return false;
  const selectors = doc.spec.kprobes.flatMap((k) => (isMap(k) && Array.isArray(k.selectors) ? k.selectors.filter(isMap) : []));
  return selectors.some(
    (s) =>
      (Array.isArray(s.matchActions) && s.matchActions.some((a) => isMap(a) && typeof a.action === 'string' && a.action.toLowerCase() === 'override')) ||
      (Array.isArray(s.matchArgs) && s.matchArgs.some((a) => isMap(a) && typeof a.operator === 'string' && DESTINATION_OPERATORS.has(a.operator))),
  );
}

function compileArgs(list: unknown, hook: SocketHookName, field: string, problems: PolicyProblem[]): SocketArg[] {
  if (list === undefined || list === null) return [];
  if (!Array.isArray(list)) return (problems.push({ field, reason: 'want a list' }), []);
  const out: SocketArg[] = [];
  list.forEach((item, i) => {
    const f = `${field}[${i}]`;
    if (!isMap(item)) return void problems.push({ field: f, reason: 'want an object' });
    unknownFields(item, new Set(['index', 'type', 'label']), f, problems);
    const { index, type } = item;
    if (typeof index !== 'number' || !Number.isInteger(index) || index < 0 || index > 2) return void problems.push({ field: `${f}.index`, reason: `sys_${hook} has 3 arguments (0 to 2)` });
    if (out.some((a) => a.index === index)) return void problems.push({ field: `${f}.index`, reason: `index ${index} given twice` });
    const label = typeof item.label === 'string' ? item.label : undefined;
    if (hook === 'socket') {
      if (type !== 'int' && type !== 'uint32' && type !== 'int32') return void problems.push({ field: `${f}.type`, reason: `${JSON.stringify(type)}: socket()'s arguments are ints` });
      return void out.push({ index, report: 'int_arg', field: SOCKET_FIELDS[index], label });
    }
    if (index === 1) {
      if (type !== 'sockaddr') return void problems.push({ field: `${f}.type`, reason: `${JSON.stringify(type)}: sys_${hook}'s argument 1 is a sockaddr` });
      return void out.push({ index, report: 'sock_arg', label });
    }
    // The fd and the length: declared as Tetragon users do, not known at the socket hook.
    if (!['int', 'fd', 'uint32', 'int32', 'size_t'].includes(type as string)) problems.push({ field: `${f}.type`, reason: `${JSON.stringify(type)}: want int or fd` });
  });
  return out;
}

/** What the agent running the policy offers: destinations by identity and service need the full agent's. */
export interface SocketCompileOptions extends CompileOptions {
  /** The full agent's identities, ipcache and services are there (not `--runtime-only`). */
  destinations?: boolean;
}

function compileFilter(item: Json, hook: SocketHookName, args: SocketArg[], field: string, options: SocketCompileOptions, problems: PolicyProblem[]): SocketFilter | undefined {
  unknownFields(item, new Set(['index', 'operator', 'values']), field, problems);
  const { index, operator } = item;
  const values = Array.isArray(item.values) ? item.values : undefined;
  if (!values || values.length === 0 || values.length > SOCKET_POLICY_LIMITS.values) return void problems.push({ field: `${field}.values`, reason: `want 1 to ${SOCKET_POLICY_LIMITS.values} values` });
  const arg = args.find((a) => a.index === index);
  if (!arg) {
    const known = hook !== 'socket' && (index === 0 || index === 2);
    return void problems.push({ field: `${field}.index`, reason: known ? `argument ${index} of sys_${hook} is not known at the socket hook (only the sockaddr is)` : `no argument with index ${JSON.stringify(index)} in the hook's args` });
  }
  const bad = (i: number, want: string) => problems.push({ field: `${field}.values[${i}]`, reason: `${JSON.stringify(values[i])}: want ${want}` });
  if (hook === 'socket') {
    const op = typeof operator === 'string' ? INT_OPS[operator] : undefined;
    if (op === undefined) return void problems.push({ field: `${field}.operator`, reason: `${JSON.stringify(operator)}: want one of ${Object.keys(INT_OPS).join(', ')}` });
    if ((op === SeOp.GT || op === SeOp.LT) && values.length > 1) return void problems.push({ field: `${field}.values`, reason: 'want one value' });
    // sock_create runs for IPv4 and IPv6 sockets only: a rule on another family would never fire.
    if (arg.field === SeField.FAMILY && op !== SeOp.EQUAL && op !== SeOp.NOT_EQUAL) return void problems.push({ field: `${field}.operator`, reason: `${JSON.stringify(operator)}: want Equal or NotEqual on the domain` });
    const out: SeValue[] = [];
    values.forEach((v, i) => {
      const n = arg.field === SeField.FAMILY && typeof v === 'string' && v in FAMILIES ? FAMILIES[v] : parseInteger(v);
      if (n === undefined || n > 0xffffffffn) return void bad(i, 'an integer');
      if (arg.field === SeField.FAMILY && n !== 2n && n !== 10n) return void bad(i, 'AF_INET or AF_INET6 (the socket hook sees only IPv4 and IPv6 sockets)');
      out.push(number(n));
    });
    return { field: arg.field!, op, values: out, at: field };
  }
  const ops = SOCKADDR_OPS[hook];
  const spec = typeof operator === 'string' ? ops[operator] : undefined;
  if (!spec) {
    const other = hook === 'connect' ? /^Not?S(Addr|Port)|^NotS/.test(String(operator)) : /^(Not)?D(Addr|Port|Identity|Service)$/.test(String(operator));
    const reason = other ? (hook === 'connect' ? "connect's sockaddr is the destination: use DAddr / DPort" : "bind's sockaddr is the local address: use SAddr / SPort") : `want one of ${Object.keys(ops).join(', ')}`;
    return void problems.push({ field: `${field}.operator`, reason: `${JSON.stringify(operator)}: ${reason}` });
  }
  if (spec.op >= SeOp.IDENTITY) {
    const byIdentity = spec.op === SeOp.IDENTITY || spec.op === SeOp.NOT_IDENTITY;
    if (!options.destinations) {
      const what = byIdentity ? "needs the datapath's ipcache and the identities" : 'needs the services';
      return void problems.push({ field: `${field}.operator`, reason: `${JSON.stringify(operator)}: a destination by ${byIdentity ? 'identity' : 'service'} ${what} of the full agent (ciliate agent --runtime-enabled); \`ciliate agent --runtime-only\` has none` });
    }
    const before = problems.length;
    if (byIdentity) {
      const identities = values.map((v, i) => parseIdentityValue(v, `${field}.values[${i}]`, problems));
      return problems.length > before ? undefined : { field: spec.field, op: spec.op, values: [], identities: identities as IdentityValue[], at: field };
    }
    const services = values.map((v, i) => parseServiceValue(v, `${field}.values[${i}]`, problems));
    return problems.length > before ? undefined : { field: spec.field, op: spec.op, values: [], services: services as string[], at: field };
  }
  const out: SeValue[] = [];
  values.forEach((v, i) => {
    if (spec.field === SeField.ADDR) {
      const prefix = typeof v === 'string' ? Prefix.tryParse(v, { bareAddress: true }) : undefined;
      if (!prefix) return void bad(i, 'an IPv4 or IPv6 address or CIDR without host bits');
      return void out.push(seCidr(prefix));
    }
    const n = spec.field === SeField.FAMILY && typeof v === 'string' && v in FAMILIES ? FAMILIES[v] : parseInteger(v);
    if (n === undefined || (spec.field === SeField.PORT && n > 65535n)) return void bad(i, spec.field === SeField.PORT ? 'a port' : 'a family (AF_INET, AF_INET6 or a number)');
    // The connect and bind hooks run for IPv4 and IPv6 sockets only: another family never fires.
    if (spec.field === SeField.FAMILY && n !== 2n && n !== 10n) return void bad(i, 'AF_INET or AF_INET6 (the socket hooks see only IPv4 and IPv6 sockets)');
    out.push(number(n));
  });
  return { field: spec.field, op: spec.op, values: out, at: field };
}

/** One entry of a selector list (matchBinaries, matchPIDs, matchActions): several are not taken yet. */
function single(sel: Json, key: string, field: string, problems: PolicyProblem[]): Json | undefined {
  const list = sel[key];
  if (list === undefined || list === null) return undefined;
  if (!Array.isArray(list) || !list.every(isMap)) return void problems.push({ field: `${field}.${key}`, reason: 'want a list of objects' });
  if (list.length > 1) return void problems.push({ field: `${field}.${key}`, reason: 'at most one entry (not supported yet: several)' });
  return list[0] as Json | undefined;
}

function idList(values: unknown, max: number, parseOne: (v: unknown) => number | undefined): number[] | undefined {
  if (!Array.isArray(values) || values.length === 0 || values.length > max) return undefined;
  const out = values.map(parseOne);
  return out.every((v): v is number => v !== undefined) ? out : undefined;
}

function compileSelector(sel: Json, hook: SocketHookName, args: SocketArg[], field: string, hostNetns: number, options: SocketCompileOptions, problems: PolicyProblem[]): SocketSelector {
  const out: SocketSelector = { action: 'POST', error: 0, binOp: 0, pidOp: 0, pids: [], pidFlags: 0, netnsOp: 0, netns: [], args: [] };
  for (const key of Object.keys(sel)) {
    if (!SELECTOR_FIELDS.has(key)) problems.push({ field: `${field}.${key}`, reason: 'unknown field' });
    else if (!['matchArgs', 'matchBinaries', 'matchPIDs', 'matchActions', 'matchNamespaces'].includes(key) && sel[key] !== null) problems.push({ field: `${field}.${key}`, reason: 'not supported yet at the socket hooks' });
  }
  const matchArgs = sel.matchArgs;
  if (matchArgs !== undefined && matchArgs !== null) {
    if (!Array.isArray(matchArgs)) problems.push({ field: `${field}.matchArgs`, reason: 'want a list' });
    else if (matchArgs.length > SOCKET_POLICY_LIMITS.matchArgs) problems.push({ field: `${field}.matchArgs`, reason: `at most ${SOCKET_POLICY_LIMITS.matchArgs} entries` });
    else
      matchArgs.forEach((item, i) => {
        if (!isMap(item)) return void problems.push({ field: `${field}.matchArgs[${i}]`, reason: 'want an object' });
        const filter = compileFilter(item, hook, args, `${field}.matchArgs[${i}]`, options, problems);
        if (filter) out.args.push(filter);
      });
  }
  const binaries = single(sel, 'matchBinaries', field, problems);
  if (binaries) {
    const f = `${field}.matchBinaries[0]`;
    unknownFields(binaries, new Set(['operator', 'values', 'followChildren']), f, problems);
    if (binaries.followChildren === true) problems.push({ field: `${f}.followChildren`, reason: 'not supported yet' });
    const op = typeof binaries.operator === 'string' ? BINARY_OPS[binaries.operator] : undefined;
    if (op === undefined) problems.push({ field: `${f}.operator`, reason: `${JSON.stringify(binaries.operator)}: want one of ${Object.keys(BINARY_OPS).join(', ')}` });
    else if (!Array.isArray(binaries.values) || binaries.values.length === 0) problems.push({ field: `${f}.values`, reason: 'want a list of paths' });
    else {
      // The kernel compares the exe's absolute path: a relative value could never match.
      binaries.values.forEach((v, i) => {
        if (typeof v === 'string' && (op === SeOp.IN || op === SeOp.NOT_IN || op === SeOp.PREFIX || op === SeOp.NOT_PREFIX) && !v.startsWith('/')) problems.push({ field: `${f}.values[${i}]`, reason: `${JSON.stringify(v)}: want an absolute path` });
      });
      const kind = op === SeOp.IN || op === SeOp.NOT_IN ? Op.IN : op === SeOp.PREFIX || op === SeOp.NOT_PREFIX ? Op.PREFIX : Op.POSTFIX;
      const strings = stringValues(binaries.values, kind, `${f}.values`, problems);
      if (strings) {
        out.binOp = op;
        out.binaries = strings;
      }
    }
  }
  const pids = single(sel, 'matchPIDs', field, problems);
  if (pids) {
    const read = readMatchPids(pids, `${field}.matchPIDs[0]`, SOCKET_POLICY_LIMITS.pids, problems);
    if (read) {
      out.pidOp = read.in ? SeOp.IN : SeOp.NOT_IN;
      out.pids = read.pids;
      out.pidFlags = read.flags;
    }
  }
  const namespaces = single(sel, 'matchNamespaces', field, problems);
  if (namespaces) {
    const f = `${field}.matchNamespaces[0]`;
    unknownFields(namespaces, new Set(['namespace', 'operator', 'values']), f, problems);
    if (namespaces.namespace !== 'Net') problems.push({ field: `${f}.namespace`, reason: `${JSON.stringify(namespaces.namespace)}: only Net at the socket hooks (not supported yet: others)` });
    const op = namespaces.operator === 'In' ? SeOp.IN : namespaces.operator === 'NotIn' ? SeOp.NOT_IN : undefined;
    if (op === undefined) problems.push({ field: `${f}.operator`, reason: `${JSON.stringify(namespaces.operator)}: want In or NotIn` });
    const list = idList(namespaces.values, SOCKET_POLICY_LIMITS.netns, (v) => {
      if (v === 'host_ns') return hostNetns || undefined;
      const n = parseInteger(v);
      return n !== undefined && n > 0n && n <= 0xffffffffn ? Number(n) : undefined;
    });
    if (!list) problems.push({ field: `${f}.values`, reason: `want 1 to ${SOCKET_POLICY_LIMITS.netns} namespace inode numbers (or host_ns)` });
    else if (op) {
      out.netnsOp = op;
      out.netns = list;
    }
  }
  const action = single(sel, 'matchActions', field, problems);
  if (action) {
    const f = `${field}.matchActions[0]`;
    unknownFields(action, new Set(['action', 'argError', 'argSig', 'rateLimit', 'rateLimitScope', 'kernelStackTrace', 'userStackTrace', 'imaHash']), f, problems);
    const name = typeof action.action === 'string' ? action.action.toLowerCase() : '';
    if (name === 'override') {
      out.action = 'OVERRIDE';
      const error = parseInteger(action.argError);
      const value = error === undefined ? undefined : Number(BigInt.asIntN(64, error));
      if (value === undefined || value > -1 || value < -4095) problems.push({ field: `${f}.argError`, reason: `${JSON.stringify(action.argError)}: want a negative errno (-1 EPERM, -13 EACCES, …)` });
      else out.error = value;
    } else if (name === 'post' || name === 'nopost') {
      out.action = name === 'post' ? 'POST' : 'NOPOST';
    } else if (name === 'sigkill' || name === 'signal') {
      problems.push({ field: `${f}.action`, reason: `${JSON.stringify(action.action)}: not at a socket hook (no bpf_send_signal there); put it in a policy without Override, served from the syscall tracepoint` });
    } else {
      problems.push({ field: `${f}.action`, reason: `${JSON.stringify(action.action)}: want Override, Post or NoPost in a policy that overrides socket calls` });
    }
    for (const key of ['rateLimit', 'kernelStackTrace', 'userStackTrace', 'imaHash']) if (action[key] !== undefined && action[key] !== false) problems.push({ field: `${f}.${key}`, reason: 'not supported yet' });
  }
  return out;
}

/**
 * Compiles a policy that overrides socket calls, or returns undefined when the policy asks for no
 * Override (the tracepoint engine serves it). Throws RuntimeError ERR_RUNTIME_POLICY naming every
 * problem by field.
 *
 * @example
 * const policy = compileSocketPolicy(readFileSync('connect-only-curl.yaml', 'utf8'), hostNetns);
 */
export function compileSocketPolicy(text: string, hostNetns = 0, options: SocketCompileOptions = {}): CompiledSocketPolicy | undefined {
  let doc: unknown;
  try {
    doc = parse(text);
  } catch {
    return undefined; // the tracing compiler names the YAML error
  }
  if (!wantsSocketEnforcement(doc) || !isMap(doc)) return undefined;
  const problems: PolicyProblem[] = [];
  unknownFields(doc, new Set(['apiVersion', 'kind', 'metadata', 'spec']), 'policy', problems);
  if (doc.apiVersion !== 'cilium.io/v1alpha1') problems.push({ field: 'apiVersion', reason: `want cilium.io/v1alpha1, got ${JSON.stringify(doc.apiVersion)}` });
  if (doc.kind !== 'TracingPolicy' && doc.kind !== 'TracingPolicyNamespaced') problems.push({ field: 'kind', reason: `want TracingPolicy or TracingPolicyNamespaced, got ${JSON.stringify(doc.kind)}` });
  const metadata = isMap(doc.metadata) ? doc.metadata : {};
  const name = typeof metadata.name === 'string' ? metadata.name : '';
  const scope = readPolicyScope(doc, problems);
  if (!DNS_SUBDOMAIN.test(name) || name.length > 253) problems.push({ field: 'metadata.name', reason: `want a DNS subdomain, got ${JSON.stringify(metadata.name)}` });
  const spec = doc.spec as Json;
  const rules: SocketRule[] = [];
  for (const key of Object.keys(spec)) {
    if (key === 'kprobes' || key === 'podSelector' || key === 'options' || (key === 'hostSelector' && (spec[key] === null || (isMap(spec[key]) && Object.keys(spec[key]).length === 0)))) continue;
    problems.push({ field: `spec.${key}`, reason: 'not supported in a policy that overrides socket calls (put it in another policy)' });
  }
  (spec.kprobes as unknown[]).forEach((kprobe, i) => {
    const field = `spec.kprobes[${i}]`;
    if (!isMap(kprobe)) return void problems.push({ field, reason: 'want an object' });
    unknownFields(kprobe, KPROBE_FIELDS, field, problems);
    const call = typeof kprobe.call === 'string' ? kprobe.call : '';
    const hook = /^(__x64_|__arm64_|__ia32_)?sys_/.test(call) || kprobe.syscall === true ? HOOK_OF[syscallName(call)] : undefined;
    if (!hook) return void problems.push({ field: `${field}.call`, reason: `${JSON.stringify(kprobe.call)}: Override ${MISSING_HOOK_REASON.replace('needs kprobes', 'needs kprobe override')}; Ciliate serves it at the cgroup socket hooks for sys_connect, sys_bind and sys_socket only` });
    for (const key of ['return', 'returnArg', 'returnArgAction', 'data', 'ignore']) if (kprobe[key] !== undefined && kprobe[key] !== false) problems.push({ field: `${field}.${key}`, reason: 'not supported at the socket hooks' });
    if (kprobe.message !== undefined && typeof kprobe.message !== 'string') problems.push({ field: `${field}.message`, reason: 'want a string' });
    if (kprobe.tags !== undefined && !(Array.isArray(kprobe.tags) && kprobe.tags.every((t) => typeof t === 'string'))) problems.push({ field: `${field}.tags`, reason: 'want a list of strings' });
    const args = compileArgs(kprobe.args, hook, `${field}.args`, problems);
    const list = kprobe.selectors;
    let selectors: SocketSelector[] = [];
    if (list !== undefined && list !== null) {
      if (!Array.isArray(list)) problems.push({ field: `${field}.selectors`, reason: 'want a list' });
      else if (list.length > SOCKET_POLICY_LIMITS.selectors) problems.push({ field: `${field}.selectors`, reason: `at most ${SOCKET_POLICY_LIMITS.selectors} selectors` });
      else selectors = list.flatMap((sel, s) => (isMap(sel) ? [compileSelector(sel, hook, args, `${field}.selectors[${s}]`, hostNetns, options, problems)] : (problems.push({ field: `${field}.selectors[${s}]`, reason: 'want an object' }), [])));
    }
    rules.push({ field, hook, functionName: `__x64_sys_${hook}`, args, selectors, message: typeof kprobe.message === 'string' ? kprobe.message : undefined, tags: Array.isArray(kprobe.tags) ? (kprobe.tags as string[]) : undefined });
  });
  if (rules.length > SOCKET_POLICY_LIMITS.rules) problems.push({ field: 'spec.kprobes', reason: `at most ${SOCKET_POLICY_LIMITS.rules} hooks` });
  const mode = policyMode(spec.options, options.mode, problems);
  if (problems.length > 0) throw new RuntimeError('ERR_RUNTIME_POLICY', `tracing policy ${name || '(unnamed)'}: ${problems.map((p) => `${p.field}: ${p.reason}`).join('; ')}`, { details: problems });
  const kind = doc.kind as TracingPolicyHeader['kind'];
  const namespace = kind === 'TracingPolicyNamespaced' && typeof metadata.namespace === 'string' ? metadata.namespace : undefined;
  const inMode = hooksInMode(rules, mode, 'POST');
  return { header: { kind, name, ...(namespace === undefined ? {} : { namespace }), mode, enforces: inMode.enforces }, rules: inMode.hooks, ...(scope ? { scope } : {}), text };
}
