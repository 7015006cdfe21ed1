/**
 * The standalone XDP load balancer's maps and programs (bpf/bpf_xdp_lb.c): names, key and value
 * codecs, and its loader. xdp-maps.test.ts checks every codec against the object's BTF.
 * @module
 */
import { join } from 'node:path';
import { BpfMap, BpfObject, MapType, be16, ipv4, mac, pad, struct, u32, u64, u8, type StructValue } from '../ebpf/index.ts';

export const XDP_LB_OBJECT_PATH = join(import.meta.dirname, '..', '..', 'build', 'bpf', 'bpf_xdp_lb.o');

export const XdpLbMapName = {
  VIPS: 'ciliate_xlb_vips',
  BACKENDS: 'ciliate_xlb_backends',
  MAGLEV: 'ciliate_xlb_maglev',
  CONNS: 'ciliate_xlb_conns',
  VIP_STATS: 'ciliate_xlb_vip_stats',
  BACKEND_STATS: 'ciliate_xlb_backend_stats',
  CONFIG: 'ciliate_xlb_config',
  DROPS: 'ciliate_xlb_drops',
  DECAP_SOURCES: 'ciliate_xlb_decap_sources',
  BENCH_FRAME: 'ciliate_xlb_bench_frame',
  NEXTHOPS: 'ciliate_xlb_nexthops',
  VIP_GENS: 'ciliate_xlb_vip_gens',
} as const;

/** BENCH_*, SINK: bench/xdp-lb.ts's traffic generators and sink, not part of the balancer. */
export const XdpLbProgram = { BALANCE: 'xlb_balance', DECAP: 'xlb_decap', BENCH_BALANCE: 'xlb_bench_balance', BENCH_PASS: 'xlb_bench_pass', BENCH_REDIRECT: 'xlb_bench_redirect', SINK: 'xlb_sink' } as const;

/** Slots of the XDP load balancer's Maglev tables (C XLB_MAGLEV_SIZE): built in, one table in one array value. */
export const XLB_MAGLEV_SIZE = 16381;

/**
 * A new Maglev table map for ciliate_xlb_maglev: one entry holding every slot's backend id, so
 * the XDP path reads a slot with one lookup (the agent's services, whose size is configurable,
 * use maps.ts createMaglevInner's layout instead).
 */
export function createXdpMaglevInner(table: Uint32Array): BpfMap {
  if (table.length !== XLB_MAGLEV_SIZE) throw new RangeError(`maglev table of ${table.length} slots: the XDP load balancer is built for ${XLB_MAGLEV_SIZE}`);
  const inner = BpfMap.create({ type: MapType.ARRAY, keySize: 4, valueSize: 4 * XLB_MAGLEV_SIZE, maxEntries: 1, name: 'ciliate_xlb_mag' });
  try {
    inner.update(Buffer.alloc(4), Buffer.from(table.buffer, table.byteOffset, table.byteLength));
    return inner;
  } catch (error) {
    inner.close();
    throw error;
  }
}

/** C XLB_MAX_VIPS and XLB_MAX_BACKENDS: ids run 0..max-1 (backend id 0 means none). */
export const XLB_MAX_VIPS = 512;
export const XLB_MAX_BACKENDS = 4096;

/** xlb_backend.flags (C XLB_BE_F_*). */
export const XlbBackendFlag = { ACTIVE: 0x01 } as const;

/** ciliate_xlb_drops indexes (C XLB_DROP_*). */
export const XLB_DROP_REASONS = ['no_backend', 'fragment', 'encap'] as const;

