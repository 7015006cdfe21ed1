/**
 * The DNS redirect worker: the pod DNS listener and the DNS proxy behind it, on a thread of their
 * own. Every query costs a receive, two sends and a receive, and tens of microseconds of parsing;
 * at thousands of queries a second that would otherwise be the agent's event loop, delaying its
 * API, reconcilers and flows (and a flood of queries them all). Here the agent's loop only answers
 * what the worker has not kept: which endpoint an address is, an endpoint's DNS verdict for a
 * resolver, and new addresses to allow before an answer is released.
 *
 * Started by DnsRedirectWorker (redirect-host.ts) with RedirectWorkerData.
 * @module
 */
import { parentPort, workerData } from 'node:worker_threads';
import { BpfMap } from '../ebpf/index.ts';
import { IPPROTO_UDP, proxy4Key, proxy4Value, type Proxy4Key, type Proxy4Value } from '../datapath/index.ts';
import { dnsVerdictAllows, type DnsVerdict } from '../policy/index.ts';
import { proxyIngressMark } from '../proxy/index.ts';
import { learnedExpiry, type AnswerAddress } from './cache.ts';
import { DnsFastPath } from './fast-path.ts';
import { DnsProxy, type DnsOutcome, type DnsQuery, type Resolver } from './proxy.ts';
import { DnsRedirectListener } from './redirect.ts';
import { EPOCH_ALL, EPOCH_TOLD, REDIRECT_COUNTERS, tellsLonger, toldKey, wallClockNs, type EndpointContext, type FromWorker, type HandledQuery, type RedirectWorkerData, type ToWorker } from './redirect-protocol.ts';

const data = workerData as RedirectWorkerData;
const host = parentPort!;
const epoch = new Int32Array(data.epoch);
const counters = new Float64Array(data.counters);

/** An address is asked about again this long before its allowance runs out (ms). */
const LEARNED_MARGIN_MS = 2_000;
/** What the worker keeps is dropped whole past this many entries (a map per kind). */
const MAX_KEPT = 65_536;

// What the agent answered, valid while the epoch stays what it was when it answered
// (EPOCH_ALL; what was told of addresses, EPOCH_TOLD).
let keptEpoch = Atomics.load(epoch, EPOCH_ALL);
let toldEpoch = Atomics.load(epoch, EPOCH_TOLD);
const endpoints = new Map<string, EndpointContext | null>();
const identities = new Map<number, number>();
const verdicts = new Map<string, DnsVerdict>();
/** toldKey() → until when (ms) the agent allows it, at least. */
const allowedUntil = new Map<string, number>();

function current(): number {
  const now = Atomics.load(epoch, EPOCH_ALL);
  if (now !== keptEpoch) {
    keptEpoch = now;
    workerStats.staleResets++;
    endpoints.clear();
    identities.clear();
    verdicts.clear();
  }
  currentTold();
  return now;
}

function currentTold(): number {
  const now = Atomics.load(epoch, EPOCH_TOLD);
  if (now !== toldEpoch) {
    toldEpoch = now;
    allowedUntil.clear();
  }
  return now;
}

function keep<K, V>(map: Map<K, V>, key: K, value: V, answeredAt: number, at: () => number = current): void {
  if (answeredAt !== at()) return;
  if (map.size >= MAX_KEPT) map.clear();
  map.set(key, value);
}

/** The worker's own counts (REDIRECT_COUNTERS beside the listener's and the proxy's). */
const workerStats = { askedAgent: 0, staleResets: 0 };

let nextRequest = 1;
const waiting = new Map<number, (reply: ToWorker) => void>();

/** Asks the agent; the reply's id matches. */
function ask<T extends ToWorker>(request: FromWorker & { id: number }): Promise<T> {
  workerStats.askedAgent++;
  return new Promise((resolve) => {
    waiting.set(request.id, resolve as (reply: ToWorker) => void);
    host.postMessage(request);
  });
}

function endpointOf(address: string): number | undefined | Promise<number | undefined> {
  current();
  const known = endpoints.get(address);
  if (known !== undefined) return known?.id;
  return ask<Extract<ToWorker, { type: 'endpoint' }>>({ type: 'endpoint', id: nextRequest++, address }).then((reply) => {
    keep(endpoints, address, reply.endpoint, reply.epoch);
    if (reply.endpoint) keep(identities, reply.endpoint.id, reply.endpoint.identity, reply.epoch);
    return reply.endpoint?.id;
  });
}

