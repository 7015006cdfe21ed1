/**
 * Whether the other nodes can be reached, as Cilium's health checking answers it: every agent
 * answers `GET /hello` on its node address (Cilium's cluster-health-port, 4240), and probes every
 * other node it knows from the shared store there on an interval. A node counts as reachable when
 * its agent answered with its own name within the probe's time: an agent that stopped, a node
 * whose address no longer routes, or another agent answering at that address all count as
 * unreachable. The count is `cilium_unreachable_nodes`.
 * @module
 */
import { createServer, type Server } from 'node:http';
import type { Logger } from 'pino';
import type { NodeRecord } from './node.ts';

export const HEALTH_PATH = '/hello';

/** A probe never waits longer than this, however long the interval. */
const MAX_PROBE_TIMEOUT_MS = 3000;

export interface NodeHealthOptions {
  /** This node: answered for, never probed. */
  self: string;
  /** Where this node answers probes (its underlay address). */
  address: string;
  port: number;
  intervalMs: number;
  /** The nodes this one knows now (the cluster view, this node included). */
  nodes(): Iterable<NodeRecord>;
  log: Logger;
}

export interface NodeReachability {
  node: string;
  address: string;
  reachable: boolean;
  /** Why not, when unreachable. */
  reason?: string;
  latencyMs?: number;
  probedAt: string;
}

export class NodeHealth {
  readonly #options: NodeHealthOptions;
  readonly #results = new Map<string, NodeReachability>();
  readonly #abort = new AbortController();
  #server: Server | undefined;
  #timer: NodeJS.Timeout | undefined;
  #round: Promise<void> = Promise.resolve();

  constructor(options: NodeHealthOptions) {
    this.#options = options;
  }

  /** Answers probes on the node address, then probes every other node now and on the interval. */
  async start(): Promise<void> {
    const body = JSON.stringify({ node: this.#options.self });
    // Answers one path with the node's name and nothing else: a probe learns who answers, no more.
    const server = createServer({ requestTimeout: 5000, headersTimeout: 3000, maxHeaderSize: 4096 }, (request, response) => {
      const ok = request.method === 'GET' && request.url === HEALTH_PATH;
      response.writeHead(ok ? 200 : 404, { 'content-type': 'application/json' }).end(ok ? body : '{}');
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.#options.port, this.#options.address, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.#server = server;
    const tick = () => {
      this.#round = this.#probeAll().finally(() => {
        if (!this.#abort.signal.aborted) this.#timer = setTimeout(tick, this.#options.intervalMs);
      });
    };
    tick();
  }

  async stop(): Promise<void> {
    this.#abort.abort();
    clearTimeout(this.#timer);
    await this.#round;
    const server = this.#server;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()).closeAllConnections());
  }

  /** The other nodes known now, each with its latest probe (none yet: not listed). */
  reachability(): NodeReachability[] {
    return this.#others()
      .flatMap((node) => this.#results.get(node.name) ?? [])
      .sort((a, b) => a.node.localeCompare(b.node));
  }

  /** Nodes known now whose latest probe failed. */
  unreachable(): number {
    return this.reachability().filter((r) => !r.reachable).length;
  }

  #others(): NodeRecord[] {
    return [...this.#options.nodes()].filter((n) => n.name !== this.#options.self && n.nodeIp);
  }

  async #probeAll(): Promise<void> {
    const nodes = this.#others();
    const known = new Set(nodes.map((n) => n.name));
    for (const name of this.#results.keys()) if (!known.has(name)) this.#results.delete(name);
    await Promise.all(nodes.map((node) => this.#probe(node)));
  }

  async #probe(node: NodeRecord): Promise<void> {
    const address = `${node.nodeIp}:${this.#options.port}`;
    const started = performance.now();
    const timeout = Math.min(this.#options.intervalMs, MAX_PROBE_TIMEOUT_MS);
    let reason: string | undefined;
    try {
      const response = await fetch(`http://${address}${HEALTH_PATH}`, { signal: AbortSignal.any([AbortSignal.timeout(timeout), this.#abort.signal]) });
      const text = await response.text();
      let answeredBy: unknown;
      try {
        answeredBy = (JSON.parse(text) as { node?: unknown }).node;
      } catch {
        answeredBy = undefined;
      }
      if (response.status !== 200) reason = `${address} answered HTTP ${response.status}`;
      else if (answeredBy !== node.name) reason = `${address} answers as ${JSON.stringify(answeredBy ?? null)}, not ${node.name}`;
    } catch (error) {
      const cause = (error as { cause?: { code?: string } }).cause;
      reason = `${address}: ${(error as Error).name === 'TimeoutError' ? `no answer within ${timeout} ms` : (cause?.code ?? (error as Error).message)}`;
    }
    if (this.#abort.signal.aborted) return;
    const result: NodeReachability = { node: node.name, address, reachable: reason === undefined, probedAt: new Date().toISOString() };
    if (reason) result.reason = reason;
    else result.latencyMs = Math.round((performance.now() - started) * 10) / 10;
    const previous = this.#results.get(node.name);
    this.#results.set(node.name, result);
    if (previous?.reachable === result.reachable) return;
    if (result.reachable) this.#options.log.info({ node: node.name, address }, 'node reachable');
    else this.#options.log.warn({ node: node.name, reason }, 'node unreachable');
  }
}
