/**
 * Links, addresses, routes, neighbours and sysctls of one network namespace, spoken over
 * rtnetlink from this process: no `ip` child process, and the kernel's refusals arrive as errnos
 * (NetlinkError), never as text to match. Requests run on libuv's thread pool (the kernel does
 * their work inside sendmsg, and some of it waits for RCU grace periods), one at a time per
 * socket, in the order they were made.
 * @module
 */
import { closeSync, openSync } from 'node:fs';
import {
  afOf,
  AF_UNSPEC,
  attr,
  attrBe16,
  attrBe64,
  attrString,
  attrText,
  attrU8,
  attrU16,
  attrU32,
  type Family,
  familyOf,
  familyOfAf,
  IFA_ADDRESS,
  IFA_LABEL,
  IFA_LOCAL,
  ifaddrmsg,
  IFF_NOARP,
  IFF_UP,
  ifinfomsg,
  IFLA_ADDRESS,
  IFLA_GROUP,
  IFLA_IFALIAS,
  IFLA_IFNAME,
  IFLA_INFO_DATA,
  IFLA_INFO_KIND,
  IFLA_LINKINFO,
  IFLA_MTU,
  IFLA_NET_NS_FD,
  IFLA_VXLAN_COLLECT_METADATA,
  IFLA_VXLAN_LEARNING,
  IFLA_VXLAN_PORT,
  ipBytes,
  ipText,
  LWTUNNEL_ENCAP_IP,
  LWTUNNEL_IP_DST,
  LWTUNNEL_IP_ID,
  LWTUNNEL_IP_TTL,
  macBytes,
  macText,
  message,
  NDA_DST,
  NDA_LLADDR,
  ndmsg,
  nested,
  NLM_F_ACK,
  NLM_F_ACK_TLVS,
  NLM_F_CREATE,
  NLM_F_DUMP,
  NLM_F_EXCL,
  NLM_F_REPLACE,
  NLM_F_REQUEST,
  NLMSG_DONE,
  NLMSG_ERROR,
  NLMSG_HDRLEN,
  NLMSGERR_ATTR_MSG,
  NUD_PERMANENT,
  parseAttrs,
  parseMessages,
  parsePrefix,
  type RawMessage,
  RT_TABLE_MAIN,
  RTA_DST,
  RTA_ENCAP,
  RTA_ENCAP_TYPE,
  RTA_GATEWAY,
  RTA_METRICS,
  RTA_OIF,
  RTA_PREFSRC,
  RTA_TABLE,
  RTAX_MTU,
  RTM_DELADDR,
  RTM_DELLINK,
  RTM_DELROUTE,
  RTM_GETADDR,
  RTM_GETLINK,
  RTM_GETROUTE,
  RTM_NEWADDR,
  RTM_NEWLINK,
  RTM_NEWNEIGH,
  RTM_NEWROUTE,
  rtmsg,
  RTN_UNICAST,
  RTN_LOCAL,
  RTM_NEWRULE,
  RTM_DELRULE,
  FRA_PRIORITY,
  FRA_FWMARK,
  FRA_TABLE,
  FRA_FWMASK,
  FR_ACT_TO_TBL,
  fibRuleHdr,
  RTPROT_BOOT,
  Scope,
  type ScopeName,
  scopeName,
  VETH_INFO_PEER,
  ETH_P_ALL_BE,
  RTM_DELQDISC,
  RTM_DELTFILTER,
  RTM_GETQDISC,
  RTM_GETTFILTER,
  RTM_NEWQDISC,
  RTM_NEWTFILTER,
  TC_H_CLSACT,
  TC_H_CLSACT_HANDLE,
  TCA_BPF_FD,
  TCA_BPF_FLAG_ACT_DIRECT,
  TCA_BPF_FLAGS,
  TCA_BPF_ID,
  TCA_BPF_NAME,
  TCA_BPF_TAG,
  TCA_EGRESS_BLOCK,
  TCA_INGRESS_BLOCK,
  TCA_KIND,
  TCA_OPTIONS,
  TCM_IFINDEX_MAGIC_BLOCK,
  tcmsg,
} from './codec.ts';
import { errnoOf, errnoOfCode, NetlinkError } from './errors.ts';
import { rtnetlink } from './native.ts';

/** A link by name or ifindex. */
export type LinkRef = string | number;

export interface Link {
  ifindex: number;
  name: string;
  /** "aa:bb:cc:dd:ee:ff"; empty for links without one (lo has all zeros). */
  mac: string;
  mtu: number;
  up: boolean;
  noarp: boolean;
  /** IFLA_INFO_KIND: "veth", "vxlan", …; undefined for devices without one (lo, physical NICs). */
  kind: string | undefined;
  /** IFLA_IFALIAS: free text the creator left on the link, e.g. whose it is. */
  alias: string | undefined;
  /** IFLA_GROUP: the link's group, 0 by default. */
  group: number;
  /** For vxlan devices. */
  vxlan?: { external: boolean; port: number | undefined };
}

export interface VethSpec {
  name: string;
  peerName: string;
  /** Namespace file the peer is created in (e.g. /run/netns/pod1); default this socket's namespace. */
  peerNetns?: string;
  mtu?: number;
  peerMtu?: number;
  /**
   * The `name` end's group (IFLA_GROUP), set in the same request: a link is never without it, so
   * a group can mark whose links are (the kernel ignores an alias at creation).
   */
  group?: number;
}

