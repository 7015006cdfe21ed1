/**
 * IP prefixes (CIDRs) of either family as one immutable value type, after Go's net/netip
 * `Prefix`. Whether host bits are an error or are cleared is the caller's decision, made at
 * parse time: IPAM refuses them (a typo would hand out another range), policy and identities
 * clear them (as Cilium does).
 * @module
 */
import { Addr, ipv4Mask, ipv6Mask, type Family } from './addr.ts';
import { NetParseError, type NetParseProblem } from './errors.ts';

export interface PrefixParseOptions {
  /** `reject` (default): `10.0.0.1/8` is an error. `mask`: it is `10.0.0.0/8`. */
  hostBits?: 'reject' | 'mask';
  /** Accept a bare address as a single-address prefix (/32, /128). Default false. */
  bareAddress?: boolean;
  /** Accept only this family; the other one is an error with problem `family`. */
  family?: Family;
}

const LENGTH = /^(0|[1-9][0-9]{0,2})$/;

function invalid(text: string, problem: NetParseProblem, reason: string): NetParseError {
  return new NetParseError('ERR_NET_INVALID_PREFIX', text, problem, reason);
}

/**
 * An address and a prefix length. `Prefix.of` keeps host bits as given (like netip); `masked()`
 * clears them; `parse` decides by its options.
 *
 * @example
 * const p = Prefix.parse('10.0.0.0/8');
 * p.contains(Addr.parse('10.1.2.3')); // true
 * Prefix.parse('10.1.2.3/8', { hostBits: 'mask' }).toString(); // '10.0.0.0/8'
 * Prefix.parse('2001:db8::/32').last().toString(); // '2001:db8:ffff:ffff:ffff:ffff:ffff:ffff'
 */
export class Prefix {
  readonly addr: Addr;
  readonly bits: number;

  private constructor(addr: Addr, bits: number) {
    this.addr = addr;
    this.bits = bits;
  }

  /** @throws RangeError when `bits` is not an integer in 0..addr.bitLength */
  static of(addr: Addr, bits: number): Prefix {
    if (!Number.isInteger(bits) || bits < 0 || bits > addr.bitLength) throw new RangeError(`prefix length ${bits} is outside 0–${addr.bitLength} for IPv${addr.family}`);
    return new Prefix(addr, bits);
  }

  /**
   * Parses `a.b.c.d/n` or `x:y::/n` (and, with `bareAddress`, a plain address). The length has
   * no leading zeros and no sign.
   * @throws NetParseError ERR_NET_INVALID_PREFIX, with `problem` saying what was wrong
   */
  static parse(text: string, options: PrefixParseOptions = {}): Prefix {
    if (typeof text !== 'string') throw invalid(String(text), 'syntax', 'not a string');
    const slash = text.indexOf('/');
    if (slash === -1 && !options.bareAddress) throw invalid(text, 'missing-length', 'missing prefix length (expected address/n)');
    const addr = Addr.tryParse(slash === -1 ? text : text.slice(0, slash));
    if (addr === undefined) {
      const what = options.family === 6 || (options.family === undefined && text.includes(':')) ? 'IPv6' : 'IPv4';
      throw invalid(text, 'syntax', `not an ${what} address before the '/'`);
    }
    if (options.family !== undefined && addr.family !== options.family) throw invalid(text, 'family', `not an IPv${options.family} prefix`);
    if (slash === -1) return new Prefix(addr, addr.bitLength);
    const lengthText = text.slice(slash + 1);
    const bits = LENGTH.test(lengthText) ? Number(lengthText) : NaN;
    if (!(bits <= addr.bitLength)) throw invalid(text, 'length', `prefix length must be 0–${addr.bitLength}`);
    const prefix = new Prefix(addr, bits);
    if (options.hostBits === 'mask') return prefix.masked();
    if (!prefix.isMasked()) throw invalid(text, 'host-bits', `host bits are set (did you mean ${prefix.masked().toString()}?)`);
    return prefix;
  }

  /** `parse` without the throw, for callers that only ask "is this a prefix?". */
  static tryParse(text: string, options: PrefixParseOptions = {}): Prefix | undefined {
    try {
      return Prefix.parse(text, options);
    } catch (error) {
      if (NetParseError.is(error)) return undefined;
      throw error;
    }
  }

  get family(): Family {
    return this.addr.family;
  }

  /** Whether the host bits are all zero. */
  isMasked(): boolean {
    return this.first().equals(this.addr);
  }

  /** Whether the prefix holds exactly one address (/32, /128). */
  isSingleAddress(): boolean {
    return this.bits === this.addr.bitLength;
  }

  /** The same prefix with host bits cleared. */
  masked(): Prefix {
    const first = this.first();
    return first.equals(this.addr) ? this : new Prefix(first, this.bits);
  }

  /** The network address (host bits zero). */
  first(): Addr {
    if (this.addr.is4()) return Addr.fromUint32((this.addr.toUint32() & ipv4Mask(this.bits)) >>> 0);
    return Addr.fromBigInt(6, this.addr.toBigInt() & ipv6Mask(this.bits));
  }

  /** The last address (host bits one): the broadcast address for IPv4 prefixes up to /30. */
  last(): Addr {
    if (this.addr.is4()) return Addr.fromUint32((this.addr.toUint32() | ~ipv4Mask(this.bits)) >>> 0);
    return Addr.fromBigInt(6, this.addr.toBigInt() | (ipv6Mask(this.bits) ^ ((1n << 128n) - 1n)));
  }

  /** Number of addresses; exact for IPv6 too, since it is a power of two. */
  size(): number {
    return 2 ** (this.addr.bitLength - this.bits);
  }

  /**
   * Whether the address, or every address of the prefix, lies in this prefix. Another family is
   * never contained.
   */
  contains(other: Addr | Prefix): boolean {
    const addr = other instanceof Prefix ? other.addr : other;
    if (addr.family !== this.addr.family) return false;
    if (other instanceof Prefix && other.bits < this.bits) return false;
    if (addr.is4()) {
      const mask = ipv4Mask(this.bits);
      return ((addr.toUint32() & mask) >>> 0) === ((this.addr.toUint32() & mask) >>> 0);
    }
    const mask = ipv6Mask(this.bits);
    return (addr.toBigInt() & mask) === (this.addr.toBigInt() & mask);
  }

  /** Whether the two prefixes share an address (prefixes either nest or are disjoint). */
  overlaps(other: Prefix): boolean {
    return this.contains(other) || other.contains(this);
  }

  /** By address, then by length (shorter first). */
  compare(other: Prefix): -1 | 0 | 1 {
    const byAddr = this.addr.compare(other.addr);
    if (byAddr !== 0) return byAddr;
    return this.bits < other.bits ? -1 : this.bits > other.bits ? 1 : 0;
  }

  equals(other: Prefix): boolean {
    return this.bits === other.bits && this.addr.equals(other.addr);
  }

  /** `10.0.0.0/8`, `2001:db8::/32`. */
  toString(): string {
    return `${this.addr.toString()}/${this.bits}`;
  }

  toJSON(): string {
    return this.toString();
  }
}
