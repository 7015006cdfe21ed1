/**
 * IPv4 and IPv6 addresses and prefixes, parsed once and strictly, for the whole control plane:
 * `Addr` and `Prefix` (immutable values after Go's net/netip) and, for hot paths that must not
 * allocate, the numeric IPv4 codec (`parseIpv4`, `formatIpv4`, `ipv4Mask`). Nothing else in
 * src/ parses address text. (src/ebpf keeps its own byte codec: it imports nothing from here.)
 *
 * @example
 * const pods = Prefix.parse('10.244.0.0/16');
 * pods.contains(Addr.parse('10.244.3.7')); // true
 * Addr.parse('2001:0DB8::0:1').toString(); // '2001:db8::1'
 * @module
 */
export { Addr, formatIpv4, formatIpv6, ipv4Mask, ipv6Mask, parseIpv4, parseIpv6, type Family } from './addr.ts';
export { Prefix, type PrefixParseOptions } from './prefix.ts';
export { NetParseError, type NetErrorCode, type NetParseProblem } from './errors.ts';
