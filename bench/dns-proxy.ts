/**
 * `dns-proxy`: what the DNS proxy adds to a pod's DNS queries under load, on the path users get.
 * One node (its own agent), one client pod, and a DNS server (bench/c/dns-responder.c, its own
 * process: C, as the resolver's own garbage collector and event loop, sharing this 2-core machine
 * with the agent, are not what is measured) in a namespace acting as the world, answering A
 * records for 100 names on two ports of the same address. The pod's egress policy allows port 53 with `rules.dns` (matchPattern
 * `*.example.com`), so the datapath hands those datagrams to the agent's dns-redirect listener and
 * the DNS proxy (policy verdict, forward to the resolver, answer learned into the FQDN cache for a
 * `toFQDNs` rule, Hubble DNS flows, answer sent as the resolver on a raw socket); port 5353 is
 * allowed at L4 only, so its queries go straight to the server: the baseline.
 *
 * The load generator is bench/c/dns-load.c inside the client pod (C, as a pod's resolver library
 * is: a Node client's own event loop added 2-4 ms to both paths' p99): open loop at a fixed rate
 * (10k queries/s, DNS_PROXY_BENCH_RATE), a query sent when due whether or not earlier ones were
 * answered, round robin over a pool of 32 connected UDP sockets (as a resolver library reuses its
 * ports), answers matched by socket and id. Latency runs from the query's send to its answer's arrival; a query
 * not answered within 2 s is lost. Rounds alternate proxied and direct; figures are the medians
 * over rounds of each round's figures (a warm-up round of each first, which also learns the names).
 *
 * Figures:
 *   latency_p50_us/_p99_us  proxied vs direct (answered queries)
 *   added_p99_us            proxied p99 − direct p99 (target < 1000 µs)
 *   answered_ratio          proxied queries answered NOERROR within 2 s / sent
 *   agent_cpu_ms_per_1k     the agent's CPU time (utime+stime) over a proxied round minus over a
 *                           direct round, per 1000 queries the redirect received (10 ms ticks)
 *
 * Not measured: TCP queries; names the proxy refuses (answered by the proxy alone); the first
 * answer of a name, whose addresses are written to the policy map before the pod hears it (the
 * warm-up round learns all 100 names); the client's own send delay (its p99 is logged: when it
 * is large the client, not the path, was late).
 * @module
 */
import { readdirSync, readFileSync } from 'node:fs';
import { type BenchContext, buildC, interleave, median, round } from './lib.ts';
import { BenchNode } from './support/agent.ts';
import { addNetns, Cleanups, inNs, sh, sleep, spawnInNs, uniqueName, waitForOutput } from './support/ns.ts';

export const description = 'pod DNS through the datapath redirect and the DNS proxy vs straight to the resolver: added latency p50/p99 at 10k queries/s';

const RATE = Number(process.env.DNS_PROXY_BENCH_RATE ?? 10_000);
const SECONDS = 2;
const DEFAULT_ROUNDS = 5;
const SOCKETS = 32;
const TIMEOUT_MS = 2000;
const TARGET_ADDED_P99_US = 1000;
const NAME_COUNT = 100;
/** The world's side of the node's uplink, and the DNS server's address. */
const WORLD_NET = '198.51.100';
const RESOLVER = `${WORLD_NET}.2`;
const PROXIED_PORT = 53;
const DIRECT_PORT = 5353;
const NAMES = Array.from({ length: NAME_COUNT }, (_, i) => `svc-${i}.example.com`);
// TEST-NET-3: never the node's (192.0.2.1) nor the world's addresses.
const RECORDS = NAMES.map((n, i) => `${n}=203.0.113.${i + 1}`);
const TTL = 300;

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: dns-bench}
spec:
  endpointSelector: {matchLabels: {app: dns-client}}
  egress:
  - toCIDR: [${RESOLVER}/32]
    toPorts:
    - ports: [{port: "${PROXIED_PORT}", protocol: UDP}]
      rules: {dns: [{matchPattern: "*.example.com"}]}
    - ports: [{port: "${DIRECT_PORT}", protocol: UDP}]
  - toFQDNs: [{matchPattern: "*.example.com"}]
    toPorts:
    - ports: [{port: "443", protocol: TCP}]
