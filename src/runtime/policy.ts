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
import { UpdateFlag, array, attachTracepoint, encode, pad, possibleCpus, struct, u16, u32, u64, u8, type BpfObject, type Link } from '../ebpf/index.ts';
import { RuntimeError } from './errors.ts';
import { Action, POLICY_LIMITS, compileTracingPolicy, type CompiledHook, type CompiledStrings, type CompiledTracingPolicy } from './tracing-policy.ts';

// ---- codecs of bpf/runtime.h's policy structs (events.test.ts checks them against the BTF) ----

const STRING_BYTES = 248; // RT_POLICY_STR

export const rtArgSpec = struct('rt_arg_spec', { offset: u16, type: u8, size: u8 });
export const rtArgFilter = struct('rt_arg_filter', { arg: u8, op: u8, nvalues: u8, _pad: pad(1), key: u32, values: array(u64, POLICY_LIMITS.values) });
export const rtSelector = struct('rt_selector', {
  nargs: u8,
  bin_op: u8,
  pid_op: u8,
  npids: u8,
  action: u8,
  _pad: pad(3),
  signal: u32,
  bin_key: u32,
  pids: array(u32, POLICY_LIMITS.pids),
  args: array(rtArgFilter, POLICY_LIMITS.matchArgs),
});
export const rtHook = struct('rt_hook', {
  policy_id: u32,
  nargs: u8,
  nselectors: u8,
  _pad: pad(2),
  args: array(rtArgSpec, POLICY_LIMITS.args),
  selectors: array(rtSelector, POLICY_LIMITS.selectors),
});
export const TP_HOOKS = 8; // RT_POLICY_TP_HOOKS
const TRACEPOINTS = 64; // RT_POLICY_TPS
export const rtTp = struct('rt_tp', { nhooks: u32, slots: array(u16, TP_HOOKS) });
export const rtHookStats = struct('rt_hook_stats', { runs: u64, matched: u64, posted: u64, signalled: u64 });

const EMPTY_FILTER = { arg: 0, op: 0, nvalues: 0, key: 0, values: Array<bigint>(POLICY_LIMITS.values).fill(0n) };
const EMPTY_SELECTOR = { nargs: 0, bin_op: 0, pid_op: 0, npids: 0, action: 0, signal: 0, bin_key: 0, pids: Array<number>(POLICY_LIMITS.pids).fill(0), args: Array(POLICY_LIMITS.matchArgs).fill(EMPTY_FILTER) };
const EMPTY_HOOK = encode(rtHook, { policy_id: 0, nargs: 0, nselectors: 0, args: Array(POLICY_LIMITS.args).fill({ offset: 0, type: 0, size: 0 }), selectors: Array(POLICY_LIMITS.selectors).fill(EMPTY_SELECTOR) });

const padded = <T>(list: T[], length: number, fill: T): T[] => [...list, ...Array<T>(Math.max(0, length - list.length)).fill(fill)];

