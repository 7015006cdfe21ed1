/**
 * The running `ciliate lb`: the XDP balancer, its config file watched and re-applied on change
 * (a bad edit is reported and the running config kept), the health checks, and the stats over a
 * root-only Unix socket (`GET /v1/stats`, `GET /metrics`).
 * @module
 */
import { chmodSync, mkdirSync, rmSync, watch, type FSWatcher } from 'node:fs';
import { createServer, request, type Server } from 'node:http';
import { dirname } from 'node:path';
import { counterOf, gaugeOf, Registry } from '../metrics/index.ts';
import { readXdpLbConfig, type XdpLbConfig } from './xdp-config.ts';
import { HealthChecker } from './xdp-health.ts';
import { XdpLoadBalancer, type XdpLbStats } from './xdp-lb.ts';

export const DEFAULT_LB_SOCKET = '/run/ciliate/lb.sock';
const RELOAD_DEBOUNCE_MS = 200;

export interface LbRunnerOptions {
  configFile: string;
  socketPath?: string;
  /** Where to pin the maps (bpffs), so they outlive a restart; default: not pinned. */
  pinDir?: string;
  log: (message: string) => void;
}

export class LbRunner {
  readonly #options: LbRunnerOptions;
  readonly #lb: XdpLoadBalancer;
  readonly #health: HealthChecker;
  readonly #registry = new Registry();
  #server: Server | undefined;
  #watcher: FSWatcher | undefined;
  #debounce: NodeJS.Timeout | undefined;
  #healthKey = '';

  private constructor(options: LbRunnerOptions, lb: XdpLoadBalancer, config: XdpLbConfig) {
    this.#options = options;
    this.#lb = lb;
    this.#health = new HealthChecker({
      ...config.healthCheck,
      onChange: (address, healthy) => {
        options.log(`backend ${address}: ${healthy ? 'healthy: back in' : 'failing health checks: taken out'}`);
        this.#lb.setHealth(address, healthy);
      },
    });
    this.#registerMetrics();
  }

  /** Loads, applies `configFile` and starts serving; throws (nothing left behind) on a bad config or attach. */
  static async start(options: LbRunnerOptions): Promise<LbRunner> {
    const config = readXdpLbConfig(options.configFile);
    const lb = XdpLoadBalancer.load(options.pinDir ? { pinDir: options.pinDir } : {});
    const runner = new LbRunner(options, lb, config);
    try {
      lb.apply(config);
      runner.#updateHealth(config);
      runner.#health.start();
      await runner.#listen();
      runner.#watch();
    } catch (error) {
      await runner.stop();
      throw error;
    }
    options.log(`balancing ${config.vips.length} VIP(s) on ${config.interface} (${config.xdpMode} XDP)`);
    return runner;
  }

  get balancer(): XdpLoadBalancer {
    return this.#lb;
  }

  /** Re-reads the config file; a bad one is logged and changes nothing. */
  reload(): boolean {
    let config: XdpLbConfig;
    try {
      config = readXdpLbConfig(this.#options.configFile);
    } catch (error) {
      this.#options.log(`reload refused, the running config stays: ${(error as Error).message}`);
      return false;
    }
    try {
      this.#lb.apply(config);
    } catch (error) {
      this.#options.log(`reload failed: ${(error as Error).message}`);
      return false;
    }
    this.#updateHealth(config);
    this.#options.log(`reloaded ${this.#options.configFile}: ${config.vips.length} VIP(s)`);
    return true;
  }

  #updateHealth(config: XdpLbConfig): void {
    const key = JSON.stringify(config.healthCheck);
    if (this.#healthKey !== '' && this.#healthKey !== key) this.#options.log('healthCheck timing changes apply after a restart');
    this.#healthKey ||= key;
    this.#health.setTargets(this.#lb.healthTargets());
  }

  #watch(): void {
    // The directory, not the file: editors replace files by rename, which ends a watch on the file.
    const file = this.#options.configFile;
    this.#watcher = watch(dirname(file), (_event, name) => {
      if (name !== null && !file.endsWith(`/${name}`) && file !== name) return;
      clearTimeout(this.#debounce);
      this.#debounce = setTimeout(() => this.reload(), RELOAD_DEBOUNCE_MS);
    });
  }

  async #listen(): Promise<void> {
    const path = this.#options.socketPath ?? DEFAULT_LB_SOCKET;
    mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
    rmSync(path, { force: true });
    const server = createServer((req, res) => {
      const url = (req.url ?? '/').split('?', 1)[0];
      if (req.method !== 'GET') return void res.writeHead(405, { allow: 'GET' }).end();
      if (url === '/v1/stats') return void res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(this.#lb.stats()));
      if (url === '/metrics') {
        this.#registry.metrics().then(
          (text) => res.writeHead(200, { 'content-type': this.#registry.contentType }).end(text),
          (error: unknown) => res.writeHead(500).end(String(error)),
        );
        return;
      }
      res.writeHead(404).end('not found: /v1/stats, /metrics\n');
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => resolve());
    });
    // Root only: the stats name every backend.
    chmodSync(path, 0o600);
    this.#server = server;
  }

  #registerMetrics(): void {
    const registry = this.#registry;
    let cached: { at: number; stats: XdpLbStats } | undefined;
    // One read of the maps per scrape serves every metric.
    const read = () => {
      if (!cached || performance.now() - cached.at > 500) cached = { at: performance.now(), stats: this.#lb.stats() };
      return cached.stats;
    };
    counterOf(registry, 'ciliate_lb_vip_packets_total', 'Packets balanced per VIP', ['vip'], (set) => read().vips.forEach((v) => set({ vip: v.vip }, v.packets)));
    counterOf(registry, 'ciliate_lb_vip_bytes_total', 'Bytes balanced per VIP', ['vip'], (set) => read().vips.forEach((v) => set({ vip: v.vip }, v.bytes)));
    counterOf(registry, 'ciliate_lb_backend_packets_total', 'Packets sent to each backend', ['backend'], (set) => read().backends.forEach((b) => set({ backend: b.address }, b.packets)));
    counterOf(registry, 'ciliate_lb_backend_bytes_total', 'Bytes sent to each backend', ['backend'], (set) => read().backends.forEach((b) => set({ backend: b.address }, b.bytes)));
    counterOf(registry, 'ciliate_lb_drops_total', 'Packets to a VIP dropped, by reason', ['reason'], (set) => read().drops.forEach((d) => set({ reason: d.reason }, d.packets)));
    gaugeOf(registry, 'ciliate_lb_backend_healthy', '1 while a backend passes its health checks', ['backend'], (set) => read().backends.forEach((b) => set({ backend: b.address }, b.healthy ? 1 : 0)));
  }

  async stop(): Promise<void> {
    clearTimeout(this.#debounce);
    this.#watcher?.close();
    this.#health.stop();
    if (this.#server) {
      const server = this.#server;
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      rmSync(this.#options.socketPath ?? DEFAULT_LB_SOCKET, { force: true });
    }
    this.#lb.close();
  }
}

/** GET `path` from a running `ciliate lb` over its Unix socket. */
export function queryLb(socketPath: string, path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path, method: 'GET' }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (body += chunk));
      res.on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`ciliate lb at ${socketPath}: ${path}: HTTP ${res.statusCode}: ${body.trim()}`))));
    });
    req.on('error', (error: NodeJS.ErrnoException) => reject(new Error(`cannot reach ciliate lb at ${socketPath}: ${error.code ?? error.message} (is it running? --socket)`)));
    req.end();
  });
}
