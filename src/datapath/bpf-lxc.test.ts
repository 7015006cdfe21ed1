/**
 * Unit tests of bpf_lxc.o on the real kernel without any network: crafted frames through
 * BPF_PROG_TEST_RUN on dummy interfaces standing for the pods' host veths, then the verdict, the frame as the program left it, the conntrack map and
 * the events in the ring buffer. Needs root and `bash scripts/build-bpf.sh`.
 * @module
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { RingBuffer, inNetns, type BpfObject } from '../ebpf/index.ts';
import { pinDir } from '../ebpf/internal/testutils.ts';
import { DropReasonCode } from './drop-reasons.ts';
import { CtStatus, TracePoint, decodeEvent, type DatapathEvent, type DropEvent, type TraceEvent } from './events.ts';
import { LxcProgram, loadLxc, lxcMaps, type LxcMaps } from './lxc.ts';
import { CtDirection, CtFlag, ReservedIdentity, TcpFlag } from './maps.ts';
import { DEFAULT_MONITOR_AGGREGATION_FLAGS, MONITOR_AGGREGATION_LEVELS, writeMonitorConfig } from './monitor-config.ts';
import { ETH_HLEN, buildIpv4Frame, internetChecksum, type FrameSpec } from './packet.ts';
import { skbOnInterface, testRunInterfaces } from './testutils.ts';

const TC_ACT_OK = 0;
const TC_ACT_SHOT = 2;
const TC_ACT_REDIRECT = 7;

/** Their host veths are dummy interfaces of these indexes (testRunInterfaces). */
const CLIENT = { ip: '10.244.0.1', mac: '0a:00:00:00:01:01', nodeMac: 'fe:00:00:00:01:01', ifindex: 41, id: 11, identity: 1001 };
const SERVER = { ip: '10.244.0.2', mac: '0a:00:00:00:02:02', nodeMac: 'fe:00:00:00:02:02', ifindex: 42, id: 12, identity: 1002 };

interface Fixture {
  obj: BpfObject;
  maps: LxcMaps;
  /**
   * Runs a program on a frame; returns the verdict, the frame after it, and the events it sent.
   * `on` picks the host veth the frame is on: by default that of the endpoint whose address the
   * frame carries as source, as each pod's packets arrive on its own veth.
   */
  run(frame: Buffer, program?: string, on?: typeof CLIENT): { verdict: number; data: Buffer; events: DatapathEvent[] };
}

/** The node's one load of the programs, serving CLIENT and SERVER, each behind its own veth. */
function setup(t: TestContext): Fixture {
  const mapsDir = pinDir(t);
  const netns = testRunInterfaces(t, [CLIENT.ifindex, SERVER.ifindex]);
  const obj = loadLxc({ pinDir: mapsDir });
  const maps = lxcMaps(obj);
  const ring = new RingBuffer(maps.events, { lostCounter: maps.eventsLost });
  t.after(() => {
    ring.close();
    obj.close();
  });
  for (const ep of [CLIENT, SERVER]) {
    maps.lxc.update(
      { ip: ep.ip },
      { ifindex: ep.ifindex, lxc_id: ep.id, flags: 0, mac: ep.mac, node_mac: ep.nodeMac, sec_identity: ep.identity },
    );
    maps.lxcIfindex.update(ep.ifindex, { ip: ep.ip });
  }
  return {
    obj,
    maps,
    run(frame, program = LxcProgram.FROM_CONTAINER, on) {
      const fromServer = on
        ? on === SERVER
        : program === LxcProgram.FROM_CONTAINER && frame.length >= ETH_HLEN + 16 && frame.subarray(ETH_HLEN + 12, ETH_HLEN + 16).join('.') === SERVER.ip;
      const context = skbOnInterface((fromServer ? SERVER : CLIENT).ifindex);
      const result = inNetns(netns, () => obj.program(program).testRun({ data: frame, context }));
      const events: DatapathEvent[] = [];
      ring.consume((_view, offset, length, bytes) => void events.push(decodeEvent(bytes, offset, length)));
      assert.equal(ring.lost(), 0n);
      return { verdict: result.returnValue, data: Buffer.from(result.data), events };
    },
  };
}

