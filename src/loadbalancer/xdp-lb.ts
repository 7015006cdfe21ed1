/**
 * The standalone XDP load balancer's control plane: a config (xdp-config.ts) and the backends'
 * health become the maps of bpf/bpf_xdp_lb.c. Every apply compares the wanted state with what it
 * wrote last and writes only the differences: a VIP's Maglev table is replaced (one outer-map
 * update) only when its set of healthy backends changed, and a backend taken out of a table
 * keeps its entry, so the connections the kernel already gave it stay with it (the LRU
 * connection table); a backend removed from the config is marked inactive and its flows move.
 * @module
 */
import type { BpfObject, Link, Program } from '../ebpf/index.ts';
import { attachTcx, attachXdp, inNetns } from '../ebpf/index.ts';
import { maglevTable } from './maglev.ts';
import { vipKey, type XdpLbConfig } from './xdp-config.ts';
import { createXdpMaglevInner, loadXdpLb, sumStats, XLB_DROP_REASONS, XLB_MAX_BACKENDS, XLB_MAGLEV_SIZE, XLB_MAX_VIPS, XdpLbProgram, XlbBackendFlag, xdpLbMaps, type XdpLbMaps } from './xdp-maps.ts';

const PROTO = { TCP: 6, UDP: 17 } as const;

export interface XdpLbStats {
  vips: { vip: string; id: number; packets: number; bytes: number; backends: { address: string; healthy: boolean; inTable: boolean }[] }[];
  backends: { address: string; id: number; healthy: boolean; packets: number; bytes: number }[];
  drops: { reason: string; packets: number; bytes: number }[];
}

/** What apply() last wrote, to write only differences. */
interface Written {
  source: string | undefined;
  /** `table`: what the VIP's Maglev table was built from; `members`: the backend ids it holds. */
  vips: Map<string, { id: number; table: string; members: Set<number> }>;
  /** address → backend id */
  backends: Map<string, number>;
}

/** Allocates the smallest free id in [first, max). */
class IdPool {
  readonly #used = new Set<number>();
  readonly #first: number;
  readonly #max: number;
  constructor(first: number, max: number) {
    this.#first = first;
    this.#max = max;
  }
  take(): number {
    for (let id = this.#first; id < this.#max; id++) {
      if (!this.#used.has(id)) {
        this.#used.add(id);
        return id;
      }
    }
    throw new RangeError(`no free id below ${this.#max}`);
  }
  free(id: number): void {
    this.#used.delete(id);
  }
}

export class XdpLoadBalancer {
  readonly #obj: BpfObject;
  readonly #maps: XdpLbMaps;
  #link: Link | undefined;
  #attached: string | undefined;
  #config: XdpLbConfig | undefined;
  readonly #written: Written = { source: undefined, vips: new Map(), backends: new Map() };
  readonly #vipIds = new IdPool(0, XLB_MAX_VIPS);
  readonly #backendIds = new IdPool(1, XLB_MAX_BACKENDS);
  /** Backends the health checks found failing (by address). */
  readonly #unhealthy = new Set<string>();
  /** The last VIP generation given (ciliate_xlb_vip_gens): each VIP id's use gets a new one. */
  #vipGen = 0;

  private constructor(obj: BpfObject) {
    this.#obj = obj;
    this.#maps = xdpLbMaps(obj);
  }

