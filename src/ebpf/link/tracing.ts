/**
 * Tracing attachments: tracepoints, raw tracepoints and BTF-typed programs (tp_btf, fentry, LSM),
 * plus `attachAuto`, which picks the attach mode from the program's ELF section the way libbpf's
 * skeletons do.
 *
 * Tracepoints and raw/BTF tracepoints are attached with raw syscalls rather than libbpf's
 * bpf_program__attach: the result is a plain BPF link whose fd this library owns outright, so
 * pinning, closing and `Link.openPinned` behave exactly as for TCX or cgroup links, with no libbpf
 * object to free and no perf event that libbpf would disable on destroy. libbpf is used only where
 * it adds real work (kprobe/uprobe/usdt sections that need symbol resolution), through a Link
 * subclass that hands the attachment back to libbpf on close.
 *
 * Program kinds that need a kernel feature this kernel lacks fail with NotSupportedError, and the
 * verdict comes from the kernel itself (PMUs in sysfs, /proc/kallsyms, a probe load), never from a
 * hard-coded list of kernels.
 * @module
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import koffi from 'koffi';
import { Btf } from '../btf.ts';
import { BpfError, NotSupportedError, errnoName, errorFromErrno } from '../errors.ts';
import type { Program } from '../program.ts';
import { assertProgramType } from '../program.ts';
import { AttachType, BpfCommand, Errno, ProgramType } from '../internal/constants.ts';
import { LinkCreateAttr, ProgLoadAttr, RawTracepointAttr } from '../internal/attr.ts';
import { libbpf, libbpfMessages, isNull, str, type Handle } from '../internal/libbpf.ts';
import { addressOf, bpf, bpfRaw, close, cString, perfEventOpen } from '../internal/sys.ts';
import { Link, createLink } from './link.ts';

export interface TracepointOptions {
  /** Subsystem directory under tracefs `events/`, e.g. "sched". */
  group: string;
  /** Event name, e.g. "sched_process_exec". */
  name: string;
  /** Value the program reads with bpf_get_attach_cookie(). */
  cookie?: bigint;
}

/**
 * Attaches a SEC("tracepoint/<group>/<name>") program through a perf event and a BPF_PERF_EVENT
 * link. Needs tracefs for the event id; it is mounted at /sys/kernel/tracing when nowhere mounted.
 *
 * @example
 * const link = attachTracepoint(obj.program('on_exec'), { group: 'sched', name: 'sched_process_exec' });
 */
export function attachTracepoint(program: Program, options: TracepointOptions): Link {
  assertProgramType(program, [ProgramType.TRACEPOINT], 'tracepoint');
  const { group, name } = options;
  for (const part of [group, name]) {
    if (!/^[A-Za-z0-9_.-]+$/.test(part) || part === '.' || part === '..') {
      throw new BpfError('ERR_INVALID_ARGUMENT', `attaching ${program.name}: bad tracepoint name ${group}/${name}`);
    }
  }
  const idPath = join(tracefsPath(), 'events', group, name, 'id');
  let id: number;
  try {
    id = Number.parseInt(readFileSync(idPath, 'utf8'), 10);
  } catch (error) {
    throw new BpfError('ERR_NOT_FOUND', `attaching ${program.name}: no tracepoint ${group}/${name} on this kernel (${idPath} is missing)`, {
      cause: error,
    });
  }
  const where = `tracepoint ${group}/${name}`;
  const attr = Buffer.alloc(PerfEventAttr.size);
  attr.writeUInt32LE(PERF_TYPE_TRACEPOINT, PerfEventAttr.type);
  attr.writeUInt32LE(PerfEventAttr.size, PerfEventAttr.sizeField);
  attr.writeBigUInt64LE(BigInt(id), PerfEventAttr.config);
  // pid -1, cpu 0: a system-wide event. BPF programs on a tracepoint run on every CPU regardless,
  // since they hang off the event itself, not off this one perf event's CPU.
  const perfFd = perfEventOpen(attr, -1, 0, -1, PERF_FLAG_FD_CLOEXEC, `opening a perf event for ${where}`);
  try {
    const fd = createLink(program.fd, perfFd, AttachType.PERF_EVENT, 0, `attaching ${program.name} to ${where}`, (link) => {
      if (options.cookie !== undefined) link.writeBigUInt64LE(options.cookie, LinkCreateAttr.perfCookie);
    });
    return new Link(fd, `${where} link of ${program.name}`);
  } finally {
    // The link holds its own reference to the perf event's file, so ours can go: the event lives
    // exactly as long as the link (and its pins).
    close(perfFd);
  }
}

