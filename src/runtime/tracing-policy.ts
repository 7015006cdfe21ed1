/**
 * TracingPolicy and TracingPolicyNamespaced (`cilium.io/v1alpha1`) as a client hands them to
 * AddTracingPolicy: parsed and checked whole, every problem named by its field, before anything is
 * loaded. Hooks this kernel lacks are refused as the issue asks ("needs kprobes (or fentry/LSM);
 * this kernel has none"), never ignored; what the kernel has but Ciliate does not load yet
 * (tracepoints, syscall hooks from syscall tracepoints, uprobes) is refused as unsupported, so a
 * policy is never half-applied.
 * @module
 */
import { existsSync, readFileSync } from 'node:fs';
import { parse } from 'yaml';
import { probeFeature } from '../ebpf/index.ts';
import { Addr, Prefix } from '../net/index.ts';
import type { Selector, SelectorRequirement } from '../policy/index.ts';
import { hooksInMode, policyMode, type PolicyMode } from './policy-mode.ts';
import { RuntimeError } from './errors.ts';
import { CAPABILITIES, NAMESPACES, type NamespaceName } from './events.ts';
import { hostNamespaces } from './procfs.ts';

export interface PolicyProblem {
  field: string;
  reason: string;
}

export interface TracingPolicyHeader {
  kind: 'TracingPolicy' | 'TracingPolicyNamespaced';
  name: string;
  namespace?: string;
  /** What it was compiled for: spec.options' policy-mode, or what loading or configuring it said. */
  mode: PolicyMode;
  /** Whether any selector enforces (Sigkill, Signal, Override): if not, the policy is monitor_only. */
  enforces: boolean;
}

/** How a policy is compiled besides its text. */
export interface CompileOptions {
  /** Over spec.options' policy-mode (tetra's `--mode`, ConfigureTracingPolicy). */
  mode?: PolicyMode;
}

const KINDS = new Set(['TracingPolicy', 'TracingPolicyNamespaced']);
const SPEC_FIELDS = new Set(['kprobes', 'tracepoints', 'uprobes', 'lsmhooks', 'usdts', 'fentries', 'loader', 'podSelector', 'containerSelector', 'hostSelector', 'nodeSelector', 'lists', 'enforcers', 'options', 'selectorsMacros']);
const KPROBE_FIELDS = new Set(['call', 'syscall', 'return', 'args', 'data', 'returnArg', 'returnArgAction', 'selectors', 'message', 'tags', 'ignore']);
const TRACEPOINT_FIELDS = new Set(['subsystem', 'event', 'raw', 'args', 'selectors', 'message', 'tags']);
export const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
/** What a hook this kernel lacks is refused with (issue 12's wording). */
export const MISSING_HOOK_REASON = 'needs kprobes (or fentry/LSM); this kernel has none';

export type Json = Record<string, unknown>;
export const isMap = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Whether the kernel can attach `feature` (a `ciliate bpf features` name), cached per process. */
const supported = new Map<string, boolean>();
function kernelHas(feature: string): boolean {
  let has = supported.get(feature);
  if (has === undefined) {
    has = probeFeature(feature).status === 'supported';
    supported.set(feature, has);
  }
  return has;
}

const TRACEFS_ROOTS = ['/sys/kernel/tracing', '/sys/kernel/debug/tracing'];

function tracefsEvent(subsystem: string, event: string): boolean {
  return TRACEFS_ROOTS.some((root) => existsSync(`${root}/events/${subsystem}/${event}`));
}

/** A field of a tracepoint's record, from its tracefs `format` file (common fields included). */
export interface TracepointField {
  decl: string;
  name: string;
  offset: number;
  size: number;
  signed: boolean;
}

export function tracepointFields(subsystem: string, event: string): TracepointField[] {
  for (const root of TRACEFS_ROOTS) {
    let text: string;
    try {
      text = readFileSync(`${root}/events/${subsystem}/${event}/format`, 'utf8');
    } catch {
      continue;
    }
    const fields: TracepointField[] = [];
    for (const match of text.matchAll(/field:([^;]*);\s*offset:(\d+);\s*size:(\d+);\s*signed:(\d);/g)) {
      const decl = match[1].trim();
      const name = /([A-Za-z_]\w*)(\[\d*\])?$/.exec(decl)?.[1] ?? decl;
      fields.push({ decl, name, offset: Number(match[2]), size: Number(match[3]), signed: match[4] === '1' });
    }
    return fields;
  }
  return [];
}

function checkList(spec: Json, key: string, problems: PolicyProblem[], each: (item: Json, field: string) => void): void {
  const list = spec[key];
  if (list === undefined || list === null) return;
  if (!Array.isArray(list)) return void problems.push({ field: `spec.${key}`, reason: 'want a list' });
  list.forEach((item, i) => {
    const field = `spec.${key}[${i}]`;
    if (!isMap(item)) problems.push({ field, reason: 'want an object' });
    else each(item, field);
  });
}

export function unknownFields(item: Json, known: Set<string>, field: string, problems: PolicyProblem[]): void {
  for (const key of Object.keys(item)) if (!known.has(key)) problems.push({ field: `${field}.${key}`, reason: 'unknown field' });
}


// ---- compiling a policy into what the generic program reads (bpf/runtime.h) ----

/** Bytes of a string key's data in both engines' string tries (bpf/string_key.h STRING_KEY_BYTES). */
export const STRING_KEY_BYTES = 248;

/** Kernel limits of a hook (bpf/runtime.h), documented in the README; Tetragon's in comments. */
export const POLICY_LIMITS = {
  hooks: 128,
  args: 5,
  selectors: 5, // Tetragon: 5
  matchArgs: 5, // Tetragon: 5
  values: 8, // numeric, address and port values per operator; Tetragon: 4
  pids: 8, // Tetragon: 4
  namespaces: 10, // matchNamespaces entries; Tetragon: 10
  namespaceValues: 4, // Tetragon: 4
  capabilities: 4, // matchCapabilities and matchCapabilityChanges entries together
  followChildren: 64, // matchBinaries with followChildren over all policies; Tetragon: 64
  strings: 256, // string values per operator (LPM trie entries); Tetragon: unbounded prefixes
  stringBytes: 246, // an Equal / Prefix value's characters (Tetragon: 256 for Prefix)
  postfixBytes: 128, // Tetragon: 128
} as const;

