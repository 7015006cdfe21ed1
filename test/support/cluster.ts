/**
 * Test fixtures for the agent: a "node" (a network namespace with its own agent process, state
 * directory and bpffs root), "pods" (network namespaces), and traffic helpers that run inside
 * them. Everything is uniquely named and removed at the end of the test, even when it fails.
 * @module
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { promisify } from 'node:util';
import type { TestContext } from 'node:test';
import { AgentClient, type Endpoint, type EndpointWorkload } from '../../src/agent/index.ts';
import type { TestPki } from '../../src/store/etcd-testing.ts';
import { testCgroup } from '../../src/ebpf/internal/testutils.ts';
import type { DnsRecords } from './dns-server.ts';
import type { DnsClientAnswer } from './dns-client.ts';

const run = promisify(execFile);
export const ROOT = join(import.meta.dirname, '..', '..');
const CLI = join(ROOT, 'src', 'cli', 'main.ts');

export function uniqueName(prefix: string): string {
  return `${prefix}-${randomBytes(3).toString('hex')}`;
}

export async function addNetns(t: TestContext, prefix: string): Promise<string> {
  const name = uniqueName(prefix);
  await run('ip', ['netns', 'add', name]);
  t.after(async () => {
    await run('ip', ['netns', 'del', name]).catch(() => undefined);
  });
  await run('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
  return name;
}

/** Runs a command inside a namespace without remounting /sys (unlike `ip netns exec`). */
export async function inNs(netns: string, command: string, args: string[], timeoutMs = 20_000): Promise<string> {
  const { stdout } = await run('nsenter', [`--net=/run/netns/${netns}`, command, ...args], { timeout: timeoutMs, encoding: 'utf8' });
  return stdout;
}

/**
 * A process inside the namespace that dies with the test process, even one killed by a timeout or
 * kill -9 before its after-hooks ran (setpriv --pdeathsig: nsenter and setpriv exec, so the test
 * process stays its parent and the pid is the command's).
 */