function onlyTrace(events: DatapathEvent[]): TraceEvent {
  assert.equal(events.length, 1, JSON.stringify(events.map((e) => e.kind)));
  assert.equal(events[0].kind, 'trace');
  return events[0] as TraceEvent;
}

function onlyDrop(events: DatapathEvent[]): DropEvent {
  assert.equal(events.length, 1);
  assert.equal(events[0].kind, 'drop');
  return events[0] as DropEvent;
}

const tcp = (from: typeof CLIENT, to: typeof CLIENT, sport: number, dport: number, flags: number, extra: Partial<FrameSpec> = {}): Buffer =>
  buildIpv4Frame({ srcMac: from.mac, dstMac: from.nodeMac, src: from.ip, dst: to.ip, tcp: { sport, dport, flags }, ...extra });

test('a packet to a local endpoint is redirected to its peer with rewritten MACs, TTL one less and a valid checksum', (t) => {
  const f = setup(t);
  const frame = tcp(CLIENT, SERVER, 40000, 80, TcpFlag.SYN, { payload: Buffer.from('hello') });
  const { verdict, data, events } = f.run(frame);
  assert.equal(verdict, TC_ACT_REDIRECT);
  assert.equal(data.length, frame.length);
  assert.deepEqual(data.subarray(0, 6), Buffer.from(SERVER.mac.replaceAll(':', ''), 'hex'));
  assert.deepEqual(data.subarray(6, 12), Buffer.from(SERVER.nodeMac.replaceAll(':', ''), 'hex'));
  assert.equal(data[ETH_HLEN + 8], 63);
  assert.notEqual(data.readUInt16BE(ETH_HLEN + 10), frame.readUInt16BE(ETH_HLEN + 10));
  assert.equal(internetChecksum(data.subarray(ETH_HLEN, ETH_HLEN + 20)), 0, 'IP header checksum verifies');
  // Only the MACs, the TTL and the checksum changed.
  assert.deepEqual(data.subarray(12, ETH_HLEN + 8), frame.subarray(12, ETH_HLEN + 8));
  assert.deepEqual(data.subarray(ETH_HLEN + 12), frame.subarray(ETH_HLEN + 12));

  const ev = onlyTrace(events);
  assert.equal(ev.observationPoint, TracePoint.TRACE_TO_LXC);
  assert.equal(ev.observationPointName, 'to-endpoint');
  assert.equal(ev.source, CLIENT.id);
  assert.equal(ev.srcIdentity, CLIENT.identity);
  assert.equal(ev.dstIdentity, SERVER.identity);
  assert.equal(ev.dstId, SERVER.id);
  assert.equal(ev.dstIfindex, SERVER.ifindex);
  assert.equal(ev.ctStatus, CtStatus.NEW);
  assert.equal(ev.isReply, false);
  assert.equal(ev.origLen, frame.length);
  assert.equal(ev.capLen, frame.length);
  assert.deepEqual(ev.data, data, 'the event carries the frame as delivered');
  assert.equal(ev.packet.ipv4?.source, CLIENT.ip);
  assert.equal(ev.packet.ipv4?.destination, SERVER.ip);
  assert.equal(ev.packet.ipv4?.ttl, 63);
  assert.equal(ev.packet.ipv4?.checksumValid, true);
  assert.deepEqual(ev.packet.l4, { protocol: 'TCP', sourcePort: 40000, destinationPort: 80, flags: TcpFlag.SYN, flagNames: ['SYN'] });
  assert.ok(ev.timestampNs > 0n);
});

