/**
 * Uprobes: BPF programs on functions of user-space binaries and libraries. libbpf does the part
 * that needs an ELF reader (symbol → file offset, including symbols of shared libraries and
 * PLT-free static functions), then opens the uprobe perf event and links the program to it.
 * @module
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { BpfError, NotSupportedError } from '../errors.ts';
import type { Program } from '../program.ts';
import { assertProgramType } from '../program.ts';
import { ProgramType } from '../internal/constants.ts';
import { libbpf, UprobeOpts } from '../internal/libbpf.ts';
import { addressOf, cString } from '../internal/sys.ts';
import type { Link } from './link.ts';
import { libbpfAttach, tracefsPath } from './tracing.ts';

export interface UprobeOptions {
  /** The ELF binary or shared library. A bare library name ("libc.so.6") is resolved by libbpf. */
  binary: string;
  /** Function to probe, looked up by libbpf in the binary's symbol tables. */
  symbol?: string;
  /**
   * With `symbol`: bytes into that function. Without: the file offset of the probed instruction.
   * One of `symbol` and `offset` is required.
   */
  offset?: number;
  /** Only hits in this process (0: the calling process). Default: every process running the binary. */
  pid?: number;
  /** Fire on return instead of entry. Default: true for SEC("uretprobe...") programs. */
  retprobe?: boolean;
  /** Value the program reads with bpf_get_attach_cookie(). */
  cookie?: bigint;
}

/**
 * Attaches a SEC("uprobe") or SEC("uretprobe") program to a function of a binary.
 *
 * @example
 * const link = attachUprobe(obj.program('on_readline'), { binary: '/bin/bash', symbol: 'readline', retprobe: true });
 */
export function attachUprobe(program: Program, options: UprobeOptions): Link {
  assertProgramType(program, [ProgramType.KPROBE], 'uprobe');
  const { binary, symbol } = options;
  const offset = options.offset ?? 0;
  if (symbol === undefined && options.offset === undefined) {
    throw new BpfError('ERR_INVALID_ARGUMENT', `attaching ${program.name} as uprobe on ${binary}: give a symbol or an offset`);
  }
  if (!Number.isSafeInteger(offset) || offset < 0) {
    throw new BpfError('ERR_INVALID_ARGUMENT', `attaching ${program.name} as uprobe on ${binary}: bad offset ${offset}`);
  }
  const retprobe = options.retprobe ?? program.section.startsWith('uretprobe');
  const kind = retprobe ? 'uretprobe' : 'uprobe';
  const where = `${binary}:${symbol ?? ''}${offset ? `+0x${offset.toString(16)}` : ''}${options.pid === undefined ? '' : ` in pid ${options.pid}`}`;

  // libbpf reads these during the call only, but they must not be collected before it returns.
  const symbolBuffer = symbol === undefined ? undefined : cString(symbol);
  const opts = Buffer.alloc(UprobeOpts.size);
  opts.writeBigUInt64LE(BigInt(UprobeOpts.size), 0);
  opts.writeUInt8(retprobe ? 1 : 0, UprobeOpts.retprobe);
  if (options.cookie !== undefined) opts.writeBigUInt64LE(options.cookie, UprobeOpts.cookie);
  if (symbolBuffer) opts.writeBigUInt64LE(addressOf(symbolBuffer), UprobeOpts.funcName);

  const context = `attaching ${program.name} as ${kind} on ${where}`;
  try {
    return libbpfAttach(program, `${kind} ${where} link of ${program.name}`, context, (handle) =>
      libbpf.attachUprobe(handle, options.pid ?? -1, binary, offset, opts),
    );
  } catch (error) {
    if (!uprobesAvailable()) {
      throw new NotSupportedError('uprobes', { detail: 'no uprobe PMU and no tracefs uprobe_events: CONFIG_UPROBE_EVENTS is off', cause: error });
    }
    throw error;
  } finally {
    // Keeps the symbol name reachable until libbpf is done with it.
    void symbolBuffer?.length;
  }
}

function uprobesAvailable(): boolean {
  if (existsSync('/sys/bus/event_source/devices/uprobe')) return true;
  try {
    return existsSync(join(tracefsPath(), 'uprobe_events'));
  } catch {
    return false;
  }
}
