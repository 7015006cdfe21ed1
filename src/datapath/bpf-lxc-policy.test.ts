/**
 * Policy enforcement of bpf_lxc.o on the real kernel through BPF_PROG_TEST_RUN: the node's one
 * load serving two endpoints (stand-in veths), their policy maps installed with EndpointPolicyMaps,
 * crafted frames, then the verdicts, the conntrack map and the policy-verdict/drop events.
 * Needs root and `bash scripts/build-bpf.sh`.
 * @module
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { RingBuffer, inNetns } from '../ebpf/index.ts';
import { pinDir } from '../ebpf/internal/testutils.ts';
import { PolicyDirection, PolicyMatch, PolicyVerdict, type PolicyMapEntry } from '../policy/policy-map.ts';
import { L7_PROXY_PORT } from '../policy/policy-map.ts';
import { DropReasonCode } from './drop-reasons.ts';
import { CtStatus, MonitorEventType, decodeEvent, type DatapathEvent, type DropEvent, type PolicyVerdictEvent } from './events.ts';
import { LxcProgram, loadLxc, lxcMaps, type LxcMaps } from './lxc.ts';
import { CtDirection, CtFlag, ReservedIdentity, TcpFlag } from './maps.ts';
import { buildIpv4Frame } from './packet.ts';
import { EndpointPolicyMaps, endpointPolicyPinPath } from './policy-maps.ts';
import { skbMark, skbOnInterface, testRunInterfaces } from './testutils.ts';

const TC_ACT_OK = 0;
const TC_ACT_SHOT = 2;
const TC_ACT_REDIRECT = 7;

const CLIENT = { ip: '10.244.0.1', mac: '0a:00:00:00:01:01', nodeMac: 'fe:00:00:00:01:01', ifindex: 41, id: 11, identity: 1001 };
const SERVER = { ip: '10.244.0.2', mac: '0a:00:00:00:02:02', nodeMac: 'fe:00:00:00:02:02', ifindex: 42, id: 12, identity: 1002 };
type Ep = typeof CLIENT;

interface Fixture {
  root: string;
  maps: LxcMaps;
  policy: EndpointPolicyMaps;
  /** Runs `program` on a frame on endpoint `ep`'s host veth. */
  run(ep: Ep, frame: Buffer, program?: string): { verdict: number; events: DatapathEvent[] };
  /** run(), with skb->mark `mark`, giving back the frame and context as the program left them. */
  runFull(ep: Ep, frame: Buffer, program?: string, mark?: number): { verdict: number; events: DatapathEvent[]; data: Buffer; context: Buffer | undefined };
}

function setup(t: TestContext): Fixture {
  const root = pinDir(t);
  const mapsDir = join(root, 'maps');
  mkdirSync(mapsDir);
  const netns = testRunInterfaces(t, [CLIENT.ifindex, SERVER.ifindex]);
  const obj = loadLxc({ pinDir: mapsDir });
  const maps = lxcMaps(obj);
  const ring = new RingBuffer(maps.events, { lostCounter: maps.eventsLost });
  const policy = new EndpointPolicyMaps(root);
  t.after(() => {
    policy.close();
    ring.close();
    obj.close();
  });
  for (const ep of [CLIENT, SERVER]) {
    maps.lxc.update({ ip: ep.ip }, { ifindex: ep.ifindex, lxc_id: ep.id, flags: 0, mac: ep.mac, node_mac: ep.nodeMac, sec_identity: ep.identity });
    maps.lxcIfindex.update(ep.ifindex, { ip: ep.ip });
  }
  return {
    root,
    maps,
    policy,
    run(ep, frame, program = LxcProgram.FROM_CONTAINER) {
      const { verdict, events } = this.runFull(ep, frame, program);
      return { verdict, events };
    },
    runFull(ep, frame, program = LxcProgram.FROM_CONTAINER, mark = 0) {
      const result = inNetns(netns, () => obj.program(program).testRun({ data: frame, context: skbOnInterface(ep.ifindex, mark) }));
      const events: DatapathEvent[] = [];
      ring.consume((_view, offset, length, bytes) => void events.push(decodeEvent(bytes, offset, length)));
      assert.equal(ring.lost(), 0n);
      return { verdict: result.returnValue, events, data: result.data, context: result.context };
    },
  };
}

/** A policy map entry; port/prefixLen default to one port (64), or the whole direction when protocol is 0. */
function entry(e: { identity: number; direction: PolicyDirection; protocol?: number; port?: number; prefixLen?: number; deny?: boolean; cookie: number }): PolicyMapEntry {
  const protocol = e.protocol ?? 0;
  const prefixLen = e.prefixLen ?? (protocol === 0 ? 40 : 64);
  return {
    key: { identity: e.identity, direction: e.direction, protocol, port: e.port ?? 0, prefixLen },
    deny: e.deny ?? false,
    cookie: e.cookie,
    ruleKeys: [],
  };
}

const ALLOW_ALL_EGRESS = entry({ identity: 0, direction: PolicyDirection.EGRESS, cookie: 0 });
const ALLOW_ALL_INGRESS = entry({ identity: 0, direction: PolicyDirection.INGRESS, cookie: 0 });