/**
 * Attaches a SEC("raw_tp/<name>") program to a raw tracepoint through BPF_RAW_TRACEPOINT_OPEN.
 * Raw tracepoints get the tracepoint's arguments untouched (no tracefs, no record formatting).
 */
export function attachRawTracepoint(program: Program, name: string): Link {
  assertProgramType(program, [ProgramType.RAW_TRACEPOINT, PROG_TYPE_RAW_TRACEPOINT_WRITABLE], 'raw tracepoint');
  if (name.length === 0) throw new BpfError('ERR_INVALID_ARGUMENT', `attaching ${program.name}: empty raw tracepoint name`);
  const nameBuffer = cString(name);
  const attr = Buffer.alloc(RawTracepointAttr.size);
  attr.writeBigUInt64LE(addressOf(nameBuffer), RawTracepointAttr.name);
  attr.writeUInt32LE(program.fd, RawTracepointAttr.progFd);
  const fd = bpf(BpfCommand.RAW_TRACEPOINT_OPEN, attr, `attaching ${program.name} to raw tracepoint ${name}`);
  return new Link(fd, `raw tracepoint ${name} link of ${program.name}`);
}

/**
 * Attaches a BTF-typed program (tp_btf, fentry, fexit, fmod_ret, lsm) at the target its load
 * already named (the BTF id resolved by libbpf), through BPF_RAW_TRACEPOINT_OPEN without a name.
 */
export function attachTracing(program: Program): Link {
  assertProgramType(program, [ProgramType.TRACING, ProgramType.LSM], 'tracing (tp_btf/fentry/fexit/fmod_ret/lsm)');
  const kind = tracingKind(program);
  if (kind !== 'tp_btf') {
    const gap = kernelGap(kind);
    if (gap) throw gapError(gap);
  }
  const attr = Buffer.alloc(RawTracepointAttr.size);
  attr.writeUInt32LE(program.fd, RawTracepointAttr.progFd);
  const what = program.section || `${kind} program`;
  try {
    const fd = bpf(BpfCommand.RAW_TRACEPOINT_OPEN, attr, `attaching ${program.name} (${what})`);
    return new Link(fd, `${what} link of ${program.name}`);
  } catch (error) {
    const gap = kind === 'tp_btf' ? undefined : kernelGap(kind, true);
    if (gap && BpfError.is(error) && REFUSED.has(error.errno ?? 0)) throw gapError(gap, error);
    throw error;
  }
}

/**
 * Attaches a program by its section name, as a libbpf skeleton would: tracepoints, raw and BTF
 * tracepoints, fentry/fexit/fmod_ret/lsm here; kprobe, uprobe (with a target in the section),
 * usdt and other auto-attachable sections through libbpf. Sections that need a kernel feature
 * this kernel lacks throw NotSupportedError naming it.
 *
 * @example
 * for (const program of obj.programs.values()) links.push(attachAuto(program));
 */
export function attachAuto(program: Program): Link {
  const section = program.section;
  const parsed = parseSection(section);
  const gap = isGapKind(parsed.kind) ? kernelGap(parsed.kind) : null;
  if (gap) throw gapError(gap);
  const noTarget = (how: string): never => {
    throw new BpfError('ERR_INVALID_ARGUMENT', `attaching ${program.name}: section "${section}" names no target; use ${how}`);
  };
  switch (parsed.kind) {
    case 'tracepoint': {
      const slash = parsed.target.indexOf('/');
      if (slash <= 0 || slash === parsed.target.length - 1) return noTarget('attachTracepoint(program, { group, name })');
      return attachTracepoint(program, { group: parsed.target.slice(0, slash), name: parsed.target.slice(slash + 1) });
    }
    case 'raw_tracepoint':
      return parsed.target ? attachRawTracepoint(program, parsed.target) : noTarget('attachRawTracepoint(program, name)');
    case 'tp_btf':
    case 'fentry':
    case 'fexit':
    case 'fmod_ret':
    case 'lsm':
      return attachTracing(program);
    case 'uprobe':
      // "uprobe" alone is attached by the caller, who knows the binary; "uprobe/<path>:<func>"
      // carries its own target, which libbpf parses.
      if (!parsed.target) return noTarget('attachUprobe(program, { binary, symbol })');
      return attachWithLibbpf(program);
    case 'kprobe':
    case 'other':
      return attachWithLibbpf(program);
  }
}

