/**
 * IPv4 address and CIDR arithmetic on unsigned 32-bit numbers: parse, format, contains, nth
 * address, split into subnets. Pure functions, no I/O, so IPAM's pool logic can be tested
 * exhaustively. Addresses are `number`s in 0..2^32-1 (always normalised with `>>> 0`, because
 * JavaScript's bitwise operators return signed 32-bit results).
 * @module
 */
import { formatIpv4, ipv4Mask, NetParseError, parseIpv4 as parseIpv4Number, Prefix } from '../net/index.ts';
import { IpamError } from './errors.ts';

/** A parsed CIDR: `address` is the network address (host bits zero). */
export interface Ipv4Cidr {
  readonly address: number;
  readonly prefixLength: number;
}

function invalid(what: string, text: string, reason: string): IpamError {
  return new IpamError('ERR_IPAM_INVALID_CIDR', `ipam: ${what} '${text}': ${reason}`);
}

/** The address as a number, or undefined if `text` is not a dotted quad (no leading zeros). */
export function tryParseIpv4(text: string): number | undefined {
  return parseIpv4Number(text);
}

/**
 * @example
 * parseIpv4('10.244.1.2'); // 0x0af40102
 */
export function parseIpv4(text: string, what = 'address'): number {
  const value = parseIpv4Number(text);
  if (value === undefined) throw invalid(what, String(text), 'not an IPv4 address (expected a.b.c.d, each 0–255)');
  return value;
}

export { formatIpv4 };

/** The netmask of a prefix length as an unsigned number. */
export const prefixMask = ipv4Mask;

/** IPAM's wording of a parse failure; length and host-bit reasons are net's own. */
function cidrReason(text: unknown, error: NetParseError): string {
  if (typeof text !== 'string') return error.reason;
  switch (error.problem) {
    case 'syntax':
    case 'family':
      return 'not an IPv4 address (expected a.b.c.d/n, each octet 0–255)';
    case 'missing-length':
      return 'missing prefix length (expected a.b.c.d/n)';
    default:
      return error.reason;
  }
}

/**
 * Parses "a.b.c.d/n". Host bits must be zero: "10.244.1.0/16" is almost always a typo, and
 * silently masking it would hand out a different range than the one configured.
 * `what` names the value in the error ("cluster CIDR").
 *
 * @example
 * parseCidr('10.244.0.0/16'); // { address: 0x0af40000, prefixLength: 16 }
 * parseCidr('10.0.0.0/33', 'cluster CIDR'); // throws "ipam: cluster CIDR '10.0.0.0/33': prefix length must be 0–32"
 */
export function parseCidr(text: string, what = 'CIDR'): Ipv4Cidr {
  let prefix: Prefix;
  try {
    prefix = Prefix.parse(text, { family: 4 });
  } catch (error) {
    if (!NetParseError.is(error)) throw error;
    throw invalid(what, String(text), cidrReason(text, error));
  }
  return { address: prefix.addr.toUint32(), prefixLength: prefix.bits };
}

export function formatCidr(cidr: Ipv4Cidr): string {
  return `${formatIpv4(cidr.address)}/${cidr.prefixLength}`;
}

/** Number of addresses in the CIDR, network and broadcast included (up to 2^32). */
export function cidrSize(cidr: Ipv4Cidr): number {
  return 2 ** (32 - cidr.prefixLength);
}

/** Last address of the CIDR (the broadcast address for prefixes up to /30). */
export function lastAddress(cidr: Ipv4Cidr): number {
  return cidr.address + cidrSize(cidr) - 1;
}

export function contains(cidr: Ipv4Cidr, address: number): boolean {
  return ((address & prefixMask(cidr.prefixLength)) >>> 0) === cidr.address;
}

/** Whether `inner` lies entirely inside `outer`. */
export function containsCidr(outer: Ipv4Cidr, inner: Ipv4Cidr): boolean {
  return inner.prefixLength >= outer.prefixLength && contains(outer, inner.address);
}

/** Whether the two CIDRs share any address (CIDRs either nest or are disjoint). */
export function overlaps(a: Ipv4Cidr, b: Ipv4Cidr): boolean {
  return containsCidr(a, b) || containsCidr(b, a);
}

/**
 * The `n`th address of the CIDR, counting the network address as 0.
 * @example
 * formatIpv4(nthAddress(parseCidr('10.244.1.0/24'), 1)); // '10.244.1.1'
 */
export function nthAddress(cidr: Ipv4Cidr, n: number): number {
  if (!Number.isSafeInteger(n) || n < 0 || n >= cidrSize(cidr)) {
    throw new RangeError(`address index ${n} is outside ${formatCidr(cidr)} (0–${cidrSize(cidr) - 1})`);
  }
  return cidr.address + n;
}

/** Index of `address` in the CIDR (inverse of nthAddress); -1 if outside. */
export function offsetOf(cidr: Ipv4Cidr, address: number): number {
  return contains(cidr, address) ? address - cidr.address : -1;
}

function checkSplit(cidr: Ipv4Cidr, prefixLength: number): void {
  if (!Number.isInteger(prefixLength) || prefixLength < cidr.prefixLength || prefixLength > 32) {
    throw new RangeError(`cannot split ${formatCidr(cidr)} into /${prefixLength} subnets: prefix length must be ${cidr.prefixLength}–32`);
  }
}

/** How many /`prefixLength` subnets the CIDR splits into. */
export function subnetCount(cidr: Ipv4Cidr, prefixLength: number): number {
  checkSplit(cidr, prefixLength);
  return 2 ** (prefixLength - cidr.prefixLength);
}

/**
 * The `index`th /`prefixLength` subnet of the CIDR; computed, not enumerated, since a /8 split
 * into /28s has a million of them.
 * @example
 * formatCidr(nthSubnet(parseCidr('10.244.0.0/16'), 24, 1)); // '10.244.1.0/24'
 */
export function nthSubnet(cidr: Ipv4Cidr, prefixLength: number, index: number): Ipv4Cidr {
  const count = subnetCount(cidr, prefixLength);
  if (!Number.isSafeInteger(index) || index < 0 || index >= count) {
    throw new RangeError(`subnet index ${index} is outside 0–${count - 1} of ${formatCidr(cidr)} split into /${prefixLength}`);
  }
  return { address: cidr.address + index * 2 ** (32 - prefixLength), prefixLength };
}

/** Index of `subnet` among the /`subnet.prefixLength` subnets of `cidr`; -1 if not inside. */
export function subnetIndex(cidr: Ipv4Cidr, subnet: Ipv4Cidr): number {
  if (!containsCidr(cidr, subnet)) return -1;
  return (subnet.address - cidr.address) / 2 ** (32 - subnet.prefixLength);
}

/**
 * All /`prefixLength` subnets, lazily.
 * @example
 * [...split(parseCidr('10.0.0.0/23'), 24)].map(formatCidr); // ['10.0.0.0/24', '10.0.1.0/24']
 */
export function* split(cidr: Ipv4Cidr, prefixLength: number): Generator<Ipv4Cidr> {
  const count = subnetCount(cidr, prefixLength);
  for (let i = 0; i < count; i++) yield nthSubnet(cidr, prefixLength, i);
}
