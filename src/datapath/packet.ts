/**
 * Ethernet/IPv4/L4 headers as the datapath sees them: a tolerant decoder for the packet bytes
 * that events carry (which may be cut short anywhere), the Internet checksum, and a builder of
 * well-formed frames for BPF_PROG_TEST_RUN and benchmarks.
 * @module
 */
import { Addr } from '../net/index.ts';
import { TcpFlag } from './maps.ts';

export const ETH_HLEN = 14;
export const ETH_P_IP = 0x0800;
export const ETH_P_ARP = 0x0806;
export const IPPROTO_ICMP = 1;
export const IPPROTO_TCP = 6;
export const IPPROTO_UDP = 17;

export interface EthernetSummary {
  source: string;
  destination: string;
  type: number;
}

export interface Ipv4Summary {
  source: string;
  destination: string;
  protocol: number;
  ttl: number;
  /** tot_len from the header. */
  length: number;
  /** Whether the header checksum verifies; undefined when the header was not captured whole. */
  checksumValid: boolean | undefined;
  fragment: boolean;
}

export type L4Summary =
  | { protocol: 'TCP'; sourcePort: number; destinationPort: number; flags: number; flagNames: string[] }
  | { protocol: 'UDP'; sourcePort: number; destinationPort: number }
  | { protocol: 'ICMPv4'; type: number; code: number; id: number | undefined; sequence: number | undefined };

export interface PacketSummary {
  ethernet?: EthernetSummary;
  ipv4?: Ipv4Summary;
  l4?: L4Summary;
}

const HEX_BYTE = Array.from({ length: 256 }, (_, x) => x.toString(16).padStart(2, '0'));
// A table lookup per byte: flows name both MACs of every packet, and the array-map-join form
// was a tenth of the observer's time per flow.
const macString = (b: Uint8Array, at: number): string =>
  `${HEX_BYTE[b[at]]}:${HEX_BYTE[b[at + 1]]}:${HEX_BYTE[b[at + 2]]}:${HEX_BYTE[b[at + 3]]}:${HEX_BYTE[b[at + 4]]}:${HEX_BYTE[b[at + 5]]}`;
/** The dotted-quad of the IPv4 address at `at`. */
export const ipString = (b: Uint8Array, at: number): string => `${b[at]}.${b[at + 1]}.${b[at + 2]}.${b[at + 3]}`;
const be16At = (b: Uint8Array, at: number): number => (b[at] << 8) | b[at + 1];

const TCP_FLAG_NAMES = Object.entries(TcpFlag) as [string, number][];

/** Names of the set bits of a TCP flags byte, in Hubble's order (FIN first). */
export function tcpFlagNames(flags: number): string[] {
  return TCP_FLAG_NAMES.filter(([, bit]) => (flags & bit) !== 0).map(([name]) => name);
}

