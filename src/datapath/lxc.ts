/**
 * Loading the endpoint datapath (bpf/bpf_lxc.c): one copy of the object per endpoint, with the
 * endpoint's id and identity as .rodata constants, all copies sharing the node's maps through
 * pins in one bpffs directory.
 * @module
 */
import { join } from 'node:path';
import { BpfObject, u32, type BpfMap } from '../ebpf/index.ts';
import {
  MapName,
  SHARED_MAPS,
  ctEntry,
  ctTuple,
  endpointInfo,
  endpointKey,
  ipcacheKey,
  nodeConfig,
  nodeConfigKey,
  policyMapsKey,
  remoteEndpointInfo,
  type CtEntry,
  type CtTuple,
  type EndpointInfo,
  type NodeConfig,
  type RemoteEndpointInfo,
} from './maps.ts';

/** The compiled object, as scripts/build-bpf.sh leaves it. */
export const LXC_OBJECT_PATH = join(import.meta.dirname, '..', '..', 'build', 'bpf', 'bpf_lxc.o');

/** Program names in bpf_lxc.o. */
export const LxcProgram = { FROM_CONTAINER: 'cil_from_container', TO_CONTAINER: 'cil_to_container' } as const;

export interface LxcLoadOptions {
  endpointId: number;
  identity: number;
  /**
   * The endpoint's IPv4 address: the only source its packets may carry. Without it (the loads
   * that only create the shared maps) the programs let no packet out.
   */
  ipv4?: string;
  /** bpffs directory of the node's shared maps; without it the object gets private maps. */
  pinDir?: string;
  /** Defaults to LXC_OBJECT_PATH. */
  objectPath?: string;
}

/** Loads bpf_lxc.o for one endpoint. */
export function loadLxc(options: LxcLoadOptions): BpfObject {
  return BpfObject.load(options.objectPath ?? LXC_OBJECT_PATH, {
    constants: { ENDPOINT_ID: options.endpointId, ENDPOINT_IDENTITY: options.identity, ENDPOINT_IPV4: ipv4Bytes(options.ipv4) },
    pin: options.pinDir ? { dir: options.pinDir, maps: SHARED_MAPS } : undefined,
  });
}

/** An IPv4 address as the 4 bytes of a `__be32` (all zero without one). */
function ipv4Bytes(address: string | undefined): Buffer {
  const bytes = Buffer.alloc(4);
  if (address === undefined) return bytes;
  const octets = address.split('.');
  if (octets.length !== 4 || octets.some((o) => !/^(0|[1-9]\d{0,2})$/.test(o) || Number(o) > 255)) {
    throw new TypeError(`loading bpf_lxc: endpoint address ${JSON.stringify(address)} is not an IPv4 address`);
  }
  octets.forEach((octet, i) => (bytes[i] = Number(octet)));
  return bytes;
}

/** The shared maps of a loaded copy, with their codecs. */
export interface LxcMaps {
  lxc: BpfMap<{ ip: string }, EndpointInfo>;
  ipcache: BpfMap<{ prefixlen: number; ip: string }, RemoteEndpointInfo>;
  ct4: BpfMap<CtTuple, CtEntry>;
  events: BpfMap;
  eventsLost: BpfMap;
  nodeCfg: BpfMap<number, NodeConfig>;
  /** Endpoint id → policy map (setInnerMap to install; lookup gives the inner map's id). */
  policyMaps: BpfMap<number, number>;
}

export function lxcMaps(obj: BpfObject): LxcMaps {
  return {
    lxc: obj.map(MapName.LXC).withCodecs(endpointKey, endpointInfo),
    ipcache: obj.map(MapName.IPCACHE).withCodecs(ipcacheKey, remoteEndpointInfo),
    ct4: obj.map(MapName.CT4).withCodecs(ctTuple, ctEntry),
    events: obj.map(MapName.EVENTS),
    eventsLost: obj.map(MapName.EVENTS_LOST),
    nodeCfg: obj.map(MapName.NODE_CFG).withCodecs(nodeConfigKey, nodeConfig),
    policyMaps: obj.map(MapName.POLICY_MAPS).withCodecs(policyMapsKey, u32),
  };
}