  /** Loads the program; its maps are private to this balancer unless `pinDir` names where to share them. */
  static load(options: { pinDir?: string } = {}): XdpLoadBalancer {
    const obj = loadXdpLb({ ...options, programs: [XdpLbProgram.BALANCE] });
    const lb = new XdpLoadBalancer(obj);
    // Pinned maps adopted from an earlier run hold its VIPs and backends: start from empty, the
    // connection table aside (its flows keep their backends if the new config has them).
    for (const key of [...lb.#maps.vips.keys()]) lb.#maps.vips.delete(key);
    // Their generations too (a program still holding a cache of their flows stops using it), and
    // new ones go on from the earlier run's, so that no cached entry ever matches again.
    for (let id = 0; id < XLB_MAX_VIPS; id++) {
      const gen = lb.#maps.vipGens.lookup(id) ?? 0;
      if (gen === 0) continue;
      lb.#vipGen = Math.max(lb.#vipGen, gen);
      lb.#maps.vipGens.update(id, 0);
    }
    for (let id = 0; id < XLB_MAX_BACKENDS; id++) if (lb.#maps.backends.lookup(id)?.flags) lb.#maps.backends.update(id, { address: '0.0.0.0', flags: 0 });
    return lb;
  }

  /** The XDP program (e.g. for BPF_PROG_TEST_RUN). */
  get program(): Program {
    return this.#obj.program(XdpLbProgram.BALANCE);
  }

  get maps(): XdpLbMaps {
    return this.#maps;
  }

  get config(): XdpLbConfig | undefined {
    return this.#config;
  }

  /** Every distinct backend of the current config with its health-check port(s). */
  healthTargets(): { address: string; port: number }[] {
    const targets = new Map<string, { address: string; port: number }>();
    for (const vip of this.#config?.vips ?? []) {
      for (const b of vip.backends) {
        const port = b.healthPort ?? vip.port;
        targets.set(`${b.address}:${port}`, { address: b.address, port });
      }
    }
    return [...targets.values()];
  }

  /**
   * Makes the kernel hold `config`: attaches (or moves) the XDP program and writes what changed.
   * `netns`: the namespace path the interface is in (default: the caller's).
   */
  apply(config: XdpLbConfig, netns?: string): void {
    if (this.#attached !== `${config.interface}/${config.xdpMode}`) {
      const program = this.#obj.program(XdpLbProgram.BALANCE);
      const attach = () => attachXdp(program, { interface: config.interface, mode: config.xdpMode });
      const link = netns ? inNetns(netns, attach) : attach();
      this.#link?.close();
      this.#link = link;
      this.#attached = `${config.interface}/${config.xdpMode}`;
    }
    if (this.#written.source !== config.source) {
      this.#maps.config.update(0, { source: config.source });
      this.#written.source = config.source;
    }
    this.#config = config;
    this.#sync();
  }

  /** Marks a backend healthy or not; its VIPs' Maglev tables follow. */
  setHealth(address: string, healthy: boolean): void {
    if (healthy === !this.#unhealthy.has(address)) return;
    if (healthy) this.#unhealthy.delete(address);
    else this.#unhealthy.add(address);
    this.#sync();
  }

  isHealthy(address: string): boolean {
    return !this.#unhealthy.has(address);
  }

  #sync(): void {
    const config = this.#config;
    if (!config) return;
    const written = this.#written;
    // Backends first (new ones active before any table names them), VIPs' tables next, and only
    // then what is gone (no table names it any more).
    const wantBackends = new Set(config.vips.flatMap((v) => v.backends.map((b) => b.address)));
    for (const address of wantBackends) {
      if (written.backends.has(address)) continue;
      const id = this.#backendIds.take();
      this.#maps.backends.update(id, { address, flags: XlbBackendFlag.ACTIVE });
      // Counters and the next hop of an id's earlier backend must not be inherited.
      this.#maps.backendStats.updatePerCpu(id, zeroStats(this.#maps));
      this.#maps.nexthops.updatePerCpu(id, zeroStats(this.#maps).map(() => ({ expires: 0n, ifindex: 0, dmac: '00:00:00:00:00:00', smac: '00:00:00:00:00:00' })));
      written.backends.set(address, id);
    }
    const wantVips = new Set<string>();
    for (const vip of config.vips) {
      const key = vipKey(vip);
      wantVips.add(key);
      const healthy = vip.backends.filter((b) => !this.#unhealthy.has(b.address)).map((b) => ({ id: written.backends.get(b.address)!, name: b.address, weight: b.weight }));
      const tableKey = healthy.map((b) => `${b.id}=${b.name}*${b.weight}`).sort().join(',');
      let entry = written.vips.get(key);
      if (!entry) {
        entry = { id: this.#vipIds.take(), table: '\0', members: new Set() };
        this.#maps.vipStats.updatePerCpu(entry.id, zeroStats(this.#maps));
        // Before the VIP is found by its address: flows the datapath caches are of this use of the id.
        this.#vipGen = this.#vipGen >= 0xffffffff ? 1 : this.#vipGen + 1;
        this.#maps.vipGens.update(entry.id, this.#vipGen);
        written.vips.set(key, entry);
      }
      if (entry.table !== tableKey) {
        const inner = createXdpMaglevInner(maglevTable(healthy, XLB_MAGLEV_SIZE));
        try {
          this.#maps.maglev.setInnerMap(entry.id, inner);
        } finally {
          inner.close();
        }
        entry.table = tableKey;
        entry.members = new Set(healthy.filter((b) => b.weight > 0).map((b) => b.id));
      }
      this.#maps.vips.update({ address: vip.address, port: vip.port, proto: PROTO[vip.protocol] }, { id: entry.id, flags: 0 });
    }
    for (const [key, entry] of written.vips) {
      if (wantVips.has(key)) continue;
      const [address, rest] = key.split(':');
      const [port, protocol] = rest.split('/');
      this.#maps.vips.delete({ address, port: Number(port), proto: PROTO[protocol as keyof typeof PROTO] });
      this.#maps.maglev.delete(entry.id);
      // Ends the cached way of the VIP's flows on every CPU at once.
      this.#maps.vipGens.update(entry.id, 0);
      this.#vipIds.free(entry.id);
      written.vips.delete(key);
    }
    for (const [address, id] of written.backends) {
      if (wantBackends.has(address)) continue;
      this.#maps.backends.update(id, { address: '0.0.0.0', flags: 0 });
      this.#backendIds.free(id);
      written.backends.delete(address);
      this.#unhealthy.delete(address);
    }
  }

  stats(): XdpLbStats {
    const written = this.#written;
    const vips = (this.#config?.vips ?? []).map((vip) => {
      const entry = written.vips.get(vipKey(vip))!;
      return {
        vip: vipKey(vip),
        id: entry.id,
        ...sumStats(this.#maps.vipStats.lookupPerCpu(entry.id)),
        backends: vip.backends.map((b) => ({ address: b.address, healthy: !this.#unhealthy.has(b.address), inTable: entry.members.has(written.backends.get(b.address)!) })),
      };
    });
    const backends = [...written.backends].map(([address, id]) => ({ address, id, healthy: !this.#unhealthy.has(address), ...sumStats(this.#maps.backendStats.lookupPerCpu(id)) }));
    const drops = XLB_DROP_REASONS.map((reason, i) => ({ reason, ...sumStats(this.#maps.drops.lookupPerCpu(i)) }));
    return { vips, backends, drops };
  }

  close(): void {
    this.#link?.close();
    this.#link = undefined;
    this.#obj.close();
  }
}

function zeroStats(maps: XdpLbMaps): { packets: bigint; bytes: bigint }[] {
  return Array.from({ length: maps.vipStats.lookupPerCpu(0)?.length ?? 1 }, () => ({ packets: 0n, bytes: 0n }));
}

/**
 * The backend's half: `xlb_decap` on `iface`'s tc ingress, opening IPIP packets from the given
 * balancers only. Closing it detaches.
 */
export class XdpLbDecap {
  readonly #obj: BpfObject;
  readonly #link: Link;

  private constructor(obj: BpfObject, link: Link) {
    this.#obj = obj;
    this.#link = link;
  }

  static attach(options: { interface: string; balancers: readonly string[]; netns?: string }): XdpLbDecap {
    const obj = loadXdpLb({ programs: [XdpLbProgram.DECAP] });
    try {
      const sources = xdpLbMaps(obj).decapSources;
      for (const address of options.balancers) sources.update(address, 1);
      const program = obj.program(XdpLbProgram.DECAP);
      const attach = () => attachTcx(program, { interface: options.interface, direction: 'ingress' });
      return new XdpLbDecap(obj, options.netns ? inNetns(options.netns, attach) : attach());
    } catch (error) {
      obj.close();
      throw error;
    }
  }

  close(): void {
    this.#link.close();
    this.#obj.close();
  }
}
