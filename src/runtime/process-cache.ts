/**
 * The process cache: every process the sensor has seen, with Tetragon's exec_id, its parent and
 * a reference count, in bounded memory.
 *
 * References (as in Tetragon's pkg/process): a process holds one on itself until it exits or
 * execs anew, and one on its parent for as long as it holds its own; so an exited parent stays
 * while a child may still name it, and goes with its last child. An entry whose count reaches
 * zero is collected after `graceMs` (late events about it still find it). Above `maxEntries`
 * the oldest unreferenced entries go first, then the oldest of all, each counted as an eviction:
 * an exec storm can grow the cache to its bound, never past it. Process-cache growth is
 * Tetragon's most reported problem (cilium/tetragon#1485, #2892); this bound is the answer.
 * @module
 */
import type { ExecRecord, ExitRecord, ForkRecord, NamespaceName } from './events.ts';
import { ExecFlag } from './events.ts';
import type { TetragonPod } from './types.ts';

/** What is known of one process image (an exec, a clone of one, or one read from /proc). */
export interface ProcessEntry {
  readonly execId: string;
  readonly pid: number;
  readonly tid: number;
  readonly ppid: number;
  /** Monotonic ns at the exec (or clone, or process start): with pid and node, the exec_id. */
  readonly ktime: bigint;
  readonly binary: string;
  readonly args: readonly string[];
  readonly cwd: string;
  /** Tetragon's flag words: execve, procFS, clone, truncArgs, rootcwd, … */
  readonly flags: readonly string[];
  /** Effective uid (Tetragon's `uid`). */
  readonly uid: number;
  readonly auid: number;
  readonly caps: { effective: bigint; permitted: bigint; inheritable: bigint };
  readonly ns: Readonly<Record<NamespaceName, number>>;
  readonly cgroupId: bigint;
  readonly parentExecId: string;
  /** The pod this process runs in, when the pod resolver knows it. */
  pod: TetragonPod | undefined;
  refcnt: number;
  exited: boolean;
  /** When the count reached zero (ms, performance.now()); collected `graceMs` later. */
  releasedAt: number;
}

export interface ProcessCacheOptions {
  /** This node's name: the first part of every exec_id. */
  nodeName: string;
  /** Most entries kept (live and exited together). Default 65536, Tetragon's --process-cache-size. */
  maxEntries?: number;
  /** How long an unreferenced entry stays for late events. Default 10 s. */
  graceMs?: number;
  /** Finds the pod of a new process (by its namespaces and cgroup); undefined for host processes. */
  resolvePod?(entry: ProcessEntry): TetragonPod | undefined;
  /** Reads a process the cache has not seen from /proc (procfs.ts); undefined when it is gone. */
  readProc?(pid: number): ProcessSnapshot | undefined;
  now?(): number;
}

/** A process as /proc shows it (procfs.ts). */
export interface ProcessSnapshot {
  pid: number;
  ppid: number;
  ktime: bigint;
  binary: string;
  args: string[];
  cwd: string;
  uid: number;
  auid: number;
  caps: { effective: bigint; permitted: bigint; inheritable: bigint };
  ns: Record<NamespaceName, number>;
}

export interface ProcessCacheStats {
  /** Entries held now. */
  size: number;
  /** The bound on entries. */
  capacity: number;
  /** Of which live (not exited, not replaced by a later exec). */
  live: number;
  /** Entries dropped while still referenced, because the cache was full. */
  evictions: number;
  /** Lookups of a pid the cache did not know (Tetragon's tetragon_process_cache_misses_total). */
  misses: number;
  /** Unreferenced entries collected. */
  collected: number;
}

/** loginuid when nobody logged in: (uid_t)-1. */
export const AUID_UNSET = 4294967295;

/** Tetragon's exec_id: base64 of "<node>:<ktime ns>:<pid>" (pkg/process/process_id_linux.go). */
export function execIdOf(nodeName: string, ktime: bigint, pid: number): string {
  return Buffer.from(`${nodeName}:${ktime}:${pid}`).toString('base64');
}

/** Tetragon's flag words for an exec record's kernel flags (pkg/reader/exec DecodeCommonFlags order). */
function execFlagWords(record: ExecRecord, cloned: boolean): string[] {
  const words = ['execve'];
  if (record.flags & ExecFlag.TRUNC_FILENAME) words.push('truncFilename');
  if (record.flags & ExecFlag.TRUNC_ARGS) words.push('truncArgs');
  if (record.flags & ExecFlag.ERROR_ARGS) words.push('errorArgs');
  if (record.cwd === '/') words.push('rootcwd');
  if (record.flags & ExecFlag.ERROR_CWD) words.push('errorCWD');
  if (record.flags & ExecFlag.TRUNC_CWD) words.push('truncCWD');
  if (cloned) words.push('clone');
  return words;
}