const tcp = (from: Ep, to: Ep, sport: number, dport: number, flags: number): Buffer =>
  buildIpv4Frame({ srcMac: from.mac, dstMac: from.nodeMac, src: from.ip, dst: to.ip, tcp: { sport, dport, flags } });

const macBytes = (mac: string): Buffer => Buffer.from(mac.split(':').map((x) => parseInt(x, 16)));

const verdicts = (events: DatapathEvent[]) => events.filter((e): e is PolicyVerdictEvent => e.kind === 'policy-verdict');
const drops = (events: DatapathEvent[]) => events.filter((e): e is DropEvent => e.kind === 'drop');
const ctKey = (from: Ep, to: Ep, sport: number, dport: number) => ({ daddr: to.ip, saddr: from.ip, dport, sport, nexthdr: 6, flags: CtDirection.EGRESS });

test('egress: an allowed port is delivered after an L3-L4 verdict, another port is dropped 133 and left untracked', (t) => {
  const f = setup(t);
  f.policy.apply(CLIENT.id, {
    upserts: [entry({ identity: SERVER.identity, direction: PolicyDirection.EGRESS, protocol: 6, port: 80, cookie: 7 }), ALLOW_ALL_INGRESS],
    deletes: [],
  });
  assert.ok(existsSync(endpointPolicyPinPath(f.root, CLIENT.id)));

  let { verdict, events } = f.run(CLIENT, tcp(CLIENT, SERVER, 40000, 80, TcpFlag.SYN));
  assert.equal(verdict, TC_ACT_REDIRECT);
  assert.deepEqual(events.map((e) => e.kind), ['policy-verdict', 'trace'], 'SERVER has no policy map: its ingress is not judged');
  const [allowed] = verdicts(events);
  assert.equal(allowed.allowed, true);
  assert.equal(allowed.verdict, PolicyVerdict.ALLOWED);
  assert.equal(allowed.direction, PolicyDirection.EGRESS);
  assert.equal(allowed.directionName, 'egress');
  assert.equal(allowed.match, PolicyMatch.L3_L4);
  assert.equal(allowed.matchName, 'L3-L4');
  assert.equal(allowed.cookie, 7);
  assert.equal(allowed.remoteIdentity, SERVER.identity);
  assert.equal(allowed.protocol, 6);
  assert.equal(allowed.protocolName, 'TCP');
  assert.equal(allowed.dport, 80);
  assert.equal(allowed.endpointId, CLIENT.id);
  assert.equal(allowed.source, CLIENT.id);
  assert.equal(allowed.srcIdentity, CLIENT.identity);
  assert.equal(allowed.dstIdentity, SERVER.identity);
  assert.equal(allowed.dropReason, 0);
  assert.equal(allowed.ctStatus, CtStatus.NEW);
  assert.equal(allowed.packet.ipv4?.destination, SERVER.ip);
  assert.ok(f.maps.ct4.lookup(ctKey(CLIENT, SERVER, 40000, 80)), 'the allowed connection is tracked');

  // The next packet of the connection is established: no policy lookup, no verdict event, and
  // (monitor aggregation) no trace either.
  ({ verdict, events } = f.run(CLIENT, tcp(CLIENT, SERVER, 40000, 80, TcpFlag.ACK)));
  assert.equal(verdict, TC_ACT_REDIRECT);
  assert.deepEqual(events.map((e) => e.kind), []);

  for (let attempt = 0; attempt < 2; attempt++) {
    // Twice: a denied SYN leaves no conntrack entry, so its retransmission is judged (and denied) again.
    ({ verdict, events } = f.run(CLIENT, tcp(CLIENT, SERVER, 40001, 81, TcpFlag.SYN)));
    assert.equal(verdict, TC_ACT_SHOT);
    assert.deepEqual(events.map((e) => e.kind), ['policy-verdict', 'drop']);
    const [denied] = verdicts(events);
    assert.equal(denied.verdict, PolicyVerdict.DENIED_DEFAULT);
    assert.equal(denied.allowed, false);
    assert.equal(denied.match, PolicyMatch.NONE);
    assert.equal(denied.cookie, 0);
    assert.equal(denied.dport, 81);
    assert.equal(denied.dropReason, DropReasonCode.DROP_POLICY);
    const [drop] = drops(events);
    assert.equal(drop.reason, 133);
    assert.equal(drop.reasonName, 'POLICY_DENIED');
    assert.equal(drop.dstIdentity, SERVER.identity);
    assert.equal(f.maps.ct4.lookup(ctKey(CLIENT, SERVER, 40001, 81)), undefined);
  }

  // World: no ipcache entry, so the remote identity is WORLD, which nothing allows.
  const world = buildIpv4Frame({ src: CLIENT.ip, dst: '8.8.8.8', udp: { sport: 5000, dport: 53 } });
  ({ verdict, events } = f.run(CLIENT, world));
  assert.equal(verdict, TC_ACT_SHOT);
  assert.equal(verdicts(events)[0].remoteIdentity, ReservedIdentity.WORLD);
  assert.equal(verdicts(events)[0].protocolName, 'UDP');
  assert.equal(drops(events)[0].reason, 133);
});

