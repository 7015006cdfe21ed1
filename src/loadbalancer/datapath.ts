/**
 * The frontends table into the kernel's load-balancing maps (bpf/lib/lb.h), one frontend at a
 * time and only what changed: a backend added to a service writes its backend entry (when new
 * to the node), its slot and the service's slot 0; a backend removed moves the last slot into
 * its place. Slot order is kept across changes, so a change touches O(backends changed) entries,
 * not O(backends).
 *
 * Backend ids and service (reverse NAT) ids are node-local. A restarted agent adopts what the
 * maps hold (ids, slot order) and goes on from there; a refresh compares the maps with the table,
 * rewrites frontends that drifted and deletes the ones nobody wants.
 * @module
 */
import type { Logger } from 'pino';
import { existsSync, mkdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { attachCgroup, BpfError, BpfMap, Link, unpinLink, type BpfObject } from '../ebpf/index.ts';
import { Reconciler, type ReconcilerHealth, type Table } from '../statedb/index.ts';
import { maglevTable } from './maglev.ts';
import { backendName, frontendKey, PROTOCOL_NUMBER, type Backend, type Frontend, type FrontendKind, type ServiceProtocol } from './service.ts';
import { BackendFlag, createMaglevInner, LB_MAGLEV_LUT_SIZE, lbMaps, maglevInnerFits, LbSelection, loadSock, ServiceFlag, SockProgram, type Lb4Key, type Lb4Service, type LbMaps, type SockEndpoint } from './maps.ts';

/** What the maps hold for one frontend. */
interface Written {
  revNat: number;
  /** Backend ids by slot (slot i+1 holds slots[i]). */
  slots: number[];
  flags: number;
  algorithm: number;
  /** ClientIP affinity timeout in seconds; 0: none. */
  affinity: number;
  /** Terminating backends' ids: held (their entries stay) but in no slot. */
  terminating: number[];
}

/** A backend entry and the frontends that hold it, each saying whether the backend is terminating for it. */
interface BackendUse {
  id: number;
  users: Map<string, boolean>;
  /** lb4_backend.flags as written. */
  flags: number;
}

const PROTOCOL_NAME = new Map<number, ServiceProtocol>(Object.entries(PROTOCOL_NUMBER).map(([name, n]) => [n, name as ServiceProtocol]));

const KIND_FLAGS: Readonly<Record<FrontendKind, number>> = { ClusterIP: 0, ExternalIP: ServiceFlag.EXTERNAL_IP, LoadBalancer: ServiceFlag.LOADBALANCER, NodePort: ServiceFlag.NODEPORT };

/** Slot 0's flags of a frontend, but affinity (which the timeout decides). */
function frontendFlags(frontend: Frontend): number {
  return KIND_FLAGS[frontend.kind] | (frontend.externalLocal ? ServiceFlag.EXT_LOCAL : 0);
}

/** The largest backend and service id (the maps hold 65536 entries). */
const MAX_ID = 0xffff;

export interface LbDatapathOptions {
  bpfRoot: string;
  frontends: Table<Frontend>;
  algorithm: 'random' | 'maglev';
  /** The Maglev permutations' murmur seed (maglevSeed of the configured hash seed). */
  maglevSeed: number;
  /** Slots of each Maglev table, one of MAGLEV_TABLE_SIZES; LB_MAGLEV_LUT_SIZE by default. */
  maglevTableSize?: number;
  log: Logger;
  refreshIntervalMs?: number;
  /** The local endpoints by network namespace, for the socket hooks' events (ciliate_sock_endpoints). */
  sockEndpoints?: Table<SockEndpointEntry>;
}

/** A local endpoint under its network namespace's cookie: who a socket-level event comes from. */
export interface SockEndpointEntry {
  /** bpf_get_netns_cookie() of the endpoint's namespace, in decimal. */
  netnsCookie: string;
  endpointId: number;
  identity: number;
  ipv4: string;
}

/** One frontend as `ciliate bpf lb list` shows it: what the kernel holds. */
export interface LbEntry {
  frontend: string;
  revNat: number;
  algorithm: 'random' | 'maglev' | 'unknown';
  flags: number;
  /** ClientIP session affinity timeout in seconds, when the service has it. */
  affinityTimeout?: number;
  backends: { slot: number; id: number; address?: string; flags?: number }[];
  /** Terminating backends: entries kept for established connections, in no slot. */
  terminating?: { id: number; address?: string; flags?: number }[];
}

export class LbDatapath {
  readonly #obj: BpfObject;
  readonly #maps: LbMaps;
  readonly #algorithm: number;
  readonly #seed: number;
  readonly #tableSize: number;
  /**
   * Services (by rev_nat id) whose Maglev table in the maps is missing or of another size than
   * configured (a restart with another size or algorithm): rewritten whatever else changed.
   */
  readonly #staleMaglev = new Set<number>();
  readonly #bpfRoot: string;
  readonly #log: Logger;
  readonly #reconciler: Reconciler<Frontend, Written>;
  readonly #sockReconciler: Reconciler<SockEndpointEntry, SockEndpoint> | undefined;
  readonly #written = new Map<string, Written>();
  /**
   * Backends by name (`ip:port/PROTO`) with their id and the frontends that list them (a map, so
   * a retried write counts a frontend once); and names by id.
   */
  readonly #backends = new Map<string, BackendUse>();
  /** Backends a restarted agent found in the map but in no slot (terminating ones): dropped by releaseOrphans unless some frontend takes them. */
  readonly #orphans = new Set<string>();
  readonly #backendNames = new Map<number, string>();
  readonly #backendIds = new IdPool('backend');
  readonly #revNats = new IdPool('service');
  readonly #links: Link[] = [];

  constructor(options: LbDatapathOptions) {
    const pinDir = join(options.bpfRoot, 'maps');
    mkdirSync(pinDir, { recursive: true });
    this.#bpfRoot = options.bpfRoot;
    this.#obj = loadSock({ pinDir });
    this.#maps = lbMaps(this.#obj);
    this.#algorithm = options.algorithm === 'maglev' ? LbSelection.MAGLEV : LbSelection.RANDOM;
    this.#seed = options.maglevSeed;
    this.#tableSize = options.maglevTableSize ?? LB_MAGLEV_LUT_SIZE;
    this.#log = options.log;
    this.#adopt();
    this.#reconciler = new Reconciler<Frontend, Written>({
      name: 'lb-maps',
      table: options.frontends,
      refreshIntervalMs: options.refreshIntervalMs,
      ops: {
        update: (frontend) => this.#write(frontend),
        delete: (_frontend, key) => this.#remove(key),
        list: () => this.#read(true),
        equal: (frontend, actual) => this.#equal(frontend, actual),
        repair: (frontend, _actual, key) => {
          // Forget what we thought the maps held: rewrite every entry of the frontend.
          const written = this.#written.get(key);
          if (written) this.#written.set(key, { ...written, slots: [], flags: -1, affinity: 0, terminating: [] });
          this.#write(frontend, true);
        },
        prune: (key) => this.#remove(key),
      },
      onError: (key, error, attempts) => this.#log.warn({ frontend: key, attempts, err: error }, 'writing a service frontend into the LB maps failed; will retry'),
      onRefresh: (kind, key) => this.#log.info({ frontend: key, kind }, kind === 'repair' ? 'LB entry drifted; rewritten' : 'LB entry nobody wants; deleted'),
    });
    const sock = this.#maps.sockEndpoints;
    const value = (e: SockEndpointEntry): SockEndpoint => ({ ipv4: e.ipv4, identity: e.identity, endpoint_id: e.endpointId });
    this.#sockReconciler = options.sockEndpoints
      ? new Reconciler<SockEndpointEntry, SockEndpoint>({
          name: 'sock-endpoints',
          table: options.sockEndpoints,
          refreshIntervalMs: options.refreshIntervalMs,
          // The table fills as the endpoints are followed: a restarted agent prunes only at the first refresh.
          refreshOnStart: false,
          ops: {
            update: (e) => sock.update(BigInt(e.netnsCookie), value(e)),
            delete: (_e, key) => {
              sock.delete(BigInt(key));
            },
            list: () => [...sock.entries()].map(([cookie, v]) => [String(cookie), v] as const),
            equal: (e, actual) => actual.ipv4 === e.ipv4 && actual.identity === e.identity && actual.endpoint_id === e.endpointId,
            repair: (e) => sock.update(BigInt(e.netnsCookie), value(e)),
            prune: (key) => {
              sock.delete(BigInt(key));
            },
          },
          onError: (key, error, attempts) => this.#log.warn({ netnsCookie: key, attempts, err: error }, 'writing a socket endpoint failed; will retry'),
        })
      : undefined;
  }

  start(): void {
    this.#reconciler.start();
    this.#sockReconciler?.start();
  }

  async stop(): Promise<void> {
    await this.#sockReconciler?.stop();
    await this.#reconciler.stop();
    for (const link of this.#links.splice(0)) link.close();
    this.#obj.close();
  }

  health(): ReconcilerHealth {
    return this.#reconciler.health();
  }

  /** The socket endpoints reconciler's health, when there is one. */
  sockEndpointsHealth(): ReconcilerHealth | undefined {
    return this.#sockReconciler?.health();
  }

  /** Resolves once every frontend so far is in the maps (and none keeps failing). */
  synced(): Promise<void> {
    return this.#reconciler.waitFor();
  }

  /** Resolves once every frontend so far was tried once; failures go on being retried (see health()). */
  attempted(): Promise<void> {
    return this.#reconciler.attempted();
  }

  /**
   * Attaches the socket hooks to `cgroup` (a cgroup v2 directory), through links pinned under
   * `<bpfRoot>/links/sock`, so translation goes on while the agent is down; a restarted agent
   * swaps its programs into the pinned links.
   */
  attach(cgroup: string): void {
    const dir = join(this.#bpfRoot, 'links', 'sock');
    mkdirSync(dir, { recursive: true });
    let cgroupId: bigint;
    try {
      cgroupId = statSync(cgroup, { bigint: true }).ino;
    } catch (error) {
      throw new BpfError('ERR_NOT_FOUND', `attaching the socket LB hooks to cgroup ${cgroup}: ${(error as Error).message}`, { cause: error });
    }
    for (const name of Object.values(SockProgram)) {
      const program = this.#obj.program(name);
      const pin = join(dir, name);
      if (existsSync(pin)) {
        const pinned = Link.openPinned(pin);
        // A cgroup v2's id is its directory's inode number: the same cgroup keeps its link.
        if (pinned.info().cgroupId === cgroupId) {
          pinned.update(program);
          this.#links.push(pinned);
          continue;
        }
        pinned.close();
        unpinLink(pin);
      }
      const link = attachCgroup(program, { cgroup });
      link.pin(pin);
      this.#links.push(link);
    }
  }

  /** Takes the socket hooks off wherever an earlier run attached them (socket LB turned off). */
  detach(): void {
    for (const name of Object.values(SockProgram)) unpinLink(join(this.#bpfRoot, 'links', 'sock', name));
  }

  /** What the kernel holds, frontend by frontend. */
  entries(): LbEntry[] {
    const out: LbEntry[] = [];
    for (const [key, written] of this.#read()) {
      const algorithm = written.algorithm === LbSelection.MAGLEV ? 'maglev' : written.algorithm === LbSelection.RANDOM ? 'random' : 'unknown';
      out.push({
        frontend: key,
        revNat: written.revNat,
        algorithm,
        flags: written.flags,
        ...(written.affinity ? { affinityTimeout: written.affinity } : {}),
        backends: written.slots.map((id, i) => {
          const backend = this.#maps.backends.lookup(id);
          return { slot: i + 1, id, ...(backend ? { address: `${backend.address}:${backend.port}`, flags: backend.flags } : {}) };
        }),
        ...(written.terminating.length > 0
          ? {
              terminating: written.terminating.map((id) => {
                const backend = this.#maps.backends.lookup(id);
                return { id, ...(backend ? { address: `${backend.address}:${backend.port}`, flags: backend.flags } : {}) };
              }),
            }
          : {}),
      });
    }
    return out.sort((a, b) => a.frontend.localeCompare(b.frontend));
  }

  /** Rebuilds the node-local ids and slot orders from the maps (a restarted agent's start). */
  #adopt(): void {
    for (const [key, written] of this.#read()) {
      this.#written.set(key, written);
      this.#revNats.take(written.revNat);
      for (const id of written.slots) {
        const backend = this.#maps.backends.lookup(id);
        if (!backend) continue;
        const name = backendName({ ip: backend.address, port: backend.port, protocol: PROTOCOL_NAME.get(backend.proto) ?? 'TCP' });
        const entry = this.#backends.get(name) ?? { id, users: new Map<string, boolean>(), flags: backend.flags };
        entry.users.set(key, false);
        this.#backends.set(name, entry);
        this.#backendNames.set(id, name);
        this.#backendIds.take(id);
      }
    }
    // Terminating backends are in no slot: kept (their connections may still need them) until
    // the frontends that list them take them again, or releaseOrphans.
    for (const [id, backend] of this.#maps.backends.entries()) {
      if (this.#backendNames.has(id)) continue;
      const name = backendName({ ip: backend.address, port: backend.port, protocol: PROTOCOL_NAME.get(backend.proto) ?? 'TCP' });
      if (this.#backends.has(name)) continue;
      this.#backends.set(name, { id, users: new Map(), flags: backend.flags });
      this.#backendNames.set(id, name);
      this.#backendIds.take(id);
      this.#orphans.add(name);
    }
    if (this.#algorithm !== LbSelection.MAGLEV) return;
    for (const written of this.#written.values()) if (written.slots.length > 0 && !this.#maglevFits(written.revNat)) this.#staleMaglev.add(written.revNat);
  }

  /** Whether the service's Maglev table is in the maps with the configured size. */
  #maglevFits(revNat: number): boolean {
    const id = this.#maps.maglev.lookup(revNat);
    if (id === undefined) return false;
    try {
      using inner = BpfMap.fromId(id);
      return maglevInnerFits(inner, this.#tableSize);
    } catch {
      return false;
    }
  }

  /**
   * Deletes the backend entries a restarted agent adopted that no frontend listed since (call
   * once every frontend was written once).
   */
  releaseOrphans(): void {
    for (const name of this.#orphans) {
      const entry = this.#backends.get(name);
      if (entry && entry.users.size === 0) this.#drop(name, entry);
    }
    this.#orphans.clear();
  }

  /**
   * What the maps hold, frontend by frontend, from one dump of the services map (batched) rather
   * than a lookup per slot: a refresh of 10k services stays a few batch calls. With `names`, each
   * slot's backend name too, from one dump of the backends map.
   */
  #read(names = false): [string, Written & { names?: (string | undefined)[] }][] {
    const heads = new Map<string, { key: Lb4Key; value: Lb4Service }>();
    const slotIds = new Map<string, Map<number, number>>();
    for (const [key, value] of this.#maps.services.entries()) {
      const id = `${key.address}:${key.dport}/${key.proto}`;
      if (key.backend_slot === 0) heads.set(id, { key, value });
      else {
        let slots = slotIds.get(id);
        if (!slots) slotIds.set(id, (slots = new Map()));
        slots.set(key.backend_slot, value.backend_id);
      }
    }
    const backendNames = names ? new Map([...this.#maps.backends.entries()].map(([id, b]) => [id, backendName({ ip: b.address, port: b.port, protocol: PROTOCOL_NAME.get(b.proto) ?? 'TCP' })])) : undefined;
    const out: [string, Written & { names?: (string | undefined)[] }][] = [];
    for (const [id, { key, value }] of heads) {
      const protocol = PROTOCOL_NAME.get(key.proto);
      if (!protocol) continue;
      const found = slotIds.get(id);
      const slots = Array.from({ length: value.count }, (_, i) => found?.get(i + 1) ?? 0);
      const affinity = value.flags & ServiceFlag.AFFINITY ? value.backend_id : 0;
      const written = { revNat: value.rev_nat_index, slots, flags: value.flags & ~ServiceFlag.AFFINITY, algorithm: value.algorithm, affinity, terminating: this.#written.get(frontendKey(key.address, key.dport, protocol))?.terminating ?? [] };
      out.push([frontendKey(key.address, key.dport, protocol), backendNames ? { ...written, names: slots.map((s) => backendNames.get(s)) } : written]);
    }
    return out;
  }

  #equal(frontend: Frontend, actual: Written & { names?: (string | undefined)[] }): boolean {
    if (actual.slots.length !== frontend.backends.length || actual.flags !== frontendFlags(frontend) || actual.algorithm !== this.#algorithm) return false;
    if (actual.affinity !== (frontend.affinityTimeout ?? 0) || this.#staleMaglev.has(actual.revNat)) return false;
    for (const id of actual.slots) if (actual.affinity && this.#maps.affinityMatch.lookup({ backend_id: id, rev_nat_index: actual.revNat }) === undefined) return false;
    const want = new Set(frontend.backends.map(backendName));
    for (const name of actual.names ?? []) if (name === undefined || !want.delete(name)) return false;
    if (want.size > 0) return false;
    // Terminating backends: held by this frontend, in the map, flagged as written.
    const active = new Set(frontend.backends.map(backendName));
    for (const backend of frontend.terminating ?? []) {
      if (active.has(backendName(backend))) continue;
      const entry = this.#backends.get(backendName(backend));
      if (entry?.users.get(frontend.key) !== true || this.#maps.backends.lookup(entry.id)?.flags !== entry.flags) return false;
    }
    return true;
  }

  /** `repair`: the maps may differ from what was written; every entry of the frontend is rewritten, its backends' too. */
  #write(frontend: Frontend, repair = false): void {
    const key = frontend.key;
    const previous = this.#written.get(key);
    const revNat = previous?.revNat ?? this.#revNats.allocate();
    const base = { address: frontend.vip, dport: frontend.port, proto: PROTOCOL_NUMBER[frontend.protocol], scope: 0 };
    const names = new Map(frontend.backends.map((b) => [backendName(b), b]));
    // A backend both active and terminating is active.
    const leaving = new Map((frontend.terminating ?? []).map((b) => [backendName(b), b] as const).filter(([name]) => !names.has(name)));
    const before = this.#backendNames;
    const oldSlots = previous?.slots ?? [];
    const oldNames = new Set(oldSlots.map((id) => before.get(id)).filter((n): n is string => n !== undefined));
    // New backends get ids (and entries) before any slot points at them.
    const added: number[] = [];
    for (const [name, backend] of names) if (!oldNames.has(name)) added.push(this.#acquire(name, backend, key, false, repair));
    // Keep each remaining backend in its slot; a removed one's slot goes to a new backend, or
    // to the last slot's backend.
    const slots = oldSlots.filter(() => true);
    for (let i = 0; i < slots.length; ) {
      const name = before.get(slots[i]);
      if (name !== undefined && names.has(name)) {
        i++;
        continue;
      }
      if (added.length > 0) slots[i++] = added.shift()!;
      else {
        // The last slot's backend moves here and is looked at again: it may be going too.
        const last = slots.pop()!;
        if (i < slots.length) slots[i] = last;
      }
    }
    slots.push(...added);
    for (let i = 0; i < slots.length; i++) {
      if (oldSlots[i] !== slots[i]) this.#maps.services.update({ ...base, backend_slot: i + 1 }, { backend_id: slots[i], count: 0, rev_nat_index: 0, flags: 0, algorithm: 0 });
    }
    const flags = frontendFlags(frontend);
    const affinity = frontend.affinityTimeout ?? 0;
    // Affinity entries may name only backends of the service: match entries before slot 0 turns affinity on.
    const hadAffinity = (previous?.affinity ?? 0) > 0;
    if (affinity > 0) {
      const matched = new Set(hadAffinity ? oldSlots : []);
      for (const id of slots) if (!matched.has(id)) this.#maps.affinityMatch.update({ backend_id: id, rev_nat_index: revNat }, 1);
    }
    if (!previous || previous.slots.length !== slots.length || previous.flags !== flags || previous.algorithm !== this.#algorithm || previous.revNat !== revNat || previous.affinity !== affinity) {
      this.#maps.services.update(
        { ...base, backend_slot: 0 },
        { backend_id: affinity, count: slots.length, rev_nat_index: revNat, flags: flags | (affinity > 0 ? ServiceFlag.AFFINITY : 0), algorithm: this.#algorithm },
      );
    }
    if (hadAffinity) {
      const kept = new Set(affinity > 0 ? slots : []);
      for (const id of oldSlots) if (!kept.has(id)) this.#maps.affinityMatch.delete({ backend_id: id, rev_nat_index: revNat });
    }
    for (let slot = slots.length + 1; slot <= oldSlots.length; slot++) this.#maps.services.delete({ ...base, backend_slot: slot });
    if (!previous) this.#maps.reverseNat.update(revNat, { address: frontend.vip, port: frontend.port });
    if (this.#algorithm === LbSelection.MAGLEV && (!previous || !sameMembers(oldSlots, slots) || this.#staleMaglev.has(revNat))) {
      this.#writeMaglev(revNat, slots);
      this.#staleMaglev.delete(revNat);
    }
    // Only now, with no slot or Maglev entry naming them any more, are backends flagged
    // terminating: a connection that picked one a moment before would be refused.
    const terminating = [...leaving].map(([name, backend]) => this.#acquire(name, backend, key, true, repair));
    const oldTerminating = (previous?.terminating ?? []).map((id) => before.get(id)).filter((n): n is string => n !== undefined);
    this.#written.set(key, { revNat, slots, flags, algorithm: this.#algorithm, affinity, terminating });
    for (const name of new Set([...oldNames, ...oldTerminating])) if (!names.has(name) && !leaving.has(name)) this.#release(name, key);
  }

  #writeMaglev(revNat: number, slots: readonly number[]): void {
    if (slots.length === 0) {
      this.#maps.maglev.delete(revNat);
      return;
    }
    // Hashed by name, the same on every node, never by the node-local id.
    const table = maglevTable(slots.map((id) => ({ id, name: this.#backendNames.get(id) ?? String(id) })), this.#tableSize, this.#seed);
    const inner = createMaglevInner(table);
    try {
      this.#maps.maglev.setInnerMap(revNat, inner);
    } finally {
      inner.close();
    }
  }

  #remove(key: string): void {
    const written = this.#written.get(key) ?? this.#read().find(([k]) => k === key)?.[1];
    if (!written) return;
    const [vip, rest] = key.split(':');
    const [port, protocol] = rest.split('/');
    const base = { address: vip, dport: Number(port), proto: PROTOCOL_NUMBER[protocol as ServiceProtocol], scope: 0 };
    // Slot 0 first: from then on no new connection looks at the slots.
    this.#maps.services.delete({ ...base, backend_slot: 0 });
    for (let slot = 1; slot <= written.slots.length; slot++) this.#maps.services.delete({ ...base, backend_slot: slot });
    this.#maps.reverseNat.delete(written.revNat);
    this.#maps.maglev.delete(written.revNat);
    if (written.affinity) for (const id of written.slots) this.#maps.affinityMatch.delete({ backend_id: id, rev_nat_index: written.revNat });
    this.#revNats.release(written.revNat);
    this.#staleMaglev.delete(written.revNat);
    this.#written.delete(key);
    for (const id of [...written.slots, ...written.terminating]) {
      const name = this.#backendNames.get(id);
      if (name !== undefined) this.#release(name, key);
    }
  }

  /**
   * Holds backend `name` for frontend `user`, active or terminating for it. The entry is flagged
   * terminating only when it is so for every frontend holding it: a backend two services share
   * stays selectable for the one that still has it active.
   */
  #acquire(name: string, backend: Backend, user: string, terminating: boolean, rewrite = false): number {
    const existing = this.#backends.get(name);
    const entry = existing ?? { id: this.#backendIds.allocate(), users: new Map<string, boolean>(), flags: -1 };
    if (!existing) {
      this.#backends.set(name, entry);
      this.#backendNames.set(entry.id, name);
    }
    entry.users.set(user, terminating);
    this.#writeBackend(entry, backend, rewrite);
    return entry.id;
  }

  #writeBackend(entry: BackendUse, backend: Backend, rewrite: boolean): void {
    const flags = [...entry.users.values()].every((t) => t) ? BackendFlag.TERMINATING : 0;
    if (flags === entry.flags && !rewrite) return;
    this.#maps.backends.update(entry.id, { address: backend.ip, port: backend.port, proto: PROTOCOL_NUMBER[backend.protocol], flags });
    entry.flags = flags;
  }

  #release(name: string, user: string): void {
    const entry = this.#backends.get(name);
    if (!entry) return;
    entry.users.delete(user);
    if (entry.users.size > 0) {
      // The last frontend that had it active may have let it go: the rest hold it terminating.
      const [ip, rest] = name.split(':');
      const [port, protocol] = rest.split('/');
      this.#writeBackend(entry, { ip, port: Number(port), protocol: protocol as ServiceProtocol }, false);
      return;
    }
    this.#drop(name, entry);
  }

  #drop(name: string, entry: BackendUse): void {
    this.#backends.delete(name);
    this.#backendNames.delete(entry.id);
    this.#backendIds.release(entry.id);
    this.#maps.backends.delete(entry.id);
  }

}

/**
 * Node-local ids 1..MAX_ID in O(1): released ids are reused first, then the next never used. An
 * id taken by adoption (a restarted agent) is never handed out again while in use.
 */
class IdPool {
  readonly #what: string;
  readonly #used = new Set<number>();
  readonly #free: number[] = [];
  #next = 1;

  constructor(what: string) {
    this.#what = what;
  }

  allocate(): number {
    for (;;) {
      const id = this.#free.pop() ?? this.#next++;
      if (id > MAX_ID) throw new RangeError(`every ${this.#what} id (1-${MAX_ID}) of the node is taken`);
      // A free-listed id can have been taken by adoption since; skip it.
      if (this.#used.has(id)) continue;
      this.#used.add(id);
      return id;
    }
  }

  take(id: number): void {
    this.#used.add(id);
  }

  release(id: number): void {
    if (this.#used.delete(id)) this.#free.push(id);
  }
}

function sameMembers(a: readonly number[], b: readonly number[]): boolean {
  if (a.length !== b.length) return false;
  const set = new Set(a);
  return b.every((id) => set.has(id));
}
