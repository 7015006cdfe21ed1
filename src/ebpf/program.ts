/**
 * Loaded BPF programs: identity, pinning, and BPF_PROG_TEST_RUN, which runs a datapath program on
 * a crafted packet with no network at all.
 * @module
 */
import { BpfError } from './errors.ts';
import { objGet, objInfo, objPin } from './map.ts';
import { BpfCommand, type ProgramType } from './internal/constants.ts';
import { GetFdByIdAttr, ProgInfo, TestRunAttr } from './internal/attr.ts';
import { addressOf, bpf, close } from './internal/sys.ts';

export interface ProgramMeta {
  name: string;
  /** The ELF section it came from, e.g. "tc" or "tp_btf/sched_process_exec". */
  section: string;
  type: ProgramType;
  expectedAttachType: number;
  /** libbpf's bpf_program, for attach modes that libbpf resolves (tracepoints, uprobes). */
  libbpfHandle?: unknown;
}

/** BPF_PROG_TEST_RUN flag (uapi bpf.h) and the size of struct xdp_md. */
const BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1;
const XDP_MD_SIZE = 24;

export interface TestRunOptions {
  /** Packet bytes (from the Ethernet header for tc and XDP programs). */
  data?: Buffer;
  /** Context: struct __sk_buff for tc, xdp_md for XDP. */
  context?: Buffer;
  /** Room for the packet as the program leaves it; defaults to the input size plus headroom. */
  dataOutSize?: number;
  repeat?: number;
}

export interface TestRunResult {
  /** The program's return value (TC_ACT_*, XDP_*). */
  returnValue: number;
  /** The packet after the program ran. */
  data: Buffer;
  context: Buffer | undefined;
  /** Mean run time in ns over `repeat` runs, as the kernel measured it. */
  durationNs: number;
}

export class Program implements Disposable {
  readonly fd: number;
  readonly name: string;
  readonly section: string;
  readonly type: ProgramType;
  readonly expectedAttachType: number;
  readonly libbpfHandle: unknown;
  #closed = false;

  constructor(fd: number, meta: ProgramMeta) {
    this.fd = fd;
    this.name = meta.name;
    this.section = meta.section;
    this.type = meta.type;
    this.expectedAttachType = meta.expectedAttachType;
    this.libbpfHandle = meta.libbpfHandle;
  }

  /** Opens a program pinned in bpffs. */
  static openPinned(path: string): Program {
    return Program.#adoptFd(objGet(path, `opening pinned program ${path}`));
  }

  /** Opens a loaded program by its id, e.g. the one a link runs (LinkInfoData.programId). */
  static fromId(id: number): Program {
    const attr = Buffer.alloc(GetFdByIdAttr.size);
    attr.writeUInt32LE(id, GetFdByIdAttr.id);
    return Program.#adoptFd(bpf(BpfCommand.PROG_GET_FD_BY_ID, attr, `opening program id ${id}`));
  }

