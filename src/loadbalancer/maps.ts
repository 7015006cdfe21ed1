/**
 * The service load-balancing maps (bpf/lib/lb.h): names, key and value codecs, flags, and the
 * socket-LB object (bpf/bpf_sock.c) that defines them. maps-layout.test.ts checks every codec
 * against the compiled object's BTF.
 * @module
 */
import { join } from 'node:path';
import { LbMapName, SHARED_MAPS } from '../datapath/index.ts';
import { DEFAULT_MAGLEV_TABLE_SIZE } from './maglev.ts';
import { BpfMap, BpfObject, MapFlag, MapType, be16, ipv4, pad, struct, u16, u32, u64, u8, type StructValue } from '../ebpf/index.ts';

export { LbMapName };

/** The compiled object, as scripts/build-bpf.sh leaves it. */
export const SOCK_OBJECT_PATH = join(import.meta.dirname, '..', '..', 'build', 'bpf', 'bpf_sock.o');

/** Program names in bpf_sock.o. */
export const SockProgram = {
  CONNECT4: 'cil_sock4_connect',
  SENDMSG4: 'cil_sock4_sendmsg',
  RECVMSG4: 'cil_sock4_recvmsg',
  GETPEERNAME4: 'cil_sock4_getpeername',
} as const;

/** Slots of each service's Maglev table unless configured (bpf/lib/lb.h LB_MAGLEV_LUT_SIZE_DEFAULT). */
export const LB_MAGLEV_LUT_SIZE: number = DEFAULT_MAGLEV_TABLE_SIZE;

/** lb4_service.algorithm (C LB_SELECTION_*). */
export const LbSelection = { RANDOM: 1, MAGLEV: 2 } as const;

/** lb4_service.flags (C SVC_F_*). */
export const ServiceFlag = { NODEPORT: 0x01, EXTERNAL_IP: 0x02, LOADBALANCER: 0x04, AFFINITY: 0x08, EXT_LOCAL: 0x10 } as const;

/** lb4_backend.flags (C BE_F_*). */
export const BackendFlag = { TERMINATING: 0x01 } as const;

export const lb4Key = struct('lb4_key', {
  address: ipv4,
  dport: be16,
  /** 0: the service entry; 1..count: a backend. */
  backend_slot: u16,
  proto: u8,
  scope: u8,
  _pad: pad(2),
});
export type Lb4Key = StructValue<(typeof lb4Key)['fields']>;

export const lb4Service = struct('lb4_service', {
  backend_id: u32,
  count: u16,
  rev_nat_index: u16,
  flags: u8,
  algorithm: u8,
  _pad: pad(2),
});
export type Lb4Service = StructValue<(typeof lb4Service)['fields']>;

export const lb4BackendKey = u32;

export const lb4Backend = struct('lb4_backend', { address: ipv4, port: be16, proto: u8, flags: u8 });
export type Lb4Backend = StructValue<(typeof lb4Backend)['fields']>;

export const lb4ReverseNatKey = u16;

export const lb4ReverseNat = struct('lb4_reverse_nat', { address: ipv4, port: be16, _pad: pad(2) });
export type Lb4ReverseNat = StructValue<(typeof lb4ReverseNat)['fields']>;

export const lb4ReverseSkKey = struct('lb4_reverse_sk_key', { cookie: u64, address: ipv4, port: be16, _pad: pad(2) });
export const lb4ReverseSk = struct('lb4_reverse_sk', { address: ipv4, port: be16, rev_nat_index: u16 });

export const lb4AffinityKey = struct('lb4_affinity_key', { client_id: u64, rev_nat_index: u16, _pad: pad(6) });
export const lbAffinityVal = struct('lb_affinity_val', { last_used: u64, backend_id: u32, _pad: pad(4) });

/** ciliate_lb_affinity_match: the (backend, service) pairs of affinity services. */
export const lbAffinityMatch = struct('lb_affinity_match', { backend_id: u32, rev_nat_index: u16, _pad: pad(2) });
export type LbAffinityMatch = StructValue<(typeof lbAffinityMatch)['fields']>;

/** ciliate_lb4_nat keys are ipv4_ct_tuples whose flags say the entry's kind (bpf/lib/lb.h NAT_*). */
export const NatKind = { FWD: 1, REV_DST: 2, REV_SRC: 3 } as const;

/** bpf_host's north-south translation of one connection direction. */
export const lb4Nat = struct('lb4_nat', { to_addr: ipv4, frontend_addr: ipv4, to_port: be16, frontend_port: be16, _pad: pad(4) });
export type Lb4Nat = StructValue<(typeof lb4Nat)['fields']>;

/** ciliate_sock_endpoints: network namespace cookie → the local endpoint in it. */
export const sockEndpoint = struct('sock_endpoint', { ipv4, identity: u32, endpoint_id: u16, _pad: pad(2) });
export type SockEndpoint = StructValue<(typeof sockEndpoint)['fields']>;

