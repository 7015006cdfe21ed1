/**
 * Realizes endpoints in the kernel: the node's one load of bpf_lxc attached to each endpoint's
 * host-side veth (by the attach mode: tc shared blocks, or TCX links pinned under
 * <bpfRoot>/endpoints/<id>/), and the endpoint's
 * entries in the shared ciliate_lxc and ciliate_lxc_ifindex maps. Pool links (made ahead of the
 * adds that take them) have theirs pinned under <bpfRoot>/pool/<name>/ until an add takes them. The programs find the endpoint
 * from the packet in ciliate_lxc, so an endpoint costs no program load, and a new identity is a
 * map update. Pinned links keep pods connected while no agent runs; a restarted agent adopts a
 * pinned link that still serves the right interface instead of attaching again.
 * @module
 */
import { mkdirSync, readFileSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Logger } from 'pino';
import { attachTcxAsync, BpfError, BpfMap, Link, Program, unpinLink, unpinLinkAsync, type BpfObject, type TcxDirection } from '../ebpf/index.ts';
import { LxcProgram, loadLxc } from './lxc.ts';
import { Netlink, NetlinkError, type Clsact } from './netlink/index.ts';
import { linkServesInterface } from './pins.ts';
import {
  endpointInfo,
  endpointKey,
  ipcacheKey,
  lxcIfindexKey,
  MapName,
  remoteEndpointInfo,
  type EndpointInfo,
  type RemoteEndpointInfo,
} from './maps.ts';

/** What the datapath needs to know of an endpoint. */
export interface DatapathEndpoint {
  /** Node-local endpoint id (1–4095): its ciliate_lxc entry's lxc_id. */
  id: number;
  ipv4: string;
  /** The pod-side MAC. */
  mac: string;
  /** Host-side veth: name, index and MAC. */
  hostIfname: string;
  hostIfindex: number;
  hostMac: string;
  /** Security identity; reserved numbers are below 256. */
  identity: number;
}

/** An endpoint as the kernel serves it (EndpointDatapath.observe). */
export interface ObservedEndpoint {
  ipv4: string;
  info: EndpointInfo;
  /** bpf_lxc runs on info.ifindex both ways (tcx: both pinned links of the id serve it; tc-block: its clsact is bound to the node's blocks). */
  linksServe: boolean;
  /** ciliate_lxc_ifindex names this address for info.ifindex. */
  indexed: boolean;
}

export interface EndpointDatapathOptions {
  /**
   * Path of the network namespace the endpoints' host-side interfaces are in (e.g. /run/netns/n1);
   * default: the one the process is in.
   */
  netns?: string;
  /** How bpf_lxc is attached to endpoint interfaces; default tc-block. */
  attach?: AttachMode;
  /** tc-block: the shared block indexes (per network namespace); default TC_BLOCKS. */
  blocks?: TcBlocks;
}

/**
 * tc-block: each endpoint interface gets a clsact qdisc bound to the node's two shared filter
 * blocks, which carry bpf_lxc as direct-action cls_bpf filters, installed once per node. An
 * endpoint's attach is one RTM_NEWQDISC, which waits for no RCU grace period (an expedited one at
 * most), against two TCX link creates that each wait for a full one (~13 ms or more under load).
 * tcx: two TCX links per endpoint, pinned (kernel ≥ 6.6). One mode at a time: attaching in one
 * removes what the other left on the interface, so an agent restarted in the other mode converts.
 */
export type AttachMode = 'tc-block' | 'tcx';
export const ATTACH_MODES: readonly AttachMode[] = ['tc-block', 'tcx'];

export interface TcBlocks {
  ingress: number;
  egress: number;
}

/** The blocks' indexes: arbitrary but fixed, so a restarted agent finds its blocks ("CILA"+0/1). */
export const TC_BLOCKS: TcBlocks = { ingress: 0x43494c40, egress: 0x43494c41 };

