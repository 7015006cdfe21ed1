/**
 * CIDR parsing for policy peers, IPv4 and IPv6, on src/net's Prefix. Accepts what Cilium accepts for
 * `toCIDR`/`cidr`/`except`: `a.b.c.d/n`, a bare address (= /32 or /128), IPv6 in any RFC 4291
 * form; host bits are cleared (Cilium masks them too). Output is canonical: dotted quad, or
 * RFC 5952 IPv6 (lower case, longest zero run as `::`). What is left here is the policy
 * wording of errors and the names the rest of src/policy imports.
 * @module
 */
import { Addr, NetParseError, Prefix } from '../net/index.ts';

/**
 * A policy CIDR: src/net's Prefix, always with host bits cleared. IPv4 prefixes answer
 * `contains` on 32-bit numbers, so the selector cache's checks allocate nothing.
 */
export type Cidr = Prefix;

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
  return prefix;
}

export function formatCidr(cidr: Cidr): string {
  return cidr.toString();
}

/** Whether `inner` lies within `outer` (same family, at least as long a prefix). */
export function cidrContains(outer: Cidr, inner: Cidr): boolean {
  return outer.contains(inner);
}

/** Whether the address `ip` (text) lies in the CIDR text `cidr`. */
export function ipInCidr(ip: string, cidr: string): boolean {
  const address = Addr.tryParse(ip);
  const range = parseCidr(cidr);
  return address !== undefined && !('error' in range) && range.contains(address);
}
