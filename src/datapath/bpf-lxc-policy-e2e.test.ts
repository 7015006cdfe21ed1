/**
 * Policy enforcement with real traffic: a "node" namespace and three "pod" namespaces joined by
 * veth pairs carrying bpf_lxc.o at TCX (as bpf-lxc-e2e.test.ts), policy maps written through
 * EndpointPolicyMaps. Pod A may reach pod B on TCP 80 and with pings only; pod C may not reach B
 * at all; A's own ingress allows nothing, so what reaches A are replies conntrack lets through.
 * Needs root and `bash scripts/build-bpf.sh`.
 * @module
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { once } from 'node:events';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { RingBuffer, attachTcx, inNetns, namedNetns, type BpfObject, type Link } from '../ebpf/index.ts';
import { pinDir, run } from '../ebpf/internal/testutils.ts';
import { PolicyDirection, type PolicyMapEntry } from '../policy/policy-map.ts';
import { decodeEvent, type DatapathEvent, type DropEvent, type PolicyVerdictEvent } from './events.ts';
import { LxcProgram, loadLxc, lxcMaps } from './lxc.ts';
import { CtDirection, CtFlag } from './maps.ts';
import { EndpointPolicyMaps } from './policy-maps.ts';
import { attachPod, podTopology, type Pod } from './testutils.ts';

const execFileAsync = promisify(execFile);
function topology(t: TestContext, count: number): { node: string; pods: Pod[] } {
  return podTopology(t, { count, prefix: 'cpl', firstHost: 20, firstId: 200, firstIdentity: 30000 });
}

/** Whether `count` pings all got answers. */
function pings(from: Pod, to: Pod, count: number): boolean {
  try {
    run('ip', ['netns', 'exec', from.netns, 'ping', '-c', String(count), '-i', '0.2', '-W', '1', to.ip]);
    return true;
  } catch {
    return false;
  }
}

const SERVER_SOURCE = `
const net = require('node:net');
const server = net.createServer((socket) => { socket.on('data', (data) => socket.end('pong:' + data)); });
server.listen(Number(process.argv[2]), process.argv[1], () => console.log('listening'));
`;

/** Connects and exchanges one message; prints the reply, or 'timeout' when nothing answers within 1.5 s. */
const CLIENT_SOURCE = `
const net = require('node:net');
const socket = net.connect(Number(process.argv[2]), process.argv[1], () => socket.write('ping'));
let reply = '';
socket.on('data', (data) => { reply += data; });
socket.on('end', () => { console.log(reply); });
socket.on('error', (e) => { console.log('error:' + e.code); });
socket.setTimeout(1500, () => { console.log('timeout'); process.exit(0); });
`;

function entry(identity: number, direction: PolicyDirection, cookie: number, l4?: { protocol: number; port: number }): PolicyMapEntry {
  return {
    key: { identity, direction, protocol: l4?.protocol ?? 0, port: l4?.port ?? 0, prefixLen: l4 ? 64 : 40 },
    deny: false,
    cookie,
    ruleKeys: [],
  };
}

