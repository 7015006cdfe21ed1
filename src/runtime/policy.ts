/**
 * Loaded TracingPolicies: each hook of a compiled policy (tracing-policy.ts) takes a slot of the
 * generic program's maps (bpf/runtime_policy.h) and one attachment of that program to its
 * tracepoint, with the slot as attach cookie. A policy is loaded whole or not at all (a failure
 * undoes what was written), and deleting it detaches its links first, then clears its slots and
 * strings: no program of it keeps running and no selector stays. Nothing is pinned, so nothing
 * survives the agent either.
 * @module
 */
import { readlinkSync, readdirSync } from 'node:fs';
import { UpdateFlag, array, attachTracepoint, encode, pad, possibleCpus, struct, u16, u32, u64, u8, type BpfMap, type BpfObject, type Link } from '../ebpf/index.ts';
import { RuntimeError } from './errors.ts';
import type { Prefix } from '../net/index.ts';
import { selectorMatches } from '../policy/index.ts';
import { NAMESPACES } from './events.ts';
import type { ProcessSnapshot } from './process-cache.ts';
import { Action, POLICY_LIMITS, STRING_KEY_BYTES, compileTracingPolicy, type CompiledHook, type CompiledStrings, type CompiledTracingPolicy, type CompileOptions, type PolicyScope } from './tracing-policy.ts';
import { modeStatus, type PolicyModeStatus } from './policy-mode.ts';

// ---- codecs of bpf/runtime.h's policy structs (events.test.ts checks them against the BTF) ----


export const rtArgSpec = struct('rt_arg_spec', { offset: u16, type: u8, size: u8 });
export const rtArgFilter = struct('rt_arg_filter', { arg: u8, op: u8, nvalues: u8, _pad: pad(1), key: u32, values: array(u64, POLICY_LIMITS.values) });
export const rtNsFilter = struct('rt_ns_filter', { ns: u8, op: u8, nvalues: u8, _pad: pad(1), values: array(u32, POLICY_LIMITS.namespaceValues) });
export const rtCapFilter = struct('rt_cap_filter', { type: u8, op: u8, changes: u8, _pad: pad(1), user_ns: u32, mask: u64 });
export const rtSelector = struct('rt_selector', {
  nargs: u8,
  bin_op: u8,
  pid_op: u8,
  npids: u8,
  action: u8,
  nns: u8,
  ncaps: u8,
  follow: u8,
  signal: u32,
  bin_key: u32,
  nschange_op: u8,
  rate_scope: u8,
  nschange_mask: u16,
  pid_flags: u8,
  _pad: pad(3),
  rate_ns: u64,
  pids: array(u32, POLICY_LIMITS.pids),
  ns: array(rtNsFilter, POLICY_LIMITS.namespaces),
  caps: array(rtCapFilter, POLICY_LIMITS.capabilities),
  args: array(rtArgFilter, POLICY_LIMITS.matchArgs),
});
export const rtHook = struct('rt_hook', {
  policy_id: u32,
  nargs: u8,
  nselectors: u8,
  scoped: u8,
  containers: u8,
  args: array(rtArgSpec, POLICY_LIMITS.args),
  selectors: array(rtSelector, POLICY_LIMITS.selectors),
});
export const TP_HOOKS = 8; // RT_POLICY_TP_HOOKS
const TRACEPOINTS = 64; // RT_POLICY_TPS
export const rtTp = struct('rt_tp', { nhooks: u32, slots: array(u16, TP_HOOKS) });
export const rtHookStats = struct('rt_hook_stats', { runs: u64, matched: u64, posted: u64, signalled: u64, ratelimited: u64 });
export const rtPodKey = struct('rt_pod_key', { policy_id: u32, netns: u32 });
export const rtCgroupKey = struct('rt_cgroup_key', { cgroup_id: u64, policy_id: u32, _pad: pad(4) });
export const rtProc = struct('rt_proc', { follow: u64, caps: array(u64, 3), ns: array(u32, 10), pod_netns: u32, _pad: pad(4) });
export const rtConfig = struct('rt_config', { host_netns: u32, _pad: pad(4) });
export const rtRateKey = struct('rt_rate_key', { slot: u32, selector: u32, who: u32, policy_id: u32, args: array(u8, POLICY_LIMITS.args * 40) });
/** bpf/string_key.h: a key of both engines' string tries (and a process's binary in runtime_binaries). */
export const stringKeyLayout = struct('string_key', { prefixlen: u32, filter: u32, data: array(u8, STRING_KEY_BYTES) });
export const rtFollowSet = struct('rt_follow_set', { active: u64, keys: array(u32, POLICY_LIMITS.followChildren) });