test('a packet to an address that is not a local endpoint goes to the stack untouched', (t) => {
  const f = setup(t);
  // Without HAS_TUNNEL_EP (native routing: the stack routes other nodes' pods); the tunnel
  // path is bpf-overlay.test.ts's.
  f.maps.ipcache.update({ prefixlen: 8, ip: '10.0.0.0' }, { sec_identity: 7777, tunnel_endpoint: '192.168.0.2', flags: 0 });
  for (const [dst, identity] of [['10.1.2.3', 7777], ['8.8.8.8', ReservedIdentity.WORLD]] as const) {
    const frame = buildIpv4Frame({ src: CLIENT.ip, dst, udp: { sport: 5000, dport: 53 } });
    const { verdict, data, events } = f.run(frame);
    assert.equal(verdict, TC_ACT_OK);
    assert.deepEqual(data, frame);
    const ev = onlyTrace(events);
    assert.equal(ev.observationPointName, 'to-stack');
    assert.equal(ev.dstIdentity, identity);
    assert.equal(ev.dstId, 0);
    assert.equal(ev.dstIfindex, 0);
    assert.deepEqual(ev.packet.l4, { protocol: 'UDP', sourcePort: 5000, destinationPort: 53 });
  }
});

test('truncated and inconsistent packets are dropped with a drop event', (t) => {
  const f = setup(t);
  const frame = tcp(CLIENT, SERVER, 40000, 80, TcpFlag.SYN);

  // Cut in the TCP header: the IP header says 40 bytes, 24 arrived. (BPF_PROG_TEST_RUN itself
  // refuses IPv4 frames shorter than an IP header, so this is as short as a test can go.)
  const truncated = frame.subarray(0, ETH_HLEN + 24);
  let { verdict, events } = f.run(truncated);
  assert.equal(verdict, TC_ACT_SHOT);
  let drop = onlyDrop(events);
  assert.equal(drop.reason, DropReasonCode.DROP_INVALID_PACKET);
  assert.equal(drop.reason, 134);
  assert.equal(drop.reasonName, 'INVALID_PACKET_DROPPED');
  assert.equal(drop.source, CLIENT.id);
  assert.equal(drop.srcIdentity, CLIENT.identity);
  assert.equal(drop.origLen, truncated.length);
  assert.equal(drop.capLen, truncated.length);
  assert.deepEqual(drop.data, truncated);
  assert.ok(drop.line > 0);

  // tot_len claims more than the frame holds.
  const long = Buffer.from(frame);
  long.writeUInt16BE(long.readUInt16BE(ETH_HLEN + 2) + 100, ETH_HLEN + 2);
  ({ verdict, events } = f.run(long));
  assert.equal(verdict, TC_ACT_SHOT);
  assert.equal(onlyDrop(events).reason, 134);

  // IHL claims 60 bytes of header with options; 40 bytes of packet follow the Ethernet header.
  const ihl = Buffer.from(frame);
  ihl[ETH_HLEN] = 0x4f;
  ({ verdict, events } = f.run(ihl));
  assert.equal(verdict, TC_ACT_SHOT);
  assert.equal(onlyDrop(events).reason, 134);

  // A whole IP header over a TCP header cut short: conntrack cannot read the ports.
  const shortL4 = Buffer.from(frame.subarray(0, ETH_HLEN + 20 + 8));
  shortL4.writeUInt16BE(28, ETH_HLEN + 2);
  ({ verdict, events } = f.run(shortL4));
  assert.equal(verdict, TC_ACT_SHOT);
  drop = onlyDrop(events);
  assert.equal(drop.reason, DropReasonCode.DROP_CT_INVALID_HDR);
  assert.equal(drop.reasonName, 'CT_TRUNCATED_OR_INVALID_HEADER');

  // Nothing was tracked for any of them.
  assert.equal([...f.maps.ct4.keys()].length, 0);
});

