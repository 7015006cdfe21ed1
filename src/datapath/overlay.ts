/**
 * Loading the overlay datapath (bpf/bpf_overlay.c): the programs on the node's VXLAN device, one
 * at ingress that delivers decapsulated packets from other nodes to this node's pods, one at
 * egress that gives the node proxy's connections their client's identity in the VNI. They share
 * the node's maps with the node's load of bpf_lxc.o through the same pins.
 * @module
 */
import { join } from 'node:path';
import { BpfObject } from '../ebpf/index.ts';
import { SHARED_MAPS } from './maps.ts';

/** The compiled object, as scripts/build-bpf.sh leaves it. */
export const OVERLAY_OBJECT_PATH = join(import.meta.dirname, '..', '..', 'build', 'bpf', 'bpf_overlay.o');

/** Program names in bpf_overlay.o. */
export const OverlayProgram = { FROM_OVERLAY: 'cil_from_overlay', TO_OVERLAY: 'cil_to_overlay' } as const;

export interface OverlayLoadOptions {
  /** bpffs directory of the node's shared maps; without it the object gets private maps. */
  pinDir?: string;
  /** Defaults to OVERLAY_OBJECT_PATH. */
  objectPath?: string;
}

/**
 * Loads bpf_overlay.o.
 *
 * @example
 * using obj = loadOverlay({ pinDir: '/sys/fs/bpf/ciliate/maps' });
 * attachTcx(obj.program(OverlayProgram.FROM_OVERLAY), { interface: 'ciliate_vxlan', direction: 'ingress' });
 * attachTcx(obj.program(OverlayProgram.TO_OVERLAY), { interface: 'ciliate_vxlan', direction: 'egress' });
 */
export function loadOverlay(options: OverlayLoadOptions = {}): BpfObject {
  return BpfObject.load(options.objectPath ?? OVERLAY_OBJECT_PATH, {
    pin: options.pinDir ? { dir: options.pinDir, maps: SHARED_MAPS } : undefined,
  });
}
