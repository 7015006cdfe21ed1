/**
 * rtnetlink messages as bytes: the uapi constants this module uses (linux/netlink.h, rtnetlink.h,
 * if_link.h, if_addr.h, neighbour.h, veth.h, lwtunnel.h, pkt_sched.h, pkt_cls.h), netlink attributes, and the IPv4/IPv6
 * and MAC address forms. Host byte order is little-endian on every machine this runs on (x86-64,
 * arm64), so native-endian fields are written LE; the few network-order fields say so.
 * @module
 */
import { Addr } from '../../net/index.ts';

export const AF_UNSPEC = 0;
export const AF_INET = 2;
export const AF_INET6 = 10;

export const NLMSG_HDRLEN = 16;
export const NLMSG_ERROR = 2;
export const NLMSG_DONE = 3;
export const NLM_F_REQUEST = 0x1;
export const NLM_F_MULTI = 0x2;
export const NLM_F_ACK = 0x4;
export const NLM_F_DUMP = 0x300;
export const NLM_F_REPLACE = 0x100;
export const NLM_F_EXCL = 0x200;
export const NLM_F_CREATE = 0x400;
/** On an NLMSG_ERROR: extended-ack attributes follow the echoed header. */
export const NLM_F_ACK_TLVS = 0x200;
export const NLMSGERR_ATTR_MSG = 1;

export const RTM_NEWLINK = 16;
export const RTM_DELLINK = 17;
export const RTM_GETLINK = 18;
export const RTM_NEWADDR = 20;
export const RTM_DELADDR = 21;
export const RTM_GETADDR = 22;
export const RTM_NEWROUTE = 24;
export const RTM_DELROUTE = 25;
export const RTM_GETROUTE = 26;
export const RTM_NEWNEIGH = 28;

export const RTM_NEWQDISC = 36;
export const RTM_DELQDISC = 37;
export const RTM_GETQDISC = 38;
export const RTM_NEWTFILTER = 44;
export const RTM_DELTFILTER = 45;
export const RTM_GETTFILTER = 46;

export const RTMGRP_IPV4_IFADDR = 0x10;
export const RTMGRP_IPV6_IFADDR = 0x100;

/** struct ifinfomsg */
export const IFINFOMSG_LEN = 16;
export const IFF_UP = 0x1;
export const IFF_NOARP = 0x80;
export const IFLA_ADDRESS = 1;
export const IFLA_IFNAME = 3;
export const IFLA_MTU = 4;
/** The interface's alias (ifalias): free text, up to 255 bytes. Not taken at creation: set it after. */
export const IFLA_IFALIAS = 20;
/** The interface's group (u32, 0 = default): taken at creation, in the same request. */
export const IFLA_GROUP = 27;
export const IFLA_LINKINFO = 18;
export const IFLA_NET_NS_FD = 28;
export const IFLA_INFO_KIND = 1;
export const IFLA_INFO_DATA = 2;
export const VETH_INFO_PEER = 1;
export const IFLA_VXLAN_LEARNING = 7;
export const IFLA_VXLAN_PORT = 15;
export const IFLA_VXLAN_COLLECT_METADATA = 25;

/** struct ifaddrmsg */
export const IFADDRMSG_LEN = 8;
export const IFA_ADDRESS = 1;
export const IFA_LOCAL = 2;
export const IFA_LABEL = 3;

/** struct rtmsg */
export const RTMSG_LEN = 12;
export const RTA_DST = 1;
export const RTA_OIF = 4;
export const RTA_GATEWAY = 5;
export const RTA_PREFSRC = 7;
export const RTA_METRICS = 8;
export const RTA_TABLE = 15;
export const RTA_ENCAP_TYPE = 21;
export const RTA_ENCAP = 22;
export const RTAX_MTU = 2;
export const RT_TABLE_MAIN = 254;
export const RTN_UNICAST = 1;
export const RTN_LOCAL = 2;
export const RTM_NEWRULE = 32;
export const RTM_DELRULE = 33;
export const FRA_PRIORITY = 6;
export const FRA_FWMARK = 10;
export const FRA_TABLE = 15;
export const FRA_FWMASK = 16;
export const FR_ACT_TO_TBL = 1;

/** struct fib_rule_hdr (12 bytes): family, dst/src lengths, tos, table, two reserved, action, flags. */
export function fibRuleHdr(fields: { family: number; table: number; action: number }): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt8(fields.family, 0);
  b.writeUInt8(fields.table > 255 ? 0 : fields.table, 4);
  b.writeUInt8(fields.action, 7);
  return b;
}
export const RTPROT_BOOT = 3;
export const LWTUNNEL_ENCAP_IP = 2;
export const LWTUNNEL_IP_ID = 1;
export const LWTUNNEL_IP_DST = 2;
export const LWTUNNEL_IP_TTL = 4;