/** An Ethernet/IPv4 ARP frame whose sender protocol address is `sender`. */
function arpFrame(from: typeof CLIENT, sender: string, operation = 2): Buffer {
  const frame = Buffer.alloc(42);
  Buffer.from(from.nodeMac.split(':').map((x) => parseInt(x, 16))).copy(frame, 0);
  Buffer.from(from.mac.split(':').map((x) => parseInt(x, 16))).copy(frame, 6);
  frame.writeUInt16BE(0x0806, 12);
  frame.writeUInt16BE(1, 14); // Ethernet
  frame.writeUInt16BE(0x0800, 16); // IPv4
  frame[18] = 6;
  frame[19] = 4;
  frame.writeUInt16BE(operation, 20);
  Buffer.from(from.mac.split(':').map((x) => parseInt(x, 16))).copy(frame, 22);
  Buffer.from(sender.split('.').map(Number)).copy(frame, 28);
  return frame;
}

test("a pod's ARP passes only for its own address; IPv6 and other L3 are dropped both ways; an expiring TTL goes to the stack", (t) => {
  const f = setup(t);
  let { verdict, events } = f.run(arpFrame(CLIENT, CLIENT.ip));
  assert.equal(verdict, TC_ACT_OK);
  assert.equal(events.length, 0);
  for (const sender of [SERVER.ip, '10.244.0.254', '0.0.0.0']) {
    ({ verdict, events } = f.run(arpFrame(CLIENT, sender)));
    assert.equal(verdict, TC_ACT_SHOT, `ARP for ${sender}`);
    assert.equal(onlyDrop(events).reason, DropReasonCode.DROP_INVALID_SIP);
    assert.equal(onlyDrop(events).srcIdentity, CLIENT.identity, 'reported as the sending endpoint');
  }
  const garbledArp = Buffer.alloc(42);
  garbledArp.writeUInt16BE(0x0806, 12);
  ({ verdict, events } = f.run(garbledArp));
  assert.equal(verdict, TC_ACT_SHOT);
  assert.equal(onlyDrop(events).reason, DropReasonCode.DROP_INVALID_PACKET);

  const ipv6 = Buffer.alloc(54);
  ipv6.writeUInt16BE(0x86dd, 12);
  ipv6[ETH_HLEN] = 0x60;
  const other = Buffer.alloc(60);
  other.writeUInt16BE(0x88cc, 12); // LLDP
  for (const program of [LxcProgram.FROM_CONTAINER, LxcProgram.TO_CONTAINER]) {
    for (const frame of [ipv6, other]) {
      ({ verdict, events } = f.run(frame, program));
      assert.equal(verdict, TC_ACT_SHOT, `${program} ethertype ${frame.readUInt16BE(12).toString(16)}`);
      const drop = onlyDrop(events);
      assert.equal(drop.reason, DropReasonCode.DROP_UNKNOWN_L3);
      // No address to look up: the endpoint is the one behind the interface.
      assert.equal(drop.source, CLIENT.id, `${program}: reported as the endpoint of the interface`);
      if (program === LxcProgram.FROM_CONTAINER) assert.equal(drop.srcIdentity, CLIENT.identity);
      else assert.deepEqual([drop.dstIdentity, drop.dstId], [CLIENT.identity, CLIENT.id]);
    }
  }
  // The node asking for the pod's MAC reaches it.
  assert.equal(f.run(arpFrame(SERVER, '10.244.0.254', 1), LxcProgram.TO_CONTAINER).verdict, TC_ACT_OK);

  const frame = tcp(CLIENT, SERVER, 40000, 80, TcpFlag.SYN, { ttl: 1 });
  const result = f.run(frame);
  assert.equal(result.verdict, TC_ACT_OK);
  assert.deepEqual(result.data, frame);
  assert.equal(onlyTrace(result.events).observationPointName, 'to-stack');
});

test("a packet whose source is not the pod's own address is dropped as INVALID_SOURCE_IP before anything tracks it", (t) => {
  const f = setup(t);
  for (const source of [SERVER.ip, '10.244.0.254', '8.8.8.8', '0.0.0.0']) {
    const forged = tcp({ ...CLIENT, ip: source }, SERVER, 40000, 80, TcpFlag.SYN);
    const { verdict, events } = f.run(forged, LxcProgram.FROM_CONTAINER, CLIENT);
    assert.equal(verdict, TC_ACT_SHOT, `source ${source}`);
    const drop = onlyDrop(events);
    assert.equal(drop.reason, DropReasonCode.DROP_INVALID_SIP);
    assert.equal(drop.reasonName, 'INVALID_SOURCE_IP');
    assert.equal(drop.srcIdentity, CLIENT.identity, 'reported as the sending endpoint');
    assert.equal(drop.source, CLIENT.id);
  }
  assert.equal([...f.maps.ct4.keys()].length, 0);
  // Its own address still passes.
  assert.equal(f.run(tcp(CLIENT, SERVER, 40000, 80, TcpFlag.SYN)).verdict, TC_ACT_REDIRECT);
});