function verdictFor(endpoint: number, resolver: Resolver, protocol: 'UDP' | 'TCP'): DnsVerdict | Promise<DnsVerdict> {
  current();
  const key = `${endpoint}|${resolver.address}|${resolver.port}|${protocol}`;
  const known = verdicts.get(key);
  if (known !== undefined) return known;
  return ask<Extract<ToWorker, { type: 'verdict' }>>({ type: 'verdict', id: nextRequest++, endpoint, resolver, protocol }).then((reply) => {
    keep(verdicts, key, reply.verdict, reply.epoch);
    return reply.verdict;
  });
}

function tellLearned(endpoint: number, addresses: AnswerAddress[]): Promise<void> {
  const askedAt = currentTold();
  const now = Date.now();
  return ask<Extract<ToWorker, { type: 'learned' }>>({ type: 'learned', id: nextRequest++, endpoint, addresses }).then((reply) => {
    if (reply.error !== undefined) throw new Error(reply.error);
    for (const a of addresses) keep(allowedUntil, toldKey(endpoint, a), learnedExpiry(a.ttl, data.minTtl, now), askedAt, currentTold);
  });
}

/**
 * An answer waits for the agent only when one of its addresses is not known to be allowed for a
 * while yet; a longer life for addresses already allowed is reported without waiting.
 */
function learned(endpoint: number, addresses: AnswerAddress[]): Promise<void> | void {
  currentTold();
  const now = Date.now();
  let mustWait = false;
  let longer = false;
  for (const a of addresses) {
    const until = allowedUntil.get(toldKey(endpoint, a));
    if (until === undefined || until < now + LEARNED_MARGIN_MS) mustWait = true;
    else if (tellsLonger(a.ttl, data.minTtl, until, now)) longer = true;
  }
  if (mustWait) return tellLearned(endpoint, addresses);
  if (longer) void tellLearned(endpoint, addresses).catch(() => undefined);
}

const proxy = new DnsProxy({
  allows: (endpoint, resolver, protocol, name) => {
    const verdict = verdictFor(endpoint, resolver, protocol);
    return verdict instanceof Promise ? verdict.then((v) => dnsVerdictAllows(v, name)) : dnsVerdictAllows(verdict, name);
  },
  learned,
  rejectResponseCode: data.rejectResponseCode,
  forwardTimeoutMs: data.forwardTimeoutMs,
  maxInFlight: data.maxInFlight,
});

// Flows go to the agent in batches, one message per turn of the loop.
let handled: HandledQuery[] = [];
function report(query: Pick<DnsQuery, 'endpoint' | 'resolver' | 'protocol'>, sourcePort: number, outcome: DnsOutcome, requestNs: string, responseNs = wallClockNs()): void {
  const { response: _response, ...rest } = outcome;
  if (handled.length === 0) setImmediate(flushHandled);
  handled.push({ endpoint: query.endpoint, sourcePort, resolver: query.resolver, protocol: query.protocol, outcome: rest, requestNs, responseNs });
}
function flushHandled(): void {
  const queries = handled;
  handled = [];
  if (queries.length > 0) host.postMessage({ type: 'handled', queries } satisfies FromWorker);
}

// The forward carries the endpoint's identity (as the HTTP proxy's connections do): a resolver
// pod on this node judges it as the endpoint's query, not the node's.
async function answer(query: DnsQuery, sourcePort: number, sourceAddress: string): Promise<DnsOutcome> {
  const requestNs = wallClockNs();
  const decidedAt = current();
  const identity = identities.get(query.endpoint);
  const upstreamMark = identity === undefined ? undefined : proxyIngressMark(identity);
  const outcome = await proxy.handle(upstreamMark === undefined ? query : { ...query, upstreamMark });
  report(query, sourcePort, outcome, requestNs);
  if (query.protocol === 'UDP') teach(query, sourceAddress, upstreamMark ?? 0, outcome, decidedAt);
  publish();
  return outcome;
}

/**
 * What the proxy decided, for the fast path to answer the same question from the same pod itself
 * while the epoch stays: the verdict, and the answer's addresses the agent allows (and until when).
 */
function teach(query: DnsQuery, source: string, mark: number, outcome: DnsOutcome, decidedAt: number): void {
  if (fast === undefined || outcome.name === undefined || (outcome.verdict !== 'forwarded' && outcome.verdict !== 'denied')) return;
  fast.allow(source, query.resolver, outcome.name, { endpoint: query.endpoint, mark, allowed: outcome.verdict === 'forwarded', rcode: outcome.rcode }, decidedAt);
  const now = Date.now();
  const told = currentTold();
  for (const a of outcome.learned) {
    const until = a.name === outcome.name ? allowedUntil.get(toldKey(query.endpoint, a)) : undefined;
    if (until !== undefined) fast.learned(source, a.name, a.ip, until - now, told);
  }
}

