/**
 * Realizes endpoints in the kernel: one copy of bpf_lxc per endpoint attached through TCX to its
 * host-side veth, links pinned under <bpfRoot>/endpoints/<id>/, and the endpoint's entry in the
 * shared ciliate_lxc map. Pinned links keep pods connected while no agent runs; a restarted agent
 * adopts a pinned link that still serves the right interface instead of reloading it.
 * @module
 */
import { existsSync, mkdirSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Logger } from 'pino';
import { attachTcx, BpfError, BpfMap, Link, unpinLink, type BpfObject, type TcxDirection } from '../ebpf/index.ts';
import { LxcProgram, loadLxc } from './lxc.ts';
import { linkServesInterface } from './pins.ts';
import { endpointInfo, endpointKey, ipcacheKey, MapName, SHARED_MAPS, remoteEndpointInfo, type EndpointInfo, type RemoteEndpointInfo } from './maps.ts';

/** What the datapath needs to know of an endpoint. */
export interface DatapathEndpoint {
  /** Node-local endpoint id (1–4095), the program's ENDPOINT_ID. */
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
}

const ATTACHMENTS: readonly { program: string; direction: TcxDirection; pin: string }[] = [
  { program: LxcProgram.FROM_CONTAINER, direction: 'ingress', pin: 'from-container' },
  { program: LxcProgram.TO_CONTAINER, direction: 'egress', pin: 'to-container' },
];

export class EndpointDatapath {
  readonly bpfRoot: string;
  readonly mapsDir: string;
  readonly #log: Logger;
  /** Identity each endpoint's programs were loaded with by this process. */
  readonly #loadedIdentity = new Map<number, number>();
  /** Objects loaded by prepare() and not yet attached by realize(), by endpoint id. */
  readonly #prepared = new Map<number, { identity: number; obj: BpfObject }>();
  readonly lxc: BpfMap<{ ip: string }, EndpointInfo>;
  readonly ipcache: BpfMap<{ prefixlen: number; ip: string }, RemoteEndpointInfo>;

  /** Opens (creating on first run) the node's shared maps under `bpfRoot`/maps. */
  constructor(bpfRoot: string, log: Logger) {
    this.bpfRoot = bpfRoot;
    this.mapsDir = join(bpfRoot, 'maps');
    this.#log = log;
    assertOnBpffs(bpfRoot);
    mkdirSync(this.mapsDir, { recursive: true });
    mkdirSync(join(bpfRoot, 'endpoints'), { recursive: true });
    if (SHARED_MAPS.some((name) => !existsSync(join(this.mapsDir, name)))) {
      // Loading once with pins creates every shared map with the object's own definitions (and
      // those a newer build added next to an older agent's pins).
      loadLxc({ endpointId: 0, identity: 0, pinDir: this.mapsDir }).close();
    }
    this.lxc = BpfMap.openPinned(join(this.mapsDir, MapName.LXC), endpointKey, endpointInfo);
    this.ipcache = BpfMap.openPinned(join(this.mapsDir, MapName.IPCACHE), ipcacheKey, remoteEndpointInfo);
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
      this.unprepare(id);
      this.#loadedIdentity.delete(id);
      for (const { pin } of ATTACHMENTS) unpinLink(join(this.#endpointDir(id), pin));
      rmSync(this.#endpointDir(id), { recursive: true, force: true });
      removed.push(id);
    }
    return removed;
  }

  #endpointDir(id: number): string {
    return join(this.bpfRoot, 'endpoints', String(id));
  }

  /**
   * Loads the endpoint's programs ahead of realize(), which then only attaches them. Loading is
   * most of an endpoint's datapath cost (the verifier runs per copy); an endpoint manager calls
   * this while its interface is still being created by other processes, so the two overlap.
   */
  prepare(endpoint: Pick<DatapathEndpoint, 'id' | 'identity' | 'ipv4'>): void {
    const prepared = this.#prepared.get(endpoint.id);
    if (prepared?.identity === endpoint.identity) return;
    this.unprepare(endpoint.id);
    const obj = loadLxc({ endpointId: endpoint.id, identity: endpoint.identity, ipv4: endpoint.ipv4, pinDir: this.mapsDir });
    this.#prepared.set(endpoint.id, { identity: endpoint.identity, obj });
  }

  /** Drops what prepare() loaded for an endpoint that will not be realized after all. */
  unprepare(endpointId: number): void {
    this.#prepared.get(endpointId)?.obj.close();
    this.#prepared.delete(endpointId);
  }

  #takeLoaded(endpoint: DatapathEndpoint): BpfObject {
    const prepared = this.#prepared.get(endpoint.id);
    this.#prepared.delete(endpoint.id);
    if (prepared?.identity === endpoint.identity) return prepared.obj;
    prepared?.obj.close();
    return loadLxc({ endpointId: endpoint.id, identity: endpoint.identity, ipv4: endpoint.ipv4, pinDir: this.mapsDir });
  }

