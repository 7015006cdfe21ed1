/**
 * Verdict matrix with real traffic (issue 4): pods × policies × protocols/ports on one node, every
 * row a real TCP connection, UDP request/response or ICMP echo between network namespaces — pods,
 * the node itself, and a "world" namespace behind the node's masquerade — checked against the
 * verdict worked out by hand from Cilium's documented semantics (written in each row; nothing here
 * asks our engine what it thinks).
 *
 * Covered: CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy and Kubernetes NetworkPolicy;
 * ingress and egress; fromEndpoints/toEndpoints (namespace scoping of CNP, KNP and CCNP peers),
 * fromEntities host and cluster, toEntities world, fromCIDRSet/toCIDR/toCIDRSet with except, KNP
 * ipBlock with except; TCP, UDP, ICMP (`icmps`), port ranges (`endPort`), protocol ANY;
 * ingressDeny/egressDeny beating allows (of the same and of another policy); enableDefaultDeny
 * false; KNP policyTypes [Egress]. A first round with no policy proves every row's path works,
 * so a "deny" below is the policy's doing, not a broken route or a missing server; a last round
 * checks that `ciliate monitor` shows the verdicts and drops, naming the deciding rule.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { join } from 'node:path';
import type { Endpoint } from '../src/agent/index.ts';
import { TestNode, ROOT, addNetns, echoServer, inNs, sleep, uniqueName } from './support/cluster.ts';

const run = promisify(execFile);
const CLI = join(ROOT, 'src', 'cli', 'main.ts');

/** The world namespace's addresses: two inside the policies' CIDR (one of them excepted), one outside every CIDR rule. */
const WORLD = { world: '198.51.100.2', 'world.3': '198.51.100.3', 'world.far': '203.0.113.5' } as const;
const NODE_UPLINK = '198.51.100.1';
const NODE_IP = '192.0.2.1'; // TestNode's default --node-ip

const POLICY_FILE = join(import.meta.dirname, 'policies', 'traffic-matrix.yaml');

/** Pods: name → labels (and namespace, default unless given). */
const PODS: Record<string, { labels: Record<string, string>; namespace?: string }> = {
  api: { labels: { app: 'api' } },
  client: { labels: { app: 'client' } },
  'api-other': { labels: { app: 'api' }, namespace: 'other' },
  db: { labels: { app: 'db' } },
  cache: { labels: { app: 'cache' } },
  web: { labels: { app: 'web' } },
  guard: { labels: { app: 'guard' } },
  open: { labels: { app: 'open' } },
  metrics: { labels: { app: 'metrics' } },
  ledger: { labels: { app: 'ledger' } },
  out: { labels: { app: 'out' } },
  crawler: { labels: { app: 'crawler' } },
  browser: { labels: { app: 'browser' } },
  mixed: { labels: { app: 'mixed' } },
};

type L4 = `tcp/${number}` | `udp/${number}` | 'icmp';
type Verdict = 'allow' | 'deny';
/**
 * [source, destination, protocol/port, expected verdict]. Sources and destinations are pod names,
 * `host` (the node: from its default source address, and as a destination its node IP),
 * `host@router` and `host@uplink` (the node's other addresses, see NODE_ADDRESS_ROWS), and the
 * world's addresses (`world`, `world.3`, `world.far`).
 */
type Row = readonly [from: string, to: string, l4: L4, verdict: Verdict];
const A: Verdict = 'allow';
const D: Verdict = 'deny';

