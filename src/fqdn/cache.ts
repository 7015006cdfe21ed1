/**
 * The FQDN cache: which addresses each endpoint was told a name has, until when. Fed by the DNS
 * answers the DNS proxy forwards to the endpoint (never by the agent's own lookups: a name means
 * what the pod was told), read by the policy manager to turn `toFQDNs` selectors into addresses.
 *
 * As Cilium's (`pkg/fqdn`): an address lives for the answer's TTL, at least the minimum TTL; an
 * endpoint keeps at most `maxIpsPerName` addresses per name (the ones that live longest win);
 * selection is over every endpoint's names (one node-wide selector cache). Persisted as JSON in
 * the agent's state directory, written whole to a temporary file and renamed, so a restart finds
 * the names learned before it and never half a file.
 * @module
 */
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { Addr } from '../net/index.ts';
import { fqdnSelectorMatches, normalizeDnsName, type FqdnSelector } from '../policy/index.ts';

/** Cilium's tofqdns-endpoint-max-ip-per-hostname. */
export const DEFAULT_MAX_IPS_PER_NAME = 50;
/** Cilium's tofqdns-min-ttl default (seconds). */
export const DEFAULT_MIN_TTL = 0;
/**
 * Names one endpoint may hold: a pod allowed to ask about any name could otherwise grow the cache
 * without end by asking for random ones; past it the names that expire first go.
 */
export const DEFAULT_MAX_NAMES_PER_ENDPOINT = 10_000;
/** Cilium caps TTLs so one bad answer cannot pin an address for ever (a day). */
const MAX_TTL = 86_400;

/** When an address an answer of `ttl` seconds told about stops being allowed (ms), as the cache keeps it. */
export function learnedExpiry(ttl: number, minTtl: number, now: number): number {
  return now + Math.min(MAX_TTL, Math.max(minTtl, Math.floor(ttl))) * 1000;
}
const FILE_VERSION = 1;

export interface FqdnCacheOptions {
  /** Seconds an address lives at least, whatever the answer's TTL. */
  minTtl?: number;
  /** Addresses per name per endpoint. */
  maxIpsPerName?: number;
  /** Names per endpoint. */
  maxNamesPerEndpoint?: number;
  /** Where the cache persists; none: memory only. */
  file?: string;
  /** Milliseconds since the epoch; tests move it. */
  now?: () => number;
}

/** Called when addresses leave the cache before they expire (the caps): what was told is no longer held. */
export type FqdnEvictionListener = () => void;

/** One address an endpoint learned for a name. */
export interface LearnedAddress {
  endpoint: number;
  name: string;
  ip: string;
  /** Milliseconds since the epoch. */
  expiresAt: number;
}

/** An answer's address for a name, with the answer's TTL in seconds. */
export interface AnswerAddress {
  name: string;
  ip: string;
  ttl: number;
}

interface CacheFile {
  version: number;
  entries: LearnedAddress[];
}

export class FqdnCache {
  /** endpoint → name → ip → expiresAt (ms) */
  readonly #entries = new Map<number, Map<string, Map<string, number>>>();
  readonly #minTtl: number;
  readonly #maxIps: number;
  readonly #maxNames: number;
  readonly #file: string | undefined;
  readonly #now: () => number;

  constructor(options: FqdnCacheOptions = {}) {
    this.#minTtl = options.minTtl ?? DEFAULT_MIN_TTL;
    this.#maxIps = options.maxIpsPerName ?? DEFAULT_MAX_IPS_PER_NAME;
    this.#maxNames = options.maxNamesPerEndpoint ?? DEFAULT_MAX_NAMES_PER_ENDPOINT;
    this.#file = options.file;
    this.#now = options.now ?? Date.now;
  }

  /**
   * Records what an answer told `endpoint`; true when the selectable addresses changed (a new
   * address, not a longer life for a known one).
   */
  /** Told when addresses leave before they expire (a cap made room): whoever kept "already told" must forget it. */
  onEvict: FqdnEvictionListener | undefined;

