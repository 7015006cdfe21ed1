/**
 * A Ciliate node for benches: a fresh "node" namespace running its own agent (own socket, state
 * directory and bpffs root), as test/support/cluster.ts's TestNode, but registering its teardown
 * with a Cleanups stack instead of a node:test context, and logging at the agent's default level
 * (info) so that debug logging is not part of what is measured.
 * @module
 */
import { type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AgentClient, type Endpoint } from '../../src/agent/index.ts';
import { ROOT } from '../lib.ts';
import { addNetns, type Cleanups, netnsPath, sh, sleep, spawnInNs, stopChild, uniqueName } from './ns.ts';

const CLI = join(ROOT, 'src', 'cli', 'main.ts');

export interface BenchNodeOptions {
  /** Prefix of the node namespace's name. */
  prefix?: string;
  logLevel?: 'trace' | 'debug' | 'info' | 'warn' | 'error';
  /** The agent's --routing-mode. Default native: one node needs no tunnel, and pods get the underlay's MTU. */
  routingMode?: 'native' | 'tunnel';
  /** More agent flags, e.g. ['--no-hubble-enabled'] or a module's settings (kept for restarts). */
  extraArgs?: readonly string[];
  /** A cgroup v2 of the bench's own for the socket LB hooks; default none (the hooks off). */
  socketLbCgroup?: string;
}

/** The node's underlay address (TEST-NET-1); it lives only inside the node namespace. */
export const NODE_IP = '192.0.2.1';
/** The underlay device's MTU, which the agent derives the pods' MTU from. */
export const UNDERLAY_MTU = 1500;

export class BenchNode {
  readonly netns: string;
  readonly dir: string;
  readonly bpfRoot: string;
  readonly socket: string;
  readonly client: AgentClient;
  readonly #cleanups: Cleanups;
  #extraArgs: readonly string[] = [];
  #socketLbCgroup = '';
  agent: ChildProcess | undefined;
  log = '';

  private constructor(cleanups: Cleanups, netns: string) {
    this.#cleanups = cleanups;
    this.netns = netns;
    this.dir = mkdtempSync(join(tmpdir(), 'ciliate-bench-node-'));
    this.bpfRoot = `/sys/fs/bpf/${uniqueName('ciliate-bench')}`;
    this.socket = join(this.dir, 'api.sock');
    this.client = new AgentClient(this.socket, 30_000);
  }

  /** Starts a node; everything it creates is removed when `cleanups` runs. */
  static async start(cleanups: Cleanups, options: BenchNodeOptions = {}): Promise<BenchNode> {
    const netns = await addNetns(cleanups, options.prefix ?? 'cbn');
    const node = new BenchNode(cleanups, netns);
    node.#extraArgs = options.extraArgs ?? [];
    // Registered after the namespace, so it runs before the namespace is deleted.
    cleanups.defer(`agent of ${netns}, ${node.bpfRoot}, ${node.dir}`, async () => {
      if (node.agent) await stopChild(node.agent, 'SIGKILL');
      rmSync(node.bpfRoot, { recursive: true, force: true });
      rmSync(node.dir, { recursive: true, force: true });
    });
    // The agent wants an underlay address and takes the pods' MTU from its device: a veth pair
    // with a real MTU (lo's 65536 would give pods jumbo frames the baseline does not have).
    await sh('ip', ['-n', netns, '-batch', '-'], {
      input: [
        `link add cbul0 mtu ${UNDERLAY_MTU} type veth peer name cbul1 mtu ${UNDERLAY_MTU}`,
        `addr add ${NODE_IP}/32 dev cbul0`,
        'link set dev cbul0 up',
        'link set dev cbul1 up',
      ].join('\n') + '\n',
    });
    node.#socketLbCgroup = options.socketLbCgroup ?? '';
    await node.#startAgent(options.logLevel ?? 'info', options.routingMode ?? 'native');
    return node;
  }