export interface VxlanSpec {
  name: string;
  /** Collect metadata (external) mode: the tunnel key comes from the packet's metadata. */
  external: boolean;
  /** Destination UDP port. */
  port: number;
  mtu?: number;
}

export interface LinkChanges {
  mtu?: number;
  up?: boolean;
  noarp?: boolean;
  /** IFLA_IFALIAS; '' removes it. */
  alias?: string;
  /** A new name (IFLA_IFNAME): the link must be named by its index then, and be down (else EBUSY). */
  name?: string;
  /** IFLA_GROUP. */
  group?: number;
  /**
   * Moves the link into the network namespace of this file (IFLA_NET_NS_FD), named `name` there
   * when given: one request, so the link is never in the new namespace under its old name.
   */
  netns?: string;
}

export interface Address {
  family: Family;
  address: string;
  prefixlen: number;
  ifindex: number;
  /** IFA_LABEL (IPv4 only): the device name, or an alias such as eth0:1. */
  label: string | undefined;
  scope: ScopeName | number;
}

export interface AddressSpec {
  /** "A.B.C.D/len" or an IPv6 prefix; without a length, a host address (/32, /128). */
  address: string;
  dev: LinkRef;
  scope?: ScopeName;
}

export interface RouteEncap {
  /** Tunnel id (the VNI for VXLAN). */
  id: number | bigint;
  /** Outer destination. */
  dst: string;
  ttl?: number;
}

export interface RouteSpec {
  /** "A.B.C.D/len", an IPv6 prefix, or "default" (with `family`, default 4). */
  dst: string;
  family?: Family;
  gateway?: string;
  dev?: LinkRef;
  /** Default as iproute2: link without a gateway, universe with one. */
  scope?: ScopeName;
  prefsrc?: string;
  mtu?: number;
  /** rtm_protocol; default 3 (boot), as iproute2. */
  protocol?: number;
  /** Default the main table. */
  table?: number;
  /** Lightweight-tunnel metadata (LWTUNNEL_ENCAP_IP), for collect-metadata tunnel devices. */
  encap?: RouteEncap;
  /** Default unicast; local: deliver to this host whatever the destination (scope host). */
  type?: 'unicast' | 'local';
}

/** `ip rule add fwmark MARK/MASK lookup TABLE pref PRIORITY` (IPv4 unless `family`). */
export interface FwmarkRuleSpec {
  priority: number;
  mark: number;
  mask: number;
  table: number;
  family?: Family;
}

export interface Route {
  family: Family;
  /** Always with its length: "0.0.0.0/0" for the default route. */
  dst: string;
  gateway: string | undefined;
  oif: number | undefined;
  scope: ScopeName | number;
  prefsrc: string | undefined;
  mtu: number | undefined;
  protocol: number;
  table: number;
  encap: { id: bigint; dst: string | undefined; ttl: number | undefined } | undefined;
}

export interface NeighbourSpec {
  dst: string;
  lladdr: string;
  dev: LinkRef;
}

/** A clsact qdisc: which shared filter blocks its ingress and egress hooks run (undefined: its own). */
export interface Clsact {
  ifindex: number;
  ingressBlock: number | undefined;
  egressBlock: number | undefined;
}

/** A direct-action cls_bpf filter on a shared block. */
export interface BpfFilterSpec {
  block: number;
  /** The filter's priority (lower runs first) and handle: together they name it in its block. */
  priority: number;
  handle: number;
  /** A loaded SCHED_CLS program; the filter holds its own reference once created. */
  programFd: number;
  /** Shown by `tc filter show` (TCA_BPF_NAME). */
  name: string;
}

export interface BpfFilter {
  block: number;
  priority: number;
  handle: number;
  programId: number | undefined;
  name: string | undefined;
  /** The program's tag (hex). */
  tag: string | undefined;
  directAction: boolean;
}

export interface NetlinkOptions {
  /** Namespace file to configure (e.g. /run/netns/pod1); default this process's namespace. */
  netns?: string;
}

function fwmarkRuleAttrs(spec: FwmarkRuleSpec): Buffer[] {
  return [attrU32(FRA_PRIORITY, spec.priority), attrU32(FRA_FWMARK, spec.mark), attrU32(FRA_FWMASK, spec.mask), attrU32(FRA_TABLE, spec.table)];
}

/**
 * One rtnetlink socket in one network namespace.
 *
 * @example
 * using nl = Netlink.open({ netns: '/run/netns/pod1' });
 * await nl.setLink('lo', { up: true });
 * await nl.addAddress({ address: '10.0.0.5/32', dev: 'eth0' });
 * await nl.replaceRoute({ dst: 'default', gateway: '10.0.0.1', dev: 'eth0' });
 */
export class Netlink {
  readonly netns: string | undefined;
  #fd: number;
  #seq = 1;
  #queue: Promise<unknown> = Promise.resolve();
  #closed = false;

  private constructor(netns: string | undefined, fd: number) {
    this.netns = netns;
    this.#fd = fd;
  }

  static open(options: NetlinkOptions = {}): Netlink {
    return new Netlink(options.netns, openSocket(options.netns, 0));
  }