/** The 16-bit one's complement of the one's complement sum (RFC 1071); 0 over a valid header. */
export function internetChecksum(data: Uint8Array, initial = 0): number {
  let sum = initial;
  for (let i = 0; i + 1 < data.length; i += 2) sum += (data[i] << 8) | data[i + 1];
  if (data.length % 2 === 1) sum += data[data.length - 1] << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/**
 * Where the IPv4 header of the Ethernet frame in `data[start, end)` starts, or -1 when the frame
 * carries none whose fixed part was captured (another EtherType, cut short, not version 4).
 * The observer reads the addresses here without summarizing the rest of the packet.
 */
export function ipv4HeaderAt(data: Uint8Array, start = 0, end = data.length): number {
  if (end - start < ETH_HLEN + 20 || be16At(data, start + 12) !== ETH_P_IP) return -1;
  const ip = start + ETH_HLEN;
  return data[ip] >> 4 === 4 && (data[ip] & 0x0f) >= 5 ? ip : -1;
}

/** An IPv4 address at `at` (network order) as a number, e.g. 10.0.0.1 → 0x0a000001. */
export function ipv4At(data: Uint8Array, at: number): number {
  return ((data[at] << 24) | (data[at + 1] << 16) | (data[at + 2] << 8) | data[at + 3]) >>> 0;
}

/** Bytes of each L4 header a summary reads: TCP up to its flags, UDP its ports, ICMP type and code. */
const L4_HEADER_NEED: Readonly<Record<number, number>> = { [IPPROTO_TCP]: 14, [IPPROTO_UDP]: 4, [IPPROTO_ICMP]: 2 };

/**
 * Where the L4 header of the IPv4 packet whose header starts at `ip` (see ipv4HeaderAt) starts,
 * when summarizePacket reads one there: the IP header captured whole, the first fragment (later
 * ones carry no L4 header), a protocol it knows (TCP, UDP, ICMP) and enough of that header
 * captured; -1 otherwise. The metrics read ports and flags here without a summary.
 */
export function l4HeaderAt(data: Uint8Array, ip: number, end: number): number {
  const l4 = ip + (data[ip] & 0x0f) * 4;
  if (end < l4 || (be16At(data, ip + 6) & 0x1fff) !== 0) return -1;
  const need = L4_HEADER_NEED[data[ip + 9]];
  return need !== undefined && end - l4 >= need ? l4 : -1;
}

/**
 * Decodes whatever headers the frame in `data[start, end)` holds whole; a header cut short is
 * left out.
 */
export function summarizePacket(data: Uint8Array, start = 0, end = data.length): PacketSummary {
  const out: PacketSummary = {};
  if (end - start < ETH_HLEN) return out;
  out.ethernet = { destination: macString(data, start), source: macString(data, start + 6), type: be16At(data, start + 12) };
  const ip = ipv4HeaderAt(data, start, end);
  if (ip < 0) return out;
  const hdrlen = (data[ip] & 0x0f) * 4;
  const fragOff = be16At(data, ip + 6);
  const whole = end >= ip + hdrlen;
  out.ipv4 = {
    source: ipString(data, ip + 12),
    destination: ipString(data, ip + 16),
    protocol: data[ip + 9],
    ttl: data[ip + 8],
    length: be16At(data, ip + 2),
    checksumValid: whole ? internetChecksum(data.subarray(ip, ip + hdrlen)) === 0 : undefined,
    fragment: (fragOff & 0x3fff) !== 0,
  };
  const l4 = l4HeaderAt(data, ip, end);
  if (l4 < 0) return out;
  const left = end - l4;
  switch (out.ipv4.protocol) {
    case IPPROTO_TCP: {
      const flags = data[l4 + 13];
      out.l4 = { protocol: 'TCP', sourcePort: be16At(data, l4), destinationPort: be16At(data, l4 + 2), flags, flagNames: tcpFlagNames(flags) };
      break;
    }
    case IPPROTO_UDP:
      out.l4 = { protocol: 'UDP', sourcePort: be16At(data, l4), destinationPort: be16At(data, l4 + 2) };
      break;
    case IPPROTO_ICMP: {
      const type = data[l4];
      const echo = (type === 0 || type === 8) && left >= 8;
      out.l4 = {
        protocol: 'ICMPv4',
        type,
        code: data[l4 + 1],
        id: echo ? be16At(data, l4 + 4) : undefined,
        sequence: echo ? be16At(data, l4 + 6) : undefined,
      };
      break;
    }
  }
  return out;
}

export interface FrameSpec {
  srcMac?: string;
  dstMac?: string;
  src: string;
  dst: string;
  ttl?: number;
  id?: number;
  tcp?: { sport: number; dport: number; flags: number; seq?: number; ack?: number };
  udp?: { sport: number; dport: number };
  icmp?: { type: number; code?: number; id?: number; sequence?: number };
  payload?: Buffer;
}

function writeMac(buffer: Buffer, at: number, value: string): void {
  value.split(':').forEach((octet, i) => (buffer[at + i] = Number.parseInt(octet, 16)));
}

function writeIp(buffer: Buffer, at: number, value: string): void {
  // Addr.parse throws on anything but an address, where splitting on '.' wrote NaN as 0.
  buffer.writeUInt32BE(Addr.parse(value).toUint32(), at);
}

/** An Ethernet + IPv4 frame with valid IP and L4 checksums: exactly one of tcp, udp, icmp. */
export function buildIpv4Frame(spec: FrameSpec): Buffer {
  const payload = spec.payload ?? Buffer.alloc(0);
  let l4: Buffer;
  let protocol: number;
  if (spec.tcp) {
    protocol = IPPROTO_TCP;
    l4 = Buffer.alloc(20 + payload.length);
    l4.writeUInt16BE(spec.tcp.sport, 0);
    l4.writeUInt16BE(spec.tcp.dport, 2);
    l4.writeUInt32BE(spec.tcp.seq ?? 1, 4);
    l4.writeUInt32BE(spec.tcp.ack ?? 0, 8);
    l4[12] = 5 << 4;
    l4[13] = spec.tcp.flags;
    l4.writeUInt16BE(65535, 14);
    payload.copy(l4, 20);
  } else if (spec.udp) {
    protocol = IPPROTO_UDP;
    l4 = Buffer.alloc(8 + payload.length);
    l4.writeUInt16BE(spec.udp.sport, 0);
    l4.writeUInt16BE(spec.udp.dport, 2);
    l4.writeUInt16BE(l4.length, 4);
    payload.copy(l4, 8);
  } else if (spec.icmp) {
    protocol = IPPROTO_ICMP;
    l4 = Buffer.alloc(8 + payload.length);
    l4[0] = spec.icmp.type;
    l4[1] = spec.icmp.code ?? 0;
    l4.writeUInt16BE(spec.icmp.id ?? 0, 4);
    l4.writeUInt16BE(spec.icmp.sequence ?? 0, 6);
    payload.copy(l4, 8);
    l4.writeUInt16BE(internetChecksum(l4), 2);
  } else {
    throw new Error('buildIpv4Frame: give tcp, udp or icmp');
  }
  const frame = Buffer.alloc(ETH_HLEN + 20 + l4.length);
  writeMac(frame, 0, spec.dstMac ?? '02:00:00:00:00:02');
  writeMac(frame, 6, spec.srcMac ?? '02:00:00:00:00:01');
  frame.writeUInt16BE(ETH_P_IP, 12);
  const ip = ETH_HLEN;
  frame[ip] = 0x45;
  frame.writeUInt16BE(20 + l4.length, ip + 2);
  frame.writeUInt16BE(spec.id ?? 1, ip + 4);
  frame[ip + 8] = spec.ttl ?? 64;
  frame[ip + 9] = protocol;
  writeIp(frame, ip + 12, spec.src);
  writeIp(frame, ip + 16, spec.dst);
  frame.writeUInt16BE(internetChecksum(frame.subarray(ip, ip + 20)), ip + 10);
  if (protocol !== IPPROTO_ICMP) {
    // TCP and UDP checksums cover a pseudo header of addresses, protocol and L4 length.
    const pseudo = Buffer.alloc(12);
    frame.copy(pseudo, 0, ip + 12, ip + 20);
    pseudo[9] = protocol;
    pseudo.writeUInt16BE(l4.length, 10);
    const sum = internetChecksum(Buffer.concat([pseudo, l4]));
    l4.writeUInt16BE(protocol === IPPROTO_UDP && sum === 0 ? 0xffff : sum, protocol === IPPROTO_TCP ? 16 : 6);
  }
  l4.copy(frame, ip + 20);
  return frame;
}
