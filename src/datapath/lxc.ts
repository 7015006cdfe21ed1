/**
 * Loading the endpoint datapath (bpf/bpf_lxc.c): one load serves every endpoint of a node (the
 * programs find the endpoint from the packet in ciliate_lxc), sharing the node's maps with every
 * other load through pins in one bpffs directory.
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
  lxcIfindexKey,
  monitorConfig,
  monitorConfigKey,
  nodeConfig,
  nodeConfigKey,
  policyMapsKey,
  remoteEndpointInfo,
  type CtEntry,
  type CtTuple,
  type EndpointInfo,
  type MonitorConfigValue,
  type NodeConfig,
  type RemoteEndpointInfo,
} from './maps.ts';

/** The compiled object, as scripts/build-bpf.sh leaves it. */
export const LXC_OBJECT_PATH = join(import.meta.dirname, '..', '..', 'build', 'bpf', 'bpf_lxc.o');

/** Program names in bpf_lxc.o. */
export const LxcProgram = { FROM_CONTAINER: 'cil_from_container', TO_CONTAINER: 'cil_to_container' } as const;

export interface LxcLoadOptions {
  /** bpffs directory of the node's shared maps; without it the object gets private maps. */
  pinDir?: string;
  /** Defaults to LXC_OBJECT_PATH. */
  objectPath?: string;
  /** Replace a pinned map whose shape differs (see LoadOptions.pin.onIncompatible); else such a load fails. */
  onIncompatibleMap?: (map: string, reason: string) => void;
}

/** Loads bpf_lxc.o: the programs of every endpoint of a node. */
export function loadLxc(options: LxcLoadOptions = {}): BpfObject {
  return BpfObject.load(options.objectPath ?? LXC_OBJECT_PATH, {
    pin: options.pinDir ? { dir: options.pinDir, maps: SHARED_MAPS, onIncompatible: options.onIncompatibleMap } : undefined,
  });
}

/** The shared maps of a load, with their codecs. */
export interface LxcMaps {
  lxc: BpfMap<{ ip: string }, EndpointInfo>;
  /** Host-side ifindex → the endpoint's ciliate_lxc key: names the sender of drops. */
  lxcIfindex: BpfMap<number, { ip: string }>;
  ipcache: BpfMap<{ prefixlen: number; ip: string }, RemoteEndpointInfo>;
  ct4: BpfMap<CtTuple, CtEntry>;
  events: BpfMap;
  eventsLost: BpfMap;
  nodeCfg: BpfMap<number, NodeConfig>;
  /** Endpoint id → policy map (setInnerMap to install; lookup gives the inner map's id). */
  policyMaps: BpfMap<number, number>;
  /** Monitor aggregation (src/datapath/monitor-config.ts); all zero until written: Cilium's defaults. */
  monitorCfg: BpfMap<number, MonitorConfigValue>;
}

export function lxcMaps(obj: BpfObject): LxcMaps {
  return {
    lxc: obj.map(MapName.LXC).withCodecs(endpointKey, endpointInfo),
    lxcIfindex: obj.map(MapName.LXC_IFINDEX).withCodecs(lxcIfindexKey, endpointKey),
    ipcache: obj.map(MapName.IPCACHE).withCodecs(ipcacheKey, remoteEndpointInfo),
    ct4: obj.map(MapName.CT4).withCodecs(ctTuple, ctEntry),
    events: obj.map(MapName.EVENTS),
    eventsLost: obj.map(MapName.EVENTS_LOST),
    nodeCfg: obj.map(MapName.NODE_CFG).withCodecs(nodeConfigKey, nodeConfig),
    policyMaps: obj.map(MapName.POLICY_MAPS).withCodecs(policyMapsKey, u32),
    monitorCfg: obj.map(MapName.MONITOR_CFG).withCodecs(monitorConfigKey, monitorConfig),
  };
}
