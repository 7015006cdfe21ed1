/**
 * The DNS proxy's fast path (src/fqdn/native/dns_fastpath.c, built by scripts/build-native.sh):
 * a native thread that owns the pod DNS listener and answers, with no JavaScript on the way, the
 * UDP queries whose verdict (and answered addresses) the JavaScript proxy has already decided in
 * the current epoch. Everything else it hands to the worker's listener on a loopback socket, and
 * the worker teaches it what it decided (`allow`, `learned`). Its answers' flows come back through
 * `drainBytes()`, and become outcomes in the agent (`fastFlowOutcome`).
 * @module
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { decode } from 'dns-packet';
import { Addr } from '../net/index.ts';
import { normalizeDnsName } from '../policy/index.ts';
import { answeredOutcome, noAnswerReason, RCODE, type DnsOutcome } from './proxy.ts';

interface FastPathAddon {
  start(options: { host: string; port: number; handoffPort: number; epoch: Int32Array; proxy4Pin: string; rate: number; timeoutMs: number; maxInFlight: number; realtimeBudget: number }): void;
  stop(): void;
  sourcePort(): number;
  allow(source: string, resolver: string, resolverPort: number, name: string, endpoint: number, mark: number, allowed: boolean, rcode: number, epoch: number): void;
  learned(source: string, name: string, ip: Buffer, remainingMs: number, epoch: number): void;
  drain(): Buffer | null;
  counters(): number[];
  layout(): number[];
}

const ADDON_PATH = join(import.meta.dirname, '..', '..', 'build', 'native', 'dns_fastpath.node');

let loaded: FastPathAddon | undefined;
function addon(): FastPathAddon {
  if (loaded) return loaded;
  if (!existsSync(ADDON_PATH)) throw new Error(`the DNS fast path addon is not built (${ADDON_PATH}): run npm run build`);
  loaded = createRequire(import.meta.url)(ADDON_PATH) as FastPathAddon;
  return loaded;
}

/** The fast path's counts, in the addon's order. */
export const FAST_COUNTERS = [
  /** Datagrams the listener received (all of them: the fast path owns it). */
  'fastDatagrams',
  'fastForwarded',
  'fastDenied',
  /** Forwards the resolver did not answer in time (answered SERVFAIL). */
  'fastTimeouts',
  /** Datagrams given to the worker's JavaScript path. */
  'handedOff',
  'fastRateLimited',
  'fastNoOriginalDestination',
  'fastSendFailures',
  /** Flow records dropped because the worker had not drained them. */
  'fastFlowsLost',
  'fastInFlight',
  /** 1 while the thread runs realtime (SCHED_FIFO), else 0. */
  'fastRealtime',
  /** Times the thread went past its realtime budget and ran as an ordinary thread for a second. */
  'fastRealtimeBackoffs',
] as const;
export type FastCounter = (typeof FAST_COUNTERS)[number];

/** How a flow record of the fast path came about. */
export const FastFlowKind = { FORWARDED: 1, DENIED: 2, TIMEOUT: 3 } as const;

/** struct flow_header (dns_fastpath.c), then the response as the pod got it. */
export const FLOW_HEADER_SIZE = 40;

export interface FastFlow {
  kind: (typeof FastFlowKind)[keyof typeof FastFlowKind];
  sourcePort: number;
  endpoint: number;
  source: string;
  resolver: string;
  resolverPort: number;
  requestNs: string;
  responseNs: string;
  response: Buffer;
}

const ipv4At = (b: Buffer, o: number): string => Addr.fromBytes(b.subarray(o, o + 4)).toString();

/** The outcome of a query the fast path answered, as the JavaScript proxy reports its own; undefined for a response too broken to have a question. */
export function fastFlowOutcome(flow: FastFlow, forwardTimeoutMs: number): DnsOutcome | undefined {
  let packet;
  try {
    packet = decode(flow.response);
  } catch {
    return undefined;
  }
  const question = packet.questions?.[0];
  if (question === undefined) return undefined;
  const name = normalizeDnsName(question.name);
  switch (flow.kind) {
    case FastFlowKind.FORWARDED:
      return answeredOutcome(name, question.type, packet);
    case FastFlowKind.DENIED:
      return { verdict: 'denied', name, qtype: question.type, rcode: (packet.flags ?? 0) & 0xf, learned: [] };
    default:
      return { verdict: 'error', name, qtype: question.type, rcode: RCODE.SERVFAIL, learned: [], reason: noAnswerReason({ address: flow.resolver, port: flow.resolverPort }, forwardTimeoutMs) };
  }
}

