/**
 * The runtime observer: the process sensor's records through the process cache into Tetragon's
 * events, handed to every subscriber (gRPC streams, the export file). Processes that were there
 * before it started are read from /proc once, after the programs attach, so none is missed
 * between the two.
 * @module
 */
import { constants } from 'node:os';
import { RuntimeError } from './errors.ts';
import { hostNamespaces, readAllProcesses, readProcess } from './procfs.ts';
import { ProcessCache, type ProcessCacheStats, type ProcessEntry } from './process-cache.ts';
import { ProcessSensor } from './sensor.ts';
import { CAPABILITIES, NAMESPACES, POLICY_ARG_SLOT, type ExitRecord, type NamespaceName, type PolicyRecord, type RuntimeRecord } from './events.ts';
import { PolicyManager, seedBinaries, seedProcesses, type ScopePod } from './policy.ts';
import { RuntimePolicies } from './runtime-policies.ts';
import { SocketEnforcer, socketKprobeBody, type SocketRecord } from './socket-enforcer.ts';
import type { SocketDestinations } from './socket-destinations.ts';
import type { CompiledArg } from './tracing-policy.ts';
import type { TetragonAction, TetragonArg, TetragonCapabilities, TetragonEvent, TetragonNamespaces, TetragonPod, TetragonProcess } from './types.ts';

export interface RuntimeObserverOptions {
  nodeName: string;
  /** Process cache bound (entries). */
  processCacheSize?: number;
  /** How long exited, unreferenced processes stay for late events (ms). */
  processCacheGraceMs?: number;
  /** Capabilities in process objects (Tetragon's --enable-process-cred). */
  processCredentials?: boolean;
  /** Namespaces in process objects (Tetragon's --enable-process-ns). */
  processNamespaces?: boolean;
  /** Ancestors in exec events (Tetragon's --enable-ancestors). */
  ancestors?: boolean;
  /** The pod of a process, from its network namespace or cgroup; undefined for the host's own. */
  resolvePod?(process: { pid: number; netns: number; cgroupId: bigint }): TetragonPod | undefined;
  /**
   * The cgroup v2 directory where policies that override sys_connect, sys_bind or sys_socket are
   * enforced (its processes and its descendants'); undefined: such policies are refused.
   */
  enforceCgroup?: string;
  /** The sensor's BPF object (tests); build/bpf/bpf_runtime.o by default. */
  objectPath?: string;
  onError?(error: unknown): void;
}

export interface RuntimeObserverStats {
  events: { PROCESS_EXEC: number; PROCESS_EXIT: number; PROCESS_KPROBE: number; PROCESS_TRACEPOINT: number };
  /** Ring buffer records the kernel side dropped (ring full). */
  lost: bigint;
  records: number;
  processCache: ProcessCacheStats;
  subscribers: number;
  /** Kernel ids of the sensor's programs while it runs. */
  programs: number[];
}

export type EventListener = (event: TetragonEvent) => void;

export function capabilityNames(mask: bigint): string[] {
  const out: string[] = [];
  for (let bit = 0; bit < CAPABILITIES.length; bit++) if ((mask >> BigInt(bit)) & 1n) out.push(CAPABILITIES[bit]);
  return out;
}

const SIGNAL_NAMES = new Map<number, string>();
for (const [name, number] of Object.entries(constants.signals)) if (!SIGNAL_NAMES.has(number)) SIGNAL_NAMES.set(number, name);

/**
 * Timestamps as Go's protojson writes them: RFC 3339 in UTC with 0, 3, 6 or 9 fractional digits.
 */
export function protoTimestamp(ns: bigint): string {
  const seconds = ns / 1_000_000_000n;
  const nanos = Number(ns % 1_000_000_000n);
  const base = new Date(Number(seconds) * 1000).toISOString().slice(0, 19);
  if (nanos === 0) return `${base}Z`;
  const digits = nanos % 1_000_000 === 0 ? 3 : nanos % 1000 === 0 ? 6 : 9;
  return `${base}.${String(nanos).padStart(9, '0').slice(0, digits)}Z`;
}

/** Tetragon's `arguments`: space-joined, each argument holding a space in double quotes. */
export function argumentsString(args: readonly string[]): string {
  return args.map((a) => (a.includes(' ') ? `"${a}"` : a)).join(' ');
}

const ACTION_NAMES: TetragonAction[] = ['KPROBE_ACTION_POST', 'KPROBE_ACTION_NOPOST', 'KPROBE_ACTION_SIGKILL', 'KPROBE_ACTION_SIGNAL'];

