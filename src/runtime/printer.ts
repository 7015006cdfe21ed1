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
import type { TetragonEvent, TetragonProcess } from './types.ts';

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

/** One event as `tetra getevents -o compact` prints it. */
export function compactLine(event: TetragonEvent): string {
  if ('process_exec' in event) {
    const p = event.process_exec.process;
    return trailer(`🚀 ${'process'.padEnd(7)} ${source(event.node_name, p)} ${printable(p.binary)} ${printable(p.arguments ?? '')}`, p);
  }
  const exit = event.process_exit;
  const p = exit.process;
  const status = exit.signal ? exit.signal : String(exit.status ?? 0);
  return trailer(`💥 ${'exit'.padEnd(7)} ${source(event.node_name, p)} ${printable(p.binary)} ${printable(p.arguments ?? '')} ${printable(status)}`, p);
}
