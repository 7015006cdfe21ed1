/**
 * Kernel feature probes, in the manner of cilium/ebpf's `features` package and
 * `bpftool feature probe`: instead of guessing from the kernel version, each probe asks the
 * kernel directly — it creates a tiny map, loads a two-instruction program, calls a helper,
 * queries an attach point, or adds a throwaway device in a throwaway network namespace — and
 * reads the answer from the errno and the verifier log.
 *
 * Everything is raw bpf(2) (no libbpf), synchronous, and side-effect free: every fd a probe opens
 * is closed before it returns, and devices are only ever created inside an anonymous network
 * namespace that disappears with the process that made it.
 *
 * @example
 * requireFeature('tcx');                      // throws NotSupportedError on kernels before 6.6
 * console.log(formatFeatureReport(probeAll()));
 * @module
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { release } from 'node:os';
import { gunzipSync } from 'node:zlib';
import { Btf } from './btf.ts';
import { BpfError, NotSupportedError, PermissionError, errnoName } from './errors.ts';
import { AttachType, BpfCommand, Errno, MapFlag, MapType, ProgramType } from './internal/constants.ts';
import { LinkCreateAttr, MapCreateAttr, ProgLoadAttr, ProgQueryAttr } from './internal/attr.ts';
import { PAGE_SIZE, addressOf, bpfRaw, close } from './internal/sys.ts';

// ---------------------------------------------------------------------------------------------
// Public types

export type FeatureStatus = 'supported' | 'unsupported' | 'unknown';

/** The answer of one probe. `errno` is set when a syscall's failure decided (or clouded) it. */
export interface ProbeResult {
  status: FeatureStatus;
  detail?: string;
  errno?: number;
}

export interface FeatureItem extends ProbeResult {
  /** Unique across the whole report, so requireFeature() can take it as is. */
  name: string;
}

export type FeatureSectionId = 'kernel' | 'maps' | 'programs' | 'attach' | 'helpers' | 'devices';

export interface FeatureSection {
  id: FeatureSectionId;
  title: string;
  items: FeatureItem[];
}

/** A plain object, so `JSON.stringify(report)` is the JSON output of `ciliate bpf features`. */
export interface FeatureReport {
  /** uname -r */
  kernel: string;
  /** Wall-clock time the probes took, in milliseconds. */
  durationMs: number;
  sections: FeatureSection[];
}

/** Helper ids (enum bpf_func_id) whose availability decides which datapath Ciliate can build. */
export const Helper = {
  skb_set_tunnel_key: 21,
  fib_lookup: 69,
  get_current_cgroup_id: 80,
  send_signal: 109,
  ringbuf_output: 130,
  redirect_neigh: 152,
  redirect_peer: 155,
  loop: 181,
} as const;
export type Helper = (typeof Helper)[keyof typeof Helper];

// ---------------------------------------------------------------------------------------------
// Raw pieces: instructions, attrs, errno classification

// BPF_CMD_BTF_LOAD is not in BpfCommand (nothing else in the library loads raw BTF); it is
// UAPI, so the number is stable.
const BTF_LOAD = 18 as BpfCommand;
const BtfLoadAttr = { btf: 0, logBuf: 8, btfSize: 16, logSize: 20, logLevel: 24, size: 32 } as const;

/** BPF_F_SLEEPABLE: syscall programs must be sleepable or the verifier refuses them. */
const PROG_F_SLEEPABLE = 1 << 4;
const ATTACH_CGROUP_GETSOCKOPT = 21;

const OP_MOV64_IMM = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const OP_CALL = 0x85; // BPF_JMP | BPF_CALL
const OP_EXIT = 0x95; // BPF_JMP | BPF_EXIT

function insn(opcode: number, dst: number, imm: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt8(opcode, 0);
  b.writeUInt8(dst & 0x0f, 1); // src register 0, offset 0
  b.writeInt32LE(imm, 4);
  return b;
}

/** `r0 = 0; exit`: the smallest program every type's verifier accepts. */
const RETURN_ZERO = Buffer.concat([insn(OP_MOV64_IMM, 0, 0), insn(OP_EXIT, 0, 0)]);

/**
 * `r1..r5 = 0; call id; r0 = 0; exit`. Zeroed arguments make any known helper fail (or pass) on
 * its argument checks, which the verifier only reaches once it has accepted the helper id.
 * r0 is reset after the call because void helpers leave it unreadable.
 */
function helperCall(id: number): Buffer {
  return Buffer.concat([
    insn(OP_MOV64_IMM, 1, 0),
    insn(OP_MOV64_IMM, 2, 0),
    insn(OP_MOV64_IMM, 3, 0),
    insn(OP_MOV64_IMM, 4, 0),
    insn(OP_MOV64_IMM, 5, 0),
    insn(OP_CALL, 0, id),
    insn(OP_MOV64_IMM, 0, 0),
    insn(OP_EXIT, 0, 0),
  ]);
}

const LICENSE = Buffer.from('GPL\0');
const PROG_NAME = 'ciliate_probe';
// One log buffer for every load: probes are synchronous, and 64 KiB is far more than the
// verifier writes for an eight-instruction program (too small a buffer would turn success into ENOSPC).
const LOG_SIZE = 64 * 1024;
const logBuffer = Buffer.alloc(LOG_SIZE);

interface LoadOptions {
  expectedAttachType?: number;
  attachBtfId?: number;
  flags?: number;
}

interface LoadOutcome {
  /** The program fd (caller closes it), or -errno. */
  fd: number;
  log: string;
}

const PROG_LOAD_ATTEMPTS = 5;