export const ArgType = { INT: 1, UINT: 2, STRING: 3, SOCKADDR: 4, DATA_LOC: 5 } as const;
export const Op = {
  EQUAL: 1, NOT_EQUAL: 2, PREFIX: 3, NOT_PREFIX: 4, POSTFIX: 5, NOT_POSTFIX: 6, MASK: 7, GT: 8, LT: 9,
  DADDR: 10, NOT_DADDR: 11, DPORT: 12, NOT_DPORT: 13, FAMILY: 14, IN: 15, NOT_IN: 16,
  SADDR: 17, NOT_SADDR: 18, SPORT: 19, NOT_SPORT: 20,
} as const;
/** rateLimitScope (bpf/runtime.h enum rt_rate_scope). */
export const RateScope = { thread: 0, process: 1, global: 2 } as const;
export const Action = { POST: 0, NOPOST: 1, SIGKILL: 2, SIGNAL: 3 } as const;
export type ActionName = keyof typeof Action;

/** How an argument is reported: the KprobeArgument field Tetragon uses for its type. */
export type ArgReport = 'int_arg' | 'uint_arg' | 'long_arg' | 'size_arg' | 'string_arg' | 'bytes_arg' | 'sock_arg';

export interface CompiledArg {
  /** The argument's index as the policy wrote it (function argument, or tracepoint field). */
  index: number;
  kind: number;
  offset: number;
  size: number;
  report: ArgReport;
  label?: string;
  /** A sockaddr's end of the connection: bind's names the local one, every other call's the peer. */
  end?: 'local' | 'remote';
}

export interface CompiledStrings {
  kind: 'equal' | 'prefix' | 'postfix';
  values: string[];
}

export interface CompiledFilter {
  /** Position in CompiledHook.args. */
  arg: number;
  op: number;
  values: bigint[];
  strings?: CompiledStrings;
  /** SAddr / DAddr: CIDRs, of either family. */
  prefixes?: Prefix[];
}

/** One matchNamespaces entry: namespace slot (bpf/runtime.h enum runtime_ns), In or NotIn. */
export interface CompiledNamespaceFilter {
  ns: number;
  op: number;
  values: number[];
}

/** One matchCapabilities (or, with `changes`, matchCapabilityChanges) entry. */
export interface CompiledCapabilityFilter {
  /** 0 effective, 1 inheritable, 2 permitted. */
  type: number;
  op: number;
  changes: boolean;
  /** isNamespaceCapability: the host's user namespace, which the caller must not be in. */
  userNs: number;
  mask: bigint;
}

export interface CompiledSelector {
  pidOp: number;
  pids: number[];
  /** PidFlag bits: followForks, isNamespacePID. */
  pidFlags: number;
  binOp: number;
  binaries?: CompiledStrings;
  /** matchBinaries followChildren: descendants of a matching binary match too. */
  followChildren: boolean;
  namespaces: CompiledNamespaceFilter[];
  capabilities: CompiledCapabilityFilter[];
  /** matchNamespaceChanges: operator and a bit per namespace slot. */
  nsChangeOp: number;
  nsChangeMask: number;
  args: CompiledFilter[];
  action: ActionName;
  /** A monitored policy's selector runs `action` Post; this is what it would have done. */
  monitored?: ActionName;
  signal: number;
  /** Post's rateLimit in ns (0: none) and its scope. */
  rateLimitNs: bigint;
  rateScope: number;
}

export interface CompiledHook {
  field: string;
  type: 'kprobe' | 'tracepoint';
  /** The tracepoint the program is attached to. */
  group: string;
  name: string;
  /** A kprobe's function as Tetragon names it (`__x64_sys_openat`). */
  functionName?: string;
  args: CompiledArg[];
  selectors: CompiledSelector[];
  message?: string;
  tags?: string[];
}

/** Which pods a policy applies to; a scoped policy's hooks end in the kernel for every other caller. */
export interface PolicyScope {
  /** A TracingPolicyNamespaced's namespace. */
  namespace?: string;
  /** spec.podSelector (a key `k8s:io.kubernetes.pod.namespace` names the pod's namespace). */
  podSelector?: Selector;
  /**
   * spec.containerSelector over CONTAINER_SELECTOR_KEYS: only these containers of the selected
   * pods, told apart in the kernel by their cgroups. A pod whose containers are unknown has none.
   */
  containerSelector?: Selector;
}

/** The keys a containerSelector selects on, as Tetragon has them: a container's name and its image's repository. */
export const CONTAINER_SELECTOR_KEYS: readonly string[] = ['name', 'repo'];

export interface CompiledTracingPolicy {
  header: TracingPolicyHeader;
  hooks: CompiledHook[];
  /** Undefined: every process on the node. */
  scope?: PolicyScope;
  /** The YAML as given (ListTracingPolicies and `policy list -o yaml` return it). */
  text: string;
}

const ARG_FIELDS = new Set(['index', 'type', 'label', 'sizeArgIndex', 'maxData', 'returnCopy', 'resolve']);
/** rt_selector.pid_flags and se_selector.pid_flags (bpf/task_pids.h PID_F_*). */
export const PidFlag = { FOLLOW_FORKS: 0x01, NAMESPACE: 0x02 } as const;

/**
 * A selector's `matchPIDs[0]` (operator In or NotIn, 1 to `limit` ids, followForks,
 * isNamespacePID), for both engines; undefined when it is wrong (reported in `problems`).
 */
export function readMatchPids(item: Json, field: string, limit: number, problems: PolicyProblem[]): { in: boolean; pids: number[]; flags: number } | undefined {
  const before = problems.length;
  unknownFields(item, new Set(['operator', 'values', 'followForks', 'isNamespacePID']), field, problems);
  let flags = 0;
  for (const [key, flag] of [['followForks', PidFlag.FOLLOW_FORKS], ['isNamespacePID', PidFlag.NAMESPACE]] as const) {
    if (item[key] === true) flags |= flag;
    else if (item[key] !== undefined && item[key] !== false && item[key] !== null) problems.push({ field: `${field}.${key}`, reason: `want true or false, got ${JSON.stringify(item[key])}` });
  }
  if (item.operator !== 'In' && item.operator !== 'NotIn') problems.push({ field: `${field}.operator`, reason: `${JSON.stringify(item.operator)}: want In or NotIn` });
  const values = Array.isArray(item.values) ? item.values.map((v) => parseInteger(v)) : [];
  if (values.length === 0 || values.length > limit || values.some((v) => v === undefined || v > 0xffffffffn)) {
    problems.push({ field: `${field}.values`, reason: `want 1 to ${limit} process ids` });
  }
  return problems.length === before ? { in: item.operator === 'In', pids: values.map(Number), flags } : undefined;
}