test('conntrack creates an entry for a SYN and recognises the replies', (t) => {
  const f = setup(t);
  const key = { daddr: SERVER.ip, saddr: CLIENT.ip, dport: 80, sport: 40000, nexthdr: 6, flags: CtDirection.EGRESS };

  let ev = onlyTrace(f.run(tcp(CLIENT, SERVER, 40000, 80, TcpFlag.SYN)).events);
  assert.equal(ev.ctStatus, CtStatus.NEW);
  let entry = f.maps.ct4.lookup(key);
  assert.ok(entry, 'entry created under the original tuple');
  assert.equal(entry.packets, 1);
  assert.equal(entry.tx_flags_seen, TcpFlag.SYN);
  assert.equal(entry.rx_flags_seen, 0);
  assert.equal(entry.flags, 0);
  assert.equal(entry.src_sec_id, CLIENT.identity);
  assert.ok(entry.lifetime > 0);

  // The SYN-ACK leaves the server: its reversed tuple finds the entry.
  ev = onlyTrace(f.run(tcp(SERVER, CLIENT, 80, 40000, TcpFlag.SYN | TcpFlag.ACK)).events);
  assert.equal(ev.ctStatus, CtStatus.REPLY);
  assert.equal(ev.isReply, true);
  assert.equal(ev.dstId, CLIENT.id);
  // The handshake's last ACK is established and carries no SYN, FIN or RST: aggregated, no event.
  assert.deepEqual(f.run(tcp(CLIENT, SERVER, 40000, 80, TcpFlag.ACK)).events, []);

  entry = f.maps.ct4.lookup(key);
  assert.ok(entry);
  assert.equal(entry.packets, 3);
  assert.equal(entry.tx_flags_seen, TcpFlag.SYN | TcpFlag.ACK);
  assert.equal(entry.rx_flags_seen, TcpFlag.SYN | TcpFlag.ACK);
  assert.equal(entry.flags, CtFlag.SEEN_REPLY);
  assert.equal([...f.maps.ct4.keys()].length, 1, 'replies create no entries of their own');

  // A FIN from the server marks the reply side closing.
  onlyTrace(f.run(tcp(SERVER, CLIENT, 80, 40000, TcpFlag.FIN | TcpFlag.ACK)).events);
  assert.equal(f.maps.ct4.lookup(key)?.flags, CtFlag.SEEN_REPLY | CtFlag.RX_CLOSING);
});

test('ICMP echo replies are matched to their request by the echo id', (t) => {
  const f = setup(t);
  // Every packet traced, so each echo shows its conntrack status (medium reports the first two only).
  writeMonitorConfig(f.maps.monitorCfg, { level: 'none', flags: DEFAULT_MONITOR_AGGREGATION_FLAGS, intervalSeconds: 5 });
  const request = buildIpv4Frame({ src: CLIENT.ip, dst: SERVER.ip, icmp: { type: 8, id: 77, sequence: 1 } });
  const reply = buildIpv4Frame({ src: SERVER.ip, dst: CLIENT.ip, icmp: { type: 0, id: 77, sequence: 1 } });
  const first = onlyTrace(f.run(request).events);
  assert.equal(first.ctStatus, CtStatus.NEW);
  assert.deepEqual(first.packet.l4, { protocol: 'ICMPv4', type: 8, code: 0, id: 77, sequence: 1 });
  assert.equal(onlyTrace(f.run(reply).events).ctStatus, CtStatus.REPLY);
  assert.equal(onlyTrace(f.run(request).events).ctStatus, CtStatus.ESTABLISHED);
  const entry = f.maps.ct4.lookup({ daddr: SERVER.ip, saddr: CLIENT.ip, dport: 0, sport: 77, nexthdr: 1, flags: CtDirection.EGRESS });
  assert.equal(entry?.packets, 3);
});

