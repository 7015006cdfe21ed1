/**
 * cgroup hooks through links: socket-address hooks (connect4, sendmsg4, recvmsg4, getpeername4…)
 * and skb/sock hooks, on a cgroup v2 directory. Attach to a cgroup made for the purpose: on the
 * root cgroup a connect4 hook would rewrite every connection on the machine.
 * @module
 */
import { closeSync, openSync } from 'node:fs';
import { BpfError } from '../errors.ts';
import type { Program } from '../program.ts';
import { Link, createLink } from './link.ts';

export interface CgroupOptions {
  /** A cgroup v2 directory, e.g. /sys/fs/cgroup/unified/ciliate-test-1. */
  cgroup: string;
  /** Defaults to the program's expected attach type (from its section, e.g. cgroup/connect4). */
  attachType?: number;
}

/** @example attachCgroup(obj.program('sock4_connect'), { cgroup: '/sys/fs/cgroup/unified/ciliate' }) */
export function attachCgroup(program: Program, options: CgroupOptions): Link {
  const attachType = options.attachType ?? program.expectedAttachType;
  if (attachType < 0) throw new BpfError('ERR_INVALID_ARGUMENT', `attaching ${program.name} to cgroup ${options.cgroup}: no attach type known; pass attachType`);
  let dirFd: number;
  try {
    dirFd = openSync(options.cgroup, 'r');
  } catch (error) {
    throw new BpfError('ERR_NOT_FOUND', `attaching ${program.name} to cgroup ${options.cgroup}: cannot open it (${(error as Error).message})`, { cause: error });
  }
  try {
    const fd = createLink(program.fd, dirFd, attachType, 0, `attaching ${program.name} to cgroup ${options.cgroup}`);
    return new Link(fd, `cgroup link of ${program.name} on ${options.cgroup}`);
  } finally {
    closeSync(dirFd);
  }
}