test('an explicit deny drops with 181 and wins over a broader allow; the allow decides elsewhere (L3-Only)', (t) => {
  const f = setup(t);
  f.policy.apply(CLIENT.id, {
    upserts: [
      entry({ identity: SERVER.identity, direction: PolicyDirection.EGRESS, cookie: 3 }),
      entry({ identity: 0, direction: PolicyDirection.EGRESS, protocol: 6, port: 22, deny: true, cookie: 9 }),
    ],
    deletes: [],
  });
  let { verdict, events } = f.run(CLIENT, tcp(CLIENT, SERVER, 40000, 22, TcpFlag.SYN));
  assert.equal(verdict, TC_ACT_SHOT);
  let [v] = verdicts(events);
  assert.equal(v.verdict, PolicyVerdict.DENIED);
  assert.equal(v.match, PolicyMatch.L4_ONLY);
  assert.equal(v.cookie, 9);
  assert.equal(v.dropReason, DropReasonCode.DROP_POLICY_DENY);
  assert.equal(drops(events)[0].reason, 181);
  assert.equal(drops(events)[0].reasonName, 'POLICY_DENY');

  ({ verdict, events } = f.run(CLIENT, tcp(CLIENT, SERVER, 40000, 443, TcpFlag.SYN)));
  assert.equal(verdict, TC_ACT_REDIRECT);
  [v] = verdicts(events);
  assert.equal(v.verdict, PolicyVerdict.ALLOWED);
  assert.equal(v.match, PolicyMatch.L3_ONLY);
  assert.equal(v.cookie, 3);

  // Removing the deny entry (a diff's delete) lets port 22 through on the L3 allow.
  f.policy.apply(CLIENT.id, { upserts: [], deletes: [entry({ identity: 0, direction: PolicyDirection.EGRESS, protocol: 6, port: 22, cookie: 9 }).key] });
  assert.deepEqual(f.policy.entries(CLIENT.id).map((e) => e.cookie), [3]);
  ({ verdict } = f.run(CLIENT, tcp(CLIENT, SERVER, 40002, 22, TcpFlag.SYN)));
  assert.equal(verdict, TC_ACT_REDIRECT);
});

test('local delivery checks the destination\'s ingress map; replies pass through conntrack while a new reverse SYN is denied', (t) => {
  const f = setup(t);
  f.policy.apply(CLIENT.id, { upserts: [ALLOW_ALL_EGRESS], deletes: [] }); // ingress: nothing allowed
  f.policy.apply(SERVER.id, { upserts: [entry({ identity: CLIENT.identity, direction: PolicyDirection.INGRESS, protocol: 6, port: 80, cookie: 42 })], deletes: [] }); // egress: nothing allowed

  let { verdict, events } = f.run(CLIENT, tcp(CLIENT, SERVER, 40000, 80, TcpFlag.SYN));
  assert.equal(verdict, TC_ACT_REDIRECT);
  // CLIENT's egress, which no rule enforces (its allow-all entry, cookie 0), reports no verdict,
  // as Cilium reports verdicts only for the directions an endpoint enforces.
  const [ingress, ...more] = verdicts(events);
  assert.deepEqual(more, []);
  assert.deepEqual([ingress.endpointId, ingress.directionName, ingress.matchName, ingress.cookie, ingress.remoteIdentity], [SERVER.id, 'ingress', 'L3-L4', 42, CLIENT.identity]);
  assert.equal(ingress.source, CLIENT.id, 'reported by the client\'s program');
  assert.equal(ingress.dstId, SERVER.id);

  // SYN-ACK and ACKs: replies and established packets, judged by nobody even though SERVER's
  // egress and CLIENT's ingress allow nothing.
  ({ verdict, events } = f.run(SERVER, tcp(SERVER, CLIENT, 80, 40000, TcpFlag.SYN | TcpFlag.ACK)));
  assert.equal(verdict, TC_ACT_REDIRECT);
  assert.deepEqual(events.map((e) => e.kind), ['trace']);
  assert.equal(events[0].isReply, true);
  ({ verdict } = f.run(CLIENT, tcp(CLIENT, SERVER, 40000, 80, TcpFlag.ACK)));
  assert.equal(verdict, TC_ACT_REDIRECT);
  ({ verdict } = f.run(SERVER, tcp(SERVER, CLIENT, 80, 40000, TcpFlag.ACK)));
  assert.equal(verdict, TC_ACT_REDIRECT);

  // A new connection the other way: SERVER's egress denies it (default).
  ({ verdict, events } = f.run(SERVER, tcp(SERVER, CLIENT, 80, 40000 + 1, TcpFlag.SYN)));
  assert.equal(verdict, TC_ACT_SHOT);
  assert.deepEqual(events.map((e) => e.kind), ['policy-verdict', 'drop']);
  assert.deepEqual([verdicts(events)[0].endpointId, verdicts(events)[0].directionName], [SERVER.id, 'egress']);
  assert.equal(drops(events)[0].reason, 133);
  assert.equal(drops(events)[0].source, SERVER.id);

  // With SERVER's egress open, CLIENT's ingress (nothing allowed) denies it instead.
  f.policy.apply(SERVER.id, { upserts: [ALLOW_ALL_EGRESS], deletes: [] });
  ({ verdict, events } = f.run(SERVER, tcp(SERVER, CLIENT, 80, 40000 + 1, TcpFlag.SYN)));
  assert.equal(verdict, TC_ACT_SHOT);
  const [clientIngress] = verdicts(events);
  assert.deepEqual([clientIngress.endpointId, clientIngress.directionName, clientIngress.verdict], [CLIENT.id, 'ingress', PolicyVerdict.DENIED_DEFAULT]);

  // Client → server on another port: CLIENT's egress allows it, SERVER's ingress does not.
  ({ verdict, events } = f.run(CLIENT, tcp(CLIENT, SERVER, 40003, 8080, TcpFlag.SYN)));
  assert.equal(verdict, TC_ACT_SHOT);
  assert.deepEqual(verdicts(events).map((v) => [v.endpointId, v.allowed]), [[SERVER.id, false]]);
  assert.equal(drops(events)[0].reason, 133);
});