/** The LPM trie key of a string under `filter` (bpf/runtime.h struct rt_string_key). */
export function stringKey(filter: number, bytes: Buffer, bits: number): Buffer {
  const key = Buffer.alloc(8 + STRING_BYTES);
  key.writeUInt32LE(32 + bits, 0);
  key.writeUInt32LE(filter >>> 0, 4);
  bytes.copy(key, 8, 0, STRING_BYTES);
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

/** A filter's key: the slot, the selector and the matchArgs entry (15: matchBinaries). */
const filterKey = (slot: number, selector: number, entry: number) => (slot << 8) | (selector << 4) | entry;

// ---- the loaded policies ----

export interface LoadedHook {
  slot: number;
  hook: CompiledHook;
}

export interface LoadedPolicy {
  id: number;
  policy: CompiledTracingPolicy;
  hooks: LoadedHook[];
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
}

export class PolicyManager {
  readonly #object: BpfObject;
  readonly #byName = new Map<string, LoadedPolicy>();
  readonly #bySlot = new Map<number, LoadedHook & { policy: LoadedPolicy }>();
  readonly #attachments = new Map<string, Attachment>();
  #nextId = 1;

  constructor(object: BpfObject) {
    this.#object = object;
  }

  /** Checks, compiles and loads a policy; throws ERR_RUNTIME_POLICY (every problem by field). */
  add(text: string): PolicyStatus {
    const policy = compileTracingPolicy(text);
    const name = policy.header.name;
    if (this.#byName.has(name)) throw new RuntimeError('ERR_RUNTIME_POLICY', `tracing policy ${name}: already loaded (delete it first)`, { details: [{ field: 'metadata.name', reason: 'already loaded' }] });
    const free: number[] = [];
    for (let slot = 0; slot < POLICY_LIMITS.hooks && free.length < policy.hooks.length; slot++) if (!this.#bySlot.has(slot)) free.push(slot);
    if (free.length < policy.hooks.length) throw new RuntimeError('ERR_RUNTIME_POLICY', `tracing policy ${name}: ${policy.hooks.length} hooks, ${free.length} of ${POLICY_LIMITS.hooks} slots free`, { details: [{ field: 'spec', reason: 'too many hooks loaded' }] });
    const loaded: LoadedPolicy = { id: this.#nextId++, policy, hooks: policy.hooks.map((hook, i) => ({ slot: free[i], hook })), running: [], strings: [], createdAt: new Date() };
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
        hooks.update(key, this.#hookValue(loaded.id, slot, hook));
      }
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
  kernelState(): { strings: number; hooks: number } {
    let strings = 0;
    for (const _key of this.#object.map('runtime_policy_strings').keys()) strings++;
    let hooks = 0;
    const map = this.#object.map('runtime_policy_hooks');
    for (let slot = 0; slot < POLICY_LIMITS.hooks; slot++) if ((map.lookup(u32Key(slot)) as Buffer | undefined)?.readUInt32LE(0)) hooks++;
    return { strings, hooks };
  }

  /** Unloads every policy (the agent's stop). */
  close(): void {
    for (const name of [...this.#byName.keys()]) this.delete(name);
  }

  #status(loaded: LoadedPolicy): PolicyStatus {
    const total: PolicyStats = { runs: 0n, matched: 0n, posted: 0n, signalled: 0n };
    const stats = this.#object.map('runtime_policy_stats');
    for (const { slot } of loaded.hooks) {
      for (const cpu of stats.lookupPerCpu(u32Key(slot)) ?? []) {
        const s = rtHookStats.decode(cpu as Buffer, 0);
        total.runs += s.runs;
        total.matched += s.matched;
        total.posted += s.posted;
        total.signalled += s.signalled;
      }
    }
    const { header } = loaded.policy;
    return { id: loaded.id, name: header.name, namespace: header.namespace, kind: header.kind, sensors: loaded.hooks.map(({ hook }) => `${hook.group}/${hook.name}`), stats: total, createdAt: loaded.createdAt.toISOString() };
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
  }

  #hookStrings(slot: number, hook: CompiledHook): Buffer[] {
    const out: Buffer[] = [];
    hook.selectors.forEach((sel, s) => {
      if (sel.binaries) out.push(...stringKeys(filterKey(slot, s, 15), sel.binaries));
      sel.args.forEach((filter, f) => {
        if (filter.strings) out.push(...stringKeys(filterKey(slot, s, f + 1), filter.strings));
      });
    });
    return out;
  }

  #hookValue(policyId: number, slot: number, hook: CompiledHook): Buffer {
    const selectors = hook.selectors.map((sel, s) => ({
      nargs: sel.args.length,
      bin_op: sel.binOp,
      pid_op: sel.pidOp,
      npids: sel.pids.length,
      action: Action[sel.action],
      signal: sel.signal,
      bin_key: sel.binOp ? filterKey(slot, s, 15) : 0,
      pids: padded(sel.pids, POLICY_LIMITS.pids, 0),
      args: padded(
        sel.args.map((filter, f) => ({
          arg: filter.arg,
          op: filter.op,
          nvalues: filter.values.length,
              key: filter.strings ? filterKey(slot, s, f + 1) : 0,
          values: padded(filter.values, POLICY_LIMITS.values, 0n),
        })),
        POLICY_LIMITS.matchArgs,
        EMPTY_FILTER,
      ),
    }));
    return encode(rtHook, {
      policy_id: policyId,
      nargs: hook.args.length,
      nselectors: hook.selectors.length,
      args: padded(hook.args.map((a) => ({ offset: a.offset, type: a.kind, size: a.size })), POLICY_LIMITS.args, { offset: 0, type: 0, size: 0 }),
      selectors: padded(selectors, POLICY_LIMITS.selectors, EMPTY_SELECTOR),
    });
  }
}

function u32Key(value: number): Buffer {
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
    const bytes = Buffer.from(path.replace(/ \(deleted\)$/, '')).subarray(0, STRING_BYTES - 1);
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
