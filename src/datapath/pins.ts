/**
 * Questions about what a previous agent left pinned in bpffs, asked before adopting it.
 * @module
 */
import { existsSync } from 'node:fs';
import { BpfError, Link } from '../ebpf/index.ts';

/** Whether a pinned link exists and is still attached to the interface with this index. */
export function linkServesInterface(path: string, ifindex: number): boolean {
  if (!existsSync(path)) return false;
  try {
    using link = Link.openPinned(path);
    return link.info().ifindex === ifindex;
  } catch (error) {
    if (BpfError.is(error)) return false;
    throw error;
  }
}
