/**
 * Maglev consistent hashing (Eisenbud et al., NSDI'16), as Cilium builds its tables: each backend
 * gets a permutation of the M table slots from an offset and a skip, both from MurmurHash3 of the
 * backend's name, and backends take turns claiming their next preferred free slot until the table
 * is full. With M prime every skip walks all slots, each backend ends up with ⌊M/N⌋ or ⌈M/N⌉ of
 * them, and removing one backend moves few slots of the others.
 *
 * Deterministic across nodes: backends are ordered by name (an address, the same on every node;
 * backend ids are node-local and are only what the table holds) and the seed is configuration.
 * @module
 */
import { murmur3x64_128 } from './murmur3.ts';

/**
 * The table sizes Cilium accepts (`--bpf-lb-maglev-table-size`): primes, each a little under a
 * power of two. The paper asks M > 100·N for shares within 1 %: 16381 suits ~160 backends.
 */
export const MAGLEV_TABLE_SIZES = [251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071] as const;
export type MaglevTableSize = (typeof MAGLEV_TABLE_SIZES)[number];
export const DEFAULT_MAGLEV_TABLE_SIZE: MaglevTableSize = 16381;

/**
 * Cilium's default `--bpf-lb-maglev-hash-seed`: 12 random bytes in base64. Every node of a cluster
 * must use the same seed, or their tables differ and a flow moving between nodes changes backend.
 */
export const DEFAULT_MAGLEV_HASH_SEED = 'JLfvgnHc2kaSUFaI';

/** The 32-bit murmur seed of a base64 hash seed (its first four bytes, little-endian). */
export function maglevSeed(hashSeed: string): number {
  const bytes = Buffer.from(hashSeed, 'base64');
  if (bytes.length < 4) throw new RangeError(`maglev hash seed ${JSON.stringify(hashSeed)}: want at least 4 bytes of base64, got ${bytes.length}`);
  return bytes.readUInt32LE(0);
}

export interface MaglevBackend {
  /** What the table holds for the backend's slots (the node-local backend id). */
  id: number;
  /** What the permutation is hashed from: the same on every node, e.g. `10.244.1.5:8080/TCP`. */
  name: string;
  /**
   * Its share relative to the others (default 1): slots in proportion. 0 takes none (a backend
   * kept but given no new flows). Equal weights give the unweighted table.
   */
  weight?: number;
}

/** A backend's preferred slots: offset, offset+skip, offset+2·skip, … mod M. */
export function maglevPermutation(name: string, size: number, seed: number): { offset: number; skip: number } {
  const [h1, h2] = murmur3x64_128(Buffer.from(name, 'utf8'), seed);
  const m = BigInt(size);
  return { offset: Number(h1 % m), skip: Number(h2 % (m - 1n)) + 1 };
}

/**
 * The Maglev lookup table of `size` slots for `backends`: slot → backend id. Empty for no
 * backends. Names must be unique (two backends at one name would share one permutation).
 *
 * @example
 * const table = maglevTable([{ id: 1, name: '10.244.1.5:80/TCP' }, { id: 2, name: '10.244.2.7:80/TCP' }]);
 * table[hash % table.length]; // the backend id of a flow
 */
export function maglevTable(backends: readonly MaglevBackend[], size: number = DEFAULT_MAGLEV_TABLE_SIZE, seed: number = maglevSeed(DEFAULT_MAGLEV_HASH_SEED)): Uint32Array {
  if (!isMaglevTableSize(size)) throw new RangeError(`maglev table size ${size}: must be one of ${MAGLEV_TABLE_SIZES.join(', ')}`);
  const table = new Uint32Array(size);
  const sorted = backends.filter((b) => (b.weight ?? 1) > 0).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const n = sorted.length;
  if (n === 0) return table;
  for (let i = 1; i < n; i++) if (sorted[i].name === sorted[i - 1].name) throw new RangeError(`maglev: two backends named ${sorted[i].name}`);
  // Offsets, skips and each backend's position in its permutation: O(N) memory, not the N×M
  // permutation matrix; a permutation's next slot is computed when the backend takes its turn.
  const offsets = new Float64Array(n);
  const skips = new Float64Array(n);
  const next = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const { offset, skip } = maglevPermutation(sorted[i].name, size, seed);
    offsets[i] = offset;
    skips[i] = skip;
  }
  // Weighted turns: in pass p a backend of weight w takes a slot when ⌊(p+1)·w/W⌋ > ⌊p·w/W⌋ (W the
  // largest weight), so the heaviest takes every pass and the others their share of them.
  const weights = sorted.map((b) => b.weight ?? 1);
  const heaviest = Math.max(...weights);
  const taken = new Uint8Array(size);
  let filled = 0;
  for (let pass = 0; filled < size; pass++) {
    for (let i = 0; i < n && filled < size; i++) {
      if (weights[i] !== heaviest && Math.floor(((pass + 1) * weights[i]) / heaviest) === Math.floor((pass * weights[i]) / heaviest)) continue;
      let slot = (offsets[i] + next[i] * skips[i]) % size;
      while (taken[slot]) {
        next[i]++;
        slot = (offsets[i] + next[i] * skips[i]) % size;
      }
      taken[slot] = 1;
      table[slot] = sorted[i].id;
      next[i]++;
      filled++;
    }
  }
  return table;
}

export function isMaglevTableSize(size: number): size is MaglevTableSize {
  return (MAGLEV_TABLE_SIZES as readonly number[]).includes(size);
}

/** An IPv4 address's bytes as the datapath's x86 loads of a __be32 see them (little-endian). */
function be32AsLoaded(ip: string): number {
  const [a, b, c, d] = ip.split('.').map(Number);
  return (a | (b << 8) | (c << 16) | (d << 24)) >>> 0;
}

/** A port's __be16 as a little-endian load sees it. */
function be16AsLoaded(port: number): number {
  return ((port & 0xff) << 8) | (port >>> 8);
}

/**
 * The hash TC gives a connection's frontend tuple to pick its Maglev slot (bpf/lib/lb_skb.h
 * lb4_tuple_hash, on a little-endian host): slot `hash % M` of the service's table.
 *
 * @example
 * const slot = lb4TupleHash({ saddr: '10.244.0.7', daddr: '10.96.0.10', sport: 40001, dport: 80 }) % 16381;
 */
export function lb4TupleHash(tuple: { saddr: string; daddr: string; sport: number; dport: number }): number {
  let h = Math.imul(be32AsLoaded(tuple.saddr), 0x9e3779b1);
  h ^= Math.imul(((be16AsLoaded(tuple.sport) << 16) | be16AsLoaded(tuple.dport)) >>> 0, 0x85ebca6b);
  h ^= Math.imul(be32AsLoaded(tuple.daddr), 0xc2b2ae35);
  h ^= h >>> 15;
  h = Math.imul(h, 0x27d4eb2f);
  return (h ^ (h >>> 13)) >>> 0;
}
