/**
 * Tetragon's compact event lines (tetra's pkg/encoder CompactEncoder), without colour:
 * `🚀 process <ns/pod, or node> <binary> <arguments>` and `💥 exit    … <signal or status>`, with
 * the 🛑 CAP_SYS_ADMIN trailer right-aligned at column 120 when the process holds it.
 *
 * Binaries and arguments come from processes, pods' included, so they are hostile text: control
 * characters (C0, DEL, C1) are printed as \xNN, so that no process can write escape sequences to
 * the terminal of whoever reads its events (tetra prints them raw unless --tty-encode).
 * @module
 */
import type { TetragonArg, TetragonEvent, TetragonProcess, TetragonProcessKprobe } from './types.ts';

const CAPS_COLUMN = 120;

const CONTROL = /[\x00-\x1f\x7f-\x9f]/g;

function printable(text: string): string {
  return text.replace(CONTROL, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

function source(nodeName: string, process: TetragonProcess): string {
  return printable(process.pod ? `${process.pod.namespace}/${process.pod.name}` : nodeName);
}

function trailer(line: string, process: TetragonProcess): string {
  if (!process.cap?.effective?.includes('CAP_SYS_ADMIN')) return line;
  const caps = '🛑 CAP_SYS_ADMIN';
  // tetra measures the line in bytes (Go's len of UTF-8) but pads the caps to that width in
  // characters (fmt's %*s counts runes): both reproduced, so the columns match tetra's.
  const padding = Math.max(0, CAPS_COLUMN - Buffer.byteLength(line));
  return `${line} ${' '.repeat(Math.max(0, padding - [...caps].length))}${caps}`;
}

function info(nodeName: string, process: TetragonProcess): string {
  return `${source(nodeName, process)} ${printable(process.binary)}`;
}

/** An argument's value as tetra's Get*Arg() reads it (its type's zero when another type). */
function argText(arg: TetragonArg | undefined): string | number | undefined {
  if (!arg) return undefined;
  if ('string_arg' in arg) return arg.string_arg;
  if ('int_arg' in arg) return arg.int_arg;
  if ('uint_arg' in arg) return arg.uint_arg;
  if ('long_arg' in arg) return arg.long_arg;
  if ('size_arg' in arg) return arg.size_arg;
  return undefined;
}

/** tetra's lines per syscall (pkg/encoder: by the function name without its arch prefix). */
function kprobeLine(nodeName: string, kprobe: TetragonProcessKprobe): string {
  const p = kprobe.process;
  const args = kprobe.args ?? [];
  const head = (emoji: string, word: string) => `${emoji} ${word.padEnd(7)} ${info(nodeName, p)}`;
  const str = (i: number) => {
    const arg = args[i];
    return printable(arg && 'string_arg' in arg ? arg.string_arg : '');
  };
  switch (kprobe.function_name.replace(/^(__x64_|__arm64_|__ia32_)/, '')) {
    case 'sys_openat':
      return trailer(`${head('📬️', 'openat')} ${str(1)}`, p);
    case 'sys_open':
      return trailer(`${head('📬️', 'open')} ${str(1)}`, p);
    case 'sys_write':
    case 'sys_read': {
      // tetra prints a file_arg's path first, which syscall hooks here do not have.
      const size = args[2] && 'size_arg' in args[2] ? `${args[2].size_arg} bytes` : '';
      return trailer(`${head(kprobe.function_name.endsWith('write') ? '📝' : '📚', kprobe.function_name.endsWith('write') ? 'write' : 'read')}  ${size}`, p);
    }
    case 'sys_close':
      return trailer(`${head('📪', 'close')} `, p);
    case 'sys_mount':
      return trailer(`${head('💾', 'mount')} ${str(0)} ${str(1)}`, p);
    case 'sys_setuid': {
      const arg = args[0];
      return trailer(`${head('🔑', 'setuid')} ${arg && 'int_arg' in arg ? arg.int_arg : 0}`, p);
    }
    case 'sys_clock_settime':
      return trailer(head('⏰', 'clock_settime'), p);
    case 'sys_pivot_root':
      return trailer(`${head('💾', 'pivot_root')} ${str(0)} ${str(1)}`, p);
    default:
      return trailer(`${head('❓', 'syscall')} ${printable(kprobe.function_name)}`, p);
  }
}

/** One event as `tetra getevents -o compact` prints it. */
export function compactLine(event: TetragonEvent): string {
  if ('process_exec' in event) {
    const p = event.process_exec.process;
    return trailer(`🚀 ${'process'.padEnd(7)} ${source(event.node_name, p)} ${printable(p.binary)} ${printable(p.arguments ?? '')}`, p);
  }
  if ('process_kprobe' in event) return kprobeLine(event.node_name, event.process_kprobe);
  if ('process_tracepoint' in event) {
    const tp = event.process_tracepoint;
    const p = tp.process;
    if (`${tp.subsys}/${tp.event}` === 'raw_syscalls/sys_enter') return trailer(`☎  ${'syscall'.padEnd(7)} ${info(event.node_name, p)} ${printable(String(argText(tp.args?.[0]) ?? ''))}`, p);
    return trailer(`⁉️ ${'tracepoint'.padEnd(7)} ${info(event.node_name, p)} ${printable(tp.subsys)} ${printable(tp.event)}`, p);
  }
  const exit = event.process_exit;
  const p = exit.process;
  const status = exit.signal ? exit.signal : String(exit.status ?? 0);
  return trailer(`💥 ${'exit'.padEnd(7)} ${source(event.node_name, p)} ${printable(p.binary)} ${printable(p.arguments ?? '')} ${printable(status)}`, p);
}
