/**
 * The node's HTTP proxy (Cilium's Envoy listener, on Node's own http machinery): takes the
 * connections the datapath hands to its transparent listener (bpf/lib/proxy.h), judges every
 * request on them — each request of a kept-alive connection too — against the destination's HTTP
 * rules for the client's identity, answers 403 `Access denied` to what no rule allows, and
 * forwards the rest to the original destination over a connection marked with the client's
 * identity (which the destination's ingress policy takes as already judged).
 *
 * Failure is closed: an unknown client, a destination without rules, a policy being replaced —
 * anything the proxy cannot place is denied.
 * @module
 */
import http from 'node:http';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { Agent, type buildConnector, type Dispatcher } from 'undici';
import type { L7HttpRecord } from '../observer/index.ts';
import {
  compileHttpRule,
  applyHeaderEdits,
  httpRuleMatch,
  type HeaderEdit,
  lookupPolicy,
  policyKeyString,
  PolicyDirection,
  type CompiledHttpRule,
  type HttpRequestView,
  type L7Grant,
  type PolicyMapEntry,
} from '../policy/index.ts';
import type { ProxyState } from './protocol.ts';
import { makeListenerTransparent, markedTcpSocket } from './libc.ts';

/** bpf/lib/proxy.h: MARK_MAGIC_PROXY_INGRESS and the identity, in Cilium's layout. */
const MARK_MAGIC_PROXY_INGRESS = 0x0a00;
export function proxyIngressMark(identity: number): number {
  return (MARK_MAGIC_PROXY_INGRESS | ((identity & 0xffff) << 16) | ((identity >>> 16) & 0xff)) >>> 0;
}

/**
 * Hop-by-hop headers (RFC 9110 7.6.1): the proxy's own business on each side, never forwarded.
 * `expect` too: Node's server has already answered the client's 100-continue, and the body
 * follows whatever the destination would have said.
 */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'proxy-authorization', 'proxy-authenticate', 'expect']);

/** `raw` without hop-by-hop headers and those its Connection header names; names and values as strings. */
function forwardedHeaders(raw: readonly (string | Buffer)[]): string[] {
  const out: string[] = [];
  let connection: Set<string> | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i].toString('latin1');
    const lower = name.toLowerCase();
    if (lower === 'connection') {
      connection ??= new Set();
      for (const t of raw[i + 1].toString('latin1').split(',')) connection.add(t.trim().toLowerCase());
    }
    if (HOP_BY_HOP.has(lower)) continue;
    out.push(name, raw[i + 1].toString('latin1'));
  }
  if (!connection) return out;
  // Rare: the Connection header named more headers to drop (it may come after them).
  const kept: string[] = [];
  for (let i = 0; i < out.length; i += 2) if (!connection.has(out[i].toLowerCase())) kept.push(out[i], out[i + 1]);
  return kept;
}

const NO_EDITS: HeaderEdit[] = [];
const DENIED_BODY = 'Access denied\r\n';

interface EndpointRules {
  entries: Map<string, PolicyMapEntry>;
  compiled: WeakMap<L7Grant, CompiledHttpRule[]>;
  /**
   * lookupPolicy's entry per (client identity, port), null: none. Bounded: the identities are the
   * node's pods', the ports those the datapath redirects here; replaced with the entries.
   */
  decided: Map<number, PolicyMapEntry | null>;
}

export interface HttpProxyOptions {
  port: number;
  /** Where L7 records go (batched by the caller). */
  emit: (record: L7HttpRecord) => void;
  /** Address to listen on; the datapath looks for the listener at 127.0.0.1. */
  host?: string;
}

const CONNECT_TIMEOUT_MS = 10_000;

/** undici's connector, with TCP connections that carry SO_MARK `mark`. */
function markedConnector(mark: number): buildConnector.connector {
  return (options, callback) => {
    let socket: net.Socket;
    try {
      socket = new net.Socket({ fd: markedTcpSocket(mark), readable: true, writable: true });
    } catch (error) {
      callback(error as Error, null);
      return;
    }
    // No Nagle (a response waits on no ACK); keep-alive probes as undici's own connector does.
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 60_000);
    const failed = (error: Error) => callback(error, null);
    socket.once('error', failed);
    // undici's own connector gives up after 10 s too: the client gets its 503 instead of waiting
    // out the kernel's SYN retries (two minutes) on a destination that does not answer.
    socket.setTimeout(CONNECT_TIMEOUT_MS, () => socket.destroy(new Error(`connecting to ${options.hostname}:${options.port || 80} timed out after ${CONNECT_TIMEOUT_MS} ms`)));
    socket.once('connect', () => {
      socket.setTimeout(0);
      socket.off('error', failed);
      callback(null, socket);
    });
    socket.connect(Number(options.port) || 80, options.hostname);
    return socket;
  };
}

