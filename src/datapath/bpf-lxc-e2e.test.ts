/**
 * End to end on the real kernel: a "node" network namespace and two "pod" namespaces, each pod
 * joined to the node by a veth pair whose host side carries bpf_lxc.o at TCX, one copy per
 * endpoint sharing pinned maps. Ping and TCP between the pods must work, go through
 * bpf_redirect_peer (the host veth towards the destination never transmits them), and show up
 * as to-endpoint trace events. Needs root and `bash scripts/build-bpf.sh`.
 * @module
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile } from 'node:child_process';
import { once } from 'node:events';
import { promisify } from 'node:util';
import { RingBuffer, attachTcx, inNetns, namedNetns, type BpfObject, type Link } from '../ebpf/index.ts';
import { ip, ipIn, pinDir, run, uniqueId } from '../ebpf/internal/testutils.ts';
import { CtStatus, decodeEvent, type DatapathEvent, type TraceEvent } from './events.ts';
import { LxcProgram, loadLxc, lxcMaps } from './lxc.ts';

const execFileAsync = promisify(execFile);

/** Gateway address every pod routes through: link-local, answered by a static neighbour entry. */
const GATEWAY = '169.254.1.1';

interface Pod {
  netns: string;
  ip: string;
  /** Host-side veth, in the node namespace. */
  hostIf: string;
  hostIfindex: number;
  hostMac: string;
  podMac: string;
  id: number;
  identity: number;
}

interface LinkJson {
  ifindex: number;
  address: string;
  stats64?: { tx: { packets: number } };
}

function txPackets(netns: string, dev: string): number {
  const stats = linkJson(netns, dev, true).stats64;
  assert.ok(stats, `ip -s reported no statistics for ${dev}`);
  return stats.tx.packets;
}

function linkJson(netns: string, dev: string, stats = false): LinkJson {
  const out = run('ip', ['-n', netns, '-j', ...(stats ? ['-s'] : []), 'link', 'show', 'dev', dev]);
  return (JSON.parse(out) as LinkJson[])[0];
}

interface Topology {
  node: string;
  pods: [Pod, Pod];
}

/** Builds the namespaces and links; everything is removed when the test ends, pass or fail. */
function topology(t: TestContext): Topology {
  const id = uniqueId();
  const node = `cil-node-${id}`;
  const names = [`cil-pa-${id}`, `cil-pb-${id}`];
  t.after(() => {
    // Deleting a namespace deletes the veth ends inside it, and with them their peers.
    for (const ns of [...names, node]) {
      try {
        ip('netns', 'del', ns);
      } catch {
        // never created, or already gone
      }
    }
  });
  for (const ns of [node, ...names]) {
    ip('netns', 'add', ns);
    ipIn(ns, 'link', 'set', 'lo', 'up');
    // Pods have no IPv6: as the agent does for its pods, no IPv6 on their links (bpf_lxc drops it).
    run('ip', ['netns', 'exec', ns, 'sysctl', '-qw', 'net.ipv6.conf.all.disable_ipv6=1', 'net.ipv6.conf.default.disable_ipv6=1']);
  }
  run('ip', ['netns', 'exec', node, 'sysctl', '-qw', 'net.ipv4.ip_forward=1']);
  const pods = names.map((netns, i): Pod => {
    const hostIf = `lxc${i}`;
    const podIp = `10.244.0.${10 + i}`;
    const tmpHost = `clh${id}${i}`;
    const tmpPod = `clp${id}${i}`;
    ip('link', 'add', tmpHost, 'type', 'veth', 'peer', 'name', tmpPod);
    ip('link', 'set', tmpHost, 'netns', node, 'name', hostIf);
    ip('link', 'set', tmpPod, 'netns', netns, 'name', 'eth0');
    ipIn(node, 'link', 'set', hostIf, 'up');
    ipIn(netns, 'link', 'set', 'eth0', 'up');
    ipIn(netns, 'addr', 'add', `${podIp}/32`, 'dev', 'eth0');
    const host = linkJson(node, hostIf);
    // The pod reaches everything through one gateway whose MAC is its host veth's, as in Cilium.
    ipIn(netns, 'route', 'add', GATEWAY, 'dev', 'eth0', 'scope', 'link');
    ipIn(netns, 'route', 'add', 'default', 'via', GATEWAY, 'dev', 'eth0');
    ipIn(netns, 'neigh', 'add', GATEWAY, 'lladdr', host.address, 'dev', 'eth0', 'nud', 'permanent');
    // The node routes each pod's /32 to its veth: the path packets take without our programs.
    ipIn(node, 'route', 'add', `${podIp}/32`, 'dev', hostIf);
    return {
      netns,
      ip: podIp,
      hostIf,
      hostIfindex: host.ifindex,
      hostMac: host.address,
      podMac: linkJson(netns, 'eth0').address,
      id: 100 + i,
      identity: 20000 + i,
    };
  });
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

  for (const pod of pods) {
    const obj = loadLxc({ endpointId: pod.id, identity: pod.identity, ipv4: pod.ip, pinDir: pins });
    objects.push(obj);
    lxcMaps(obj).lxc.update(
      { ip: pod.ip },
      { ifindex: pod.hostIfindex, lxc_id: pod.id, flags: 0, mac: pod.podMac, node_mac: pod.hostMac, sec_identity: pod.identity },
    );
    inNetns(namedNetns(node), () => {
      links.push(attachTcx(obj.program(LxcProgram.FROM_CONTAINER), { interface: pod.hostIf, direction: 'ingress' }));
      links.push(attachTcx(obj.program(LxcProgram.TO_CONTAINER), { interface: pod.hostIf, direction: 'egress' }));
    });
  }
  const maps = lxcMaps(objects[0]);
  assert.equal([...maps.lxc.keys()].length, 2, 'both copies wrote the one pinned endpoint map');
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