test('ICMP is judged by type; echo replies pass through conntrack', (t) => {
  const f = setup(t);
  f.policy.apply(CLIENT.id, { upserts: [ALLOW_ALL_EGRESS], deletes: [] });
  f.policy.apply(SERVER.id, { upserts: [entry({ identity: CLIENT.identity, direction: PolicyDirection.INGRESS, protocol: 1, port: 8, cookie: 5 })], deletes: [] });
  const echo = (type: number) => buildIpv4Frame({ src: type === 8 ? CLIENT.ip : SERVER.ip, dst: type === 8 ? SERVER.ip : CLIENT.ip, icmp: { type, id: 77, sequence: 1 } });
  let { verdict, events } = f.run(CLIENT, echo(8));
  assert.equal(verdict, TC_ACT_REDIRECT);
  assert.deepEqual(verdicts(events).map((v) => [v.protocolName, v.dport, v.cookie]), [['ICMP', 8, 5]], "the server's ingress rule; the client's unenforced egress says nothing");
  ({ verdict, events } = f.run(SERVER, echo(0)));
  assert.equal(verdict, TC_ACT_REDIRECT);
  assert.equal(verdicts(events).length, 0);
  // A timestamp request (type 13) is not allowed.
  ({ verdict, events } = f.run(CLIENT, buildIpv4Frame({ src: CLIENT.ip, dst: SERVER.ip, icmp: { type: 13, id: 78, sequence: 1 } })));
  assert.equal(verdict, TC_ACT_SHOT);
  assert.equal(verdicts(events)[0].dport, 13);
});

test('cil_to_container judges ingress with the ipcache identity of the source (HOST, WORLD)', (t) => {
  const f = setup(t);
  const NODE_IP = '192.168.0.10';
  f.maps.ipcache.update({ prefixlen: 32, ip: NODE_IP }, { sec_identity: ReservedIdentity.HOST, tunnel_endpoint: '0.0.0.0', flags: 0 });
  f.policy.apply(CLIENT.id, {
    upserts: [ALLOW_ALL_EGRESS, entry({ identity: ReservedIdentity.HOST, direction: PolicyDirection.INGRESS, cookie: 11 })],
    deletes: [],
  });
  const host = { ...SERVER, ip: NODE_IP };
  const outside = { ...SERVER, ip: '203.0.113.9' };
  let { verdict, events } = f.run(CLIENT, tcp(host, CLIENT, 33000, 8080, TcpFlag.SYN), LxcProgram.TO_CONTAINER);
  assert.equal(verdict, TC_ACT_OK);
  let [v] = verdicts(events);
  assert.deepEqual([v.remoteIdentity, v.directionName, v.matchName, v.cookie, v.endpointId], [ReservedIdentity.HOST, 'ingress', 'L3-Only', 11, CLIENT.id]);
  assert.equal(v.ingress, true);
  assert.ok(f.maps.ct4.lookup({ daddr: CLIENT.ip, saddr: NODE_IP, dport: 8080, sport: 33000, nexthdr: 6, flags: CtDirection.INGRESS }));

  ({ verdict, events } = f.run(CLIENT, tcp(outside, CLIENT, 33000, 8080, TcpFlag.SYN), LxcProgram.TO_CONTAINER));
  assert.equal(verdict, TC_ACT_SHOT);
  [v] = verdicts(events);
  assert.equal(v.remoteIdentity, ReservedIdentity.WORLD);
  assert.equal(drops(events)[0].reason, 133);
  assert.equal(drops(events)[0].ingress, true);
  assert.equal(f.maps.ct4.lookup({ daddr: CLIENT.ip, saddr: outside.ip, dport: 8080, sport: 33000, nexthdr: 6, flags: CtDirection.INGRESS }), undefined);
});