/**
 * A shared block exists only while a qdisc is bound to it: this veth pair (down, no addresses,
 * in the node's namespace) holds both, so the filters outlive the last endpoint and the agent.
 */
export const BLOCK_ANCHOR = 'ciliate_blk';
const BLOCK_ANCHOR_PEER = 'ciliate_blk_p';
/** The filters' priority and handle in their blocks. */
const FILTER = { priority: 1, handle: 1 } as const;

const ATTACHMENTS: readonly { program: string; direction: TcxDirection; pin: string }[] = [
  { program: LxcProgram.FROM_CONTAINER, direction: 'ingress', pin: 'from-container' },
  { program: LxcProgram.TO_CONTAINER, direction: 'egress', pin: 'to-container' },
];

/** Under the bpf root: the pins of pool links (interfaces made ahead of the adds that take them). */
const POOL_DIR = 'pool';

export class EndpointDatapath {
  readonly bpfRoot: string;
  readonly mapsDir: string;
  readonly #log: Logger;
  readonly #netns: string | undefined;
  /** The node's programs: every endpoint's links run them (but links a previous agent pinned). */
  readonly #programs: BpfObject;
  /** Attaches in flight by endpoint id, so attach() and realize() of one endpoint share one. */
  readonly #attaching = new Map<number, { ifindex: number; done: Promise<void> }>();
  /** Endpoint ids whose links this process attached or has adopted. */
  readonly #known = new Set<number>();
  /** Tags of this load's programs, by name (#adopt compares them). */
  readonly #tags = new Map<string, string>();
  readonly lxc: BpfMap<{ ip: string }, EndpointInfo>;
  readonly lxcIfindex: BpfMap<number, { ip: string }>;
  readonly ipcache: BpfMap<{ prefixlen: number; ip: string }, RemoteEndpointInfo>;
  readonly attachMode: AttachMode;
  readonly #blocks: TcBlocks;
  /** The node namespace's rtnetlink socket (tc-block mode), opened on first use. */
  #netlink: Netlink | undefined;
  /** The blocks' filters checked (and installed) once; cleared when a refresh finds them wrong. */
  #blocksReady: Promise<void> | undefined;
  /** tc-block: the interface each endpoint id's clsact was added to, so detach() can remove it. */
  readonly #bound = new Map<number, number>();
  /** tc-block: pool links whose host end this process bound, by name. */
  readonly #poolBound = new Map<string, number>();

  /**
   * Loads the node's programs (bpf_lxc.o, once: the verifier's work is the same for one endpoint
   * as for all) and opens the node's shared maps under `bpfRoot`/maps, creating those missing.
   */
  constructor(bpfRoot: string, log: Logger, options: EndpointDatapathOptions = {}) {
    this.bpfRoot = bpfRoot;
    this.mapsDir = join(bpfRoot, 'maps');
    this.#log = log;
    this.#netns = options.netns;
    this.attachMode = options.attach ?? 'tc-block';
    this.#blocks = options.blocks ?? TC_BLOCKS;
    assertOnBpffs(bpfRoot);
    mkdirSync(this.mapsDir, { recursive: true });
    mkdirSync(join(bpfRoot, 'endpoints'), { recursive: true });
    mkdirSync(join(bpfRoot, POOL_DIR), { recursive: true });
    // Loading with pins also creates every shared map with the object's own definitions (and
    // those a newer build added next to an older agent's pins).
    this.#programs = loadLxc({ pinDir: this.mapsDir });
    const opened: { close(): void }[] = [];
    try {
      this.lxc = BpfMap.openPinned(join(this.mapsDir, MapName.LXC), endpointKey, endpointInfo);
      opened.push(this.lxc);
      this.lxcIfindex = BpfMap.openPinned(join(this.mapsDir, MapName.LXC_IFINDEX), lxcIfindexKey, endpointKey);
      opened.push(this.lxcIfindex);
      this.ipcache = BpfMap.openPinned(join(this.mapsDir, MapName.IPCACHE), ipcacheKey, remoteEndpointInfo);
    } catch (error) {
      for (const map of opened) map.close();
      this.#programs.close();
      throw error;
    }
  }

