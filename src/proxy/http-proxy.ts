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
import type { L7HttpRecord } from '../observer/index.ts';
import {
  compileHttpRule,
  httpRuleMatches,
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

/** Hop-by-hop headers (RFC 9110 7.6.1): the proxy's own business on each side, never forwarded. */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'proxy-authorization', 'proxy-authenticate']);

function forwardedHeaders(raw: readonly string[]): string[] {
  const connection = new Set<string>();
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i].toLowerCase() === 'connection') for (const t of raw[i + 1].split(',')) connection.add(t.trim().toLowerCase());
  }
  const out: string[] = [];
  for (let i = 0; i < raw.length; i += 2) {
    const name = raw[i].toLowerCase();
    if (HOP_BY_HOP.has(name) || connection.has(name)) continue;
    out.push(raw[i], raw[i + 1]);
  }
  return out;
}

const DENIED_BODY = 'Access denied\r\n';

interface EndpointRules {
  entries: Map<string, PolicyMapEntry>;
  compiled: WeakMap<L7Grant, CompiledHttpRule[]>;
}

export interface HttpProxyOptions {
  port: number;
  /** Where L7 records go (batched by the caller). */
  emit: (record: L7HttpRecord) => void;
  /** Address to listen on; the datapath looks for the listener at 127.0.0.1. */
  host?: string;
}

/** An http.Agent whose connections carry one SO_MARK: one per client identity, kept alive. */
class MarkedAgent extends http.Agent {
  readonly #mark: number;
  constructor(mark: number) {
    super({ keepAlive: true, maxFreeSockets: 64, timeout: 30_000 });
    this.#mark = mark;
  }
  override createConnection(options: net.NetConnectOpts): net.Socket {
    const o = options as net.TcpNetConnectOpts;
    const socket = new net.Socket({ fd: markedTcpSocket(this.#mark), readable: true, writable: true });
    // What net.createConnection would do for the agent: no Nagle (a response waits on no ACK).
    socket.setNoDelay(true);
    return socket.connect(o.port, o.host ?? '127.0.0.1');
  }
}

export class HttpProxy {
  readonly #server: http.Server;
  readonly #options: HttpProxyOptions;
  #identities = new Map<string, number>();
  #rules = new Map<string, EndpointRules>();
  readonly #agents = new Map<number, MarkedAgent>();

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
      rules.set(p.address, { entries, compiled: old?.compiled ?? new WeakMap() });
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
    for (const a of this.#agents.values()) a.destroy();
    this.#server.closeAllConnections();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  #agent(identity: number): MarkedAgent {
    const mark = proxyIngressMark(identity);
    let agent = this.#agents.get(mark);
    if (!agent) this.#agents.set(mark, (agent = new MarkedAgent(mark)));
    return agent;
  }

  /** The rule keys that allow the request; undefined: denied. */
  #judge(srcIdentity: number | undefined, dst: string, dport: number, view: HttpRequestView): string[] | undefined {
    if (srcIdentity === undefined) return undefined;
    const rules = this.#rules.get(dst);
    if (!rules) return undefined;
    // The datapath's own decision over the same entries (policy_can_access), so the proxy applies
    // exactly the entry that sent the connection here.
    const entry = lookupPolicy(rules.entries, srcIdentity, PolicyDirection.INGRESS, 6, dport).entry;
    if (!entry || entry.deny) return undefined;
    if (!entry.l7) return entry.ruleKeys;
    const allowed: string[] = [];
    for (const grant of entry.l7) {
      let compiled = rules.compiled.get(grant);
      if (!compiled) rules.compiled.set(grant, (compiled = grant.http.map(compileHttpRule)));
      if (compiled.some((r) => httpRuleMatches(r, view))) allowed.push(grant.ruleKey);
    }
    return allowed.length > 0 ? allowed : undefined;
  }

  #handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const start = process.hrtime.bigint();
    const startNs = BigInt(Date.now()) * 1_000_000n;
    const socket = req.socket;
    const dst = socket.localAddress ?? '';
    const dport = socket.localPort ?? 0;
    const src = socket.remoteAddress ?? '';
    const sport = socket.remotePort ?? 0;
    const identity = this.#identities.get(src);
    const dstIdentity = this.#identities.get(dst) ?? 0;
    const host = req.headers.host ?? '';
    const path = req.url ?? '/';
    const method = req.method ?? '';
    const base = {
      source: { address: src, port: sport, identity: identity ?? 0 },
      destination: { address: dst, port: dport, identity: dstIdentity },
      method,
      url: `http://${host || dst}${path}`,
      protocol: `HTTP/${req.httpVersion}`,
    };
    const allowedBy = this.#judge(identity, dst, dport, { method, path, host, headers: req.headers });
    if (!allowedBy) {
      // The code the client got, as Cilium's access log records a denial: `--http-status 403` finds it.
      this.#options.emit({ kind: 'REQUEST', timeNs: String(startNs), verdict: 'DROPPED', code: 403, ...base });
      req.resume();
      res.writeHead(403, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(DENIED_BODY) }).end(DENIED_BODY);
      return;
    }
    this.#options.emit({ kind: 'REQUEST', timeNs: String(startNs), verdict: 'FORWARDED', ruleKeys: allowedBy, ...base });
    const upstream = http.request({
      host: dst,
      port: dport,
      method,
      path,
      headers: forwardedHeaders(req.rawHeaders),
      agent: this.#agent(identity!),
      setHost: false,
    });
    const respond = (code: number) => {
      const latencyNs = Number(process.hrtime.bigint() - start);
      this.#options.emit({ kind: 'RESPONSE', timeNs: String(startNs + BigInt(latencyNs)), verdict: 'FORWARDED', code, latencyNs, ...base });
    };
    upstream.on('response', (up) => {
      respond(up.statusCode ?? 0);
      res.writeHead(up.statusCode ?? 502, up.statusMessage, forwardedHeaders(up.rawHeaders));
      up.pipe(res);
      up.on('error', () => res.destroy());
    });
    upstream.on('error', () => {
      if (res.headersSent) {
        res.destroy();
        return;
      }
      respond(503);
      const body = 'upstream connect error\r\n';
      res.writeHead(503, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body) }).end(body);
    });
    res.on('close', () => {
      if (!res.writableFinished) upstream.destroy();
    });
    req.pipe(upstream);
  }
}