// Worked out by hand from the policies (test/policies/traffic-matrix.yaml) and Cilium's semantics:
// a direction is default-deny once a policy with rules in it selects the endpoint (unless
// enableDefaultDeny says false, and no other selecting policy leaves it on); a flow needs the
// source's egress AND the destination's ingress; replies pass; deny beats allow across policies
// and kinds; a CNP's endpoint peers are its namespace's, a CCNP's any namespace's, a KNP
// podSelector's its namespace's; cluster = the pods of the cluster plus the host (not the world);
// CIDR rules select only addresses outside the cluster; protocol ANY is TCP/UDP/SCTP, never ICMP;
// KNP ports default to TCP. Traffic from the node to its pods is subject to policy like any other
// (Cilium's --allow-localhost=policy; in Kubernetes mode Cilium always allows the host instead).
const ROWS: readonly Row[] = [
  // db (CNP): app=api of default on 5432/TCP and 7000-7010/UDP.
  ['api', 'db', 'tcp/5432', A],
  ['api', 'db', 'tcp/5433', D], // another port
  ['api', 'db', 'udp/5432', D], // 5432 is TCP only
  ['api', 'db', 'udp/6999', D], // one below the range
  ['api', 'db', 'udp/7000', A], // its first port
  ['api', 'db', 'udp/7007', A],
  ['api', 'db', 'udp/7008', A],
  ['api', 'db', 'udp/7010', A], // its last port (endPort is inclusive)
  ['api', 'db', 'udp/7011', D], // one past it
  ['api', 'db', 'tcp/7005', D], // the range is UDP only
  ['api', 'db', 'icmp', D], // no ICMP rule
  ['client', 'db', 'tcp/5432', D],
  ['client', 'db', 'udp/7005', D],
  ['api-other', 'db', 'tcp/5432', D], // same labels, other namespace: a CNP's peers are its namespace's
  ['host', 'db', 'tcp/5432', D], // no rule for the host
  ['world', 'db', 'tcp/5432', D],
  ['out', 'db', 'tcp/5432', D], // out's egress allows it, db's ingress does not

  // cache (CCNP): app=api of any namespace, 6379 over any protocol.
  ['api', 'cache', 'tcp/6379', A],
  ['api', 'cache', 'udp/6379', A],
  ['api', 'cache', 'tcp/6380', D],
  ['api', 'cache', 'icmp', D], // ANY means TCP, UDP and SCTP
  ['api-other', 'cache', 'tcp/6379', A], // a clusterwide policy's peers are any namespace's
  ['api-other', 'cache', 'udp/6379', A],
  ['client', 'cache', 'tcp/6379', D],
  ['host', 'cache', 'icmp', D],

  // web (CNP): 80/TCP from pods of default; ICMP echo from the cluster entity.
  ['client', 'web', 'tcp/80', A],
  ['client', 'web', 'tcp/81', D],
  ['client', 'web', 'udp/80', D],
  ['client', 'web', 'icmp', A],
  ['api-other', 'web', 'tcp/80', D], // fromEndpoints [{}] in a CNP: its own namespace only
  ['api-other', 'web', 'icmp', A], // cluster: pods of every namespace
  ['host', 'web', 'icmp', A], // cluster includes the host
  ['host', 'web', 'tcp/80', D], // the host is no pod of default
  ['world', 'web', 'icmp', D], // the world is not the cluster
  ['world', 'web', 'tcp/80', D],

  // guard (CNP allow-all from default, denies; KNP allowing client 8080/TCP).
  ['client', 'guard', 'tcp/8080', D], // the deny beats the CNP's L3 allow and the KNP's L4 allow
  ['client', 'guard', 'tcp/8081', A],
  ['client', 'guard', 'udp/8080', A], // the deny is TCP only
  ['client', 'guard', 'icmp', A],
  ['api', 'guard', 'tcp/8080', A],
  ['api', 'guard', 'udp/8081', A],
  ['api', 'guard', 'icmp', D], // icmps in ingressDeny beats the L3 allow
  ['api-other', 'guard', 'tcp/8081', D],
  ['host', 'guard', 'tcp/8081', D],

  // open (CCNP, enableDefaultDeny false both ways).
  ['api', 'open', 'tcp/9000', A],
  ['client', 'open', 'tcp/9000', A], // not default deny: the allow for api restricts nobody
  ['client', 'open', 'tcp/9001', A],
  ['client', 'open', 'udp/9000', A],
  ['client', 'open', 'icmp', A],
  ['api', 'open', 'tcp/9002', D], // ingressDeny cluster on 9002/TCP
  ['client', 'open', 'tcp/9002', D],
  ['api-other', 'open', 'tcp/9002', D],
  ['host', 'open', 'tcp/9002', D], // the host is in the cluster
  ['host', 'open', 'tcp/9000', A],
  ['world', 'open', 'tcp/9002', A], // the world is not
  ['world.far', 'open', 'tcp/9002', A],
  ['open', 'world', 'tcp/8080', A], // egress not default deny either
  ['open', 'world', 'tcp/8081', D], // egressDeny world on 8081/TCP
  ['open', 'world.3', 'tcp/8081', D],
  ['open', 'world.far', 'tcp/8081', D],
  ['open', 'world.far', 'tcp/8080', A],
  ['open', 'world', 'icmp', A],
  ['open', 'client', 'tcp/9100', A],
  ['open', 'host', 'tcp/8300', A],

  // metrics (CNP): 9100/TCP from the host and from 198.51.100.0/24 except .3.
  ['host', 'metrics', 'tcp/9100', A],
  ['host', 'metrics', 'tcp/9101', D],
  ['host', 'metrics', 'icmp', D],
  ['api', 'metrics', 'tcp/9100', D],
  ['world', 'metrics', 'tcp/9100', A],
  ['world', 'metrics', 'tcp/9101', D],
  ['world.3', 'metrics', 'tcp/9100', D], // the except
  ['world.far', 'metrics', 'tcp/9100', D], // outside the CIDR

  // ledger (KNP ingress): app=api of default on 8000-8010/TCP; ipBlock /24 except .3 on 8000/TCP.
  ['api', 'ledger', 'tcp/8000', A],
  ['api', 'ledger', 'tcp/8010', A],
  ['api', 'ledger', 'tcp/8011', D],
  ['api', 'ledger', 'tcp/7999', D],
  ['api', 'ledger', 'udp/8005', D], // the port's protocol is TCP
  ['api', 'ledger', 'icmp', D],
  ['client', 'ledger', 'tcp/8000', D],
  ['api-other', 'ledger', 'tcp/8000', D], // a podSelector alone: the policy's namespace
  ['world', 'ledger', 'tcp/8000', A],
  ['world', 'ledger', 'tcp/8001', D],
  ['world', 'ledger', 'udp/8000', D], // KNP ports default to TCP
  ['world.3', 'ledger', 'tcp/8000', D], // the except
  ['host', 'ledger', 'tcp/8000', D],

  // out (CNP egress only).
  ['out', 'web', 'tcp/80', A],
  ['out', 'web', 'tcp/81', D],
  ['out', 'guard', 'tcp/8080', A], // L3-only egress to guard; guard denies client only
  ['out', 'guard', 'udp/8081', A],
  ['out', 'guard', 'icmp', A],
  ['out', 'cache', 'tcp/6379', D],
  ['out', 'world', 'tcp/8080', A],
  ['out', 'world', 'tcp/8081', D],
  ['out', 'world', 'udp/5353', A],
  ['out', 'world', 'udp/8080', D],
  ['out', 'world.3', 'tcp/8080', D], // the except
  ['out', 'world.far', 'tcp/8080', D], // outside the CIDR
  ['out', 'world', 'icmp', A], // toCIDR .2/32 with icmps
  ['out', 'world.3', 'icmp', D],
  ['out', 'host', 'tcp/8300', A], // toEntities host
  ['out', 'host', 'tcp/8301', D],
  ['client', 'out', 'tcp/9100', A], // its ingress is not enforced, and its answers are replies
  ['client', 'out', 'udp/9100', A],
  ['client', 'out', 'icmp', A],
  ['world', 'out', 'tcp/9100', A],

  // crawler (KNP, policyTypes [Egress]).
  ['crawler', 'world', 'tcp/8080', A],
  ['crawler', 'world', 'tcp/8090', A], // endPort inclusive
  ['crawler', 'world', 'tcp/8091', D],
  ['crawler', 'world', 'udp/8080', D],
  ['crawler', 'world', 'icmp', D],
  ['crawler', 'world.3', 'tcp/8085', D], // the except
  ['crawler', 'world.far', 'tcp/8080', D],
  ['crawler', 'web', 'tcp/80', A],
  ['crawler', 'web', 'tcp/81', D],
  ['crawler', 'host', 'tcp/8300', D],
  ['crawler', 'api', 'udp/9100', A], // a KNP port with a protocol and no port: every port
  ['crawler', 'api', 'udp/9101', A],
  ['crawler', 'api', 'tcp/9100', D],
  ['client', 'crawler', 'tcp/9100', A], // ingress not enforced: policyTypes is Egress only
  ['client', 'crawler', 'icmp', A],
  ['world', 'crawler', 'tcp/9100', A],

  // mixed (CNP with enableDefaultDeny ingress false + KNP): the KNP's default deny holds.
  ['api', 'mixed', 'tcp/9000', A], // the CNP's allow
  ['client', 'mixed', 'tcp/9001', A], // the KNP's allow
  ['client', 'mixed', 'tcp/9000', D],
  ['api', 'mixed', 'tcp/9001', D],
  ['host', 'mixed', 'tcp/9000', D],

  // browser (CNP): anything to the world, web 80/TCP; egressDeny .3 on 8080/TCP.
  ['browser', 'world', 'tcp/8080', A],
  ['browser', 'world', 'tcp/8081', A],
  ['browser', 'world', 'udp/8080', A],
  ['browser', 'world', 'icmp', A],
  ['browser', 'world.far', 'tcp/8080', A], // world: every address outside the cluster
  ['browser', 'world.3', 'tcp/8080', D], // the deny beats the world allow
  ['browser', 'world.3', 'tcp/8081', A],
  ['browser', 'web', 'tcp/80', A],
  ['browser', 'client', 'tcp/9100', D], // a pod is not the world
  ['browser', 'host', 'tcp/8300', D], // nor is the host

  // No policy on either side.
  ['api', 'client', 'tcp/9100', A],
  ['client', 'api', 'udp/9100', A],
  ['api', 'host', 'tcp/8300', A],
  ['api', 'world', 'tcp/8080', A],
  ['api', 'world.far', 'icmp', A],
  ['host', 'client', 'tcp/9100', A],
  ['world', 'client', 'tcp/9100', A],
];

