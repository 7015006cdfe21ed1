/**
 * Pod traffic between nodes on the real kernel. Two "nodes" are network namespaces joined by an
 * underlay bridge that lives in a third namespace (192.168.100.0/24); each node has its own pod
 * CIDR, its ciliate_host router address, its own bpffs root with its own pinned maps, and two
 * pods built with the agent's steps (veth pair, /32 address, default route via the router
 * address with a permanent neighbour entry, EndpointDatapath.realize). NodeRouting connects the
 * nodes in tunnel mode (VXLAN) or native mode (kernel routes), and every pod must reach every
 * other over ICMP, TCP and UDP, on its node and across nodes. Needs root and
 * `bash scripts/build-bpf.sh`.
 * @module
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { pino } from 'pino';
import { BpfMap, Link, RingBuffer } from '../src/ebpf/index.ts';
import {
  decodeEvent,
  DEFAULT_MONITOR_AGGREGATION_FLAGS,
  EndpointDatapath,
  IpcacheFlag,
  ipcacheKey,
  MapName,
  NodeRouting,
  openMonitorConfigMap,
  ReservedIdentity,
  remoteEndpointInfo,
  ROUTE_PROTOCOL,
  type DatapathEndpoint,
  type DatapathEvent,
  type RoutingMode,
  type TraceEvent,
  writeMonitorConfig,
} from '../src/datapath/index.ts';

const execFileAsync = promisify(execFile);
const log = pino({ level: process.env.CILIATE_TEST_LOG ?? 'silent' });

const UNDERLAY_PREFIX = '192.168.100';
const ECHO_PORT = 7000;
/** Big enough for many full-sized segments, so the MTU and GSO paths are exercised too. */
const TCP_PAYLOAD = 200_000;

interface Pod {
  name: string;
  netns: string;
  ip: string;
  endpoint: DatapathEndpoint;
  node: Node;
}

interface Node {
  name: string;
  netns: string;
  underlayIp: string;
  podCidr: string;
  routerIp: string;
  bpfRoot: string;
  datapath: EndpointDatapath;
  routing: NodeRouting;
  ring: RingBuffer;
  events: DatapathEvent[];
  pods: Pod[];
}

interface Cluster {
  id: string;
  underlay: string;
  nodes: [Node, Node];
  pods: Pod[];
  /** Removes everything; also registered with t.after, and safe to run twice. */
  destroy(): Promise<void>;
}

async function sh(command: string, args: string[], timeout = 20_000): Promise<string> {
  try {
    const { stdout } = await execFileAsync(command, args, { encoding: 'utf8', timeout });
    return stdout;
  } catch (error) {
    const e = error as { stderr?: string; stdout?: string; message: string };
    throw new Error(`${command} ${args.join(' ')}: ${e.stderr?.trim() || e.stdout?.trim() || e.message}`);
  }
}

const ipn = (netns: string, ...args: string[]) => sh('ip', ['-n', netns, ...args]);
const inNs = (netns: string, command: string, args: string[], timeout?: number) =>
  sh('nsenter', [`--net=/run/netns/${netns}`, command, ...args], timeout);

async function linkJson(netns: string, dev: string): Promise<{ ifindex: number; address: string; mtu: number; stats64?: { rx: { packets: number }; tx: { packets: number } } }> {
  return (JSON.parse(await ipn(netns, '-j', '-s', 'link', 'show', 'dev', dev)) as never[])[0];
}

/**
 * Builds the underlay, two nodes and two pods per node, and sets up routing in `mode`. With
 * `agentIpcache` the ipcache is written as the agent's own reconciler writes it
 * (src/agent/cluster.ts, ipcache.ts) and NodeRouting only routes (manageIpcache: false).
 */