  /** A Program owning `fd`, described by the kernel; the fd is closed if that fails. */
  static #adoptFd(fd: number): Program {
    try {
      const info = programInfo(fd);
      return new Program(fd, { name: info.name, section: '', type: info.type, expectedAttachType: -1 });
    } catch (error) {
      close(fd);
      throw error;
    }
  }

  /** Runs the program once (or `repeat` times) on a crafted input through BPF_PROG_TEST_RUN. */
  testRun(options: TestRunOptions = {}): TestRunResult {
    const dataIn = options.data ?? Buffer.alloc(0);
    const dataOut = Buffer.alloc(options.dataOutSize ?? dataIn.length + 256);
    const ctxIn = options.context;
    const ctxOut = ctxIn ? Buffer.alloc(ctxIn.length) : undefined;
    const attr = Buffer.alloc(TestRunAttr.size);
    attr.writeUInt32LE(this.fd, TestRunAttr.progFd);
    attr.writeUInt32LE(dataIn.length, TestRunAttr.dataSizeIn);
    attr.writeUInt32LE(dataOut.length, TestRunAttr.dataSizeOut);
    attr.writeBigUInt64LE(addressOf(dataIn), TestRunAttr.dataIn);
    attr.writeBigUInt64LE(addressOf(dataOut), TestRunAttr.dataOut);
    attr.writeUInt32LE(options.repeat ?? 1, TestRunAttr.repeat);
    if (ctxIn && ctxOut) {
      attr.writeUInt32LE(ctxIn.length, TestRunAttr.ctxSizeIn);
      attr.writeUInt32LE(ctxOut.length, TestRunAttr.ctxSizeOut);
      attr.writeBigUInt64LE(addressOf(ctxIn), TestRunAttr.ctxIn);
      attr.writeBigUInt64LE(addressOf(ctxOut), TestRunAttr.ctxOut);
    }
    bpf(BpfCommand.PROG_TEST_RUN, attr, `test-running program ${this.name}`);
    return {
      // Signed: tc programs return TC_ACT_UNSPEC as -1.
      returnValue: attr.readInt32LE(TestRunAttr.retval),
      data: dataOut.subarray(0, attr.readUInt32LE(TestRunAttr.dataSizeOut)),
      context: ctxOut?.subarray(0, attr.readUInt32LE(TestRunAttr.ctxSizeOut)),
      durationNs: attr.readUInt32LE(TestRunAttr.duration),
    };
  }

  /**
   * Runs an XDP program on `repeat` copies of `data` as live frames (BPF_F_TEST_XDP_LIVE_FRAMES,
   * kernel ≥ 5.18): what it returns happens for real — XDP_TX and XDP_REDIRECT transmit, XDP_PASS
   * hands the frame to the stack as if it had arrived on `ingressIfindex` (an interface of the
   * caller's network namespace). xdp-trafficgen's method of generating traffic in the kernel.
   */
  testRunLiveFrames(options: { data: Buffer; ingressIfindex: number; repeat: number; batchSize?: number }): void {
    const { data } = options;
    const ctx = Buffer.alloc(XDP_MD_SIZE);
    ctx.writeUInt32LE(data.length, 4); // data_end: the whole packet
    ctx.writeUInt32LE(options.ingressIfindex, 12);
    const attr = Buffer.alloc(TestRunAttr.size);
    attr.writeUInt32LE(this.fd, TestRunAttr.progFd);
    attr.writeUInt32LE(data.length, TestRunAttr.dataSizeIn);
    attr.writeBigUInt64LE(addressOf(data), TestRunAttr.dataIn);
    attr.writeUInt32LE(options.repeat, TestRunAttr.repeat);
    attr.writeUInt32LE(ctx.length, TestRunAttr.ctxSizeIn);
    attr.writeBigUInt64LE(addressOf(ctx), TestRunAttr.ctxIn);
    attr.writeUInt32LE(BPF_F_TEST_XDP_LIVE_FRAMES, TestRunAttr.flags);
    attr.writeUInt32LE(options.batchSize ?? 0, TestRunAttr.batchSize);
    bpf(BpfCommand.PROG_TEST_RUN, attr, `running program ${this.name} on live frames`);
  }

  info(): ProgramInfoData {
    return programInfo(this.fd);
  }

  pin(path: string): void {
    objPin(this.fd, path, `pinning program ${this.name} at ${path}`);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    close(this.fd);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

export interface ProgramInfoData {
  id: number;
  type: ProgramType;
  name: string;
  tag: string;
  /** Time spent in the program and how often it ran, counted only while run statistics are on (enableRunStats). */
  runTimeNs: bigint;
  runCount: bigint;
}

export function programInfo(fd: number): ProgramInfoData {
  const info = objInfo(fd, ProgInfo.size, `reading info of program fd ${fd}`);
  const end = info.indexOf(0, ProgInfo.name);
  return {
    id: info.readUInt32LE(ProgInfo.id),
    type: info.readUInt32LE(ProgInfo.type) as ProgramType,
    name: info.toString('ascii', ProgInfo.name, end < 0 || end > ProgInfo.name + 16 ? ProgInfo.name + 16 : end),
    tag: info.subarray(ProgInfo.tag, ProgInfo.tag + 8).toString('hex'),
    runTimeNs: info.readBigUInt64LE(ProgInfo.runTimeNs),
    runCount: info.readBigUInt64LE(ProgInfo.runCnt),
  };
}

/** BPF_STATS_RUN_TIME (uapi bpf.h enum bpf_stats_type). */
const BPF_STATS_RUN_TIME = 0;

/**
 * Turns on the kernel's per-program run time and count (BPF_ENABLE_STATS, kernel ≥ 5.8) until the
 * returned handle is closed — by the kernel too if this process dies, unlike the
 * kernel.bpf_stats_enabled sysctl. It costs every BPF program two clock reads per run meanwhile.
 */
export function enableRunStats(): Disposable & { close(): void } {
  const attr = Buffer.alloc(4);
  attr.writeUInt32LE(BPF_STATS_RUN_TIME, 0);
  const fd = bpf(BpfCommand.ENABLE_STATS, attr, 'enabling BPF run statistics (BPF_ENABLE_STATS)');
  let open = true;
  const closeFd = () => {
    if (open) close(fd);
    open = false;
  };
  return { close: closeFd, [Symbol.dispose]: closeFd };
}

/** Thrown by attach helpers given a program of the wrong type. */
export function assertProgramType(program: Program, types: readonly number[], what: string): void {
  if (!types.includes(program.type)) {
    throw new BpfError('ERR_INVALID_ARGUMENT', `attaching ${program.name} as ${what}: program type ${program.type} cannot attach there`);
  }
}
