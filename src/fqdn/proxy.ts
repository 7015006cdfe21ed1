/**
 * The DNS proxy: a query an endpoint sent to its resolver comes here (with the resolver it was
 * addressed to), is checked against the endpoint's DNS rules, and is either answered at once
 * (REFUSED, or NXDOMAIN if so configured, as Cilium's `tofqdns-dns-reject-response-code`) or
 * forwarded to that resolver, whose answer goes back byte for byte once the addresses it holds are
 * learned (the caller's `learned` hook resolves when the policy allows them, so the pod's first SYN
 * after the answer is never dropped).
 *
 * Wire format by `dns-packet` (Node has a resolver but no DNS message codec). Hostile input is the
 * rule: a query must be one question; an upstream answer counts only if it comes from the resolver
 * (a connected socket per resolver), carries the random id the proxy gave the query and the
 * query's question, and only the addresses of the question's name and its CNAME chain are
 * learned. In-flight forwards are bounded; past the bound a query gets SERVFAIL at once.
 * @module
 */
import { randomInt } from 'node:crypto';
import { createSocket, type Socket } from 'node:dgram';
import { connect, Socket as TcpSocket } from 'node:net';
import { markDatagramSocket, markedTcpSocket } from '../proxy/index.ts';
import { decode, encode, RECURSION_AVAILABLE, RECURSION_DESIRED, type Answer, type DecodedPacket, type Packet } from 'dns-packet';
import { Addr } from '../net/index.ts';
import { normalizeDnsName } from '../policy/index.ts';
import type { AnswerAddress } from './cache.ts';

/** DNS response codes the proxy answers with itself (RFC 1035 §4.1.1). */
export const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, REFUSED: 5 } as const;
export type RejectResponseCode = 'refused' | 'nameError';

export interface Resolver {
  address: string;
  port: number;
}

export interface DnsQuery {
  /** The endpoint that asked. */
  endpoint: number;
  /** The resolver the endpoint addressed (the packet's original destination). */
  resolver: Resolver;
  protocol: 'UDP' | 'TCP';
  /** The DNS message as the endpoint sent it. */
  payload: Uint8Array;
  /**
   * SO_MARK for the forward to the resolver: the endpoint's identity in the node proxy's mark
   * (bpf/lib/proxy.h), so a resolver pod on this node judges the query as the endpoint's, as the
   * datapath did when it redirected it. Absent: the node's own.
   */
  upstreamMark?: number;
}

/** What became of a query: what a DNS flow would show. */
export interface DnsOutcome {
  /** The DNS message for the endpoint; absent when the query was too broken to answer. */
  response?: Buffer;
  verdict: 'forwarded' | 'denied' | 'error';
  /** The question's name (lower case, no trailing dot), when there was one. */
  name?: string;
  qtype?: string;
  rcode: number;
  /** Addresses learned from the answer. */
  learned: AnswerAddress[];
  /** A forwarded query: what the resolver's answer held. */
  answer?: AnswerDetails;
  reason?: string;
}

export interface DnsProxyOptions {
  /** May `endpoint` ask `resolver` over `protocol` about `name`? (A promise when the answer is kept elsewhere.) */
  allows(endpoint: number, resolver: Resolver, protocol: 'UDP' | 'TCP', name: string): boolean | Promise<boolean>;
  /** The addresses an answer for `endpoint` holds; the answer waits for the returned promise. */
  learned(endpoint: number, addresses: AnswerAddress[]): Promise<void> | void;
  rejectResponseCode?: RejectResponseCode;
  /** Milliseconds to wait for the resolver's answer; then the endpoint gets SERVFAIL. */
  forwardTimeoutMs?: number;
  /** Forwards at once; past it a query gets SERVFAIL. */
  maxInFlight?: number;
  /**
   * Forwards of one endpoint at once (default: a quarter of maxInFlight): a pod flooding a silent
   * resolver fills its own share, never the whole proxy, and other pods keep resolving.
   */
  maxInFlightPerEndpoint?: number;
}

const DEFAULT_FORWARD_TIMEOUT_MS = 5_000;
const DEFAULT_MAX_IN_FLIGHT = 4_096;

