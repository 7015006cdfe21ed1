/**
 * The agent's local API: JSON over HTTP on a Unix socket that only root may open. The CLI and
 * the CNI plugin are its clients. Handlers throw the domain's coded errors (and RequestError for
 * malformed requests); the table in api-errors.ts turns each into its status, anything it does not
 * know is a 500 with the message, logged, and the agent keeps running.
 * @module
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { chmodSync, mkdirSync, rmSync } from 'node:fs';
import { dirname } from 'node:path';
import type { Logger } from 'pino';
import { errorBody, httpStatus, RequestError } from './api-errors.ts';

export interface RequestContext {
  params: Record<string, string>;
  query: URLSearchParams;
  body: unknown;
  /** Aborted when the client disconnects: ends streams. */
  signal: AbortSignal;
}

export type Handler = (ctx: RequestContext) => Promise<unknown> | unknown;

interface Route {
  method: string;
  pattern: RegExp;
  names: string[];
  handler: Handler;
}

/**
 * An answer a handler makes itself, sent as it is rather than as JSON of a value: for a client
 * that is not ours to shape (the CNI plugin binary prints the body and exits with a header's code).
 */
export class RawReply {
  readonly status: number;
  readonly body: string;
  readonly headers: Readonly<Record<string, string>>;
  constructor(status: number, body: string, headers: Readonly<Record<string, string>> = {}) {
    this.status = status;
    this.body = body;
    this.headers = headers;
  }
}

/** The largest request body the API reads (a policy file travels as one JSON string). */
export const MAX_REQUEST_BYTES = 1 << 20;
const MAX_BODY = MAX_REQUEST_BYTES;

/** What a module sees of the API: where it adds its routes. */
export type ApiRouter = Pick<ApiServer, 'route'>;

export class ApiServer {
  readonly #routes: Route[] = [];
  readonly #log: Logger;
  #server: Server | undefined;

  constructor(log: Logger) {
    this.#log = log;
  }

  /** Registers a route; `/v1/endpoints/:id` captures `id`. */
  route(method: string, path: string, handler: Handler): void {
    const names: string[] = [];
    const pattern = new RegExp(`^${path.replace(/:([a-zA-Z]+)/g, (_, name: string) => (names.push(name), '([^/]+)'))}$`);
    this.#routes.push({ method, pattern, names, handler });
  }

  async listen(socketPath: string): Promise<void> {
    mkdirSync(dirname(socketPath), { recursive: true, mode: 0o700 });
    rmSync(socketPath, { force: true }); // a stale socket from a killed agent
    const server = createServer((req, res) => void this.#handle(req, res));
    // A client that asks before sending a large body is told at once when it is over the limit.
    server.on('checkContinue', (req: IncomingMessage, res: ServerResponse) => {
      const declared = Number(req.headers['content-length'] ?? 0);
      if (declared > MAX_BODY) {
        res.setHeader('connection', 'close');
        send(res, 413, errorBody(tooLarge(declared)));
        return;
      }
      res.writeContinue();
      void this.#handle(req, res);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketPath, () => resolve());
    });
    chmodSync(socketPath, 0o600);
    this.#server = server;
  }

  async close(): Promise<void> {
    const server = this.#server;
    if (!server) return;
    this.#server = undefined;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://ciliate');
    try {
      const route = this.#routes.find((r) => r.method === req.method && r.pattern.test(url.pathname));
      if (!route) throw new RequestError('ERR_NOT_FOUND', `no API route ${req.method} ${url.pathname}`);
      const match = route.pattern.exec(url.pathname)!;
      const params = Object.fromEntries(route.names.map((name, i) => [name, decodePathSegment(match[i + 1])]));
      const body = await readJson(req);
      const abort = new AbortController();
      res.once('close', () => abort.abort());
      const result = await route.handler({ params, query: url.searchParams, body, signal: abort.signal });
      if (result instanceof RawReply) {
        res.writeHead(result.status, { ...result.headers, 'content-length': Buffer.byteLength(result.body) });
        res.end(result.body);
        return;
      }
      if (isAsyncIterable(result)) {
        // A stream: one JSON document per line until the client goes away.
        res.writeHead(200, { 'content-type': 'application/x-ndjson' });
        for await (const item of result) {
          if (abort.signal.aborted) break;
          res.write(`${JSON.stringify(item, bigintReplacer)}\n`);
        }
        res.end();
        return;
      }
      send(res, 200, result ?? {});
    } catch (error) {
      const status = httpStatus(error);
      // An oversized body is refused before it is read; node:http discards the rest of it once the
      // answer is out. (Closing instead would reset the connection under a client still writing,
      // and the reset can take the answer with it.)
      // A 4xx is the client's mistake and its answer says everything; a 5xx is ours to look into.
      if (status >= 500) this.#log.error({ err: error, method: req.method, path: url.pathname, status }, 'API request failed');
      send(res, status, errorBody(error));
    }
  }
}

function tooLarge(size: number): RequestError {
  return new RequestError('ERR_TOO_LARGE', `request body of ${size} bytes is over the limit of ${MAX_BODY} bytes`);
}

function decodePathSegment(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    throw new RequestError('ERR_BAD_REQUEST', `path segment ${JSON.stringify(segment)} is not valid percent-encoding`);
  }
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > MAX_BODY) throw tooLarge(declared);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    // Past the limit the rest is read and dropped, so the answer reaches a client still writing;
    // one that will not stop is cut off.
    if (size > MAX_BODY * 16) throw tooLarge(size);
    if (size <= MAX_BODY) chunks.push(chunk as Buffer);
  }
  if (size > MAX_BODY) throw tooLarge(size);
  if (size === 0) return undefined;
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch (error) {
    throw new RequestError('ERR_BAD_JSON', `request body is not JSON: ${(error as Error).message}`, { cause: error });
  }
}

function bigintReplacer(_key: string, v: unknown): unknown {
  return typeof v === 'bigint' ? v.toString() : v;
}

function isAsyncIterable(value: unknown): value is AsyncIterable<unknown> {
  return typeof value === 'object' && value !== null && Symbol.asyncIterator in value;
}

function send(res: ServerResponse, status: number, value: unknown): void {
  const text = JSON.stringify(value, bigintReplacer);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}
