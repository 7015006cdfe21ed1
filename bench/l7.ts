/**
 * `l7`: HTTP through the node proxy (a port with HTTP rules) against the same pods straight (a
 * port allowed at L4), interleaved: requests per second with 16 kept-alive connections, and the
 * latency of one request at a time on one kept-alive connection (p50, p99), from which the
 * latency the proxy adds. The client and the server are Node in their pods; the proxy is the
 * agent's child process. Then the same with the node itself as the client (figures `stack_*`):
 * its connections reach the server pod through the node's stack, and the proxied ones take the
 * hairpin from cil_to_container back to the pod veth's ingress (bpf/lib/proxy.h).
 *
 * The target is the proxy's at one core: Ciliate (the agent and its proxy, every thread) is pinned
 * to one CPU and the pods (client and server) to the other, in both paths, so the direct path has
 * the pods' CPU and the proxied one that too plus one core for Ciliate. (Unpinned on this 2-core
 * machine, the proxy takes its CPU from the pods it serves; `proxy_cpu_us_per_req` is that view.)
 *
 * Figures:
 *   req_per_s            proxied vs direct (target ≥ 0.5 of direct, Ciliate at one core)
 *   latency_p50_us/_p99  proxied vs direct
 *   added_p50_us/_p99    proxied − direct (target p99 added < 1000 µs)
 *   proxy_cpu_us_per_req CPU time of the proxy process per proxied request during the rate rounds
 *                        (/proc/<pid>/schedstat), and the req/s it makes at one core: less noisy
 *                        than req/s on a shared machine, where the proxy competes with client and server
 * @module
 */
import { readFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { type BenchContext, interleave, median, round } from './lib.ts';
import { BenchNode } from './support/agent.ts';
import { Cleanups, inNs, sh, spawnInNs, waitForOutput } from './support/ns.ts';

export const description = 'HTTP through the L7 proxy vs direct on the same pods: req/s and added latency p50/p99';

const DEFAULT_ROUNDS = 5;
const PROXIED_PORT = 80;
const DIRECT_PORT = 8080;
const CONCURRENCY = 16;
const SECONDS = 2;
const LATENCY_REQUESTS = 2000;
/** Ciliate's CPU and the pods', as taskset names them. */
const CILIATE_CPU = '1';
const PODS_CPU = '0';

const SERVER = `
const http = require('node:http');
const body = Buffer.from('ok\\n');
for (const port of [${PROXIED_PORT}, ${DIRECT_PORT}]) {
  const s = http.createServer((req, res) => { req.resume(); res.writeHead(200, { 'content-length': body.length }); res.end(body); });
  s.keepAliveTimeout = 60000;
  s.listen(port, '0.0.0.0');
}
setTimeout(() => console.log('ready'), 100);
`;

/** Prints {rate} (requests/s over SECONDS with CONCURRENCY connections) or {p50, p99} in µs. */
const CLIENT = `
const http = require('node:http');
const [host, port, mode, seconds, conc, count] = process.argv.slice(1);
const agent = new http.Agent({ keepAlive: true, maxSockets: Number(conc) });
const get = () => new Promise((resolve, reject) => {
  const req = http.get({ host, port: Number(port), path: '/api/items', agent }, (res) => { res.resume(); res.on('end', () => resolve(res.statusCode)); });
  req.on('error', reject);
});
(async () => {
  if (mode === 'rate') {
    for (let i = 0; i < Number(conc) * 4; i++) await get();
    let done = 0;
    const deadline = performance.now() + Number(seconds) * 1000;
    await Promise.all(Array.from({ length: Number(conc) }, async () => { while (performance.now() < deadline) { if ((await get()) !== 200) throw new Error('status'); done++; } }));
    console.log(JSON.stringify({ rate: done / Number(seconds) }));
  } else {
    for (let i = 0; i < 200; i++) await get();
    const samples = [];
    for (let i = 0; i < Number(count); i++) { const t = process.hrtime.bigint(); if ((await get()) !== 200) throw new Error('status'); samples.push(Number(process.hrtime.bigint() - t) / 1000); }
    samples.sort((a, b) => a - b);
    console.log(JSON.stringify({ p50: samples[Math.floor(samples.length * 0.5)], p99: samples[Math.floor(samples.length * 0.99)] }));
  }
  agent.destroy();
})().catch((e) => { console.error(String(e)); process.exit(1); });
`;

const POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7-bench}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    fromEntities: [host]
    toPorts:
    - ports: [{port: "${PROXIED_PORT}", protocol: TCP}]
      rules: {http: [{method: GET, path: "/api/.*"}]}
    - ports: [{port: "${DIRECT_PORT}", protocol: TCP}]