/**
 * The node's other addresses: its router address (the pods' gateway, on ciliate_host: what Cilium's
 * cilium_host address is) and an uplink address added after the agent started. As in Cilium, every
 * address of the local node is the host identity, so these rows follow the host's verdicts above.
 */
const NODE_ADDRESS_ROWS: readonly Row[] = [
  ['host@router', 'metrics', 'tcp/9100', A], // fromEntities host
  ['host@router', 'web', 'icmp', A], // cluster includes the host
  ['host@router', 'open', 'tcp/9002', D], // ingressDeny cluster
  ['host@uplink', 'web', 'icmp', A],
  ['host@uplink', 'open', 'tcp/9002', D],
  ['out', 'host@router', 'tcp/8300', A], // toEntities host
  ['browser', 'host@router', 'tcp/8300', D], // toEntities world: the host is not the world
  ['browser', 'host@uplink', 'tcp/8300', D],
];

// The monitor names the rule behind a verdict, for all three kinds, both directions, allowed and
// denied; a denial is also a drop, POLICY_DENY for an explicit deny and POLICY_DENIED by default.
const TRACED: readonly { row: Row; direction: 'ingress' | 'egress'; rule?: string; drop?: string }[] = [
  { row: ['client', 'guard', 'tcp/8080', D], direction: 'ingress', rule: 'CiliumNetworkPolicy/default/guard', drop: 'POLICY_DENY' },
  { row: ['client', 'db', 'tcp/5432', D], direction: 'ingress', drop: 'POLICY_DENIED' },
  { row: ['browser', 'world.3', 'tcp/8080', D], direction: 'egress', rule: 'CiliumNetworkPolicy/default/browser', drop: 'POLICY_DENY' },
  { row: ['open', 'world', 'tcp/8081', D], direction: 'egress', rule: 'CiliumClusterwideNetworkPolicy/open', drop: 'POLICY_DENY' },
  { row: ['api', 'db', 'tcp/5432', A], direction: 'ingress', rule: 'CiliumNetworkPolicy/default/db' },
  { row: ['api-other', 'cache', 'tcp/6379', A], direction: 'ingress', rule: 'CiliumClusterwideNetworkPolicy/cache' },
  { row: ['crawler', 'world', 'tcp/8085', A], direction: 'egress', rule: 'NetworkPolicy/default/crawler' },
];

