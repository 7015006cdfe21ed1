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
 * on the proxy's own socket for this query (a fresh, connected socket on a random port), carries
 * the query's id and question, and only the addresses of the question's name and its CNAME chain
 * are learned. In-flight forwards are bounded; past the bound a query gets SERVFAIL at once.
 * @module
 */
import { createSocket, type Socket } from 'node:dgram';
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
  reason?: string;
}

export interface DnsProxyOptions {
  /** May `endpoint` ask `resolver` over `protocol` about `name`? */
  allows(endpoint: number, resolver: Resolver, protocol: 'UDP' | 'TCP', name: string): boolean;
  /** The addresses an answer for `endpoint` holds; the answer waits for the returned promise. */
  learned(endpoint: number, addresses: AnswerAddress[]): Promise<void> | void;
  rejectResponseCode?: RejectResponseCode;
  /** Milliseconds to wait for the resolver's answer; then the endpoint gets SERVFAIL. */
  forwardTimeoutMs?: number;
  /** Forwards at once; past it a query gets SERVFAIL. */
  maxInFlight?: number;
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

export class DnsProxy {
  readonly #options: DnsProxyOptions;
  readonly #rejectCode: number;
  readonly #timeoutMs: number;
  readonly #maxInFlight: number;
  #inFlight = 0;
  readonly #sockets = new Set<Socket>();
  readonly #stats = { forwarded: 0, denied: 0, errors: 0 };

  constructor(options: DnsProxyOptions) {
    this.#options = options;
    this.#rejectCode = options.rejectResponseCode === 'nameError' ? RCODE.NXDOMAIN : RCODE.REFUSED;
    this.#timeoutMs = options.forwardTimeoutMs ?? DEFAULT_FORWARD_TIMEOUT_MS;
    this.#maxInFlight = options.maxInFlight ?? DEFAULT_MAX_IN_FLIGHT;
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
    if (!this.#options.allows(query.endpoint, query.resolver, query.protocol, name)) {
      this.#stats.denied++;
      return { response: reply(message, this.#rejectCode), verdict: 'denied', name, qtype, rcode: this.#rejectCode, learned: [] };
    }
    if (this.#inFlight >= this.#maxInFlight) {
      this.#stats.errors++;
      return { response: reply(message, RCODE.SERVFAIL), verdict: 'error', name, qtype, rcode: RCODE.SERVFAIL, learned: [], reason: `${this.#maxInFlight} queries in flight` };
    }
    this.#inFlight++;
    try {
      const answer = await this.#forward(query, message);
      if (answer === undefined) {
        this.#stats.errors++;
        return { response: reply(message, RCODE.SERVFAIL), verdict: 'error', name, qtype, rcode: RCODE.SERVFAIL, learned: [], reason: `no answer from ${query.resolver.address}:${query.resolver.port} within ${this.#timeoutMs} ms` };
      }
      const learned = answerAddresses(name, answer.packet.answers ?? []);
      if (learned.length > 0) await this.#options.learned(query.endpoint, learned);
      this.#stats.forwarded++;
      return { response: answer.bytes, verdict: 'forwarded', name, qtype, rcode: answer.packet.flags === undefined ? 0 : answer.packet.flags & 0xf, learned };
    } finally {
      this.#inFlight--;
    }
  }

  /** Sends the query to the resolver and waits for its matching answer (or the timeout). */
  #forward(query: DnsQuery, message: DecodedPacket): Promise<{ bytes: Buffer; packet: DecodedPacket } | undefined> {
    const family = Addr.tryParse(query.resolver.address)?.family === 6 ? 'udp6' : 'udp4';
    const socket = createSocket(family);
    this.#sockets.add(socket);
    const question = message.questions![0];
    return new Promise((resolve) => {
      let settled = false;
      const done = (value: { bytes: Buffer; packet: DecodedPacket } | undefined) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.#sockets.delete(socket);
        socket.close();
        resolve(value);
      };
      const timer = setTimeout(() => done(undefined), this.#timeoutMs);
      socket.on('error', () => done(undefined));
      socket.on('message', (bytes) => {
        const packet = tryDecode(bytes);
        // Anything else on this socket is a spoof or a stray: ignored, the wait goes on.
        if (packet === undefined || packet.type !== 'response' || packet.id !== message.id) return;
        const q = packet.questions?.[0];
        if (packet.questions?.length !== 1 || q === undefined || normalizeDnsName(q.name) !== normalizeDnsName(question.name) || q.type !== question.type) return;
        done({ bytes, packet });
      });
      // connect(): the kernel drops datagrams from any other address and port.
      socket.connect(query.resolver.port, query.resolver.address, () => {
        socket.send(query.payload, (error) => {
          if (error) done(undefined);
        });
      });
    });
  }

  /** Closes the sockets of forwards in flight (their queries get SERVFAIL). */
  close(): void {
    for (const socket of this.#sockets) socket.emit('error', new Error('DNS proxy closed'));
  }
}