test('EndpointPolicyMaps: ensure is idempotent and adopts a pin after a restart; remove uninstalls; no map means allow-all without events', (t) => {
  const f = setup(t);
  const first = f.policy.ensure(CLIENT.id);
  assert.equal(f.policy.ensure(CLIENT.id), first);
  const id = first.info().id;
  assert.equal(f.maps.policyMaps.lookup(CLIENT.id), id);
  f.policy.apply(CLIENT.id, { upserts: [entry({ identity: SERVER.identity, direction: PolicyDirection.EGRESS, protocol: 6, port: 80, cookie: 1 })], deletes: [] });

  // A new agent: same pin, same map, same entries.
  const restarted = new EndpointPolicyMaps(f.root);
  t.after(() => restarted.close());
  assert.equal(restarted.ensure(CLIENT.id).info().id, id);
  assert.deepEqual(restarted.entries(CLIENT.id), [
    { key: { identity: SERVER.identity, direction: PolicyDirection.EGRESS, protocol: 6, port: 80, prefixLen: 64 }, deny: false, cookie: 1 },
  ]);
  // The outer entry lost (e.g. maps recreated): ensure puts the pinned map back.
  f.maps.policyMaps.delete(CLIENT.id);
  assert.equal(restarted.installed(CLIENT.id), false);
  restarted.ensure(CLIENT.id);
  assert.equal(f.maps.policyMaps.lookup(CLIENT.id), id);

  assert.equal(f.run(CLIENT, tcp(CLIENT, SERVER, 40000, 81, TcpFlag.SYN)).verdict, TC_ACT_SHOT);
  restarted.remove(CLIENT.id);
  f.policy.remove(CLIENT.id);
  assert.equal(existsSync(endpointPolicyPinPath(f.root, CLIENT.id)), false);
  assert.equal(restarted.entries(CLIENT.id).length, 0);
  const { verdict, events } = f.run(CLIENT, tcp(CLIENT, SERVER, 40001, 81, TcpFlag.SYN));
  assert.equal(verdict, TC_ACT_REDIRECT, 'no policy map: not enforced');
  assert.deepEqual(events.map((e) => e.kind), ['trace']);
  assert.equal(MonitorEventType.POLICY_VERDICT, 5);
});

test('EndpointPolicyMaps spares: installed ahead and empty (deny-all), an add claims one without an outer write, a new agent never adopts one', async (t) => {
  const f = setup(t);
  const policy = new EndpointPolicyMaps(f.root, { spares: 2 });
  t.after(() => policy.close());
  const THIRD = 13;
  await policy.prepareSpares([CLIENT.id, THIRD, SERVER.id]);
  assert.deepEqual(policy.spareIds().sort(), [CLIENT.id, THIRD], 'spareSlots bounds the ids taken');
  const spareMapId = f.maps.policyMaps.lookup(CLIENT.id);
  assert.notEqual(spareMapId, undefined);
  assert.notEqual(f.maps.policyMaps.lookup(THIRD), undefined);
  assert.equal(f.maps.policyMaps.lookup(SERVER.id), undefined);
  assert.deepEqual(policy.installedIds(), [], 'spares are no endpoint\'s');
  assert.equal(policy.installed(CLIENT.id), false);
  assert.equal(existsSync(endpointPolicyPinPath(f.root, CLIENT.id)), false, 'spares are not pinned');

  // Were a spare's id ever reached (here the fixture has an lxc entry for it), its empty map denies.
  const denied = f.run(CLIENT, tcp(CLIENT, SERVER, 40000, 80, TcpFlag.SYN));
  assert.equal(denied.verdict, TC_ACT_SHOT);
  assert.deepEqual(drops(denied.events).map((d) => d.reason), [DropReasonCode.DROP_POLICY]);

  // The add: install() finds the spare in place; the entries go into it.
  await policy.install(CLIENT.id);
  assert.equal(policy.ensure(CLIENT.id).info().id, spareMapId);
  assert.equal(f.maps.policyMaps.lookup(CLIENT.id), spareMapId);
  assert.equal(existsSync(endpointPolicyPinPath(f.root, CLIENT.id)), true, 'pinned once claimed');
  assert.deepEqual(policy.spareIds(), [THIRD]);
  assert.deepEqual(policy.installedIds(), [CLIENT.id]);
  policy.apply(CLIENT.id, { upserts: [entry({ identity: SERVER.identity, direction: PolicyDirection.EGRESS, protocol: 6, port: 80, cookie: 1 })], deletes: [] });
  assert.equal(f.run(CLIENT, tcp(CLIENT, SERVER, 40001, 80, TcpFlag.SYN)).verdict, TC_ACT_REDIRECT);
  // No spare over an endpoint's map.
  await policy.prepareSpares([CLIENT.id]);
  assert.equal(f.maps.policyMaps.lookup(CLIENT.id), spareMapId);
  assert.equal(policy.entries(CLIENT.id).length, 1);

  // A new agent (after a stop or a crash) sees the spare left in the outer map as an entry of an
  // id without an endpoint, for its start's sweep; an add of that id gets a map of its own.
  const restarted = new EndpointPolicyMaps(f.root, { spares: 2 });
  t.after(() => restarted.close());
  assert.deepEqual(restarted.installedIds().sort(), [CLIENT.id, THIRD]);
  const leftSpare = f.maps.policyMaps.lookup(THIRD);
  await restarted.install(THIRD);
  assert.notEqual(f.maps.policyMaps.lookup(THIRD), leftSpare);
  assert.equal(f.maps.policyMaps.lookup(THIRD), restarted.ensure(THIRD).info().id);
  restarted.remove(THIRD);
  assert.equal(f.maps.policyMaps.lookup(THIRD), undefined);
});

