/**
 * IP addresses of either family as one immutable value type, after Go's net/netip `Addr`, plus
 * the allocation-free IPv4 codec on unsigned 32-bit numbers that hot paths use directly.
 *
 * IPv4 values are `number`s in 0..2^32-1 (always normalised with `>>> 0`, because JavaScript's
 * bitwise operators return signed 32-bit results); IPv6 values are `bigint`s in 0..2^128-1.
 * @module
 */
import { NetParseError } from './errors.ts';

export type Family = 4 | 6;

const V6_MAX = (1n << 128n) - 1n;
const V6_WORD_SHIFTS = [112n, 96n, 80n, 64n, 48n, 32n, 16n, 0n] as const;

/**
 * The address as an unsigned number, or undefined if `text` is not a dotted quad. Leading zeros
 * are refused: inet_aton reads "010" as octal 8, which surprises everyone. A character loop, not
 * split/regex, because the policy engine and IPAM call this per rule and per address.
 *
 * @example
 * parseIpv4('10.244.1.2'); // 0x0af40102
 * parseIpv4('010.0.0.1'); // undefined
 */
export function parseIpv4(text: string): number | undefined {
  if (typeof text !== 'string') return undefined;
  const n = text.length;
  if (n < 7 || n > 15) return undefined;
  let value = 0;
  let octet = 0;
  let digits = 0;
  let dots = 0;
  for (let i = 0; i < n; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x2e) {
      if (digits === 0 || ++dots > 3) return undefined;
      value = value * 256 + octet;
      octet = 0;
      digits = 0;
      continue;
    }
    if (c < 0x30 || c > 0x39 || (digits === 1 && octet === 0)) return undefined;
    octet = octet * 10 + (c - 0x30);
    // No leading zeros, so a fourth digit always pushes the octet past 255.
    if (octet > 255) return undefined;
    digits++;
  }
  if (dots !== 3 || digits === 0) return undefined;
  return value * 256 + octet;
}

/**
 * @example
 * formatIpv4(0x0af40102); // '10.244.1.2'
 */
export function formatIpv4(value: number): string {
  return `${value >>> 24}.${(value >>> 16) & 0xff}.${(value >>> 8) & 0xff}.${value & 0xff}`;
}

/** The IPv4 netmask of a prefix length as an unsigned number (`<< 32` is a no-op in JS, hence the 0 case). */
export function ipv4Mask(bits: number): number {
  return bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
}

/** The IPv6 netmask of a prefix length. */
export function ipv6Mask(bits: number): bigint {
  return bits === 0 ? 0n : (V6_MAX >> BigInt(128 - bits)) << BigInt(128 - bits);
}

function hexDigit(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  const lower = c | 0x20;
  if (lower >= 0x61 && lower <= 0x66) return lower - 0x61 + 10;
  return -1;
}

/**
 * RFC 4291 §2.2 text: eight groups of 1–4 hex digits, at most one `::` standing for one or more
 * zero groups, optionally ending in a dotted quad. Zones (`%eth0`) are refused: nothing here
 * routes link-local traffic by interface.
 */
export function parseIpv6(text: string): bigint | undefined {
  if (typeof text !== 'string') return undefined;
  const n = text.length;
  // 39 = eight full groups; 45 = six groups and a dotted quad.
  if (n < 2 || n > 45) return undefined;
  const groups = [0, 0, 0, 0, 0, 0, 0, 0];
  let count = 0;
  let ellipsis = -1;
  let i = 0;
  if (text.charCodeAt(0) === 0x3a) {
    if (text.charCodeAt(1) !== 0x3a) return undefined;
    ellipsis = 0;
    i = 2;
  }
  while (i < n) {
    const start = i;
    let group = 0;
    for (let d = hexDigit(text.charCodeAt(i)); d >= 0 && i < n; d = hexDigit(text.charCodeAt(++i))) group = group * 16 + d;
    const digits = i - start;
    if (digits === 0) return undefined;
    if (i < n && text.charCodeAt(i) === 0x2e) {
      if (count > 6) return undefined;
      const v4 = parseIpv4(text.slice(start));
      if (v4 === undefined) return undefined;
      groups[count++] = v4 >>> 16;
      groups[count++] = v4 & 0xffff;
      i = n;
      break;
    }
    if (digits > 4 || count === 8) return undefined;
    groups[count++] = group;
    if (i === n) break;
    if (text.charCodeAt(i) !== 0x3a || ++i === n) return undefined;
    if (text.charCodeAt(i) === 0x3a) {
      if (ellipsis >= 0) return undefined;
      ellipsis = count;
      i++;
    }
  }
  if (ellipsis < 0) {
    if (count !== 8) return undefined;
  } else {
    // `::` stands for at least one group.
    if (count > 7) return undefined;
    const tail = count - ellipsis;
    for (let k = 0; k < tail; k++) groups[7 - k] = groups[count - 1 - k];
    for (let k = ellipsis; k < 8 - tail; k++) groups[k] = 0;
  }
  let value = 0n;
  for (const g of groups) value = (value << 16n) | BigInt(g);
  return value;
}

/**
 * RFC 5952 §4: lower case, no leading zeros, the longest run of two or more zero groups (the
 * first on a tie) as `::`. IPv4-mapped addresses stay in hex (`::ffff:a00:1`), not the §5 mixed
 * form: CIDR identity labels already in the store were written that way, and a different
 * spelling would be a different identity.
 */
export function formatIpv6(value: bigint): string {
  const groups = V6_WORD_SHIFTS.map((shift) => Number((value >> shift) & 0xffffn));
  let bestStart = -1;
  let bestLength = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLength) {
      bestStart = i;
      bestLength = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(':');
  return `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLength).join(':')}`;
}