function loadProgram(type: number, insns: Buffer, options: LoadOptions = {}): LoadOutcome {
  const attr = Buffer.alloc(ProgLoadAttr.size);
  attr.writeUInt32LE(type, ProgLoadAttr.progType);
  attr.writeUInt32LE(insns.length / 8, ProgLoadAttr.insnCnt);
  attr.writeBigUInt64LE(addressOf(insns), ProgLoadAttr.insns);
  attr.writeBigUInt64LE(addressOf(LICENSE), ProgLoadAttr.license);
  attr.writeUInt32LE(1, ProgLoadAttr.logLevel);
  attr.writeUInt32LE(LOG_SIZE, ProgLoadAttr.logSize);
  attr.writeBigUInt64LE(addressOf(logBuffer), ProgLoadAttr.logBuf);
  attr.writeUInt32LE(options.flags ?? 0, ProgLoadAttr.progFlags);
  attr.write(PROG_NAME, ProgLoadAttr.progName, 'ascii');
  attr.writeUInt32LE(options.expectedAttachType ?? 0, ProgLoadAttr.expectedAttachType);
  attr.writeUInt32LE(options.attachBtfId ?? 0, ProgLoadAttr.attachBtfId);
  // The verifier gives up with EAGAIN when a signal is pending (a child exiting, say): tried again,
  // as libbpf's loads are (PROG_LOAD_ATTEMPTS), so a probe never reads a signal as a missing feature.
  let fd = -Errno.EAGAIN;
  for (let attempt = 0; attempt < PROG_LOAD_ATTEMPTS && fd === -Errno.EAGAIN; attempt++) {
    logBuffer[0] = 0;
    fd = bpfRaw(BpfCommand.PROG_LOAD, attr);
  }
  const end = logBuffer.indexOf(0);
  return { fd, log: logBuffer.toString('utf8', 0, end < 0 ? LOG_SIZE : end).trim() };
}

function lastLine(log: string): string {
  const lines = log.split('\n').filter((l) => l.trim() !== '' && !l.startsWith('processed ') && !l.startsWith('verification time'));
  return lines.at(-1)?.trim() ?? '';
}

interface MapAttrSpec {
  keySize: number;
  valueSize: number;
  maxEntries: number;
  flags?: number;
  innerMapFd?: number;
  btfFd?: number;
  btfKeyTypeId?: number;
  btfValueTypeId?: number;
}

function createMap(type: number, spec: MapAttrSpec): number {
  const attr = Buffer.alloc(MapCreateAttr.size);
  attr.writeUInt32LE(type, MapCreateAttr.mapType);
  attr.writeUInt32LE(spec.keySize, MapCreateAttr.keySize);
  attr.writeUInt32LE(spec.valueSize, MapCreateAttr.valueSize);
  attr.writeUInt32LE(spec.maxEntries, MapCreateAttr.maxEntries);
  attr.writeUInt32LE(spec.flags ?? 0, MapCreateAttr.mapFlags);
  attr.writeUInt32LE(spec.innerMapFd ?? 0, MapCreateAttr.innerMapFd);
  attr.writeUInt32LE(spec.btfFd ?? 0, MapCreateAttr.btfFd);
  attr.writeUInt32LE(spec.btfKeyTypeId ?? 0, MapCreateAttr.btfKeyTypeId);
  attr.writeUInt32LE(spec.btfValueTypeId ?? 0, MapCreateAttr.btfValueTypeId);
  return bpfRaw(BpfCommand.MAP_CREATE, attr);
}

/**
 * A BTF blob holding one type, `int` (id 1): local-storage maps refuse to be created without
 * BTF ids for their key and value, so their probe has to bring some.
 */
function loadIntBtf(): number {
  const strings = Buffer.from('\0int\0');
  const types = Buffer.alloc(16);
  types.writeUInt32LE(1, 0); // name_off: "int"
  types.writeUInt32LE(1 << 24, 4); // info: kind BTF_KIND_INT, vlen 0
  types.writeUInt32LE(4, 8); // size
  types.writeUInt32LE((1 << 24) | 32, 12); // BTF_INT_SIGNED, offset 0, 32 bits
  const header = Buffer.alloc(24);
  header.writeUInt16LE(0xeb9f, 0);
  header.writeUInt8(1, 2); // version
  header.writeUInt32LE(24, 4); // hdr_len
  header.writeUInt32LE(0, 8); // type_off
  header.writeUInt32LE(types.length, 12);
  header.writeUInt32LE(types.length, 16); // str_off
  header.writeUInt32LE(strings.length, 20);
  const blob = Buffer.concat([header, types, strings]);
  const attr = Buffer.alloc(BtfLoadAttr.size);
  attr.writeBigUInt64LE(addressOf(blob), BtfLoadAttr.btf);
  attr.writeUInt32LE(blob.length, BtfLoadAttr.btfSize);
  return bpfRaw(BTF_LOAD, attr);
}

const NOT_SUPPORTED_ERRNOS = new Set<number>([Errno.EINVAL, Errno.EOPNOTSUPP, Errno.ENOTSUPP_KERNEL, Errno.E2BIG]);

// ---------------------------------------------------------------------------------------------
// Privilege

const CAP_NET_ADMIN = 12n;
const CAP_SYS_ADMIN = 21n;
const CAP_PERFMON = 38n;
const CAP_BPF = 39n;

/**
 * Whether this process may probe at all. Without privilege every probe fails with EPERM, and a
 * report of "everything unsupported" would be a lie, so probes refuse up front instead. The
 * capability set is what counts (root in a container may lack CAP_SYS_ADMIN; a non-root agent may
 * hold CAP_BPF); the uid is only the fallback when /proc/self/status cannot be read.
 */
function isPrivileged(): boolean {
  try {
    const match = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
    if (match) {
      const caps = BigInt(`0x${match[1]}`);
      const has = (bit: bigint): boolean => ((caps >> bit) & 1n) === 1n;
      return has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON) && has(CAP_NET_ADMIN));
    }
  } catch {
    // fall through to the uid
  }
  return process.getuid?.() === 0;
}

function assertPrivileged(context: string): void {
  if (!isPrivileged()) throw new PermissionError(context, Errno.EPERM);
}