test('cil_to_container tracks connections the stack delivers and reports them as to-endpoint ingress', (t) => {
  const f = setup(t);
  const outside = { ...SERVER, ip: '192.168.10.1' };
  const { verdict, data, events } = f.run(tcp(outside, CLIENT, 33000, 8080, TcpFlag.SYN), LxcProgram.TO_CONTAINER);
  assert.equal(verdict, TC_ACT_OK);
  assert.equal(data[ETH_HLEN + 8], 64, 'nothing rewritten: the stack already routed it');
  const ev = onlyTrace(events);
  assert.equal(ev.observationPointName, 'to-endpoint');
  assert.equal(ev.ingress, true);
  assert.equal(ev.srcIdentity, ReservedIdentity.WORLD);
  assert.equal(ev.dstIdentity, CLIENT.identity);
  assert.equal(ev.dstId, CLIENT.id);
  const key = { daddr: CLIENT.ip, saddr: outside.ip, dport: 8080, sport: 33000, nexthdr: 6, flags: CtDirection.INGRESS };
  assert.equal(f.maps.ct4.lookup(key)?.src_sec_id, ReservedIdentity.WORLD);
  // The pod's answer leaves through cil_from_container and is a reply to that entry.
  const answer = onlyTrace(f.run(tcp(CLIENT, outside, 8080, 33000, TcpFlag.SYN | TcpFlag.ACK)).events);
  assert.equal(answer.ctStatus, CtStatus.REPLY);
  assert.equal(answer.observationPointName, 'to-stack');
  assert.equal(f.maps.ct4.lookup(key)?.packets, 2);
});

test("a pod's own address arriving on another endpoint's interface is a forgery too, and a veth with no endpoint lets nothing out", (t) => {
  const f = setup(t);
  // SERVER sends with CLIENT's address: ciliate_lxc knows the address, but behind another interface.
  let { verdict, events } = f.run(tcp(CLIENT, SERVER, 40000, 80, TcpFlag.SYN), LxcProgram.FROM_CONTAINER, SERVER);
  assert.equal(verdict, TC_ACT_SHOT);
  let drop = onlyDrop(events);
  assert.equal(drop.reason, DropReasonCode.DROP_INVALID_SIP);
  assert.deepEqual([drop.source, drop.srcIdentity], [SERVER.id, SERVER.identity], 'reported as the endpoint behind the interface');
  ({ verdict } = f.run(arpFrame(SERVER, CLIENT.ip), LxcProgram.FROM_CONTAINER, SERVER));
  assert.equal(verdict, TC_ACT_SHOT, "an ARP speaking for CLIENT's address from SERVER's interface");

  // An endpoint whose entries are not written yet (an add in progress): its own address passes
  // no more than any other, and drops name nobody.
  f.maps.lxc.delete({ ip: SERVER.ip });
  f.maps.lxcIfindex.delete(SERVER.ifindex);
  ({ verdict, events } = f.run(tcp(SERVER, CLIENT, 40000, 80, TcpFlag.SYN)));
  assert.equal(verdict, TC_ACT_SHOT);
  drop = onlyDrop(events);
  assert.equal(drop.reason, DropReasonCode.DROP_INVALID_SIP);
  assert.deepEqual([drop.source, drop.srcIdentity], [0, ReservedIdentity.UNKNOWN]);
  ({ verdict, events } = f.run(tcp({ ...CLIENT, ip: '192.168.10.1' }, SERVER, 33000, 80, TcpFlag.SYN), LxcProgram.TO_CONTAINER, SERVER));
  assert.equal(verdict, TC_ACT_SHOT, 'nothing reaches it either');
  assert.equal(onlyDrop(events).reason, DropReasonCode.DROP_UNROUTABLE);
  assert.equal([...f.maps.ct4.keys()].length, 0);
});

