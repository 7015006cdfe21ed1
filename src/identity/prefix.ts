/**
 * IPv4 and IPv6 prefixes for CIDR identities: parse, mask to the network address, and format both
 * the usual text form and Cilium's label-key form.
 *
 * Label keys cannot hold ':' (it separates a label's source from its key), so Cilium writes IPv6
 * prefixes with '-' instead, padding a leading or trailing '-' with '0'
 * (`2001:db8::/32` → `cidr:2001-db8--0/32`). Both forms parse.
 * @module
 */
import { Addr, NetParseError, Prefix as NetPrefix } from '../net/index.ts';
import { IdentityError } from './errors.ts';

export interface Prefix {
  readonly family: 4 | 6;
  /** The network address (host bits cleared) as an unsigned integer. */
  readonly address: bigint;
  readonly length: number;
}

function invalid(text: string, reason: string): IdentityError {
  return new IdentityError('ERR_IDENTITY_INVALID_CIDR', `identity: invalid CIDR ${JSON.stringify(text)}: ${reason}`);
}

/** The identity module's wording for a bad length, which callers' messages have long carried. */
function lengthReason(lengthText: string, addressText: string): string {
  if (!/^(0|[1-9][0-9]{0,2})$/.test(lengthText)) return `prefix length '${lengthText}' is not a number`;
  const family = addressText.includes(':') ? 6 : 4;
  return `prefix length ${lengthText} exceeds ${family === 4 ? 32 : 128} for IPv${family}`;
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
  let addressText = slash < 0 ? text : text.slice(0, slash);
  if (!addressText.includes(':') && !addressText.includes('.') && addressText.includes('-')) addressText = addressText.replaceAll('-', ':');
  let prefix: NetPrefix;
  try {
    prefix = NetPrefix.parse(slash < 0 ? addressText : `${addressText}${text.slice(slash)}`, { hostBits: 'mask' });
  } catch (error) {
    if (!NetParseError.is(error)) throw error;
    throw invalid(text, error.problem === 'length' ? lengthReason(text.slice(slash + 1), addressText) : error.reason);
  }
  return { family: prefix.family, address: prefix.addr.toBigInt(), length: prefix.bits };
}

function formatAddress(prefix: Prefix): string {
  return Addr.fromBigInt(prefix.family, prefix.address).toString();
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