export const xlbVipKey = struct('xlb_vip_key', { address: ipv4, port: be16, proto: u8, _pad: pad(1) });
export type XlbVipKey = StructValue<(typeof xlbVipKey)['fields']>;
export const xlbVip = struct('xlb_vip', { id: u32, flags: u32 });
export const xlbBackend = struct('xlb_backend', { address: ipv4, flags: u32 });
export type XlbBackend = StructValue<(typeof xlbBackend)['fields']>;
export const xlbFlow = struct('xlb_flow', { saddr: ipv4, daddr: ipv4, sport: be16, dport: be16, proto: u8, _pad: pad(3) });
export type XlbFlow = StructValue<(typeof xlbFlow)['fields']>;
export const xlbConn = struct('xlb_conn', { backend_id: u32, _pad: pad(4) });
export type XlbConn = StructValue<(typeof xlbConn)['fields']>;
export const xlbStats = struct('xlb_stats', { packets: u64, bytes: u64 });
export type XlbStats = StructValue<(typeof xlbStats)['fields']>;
export const xlbNexthop = struct('xlb_nexthop', { expires: u64, ifindex: u32, dmac: mac, smac: mac });
export type XlbNexthop = StructValue<(typeof xlbNexthop)['fields']>;
export const xlbConfig = struct('xlb_config', { source: ipv4, _pad: pad(4) });

export interface XdpLbMaps {
  vips: BpfMap<XlbVipKey, StructValue<(typeof xlbVip)['fields']>>;
  backends: BpfMap<number, XlbBackend>;
  /** vip id → inner Maglev table map (setInnerMap). */
  maglev: BpfMap<number, number>;
  /** The connection table: each flow's backend id, the truth the datapath's per-CPU flow cache copies. */
  conns: BpfMap<XlbFlow, XlbConn>;
  vipStats: BpfMap<number, XlbStats>;
  backendStats: BpfMap<number, XlbStats>;
  config: BpfMap<number, StructValue<(typeof xlbConfig)['fields']>>;
  drops: BpfMap<number, XlbStats>;
  decapSources: BpfMap<string, number>;
  /** Per CPU: each backend's cached next hop. */
  nexthops: BpfMap<number, XlbNexthop>;
  /** vip id → its generation (0: no VIP), which the datapath's flow cache entries must match. */
  vipGens: BpfMap<number, number>;
}

/** Loads bpf_xdp_lb.o, its maps pinned (and adopted when pinned already) in `pinDir` when given. */
export function loadXdpLb(options: { pinDir?: string; objectPath?: string; programs?: readonly string[] } = {}): BpfObject {
  return BpfObject.load(options.objectPath ?? XDP_LB_OBJECT_PATH, {
    ...(options.pinDir ? { pin: { dir: options.pinDir, maps: Object.values(XdpLbMapName) } } : {}),
    ...(options.programs ? { programs: options.programs } : {}),
  });
}

export function xdpLbMaps(obj: BpfObject): XdpLbMaps {
  return {
    vips: obj.map(XdpLbMapName.VIPS).withCodecs(xlbVipKey, xlbVip),
    backends: obj.map(XdpLbMapName.BACKENDS).withCodecs(u32, xlbBackend),
    maglev: obj.map(XdpLbMapName.MAGLEV).withCodecs(u32, u32),
    conns: obj.map(XdpLbMapName.CONNS).withCodecs(xlbFlow, xlbConn),
    vipStats: obj.map(XdpLbMapName.VIP_STATS).withCodecs(u32, xlbStats),
    backendStats: obj.map(XdpLbMapName.BACKEND_STATS).withCodecs(u32, xlbStats),
    config: obj.map(XdpLbMapName.CONFIG).withCodecs(u32, xlbConfig),
    drops: obj.map(XdpLbMapName.DROPS).withCodecs(u32, xlbStats),
    decapSources: obj.map(XdpLbMapName.DECAP_SOURCES).withCodecs(ipv4, u8),
    nexthops: obj.map(XdpLbMapName.NEXTHOPS).withCodecs(u32, xlbNexthop),
    vipGens: obj.map(XdpLbMapName.VIP_GENS).withCodecs(u32, u32),
  };
}

/** The sum over CPUs of a per-CPU counter. */
export function sumStats(perCpu: readonly XlbStats[] | undefined): { packets: number; bytes: number } {
  let packets = 0n;
  let bytes = 0n;
  for (const s of perCpu ?? []) {
    packets += BigInt(s.packets);
    bytes += BigInt(s.bytes);
  }
  return { packets: Number(packets), bytes: Number(bytes) };
}