// ---------------------------------------------------------------------------------------------
// Map types

const MAP_TYPE_NAMES = new Map<number, string>(Object.entries(MapType).map(([k, v]) => [v, k.toLowerCase()]));
const PROGRAM_TYPE_NAMES = new Map<number, string>(Object.entries(ProgramType).map(([k, v]) => [v, k.toLowerCase()]));

export function mapTypeName(type: MapType): string {
  return MAP_TYPE_NAMES.get(type) ?? `map type ${type}`;
}

export function programTypeName(type: ProgramType): string {
  return PROGRAM_TYPE_NAMES.get(type) ?? `program type ${type}`;
}

/** The smallest attributes each map type accepts; the kernel validates these per type. */
function mapProbeSpec(type: MapType): MapAttrSpec {
  switch (type) {
    case MapType.LPM_TRIE:
      // Key: a u32 prefix length followed by the data; the trie only exists without preallocation.
      return { keySize: 8, valueSize: 4, maxEntries: 1, flags: MapFlag.NO_PREALLOC };
    case MapType.STACK_TRACE:
      // Values are arrays of u64 instruction pointers.
      return { keySize: 4, valueSize: 8, maxEntries: 1 };
    case MapType.QUEUE:
    case MapType.STACK:
    case MapType.BLOOM_FILTER:
      return { keySize: 0, valueSize: 4, maxEntries: 1 };
    case MapType.RINGBUF:
    case MapType.USER_RINGBUF:
      // max_entries is the data size in bytes: a power-of-two multiple of the page size.
      return { keySize: 0, valueSize: 0, maxEntries: PAGE_SIZE };
    case MapType.SK_STORAGE:
    case MapType.INODE_STORAGE:
    case MapType.TASK_STORAGE:
    case MapType.CGRP_STORAGE:
      // Sized by their owner objects: max_entries must be 0 and BTF ids are added by the caller.
      return { keySize: 4, valueSize: 4, maxEntries: 0, flags: MapFlag.NO_PREALLOC };
    default:
      return { keySize: 4, valueSize: 4, maxEntries: 1 };
  }
}

/** Creates (and closes) a tiny map of `type`. */
export function probeMapType(type: MapType): ProbeResult {
  assertPrivileged(`probing map type ${mapTypeName(type)}`);
  return probeMapTypeUnchecked(type);
}

function probeMapTypeUnchecked(type: MapType): ProbeResult {
  const spec = mapProbeSpec(type);
  const extraFds: number[] = [];
  try {
    if (type === MapType.ARRAY_OF_MAPS || type === MapType.HASH_OF_MAPS) {
      const inner = createMap(MapType.ARRAY, { keySize: 4, valueSize: 4, maxEntries: 1 });
      if (inner < 0) return fromErrno(-inner, 'creating the inner array map');
      extraFds.push(inner);
      spec.innerMapFd = inner;
    }
    if (spec.maxEntries === 0) {
      const btf = loadIntBtf();
      if (btf < 0) return fromErrno(-btf, 'loading BTF for the key and value');
      extraFds.push(btf);
      Object.assign(spec, { btfFd: btf, btfKeyTypeId: 1, btfValueTypeId: 1 });
    }
    const fd = createMap(type, spec);
    if (fd >= 0) {
      close(fd);
      return { status: 'supported' };
    }
    return fromErrno(-fd, 'creating the map');
  } finally {
    for (const fd of extraFds) close(fd);
  }
}

function fromErrno(errno: number, what: string): ProbeResult {
  if (NOT_SUPPORTED_ERRNOS.has(errno)) return { status: 'unsupported', detail: `${what}: ${errnoName(errno)}`, errno };
  if (errno === Errno.EPERM) return { status: 'unsupported', detail: `${what}: refused (EPERM)`, errno };
  return { status: 'unknown', detail: `${what}: ${errnoName(errno)}`, errno };
}

// ---------------------------------------------------------------------------------------------
// Program types

let vmlinuxBtf: Btf | null | undefined;
/** vmlinux BTF, parsed once per process (it cannot change under a running kernel). */
function kernelBtf(): Btf | null {
  if (vmlinuxBtf === undefined) {
    try {
      vmlinuxBtf = Btf.fromFile('/sys/kernel/btf/vmlinux');
    } catch {
      vmlinuxBtf = null;
    }
  }
  return vmlinuxBtf;
}

interface BtfTarget {
  kind: 'func' | 'typedef';
  name: string;
}

/**
 * What tracing-style programs attach to at load time. fentry/fexit take any traceable function;
 * fmod_ret only error-injectable or `security_*` ones; tp_btf a `btf_trace_*` typedef; and LSM
 * programs the `bpf_lsm_*` stub of a hook (not `security_*`, which the verifier rejects).
 */
function btfTarget(type: ProgramType, attach: number): BtfTarget | undefined {
  if (type === ProgramType.LSM) return { kind: 'func', name: 'bpf_lsm_file_open' };
  if (type !== ProgramType.TRACING) return undefined;
  switch (attach) {
    case AttachType.TRACE_RAW_TP:
      return { kind: 'typedef', name: 'btf_trace_sched_switch' };
    case AttachType.MODIFY_RETURN:
      return { kind: 'func', name: 'security_file_open' };
    default:
      return { kind: 'func', name: 'do_unlinkat' };
  }
}

/** The expected_attach_type a type needs when the caller gives none (0 is refused for these). */
function defaultAttachType(type: ProgramType): number {
  switch (type) {
    case ProgramType.CGROUP_SOCK_ADDR:
      return AttachType.CGROUP_INET4_CONNECT;
    case ProgramType.CGROUP_SOCKOPT:
      return ATTACH_CGROUP_GETSOCKOPT;
    case ProgramType.SK_LOOKUP:
      return AttachType.SK_LOOKUP;
    case ProgramType.NETFILTER:
      return AttachType.NETFILTER;
    case ProgramType.TRACING:
      return AttachType.TRACE_FENTRY;
    case ProgramType.LSM:
      return AttachType.LSM_MAC;
    default:
      return 0;
  }
}