/**
 * The upstream side of one client identity: an undici Agent (a pool of kept-alive HTTP/1.1
 * connections per destination, dropped when its last connection closes) whose connections all
 * carry the identity's SO_MARK. undici, not http.request + http.Agent: the proxy is CPU-bound, and
 * with undici it spends a third less CPU per request (`npm run bench -- l7`, proxy_cpu_us_per_req).
 */
function markedAgent(mark: number): Agent {
  // No response timeouts, as before: a slow answer or a long stream ends when the client leaves.
  return new Agent({ connect: markedConnector(mark), allowH2: false, headersTimeout: 0, bodyTimeout: 0 });
}

/** Decimal nanoseconds since the epoch of `ms` (a Date.now()) plus `ns`, without bigint. */
function epochNs(ms: number, ns = 0): string {
  const rest = ns % 1_000_000;
  return `${ms + (ns - rest) / 1_000_000}${rest === 0 ? '000000' : String(rest).padStart(6, '0')}`;
}

type RecordBase = Pick<L7HttpRecord, 'source' | 'destination' | 'method' | 'url' | 'protocol'>;

const UPSTREAM_FAILED_BODY = 'upstream connect error\r\n';

/**
 * One forwarded request's upstream exchange: the response streamed to the client (with
 * backpressure), its RESPONSE record, 503 when the destination fails before answering.
 */
class Exchange implements Dispatcher.DispatchHandler {
  readonly #res: http.ServerResponse;
  readonly #emit: (record: L7HttpRecord) => void;
  readonly #base: RecordBase;
  readonly #startMs: number;
  readonly #start: number;
  #controller: Dispatcher.DispatchController | undefined;
  /** The client went away: the exchange is aborted and nothing more is recorded. */
  #gone = false;

  constructor(res: http.ServerResponse, emit: (record: L7HttpRecord) => void, base: RecordBase, startMs: number, start: number) {
    this.#res = res;
    this.#emit = emit;
    this.#base = base;
    this.#startMs = startMs;
    this.#start = start;
    res.on('close', () => {
      if (res.writableFinished) return;
      this.#gone = true;
      this.#controller?.abort(new Error('the client closed its connection'));
    });
  }

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.#controller = controller;
    if (this.#gone) controller.abort(new Error('the client closed its connection'));
  }