/** The node's load-balancing maps, pinned in `<bpfRoot>/maps`. */
export interface LbMaps {
  services: BpfMap<Lb4Key, Lb4Service>;
  backends: BpfMap<number, Lb4Backend>;
  reverseNat: BpfMap<number, Lb4ReverseNat>;
  /** rev_nat_index → inner map (setInnerMap; lookup gives the inner map's id). */
  maglev: BpfMap<number, number>;
  affinityMatch: BpfMap<LbAffinityMatch, number>;
  sockEndpoints: BpfMap<bigint, SockEndpoint>;
}

/** Loads bpf_sock.o with its maps pinned (and adopted when pinned already) in `pinDir`. */
export function loadSock(options: { pinDir: string; objectPath?: string }): BpfObject {
  return BpfObject.load(options.objectPath ?? SOCK_OBJECT_PATH, {
    // The endpoint datapath's maps too (bpf/lib/maps.h, events.h): the ipcache names node addresses
    // for NodePort, and nothing of them may be a private copy (the conntrack table alone is large).
    pin: { dir: options.pinDir, maps: SHARED_MAPS },
  });
}

/** The LB maps of a load of bpf_sock.o, with their codecs. */
export function lbMaps(obj: BpfObject): LbMaps {
  return {
    services: obj.map(LbMapName.SERVICES).withCodecs(lb4Key, lb4Service),
    backends: obj.map(LbMapName.BACKENDS).withCodecs(lb4BackendKey, lb4Backend),
    reverseNat: obj.map(LbMapName.REVERSE_NAT).withCodecs(lb4ReverseNatKey, lb4ReverseNat),
    maglev: obj.map(LbMapName.MAGLEV).withCodecs(u16, u32),
    affinityMatch: obj.map(LbMapName.AFFINITY_MATCH).withCodecs(lbAffinityMatch, u8),
    sockEndpoints: obj.map(LbMapName.SOCK_ENDPOINTS).withCodecs(u64, sockEndpoint),
  };
}

/** Ids per element of a Maglev inner map (bpf/lib/lb.h LB_MAGLEV_CHUNK). */
export const LB_MAGLEV_CHUNK = 256;

/** Elements of the inner map of a table of `size` slots: M + 1 ids in chunks. */
function maglevElements(size: number): number {
  return Math.ceil((size + 1) / LB_MAGLEV_CHUNK);
}

/**
 * A new Maglev table map for ciliate_lb4_maglev (bpf/lib/lb.h): M + 1 ids in chunks of
 * LB_MAGLEV_CHUNK, id 0 the table's size M, ids 1..M its slots; written in one batch call.
 */
export function createMaglevInner(table: Uint32Array): BpfMap {
  const count = maglevElements(table.length);
  const inner = BpfMap.create({ type: MapType.ARRAY, keySize: 4, valueSize: 4 * LB_MAGLEV_CHUNK, maxEntries: count, flags: MapFlag.INNER_MAP, name: 'ciliate_maglev' });
  try {
    const keys = Buffer.alloc(4 * count);
    const values = Buffer.alloc(4 * LB_MAGLEV_CHUNK * count);
    for (let i = 0; i < count; i++) keys.writeUInt32LE(i, 4 * i);
    values.writeUInt32LE(table.length, 0);
    Buffer.from(table.buffer, table.byteOffset, table.byteLength).copy(values, 4);
    inner.updateBatchRaw(keys, values, count);
    return inner;
  } catch (error) {
    inner.close();
    throw error;
  }
}

/** Whether a Maglev inner map has createMaglevInner's layout for a table of `size` slots (its length and id 0). */
export function maglevInnerFits(inner: BpfMap, size: number): boolean {
  const { maxEntries, valueSize } = inner.info();
  return valueSize === 4 * LB_MAGLEV_CHUNK && maxEntries === maglevElements(size) && inner.lookup(Buffer.alloc(4))?.readUInt32LE(0) === size;
}

/** The table a Maglev inner map holds (createMaglevInner's layout), or undefined when it is not one. */
export function readMaglevInner(inner: BpfMap): Uint32Array | undefined {
  const head = inner.lookup(Buffer.alloc(4));
  const size = head?.readUInt32LE(0) ?? 0;
  if (size === 0 || !maglevInnerFits(inner, size)) return undefined;
  const ids = Buffer.alloc(4 * LB_MAGLEV_CHUNK * maglevElements(size));
  for (const [key, value] of inner.entries()) value.copy(ids, key.readUInt32LE(0) * 4 * LB_MAGLEV_CHUNK);
  return Uint32Array.from({ length: size }, (_, i) => ids.readUInt32LE(4 * (i + 1)));
}