const SELECTOR_FIELDS = new Set(['matchArgs', 'matchBinaries', 'matchPIDs', 'matchActions', 'matchNamespaces', 'matchCapabilities', 'matchNamespaceChanges', 'matchCapabilityChanges', 'matchReturnArgs', 'matchReturnActions', 'matchData', 'matchParentBinaries', 'matchWorkloads']);
const NOT_YET = new Set(['matchReturnArgs', 'matchReturnActions', 'matchData', 'matchParentBinaries', 'matchWorkloads']);
const INT_TYPES: Record<string, { signed: boolean; size: number; report: ArgReport }> = {
  int: { signed: true, size: 4, report: 'int_arg' },
  int32: { signed: true, size: 4, report: 'int_arg' },
  sint32: { signed: true, size: 4, report: 'int_arg' },
  fd: { signed: true, size: 4, report: 'int_arg' },
  uint32: { signed: false, size: 4, report: 'uint_arg' },
  int8: { signed: true, size: 1, report: 'int_arg' },
  uint8: { signed: false, size: 1, report: 'uint_arg' },
  int16: { signed: true, size: 2, report: 'int_arg' },
  uint16: { signed: false, size: 2, report: 'uint_arg' },
  int64: { signed: true, size: 8, report: 'long_arg' },
  long: { signed: true, size: 8, report: 'long_arg' },
  uint64: { signed: false, size: 8, report: 'size_arg' },
  size_t: { signed: false, size: 8, report: 'size_arg' },
  syscall64: { signed: true, size: 8, report: 'long_arg' },
};
const STRING_OPS: Record<string, number> = { Equal: Op.EQUAL, NotEqual: Op.NOT_EQUAL, Prefix: Op.PREFIX, NotPrefix: Op.NOT_PREFIX, Postfix: Op.POSTFIX, NotPostfix: Op.NOT_POSTFIX };
const INT_OPS: Record<string, number> = { Equal: Op.EQUAL, NotEqual: Op.NOT_EQUAL, Mask: Op.MASK, GT: Op.GT, GreaterThan: Op.GT, LT: Op.LT, LessThan: Op.LT };
const SOCK_OPS: Record<string, number> = { SAddr: Op.SADDR, NotSAddr: Op.NOT_SADDR, SPort: Op.SPORT, NotSPort: Op.NOT_SPORT, DAddr: Op.DADDR, NotDAddr: Op.NOT_DADDR, DPort: Op.DPORT, NotDPort: Op.NOT_DPORT, Family: Op.FAMILY };
const ADDRESS_OPS = new Set<number>([Op.SADDR, Op.NOT_SADDR, Op.DADDR, Op.NOT_DADDR]);
const PORT_OPS = new Set<number>([Op.SPORT, Op.NOT_SPORT, Op.DPORT, Op.NOT_DPORT]);
const LOCAL_OPS = new Set<number>([Op.SADDR, Op.NOT_SADDR, Op.SPORT, Op.NOT_SPORT]);
/** Tetragon's namespace names, in bpf/runtime.h enum runtime_ns order (events.ts NAMESPACES). */
const NAMESPACE_NAMES = ['Uts', 'Ipc', 'Mnt', 'Pid', 'PidForChildren', 'Net', 'Time', 'TimeForChildren', 'Cgroup', 'User'] as const;
const CAPABILITY_TYPES: Record<string, number> = { Effective: 0, Inheritable: 1, Permitted: 2 };
const IN_OPS: Record<string, number> = { In: Op.IN, NotIn: Op.NOT_IN };
const BINARY_OPS: Record<string, number> = { In: Op.IN, NotIn: Op.NOT_IN, Prefix: Op.PREFIX, NotPrefix: Op.NOT_PREFIX, Postfix: Op.POSTFIX, NotPostfix: Op.NOT_POSTFIX };
const ACTIONS: Record<string, ActionName> = { post: 'POST', nopost: 'NOPOST', sigkill: 'SIGKILL', signal: 'SIGNAL' };
const OTHER_ACTIONS = new Set(['override', 'followfd', 'unfollowfd', 'copyfd', 'geturl', 'dnslookup', 'tracksock', 'untracksock', 'notifyenforcer', 'set', 'cleanupenforcernotification']);

/** Which end a syscall's sockaddr argument names: bind's is the local address, the others' the peer. */
function sockaddrEnd(syscall: string): 'local' | 'remote' {
  return syscall === 'bind' ? 'local' : 'remote';
}

/** Strips the arch prefix and `sys_`: `__x64_sys_openat` → `openat`. */
export function syscallName(call: string): string {
  return call.replace(/^(__x64_|__arm64_|__ia32_)/, '').replace(/^sys_/, '');
}

function stringKind(op: number): CompiledStrings['kind'] {
  return op === Op.EQUAL || op === Op.NOT_EQUAL || op === Op.IN || op === Op.NOT_IN ? 'equal' : op === Op.PREFIX || op === Op.NOT_PREFIX ? 'prefix' : 'postfix';
}

export function parseInteger(value: unknown): bigint | undefined {
  const text = typeof value === 'number' ? String(value) : typeof value === 'string' ? value.trim() : '';
  if (!/^-?(0x[0-9a-fA-F]+|0o?[0-7]+|\d+)$/.test(text)) return undefined;
  const negative = text.startsWith('-');
  const digits = negative ? text.slice(1) : text;
  let n: bigint;
  try {
    n = BigInt(/^0[0-7]+$/.test(digits) ? `0o${digits.slice(1)}` : digits.replace(/^0o/, '0o'));
  } catch {
    return undefined;
  }
  if (negative) n = -n;
  if (n < -(1n << 63n) || n >= 1n << 64n) return undefined;
  return BigInt.asUintN(64, n);
}

export function stringValues(values: unknown[], op: number, field: string, problems: PolicyProblem[]): CompiledStrings | undefined {
  const kind = stringKind(op);
  const max = kind === 'postfix' ? POLICY_LIMITS.postfixBytes : POLICY_LIMITS.stringBytes;
  if (values.length > POLICY_LIMITS.strings) return void problems.push({ field, reason: `at most ${POLICY_LIMITS.strings} values` });
  const out: string[] = [];
  values.forEach((value, i) => {
    if (typeof value !== 'string') return void problems.push({ field: `${field}[${i}]`, reason: 'want a string' });
    if (Buffer.byteLength(value) > max) return void problems.push({ field: `${field}[${i}]`, reason: `longer than ${max} bytes` });
    if (value.includes('\0')) return void problems.push({ field: `${field}[${i}]`, reason: 'holds a NUL' });
    out.push(value);
  });
  return { kind, values: out };
}