/**
 * The fast path's answers go to the agent as drained, one buffer moved (not copied) per batch:
 * their flows and a longer life of their addresses are the agent's work, and objects built here
 * would be cloned across threads at a cost above that of building them.
 */
function drainFast(): boolean {
  const bytes = fast?.drainBytes();
  if (bytes === undefined) return false;
  host.postMessage({ type: 'fast-flows', bytes } satisfies FromWorker, [bytes.buffer]);
  return true;
}

// Opened at the first datagram: the datapath pins its maps with the first endpoint.
let origins: BpfMap<Proxy4Key, Proxy4Value> | undefined;
let originsFailure: string | undefined;
function originalDestination(address: string, port: number): Resolver | undefined {
  try {
    origins ??= BpfMap.openPinned(data.proxy4Pin, proxy4Key, proxy4Value);
    const found = origins.lookup({ saddr: address, sport: port, nexthdr: IPPROTO_UDP });
    return found && { address: found.orig_daddr, port: found.orig_dport };
  } catch (error) {
    originsFailure = `reading the original destinations of DNS datagrams (${data.proxy4Pin}): ${(error as Error).message}`;
    return undefined;
  }
}

let listener: DnsRedirectListener | undefined;
let fast: DnsFastPath | undefined;
async function listen(): Promise<void> {
  const candidate = new DnsRedirectListener({ port: data.port, host: data.host, endpointOf, originalDestination, answer, endpointRateLimit: data.endpointRateLimit, udpHandoff: data.fastPath, ...(data.listenersPin ? { listeners: data.listenersPin } : {}) });
  try {
    await candidate.listen();
    if (data.fastPath) {
      fast = DnsFastPath.start({ host: data.host, port: data.port, handoffPort: candidate.udpPort, epoch, proxy4Pin: data.proxy4Pin, rate: data.endpointRateLimit, timeoutMs: data.forwardTimeoutMs, maxInFlight: data.maxInFlight, realtimeBudget: data.fastPathRealtimeBudget });
      candidate.handoffFrom = fast.sourcePort;
    }
    listener = candidate;
    host.postMessage({ type: 'listening' } satisfies FromWorker);
  } catch (error) {
    fast?.stop();
    fast = undefined;
    await candidate.close();
    host.postMessage({ type: 'listen-failed', message: (error as Error).message } satisfies FromWorker);
    retry = setTimeout(() => void listen(), data.retryListenMs);
  }
}
let retry: NodeJS.Timeout | undefined;

/** The counts into the agent's view: after every query, and now and then for what no query reports. */
function publish(): void {
  const stats: Record<string, number> = { ...listener?.stats, ...proxy.stats, ...workerStats, ...fast?.counters() };
  REDIRECT_COUNTERS.forEach((name, i) => (counters[i] = stats[name] ?? 0));
}
const publishing = setInterval(publish, 50);
// Under load the flows are drained often, in small batches: the work of a large one holds a CPU
// for milliseconds, and the fast path's thread (or the pod) waiting for that CPU waits it out.
const DRAIN_BUSY_MS = 5;
const DRAIN_IDLE_MS = 50;
let draining: NodeJS.Timeout | undefined;
function drainLoop(): void {
  draining = setTimeout(drainLoop, drainFast() ? DRAIN_BUSY_MS : DRAIN_IDLE_MS);
}
drainLoop();

host.on('message', (message: ToWorker) => {
  if (message.type === 'close') {
    clearInterval(publishing);
    clearTimeout(draining);
    clearTimeout(retry);
    drainFast();
    fast?.stop();
    fast = undefined;
    flushHandled();
    proxy.close();
    origins?.close();
    void (listener?.close() ?? Promise.resolve()).finally(() => host.close());
    return;
  }
  const resolve = waiting.get(message.id);
  waiting.delete(message.id);
  resolve?.(message);
});

void listen();
// The first failure to read the datapath's map is worth one line in the agent's log, not one per datagram.
setInterval(() => {
  if (originsFailure === undefined) return;
  host.postMessage({ type: 'warning', message: originsFailure } satisfies FromWorker);
  originsFailure = undefined;
}, 5_000).unref();