test('an entry with L7 rules allows only into the node proxy: no proxy listening drops the SYN untracked (178); from the stack the connection is hairpinned to the veth\'s ingress, marked for the proxy port, and its ingress hands it to the proxy (178 with nobody listening); not TCP drops it (180); never delivered', (t) => {
  const f = setup(t);
  const l7 = (e: PolicyMapEntry): PolicyMapEntry => ({ ...e, l7: [{ ruleKey: 'CiliumNetworkPolicy/default/rule1', http: [{ method: 'POST' }] }] });
  f.policy.apply(CLIENT.id, { upserts: [ALLOW_ALL_EGRESS, ALLOW_ALL_INGRESS], deletes: [] });
  f.policy.apply(SERVER.id, {
    upserts: [
      ALLOW_ALL_EGRESS,
      l7(entry({ identity: CLIENT.identity, direction: PolicyDirection.INGRESS, protocol: 6, port: 80, cookie: 5 })),
      l7(entry({ identity: ReservedIdentity.WORLD, direction: PolicyDirection.INGRESS, protocol: 6, port: 80, cookie: 5 })),
    ],
    deletes: [],
  });
  // From a pod of this node: the connection is the proxy's, and nobody listens in this namespace.
  for (let attempt = 0; attempt < 2; attempt++) {
    const { verdict, events } = f.run(CLIENT, tcp(CLIENT, SERVER, 41000, 80, TcpFlag.SYN));
    assert.equal(verdict, TC_ACT_SHOT);
    assert.equal(verdicts(events)[0].allowed, true, 'policy allowed it, into the proxy');
    assert.equal(drops(events)[0].reason, DropReasonCode.DROP_PROXY_LOOKUP_FAILED);
    assert.equal(f.maps.ct4.lookup(ctKey(CLIENT, SERVER, 41000, 80)), undefined, 'no conntrack entry: the retransmission is redirected anew');
  }
  // From the stack (outside, the host): tracked as redirected, then back to the ingress of the
  // server's veth, marked for the proxy port, the frame as if the server had sent it to the node.
  const outside = { ...CLIENT, ip: '203.0.113.9' };
  const inbound = buildIpv4Frame({ srcMac: SERVER.nodeMac, dstMac: SERVER.mac, src: outside.ip, dst: SERVER.ip, tcp: { sport: 41001, dport: 80, flags: TcpFlag.SYN } });
  const hairpin = f.runFull(SERVER, inbound, LxcProgram.TO_CONTAINER);
  assert.equal(hairpin.verdict, TC_ACT_REDIRECT);
  assert.deepEqual(drops(hairpin.events), []);
  assert.equal(verdicts(hairpin.events)[0].allowed, true);
  const mark = skbMark(hairpin.context);
  assert.equal(mark, (L7_PROXY_PORT << 16) | 0x0200, 'MARK_MAGIC_TO_PROXY with the proxy port above it (bpf/lib/proxy.h)');
  assert.deepEqual([hairpin.data.subarray(0, 6), hairpin.data.subarray(6, 12)], [macBytes(SERVER.nodeMac), macBytes(SERVER.mac)], 'to the node, from the pod');
  const inKey = { daddr: SERVER.ip, saddr: outside.ip, dport: 80, sport: 41001, nexthdr: 6, flags: CtDirection.INGRESS };
  const tracked = f.maps.ct4.lookup(inKey);
  assert.ok(tracked && tracked.flags & CtFlag.PROXY_REDIRECT, 'tracked as redirected');
  assert.equal(tracked.proxy_port, L7_PROXY_PORT);
  assert.equal(tracked.src_sec_id, ReservedIdentity.WORLD);
  // Its ingress (cil_from_container, with the mark) skips the pod's checks (the source is not
  // the pod's) and goes for the proxy's listener: nobody listens in this namespace.
  const assigned = f.runFull(SERVER, hairpin.data, LxcProgram.FROM_CONTAINER, mark);
  assert.equal(assigned.verdict, TC_ACT_SHOT);
  assert.deepEqual(drops(assigned.events).map((d) => [d.reason, d.srcIdentity]), [[DropReasonCode.DROP_PROXY_LOOKUP_FAILED, ReservedIdentity.WORLD]], 'the proxy\'s drop, not the pod\'s source check (132)');
  // The mark on a connection conntrack never sent to the proxy (or to another port) is no way in.
  const unknown = buildIpv4Frame({ srcMac: SERVER.mac, dstMac: SERVER.nodeMac, src: outside.ip, dst: SERVER.ip, tcp: { sport: 41002, dport: 80, flags: TcpFlag.SYN } });
  for (const [frame, m] of [[unknown, mark], [hairpin.data, ((L7_PROXY_PORT + 1) << 16) | 0x0200]] as const) {
    const forged = f.runFull(SERVER, frame, LxcProgram.FROM_CONTAINER, m);
    assert.equal(forged.verdict, TC_ACT_SHOT);
    assert.deepEqual(drops(forged.events).map((d) => d.reason), [DropReasonCode.DROP_PROXY_SET_FAILED]);
  }
  // The proxy speaks HTTP only: UDP an L7 entry allows from the stack is dropped, untracked.
  f.policy.apply(SERVER.id, { upserts: [l7(entry({ identity: ReservedIdentity.WORLD, direction: PolicyDirection.INGRESS, protocol: 17, port: 80, cookie: 5 }))], deletes: [] });
  const datagram = buildIpv4Frame({ srcMac: SERVER.nodeMac, dstMac: SERVER.mac, src: outside.ip, dst: SERVER.ip, udp: { sport: 41003, dport: 80 }, payload: Buffer.alloc(8) });
  const { verdict, events } = f.run(SERVER, datagram, LxcProgram.TO_CONTAINER);
  assert.equal(verdict, TC_ACT_SHOT);
  assert.equal(drops(events)[0].reason, DropReasonCode.DROP_PROXY_UNSUPPORTED);
  assert.equal(f.maps.ct4.lookup({ ...inKey, sport: 41003, nexthdr: 17 }), undefined);
});