/** struct ndmsg */
export const NDMSG_LEN = 12;
export const NDA_DST = 1;
export const NDA_LLADDR = 2;
export const NUD_PERMANENT = 0x80;

/** struct tcmsg */
export const TCMSG_LEN = 20;
/** tcm_ifindex of a filter request that names a shared block (tcm_parent) instead of a device. */
export const TCM_IFINDEX_MAGIC_BLOCK = 0xffffffff;
/** The clsact qdisc's parent and handle (TC_H_CLSACT, TC_H_MAKE(TC_H_CLSACT, 0)). */
export const TC_H_CLSACT = 0xfffffff1;
export const TC_H_CLSACT_HANDLE = 0xffff0000;
export const TCA_KIND = 1;
export const TCA_OPTIONS = 2;
export const TCA_CHAIN = 11;
export const TCA_INGRESS_BLOCK = 13;
export const TCA_EGRESS_BLOCK = 14;
export const TCA_BPF_FD = 6;
export const TCA_BPF_NAME = 7;
export const TCA_BPF_FLAGS = 8;
export const TCA_BPF_TAG = 10;
export const TCA_BPF_ID = 11;
/** cls_bpf: the program's return value is the action (TC_ACT_*), no separate action list. */
export const TCA_BPF_FLAG_ACT_DIRECT = 1;
/** htons(ETH_P_ALL), as tcm_info's low 16 bits hold it. */
export const ETH_P_ALL_BE = 0x0300;

/** Route scopes (rtm_scope, ifa_scope), by the names iproute2 uses. */
export const Scope = { universe: 0, site: 200, link: 253, host: 254, nowhere: 255 } as const;
export type ScopeName = keyof typeof Scope;

export function scopeName(value: number): ScopeName | number {
  const found = (Object.keys(Scope) as ScopeName[]).find((name) => Scope[name] === value);
  return found ?? value;
}

const NLA_TYPE_MASK = 0x3fff;
const align4 = (n: number): number => (n + 3) & ~3;

/** One netlink attribute, padded to 4 bytes. */
export function attr(type: number, payload: Buffer): Buffer {
  const length = 4 + payload.length;
  const out = Buffer.alloc(align4(length));
  out.writeUInt16LE(length, 0);
  out.writeUInt16LE(type, 2);
  payload.copy(out, 4);
  return out;
}

export const attrU8 = (type: number, value: number): Buffer => attr(type, Buffer.from([value]));
export function attrU16(type: number, value: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(value);
  return attr(type, b);
}
export function attrBe16(type: number, value: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(value);
  return attr(type, b);
}
export function attrU32(type: number, value: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(value >>> 0);
  return attr(type, b);
}
export function attrBe64(type: number, value: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(value);
  return attr(type, b);
}
export const attrString = (type: number, value: string): Buffer => attr(type, Buffer.from(`${value}\0`));
export const nested = (type: number, children: readonly Buffer[]): Buffer => attr(type, Buffer.concat(children));

/** A request: header, the fixed struct, its attributes. The length is filled in here. */
export function message(type: number, flags: number, seq: number, fixed: Buffer, attrs: readonly Buffer[] = []): Buffer {
  const body = Buffer.concat([fixed, ...attrs]);
  const out = Buffer.alloc(NLMSG_HDRLEN + align4(body.length));
  out.writeUInt32LE(NLMSG_HDRLEN + body.length, 0);
  out.writeUInt16LE(type, 4);
  out.writeUInt16LE(flags, 6);
  out.writeUInt32LE(seq, 8);
  out.writeUInt32LE(0, 12);
  body.copy(out, NLMSG_HDRLEN);
  return out;
}

export function ifinfomsg(fields: { family?: number; index?: number; flags?: number; change?: number } = {}): Buffer {
  const b = Buffer.alloc(IFINFOMSG_LEN);
  b.writeUInt8(fields.family ?? AF_UNSPEC, 0);
  b.writeInt32LE(fields.index ?? 0, 4);
  b.writeUInt32LE(fields.flags ?? 0, 8);
  b.writeUInt32LE(fields.change ?? 0, 12);
  return b;
}

export function ifaddrmsg(fields: { family: number; prefixlen: number; scope?: number; index: number }): Buffer {
  const b = Buffer.alloc(IFADDRMSG_LEN);
  b.writeUInt8(fields.family, 0);
  b.writeUInt8(fields.prefixlen, 1);
  b.writeUInt8(fields.scope ?? 0, 3);
  b.writeUInt32LE(fields.index, 4);
  return b;
}