`;

/**
 * `probe host port name` prints {rcode} of one A query (hand-encoded: no dns-packet from inside
 * `node -e`), or {timeout: true}.
 */
const PROBE = `
const dgram = require('node:dgram');
const [host, port, name] = process.argv.slice(1);
const labels = name.split('.');
const q = Buffer.alloc(12 + labels.reduce((n, l) => n + l.length + 1, 0) + 1 + 4);
q.writeUInt16BE(4242, 0);
q.writeUInt16BE(0x0100, 2);
q.writeUInt16BE(1, 4);
let o = 12;
for (const l of labels) { q[o++] = l.length; o += q.write(l, o, 'ascii'); }
q[o++] = 0;
q.writeUInt16BE(1, o);
q.writeUInt16BE(1, o + 2);
const s = dgram.createSocket('udp4');
s.connect(Number(port), host, () => s.send(q));
const timer = setTimeout(() => { console.log(JSON.stringify({ timeout: true })); process.exit(0); }, 3000);
s.on('message', (m) => { if (m.readUInt16BE(0) !== 4242) return; clearTimeout(timer); console.log(JSON.stringify({ rcode: m[3] & 0xf })); s.close(); });
`;

interface LoadResult {
  sent: number;
  answered: number;
  errors: number;
  lost: number;
  sendErrors: number;
  p50: number | null;
  p99: number | null;
  lagP99: number | null;
  /** Mean time of the client's send() call: the kernel's work on the datagram's way, up to its delivery. */
  sendUs: number;
}

interface RedirectStats {
  datagrams: number;
  /** With the fast path (the default), it receives every datagram and hands JavaScript the rest. */
  fastDatagrams: number;
  fastForwarded: number;
  handedOff: number;
  fastRealtimeBackoffs: number;
  askedAgent: number;
  staleResets: number;
  notAnEndpoint: number;
  noOriginalDestination: number;
  unanswered: number;
  sendFailures: number;
}

/** utime + stime (ms) in a /proc stat file: of a process, or of one of its threads (task/<tid>/stat). Clock ticks of 10 ms: USER_HZ is 100 on Linux. */
function statCpuMs(path: string): number {
  const stat = readFileSync(path, 'utf8');
  // Fields after the command name, which may hold spaces: state is field 3, utime 14, stime 15.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

const cpuMs = (pid: number): number => statCpuMs(`/proc/${pid}/stat`);

/** CPU time (ms) of each of a process's threads, summed by thread name. */
function threadCpuMs(pid: number): Map<string, number> {
  const byName = new Map<string, number>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const name = readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim();
      byName.set(name, (byName.get(name) ?? 0) + statCpuMs(`/proc/${pid}/task/${tid}/stat`));
    } catch {
      // The thread ended between the listing and the read.
    }
  }
  return byName;
}

export async function run(ctx: BenchContext): Promise<void> {
  const rounds = ctx.rounds ?? DEFAULT_ROUNDS;
  const cleanups = new Cleanups((m) => ctx.log(m));
  try {
    // The bench is one pod at the whole rate: the per-endpoint bound would measure itself.
    const node = await BenchNode.start(cleanups, { prefix: 'cbdns', extraArgs: ['--dns-proxy-endpoint-rate-limit', '0'] });
    const agentPid = node.agent!.pid!;
    // The world: a namespace behind a veth from the node, as test/support/cluster.ts addWorld.
    const world = await addNetns(cleanups, 'cbdnsw');
    const uplink = uniqueName('cbdu').slice(0, 12);
    await sh('ip', ['link', 'add', uplink, 'netns', `/run/netns/${node.netns}`, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', `/run/netns/${world}`]);
    await sh('ip', ['-n', node.netns, '-batch', '-'], { input: `addr add ${WORLD_NET}.1/24 dev ${uplink}\nlink set dev ${uplink} up\n` });
    await sh('ip', ['-n', world, '-batch', '-'], { input: `addr add ${RESOLVER}/24 dev eth0\nlink set dev eth0 up\n` });
    // One server process, both ports: the two paths differ only in what lies between.
    const server = spawnInNs(cleanups, world, buildC('dns-responder'), [RESOLVER, String(TTL), `${PROXIED_PORT},${DIRECT_PORT}`, ...RECORDS]);
    await waitForOutput(server, 'ready');

    const client = await node.addPod('cbdnsc');
    await node.client.call('PUT', `/v1/endpoints/${client.endpoint.id}/labels`, { app: 'dns-client' });
    await node.client.call('POST', '/v1/policies', { yaml: POLICY });
    // The policy reaches the endpoint's maps a moment after the import returns.
    await sleep(1000);

    // Check each path is the one meant: the proxy refuses a name no rule allows, the server answers NXDOMAIN.
    const probe = async (port: number) => JSON.parse(await inNs(client.netns, process.execPath, ['-e', PROBE, RESOLVER, String(port), 'probe.other.test'])) as { rcode?: number; timeout?: true };
    const loadGenerator = buildC('dns-load');
    const [viaProxy, direct] = [await probe(PROXIED_PORT), await probe(DIRECT_PORT)];
    if (viaProxy.rcode !== 5) throw new Error(`port ${PROXIED_PORT} does not go through the DNS proxy (an unlisted name got ${JSON.stringify(viaProxy)}, not REFUSED)`);
    if (direct.rcode !== 3) throw new Error(`port ${DIRECT_PORT} does not reach the server straight (an unknown name got ${JSON.stringify(direct)}, not NXDOMAIN)`);

    // Udp RcvbufErrors in the node's namespace: datagrams the agent's sockets had no room for.
    const receiveBufferErrors = async () => {
      const [names, values] = (await inNs(node.netns, 'cat', ['/proc/net/snmp'])).split('\n').filter((l) => l.startsWith('Udp:'));
      return Number(values.split(' ')[names.split(' ').indexOf('RcvbufErrors')]);
    };
    const redirect = async () => (await node.client.get<{ dnsRedirect?: RedirectStats }>('/v1/status')).dnsRedirect;
    const load = async (port: number): Promise<{ result: LoadResult; cpu: number }> => {
      const before = cpuMs(agentPid);
      const out = await inNs(client.netns, loadGenerator, [RESOLVER, String(port), String(RATE), String(SECONDS), String(SOCKETS), String(NAME_COUNT), String(TIMEOUT_MS)], 60_000);
      return { result: JSON.parse(out) as LoadResult, cpu: cpuMs(agentPid) - before };
    };
    type Path = 'proxied' | 'direct';
    const results: Record<Path, LoadResult[]> = { proxied: [], direct: [] };
    const cpu: Record<Path, number[]> = { proxied: [], direct: [] };
    const datagrams: number[] = [];
    const measure = (path: Path, port: number) => async () => {
      const stats = path === 'proxied' ? await redirect() : undefined;
      const overflows = path === 'proxied' ? await receiveBufferErrors() : 0;
      const threadsBefore = threadCpuMs(agentPid);
      const { result, cpu: used } = await load(port);
      if (stats) {
        const threadsAfter = threadCpuMs(agentPid);
        const busiest = [...threadsAfter].map(([name, ms]) => [name, ms - (threadsBefore.get(name) ?? 0)] as const).filter(([, ms]) => ms > 0).sort((a, b) => b[1] - a[1]);
        ctx.log(`agent threads' CPU over the round: ${busiest.map(([name, ms]) => `${name} ${ms} ms`).join(', ')}`);
        const after = (await redirect())!;
        const fastPath = after.fastDatagrams > stats.fastDatagrams;
        datagrams.push(fastPath ? after.fastDatagrams - stats.fastDatagrams : after.datagrams - stats.datagrams);
        ctx.log(`dns-redirect worker: asked the agent ${after.askedAgent - stats.askedAgent} times, what it kept went stale ${after.staleResets - stats.staleResets} times; fast path answered ${after.fastForwarded - stats.fastForwarded}, handed JavaScript ${after.handedOff - stats.handedOff}, went past its realtime budget ${after.fastRealtimeBackoffs - stats.fastRealtimeBackoffs} times`);
        const ignored = (['notAnEndpoint', 'noOriginalDestination', 'unanswered', 'sendFailures'] as const).filter((k) => after[k] !== stats[k]);
        if (ignored.length > 0) ctx.log(`dns-redirect: ${ignored.map((k) => `${k} +${after[k] - stats[k]}`).join(', ')}`);
        const dropped = (await receiveBufferErrors()) - overflows;
        if (dropped > 0) ctx.log(`node namespace: ${dropped} UDP datagrams dropped on a full receive buffer (the listener's, or the proxy's upstream sockets')`);
      }
      if (result.p99 === null) throw new Error(`${path}: no query answered (${JSON.stringify(result)})`);
      results[path].push(result);
      cpu[path].push(used);
      return result.p99;
    };
    await interleave(rounds, { proxied: measure('proxied', PROXIED_PORT), direct: measure('direct', DIRECT_PORT) }, {
      onRound: (i) => {
        const [p, d] = [results.proxied.at(-1)!, results.direct.at(-1)!];
        ctx.log(
          `round ${i + 1}/${rounds}: p50/p99 proxied ${round(p.p50!)}/${round(p.p99!)} µs (${p.answered}/${p.sent} answered, ${p.lost} lost, ${p.errors} errors, ` +
            `${datagrams.at(-1)} redirected), direct ${round(d.p50!)}/${round(d.p99!)} µs (${d.answered}/${d.sent}); client send lag p99 ${round(p.lagP99!)}/${round(d.lagP99!)} µs, send() ${round(p.sendUs)}/${round(d.sendUs)} µs; ` +
            `agent CPU ${cpu.proxied.at(-1)}/${cpu.direct.at(-1)} ms`,
        );
      },
    });
    // The warm-up round's results are in the lists too: drop them.
    for (const list of [results.proxied, results.direct, cpu.proxied, cpu.direct]) list.shift();

    const baseline = `the same pod and server on a port allowed at L4 (no proxy), ${RATE} queries/s`;
    const common = { rounds, rate: RATE, sockets: SOCKETS };
    const figure = (metric: string, pick: (r: LoadResult) => number) => {
      const ours = median(results.proxied.map(pick));
      const base = median(results.direct.map(pick));
      ctx.emit({ metric, value: round(ours), unit: 'µs', baseline, baseline_value: round(base), ratio: round(ours / base, 3), better: 'lower', ...common });
    };
    figure('latency_p50_us', (r) => r.p50!);
    figure('latency_p99_us', (r) => r.p99!);
    const added = median(results.proxied.map((r) => r.p99!)) - median(results.direct.map((r) => r.p99!));
    ctx.emit({ metric: 'added_p99_us', value: round(added), unit: 'µs', baseline: null, ratio: null, better: 'lower', target: `< ${TARGET_ADDED_P99_US} µs`, met: added < TARGET_ADDED_P99_US, ...common });
    const answeredRatio = median(results.proxied.map((r) => r.answered / r.sent));
    ctx.emit({ metric: 'answered_ratio', value: round(answeredRatio, 4), unit: 'ratio', baseline: null, ratio: null, better: 'higher', direct_value: round(median(results.direct.map((r) => r.answered / r.sent)), 4), ...common });
    // Per query the agent received (the redirect's datagram count), not per query sent: a query
    // dropped before the agent saw it cost it nothing.
    datagrams.shift();
    const perThousand = median(datagrams.map((n, i) => (cpu.proxied[i] - cpu.direct[i]) / (n / 1000)));
    ctx.emit({ metric: 'agent_cpu_ms_per_1k', value: round(perThousand, 2), unit: 'ms', baseline: null, ratio: null, better: 'lower', agent_cpu_direct_round_ms: median(cpu.direct), ...common });
  } finally {
    await cleanups.run();
  }
}
