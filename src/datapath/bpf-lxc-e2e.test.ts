/**
 * End to end on the real kernel: a "node" network namespace and two "pod" namespaces, each pod
 * joined to the node by a veth pair whose host side carries the node's one load of bpf_lxc.o at
 * TCX. Ping and TCP between the pods must work, go through bpf_redirect_peer (the host veth
 * towards the destination never transmits them), and show up as to-endpoint trace events. Needs root and `bash scripts/build-bpf.sh`.
 * @module
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile } from 'node:child_process';
import { once } from 'node:events';
import { promisify } from 'node:util';
import { RingBuffer, attachTcx, inNetns, namedNetns, type BpfObject, type Link } from '../ebpf/index.ts';
import { pinDir, run } from '../ebpf/internal/testutils.ts';
import { CtStatus, decodeEvent, type DatapathEvent, type TraceEvent } from './events.ts';
import { LxcProgram, loadLxc, lxcMaps } from './lxc.ts';
import { DEFAULT_MONITOR_AGGREGATION_FLAGS, MONITOR_AGGREGATION_LEVELS, writeMonitorConfig } from './monitor-config.ts';
import { attachPod, linkJson, podTopology, type Pod } from './testutils.ts';

const execFileAsync = promisify(execFile);

function txPackets(netns: string, dev: string): number {
  const stats = linkJson(netns, dev, true).stats64;
  assert.ok(stats, `ip -s reported no statistics for ${dev}`);
  return stats.tx.packets;
}

function topology(t: TestContext): { node: string; pods: [Pod, Pod] } {
  const { node, pods } = podTopology(t, { count: 2, prefix: 'cil', firstHost: 10, firstId: 100, firstIdentity: 20000 });
  return { node, pods: pods as [Pod, Pod] };
}

function ping(from: Pod, to: Pod, count: number): string {
  return run('ip', ['netns', 'exec', from.netns, 'ping', '-c', String(count), '-i', '0.2', '-W', '2', to.ip]);
}

const SERVER_SOURCE = `
const net = require('node:net');
const server = net.createServer((socket) => {
  socket.on('data', (data) => { socket.end('pong:' + data); server.close(); });
});
server.listen(Number(process.argv[2]), process.argv[1], () => console.log('listening'));
`;

const CLIENT_SOURCE = `
const net = require('node:net');
const socket = net.connect(Number(process.argv[2]), process.argv[1], () => socket.write('ping'));
let reply = '';
socket.on('data', (data) => { reply += data; });
socket.on('end', () => { console.log(reply); });
socket.setTimeout(5000, () => { console.error('timeout'); process.exit(2); });
`;

/** A TCP round trip: a one-shot server in `to`, a client in `from`; returns what the client got. */
async function tcpExchange(from: Pod, to: Pod, port: number): Promise<string> {
  const server = spawn('ip', ['netns', 'exec', to.netns, process.execPath, '-e', SERVER_SOURCE, to.ip, String(port)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  try {
    const [first] = (await once(server.stdout, 'data', { signal: AbortSignal.timeout(10000) })) as [Buffer];
    assert.match(first.toString(), /listening/);
    const { stdout } = await execFileAsync(
      'ip',
      ['netns', 'exec', from.netns, process.execPath, '-e', CLIENT_SOURCE, to.ip, String(port)],
      { timeout: 10000 },
    );
    return stdout.trim();
  } finally {
    server.kill();
  }
}

test('pods on one node reach each other through bpf_redirect_peer, reported as to-endpoint', async (t) => {
  const { node, pods } = topology(t);
  const [a, b] = pods;
  const pins = pinDir(t);

  const objects: BpfObject[] = [];
  const links: Link[] = [];
  let ring: RingBuffer | undefined;
  t.after(() => {
    for (const link of links) link.close();
    ring?.close();
    for (const obj of objects) obj.close();
  });

  const obj = loadLxc({ pinDir: pins });
  objects.push(obj);
  for (const pod of pods) attachPod(pod, node, obj, links);
  const maps = lxcMaps(obj);
  assert.equal([...maps.lxc.keys()].length, 2, 'both endpoints in the one pinned endpoint map');
  // A trace per packet, so every echo delivered shows (medium would report a flow's first ones).
  writeMonitorConfig(maps.monitorCfg, { level: 'none', flags: DEFAULT_MONITOR_AGGREGATION_FLAGS, intervalSeconds: 5 });
  ring = new RingBuffer(maps.events, { lostCounter: maps.eventsLost });

  const txBefore = txPackets(node, b.hostIf);
  const pingOut = ping(a, b, 5);
  assert.match(pingOut, /5 received/);
  assert.match(pingOut, /ttl=63/, 'one routing hop: the TTL was decremented once');
  const txAfter = txPackets(node, b.hostIf);
  assert.ok(txAfter - txBefore < 5, `requests bypassed ${b.hostIf}'s transmit path (tx grew by ${txAfter - txBefore})`);

  assert.equal(await tcpExchange(a, b, 8080), 'pong:ping');
  assert.equal(await tcpExchange(b, a, 9090), 'pong:ping');

  const events: DatapathEvent[] = [];
  ring.consume((_view, offset, length, bytes) => void events.push(decodeEvent(bytes, offset, length)));
  assert.equal(ring.lost(), 0n);
  const drops = events.filter((e) => e.kind === 'drop');
  assert.deepEqual(drops, [], 'no drops');
  const traces = events.filter((e): e is TraceEvent => e.kind === 'trace' && e.observationPointName === 'to-endpoint');
  const between = (from: Pod, to: Pod) =>
    traces.filter((e) => e.packet.ipv4?.source === from.ip && e.packet.ipv4.destination === to.ip);

  const requests = between(a, b).filter((e) => e.packet.l4?.protocol === 'ICMPv4' && e.packet.l4.type === 8);
  const replies = between(b, a).filter((e) => e.packet.l4?.protocol === 'ICMPv4' && e.packet.l4.type === 0);
  assert.equal(requests.length, 5);
  assert.equal(replies.length, 5);
  for (const e of requests) {
    assert.equal(e.source, a.id);
    assert.equal(e.srcIdentity, a.identity);
    assert.equal(e.dstIdentity, b.identity);
    assert.equal(e.dstId, b.id);
    assert.equal(e.dstIfindex, b.hostIfindex);
    assert.equal(e.ifindex, a.hostIfindex);
    assert.equal(e.isReply, false);
    assert.equal(e.packet.ethernet?.destination, b.podMac);
    assert.equal(e.packet.ethernet?.source, b.hostMac);
    assert.equal(e.packet.ipv4?.checksumValid, true);
  }
  assert.deepEqual(requests.map((e) => e.ctStatus), [CtStatus.NEW, ...Array(4).fill(CtStatus.ESTABLISHED)]);
  for (const e of replies) {
    assert.equal(e.source, b.id);
    assert.equal(e.isReply, true);
    assert.equal(e.ctStatus, CtStatus.REPLY);
  }

  const syn = between(a, b).filter((e) => e.packet.l4?.protocol === 'TCP' && e.packet.l4.flagNames.join() === 'SYN');
  const synAck = between(b, a).filter((e) => e.packet.l4?.protocol === 'TCP' && e.packet.l4.flagNames.join() === 'SYN,ACK');
  assert.equal(syn.length, 1);
  assert.equal(synAck.length, 1);
  assert.equal(syn[0].ctStatus, CtStatus.NEW);
  assert.equal(synAck[0].isReply, true);
  const ct = maps.ct4.lookup({
    daddr: b.ip,
    saddr: a.ip,
    dport: 8080,
    sport: syn[0].packet.l4?.protocol === 'TCP' ? syn[0].packet.l4.sourcePort : 0,
    nexthdr: 6,
    flags: 0,
  });
  assert.ok(ct && ct.packets >= 4, `conntrack counted the connection: ${JSON.stringify(ct)}`);
});

/** Echoes every chunk of one connection, then closes when the client does. */
const ECHO_SERVER_SOURCE = `
const net = require('node:net');
const server = net.createServer((socket) => {
  socket.setNoDelay(true);
  socket.on('data', (data) => socket.write(data));
  socket.on('end', () => { socket.end(); server.close(); });
});
server.listen(Number(process.argv[2]), process.argv[1], () => console.log('listening'));
`;

/** Sends argv[3] one-byte messages, each after the echo of the one before; prints its local port. */
const PING_PONG_CLIENT_SOURCE = `
const net = require('node:net');
let left = Number(process.argv[3]);
let port;
const socket = net.connect(Number(process.argv[2]), process.argv[1], () => { port = socket.localPort; socket.setNoDelay(true); socket.write('x'); });
socket.on('data', () => { if (--left > 0) socket.write('x'); else socket.end(); });
socket.on('close', () => console.log(port));
socket.setTimeout(5000, () => { console.error('timeout'); process.exit(2); });
`;

/** `messages` ping-pong round trips over one TCP connection from `from` to `to`; returns the client's port. */
async function pingPong(from: Pod, to: Pod, port: number, messages: number): Promise<number> {
  const server = spawn('ip', ['netns', 'exec', to.netns, process.execPath, '-e', ECHO_SERVER_SOURCE, to.ip, String(port)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  try {
    const [first] = (await once(server.stdout, 'data', { signal: AbortSignal.timeout(10000) })) as [Buffer];
    assert.match(first.toString(), /listening/);
    const { stdout } = await execFileAsync('ip', ['netns', 'exec', from.netns, process.execPath, '-e', PING_PONG_CLIENT_SOURCE, to.ip, String(port), String(messages)], {
      timeout: 10000,
    });
    return Number(stdout.trim());
  } finally {
    server.kill();
  }
}

test('monitor aggregation on real pods: a trace per packet at none, lowest and low; the connection’s opening, first reply and closes at medium and maximum; drops at every level', async (t) => {
  const { node, pods } = topology(t);
  const [a, b] = pods;
  const links: Link[] = [];
  const obj = loadLxc({ pinDir: pinDir(t) });
  const ring = new RingBuffer(lxcMaps(obj).events, { lostCounter: lxcMaps(obj).eventsLost });
  t.after(() => {
    for (const link of links) link.close();
    ring.close();
    obj.close();
  });
  for (const pod of pods) attachPod(pod, node, obj, links);
  const maps = lxcMaps(obj);
  // An address of pod a's that no endpoint entry names: everything sent from it is a forgery.
  run('ip', ['-n', a.netns, 'addr', 'add', '10.244.0.250/32', 'dev', 'eth0']);
  const events = (): DatapathEvent[] => {
    const out: DatapathEvent[] = [];
    ring.consume((_view, offset, length, bytes) => void out.push(decodeEvent(bytes, offset, length)));
    assert.equal(ring.lost(), 0n);
    return out;
  };

  const MESSAGES = 40;
  let port = 9100;
  for (const level of MONITOR_AGGREGATION_LEVELS) {
    writeMonitorConfig(maps.monitorCfg, { level, flags: DEFAULT_MONITOR_AGGREGATION_FLAGS, intervalSeconds: 5 });
    events();
    const serverPort = port++;
    const clientPort = await pingPong(a, b, serverPort, MESSAGES);
    const ct = maps.ct4.lookup({ daddr: b.ip, saddr: a.ip, dport: serverPort, sport: clientPort, nexthdr: 6, flags: 0 });
    assert.ok(ct && ct.packets >= 2 * MESSAGES, `${level}: conntrack counted every packet: ${JSON.stringify(ct)}`);
    const traces = events().filter(
      (e): e is TraceEvent =>
        e.kind === 'trace' &&
        e.packet.l4?.protocol === 'TCP' &&
        ((e.packet.l4.sourcePort === clientPort && e.packet.l4.destinationPort === serverPort) || (e.packet.l4.sourcePort === serverPort && e.packet.l4.destinationPort === clientPort)),
    );
    const flags = traces.map((e) => (e.packet.l4?.protocol === 'TCP' ? e.packet.l4.flagNames.join(',') : ''));
    assert.ok(traces.every((e) => e.observationPointName === 'to-endpoint'), `${level}: one observation point between pods of a node`);
    if (level === 'medium' || level === 'maximum') {
      // Opening SYN, SYN-ACK (the first reply), the FIN of each side; none of the data or ACKs.
      assert.equal(traces.length, 4, `${level}: ${flags.join(' ')}`);
      assert.equal(flags.filter((f) => f.includes('SYN')).length, 2, `${level}: ${flags.join(' ')}`);
      assert.equal(flags.filter((f) => f.includes('FIN')).length, 2, `${level}: ${flags.join(' ')}`);
    } else {
      assert.equal(traces.length, Number(ct.packets), `${level}: one trace per packet (${ct.packets} packets): ${flags.join(' ')}`);
    }

    // ping fails (nothing comes back); its echoes are what counts.
    assert.throws(() => run('ip', ['netns', 'exec', a.netns, 'ping', '-c', '3', '-i', '0.2', '-W', '1', '-I', '10.244.0.250', b.ip]));
    const drops = events().filter((e) => e.kind === 'drop' && e.packet.ipv4?.source === '10.244.0.250');
    assert.equal(drops.length, 3, `${level}: every forged echo is reported dropped`);
  }
});