test('an egress entry with DNS rules sends UDP and TCP to the DNS proxy: with nobody listening the query is dropped untracked (178), never let through to the resolver', (t) => {
  const f = setup(t);
  const dns = (e: PolicyMapEntry): PolicyMapEntry => ({ ...e, dns: true });
  f.policy.apply(CLIENT.id, {
    upserts: [dns(entry({ identity: SERVER.identity, direction: PolicyDirection.EGRESS, protocol: 17, port: 53, cookie: 9 })), dns(entry({ identity: SERVER.identity, direction: PolicyDirection.EGRESS, protocol: 6, port: 53, cookie: 9 })), ALLOW_ALL_INGRESS],
    deletes: [],
  });
  f.policy.apply(SERVER.id, { upserts: [ALLOW_ALL_EGRESS, ALLOW_ALL_INGRESS], deletes: [] });
  const query = buildIpv4Frame({ srcMac: CLIENT.mac, dstMac: CLIENT.nodeMac, src: CLIENT.ip, dst: SERVER.ip, udp: { sport: 43000, dport: 53 }, payload: Buffer.alloc(30) });
  for (const [frame, protocol] of [[query, 17], [tcp(CLIENT, SERVER, 43001, 53, TcpFlag.SYN), 6]] as const) {
    const { verdict, events } = f.run(CLIENT, frame);
    assert.equal(verdict, TC_ACT_SHOT, `protocol ${protocol}`);
    assert.equal(verdicts(events)[0].allowed, true, 'policy allowed it, into the DNS proxy');
    assert.deepEqual(drops(events).map((d) => d.reason), [DropReasonCode.DROP_PROXY_LOOKUP_FAILED]);
  }
  assert.equal(f.maps.ct4.lookup({ ...ctKey(CLIENT, SERVER, 43000, 53), nexthdr: 17 }), undefined, 'no conntrack entry: the next datagram is judged and redirected anew');
});