export class ProcessCache {
  readonly #options: Required<Pick<ProcessCacheOptions, 'nodeName' | 'maxEntries' | 'graceMs'>> & ProcessCacheOptions;
  /** Every entry by exec_id, oldest first (Map keeps insertion order). */
  readonly #byExecId = new Map<string, ProcessEntry>();
  /** The current image of each live pid. */
  readonly #byPid = new Map<number, ProcessEntry>();
  /** Unreferenced entries, in the order they were released. */
  readonly #released = new Set<ProcessEntry>();
  readonly #now: () => number;
  #evictions = 0;
  #misses = 0;
  #collected = 0;

  constructor(options: ProcessCacheOptions) {
    // `??`, not a spread: an option given as undefined keeps its default.
    this.#options = { ...options, maxEntries: options.maxEntries ?? 65536, graceMs: options.graceMs ?? 10_000 };
    if (!(this.#options.maxEntries >= 1)) throw new RangeError(`process cache: maxEntries must be at least 1, got ${this.#options.maxEntries}`);
    this.#now = options.now ?? (() => performance.now());
  }

  get size(): number {
    return this.#byExecId.size;
  }

  /** The current image of a live pid (read from /proc when unknown, if a reader was given). */
  byPid(pid: number): ProcessEntry | undefined {
    const entry = this.#byPid.get(pid);
    if (entry) return entry;
    this.#misses++;
    const snapshot = this.#options.readProc?.(pid);
    return snapshot ? this.addSnapshot(snapshot) : undefined;
  }

  byExecId(execId: string): ProcessEntry | undefined {
    return this.#byExecId.get(execId);
  }

  /** The parent entry of `entry`, or undefined when it was never known or has been evicted. */
  parentOf(entry: ProcessEntry): ProcessEntry | undefined {
    return entry.parentExecId ? this.#byExecId.get(entry.parentExecId) : undefined;
  }

  /** Ancestors from the grandparent up, at most `limit` of them. */
  ancestorsOf(entry: ProcessEntry, limit = 64): ProcessEntry[] {
    const out: ProcessEntry[] = [];
    let at = this.parentOf(entry);
    while (at && out.length < limit) {
      const next = this.parentOf(at);
      if (!next || next === entry) break;
      out.push(next);
      at = next;
    }
    return out;
  }

  /**
   * A process that existed before the sensor (from /proc). Its parent is linked when known, so
   * adding snapshots parents first (procfs.ts sorts them by start time) links every one.
   */
  addSnapshot(snapshot: ProcessSnapshot): ProcessEntry {
    const existing = this.#byPid.get(snapshot.pid);
    if (existing && existing.ktime >= snapshot.ktime) return existing;
    const parent = this.#byPid.get(snapshot.ppid);
    return this.#insert({
      execId: execIdOf(this.#options.nodeName, snapshot.ktime, snapshot.pid),
      pid: snapshot.pid,
      tid: snapshot.pid,
      ppid: snapshot.ppid,
      ktime: snapshot.ktime,
      binary: snapshot.binary,
      args: snapshot.args,
      cwd: snapshot.cwd,
      flags: snapshot.cwd === '/' ? ['procFS', 'rootcwd'] : ['procFS'],
      uid: snapshot.uid,
      auid: snapshot.auid,
      caps: snapshot.caps,
      ns: snapshot.ns,
      cgroupId: 0n,
      parentExecId: parent?.execId ?? '',
    });
  }

  /** An exec: the pid's new image replaces its previous one (a clone, or an earlier exec). */
  exec(record: ExecRecord): ProcessEntry {
    const previous = this.#byPid.get(record.pid);
    const cloned = previous !== undefined && previous.flags.includes('clone');
    if (previous) this.#retire(previous);
    // The parent as of now: a process the sensor never saw is read from /proc while it lives.
    const parent = this.byPid(record.ppid);
    // A relative path is resolved against the exec's cwd, as the kernel did.
    const binary = record.binary.startsWith('/') || !record.cwd ? record.binary : `${record.cwd === '/' ? '' : record.cwd}/${record.binary.replace(/^\.\//, '')}`;
    return this.#insert({
      execId: execIdOf(this.#options.nodeName, record.ktime, record.pid),
      pid: record.pid,
      tid: record.tid,
      ppid: record.ppid,
      ktime: record.ktime,
      binary,
      args: record.args,
      cwd: record.cwd,
      flags: execFlagWords(record, cloned),
      uid: record.euid,
      auid: record.auid,
      caps: record.caps,
      ns: record.ns,
      cgroupId: record.cgroupId,
      parentExecId: parent?.execId ?? '',
    });
  }

