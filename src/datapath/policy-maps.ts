/**
 * The endpoints' policy maps in the kernel: one LPM trie per endpoint (src/policy/policy-map.ts
 * layout), pinned at <bpfRoot>/endpoints/<id>/policy and installed in the shared hash of maps
 * ciliate_policy_maps (<bpfRoot>/maps), where bpf_lxc and bpf_overlay look up any local
 * endpoint's policy by endpoint id (bpf/lib/policy_enforce.h).
 *
 * An endpoint without an entry in ciliate_policy_maps is not enforced (allow-all, no
 * policy-verdict events). So the agent must `ensure()` an endpoint's map and fill it (allow-all
 * wildcard entries for a direction it does not enforce) before the endpoint's programs are
 * attached, or the first packets pass unjudged.
 *
 * Order for the agent:
 *   create:  policyMaps.ensure(id); policyMaps.apply(id, diff); datapath.realize(endpoint)
 *   update:  policyMaps.apply(id, diff)
 *   delete:  datapath.remove(endpoint); policyMaps.remove(id)
 *            (remove() also works after the endpoint directory is gone; EndpointDatapath.remove
 *            deleting the directory first only drops the pin, the outer entry stays until
 *            policyMaps.remove(id))
 *   restart: ensure(id) adopts the pinned map with its entries and re-installs it in the outer
 *            map if needed; apply() the diff against what entries(id) returns.
 *
 * Spare slots (prepareSpares): every update or delete of an outer-map element waits out an RCU
 * grace period in the kernel (~15 ms), the slowest step of an endpoint add. So while no add is in
 * flight, empty maps are installed ahead for the ids the next adds will get; an add whose id has
 * one only writes into it. A spare is safe to have in the outer map: the datapath reaches a
 * policy map only through an endpoint id it found in ciliate_lxc, which has no entry for an id
 * without an endpoint, and an empty map denies everything (a lookup miss drops). A spare is
 * created empty by this process and never written before it is claimed, and it is not pinned, so
 * a later agent cannot adopt it: a start's sweep (sweepEndpoints) removes the outer entries of
 * ids without an endpoint, spares included, whether the agent stopped or crashed. Stop leaves
 * them (deleting costs a grace period each, and the start's sweep must handle a crash anyway).
 * @module
 */