  learn(endpoint: number, answers: readonly AnswerAddress[]): boolean {
    const now = this.#now();
    let changed = false;
    let evicted = false;
    for (const answer of answers) {
      const ip = Addr.tryParse(answer.ip);
      if (ip === undefined) continue;
      const name = normalizeDnsName(answer.name);
      const expiresAt = learnedExpiry(answer.ttl, this.#minTtl, now);
      let names = this.#entries.get(endpoint);
      if (names === undefined) this.#entries.set(endpoint, (names = new Map()));
      let ips = names.get(name);
      if (ips === undefined) {
        if (names.size >= this.#maxNames) evicted = this.#evictName(names) || evicted;
        names.set(name, (ips = new Map()));
      }
      const key = ip.toString();
      const known = ips.get(key);
      if (known === undefined || known <= now) changed = true;
      ips.set(key, Math.max(known ?? 0, expiresAt));
      if (ips.size > this.#maxIps) {
        // The addresses that expire first go first: the answer just received stays whole.
        const byExpiry = [...ips].sort((a, b) => a[1] - b[1]);
        for (const [old] of byExpiry.slice(0, ips.size - this.#maxIps)) ips.delete(old);
        changed = true;
        evicted = true;
      }
    }
    if (evicted) this.onEvict?.();
    return changed;
  }

  /** Drops the name whose last address expires first (a full endpoint learning a new name). */
  #evictName(names: Map<string, Map<string, number>>): boolean {
    let victim: string | undefined;
    let soonest = Infinity;
    for (const [name, ips] of names) {
      const last = Math.max(...ips.values());
      if (last < soonest) {
        soonest = last;
        victim = name;
      }
    }
    return victim !== undefined && names.delete(victim);
  }

  /** Drops what expired; true when anything did. */
  expire(): boolean {
    const now = this.#now();
    let changed = false;
    for (const [endpoint, names] of this.#entries) {
      for (const [name, ips] of names) {
        for (const [ip, expiresAt] of ips) {
          if (expiresAt <= now) {
            ips.delete(ip);
            changed = true;
          }
        }
        if (ips.size === 0) names.delete(name);
      }
      if (names.size === 0) this.#entries.delete(endpoint);
    }
    return changed;
  }

  /** The live addresses of the names `selector` selects, learned by any endpoint, sorted. */
  addresses(selector: FqdnSelector): string[] {
    const now = this.#now();
    const out = new Set<string>();
    for (const names of this.#entries.values()) {
      for (const [name, ips] of names) {
        if (!fqdnSelectorMatches(selector, name)) continue;
        for (const [ip, expiresAt] of ips) if (expiresAt > now) out.add(ip);
      }
    }
    return [...out].sort();
  }

  /** Every live entry, for listings (`GET /v1/fqdn/cache`). */
  list(): LearnedAddress[] {
    const now = this.#now();
    const out: LearnedAddress[] = [];
    for (const [endpoint, names] of this.#entries) {
      for (const [name, ips] of names) for (const [ip, expiresAt] of ips) if (expiresAt > now) out.push({ endpoint, name, ip, expiresAt });
    }
    return out.sort((a, b) => a.endpoint - b.endpoint || a.name.localeCompare(b.name) || a.ip.localeCompare(b.ip));
  }

  /** Writes the live entries to the cache's file (whole, through a rename). */
  save(): void {
    if (this.#file === undefined) return;
    mkdirSync(dirname(this.#file), { recursive: true, mode: 0o700 });
    const tmp = `${this.#file}.tmp`;
    const content: CacheFile = { version: FILE_VERSION, entries: this.list() };
    writeFileSync(tmp, JSON.stringify(content), { mode: 0o600 });
    renameSync(tmp, this.#file);
  }

  /**
   * Reads the cache's file, keeping what has not expired; returns how many addresses it restored.
   * A missing file is an empty cache; an unreadable one throws (the caller decides).
   */
  load(): number {
    if (this.#file === undefined) return 0;
    let text: string;
    try {
      text = readFileSync(this.#file, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return 0;
      throw error;
    }
    const parsed = JSON.parse(text) as Partial<CacheFile>;
    if (parsed.version !== FILE_VERSION || !Array.isArray(parsed.entries)) throw new Error(`${this.#file}: not an FQDN cache of version ${FILE_VERSION}`);
    const now = this.#now();
    let restored = 0;
    for (const e of parsed.entries) {
      if (typeof e?.endpoint !== 'number' || typeof e.name !== 'string' || typeof e.ip !== 'string' || typeof e.expiresAt !== 'number' || e.expiresAt <= now) continue;
      // Through learn(): the same caps and parsing as a fresh answer, the TTL what remains of it.
      if (this.learn(e.endpoint, [{ name: e.name, ip: e.ip, ttl: Math.ceil((e.expiresAt - now) / 1000) }])) restored++;
    }
    return restored;
  }
}