function compileFilter(item: Json, field: string, args: CompiledArg[], problems: PolicyProblem[]): CompiledFilter | undefined {
  unknownFields(item, new Set(['index', 'operator', 'values', 'args']), field, problems);
  if (item.args !== undefined) return void problems.push({ field: `${field}.args`, reason: 'not supported yet: use index' });
  const index = item.index;
  if (typeof index !== 'number' || !Number.isInteger(index)) return void problems.push({ field: `${field}.index`, reason: 'want an argument index' });
  const arg = args.findIndex((a) => a.index === index);
  if (arg < 0) return void problems.push({ field: `${field}.index`, reason: `no argument with index ${index} in the hook's args` });
  const operator = item.operator;
  const values = Array.isArray(item.values) ? item.values : undefined;
  if (!values) return void problems.push({ field: `${field}.values`, reason: 'want a list' });
  const kind = args[arg].kind;
  const ops = kind === ArgType.STRING || kind === ArgType.DATA_LOC ? STRING_OPS : kind === ArgType.SOCKADDR ? SOCK_OPS : INT_OPS;
  const op = typeof operator === 'string' ? ops[operator] : undefined;
  if (op === undefined) return void problems.push({ field: `${field}.operator`, reason: `${JSON.stringify(operator)}: want one of ${Object.keys(ops).join(', ')} for this argument's type` });
  if (kind === ArgType.SOCKADDR && (ADDRESS_OPS.has(op) || PORT_OPS.has(op)) && LOCAL_OPS.has(op) !== (args[arg].end === 'local')) {
    const reason = args[arg].end === 'local' ? "bind's sockaddr is the local address: use SAddr / SPort" : "this call's sockaddr holds only the destination: use DAddr / DPort";
    return void problems.push({ field: `${field}.operator`, reason: `${JSON.stringify(operator)}: ${reason}` });
  }
  if (ADDRESS_OPS.has(op)) {
    if (values.length === 0 || values.length > POLICY_LIMITS.strings) return void problems.push({ field: `${field}.values`, reason: `want 1 to ${POLICY_LIMITS.strings} addresses or CIDRs` });
    const prefixes: Prefix[] = [];
    values.forEach((value, i) => {
      try {
        prefixes.push(Prefix.parse(String(value), { bareAddress: true, hostBits: 'mask' }));
      } catch {
        problems.push({ field: `${field}.values[${i}]`, reason: `${JSON.stringify(value)}: want an IPv4 or IPv6 address or CIDR` });
      }
    });
    return { arg, op, values: [], prefixes };
  }
  if (ops === STRING_OPS) {
    const strings = stringValues(values, op, `${field}.values`, problems);
    return strings && { arg, op, values: [], strings };
  }
  const max = op === Op.GT || op === Op.LT ? 1 : POLICY_LIMITS.values;
  if (values.length === 0 || values.length > max) return void problems.push({ field: `${field}.values`, reason: `want 1 to ${max} values` });
  const out: bigint[] = [];
  values.forEach((value, i) => {
    let v: bigint | undefined;
    if (op === Op.FAMILY) {
      v = value === 'AF_INET' ? 2n : value === 'AF_INET6' ? 10n : parseInteger(value);
    } else {
      v = parseInteger(value);
      if (v !== undefined && PORT_OPS.has(op) && v > 65535n) v = undefined;
    }
    if (v === undefined) return void problems.push({ field: `${field}.values[${i}]`, reason: `${JSON.stringify(value)}: want ${PORT_OPS.has(op) ? 'a port' : 'an integer'}` });
    out.push(v);
  });
  return { arg, op, values: out };
}

function compileSelector(sel: Json, field: string, args: CompiledArg[], problems: PolicyProblem[]): CompiledSelector {
  const out: CompiledSelector = { pidOp: 0, pids: [], pidFlags: 0, binOp: 0, followChildren: false, namespaces: [], capabilities: [], nsChangeOp: 0, nsChangeMask: 0, args: [], action: 'POST', signal: 0, rateLimitNs: 0n, rateScope: RateScope.thread };
  for (const key of Object.keys(sel)) {
    if (!SELECTOR_FIELDS.has(key)) problems.push({ field: `${field}.${key}`, reason: 'unknown field' });
    else if (NOT_YET.has(key) && sel[key] !== null) problems.push({ field: `${field}.${key}`, reason: 'not supported yet' });
  }
  const single = (key: string): Json | undefined => {
    const list = sel[key];
    if (list === undefined || list === null) return undefined;
    if (!Array.isArray(list) || !list.every(isMap)) return void problems.push({ field: `${field}.${key}`, reason: 'want a list of objects' });
    if (list.length > 1) return void problems.push({ field: `${field}.${key}`, reason: 'at most one entry (not supported yet: several)' });
    return list[0] as Json | undefined;
  };
  const matchArgs = sel.matchArgs;
  if (matchArgs !== undefined && matchArgs !== null) {
    if (!Array.isArray(matchArgs)) problems.push({ field: `${field}.matchArgs`, reason: 'want a list' });
    else if (matchArgs.length > POLICY_LIMITS.matchArgs) problems.push({ field: `${field}.matchArgs`, reason: `at most ${POLICY_LIMITS.matchArgs} entries` });
    else
      matchArgs.forEach((item, i) => {
        if (!isMap(item)) return void problems.push({ field: `${field}.matchArgs[${i}]`, reason: 'want an object' });
        const filter = compileFilter(item, `${field}.matchArgs[${i}]`, args, problems);
        if (filter) out.args.push(filter);
      });
  }
  const binaries = single('matchBinaries');
  if (binaries) {
    const f = `${field}.matchBinaries[0]`;
    unknownFields(binaries, new Set(['operator', 'values', 'followChildren']), f, problems);
    const op = typeof binaries.operator === 'string' ? BINARY_OPS[binaries.operator] : undefined;
    if (binaries.followChildren !== undefined && typeof binaries.followChildren !== 'boolean') problems.push({ field: `${f}.followChildren`, reason: 'want true or false' });
    else if (binaries.followChildren === true && op !== undefined && op !== Op.IN) problems.push({ field: `${f}.followChildren`, reason: `only with operator In (as Tetragon), not ${binaries.operator}` });
    else out.followChildren = binaries.followChildren === true;
    if (op === undefined) problems.push({ field: `${f}.operator`, reason: `${JSON.stringify(binaries.operator)}: want one of ${Object.keys(BINARY_OPS).join(', ')}` });
    else if (!Array.isArray(binaries.values) || binaries.values.length === 0) problems.push({ field: `${f}.values`, reason: 'want a list of paths' });
    else {
      out.binOp = op;
      out.binaries = stringValues(binaries.values, op, `${f}.values`, problems);
    }
  }
  const pids = single('matchPIDs');
  if (pids) {
    const read = readMatchPids(pids, `${field}.matchPIDs[0]`, POLICY_LIMITS.pids, problems);
    if (read) {
      out.pidOp = read.in ? Op.IN : Op.NOT_IN;
      out.pids = read.pids;
      out.pidFlags = read.flags;
    }
  }
  compileNamespaces(sel, field, out, problems);
  compileCapabilities(sel, field, out, problems);
  const action = single('matchActions');
  if (action) {
    const f = `${field}.matchActions[0]`;
    unknownFields(action, new Set(['action', 'argSig', 'argError', 'argFd', 'argName', 'rateLimit', 'rateLimitScope', 'kernelStackTrace', 'userStackTrace', 'imaHash', 'argUrl', 'argFqdn']), f, problems);
    const name = typeof action.action === 'string' ? action.action.toLowerCase() : '';
    const known = ACTIONS[name];
    if (!known) {
      const reason = OTHER_ACTIONS.has(name) ? (name === 'override' ? MISSING_HOOK_REASON.replace('needs kprobes', 'needs kprobe override') : 'not supported yet') : 'unknown action';
      problems.push({ field: `${f}.action`, reason: `${JSON.stringify(action.action)}: ${reason}` });
    } else {
      out.action = known;
      if (known === 'SIGNAL') {
        const sig = parseInteger(action.argSig);
        if (sig === undefined || sig < 1n || sig > 64n) problems.push({ field: `${f}.argSig`, reason: 'want a signal number (1 to 64)' });
        else out.signal = Number(sig);
      }
    }
    for (const key of ['kernelStackTrace', 'userStackTrace', 'imaHash']) if (action[key] !== undefined && action[key] !== false) problems.push({ field: `${f}.${key}`, reason: 'not supported yet' });
    if (action.rateLimit !== undefined) {
      const ns = rateLimitNs(action.rateLimit);
      if (ns === undefined) problems.push({ field: `${f}.rateLimit`, reason: `${JSON.stringify(action.rateLimit)}: want a time: seconds, or a number with s, m or h (e.g. 1m)` });
      else if (known && known !== 'POST') problems.push({ field: `${f}.rateLimit`, reason: `only with action Post, not ${action.action}` });
      else out.rateLimitNs = ns;
    }
    if (action.rateLimitScope !== undefined) {
      const scope = typeof action.rateLimitScope === 'string' ? RateScope[action.rateLimitScope.toLowerCase() as keyof typeof RateScope] : undefined;
      if (scope === undefined) problems.push({ field: `${f}.rateLimitScope`, reason: `${JSON.stringify(action.rateLimitScope)}: want thread, process or global` });
      else if (action.rateLimit === undefined) problems.push({ field: `${f}.rateLimitScope`, reason: 'without a rateLimit' });
      else out.rateScope = scope;
    }
  }
  return out;
}