`;

/** Nanoseconds a process has run on a CPU (the first field of /proc/<pid>/schedstat). */
function cpuNs(pid: number): number {
  return Number(readFileSync(`/proc/${pid}/schedstat`, 'utf8').split(' ')[0]);
}

/**
 * The figures of one client (`clientNetns`: the client pod's, or the node's own for `stack_`),
 * proxied against direct, interleaved.
 */
async function measure(ctx: BenchContext, rounds: number, host: string, clientNetns: string, proxyPid: number, prefix: '' | 'stack_'): Promise<void> {
  const sample = async (port: number, mode: 'rate' | 'latency') =>
    JSON.parse(await inNs(clientNetns, 'taskset', ['-c', PODS_CPU, process.execPath, '-e', CLIENT, host, String(port), mode, String(SECONDS), String(CONCURRENCY), String(LATENCY_REQUESTS)])) as { rate?: number; p50?: number; p99?: number };
  // The proxy answers 403 to a request no rule allows: check the path is the proxy's before measuring.
  const probe = await inNs(clientNetns, process.execPath, ['-e', `require('node:http').request({ host: '${host}', port: ${PROXIED_PORT}, path: '/other', method: 'DELETE' }, (r) => console.log(r.statusCode)).end()`]);
  if (probe.trim() !== '403') throw new Error(`port ${PROXIED_PORT} does not go through the proxy (DELETE /other answered ${probe.trim()})`);
  const proxyCpuUsPerReq: number[] = [];
  const latency: Record<'proxied' | 'direct', { p50: number[]; p99: number[] }> = { proxied: { p50: [], p99: [] }, direct: { p50: [], p99: [] } };
  const lat = (which: 'proxied' | 'direct', port: number) => async () => {
    const r = await sample(port, 'latency');
    latency[which].p50.push(r.p50!);
    latency[which].p99.push(r.p99!);
    return r.p50!;
  };
  const rates = await interleave(rounds, {
    proxied: async () => {
      const cpu = cpuNs(proxyPid);
      const rate = (await sample(PROXIED_PORT, 'rate')).rate!;
      proxyCpuUsPerReq.push((cpuNs(proxyPid) - cpu) / 1000 / (rate * SECONDS));
      return rate;
    },
    direct: async () => (await sample(DIRECT_PORT, 'rate')).rate!,
  }, { onRound: (r, s) => ctx.log(`${prefix}rate round ${r + 1}: proxied ${Math.round(s.proxied.at(-1)!)}, direct ${Math.round(s.direct.at(-1)!)} req/s`) });
  await interleave(rounds, { proxied: lat('proxied', PROXIED_PORT), direct: lat('direct', DIRECT_PORT) }, {
    warmup: 0,
    onRound: (r) => ctx.log(`${prefix}latency round ${r + 1}: p50 proxied ${round(latency.proxied.p50.at(-1)!)} µs, direct ${round(latency.direct.p50.at(-1)!)} µs`),
  });
  const baseline = `the same ${prefix ? 'client (the node) ' : 'pods '}and server on a port allowed at L4 (no proxy)`;
  const rp = median(rates.proxied);
  const rd = median(rates.direct);
  ctx.emit({ metric: `${prefix}req_per_s`, value: round(rp, 0), unit: 'req/s', baseline, baseline_value: round(rd, 0), ratio: round(rp / rd, 3), better: 'higher', target: '≥ 0.5 of direct, Ciliate at one core', met: rp / rd >= 0.5, ciliate_cpu: CILIATE_CPU, pods_cpu: PODS_CPU, concurrency: CONCURRENCY, rounds });
  // The warm-up round's figure is left out, as interleave leaves out its rate.
  const cpuPerReq = median(proxyCpuUsPerReq.slice(1));
  ctx.emit({ metric: `${prefix}proxy_cpu_us_per_req`, value: round(cpuPerReq), unit: 'µs', baseline: null, ratio: null, better: 'lower', req_per_s_at_one_core: round(1e6 / cpuPerReq, 0), rounds });
  for (const p of ['p50', 'p99'] as const) {
    const proxied = median(latency.proxied[p]);
    const direct = median(latency.direct[p]);
    ctx.emit({ metric: `${prefix}latency_${p}_us`, value: round(proxied), unit: 'µs', baseline, baseline_value: round(direct), ratio: round(proxied / direct, 3), better: 'lower', rounds });
    const added = proxied - direct;
    ctx.emit({ metric: `${prefix}added_${p}_us`, value: round(added), unit: 'µs', baseline: null, ratio: null, better: 'lower', ...(p === 'p99' ? { target: '< 1000 µs', met: added < 1000 } : {}), rounds });
  }
}

export async function run(ctx: BenchContext): Promise<void> {
  const rounds = ctx.rounds ?? DEFAULT_ROUNDS;
  const cleanups = new Cleanups((m) => ctx.log(m));
  try {
    const node = await BenchNode.start(cleanups, { prefix: 'cbl7' });
    const server = await node.addPod('cbl7s');
    const client = await node.addPod('cbl7c');
    await node.client.call('PUT', `/v1/endpoints/${server.endpoint.id}/labels`, { app: 'server' });
    await node.client.call('PUT', `/v1/endpoints/${client.endpoint.id}/labels`, { app: 'client' });
    await node.client.call('POST', '/v1/policies', { yaml: POLICY });
    // The policy reaches the endpoints' maps and the proxy a moment after the import returns.
    await new Promise((resolve) => setTimeout(resolve, 1000));
    if (cpus().length < 2) throw new Error('the l7 bench needs two CPUs: one for Ciliate, one for the pods');
    const srv = spawnInNs(cleanups, server.netns, 'taskset', ['-c', PODS_CPU, process.execPath, '-e', SERVER]);
    await waitForOutput(srv, 'ready');
    const { l7Proxy } = await node.client.get<{ l7Proxy?: { pid?: number } }>('/v1/status');
    const proxyPid = l7Proxy?.pid;
    if (proxyPid === undefined) throw new Error('the agent reports no L7 proxy process');
    for (const pid of [node.agent!.pid!, proxyPid]) await sh('taskset', ['-a', '-p', '-c', CILIATE_CPU, String(pid)]);
    await measure(ctx, rounds, server.endpoint.ipv4, client.netns, proxyPid, '');
    await measure(ctx, rounds, server.endpoint.ipv4, node.netns, proxyPid, 'stack_');
  } finally {
    await cleanups.run();
  }
}