function rowName([from, to, l4]: Row): string {
  return `${from} → ${to} ${l4}`;
}

// ---- the probes: one process per source namespace runs all of that source's probes at once ----

interface Probe {
  proto: 'tcp' | 'udp' | 'icmp';
  host: string;
  port: number;
  /** Source address to send from. */
  bind?: string;
}

/**
 * TCP: connect and get "ping" echoed (a denied SYN is dropped, so the connect times out); UDP:
 * send every 250 ms until an answer comes back; ICMP: one echo with ping -c1 -W1. Prints one
 * outcome per probe: "allow", "deny" (nothing came back in time) or "error <what>" (something
 * answered that should not have: a reset, an unreachable).
 */
const PROBE = `
const net = require('node:net'), dgram = require('node:dgram'), { spawn } = require('node:child_process');
const [timeoutMs, json] = process.argv.slice(1);
const t = Number(timeoutMs);
const tcp = (p) => new Promise((resolve) => {
  const s = net.connect({ host: p.host, port: p.port, localAddress: p.bind });
  const done = (r) => { clearTimeout(timer); s.destroy(); resolve(r); };
  const timer = setTimeout(() => done('deny'), t);
  s.on('connect', () => s.write('ping'));
  s.on('data', () => done('allow'));
  s.on('error', (e) => done('error ' + e.code));
});
const udp = (p) => new Promise((resolve) => {
  const u = dgram.createSocket('udp4');
  let timer, resend;
  const done = (r) => { clearTimeout(timer); clearInterval(resend); u.close(); resolve(r); };
  u.on('message', () => done('allow'));
  u.on('error', (e) => done('error ' + e.code));
  u.bind({ address: p.bind ?? '0.0.0.0', port: 0 }, () => {
    const send = () => u.send('ping', p.port, p.host);
    send();
    resend = setInterval(send, 250);
    timer = setTimeout(() => done('deny'), t);
  });
});
const icmp = (p) => new Promise((resolve) => {
  const child = spawn('ping', ['-n', '-c1', '-W1', ...(p.bind ? ['-I', p.bind] : []), p.host], { stdio: 'ignore' });
  child.on('exit', (code) => resolve(code === 0 ? 'allow' : code === 1 ? 'deny' : 'error ping exited ' + code));
  child.on('error', (e) => resolve('error ' + e.code));
});
Promise.all(JSON.parse(json).map((p) => (p.proto === 'tcp' ? tcp(p) : p.proto === 'udp' ? udp(p) : icmp(p))))
  .then((results) => console.log(JSON.stringify(results)));
`;