test('a SYN reusing a closed connection\'s tuple is a new connection: judged again, and allowed it replaces the old entry (no proxy redirect, no service); a retransmitted SYN of a live one stays established', (t) => {
  const f = setup(t);
  const allowHttp = entry({ identity: CLIENT.identity, direction: PolicyDirection.INGRESS, protocol: 6, port: 80, cookie: 42 });
  f.policy.apply(CLIENT.id, { upserts: [ALLOW_ALL_EGRESS], deletes: [] }); // ingress: nothing allowed
  f.policy.apply(SERVER.id, { upserts: [allowHttp], deletes: [] }); // egress: nothing allowed
  const key = ctKey(CLIENT, SERVER, 42000, 80);
  const closed = CtFlag.TX_CLOSING | CtFlag.RX_CLOSING;
  const closeBothWays = () => {
    for (const [from, to, sport, dport] of [[CLIENT, SERVER, 42000, 80], [SERVER, CLIENT, 80, 42000], [CLIENT, SERVER, 42000, 80]] as const)
      assert.equal(f.run(from, tcp(from, to, sport, dport, TcpFlag.FIN | TcpFlag.ACK)).verdict, TC_ACT_REDIRECT);
    assert.equal((f.maps.ct4.lookup(key)?.flags ?? 0) & closed, closed);
  };

  let { verdict, events } = f.run(CLIENT, tcp(CLIENT, SERVER, 42000, 80, TcpFlag.SYN));
  assert.equal(verdict, TC_ACT_REDIRECT);
  assert.deepEqual(verdicts(events).map((v) => [v.allowed, v.ctStatus]), [[true, CtStatus.NEW]]);
  // A retransmission of the SYN, the connection alive: established, not judged again.
  f.policy.apply(SERVER.id, { upserts: [], deletes: [allowHttp.key] });
  ({ verdict, events } = f.run(CLIENT, tcp(CLIENT, SERVER, 42000, 80, TcpFlag.SYN)));
  assert.equal(verdict, TC_ACT_REDIRECT);
  assert.deepEqual(verdicts(events), []);
  assert.equal(f.maps.ct4.lookup(key)?.packets, 2);
  f.policy.apply(SERVER.id, { upserts: [allowHttp], deletes: [] });
  assert.equal(f.run(SERVER, tcp(SERVER, CLIENT, 80, 42000, TcpFlag.SYN | TcpFlag.ACK)).verdict, TC_ACT_REDIRECT);
  closeBothWays();

  // What a closed connection leaves in its entry when it went through the node proxy and a service.
  const old = f.maps.ct4.lookup(key)!;
  f.maps.ct4.update(key, { ...old, flags: old.flags | CtFlag.PROXY_REDIRECT, rev_nat_index: 9 });

  // The allow rule deleted: every SYN on the reused tuple is denied (133), the old entry left as it was.
  f.policy.apply(SERVER.id, { upserts: [], deletes: [allowHttp.key] });
  for (let attempt = 0; attempt < 2; attempt++) {
    ({ verdict, events } = f.run(CLIENT, tcp(CLIENT, SERVER, 42000, 80, TcpFlag.SYN)));
    assert.equal(verdict, TC_ACT_SHOT);
    assert.deepEqual(verdicts(events).map((v) => [v.endpointId, v.allowed, v.ctStatus]), [[SERVER.id, false, CtStatus.NEW]]);
    assert.deepEqual(drops(events).map((d) => d.reason), [133]);
    assert.deepEqual(f.maps.ct4.lookup(key), { ...old, flags: old.flags | CtFlag.PROXY_REDIRECT, rev_nat_index: 9 });
  }

  // Allowed again: a fresh entry in place of the old one, nothing of it carried over.
  f.policy.apply(SERVER.id, { upserts: [allowHttp], deletes: [] });
  ({ verdict, events } = f.run(CLIENT, tcp(CLIENT, SERVER, 42000, 80, TcpFlag.SYN)));
  assert.equal(verdict, TC_ACT_REDIRECT);
  assert.deepEqual(verdicts(events).map((v) => [v.allowed, v.cookie, v.ctStatus]), [[true, 42, CtStatus.NEW]]);
  const fresh = f.maps.ct4.lookup(key)!;
  assert.deepEqual(
    [fresh.packets, fresh.flags, fresh.tx_flags_seen, fresh.rx_flags_seen, fresh.rev_nat_index, fresh.backend_id, fresh.src_sec_id],
    [1, 0, TcpFlag.SYN, 0, 0, 0, CLIENT.identity],
  );
  ({ verdict, events } = f.run(SERVER, tcp(SERVER, CLIENT, 80, 42000, TcpFlag.SYN | TcpFlag.ACK)));
  assert.equal(verdict, TC_ACT_REDIRECT);
  assert.deepEqual(events.map((e) => [e.kind, e.isReply]), [['trace', true]], 'the SYN-ACK is the new connection\'s reply');
  closeBothWays();

  // The same tuple opened the other way (SERVER:80 → CLIENT:42000) is new too: SERVER's egress denies it.
  ({ verdict, events } = f.run(SERVER, tcp(SERVER, CLIENT, 80, 42000, TcpFlag.SYN)));
  assert.equal(verdict, TC_ACT_SHOT);
  assert.deepEqual(verdicts(events).map((v) => [v.endpointId, v.directionName, v.allowed]), [[SERVER.id, 'egress', false]]);
  assert.deepEqual(drops(events).map((d) => d.reason), [133]);
  // Allowed, it takes the old connection's place: CLIENT's answer is its reply, not the old connection's packet.
  f.policy.apply(SERVER.id, { upserts: [ALLOW_ALL_EGRESS], deletes: [] });
  f.policy.apply(CLIENT.id, { upserts: [ALLOW_ALL_INGRESS], deletes: [] });
  ({ verdict, events } = f.run(SERVER, tcp(SERVER, CLIENT, 80, 42000, TcpFlag.SYN)));
  assert.equal(verdict, TC_ACT_REDIRECT);
  assert.equal(f.maps.ct4.lookup(key), undefined, 'the closed connection\'s entry is gone');
  assert.equal(f.maps.ct4.lookup(ctKey(SERVER, CLIENT, 80, 42000))?.flags, 0);
  ({ verdict, events } = f.run(CLIENT, tcp(CLIENT, SERVER, 42000, 80, TcpFlag.SYN | TcpFlag.ACK)));
  assert.equal(verdict, TC_ACT_REDIRECT);
  assert.deepEqual(events.map((e) => [e.kind, e.isReply]), [['trace', true]]);
});