/** Tetragon's rateLimit: seconds, or a number suffixed s, m or h. */
function rateLimitNs(value: unknown): bigint | undefined {
  const match = /^(\d{1,9})([smh]?)$/.exec(typeof value === 'number' ? String(value) : typeof value === 'string' ? value.trim() : '');
  if (!match || Number(match[1]) === 0) return undefined;
  const unit = match[2] === 'h' ? 3600n : match[2] === 'm' ? 60n : 1n;
  return BigInt(match[1]) * unit * 1_000_000_000n;
}

let host: Record<NamespaceName, number> | undefined;
/** The host's namespaces, read once ("host_ns" in matchNamespaces, isNamespaceCapability). */
function hostNs(): Record<NamespaceName, number> {
  host ??= hostNamespaces();
  return host;
}

/** A list of objects under `key` of a selector, at most `max` of them. */
function selectorList(sel: Json, key: string, field: string, max: number, problems: PolicyProblem[]): Json[] {
  const list = sel[key];
  if (list === undefined || list === null) return [];
  if (!Array.isArray(list) || !list.every(isMap)) return (problems.push({ field: `${field}.${key}`, reason: 'want a list of objects' }), []);
  if (list.length > max) return (problems.push({ field: `${field}.${key}`, reason: `at most ${max} entries` }), []);
  return list as Json[];
}

function compileNamespaces(sel: Json, field: string, out: CompiledSelector, problems: PolicyProblem[]): void {
  const seen = new Set<string>();
  selectorList(sel, 'matchNamespaces', field, POLICY_LIMITS.namespaces, problems).forEach((entry, i) => {
    const f = `${field}.matchNamespaces[${i}]`;
    unknownFields(entry, new Set(['namespace', 'operator', 'values']), f, problems);
    const ns = NAMESPACE_NAMES.indexOf(entry.namespace as (typeof NAMESPACE_NAMES)[number]);
    if (ns < 0) return void problems.push({ field: `${f}.namespace`, reason: `${JSON.stringify(entry.namespace)}: want one of ${NAMESPACE_NAMES.join(', ')}` });
    if (seen.has(NAMESPACE_NAMES[ns])) return void problems.push({ field: `${f}.namespace`, reason: `${NAMESPACE_NAMES[ns]} given twice` });
    seen.add(NAMESPACE_NAMES[ns]);
    const op = typeof entry.operator === 'string' ? IN_OPS[entry.operator] : undefined;
    if (op === undefined) return void problems.push({ field: `${f}.operator`, reason: `${JSON.stringify(entry.operator)}: want In or NotIn` });
    const values = Array.isArray(entry.values) ? entry.values : [];
    if (values.length === 0 || values.length > POLICY_LIMITS.namespaceValues) return void problems.push({ field: `${f}.values`, reason: `want 1 to ${POLICY_LIMITS.namespaceValues} namespace inode numbers or host_ns` });
    const inodes: number[] = [];
    values.forEach((value, j) => {
      if (value === 'host_ns') {
        const inum = hostNs()[NAMESPACES[ns]];
        if (!inum) return void problems.push({ field: `${f}.values[${j}]`, reason: `host_ns: the host's ${NAMESPACE_NAMES[ns]} namespace cannot be read here` });
        return void inodes.push(inum);
      }
      const n = parseInteger(value);
      if (n === undefined || n === 0n || n > 0xffffffffn) return void problems.push({ field: `${f}.values[${j}]`, reason: `${JSON.stringify(value)}: want a namespace inode number or host_ns` });
      inodes.push(Number(n));
    });
    out.namespaces.push({ ns, op, values: inodes });
  });
  const changes = selectorList(sel, 'matchNamespaceChanges', field, 1, problems)[0];
  if (changes) {
    const f = `${field}.matchNamespaceChanges[0]`;
    unknownFields(changes, new Set(['operator', 'values']), f, problems);
    const op = typeof changes.operator === 'string' ? IN_OPS[changes.operator] : undefined;
    if (op === undefined) return void problems.push({ field: `${f}.operator`, reason: `${JSON.stringify(changes.operator)}: want In or NotIn` });
    const values = Array.isArray(changes.values) ? changes.values : [];
    if (values.length === 0) return void problems.push({ field: `${f}.values`, reason: `want namespace names (${NAMESPACE_NAMES.join(', ')})` });
    let mask = 0;
    values.forEach((value, j) => {
      const ns = NAMESPACE_NAMES.indexOf(value as (typeof NAMESPACE_NAMES)[number]);
      if (ns < 0) problems.push({ field: `${f}.values[${j}]`, reason: `${JSON.stringify(value)}: want one of ${NAMESPACE_NAMES.join(', ')}` });
      else mask |= 1 << ns;
    });
    out.nsChangeOp = op;
    out.nsChangeMask = mask;
  }
}