/**
 * Loads (and closes) `r0 = 0; exit` as a program of `type`. EINVAL before the verifier ran means
 * the kernel does not know the type; EPERM for a type that needs a BTF target means the kernel
 * refuses such programs outright (as it does here for fentry and LSM, which a lockdown-like
 * policy can forbid even for root).
 */
export function probeProgramType(type: ProgramType, expectedAttachType?: AttachType): ProbeResult {
  assertPrivileged(`probing program type ${programTypeName(type)}`);
  return probeProgramTypeUnchecked(type, expectedAttachType);
}

function probeProgramTypeUnchecked(type: ProgramType, expectedAttachType?: number): ProbeResult {
  if (type === ProgramType.EXT || type === ProgramType.STRUCT_OPS) {
    // Both load against a target (a BTF-carrying program, a struct_ops type) this probe lacks.
    return { status: 'unknown', detail: 'not probed: loading needs a target program or struct_ops type' };
  }
  const attach = expectedAttachType ?? defaultAttachType(type);
  const options: LoadOptions = { expectedAttachType: attach };
  if (type === ProgramType.SYSCALL) options.flags = PROG_F_SLEEPABLE;
  const target = btfTarget(type, attach);
  let targetText = '';
  if (target) {
    const btf = kernelBtf();
    if (!btf) return { status: 'unsupported', detail: 'no kernel BTF (/sys/kernel/btf/vmlinux) to attach to' };
    const id = btf.findType(target.kind, target.name);
    if (id === undefined) return { status: 'unsupported', detail: `${target.name} not in kernel BTF` };
    options.attachBtfId = id;
    targetText = ` on ${target.name}`;
  }
  const { fd, log } = loadProgram(type, RETURN_ZERO, options);
  if (fd >= 0) {
    close(fd);
    return target ? { status: 'supported', detail: `loads${targetText}` } : { status: 'supported' };
  }
  const errno = -fd;
  const line = lastLine(log);
  if (errno === Errno.EPERM) {
    return {
      status: 'unsupported',
      detail: line ? `refused by the verifier (EPERM)${targetText}: ${line}` : `refused before verification (EPERM)${targetText}`,
      errno,
    };
  }
  if (line === '' && NOT_SUPPORTED_ERRNOS.has(errno)) {
    return { status: 'unsupported', detail: `unknown to this kernel (${errnoName(errno)})${targetText}`, errno };
  }
  // The verifier ran and disliked a program it accepts everywhere else: a probe problem, not an answer.
  return { status: 'unknown', detail: `${errnoName(errno)}${targetText}${line ? `: ${line}` : ''}`, errno };
}

// ---------------------------------------------------------------------------------------------
// Helpers

const HELPER_NAMES = new Map<number, string>(Object.entries(Helper).map(([k, v]) => [v, `bpf_${k}`]));

export function helperName(id: number): string {
  return HELPER_NAMES.get(id) ?? `helper #${id}`;
}

/**
 * Verifier messages that mean "no such helper for this program type": ids past the end of the
 * kernel's table ("invalid func"), helpers the type's func_proto lacks ("unknown func" before
 * 6.13, "program of this type cannot use helper" after).
 */
const UNKNOWN_HELPER = /invalid func |unknown func |program of this type cannot use helper /;

/**
 * Loads a program of `progType` that calls helper `helperId` with zeroed arguments. The verifier
 * checks the helper id before the arguments, so a complaint about an argument still proves the
 * helper exists; only the "invalid/unknown func" messages mean it does not.
 */
export function probeHelper(progType: ProgramType, helperId: number): ProbeResult {
  assertPrivileged(`probing helper ${helperName(helperId)}`);
  return probeHelperUnchecked(progType, helperId);
}

function probeHelperUnchecked(progType: ProgramType, helperId: number): ProbeResult {
  const { fd, log } = loadProgram(progType, helperCall(helperId), { expectedAttachType: defaultAttachType(progType) });
  const where = `in ${programTypeName(progType)}`;
  if (fd >= 0) {
    close(fd);
    return { status: 'supported', detail: where };
  }
  const errno = -fd;
  const match = log.split('\n').find((l) => UNKNOWN_HELPER.test(l));
  if (match) return { status: 'unsupported', detail: `${where}: ${match.trim()}`, errno };
  const line = lastLine(log);
  if (line) return { status: 'supported', detail: `${where} (verifier checked its arguments: ${line})` };
  if (NOT_SUPPORTED_ERRNOS.has(errno)) {
    return { status: 'unsupported', detail: `${where}: program type unavailable (${errnoName(errno)})`, errno };
  }
  return { status: 'unknown', detail: `${where}: ${errnoName(errno)} without a verifier log`, errno };
}

// ---------------------------------------------------------------------------------------------
// Attach points

const LOOPBACK_IFINDEX = 1;

/** TCX (6.6+): BPF_PROG_QUERY knows the tcx attach types only where they exist. */
function probeTcx(): ProbeResult {
  const attr = Buffer.alloc(ProgQueryAttr.size);
  attr.writeUInt32LE(LOOPBACK_IFINDEX, ProgQueryAttr.target);
  attr.writeUInt32LE(AttachType.TCX_INGRESS, ProgQueryAttr.attachType);
  const ret = bpfRaw(BpfCommand.PROG_QUERY, attr);
  if (ret >= 0) return { status: 'supported', detail: 'BPF_PROG_QUERY tcx_ingress on lo' };
  return fromErrno(-ret, 'BPF_PROG_QUERY tcx_ingress on lo');
}

/**
 * netkit (6.7+): a netkit link on lo. A kernel without netkit answers EINVAL (the stub); one with
 * it gets as far as noticing lo is no netkit device (ENXIO). Nothing is ever attached.
 */
