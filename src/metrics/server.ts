/**
 * An HTTP server answering `GET /metrics` with a registry's metrics in the Prometheus text
 * format. Collect callbacks run on each scrape, so what is scraped is read then, not pushed on
 * every event.
 * @module
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import type { Registry } from 'prom-client';
import { MetricsError } from './errors.ts';
import { parseListenAddress } from './listen-address.ts';

export class MetricsServer {
  readonly #server: Server;

  private constructor(server: Server) {
    this.#server = server;
  }

  /**
   * Serves `registry` on `address` (a valid listen address setting, not empty). `setting` names
   * the configuration field in errors, so a port in use says which setting to change.
   */
  static async listen(registry: Registry, address: string, setting: string, log: Logger): Promise<MetricsServer> {
    const parsed = parseListenAddress(address);
    if (!parsed) throw new MetricsError('ERR_METRICS_LISTEN', `${setting}: no address to listen on`);
    const server = createServer((request, response) => {
      const path = (request.url ?? '/').split('?', 1)[0];
      if (path !== '/metrics') {
        response.writeHead(404, { 'content-type': 'text/plain' }).end('not found: metrics are at /metrics\n');
        return;
      }
      if (request.method !== 'GET' && request.method !== 'HEAD') {
        response.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end('method not allowed\n');
        return;
      }
      registry.metrics().then(
        (text) => response.writeHead(200, { 'content-type': registry.contentType }).end(request.method === 'HEAD' ? undefined : text),
        (error: unknown) => {
          log.error({ err: error }, 'collecting metrics failed');
          response.writeHead(500, { 'content-type': 'text/plain' }).end(`collecting metrics failed: ${(error as Error).message}\n`);
        },
      );
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (error: NodeJS.ErrnoException) =>
        reject(new MetricsError('ERR_METRICS_LISTEN', `${setting}: cannot listen on ${address}: ${error.code ?? error.message}`, { cause: error })),
      );
      server.listen({ host: parsed.host, port: parsed.port }, () => resolve());
    });
    return new MetricsServer(server);
  }

  /** The bound port (what a `:0`-style test setting got). */
  get port(): number {
    return (this.#server.address() as AddressInfo).port;
  }

  async close(): Promise<void> {
    this.#server.closeAllConnections();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}
