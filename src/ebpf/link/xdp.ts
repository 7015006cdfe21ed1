/**
 * XDP through links: native (driver) mode where the driver supports it, generic (skb) mode anywhere.
 * @module
 */
import type { Program } from '../program.ts';
import { assertProgramType } from '../program.ts';
import { AttachType, ProgramType, XdpFlag } from '../internal/constants.ts';
import { interfaceIndex } from '../internal/sys.ts';
import { Link, createLink } from './link.ts';

export type XdpMode = 'native' | 'generic';

export interface XdpOptions {
  interface: string | number;
  /** native: the driver runs it (veth supports this); generic: after skb allocation, works everywhere. */
  mode?: XdpMode;
}

/** @example attachXdp(obj.program('xdp_lb'), { interface: 'veth0', mode: 'native' }) */
export function attachXdp(program: Program, options: XdpOptions): Link {
  assertProgramType(program, [ProgramType.XDP], 'XDP');
  const ifindex = typeof options.interface === 'number' ? options.interface : interfaceIndex(options.interface);
  const mode = options.mode ?? 'native';
  const flags = mode === 'generic' ? XdpFlag.SKB_MODE : XdpFlag.DRV_MODE;
  const fd = createLink(program.fd, ifindex, AttachType.XDP, flags, `attaching ${program.name} as ${mode} XDP on interface ${options.interface}`);
  return new Link(fd, `XDP link of ${program.name} on ${options.interface}`);
}