  /** Closes the socket once the requests already made have finished. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    void this.#queue.finally(() => rtnetlink().close(this.#fd));
  }

  [Symbol.dispose](): void {
    this.close();
  }

  #where(): string {
    return this.netns ? ` in ${this.netns}` : '';
  }

  /**
   * Sends one request and returns the replies before its terminal message (a dump's entries, a
   * get's answer);
   * a negative NLMSG_ERROR becomes a NetlinkError for `operation`.
   */
  #request(operation: string, type: number, flags: number, fixed: Buffer, attrs: readonly Buffer[] = []): Promise<RawMessage[]> {
    const run = async (): Promise<RawMessage[]> => {
      if (this.#closed) throw new NetlinkError(`${operation}: the netlink socket is closed`, errnoOf('EBADF'));
      const seq = this.#seq++;
      // Every request but a dump asks for an acknowledgement: that is what ends its reply.
      const ack = (flags & NLM_F_DUMP) === NLM_F_DUMP ? 0 : NLM_F_ACK;
      const reply = await rtnetlink().transact(this.#fd, message(type, NLM_F_REQUEST | ack | flags, seq, fixed, attrs), 1);
      if (typeof reply === 'number') {
        // Replies may still arrive for this request and would answer the next one: start afresh.
        rtnetlink().close(this.#fd);
        this.#fd = openSocket(this.netns, 0);
        throw new NetlinkError(operation, -reply);
      }
      const entries: RawMessage[] = [];
      for (const msg of parseMessages(reply)) {
        if (msg.seq !== seq) continue;
        if (msg.type === NLMSG_DONE) break;
        if (msg.type === NLMSG_ERROR) {
          const error = msg.payload.readInt32LE(0);
          if (error < 0) throw new NetlinkError(operation, -error, { detail: extendedAck(msg) });
          break;
        }
        entries.push(msg);
      }
      return entries;
    };
    const result = this.#queue.then(run, run);
    this.#queue = result.catch(() => undefined);
    return result;
  }

  // ---- links ----

  /** A link by name or index, or undefined when there is none. */
  async link(ref: LinkRef): Promise<Link | undefined> {
    try {
      const [reply] = await this.#request(`getting link ${ref}${this.#where()}`, RTM_GETLINK, 0, ...linkSelector(ref));
      return reply ? parseLink(reply.payload) : undefined;
    } catch (error) {
      if (NetlinkError.is(error, 'ENODEV')) return undefined;
      throw error;
    }
  }

  async links(): Promise<Link[]> {
    const replies = await this.#request(`listing links${this.#where()}`, RTM_GETLINK, NLM_F_DUMP, ifinfomsg());
    return replies.filter((r) => r.type === RTM_NEWLINK).map((r) => parseLink(r.payload));
  }

  /** Creates a veth pair (EEXIST when either name is taken: then nothing was created). Returns the `name` end. */
  async createVeth(spec: VethSpec): Promise<Link> {
    const operation = `creating veth ${spec.name} (peer ${spec.peerName}${spec.peerNetns ? ` in ${spec.peerNetns}` : ''})${this.#where()}`;
    let netnsFd: number | undefined;
    try {
      if (spec.peerNetns) netnsFd = openNamespace(spec.peerNetns, operation);
      const peer = [ifinfomsg(), attrString(IFLA_IFNAME, spec.peerName)];
      if (spec.peerMtu !== undefined) peer.push(attrU32(IFLA_MTU, spec.peerMtu));
      if (netnsFd !== undefined) peer.push(attrU32(IFLA_NET_NS_FD, netnsFd));
      const attrs = [
        attrString(IFLA_IFNAME, spec.name),
        nested(IFLA_LINKINFO, [attrString(IFLA_INFO_KIND, 'veth'), nested(IFLA_INFO_DATA, [attr(VETH_INFO_PEER, Buffer.concat(peer))])]),
      ];
      if (spec.mtu !== undefined) attrs.push(attrU32(IFLA_MTU, spec.mtu));
      if (spec.group !== undefined) attrs.push(attrU32(IFLA_GROUP, spec.group));
      await this.#request(operation, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, ifinfomsg(), attrs);
    } finally {
      if (netnsFd !== undefined) closeSync(netnsFd);
    }
    return this.#created(spec.name, operation);
  }

  /** Creates a VXLAN device (EEXIST when the name is taken). */
  async createVxlan(spec: VxlanSpec): Promise<Link> {
    const operation = `creating vxlan ${spec.name} (${spec.external ? 'external, ' : ''}dstport ${spec.port})${this.#where()}`;
    const data = [attrBe16(IFLA_VXLAN_PORT, spec.port)];
    // iproute2's `external` also turns learning off: with metadata there is no FDB to learn into.
    if (spec.external) data.push(attrU8(IFLA_VXLAN_COLLECT_METADATA, 1), attrU8(IFLA_VXLAN_LEARNING, 0));
    const attrs = [attrString(IFLA_IFNAME, spec.name), nested(IFLA_LINKINFO, [attrString(IFLA_INFO_KIND, 'vxlan'), nested(IFLA_INFO_DATA, data)])];
    if (spec.mtu !== undefined) attrs.push(attrU32(IFLA_MTU, spec.mtu));
    await this.#request(operation, RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, ifinfomsg(), attrs);
    return this.#created(spec.name, operation);
  }

  async #created(name: string, operation: string): Promise<Link> {
    const link = await this.link(name);
    // Someone deleted it in between: report it as the kernel would have.
    if (!link) throw new NetlinkError(`${operation}: gone right after creation`, errnoOf('ENODEV'));
    return link;
  }

  /** Changes a link's MTU, flags, name, group, alias or namespace (ENODEV when it does not exist). */
  async setLink(ref: LinkRef, changes: LinkChanges): Promise<void> {
    const described = Object.entries(changes)
      .filter(([, v]) => v !== undefined)
      .map(([k, v]) => `${k} ${String(v)}`)
      .join(', ');
    let flags = 0;
    let change = 0;
    if (changes.up !== undefined) {
      change |= IFF_UP;
      if (changes.up) flags |= IFF_UP;
    }
    if (changes.noarp !== undefined) {
      change |= IFF_NOARP;
      if (changes.noarp) flags |= IFF_NOARP;
    }
    const operation = `setting link ${ref} ${described}${this.#where()}`;
    // By name, the one IFLA_IFNAME would say which link and what to call it at once.
    if (changes.name !== undefined && typeof ref !== 'number') throw new TypeError(`${operation}: renaming takes the link's index, not its name`);
    const [fixed, attrs] = linkSelector(ref, { flags, change });
    if (changes.name !== undefined) attrs.push(attrString(IFLA_IFNAME, changes.name));
    if (changes.mtu !== undefined) attrs.push(attrU32(IFLA_MTU, changes.mtu));
    if (changes.alias !== undefined) attrs.push(attrString(IFLA_IFALIAS, changes.alias));
    if (changes.group !== undefined) attrs.push(attrU32(IFLA_GROUP, changes.group));
    let netnsFd: number | undefined;
    try {
      if (changes.netns !== undefined) {
        netnsFd = openNamespace(changes.netns, operation);
        attrs.push(attrU32(IFLA_NET_NS_FD, netnsFd));
      }
      await this.#request(operation, RTM_NEWLINK, 0, fixed, attrs);
    } finally {
      if (netnsFd !== undefined) closeSync(netnsFd);
    }
  }

  /** Deletes a link (a veth takes its peer along); false when there was none. */
  async deleteLink(ref: LinkRef): Promise<boolean> {
    try {
      await this.#request(`deleting link ${ref}${this.#where()}`, RTM_DELLINK, 0, ...linkSelector(ref));
      return true;
    } catch (error) {
      if (NetlinkError.is(error, 'ENODEV')) return false;
      throw error;
    }
  }

  async #ifindex(ref: LinkRef, operation: string): Promise<number> {
    if (typeof ref === 'number') return ref;
    const link = await this.link(ref);
    if (!link) throw new NetlinkError(`${operation}: no link ${ref}`, errnoOf('ENODEV'));
    return link.ifindex;
  }