  onResponseStart(controller: Dispatcher.DispatchController, statusCode: number, _headers: unknown, statusMessage?: string): void {
    // 1xx are the hop's business (Node's server answers the client's 100-continue itself).
    if (statusCode < 200 || this.#gone) return;
    this.#respond(statusCode);
    this.#res.writeHead(statusCode, statusMessage, forwardedHeaders((controller.rawHeaders ?? []) as (string | Buffer)[]));
  }

  onResponseData(controller: Dispatcher.DispatchController, chunk: Buffer): void {
    if (this.#res.write(chunk) || controller.paused) return;
    controller.pause();
    this.#res.once('drain', () => controller.resume());
  }

  onResponseEnd(): void {
    this.#res.end();
  }

  onResponseError(_controller: Dispatcher.DispatchController | null, _error: Error): void {
    const res = this.#res;
    if (this.#gone) return;
    if (res.headersSent) {
      res.destroy();
      return;
    }
    this.#respond(503);
    res.writeHead(503, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(UPSTREAM_FAILED_BODY) }).end(UPSTREAM_FAILED_BODY);
  }

  #respond(code: number): void {
    const latencyNs = Math.round((performance.now() - this.#start) * 1e6);
    this.#emit({ kind: 'RESPONSE', timeNs: epochNs(this.#startMs, latencyNs), verdict: 'FORWARDED', code, latencyNs, ...this.#base });
  }
}

export class HttpProxy {
  readonly #server: http.Server;
  readonly #options: HttpProxyOptions;
  #identities = new Map<string, number>();
  #rules = new Map<string, EndpointRules>();
  readonly #agents = new Map<number, Agent>();

  constructor(options: HttpProxyOptions) {
    this.#options = options;
    this.#server = http.createServer({ requestTimeout: 60_000, headersTimeout: 15_000, keepAliveTimeout: 5_000 }, (req, res) => this.#handle(req, res));
    // CONNECT and upgrades (WebSocket, h2c) would leave HTTP after the judged request: refused.
    this.#server.on('connect', (_req, socket: net.Socket) => socket.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 15\r\n\r\n' + DENIED_BODY));
    this.#server.on('upgrade', (_req, socket: net.Socket) => socket.end('HTTP/1.1 403 Forbidden\r\ncontent-length: 15\r\n\r\n' + DENIED_BODY));
    this.#server.on('clientError', (_err, socket) => socket.destroy());
    this.#server.maxConnections = 16_384;
  }

  /** Replaces what requests are judged against. */
  setState(state: ProxyState): void {
    this.#identities = new Map(state.identities);
    const rules = new Map<string, EndpointRules>();
    for (const p of state.policies) {
      const old = this.#rules.get(p.address);
      const entries = new Map(p.entries.map((e) => [policyKeyString(e.key), e]));
      rules.set(p.address, { entries, compiled: old?.compiled ?? new WeakMap(), decided: new Map() });
    }
    this.#rules = rules;
  }

  /** Listens (transparent) and resolves with the port. */
  async listen(): Promise<number> {
    const server = this.#server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host: this.#options.host ?? '127.0.0.1', port: this.#options.port, exclusive: true }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    makeListenerTransparent(server);
    return (server.address() as AddressInfo).port;
  }

  async close(): Promise<void> {
    await Promise.all([...this.#agents.values()].map((a) => a.destroy()));
    this.#agents.clear();
    this.#server.closeAllConnections();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  #agent(identity: number): Agent {
    const mark = proxyIngressMark(identity);
    let agent = this.#agents.get(mark);
    if (!agent) this.#agents.set(mark, (agent = markedAgent(mark)));
    return agent;
  }

  /**
   * The rule keys that allow the request and the header edits its rule's mismatch actions make;
   * undefined: denied. A rule the request matches whole is preferred to one that needs edits; among
   * those, the first in order decides the edits.
   */
  #judge(srcIdentity: number | undefined, dst: string, dport: number, view: HttpRequestView): { ruleKeys: string[]; edits: HeaderEdit[] } | undefined {
    if (srcIdentity === undefined) return undefined;
    const rules = this.#rules.get(dst);
    if (!rules) return undefined;
    // The datapath's own decision over the same entries (policy_can_access), so the proxy applies
    // exactly the entry that sent the connection here.
    const key = srcIdentity * 65_536 + dport;
    let entry = rules.decided.get(key);
    if (entry === undefined) rules.decided.set(key, (entry = lookupPolicy(rules.entries, srcIdentity, PolicyDirection.INGRESS, 6, dport).entry ?? null));
    if (!entry || entry.deny) return undefined;
    if (!entry.l7) return { ruleKeys: entry.ruleKeys, edits: NO_EDITS };
    const allowed: string[] = [];
    let edits: HeaderEdit[] | undefined;
    for (const grant of entry.l7) {
      let compiled = rules.compiled.get(grant);
      if (!compiled) rules.compiled.set(grant, (compiled = grant.http.map(compileHttpRule)));
      let matched = false;
      for (const rule of compiled) {
        const match = httpRuleMatch(rule, view);
        if (!match) continue;
        matched = true;
        if (edits === undefined || (edits.length > 0 && match.edits.length === 0)) edits = match.edits;
        if (edits.length === 0) break;
      }
      if (matched) allowed.push(grant.ruleKey);
    }
    return allowed.length > 0 ? { ruleKeys: allowed, edits: edits ?? NO_EDITS } : undefined;
  }

  #handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const start = performance.now();
    const startMs = Date.now();
    const socket = req.socket;
    const dst = socket.localAddress ?? '';
    const dport = socket.localPort ?? 0;
    const src = socket.remoteAddress ?? '';
    const sport = socket.remotePort ?? 0;
    const identity = this.#identities.get(src);
    const dstIdentity = this.#identities.get(dst) ?? 0;
    const headers = req.headers;
    const host = headers.host ?? '';
    const path = req.url ?? '/';
    const method = req.method ?? '';
    const base: RecordBase = {
      source: { address: src, port: sport, identity: identity ?? 0 },
      destination: { address: dst, port: dport, identity: dstIdentity },
      method,
      url: `http://${host || dst}${path}`,
      protocol: `HTTP/${req.httpVersion}`,
    };
    const verdict = this.#judge(identity, dst, dport, { method, path, host, headers });
    if (!verdict) {
      // The code the client got, as Cilium's access log records a denial: `--http-status 403` finds it.
      this.#options.emit({ kind: 'REQUEST', timeNs: epochNs(startMs), verdict: 'DROPPED', code: 403, ...base });
      req.resume();
      res.writeHead(403, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(DENIED_BODY) }).end(DENIED_BODY);
      return;
    }
    this.#options.emit({ kind: 'REQUEST', timeNs: epochNs(startMs), verdict: 'FORWARDED', ruleKeys: verdict.ruleKeys, ...base });
    // A request has a body only with a length or chunks (RFC 9112 6.3); it is streamed on.
    const hasBody = headers['content-length'] !== undefined || headers['transfer-encoding'] !== undefined;
    this.#agent(identity!).dispatch(
      { origin: `http://${dst}:${dport}`, method, path, headers: applyHeaderEdits(forwardedHeaders(req.rawHeaders), verdict.edits), body: hasBody ? req : null },
      new Exchange(res, this.#options.emit, base, startMs, start),
    );
  }
}
