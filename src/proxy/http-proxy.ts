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
import http2 from 'node:http2';
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
import { publishListener } from './listeners.ts';
import { H2Upstreams, h2RequestHeaders, h2ResponseHeaders, routeConnection } from './h2.ts';
import { ipv4Mask, parseIpv4, Prefix } from '../net/index.ts';
import { BpfMap } from '../ebpf/index.ts';
import { IPPROTO_TCP, proxy4Key, proxy4Value, type Proxy4Key, type Proxy4Value } from '../datapath/index.ts';

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

/**
 * The lengths of the HOP_BY_HOP names: a header whose name has none of them is forwarded without
 * lowercasing it first (most headers are: a lowercased copy per header per hop is the cost).
 */
const HOP_BY_HOP_LENGTHS = new Set([...HOP_BY_HOP].map((name) => name.length));

/** `raw` without hop-by-hop headers and those its Connection header names; names and values as strings. */
function forwardedHeaders(raw: readonly (string | Buffer)[]): string[] {
  const out: string[] = [];
  let connection: Set<string> | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    const name = typeof raw[i] === 'string' ? (raw[i] as string) : raw[i].toString('latin1');
    const value = typeof raw[i + 1] === 'string' ? (raw[i + 1] as string) : raw[i + 1].toString('latin1');
    if (HOP_BY_HOP_LENGTHS.has(name.length)) {
      const lower = name.toLowerCase();
      if (lower === 'connection') {
        connection ??= new Set();
        for (const t of value.split(',')) connection.add(t.trim().toLowerCase());
      }
      if (HOP_BY_HOP.has(lower)) continue;
    }
    out.push(name, value);
  }
  if (!connection) return out;
  // Rare: the Connection header named more headers to drop (it may come after them).
  const kept: string[] = [];
  for (let i = 0; i < out.length; i += 2) if (!connection.has(out[i].toLowerCase())) kept.push(out[i], out[i + 1]);
  return kept;
}

const NO_EDITS: HeaderEdit[] = [];
const DENIED_BODY = 'Access denied\r\n';
/** A denial on a connection that has left HTTP (an upgrade, CONNECT): nothing can follow it. */
const DENIED_AND_CLOSED = `HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: ${DENIED_BODY.length}\r\nconnection: close\r\n\r\n${DENIED_BODY}`;

/**
 * Accepted connections at once, upgraded ones (tunnels) included: a tunnel holds its client
 * connection, and opens one upstream connection per such connection, so this bounds both.
 */
const MAX_CONNECTIONS = 16_384;

/** Reserved identity of addresses the ipcache does not know (Cilium's world). */
const WORLD = 2;

/** What a side of the judgement allows: the rule keys, and the header edits of their mismatch actions. */
interface Verdict {
  ruleKeys: string[];
  edits: HeaderEdit[];
}

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
  /**
   * The datapath's ciliate_proxy4 pin: the identity it judged each redirected connection's SYN
   * with, for a client that is no pod of this node (another node's proxy, through the tunnel).
   */
  origins?: string;
  /**
   * The datapath's ciliate_proxy_listeners pin: the listener is put there under its port, for a
   * SYN the stack takes through a TIME_WAIT socket of its 4-tuple (bpf/lib/proxy.h).
   */
  listeners?: string;
  /** Milliseconds a connection answered for the last time waits for its client to close (dropAfter); 2000. */
  lingerMs?: number;
}

const CONNECT_TIMEOUT_MS = 10_000;

/**
 * A TCP connection to `host`:`port` carrying SO_MARK `mark`, given up after CONNECT_TIMEOUT_MS:
 * undici's own connector gives up after 10 s too, so the client gets its 503 instead of waiting out
 * the kernel's SYN retries (two minutes) on a destination that does not answer. Throws when the
 * socket cannot be made.
 */