  // ---- addresses ----

  async addresses(filter: { family?: Family; dev?: LinkRef } = {}): Promise<Address[]> {
    const operation = `listing addresses${this.#where()}`;
    const index = filter.dev === undefined ? undefined : await this.#ifindex(filter.dev, operation);
    const af = filter.family ? afOf(filter.family) : AF_UNSPEC;
    const replies = await this.#request(operation, RTM_GETADDR, NLM_F_DUMP, ifaddrmsg({ family: af, prefixlen: 0, index: 0 }));
    const addresses: Address[] = [];
    for (const reply of replies) {
      const address = reply.type === RTM_NEWADDR ? parseAddress(reply.payload) : undefined;
      if (address && (index === undefined || address.ifindex === index)) addresses.push(address);
    }
    return addresses;
  }

  /** Adds an address (EEXIST when the link already has it). */
  addAddress(spec: AddressSpec): Promise<void> {
    return this.#changeAddress('adding', spec, RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL);
  }

  /** Adds an address, or updates it when the link already has it. */
  replaceAddress(spec: AddressSpec): Promise<void> {
    return this.#changeAddress('replacing', spec, RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE);
  }

  /** Removes an address; false when the link did not have it. */
  async deleteAddress(spec: AddressSpec): Promise<boolean> {
    try {
      await this.#changeAddress('deleting', spec, RTM_DELADDR, 0);
      return true;
    } catch (error) {
      if (NetlinkError.is(error, 'EADDRNOTAVAIL')) return false;
      throw error;
    }
  }