  async #startAgent(logLevel: string, routingMode: string): Promise<void> {
    const args = [
      CLI, 'agent',
      '--node-name', 'bench1',
      '--state-dir', join(this.dir, 'state'),
      '--socket-path', this.socket,
      '--bpf-root', this.bpfRoot,
      '--log-level', logLevel,
      '--node-ip', NODE_IP,
      '--routing-mode', routingMode,
      ...this.#extraArgs,
      // Never the machine's root cgroup: a cgroup of the bench's own, or no socket hooks.
      '--socket-lb-cgroup', this.#socketLbCgroup,
    ];
    const agent = spawnInNs(this.#cleanups, this.netns, process.execPath, args);
    this.agent = agent;
    // Keep only the tail: enough to explain a failure, bounded however long the bench runs.
    const keep = (chunk: Buffer): void => {
      this.log = (this.log + chunk.toString()).slice(-20_000);
    };
    agent.stdout?.on('data', keep);
    agent.stderr?.on('data', keep);
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (agent.exitCode !== null) throw new Error(`agent exited with ${agent.exitCode}:\n${this.log}`);
      if (existsSync(this.socket)) {
        try {
          await this.client.get('/v1/healthz');
          return;
        } catch {
          // Not listening yet.
        }
      }
      if (Date.now() > deadline) throw new Error(`agent did not come up:\n${this.log}`);
      await sleep(50);
    }
  }

  /** kill -9 of the agent, then a new one on the same state, bpffs root and socket. */
  async killAndRestart(options: { logLevel?: string; routingMode?: string } = {}): Promise<void> {
    if (this.agent) await stopChild(this.agent, 'SIGKILL');
    this.agent = undefined;
    await this.#startAgent(options.logLevel ?? 'info', options.routingMode ?? 'native');
  }

  /** POST /v1/endpoints for an existing namespace; the endpoint is deleted at cleanup. */
  async addEndpoint(netns: string, containerId = uniqueName('ctr')): Promise<Endpoint> {
    const endpoint = await this.#call<Endpoint>('POST', '/v1/endpoints', { containerId, ifname: 'eth0', netns: netnsPath(netns) });
    this.#cleanups.defer(`DELETE endpoint ${containerId}`, () => this.deleteEndpoint(containerId));
    return endpoint;
  }

  /** Set once a call timed out: cleanup then skips the API (deleting the namespaces removes the veths). */
  unresponsive = false;

  async deleteEndpoint(containerId: string): Promise<void> {
    if (!this.agent || this.agent.exitCode !== null || this.unresponsive) return;
    await this.#call('DELETE', `/v1/endpoints/${containerId}/eth0`);
  }

  async #call<T>(method: string, path: string, body?: unknown): Promise<T> {
    try {
      return await this.client.call<T>(method, path, body);
    } catch (error) {
      if (/did not answer/.test((error as Error).message)) {
        this.unresponsive = true;
        throw new Error(`${(error as Error).message}; agent log tail:\n${this.log.slice(-3000)}`);
      }
      throw error;
    }
  }

  /**
   * Waits (up to `timeoutMs`) until the agent's endpoint link pool holds its target: what a node
   * whose pods come one at a time, seconds apart, has at each add. Returns whether it did.
   */
  async poolRefilled(timeoutMs = 5000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const { linkPool } = await this.client.get<{ linkPool?: { ready: number; target: number } }>('/v1/status');
      if (!linkPool || linkPool.ready >= linkPool.target) return true;
      if (Date.now() > deadline) return false;
      await sleep(5);
    }
  }

  /** A pod: a new namespace plus its endpoint. */
  async addPod(prefix = 'cbp'): Promise<{ netns: string; endpoint: Endpoint }> {
    const netns = await addNetns(this.#cleanups, prefix);
    const endpoint = await this.addEndpoint(netns);
    return { netns, endpoint };
  }
}