function compileCapabilities(sel: Json, field: string, out: CompiledSelector, problems: PolicyProblem[]): void {
  const entries = [
    ...selectorList(sel, 'matchCapabilities', field, POLICY_LIMITS.capabilities, problems).map((entry, i) => ({ entry, f: `${field}.matchCapabilities[${i}]`, changes: false })),
    ...selectorList(sel, 'matchCapabilityChanges', field, POLICY_LIMITS.capabilities, problems).map((entry, i) => ({ entry, f: `${field}.matchCapabilityChanges[${i}]`, changes: true })),
  ];
  if (entries.length > POLICY_LIMITS.capabilities) return void problems.push({ field: `${field}.matchCapabilities`, reason: `at most ${POLICY_LIMITS.capabilities} matchCapabilities and matchCapabilityChanges entries together` });
  for (const { entry, f, changes } of entries) {
    unknownFields(entry, new Set(['type', 'operator', 'isNamespaceCapability', 'values']), f, problems);
    // Tetragon's default type is Effective.
    const type = entry.type === undefined ? 0 : typeof entry.type === 'string' ? CAPABILITY_TYPES[entry.type] : undefined;
    if (type === undefined) {
      problems.push({ field: `${f}.type`, reason: `${JSON.stringify(entry.type)}: want Effective, Inheritable or Permitted` });
      continue;
    }
    const op = typeof entry.operator === 'string' ? IN_OPS[entry.operator] : undefined;
    if (op === undefined) {
      problems.push({ field: `${f}.operator`, reason: `${JSON.stringify(entry.operator)}: want In or NotIn` });
      continue;
    }
    if (entry.isNamespaceCapability !== undefined && typeof entry.isNamespaceCapability !== 'boolean') problems.push({ field: `${f}.isNamespaceCapability`, reason: 'want true or false' });
    const values = Array.isArray(entry.values) ? entry.values : [];
    if (values.length === 0) {
      problems.push({ field: `${f}.values`, reason: 'want capability names (CAP_SYS_ADMIN, …)' });
      continue;
    }
    let mask = 0n;
    values.forEach((value, j) => {
      const bit = typeof value === 'string' ? CAPABILITIES.findIndex((name) => name === value || `CAP_${name}` === value) : -1;
      if (bit < 0) problems.push({ field: `${f}.values[${j}]`, reason: `${JSON.stringify(value)}: not a capability (want a name from linux/capability.h, e.g. CAP_NET_RAW)` });
      else mask |= 1n << BigInt(bit);
    });
    let userNs = 0;
    if (entry.isNamespaceCapability === true) {
      userNs = hostNs().user;
      if (!userNs) problems.push({ field: `${f}.isNamespaceCapability`, reason: "the host's user namespace cannot be read here" });
    }
    out.capabilities.push({ type, op, changes, userNs, mask });
  }
}

const LABEL_OPERATORS = new Set(['In', 'NotIn', 'Exists', 'DoesNotExist']);

/** A Kubernetes label selector (matchLabels, matchExpressions), checked whole; `keys`: the only keys it may name. */
function labelSelector(value: unknown, field: string, problems: PolicyProblem[], keys?: readonly string[]): Selector | undefined {
  const unknownKey = (key: string, f: string) => keys !== undefined && !keys.includes(key) && problems.push({ field: f, reason: `unknown key ${JSON.stringify(key)}: want ${keys.join(' or ')}` });
  if (!isMap(value)) return void problems.push({ field, reason: 'want a label selector (matchLabels, matchExpressions)' });
  unknownFields(value, new Set(['matchLabels', 'matchExpressions']), field, problems);
  const out: Selector = { matchLabels: {}, matchExpressions: [] };
  const labels = value.matchLabels ?? {};
  if (!isMap(labels)) problems.push({ field: `${field}.matchLabels`, reason: 'want a map of label values' });
  else
    for (const [key, v] of Object.entries(labels)) {
      if (typeof v !== 'string') problems.push({ field: `${field}.matchLabels.${key}`, reason: 'want a string' });
      else if (!unknownKey(key, `${field}.matchLabels.${key}`)) out.matchLabels[key] = v;
    }
  const expressions = value.matchExpressions ?? [];
  if (!Array.isArray(expressions)) problems.push({ field: `${field}.matchExpressions`, reason: 'want a list' });
  else
    expressions.forEach((item, i) => {
      const f = `${field}.matchExpressions[${i}]`;
      if (!isMap(item)) return void problems.push({ field: f, reason: 'want an object' });
      unknownFields(item, new Set(['key', 'operator', 'values']), f, problems);
      if (typeof item.key !== 'string' || !item.key) return void problems.push({ field: `${f}.key`, reason: 'want a label key' });
      if (unknownKey(item.key, `${f}.key`)) return;
      if (typeof item.operator !== 'string' || !LABEL_OPERATORS.has(item.operator)) return void problems.push({ field: `${f}.operator`, reason: `${JSON.stringify(item.operator)}: want In, NotIn, Exists or DoesNotExist` });
      const values = item.values ?? [];
      if (!Array.isArray(values) || !values.every((v) => typeof v === 'string')) return void problems.push({ field: `${f}.values`, reason: 'want a list of strings' });
      const needsValues = item.operator === 'In' || item.operator === 'NotIn';
      if (needsValues !== values.length > 0) return void problems.push({ field: `${f}.values`, reason: needsValues ? `${item.operator} wants values` : `${item.operator} takes no values` });
      out.matchExpressions.push({ key: item.key, operator: item.operator as SelectorRequirement['operator'], values: values as string[] });
    });
  return out;
}

function compileArgs(list: unknown, field: string, resolve: (index: number, type: string, f: string) => CompiledArg | undefined, problems: PolicyProblem[]): CompiledArg[] {
  if (list === undefined || list === null) return [];
  if (!Array.isArray(list)) return (problems.push({ field, reason: 'want a list' }), []);
  if (list.length > POLICY_LIMITS.args) return (problems.push({ field, reason: `at most ${POLICY_LIMITS.args} arguments` }), []);
  const out: CompiledArg[] = [];
  list.forEach((item, i) => {
    const f = `${field}[${i}]`;
    if (!isMap(item)) return void problems.push({ field: f, reason: 'want an object' });
    unknownFields(item, ARG_FIELDS, f, problems);
    for (const key of ['sizeArgIndex', 'maxData', 'returnCopy', 'resolve']) if (item[key] !== undefined && item[key] !== false) problems.push({ field: `${f}.${key}`, reason: 'not supported yet' });
    if (typeof item.index !== 'number' || !Number.isInteger(item.index) || item.index < 0) return void problems.push({ field: `${f}.index`, reason: 'want a non-negative integer' });
    if (typeof item.type !== 'string') return void problems.push({ field: `${f}.type`, reason: 'want a type' });
    if (out.some((a) => a.index === item.index)) return void problems.push({ field: `${f}.index`, reason: `index ${item.index} given twice` });
    const arg = resolve(item.index, item.type, f);
    if (arg) out.push({ ...arg, label: typeof item.label === 'string' ? item.label : undefined });
  });
  return out;
}