  realize(endpoint: DatapathEndpoint): void {
    const dir = this.#endpointDir(endpoint.id);
    mkdirSync(dir, { recursive: true });
    const attached = ATTACHMENTS.every(({ pin }) => linkServesInterface(join(dir, pin), endpoint.hostIfindex));
    // The identity is a .rodata constant of the program: a new identity needs a new program. An
    // agent that has not loaded the endpoint itself (a restart) trusts what is pinned.
    const loadedWith = this.#loadedIdentity.get(endpoint.id);
    const current = attached && (loadedWith === undefined || loadedWith === endpoint.identity);
    let action: 'adopted' | 'replaced' | 'attached' = 'adopted';
    if (!current) {
      const obj = this.#takeLoaded(endpoint);
      try {
        for (const { program, direction, pin } of ATTACHMENTS) {
          if (attached) {
            // Swap in place: the pod never meets its interface without a program.
            using link = Link.openPinned(join(dir, pin));
            link.update(obj.program(program));
            action = 'replaced';
          } else {
            unpinLink(join(dir, pin));
            using link = attachTcx(obj.program(program), { interface: endpoint.hostIfindex, direction });
            link.pin(join(dir, pin));
            action = 'attached';
          }
        }
      } finally {
        obj.close();
      }
    } else {
      this.unprepare(endpoint.id);
    }
    this.#loadedIdentity.set(endpoint.id, endpoint.identity);
    const info: EndpointInfo = {
      ifindex: endpoint.hostIfindex,
      lxc_id: endpoint.id,
      flags: 0,
      mac: endpoint.mac,
      node_mac: endpoint.hostMac,
      sec_identity: endpoint.identity,
    };
    const existing = this.lxc.lookup({ ip: endpoint.ipv4 });
    if (!existing || JSON.stringify(existing) !== JSON.stringify(info)) this.lxc.update({ ip: endpoint.ipv4 }, info);
    this.#log.debug({ endpoint: endpoint.id, identity: endpoint.identity, action }, `${action} datapath`);
  }

  /**
   * What the kernel holds for each endpoint it serves, by pod address: its ciliate_lxc entry and
   * whether its pinned links serve that entry's interface.
   */
  observe(): [ipv4: string, ObservedEndpoint][] {
    return [...this.lxc.entries()].map(([key, info]) => {
      const dir = this.#endpointDir(info.lxc_id);
      return [key.ip, { ipv4: key.ip, info, linksServe: ATTACHMENTS.every(({ pin }) => linkServesInterface(join(dir, pin), info.ifindex)) }];
    });
  }

  /** Whether what observe() saw is what realize(endpoint) makes. */
  serves(endpoint: DatapathEndpoint, observed: ObservedEndpoint): boolean {
    const info = observed.info;
    return (
      observed.linksServe &&
      info.ifindex === endpoint.hostIfindex &&
      info.lxc_id === endpoint.id &&
      info.mac === endpoint.mac &&
      info.node_mac === endpoint.hostMac &&
      info.sec_identity === endpoint.identity
    );
  }

  /**
   * Deletes the ciliate_lxc entry of an address no endpoint has. The links and pins under the id
   * are left alone: the id may belong to a live endpoint by now, and remove() takes them.
   */
  prune(observed: ObservedEndpoint): void {
    this.lxc.delete({ ip: observed.ipv4 });
  }

  remove(endpoint: DatapathEndpoint): void {
    this.unprepare(endpoint.id);
    this.#loadedIdentity.delete(endpoint.id);
    const dir = this.#endpointDir(endpoint.id);
    for (const { pin } of ATTACHMENTS) unpinLink(join(dir, pin));
    rmSync(dir, { recursive: true, force: true });
    const current = this.lxc.lookup({ ip: endpoint.ipv4 });
    if (current?.lxc_id === endpoint.id) this.lxc.delete({ ip: endpoint.ipv4 });
  }

  close(): void {
    for (const id of [...this.#prepared.keys()]) this.unprepare(id);
    this.lxc.close();
    this.ipcache.close();
  }
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