export function spawnInNs(netns: string, command: string, args: string[]): ChildProcess {
  return spawn('nsenter', [`--net=/run/netns/${netns}`, 'setpriv', '--pdeathsig', 'KILL', '--', command, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
}

/** Kills a process this test started (by its pid) unless it has exited, and waits for its exit. */
export async function killChild(child: ChildProcess, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill(signal);
  await exited;
}

export interface AgentOptions {
  nodeName?: string;
  /** Underlay address; without an underlay it is put on the node's loopback. */
  nodeIp?: string;
  routingMode?: 'tunnel' | 'native';
  /** Shared store: etcd client URLs. Without it each node has its embedded store. */
  etcd?: string[];
  /** Shared store through a Cilium-style etcd config file (--etcd-config) instead of `etcd`. */
  etcdConfig?: string;
  /** Joins the node to this underlay (see Underlay) with nodeIp/24. */
  underlay?: Underlay;
  clusterCidr?: string;
  nodeCidrMaskSize?: number;
  /** Seconds between identity garbage-collection passes (the agent's default: 15 minutes). */
  identityGcInterval?: number;
  /** Seconds an unreferenced identity is kept. */
  identityGcGracePeriod?: number;
  /** Seconds between the reconcilers' comparisons of the kernel with the desired state. */
  reconcileRefreshInterval?: number;
  /** Entries of each endpoint's policy map. */
  policyMapMaxEntries?: number;
  /** More agent flags, e.g. a module's settings. */
  extraArgs?: string[];
}

/** A node: its namespace and its agent. restart() kills the agent (-9 by default) and starts it again. */
export class TestNode {
  readonly netns: string;
  readonly dir: string;
  readonly bpfRoot: string;
  readonly socket: string;
  /** The Observer API's socket (the agent's default: beside the API socket). */
  readonly hubbleSocket: string;
  readonly client: AgentClient;
  /**
   * The node's own cgroup v2 (under the cgroup2 mount, never its root): the agent's socket hooks
   * translate services for processes in it. Tests move client processes in (cgroup.procs).
   */
  readonly cgroup: string;
  readonly options: AgentOptions;
  agent: ChildProcess | undefined;
  log = '';

  private constructor(netns: string, options: AgentOptions, cgroup: string) {
    this.netns = netns;
    this.options = options;
    this.dir = mkdtempSync(join(tmpdir(), 'ciliate-test-node-'));
    this.bpfRoot = `/sys/fs/bpf/${uniqueName('ciliate-test')}`;
    this.socket = join(this.dir, 'api.sock');
    this.hubbleSocket = join(this.dir, 'hubble.sock');
    this.client = new AgentClient(this.socket, 20_000);
    this.cgroup = cgroup;
  }

  static async start(t: TestContext, options: AgentOptions = {}): Promise<TestNode> {
    const netns = await addNetns(t, 'ctn');
    const node = new TestNode(netns, options, testCgroup(t));
    const nodeIp = options.nodeIp ?? '192.0.2.1';
    if (options.underlay) await options.underlay.attach(netns, nodeIp);
    else await inNs(netns, 'ip', ['addr', 'add', `${nodeIp}/32`, 'dev', 'lo']);
    t.after(async () => {
      await node.stopAgent('SIGKILL');
      rmSync(node.bpfRoot, { recursive: true, force: true });
      rmSync(node.dir, { recursive: true, force: true });
    });
    await node.startAgent();
    return node;
  }

  async startAgent(): Promise<void> {
    const args = [
      CLI, 'agent',
      '--node-name', this.options.nodeName ?? 'n1',
      '--state-dir', join(this.dir, 'state'),
      '--socket-path', this.socket,
      '--bpf-root', this.bpfRoot,
      '--log-level', 'debug',
      '--socket-lb-cgroup', this.cgroup,
    ];
    if (this.options.clusterCidr) args.push('--cluster-cidr', this.options.clusterCidr);
    args.push('--node-ip', this.options.nodeIp ?? '192.0.2.1');
    if (this.options.routingMode) args.push('--routing-mode', this.options.routingMode);
    if (this.options.etcd) args.push('--store', 'etcd', '--etcd-endpoints', this.options.etcd.join(','));
    if (this.options.etcdConfig) args.push('--store', 'etcd', '--etcd-config', this.options.etcdConfig);
    if (this.options.nodeCidrMaskSize) args.push('--node-cidr-mask-size', String(this.options.nodeCidrMaskSize));
    if (this.options.identityGcInterval !== undefined) args.push('--identity-gc-interval', String(this.options.identityGcInterval));
    if (this.options.identityGcGracePeriod !== undefined) args.push('--identity-gc-grace-period', String(this.options.identityGcGracePeriod));
    if (this.options.reconcileRefreshInterval !== undefined) args.push('--reconcile-refresh-interval', String(this.options.reconcileRefreshInterval));
    if (this.options.policyMapMaxEntries !== undefined) args.push('--policy-map-max-entries', String(this.options.policyMapMaxEntries));
    args.push(...(this.options.extraArgs ?? []));
    const agent = spawnInNs(this.netns, process.execPath, args);
    this.agent = agent;
    agent.stdout?.on('data', (chunk: Buffer) => (this.log += chunk.toString()));
    agent.stderr?.on('data', (chunk: Buffer) => (this.log += chunk.toString()));
    const deadline = Date.now() + 20_000;
    for (;;) {
      if (agent.exitCode !== null) throw new Error(`agent exited with ${agent.exitCode}:\n${this.log}`);
      if (existsSync(this.socket)) {
        try {
          await this.client.get('/v1/healthz');
          return;
        } catch {
          // not yet listening
        }
      }
      if (Date.now() > deadline) throw new Error(`agent did not come up:\n${this.log}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }

  /** Ends the agent process we started (by its pid) and waits for it to exit. */
  async stopAgent(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const agent = this.agent;
    if (!agent || agent.exitCode !== null || agent.signalCode !== null) return;
    const exited = new Promise((resolve) => agent.once('exit', resolve));
    agent.kill(signal);
    await exited;
    this.agent = undefined;
  }

  async addPod(t: TestContext, containerId = uniqueName('ctr'), labels: Record<string, string> = {}, namespace?: string, workload?: EndpointWorkload, ports?: Endpoint['ports']): Promise<{ netns: string; endpoint: Endpoint }> {
    const netns = await addNetns(t, 'ctp');
    const endpoint = await this.client.call<Endpoint>('POST', '/v1/endpoints', { containerId, ifname: 'eth0', netns: `/run/netns/${netns}`, labels, namespace, workload, ports });
    t.after(async () => {
      await this.client.call('DELETE', `/v1/endpoints/${containerId}/eth0`).catch(() => undefined);
    });
    return { netns, endpoint };
  }
}

/** An underlay network: a bridge in a namespace of its own that node namespaces join by veth. */
export class Underlay {
  readonly netns: string;
  #links = 0;

  private constructor(netns: string) {
    this.netns = netns;
  }

  static async create(t: TestContext): Promise<Underlay> {
    const netns = await addNetns(t, 'ctu');
    // A fixed address: a bridge left to itself takes the lowest of its ports' addresses, so a
    // port added later (a node, a client) could change it under the nodes' ARP entries for
    // etcd on br0, which then goes unanswered until they expire.
    await inNs(netns, 'ip', ['link', 'add', 'br0', 'address', '02:00:00:00:00:fe', 'type', 'bridge']);
    await inNs(netns, 'ip', ['link', 'set', 'br0', 'up']);
    return new Underlay(netns);
  }

  /**
   * A real etcd on the bridge at `address` (inside the underlay namespace, where every node
   * reaches it). Killed by its pid and its data removed at test end. With `pki` (whose server
   * certificate names `address`) it serves https:// only and demands client certificates.
   */
  async startEtcd(t: TestContext, address = '192.168.100.254', pki?: TestPki): Promise<string[]> {
    await inNs(this.netns, 'ip', ['addr', 'add', `${address}/24`, 'dev', 'br0']);
    const dataDir = mkdtempSync(join(tmpdir(), 'ciliate-etcd-'));
    const client = `${pki ? 'https' : 'http'}://${address}:2379`;
    const peer = `http://${address}:2380`;
    const tlsArgs = pki ? ['--cert-file', pki.server.certFile, '--key-file', pki.server.keyFile, '--client-cert-auth', '--trusted-ca-file', pki.caFile] : [];
    const etcd = spawnInNs(this.netns, 'etcd', [
      '--name', 'e', '--data-dir', join(dataDir, 'data'),
      '--listen-client-urls', client, '--advertise-client-urls', client,
      '--listen-peer-urls', peer, '--initial-advertise-peer-urls', peer, '--initial-cluster', `e=${peer}`,
      '--heartbeat-interval', '20', '--election-timeout', '200', '--log-level', 'warn', '--logger', 'zap',
      ...tlsArgs,
    ]);
    let output = '';
    etcd.stderr?.on('data', (chunk: Buffer) => (output = (output + chunk.toString()).slice(-8192)));
    t.after(async () => {
      await killChild(etcd);
      rmSync(dataDir, { recursive: true, force: true });
    });
    const probe = pki
      ? `const fs = require('node:fs'); require('node:https').get('${client}/health', { ca: fs.readFileSync(${JSON.stringify(pki.caFile)}), cert: fs.readFileSync(${JSON.stringify(pki.client.certFile)}), key: fs.readFileSync(${JSON.stringify(pki.client.keyFile)}) }, (r) => { let b = ''; r.on('data', (c) => (b += c)); r.on('end', () => process.exit(JSON.parse(b).health === 'true' ? 0 : 1)); }).on('error', () => process.exit(1))`
      : `fetch('${client}/health').then((r) => r.json()).then((j) => process.exit(j.health === 'true' ? 0 : 1), () => process.exit(1))`;
    const deadline = Date.now() + 20_000;
    for (;;) {
      if (etcd.exitCode !== null) throw new Error(`etcd exited with ${etcd.exitCode}: ${output}`);
      try {
        await inNs(this.netns, process.execPath, ['-e', probe], 3000);
        return [client];
      } catch {
        if (Date.now() > deadline) throw new Error(`etcd did not become healthy: ${output}`);
        await sleep(100);
      }
    }
  }

  async attach(nodeNetns: string, address: string): Promise<void> {
    const port = `p${this.#links++}`;
    await run('ip', ['link', 'add', 'uplink', 'netns', `/run/netns/${nodeNetns}`, 'type', 'veth', 'peer', 'name', port, 'netns', `/run/netns/${this.netns}`]);
    await inNs(this.netns, 'ip', ['link', 'set', port, 'master', 'br0', 'up']);
    await inNs(nodeNetns, 'ip', ['addr', 'add', `${address}/24`, 'dev', 'uplink']);
    await inNs(nodeNetns, 'ip', ['link', 'set', 'uplink', 'up']);
  }
}

export async function ping(netns: string, address: string, count = 2): Promise<boolean> {
  try {
    await inNs(netns, 'ping', ['-c', String(count), '-i', '0.2', '-W', '1', address]);
    return true;
  } catch {
    return false;
  }
}

const ECHO_SERVER = `
const net = require('node:net'), dgram = require('node:dgram');
const ports = process.argv.slice(1).map(Number);
let pending = ports.length * 2;
const ready = () => { if (--pending === 0) console.log('ready'); };
for (const port of ports) {
  net.createServer((s) => { s.on('error', () => {}); s.pipe(s); }).listen(port, '0.0.0.0', ready);
  const udp = dgram.createSocket('udp4');
  udp.on('message', (msg, rinfo) => udp.send(msg, rinfo.port, rinfo.address));
  udp.bind(port, '0.0.0.0', ready);
}
`;

/** TCP and UDP echo servers on `ports` inside the namespace; stopped at test end. */
export function echoServer(t: TestContext, netns: string, ...ports: number[]): Promise<void> {
  return serveInNs(t, netns, 'echo server', ECHO_SERVER, ports.map(String));
}

/**
 * "The world" of `node`: a namespace of our own behind a veth from the node's namespace (never a
 * real interface), the node at 198.51.100.1/24 and the world at each of `addresses` (/24s of
 * 198.51.100.0/24; the first is 198.51.100.2/24 unless given). Returns the world's namespace.
 */
export async function addWorld(t: TestContext, node: TestNode, addresses: readonly string[] = ['198.51.100.2/24']): Promise<string> {
  const world = await addNetns(t, 'ctw');
  const up = uniqueName('up').slice(0, 12);
  await run('ip', ['link', 'add', up, 'netns', `/run/netns/${node.netns}`, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', `/run/netns/${world}`]);
  await inNs(node.netns, 'ip', ['addr', 'add', '198.51.100.1/24', 'dev', up]);
  await inNs(node.netns, 'ip', ['link', 'set', up, 'up']);
  for (const address of addresses) await inNs(world, 'ip', ['addr', 'add', address, 'dev', 'eth0']);
  await inNs(world, 'ip', ['link', 'set', 'eth0', 'up']);
  return world;
}

/**
 * test/support/dns-server.ts inside `netns` on `address`:53 answering `records`; killed at test end.
 */
export function dnsServer(t: TestContext, netns: string, address: string, records: DnsRecords): Promise<void> {
  return serveInNs(t, netns, 'DNS server', join(ROOT, 'test', 'support', 'dns-server.ts'), [address, '53', JSON.stringify(records)], false);
}

/** A DNS query sent from inside `netns` (test/support/dns-client.ts), as a pod's resolver library sends it. */
export async function dnsQuery(netns: string, server: string, name: string, protocol: 'udp' | 'tcp' = 'udp', sourcePort = 0): Promise<DnsClientAnswer> {
  const out = await inNs(netns, process.execPath, [join(ROOT, 'test', 'support', 'dns-client.ts'), server, name, protocol, String(sourcePort)]);
  return JSON.parse(out) as DnsClientAnswer;
}

/** Runs a node script that prints one line once it listens; resolves then, kills it at test end. */
async function serveInNs(t: TestContext, netns: string, what: string, script: string, args: string[], inline = true): Promise<void> {
  const server = spawnInNs(netns, process.execPath, inline ? ['-e', script, ...args] : [script, ...args]);
  t.after(() => {
    server.kill('SIGKILL');
  });
  await new Promise<void>((resolve, reject) => {
    server.stdout?.once('data', () => resolve());
    server.once('exit', (code) => reject(new Error(`${what} exited with ${code}`)));
  });
}

const HTTP_SERVER = `
const http = require('node:http');
const [port, routes] = process.argv.slice(1);
const answers = JSON.parse(routes);
http.createServer((req, res) => {
  req.resume();
  const body = answers[req.method + ' ' + req.url];
  if (body === undefined) res.writeHead(404).end();
  else res.end(body + '\\n');
}).listen(Number(port), '0.0.0.0', () => console.log('ready'));
`;

/**
 * An HTTP server on `port` inside the namespace answering 200 with a body to each
 * `"METHOD /path"` of `routes` and 404 to anything else; stopped at test end.
 */
export function httpServer(t: TestContext, netns: string, port: number, routes: Record<string, string>): Promise<void> {
  return serveInNs(t, netns, 'HTTP server', HTTP_SERVER, [String(port), JSON.stringify(routes)]);
}

const GRPC_SERVER = `
const http2 = require('node:http2');
const [port] = process.argv.slice(1);
const server = http2.createServer();
server.on('stream', (stream, headers) => {
  stream.resume();
  stream.on('end', () => {
    stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
    stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
    stream.end('reply to ' + headers[':path']);
  });
});
server.listen(Number(port), '0.0.0.0', () => console.log('ready'));
`;

/** An HTTP/2 (prior knowledge) server in `netns` answering every call as gRPC does: 200, a body, grpc-status 0 in trailers. */
export function grpcServer(t: TestContext, netns: string, port: number): Promise<void> {
  return serveInNs(t, netns, 'gRPC server', GRPC_SERVER, [String(port)]);
}

const GRPC_CLIENT = `
const http2 = require('node:http2');
const [host, port, path] = process.argv.slice(1);
const session = http2.connect('http://' + host + ':' + port);
const out = { body: '' };
const timer = setTimeout(() => { console.log(JSON.stringify({ error: 'timeout' })); process.exit(0); }, 3000);
session.on('error', (e) => { console.log(JSON.stringify({ error: e.code })); process.exit(0); });
const call = session.request({ ':method': 'POST', ':path': path, 'content-type': 'application/grpc', te: 'trailers' });
call.setEncoding('utf8');
call.on('response', (h) => (out.status = h[':status']));
call.on('data', (d) => (out.body += d));
call.on('trailers', (t) => (out.grpcStatus = t['grpc-status']));
call.on('end', () => { clearTimeout(timer); console.log(JSON.stringify(out)); session.close(); });
call.end('\\x00\\x00\\x00\\x00\\x00');
`;

/** One gRPC-style call (HTTP/2 POST) from inside `netns`: status, body and grpc-status, or the error. */
export async function grpcCall(netns: string, host: string, port: number, path: string): Promise<{ status?: number; body?: string; grpcStatus?: string; error?: string }> {
  return JSON.parse(await inNs(netns, process.execPath, ['-e', GRPC_CLIENT, host, String(port), path])) as { status?: number; body?: string; grpcStatus?: string; error?: string };
}

const HTTP_CLIENT = `
const [method, url, timeoutMs] = process.argv.slice(1);
fetch(url, { method, signal: AbortSignal.timeout(Number(timeoutMs)) }).then(
  async (res) => console.log(JSON.stringify({ status: res.status, body: await res.text() })),
  (error) => console.log(JSON.stringify({ error: error.name === 'TimeoutError' ? 'timeout' : String(error.cause?.code ?? error.message) })),
);
`;

/** One HTTP request from inside `netns`: the status and body, or the error ('timeout' when nothing answered). */
export async function httpRequest(netns: string, method: string, url: string, timeoutMs = 1500): Promise<{ status?: number; body?: string; error?: string }> {
  return JSON.parse(await inNs(netns, process.execPath, ['-e', HTTP_CLIENT, method, url, String(timeoutMs)], timeoutMs + 10_000)) as { status?: number; body?: string; error?: string };
}

const ECHO_CLIENT = `
const net = require('node:net'), dgram = require('node:dgram');
const [proto, host, port] = process.argv.slice(1);
const timer = setTimeout(() => { console.log('timeout'); process.exit(1); }, 3000);
if (proto === 'tcp') {
  const s = net.connect(Number(port), host, () => s.write('hello'));
  s.on('data', (d) => { console.log(String(d)); clearTimeout(timer); s.destroy(); });
  s.on('error', (e) => { console.log(e.code); process.exit(1); });
} else {
  const u = dgram.createSocket('udp4');
  u.on('message', (d) => { console.log(String(d)); clearTimeout(timer); u.close(); });
  u.send('hello', Number(port), host);
}
`;

/** Sends "hello" over TCP or UDP and returns whether it came back. */
export async function echo(netns: string, proto: 'tcp' | 'udp', address: string, port: number): Promise<boolean> {
  try {
    return (await inNs(netns, process.execPath, ['-e', ECHO_CLIENT, proto, address, String(port)])).trim() === 'hello';
  } catch {
    return false;
  }
}

const STREAM_CLIENT = `
const net = require('node:net');
const [host, port] = process.argv.slice(1);
let n = 0;
const s = net.connect(Number(port), host, () => setInterval(() => s.write('x'), 50));
s.on('data', (d) => { n += d.length; process.stdout.write(n + '\\n'); });
s.on('error', (e) => { console.error(e.code); process.exit(1); });
s.on('close', () => process.exit(2));
`;

/** A long-lived TCP connection echoing a byte every 50 ms; `received()` counts echoed bytes. */
export function streamConnection(t: TestContext, netns: string, address: string, port: number): { received: () => number; alive: () => boolean } {
  const client = spawnInNs(netns, process.execPath, ['-e', STREAM_CLIENT, address, String(port)]);
  let count = 0;
  client.stdout?.on('data', (chunk: Buffer) => {
    const last = chunk.toString().trim().split('\n').at(-1);
    if (last) count = Number(last);
  });
  t.after(() => {
    client.kill('SIGKILL');
  });
  return { received: () => count, alive: () => client.exitCode === null };
}

const PROBE = `
const net = require('node:net');
const [timeoutMs, ...targets] = process.argv.slice(1);
Promise.all(targets.map((target) => new Promise((resolve) => {
  const [host, port] = target.split(':');
  const s = net.connect(Number(port), host);
  const done = (ok) => { clearTimeout(timer); s.destroy(); resolve([target, ok]); };
  const timer = setTimeout(() => done(false), Number(timeoutMs));
  s.on('connect', () => s.write('ping'));
  s.on('data', () => done(true));
  s.on('error', () => done(false));
}))).then((results) => console.log(JSON.stringify(Object.fromEntries(results))));
`;

/** TCP round trips from inside `netns` to every `host:port`, concurrently: which ones answered. */
export async function probeTcp(netns: string, targets: readonly string[], timeoutMs = 1500): Promise<Record<string, boolean>> {
  return JSON.parse(await inNs(netns, process.execPath, ['-e', PROBE, String(timeoutMs), ...targets], timeoutMs + 10_000)) as Record<string, boolean>;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A TCP port free on loopback now (for a server the test starts next). */
export { freePort } from '../../src/store/etcd-testing.ts';

/** Polls `check` every 100 ms until it holds; throws naming `what` after `timeoutMs`. */
export async function until(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

/** Connects to host:80 from a socket carrying SO_MARK `mark`: connected, an error code, or timeout. */
const MARKED_CLIENT = `
const [libc, mark, host] = process.argv.slice(1);
const { markedTcpSocket } = await import(libc);
const net = await import('node:net');
const s = new net.Socket({ fd: markedTcpSocket(Number(mark)), readable: true, writable: true });
setTimeout(() => { console.log('timeout'); process.exit(0); }, 2000);
s.on('connect', () => { console.log('connected'); process.exit(0); });
s.on('error', (e) => { console.log(e.code); process.exit(0); });
s.connect(80, host);
`;

/**
 * A TCP connection to `host`:80 from inside `netns` on a socket whose SO_MARK is `mark` (a pod,
 * root in its namespace, forging the node proxy's mark): 'connected', an error code, or 'timeout'
 * after 2 s.
 */
export async function connectMarked(netns: string, mark: number, host: string): Promise<string> {
  const libc = join(ROOT, 'src', 'proxy', 'libc.ts');
  return (await inNs(netns, process.execPath, ['--input-type=module', '-e', MARKED_CLIENT, libc, String(mark), host])).trim();
}

/** Runs the `ciliate` CLI against `node`'s agent, as a user would; never rejects. */
export function cli(node: TestNode, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args, '--socket', node.socket], { encoding: 'utf8' }, (error, stdout, stderr) => {
      resolve({ code: error ? Number((error as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

/**
 * Cilium's Star Wars demo on `node`: a Death Star pod answering `POST /v1/request-landing` on
 * port 80, a TIE fighter (org=empire) and an X-wing (org=alliance), with rule1 imported and
 * enforced (`revision` is the policy revision it took effect at).
 */
export async function starWars(t: TestContext, node: TestNode) {
  const deathstar = await node.addPod(t, 'deathstar', { org: 'empire', class: 'deathstar' });
  const tiefighter = await node.addPod(t, 'tiefighter', { org: 'empire', class: 'tiefighter' });
  const xwing = await node.addPod(t, 'xwing', { org: 'alliance', class: 'xwing' });
  await httpServer(t, deathstar.netns, 80, { 'POST /v1/request-landing': 'Ship landed' });
  const imported = await cli(node, 'policy', 'import', join(ROOT, 'test', 'policies', 'starwars-rule1.yaml'));
  const revision = /revision: (\d+)/.exec(imported.stdout)?.[1];
  if (imported.code !== 0 || revision === undefined) throw new Error(`importing rule1 failed: ${imported.stderr}${imported.stdout}`);
  const waited = await cli(node, 'policy', 'wait', revision);
  if (waited.code !== 0) throw new Error(`rule1 (revision ${revision}) not enforced: ${waited.stderr}`);
  return { deathstar, tiefighter, xwing, revision, landing: `http://${deathstar.endpoint.ipv4}/v1/request-landing` };
}

/** A CiliumNetworkPolicy: pods app=web accept org=empire on TCP 7000 and nobody else. */
export const WEB_FROM_EMPIRE_POLICY = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: web-from-empire
spec:
  endpointSelector:
    matchLabels:
      app: web
  ingress:
    - fromEndpoints:
        - matchLabels:
            org: empire
      toPorts:
        - ports:
            - port: "7000"
              protocol: TCP
`;