const EMPTY_FILTER = { arg: 0, op: 0, nvalues: 0, key: 0, values: Array<bigint>(POLICY_LIMITS.values).fill(0n) };
const EMPTY_NS_FILTER = { ns: 0, op: 0, nvalues: 0, values: Array<number>(POLICY_LIMITS.namespaceValues).fill(0) };
const EMPTY_CAP_FILTER = { type: 0, op: 0, changes: 0, user_ns: 0, mask: 0n };
const EMPTY_SELECTOR = {
  nargs: 0, bin_op: 0, pid_op: 0, npids: 0, action: 0, nns: 0, ncaps: 0, follow: 0, signal: 0, bin_key: 0, nschange_op: 0, rate_scope: 0, nschange_mask: 0, pid_flags: 0, rate_ns: 0n,
  pids: Array<number>(POLICY_LIMITS.pids).fill(0), ns: Array(POLICY_LIMITS.namespaces).fill(EMPTY_NS_FILTER), caps: Array(POLICY_LIMITS.capabilities).fill(EMPTY_CAP_FILTER), args: Array(POLICY_LIMITS.matchArgs).fill(EMPTY_FILTER),
};
const EMPTY_HOOK = encode(rtHook, { policy_id: 0, nargs: 0, nselectors: 0, scoped: 0, containers: 0, args: Array(POLICY_LIMITS.args).fill({ offset: 0, type: 0, size: 0 }), selectors: Array(POLICY_LIMITS.selectors).fill(EMPTY_SELECTOR) });

/** `list` filled up to `length` with `fill`: a fixed-size C array's elements. */
export const padded = <T>(list: T[], length: number, fill: T): T[] => [...list, ...Array<T>(Math.max(0, length - list.length)).fill(fill)];

/** The LPM trie key of a string under `filter` (bpf/string_key.h struct string_key: stringKeyLayout). */
export function stringKey(filter: number, bytes: Buffer, bits: number): Buffer {
  const key = Buffer.alloc(stringKeyLayout.size);
  key.writeUInt32LE(32 + bits, 0);
  key.writeUInt32LE(filter >>> 0, 4);
  bytes.copy(key, 8, 0, STRING_KEY_BYTES);
  return key;
}

/** Keys of a filter's strings: Equal values with their NUL, Prefix without, Postfix reversed. */
export function stringKeys(filter: number, strings: CompiledStrings): Buffer[] {
  return strings.values.map((value) => {
    const bytes = Buffer.from(value);
    if (strings.kind === 'equal') return stringKey(filter, Buffer.concat([bytes, Buffer.alloc(1)]), 8 * (bytes.length + 1));
    if (strings.kind === 'prefix') return stringKey(filter, bytes, 8 * bytes.length);
    return stringKey((filter | 0x8000_0000) >>> 0, Buffer.from(bytes.reverse()), 8 * bytes.length);
  });
}

/** Keys of a filter's CIDRs: a family byte (4, 6) and the network, `bits` of it a prefix. */
function prefixKeys(filter: number, prefixes: Prefix[]): Buffer[] {
  return prefixes.map((prefix) => stringKey(filter, Buffer.concat([Buffer.of(prefix.addr.family), prefix.addr.toBytes()]), 8 + prefix.bits));
}

/** A filter's key: the slot, the selector and the matchArgs entry (15: matchBinaries). */
const filterKey = (slot: number, selector: number, entry: number) => (slot << 8) | (selector << 4) | entry;

// ---- the loaded policies ----

export interface LoadedHook {
  slot: number;
  hook: CompiledHook;
}

/** A pod as scoped policies select it: its network namespace's inode, namespace and labels. */
export interface ScopePod {
  netns: number;
  namespace: string;
  labels: Record<string, string>;
  /** What containerSelector chooses from; none known: it chooses none. */
  containers?: ScopeContainer[];
}

/** A container of a pod as containerSelector sees it, and the cgroups v2 (ids) its processes run in. */
export interface ScopeContainer {
  id: string;
  name?: string;
  image?: string;
  /** Empty until the container's cgroup is found: then it is selected by nothing (fail closed). */
  cgroups: bigint[];
}

