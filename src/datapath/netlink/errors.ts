/**
 * The one error type of the network-configuration boundary: the kernel's errno, its name and the
 * operation refused. Callers test the errno exactly (NetlinkError.is(error, 'ENODEV')), never the
 * message text.
 * @module
 */
import { constants } from 'node:os';
import { codedErrorFamily } from '../../errors/index.ts';
import { errnoName } from '../../ebpf/index.ts';

const ERRNO_BY_NAME: Readonly<Record<string, number>> = constants.errno;

export type ErrnoName = keyof typeof constants.errno;

/** The eBPF library's: one table of errno names for the whole project. */
export { errnoName };

/** The errno number of a name, e.g. errnoOf('EEXIST') === 17. */
export function errnoOf(name: ErrnoName): number {
  return ERRNO_BY_NAME[name];
}

/** The errno of a Node.js error code ('ENOENT'), EINVAL for codes that are no errno name. */
export function errnoOfCode(code: string | undefined): number {
  return (code !== undefined ? ERRNO_BY_NAME[code] : undefined) ?? ERRNO_BY_NAME.EINVAL;
}

/**
 * A refusal from the kernel (or a failed socket call) while configuring the network.
 *
 * @example
 * try { await nl.createVeth({ name: 'lxc1', peerName: 'eth0' }); }
 * catch (error) { if (NetlinkError.is(error, 'EEXIST')) …; else throw error; }
 */
export class NetlinkError extends codedErrorFamily<'ERR_NETLINK'>('netlink') {
  readonly errno: number;
  readonly errnoName: string;
  /** What was being done, e.g. "creating veth lxc12ab (peer eth0 in /run/netns/pod1)". */
  readonly operation: string;
  /** The kernel's extended acknowledgement, when it gave one ("Nexthop device is not up"). */
  readonly detail: string | undefined;

  constructor(operation: string, errno: number, options?: { detail?: string; cause?: unknown }) {
    const name = errnoName(errno);
    const detail = options?.detail ? ` (${options.detail})` : '';
    super('ERR_NETLINK', `${operation}: ${name}${detail}`, { cause: options?.cause });
    this.errno = errno;
    this.errnoName = name;
    this.operation = operation;
    this.detail = options?.detail;
  }

  /**
   * Whether `value` is a NetlinkError (exactly, across copies of the module), and with `errno`
   * (a name or number) when given.
   */
  static override is(value: unknown, errno?: ErrnoName | number | 'ERR_NETLINK'): value is NetlinkError {
    if (!super.is(value)) return false;
    if (errno === undefined || errno === 'ERR_NETLINK') return true;
    const wanted = typeof errno === 'number' ? errno : ERRNO_BY_NAME[errno];
    return (value as NetlinkError).errno === wanted;
  }
}