/** An argument of a policy event in Tetragon's KprobeArgument form. */
function argValue(arg: CompiledArg, record: PolicyRecord, i: number): TetragonArg {
  const value = record.values[i] ?? 0n;
  const slot = record.slots.subarray(i * POLICY_ARG_SLOT, (i + 1) * POLICY_ARG_SLOT);
  const label = arg.label ? { label: arg.label } : {};
  switch (arg.report) {
    case 'int_arg':
      return { int_arg: Number(BigInt.asIntN(32, value)), ...label };
    case 'uint_arg':
      return { uint_arg: Number(BigInt.asUintN(32, value)), ...label };
    case 'long_arg':
      return { long_arg: String(BigInt.asIntN(64, value)), ...label };
    case 'size_arg':
      return { size_arg: String(value), ...label };
    case 'string_arg':
      return { string_arg: slot.toString('utf8', 0, Math.min(Number(value), slot.length)), ...label };
    case 'bytes_arg':
      return { bytes_arg: slot.subarray(0, Math.min(Number(value), slot.length)).toString('base64'), ...label };
    case 'sock_arg': {
      const family = slot.readUInt16LE(0);
      const port = slot.readUInt16BE(2);
      const addr = family === 2 ? [...slot.subarray(4, 8)].join('.') : family === 10 ? ipv6Text(slot.subarray(4, 20)) : '';
      const familyName = family === 2 ? 'AF_INET' : family === 10 ? 'AF_INET6' : `AF_${family}`;
      // bind's sockaddr is the local end (KprobeSock's saddr, sport); the others' the peer.
      return { sock_arg: arg.end === 'local' ? { family: familyName, saddr: addr, sport: port } : { family: familyName, daddr: addr, dport: port }, ...label };
    }
  }
}

function ipv6Text(bytes: Buffer): string {
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(bytes.readUInt16BE(i).toString(16));
  return groups.join(':').replace(/(^|:)0(:0)+(:|$)/, '::');
}

export class RuntimeObserver {
  readonly #options: RuntimeObserverOptions;
  readonly cache: ProcessCache;
  #resolvePod: RuntimeObserverOptions['resolvePod'];
  readonly #listeners = new Set<EventListener>();
  #sensor: ProcessSensor | undefined;
  #gc: NodeJS.Timeout | undefined;
  /** Wall clock minus the monotonic clock bpf_ktime_get_ns() reads, in ns. */
  readonly #wallOffset: bigint;
  readonly #hostNs: Record<NamespaceName, number>;
  #execs = 0;
  #exits = 0;
  #kprobes = 0;
  #tracepoints = 0;
  #policies: RuntimePolicies | undefined;
  #scopePods: ScopePod[] = [];
  #destinations: SocketDestinations | undefined;

  constructor(options: RuntimeObserverOptions) {
    this.#options = options;
    this.#resolvePod = options.resolvePod;
    // process.hrtime is CLOCK_MONOTONIC on Linux, the clock of bpf_ktime_get_ns().
    this.#wallOffset = BigInt(Date.now()) * 1_000_000n - process.hrtime.bigint();
    this.#hostNs = hostNamespaces();
    this.cache = new ProcessCache({
      nodeName: options.nodeName,
      maxEntries: options.processCacheSize,
      graceMs: options.processCacheGraceMs,
      readProc: (pid) => readProcess(pid),
      resolvePod: (entry) => this.#resolvePod?.({ pid: entry.pid, netns: entry.ns.net, cgroupId: entry.cgroupId }),
    });
  }