/**
 * Writes to `map` the difference between the network namespaces a scoped policy has there
 * (`have`, kept up to date) and those of the `pods` its scope selects, each under `key(netns)`.
 */
export function syncScopedPods(map: BpfMap, scope: PolicyScope, pods: readonly ScopePod[], have: Set<number>, key: (netns: number) => Buffer): void {
  syncKeys(map, have, new Set(pods.filter((pod) => pod.netns && scopeSelects(scope, pod)).map((pod) => pod.netns)), key);
}

/** Writes what `want` has and `have` lacks, deletes what `have` has and `want` lacks; `have` follows. */
function syncKeys<T>(map: BpfMap, have: Set<T>, want: ReadonlySet<T>, key: (item: T) => Buffer): void {
  for (const item of want) {
    if (have.has(item)) continue;
    map.update(key(item), Buffer.from([1]));
    have.add(item);
  }
  for (const item of [...have]) {
    if (want.has(item)) continue;
    map.delete(key(item));
    have.delete(item);
  }
}

/**
 * Writes to `map` the difference between the cgroups a containerSelector policy has there (`have`)
 * and those of the containers it selects in the pods its scope selects, each under `key(cgroup)`.
 */
export function syncScopedCgroups(map: BpfMap, scope: PolicyScope, pods: readonly ScopePod[], have: Set<bigint>, key: (cgroup: bigint) => Buffer): void {
  const selector = scope.containerSelector;
  const want = new Set<bigint>();
  if (selector) {
    for (const pod of pods) {
      if (!pod.netns || !scopeSelects(scope, pod)) continue;
      for (const container of pod.containers ?? []) if (selectorMatches(selector, containerLabels(container))) for (const cgroup of container.cgroups) want.add(cgroup);
    }
  }
  syncKeys(map, have, want, key);
}

/** What a containerSelector's keys (CONTAINER_SELECTOR_KEYS) read of a container: its name, its image's repository. */
export function containerLabels(container: Pick<ScopeContainer, 'name' | 'image'>): Record<string, string> {
  const labels: Record<string, string> = {};
  if (container.name) labels.name = container.name;
  if (container.image) labels.repo = imageRepository(container.image);
  return labels;
}

/** An image reference without its tag and digest: `docker.io/library/nginx:1.27@sha256:…` → `docker.io/library/nginx`. */
export function imageRepository(image: string): string {
  const name = image.split('@', 1)[0];
  const slash = name.lastIndexOf('/');
  const colon = name.lastIndexOf(':');
  // A colon before the last slash is a registry's port (localhost:5000/app), not a tag.
  return colon > slash ? name.slice(0, colon) : name;
}

/** Whether a scoped policy applies to a pod (Tetragon's namespace label is the pod's namespace). */
export function scopeSelects(scope: PolicyScope, pod: ScopePod): boolean {
  if (scope.namespace !== undefined && pod.namespace !== scope.namespace) return false;
  return !scope.podSelector || selectorMatches(scope.podSelector, { ...pod.labels, 'k8s:io.kubernetes.pod.namespace': pod.namespace });
}

export interface LoadedPolicy {
  id: number;
  policy: CompiledTracingPolicy;
  hooks: LoadedHook[];
  /** followChildren marks (bits of rt_proc.follow) by `slot/selector`. */
  follow: Map<string, number>;
  /** The network namespaces in runtime_policy_pods for a scoped policy. */
  pods: Set<number>;
  /** The cgroups in runtime_policy_cgroups for a containerSelector. */
  cgroups: Set<bigint>;
  /** Slots of this policy's hooks that run now (listed on their tracepoint). */
  running: number[];
  strings: Buffer[];
  createdAt: Date;
}

/** One attachment of the generic program: a tracepoint and the hooks on it, in order. */
interface Attachment {
  index: number;
  /** The entry tracepoint's link, and a syscall's exit (where unreadable strings are decided). */
  links: Link[];
  slots: number[];
}

/** The cookie of a syscall's exit attachment: the tracepoint index with this bit (RT_TP_EXIT). */
const EXIT_COOKIE = 0x8000_0000n;

export interface PolicyStats {
  /** Calls the hooks saw. */
  runs: bigint;
  /** Matched Post calls a rateLimit kept in the kernel. */
  ratelimited: bigint;
  /** Calls a selector matched (all, without selectors). */
  matched: bigint;
  /** Events that reached user space. */
  posted: bigint;
  /** Signals sent (Sigkill, Signal). */
  signalled: bigint;
}