test('policy with real traffic: A→B TCP 80 and ping allowed, TCP 81 dropped, C→B dropped with 133, replies flow', async (t) => {
  const { node, pods } = topology(t, 3);
  const [a, b, c] = pods;
  const root = pinDir(t);
  const mapsDir = join(root, 'maps');
  mkdirSync(mapsDir);
  const objects: BpfObject[] = [];
  const links: Link[] = [];
  const servers: ReturnType<typeof spawn>[] = [];
  let ring: RingBuffer | undefined;
  let policy: EndpointPolicyMaps | undefined;
  t.after(() => {
    for (const s of servers) s.kill();
    for (const link of links) link.close();
    ring?.close();
    policy?.close();
    for (const obj of objects) obj.close();
  });

  // Policy first, as the agent does: maps installed before the programs are attached.
  const obj = loadLxc({ pinDir: mapsDir });
  objects.push(obj);
  policy = new EndpointPolicyMaps(root);
  const RULE_B_HTTP = 101;
  const RULE_B_PING = 102;
  policy.apply(a.id, { upserts: [entry(0, PolicyDirection.EGRESS, 0)], deletes: [] }); // ingress: nothing allowed
  policy.apply(b.id, {
    upserts: [
      entry(0, PolicyDirection.EGRESS, 0),
      entry(a.identity, PolicyDirection.INGRESS, RULE_B_HTTP, { protocol: 6, port: 80 }),
      entry(a.identity, PolicyDirection.INGRESS, RULE_B_PING, { protocol: 1, port: 8 }),
    ],
    deletes: [],
  });
  policy.apply(c.id, { upserts: [entry(0, PolicyDirection.EGRESS, 0), entry(0, PolicyDirection.INGRESS, 0)], deletes: [] });

  for (const pod of pods) attachPod(pod, node, obj, links);
  const maps = lxcMaps(obj);
  ring = new RingBuffer(maps.events, { lostCounter: maps.eventsLost });

  // Servers on B: ports 80 and 81.
  for (const port of [80, 81]) {
    const server = spawn('ip', ['netns', 'exec', b.netns, process.execPath, '-e', SERVER_SOURCE, b.ip, String(port)], { stdio: ['ignore', 'pipe', 'inherit'] });
    servers.push(server);
    const [first] = (await once(server.stdout!, 'data', { signal: AbortSignal.timeout(10000) })) as [Buffer];
    assert.match(first.toString(), /listening/);
  }
  const exchange = async (from: Pod, port: number): Promise<string> => {
    const { stdout } = await execFileAsync('ip', ['netns', 'exec', from.netns, process.execPath, '-e', CLIENT_SOURCE, b.ip, String(port)], { timeout: 10000 });
    return stdout.trim();
  };

  assert.equal(await exchange(a, 80), 'pong:ping', 'A→B TCP 80 is allowed, and the replies into A (whose ingress allows nothing) flow');
  assert.equal(await exchange(a, 81), 'timeout', 'A→B TCP 81 is dropped');
  assert.equal(await exchange(c, 80), 'timeout', 'C→B is dropped');
  assert.equal(pings(a, b, 3), true, 'A→B pings and their replies flow');
  assert.equal(pings(c, b, 1), false, 'C→B pings are dropped');
  assert.equal(pings(b, a, 1), false, 'B→A: A\'s ingress allows nothing new');

  const events: DatapathEvent[] = [];
  ring.consume((_view, offset, length, bytes) => void events.push(decodeEvent(bytes, offset, length)));
  assert.equal(ring.lost(), 0n);
  const verdicts = events.filter((e): e is PolicyVerdictEvent => e.kind === 'policy-verdict');
  const dropsTo = (from: Pod, to: Pod) =>
    events.filter((e): e is DropEvent => e.kind === 'drop' && e.packet.ipv4?.source === from.ip && e.packet.ipv4.destination === to.ip);
  const tcpTo = (e: DatapathEvent, port: number) => e.packet.l4?.protocol === 'TCP' && e.packet.l4.destinationPort === port;

  // A→B :80, allowed by B's ingress rule 101 (L3-L4), one verdict per enforced direction per connection.
  const httpIngress = verdicts.filter((v) => v.endpointId === b.id && v.directionName === 'ingress' && v.remoteIdentity === a.identity && v.dport === 80);
  assert.equal(httpIngress.length, 1, 'only the SYN is judged');
  assert.deepEqual([httpIngress[0].allowed, httpIngress[0].cookie, httpIngress[0].matchName, httpIngress[0].protocolName], [true, RULE_B_HTTP, 'L3-L4', 'TCP']);
  const httpEgress = verdicts.filter((v) => v.endpointId === a.id && v.directionName === 'egress' && v.dport === 80);
  assert.deepEqual(httpEgress, [], "A's egress, which no rule enforces, reports no verdict (Cilium's policy verdict log filter)");

  // A→B :81: every SYN (the first and its retransmissions) denied by default, 133.
  const drops81 = dropsTo(a, b).filter((e) => tcpTo(e, 81));
  assert.ok(drops81.length >= 1);
  assert.ok(drops81.every((d) => d.reason === 133 && d.reasonName === 'POLICY_DENIED'));
  assert.ok(verdicts.some((v) => v.endpointId === b.id && v.dport === 81 && !v.allowed && v.matchName === 'none' && v.cookie === 0));

  // C→B: dropped with 133, B's ingress deciding.
  const dropsC = dropsTo(c, b);
  assert.ok(dropsC.some((e) => tcpTo(e, 80)), 'the TCP SYN');
  assert.ok(dropsC.some((e) => e.packet.l4?.protocol === 'ICMPv4' && e.packet.l4.type === 8), 'the ping');
  assert.ok(dropsC.every((d) => d.reason === 133 && d.source === c.id && d.dstId === b.id));
  assert.ok(verdicts.filter((v) => v.remoteIdentity === c.identity).every((v) => v.endpointId === b.id && !v.allowed && v.directionName === 'ingress'));

  // Pings A→B: allowed by rule 102; the replies came through conntrack, so no drops towards A.
  const ping = verdicts.filter((v) => v.endpointId === b.id && v.directionName === 'ingress' && v.protocolName === 'ICMP' && v.remoteIdentity === a.identity);
  assert.ok(ping.length >= 1 && ping.every((v) => v.allowed && v.cookie === RULE_B_PING && v.dport === 8), JSON.stringify(ping.map((v) => [v.allowed, v.cookie, v.dport, v.packet.l4])));
  assert.deepEqual(dropsTo(b, a).filter((e) => e.packet.l4?.protocol !== 'ICMPv4' || e.packet.l4.type !== 8), [], 'no reply to A was dropped');
  assert.ok(dropsTo(b, a).length >= 1, 'B→A ping dropped by A\'s ingress');
  assert.ok(dropsTo(b, a).every((d) => d.reason === 133));
});