/**
 * Why the kernel cannot run programs of the given section, as a NotSupportedError, or undefined
 * when it can (or when that cannot be told). `cause` becomes the error's cause: pass the load or
 * attach failure this explains.
 */
export function unsupportedFeatureFor(section: string, cause?: unknown): NotSupportedError | undefined {
  const { kind } = parseSection(section);
  if (!isGapKind(kind)) return undefined;
  const gap = kernelGap(kind);
  return gap ? gapError(gap, cause) : undefined;
}

/**
 * Re-explains a BpfObject.load failure caused by a program kind this kernel refuses (fentry or
 * LSM programs fail with EPERM before the verifier even runs, which otherwise reads like a
 * permission problem). Returns a NotSupportedError with the original as its cause, or `error`
 * itself when the kernel does support what the object needs.
 *
 * @example
 * try { obj = BpfObject.load(path); } catch (error) { throw explainLoadError(error, path); }
 */
export function explainLoadError(error: unknown, path: string): unknown {
  if (!BpfError.is(error) || error.code === 'ERR_NOT_SUPPORTED' || !REFUSED.has(error.errno ?? 0)) return error;
  const sections = programSections(path);
  if (!sections) return error;
  // Prefer the program libbpf named as failing; object.ts quotes libbpf's "prog 'x': failed to load".
  const failed = /prog '([^']+)': failed to load/.exec(error.message)?.[1] ?? /program (\S+) was refused/.exec(error.message)?.[1];
  const candidates = failed && sections.has(failed) ? [sections.get(failed) ?? ''] : [...sections.values()];
  for (const section of candidates) {
    const explained = unsupportedFeatureFor(section, error);
    if (explained) return explained;
  }
  return error;
}

/**
 * The tracefs mount point. When tracefs is mounted nowhere (minimal VMs, some containers) it is
 * mounted at /sys/kernel/tracing, as systemd would at boot: tracepoint ids exist only there.
 */
export function tracefsPath(): string {
  const found = mountedTracefs();
  if (found) return found;
  const target = '/sys/kernel/tracing';
  if (!existsSync(target)) throw new NotSupportedError('tracefs', { detail: `${target} does not exist: CONFIG_TRACING is off` });
  if (mount('tracefs', target, 'tracefs', MS_NOSUID | MS_NODEV | MS_NOEXEC, null) !== 0) {
    const errno = koffi.errno();
    // EBUSY: someone else mounted it in between.
    if (errno !== Errno.EBUSY || !mountedTracefs()) throw errorFromErrno(`mounting tracefs at ${target}`, errno);
  }
  return target;
}

// ---------------------------------------------------------------------------------------------
// libbpf-created links

/**
 * A link libbpf created (kprobe, uprobe, usdt...). libbpf keeps the perf event fd (and, for
 * legacy probes, a tracefs entry) behind the link fd, so the attachment goes back to libbpf on
 * close: bpf_link__destroy closes both fds exactly once. Pinning works on the BPF link fd, and a
 * pinned link stays attached after close because the link holds the perf event's file.
 */
class LibbpfLink extends Link {
  #handle: Handle | null;

  constructor(handle: Handle, description: string) {
    super(libbpf.linkFd(handle) as number, description);
    this.#handle = handle;
  }