const PROBE_TIMEOUT_MS = 1000;

async function probeAll(netns: string, probes: Probe[]): Promise<string[]> {
  return JSON.parse(await inNs(netns, process.execPath, ['-e', PROBE, String(PROBE_TIMEOUT_MS), JSON.stringify(probes)], 30_000)) as string[];
}

interface Place {
  netns: string;
  /** Address it is reached at (as a destination). */
  address: string;
  /** Address it sends from (as a source); the kernel's choice when absent. */
  bind?: string;
}

/** Runs every row (all sources at once) and returns each row's outcome, in row order. */
async function runRows(rows: readonly Row[], places: Record<string, Place>): Promise<string[]> {
  const bySource = new Map<string, { index: number; probe: Probe }[]>();
  rows.forEach((row, index) => {
    const [from, to, l4] = row;
    const src = places[from];
    const dst = places[to];
    assert.ok(src && dst, `row ${rowName(row)} names an unknown place`);
    const [proto, port] = l4 === 'icmp' ? (['icmp', 0] as const) : ([l4.slice(0, 3) as 'tcp' | 'udp', Number(l4.slice(4))] as const);
    const list = bySource.get(src.netns) ?? [];
    list.push({ index, probe: { proto, host: dst.address, port, ...(src.bind ? { bind: src.bind } : {}) } });
    bySource.set(src.netns, list);
  });
  const outcomes: string[] = new Array(rows.length);
  await Promise.all(
    [...bySource].map(async ([netns, list]) => {
      const results = await probeAll(netns, list.map((x) => x.probe));
      list.forEach((x, i) => (outcomes[x.index] = results[i]));
    }),
  );
  return outcomes;
}