/**
 * An IPv4 or IPv6 address. Immutable; compare with `equals`/`compare`, not `===`.
 *
 * @example
 * const a = Addr.parse('2001:DB8::1');
 * a.is6(); // true
 * a.toString(); // '2001:db8::1'
 * Addr.parse('10.0.0.1').toUint32(); // 0x0a000001
 */
export class Addr {
  readonly family: Family;
  /** IPv4 value; 0 for IPv6. */
  readonly #v4: number;
  /** IPv6 value; 0n for IPv4. */
  readonly #v6: bigint;

  private constructor(family: Family, v4: number, v6: bigint) {
    this.family = family;
    this.#v4 = v4;
    this.#v6 = v6;
  }

  /**
   * Strict parse: a dotted quad without leading zeros, or RFC 4291 IPv6 (`::`, embedded IPv4,
   * any case; no zone).
   * @throws NetParseError ERR_NET_INVALID_ADDRESS
   */
  static parse(text: string): Addr {
    const addr = Addr.tryParse(text);
    if (addr === undefined) {
      const reason = typeof text !== 'string' ? 'not a string' : text.includes(':') ? 'not an IPv6 address (RFC 4291 text form, no zone)' : 'not an IPv4 address (expected a.b.c.d, each 0–255, no leading zeros)';
      throw new NetParseError('ERR_NET_INVALID_ADDRESS', String(text), 'syntax', reason);
    }
    return addr;
  }

  /** `parse` without the throw, for callers that only ask "is this an address?". */
  static tryParse(text: string): Addr | undefined {
    if (typeof text !== 'string') return undefined;
    if (text.includes(':')) {
      const v6 = parseIpv6(text);
      return v6 === undefined ? undefined : new Addr(6, 0, v6);
    }
    const v4 = parseIpv4(text);
    return v4 === undefined ? undefined : new Addr(4, v4, 0n);
  }

  /** An IPv4 address from its unsigned 32-bit value. */
  static fromUint32(value: number): Addr {
    if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) throw new RangeError(`IPv4 value ${value} is outside 0–0xffffffff`);
    return new Addr(4, value, 0n);
  }

  /** An address of `family` from its value as an unsigned integer. */
  static fromBigInt(family: Family, value: bigint): Addr {
    const max = family === 4 ? 0xffffffffn : V6_MAX;
    if (value < 0n || value > max) throw new RangeError(`IPv${family} value ${value} is outside 0–${max}`);
    return family === 4 ? new Addr(4, Number(value), 0n) : new Addr(6, 0, value);
  }

  /** From network-order bytes: 4 for IPv4, 16 for IPv6. */
  static fromBytes(bytes: Uint8Array): Addr {
    if (bytes.length === 4) return new Addr(4, ((bytes[0] << 24) | (bytes[1] << 16) | (bytes[2] << 8) | bytes[3]) >>> 0, 0n);
    if (bytes.length !== 16) throw new RangeError(`an address is 4 or 16 bytes, not ${bytes.length}`);
    let value = 0n;
    for (const byte of bytes) value = (value << 8n) | BigInt(byte);
    return new Addr(6, 0, value);
  }

  /** 32 or 128. */
  get bitLength(): 32 | 128 {
    return this.family === 4 ? 32 : 128;
  }

  is4(): boolean {
    return this.family === 4;
  }

  is6(): boolean {
    return this.family === 6;
  }

  /** The IPv4 value as an unsigned number: the fast path for maps, masks and IPAM arithmetic. */
  toUint32(): number {
    if (this.family !== 4) throw new TypeError(`${this.toString()} is an IPv6 address; it has no 32-bit value`);
    return this.#v4;
  }

  toBigInt(): bigint {
    return this.family === 4 ? BigInt(this.#v4) : this.#v6;
  }

  /** Network byte order: 4 bytes for IPv4, 16 for IPv6. */
  toBytes(): Uint8Array {
    if (this.family === 4) {
      const v = this.#v4;
      return Uint8Array.of(v >>> 24, (v >>> 16) & 0xff, (v >>> 8) & 0xff, v & 0xff);
    }
    const out = new Uint8Array(16);
    let v = this.#v6;
    for (let i = 15; i >= 0; i--, v >>= 8n) out[i] = Number(v & 0xffn);
    return out;
  }

  /** Orders IPv4 before IPv6, then by value: -1, 0 or 1. */
  compare(other: Addr): -1 | 0 | 1 {
    if (this.family !== other.family) return this.family < other.family ? -1 : 1;
    if (this.family === 4) return this.#v4 < other.#v4 ? -1 : this.#v4 > other.#v4 ? 1 : 0;
    return this.#v6 < other.#v6 ? -1 : this.#v6 > other.#v6 ? 1 : 0;
  }

  equals(other: Addr): boolean {
    return this.family === other.family && this.#v4 === other.#v4 && this.#v6 === other.#v6;
  }

  /** The following address, or undefined after the last one of the family. */
  next(): Addr | undefined {
    if (this.family === 4) return this.#v4 === 0xffffffff ? undefined : new Addr(4, this.#v4 + 1, 0n);
    return this.#v6 === V6_MAX ? undefined : new Addr(6, 0, this.#v6 + 1n);
  }

  /** The preceding address, or undefined before the first one of the family. */
  prev(): Addr | undefined {
    if (this.family === 4) return this.#v4 === 0 ? undefined : new Addr(4, this.#v4 - 1, 0n);
    return this.#v6 === 0n ? undefined : new Addr(6, 0, this.#v6 - 1n);
  }

  /** Dotted quad, or RFC 5952 IPv6 (see formatIpv6). */
  toString(): string {
    return this.family === 4 ? formatIpv4(this.#v4) : formatIpv6(this.#v6);
  }

  toJSON(): string {
    return this.toString();
  }
}