export interface PolicyStatus {
  id: number;
  name: string;
  namespace?: string;
  kind: CompiledTracingPolicy['header']['kind'];
  /** Each hook as `syscalls/sys_enter_openat` (what it is attached to). */
  sensors: string[];
  stats: PolicyStats;
  createdAt: string;
  /** enforce, monitor (enforcing actions elided), or monitor_only (it has none). */
  mode: PolicyModeStatus;
  /** Loaded in the kernel; a disabled policy stays listed with its text, and nothing of it runs. */
  enabled: boolean;
}

export class PolicyManager {
  readonly #object: BpfObject;
  readonly #byName = new Map<string, LoadedPolicy>();
  readonly #bySlot = new Map<number, LoadedHook & { policy: LoadedPolicy }>();
  readonly #attachments = new Map<string, Attachment>();
  /** followChildren marks in use (bits of rt_proc.follow) and the filter key each stands for. */
  readonly #followKeys = new Map<number, number>();
  #pods: ScopePod[] = [];
  #nextId = 1;

  constructor(object: BpfObject) {
    this.#object = object;
  }

  /** Whether a policy of this name is loaded; checked before anything of a new policy reaches the kernel. */
  protected nameTaken(name: string): boolean {
    return this.#byName.has(name);
  }

  /** Checks, compiles and loads a policy; throws ERR_RUNTIME_POLICY (every problem by field). */
  add(text: string, options: CompileOptions = {}): PolicyStatus {
    const policy = compileTracingPolicy(text, options);
    const name = policy.header.name;
    if (this.nameTaken(name)) throw alreadyLoaded(name);
    const free: number[] = [];
    for (let slot = 0; slot < POLICY_LIMITS.hooks && free.length < policy.hooks.length; slot++) if (!this.#bySlot.has(slot)) free.push(slot);
    if (free.length < policy.hooks.length) throw new RuntimeError('ERR_RUNTIME_POLICY', `tracing policy ${name}: ${policy.hooks.length} hooks, ${free.length} of ${POLICY_LIMITS.hooks} slots free`, { details: [{ field: 'spec', reason: 'too many hooks loaded' }] });
    const loaded: LoadedPolicy = { id: this.#nextId++, policy, hooks: policy.hooks.map((hook, i) => ({ slot: free[i], hook })), follow: new Map(), pods: new Set(), cgroups: new Set(), running: [], strings: [], createdAt: new Date() };
    const wanted = loaded.hooks.flatMap(({ slot, hook }) => hook.selectors.flatMap((sel, s) => (sel.followChildren ? [`${slot}/${s}`] : [])));
    const freeBits = Array.from({ length: POLICY_LIMITS.followChildren }, (_, bit) => bit).filter((bit) => !this.#followKeys.has(bit));
    if (wanted.length > freeBits.length) throw new RuntimeError('ERR_RUNTIME_POLICY', `tracing policy ${name}: ${wanted.length} matchBinaries with followChildren, ${freeBits.length} of ${POLICY_LIMITS.followChildren} free`, { details: [{ field: 'spec', reason: `at most ${POLICY_LIMITS.followChildren} followChildren over all policies` }] });
    wanted.forEach((where, i) => loaded.follow.set(where, freeBits[i]));
    const hooks = this.#object.map('runtime_policy_hooks');
    const strings = this.#object.map('runtime_policy_strings');
    const stats = this.#object.map('runtime_policy_stats');
    try {
      for (const { slot, hook } of loaded.hooks) {
        const key = u32Key(slot);
        stats.updatePerCpu(key, Array(possibleCpus()).fill(Buffer.alloc(rtHookStats.size)));
        for (const buffer of this.#hookStrings(slot, hook)) {
          strings.update(buffer, Buffer.from([1]));
          loaded.strings.push(buffer);
        }
        hooks.update(key, this.#hookValue(loaded, slot, hook));
      }
      this.#writeFollow(loaded, true);
      if (policy.scope) this.#writePods(loaded);
      // Last: the hooks run from here on, each with its selectors already in place.
      for (const { slot, hook } of loaded.hooks) {
        this.#run(hook, slot);
        loaded.running.push(slot);
      }
    } catch (error) {
      this.#unload(loaded);
      throw RuntimeError.is(error) ? error : new RuntimeError('ERR_RUNTIME_POLICY', `tracing policy ${name}: loading failed, nothing of it stays: ${(error as Error).message}`, { cause: error, details: [{ field: 'spec', reason: (error as Error).message }] });
    }
    this.#byName.set(name, loaded);
    for (const hook of loaded.hooks) this.#bySlot.set(hook.slot, { ...hook, policy: loaded });
    return this.#status(loaded);
  }

  /** Unloads a policy; throws ERR_RUNTIME_POLICY_NOT_FOUND when none has that name. */
  delete(name: string): void {
    const loaded = this.#byName.get(name);
    if (!loaded) throw new RuntimeError('ERR_RUNTIME_POLICY_NOT_FOUND', `tracing policy ${JSON.stringify(name)} not found`);
    this.#unload(loaded);
    this.#byName.delete(name);
    for (const hook of loaded.hooks) this.#bySlot.delete(hook.slot);
  }

  list(): PolicyStatus[] {
    return [...this.#byName.values()].map((p) => this.#status(p));
  }

  get(name: string): PolicyStatus | undefined {
    const loaded = this.#byName.get(name);
    return loaded && this.#status(loaded);
  }

  /** The policy and hook an event came from; undefined when that policy is gone (or replaced). */
  hookOf(slot: number, policyId: number): { policy: CompiledTracingPolicy; hook: CompiledHook } | undefined {
    const entry = this.#bySlot.get(slot);
    return entry && entry.policy.id === policyId ? { policy: entry.policy.policy, hook: entry.hook } : undefined;
  }

  /** The kernel's id of the generic program (to find its attachments with bpftool). */
  programId(): number {
    return this.#object.program('runtime_policy').info().id;
  }

  /**
   * What the kernel holds of policies, read back from the maps (not from this manager's
   * bookkeeping): string selector entries, and hook slots with a policy in them.
   */
  kernelState(): { strings: number; hooks: number; pods: number; cgroups: number; follow: number; rate: number } {
    let strings = 0;
    for (const _key of this.#object.map('runtime_policy_strings').keys()) strings++;
    let pods = 0;
    for (const _key of this.#object.map('runtime_policy_pods').keys()) pods++;
    let cgroups = 0;
    for (const _key of this.#object.map('runtime_policy_cgroups').keys()) cgroups++;
    let rate = 0;
    for (const _key of this.#object.map('runtime_policy_rate').keys()) rate++;
    const set = this.#object.map('runtime_policy_follow').lookup(u32Key(0)) as Buffer | undefined;
    let follow = 0;
    for (let active = set ? set.readBigUInt64LE(0) : 0n; active; active >>= 1n) follow += Number(active & 1n);
    let hooks = 0;
    const map = this.#object.map('runtime_policy_hooks');
    for (let slot = 0; slot < POLICY_LIMITS.hooks; slot++) if ((map.lookup(u32Key(slot)) as Buffer | undefined)?.readUInt32LE(0)) hooks++;
    return { strings, hooks, pods, cgroups, follow, rate };
  }

  /**
   * The pods scoped policies choose from (the agent's endpoints); each scoped policy's network
   * namespaces in the kernel follow, written as differences.
   */
  setPods(pods: ScopePod[]): void {
    this.#pods = pods;
    for (const loaded of this.#byName.values()) if (loaded.policy.scope) this.#writePods(loaded);
  }

  /** The network namespaces a loaded policy applies to in the kernel (undefined: not scoped). */
  podsOf(name: string): number[] | undefined {
    const loaded = this.#byName.get(name);
    return loaded?.policy.scope ? [...loaded.pods].sort((a, b) => a - b) : undefined;
  }

  /** The container cgroups a loaded policy applies to in the kernel (undefined: no containerSelector). */
  cgroupsOf(name: string): bigint[] | undefined {
    const loaded = this.#byName.get(name);
    return loaded?.policy.scope?.containerSelector ? [...loaded.cgroups].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)) : undefined;
  }

  /** Unloads every policy (the agent's stop). */
  close(): void {
    for (const name of [...this.#byName.keys()]) this.delete(name);
  }

  #status(loaded: LoadedPolicy): PolicyStatus {
    const total: PolicyStats = { runs: 0n, matched: 0n, posted: 0n, signalled: 0n, ratelimited: 0n };
    const stats = this.#object.map('runtime_policy_stats');
    for (const { slot } of loaded.hooks) {
      for (const cpu of stats.lookupPerCpu(u32Key(slot)) ?? []) {
        const s = rtHookStats.decode(cpu as Buffer, 0);
        total.runs += s.runs;
        total.matched += s.matched;
        total.posted += s.posted;
        total.signalled += s.signalled;
        total.ratelimited += s.ratelimited;
      }
    }
    const { header } = loaded.policy;
    return { id: loaded.id, name: header.name, namespace: header.namespace, kind: header.kind, sensors: loaded.hooks.map(({ hook }) => `${hook.group}/${hook.name}`), stats: total, createdAt: loaded.createdAt.toISOString(), mode: modeStatus(header.mode, header.enforces), enabled: true };
  }

  /** Lists a hook on its tracepoint, attaching the program to it when it is the first. */
  #run(hook: CompiledHook, slot: number): void {
    const where = `${hook.group}/${hook.name}`;
    let attachment = this.#attachments.get(where);
    if (attachment && attachment.slots.length >= TP_HOOKS) throw new RuntimeError('ERR_RUNTIME_POLICY', `${where}: already ${TP_HOOKS} hooks on it (the most one tracepoint takes)`, { details: [{ field: hook.field, reason: `${TP_HOOKS} hooks already on ${where}` }] });
    const tps = this.#object.map('runtime_policy_tps');
    if (!attachment) {
      const used = new Set([...this.#attachments.values()].map((a) => a.index));
      let index = 0;
      while (used.has(index)) index++;
      if (index >= TRACEPOINTS) throw new RuntimeError('ERR_RUNTIME_POLICY', `${where}: hooks on ${TRACEPOINTS} tracepoints already`, { details: [{ field: hook.field, reason: `${TRACEPOINTS} tracepoints already hooked` }] });
      tps.update(u32Key(index), encode(rtTp, { nhooks: 0, slots: Array(TP_HOOKS).fill(0) }));
      const program = this.#object.program('runtime_policy');
      const links = [attachTracepoint(program, { group: hook.group, name: hook.name, cookie: BigInt(index) })];
      if (hook.group === 'syscalls' && hook.name.startsWith('sys_enter_')) {
        try {
          links.push(attachTracepoint(program, { group: 'syscalls', name: hook.name.replace('sys_enter_', 'sys_exit_'), cookie: BigInt(index) | EXIT_COOKIE }));
        } catch (error) {
          links[0].close();
          throw error;
        }
      }
      attachment = { index, links, slots: [] };
      this.#attachments.set(where, attachment);
    }
    attachment.slots.push(slot);
    tps.update(u32Key(attachment.index), encode(rtTp, { nhooks: attachment.slots.length, slots: padded(attachment.slots, TP_HOOKS, 0) }));
  }

  /** Takes a hook off its tracepoint; the last one there detaches the program. */
  #stop(hook: CompiledHook, slot: number): void {
    const where = `${hook.group}/${hook.name}`;
    const attachment = this.#attachments.get(where);
    if (!attachment) return;
    attachment.slots = attachment.slots.filter((s) => s !== slot);
    const tps = this.#object.map('runtime_policy_tps');
    tps.update(u32Key(attachment.index), encode(rtTp, { nhooks: attachment.slots.length, slots: padded(attachment.slots, TP_HOOKS, 0) }));
    if (attachment.slots.length === 0) {
      for (const link of attachment.links) link.close();
      this.#attachments.delete(where);
    }
  }

  /** Off the tracepoints first, so no call runs the policy's hooks before its selectors go. */
  #unload(loaded: LoadedPolicy): void {
    for (const { slot, hook } of loaded.hooks) if (loaded.running.includes(slot)) this.#stop(hook, slot);
    loaded.running = [];
    const hooks = this.#object.map('runtime_policy_hooks');
    for (const { slot } of loaded.hooks) hooks.update(u32Key(slot), EMPTY_HOOK);
    const strings = this.#object.map('runtime_policy_strings');
    for (const key of loaded.strings.splice(0)) strings.delete(key);
    this.#writeFollow(loaded, false);
    // rateLimit's memory of the policy's posts (an LRU would forget them in time; we do at once).
    const rate = this.#object.map('runtime_policy_rate');
    for (const key of [...rate.keys()]) if (rtRateKey.decode(key as Buffer, 0).policy_id === loaded.id) rate.delete(key as Buffer);
    const pods = this.#object.map('runtime_policy_pods');
    for (const netns of loaded.pods) pods.delete(encode(rtPodKey, { policy_id: loaded.id, netns }));
    loaded.pods.clear();
    const cgroups = this.#object.map('runtime_policy_cgroups');
    for (const cgroup of loaded.cgroups) cgroups.delete(encode(rtCgroupKey, { cgroup_id: cgroup, policy_id: loaded.id }));
    loaded.cgroups.clear();
  }

  /**
   * Adds (or takes out) a policy's followChildren marks in the set every exec reads. Taken out, a
   * mark is also cleared from every process that carries it, so the next policy to get it starts
   * from no process.
   */
  #writeFollow(loaded: LoadedPolicy, on: boolean): void {
    if (loaded.follow.size === 0) return;
    for (const [where, bit] of loaded.follow) {
      const [slot, selector] = where.split('/').map(Number);
      if (on) this.#followKeys.set(bit, filterKey(slot, selector, 15));
      else this.#followKeys.delete(bit);
    }
    const keys = Array<number>(POLICY_LIMITS.followChildren).fill(0);
    let active = 0n;
    for (const [bit, key] of this.#followKeys) {
      keys[bit] = key;
      active |= 1n << BigInt(bit);
    }
    this.#object.map('runtime_policy_follow').update(u32Key(0), encode(rtFollowSet, { active, keys }));
    if (on) return;
    let gone = 0n;
    for (const bit of loaded.follow.values()) gone |= 1n << BigInt(bit);
    const procs = this.#object.map('runtime_procs');
    for (const key of procs.keys()) {
      const value = procs.lookup(key as Buffer) as Buffer | undefined;
      if (!value || (value.readBigUInt64LE(0) & gone) === 0n) continue;
      value.writeBigUInt64LE(value.readBigUInt64LE(0) & ~gone, 0);
      try {
        procs.update(key as Buffer, value, UpdateFlag.EXIST);
      } catch {
        // The process exited meanwhile.
      }
    }
  }

  /**
   * Writes the difference between a scoped policy's network namespaces (and a containerSelector's
   * cgroups) and the pods (and containers) it selects.
   */
  #writePods(loaded: LoadedPolicy): void {
    const scope = loaded.policy.scope;
    if (!scope) return;
    syncScopedPods(this.#object.map('runtime_policy_pods'), scope, this.#pods, loaded.pods, (netns) => encode(rtPodKey, { policy_id: loaded.id, netns }));
    if (scope.containerSelector) syncScopedCgroups(this.#object.map('runtime_policy_cgroups'), scope, this.#pods, loaded.cgroups, (cgroup) => encode(rtCgroupKey, { cgroup_id: cgroup, policy_id: loaded.id }));
  }

  #hookStrings(slot: number, hook: CompiledHook): Buffer[] {
    const out: Buffer[] = [];
    hook.selectors.forEach((sel, s) => {
      if (sel.binaries) out.push(...stringKeys(filterKey(slot, s, 15), sel.binaries));
      sel.args.forEach((filter, f) => {
        if (filter.strings) out.push(...stringKeys(filterKey(slot, s, f + 1), filter.strings));
        if (filter.prefixes) out.push(...prefixKeys(filterKey(slot, s, f + 1), filter.prefixes));
      });
    });
    return out;
  }

  #hookValue(loaded: LoadedPolicy, slot: number, hook: CompiledHook): Buffer {
    const selectors = hook.selectors.map((sel, s) => ({
      nargs: sel.args.length,
      bin_op: sel.binOp,
      pid_op: sel.pidOp,
      npids: sel.pids.length,
      pid_flags: sel.pidFlags,
      action: Action[sel.action],
      nns: sel.namespaces.length,
      ncaps: sel.capabilities.length,
      follow: sel.followChildren ? 1 + (loaded.follow.get(`${slot}/${s}`) ?? 0) : 0,
      signal: sel.signal,
      bin_key: sel.binOp ? filterKey(slot, s, 15) : 0,
      nschange_op: sel.nsChangeOp,
      rate_scope: sel.rateScope,
      nschange_mask: sel.nsChangeMask,
      rate_ns: sel.rateLimitNs,
      pids: padded(sel.pids, POLICY_LIMITS.pids, 0),
      ns: padded(sel.namespaces.map((f) => ({ ns: f.ns, op: f.op, nvalues: f.values.length, values: padded(f.values, POLICY_LIMITS.namespaceValues, 0) })), POLICY_LIMITS.namespaces, EMPTY_NS_FILTER),
      caps: padded(sel.capabilities.map((f) => ({ type: f.type, op: f.op, changes: f.changes ? 1 : 0, user_ns: f.userNs, mask: f.mask })), POLICY_LIMITS.capabilities, EMPTY_CAP_FILTER),
      args: padded(
        sel.args.map((filter, f) => ({
          arg: filter.arg,
          op: filter.op,
          nvalues: filter.values.length,
          key: filter.strings || filter.prefixes ? filterKey(slot, s, f + 1) : 0,
          values: padded(filter.values, POLICY_LIMITS.values, 0n),
        })),
        POLICY_LIMITS.matchArgs,
        EMPTY_FILTER,
      ),
    }));
    return encode(rtHook, {
      policy_id: loaded.id,
      nargs: hook.args.length,
      nselectors: hook.selectors.length,
      scoped: loaded.policy.scope ? 1 : 0,
      containers: loaded.policy.scope?.containerSelector ? 1 : 0,
      args: padded(hook.args.map((a) => ({ offset: a.offset, type: a.kind, size: a.size })), POLICY_LIMITS.args, { offset: 0, type: 0, size: 0 }),
      selectors: padded(selectors, POLICY_LIMITS.selectors, EMPTY_SELECTOR),
    });
  }
}

/** The refusal of a second policy under a loaded one's name (the tracepoint engine, the socket enforcer). */
export function alreadyLoaded(name: string): RuntimeError {
  return new RuntimeError('ERR_RUNTIME_POLICY', `tracing policy ${name}: already loaded (delete it first)`, { details: [{ field: 'metadata.name', reason: 'already loaded' }] });
}

/** A u32 map key in host order (the maps' keys are native-endian u32). */
export function u32Key(value: number): Buffer {
  const key = Buffer.alloc(4);
  key.writeUInt32LE(value);
  return key;
}

/**
 * Fills the per-process binaries map (matchBinaries) with the processes running before the
 * sensor: their /proc/<pid>/exe. Processes exec'd later are written by the exec program.
 */
export function seedBinaries(object: BpfObject): number {
  const map = object.map('runtime_binaries');
  let seeded = 0;
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    let path: string;
    try {
      path = readlinkSync(`/proc/${name}/exe`);
    } catch {
      continue; // kernel threads, and processes gone meanwhile
    }
    const bytes = Buffer.from(path.replace(/ \(deleted\)$/, '')).subarray(0, STRING_KEY_BYTES - 1);
    const value = stringKey(0, Buffer.concat([bytes, Buffer.alloc(1)]), 0);
    value.writeUInt32LE(bytes.length + 1, 0);
    try {
      map.update(u32Key(Number(name)), value, UpdateFlag.NOEXIST); // an exec since is newer
      seeded++;
    } catch {
      // Already written by the exec program, or the map is full.
    }
  }
  return seeded;
}

/**
 * Gives the processes running before the sensor a baseline for matchNamespaceChanges and
 * matchCapabilityChanges: their namespaces and capabilities now, as if exec'd now (without it a
 * long-running process that later unshares or drops capabilities would never count as changed),
 * and their pod's network namespace for scoped policies.
 */
export function seedProcesses(object: BpfObject, snapshots: ProcessSnapshot[], hostNetns: number): number {
  // What the exec program reads to tell a pod's network namespace from the host's.
  object.map('runtime_config').update(u32Key(0), encode(rtConfig, { host_netns: hostNetns }));
  const map = object.map('runtime_procs');
  let seeded = 0;
  for (const p of snapshots) {
    const podNetns = hostNetns && p.ns.net && p.ns.net !== hostNetns ? p.ns.net : 0;
    const value = encode(rtProc, { follow: 0n, caps: [p.caps.effective, p.caps.inheritable, p.caps.permitted], ns: NAMESPACES.map((n) => p.ns[n] ?? 0), pod_netns: podNetns });
    try {
      map.update(u32Key(p.pid), value, UpdateFlag.NOEXIST); // an exec since is newer
      seeded++;
    } catch {
      // Already written by the exec program, or the map is full.
    }
  }
  return seeded;
}