  /** Loads and attaches the sensor, then reads the processes already running. */
  start(): void {
    if (this.#sensor) return;
    this.#sensor = new ProcessSensor({
      objectPath: this.#options.objectPath,
      onRecord: (record) => this.#onRecord(record),
      onError: (error) => this.#options.onError?.(error),
    });
    const sockets = this.#options.enforceCgroup
      ? new SocketEnforcer({ cgroup: this.#options.enforceCgroup, destinations: this.#destinations, onRecord: (record) => this.#onSocketRecord(record), onError: (error) => this.#options.onError?.(error) })
      : undefined;
    this.#policies = new RuntimePolicies(this.#sensor.object, sockets, this.#hostNs.net);
    this.#policies.setPods(this.#scopePods);
    seedBinaries(this.#sensor.object);
    const snapshots = readAllProcesses();
    seedProcesses(this.#sensor.object, snapshots, this.#hostNs.net);
    for (const snapshot of snapshots) this.cache.addSnapshot(snapshot);
    const grace = this.#options.processCacheGraceMs ?? 10_000;
    this.#gc = setInterval(() => this.cache.collect(), Math.max(1000, Math.min(grace, 30_000)));
    this.#gc.unref();
  }

  /** The loaded TracingPolicies (add, delete, list, configure); throws before start(). */
  get policies(): RuntimePolicies {
    if (!this.#policies) throw new RuntimeError('ERR_RUNTIME_SENSOR', 'the runtime sensor is not running: no policy can be loaded');
    return this.#policies;
  }

  stop(): void {
    clearInterval(this.#gc);
    this.#gc = undefined;
    this.#policies?.close();
    this.#policies = undefined;
    this.#sensor?.close();
    this.#sensor = undefined;
  }

  /** Reads what waits in the ring now (events reach subscribers before this returns). */
  drain(): void {
    this.#sensor?.drain();
  }

  /**
   * Sets how new processes find their pod (the agent's endpoints, by network namespace). Only
   * processes seen from now on are named; a running agent sets it before start().
   */
  setPodResolver(resolve: RuntimeObserverOptions['resolvePod']): void {
    this.#resolvePod = resolve;
  }

  /**
   * What the full agent knows of destinations (identities, the ipcache, services), for socket
   * rules by identity or service; set before start(). Without it such rules are refused.
   */
  setSocketDestinations(destinations: SocketDestinations | undefined): void {
    this.#destinations = destinations;
  }

  /**
   * The pods that podSelector and namespaced policies choose from (the agent's endpoints), kept
   * across sensor restarts; scoped policies' kernel entries follow at once.
   */
  setScopePods(pods: ScopePod[]): void {
    this.#scopePods = pods;
    this.#policies?.setPods(pods);
  }

  subscribe(listener: EventListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  stats(): RuntimeObserverStats {
    const sensor = this.#sensor?.stats();
    return {
      events: { PROCESS_EXEC: this.#execs, PROCESS_EXIT: this.#exits, PROCESS_KPROBE: this.#kprobes, PROCESS_TRACEPOINT: this.#tracepoints },
      // The process sensor's ring and the socket hooks' ring: every loss, wherever it happened.
      lost: (sensor?.lost ?? 0n) + (this.#policies?.sockets?.lost ?? 0n),
      records: sensor?.records ?? 0,
      processCache: this.cache.stats(),
      subscribers: this.#listeners.size,
      programs: this.#sensor?.programIds() ?? [],
    };
  }

  /** A process entry in Tetragon's form. */
  processObject(entry: ProcessEntry, refcnt = false): TetragonProcess {
    const out: TetragonProcess = {
      exec_id: entry.execId,
      pid: entry.pid,
      uid: entry.uid,
      cwd: entry.cwd || undefined,
      binary: entry.binary,
      arguments: entry.args.length > 0 ? argumentsString(entry.args) : undefined,
      flags: entry.flags.join(' '),
      start_time: protoTimestamp(entry.ktime + this.#wallOffset),
      auid: entry.auid,
      pod: entry.pod,
      parent_exec_id: entry.parentExecId || undefined,
      refcnt: refcnt && entry.refcnt > 0 ? entry.refcnt : undefined,
      tid: entry.tid,
    };
    if (this.#options.processCredentials) out.cap = this.#caps(entry);
    if (this.#options.processNamespaces) out.ns = this.#namespaces(entry);
    return out;
  }

  #caps(entry: ProcessEntry): TetragonCapabilities {
    const names = (mask: bigint) => {
      const list = capabilityNames(mask);
      return list.length > 0 ? list : undefined;
    };
    return { permitted: names(entry.caps.permitted), effective: names(entry.caps.effective), inheritable: names(entry.caps.inheritable) };
  }

  #namespaces(entry: ProcessEntry): TetragonNamespaces {
    const out: TetragonNamespaces = {};
    for (const name of NAMESPACES) {
      const inum = entry.ns[name];
      if (inum) out[name] = inum === this.#hostNs[name] ? { inum, is_host: true } : { inum };
    }
    return out;
  }

  #emit(event: TetragonEvent): void {
    for (const listener of this.#listeners) {
      try {
        listener(event);
      } catch (error) {
        this.#options.onError?.(error);
      }
    }
  }

  #onRecord(record: RuntimeRecord): void {
    const time = protoTimestamp(record.ktime + this.#wallOffset);
    switch (record.type) {
      case 'exec': {
        const entry = this.cache.exec(record);
        this.#execs++;
        if (this.#listeners.size === 0) return;
        const parent = this.cache.parentOf(entry);
        const exec: TetragonEvent = {
          process_exec: {
            process: this.processObject(entry),
            parent: parent ? this.processObject(parent, true) : undefined,
            ancestors: this.#options.ancestors ? this.cache.ancestorsOf(entry).map((a) => this.processObject(a, true)) : undefined,
          },
          node_name: this.#options.nodeName,
          time,
        };
        this.#emit(exec);
        return;
      }
      case 'fork':
        this.cache.fork(record);
        return;
      case 'policy':
        this.#onPolicyRecord(record, time);
        return;
      case 'exit': {
        const entry = this.cache.exit(record);
        this.#exits++;
        if (!entry || this.#listeners.size === 0) return;
        this.#emit(this.#exitEvent(entry, record, time));
        return;
      }
    }
  }

  #onPolicyRecord(record: PolicyRecord, time: string): void {
    const found = this.#policies?.hookOf(record.hook, record.policyId);
    // A policy deleted while its events waited in the ring: they belong to nothing now.
    if (!found) return;
    const { policy, hook } = found;
    const entry = this.cache.byPid(record.pid);
    if (!entry) return;
    const process = this.processObject(entry);
    // A namespaced policy's scope was decided in the kernel, with the pod a process exec'd in (which
    // a process that left its pod's network namespace no longer shows here).
    const parent = this.cache.parentOf(entry);
    const args = hook.args.map((arg, i) => argValue(arg, record, i));
    // A monitored policy's event names what its selector would have done (and did not).
    const monitored = hook.selectors[record.selector]?.monitored;
    const action = (monitored ? `KPROBE_ACTION_${monitored}` as TetragonAction : ACTION_NAMES[record.action]) ?? 'KPROBE_ACTION_POST';
    const common = {
      process,
      parent: parent ? this.processObject(parent, true) : undefined,
      args: args.length > 0 ? args : undefined,
      policy_name: policy.header.name,
      action,
      message: hook.message,
      tags: hook.tags,
    };
    if (hook.type === 'kprobe') {
      this.#kprobes++;
      this.#emit({ process_kprobe: { ...common, function_name: hook.functionName ?? hook.name }, node_name: this.#options.nodeName, time });
    } else {
      this.#tracepoints++;
      this.#emit({ process_tracepoint: { ...common, subsys: hook.group, event: hook.name }, node_name: this.#options.nodeName, time });
    }
  }

  #onSocketRecord(record: SocketRecord): void {
    const found = this.#policies?.sockets?.ruleOf(record.slot, record.policyId);
    if (!found) return;
    // The exec that started this binary is in the sensor's ring, written before this call was:
    // read it first, so the process is the one that made the call, not its pre-exec self.
    this.#sensor?.drain();
    const time = protoTimestamp(record.ktime + this.#wallOffset);
    const entry = this.cache.byPid(record.pid);
    const process: TetragonProcess = entry
      ? this.processObject(entry)
      : { exec_id: '', pid: record.pid, uid: 0, binary: record.binary ?? '', flags: 'miss', start_time: time, auid: 4294967295, tid: record.tid };
    // The binary the kernel judged (the exe's path) is what the verdict was about.
    if (record.binary) process.binary = record.binary;
    const parent = entry ? this.cache.parentOf(entry) : undefined;
    this.#kprobes++;
    this.#emit({ process_kprobe: { process, parent: parent ? this.processObject(parent, true) : undefined, ...socketKprobeBody(record, found.policy, found.rule) }, node_name: this.#options.nodeName, time });
  }

  #exitEvent(entry: ProcessEntry, record: ExitRecord, time: string): TetragonEvent {
    const parent = this.cache.parentOf(entry);
    const signal = record.exitCode & 0x7f;
    const status = (record.exitCode >> 8) & 0xff;
    return {
      process_exit: {
        process: this.processObject(entry),
        parent: parent ? this.processObject(parent, true) : undefined,
        signal: signal ? (SIGNAL_NAMES.get(signal) ?? `SIG${signal}`) : undefined,
        status: !signal && status ? status : undefined,
        time,
      },
      node_name: this.#options.nodeName,
      time,
    };
  }
}