function markedConnection(mark: number, host: string, port: number, allowHalfOpen = false): net.Socket {
  const socket = new net.Socket({ fd: markedTcpSocket(mark), readable: true, writable: true, allowHalfOpen });
  // No Nagle (a response waits on no ACK); keep-alive probes as undici's own connector does.
  socket.setNoDelay(true);
  socket.setKeepAlive(true, 60_000);
  socket.setTimeout(CONNECT_TIMEOUT_MS, () => socket.destroy(new Error(`connecting to ${host}:${port} timed out after ${CONNECT_TIMEOUT_MS} ms`)));
  socket.once('connect', () => socket.setTimeout(0));
  socket.connect(port, host);
  return socket;
}

/** undici's connector, with TCP connections that carry SO_MARK `mark`. */
function markedConnector(mark: number): buildConnector.connector {
  return (options, callback) => {
    let socket: net.Socket;
    try {
      socket = markedConnection(mark, options.hostname, Number(options.port) || 80);
    } catch (error) {
      callback(error as Error, null);
      return;
    }
    const failed = (error: Error) => callback(error, null);
    socket.once('error', failed);
    socket.once('connect', () => {
      socket.off('error', failed);
      callback(null, socket);
    });
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

type RecordBase = Pick<L7HttpRecord, 'source' | 'destination' | 'method' | 'url' | 'protocol' | 'direction'>;

const UPSTREAM_FAILED_BODY = 'upstream connect error\r\n';

/** A record of the exchange `base` describes, built field by field (two per request: no spreads). */
function record(kind: L7HttpRecord['kind'], timeNs: string, verdict: L7HttpRecord['verdict'], base: RecordBase): L7HttpRecord {
  const out: L7HttpRecord = { kind, timeNs, verdict, source: base.source, destination: base.destination, method: base.method, url: base.url, protocol: base.protocol };
  if (base.direction) out.direction = base.direction;
  return out;
}

/** A RESPONSE record: the code the client got, the latency since the request's start. */
function responseRecord(base: RecordBase, startMs: number, start: number, code: number): L7HttpRecord {
  const latencyNs = Math.round((performance.now() - start) * 1e6);
  const out = record('RESPONSE', epochNs(startMs, latencyNs), 'FORWARDED', base);
  out.code = code;
  out.latencyNs = latencyNs;
  return out;
}

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
  }

  /** The client's response closed (its 'close'): unless it was answered whole, the client went away. */
  closed(): void {
    if (this.#res.writableFinished) return;
    this.#gone = true;
    this.#controller?.abort(new Error('the client closed its connection'));
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
    this.#emit(responseRecord(this.#base, this.#startMs, this.#start, code));
  }
}

const UPSTREAM_FAILED_AND_CLOSED = `HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: ${UPSTREAM_FAILED_BODY.length}\r\nconnection: close\r\n\r\n${UPSTREAM_FAILED_BODY}`;

/** Answers `response` on a connection Node's HTTP server has let go of, and drains it until the client closes. */
function answerAndClose(socket: net.Socket, lingerMs: number, response: string = DENIED_AND_CLOSED): void {
  socket.end(response);
  socket.resume();
  dropAfter(socket, lingerMs);
}

/**
 * A connection the proxy has answered for the last time and half-closed is dropped if its client
 * has not closed it `ms` later: a client that never closes must not hold one of the proxy's
 * connections (MAX_CONNECTIONS) for ever, as nothing else times out on a connection that left HTTP.
 */
function dropAfter(socket: net.Socket, ms: number): void {
  const timer = setTimeout(() => socket.destroy(), ms);
  timer.unref();
  socket.once('close', () => clearTimeout(timer));
}

/** An HTTP/1.1 response head with `res`'s status and `headers` (names and values alternating). */
function responseHead(res: http.IncomingMessage, headers: readonly string[]): string {
  let out = `HTTP/1.1 ${res.statusCode ?? 0} ${res.statusMessage ?? ''}\r\n`;
  for (let i = 0; i < headers.length; i += 2) out += `${headers[i]}: ${headers[i + 1]}\r\n`;
  return out + '\r\n';
}

/**
 * An upgraded client connection and its upstream made one byte stream: each side's bytes piped to
 * the other with backpressure (a tunnel holds no more than the streams' buffers), a half-close
 * passed on as a half-close, and an error or a side destroyed before it finished destroying both.
 * No idle timeout (Cilium's Envoy disables its stream idle timeout); TCP keep-alive finds dead peers.
 */
function splice(client: net.Socket, upstream: net.Socket): void {
  // The client connection came from a listener that closes on the peer's FIN.
  client.allowHalfOpen = true;
  client.setTimeout(0);
  client.setNoDelay(true);
  client.setKeepAlive(true, 60_000);
  for (const [from, to] of [
    [client, upstream],
    [upstream, client],
  ] as const) {
    from.on('error', () => undefined);
    from.once('close', (hadError: boolean) => {
      if (hadError || !to.writableEnded) to.destroy();
    });
    from.pipe(to);
  }
}

/** A client connection's forwarded requests in its order: whether one is upstream, and those waiting their turn. */
interface InOrderLine {
  active: boolean;
  waiting: (() => void)[];
}

/** `forward` runs now if nothing of the line is upstream, else when its turn comes. */
function joinLine(line: InOrderLine, forward: () => void): void {
  if (line.active) line.waiting.push(forward);
  else {
    line.active = true;
    forward();
  }
}

/** Per endpoint address: its entries with L7 rules, ready for lookups. */
function endpointRules(list: readonly { address: string; entries: PolicyMapEntry[] }[]): Map<string, EndpointRules> {
  const out = new Map<string, EndpointRules>();
  for (const p of list) out.set(p.address, { entries: new Map(p.entries.map((e) => [policyKeyString(e.key), e])), compiled: new WeakMap(), decided: new Map() });
  return out;
}

export class HttpProxy {
  /** The transparent listener; each connection goes to #server (HTTP/1.1) or #h2 by its first bytes. */
  readonly #front: net.Server;
  readonly #server: http.Server;
  readonly #h2: http2.Http2Server;
  readonly #h2Upstreams = new H2Upstreams();
  readonly #h2Sessions = new Set<http2.ServerHttp2Session>();
  /** Every client connection, whatever it speaks (or before it has said): closed with the proxy. */
  readonly #connections = new Set<net.Socket>();
  readonly #options: HttpProxyOptions;
  get #lingerMs(): number {
    return this.#options.lingerMs ?? 2_000;
  }
  #identities = new Map<string, number>();
  /** ciliate_proxy4, opened at the first client that is no local pod. */
  #origins: BpfMap<Proxy4Key, Proxy4Value> | undefined;
  /** What ciliate_proxy4 said of each connection from a client that is no local pod. */
  readonly #notedIdentities = new WeakMap<net.Socket, number | undefined>();
  /** By the destination's address: its ingress entries with L7 rules. */
  #rules = new Map<string, EndpointRules>();
  /** By the client's address: its egress entries with L7 rules. */
  #egressRules = new Map<string, EndpointRules>();
  /** Prefix length (longest first) → masked address → identity. */
  #prefixes: [number, Map<number, number>][] = [];
  readonly #agents = new Map<number, Agent>();
  /** The upstream connections of upgrade requests and of their tunnels: closed with the proxy. */
  readonly #tunnels = new Set<net.Socket>();
  /** Per client connection: its in-order line (joinLine). */
  readonly #inOrder = new WeakMap<net.Socket, InOrderLine>();

  constructor(options: HttpProxyOptions) {
    this.#options = options;
    this.#server = http.createServer({ requestTimeout: 60_000, headersTimeout: 15_000, keepAliveTimeout: 5_000 }, (req, res) => this.#handle(req, res));
    // CONNECT would leave HTTP after the judged request: refused. Upgrades are judged (#upgrade).
    this.#server.on('connect', (_req, socket: net.Socket) => answerAndClose(socket, this.#lingerMs));
    this.#server.on('upgrade', (req: http.IncomingMessage, socket: net.Socket, head: Buffer) => this.#upgrade(req, socket, head));
    this.#server.on('clientError', (_err, socket) => socket.destroy());
    this.#h2 = http2.createServer();
    this.#h2.on('stream', (stream, headers) => this.#handleStream(stream, headers));
    this.#h2.on('sessionError', () => undefined);
    this.#h2.on('session', (session) => {
      this.#h2Sessions.add(session);
      session.on('close', () => this.#h2Sessions.delete(session));
    });
    this.#front = net.createServer({ pauseOnConnect: true }, (socket) => {
      this.#connections.add(socket);
      socket.once('close', () => this.#connections.delete(socket));
      routeConnection(socket, this.#server, this.#h2);
    });
    this.#front.maxConnections = MAX_CONNECTIONS;
  }

  /** Replaces what requests are judged against. */
  setState(state: ProxyState): void {
    this.#identities = new Map(state.identities);
    this.#rules = endpointRules(state.policies);
    this.#egressRules = endpointRules(state.egress ?? []);
    const byLength = new Map<number, Map<number, number>>();
    for (const [cidr, identity] of state.prefixes ?? []) {
      const prefix = Prefix.tryParse(cidr);
      if (prefix === undefined || prefix.addr.family !== 4) continue;
      let table = byLength.get(prefix.bits);
      if (!table) byLength.set(prefix.bits, (table = new Map()));
      table.set(prefix.addr.toUint32(), identity);
    }
    this.#prefixes = [...byLength.entries()].sort((a, b) => b[0] - a[0]);
  }

  /** Listens (transparent) and resolves with the port. */
  async listen(): Promise<number> {
    const server = this.#front;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host: this.#options.host ?? '127.0.0.1', port: this.#options.port, exclusive: true }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    makeListenerTransparent(server);
    const port = (server.address() as AddressInfo).port;
    if (this.#options.listeners !== undefined) publishListener(this.#options.listeners, server, port);
    return port;
  }

  async close(): Promise<void> {
    this.#origins?.close();
    this.#origins = undefined;
    await Promise.all([...this.#agents.values()].map((a) => a.destroy()));
    this.#agents.clear();
    this.#h2Upstreams.close();
    for (const socket of this.#tunnels) socket.destroy();
    this.#server.closeAllConnections();
    for (const session of this.#h2Sessions) session.destroy();
    for (const socket of this.#connections) socket.destroy();
    await new Promise<void>((resolve) => this.#front.close(() => resolve()));
  }

  #agent(identity: number): Agent {
    const mark = proxyIngressMark(identity);
    let agent = this.#agents.get(mark);
    if (!agent) this.#agents.set(mark, (agent = markedAgent(mark)));
    return agent;
  }

  /**
   * One side's say on a request (the client's egress rules or the server's ingress rules): the
   * rule keys that allow it and their header edits; null: denied; undefined: no L7 entry of this
   * side applies (the datapath did not send the connection here for it). A rule the request
   * matches whole wins over one that would edit it; among those, the first in order decides.
   */
  #side(rules: EndpointRules | undefined, peer: number, direction: PolicyDirection, dport: number, view: HttpRequestView): Verdict | null | undefined {
    if (!rules) return undefined;
    // The datapath's own decision over the same entries (policy_can_access), so the proxy applies
    // exactly the entry that sent the connection here.
    const key = peer * 65_536 + dport;
    let entry = rules.decided.get(key);
    if (entry === undefined) rules.decided.set(key, (entry = lookupPolicy(rules.entries, peer, direction, 6, dport).entry ?? null));
    if (!entry) return undefined;
    if (entry.deny) return null;
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
    return allowed.length > 0 ? { ruleKeys: allowed, edits: edits ?? NO_EDITS } : null;
  }

  /**
   * Whether the request may go: the client's egress rules (when they sent it here) and the
   * destination's ingress rules (when it is a pod of this node with rules for the client) must
   * both allow it; with neither, it is denied (fail closed). `ruleKeys` undefined: denied, by the
   * side `direction` names.
   */
  #judge(srcIdentity: number | undefined, src: string, dst: string, dport: number, view: HttpRequestView): { direction: 'EGRESS' | 'INGRESS'; ruleKeys?: string[]; ingressRuleKeys?: string[]; edits: HeaderEdit[] } {
    const denied = (direction: 'EGRESS' | 'INGRESS') => ({ direction, edits: NO_EDITS });
    if (srcIdentity === undefined) return denied('INGRESS');
    const egress = this.#side(this.#egressRules.get(src), this.#identityOf(dst), PolicyDirection.EGRESS, dport, view);
    if (egress === null) return denied('EGRESS');
    const ingress = this.#side(this.#rules.get(dst), srcIdentity, PolicyDirection.INGRESS, dport, view);
    if (ingress === null || (egress === undefined && ingress === undefined)) return denied('INGRESS');
    if (egress === undefined) return { direction: 'INGRESS', ...ingress! };
    return { direction: 'EGRESS', ruleKeys: egress.ruleKeys, ingressRuleKeys: ingress?.ruleKeys, edits: ingress ? [...egress.edits, ...ingress.edits] : egress.edits };
  }

  /**
   * Who a client is: a pod of this node by its address; anyone else by the identity the datapath
   * noted when it handed this very connection (its 4-tuple) to the proxy, which for another node's
   * proxy is the client that node's VNI named. Undefined: unknown, denied.
   */
  #sourceIdentity(socket: net.Socket): number | undefined {
    const src = socket.remoteAddress ?? '';
    const pod = this.#identities.get(src);
    if (pod !== undefined || this.#options.origins === undefined) return pod;
    // Noted once per connection, at its SYN: read once per connection, not per request.
    if (this.#notedIdentities.has(socket)) return this.#notedIdentities.get(socket);
    let identity: number | undefined;
    try {
      this.#origins ??= BpfMap.openPinned(this.#options.origins, proxy4Key, proxy4Value);
      const noted = this.#origins.lookup({ saddr: src, sport: socket.remotePort ?? 0, nexthdr: IPPROTO_TCP });
      const same = noted && noted.orig_daddr === socket.localAddress && noted.orig_dport === socket.localPort;
      identity = same && noted.identity !== 0 ? noted.identity : undefined;
    } catch {
      // Unreadable: unknown, denied; asked again at the next request.
      return undefined;
    }
    this.#notedIdentities.set(socket, identity);
    return identity;
  }

  /** An address's identity as the datapath's ipcache names it: a pod's, a CIDR identity's, else world. */
  #identityOf(address: string): number {
    const pod = this.#identities.get(address);
    if (pod !== undefined) return pod;
    const value = parseIpv4(address);
    if (value === undefined) return WORLD;
    for (const [bits, prefixes] of this.#prefixes) {
      const found = prefixes.get(bits === 0 ? 0 : (value & ipv4Mask(bits)) >>> 0);
      if (found !== undefined) return found;
    }
    return WORLD;
  }

  /**
   * One request (of HTTP/1.1 or an HTTP/2 stream) placed and judged, its REQUEST record emitted:
   * DROPPED with the 403 the client gets (as Cilium's access log records a denial: `--http-status
   * 403` finds it), or FORWARDED with the rules that allowed it.
   */
  #admit(socket: net.Socket, request: HttpRequestView & { protocol: string }, startMs: number) {
    const dst = socket.localAddress ?? '';
    const dport = socket.localPort ?? 0;
    const src = socket.remoteAddress ?? '';
    const identity = this.#sourceIdentity(socket);
    const { method, path, host, protocol } = request;
    const base: RecordBase = {
      source: { address: src, port: socket.remotePort ?? 0, identity: identity ?? 0 },
      destination: { address: dst, port: dport, identity: this.#identityOf(dst) },
      method,
      url: `http://${host || dst}${path}`,
      protocol,
    };
    const verdict = this.#judge(identity, src, dst, dport, request);
    // Its response's record too: the flows of an exchange judged by the client's egress rules are egress.
    if (verdict.direction === 'EGRESS') base.direction = 'EGRESS';
    const judged = record('REQUEST', epochNs(startMs), verdict.ruleKeys ? 'FORWARDED' : 'DROPPED', base);
    if (!verdict.ruleKeys) judged.code = 403;
    else {
      judged.ruleKeys = verdict.ruleKeys;
      if (verdict.ingressRuleKeys) judged.ingressRuleKeys = verdict.ingressRuleKeys;
    }
    this.#options.emit(judged);
    return { identity, dst, dport, base, verdict };
  }

  #handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const start = performance.now();
    const startMs = Date.now();
    const socket = req.socket;
    const headers = req.headers;
    const path = req.url ?? '/';
    const method = req.method ?? '';
    const { identity, dst, dport, base, verdict } = this.#admit(socket, { method, path, host: headers.host ?? '', headers, protocol: `HTTP/${req.httpVersion}` }, startMs);
    if (!verdict.ruleKeys) {
      req.resume();
      res.writeHead(403, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(DENIED_BODY) }).end(DENIED_BODY);
      return;
    }
    // A request has a body only with a length or chunks (RFC 9112 6.3); it is streamed on.
    const hasBody = headers['content-length'] !== undefined || headers['transfer-encoding'] !== undefined;
    const exchange = new Exchange(res, this.#options.emit, base, startMs, start);
    const raw = forwardedHeaders(req.rawHeaders);
    let started = false;
    const forward = () => {
      started = true;
      this.#agent(identity!).dispatch(
        { origin: `http://${dst}:${dport}`, method, path, headers: verdict.edits.length === 0 ? raw : applyHeaderEdits(raw, verdict.edits), body: hasBody ? req : null },
        exchange,
      );
    };
    // Pipelined requests go upstream one after the other, as the client sent them on one
    // connection: a POST is done before the GET behind it is asked (RFC 9112 9.3.2). Node's server
    // emits a response's 'close' once it is written (or the client is gone), in the client's order.
    const queue = this.#line(socket);
    res.on('close', () => {
      exchange.closed();
      if (!started) {
        const at = queue.waiting.indexOf(forward);
        if (at >= 0) queue.waiting.splice(at, 1);
        return;
      }
      const next = queue.waiting.shift();
      if (next) next();
      else queue.active = false;
    });
    joinLine(queue, forward);
  }

  /** The in-order line of a client connection's forwarded requests. */
  #line(socket: net.Socket): InOrderLine {
    let line = this.#inOrder.get(socket);
    if (!line) this.#inOrder.set(socket, (line = { active: false, waiting: [] }));
    return line;
  }

  /**
   * An upgrade request (Node's server has handed over the connection, `head` the bytes read past
   * the request's head). Only `websocket`, as Cilium configures its Envoy (upgrade_configs:
   * websocket): judged as any request, then sent to the original destination on a marked
   * connection of its own; its 101 makes the two connections one byte stream, anything else is
   * relayed as a response and the connection closed. h2c and other upgrades are refused.
   */
  #upgrade(req: http.IncomingMessage, socket: net.Socket, head: Buffer): void {
    const upgrade = req.headers.upgrade ?? '';
    if (upgrade.trim().toLowerCase() !== 'websocket') {
      answerAndClose(socket, this.#lingerMs);
      return;
    }
    const start = performance.now();
    const startMs = Date.now();
    const method = req.method ?? '';
    const path = req.url ?? '/';
    const headers = req.headers;
    const { identity, dst, dport, base, verdict } = this.#admit(socket, { method, path, host: headers.host ?? '', headers, protocol: `HTTP/${req.httpVersion}` }, startMs);
    if (!verdict.ruleKeys) {
      answerAndClose(socket, this.#lingerMs);
      return;
    }
    const raw = forwardedHeaders(req.rawHeaders);
    const sent = [...(verdict.edits.length === 0 ? raw : applyHeaderEdits(raw, verdict.edits)), 'Connection', 'Upgrade', 'Upgrade', upgrade];
    const respond = (code: number) => this.#options.emit(responseRecord(base, startMs, start, code));
    const forward = () => {
      if (socket.destroyed) return;
      let up: http.ClientRequest;
      try {
        up = http.request({
          host: dst,
          port: dport,
          method,
          path,
          headers: sent,
          setHost: false,
          createConnection: () => {
            const upstream = markedConnection(proxyIngressMark(identity!), dst, dport, true);
            this.#tunnels.add(upstream);
            upstream.once('close', () => this.#tunnels.delete(upstream));
            return upstream;
          },
        });
      } catch {
        // A header the rule's edits made unsendable.
        respond(503);
        answerAndClose(socket, this.#lingerMs, UPSTREAM_FAILED_AND_CLOSED);
        return;
      }
      let answered = false;
      // The client gone before the answer: so is the upstream request.
      const gone = () => {
        if (!answered) up.destroy();
      };
      socket.once('close', gone);
      up.on('upgrade', (res: http.IncomingMessage, tunnel: net.Socket, upstreamHead: Buffer) => {
        answered = true;
        socket.off('close', gone);
        respond(res.statusCode ?? 0);
        const lines = [...forwardedHeaders(res.rawHeaders), 'Connection', 'Upgrade', 'Upgrade', res.headers.upgrade ?? upgrade];
        socket.write(responseHead(res, lines));
        if (upstreamHead.length > 0) socket.write(upstreamHead);
        if (head.length > 0) tunnel.write(head);
        splice(socket, tunnel);
      });
      up.on('response', (res: http.IncomingMessage) => {
        answered = true;
        socket.off('close', gone);
        respond(res.statusCode ?? 0);
        // Not switched: an ordinary response, the last on this connection (its parser is gone).
        socket.write(responseHead(res, [...forwardedHeaders(res.rawHeaders), 'Connection', 'close']));
        res.on('error', () => socket.destroy());
        socket.once('close', () => res.destroy());
        socket.once('finish', () => dropAfter(socket, this.#lingerMs));
        res.pipe(socket);
        socket.resume();
      });
      up.on('error', () => {
        if (answered || socket.destroyed) return;
        answered = true;
        respond(503);
        answerAndClose(socket, this.#lingerMs, UPSTREAM_FAILED_AND_CLOSED);
      });
      up.end();
    };
    // After the responses to what the client pipelined before it, as any request (#handle).
    joinLine(this.#line(socket), forward);
  }

  /** An HTTP/2 stream: judged as an HTTP/1.1 request is, then forwarded on a stream of the identity's upstream session, trailers (gRPC's status) included. */
  #handleStream(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): void {
    const start = performance.now();
    const startMs = Date.now();
    const socket = stream.session?.socket;
    if (!socket) {
      stream.close(http2.constants.NGHTTP2_REFUSED_STREAM);
      return;
    }
    // A client's reset of the stream is its business: the upstream stream goes with it (on close).
    stream.on('error', () => undefined);
    const request = { method: String(headers[':method'] ?? ''), path: String(headers[':path'] ?? '/'), host: String(headers[':authority'] ?? headers.host ?? ''), headers, protocol: 'HTTP/2' };
    const { identity, dst, dport, base, verdict } = this.#admit(socket, request, startMs);
    const answer = (code: number, body: string) => {
      if (stream.destroyed || stream.headersSent) return;
      stream.respond({ ':status': code, 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body) });
      stream.end(body);
    };
    if (!verdict.ruleKeys) {
      stream.resume();
      answer(403, DENIED_BODY);
      return;
    }
    const respondRecord = (code: number) => this.#options.emit(responseRecord(base, startMs, start, code));
    let up: http2.ClientHttp2Stream;
    try {
      up = this.#h2Upstreams.session(proxyIngressMark(identity!), dst, dport).request(h2RequestHeaders(headers, verdict.edits));
    } catch {
      respondRecord(503);
      answer(503, UPSTREAM_FAILED_BODY);
      return;
    }
    let trailers: http2.OutgoingHttpHeaders = {};
    up.on('response', (responseHeaders) => {
      respondRecord(Number(responseHeaders[':status'] ?? 0));
      if (!stream.destroyed) stream.respond(h2ResponseHeaders(responseHeaders), { waitForTrailers: true });
    });
    up.on('trailers', (received) => (trailers = h2ResponseHeaders(received)));
    stream.on('wantTrailers', () => stream.sendTrailers(trailers));
    up.on('error', () => {
      if (!stream.headersSent) {
        respondRecord(503);
        answer(503, UPSTREAM_FAILED_BODY);
      } else if (!stream.destroyed) stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
    });
    stream.on('close', () => {
      if (!up.closed) up.close(http2.constants.NGHTTP2_CANCEL);
    });
    stream.pipe(up);
    up.pipe(stream);
  }
}