function probeNetkit(deviceProbe: DeviceProbe): ProbeResult {
  const prog = loadProgram(ProgramType.SCHED_CLS, RETURN_ZERO);
  if (prog.fd < 0) return fromErrno(-prog.fd, 'loading a sched_cls program');
  try {
    const attr = Buffer.alloc(LinkCreateAttr.size);
    attr.writeUInt32LE(prog.fd, LinkCreateAttr.progFd);
    attr.writeUInt32LE(LOOPBACK_IFINDEX, LinkCreateAttr.target);
    attr.writeUInt32LE(AttachType.NETKIT_PRIMARY, LinkCreateAttr.attachType);
    const ret = bpfRaw(BpfCommand.LINK_CREATE, attr);
    if (ret >= 0) close(ret);
    const device = deviceProbe('netkit');
    const deviceText = device.detail ? `; ip link add type netkit: ${device.detail}` : '';
    if (ret >= 0 || (-ret !== Errno.EINVAL && -ret !== Errno.EPERM && -ret !== Errno.EACCES)) {
      return { status: 'supported', detail: `netkit link on lo: ${ret >= 0 ? 'created' : errnoName(-ret)}${deviceText}` };
    }
    // EPERM/EACCES say nothing about netkit; only the stub's EINVAL means it is not built.
    const status = -ret === Errno.EINVAL ? 'unsupported' : 'unknown';
    return { status, detail: `netkit link on lo: ${errnoName(-ret)}${deviceText}`, errno: -ret };
  } finally {
    close(prog.fd);
  }
}

function probePmu(name: 'kprobe' | 'uprobe', configSymbol: string): ProbeResult {
  const path = `/sys/bus/event_source/devices/${name}`;
  if (existsSync(path)) return { status: 'supported', detail: path };
  const config = kernelConfig().get(configSymbol);
  const why = config === undefined ? '' : config === 'n' ? ` (${configSymbol} is not set)` : ` (${configSymbol}=${config})`;
  return { status: 'unsupported', detail: `no ${path}${why}` };
}

/** Tracepoints attach by the id in tracefs, so the kernel's support is useless without the mount. */
function probeTracepoints(): ProbeResult {
  const candidates = ['/sys/kernel/tracing', '/sys/kernel/debug/tracing', ...mounts().filter((m) => m.fsType === 'tracefs').map((m) => m.mountPoint)];
  for (const dir of candidates) {
    if (existsSync(`${dir}/events`)) return { status: 'supported', detail: `${dir}/events` };
  }
  const built = readFileSafe('/proc/filesystems')?.includes('\ttracefs\n') ?? false;
  return {
    status: 'unsupported',
    detail: built ? 'tracefs not mounted (mount -t tracefs tracefs /sys/kernel/tracing)' : 'no tracefs in this kernel',
  };
}