/** CLIENT_SOURCE from a fixed source port (argv[3]): node binds it before connecting, with SO_REUSEADDR. */
const FIXED_PORT_CLIENT_SOURCE = CLIENT_SOURCE.replace(
  'net.connect(Number(process.argv[2]), process.argv[1],',
  'net.connect({ host: process.argv[1], port: Number(process.argv[2]), localPort: Number(process.argv[3]) },',
);

test('a connection reusing a closed one\'s addresses and ports is judged again: after the allow rule is deleted it is dropped with 133', async (t) => {
  const { node, pods } = topology(t, 2);
  const [a, b] = pods;
  const root = pinDir(t);
  const mapsDir = join(root, 'maps');
  mkdirSync(mapsDir);
  const links: Link[] = [];
  let server: ReturnType<typeof spawn> | undefined;
  let ring: RingBuffer | undefined;
  let policy: EndpointPolicyMaps | undefined;
  let obj: BpfObject | undefined;
  t.after(() => {
    server?.kill();
    for (const link of links) link.close();
    ring?.close();
    policy?.close();
    obj?.close();
  });

  obj = loadLxc({ pinDir: mapsDir });
  policy = new EndpointPolicyMaps(root);
  const allowHttp = entry(a.identity, PolicyDirection.INGRESS, 101, { protocol: 6, port: 80 });
  policy.apply(a.id, { upserts: [entry(0, PolicyDirection.EGRESS, 0)], deletes: [] });
  policy.apply(b.id, { upserts: [entry(0, PolicyDirection.EGRESS, 0), allowHttp], deletes: [] });
  for (const pod of pods) attachPod(pod, node, obj, links);
  const maps = lxcMaps(obj);
  ring = new RingBuffer(maps.events, { lostCounter: maps.eventsLost });

  server = spawn('ip', ['netns', 'exec', b.netns, process.execPath, '-e', SERVER_SOURCE, b.ip, '80'], { stdio: ['ignore', 'pipe', 'inherit'] });
  const [first] = (await once(server.stdout!, 'data', { signal: AbortSignal.timeout(10000) })) as [Buffer];
  assert.match(first.toString(), /listening/);
  const SPORT = 41234;
  const exchange = async (): Promise<string> => {
    const { stdout } = await execFileAsync('ip', ['netns', 'exec', a.netns, process.execPath, '-e', FIXED_PORT_CLIENT_SOURCE, b.ip, '80', String(SPORT)], { timeout: 10000 });
    return stdout.trim();
  };
  const ctKey = { daddr: b.ip, saddr: a.ip, dport: 80, sport: SPORT, nexthdr: 6, flags: CtDirection.EGRESS };
  const closed = CtFlag.TX_CLOSING | CtFlag.RX_CLOSING;

  // The server closes first (its side waits in TIME_WAIT, which takes a new SYN), both FINs seen.
  assert.equal(await exchange(), 'pong:ping');
  assert.equal((maps.ct4.lookup(ctKey)?.flags ?? 0) & closed, closed, 'both sides closed, the entry stays until its close timeout');
  // The same tuple again, policy unchanged: a new connection, allowed again, on a fresh entry.
  assert.equal(await exchange(), 'pong:ping', 'the reused tuple still connects while policy allows it');

  policy.apply(b.id, { upserts: [], deletes: [allowHttp.key] });
  assert.equal((maps.ct4.lookup(ctKey)?.flags ?? 0) & closed, closed);
  assert.equal(await exchange(), 'timeout', 'the reused tuple is a new connection, which policy no longer allows');

  const events: DatapathEvent[] = [];
  ring.consume((_view, offset, length, bytes) => void events.push(decodeEvent(bytes, offset, length)));
  assert.equal(ring.lost(), 0n);
  const onTuple = (e: DatapathEvent) => e.packet.ipv4?.source === a.ip && e.packet.l4?.protocol === 'TCP' && e.packet.l4.sourcePort === SPORT && e.packet.l4.destinationPort === 80;
  const judged = events.filter((e): e is PolicyVerdictEvent => e.kind === 'policy-verdict' && onTuple(e) && e.endpointId === b.id);
  assert.deepEqual(judged.map((v) => v.allowed).slice(0, 3), [true, true, false], 'each connection\'s SYN judged by B\'s ingress: two allowed, then denied');
  const dropped = events.filter((e): e is DropEvent => e.kind === 'drop' && onTuple(e));
  assert.ok(dropped.length >= 1, 'the SYN of the third connection is dropped');
  assert.ok(dropped.every((d) => d.reason === 133 && d.reasonName === 'POLICY_DENIED' && d.dstId === b.id));
});