  async #changeAddress(verb: string, spec: AddressSpec, type: number, flags: number): Promise<void> {
    const operation = `${verb} address ${spec.address} on ${spec.dev}${this.#where()}`;
    const { address, length, family } = parsePrefix(spec.address);
    const index = await this.#ifindex(spec.dev, operation);
    const bytes = ipBytes(address);
    const fixed = ifaddrmsg({ family: afOf(family), prefixlen: length, scope: Scope[spec.scope ?? 'universe'], index });
    await this.#request(operation, type, flags, fixed, [attr(IFA_LOCAL, bytes), attr(IFA_ADDRESS, bytes)]);
  }

  // ---- routes ----

  /** The routes of one table (default main), optionally only those of one protocol. */
  async routes(filter: { family?: Family; protocol?: number; table?: number } = {}): Promise<Route[]> {
    const family = filter.family ?? 4;
    const table = filter.table ?? RT_TABLE_MAIN;
    const replies = await this.#request(`listing routes${this.#where()}`, RTM_GETROUTE, NLM_F_DUMP, rtmsg({ family: afOf(family), dstLen: 0, table: 0 }));
    const routes: Route[] = [];
    for (const reply of replies) {
      if (reply.type !== RTM_NEWROUTE) continue;
      const route = parseRoute(reply.payload);
      if (route && route.table === table && (filter.protocol === undefined || route.protocol === filter.protocol)) routes.push(route);
    }
    return routes;
  }

  /** Adds a route, or replaces the one with the same destination (and table, tos, priority). */
  replaceRoute(spec: RouteSpec): Promise<void> {
    return this.#changeRoute('replacing', spec, NLM_F_CREATE | NLM_F_REPLACE);
  }

  /** Adds a route (EEXIST when the table already has one to that destination). */
  addRoute(spec: RouteSpec): Promise<void> {
    return this.#changeRoute('adding', spec, NLM_F_CREATE | NLM_F_EXCL);
  }

  async #changeRoute(verb: string, spec: RouteSpec, flags: number): Promise<void> {
    const operation = `${verb} route ${describeRoute(spec)}${this.#where()}`;
    const { family, address, length } = routeDestination(spec);
    const table = spec.table ?? RT_TABLE_MAIN;
    const fixed = rtmsg({
      family: afOf(family),
      dstLen: length,
      table: table > 255 ? 0 : table,
      protocol: spec.protocol ?? RTPROT_BOOT,
      scope: spec.type === 'local' ? Scope.host : Scope[spec.scope ?? (spec.gateway ? 'universe' : 'link')],
      type: spec.type === 'local' ? RTN_LOCAL : RTN_UNICAST,
    });
    const attrs: Buffer[] = [];
    if (length > 0) attrs.push(attr(RTA_DST, ipBytes(address)));
    if (table > 255) attrs.push(attrU32(RTA_TABLE, table));
    if (spec.gateway) attrs.push(attr(RTA_GATEWAY, ipBytes(spec.gateway)));
    if (spec.dev !== undefined) attrs.push(attrU32(RTA_OIF, await this.#ifindex(spec.dev, operation)));
    if (spec.prefsrc) attrs.push(attr(RTA_PREFSRC, ipBytes(spec.prefsrc)));
    if (spec.mtu !== undefined) attrs.push(nested(RTA_METRICS, [attrU32(RTAX_MTU, spec.mtu)]));
    if (spec.encap) {
      const encap = [attrBe64(LWTUNNEL_IP_ID, BigInt(spec.encap.id)), attr(LWTUNNEL_IP_DST, ipBytes(spec.encap.dst))];
      if (spec.encap.ttl !== undefined) encap.push(attrU8(LWTUNNEL_IP_TTL, spec.encap.ttl));
      attrs.push(attrU16(RTA_ENCAP_TYPE, LWTUNNEL_ENCAP_IP), nested(RTA_ENCAP, encap));
    }
    await this.#request(operation, RTM_NEWROUTE, flags, fixed, attrs);
  }

  /**
   * Deletes the route to `dst` (of `protocol` when given, which then must match); false when
   * there was none.
   */
  async deleteRoute(spec: Pick<RouteSpec, 'dst' | 'family' | 'protocol' | 'table'>): Promise<boolean> {
    const operation = `deleting route ${describeRoute(spec)}${this.#where()}`;
    const { family, address, length } = routeDestination(spec);
    const table = spec.table ?? RT_TABLE_MAIN;
    const fixed = rtmsg({ family: afOf(family), dstLen: length, table: table > 255 ? 0 : table, protocol: spec.protocol ?? 0, scope: Scope.nowhere });
    const attrs: Buffer[] = [];
    if (length > 0) attrs.push(attr(RTA_DST, ipBytes(address)));
    if (table > 255) attrs.push(attrU32(RTA_TABLE, table));
    try {
      await this.#request(operation, RTM_DELROUTE, 0, fixed, attrs);
      return true;
    } catch (error) {
      if (NetlinkError.is(error, 'ESRCH')) return false;
      throw error;
    }
  }

  // ---- policy routing rules ----

  /** Adds a fwmark rule unless the same rule is there already. */
  async ensureFwmarkRule(spec: FwmarkRuleSpec): Promise<void> {
    const operation = `adding rule fwmark 0x${spec.mark.toString(16)}/0x${spec.mask.toString(16)} lookup ${spec.table} pref ${spec.priority}${this.#where()}`;
    try {
      await this.#request(operation, RTM_NEWRULE, NLM_F_CREATE | NLM_F_EXCL, fibRuleHdr({ family: afOf(spec.family ?? 4), table: spec.table, action: FR_ACT_TO_TBL }), fwmarkRuleAttrs(spec));
    } catch (error) {
      if (!NetlinkError.is(error, 'EEXIST')) throw error;
    }
  }

  /** Deletes a fwmark rule; false when there was none. */
  async deleteFwmarkRule(spec: FwmarkRuleSpec): Promise<boolean> {
    const operation = `deleting rule fwmark 0x${spec.mark.toString(16)}/0x${spec.mask.toString(16)} lookup ${spec.table}${this.#where()}`;
    try {
      await this.#request(operation, RTM_DELRULE, 0, fibRuleHdr({ family: afOf(spec.family ?? 4), table: spec.table, action: FR_ACT_TO_TBL }), fwmarkRuleAttrs(spec));
      return true;
    } catch (error) {
      if (NetlinkError.is(error, 'ENOENT') || NetlinkError.is(error, 'ESRCH')) return false;
      throw error;
    }
  }

  // ---- neighbours ----

  /** A permanent neighbour entry, created or replaced. */
  async replaceNeighbour(spec: NeighbourSpec): Promise<void> {
    const operation = `replacing neighbour ${spec.dst} lladdr ${spec.lladdr} on ${spec.dev}${this.#where()}`;
    const index = await this.#ifindex(spec.dev, operation);
    const fixed = ndmsg({ family: afOf(familyOf(spec.dst)), index, state: NUD_PERMANENT });
    await this.#request(operation, RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, fixed, [
      attr(NDA_DST, ipBytes(spec.dst)),
      attr(NDA_LLADDR, macBytes(spec.lladdr)),
    ]);
  }

  // ---- tc: clsact qdiscs and cls_bpf filters on shared blocks ----

  /**
   * Adds a clsact qdisc to a link, its hooks bound to shared filter blocks (EEXIST when the link
   * has one already). Binding a block whose filters exist already attaches them: no filter per
   * link, and no RCU grace period but an expedited one per hook (mini_qdisc_pair_swap).
   */
  async addClsact(dev: LinkRef, blocks: { ingressBlock?: number; egressBlock?: number } = {}): Promise<void> {
    const described = [blocks.ingressBlock && `ingress_block ${blocks.ingressBlock}`, blocks.egressBlock && `egress_block ${blocks.egressBlock}`].filter(Boolean).join(' ');
    const operation = `adding clsact qdisc ${described} on ${dev}${this.#where()}`;
    const ifindex = await this.#ifindex(dev, operation);
    const attrs = [attrString(TCA_KIND, 'clsact')];
    if (blocks.ingressBlock !== undefined) attrs.push(attrU32(TCA_INGRESS_BLOCK, blocks.ingressBlock));
    if (blocks.egressBlock !== undefined) attrs.push(attrU32(TCA_EGRESS_BLOCK, blocks.egressBlock));
    await this.#request(operation, RTM_NEWQDISC, NLM_F_CREATE | NLM_F_EXCL, tcmsg({ ifindex, handle: TC_H_CLSACT_HANDLE, parent: TC_H_CLSACT }), attrs);
  }

  /** Deletes a link's clsact qdisc (and so its bindings); false when it had none. */
  async deleteClsact(dev: LinkRef): Promise<boolean> {
    const operation = `deleting the clsact qdisc of ${dev}${this.#where()}`;
    const ifindex = await this.#ifindex(dev, operation);
    try {
      await this.#request(operation, RTM_DELQDISC, 0, tcmsg({ ifindex, handle: TC_H_CLSACT_HANDLE, parent: TC_H_CLSACT }));
      return true;
    } catch (error) {
      if (NetlinkError.is(error, 'ENOENT') || NetlinkError.is(error, 'EINVAL')) return false;
      throw error;
    }
  }

  /** Every clsact qdisc of this namespace, by link. */
  async clsacts(): Promise<Clsact[]> {
    const replies = await this.#request(`listing qdiscs${this.#where()}`, RTM_GETQDISC, NLM_F_DUMP, tcmsg({ ifindex: 0 }));
    const found: Clsact[] = [];
    for (const reply of replies) {
      if (reply.type !== RTM_NEWQDISC) continue;
      const attrs = parseAttrs(reply.payload.subarray(20));
      if (attrText(attrs.get(TCA_KIND)) !== 'clsact') continue;
      found.push({
        ifindex: reply.payload.readInt32LE(4),
        ingressBlock: attrs.get(TCA_INGRESS_BLOCK)?.readUInt32LE(0),
        egressBlock: attrs.get(TCA_EGRESS_BLOCK)?.readUInt32LE(0),
      });
    }
    return found;
  }

  /**
   * Creates a direct-action cls_bpf filter on a shared block, or swaps the program of the one with
   * the same priority and handle in place (every bound link runs the new one from the next packet).
   */
  async replaceBpfFilter(spec: BpfFilterSpec): Promise<void> {
    const operation = `replacing bpf filter ${spec.name} (prio ${spec.priority} handle ${spec.handle}) on block ${spec.block}${this.#where()}`;
    const fixed = tcmsg({ ifindex: TCM_IFINDEX_MAGIC_BLOCK, parent: spec.block, handle: spec.handle, info: ((spec.priority << 16) | ETH_P_ALL_BE) >>> 0 });
    const options = nested(TCA_OPTIONS, [attrU32(TCA_BPF_FD, spec.programFd), attrString(TCA_BPF_NAME, spec.name), attrU32(TCA_BPF_FLAGS, TCA_BPF_FLAG_ACT_DIRECT)]);
    await this.#request(operation, RTM_NEWTFILTER, NLM_F_CREATE | NLM_F_REPLACE, fixed, [attrString(TCA_KIND, 'bpf'), options]);
  }

  /** The cls_bpf filters of a shared block; none when no qdisc holds the block. */
  async bpfFilters(block: number): Promise<BpfFilter[]> {
    let replies: RawMessage[];
    try {
      replies = await this.#request(`listing the filters of block ${block}${this.#where()}`, RTM_GETTFILTER, NLM_F_DUMP, tcmsg({ ifindex: TCM_IFINDEX_MAGIC_BLOCK, parent: block }));
    } catch (error) {
      // A block exists only while a qdisc is bound to it.
      if (NetlinkError.is(error, 'EINVAL') || NetlinkError.is(error, 'ENOENT')) return [];
      throw error;
    }
    const filters: BpfFilter[] = [];
    for (const reply of replies) {
      if (reply.type !== RTM_NEWTFILTER) continue;
      const handle = reply.payload.readUInt32LE(8);
      const attrs = parseAttrs(reply.payload.subarray(20));
      // Each priority's classifier is listed once on its own (handle 0) before its filters.
      if (handle === 0 || attrText(attrs.get(TCA_KIND)) !== 'bpf') continue;
      const options = attrs.get(TCA_OPTIONS);
      const bpf = options ? parseAttrs(options) : new Map<number, Buffer>();
      filters.push({
        block,
        priority: reply.payload.readUInt32LE(16) >>> 16,
        handle,
        programId: bpf.get(TCA_BPF_ID)?.readUInt32LE(0),
        name: attrText(bpf.get(TCA_BPF_NAME)),
        tag: bpf.get(TCA_BPF_TAG)?.toString('hex'),
        directAction: ((bpf.get(TCA_BPF_FLAGS)?.readUInt32LE(0) ?? 0) & TCA_BPF_FLAG_ACT_DIRECT) !== 0,
      });
    }
    return filters;
  }

  /** Deletes a filter of a shared block; false when there was none. */
  async deleteBpfFilter(filter: Pick<BpfFilterSpec, 'block' | 'priority' | 'handle'>): Promise<boolean> {
    const operation = `deleting filter prio ${filter.priority} handle ${filter.handle} of block ${filter.block}${this.#where()}`;
    const fixed = tcmsg({ ifindex: TCM_IFINDEX_MAGIC_BLOCK, parent: filter.block, handle: filter.handle, info: ((filter.priority << 16) | ETH_P_ALL_BE) >>> 0 });
    try {
      await this.#request(operation, RTM_DELTFILTER, 0, fixed, [attrString(TCA_KIND, 'bpf')]);
      return true;
    } catch (error) {
      if (NetlinkError.is(error, 'ENOENT') || NetlinkError.is(error, 'EINVAL')) return false;
      throw error;
    }
  }

  // ---- sysctls ----

  /**
   * Writes a sysctl of this namespace, e.g. writeSysctl('net.ipv4.ip_forward', '1'), or by its
   * path segments when one may hold a dot (an interface name):
   * writeSysctl(['net', 'ipv6', 'conf', 'eth0.5', 'disable_ipv6'], '1'). Synchronous: one small /proc write.
   */
  writeSysctl(key: string | readonly string[], value: string): void {
    const segments = typeof key === 'string' ? key.split('.') : key;
    const name = segments.join('.');
    // No segment may climb out of /proc/sys or be empty: each is a name, not a path.
    if (segments.length === 0 || segments.some((s) => !/^[\w.-]+$/.test(s) || s === '.' || s === '..')) throw new TypeError(`${JSON.stringify(key)} is not a sysctl name`);
    const result = rtnetlink().sysctlWrite(this.netns ?? null, `/proc/sys/${segments.join('/')}`, value);
    if (result < 0) throw new NetlinkError(`writing sysctl ${name}=${value}${this.#where()}`, -result);
  }
}