/** Active LSMs, from securityfs when mounted, else the boot parameter, else the build default. */
function activeLsms(): { list: string[]; source: string } | undefined {
  const fromFs = readFileSafe('/sys/kernel/security/lsm');
  if (fromFs !== undefined) return { list: fromFs.trim().split(','), source: '/sys/kernel/security/lsm' };
  const cmdline = /(?:^|\s)lsm=(\S+)/.exec(readFileSafe('/proc/cmdline') ?? '');
  if (cmdline) return { list: cmdline[1].split(','), source: 'lsm= on the kernel command line' };
  const config = kernelConfig().get('CONFIG_LSM');
  if (config) return { list: config.replace(/"/g, '').split(','), source: 'CONFIG_LSM' };
  return undefined;
}

/** BPF LSM needs both: "bpf" among the active LSMs, and the kernel accepting LSM programs. */
function probeBpfLsm(programs: (type: ProgramType) => ProbeResult): ProbeResult {
  const lsms = activeLsms();
  const load = programs(ProgramType.LSM);
  const active = lsms === undefined ? 'active LSMs unknown' : lsms.list.includes('bpf') ? `bpf active (${lsms.source})` : `bpf not active (${lsms.source})`;
  if (lsms !== undefined && !lsms.list.includes('bpf')) return { status: 'unsupported', detail: active };
  if (load.status !== 'supported') return { status: load.status, detail: `${active}, but lsm programs: ${load.detail ?? load.status}`, errno: load.errno };
  return { status: lsms === undefined ? 'unknown' : 'supported', detail: active };
}

// ---------------------------------------------------------------------------------------------
// Devices

type DeviceKind = 'veth' | 'vxlan' | 'geneve' | 'ipip' | 'wireguard' | 'netkit';
type DeviceProbe = (kind: DeviceKind) => ProbeResult;

const DEVICE_COMMANDS: Record<DeviceKind, string> = {
  veth: 'cil0 type veth peer name cil1',
  vxlan: 'cil2 type vxlan id 42 dstport 4789',
  geneve: 'cil3 type geneve id 42 remote 192.0.2.1',
  ipip: 'cil4 type ipip remote 192.0.2.1 local 192.0.2.2',
  wireguard: 'cil5 type wireguard',
  netkit: 'cil6 type netkit',
};

/**
 * Tries `ip link add` for every device kind in one shell, inside a network namespace made by
 * `unshare --net`: it has no name, nothing else can enter it, and the kernel destroys it (and the
 * devices) when the shell exits — so nothing can leak into the root namespace or be left behind.
 * The commands are constants; no caller input reaches the shell.
 */
function probeDevices(): Map<DeviceKind, ProbeResult> {
  const script = [
    `probe() { kind=$1; shift; out=$(ip link add "$@" 2>&1); rc=$?; printf '%s\\t%s\\t%s\\n' "$kind" "$rc" "$(printf '%s' "$out" | tr '\\n\\t' '  ')"; }`,
    ...Object.entries(DEVICE_COMMANDS).map(([kind, args]) => `probe ${kind} ${args}`),
  ].join('\n');
  const results = new Map<DeviceKind, ProbeResult>();
  let output: string;
  try {
    output = execFileSync('unshare', ['--net', '--', 'sh', '-c', script], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: 5000,
    });
  } catch (error) {
    const why = error instanceof Error ? error.message.split('\n')[0] : String(error);
    for (const kind of Object.keys(DEVICE_COMMANDS) as DeviceKind[]) {
      results.set(kind, { status: 'unknown', detail: `could not run ip in a throwaway netns: ${why}` });
    }
    return results;
  }
  for (const line of output.split('\n')) {
    const [kind, rc, message = ''] = line.split('\t');
    if (!Object.hasOwn(DEVICE_COMMANDS, kind)) continue;
    const text = message.trim().replace(/^Error: /, '');
    if (rc === '0') results.set(kind as DeviceKind, { status: 'supported', detail: 'ip link add succeeded' });
    else if (/Unknown device type|Operation not supported/i.test(text)) results.set(kind as DeviceKind, { status: 'unsupported', detail: text });
    else results.set(kind as DeviceKind, { status: 'unknown', detail: text || `ip exited with ${rc}` });
  }
  for (const kind of Object.keys(DEVICE_COMMANDS) as DeviceKind[]) {
    if (!results.has(kind)) results.set(kind, { status: 'unknown', detail: 'no answer from the device probe' });
  }
  return results;
}

/** IPVS is no device: its /proc/net/ip_vs exists once the code is in the kernel (built in or loaded). */
function probeIpvs(): ProbeResult {
  if (existsSync('/proc/net/ip_vs')) return { status: 'supported', detail: '/proc/net/ip_vs' };
  const config = kernelConfig().get('CONFIG_IP_VS');
  if (config === 'm') return { status: 'supported', detail: 'module ip_vs (not loaded)' };
  return { status: 'unsupported', detail: config === 'n' ? 'CONFIG_IP_VS is not set' : 'no /proc/net/ip_vs' };
}

// ---------------------------------------------------------------------------------------------
// Kernel

let configCache: Map<string, string> | undefined;
/** The kernel's build config (CONFIG_X → y/m/value; 'n' for "is not set"); empty when unavailable. */
function kernelConfig(): Map<string, string> {
  if (configCache) return configCache;
  configCache = new Map();
  let text: string | undefined;
  try {
    text = gunzipSync(readFileSync('/proc/config.gz')).toString('utf8');
  } catch {
    text = readFileSafe(`/boot/config-${release()}`);
  }
  for (const line of (text ?? '').split('\n')) {
    const set = /^(CONFIG_\w+)=(.*)$/.exec(line);
    if (set) configCache.set(set[1], set[2]);
    const unset = /^# (CONFIG_\w+) is not set$/.exec(line);
    if (unset) configCache.set(unset[1], 'n');
  }
  return configCache;
}

interface Mount {
  mountPoint: string;
  fsType: string;
}

function mounts(): Mount[] {
  const text = readFileSafe('/proc/self/mountinfo') ?? '';
  const result: Mount[] = [];
  for (const line of text.split('\n')) {
    const [left, right] = line.split(' - ');
    if (!right) continue;
    const mountPoint = left.split(' ')[4].replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
    result.push({ mountPoint, fsType: right.split(' ')[0] });
  }
  return result;
}

function readFileSafe(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

function probeBtf(): ProbeResult {
  try {
    const size = statSync('/sys/kernel/btf/vmlinux').size;
    const modules = readdirSync('/sys/kernel/btf').length - 1;
    return { status: 'supported', detail: `/sys/kernel/btf/vmlinux (${(size / 1048576).toFixed(1)} MiB${modules > 0 ? `, ${modules} modules` : ''})` };
  } catch {
    return { status: 'unsupported', detail: 'no /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF): no CO-RE, fentry or tp_btf' };
  }
}

function probeBpffs(): ProbeResult {
  const all = mounts().filter((m) => m.fsType === 'bpf').map((m) => m.mountPoint);
  if (all.includes('/sys/fs/bpf')) return { status: 'supported', detail: 'mounted at /sys/fs/bpf' };
  if (all.length > 0) return { status: 'supported', detail: `mounted at ${all.join(', ')} (not at /sys/fs/bpf)` };
  return { status: 'unsupported', detail: 'not mounted (mount -t bpf bpf /sys/fs/bpf): pinning is unavailable' };
}

function probeCgroup2(): ProbeResult {
  const all = mounts();
  const v2 = all.filter((m) => m.fsType === 'cgroup2').map((m) => m.mountPoint);
  if (v2.length === 0) return { status: 'unsupported', detail: 'no cgroup2 mount: cgroup programs cannot attach' };
  const hybrid = all.some((m) => m.fsType === 'cgroup');
  return { status: 'supported', detail: `${v2[0]}${hybrid ? ' (hybrid: v1 controllers mounted too)' : ''}` };
}

function probeJit(): ProbeResult {
  const value = readFileSafe('/proc/sys/net/core/bpf_jit_enable')?.trim();
  const alwaysOn = kernelConfig().get('CONFIG_BPF_JIT_ALWAYS_ON') === 'y' ? ', always on' : '';
  switch (value) {
    case '1':
      return { status: 'supported', detail: `enabled${alwaysOn}` };
    case '2':
      return { status: 'supported', detail: `enabled with debug output${alwaysOn}` };
    case '0':
      return { status: 'unsupported', detail: 'disabled: programs run in the interpreter' };
    default:
      return { status: 'unknown', detail: 'no /proc/sys/net/core/bpf_jit_enable' };
  }
}

/** "supported" means unprivileged users may call bpf(2); most distributions disable it. */
function probeUnprivileged(): ProbeResult {
  const value = readFileSafe('/proc/sys/kernel/unprivileged_bpf_disabled')?.trim();
  switch (value) {
    case '0':
      return { status: 'supported', detail: 'unprivileged users may load socket filters' };
    case '1':
      return { status: 'unsupported', detail: 'disabled until reboot (unprivileged_bpf_disabled=1)' };
    case '2':
      return { status: 'unsupported', detail: 'disabled (unprivileged_bpf_disabled=2)' };
    default:
      return { status: 'unknown', detail: 'no /proc/sys/kernel/unprivileged_bpf_disabled' };
  }
}

/**
 * "supported" means lockdown leaves eBPF tracing whole: `integrity` only blocks
 * bpf_probe_write_user, `confidentiality` also blocks reading kernel memory.
 */
function probeLockdown(): ProbeResult {
  const text = readFileSafe('/sys/kernel/security/lockdown');
  let mode = text === undefined ? undefined : /\[(\w+)\]/.exec(text)?.[1];
  let source = '/sys/kernel/security/lockdown';
  if (mode === undefined) {
    const param = /(?:^|\s)lockdown=(\w+)/.exec(readFileSafe('/proc/cmdline') ?? '');
    if (param) {
      mode = param[1];
      source = 'lockdown= on the kernel command line';
    }
  }
  if (mode === undefined) {
    return {
      status: 'unknown',
      detail: existsSync('/sys/kernel/security/lsm') ? 'lockdown LSM not active' : 'securityfs not mounted at /sys/kernel/security',
    };
  }
  if (mode === 'none') return { status: 'supported', detail: `none (${source})` };
  if (mode === 'integrity') return { status: 'supported', detail: `integrity: bpf_probe_write_user blocked (${source})` };
  return { status: 'unsupported', detail: `${mode}: reading kernel memory from BPF blocked (${source})` };
}

// ---------------------------------------------------------------------------------------------
// The catalogue

/** Memoized shared inputs of one probing run, so each expensive source is consulted once. */
interface ProbeContext {
  device: DeviceProbe;
  program: (type: ProgramType) => ProbeResult;
}

interface FeatureDef {
  section: FeatureSectionId;
  name: string;
  probe: (ctx: ProbeContext) => ProbeResult;
}

const SECTION_TITLES: Record<FeatureSectionId, string> = {
  kernel: 'Kernel',
  maps: 'Map types',
  programs: 'Program types',
  attach: 'Attach and link types',
  helpers: 'Helpers',
  devices: 'Devices',
};

const MAP_TYPES: readonly MapType[] = Object.values(MapType);

const PROGRAM_PROBES: readonly { name: string; type: ProgramType; attach?: AttachType }[] = [
  ...Object.values(ProgramType)
    .filter((t) => t !== ProgramType.TRACING && t !== ProgramType.EXT && t !== ProgramType.STRUCT_OPS)
    .map((type) => ({ name: programTypeName(type), type })),
  // TRACING is one type with four very different attach modes; each gets its own line.
  { name: 'fentry', type: ProgramType.TRACING, attach: AttachType.TRACE_FENTRY },
  { name: 'fexit', type: ProgramType.TRACING, attach: AttachType.TRACE_FEXIT },
  { name: 'fmod_ret', type: ProgramType.TRACING, attach: AttachType.MODIFY_RETURN },
  { name: 'tp_btf', type: ProgramType.TRACING, attach: AttachType.TRACE_RAW_TP },
];

/** Each helper is probed in the program type Ciliate calls it from. */
const HELPER_PROBES: readonly { helper: Helper; type: ProgramType }[] = [
  { helper: Helper.ringbuf_output, type: ProgramType.SCHED_CLS },
  { helper: Helper.redirect_peer, type: ProgramType.SCHED_CLS },
  { helper: Helper.redirect_neigh, type: ProgramType.SCHED_CLS },
  { helper: Helper.fib_lookup, type: ProgramType.XDP },
  { helper: Helper.skb_set_tunnel_key, type: ProgramType.SCHED_CLS },
  { helper: Helper.get_current_cgroup_id, type: ProgramType.CGROUP_SOCK_ADDR },
  { helper: Helper.send_signal, type: ProgramType.TRACEPOINT },
  { helper: Helper.loop, type: ProgramType.SCHED_CLS },
];

const FEATURES: readonly FeatureDef[] = [
  { section: 'kernel', name: 'version', probe: () => ({ status: 'supported', detail: release() }) },
  { section: 'kernel', name: 'btf', probe: probeBtf },
  { section: 'kernel', name: 'bpffs', probe: probeBpffs },
  { section: 'kernel', name: 'cgroup2', probe: probeCgroup2 },
  { section: 'kernel', name: 'jit', probe: probeJit },
  { section: 'kernel', name: 'unprivileged_bpf', probe: probeUnprivileged },
  { section: 'kernel', name: 'lockdown', probe: probeLockdown },
  ...MAP_TYPES.map((type): FeatureDef => ({ section: 'maps', name: mapTypeName(type), probe: () => probeMapTypeUnchecked(type) })),
  ...PROGRAM_PROBES.map(
    ({ name, type, attach }): FeatureDef => ({
      section: 'programs',
      name,
      probe: (ctx) => (attach === undefined ? ctx.program(type) : probeProgramTypeUnchecked(type, attach)),
    }),
  ),
  { section: 'attach', name: 'tcx', probe: probeTcx },
  { section: 'attach', name: 'netkit', probe: (ctx) => probeNetkit(ctx.device) },
  { section: 'attach', name: 'kprobes', probe: () => probePmu('kprobe', 'CONFIG_KPROBES') },
  { section: 'attach', name: 'uprobes', probe: () => probePmu('uprobe', 'CONFIG_UPROBES') },
  { section: 'attach', name: 'tracepoints', probe: probeTracepoints },
  { section: 'attach', name: 'bpf_lsm', probe: (ctx) => probeBpfLsm(ctx.program) },
  ...HELPER_PROBES.map(
    ({ helper, type }): FeatureDef => ({ section: 'helpers', name: helperName(helper), probe: () => probeHelperUnchecked(type, helper) }),
  ),
  ...(['veth', 'vxlan', 'geneve', 'ipip', 'wireguard'] as const).map(
    (kind): FeatureDef => ({ section: 'devices', name: kind, probe: (ctx) => ctx.device(kind) }),
  ),
  { section: 'devices', name: 'ipvs', probe: probeIpvs },
];

/** Every feature name probeAll() reports, in report order; requireFeature() accepts these. */
export const FEATURE_NAMES: readonly string[] = FEATURES.map((f) => f.name);

function newContext(): ProbeContext {
  let devices: Map<DeviceKind, ProbeResult> | undefined;
  const programs = new Map<number, ProbeResult>();
  return {
    device: (kind) => (devices ??= probeDevices()).get(kind) ?? { status: 'unknown' },
    program: (type) => {
      let result = programs.get(type);
      if (!result) programs.set(type, (result = probeProgramTypeUnchecked(type)));
      return result;
    },
  };
}

/**
 * A wrong answer from a probe is worse than none, so before reporting anything the simplest
 * possible bpf(2) call must work: an array map exists on every kernel with eBPF, and if even it is
 * refused, the process lacks privilege (or an LSM/lockdown forbids bpf), and that is the finding.
 */
function assertCanProbe(): void {
  assertPrivileged('probing eBPF features');
  const fd = createMap(MapType.ARRAY, { keySize: 4, valueSize: 4, maxEntries: 1 });
  if (fd >= 0) {
    close(fd);
    return;
  }
  if (-fd === Errno.EPERM || -fd === Errno.EACCES) throw new PermissionError('probing eBPF features: creating an array map', -fd);
  if (-fd === Errno.ENOSYS) throw new NotSupportedError('bpf(2)', { errno: -fd, detail: 'the kernel was built without CONFIG_BPF_SYSCALL' });
}

const cache = new Map<string, FeatureItem>();
/** Shared by single-feature probes, so e.g. the device probe runs once for all device names. */
let lazyContext: ProbeContext | undefined;

/**
 * Runs every probe (about 60 bpf(2) calls, one `unshare ip …` process and one vmlinux BTF parse)
 * and returns the report. Results also fill the cache requireFeature() reads.
 * Throws PermissionError without the privilege to probe, rather than reporting everything unsupported.
 */
export function probeAll(): FeatureReport {
  const started = performance.now();
  assertCanProbe();
  const ctx = newContext();
  lazyContext = ctx;
  const sections = new Map<FeatureSectionId, FeatureSection>();
  for (const def of FEATURES) {
    let section = sections.get(def.section);
    if (!section) sections.set(def.section, (section = { id: def.section, title: SECTION_TITLES[def.section], items: [] }));
    const item = toItem(def.name, def.probe(ctx));
    cache.set(def.name, item);
    section.items.push(item);
  }
  return { kernel: release(), durationMs: Math.round(performance.now() - started), sections: [...sections.values()] };
}

function toItem(name: string, result: ProbeResult): FeatureItem {
  const item: FeatureItem = { name, status: result.status };
  if (result.detail !== undefined) item.detail = result.detail;
  if (result.errno !== undefined) item.errno = result.errno;
  return item;
}

/**
 * The probe result for one named feature (see FEATURE_NAMES), probed on first use and cached for
 * the life of the process: the kernel's feature set does not change under a running process.
 */
export function probeFeature(name: string): FeatureItem {
  const cached = cache.get(name);
  if (cached) return cached;
  const def = FEATURES.find((f) => f.name === name);
  if (!def) {
    throw new BpfError('ERR_INVALID_ARGUMENT', `unknown feature "${name}"; known features: ${FEATURE_NAMES.join(', ')}`);
  }
  assertCanProbe();
  const item = toItem(name, def.probe((lazyContext ??= newContext())));
  cache.set(name, item);
  return item;
}

/**
 * Throws NotSupportedError ("not supported on this kernel: <name> (<detail>)") unless the feature
 * probed as supported. An 'unknown' result passes: the probe could not tell, and the real
 * operation will then fail with a more precise error than a guess here would give.
 */
export function requireFeature(name: string): void {
  const item = probeFeature(name);
  if (item.status === 'unsupported') {
    throw new NotSupportedError(name, {
      ...(item.detail !== undefined && { detail: item.detail }),
      ...(item.errno !== undefined && { errno: item.errno }),
    });
  }
}

/** Forgets cached results, e.g. after mounting tracefs or loading a module. */
export function clearFeatureCache(): void {
  cache.clear();
  lazyContext = undefined;
}

// ---------------------------------------------------------------------------------------------
// Rendering

/** A plain-text table per section: name, status, detail. */
export function formatFeatureReport(report: FeatureReport): string {
  const all = report.sections.flatMap((s) => s.items);
  const nameWidth = Math.max(7, ...all.map((i) => i.name.length));
  const statusWidth = Math.max(6, ...all.map((i) => i.status.length));
  const counts = { supported: 0, unsupported: 0, unknown: 0 };
  for (const item of all) counts[item.status]++;
  const out: string[] = [
    `eBPF features of Linux ${report.kernel} (probed in ${report.durationMs} ms): ` +
      `${counts.supported} supported, ${counts.unsupported} unsupported, ${counts.unknown} unknown`,
  ];
  for (const section of report.sections) {
    out.push('', section.title.toUpperCase(), `  ${'FEATURE'.padEnd(nameWidth)}  ${'STATUS'.padEnd(statusWidth)}  DETAIL`);
    for (const item of section.items) {
      out.push(`  ${item.name.padEnd(nameWidth)}  ${item.status.padEnd(statusWidth)}  ${item.detail ?? ''}`.trimEnd());
    }
  }
  return out.join('\n');
}
