/**
 * CIDR parsing for policy peers, IPv4 and IPv6, on bigints. Accepts what Cilium accepts for
 * `toCIDR`/`cidr`/`except`: `a.b.c.d/n`, a bare address (= /32 or /128), IPv6 in any RFC 4291
 * form; host bits are cleared (Cilium masks them too). Output is canonical: dotted quad, or
 * RFC 5952 IPv6 (lower case, longest zero run as `::`). The parsing itself is src/net's.
 * @module
 */
import { Addr, ipv4Mask, ipv6Mask, NetParseError, Prefix } from '../net/index.ts';

export interface Cidr {
  family: 4 | 6;
  /** Network address (host bits zero). */
  network: bigint;
  prefixLength: number;
}

/** Parses an IPv4 or IPv6 address. */
export function parseIp(text: string): { family: 4 | 6; value: bigint } | undefined {
  const address = Addr.tryParse(text);
  return address === undefined ? undefined : { family: address.family, value: address.toBigInt() };
}

function maskOf(family: 4 | 6, prefixLength: number): bigint {
  return family === 4 ? BigInt(ipv4Mask(prefixLength)) : ipv6Mask(prefixLength);
}

/** Parses a CIDR or bare address; returns the reason on failure. */
export function parseCidr(text: string): Cidr | { error: string } {
  if (typeof text !== 'string' || text === '') return { error: 'must be a CIDR such as 10.0.0.0/8' };
  let prefix: Prefix;
  try {
    prefix = Prefix.parse(text, { hostBits: 'mask', bareAddress: true });
  } catch (error) {
    if (!NetParseError.is(error)) throw error;
    if (error.problem === 'length') return { error: `"${text}": ${error.reason}` };
    return { error: `"${text}" is not a CIDR (expected a.b.c.d/n or an IPv6 prefix such as 2001:db8::/32)` };
  }
  return { family: prefix.family, network: prefix.addr.toBigInt(), prefixLength: prefix.bits };
}

export function formatIp(family: 4 | 6, value: bigint): string {
  return Addr.fromBigInt(family, value).toString();
}

export function formatCidr(cidr: Cidr): string {
  return `${formatIp(cidr.family, cidr.network)}/${cidr.prefixLength}`;
}

/** Whether `inner` lies within `outer` (same family, at least as long a prefix). */
export function cidrContains(outer: Cidr, inner: Cidr): boolean {
  return (
    outer.family === inner.family &&
    inner.prefixLength >= outer.prefixLength &&
    (inner.network & maskOf(outer.family, outer.prefixLength)) === outer.network
  );
}

/** Whether the address `ip` (text) lies in the canonical CIDR text `cidr`. */
export function ipInCidr(ip: string, cidr: string): boolean {
  const address = parseIp(ip);
  const range = parseCidr(cidr);
  if (address === undefined || 'error' in range || address.family !== range.family) return false;
  return (address.value & maskOf(range.family, range.prefixLength)) === range.network;
}