/**
 * The cookie eBPF programs get from bpf_get_netns_cookie() for sockets of the network namespace
 * at `netns` (a namespace file); throws NetlinkError.
 */
export function netnsCookie(netns: string): bigint {
  const cookie = rtnetlink().netnsCookie(netns);
  if (typeof cookie === 'number') throw new NetlinkError(`reading the cookie of network namespace ${netns}`, -cookie);
  return cookie;
}

/** A socket in `netns` bound to `groups`; throws NetlinkError. */
export function openSocket(netns: string | undefined, groups: number): number {
  const fd = rtnetlink().open(netns ?? null, groups);
  if (fd < 0) throw new NetlinkError(`opening an rtnetlink socket${netns ? ` in ${netns}` : ''}`, -fd);
  return fd;
}

function openNamespace(path: string, operation: string): number {
  try {
    return openSync(path, 'r');
  } catch (error) {
    throw new NetlinkError(`${operation}: opening namespace ${path}`, errnoOfCode((error as NodeJS.ErrnoException).code), { cause: error });
  }
}

/** ifinfomsg and attributes that name a link: by index in the header, or by IFLA_IFNAME. */
function linkSelector(ref: LinkRef, flags: { flags?: number; change?: number } = {}): [Buffer, Buffer[]] {
  if (typeof ref === 'number') return [ifinfomsg({ index: ref, ...flags }), []];
  return [ifinfomsg(flags), [attrString(IFLA_IFNAME, ref)]];
}