test('cil_to_container delivers only to the address of the endpoint behind its interface', (t) => {
  const f = setup(t);
  const outside = { ...SERVER, ip: '192.168.10.1' };
  // The stack routed SERVER's address to CLIENT's veth (a stale route).
  const { verdict, events } = f.run(tcp(outside, SERVER, 33000, 8080, TcpFlag.SYN), LxcProgram.TO_CONTAINER, CLIENT);
  assert.equal(verdict, TC_ACT_SHOT);
  const drop = onlyDrop(events);
  assert.equal(drop.reason, DropReasonCode.DROP_UNROUTABLE);
  assert.equal(drop.reasonName, 'STALE_OR_UNROUTABLE_IP');
  assert.deepEqual([drop.source, drop.dstId, drop.dstIdentity], [CLIENT.id, CLIENT.id, CLIENT.identity], 'reported at the endpoint behind the interface');
  assert.equal([...f.maps.ct4.keys()].length, 0);
});

test('a new identity is a map update: the next packet carries it, with no program reloaded', (t) => {
  const f = setup(t);
  assert.equal(onlyTrace(f.run(tcp(CLIENT, SERVER, 40000, 80, TcpFlag.SYN)).events).srcIdentity, CLIENT.identity);
  const entry = f.maps.lxc.lookup({ ip: CLIENT.ip });
  assert.ok(entry);
  f.maps.lxc.update({ ip: CLIENT.ip }, { ...entry, sec_identity: 4242 });
  const ev = onlyTrace(f.run(tcp(CLIENT, SERVER, 40001, 80, TcpFlag.SYN)).events);
  assert.deepEqual([ev.source, ev.srcIdentity], [CLIENT.id, 4242]);
  assert.equal(f.maps.ct4.lookup({ daddr: SERVER.ip, saddr: CLIENT.ip, dport: 80, sport: 40001, nexthdr: 6, flags: CtDirection.EGRESS })?.src_sec_id, 4242);
});

/** One TCP connection CLIENT:sport → SERVER:80, handshake to teardown: [from, flags] per packet. */
const CONNECTION: readonly (readonly ['client' | 'server', number])[] = [
  ['client', TcpFlag.SYN],
  ['server', TcpFlag.SYN | TcpFlag.ACK],
  ['client', TcpFlag.ACK],
  ['client', TcpFlag.PSH | TcpFlag.ACK],
  ['client', TcpFlag.PSH | TcpFlag.ACK],
  ['server', TcpFlag.ACK],
  ['server', TcpFlag.PSH | TcpFlag.ACK],
  ['client', TcpFlag.ACK],
  ['client', TcpFlag.FIN | TcpFlag.ACK],
  ['server', TcpFlag.FIN | TcpFlag.ACK],
  ['client', TcpFlag.ACK],
];

/** Runs CONNECTION on a fresh source port; returns the indexes of the packets that were traced. */
function tracedPackets(f: Fixture, sport: number): number[] {
  const traced: number[] = [];
  CONNECTION.forEach(([from, flags], i) => {
    const frame = from === 'client' ? tcp(CLIENT, SERVER, sport, 80, flags) : tcp(SERVER, CLIENT, 80, sport, flags);
    const { verdict, events } = f.run(frame);
    assert.equal(verdict, TC_ACT_REDIRECT, `packet ${i} delivered`);
    assert.ok(events.length <= 1 && events.every((e) => e.kind === 'trace' && e.observationPointName === 'to-endpoint'), `packet ${i}: ${JSON.stringify(events.map((e) => e.kind))}`);
    if (events.length === 1) traced.push(i);
  });
  return traced;
}