  /** A new process by fork/clone: the parent's image under the child's pid, flagged `clone`. */
  fork(record: ForkRecord): ProcessEntry | undefined {
    const parent = this.byPid(record.ppid);
    if (!parent) return undefined;
    const previous = this.#byPid.get(record.pid);
    if (previous) this.#retire(previous);
    return this.#insert({
      ...parent,
      execId: execIdOf(this.#options.nodeName, record.ktime, record.pid),
      pid: record.pid,
      tid: record.pid,
      ppid: record.ppid,
      ktime: record.ktime,
      flags: [...parent.flags.filter((f) => f !== 'clone' && f !== 'procFS'), 'clone'],
      parentExecId: parent.execId,
    });
  }

  /**
   * A process exited. Returns its entry (still cached: the caller builds the exit event from it
   * and its parent) or undefined when the cache never knew it.
   */
  exit(record: ExitRecord): ProcessEntry | undefined {
    const entry = this.#byPid.get(record.pid);
    if (!entry) {
      this.#misses++;
      return undefined;
    }
    this.#retire(entry);
    return entry;
  }

  /** Drops unreferenced entries older than the grace period (all of them with `force`). */
  collect(force = false): number {
    const cutoff = this.#now() - this.#options.graceMs;
    let dropped = 0;
    for (const entry of this.#released) {
      if (!force && entry.releasedAt > cutoff) break;
      this.#drop(entry);
      dropped++;
    }
    this.#collected += dropped;
    return dropped;
  }

  stats(): ProcessCacheStats {
    return { size: this.#byExecId.size, capacity: this.#options.maxEntries, live: this.#byPid.size, evictions: this.#evictions, misses: this.#misses, collected: this.#collected };
  }

  #insert(fields: Omit<ProcessEntry, 'pod' | 'refcnt' | 'exited' | 'releasedAt'>): ProcessEntry {
    const entry: ProcessEntry = { ...fields, pod: undefined, refcnt: 0, exited: false, releasedAt: 0 };
    entry.pod = this.#options.resolvePod?.(entry);
    this.#byExecId.set(entry.execId, entry);
    this.#byPid.set(entry.pid, entry);
    // One reference on itself while live, one on its parent for as long as it holds its own.
    this.#ref(entry);
    const parent = this.parentOf(entry);
    if (parent) this.#ref(parent);
    if (this.#byExecId.size > this.#options.maxEntries) this.#shrink();
    return entry;
  }

  /** The pid's image is gone (exit, or replaced by an exec): its own references go. */
  #retire(entry: ProcessEntry): void {
    if (entry.exited) return;
    entry.exited = true;
    if (this.#byPid.get(entry.pid) === entry) this.#byPid.delete(entry.pid);
    this.#unref(entry);
    const parent = this.parentOf(entry);
    if (parent) this.#unref(parent);
  }

  #ref(entry: ProcessEntry): void {
    if (entry.refcnt++ === 0) this.#released.delete(entry);
  }

  #unref(entry: ProcessEntry): void {
    if (entry.refcnt <= 0) return;
    if (--entry.refcnt === 0) {
      entry.releasedAt = this.#now();
      this.#released.add(entry);
    }
  }

  #drop(entry: ProcessEntry): void {
    this.#released.delete(entry);
    this.#byExecId.delete(entry.execId);
    if (this.#byPid.get(entry.pid) === entry) this.#byPid.delete(entry.pid);
  }

  /** Over the bound: unreferenced entries first (grace or not), then the oldest of all. */
  #shrink(): void {
    const max = this.#options.maxEntries;
    for (const entry of this.#released) {
      if (this.#byExecId.size <= max) return;
      this.#drop(entry);
      this.#collected++;
    }
    for (const entry of this.#byExecId.values()) {
      if (this.#byExecId.size <= max) return;
      // The entry that was just inserted is the newest, so it is never the one dropped here.
      this.#retire(entry);
      this.#drop(entry);
      this.#evictions++;
    }
  }
}

