/**
 * CIDR parsing for policy peers, IPv4 and IPv6, on bigints. Accepts what Cilium accepts for
 * `toCIDR`/`cidr`/`except`: `a.b.c.d/n`, a bare address (= /32 or /128), IPv6 in any RFC 4291
 * form; host bits are cleared (Cilium masks them too). Output is canonical: dotted quad, or
 * RFC 5952 IPv6 (lower case, longest zero run as `::`).
 * @module
 */

export interface Cidr {
  family: 4 | 6;
  /** Network address (host bits zero). */
  network: bigint;
  prefixLength: number;
}

const OCTET = /^(0|[1-9][0-9]{0,2})$/;
const HEXTET = /^[0-9a-fA-F]{1,4}$/;

function parseIpv4(text: string): bigint | undefined {
  const parts = text.split('.');
  if (parts.length !== 4) return undefined;
  let value = 0n;
  for (const part of parts) {
    if (!OCTET.test(part)) return undefined;
    const octet = Number(part);
    if (octet > 255) return undefined;
    value = (value << 8n) | BigInt(octet);
  }
  return value;
}

function parseHextets(text: string): number[] | undefined {
  if (text === '') return [];
  const groups = text.split(':');
  const out: number[] = [];
  for (let i = 0; i < groups.length; i++) {
    const group = groups[i];
    if (i === groups.length - 1 && group.includes('.')) {
      const v4 = parseIpv4(group);
      if (v4 === undefined) return undefined;
      out.push(Number(v4 >> 16n), Number(v4 & 0xffffn));
    } else {
      if (!HEXTET.test(group)) return undefined;
      out.push(parseInt(group, 16));
    }
  }
  return out;
}

function parseIpv6(text: string): bigint | undefined {
  if (text.includes('%')) return undefined;
  const halves = text.split('::');
  let groups: number[];
  if (halves.length === 1) {
    const all = parseHextets(text);
    if (all === undefined || all.length !== 8) return undefined;
    groups = all;
  } else if (halves.length === 2) {
    const head = parseHextets(halves[0]);
    const tail = parseHextets(halves[1]);
    // An embedded dotted quad may only end the address.
    if (head === undefined || tail === undefined || halves[0].includes('.')) return undefined;
    if (head.length + tail.length > 7) return undefined;
    groups = [...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail];
  } else {
    return undefined;
  }
  let value = 0n;
  for (const g of groups) value = (value << 16n) | BigInt(g);
  return value;
}

/** Parses an IPv4 or IPv6 address. */
export function parseIp(text: string): { family: 4 | 6; value: bigint } | undefined {
  if (typeof text !== 'string') return undefined;
  if (text.includes(':')) {
    const value = parseIpv6(text);
    return value === undefined ? undefined : { family: 6, value };
  }
  const value = parseIpv4(text);
  return value === undefined ? undefined : { family: 4, value };
}

function bitsOf(family: 4 | 6): number {
  return family === 4 ? 32 : 128;
}

function maskOf(family: 4 | 6, prefixLength: number): bigint {
  const bits = bitsOf(family);
  const all = (1n << BigInt(bits)) - 1n;
  return (all >> BigInt(bits - prefixLength)) << BigInt(bits - prefixLength);
}

/** Parses a CIDR or bare address; returns the reason on failure. */
export function parseCidr(text: string): Cidr | { error: string } {
  if (typeof text !== 'string' || text === '') return { error: 'must be a CIDR such as 10.0.0.0/8' };
  const slash = text.indexOf('/');
  const addressText = slash === -1 ? text : text.slice(0, slash);
  const address = parseIp(addressText);
  if (address === undefined) {
    return { error: `"${text}" is not a CIDR (expected a.b.c.d/n or an IPv6 prefix such as 2001:db8::/32)` };
  }
  const bits = bitsOf(address.family);
  let prefixLength = bits;
  if (slash !== -1) {
    const lengthText = text.slice(slash + 1);
    prefixLength = /^(0|[1-9][0-9]{0,2})$/.test(lengthText) ? Number(lengthText) : NaN;
    if (!(prefixLength >= 0 && prefixLength <= bits)) {
      return { error: `"${text}": prefix length must be 0–${bits}` };
    }
  }
  return { family: address.family, network: address.value & maskOf(address.family, prefixLength), prefixLength };
}

export function formatIp(family: 4 | 6, value: bigint): string {
  if (family === 4) {
    return [24n, 16n, 8n, 0n].map((shift) => String((value >> shift) & 0xffn)).join('.');
  }
  const groups: number[] = [];
  for (let i = 7; i >= 0; i--) groups.push(Number((value >> BigInt(i * 16)) & 0xffffn));
  // RFC 5952: compress the longest run (the first on a tie) of two or more zero groups.
  let bestStart = -1;
  let bestLength = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLength && j - i >= 2) {
      bestStart = i;
      bestLength = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart === -1) return hex.join(':');
  return `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLength).join(':')}`;
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