  override close(): void {
    if (this.#handle === null) return;
    const handle = this.#handle;
    this.#handle = null;
    libbpf.linkDestroy(handle);
  }
}

/**
 * Wraps the result of a libbpf attach call. `attach` runs with libbpf's message log cleared, so a
 * failure carries libbpf's own explanation (symbol not found, no such binary...).
 */
export function libbpfAttach(program: Program, description: string, context: string, attach: (handle: Handle) => Handle): Link {
  const handle = program.libbpfHandle;
  if (handle === undefined || handle === null) {
    throw new BpfError('ERR_INVALID_ARGUMENT', `${context}: the program was not loaded through BpfObject, and libbpf must resolve this attach`);
  }
  libbpfMessages.length = 0;
  const link = attach(handle);
  if (isNull(link)) {
    const errno = koffi.errno();
    const recent = libbpfMessages.slice(-3).map((m) => m.replace(/^libbpf: /, ''));
    const messages = recent.length > 0 ? ` (libbpf: ${recent.join(' | ')})` : '';
    throw errorFromErrno(`${context}${messages}`, errno);
  }
  const fd = libbpf.linkFd(link) as number;
  if (fd < 0) {
    // Links without a kernel object (none of the kinds routed here) cannot be pinned or closed
    // by fd; refuse them rather than hand out a Link whose fd means nothing.
    libbpf.linkDestroy(link);
    throw new BpfError('ERR_NOT_SUPPORTED', `${context}: libbpf attached without a BPF link fd`);
  }
  return new LibbpfLink(link, description);
}

function attachWithLibbpf(program: Program): Link {
  return libbpfAttach(program, `${program.section} link of ${program.name}`, `attaching ${program.name} (${program.section})`, (handle) =>
    libbpf.attach(handle),
  );
}

// ---------------------------------------------------------------------------------------------
// Sections and kernel feature detection

type GapKind = 'kprobe' | 'fentry' | 'fexit' | 'fmod_ret' | 'lsm';
type SectionKind = GapKind | 'tracepoint' | 'raw_tracepoint' | 'tp_btf' | 'uprobe' | 'other';

// libbpf's section_defs, by kind; the ".s" variants are sleepable programs of the same kind.
const SECTION_PREFIXES: readonly (readonly [string, SectionKind])[] = [
  ['tracepoint', 'tracepoint'],
  ['tp', 'tracepoint'],
  ['raw_tracepoint', 'raw_tracepoint'],
  ['raw_tp', 'raw_tracepoint'],
  ['raw_tracepoint.w', 'raw_tracepoint'],
  ['raw_tp.w', 'raw_tracepoint'],
  ['tp_btf', 'tp_btf'],
  ['fentry', 'fentry'],
  ['fentry.s', 'fentry'],
  ['fexit', 'fexit'],
  ['fexit.s', 'fexit'],
  ['fmod_ret', 'fmod_ret'],
  ['fmod_ret.s', 'fmod_ret'],
  ['lsm', 'lsm'],
  ['lsm.s', 'lsm'],
  ['kprobe', 'kprobe'],
  ['kretprobe', 'kprobe'],
  ['kprobe.multi', 'kprobe'],
  ['kretprobe.multi', 'kprobe'],
  ['ksyscall', 'kprobe'],
  ['kretsyscall', 'kprobe'],
  ['uprobe', 'uprobe'],
  ['uretprobe', 'uprobe'],
  ['uprobe.s', 'uprobe'],
  ['uretprobe.s', 'uprobe'],
];

function isGapKind(kind: SectionKind): kind is GapKind {
  return kind === 'kprobe' || kind === 'fentry' || kind === 'fexit' || kind === 'fmod_ret' || kind === 'lsm';
}

function parseSection(section: string): { kind: SectionKind; target: string } {
  const slash = section.indexOf('/');
  const prefix = slash < 0 ? section : section.slice(0, slash);
  const kind = SECTION_PREFIXES.find(([p]) => p === prefix)?.[1] ?? 'other';
  return { kind, target: slash < 0 ? '' : section.slice(slash + 1) };
}

function tracingKind(program: Program): 'tp_btf' | 'fentry' | 'fexit' | 'fmod_ret' | 'lsm' {
  if (program.type === ProgramType.LSM) return 'lsm';
  switch (program.expectedAttachType) {
    case AttachType.TRACE_FENTRY:
      return 'fentry';
    case AttachType.TRACE_FEXIT:
      return 'fexit';
    case AttachType.MODIFY_RETURN:
      return 'fmod_ret';
    case AttachType.TRACE_RAW_TP:
      return 'tp_btf';
  }
  // Programs opened from a pin have no expected attach type; fall back on the section.
  const kind = parseSection(program.section).kind;
  return kind === 'fentry' || kind === 'fexit' || kind === 'fmod_ret' || kind === 'lsm' ? kind : 'tp_btf';
}

interface Gap {
  feature: string;
  detail: string;
  errno?: number;
}

function gapError(gap: Gap, cause?: unknown): NotSupportedError {
  return new NotSupportedError(gap.feature, { detail: gap.detail, errno: gap.errno, cause });
}

/** Errnos with which the kernel refuses a program kind it does not offer. */
const REFUSED: ReadonlySet<number> = new Set([Errno.EPERM, Errno.EOPNOTSUPP, Errno.ENOTSUPP_KERNEL, Errno.ENOSYS]);

const gaps = new Map<GapKind, Gap | null>();

/** What this kernel lacks to run `kind` programs, or null. Probed once per kind. */
function kernelGap(kind: GapKind, refresh = false): Gap | null {
  if (refresh || !gaps.has(kind)) gaps.set(kind, kind === 'kprobe' ? kprobeGap() : trampolineGap(kind));
  return gaps.get(kind) ?? null;
}

function kprobeGap(): Gap | null {
  if (existsSync('/sys/bus/event_source/devices/kprobe')) return null;
  const tracefs = mountedTracefs();
  if (tracefs && existsSync(join(tracefs, 'kprobe_events'))) return null;
  // Without the kprobe PMU or tracefs kprobe_events, tell the two configs apart by the symbol
  // the kprobes core always exports.
  const core = kallsymsHas('register_kprobe');
  return { feature: 'kprobes', detail: core === false ? 'CONFIG_KPROBES is off' : 'CONFIG_KPROBE_EVENTS is off' };
}

const TRAMPOLINE_TARGETS: Record<Exclude<GapKind, 'kprobe'>, { attachType: number; type: number; funcs: readonly string[]; feature: string }> = {
  fentry: { attachType: AttachType.TRACE_FENTRY, type: ProgramType.TRACING, funcs: ['bpf_fentry_test1', 'do_unlinkat'], feature: 'fentry programs' },
  fexit: { attachType: AttachType.TRACE_FEXIT, type: ProgramType.TRACING, funcs: ['bpf_fentry_test1', 'do_unlinkat'], feature: 'fexit programs' },
  fmod_ret: { attachType: AttachType.MODIFY_RETURN, type: ProgramType.TRACING, funcs: ['bpf_modify_return_test'], feature: 'fmod_ret programs' },
  lsm: { attachType: AttachType.LSM_MAC, type: ProgramType.LSM, funcs: ['bpf_lsm_file_open'], feature: 'BPF LSM programs' },
};

/**
 * Loads a two-instruction program of the kind against a vmlinux function: whether that load
 * succeeds is the kernel's own answer, whatever config or policy is behind it.
 */
function trampolineGap(kind: Exclude<GapKind, 'kprobe'>): Gap | null {
  const target = TRAMPOLINE_TARGETS[kind];
  if (!existsSync('/sys/kernel/btf/vmlinux')) return { feature: target.feature, detail: 'the kernel has no BTF (CONFIG_DEBUG_INFO_BTF is off)' };
  const btf = vmlinuxBtf();
  const func = target.funcs.find((name) => btf.findType('func', name) !== undefined);
  if (func === undefined) {
    return kind === 'lsm' ? { feature: target.feature, detail: 'CONFIG_BPF_LSM is off (no bpf_lsm_* hooks in the kernel BTF)' } : null;
  }
  const insns = Buffer.from([0xb7, 0, 0, 0, 0, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0]); // r0 = 0; exit
  const license = cString('GPL');
  const attr = Buffer.alloc(ProgLoadAttr.size);
  attr.writeUInt32LE(target.type, ProgLoadAttr.progType);
  attr.writeUInt32LE(insns.length / 8, ProgLoadAttr.insnCnt);
  attr.writeBigUInt64LE(addressOf(insns), ProgLoadAttr.insns);
  attr.writeBigUInt64LE(addressOf(license), ProgLoadAttr.license);
  attr.writeUInt32LE(target.attachType, ProgLoadAttr.expectedAttachType);
  attr.writeUInt32LE(btf.findType('func', func) ?? 0, ProgLoadAttr.attachBtfId);
  const ret = bpfRaw(BpfCommand.PROG_LOAD, attr);
  if (ret >= 0) {
    close(ret);
    return kind === 'lsm' ? lsmInactiveGap(target.feature) : null;
  }
  const errno = -ret;
  // EPERM only means "unsupported" when we hold the capabilities: otherwise it is ours to fix.
  if (!REFUSED.has(errno) || (errno === Errno.EPERM && !privileged())) return null;
  return { feature: target.feature, detail: `the kernel refuses to load them: ${errnoName(errno)} before verification, even with CAP_BPF`, errno };
}

/** BPF LSM programs load and attach even when "bpf" is not an active LSM, but never run. */
function lsmInactiveGap(feature: string): Gap | null {
  let active: string;
  try {
    active = readFileSync('/sys/kernel/security/lsm', 'utf8');
  } catch {
    return null; // securityfs not mounted: cannot tell, assume it runs
  }
  return active.split(',').map((s) => s.trim()).includes('bpf') ? null : { feature, detail: `"bpf" is not among the active LSMs (${active.trim()})` };
}

let vmlinux: Btf | undefined;
function vmlinuxBtf(): Btf {
  vmlinux ??= Btf.fromFile('/sys/kernel/btf/vmlinux');
  return vmlinux;
}

function kallsymsHas(symbol: string): boolean | undefined {
  try {
    const text = readFileSync('/proc/kallsyms', 'utf8');
    // Unprivileged readers see zero addresses but still the names, which is all this needs.
    return new RegExp(` [TtWw] ${symbol}(\\t|$)`, 'm').test(text);
  } catch {
    return undefined;
  }
}

const CAP_SYS_ADMIN = 21n;
const CAP_PERFMON = 38n;
const CAP_BPF = 39n;
function privileged(): boolean {
  try {
    const hex = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'))?.[1];
    if (hex === undefined) return false;
    const caps = BigInt(`0x${hex}`);
    const has = (cap: bigint): boolean => ((caps >> cap) & 1n) === 1n;
    return has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON));
  } catch {
    return false;
  }
}

