/**
 * Socket-enforcing TracingPolicies in the kernel: bpf_sock_enforce.o loaded when the first such
 * policy comes, each of its kprobes a rule slot, and the hooks a rule needs (connect4/6 and
 * sendmsg4/6 for sys_connect, bind4/6, sock_create) attached to the enforce cgroup while a rule
 * needs them. A policy is written whole before its rules are listed on their hook (so no call
 * sees half of it), and deleted by the reverse: off the lists, hooks without rules detached, then
 * slots and binaries cleared. The last policy gone closes the object. Nothing is pinned: an agent
 * that stops or dies takes every program and map with it, and a restart starts clean.
 * @module
 */
import { join } from 'node:path';
import { BpfObject, RingBuffer, attachCgroup, encode, possibleCpus, type Link } from '../ebpf/index.ts';
import { Addr } from '../net/index.ts';
import type { TetragonArg, TetragonProcessKprobe } from './types.ts';
import { modeStatus } from './policy-mode.ts';
import { RuntimeError } from './errors.ts';
import { alreadyLoaded, padded, stringKeys, syncScopedPods, u32Key, type PolicyStats, type PolicyStatus, type ScopePod } from './policy.ts';
import { destinationEntries, type DestinationEntries, type DestinationFilter, type SocketDestinations } from './socket-destinations.ts';
import { SE_EVENT_FLAG_BINARY_UNKNOWN, SOCKET_POLICY_LIMITS, SeAction, SeField, SeOp, SocketHook, seEvent, sePodKey, seList, seRule, seStats, type CompiledSocketPolicy, type SeValue, type SocketHookName, type SocketRule } from './socket-policy.ts';

export const SOCKET_OBJECT_PATH = join(import.meta.dirname, '../../build/bpf/bpf_sock_enforce.o');

const PROGRAMS: Record<SocketHookName, string[]> = {
  connect: ['se_connect4', 'se_connect6', 'se_sendmsg4', 'se_sendmsg6'],
  bind: ['se_bind4', 'se_bind6'],
  socket: ['se_socket'],
};

/** A refused or posted socket call, as the kernel reported it. */
export interface SocketRecord {
  hook: SocketHookName;
  action: 'POST' | 'OVERRIDE';
  selector: number;
  pid: number;
  tid: number;
  slot: number;
  policyId: number;
  ktime: bigint;
  cgroupId: bigint;
  /** The errno the call was refused with (negative), 0 when allowed. */
  error: number;
  netns: number;
  family: number;
  address: string;
  port: number;
  type: number;
  protocol: number;
  /** The binary the kernel judged (its exe's path); undefined when it could not be read. */
  binary: string | undefined;
  /** The destination's identity, when a DIdentity filter looked it up in the ipcache; 0 if none did. */
  dstIdentity: number;
}

const HOOK_NAMES: SocketHookName[] = ['connect', 'bind', 'socket'];
const HOOK_NUMBER: Record<SocketHookName, number> = { connect: SocketHook.CONNECT, bind: SocketHook.BIND, socket: SocketHook.SOCKET };