/** An argument of a syscall tracepoint record or of another tracepoint's field. */
function argOf(fields: TracepointField[], fieldIndex: number, type: string, userPointers: boolean, f: string, problems: PolicyProblem[]): CompiledArg | undefined {
  const tf = fields[fieldIndex];
  if (!tf) return void problems.push({ field: `${f}.index`, reason: `the record has no field ${fieldIndex}` });
  const int = INT_TYPES[type];
  if (int) {
    return { index: fieldIndex, kind: int.signed ? ArgType.INT : ArgType.UINT, offset: tf.offset, size: Math.min(int.size, tf.size), report: int.report };
  }
  if (type === 'string' || type === 'char_buf') {
    if (tf.decl.startsWith('__data_loc')) return { index: fieldIndex, kind: ArgType.DATA_LOC, offset: tf.offset, size: 4, report: 'string_arg' };
    if (!userPointers || tf.size !== 8) return void problems.push({ field: `${f}.type`, reason: `field ${tf.name} (${tf.decl}) is not a string this hook can read` });
    return { index: fieldIndex, kind: ArgType.STRING, offset: tf.offset, size: 8, report: type === 'char_buf' ? 'bytes_arg' : 'string_arg' };
  }
  if (type === 'sockaddr') {
    if (!userPointers || tf.size !== 8) return void problems.push({ field: `${f}.type`, reason: `field ${tf.name} is not a sockaddr pointer` });
    return { index: fieldIndex, kind: ArgType.SOCKADDR, offset: tf.offset, size: 8, report: 'sock_arg' };
  }
  problems.push({ field: `${f}.type`, reason: `${JSON.stringify(type)}: ${['file', 'path', 'sock', 'skb', 'cred', 'linux_binprm', 'dentry'].includes(type) ? 'a kernel object, which syscall and tracepoint records do not hold here (use string for paths)' : 'unknown or not supported type'}` });
  return undefined;
}

/**
 * Checks a policy document whole and compiles it for the generic program. Throws RuntimeError
 * ERR_RUNTIME_POLICY (details: every problem, by field) for a malformed policy, one needing hooks
 * this kernel lacks, or one using what Ciliate does not support yet: nothing is half-taken.
 *
 * @example
 * const policy = compileTracingPolicy(readFileSync('openat.yaml', 'utf8'));
 */
/**
 * A policy's pods, for both engines: a TracingPolicyNamespaced's namespace (which it must have)
 * and spec.podSelector; undefined when the policy is for every process on the node.
 */
export function readPolicyScope(doc: Json, problems: PolicyProblem[]): PolicyScope | undefined {
  const namespaced = doc.kind === 'TracingPolicyNamespaced';
  const metadata = isMap(doc.metadata) ? doc.metadata : {};
  const namespace = typeof metadata.namespace === 'string' ? metadata.namespace : undefined;
  if (namespaced && (!namespace || !DNS_SUBDOMAIN.test(namespace))) problems.push({ field: 'metadata.namespace', reason: 'a TracingPolicyNamespaced needs its namespace' });
  const spec = isMap(doc.spec) ? doc.spec : {};
  const podSelector = spec.podSelector === undefined || spec.podSelector === null ? undefined : labelSelector(spec.podSelector, 'spec.podSelector', problems);
  const containerSelector = spec.containerSelector === undefined || spec.containerSelector === null ? undefined : labelSelector(spec.containerSelector, 'spec.containerSelector', problems, CONTAINER_SELECTOR_KEYS);
  if (!namespaced && !podSelector && !containerSelector) return undefined;
  return { namespace: namespaced ? namespace : undefined, podSelector, ...(containerSelector ? { containerSelector } : {}) };
}