/** Splits what drainBytes() returned into records. */
export function parseFastFlows(records: Uint8Array): FastFlow[] {
  const bytes = Buffer.from(records.buffer, records.byteOffset, records.byteLength);
  const out: FastFlow[] = [];
  for (let o = 0; o + FLOW_HEADER_SIZE <= bytes.length; ) {
    const length = bytes.readUInt32LE(o);
    if (length < FLOW_HEADER_SIZE || o + length > bytes.length) break;
    out.push({
      kind: bytes[o + 4] as FastFlow['kind'],
      sourcePort: bytes.readUInt16LE(o + 6),
      endpoint: bytes.readUInt32LE(o + 8),
      source: ipv4At(bytes, o + 12),
      resolver: ipv4At(bytes, o + 16),
      resolverPort: bytes.readUInt16LE(o + 20),
      requestNs: bytes.readBigUInt64LE(o + 24).toString(),
      responseNs: bytes.readBigUInt64LE(o + 32).toString(),
      response: bytes.subarray(o + FLOW_HEADER_SIZE, o + length),
    });
    o += length;
  }
  return out;
}

export interface FastPathOptions {
  host: string;
  port: number;
  /** The worker's handoff socket (127.0.0.1). */
  handoffPort: number;
  /** The agent's epochs, EPOCH_ALL and EPOCH_TOLD (Int32Array[2] over its SharedArrayBuffer). */
  epoch: Int32Array;
  proxy4Pin: string;
  /** Queries a second per endpoint; 0: none. */
  rate: number;
  timeoutMs: number;
  maxInFlight: number;
  /**
   * Percent of one CPU the thread may use as a realtime (SCHED_FIFO) thread; past it, it is an
   * ordinary thread for a second. 0: always ordinary.
   */
  realtimeBudget: number;
}

/** The one fast path of the process (the addon keeps one thread). */
export class DnsFastPath {
  readonly #addon: FastPathAddon;
  #running = false;

  private constructor(a: FastPathAddon) {
    this.#addon = a;
  }

  /** Binds the listener and starts the thread; throws (with the errno as code) when it cannot. */
  static start(options: FastPathOptions): DnsFastPath {
    const a = addon();
    a.start(options);
    const fast = new DnsFastPath(a);
    fast.#running = true;
    return fast;
  }

  /** The sizes the addon was built with: ciliate_proxy4's key and value, and a flow header. */
  static layout(): { proxy4Key: number; proxy4Value: number; flowHeader: number } {
    const [proxy4Key, proxy4Value, flowHeader] = addon().layout();
    return { proxy4Key, proxy4Value, flowHeader };
  }

  /** Where the handoffs come from: the worker takes datagrams on its handoff socket from this port only. */
  get sourcePort(): number {
    return this.#addon.sourcePort();
  }

  /** What the JavaScript proxy decided for (source, resolver, name) in `epoch`. */
  allow(source: string, resolver: { address: string; port: number }, name: string, decision: { endpoint: number; mark: number; allowed: boolean; rcode: number }, epoch: number): void {
    if (!this.#running || Addr.tryParse(resolver.address)?.family !== 4) return;
    this.#addon.allow(source, resolver.address, resolver.port, name, decision.endpoint, decision.mark, decision.allowed, decision.rcode, epoch);
  }

  /** `ip`, answered for (source, name), is allowed by the agent for `remainingMs` more (as of EPOCH_TOLD `epoch`). */
  learned(source: string, name: string, ip: string, remainingMs: number, epoch: number): void {
    const addr = Addr.tryParse(ip);
    if (!this.#running || addr === undefined || remainingMs <= 0) return;
    this.#addon.learned(source, name, Buffer.from(addr.toBytes()), remainingMs, epoch);
  }

  /** The flow records since the last call (parseFastFlows splits them), in a buffer of their own, which can be moved to another thread; undefined: none. */
  drainBytes(): Uint8Array<ArrayBuffer> | undefined {
    const bytes = this.#running ? this.#addon.drain() : null;
    if (bytes === null || bytes.length === 0) return undefined;
    // The addon copies into a buffer of its own; a pooled slice would move its neighbours too.
    const own = bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength && bytes.buffer instanceof ArrayBuffer;
    return own ? new Uint8Array(bytes.buffer as ArrayBuffer) : new Uint8Array(bytes);
  }

  counters(): Record<FastCounter, number> {
    const values = this.#running ? this.#addon.counters() : [];
    return Object.fromEntries(FAST_COUNTERS.map((name, i) => [name, values[i] ?? 0])) as Record<FastCounter, number>;
  }

  stop(): void {
    if (!this.#running) return;
    this.#running = false;
    this.#addon.stop();
  }
}