async function cluster(t: TestContext, mode: RoutingMode, options: { agentIpcache?: boolean; nativeRoutingCidr?: string } = {}): Promise<Cluster> {
  const id = randomBytes(3).toString('hex');
  const underlay = `cil-ul-${id}`;
  const namespaces = [underlay];
  const bpfBase = `/sys/fs/bpf/ciliate-test-mn-${id}`;
  const nodes: Node[] = [];
  const children: ChildProcess[] = [];
  let destroyed = false;
  const destroy = async () => {
    if (destroyed) return;
    destroyed = true;
    for (const child of children) child.kill('SIGKILL');
    for (const node of nodes) {
      node.ring.close();
      node.datapath.close();
      node.routing.close();
    }
    for (const ns of namespaces.reverse()) await sh('ip', ['netns', 'del', ns]).catch(() => undefined);
    rmSync(bpfBase, { recursive: true, force: true });
  };
  t.after(destroy);

  await sh('ip', ['netns', 'add', underlay]);
  await ipn(underlay, 'link', 'add', 'br0', 'type', 'bridge');
  await ipn(underlay, 'link', 'set', 'br0', 'up');
  // Counts what crosses the underlay: VXLAN datagrams, and pod packets travelling unencapsulated.
  await inNs(underlay, 'nft', [
    'add table bridge ciliate_test; ' +
      'add chain bridge ciliate_test forward { type filter hook forward priority 0; policy accept; }; ' +
      'add rule bridge ciliate_test forward udp dport 8472 counter; ' +
      'add rule bridge ciliate_test forward ip daddr 10.244.0.0/16 counter',
  ]);
  mkdirSync(bpfBase, { recursive: true });

  for (const i of [1, 2]) {
    const name = `node${i}`;
    const netns = `cil-n${i}-${id}`;
    namespaces.push(netns);
    await sh('ip', ['netns', 'add', netns]);
    await ipn(netns, 'link', 'set', 'lo', 'up');
    await inNs(netns, 'sysctl', ['-qw', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.default.disable_ipv6=1']);
    // Counts pods' packets the node's stack forwards (the FIB fast path skips it).
    await inNs(netns, 'nft', [
      'add table ip ciliate_test; ' +
        'add chain ip ciliate_test forward { type filter hook forward priority 0; policy accept; }; ' +
        'add rule ip ciliate_test forward iifname "lxc*" counter',
    ]);
    // The node's uplink: eth0 in the node, its peer enslaved to the underlay bridge.
    await sh('ip', ['link', 'add', `cu${i}${id}`, 'type', 'veth', 'peer', 'name', `cn${i}${id}`]);
    await sh('ip', ['link', 'set', `cu${i}${id}`, 'netns', underlay, 'name', `port${i}`]);
    await sh('ip', ['link', 'set', `cn${i}${id}`, 'netns', netns, 'name', 'eth0']);
    await ipn(underlay, 'link', 'set', `port${i}`, 'master', 'br0', 'up');
    const underlayIp = `${UNDERLAY_PREFIX}.${i}`;
    await ipn(netns, 'addr', 'add', `${underlayIp}/24`, 'dev', 'eth0');
    await ipn(netns, 'link', 'set', 'eth0', 'up');
    // As the agent's node networking: the router address on ciliate_host.
    const routerIp = `10.244.${i}.1`;
    await ipn(netns, 'link', 'add', 'ciliate_host', 'type', 'veth', 'peer', 'name', 'ciliate_net');
    await ipn(netns, 'addr', 'replace', `${routerIp}/32`, 'dev', 'ciliate_host');
    await ipn(netns, 'link', 'set', 'ciliate_host', 'up');
    await ipn(netns, 'link', 'set', 'ciliate_net', 'up');

    const bpfRoot = join(bpfBase, name);
    const datapath = new EndpointDatapath(bpfRoot, log, { netns: `/run/netns/${netns}` });
    const routing = new NodeRouting({ bpfRoot, log, netns: `/run/netns/${netns}`, manageIpcache: !options.agentIpcache });
    // Every packet at every observation point (from-overlay included), as these tests inspect them.
    using monitorCfg = openMonitorConfigMap(bpfRoot);
    writeMonitorConfig(monitorCfg, { level: 'none', flags: DEFAULT_MONITOR_AGGREGATION_FLAGS, intervalSeconds: 5 });
    const ring = new RingBuffer(BpfMap.openPinned(join(bpfRoot, 'maps', MapName.EVENTS)), {
      lostCounter: BpfMap.openPinned(join(bpfRoot, 'maps', MapName.EVENTS_LOST)),
    });
    nodes.push({ name, netns, underlayIp, podCidr: `10.244.${i}.0/24`, routerIp, bpfRoot, datapath, routing, ring, events: [], pods: [] });
  }

  for (const node of nodes) {
    await node.routing.setUp({
      name: node.name,
      underlayIp: node.underlayIp,
      podCidr: node.podCidr,
      routingMode: mode,
      routerIp: node.routerIp,
      nativeRoutingCidr: options.nativeRoutingCidr,
    });
  }

  const pods: Pod[] = [];
  for (const node of nodes) {
    for (const j of [1, 2]) {
      const i = node.name.at(-1);
      const name = `pod${i}${j}`;
      const netns = `cil-p${i}${j}-${id}`;
      namespaces.push(netns);
      await sh('ip', ['netns', 'add', netns]);
      // Pods have no IPv6: as the agent does for its pods, no IPv6 on their links (bpf_lxc drops it).
      await inNs(netns, 'sysctl', ['-qw', 'net.ipv6.conf.default.disable_ipv6=1']);
      const ip = `10.244.${i}.${10 + j}`;
      const hostIfname = `lxc${i}${j}${id}`.slice(0, 15);
      // The endpoint manager's steps (src/agent/endpoint-manager.ts), run in the node's namespace.
      await ipn(node.netns, 'link', 'add', hostIfname, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', netns);
      const host = await linkJson(node.netns, hostIfname);
      await ipn(netns, 'link', 'set', 'dev', 'lo', 'up');
      await ipn(netns, 'addr', 'add', `${ip}/32`, 'dev', 'eth0');
      // The MTU NodeRouting asks of pods (less the VXLAN overhead in tunnel mode).
      // The first pod of each node has the MTU NodeRouting asks of pods; the second keeps 1500, as
      // the endpoint manager leaves it today (in tunnel mode its large packets go out fragmented).
      await ipn(netns, 'link', 'set', 'dev', 'eth0', 'mtu', j === 1 ? String(node.routing.podMtu()) : '1500', 'up');
      await ipn(netns, 'route', 'add', node.routerIp, 'dev', 'eth0', 'scope', 'link');
      await ipn(netns, 'route', 'add', 'default', 'via', node.routerIp, 'dev', 'eth0');
      await ipn(netns, 'neigh', 'replace', node.routerIp, 'lladdr', host.address, 'dev', 'eth0', 'nud', 'permanent');
      await ipn(node.netns, 'link', 'set', 'dev', hostIfname, 'up');
      await ipn(node.netns, 'route', 'replace', `${ip}/32`, 'dev', hostIfname, 'scope', 'link');
      const pod = await linkJson(netns, 'eth0');
      const endpoint: DatapathEndpoint = {
        id: Number(`${i}${j}`),
        ipv4: ip,
        mac: pod.address,
        hostIfname,
        hostIfindex: host.ifindex,
        hostMac: host.address,
        identity: 10000 + Number(`${i}${j}`),
      };
      await node.datapath.realize(endpoint);
      // The agent's ipcache reconciler adds each local endpoint's /32 (src/agent/ipcache.ts).
      node.datapath.ipcache.update({ prefixlen: 32, ip }, { sec_identity: endpoint.identity, tunnel_endpoint: '0.0.0.0', flags: 0 });
      const p: Pod = { name, netns, ip, endpoint, node };
      node.pods.push(p);
      pods.push(p);
    }
  }

  // What the agent does with the cluster's node and endpoint lists.
  for (const node of nodes) {
    const others = nodes.filter((n) => n !== node);
    if (options.agentIpcache) {
      // NodeRecords as the store has them (nodeIp), and the ipcache entries ClusterWatcher makes.
      const records = nodes.map((n) => ({ name: n.name, nodeIp: n.underlayIp, podCidr: n.podCidr, routerIp: n.routerIp, routingMode: mode }));
      await node.routing.syncRemoteNodes(records);
      const tunnel = (at: string) => (mode === 'tunnel' ? { tunnel_endpoint: at, flags: IpcacheFlag.HAS_TUNNEL_EP } : { tunnel_endpoint: '0.0.0.0', flags: 0 });
      const write = (prefix: string, value: { sec_identity: number; tunnel_endpoint: string; flags: number }) => {
        const [ip, len] = prefix.split('/');
        node.datapath.ipcache.update({ ip, prefixlen: Number(len) }, value);
      };
      write(`${node.underlayIp}/32`, { sec_identity: ReservedIdentity.HOST, tunnel_endpoint: '0.0.0.0', flags: 0 });
      for (const other of others) {
        write(other.podCidr, { sec_identity: ReservedIdentity.WORLD, ...tunnel(other.underlayIp) });
        write(`${other.underlayIp}/32`, { sec_identity: ReservedIdentity.REMOTE_NODE, tunnel_endpoint: '0.0.0.0', flags: 0 });
        for (const p of other.pods) write(`${p.ip}/32`, { sec_identity: p.endpoint.identity, ...tunnel(other.underlayIp) });
      }
      await assert.rejects(async () => node.routing.upsertRemoteEndpoint({ ip: '10.244.9.9', identity: 1, nodeUnderlayIp: '192.168.100.9' }), /manageIpcache/);
    } else {
      await node.routing.syncRemoteNodes(nodes.map((n) => ({ name: n.name, underlayIp: n.underlayIp, podCidr: n.podCidr })));
      node.routing.syncRemoteEndpoints(
        others.flatMap((n) => n.pods.map((p) => ({ ip: p.ip, identity: p.endpoint.identity, nodeUnderlayIp: n.underlayIp }))),
      );
    }
  }

  for (const pod of pods) {
    const server = spawn('nsenter', [`--net=/run/netns/${pod.netns}`, process.execPath, '-e', ECHO_SERVER, pod.ip, String(ECHO_PORT)], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    children.push(server);
    await new Promise<void>((resolve, reject) => {
      server.stdout?.once('data', () => resolve());
      server.once('exit', (code) => reject(new Error(`echo server in ${pod.name} exited with ${code}`)));
    });
  }
  return { id, underlay, nodes: nodes as [Node, Node], pods, destroy };
}

const ECHO_SERVER = `
const net = require('node:net'), dgram = require('node:dgram');
const [host, port] = [process.argv[1], Number(process.argv[2])];
let ready = 0;
const up = () => { if (++ready === 2) console.log('ready'); };
net.createServer((s) => { s.on('error', () => {}); s.pipe(s); }).listen(port, host, up);
const udp = dgram.createSocket('udp4');
udp.on('message', (msg, r) => udp.send(msg, r.port, r.address));
udp.bind(port, host, up);
`;

/** A TCP round trip of a large random payload, then a UDP one; prints {tcp, udp}. */
const ECHO_CLIENT = `
const net = require('node:net'), dgram = require('node:dgram'), crypto = require('node:crypto');
const [host, port, size] = [process.argv[1], Number(process.argv[2]), Number(process.argv[3])];
const fail = (why) => { console.log(JSON.stringify({ error: why })); process.exit(1); };
setTimeout(() => fail('timeout'), 10000);
const payload = crypto.randomBytes(size);
const chunks = []; let received = 0;
const s = net.connect(port, host, () => s.write(payload));
s.on('error', (e) => fail('tcp ' + e.code));
s.on('data', (d) => {
  chunks.push(d); received += d.length;
  if (received < size) return;
  s.destroy();
  const tcp = Buffer.concat(chunks).equals(payload);
  const u = dgram.createSocket('udp4');
  const msg = crypto.randomBytes(32);
  u.on('message', (m) => { console.log(JSON.stringify({ tcp, udp: m.equals(msg) })); process.exit(0); });
  const send = () => u.send(msg, port, host);
  send(); setInterval(send, 500);
});
`;

async function exchange(from: Pod, to: Pod): Promise<{ tcp?: boolean; udp?: boolean; error?: string }> {
  try {
    return JSON.parse(await inNs(from.netns, process.execPath, ['-e', ECHO_CLIENT, to.ip, String(ECHO_PORT), String(TCP_PAYLOAD)], 15_000));
  } catch (error) {
    return { error: (error as Error).message };
  }
}

async function ping(netns: string, address: string, count = 2): Promise<string> {
  return inNs(netns, 'ping', ['-c', String(count), '-i', '0.2', '-W', '2', address]);
}

function drain(c: Cluster): void {
  for (const node of c.nodes) {
    node.ring.consume((_view, offset, length, bytes) => void node.events.push(decodeEvent(bytes, offset, length)));
    assert.equal(node.ring.lost(), 0n, `${node.name} lost events`);
  }
}

/** Every ordered pod pair over ICMP, TCP (200 kB) and UDP; returns the failures. */
async function allPairs(c: Cluster): Promise<string[]> {
  const failures: string[] = [];
  for (const from of c.pods) {
    for (const to of c.pods) {
      if (from === to) continue;
      const where = `${from.name}(${from.ip}) → ${to.name}(${to.ip})`;
      try {
        const out = await ping(from.netns, to.ip);
        if (!/2 received/.test(out)) failures.push(`${where} ICMP: ${out}`);
        // One routing hop as the pods see it, whether the peer is on this node or another.
        else if (from.node === to.node && !/ttl=63/.test(out)) failures.push(`${where} ICMP TTL: ${out}`);
      } catch (error) {
        failures.push(`${where} ICMP: ${(error as Error).message}`);
      }
      const result = await exchange(from, to);
      if (result.tcp !== true || result.udp !== true) failures.push(`${where} TCP/UDP: ${JSON.stringify(result)}`);
      drain(c);
    }
  }
  return failures;
}

/** Packets the underlay bridge forwarded: VXLAN datagrams (first fragments) and bare pod packets. */
async function underlayCounters(c: Cluster): Promise<{ vxlan: number; bare: number }> {
  const { nftables } = JSON.parse(await inNs(c.underlay, 'nft', ['-j', 'list', 'table', 'bridge', 'ciliate_test'])) as {
    nftables: { rule?: { expr: { counter?: { packets: number } }[] } }[];
  };
  const [vxlan, bare] = nftables.filter((o) => o.rule).map((o) => o.rule!.expr.find((e) => e.counter)!.counter!.packets);
  return { vxlan, bare };
}

/** Pods' packets the node's stack forwarded. */
async function stackForwarded(node: Node): Promise<number> {
  const { nftables } = JSON.parse(await inNs(node.netns, 'nft', ['-j', 'list', 'table', 'ip', 'ciliate_test'])) as {
    nftables: { rule?: { expr: { counter?: { packets: number } }[] } }[];
  };
  return nftables.find((o) => o.rule)!.rule!.expr.find((e) => e.counter)!.counter!.packets;
}

/** The node's ipcache by "ip/prefixlen". */
function ipcacheOf(node: Node): Map<string, { sec_identity: number; tunnel_endpoint: string; flags: number }> {
  using map = BpfMap.openPinned(join(node.bpfRoot, 'maps', MapName.IPCACHE), ipcacheKey, remoteEndpointInfo);
  return new Map([...map.entries()].map(([k, v]) => [`${k.ip}/${k.prefixlen}`, v]));
}

const traces = (node: Node, point: string) => node.events.filter((e): e is TraceEvent => e.kind === 'trace' && e.observationPointName === point);

/** Everything of the cluster is gone: namespaces, pins, and (with them) links and devices. */
async function assertNothingLeft(c: Cluster): Promise<void> {
  await c.destroy();
  const namespaces = await sh('ip', ['netns', 'list']);
  assert.doesNotMatch(namespaces, new RegExp(c.id), 'no namespace left');
  assert.equal(existsSync(`/sys/fs/bpf/ciliate-test-mn-${c.id}`), false, 'no pins left');
  const links = await sh('ip', ['-o', 'link', 'show']);
  assert.doesNotMatch(links, new RegExp(c.id), 'no link left in the root namespace');
}

test('tunnel mode: every pod reaches every other through VXLAN, with the source identity in the VNI', async (t) => {
  const c = await cluster(t, 'tunnel');
  const [n1, n2] = c.nodes;

  for (const node of c.nodes) {
    const vxlan = JSON.parse(await ipn(node.netns, '-d', '-j', 'link', 'show', 'dev', 'ciliate_vxlan'))[0];
    assert.equal(vxlan.linkinfo.info_kind, 'vxlan');
    assert.equal(vxlan.linkinfo.info_data.external, true);
    assert.equal(vxlan.linkinfo.info_data.port, 8472);
    assert.equal(vxlan.mtu, 1450);
    assert.equal(vxlan.ifindex, node.routing.tunnelIfindex);
    assert.ok(existsSync(join(node.bpfRoot, 'overlay', 'from-overlay')), 'the overlay links are pinned');
    assert.ok(existsSync(join(node.bpfRoot, 'overlay', 'to-overlay')));
  }
  const cache = ipcacheOf(n1);
  assert.deepEqual(cache.get(n2.podCidr), { sec_identity: ReservedIdentity.WORLD, tunnel_endpoint: n2.underlayIp, flags: IpcacheFlag.HAS_TUNNEL_EP });
  for (const pod of n2.pods) {
    assert.deepEqual(cache.get(`${pod.ip}/32`), { sec_identity: pod.endpoint.identity, tunnel_endpoint: n2.underlayIp, flags: IpcacheFlag.HAS_TUNNEL_EP });
  }
  for (const pod of n1.pods) assert.deepEqual(cache.get(`${pod.ip}/32`), { sec_identity: pod.endpoint.identity, tunnel_endpoint: '0.0.0.0', flags: 0 });
  assert.equal(cache.size, 5);

  const before = await Promise.all(c.nodes.map((n) => linkJson(n.netns, 'ciliate_vxlan')));
  const underlayBefore = await linkJson(c.underlay, 'port1');
  const failures = await allPairs(c);
  assert.deepEqual(failures, []);

  const after = await Promise.all(c.nodes.map((n) => linkJson(n.netns, 'ciliate_vxlan')));
  for (const [i, node] of c.nodes.entries()) {
    const tx = after[i].stats64!.tx.packets - before[i].stats64!.tx.packets;
    const rx = after[i].stats64!.rx.packets - before[i].stats64!.rx.packets;
    assert.ok(tx > 100 && rx > 100, `${node.name}'s VXLAN device carried the cross-node traffic (tx ${tx}, rx ${rx})`);
  }
  const underlayAfter = await linkJson(c.underlay, 'port1');
  assert.ok(underlayAfter.stats64!.rx.packets - underlayBefore.stats64!.rx.packets > 100, 'the underlay carried it');
  const counters = await underlayCounters(c);
  assert.ok(counters.vxlan > 100, `VXLAN datagrams on the underlay: ${counters.vxlan}`);
  assert.equal(counters.bare, 0, 'no pod packet crossed the underlay unencapsulated');

  // The datapath's view: to-overlay on the sender, from-overlay and to-endpoint on the receiver.
  const [a, b] = n1.pods;
  const [c1] = n2.pods;
  const toOverlay = traces(n1, 'to-overlay').filter((e) => e.packet.ipv4?.source === a.ip && e.packet.ipv4.destination === c1.ip);
  assert.ok(toOverlay.length > 0, 'to-overlay events');
  for (const e of toOverlay) {
    assert.equal(e.srcIdentity, a.endpoint.identity);
    assert.equal(e.dstIdentity, c1.endpoint.identity, 'the /32 entry names the remote pod');
    assert.equal(e.dstIfindex, n1.routing.tunnelIfindex);
    assert.equal(e.source, a.endpoint.id);
  }
  const fromOverlay = traces(n2, 'from-overlay').filter((e) => e.packet.ipv4?.source === a.ip && e.packet.ipv4.destination === c1.ip);
  assert.ok(fromOverlay.length > 0, 'from-overlay events');
  for (const e of fromOverlay) {
    assert.equal(e.srcIdentity, a.endpoint.identity, 'the sender identity came in the VNI');
    assert.equal(e.dstIdentity, c1.endpoint.identity);
    assert.equal(e.dstId, c1.endpoint.id);
    assert.equal(e.ifindex, n2.routing.tunnelIfindex);
  }
  const delivered = traces(n2, 'to-endpoint').filter((e) => e.packet.ipv4?.source === a.ip && e.packet.ipv4.destination === c1.ip);
  assert.ok(delivered.length > 0 && delivered.every((e) => e.dstIfindex === c1.endpoint.hostIfindex && e.packet.ethernet?.destination === c1.endpoint.mac));
  assert.ok(fromOverlay.some((e) => e.isReply) || traces(n2, 'from-overlay').some((e) => e.isReply), 'replies are tracked as replies');
  // Pods of one node never touch the tunnel.
  assert.equal(traces(n1, 'to-overlay').filter((e) => e.packet.ipv4?.destination === b.ip).length, 0);
  for (const node of c.nodes) assert.deepEqual(node.events.filter((e) => e.kind === 'drop'), [], `${node.name}: no drops`);

  // Cross-node pings see one hop too: the receiving node routes, the tunnel is invisible.
  assert.match(await ping(a.netns, c1.ip), /ttl=63/);

  // From monitor aggregation lowest on, nothing is traced where packets are received (from-overlay),
  // and each delivered echo still is (to-endpoint): at most one trace per packet.
  const aggregation = (level: 'none' | 'lowest') => {
    using cfg = openMonitorConfigMap(n2.bpfRoot);
    writeMonitorConfig(cfg, { level, flags: DEFAULT_MONITOR_AGGREGATION_FLAGS, intervalSeconds: 5 });
  };
  aggregation('lowest');
  drain(c);
  const seen = n2.events.length;
  assert.match(await ping(a.netns, c1.ip, 3), /3 received/);
  drain(c);
  const echoes = n2.events.slice(seen).filter((e): e is TraceEvent => e.kind === 'trace' && e.packet.ipv4?.source === a.ip && e.packet.ipv4.destination === c1.ip);
  assert.deepEqual(echoes.map((e) => e.observationPointName), ['to-endpoint', 'to-endpoint', 'to-endpoint']);
  aggregation('none');
  // The node's own traffic to remote pods and a pod's to the other node's router address.
  assert.match(await ping(n1.netns, c1.ip), /2 received/);
  assert.match(await ping(c1.netns, n1.routerIp), /2 received/);
  assert.equal((await underlayCounters(c)).bare, 0, 'host traffic to remote pods is tunnelled too');

  // Restart: a new NodeRouting adopts the device and the pinned link and writes nothing new. The
  // node ran a version without the egress program (its pin removed, which detaches it): that one is
  // attached anew.
  const linkOf = (node: Node, pin = 'from-overlay') => {
    const link = Link.openPinned(join(node.bpfRoot, 'overlay', pin));
    try {
      return link.info();
    } finally {
      link.close();
    }
  };
  const idBefore = linkOf(n1).id;
  rmSync(join(n1.bpfRoot, 'overlay', 'to-overlay'));
  n1.routing.close();
  n1.routing = new NodeRouting({ bpfRoot: n1.bpfRoot, log, netns: `/run/netns/${n1.netns}` });
  await n1.routing.setUp({ name: n1.name, underlayIp: n1.underlayIp, podCidr: n1.podCidr, routingMode: 'tunnel', routerIp: n1.routerIp });
  assert.equal(linkOf(n1).id, idBefore, 'the pinned overlay link was adopted');
  assert.equal(linkOf(n1, 'to-overlay').ifindex, n1.routing.tunnelIfindex, 'the egress program serves the device again');
  assert.equal(n1.routing.tunnelIfindex, before[0].ifindex, 'the VXLAN device was adopted');
  await n1.routing.syncRemoteNodes([{ name: n2.name, underlayIp: n2.underlayIp, podCidr: n2.podCidr }]);
  assert.deepEqual(await allPairs({ ...c, pods: [a, c1] }), []);

  // A node leaving takes its CIDR entry, its pods' /32 entries and its route with it.
  await n1.routing.removeRemoteNode(n2.name);
  assert.deepEqual([...ipcacheOf(n1).keys()].sort(), n1.pods.map((p) => `${p.ip}/32`).sort(), 'only the local endpoints stay in the ipcache');
  assert.equal((await ipn(n1.netns, 'route', 'show', 'proto', String(ROUTE_PROTOCOL))).trim(), '');
  await assert.rejects(ping(a.netns, c1.ip, 1));

  await assertNothingLeft(c);
});

test('native mode: every pod reaches every other through kernel routes on the underlay, forwarded by FIB lookup', async (t) => {
  const c = await cluster(t, 'native', { nativeRoutingCidr: '10.244.0.0/16' });
  const [n1, n2] = c.nodes;
  for (const node of c.nodes) {
    await assert.rejects(ipn(node.netns, 'link', 'show', 'dev', 'ciliate_vxlan'), /does not exist/);
    const routes = await ipn(node.netns, 'route', 'show', 'proto', String(ROUTE_PROTOCOL));
    const other = c.nodes.find((n) => n !== node)!;
    assert.match(routes, new RegExp(`^${other.podCidr.replace(/\./g, '\\.')} via ${other.underlayIp.replace(/\./g, '\\.')} dev eth0`, 'm'));
    assert.equal(node.routing.podMtu(), 1500);
  }

  const failures = await allPairs(c);
  assert.deepEqual(failures, []);
  const counters = await underlayCounters(c);
  assert.equal(counters.vxlan, 0, 'no VXLAN on the underlay');
  assert.ok(counters.bare > 100, `pod packets routed on the underlay: ${counters.bare}`);

  const [a] = n1.pods;
  const [c1] = n2.pods;
  assert.equal(traces(n1, 'to-overlay').length, 0, 'nothing is tunnelled');
  const uplink = await linkJson(n1.netns, 'eth0');
  const sent = traces(n1, 'to-network').filter((e) => e.packet.ipv4?.source === a.ip && e.packet.ipv4.destination === c1.ip);
  assert.ok(sent.length > 0, 'to-network events');
  for (const e of sent) {
    assert.equal(e.dstIdentity, c1.endpoint.identity, 'the remote pod identity');
    assert.equal(e.dstIfindex, uplink.ifindex, 'out of the uplink the FIB named');
  }
  // Once the next hop is resolved, bpf_lxc writes its MACs itself (before, bpf_redirect_neigh does).
  assert.ok(sent.some((e) => e.packet.ethernet?.source === uplink.address), 'MACs of the FIB result');
  assert.equal(traces(n1, 'to-stack').filter((e) => e.packet.ipv4?.destination === c1.ip).length, 0);
  for (const node of c.nodes) assert.equal(await stackForwarded(node), 0, `${node.name}'s stack forwarded no pod packet`);
  const received = traces(n2, 'to-endpoint').filter((e) => e.packet.ipv4?.source === a.ip && e.packet.ipv4.destination === c1.ip);
  assert.ok(received.length > 0 && received.every((e) => e.srcIdentity === a.endpoint.identity), 'the receiver knows the sender identity from the ipcache');
  for (const node of c.nodes) assert.deepEqual(node.events.filter((e) => e.kind === 'drop'), [], `${node.name}: no drops`);
  // Two routing hops (both nodes' stacks).
  assert.match(await ping(a.netns, c1.ip), /ttl=62/);
  assert.match(await ping(n1.netns, c1.ip), /2 received/);

  // The remote entries carry the owning node but no tunnel flag.
  const cache = ipcacheOf(n1);
  assert.deepEqual(cache.get(n2.podCidr), { sec_identity: ReservedIdentity.WORLD, tunnel_endpoint: n2.underlayIp, flags: 0 });
  assert.deepEqual(cache.get(`${c1.ip}/32`), { sec_identity: c1.endpoint.identity, tunnel_endpoint: n2.underlayIp, flags: 0 });
  await assertNothingLeft(c);
});

test('switching modes on running nodes keeps every pair connected, and tearDown removes what routing created', async (t) => {
  const c = await cluster(t, 'tunnel');
  const [n1, n2] = c.nodes;
  const pair = { ...c, pods: [n1.pods[0], n2.pods[0]] };
  for (const mode of ['native', 'tunnel'] as const) {
    for (const node of c.nodes) {
      await node.routing.setUp({ name: node.name, underlayIp: node.underlayIp, podCidr: node.podCidr, routingMode: mode, routerIp: node.routerIp });
    }
    assert.deepEqual(await allPairs(pair), [], `after switching to ${mode}`);
    const flags = mode === 'tunnel' ? IpcacheFlag.HAS_TUNNEL_EP : 0;
    assert.equal(ipcacheOf(n1).get(n2.podCidr)?.flags, flags);
    assert.equal(ipcacheOf(n1).get(`${n2.pods[1].ip}/32`)?.flags, flags);
  }
  for (const node of c.nodes) {
    await node.routing.tearDown();
    await assert.rejects(ipn(node.netns, 'link', 'show', 'dev', 'ciliate_vxlan'), /does not exist/);
    assert.equal(readdirSync(node.bpfRoot).includes('overlay'), false);
    assert.equal((await ipn(node.netns, 'route', 'show', 'proto', String(ROUTE_PROTOCOL))).trim(), '');
  }
  assert.deepEqual([...ipcacheOf(n1).keys()].sort(), n1.pods.map((p) => `${p.ip}/32`).sort(), 'only the local endpoints stay in the ipcache');
  await assertNothingLeft(c);
});

test('with the agent owning the ipcache (manageIpcache: false, NodeRecords with nodeIp), both modes connect every pair', async (t) => {
  for (const mode of ['tunnel', 'native'] as const) {
    const c = await cluster(t, mode, { agentIpcache: true });
    const [n1, n2] = c.nodes;
    assert.deepEqual(await allPairs(c), [], mode);
    const counters = await underlayCounters(c);
    if (mode === 'tunnel') {
      assert.ok(counters.vxlan > 100 && counters.bare === 0, `${mode}: ${JSON.stringify(counters)}`);
      // from-overlay knows the sender from the VNI.
      const [a] = n1.pods;
      const seen = traces(n2, 'from-overlay').filter((e) => e.packet.ipv4?.source === a.ip);
      assert.ok(seen.length > 0 && seen.every((e) => e.srcIdentity === a.endpoint.identity));
    } else {
      assert.ok(counters.vxlan === 0 && counters.bare > 100, `${mode}: ${JSON.stringify(counters)}`);
      // Without a native routing CIDR the node's stack forwards (the FIB fast path is off).
      const [a] = n1.pods;
      assert.ok(traces(n1, 'to-stack').some((e) => e.packet.ipv4?.source === a.ip && e.packet.ipv4.destination === n2.pods[0].ip));
      assert.equal(traces(n1, 'to-network').length, 0);
      assert.ok((await stackForwarded(n1)) > 100);
    }
    // Node to remote pod, and a pod to the other node's underlay address (the REMOTE_NODE /32).
    assert.match(await ping(n1.netns, n2.pods[0].ip), /2 received/);
    assert.match(await ping(n1.pods[0].netns, n2.underlayIp), /2 received/);
    for (const node of c.nodes) assert.deepEqual(node.events.filter((e) => e.kind === 'drop'), [], `${mode} ${node.name}: no drops`);
    // NodeRouting left the agent's entries alone.
    assert.equal(ipcacheOf(n1).get(n2.podCidr)?.tunnel_endpoint, mode === 'tunnel' ? n2.underlayIp : '0.0.0.0');
    await assertNothingLeft(c);
  }
});
