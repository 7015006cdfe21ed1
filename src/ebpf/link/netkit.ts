/**
 * netkit (kernel ≥ 6.7): the veth replacement whose BPF programs run inside the device's own
 * transmit path, attached through links as `primary` (the host side) or `peer` (the pod side).
 * Kernels built without CONFIG_NETKIT, like this project's, say so with NotSupportedError (from
 * requireFeature), so an
 * agent can fall back to veth with TCX and tell the user why.
 * @module
 */
import { requireFeature } from '../features.ts';
import type { Program } from '../program.ts';
import { assertProgramType } from '../program.ts';
import { AttachType, ProgramType } from '../internal/constants.ts';
import { interfaceIndex } from '../internal/sys.ts';
import { Link, createLink } from './link.ts';

export interface NetkitOptions {
  /** The netkit device's primary (host-side) interface, by name in this namespace or index. */
  interface: string | number;
  /** Attach to the peer (pod-side) direction instead of the primary. */
  peer?: boolean;
}

/**
 * Attaches a tc program to a netkit device through a link.
 *
 * @example
 * const link = attachNetkit(obj.program('cil_from_netdev'), { interface: 'nk0' }); // NotSupportedError here
 */
export function attachNetkit(program: Program, options: NetkitOptions): Link {
  assertProgramType(program, [ProgramType.SCHED_CLS], 'netkit');
  // Ask first: without netkit the interface cannot be one, and "no such device" would mislead.
  requireFeature('netkit');
  const ifindex = typeof options.interface === 'number' ? options.interface : interfaceIndex(options.interface);
  const attachType = options.peer ? AttachType.NETKIT_PEER : AttachType.NETKIT_PRIMARY;
  const where = `netkit ${options.peer ? 'peer' : 'primary'} of interface ${options.interface}`;
  const fd = createLink(program.fd, ifindex, attachType, 0, `attaching ${program.name} to ${where}`);
  return new Link(fd, `netkit link of ${program.name} on ${where}`);
}
