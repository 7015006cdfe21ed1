/**
 * How full the node's shared maps are: entries / max_entries, as Cilium's
 * cilium_bpf_map_pressure. Counted in the kernel (what the datapath holds, drift included), not
 * taken from the agent's tables.
 * @module
 */
import { join } from 'node:path';
import { BpfError, BpfMap, MapType } from '../ebpf/index.ts';
import { MapName } from '../datapath/index.ts';

/** The maps whose pressure is reported: the ones that fill up with endpoints, addresses and connections. */
export const PRESSURE_MAPS: readonly MapName[] = [MapName.LXC, MapName.IPCACHE, MapName.CT4, MapName.POLICY_MAPS];

export interface MapPressure {
  mapName: string;
  entries: number;
  maxEntries: number;
  /** entries / maxEntries, in [0, 1]. */
  ratio: number;
}

/**
 * Entries in one pinned map. Hash maps are read in batches (one syscall per 256 entries); an LPM
 * trie has no batch read, so its keys are walked, which costs no value copies.
 */
export function countEntries(path: string): { entries: number; maxEntries: number } {
  using map = BpfMap.openPinned(path);
  let entries = 0;
  if (map.type === MapType.LPM_TRIE) for (const _ of map.keys()) entries++;
  else for (const _ of map.entries()) entries++;
  return { entries, maxEntries: map.maxEntries };
}

/**
 * The pressure of each of PRESSURE_MAPS under `bpfRoot`. A map not pinned yet (no endpoint has
 * loaded the datapath) is left out rather than reported empty.
 */
export function readMapPressure(bpfRoot: string, maps: readonly string[] = PRESSURE_MAPS): MapPressure[] {
  const pressures: MapPressure[] = [];
  for (const mapName of maps) {
    let counted: { entries: number; maxEntries: number };
    try {
      counted = countEntries(join(bpfRoot, 'maps', mapName));
    } catch (error) {
      if (BpfError.is(error, 'ERR_NOT_FOUND')) continue;
      throw error;
    }
    pressures.push({ mapName, ...counted, ratio: counted.maxEntries > 0 ? Math.min(1, counted.entries / counted.maxEntries) : 0 });
  }
  return pressures;
}