test("monitor aggregation: none and low trace every packet here, medium and maximum a connection's news, each level read per packet without a reload", (t) => {
  const f = setup(t);
  const every = CONNECTION.map((_, i) => i);
  // Opening SYN, first reply, both FINs; not the ACKs and data in between, nor the ACK after both FINs.
  const news = [0, 1, 8, 9];
  // The one load's entry never written: Cilium's default, medium.
  assert.deepEqual(tracedPackets(f, 41000), news, 'an unwritten config means medium');
  const expected = { none: every, lowest: every, low: every, medium: news, maximum: news } as const;
  let sport = 41001;
  for (const level of MONITOR_AGGREGATION_LEVELS) {
    writeMonitorConfig(f.maps.monitorCfg, { level, flags: DEFAULT_MONITOR_AGGREGATION_FLAGS, intervalSeconds: 5 });
    // bpf_lxc has no observation point where packets are received, so lowest and low hide nothing here.
    assert.deepEqual(tracedPackets(f, sport++), expected[level], level);
  }

  // Every flag counts: each flag's first sighting per direction is news (ACK, then PSH, each way).
  writeMonitorConfig(f.maps.monitorCfg, { level: 'medium', flags: ['all'], intervalSeconds: 5 });
  assert.deepEqual(tracedPackets(f, sport++), [0, 1, 2, 3, 6, 8, 9]);
});

test('monitor aggregation medium: an active direction is traced again once the interval has passed since its last report, UDP too', (t) => {
  const f = setup(t);
  writeMonitorConfig(f.maps.monitorCfg, { level: 'medium', flags: DEFAULT_MONITOR_AGGREGATION_FLAGS, intervalSeconds: 5 });
  const key = { daddr: SERVER.ip, saddr: CLIENT.ip, dport: 53, sport: 42000, nexthdr: 17, flags: CtDirection.EGRESS };
  const query = buildIpv4Frame({ srcMac: CLIENT.mac, dstMac: CLIENT.nodeMac, src: CLIENT.ip, dst: SERVER.ip, udp: { sport: 42000, dport: 53 } });
  const answer = buildIpv4Frame({ srcMac: SERVER.mac, dstMac: SERVER.nodeMac, src: SERVER.ip, dst: CLIENT.ip, udp: { sport: 53, dport: 42000 } });
  assert.equal(onlyTrace(f.run(query).events).ctStatus, CtStatus.NEW);
  assert.equal(onlyTrace(f.run(answer).events).ctStatus, CtStatus.REPLY, 'the first reply is news');
  for (let i = 0; i < 3; i++) {
    assert.deepEqual(f.run(query).events, [], 'within the interval: aggregated');
    assert.deepEqual(f.run(answer).events, []);
  }
  // As if the query direction was last reported 6 s ago (times are seconds mod 2^16).
  const entry = f.maps.ct4.lookup(key);
  assert.ok(entry);
  f.maps.ct4.update(key, { ...entry, last_tx_report: (entry.last_tx_report - 6) & 0xffff });
  assert.equal(onlyTrace(f.run(query).events).ctStatus, CtStatus.ESTABLISHED, 'the interval passed: traced again');
  assert.deepEqual(f.run(query).events, [], 'and the interval starts over');
  assert.deepEqual(f.run(answer).events, [], "the other direction keeps its own report time");
  assert.equal(f.maps.ct4.lookup(key)?.packets, 11);
});

test('drops are reported at every monitor aggregation level', (t) => {
  const f = setup(t);
  for (const level of MONITOR_AGGREGATION_LEVELS) {
    writeMonitorConfig(f.maps.monitorCfg, { level, flags: DEFAULT_MONITOR_AGGREGATION_FLAGS, intervalSeconds: 5 });
    // An established-looking segment from an address that is not the pod's: no conntrack news, still a drop.
    const forged = tcp({ ...CLIENT, ip: '10.244.0.99' }, SERVER, 43000, 80, TcpFlag.ACK);
    const { verdict, events } = f.run(forged, LxcProgram.FROM_CONTAINER, CLIENT);
    assert.equal(verdict, TC_ACT_SHOT, level);
    assert.equal(onlyDrop(events).reason, DropReasonCode.DROP_INVALID_SIP, level);
  }
});