export function compileTracingPolicy(text: string, options: CompileOptions = {}): CompiledTracingPolicy {
  let doc: unknown;
  try {
    doc = parse(text);
  } catch (error) {
    throw new RuntimeError('ERR_RUNTIME_POLICY', `tracing policy: not YAML: ${(error as Error).message}`, { details: [{ field: '', reason: 'not YAML' }] });
  }
  const problems: PolicyProblem[] = [];
  if (!isMap(doc)) throw new RuntimeError('ERR_RUNTIME_POLICY', 'tracing policy: want a YAML object', { details: [{ field: '', reason: 'want an object' }] });
  unknownFields(doc, new Set(['apiVersion', 'kind', 'metadata', 'spec']), '', problems);
  problems.forEach((p) => (p.field = p.field.replace(/^\./, '')));
  if (doc.apiVersion !== 'cilium.io/v1alpha1') problems.push({ field: 'apiVersion', reason: `want cilium.io/v1alpha1, got ${JSON.stringify(doc.apiVersion)}` });
  if (!KINDS.has(doc.kind as string)) problems.push({ field: 'kind', reason: `want TracingPolicy or TracingPolicyNamespaced, got ${JSON.stringify(doc.kind)}` });
  const metadata = isMap(doc.metadata) ? doc.metadata : {};
  const name = typeof metadata.name === 'string' ? metadata.name : '';
  if (!DNS_SUBDOMAIN.test(name) || name.length > 253) problems.push({ field: 'metadata.name', reason: `want a DNS subdomain, got ${JSON.stringify(metadata.name)}` });
  const namespace = typeof metadata.namespace === 'string' ? metadata.namespace : undefined;
  const scope = readPolicyScope(doc, problems);
  const spec = doc.spec;
  const hooks: CompiledHook[] = [];
  const selectorsOf = (hook: Json, field: string, args: CompiledArg[]): CompiledSelector[] => {
    const list = hook.selectors;
    if (list === undefined || list === null) return [];
    if (!Array.isArray(list)) return (problems.push({ field: `${field}.selectors`, reason: 'want a list' }), []);
    if (list.length > POLICY_LIMITS.selectors) return (problems.push({ field: `${field}.selectors`, reason: `at most ${POLICY_LIMITS.selectors} selectors` }), []);
    return list.map((sel, i) => (isMap(sel) ? compileSelector(sel, `${field}.selectors[${i}]`, args, problems) : (problems.push({ field: `${field}.selectors[${i}]`, reason: 'want an object' }), undefined))).filter((s): s is CompiledSelector => s !== undefined);
  };
  const common = (hook: Json, field: string) => {
    if (hook.message !== undefined && typeof hook.message !== 'string') problems.push({ field: `${field}.message`, reason: 'want a string' });
    if (hook.tags !== undefined && !(Array.isArray(hook.tags) && hook.tags.every((t) => typeof t === 'string'))) problems.push({ field: `${field}.tags`, reason: 'want a list of strings' });
    return { message: typeof hook.message === 'string' ? hook.message : undefined, tags: Array.isArray(hook.tags) ? (hook.tags as string[]) : undefined };
  };
  if (!isMap(spec)) {
    problems.push({ field: 'spec', reason: 'want an object' });
  } else {
    unknownFields(spec, SPEC_FIELDS, 'spec', problems);
    for (const key of ['nodeSelector', 'lists', 'enforcers', 'selectorsMacros', 'loader']) {
      if (spec[key] !== undefined && spec[key] !== null && SPEC_FIELDS.has(key)) problems.push({ field: `spec.${key}`, reason: 'not supported yet' });
    }
    if (spec.hostSelector !== undefined && spec.hostSelector !== null && !(isMap(spec.hostSelector) && Object.keys(spec.hostSelector).length === 0)) problems.push({ field: 'spec.hostSelector', reason: 'want null or {}' });
    checkList(spec, 'kprobes', problems, (kprobe, field) => {
      unknownFields(kprobe, KPROBE_FIELDS, field, problems);
      if (typeof kprobe.call !== 'string' || !kprobe.call) return void problems.push({ field: `${field}.call`, reason: 'want the function to hook' });
      const syscall = kprobe.syscall === true || /^(__x64_|__arm64_|__ia32_)?sys_/.test(kprobe.call);
      if (!syscall) {
        if (!kernelHas('kprobes')) problems.push({ field: `${field}.call`, reason: `${JSON.stringify(kprobe.call)} ${MISSING_HOOK_REASON}` });
        else problems.push({ field: `${field}.call`, reason: `${JSON.stringify(kprobe.call)}: kprobes on kernel functions are not supported yet` });
        return;
      }
      for (const key of ['return', 'returnArg', 'returnArgAction', 'data']) if (kprobe[key] !== undefined && kprobe[key] !== false) problems.push({ field: `${field}.${key}`, reason: 'not supported yet on syscall hooks' });
      if (kprobe.ignore !== undefined) problems.push({ field: `${field}.ignore`, reason: 'not supported yet' });
      const sys = syscallName(kprobe.call);
      if (!/^\w+$/.test(sys) || !tracefsEvent('syscalls', `sys_enter_${sys}`)) return void problems.push({ field: `${field}.call`, reason: `${JSON.stringify(kprobe.call)}: no syscall ${sys} (syscalls/sys_enter_${sys}) in this kernel` });
      const fields = tracepointFields('syscalls', `sys_enter_${sys}`);
      // The record's fields: 4 common ones, __syscall_nr, then the syscall's arguments in order.
      const argBase = fields.findIndex((f) => f.name === '__syscall_nr') + 1;
      const args = compileArgs(kprobe.args, `${field}.args`, (index, type, f) => {
        if (index >= fields.length - argBase) return void problems.push({ field: `${f}.index`, reason: `${sys} has ${fields.length - argBase} arguments` });
        const arg = argOf(fields, argBase + index, type, true, f, problems);
        return arg && { ...arg, index, end: sockaddrEnd(sys) };
      }, problems);
      hooks.push({ field, type: 'kprobe', group: 'syscalls', name: `sys_enter_${sys}`, functionName: `__x64_sys_${sys}`, args, selectors: selectorsOf(kprobe, field, args), ...common(kprobe, field) });
    });
    checkList(spec, 'fentries', problems, (_fentry, field) => {
      problems.push({ field, reason: kernelHas('fentry') ? 'fentries are not supported yet' : MISSING_HOOK_REASON });
    });
    checkList(spec, 'lsmhooks', problems, (_hook, field) => {
      problems.push({ field, reason: kernelHas('bpf_lsm') ? 'LSM hooks are not supported yet' : MISSING_HOOK_REASON });
    });
    checkList(spec, 'tracepoints', problems, (tracepoint, field) => {
      unknownFields(tracepoint, TRACEPOINT_FIELDS, field, problems);
      const { subsystem, event } = tracepoint;
      if (typeof subsystem !== 'string' || typeof event !== 'string' || !subsystem || !event) return void problems.push({ field, reason: 'want subsystem and event' });
      if (!/^\w+$/.test(subsystem) || !/^\w+$/.test(event) || !tracefsEvent(subsystem, event)) return void problems.push({ field, reason: `no tracepoint ${subsystem}/${event} in this kernel` });
      if (tracepoint.raw === true) return void problems.push({ field: `${field}.raw`, reason: 'not supported yet' });
      const fields = tracepointFields(subsystem, event);
      const end = sockaddrEnd(event.replace(/^sys_(enter|exit)_/, ''));
      const args = compileArgs(tracepoint.args, `${field}.args`, (index, type, f) => {
        const arg = argOf(fields, index, type, subsystem === 'syscalls' || subsystem === 'raw_syscalls', f, problems);
        return arg && { ...arg, end };
      }, problems);
      hooks.push({ field, type: 'tracepoint', group: subsystem, name: event, args, selectors: selectorsOf(tracepoint, field, args), ...common(tracepoint, field) });
    });
    for (const key of ['uprobes', 'usdts']) checkList(spec, key, problems, (_item, field) => problems.push({ field, reason: `${key} are not supported yet` }));
    if (problems.length === 0 && hooks.length === 0) problems.push({ field: 'spec', reason: 'no hooks: want kprobes (syscalls) or tracepoints' });
    if (hooks.length > POLICY_LIMITS.hooks) problems.push({ field: 'spec', reason: `at most ${POLICY_LIMITS.hooks} hooks` });
  }
  // Read even when loading says the mode: a malformed option refuses the policy all the same.
  const mode = policyMode(isMap(spec) ? spec.options : undefined, options.mode, problems);
  if (problems.length > 0) {
    throw new RuntimeError('ERR_RUNTIME_POLICY', `tracing policy ${name || '(unnamed)'}: ${problems.map((p) => `${p.field}: ${p.reason}`).join('; ')}`, { details: problems });
  }
  const inMode = hooksInMode(hooks, mode, 'POST');
  return { header: { kind: doc.kind as TracingPolicyHeader['kind'], name, namespace, mode, enforces: inMode.enforces }, hooks: inMode.hooks, scope, text };
}
