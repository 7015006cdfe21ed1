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
 * @module
 */
import { existsSync, mkdirSync, rmdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { BpfError, BpfMap, u32 } from '../ebpf/index.ts';
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
  readonly #maxEntries: number;

  /**
   * Opens the pinned outer map under `bpfRoot`/maps, creating the node's shared maps if needed.
   * `maxEntries` sizes the endpoints' maps created from now on (default POLICY_MAP_MAX_ENTRIES);
   * adopted pins keep their size.
   */
  constructor(bpfRoot: string, options: { maxEntries?: number } = {}) {
    this.bpfRoot = bpfRoot;
    this.#maxEntries = options.maxEntries ?? POLICY_MAP_MAX_ENTRIES;
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
      if (existsSync(pin)) {
        map = BpfMap.openPinned(pin, policyKeyCodec, policyEntryCodec);
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

  /** Endpoint ids with a map in the outer map. */
  installedIds(): number[] {
    return [...this.outer.keys()];
  }

  /** Whether the datapath enforces policy for this endpoint (it has an entry in the outer map). */
  installed(endpointId: number): boolean {
    return this.outer.lookup(endpointId) !== undefined;
  }

  /** Uninstalls the endpoint's map from the outer map (its traffic is no longer judged) and unpins it. */
  remove(endpointId: number): void {
    checkId(endpointId);
    this.outer.delete(endpointId);
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

  close(): void {
    for (const map of this.#maps.values()) map.close();
    this.#maps.clear();
    this.outer.close();
  }

  [Symbol.dispose](): void {
    this.close();
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