/** The address of an event: IPv4 came as ::ffff:a.b.c.d. */
function addressText(family: number, bytes: number[]): string {
  if (family === 2) return Addr.fromBytes(Uint8Array.from(bytes.slice(12))).toString();
  if (family !== 10) return '';
  // An IPv4-mapped destination as Go's netip (and so Tetragon) prints it.
  const mapped = bytes.slice(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff;
  return mapped ? `::ffff:${bytes.slice(12).join('.')}` : Addr.fromBytes(Uint8Array.from(bytes)).toString();
}

/** Decodes one ring record (bpf/sock_enforce.h struct se_event). */
export function decodeSocketRecord(bytes: Buffer): SocketRecord | undefined {
  if (bytes.length < seEvent.size) return undefined;
  const e = seEvent.decode(bytes, 0);
  const hook = HOOK_NAMES[e.hook];
  if (!hook) return undefined;
  const binary = e.flags & SE_EVENT_FLAG_BINARY_UNKNOWN ? undefined : Buffer.from(e.binary).toString('utf8', 0, Math.min(e.binary_len, e.binary.length));
  return {
    hook,
    action: e.action === SeAction.OVERRIDE ? 'OVERRIDE' : 'POST',
    selector: e.selector,
    pid: e.pid,
    tid: e.tid,
    slot: e.slot,
    policyId: e.policy_id,
    ktime: e.ktime,
    cgroupId: e.cgroup_id,
    error: e.error,
    netns: e.netns,
    family: e.family,
    address: addressText(e.family, e.addr),
    port: e.port,
    type: e.type,
    protocol: e.protocol,
    binary,
    dstIdentity: e.dst_identity,
  };
}

export interface SocketPolicyStats extends PolicyStats {
  /** Calls refused (Override). */
  refused: bigint;
}

export type SocketPolicyStatus = PolicyStatus & { stats: SocketPolicyStats; cgroup: string };

interface Loaded {
  id: number;
  policy: CompiledSocketPolicy;
  slots: number[];
  strings: Buffer[];
  /** A scoped policy's network namespaces in sock_enforce_pods. */
  pods: Set<number>;
  createdAt: Date;
}

export interface SocketEnforcerOptions {
  /** The cgroup v2 directory whose processes (and descendants') the rules apply to. */
  cgroup: string;
  objectPath?: string;
  /** The full agent's identities, ipcache and services, for DIdentity and DService; undefined: such rules are refused. */
  destinations?: SocketDestinations;
  onRecord(record: SocketRecord): void;
  onError(error: unknown): void;
}

const EMPTY_VALUE: SeValue = { lo: 0n, hi: 0n, mask_lo: 0n, mask_hi: 0n };
const EMPTY_FILTER = { field: 0, op: 0, nvalues: 0, set: 0, values: Array<SeValue>(SOCKET_POLICY_LIMITS.values).fill(EMPTY_VALUE) };
const EMPTY_SELECTOR = { nargs: 0, bin_op: 0, pid_op: 0, npids: 0, netns_op: 0, nnetns: 0, action: 0, pid_flags: 0, error: 0, bin_key: 0, pids: Array<number>(SOCKET_POLICY_LIMITS.pids).fill(0), netns: Array<number>(SOCKET_POLICY_LIMITS.netns).fill(0), args: Array(SOCKET_POLICY_LIMITS.matchArgs).fill(EMPTY_FILTER) };
const EMPTY_RULE = encode(seRule, { policy_id: 0, hook: 0, nselectors: 0, scoped: 0, selectors: Array(SOCKET_POLICY_LIMITS.selectors).fill(EMPTY_SELECTOR) });

/** A selector's binaries' key in sock_enforce_strings. */
const binaryFilter = (slot: number, selector: number) => (slot << 4) | selector;
/** A DIdentity or DService filter's set in sock_enforce_identities and sock_enforce_addrs. */
const destinationSet = (slot: number, selector: number, filter: number) => slot * 32 + selector * SOCKET_POLICY_LIMITS.matchArgs + filter;
const isDestination = (f: { identities?: unknown; services?: unknown }) => f.identities !== undefined || f.services !== undefined;

export class SocketEnforcer {
  readonly #options: SocketEnforcerOptions;
  #object: BpfObject | undefined;
  #ring: RingBuffer | undefined;
  #handler: ((view: DataView, offset: number, length: number, bytes: Uint8Array) => void) | undefined;
  readonly #links = new Map<SocketHookName, Link[]>();
  readonly #byName = new Map<string, Loaded>();
  readonly #bySlot = new Map<number, { loaded: Loaded; rule: SocketRule }>();
  #pods: ScopePod[] = [];
  /** Losses counted by rings of objects closed since (the counter goes with its object). */
  #lostBefore = 0n;
  #nextId = 1;
  /** What the destination sets hold in the kernel now. */
  #written: DestinationEntries = { identities: new Map(), addrs: new Map() };
  #unsubscribe: (() => void) | undefined;
  #syncQueued = false;

  constructor(options: SocketEnforcerOptions) {
    this.#options = options;
    // Identities, pods and services change in bursts: the sets are recomputed once per burst.
    this.#unsubscribe = options.destinations?.subscribe(() => {
      if (this.#syncQueued) return;
      this.#syncQueued = true;
      setImmediate(() => {
        this.#syncQueued = false;
        try {
          this.#syncDestinations();
        } catch (error) {
          // A full map: what was written stays; the next change retries.
          this.#options.onError(error);
        }
      });
    });
  }

  get cgroup(): string {
    return this.#options.cgroup;
  }

  /** Whether DIdentity and DService rules can be served (the full agent gave its destinations). */
  get hasDestinations(): boolean {
    return this.#options.destinations !== undefined;
  }

  has(name: string): boolean {
    return this.#byName.has(name);
  }

  /** Loads a compiled policy whole, or throws ERR_RUNTIME_POLICY with nothing of it left behind. */
  add(policy: CompiledSocketPolicy): SocketPolicyStatus {
    const name = policy.header.name;
    if (this.#byName.has(name)) throw alreadyLoaded(name);
    const free: number[] = [];
    for (let slot = 0; slot < SOCKET_POLICY_LIMITS.rules && free.length < policy.rules.length; slot++) if (!this.#bySlot.has(slot)) free.push(slot);
    if (free.length < policy.rules.length) throw new RuntimeError('ERR_RUNTIME_POLICY', `tracing policy ${name}: ${policy.rules.length} socket hooks, ${free.length} of ${SOCKET_POLICY_LIMITS.rules} slots free`, { details: [{ field: 'spec.kprobes', reason: 'too many socket hooks loaded' }] });
    this.#checkDestinations(policy);
    const object = this.#open();
    const loaded: Loaded = { id: this.#nextId++, policy, slots: free.slice(0, policy.rules.length), strings: [], pods: new Set(), createdAt: new Date() };
    try {
      const strings = object.map('sock_enforce_strings');
      policy.rules.forEach((rule, i) => {
        const slot = loaded.slots[i];
        object.map('sock_enforce_stats').updatePerCpu(u32Key(slot), Array(possibleCpus()).fill(Buffer.alloc(seStats.size)));
        rule.selectors.forEach((sel, s) => {
          if (!sel.binaries) return;
          for (const key of stringKeys(binaryFilter(slot, s), sel.binaries)) {
            strings.update(key, Buffer.from([1]));
            loaded.strings.push(key);
          }
        });
        object.map('sock_enforce_rules').update(u32Key(slot), this.#ruleValue(loaded.id, slot, rule, policy.scope !== undefined));
        this.#bySlot.set(slot, { loaded, rule });
      });
      this.#byName.set(name, loaded);
      // Its destination sets before its rules are listed: a rule never runs on an empty set.
      this.#syncDestinations();
      // Its pods before its rules are listed: a scoped rule never runs without them.
      this.#writePods(loaded);
      // Last: listed on their hooks (and the hooks attached), each rule whole already.
      this.#sync();
    } catch (error) {
      this.#unload(loaded);
      throw RuntimeError.is(error) ? error : new RuntimeError('ERR_RUNTIME_POLICY', `tracing policy ${name}: loading failed, nothing of it stays: ${(error as Error).message}`, { cause: error, details: [{ field: 'spec', reason: (error as Error).message }] });
    }
    return this.#status(loaded);
  }

  /**
   * Refuses, by field, a destination rule without the agent's destinations, or on a service that
   * does not exist: fail closed rather than load a rule whose set would be empty (a NotDService
   * rule would refuse every connection; a DService rule would stop nothing while a typo stays).
   */
  #checkDestinations(policy: CompiledSocketPolicy): void {
    const problems: { field: string; reason: string }[] = [];
    const destinations = this.#options.destinations;
    for (const rule of policy.rules) {
      for (const sel of rule.selectors) {
        for (const f of sel.args) {
          if (!isDestination(f)) continue;
          if (!destinations) problems.push({ field: `${f.at}.operator`, reason: 'a destination by identity or service needs the full agent (ciliate agent --runtime-enabled); `ciliate agent --runtime-only` has none' });
          else f.services?.forEach((key, i) => void (destinations.hasService(key) || problems.push({ field: `${f.at}.values[${i}]`, reason: `no service ${key}` })));
        }
      }
    }
    if (problems.length > 0) throw new RuntimeError('ERR_RUNTIME_POLICY', `tracing policy ${policy.header.name}: ${problems.map((p) => `${p.field}: ${p.reason}`).join('; ')}`, { details: problems });
  }

  /** The DIdentity and DService filters of every loaded rule, with their sets. */
  #destinationFilters(): DestinationFilter[] {
    const out: DestinationFilter[] = [];
    for (const [slot, { rule }] of this.#bySlot) {
      rule.selectors.forEach((sel, s) =>
        sel.args.forEach((f, i) => {
          if (!isDestination(f)) return;
          out.push({ set: destinationSet(slot, s, i), negated: f.op === SeOp.NOT_IDENTITY || f.op === SeOp.NOT_SERVICE, identities: f.identities, services: f.services });
        }),
      );
    }
    return out;
  }

  /**
   * Writes the destination sets as the agent knows them now, as differences: new and changed
   * entries first, then the ones no set holds any more.
   */
  #syncDestinations(): void {
    const destinations = this.#options.destinations;
    const object = this.#object;
    if (!destinations || !object) return;
    const want = destinationEntries(this.#destinationFilters(), destinations);
    const identities = object.map('sock_enforce_identities');
    const addrs = object.map('sock_enforce_addrs');
    const one = Buffer.from([1]);
    for (const [hex, key] of want.identities) {
      if (this.#written.identities.has(hex)) continue;
      identities.update(key, one);
      this.#written.identities.set(hex, key);
    }
    for (const [hex, entry] of want.addrs) {
      if (this.#written.addrs.get(hex)?.value === entry.value) continue;
      addrs.update(entry.key, Buffer.from([entry.value]));
      this.#written.addrs.set(hex, entry);
    }
    for (const [hex, key] of this.#written.identities) {
      if (want.identities.has(hex)) continue;
      identities.delete(key);
      this.#written.identities.delete(hex);
    }
    for (const [hex, entry] of this.#written.addrs) {
      if (want.addrs.has(hex)) continue;
      addrs.delete(entry.key);
      this.#written.addrs.delete(hex);
    }
  }

  /**
   * The pods scoped policies choose from (the agent's endpoints); each scoped policy's network
   * namespaces in the kernel follow, written as differences.
   */
  setPods(pods: ScopePod[]): void {
    this.#pods = pods;
    for (const loaded of this.#byName.values()) this.#writePods(loaded);
  }

  /** The network namespaces a loaded policy applies to in the kernel (undefined: not scoped). */
  podsOf(name: string): number[] | undefined {
    const loaded = this.#byName.get(name);
    return loaded?.policy.scope ? [...loaded.pods].sort((a, b) => a - b) : undefined;
  }

  #writePods(loaded: Loaded): void {
    const scope = loaded.policy.scope;
    if (!scope || !this.#object) return;
    syncScopedPods(this.#object.map('sock_enforce_pods'), scope, this.#pods, loaded.pods, (netns) => encode(sePodKey, { policy_id: loaded.id, netns }));
  }

  /** Unloads a policy; throws ERR_RUNTIME_POLICY_NOT_FOUND when none has that name. */
  delete(name: string): void {
    const loaded = this.#byName.get(name);
    if (!loaded) throw new RuntimeError('ERR_RUNTIME_POLICY_NOT_FOUND', `tracing policy ${JSON.stringify(name)} not found`);
    this.#unload(loaded);
  }

  list(): SocketPolicyStatus[] {
    return [...this.#byName.values()].map((l) => this.#status(l));
  }

  /** The rule and policy an event came from; undefined once that policy is gone. */
  ruleOf(slot: number, policyId: number): { policy: CompiledSocketPolicy; rule: SocketRule } | undefined {
    const entry = this.#bySlot.get(slot);
    return entry && entry.loaded.id === policyId ? { policy: entry.loaded.policy, rule: entry.rule } : undefined;
  }

  /**
   * Events the kernel could not put in the socket hooks' ring since the object was loaded (a
   * refusal still refuses; only its event is lost). Kept over object reloads.
   */
  get lost(): bigint {
    return this.#lostBefore + (this.#ring?.lost() ?? 0n);
  }

  /** Reads what waits in the ring now. */
  drain(): void {
    if (this.#ring && this.#handler) this.#ring.consume(this.#handler);
  }

  /** What the kernel holds, read back from it: programs attached, rule slots in use, binaries. */
  kernelState(): { programs: number[]; rules: number; strings: number } {
    const programs = [...this.#links.keys()].flatMap((hook) => PROGRAMS[hook].map((p) => this.#object!.program(p).info().id));
    if (!this.#object) return { programs, rules: 0, strings: 0 };
    let rules = 0;
    const map = this.#object.map('sock_enforce_rules');
    for (let slot = 0; slot < SOCKET_POLICY_LIMITS.rules; slot++) if ((map.lookup(u32Key(slot)) as Buffer | undefined)?.readUInt32LE(0)) rules++;
    let strings = 0;
    for (const _key of this.#object.map('sock_enforce_strings').keys()) strings++;
    return { programs, rules, strings };
  }

  /** Whether the object (its programs and maps) is loaded at all. */
  get loaded(): boolean {
    return this.#object !== undefined;
  }

  close(): void {
    this.#unsubscribe?.();
    this.#unsubscribe = undefined;
    for (const loaded of [...this.#byName.values()]) this.#unload(loaded);
    this.#closeObject();
  }

  #open(): BpfObject {
    if (this.#object) return this.#object;
    const destinations = this.#options.destinations;
    // The datapath's ipcache, by its pin: the hooks read the identities the datapath enforces.
    const object = BpfObject.load(this.#options.objectPath ?? SOCKET_OBJECT_PATH, destinations ? { pin: { dir: destinations.ipcachePinDir, maps: ['ciliate_ipcache'] } } : {});
    try {
      const ring = new RingBuffer(object.map('sock_enforce_events'), { lostCounter: object.map('sock_enforce_events_lost') });
      this.#handler = (_view, offset, length, bytes) => {
        const record = decodeSocketRecord(Buffer.from(bytes.buffer, bytes.byteOffset + offset, length));
        if (record) this.#options.onRecord(record);
      };
      ring.start(this.#handler, { onError: this.#options.onError, drainIntervalMs: 20 });
      this.#ring = ring;
    } catch (error) {
      object.close();
      throw error;
    }
    this.#object = object;
    return object;
  }

  #closeObject(): void {
    for (const links of this.#links.values()) for (const link of links) link.close();
    this.#links.clear();
    this.#lostBefore += this.#ring?.lost() ?? 0n;
    this.#ring?.close();
    this.#ring = undefined;
    this.#handler = undefined;
    this.#object?.close();
    this.#object = undefined;
    this.#written = { identities: new Map(), addrs: new Map() };
  }

  /** Writes each hook's list of rule slots, attaching hooks that now have rules and detaching the others. */
  #sync(): void {
    const object = this.#object;
    if (!object) return;
    const lists = object.map('sock_enforce_lists');
    for (const hook of HOOK_NAMES) {
      const slots = [...this.#bySlot.entries()].filter(([, e]) => e.rule.hook === hook).map(([slot]) => slot).sort((a, b) => a - b);
      lists.update(u32Key(HOOK_NUMBER[hook]), encode(seList, { n: slots.length, slots: padded(slots, SOCKET_POLICY_LIMITS.rules, 0) }));
      if (slots.length > 0 && !this.#links.has(hook)) {
        const links: Link[] = [];
        try {
          for (const name of PROGRAMS[hook]) links.push(attachCgroup(object.program(name), { cgroup: this.#options.cgroup }));
        } catch (error) {
          for (const link of links) link.close();
          throw error;
        }
        this.#links.set(hook, links);
      } else if (slots.length === 0 && this.#links.has(hook)) {
        for (const link of this.#links.get(hook)!) link.close();
        this.#links.delete(hook);
      }
    }
  }

  #unload(loaded: Loaded): void {
    for (const slot of loaded.slots) if (this.#bySlot.get(slot)?.loaded === loaded) this.#bySlot.delete(slot);
    this.#byName.delete(loaded.policy.header.name);
    const object = this.#object;
    if (!object) return;
    this.#sync();
    for (const slot of loaded.slots) object.map('sock_enforce_rules').update(u32Key(slot), EMPTY_RULE);
    for (const key of loaded.strings.splice(0)) object.map('sock_enforce_strings').delete(key);
    for (const netns of loaded.pods) object.map('sock_enforce_pods').delete(encode(sePodKey, { policy_id: loaded.id, netns }));
    loaded.pods.clear();
    this.#syncDestinations();
    if (this.#byName.size === 0) this.#closeObject();
  }

  #status(loaded: Loaded): SocketPolicyStatus {
    const total: SocketPolicyStats = { runs: 0n, matched: 0n, posted: 0n, signalled: 0n, refused: 0n, ratelimited: 0n };
    const stats = this.#object?.map('sock_enforce_stats');
    for (const slot of loaded.slots) {
      for (const cpu of stats?.lookupPerCpu(u32Key(slot)) ?? []) {
        const s = seStats.decode(cpu as Buffer, 0);
        total.runs += s.runs;
        total.matched += s.matched;
        total.posted += s.posted;
        total.refused += s.refused;
      }
    }
    const { header } = loaded.policy;
    return { id: loaded.id, name: header.name, kind: header.kind, sensors: loaded.policy.rules.map((r) => `cgroup/${r.hook}`), stats: total, createdAt: loaded.createdAt.toISOString(), cgroup: this.#options.cgroup, mode: modeStatus(header.mode, header.enforces), enabled: true };
  }

  #ruleValue(policyId: number, slot: number, rule: SocketRule, scoped: boolean): Buffer {
    const selectors = rule.selectors.map((sel, s) => ({
      nargs: sel.args.length,
      bin_op: sel.binOp,
      pid_op: sel.pidOp,
      npids: sel.pids.length,
      pid_flags: sel.pidFlags,
      netns_op: sel.netnsOp,
      nnetns: sel.netns.length,
      action: SeAction[sel.action],
      error: sel.error,
      bin_key: sel.binOp ? binaryFilter(slot, s) : 0,
      pids: padded(sel.pids, SOCKET_POLICY_LIMITS.pids, 0),
      netns: padded(sel.netns, SOCKET_POLICY_LIMITS.netns, 0),
      args: padded(
        sel.args.map((f, i) => ({ field: f.field, op: f.op, nvalues: f.values.length, set: isDestination(f) ? destinationSet(slot, s, i) : 0, values: padded(f.values, SOCKET_POLICY_LIMITS.values, EMPTY_VALUE) })),
        SOCKET_POLICY_LIMITS.matchArgs,
        EMPTY_FILTER,
      ),
    }));
    return encode(seRule, { policy_id: policyId, hook: HOOK_NUMBER[rule.hook], nselectors: rule.selectors.length, scoped: scoped ? 1 : 0, selectors: padded(selectors, SOCKET_POLICY_LIMITS.selectors, EMPTY_SELECTOR) });
  }
}

const FAMILY_NAMES: Record<number, string> = { 1: 'AF_UNIX', 2: 'AF_INET', 10: 'AF_INET6', 16: 'AF_NETLINK', 17: 'AF_PACKET' };

/**
 * A socket record as Tetragon's process_kprobe body, but the process objects: the hook as its
 * system call (`__x64_sys_connect`), the sockaddr or socket()'s arguments as the rule declared
 * them, and the verdict (`KPROBE_ACTION_OVERRIDE` when refused).
 */
export function socketKprobeBody(record: SocketRecord, policy: CompiledSocketPolicy, rule: SocketRule): Omit<TetragonProcessKprobe, 'process' | 'parent'> {
  const family = FAMILY_NAMES[record.family] ?? `AF_${record.family}`;
  const args: TetragonArg[] = rule.args.map((arg) => {
    const label = arg.label ? { label: arg.label } : {};
    if (arg.report === 'int_arg') return { int_arg: arg.field === SeField.FAMILY ? record.family : arg.field === SeField.TYPE ? record.type : record.protocol, ...label };
    const where = rule.hook === 'bind' ? { saddr: record.address, sport: record.port } : { daddr: record.address, dport: record.port };
    return { sock_arg: { family, ...where }, ...label };
  });
  // The identity a DIdentity filter judged the destination as (KprobeSock has no field for it).
  if (record.dstIdentity) args.push({ uint_arg: record.dstIdentity, label: 'destination_identity' });
  return {
    function_name: rule.functionName,
    args: args.length > 0 ? args : undefined,
    // A monitored policy's event names what its selector would have done (and did not).
    action: record.action === 'OVERRIDE' || rule.selectors[record.selector]?.monitored === 'OVERRIDE' ? 'KPROBE_ACTION_OVERRIDE' : 'KPROBE_ACTION_POST',
    policy_name: policy.header.name,
    message: rule.message,
    tags: rule.tags,
  };
}
