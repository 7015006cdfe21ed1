/**
 * Realizes endpoints in the kernel: the node's one load of bpf_lxc attached through TCX to each
 * endpoint's host-side veth, links pinned under <bpfRoot>/endpoints/<id>/, and the endpoint's
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
  /** Both pinned links of the endpoint's id serve info.ifindex. */
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
}

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

  /**
   * Loads the node's programs (bpf_lxc.o, once: the verifier's work is the same for one endpoint
   * as for all) and opens the node's shared maps under `bpfRoot`/maps, creating those missing.
   */
  constructor(bpfRoot: string, log: Logger, options: EndpointDatapathOptions = {}) {
    this.bpfRoot = bpfRoot;
    this.mapsDir = join(bpfRoot, 'maps');
    this.#log = log;
    this.#netns = options.netns;
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
    const missing = await this.#attachTo(this.#endpointDir(endpoint.id), endpoint.hostIfindex);
    if (missing.length > 0) {
      this.#known.add(endpoint.id);
      this.#log.debug({ endpoint: endpoint.id, ifindex: endpoint.hostIfindex, links: missing }, 'attached datapath');
    }
  }

  /** Attaches (both at once) and pins under `dir` the links not already pinned there for `ifindex`; returns their pin names. */
  async #attachTo(dir: string, ifindex: number): Promise<string[]> {
    mkdirSync(dir, { recursive: true });
    const missing = ATTACHMENTS.filter(({ pin }) => !linkServesInterface(join(dir, pin), ifindex));
    await settled(
      missing.map(async ({ program, direction, pin }) => {
        unpinLink(join(dir, pin));
        using link = await attachTcxAsync(this.#programs.program(program), { interface: ifindex, direction, netns: this.#netns });
        link.pin(join(dir, pin));
      }),
    );
    return missing.map((a) => a.pin);
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
    const attached = await this.#attachTo(this.#poolDir(name), ifindex);
    if (attached.length > 0) this.#log.debug({ pool: name, ifindex, links: attached }, 'attached datapath to a pool link');
  }

  /** Whether both of a pool link's pinned links serve the interface `ifindex`. */
  servesPooled(name: string, ifindex: number): boolean {
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
    renameSync(this.#poolDir(name), dir);
    this.#known.add(endpoint.id);
    this.#log.debug({ endpoint: endpoint.id, pool: name, ifindex: endpoint.hostIfindex }, 'took over the datapath of a pool link');
  }

  /** The names of the pool links with pins. */
  pooled(): string[] {
    return readdirSync(join(this.bpfRoot, POOL_DIR));
  }

  /** Unpins a pool link's links and removes its directory; cheap once its interface is gone. */
  async removePooled(name: string): Promise<void> {
    const dir = this.#poolDir(name);
    await settled(ATTACHMENTS.map(({ pin }) => unpinLinkAsync(join(dir, pin))));
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
    const dir = this.#endpointDir(endpointId);
    await settled(ATTACHMENTS.map(({ pin }) => unpinLinkAsync(join(dir, pin))));
    rmSync(dir, { recursive: true, force: true });
  }

  /** detach() for a start (sweep), when nothing else runs yet. */
  #removePins(id: number): void {
    this.#known.delete(id);
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
    if (adopted) this.#adopt(endpoint);
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
  observe(): [ipv4: string, ObservedEndpoint][] {
    return [...this.lxc.entries()].map(([key, info]) => {
      const dir = this.#endpointDir(info.lxc_id);
      return [
        key.ip,
        {
          ipv4: key.ip,
          info,
          linksServe: ATTACHMENTS.every(({ pin }) => linkServesInterface(join(dir, pin), info.ifindex)),
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