/** The rows whose outcome is not `want(row)`, named. */
function mismatches(rows: readonly Row[], outcomes: string[], want: (row: Row) => Verdict): string[] {
  return rows.flatMap((row, i) => (outcomes[i] === want(row) ? [] : [`${rowName(row)}: expected ${want(row)}, got ${outcomes[i]}`]));
}

// ---- the setup ----

async function addPod(t: TestContext, node: TestNode, name: string, labels: Record<string, string>, namespace?: string) {
  const netns = await addNetns(t, 'ctp');
  const containerId = uniqueName(name);
  const endpoint = await node.client.call<Endpoint>('POST', '/v1/endpoints', {
    containerId,
    ifname: 'eth0',
    netns: `/run/netns/${netns}`,
    labels,
    podName: name,
    ...(namespace ? { namespace } : {}),
  });
  t.after(async () => {
    await node.client.call('DELETE', `/v1/endpoints/${containerId}/eth0`).catch(() => undefined);
  });
  return { netns, endpoint };
}

/** The world: a namespace behind a veth from the node, with a route back to the pods (so it can also open connections to them). */
async function addWorld(t: TestContext, node: TestNode, podCidr: string): Promise<string> {
  const world = await addNetns(t, 'ctw');
  const up = uniqueName('up').slice(0, 12);
  await run('ip', ['link', 'add', up, 'netns', `/run/netns/${node.netns}`, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', `/run/netns/${world}`]);
  await inNs(node.netns, 'ip', ['addr', 'add', `${NODE_UPLINK}/24`, 'dev', up]);
  await inNs(node.netns, 'ip', ['link', 'set', up, 'up']);
  await inNs(node.netns, 'ip', ['route', 'add', `${WORLD['world.far']}/32`, 'via', WORLD.world, 'dev', up]);
  await inNs(world, 'ip', ['addr', 'add', `${WORLD.world}/24`, 'dev', 'eth0']);
  await inNs(world, 'ip', ['addr', 'add', `${WORLD['world.3']}/24`, 'dev', 'eth0']);
  await inNs(world, 'ip', ['addr', 'add', `${WORLD['world.far']}/32`, 'dev', 'eth0']);
  await inNs(world, 'ip', ['link', 'set', 'eth0', 'up']);
  await inNs(world, 'ip', ['route', 'add', podCidr, 'via', NODE_UPLINK]);
  return world;
}

interface MonitorEvent {
  kind: string;
  summary: string;
  rule?: string;
  dropReason?: string;
  destination: string;
  event: { allowed?: boolean; directionName?: string; endpointId?: number; dport?: number; protocol?: number; remoteIdentity?: number };
}

test('verdict matrix with real traffic: CNP, CCNP and KNP; ingress and egress; TCP, UDP, ICMP; pods, host and world', async (t) => {
  const t0 = Date.now();
  const node = await TestNode.start(t);
  const status = await node.client.get<{ ipam: { podCidr: string; routerIp: string } }>('/v1/status');
  const world = await addWorld(t, node, status.ipam.podCidr);
  const pods = Object.fromEntries(
    await Promise.all(Object.entries(PODS).map(async ([name, { labels, namespace }]) => [name, await addPod(t, node, name, labels, namespace)] as const)),
  );

  const places: Record<string, Place> = {
    host: { netns: node.netns, address: NODE_IP },
    'host@router': { netns: node.netns, address: status.ipam.routerIp, bind: status.ipam.routerIp },
    'host@uplink': { netns: node.netns, address: NODE_UPLINK, bind: NODE_UPLINK },
  };
  for (const [name, address] of Object.entries(WORLD)) places[name] = { netns: world, address, bind: address };
  for (const [name, pod] of Object.entries(pods)) places[name] = { netns: pod.netns, address: pod.endpoint.ipv4 };

  // A TCP+UDP echo server on every port some row uses, in each destination's namespace.
  const all = [...ROWS, ...NODE_ADDRESS_ROWS];
  const ports = new Map<string, Set<number>>();
  for (const [, to, l4] of [...all, ...TRACED.map((x) => x.row)]) {
    if (l4 === 'icmp') continue;
    const netns = places[to].netns;
    if (!ports.has(netns)) ports.set(netns, new Set());
    ports.get(netns)!.add(Number(l4.slice(4)));
  }
  await Promise.all([...ports].map(([netns, set]) => echoServer(t, netns, ...set)));

  t.diagnostic(`setup ${Date.now() - t0} ms`);
  const started = Date.now();
  const baseline = await runRows(all, places);
  assert.deepEqual(mismatches(all, baseline, () => A), [], 'without any policy every row gets through (so a denial below is the policy\'s)');
  const baselineMs = Date.now() - started;

  const ciliate = (...args: string[]) => run(process.execPath, [CLI, ...args, '--socket', node.socket], { encoding: 'utf8' });
  const [imported] = JSON.parse((await ciliate('policy', 'import', POLICY_FILE, '-o', 'json')).stdout) as { rules: string[]; revision: number }[];
  assert.equal(imported.rules.length, 13, imported.rules.join(', '));
  await ciliate('policy', 'wait', String(imported.revision));

  const matrixStarted = Date.now();
  const outcomes = await runRows(all, places);
  t.diagnostic(`${all.length} rows: baseline ${baselineMs} ms, with policies ${Date.now() - matrixStarted} ms`);
  assert.deepEqual(mismatches(all, outcomes, (row) => row[3]), []);

  // The monitor, on the TRACED rows run again.
  const rows = TRACED.map((x) => x.row);
  assert.deepEqual(mismatches(rows, await runRows(rows, places), (row) => row[3]), []);
  await sleep(100); // the agent drains the datapath's events every 20 ms
  const monitor = await ciliate('monitor', '--last', '4000', '-t', 'policy-verdict', '-t', 'drop', '-o', 'json');
  const events = monitor.stdout.trim().split('\n').map((line) => JSON.parse(line) as MonitorEvent);
  const problems: string[] = [];
  for (const { row, direction, rule, drop } of TRACED) {
    const [from, to, l4, verdict] = row;
    const port = Number(l4.slice(4));
    const subject = direction === 'ingress' ? pods[to] : pods[from];
    const verdicts = events.filter(
      (e) => e.kind === 'policy-verdict' && e.event.endpointId === subject.endpoint.id && e.event.directionName === direction && e.event.dport === port && e.event.protocol === 6,
    );
    const wanted = verdicts.filter((e) => e.event.allowed === (verdict === A) && e.rule === rule && (direction === 'egress' || e.event.remoteIdentity === pods[from].endpoint.identity));
    if (wanted.length === 0) problems.push(`${rowName(row)}: no ${direction} ${verdict} verdict${rule ? ` naming ${rule}` : ' without a rule'} (saw: ${verdicts.map((e) => e.summary).join(' | ') || 'none'})`);
    if (drop && !events.some((e) => e.kind === 'drop' && e.dropReason === drop && e.destination.startsWith(`${places[to].address}:${port} `))) {
      problems.push(`${rowName(row)}: no ${drop} drop`);
    }
  }
  assert.deepEqual(problems, []);
  const deny = events.find((e) => e.kind === 'policy-verdict' && e.rule === 'CiliumNetworkPolicy/default/guard' && e.event.dport === 8080 && !e.event.allowed);
  assert.match(deny?.summary ?? '', /:8080 \(ID:\d+\) policy-verdict:L3-L4 INGRESS DENIED \(TCP\) \[CiliumNetworkPolicy\/default\/guard\]$/);
});
