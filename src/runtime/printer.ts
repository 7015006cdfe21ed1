/**
 * Tetragon's compact event lines (tetra's pkg/encoder CompactEncoder), without colour:
 * `🚀 process <ns/pod, or node> <binary> <arguments>` and `💥 exit    … <signal or status>`, with
 * the 🛑 CAP_SYS_ADMIN trailer right-aligned at column 120 when the process holds it.
 * @module
 */
import type { TetragonEvent, TetragonProcess } from './types.ts';

const CAPS_COLUMN = 120;

function source(nodeName: string, process: TetragonProcess): string {
  return process.pod ? `${process.pod.namespace}/${process.pod.name}` : nodeName;
}

function trailer(line: string, process: TetragonProcess): string {
  if (!process.cap?.effective?.includes('CAP_SYS_ADMIN')) return line;
  const caps = '🛑 CAP_SYS_ADMIN';
  // Go pads by bytes (len of a UTF-8 string), and so do we, to line up with tetra's output.
  const padding = Math.max(0, CAPS_COLUMN - Buffer.byteLength(line));
  return `${line} ${caps.padStart(padding)}`;
}

/** One event as `tetra getevents -o compact` prints it. */
export function compactLine(event: TetragonEvent): string {
  if ('process_exec' in event) {
    const p = event.process_exec.process;
    return trailer(`🚀 ${'process'.padEnd(7)} ${source(event.node_name, p)} ${p.binary} ${p.arguments ?? ''}`, p);
  }
  const exit = event.process_exit;
  const p = exit.process;
  const status = exit.signal ? exit.signal : String(exit.status ?? 0);
  return trailer(`💥 ${'exit'.padEnd(7)} ${source(event.node_name, p)} ${p.binary} ${p.arguments ?? ''} ${status}`, p);
}
