/**
 * `ciliate demo`: the README's first command. Cilium's getting-started scenario on one node with
 * the embedded store and nothing else: an agent in a node namespace of its own, a Death Star of
 * two pods serving HTTP on port 80, a TIE fighter (org=empire) and an X-wing (org=alliance), the
 * L3/L4 policy that lets only the Empire land, both ships asking to land, and every decision as a
 * live flow in hubble's compact format. Everything it creates (namespaces, the agent, pins, files)
 * is removed when it ends, also on Ctrl-C or failure.
 * @module
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { Command } from 'commander';
import { AgentClient, type Endpoint, type EndpointWorkload } from '../agent/index.ts';
import { compactLine, connectObserver, type Flow } from '../observer/index.ts';

const run = promisify(execFile);
const REPO_ROOT = join(import.meta.dirname, '..', '..');
const CLI = join(REPO_ROOT, 'src', 'cli', 'main.ts');
export const STAR_WARS_POLICY = join(REPO_ROOT, 'examples', 'star-wars', 'rule1.yaml');
const NODE_IP = '192.0.2.1';

export interface DemoOptions {
  /** Landing requests per ship. */
  requests: number;
}

export function registerDemoCommand(program: Command): void {
  program
    .command('demo')
    .description("Cilium's Star Wars demo on one node: pods, an L3/L4 policy, and every decision as a live flow")
    .option('-r, --requests <n>', 'landing requests per ship', (v) => Number.parseInt(v, 10), 2)
    .action(async (options: DemoOptions) => {
      await runDemo(options, (line) => process.stdout.write(`${line}\n`));
    });
}

// As in Cilium's http-sw-app.yaml: the Death Star is a Deployment of two pods, the ships are bare
// Pods, which have no controller and so no workload in Hubble's flows.
const DEATHSTAR_WORKLOAD = { kind: 'Deployment', name: 'deathstar' };
const PODS: readonly { name: string; labels: Record<string, string>; workload?: EndpointWorkload }[] = [
  { name: 'deathstar-1', labels: { org: 'empire', class: 'deathstar' }, workload: DEATHSTAR_WORKLOAD },
  { name: 'deathstar-2', labels: { org: 'empire', class: 'deathstar' }, workload: DEATHSTAR_WORKLOAD },
  { name: 'tiefighter', labels: { org: 'empire', class: 'tiefighter' } },
  { name: 'xwing', labels: { org: 'alliance', class: 'xwing' } },
];

/** The Death Star's landing service: POST /v1/request-landing → "Ship landed". */
const DEATHSTAR = `
require('node:http').createServer((req, res) => {
  req.resume();
  if (req.method === 'POST' && req.url === '/v1/request-landing') res.end('Ship landed\\n');
  else res.writeHead(404).end();
}).listen(80, '0.0.0.0', () => console.log('ready'));
`;

const LANDING = `
fetch(process.argv[1], { method: 'POST', signal: AbortSignal.timeout(1500) }).then(
  async (res) => console.log(res.status + ' ' + (await res.text()).trim()),
  (error) => console.log(error.name === 'TimeoutError' ? 'no answer (timed out)' : String(error.cause?.code ?? error.message)),
).finally(() => process.exit(0));
`;