  /**
   * Removes the pins (and directories) of every endpoint id not in `keep`: what an agent killed in
   * the middle of an add or delete left. Only for a start, before any endpoint is being added.
   * Returns the ids removed.
   */
  sweep(keep: ReadonlySet<number>): number[] {
    const removed: number[] = [];
    for (const name of readdirSync(join(this.bpfRoot, 'endpoints'))) {
      const id = Number(name);
      if (!/^\d+$/.test(name) || keep.has(id)) continue;
      this.#removePins(id);
      removed.push(id);
    }
    return removed;
  }

  #endpointDir(id: number): string {
    return join(this.bpfRoot, 'endpoints', String(id));
  }

  /**
   * Attaches the node's programs to the endpoint's host-side veth (both directions at once, off
   * the event loop) and pins the links; links already pinned for it that serve the interface are
   * kept. Until realize() writes the endpoint's map entries the programs find no endpoint on the
   * interface and let nothing through, so an endpoint manager calls this as soon as the interface
   * exists: the attaches' RCU waits then overlap everything else an add does, its policy too.
   */
  attach(endpoint: Pick<DatapathEndpoint, 'id' | 'hostIfindex'>): Promise<void> {
    const inFlight = this.#attaching.get(endpoint.id);
    if (inFlight?.ifindex === endpoint.hostIfindex) return inFlight.done;
    const done = (inFlight?.done.catch(() => undefined) ?? Promise.resolve()).then(() => this.#attach(endpoint));
    const entry = { ifindex: endpoint.hostIfindex, done };
    this.#attaching.set(endpoint.id, entry);
    const forget = () => {
      if (this.#attaching.get(endpoint.id) === entry) this.#attaching.delete(endpoint.id);
    };
    done.then(forget, forget);
    return done;
  }

  async #attach(endpoint: Pick<DatapathEndpoint, 'id' | 'hostIfindex'>): Promise<void> {
    if (this.attachMode === 'tc-block') {
      const added = await this.#bind(endpoint.hostIfindex);
      this.#bound.set(endpoint.id, endpoint.hostIfindex);
      // Found bound already (a previous agent's): realize() reports it adopted.
      if (added) this.#known.add(endpoint.id);
      // TCX links a tcx-mode agent pinned for the id: the blocks serve the interface now.
      await this.#unpinAll(this.#endpointDir(endpoint.id));
      if (added) this.#log.debug({ endpoint: endpoint.id, ifindex: endpoint.hostIfindex }, 'attached datapath (tc blocks)');
      return;
    }
    const missing = await this.#attachTo(this.#endpointDir(endpoint.id), endpoint.hostIfindex);
    if (missing.length > 0) {
      this.#known.add(endpoint.id);
      this.#log.debug({ endpoint: endpoint.id, ifindex: endpoint.hostIfindex, links: missing }, 'attached datapath');
    }
  }

  /** Attaches (both at once) and pins under `dir` the links not already pinned there for `ifindex`; returns their pin names. */
  async #attachTo(dir: string, ifindex: number): Promise<string[]> {
    mkdirSync(dir, { recursive: true });
    // A clsact a tc-block agent bound goes once the links run: one mode on an interface.
    const unbind = async () => {
      const clsact = (await this.#nl().clsacts()).find((c) => c.ifindex === ifindex);
      if (clsact && this.#ours(clsact)) await this.#nl().deleteClsact(ifindex);
    };
    const missing = ATTACHMENTS.filter(({ pin }) => !linkServesInterface(join(dir, pin), ifindex));
    await settled(
      missing.map(async ({ program, direction, pin }) => {
        unpinLink(join(dir, pin));
        using link = await attachTcxAsync(this.#programs.program(program), { interface: ifindex, direction, netns: this.#netns });
        link.pin(join(dir, pin));
      }),
    );
    if (missing.length > 0) await unbind();
    return missing.map((a) => a.pin);
  }

  // ---- tc-block ----

  #nl(): Netlink {
    this.#netlink ??= Netlink.open({ netns: this.#netns });
    return this.#netlink;
  }

  #ours(clsact: Clsact): boolean {
    return clsact.ingressBlock === this.#blocks.ingress && clsact.egressBlock === this.#blocks.egress;
  }

  /**
   * Binds the interface's clsact hooks to the node's blocks (installing the blocks first, once);
   * a clsact bound elsewhere is replaced. Returns whether a qdisc was added.
   */
  async #bind(ifindex: number): Promise<boolean> {
    await this.#ensureBlocks();
    const nl = this.#nl();
    try {
      await nl.addClsact(ifindex, { ingressBlock: this.#blocks.ingress, egressBlock: this.#blocks.egress });
      return true;
    } catch (error) {
      if (!NetlinkError.is(error, 'EEXIST')) throw error;
    }
    const existing = (await nl.clsacts()).find((c) => c.ifindex === ifindex);
    if (existing && this.#ours(existing)) return false;
    // Someone else's clsact (its own filters, other blocks): ours replaces it.
    await nl.deleteClsact(ifindex);
    await nl.addClsact(ifindex, { ingressBlock: this.#blocks.ingress, egressBlock: this.#blocks.egress });
    return true;
  }

  /** Installs the blocks once; `again` checks (and repairs) them anew, after any install in flight. */
  #ensureBlocks(again = false): Promise<void> {
    if (!this.#blocksReady || again) {
      const ready = (this.#blocksReady ?? Promise.resolve()).catch(() => undefined).then(() => this.#installBlocks());
      this.#blocksReady = ready;
      ready.catch(() => {
        if (this.#blocksReady === ready) this.#blocksReady = undefined;
      });
    }
    return this.#blocksReady;
  }

  /**
   * The anchor holding the blocks, and on each block the filter running this load's program: a
   * filter running another build's program (a previous agent's) is swapped in place, which every
   * bound interface runs from its next packet on (as BPF_LINK_UPDATE for tcx).
   */
  async #installBlocks(): Promise<void> {
    const nl = this.#nl();
    let anchor = await nl.link(BLOCK_ANCHOR);
    if (!anchor) {
      try {
        anchor = await nl.createVeth({ name: BLOCK_ANCHOR, peerName: BLOCK_ANCHOR_PEER });
      } catch (error) {
        if (!NetlinkError.is(error, 'EEXIST')) throw error;
        anchor = await nl.link(BLOCK_ANCHOR);
        if (!anchor) throw error;
      }
    }
    const clsact = (await nl.clsacts()).find((c) => c.ifindex === anchor.ifindex);
    if (!clsact || !this.#ours(clsact)) {
      if (clsact) await nl.deleteClsact(anchor.ifindex);
      await nl.addClsact(anchor.ifindex, { ingressBlock: this.#blocks.ingress, egressBlock: this.#blocks.egress });
    }
    const swapped: string[] = [];
    for (const { program, direction } of ATTACHMENTS) {
      const block = this.#blocks[direction];
      const ours = this.#programs.program(program);
      const filters = await nl.bpfFilters(block);
      const current = filters.find((f) => f.priority === FILTER.priority && f.handle === FILTER.handle);
      // Nothing but our one filter runs on the blocks.
      for (const other of filters) if (other !== current) await nl.deleteBpfFilter(other);
      if (current?.tag === this.#tag(ours) && current.name === program && current.directAction) continue;
      await nl.replaceBpfFilter({ block, ...FILTER, programFd: ours.fd, name: program });
      if (current) swapped.push(program);
    }
    if (swapped.length > 0) this.#log.info({ programs: swapped }, "swapped an older build's programs on the tc blocks for this agent's");
  }

  /** Unpins (so detaches) the TCX links pinned under `dir`, if any. */
  async #unpinAll(dir: string): Promise<void> {
    await settled(ATTACHMENTS.map(({ pin }) => unpinLinkAsync(join(dir, pin))));
  }

  #poolDir(name: string): string {
    return join(this.bpfRoot, POOL_DIR, name);
  }

  /**
   * Attaches the node's programs to the host end of a pool link (an interface no endpoint has
   * yet) and pins the links under <bpfRoot>/pool/<name>/: the slow part of an add, done ahead of
   * it. With no ciliate_lxc entry for the interface the programs let nothing through.
   */
  async attachPooled(name: string, ifindex: number): Promise<void> {
    if (this.attachMode === 'tc-block') {
      await this.#bind(ifindex);
      this.#poolBound.set(name, ifindex);
      await this.#removePooledPins(name);
      return;
    }
    const attached = await this.#attachTo(this.#poolDir(name), ifindex);
    if (attached.length > 0) this.#log.debug({ pool: name, ifindex, links: attached }, 'attached datapath to a pool link');
  }

  /** Whether both of a pool link's pinned links serve the interface `ifindex`. */
  servesPooled(name: string, ifindex: number): boolean {
    if (this.attachMode === 'tc-block') return this.#poolBound.get(name) === ifindex;
    const dir = this.#poolDir(name);
    return ATTACHMENTS.every(({ pin }) => linkServesInterface(join(dir, pin), ifindex));
  }

  /**
   * Hands a pool link's attached programs to an endpoint: one rename(2) of the pin directory to
   * the endpoint's (bpffs renames directories), so at every moment the links are pinned in
   * exactly one place a start's sweep knows. realize() then finds them serving and attaches
   * nothing.
   */
  adoptPooled(name: string, endpoint: Pick<DatapathEndpoint, 'id' | 'hostIfindex'>): void {
    if (!this.servesPooled(name, endpoint.hostIfindex)) {
      throw new BpfError('ERR_NOT_FOUND', `datapath: pool link ${name} has no links pinned for interface ${endpoint.hostIfindex}`);
    }
    const dir = this.#endpointDir(endpoint.id);
    // The id is this add's: anything still under it is what a failed add of the id left.
    rmSync(dir, { recursive: true, force: true });
    if (this.attachMode === 'tc-block') {
      this.#poolBound.delete(name);
      this.#bound.set(endpoint.id, endpoint.hostIfindex);
    } else renameSync(this.#poolDir(name), dir);
    this.#known.add(endpoint.id);
    this.#log.debug({ endpoint: endpoint.id, pool: name, ifindex: endpoint.hostIfindex }, 'took over the datapath of a pool link');
  }

  /** The names of the pool links with pins. */
  pooled(): string[] {
    return [...new Set([...readdirSync(join(this.bpfRoot, POOL_DIR)), ...this.#poolBound.keys()])];
  }

  /** Unpins a pool link's links and removes its directory; cheap once its interface is gone. */
  async removePooled(name: string): Promise<void> {
    // tc-block: the clsact goes with the interface, which the pool deletes.
    this.#poolBound.delete(name);
    await this.#removePooledPins(name);
  }

  async #removePooledPins(name: string): Promise<void> {
    const dir = this.#poolDir(name);
    await this.#unpinAll(dir);
    rmSync(dir, { recursive: true, force: true });
  }

  /**
   * Drops what attach() did for an endpoint that will not be realized after all (and what
   * realize() attached, for remove()). Both links are detached at once off the event loop: each
   * detach waits out an RCU grace period.
   */
  async detach(endpointId: number): Promise<void> {
    await this.#attaching.get(endpointId)?.done.catch(() => undefined);
    this.#known.delete(endpointId);
    const ifindex = this.#bound.get(endpointId);
    this.#bound.delete(endpointId);
    // No grace period to wait for: the hooks are unbound at once.
    if (ifindex !== undefined) await this.#nl().deleteClsact(ifindex).catch((error: unknown) => {
      if (!NetlinkError.is(error, 'ENODEV')) throw error;
    });
    const dir = this.#endpointDir(endpointId);
    await this.#unpinAll(dir);
    rmSync(dir, { recursive: true, force: true });
  }

  /** detach() for a start (sweep), when nothing else runs yet. */
  #removePins(id: number): void {
    this.#known.delete(id);
    this.#bound.delete(id);
    const dir = this.#endpointDir(id);
    for (const { pin } of ATTACHMENTS) unpinLink(join(dir, pin));
    rmSync(dir, { recursive: true, force: true });
  }

  /**
   * Serves the endpoint: attaches (or adopts) its links, then writes its ciliate_lxc entry, which
   * is what makes the programs pass its packets; a new identity is only a new entry, the pod's
   * interface keeps its programs throughout.
   */
  async realize(endpoint: DatapathEndpoint): Promise<void> {
    await this.attach(endpoint);
    const info: EndpointInfo = {
      ifindex: endpoint.hostIfindex,
      lxc_id: endpoint.id,
      flags: 0,
      mac: endpoint.mac,
      node_mac: endpoint.hostMac,
      sec_identity: endpoint.identity,
    };
    const adopted = !this.#known.has(endpoint.id);
    if (adopted && this.attachMode === 'tcx') this.#adopt(endpoint);
    this.#known.add(endpoint.id);
    const existing = this.lxc.lookup({ ip: endpoint.ipv4 });
    const changed = !existing || JSON.stringify(existing) !== JSON.stringify(info);
    if (changed) this.lxc.update({ ip: endpoint.ipv4 }, info);
    if (this.lxcIfindex.lookup(endpoint.hostIfindex)?.ip !== endpoint.ipv4) this.lxcIfindex.update(endpoint.hostIfindex, { ip: endpoint.ipv4 });
    const action = adopted ? 'adopted' : !changed ? undefined : existing ? 'updated' : 'serving';
    if (action) this.#log.debug({ endpoint: endpoint.id, identity: endpoint.identity }, `${action} datapath`);
  }

  /**
   * Links a previous agent pinned, found serving the interface, stay; but they run that agent's
   * programs, which an older build may have compiled differently (before this one, with the
   * endpoint's identity as a constant, which a new identity would not reach). A program whose tag
   * (the hash of its instructions) is not this load's is swapped in place for this load's
   * (BPF_LINK_UPDATE: the interface is never without a program); a restart of the same build
   * swaps nothing.
   */
  #adopt(endpoint: Pick<DatapathEndpoint, 'id'>): void {
    const dir = this.#endpointDir(endpoint.id);
    const swapped: string[] = [];
    for (const { program, pin } of ATTACHMENTS) {
      const ours = this.#programs.program(program);
      using link = Link.openPinned(join(dir, pin));
      using running = Program.fromId(link.info().programId);
      if (running.info().tag === this.#tag(ours)) continue;
      link.update(ours);
      swapped.push(pin);
    }
    if (swapped.length > 0) this.#log.info({ endpoint: endpoint.id, links: swapped }, "swapped an older build's programs for this agent's");
  }

  #tag(program: Program): string {
    let tag = this.#tags.get(program.name);
    if (tag === undefined) this.#tags.set(program.name, (tag = program.info().tag));
    return tag;
  }

  /**
   * What the kernel holds for each endpoint it serves, by pod address: its ciliate_lxc entry and
   * whether its pinned links serve that entry's interface.
   */
  async observe(): Promise<[ipv4: string, ObservedEndpoint][]> {
    let bound: Set<number> | undefined;
    if (this.attachMode === 'tc-block') {
      // A refresh checks the blocks' filters again (a swap behind our back is repaired here).
      await this.#ensureBlocks(true);
      bound = new Set((await this.#nl().clsacts()).filter((c) => this.#ours(c)).map((c) => c.ifindex));
    }
    return [...this.lxc.entries()].map(([key, info]) => {
      const dir = this.#endpointDir(info.lxc_id);
      return [
        key.ip,
        {
          ipv4: key.ip,
          info,
          linksServe: bound ? bound.has(info.ifindex) : ATTACHMENTS.every(({ pin }) => linkServesInterface(join(dir, pin), info.ifindex)),
          indexed: this.lxcIfindex.lookup(info.ifindex)?.ip === key.ip,
        },
      ];
    });
  }

  /** Whether what observe() saw is what realize(endpoint) makes. */
  serves(endpoint: DatapathEndpoint, observed: ObservedEndpoint): boolean {
    const info = observed.info;
    return (
      observed.linksServe &&
      observed.indexed &&
      info.ifindex === endpoint.hostIfindex &&
      info.lxc_id === endpoint.id &&
      info.mac === endpoint.mac &&
      info.node_mac === endpoint.hostMac &&
      info.sec_identity === endpoint.identity
    );
  }

  /**
   * Deletes the ciliate_lxc entry of an address no endpoint has (and its index entry). The links
   * and pins under the id are left alone: the id may belong to a live endpoint by now, and
   * remove() takes them.
   */
  prune(observed: ObservedEndpoint): void {
    this.lxc.delete({ ip: observed.ipv4 });
    this.#unindex(observed.info.ifindex, observed.ipv4);
  }

  async remove(endpoint: DatapathEndpoint): Promise<void> {
    // The links go first: without them nothing looks the entry up any more.
    await this.detach(endpoint.id);
    const current = this.lxc.lookup({ ip: endpoint.ipv4 });
    if (current?.lxc_id === endpoint.id) this.lxc.delete({ ip: endpoint.ipv4 });
    this.#unindex(endpoint.hostIfindex, endpoint.ipv4);
  }

  /** Deletes the index entry of `ifindex` if it still names `ipv4` (not a new endpoint's). */
  #unindex(ifindex: number, ipv4: string): void {
    if (this.lxcIfindex.lookup(ifindex)?.ip === ipv4) this.lxcIfindex.delete(ifindex);
  }

  close(): void {
    this.#netlink?.close();
    this.#programs.close();
    this.lxc.close();
    this.lxcIfindex.close();
    this.ipcache.close();
  }
}

/**
 * Waits for every one, then throws the first failure: one failed attach or detach must not leave
 * the other still running while a retry or a remove starts.
 */
async function settled(work: readonly Promise<unknown>[]): Promise<void> {
  const failed = (await Promise.allSettled(work)).find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failed) throw failed.reason;
}

/**
 * Pins only survive on a bpf filesystem. `ip netns exec` remounts /sys without it, which would
 * otherwise surface much later as an obscure pinning error.
 */
function assertOnBpffs(path: string): void {
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((line) => line.split(' '))
    .filter((fields) => fields.length > 9)
    .map((fields) => ({ mountPoint: fields[4], type: fields[fields.indexOf('-') + 1] }));
  const resolved = resolve(path);
  const covering = mounts
    .filter((m) => resolved === m.mountPoint || resolved.startsWith(m.mountPoint.endsWith('/') ? m.mountPoint : `${m.mountPoint}/`))
    .sort((a, b) => b.mountPoint.length - a.mountPoint.length)[0];
  if (covering?.type !== 'bpf') {
    throw new BpfError(
      'ERR_INVALID_ARGUMENT',
      `datapath: bpf root ${path} is on ${covering?.type ?? 'no'} filesystem, not bpffs: mount it (mount -t bpf bpf /sys/fs/bpf); note that \`ip netns exec\` hides it by remounting /sys — use nsenter --net instead`,
    );
  }
}