function parseLink(payload: Buffer): Link {
  const attrs = parseAttrs(payload.subarray(16));
  const flags = payload.readUInt32LE(8);
  const info = attrs.get(IFLA_LINKINFO);
  const infoAttrs = info ? parseAttrs(info) : undefined;
  const kind = attrText(infoAttrs?.get(IFLA_INFO_KIND));
  const link: Link = {
    ifindex: payload.readInt32LE(4),
    name: attrText(attrs.get(IFLA_IFNAME)) ?? '',
    mac: attrs.has(IFLA_ADDRESS) ? macText(attrs.get(IFLA_ADDRESS)!) : '',
    mtu: attrs.get(IFLA_MTU)?.readUInt32LE(0) ?? 0,
    up: (flags & IFF_UP) !== 0,
    noarp: (flags & IFF_NOARP) !== 0,
    kind,
    alias: attrText(attrs.get(IFLA_IFALIAS)),
    group: attrs.get(IFLA_GROUP)?.readUInt32LE(0) ?? 0,
  };
  if (kind === 'vxlan') {
    const data = infoAttrs?.get(IFLA_INFO_DATA);
    const vxlan = data ? parseAttrs(data) : new Map<number, Buffer>();
    link.vxlan = { external: (vxlan.get(IFLA_VXLAN_COLLECT_METADATA)?.readUInt8(0) ?? 0) === 1, port: vxlan.get(IFLA_VXLAN_PORT)?.readUInt16BE(0) };
  }
  return link;
}