/** A response to `query` with no records and `rcode`. */
function reply(query: DecodedPacket, rcode: number): Buffer {
  const packet: Packet = {
    type: 'response',
    id: query.id,
    flags: ((query.flags ?? 0) & RECURSION_DESIRED) | RECURSION_AVAILABLE | rcode,
    questions: query.questions,
  };
  return encode(packet);
}

function tryDecode(bytes: Uint8Array): DecodedPacket | undefined {
  try {
    return decode(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
  } catch {
    return undefined;
  }
}

/**
 * The addresses of `name` in `answers`, through its CNAME chain: each A/AAAA is learned under
 * the name it answers for and under the question's name (toFQDNs selects by either).
 */
export function answerAddresses(name: string, answers: readonly Answer[]): AnswerAddress[] {
  const chain = cnameChain(name, answers);
  const out: AnswerAddress[] = [];
  for (const a of answers) {
    if ((a.type !== 'A' && a.type !== 'AAAA') || typeof a.data !== 'string') continue;
    const owner = normalizeDnsName(a.name);
    if (!chain.has(owner) || Addr.tryParse(a.data) === undefined) continue;
    const ttl = a.ttl ?? 0;
    out.push({ name, ip: a.data, ttl });
    if (owner !== name) out.push({ name: owner, ip: a.data, ttl });
  }
  return out;
}

/**
 * A name as a flow shows it: fully qualified, with every byte outside printable ASCII (and the
 * backslash) as `\DDD`, as miekg/dns presents names. A pod chooses its query names: raw, a newline
 * in one would forge a line of `ciliate observe`.
 */
export function presentationName(name: string): string {
  const escaped = name.replace(/[^\x21-\x5b\x5d-\x7e]/gu, (c) => [...Buffer.from(c)].map((b) => `\\${String(b).padStart(3, '0')}`).join(''));
  return `${escaped}.`;
}

/** What a DNS flow shows of an answer: the records of the question's name and its CNAME chain. */
export interface AnswerDetails {
  ips: string[];
  /** CNAME targets, fully qualified (`a.example.com.`). */
  cnames: string[];
  rrtypes: string[];
  /** The lowest TTL of those records; 0 when there are none. */
  ttl: number;
}

/** The addresses, CNAMEs, record types and lowest TTL of `name`'s records in `answers`, as Cilium's DNS proxy logs an answer. */
export function answerDetails(name: string, answers: readonly Answer[]): AnswerDetails {
  const chain = cnameChain(name, answers);
  const out: AnswerDetails = { ips: [], cnames: [], rrtypes: [], ttl: 0 };
  let ttl: number | undefined;
  for (const a of answers) {
    if (!chain.has(normalizeDnsName(a.name))) continue;
    if ((a.type === 'A' || a.type === 'AAAA') && typeof a.data === 'string' && Addr.tryParse(a.data) !== undefined) out.ips.push(a.data);
    else if (a.type === 'CNAME' && typeof a.data === 'string') out.cnames.push(presentationName(normalizeDnsName(a.data)));
    else continue;
    out.rrtypes.push(a.type);
    ttl = Math.min(ttl ?? Infinity, a.ttl ?? 0);
  }
  out.ttl = ttl ?? 0;
  return out;
}

/** A forwarded query's outcome from its answer: the addresses to learn, what a flow shows, the rcode. */
export function answeredOutcome(name: string, qtype: string, packet: DecodedPacket): DnsOutcome {
  const answers = packet.answers ?? [];
  return { verdict: 'forwarded', name, qtype, rcode: (packet.flags ?? 0) & 0xf, learned: answerAddresses(name, answers), answer: answerDetails(name, answers) };
}

/** Why a forwarded query got SERVFAIL: its resolver did not answer in time. */
export function noAnswerReason(resolver: Resolver, timeoutMs: number): string {
  return `no answer from ${resolver.address}:${resolver.port} within ${timeoutMs} ms`;
}

/** `name` and the names its CNAMEs in `answers` lead to. */
function cnameChain(name: string, answers: readonly Answer[]): Set<string> {
  const chain = new Set([name]);
  // CNAMEs may come in any order; follow until nothing new joins the chain.
  for (let grown = true; grown; ) {
    grown = false;
    for (const a of answers) {
      if (a.type === 'CNAME' && chain.has(normalizeDnsName(a.name)) && typeof a.data === 'string' && !chain.has(normalizeDnsName(a.data))) {
        chain.add(normalizeDnsName(a.data));
        grown = true;
      }
    }
  }
  return chain;
}

/** Resolvers with a socket open at once; past it idle ones are closed. */
const MAX_UPSTREAMS = 256;

interface Pending {
  /** The endpoint's own id, put back into the answer. */
  id: number;
  name: string;
  type: string;
  done(answer: { bytes: Buffer; packet: DecodedPacket } | undefined): void;
}

/**
 * One resolver's socket, shared by every query to it (as Cilium's shared DNS client): a socket per
 * query costs a socket, a bind and a close each, which 10k queries/s cannot afford. Each query
 * goes out under a fresh random id of this socket's (the endpoint's id is put back into the
 * answer), so concurrent queries never collide; the socket is connected, so the kernel drops
 * datagrams from any other address; an answer counts only with a pending id and its question.
 */
class Upstream {
  readonly #socket: Socket;
  readonly #pending = new Map<number, Pending>();
  #closed = false;
  #connected = false;
  #queued: Array<() => void> = [];

  readonly #mark: number | undefined;

  constructor(resolver: Resolver, mark?: number) {
    this.#mark = mark;
    this.#socket = createSocket(Addr.tryParse(resolver.address)?.family === 6 ? 'udp6' : 'udp4');
    this.#socket.on('error', () => this.close());
    this.#socket.on('message', (bytes) => this.#onMessage(bytes));
    this.#socket.connect(resolver.port, resolver.address, () => this.#markConnected());
    // A query's own timer keeps the process alive while it waits; an idle socket should not.
    this.#socket.unref();
  }

  get closed(): boolean {
    return this.#closed;
  }

  get idle(): boolean {
    return this.#pending.size === 0;
  }

  exchange(payload: Uint8Array, message: DecodedPacket, timeoutMs: number): Promise<{ bytes: Buffer; packet: DecodedPacket } | undefined> {
    // At most half the id space in flight, so a free id is found in a few draws.
    if (this.#closed || this.#pending.size >= 0x8000) return Promise.resolve(undefined);
    let id: number;
    do id = randomInt(0x10000);
    while (this.#pending.has(id));
    const question = message.questions![0];
    const out = Buffer.from(payload);
    out.writeUInt16BE(id, 0);
    return new Promise((resolve) => {
      const timer = setTimeout(() => finish(undefined), timeoutMs);
      const finish = (answer: { bytes: Buffer; packet: DecodedPacket } | undefined) => {
        clearTimeout(timer);
        if (this.#pending.get(id) === entry) this.#pending.delete(id);
        resolve(answer);
      };
      const entry: Pending = { id: message.id ?? 0, name: normalizeDnsName(question.name), type: question.type, done: finish };
      this.#pending.set(id, entry);
      const send = () => this.#socket.send(out, (error) => error && finish(undefined));
      // Until connect() completes, sends wait for it.
      if (this.#connected) send();
      else this.#queued.push(send);
    });
  }

  #onMessage(bytes: Buffer): void {
    if (!this.#connected) return;
    const packet = tryDecode(bytes);
    if (packet === undefined || packet.type !== 'response' || packet.id === undefined) return;
    const entry = this.#pending.get(packet.id);
    const q = packet.questions?.[0];
    // Anything else is a spoof or a stray: ignored, the query's wait goes on.
    if (entry === undefined || packet.questions?.length !== 1 || q === undefined || normalizeDnsName(q.name) !== entry.name || q.type !== entry.type) return;
    this.#pending.delete(packet.id);
    bytes.writeUInt16BE(entry.id, 0);
    packet.id = entry.id;
    entry.done({ bytes, packet });
  }

  /** After connect(): sends queued meanwhile go out, with the socket's mark set first. */
  #markConnected(): void {
    if (this.#mark !== undefined) {
      try {
        markDatagramSocket(this.#socket, this.#mark);
      } catch {
        // Unmarked, a query would pass as the node's: none goes out.
        this.close();
        return;
      }
    }
    this.#connected = true;
    for (const send of this.#queued.splice(0)) send();
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const entry of [...this.#pending.values()]) entry.done(undefined);
    this.#pending.clear();
    this.#queued = [];
    this.#socket.close();
  }
}

/** Takes one off a per-endpoint count, forgetting the endpoint at zero (the maps stay as small as what is open). */
export function countDown(counts: Map<number, number>, endpoint: number): void {
  const left = (counts.get(endpoint) ?? 1) - 1;
  if (left > 0) counts.set(endpoint, left);
  else counts.delete(endpoint);
}

/** A DNS message as TCP carries it (RFC 7766): its length in two bytes, then the message. */
export function tcpFrame(message: Uint8Array): Buffer {
  const framed = Buffer.alloc(2 + message.length);
  framed.writeUInt16BE(message.length, 0);
  framed.set(message, 2);
  return framed;
}

/**
 * One query over a connection of its own to the resolver (RFC 7766 framing: a two-byte length
 * before each message); the answer counts only with the query's id and question.
 */
function exchangeOverTcp(resolver: Resolver, payload: Uint8Array, message: DecodedPacket, timeoutMs: number, mark?: number): Promise<{ bytes: Buffer; packet: DecodedPacket } | undefined> {
  const question = message.questions![0];
  return new Promise((resolve) => {
    let socket: TcpSocket;
    try {
      socket = mark === undefined ? connect({ host: resolver.address, port: resolver.port }) : new TcpSocket({ fd: markedTcpSocket(mark), readable: true, writable: true }).connect(resolver.port, resolver.address);
    } catch {
      resolve(undefined);
      return;
    }
    let received = Buffer.alloc(0);
    const finish = (answer: { bytes: Buffer; packet: DecodedPacket } | undefined) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(answer);
    };
    const timer = setTimeout(() => finish(undefined), timeoutMs);
    socket.on('error', () => finish(undefined));
    socket.on('close', () => finish(undefined));
    socket.on('connect', () => socket.write(tcpFrame(payload)));
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      if (received.length < 2 || received.length < 2 + received.readUInt16BE(0)) return;
      const bytes = Buffer.from(received.subarray(2, 2 + received.readUInt16BE(0)));
      const packet = tryDecode(bytes);
      const q = packet?.questions?.[0];
      const matches = packet?.type === 'response' && packet.id === message.id && packet.questions?.length === 1 && q !== undefined && normalizeDnsName(q.name) === normalizeDnsName(question.name) && q.type === question.type;
      finish(matches ? { bytes, packet: packet! } : undefined);
    });
  });
}

export class DnsProxy {
  readonly #options: DnsProxyOptions;
  readonly #rejectCode: number;
  readonly #timeoutMs: number;
  readonly #maxInFlight: number;
  readonly #maxPerEndpoint: number;
  #inFlight = 0;
  readonly #inFlightByEndpoint = new Map<number, number>();
  readonly #upstreams = new Map<string, Upstream>();
  readonly #stats = { forwarded: 0, denied: 0, errors: 0 };

  constructor(options: DnsProxyOptions) {
    this.#options = options;
    this.#rejectCode = options.rejectResponseCode === 'nameError' ? RCODE.NXDOMAIN : RCODE.REFUSED;
    this.#timeoutMs = options.forwardTimeoutMs ?? DEFAULT_FORWARD_TIMEOUT_MS;
    this.#maxInFlight = options.maxInFlight ?? DEFAULT_MAX_IN_FLIGHT;
    this.#maxPerEndpoint = options.maxInFlightPerEndpoint ?? Math.max(1, Math.floor(this.#maxInFlight / 4));
  }

  /** Queries by outcome since the proxy started. */
  get stats(): Readonly<{ forwarded: number; denied: number; errors: number; inFlight: number }> {
    return { ...this.#stats, inFlight: this.#inFlight };
  }

  /** Answers one query: denied, forwarded, or an error answer (FORMERR, SERVFAIL). */
  async handle(query: DnsQuery): Promise<DnsOutcome> {
    const message = tryDecode(query.payload);
    if (message === undefined || message.type !== 'query') {
      this.#stats.errors++;
      return { verdict: 'error', rcode: RCODE.FORMERR, learned: [], reason: message === undefined ? 'not a DNS message' : 'a response, not a query' };
    }
    const questions = message.questions ?? [];
    if (questions.length !== 1) {
      this.#stats.errors++;
      return { response: reply(message, RCODE.FORMERR), verdict: 'error', rcode: RCODE.FORMERR, learned: [], reason: `${questions.length} questions (one is asked at a time)` };
    }
    const name = normalizeDnsName(questions[0].name);
    const qtype = questions[0].type;
    const allows = this.#options.allows(query.endpoint, query.resolver, query.protocol, name);
    if (!(typeof allows === 'boolean' ? allows : await allows)) {
      this.#stats.denied++;
      return { response: reply(message, this.#rejectCode), verdict: 'denied', name, qtype, rcode: this.#rejectCode, learned: [] };
    }
    const own = this.#inFlightByEndpoint.get(query.endpoint) ?? 0;
    if (this.#inFlight >= this.#maxInFlight || own >= this.#maxPerEndpoint) {
      this.#stats.errors++;
      const reason = own >= this.#maxPerEndpoint ? `${own} queries of endpoint ${query.endpoint} in flight` : `${this.#maxInFlight} queries in flight`;
      return { response: reply(message, RCODE.SERVFAIL), verdict: 'error', name, qtype, rcode: RCODE.SERVFAIL, learned: [], reason };
    }
    this.#inFlight++;
    this.#inFlightByEndpoint.set(query.endpoint, own + 1);
    try {
      const answer = await this.#forward(query, message);
      if (answer === undefined) {
        this.#stats.errors++;
        return { response: reply(message, RCODE.SERVFAIL), verdict: 'error', name, qtype, rcode: RCODE.SERVFAIL, learned: [], reason: noAnswerReason(query.resolver, this.#timeoutMs) };
      }
      const outcome = answeredOutcome(name, qtype, answer.packet);
      if (outcome.learned.length > 0) {
        try {
          await this.#options.learned(query.endpoint, outcome.learned);
        } catch (error) {
          // Addresses the policy could not take: answered, the pod's connection would be dropped.
          this.#stats.errors++;
          return { response: reply(message, RCODE.SERVFAIL), verdict: 'error', name, qtype, rcode: RCODE.SERVFAIL, learned: [], reason: `allowing the answer's addresses failed: ${(error as Error).message}` };
        }
      }
      this.#stats.forwarded++;
      return { ...outcome, response: answer.bytes };
    } finally {
      this.#inFlight--;
      countDown(this.#inFlightByEndpoint, query.endpoint);
    }
  }

  /** Sends the query to the resolver and waits for its matching answer (or the timeout). */
  #forward(query: DnsQuery, message: DecodedPacket): Promise<{ bytes: Buffer; packet: DecodedPacket } | undefined> {
    // Over TCP as asked: a client on TCP is usually after an answer too big for a datagram.
    if (query.protocol === 'TCP') return exchangeOverTcp(query.resolver, query.payload, message, this.#timeoutMs, query.upstreamMark);
    // A socket per resolver and mark: whom the query is asked for is the socket's, not the datagram's.
    const key = `${query.resolver.address}|${query.resolver.port}|${query.upstreamMark ?? ''}`;
    let upstream = this.#upstreams.get(key);
    if (upstream === undefined || upstream.closed) {
      this.#pruneUpstreams();
      upstream = new Upstream(query.resolver, query.upstreamMark);
      this.#upstreams.set(key, upstream);
    }
    return upstream.exchange(query.payload, message, this.#timeoutMs);
  }

  /** Past MAX_UPSTREAMS resolvers, the idle ones' sockets are closed (endpoints choose resolvers). */
  #pruneUpstreams(): void {
    if (this.#upstreams.size < MAX_UPSTREAMS) return;
    for (const [key, upstream] of this.#upstreams) {
      if (upstream.idle) {
        upstream.close();
        this.#upstreams.delete(key);
      }
    }
  }

  /** Closes the sockets of forwards in flight (their queries get SERVFAIL). */
  close(): void {
    for (const upstream of this.#upstreams.values()) upstream.close();
    this.#upstreams.clear();
  }
}