/** Program name → section, read by libbpf without loading anything. */
function programSections(path: string): Map<string, string> | undefined {
  const handle = libbpf.openFile(path, null);
  if (isNull(handle)) return undefined;
  try {
    const sections = new Map<string, string>();
    for (let prog = libbpf.nextProgram(handle, null); !isNull(prog); prog = libbpf.nextProgram(handle, prog)) {
      sections.set(str(libbpf.programName(prog)), str(libbpf.programSection(prog)));
    }
    return sections;
  } finally {
    libbpf.closeObject(handle);
  }
}

// ---------------------------------------------------------------------------------------------
// tracefs and perf events

function mountedTracefs(): string | undefined {
  let mounts: string[];
  try {
    mounts = readFileSync('/proc/self/mounts', 'utf8').split('\n');
  } catch {
    return undefined;
  }
  const entries = mounts.map((line) => line.split(' ')).filter((fields) => fields.length >= 3);
  // /proc/mounts escapes blanks in mount points as octal (\040).
  const unescape = (path: string): string => path.replace(/\\([0-7]{3})/g, (_, octal: string) => String.fromCharCode(Number.parseInt(octal, 8)));
  const tracefs = entries.find((fields) => fields[2] === 'tracefs');
  if (tracefs) return unescape(tracefs[1]);
  // debugfs automounts tracefs at <debugfs>/tracing on first access.
  for (const fields of entries.filter((f) => f[2] === 'debugfs')) {
    const path = join(unescape(fields[1]), 'tracing');
    if (existsSync(join(path, 'events'))) return path;
  }
  return undefined;
}

// mount(2) is needed only here, for tracefs; sys.ts holds the general-purpose syscalls.
const mount = koffi
  .load('libc.so.6')
  .func('int mount(const char *source, const char *target, const char *fstype, unsigned long flags, const void *data)');
const MS_NOSUID = 2;
const MS_NODEV = 4;
const MS_NOEXEC = 8;

const PERF_TYPE_TRACEPOINT = 2;
const PERF_FLAG_FD_CLOEXEC = 8;
/** The leading fields of struct perf_event_attr; 128 bytes is PERF_ATTR_SIZE_VER7. */
const PerfEventAttr = { type: 0, sizeField: 4, config: 8, size: 128 } as const;

/** BPF_PROG_TYPE_RAW_TRACEPOINT_WRITABLE (raw_tp.w sections); not in constants.ts. */
const PROG_TYPE_RAW_TRACEPOINT_WRITABLE = 24;
