/**
 * What the agent and its DNS redirect worker (redirect-worker.ts) say to each other. The worker
 * owns the sockets and the per-query work; the agent keeps what decides: which endpoint an address
 * is, what its policy lets it ask, which answered addresses the policy allows. The worker keeps the
 * agent's answers only while the shared epoch is unchanged, which the agent bumps synchronously at
 * every change of policy, ipcache or endpoints, so nothing decides on state older than a write.
 * @module
 */
import type { DnsVerdict } from '../policy/index.ts';
import { learnedExpiry, type AnswerAddress } from './cache.ts';
import { FAST_COUNTERS } from './fast-path.ts';
import type { DnsOutcome, RejectResponseCode, Resolver } from './proxy.ts';

/** How the worker's listener and proxy are set up. */
export interface RedirectSettings {
  /** 127.0.0.1:port, UDP and TCP. */
  port: number;
  host: string;
  /** Queries a second per endpoint (DnsRedirectOptions.endpointRateLimit). */
  endpointRateLimit: number;
  rejectResponseCode: RejectResponseCode;
  forwardTimeoutMs: number;
  maxInFlight: number;
  /** Seconds an allowed address lives at least (the FQDN cache's), so the worker knows when to ask again. */
  minTtl: number;
  /** The datapath's ciliate_proxy4 pin: where each redirected datagram was going. */
  proxy4Pin: string;
  /** The datapath's ciliate_proxy_listeners pin (DnsRedirectOptions.listeners); none: not published. */
  listenersPin?: string;
  /** Milliseconds between tries to bind a port that was taken. */
  retryListenMs: number;
  /** UDP through the native fast path (fast-path.ts), JavaScript deciding only what it has not seen. */
  fastPath: boolean;
  /** The fast path thread's realtime budget, percent of one CPU (0: an ordinary thread). */
  fastPathRealtimeBudget: number;
}

/**
 * The shared epochs (an Int32Array over RedirectWorkerData.epoch). EPOCH_ALL moves at every change
 * of what the agent answers (policy, ipcache, endpoints); EPOCH_TOLD only when what the worker
 * kept of addresses already told to the agent may be wrong (endpoints changed, the FQDN cache let
 * addresses go early), so learning a new address, which changes the policy, keeps it.
 */
export const EPOCH_ALL = 0;

/** A longer life of an address already told is reported when it adds at least this much (ms): once a second per address at most. */
const LEARNED_REFRESH_MS = 1_000;

/** Whether an answer's `ttl` would keep an address told until `toldUntil` (ms) enough longer to tell the agent again. */
export function tellsLonger(ttl: number, minTtl: number, toldUntil: number, now: number): boolean {
  return learnedExpiry(ttl, minTtl, now) > toldUntil + LEARNED_REFRESH_MS;
}

/** An address an endpoint was told of for a name, as what was told to the agent is kept. */
export const toldKey = (endpoint: number, a: Pick<AnswerAddress, 'name' | 'ip'>): string => `${endpoint}|${a.name}|${a.ip}`;
export const EPOCH_TOLD = 1;

export interface RedirectWorkerData extends RedirectSettings {
  /** Int32Array[2]: EPOCH_ALL and EPOCH_TOLD, bumped by the agent. */
  epoch: SharedArrayBuffer;
  /** Float64Array of REDIRECT_COUNTERS, written by the worker. */
  counters: SharedArrayBuffer;
}

/** The worker's counts, in the shared counters' order: the listener's, then the proxy's. */
export const REDIRECT_COUNTERS = [
  'datagrams',
  'connections',
  'notAnEndpoint',
  'noOriginalDestination',
  'unanswered',
  'sendFailures',
  'refusedConnections',
  'rateLimited',
  'truncated',
  'forwarded',
  'denied',
  'errors',
  'inFlight',
  /** Questions the worker asked the agent (what it had not kept). */
  'askedAgent',
  /** Times what the worker kept went stale (the agent's policy, ipcache or endpoints changed). */
  'staleResets',
  ...FAST_COUNTERS,
] as const;
export type RedirectCounter = (typeof REDIRECT_COUNTERS)[number];

export interface EndpointContext {
  id: number;
  identity: number;
}

/** A query the worker handled, for its flows (the answer's bytes stay in the worker). */
export interface HandledQuery {
  endpoint: number;
  sourcePort: number;
  resolver: Resolver;
  protocol: 'UDP' | 'TCP';
  outcome: Omit<DnsOutcome, 'response'>;
  requestNs: string;
  responseNs: string;
}

export type FromWorker =
  | { type: 'listening' }
  | { type: 'listen-failed'; message: string }
  | { type: 'warning'; message: string }
  | { type: 'endpoint'; id: number; address: string }
  | { type: 'verdict'; id: number; endpoint: number; resolver: Resolver; protocol: 'UDP' | 'TCP' }
  | { type: 'learned'; id: number; endpoint: number; addresses: AnswerAddress[] }
  | { type: 'handled'; queries: HandledQuery[] }
  /** Records of the fast path's answers (fast-path.ts parseFastFlows), moved. */
  | { type: 'fast-flows'; bytes: Uint8Array };

export type ToWorker =
  | { type: 'endpoint'; id: number; epoch: number; endpoint: EndpointContext | null }
  | { type: 'verdict'; id: number; epoch: number; verdict: DnsVerdict }
  | { type: 'learned'; id: number; error?: string }
  | { type: 'close' };

/** Wall-clock time in nanoseconds as a decimal string, as flows carry it. */
export const wallClockNs = (): string => String(BigInt(Date.now()) * 1_000_000n);