export async function runDemo(options: DemoOptions, print: (line: string) => void): Promise<void> {
  const id = randomBytes(3).toString('hex');
  const nodeNetns = `ciliate-demo-${id}`;
  const bpfRoot = `/sys/fs/bpf/ciliate-demo-${id}`;
  const dir = mkdtempSync(join(tmpdir(), 'ciliate-demo-'));
  const socket = join(dir, 'ciliate.sock');
  const children: ChildProcess[] = [];
  const cleanups: (() => Promise<unknown> | unknown)[] = [() => rmSync(dir, { recursive: true, force: true })];
  let cleaned = false;
  const cleanup = async () => {
    if (cleaned) return;
    cleaned = true;
    for (const child of children.reverse()) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    for (const undo of cleanups.reverse()) {
      try {
        await undo();
      } catch {
        // Best effort: the rest must still go.
      }
    }
  };
  const onSignal = () => void cleanup().then(() => process.exit(130));
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  // Bound to the demo's life (setpriv --pdeathsig), so even a kill -9 of the demo stops them.
  const inNs = (netns: string, args: string[]) =>
    spawn('nsenter', [`--net=/run/netns/${netns}`, 'setpriv', '--pdeathsig', 'KILL', '--', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  const addNetns = async (name: string) => {
    await run('ip', ['netns', 'add', name]);
    cleanups.push(() => run('ip', ['netns', 'del', name]));
    await run('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
  };
  try {
    print("Ciliate demo: Cilium's Star Wars scenario on one node (embedded store, no external service)");
    await addNetns(nodeNetns);
    // The node's underlay: one address on a veth pair (the agent takes the pods' MTU from it).
    await run('ip', ['-n', nodeNetns, 'link', 'add', 'uplink0', 'type', 'veth', 'peer', 'name', 'uplink1']);
    await run('ip', ['-n', nodeNetns, 'addr', 'add', `${NODE_IP}/32`, 'dev', 'uplink0']);
    await run('ip', ['-n', nodeNetns, 'link', 'set', 'uplink0', 'up']);
    await run('ip', ['-n', nodeNetns, 'link', 'set', 'uplink1', 'up']);
    cleanups.push(() => rmSync(bpfRoot, { recursive: true, force: true }));
    const agent = inNs(nodeNetns, [
      process.execPath, CLI, 'agent', '--node-name', 'demo', '--state-dir', join(dir, 'state'), '--socket-path', socket,
      '--bpf-root', bpfRoot, '--node-ip', NODE_IP, '--routing-mode', 'native', '--hubble-listen-address', '', '--log-level', 'warn',
      // The demo defines no services: no socket hooks on the machine's root cgroup for it.
      '--socket-lb-cgroup', '',
    ]);
    children.push(agent);
    let agentLog = '';
    agent.stdout?.on('data', (chunk: Buffer) => (agentLog = (agentLog + chunk.toString()).slice(-4000)));
    agent.stderr?.on('data', (chunk: Buffer) => (agentLog = (agentLog + chunk.toString()).slice(-4000)));
    const client = new AgentClient(socket);
    await waitFor(async () => existsSync(socket) && (await client.get('/v1/healthz').then(() => true, () => false)), 20_000, () => `the agent did not come up:\n${agentLog}`);
    print(`node namespace ${nodeNetns}, agent pid ${agent.pid}, pinned under ${bpfRoot}`);

    const endpoints = new Map<string, Endpoint>();
    for (const pod of PODS) {
      const netns = `${nodeNetns}-${pod.name}`;
      await addNetns(netns);
      const endpoint = await client.call<Endpoint>('POST', '/v1/endpoints', { containerId: `${id}-${pod.name}`, ifname: 'eth0', netns: `/run/netns/${netns}`, labels: pod.labels, podName: pod.name, workload: pod.workload });
      endpoints.set(pod.name, endpoint);
      const workload = pod.workload ? ` (${pod.workload.kind} ${pod.workload.name})` : '';
      print(`  pod default/${pod.name.padEnd(12)} ${endpoint.ipv4.padEnd(12)} identity ${String(endpoint.identity).padEnd(6)} ${Object.entries(pod.labels).map(([k, v]) => `${k}=${v}`).join(',')}${workload}`);
    }
    for (const name of ['deathstar-1', 'deathstar-2']) {
      const server = inNs(`${nodeNetns}-${name}`, [process.execPath, '-e', DEATHSTAR]);
      children.push(server);
      await new Promise<void>((resolve, reject) => {
        server.stdout?.once('data', () => resolve());
        server.once('exit', (code) => reject(new Error(`the ${name} server exited with ${code}`)));
      });
    }

    const yaml = readFileSync(STAR_WARS_POLICY, 'utf8');
    const imported = await client.call<{ rules: string[]; revision: number }>('POST', '/v1/policies', { yaml, file: STAR_WARS_POLICY });
    await client.get(`/v1/policy/wait?revision=${imported.revision}&scope=node`);
    print(`policy ${imported.rules.join(', ')} (${STAR_WARS_POLICY.slice(REPO_ROOT.length + 1)}): only org=empire may reach class=deathstar, on 80/TCP; enforced at revision ${imported.revision}`);

    // Every decision about the Death Star, live, as `hubble observe --pod default/deathstar -f` prints it.
    print('');
    print('live flows (hubble observe --pod default/deathstar --follow):');
    const observer = connectObserver(`unix:${join(dir, 'hubble.sock')}`);
    const stream = observer.getFlows({ follow: true, whitelist: [{ sourcePod: ['default/deathstar'] }, { destinationPod: ['default/deathstar'] }] });
    const verdicts = new Map<string, number>();
    let toDeployment = 0;
    const flowsDone = (async () => {
      try {
        for await (const response of stream) {
          const flow = response.flow as Flow | undefined;
          if (!flow) continue;
          verdicts.set(flow.verdict ?? 'VERDICT_UNKNOWN', (verdicts.get(flow.verdict ?? 'VERDICT_UNKNOWN') ?? 0) + 1);
          if (flow.destination?.workloads?.some((w) => w.kind === DEATHSTAR_WORKLOAD.kind && w.name === DEATHSTAR_WORKLOAD.name)) toDeployment++;
          print(`  ${compactLine(flow, { policyNames: true })}`);
        }
      } catch {
        // Cancelled at the end.
      }
    })();
    await sleep(300);

    const landings: string[] = [];
    for (let i = 0; i < options.requests; i++) {
      for (const ship of ['tiefighter', 'xwing']) {
        const target = endpoints.get(`deathstar-${(i % 2) + 1}`)!;
        const child = inNs(`${nodeNetns}-${ship}`, [process.execPath, '-e', LANDING, `http://${target.ipv4}/v1/request-landing`]);
        let answer = '';
        child.stdout?.on('data', (chunk: Buffer) => (answer += chunk.toString()));
        await new Promise((resolve) => child.once('exit', resolve));
        landings.push(`  ${ship.padEnd(10)} → deathstar-${(i % 2) + 1}  POST /v1/request-landing: ${answer.trim()}`);
      }
    }
    await sleep(500);
    stream.cancel();
    await flowsDone;
    observer.close();

    print('');
    print('landing requests:');
    for (const line of landings) print(line);
    print('');
    print(`flows by verdict: ${[...verdicts].map(([verdict, n]) => `${verdict} ${n}`).join(', ') || 'none'}`);
    print(`flows to the workload ${DEATHSTAR_WORKLOAD.kind}/${DEATHSTAR_WORKLOAD.name} (both pods): ${toDeployment}`);
    print('');
    print('try next, against an agent of your own (ciliate agent):');
    print('  ciliate observe --verdict DROPPED          # the denied SYNs, as hubble shows them');
    print('  ciliate observe --to-workload Deployment/deathstar -o json   # flows name their workloads');
    print('  hubble observe --server unix:///var/run/ciliate/hubble.sock --last 20   # the stock hubble CLI, if installed');
    print('  ciliate policy trace --src org=alliance --dst org=empire,class=deathstar --dport 80/TCP');
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await cleanup();
  }
  print(`cleaned up: ${nodeNetns} and its pods, the agent, ${bpfRoot}`);
}

async function waitFor(ready: () => Promise<boolean>, timeoutMs: number, why: () => string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await ready())) {
    if (Date.now() > deadline) throw new Error(why());
    await sleep(100);
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
