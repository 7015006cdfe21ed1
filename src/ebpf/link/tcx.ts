/**
 * TCX: tc's multi-program attachment through links (kernel ≥ 6.6), with explicit ordering and
 * revision checks so two agents never silently reorder each other's programs.
 * @module
 */
import { closeSync, openSync } from 'node:fs';
import { BpfError, NotSupportedError } from '../errors.ts';
import type { Program } from '../program.ts';
import { AttachFlag, AttachType, BpfCommand, ProgramType } from '../internal/constants.ts';
import { LinkCreateAttr, ProgQueryAttr } from '../internal/attr.ts';
import { addressOf, bpf, interfaceIndex } from '../internal/sys.ts';
import { Link, createLink, createLinkAsync } from './link.ts';
import { inNetns } from '../netns.ts';
import { assertProgramType } from '../program.ts';

export type TcxDirection = 'ingress' | 'egress';

export interface TcxOptions {
  /** Interface name (in the caller's current network namespace) or index. */
  interface: string | number;
  direction: TcxDirection;
  /** Run before this program or link; without before/after the program is appended last. */
  before?: Program | Link;
  after?: Program | Link;
  /** Fail with ERR_STALE_REVISION unless the attachment list is still at this revision. */
  expectedRevision?: bigint;
}

/**
 * Attaches a tc program (SEC("tc")) to an interface through a TCX link.
 *
 * @example
 * const link = attachTcx(obj.program('from_container'), { interface: 'lxc12', direction: 'ingress' });
 */
export function attachTcx(program: Program, options: TcxOptions): Link {
  const request = tcxRequest(program, options, interfaceIndex);
  try {
    return new Link(createLink(program.fd, request.ifindex, request.attachType, request.flags, request.context, request.fill), request.description);
  } catch (error) {
    throw tcxError(error);
  }
}

export interface TcxAsyncOptions extends TcxOptions {
  /**
   * Path of the network namespace `interface` is in (e.g. /run/netns/node1); default: the
   * caller's current one, as for attachTcx.
   */
  netns?: string;
}

/**
 * attachTcx() off the event loop. A TCX attach waits in the kernel for an RCU grace period
 * (milliseconds, more on a busy machine) before it returns; this waits on libuv's thread pool
 * instead, so the event loop goes on and several attaches wait out their grace periods together.
 * The program (and a `before`/`after` anchor) must stay open until the promise settles.
 *
 * @example
 * const [ingress, egress] = await Promise.all([
 *   attachTcxAsync(obj.program('from_container'), { interface: 12, direction: 'ingress' }),
 *   attachTcxAsync(obj.program('to_container'), { interface: 12, direction: 'egress' }),
 * ]);
 */
export async function attachTcxAsync(program: Program, options: TcxAsyncOptions): Promise<Link> {
  const netns = options.netns;
  const request = tcxRequest(program, options, (name) => (netns ? inNetns(netns, () => interfaceIndex(name)) : interfaceIndex(name)));
  // The namespace is taken now, on the caller's thread: the pool thread that makes the call may be
  // in another one.
  const netnsFd = openSync(netns ?? '/proc/thread-self/ns/net', 'r');
  try {
    const fd = await createLinkAsync(program.fd, request.ifindex, request.attachType, request.flags, request.context, netnsFd, request.fill);
    return new Link(fd, request.description);
  } catch (error) {
    throw tcxError(error);
  } finally {
    closeSync(netnsFd);
  }
}

interface TcxRequest {
  ifindex: number;
  attachType: number;
  flags: number;
  context: string;
  description: string;
  fill: (attr: Buffer) => void;
}

function tcxRequest(program: Program, options: TcxOptions, indexOf: (name: string) => number): TcxRequest {
  assertProgramType(program, [ProgramType.SCHED_CLS, ProgramType.SCHED_ACT], 'TCX');
  if (options.before && options.after) throw new BpfError('ERR_INVALID_ARGUMENT', 'attaching TCX: give before or after, not both');
  const ifindex = typeof options.interface === 'number' ? options.interface : indexOf(options.interface);
  const relative = options.before ?? options.after;
  let flags = 0;
  if (relative) flags |= (options.before ? AttachFlag.BEFORE : AttachFlag.AFTER) | (relative instanceof Link ? AttachFlag.LINK : 0);
  const where = `${options.direction} of interface ${options.interface}`;
  return {
    ifindex,
    attachType: options.direction === 'ingress' ? AttachType.TCX_INGRESS : AttachType.TCX_EGRESS,
    flags,
    context: `attaching ${program.name} to TCX ${where}`,
    description: `TCX link of ${program.name} on ${where}`,
    fill: (attr) => {
      if (relative) attr.writeUInt32LE(relative.fd, LinkCreateAttr.relative);
      if (options.expectedRevision !== undefined) attr.writeBigUInt64LE(options.expectedRevision, LinkCreateAttr.expectedRevision);
    },
  };
}

/** A kernel without TCX says EINVAL, as it does for a bad request: the probe tells them apart. */
function tcxError(error: unknown): unknown {
  if (BpfError.is(error, 'ERR_INVALID_ARGUMENT') && !tcxSupported()) return new NotSupportedError('TCX links (BPF_TCX_INGRESS/EGRESS)', { cause: error });
  return error;
}

export interface TcxAttachments {
  revision: bigint;
  /** In run order. */
  programIds: number[];
  linkIds: number[];
}

/** The programs attached through TCX on an interface, in run order, and the list's revision. */
export function queryTcx(iface: string | number, direction: TcxDirection, capacity = 64): TcxAttachments {
  const ifindex = typeof iface === 'number' ? iface : interfaceIndex(iface);
  const progIds = Buffer.alloc(4 * capacity);
  const linkIds = Buffer.alloc(4 * capacity);
  const attr = Buffer.alloc(ProgQueryAttr.size);
  attr.writeUInt32LE(ifindex, ProgQueryAttr.target);
  attr.writeUInt32LE(direction === 'ingress' ? AttachType.TCX_INGRESS : AttachType.TCX_EGRESS, ProgQueryAttr.attachType);
  attr.writeBigUInt64LE(addressOf(progIds), ProgQueryAttr.progIds);
  attr.writeBigUInt64LE(addressOf(linkIds), ProgQueryAttr.linkIds);
  attr.writeUInt32LE(capacity, ProgQueryAttr.count);
  bpf(BpfCommand.PROG_QUERY, attr, `querying TCX ${direction} of interface ${iface}`);
  const count = attr.readUInt32LE(ProgQueryAttr.count);
  const ids = (buf: Buffer) => Array.from({ length: count }, (_, i) => buf.readUInt32LE(i * 4));
  return { revision: attr.readBigUInt64LE(ProgQueryAttr.revision), programIds: ids(progIds), linkIds: ids(linkIds) };
}

let tcxProbe: boolean | undefined;
function tcxSupported(): boolean {
  if (tcxProbe === undefined) {
    try {
      queryTcx(1, 'ingress', 1);
      tcxProbe = true;
    } catch {
      tcxProbe = false;
    }
  }
  return tcxProbe;
}