export function rtmsg(fields: { family: number; dstLen: number; table?: number; protocol?: number; scope?: number; type?: number }): Buffer {
  const b = Buffer.alloc(RTMSG_LEN);
  b.writeUInt8(fields.family, 0);
  b.writeUInt8(fields.dstLen, 1);
  b.writeUInt8(fields.table ?? RT_TABLE_MAIN, 4);
  b.writeUInt8(fields.protocol ?? 0, 5);
  b.writeUInt8(fields.scope ?? 0, 6);
  b.writeUInt8(fields.type ?? 0, 7);
  return b;
}

export function ndmsg(fields: { family: number; index: number; state: number }): Buffer {
  const b = Buffer.alloc(NDMSG_LEN);
  b.writeUInt8(fields.family, 0);
  b.writeInt32LE(fields.index, 4);
  b.writeUInt16LE(fields.state, 8);
  return b;
}

export function tcmsg(fields: { ifindex: number; handle?: number; parent?: number; info?: number }): Buffer {
  const b = Buffer.alloc(TCMSG_LEN);
  b.writeUInt8(AF_UNSPEC, 0);
  b.writeUInt32LE(fields.ifindex >>> 0, 4);
  b.writeUInt32LE((fields.handle ?? 0) >>> 0, 8);
  b.writeUInt32LE((fields.parent ?? 0) >>> 0, 12);
  b.writeUInt32LE((fields.info ?? 0) >>> 0, 16);
  return b;
}

export interface RawMessage {
  type: number;
  flags: number;
  seq: number;
  /** Everything after the header. */
  payload: Buffer;
}

/** The messages in what recv() returned (one or several datagrams back to back). */
export function parseMessages(data: Buffer): RawMessage[] {
  const messages: RawMessage[] = [];
  let offset = 0;
  while (offset + NLMSG_HDRLEN <= data.length) {
    const length = data.readUInt32LE(offset);
    if (length < NLMSG_HDRLEN || offset + length > data.length) break;
    messages.push({
      type: data.readUInt16LE(offset + 4),
      flags: data.readUInt16LE(offset + 6),
      seq: data.readUInt32LE(offset + 8),
      payload: data.subarray(offset + NLMSG_HDRLEN, offset + length),
    });
    offset += align4(length);
  }
  return messages;
}

/** The attributes in `data` by type (nested and byte-order flags dropped); the last of a repeated type wins. */
export function parseAttrs(data: Buffer): Map<number, Buffer> {
  const attrs = new Map<number, Buffer>();
  let offset = 0;
  while (offset + 4 <= data.length) {
    const length = data.readUInt16LE(offset);
    if (length < 4 || offset + length > data.length) break;
    attrs.set(data.readUInt16LE(offset + 2) & NLA_TYPE_MASK, data.subarray(offset + 4, offset + length));
    offset += align4(length);
  }
  return attrs;
}

/** A NUL-terminated string attribute. */
export function attrText(value: Buffer | undefined): string | undefined {
  if (!value) return undefined;
  const end = value.indexOf(0);
  return value.toString('utf8', 0, end < 0 ? value.length : end);
}

export type Family = 4 | 6;

function addr(address: string): Addr {
  const ip = Addr.tryParse(address);
  if (!ip) throw new TypeError(`${JSON.stringify(address)} is not an IP address`);
  return ip;
}

export function familyOf(address: string): Family {
  return addr(address).family;
}

export const afOf = (family: Family): number => (family === 4 ? AF_INET : AF_INET6);
export const familyOfAf = (af: number): Family | undefined => (af === AF_INET ? 4 : af === AF_INET6 ? 6 : undefined);

/** An address in network byte order (4 or 16 bytes). */
export function ipBytes(address: string): Buffer {
  return Buffer.from(addr(address).toBytes());
}

/** The text form of a 4- or 16-byte address, IPv6 as RFC 5952 has it. */
export function ipText(bytes: Buffer): string {
  return Addr.fromBytes(bytes).toString();
}

/** "A.B.C.D/len" (or an IPv6 prefix; no length means a host) as address, length and family. */
export function parsePrefix(prefix: string): { address: string; length: number; family: Family } {
  const [address, length, extra] = prefix.split('/');
  const family = familyOf(address ?? '');
  const max = family === 4 ? 32 : 128;
  const bits = length === undefined ? max : Number(length);
  if (extra !== undefined || !Number.isInteger(bits) || bits < 0 || bits > max || (length !== undefined && !/^\d+$/.test(length))) {
    throw new TypeError(`${JSON.stringify(prefix)} is not an IP prefix`);
  }
  return { address, length: bits, family };
}

export function macBytes(mac: string): Buffer {
  if (!/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(mac)) throw new TypeError(`${JSON.stringify(mac)} is not a MAC address`);
  return Buffer.from(mac.split(':').map((octet) => parseInt(octet, 16)));
}

export const macText = (bytes: Buffer): string => [...bytes].map((b) => b.toString(16).padStart(2, '0')).join(':');