function parseAddress(payload: Buffer): Address | undefined {
  const family = familyOfAf(payload.readUInt8(0));
  if (!family) return undefined;
  const attrs = parseAttrs(payload.subarray(8));
  // IFA_LOCAL is the interface's own address; IFA_ADDRESS the peer's on point-to-point links.
  const bytes = attrs.get(IFA_LOCAL) ?? attrs.get(IFA_ADDRESS);
  if (!bytes) return undefined;
  return {
    family,
    address: ipText(bytes),
    prefixlen: payload.readUInt8(1),
    ifindex: payload.readUInt32LE(4),
    label: attrText(attrs.get(IFA_LABEL)),
    scope: scopeName(payload.readUInt8(3)),
  };
}

function parseRoute(payload: Buffer): Route | undefined {
  const family = familyOfAf(payload.readUInt8(0));
  if (!family) return undefined;
  const attrs = parseAttrs(payload.subarray(12));
  const dstLen = payload.readUInt8(1);
  const dst = attrs.get(RTA_DST);
  const metrics = attrs.get(RTA_METRICS);
  const encapType = attrs.get(RTA_ENCAP_TYPE)?.readUInt16LE(0);
  const encapAttrs = encapType === LWTUNNEL_ENCAP_IP && attrs.get(RTA_ENCAP) ? parseAttrs(attrs.get(RTA_ENCAP)!) : undefined;
  const ip = (b: Buffer | undefined) => (b ? ipText(b) : undefined);
  return {
    family,
    dst: `${dst ? ipText(dst) : family === 4 ? '0.0.0.0' : '::'}/${dstLen}`,
    gateway: ip(attrs.get(RTA_GATEWAY)),
    oif: attrs.get(RTA_OIF)?.readUInt32LE(0),
    scope: scopeName(payload.readUInt8(6)),
    prefsrc: ip(attrs.get(RTA_PREFSRC)),
    mtu: metrics ? parseAttrs(metrics).get(RTAX_MTU)?.readUInt32LE(0) : undefined,
    protocol: payload.readUInt8(5),
    table: attrs.get(RTA_TABLE)?.readUInt32LE(0) ?? payload.readUInt8(4),
    encap: encapAttrs
      ? {
          id: encapAttrs.get(LWTUNNEL_IP_ID)?.readBigUInt64BE(0) ?? 0n,
          dst: ip(encapAttrs.get(LWTUNNEL_IP_DST)),
          ttl: encapAttrs.get(LWTUNNEL_IP_TTL)?.readUInt8(0),
        }
      : undefined,
  };
}

function routeDestination(spec: Pick<RouteSpec, 'dst' | 'family'>): { family: Family; address: string; length: number } {
  if (spec.dst === 'default') {
    const family = spec.family ?? 4;
    return { family, address: family === 4 ? '0.0.0.0' : '::', length: 0 };
  }
  return parsePrefix(spec.dst);
}

function describeRoute(spec: Partial<RouteSpec>): string {
  const parts = [spec.dst ?? ''];
  if (spec.gateway) parts.push(`via ${spec.gateway}`);
  if (spec.encap) parts.push(`encap ip id ${spec.encap.id} dst ${spec.encap.dst}`);
  if (spec.dev !== undefined) parts.push(`dev ${spec.dev}`);
  if (spec.prefsrc) parts.push(`src ${spec.prefsrc}`);
  if (spec.mtu !== undefined) parts.push(`mtu ${spec.mtu}`);
  if (spec.protocol !== undefined) parts.push(`proto ${spec.protocol}`);
  return parts.join(' ');
}

/** The kernel's message in an NLMSG_ERROR's extended acknowledgement, if it gave one. */
function extendedAck(msg: RawMessage): string | undefined {
  if (!(msg.flags & NLM_F_ACK_TLVS)) return undefined;
  // int error, then the request's header (NETLINK_CAP_ACK: without its payload).
  return attrText(parseAttrs(msg.payload.subarray(4 + NLMSG_HDRLEN)).get(NLMSGERR_ATTR_MSG));
}
