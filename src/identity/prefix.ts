/**
 * IPv4 and IPv6 prefixes for CIDR identities: parse, mask to the network address, and format both
 * the usual text form and Cilium's label-key form.
 *
 * Label keys cannot hold ':' (it separates a label's source from its key), so Cilium writes IPv6
 * prefixes with '-' instead, padding a leading or trailing '-' with '0'
 * (`2001:db8::/32` → `cidr:2001-db8--0/32`). Both forms parse.
 * @module
 */
import { IdentityError } from './errors.ts';

export interface Prefix {
  readonly family: 4 | 6;
  /** The network address (host bits cleared) as an unsigned integer. */
  readonly address: bigint;
  readonly length: number;
}

const OCTET = /^(0|[1-9][0-9]{0,2})$/;
const HEXTET = /^[0-9a-fA-F]{1,4}$/;

function invalid(text: string, reason: string): IdentityError {
  return new IdentityError('ERR_IDENTITY_INVALID_CIDR', `identity: invalid CIDR ${JSON.stringify(text)}: ${reason}`);
}

function parseIpv4(text: string): bigint | undefined {
  const parts = text.split('.');
  if (parts.length !== 4) return undefined;
  let value = 0n;
  for (const part of parts) {
    // Leading zeros are refused: inet_aton reads "010" as octal.
    if (!OCTET.test(part) || Number(part) > 255) return undefined;
    value = (value << 8n) | BigInt(part);
  }
  return value;
}

function parseIpv6(text: string): bigint | undefined {
  let head = text;
  let tailV4: bigint | undefined;
  const lastColon = text.lastIndexOf(':');
  if (lastColon >= 0 && text.includes('.', lastColon)) {
    tailV4 = parseIpv4(text.slice(lastColon + 1));
    if (tailV4 === undefined) return undefined;
    // Keep the separator so "::1.2.3.4" still splits into an empty group before the tail.
    head = text.slice(0, lastColon + 1) + '0:0';
  }
  const halves = head.split('::');
  if (halves.length > 2) return undefined;
  const split = (part: string): string[] | undefined => {
    if (part === '') return [];
    const groups = part.split(':');
    return groups.every((g) => HEXTET.test(g)) ? groups : undefined;
  };
  const left = split(halves[0]);
  const right = halves.length === 2 ? split(halves[1]) : [];
  if (left === undefined || right === undefined) return undefined;
  const count = left.length + right.length;
  if (halves.length === 1 ? count !== 8 : count > 7) return undefined;
  const groups = [...left, ...Array<string>(8 - count).fill('0'), ...right];
  let value = 0n;
  for (const g of groups) value = (value << 16n) | BigInt(parseInt(g, 16));
  if (tailV4 !== undefined) value = (value & ~0xffffffffn) | tailV4;
  return value;
}

/**
 * Parses `a.b.c.d/n` or an IPv6 `x::/n` (also Cilium's dashed label form). Host bits are
 * cleared, as Cilium does for CIDR identities: `10.1.2.3/8` is `10.0.0.0/8`.
 *
 * @example
 * formatPrefix(parsePrefix('10.1.2.3/8')); // '10.0.0.0/8'
 */
export function parsePrefix(text: string): Prefix {
  if (typeof text !== 'string') throw invalid(String(text), 'expected a string');
  const slash = text.indexOf('/');
  if (slash < 0) throw invalid(text, "missing '/<prefix length>'");
  let addressText = text.slice(0, slash);
  const lengthText = text.slice(slash + 1);
  if (!/^(0|[1-9][0-9]{0,2})$/.test(lengthText)) throw invalid(text, `prefix length '${lengthText}' is not a number`);
  const length = Number(lengthText);
  if (!addressText.includes(':') && !addressText.includes('.') && addressText.includes('-')) addressText = addressText.replaceAll('-', ':');
  const family: 4 | 6 = addressText.includes(':') ? 6 : 4;
  const address = family === 4 ? parseIpv4(addressText) : parseIpv6(addressText);
  if (address === undefined) throw invalid(text, `'${addressText}' is not an IPv${family} address`);
  const bits = family === 4 ? 32 : 128;
  if (length > bits) throw invalid(text, `prefix length ${length} exceeds ${bits} for IPv${family}`);
  const hostBits = BigInt(bits - length);
  return { family, address: (address >> hostBits) << hostBits, length };
}

function formatAddress(prefix: Prefix): string {
  if (prefix.family === 4) {
    const a = Number(prefix.address);
    return [a >>> 24, (a >>> 16) & 255, (a >>> 8) & 255, a & 255].join('.');
  }
  const groups: number[] = [];
  for (let i = 7; i >= 0; i--) groups.push(Number((prefix.address >> BigInt(i * 16)) & 0xffffn));
  // RFC 5952: compress the longest (leftmost on ties) run of two or more zero groups.
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

/** `10.0.0.0/8`, `2001:db8::/32`. */
export function formatPrefix(prefix: Prefix): string {
  return `${formatAddress(prefix)}/${prefix.length}`;
}

/**
 * The prefix as a label key: IPv4 unchanged, IPv6 with ':' → '-' and a '0' where a '-' would
 * start or end the address.
 *
 * @example
 * prefixLabelKey(parsePrefix('2001:db8::/32')); // '2001-db8--0/32'
 */
export function prefixLabelKey(prefix: Prefix): string {
  if (prefix.family === 4) return formatPrefix(prefix);
  let address = formatAddress(prefix).replaceAll(':', '-');
  if (address.startsWith('-')) address = `0${address}`;
  if (address.endsWith('-')) address = `${address}0`;
  return `${address}/${prefix.length}`;
}