import { existsSync, mkdirSync, rmdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { BpfError, BpfMap, u32, UpdateFlag } from '../ebpf/index.ts';
import {
  applyPolicyDiff,
  createPolicyMap,
  decodeKey,
  policyEntryCodec,
  policyKeyCodec,
  POLICY_F_DENY,
  POLICY_MAP_MAX_ENTRIES,
  type PolicyBpfMap,
  type PolicyKey,
  type PolicyMapEntry,
} from '../policy/policy-map.ts';
import { loadLxc } from './lxc.ts';
import { MapName, policyMapsKey } from './maps.ts';

/** Pin of an endpoint's policy map, inside the endpoint's directory. */
export function endpointPolicyPinPath(bpfRoot: string, endpointId: number): string {
  return join(bpfRoot, 'endpoints', String(endpointId), 'policy');
}

/** One entry as it is in the kernel (the map holds no rule keys). */
export interface InstalledPolicyEntry {
  key: PolicyKey;
  deny: boolean;
  cookie: number;
}

export class EndpointPolicyMaps {
  readonly bpfRoot: string;
  /** ciliate_policy_maps: endpoint id → inner map (lookup returns the inner map's id). */
  readonly outer: BpfMap<number, number>;
  readonly #maps = new Map<number, PolicyBpfMap>();
  /** Outer-map writes in flight (install()), by endpoint id. */
  readonly #installing = new Map<number, Promise<void>>();
  /** Spare slots by endpoint id: empty, unpinned, and installed once `installed` says true. */
  readonly #spares = new Map<number, { map: PolicyBpfMap; installed: Promise<boolean> }>();
  readonly #maxEntries: number;
  /** How many spare slots prepareSpares() keeps ready; 0: none. */
  readonly spareSlots: number;

  /**
   * Opens the pinned outer map under `bpfRoot`/maps, creating the node's shared maps if needed.
   * `maxEntries` sizes the endpoints' maps created from now on (default POLICY_MAP_MAX_ENTRIES);
   * adopted pins keep their size. `spares`: spare slots to keep ready (see the module comment).
   */
  constructor(bpfRoot: string, options: { maxEntries?: number; spares?: number } = {}) {
    this.bpfRoot = bpfRoot;
    this.#maxEntries = options.maxEntries ?? POLICY_MAP_MAX_ENTRIES;
    this.spareSlots = options.spares ?? 0;
    const mapsDir = join(bpfRoot, 'maps');
    const outerPath = join(mapsDir, MapName.POLICY_MAPS);
    if (!existsSync(outerPath)) {
      mkdirSync(mapsDir, { recursive: true });
      // Loading once with pins creates every shared map with the object's own definitions.
      loadLxc({ pinDir: mapsDir }).close();
    }
    this.outer = BpfMap.openPinned(outerPath, policyMapsKey, u32);
  }

  /**
   * The endpoint's policy map: the open one, else the pin at <bpfRoot>/endpoints/<id>/policy
   * (adopted with its entries, e.g. after an agent restart), else a new empty one, pinned there.
   * Makes sure the outer map points at it. Idempotent.
   */
  ensure(endpointId: number): PolicyBpfMap {
    const map = this.#mapFor(endpointId);
    if (!this.#installing.has(endpointId) && this.outer.lookup(endpointId) !== map.info().id) this.outer.setInnerMap(endpointId, map);
    return map;
  }

  /**
   * ensure() with the outer map written off the event loop: the kernel holds every map-of-maps
   * update for an RCU grace period, which an endpoint add spends on other work this way. While
   * it is in flight, ensure() and apply() write into the map without installing it again.
   */
  install(endpointId: number): Promise<void> {
    const map = this.#mapFor(endpointId);
    const inFlight = this.#installing.get(endpointId);
    if (inFlight) return inFlight;
    if (this.outer.lookup(endpointId) === map.info().id) return Promise.resolve();
    const installing = this.outer.setInnerMapAsync(endpointId, map).finally(() => this.#installing.delete(endpointId));
    this.#installing.set(endpointId, installing);
    return installing;
  }

  #mapFor(endpointId: number): PolicyBpfMap {
    checkId(endpointId);
    let map = this.#maps.get(endpointId);
    const pin = endpointPolicyPinPath(this.bpfRoot, endpointId);
    if (map && !existsSync(pin)) {
      // The endpoint directory was removed under us (EndpointDatapath.remove): pin it again.
      mkdirSync(join(pin, '..'), { recursive: true });
      map.pin(pin);
    }
    if (!map) {
      const spare = this.#spares.get(endpointId);
      this.#spares.delete(endpointId);
      if (existsSync(pin)) {
        // A pin wins over a spare (an endpoint adopted after a restart): the spare is dropped and
        // install() overwrites its outer entry; its own install, if late, fails on NOEXIST.
        if (spare) this.#closeSpare(spare);
        map = BpfMap.openPinned(pin, policyKeyCodec, policyEntryCodec);
      } else if (spare) {
        mkdirSync(join(pin, '..'), { recursive: true });
        try {
          spare.map.pin(pin);
        } catch (error) {
          this.#closeSpare(spare);
          throw error;
        }
        map = spare.map;
        const claimed = map;
        // Still going in: install() waits for it, and installs the map itself if it failed.
        const installing = spare.installed
          .then((ok) => (ok ? undefined : this.outer.setInnerMapAsync(endpointId, claimed)))
          .finally(() => this.#installing.delete(endpointId));
        this.#installing.set(endpointId, installing);
      } else {
        mkdirSync(join(pin, '..'), { recursive: true });
        map = createPolicyMap(endpointId, this.#maxEntries);
        try {
          map.pin(pin);
        } catch (error) {
          map.close();
          throw error;
        }
      }
      this.#maps.set(endpointId, map);
    }
    return map;
  }

  /**
   * Installs empty spare maps, off the event loop, for those of `ids` (the ids the next adds
   * will get) that have no map, pin or outer entry, keeping at most 2 × spareSlots spares (spares
   * left at ids a removal put behind the next ones are kept for later adds). Resolves once the
   * installs have finished; failures only leave the id without a spare.
   */
  async prepareSpares(ids: readonly number[]): Promise<void> {
    const installs: Promise<boolean>[] = [];
    for (const id of ids.slice(0, this.spareSlots)) {
      if (this.#spares.size >= 2 * this.spareSlots) break;
      checkId(id);
      if (this.#maps.has(id) || this.#spares.has(id) || existsSync(endpointPolicyPinPath(this.bpfRoot, id))) continue;
      if (this.outer.lookup(id) !== undefined) continue;
      const map = createPolicyMap(id, this.#maxEntries);
      // NOEXIST: never replaces an entry something else wrote meanwhile.
      const installed = this.outer.setInnerMapAsync(id, map, UpdateFlag.NOEXIST).then(
        () => true,
        () => {
          if (this.#spares.get(id)?.map === map) {
            this.#spares.delete(id);
            map.close();
          }
          return false;
        },
      );
      this.#spares.set(id, { map, installed });
      installs.push(installed);
    }
    await Promise.all(installs);
  }

  /** Ids with a spare slot ready or going in. */
  spareIds(): number[] {
    return [...this.#spares.keys()];
  }

  /** Applies a diff of the policy engine (upserts, then deletes) to the endpoint's map; ensures it first. */
  apply(endpointId: number, diff: { upserts: readonly PolicyMapEntry[]; deletes: readonly PolicyKey[] }): void {
    applyPolicyDiff(this.ensure(endpointId), diff);
  }

  /** What the endpoint's map holds, or [] when the endpoint has none (neither open nor pinned). */
  entries(endpointId: number): InstalledPolicyEntry[] {
    const map = this.#open(endpointId);
    if (!map) return [];
    const out: InstalledPolicyEntry[] = [];
    for (const [key, value] of map.entries()) {
      out.push({ key: decodeKey(key), deny: (value.flags & POLICY_F_DENY) !== 0, cookie: value.cookie });
    }
    return out;
  }

  /** Endpoint ids with a map in the outer map (this instance's spares are not endpoints'). */
  installedIds(): number[] {
    return [...this.outer.keys()].filter((id) => !this.#spares.has(id));
  }

  /** Whether the datapath enforces policy for this endpoint (it has an entry in the outer map that is not a spare). */
  installed(endpointId: number): boolean {
    return !this.#spares.has(endpointId) && this.outer.lookup(endpointId) !== undefined;
  }

  /** Uninstalls the endpoint's map from the outer map (its traffic is no longer judged) and unpins it. */
  remove(endpointId: number): void {
    checkId(endpointId);
    this.outer.delete(endpointId);
    const spare = this.#spares.get(endpointId);
    if (spare) this.#closeSpare(spare);
    this.#spares.delete(endpointId);
    this.#maps.get(endpointId)?.close();
    this.#maps.delete(endpointId);
    const pin = endpointPolicyPinPath(this.bpfRoot, endpointId);
    rmSync(pin, { force: true });
    // The endpoint's directory goes with its last pin; links still pinned there keep it.
    try {
      rmdirSync(dirname(pin));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT' && (error as NodeJS.ErrnoException).code !== 'ENOTEMPTY') throw error;
    }
  }

  /** Resolves once no outer-map write of install() or prepareSpares() is in flight (before close()). */
  async settled(): Promise<void> {
    await Promise.all([...this.#installing.values(), ...[...this.#spares.values()].map((s) => s.installed)].map((p) => p.catch(() => undefined)));
  }

  /** Closes the maps; spares stay in the outer map for the next start's sweep (see above). */
  close(): void {
    for (const map of this.#maps.values()) map.close();
    this.#maps.clear();
    for (const spare of this.#spares.values()) this.#closeSpare(spare);
    this.#spares.clear();
    this.outer.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }

  /** Its fd stays open until its install has returned: the kernel reads the fd in that call. */
  #closeSpare(spare: { map: PolicyBpfMap; installed: Promise<boolean> }): void {
    void spare.installed.finally(() => spare.map.close());
  }

  #open(endpointId: number): PolicyBpfMap | undefined {
    const open = this.#maps.get(endpointId);
    if (open) return open;
    const pin = endpointPolicyPinPath(this.bpfRoot, endpointId);
    if (!existsSync(pin)) return undefined;
    const map = BpfMap.openPinned(pin, policyKeyCodec, policyEntryCodec);
    this.#maps.set(endpointId, map);
    return map;
  }
}

function checkId(endpointId: number): void {
  if (!Number.isInteger(endpointId) || endpointId < 0 || endpointId > 0xffff) {
    throw new BpfError('ERR_INVALID_ARGUMENT', `policy maps: endpoint id ${endpointId} is not a u16`);
  }
}
