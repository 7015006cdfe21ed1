/**
 * Hubble Relay's job: one Observer API over every agent of the cluster. The agents are found in
 * the shared store (`nodes/` for the cluster's members, `hubble-peers/` for where each one's
 * Observer API listens); each is dialled with grpc-js and checked on an interval. GetFlows fans
 * out and merges by time, ServerStatus and GetNodes count what answers and name what does not,
 * and a node that goes away is reported unavailable while the others keep being served.
 * @module
 */
import type { Logger } from 'pino';
import type { StateStore } from '../store/index.ts';
import { ObserverError } from './errors.ts';
import { parseFlowsRequest } from './observer.ts';
import { HUBBLE_PEERS_PREFIX, type HubblePeerRecord } from './peers.ts';
import { connectObserver, type ObserverClient, type ObserverNode } from './proto.ts';
import type { ObserverBackend, ObserverNamespace } from './server.ts';
import type { ClientTlsMaterial } from './tls.ts';
import { timestampFromNs, timestampToNs, type GetFlowsRequest, type GetFlowsResponse, type LostEvent, type ServerStatusResponse } from './types.ts';

/** The cluster's node records (src/agent/node.ts); the relay needs only their names. */
const NODES_PREFIX = 'nodes/';

export interface RelayOptions {
  store: StateStore;
  log: Logger;
  version: string;
  /** How often every peer is asked for its status, which is also how soon a returning one is seen. */
  checkIntervalMs?: number;
  /** How long a peer has to answer a status call before it counts as unavailable. */
  callTimeoutMs?: number;
  /** A followed flow waits this long for earlier flows of slower nodes before it is sent (Hubble's sort-buffer-drain-timeout). */
  sortWindowMs?: number;
  /** Flows held for reordering at most; beyond it the earliest goes out at once (Hubble's sort-buffer-len-max). */
  sortBufferLength?: number;
  /** TLS towards peers that publish a TLS listener: their CAs (none: the system's roots) and our client certificate. */
  tls?: ClientTlsMaterial;
  /** Plaintext only (Hubble Relay's disable-client-tls): a peer publishing a TLS listener is then unavailable, and says why. */
  disableClientTls?: boolean;
}

type PeerState = 'NODE_CONNECTED' | 'NODE_UNAVAILABLE';

interface Peer {
  readonly name: string;
  record?: HubblePeerRecord;
  client?: ObserverClient;
  state: PeerState;
  reason?: string;
  status?: ServerStatusResponse;
}

const nowNs = () => BigInt(Date.now()) * 1_000_000n;
const responseNs = (response: GetFlowsResponse) => (response.time ? timestampToNs(response.time) : 0n);
const byTime = (a: GetFlowsResponse, b: GetFlowsResponse) => {
  const ta = responseNs(a);
  const tb = responseNs(b);
  return ta < tb ? -1 : ta > tb ? 1 : (a.nodeName ?? '').localeCompare(b.nodeName ?? '');
};

/**
 * @example
 * const relay = new Relay({ store, log, version: VERSION });
 * await relay.start();
 * const server = new ObserverGrpcServer(relay);
 * await server.listenTcp('localhost:4245');
 */
export class Relay implements ObserverBackend {
  readonly #options: Required<Omit<RelayOptions, 'tls' | 'disableClientTls'>> & Pick<RelayOptions, 'tls' | 'disableClientTls'>;
  readonly #peers = new Map<string, Peer>();
  readonly #members = new Set<string>();
  readonly #records = new Map<string, HubblePeerRecord>();
  readonly #followers = new Set<(peer: Peer) => void>();
  readonly #abort = new AbortController();
  readonly #startedAt = process.hrtime.bigint();
  #timer: NodeJS.Timeout | undefined;

  constructor(options: RelayOptions) {
    this.#options = { checkIntervalMs: 1000, callTimeoutMs: 2000, sortWindowMs: 1000, sortBufferLength: 100, ...options };
  }

  /** Reads the peers, then follows the store and checks every peer on the interval. */
  async start(): Promise<void> {
    await Promise.all([
      this.#mirror<unknown>(NODES_PREFIX, () => this.#members, (name, value) => (value === undefined ? this.#members.delete(name) : this.#members.add(name))),
      this.#mirror<HubblePeerRecord>(HUBBLE_PEERS_PREFIX, () => this.#records.keys(), (name, value) => (value === undefined ? this.#records.delete(name) : this.#records.set(name, value))),
    ]);
    await this.#checkAll();
    const tick = () => {
      this.#timer = setTimeout(() => void this.#checkAll().finally(() => this.#abort.signal.aborted || tick()), this.#options.checkIntervalMs);
    };
    tick();
  }

  async stop(): Promise<void> {
    this.#abort.abort();
    clearTimeout(this.#timer);
    for (const peer of this.#peers.values()) peer.client?.close();
    this.#peers.clear();
  }

  /**
   * Lists a prefix, then applies its watch; when the watch fails (etcd away, history compacted)
   * it lists again, so a relay outliving a store outage catches up instead of freezing.
   */
  async #mirror<T>(prefix: string, known: () => Iterable<string>, apply: (name: string, value: T | undefined) => void): Promise<void> {
    const signal = this.#abort.signal;
    const load = async (): Promise<number> => {
      const { entries, revision } = await this.#options.store.list<T>(prefix);
      const listed = new Map(entries.map((e) => [e.key.slice(prefix.length), e.value]));
      for (const name of [...known()]) if (!listed.has(name)) apply(name, undefined);
      for (const [name, value] of listed) apply(name, value);
      this.#sync();
      return revision;
    };
    let revision = await load();
    void (async () => {
      while (!signal.aborted) {
        try {
          for await (const event of this.#options.store.watch<T>(prefix, { afterRevision: revision, signal })) {
            apply(event.key.slice(prefix.length), event.type === 'put' ? event.value : undefined);
            revision = event.revision;
            this.#sync();
          }
        } catch (error) {
          if (signal.aborted) return;
          this.#options.log.warn({ err: error, prefix }, 'relay: store watch failed; listing again');
          await new Promise((resolve) => setTimeout(resolve, this.#options.checkIntervalMs));
          revision = await load().catch(() => revision);
        }
      }
    })();
  }

  /** Peers are the cluster's members and whoever published an Observer API; a change of address redials. */
  #sync(): void {
    const names = new Set([...this.#members, ...this.#records.keys()]);
    for (const [name, peer] of this.#peers) {
      if (names.has(name)) continue;
      peer.client?.close();
      this.#peers.delete(name);
      this.#options.log.info({ node: name }, 'relay: node gone');
    }
    for (const name of names) {
      const record = this.#records.get(name);
      let peer = this.#peers.get(name);
      if (!peer) {
        peer = { name, state: 'NODE_UNAVAILABLE' };
        this.#peers.set(name, peer);
      }
      if (peer.record?.address === record?.address && peer.record?.tls.enabled === record?.tls.enabled) {
        peer.record = record;
        continue;
      }
      peer.client?.close();
      peer.client = undefined;
      peer.record = record;
      if (record && !(record.tls.enabled && this.#options.disableClientTls)) {
        const { ca, cert, key } = this.#options.tls ?? {};
        const tls = record.tls.enabled ? { tls: true, tlsCa: ca, tlsCert: cert, tlsKey: key, tlsServerName: record.tls.serverName } : {};
        peer.client = connectObserver(record.address, { ...tls, callTimeoutMs: this.#options.callTimeoutMs, maxReconnectBackoffMs: this.#options.checkIntervalMs });
      }
      void this.#check(peer);
    }
  }

  async #checkAll(): Promise<void> {
    await Promise.all([...this.#peers.values()].map((peer) => this.#check(peer)));
  }

  /** Asks a peer for its status: the answer, or its absence, decides whether it counts as connected. */
  async #check(peer: Peer): Promise<void> {
    const client = peer.client;
    if (!client && peer.record?.tls.enabled && this.#options.disableClientTls) {
      return this.#mark(peer, 'NODE_UNAVAILABLE', `${peer.record.address} serves TLS only, and client TLS is off (--disable-client-tls)`);
    }
    if (!client) return this.#mark(peer, 'NODE_UNAVAILABLE', 'no Observer API published (agent stopped, or its hubble listener off)');
    try {
      const [status, answered] = await Promise.all([client.serverStatus(), client.getNodes()]);
      if (peer.client !== client) return;
      // A loopback address published by another node leads to whatever agent listens here.
      const names = (answered.nodes ?? []).map((n) => n.name);
      if (!names.includes(peer.name)) {
        return this.#mark(peer, 'NODE_UNAVAILABLE', `${peer.record?.address} answers as ${names.join(', ') || 'no node'}, not ${peer.name}; publish a reachable address (--hubble-listen-address :4244)`);
      }
      peer.status = status;
      this.#mark(peer, 'NODE_CONNECTED');
      // Also when it never looked away: a follow whose stream from it broke picks it up again.
      for (const attach of this.#followers) attach(peer);
    } catch (error) {
      if (peer.client === client) this.#mark(peer, 'NODE_UNAVAILABLE', `${peer.record?.address}: ${(error as { details?: string }).details || (error as Error).message}`);
    }
  }

  #mark(peer: Peer, state: PeerState, reason?: string): void {
    const was = peer.state;
    const wasReason = peer.reason;
    peer.state = state;
    peer.reason = reason;
    if (state !== 'NODE_CONNECTED') peer.status = undefined;
    // A new peer starts unavailable: its first reason is news too.
    if (was === state && wasReason === reason) return;
    if (state === 'NODE_CONNECTED') {
      this.#options.log.info({ node: peer.name, address: peer.record?.address }, 'relay: node connected');
    } else {
      this.#options.log.warn({ node: peer.name, reason }, 'relay: node unavailable');
    }
  }

  #connected(): Peer[] {
    return [...this.#peers.values()].filter((p) => p.state === 'NODE_CONNECTED' && p.client !== undefined);
  }

  #unavailableNames(): string[] {
    return [...this.#peers.values()].filter((p) => p.state !== 'NODE_CONNECTED').map((p) => p.name).sort();
  }

  /** A peer whose stream failed is checked at once rather than at the next tick. */
  #failed(peer: Peer, client: ObserverClient, error: unknown): void {
    if (peer.client !== client) return;
    this.#options.log.warn({ err: error, node: peer.name }, 'relay: flows from node failed');
    void this.#check(peer);
  }

  async serverStatus(): Promise<ServerStatusResponse> {
    await this.#checkAll();
    const connected = this.#connected();
    const sum = (field: 'numFlows' | 'maxFlows' | 'seenFlows') => String(connected.reduce((total, p) => total + BigInt(p.status?.[field] ?? 0), 0n));
    const unavailable = this.#unavailableNames();
    return {
      numFlows: sum('numFlows'),
      maxFlows: sum('maxFlows'),
      seenFlows: sum('seenFlows'),
      uptimeNs: String(process.hrtime.bigint() - this.#startedAt),
      numConnectedNodes: { value: connected.length },
      numUnavailableNodes: { value: unavailable.length },
      unavailableNodes: unavailable,
      version: this.#options.version,
      flowsRate: connected.reduce((total, p) => total + (p.status?.flowsRate ?? 0), 0),
      ciliateLostEvents: sumLost(connected.flatMap((p) => p.status?.ciliateLostEvents ?? [])),
    };
  }

  async nodes(): Promise<ObserverNode[]> {
    await this.#checkAll();
    return [...this.#peers.values()]
      .sort((a, b) => a.name.localeCompare(b.name))
      .map((peer) => ({
        name: peer.name,
        version: peer.status?.version ?? peer.record?.version,
        address: peer.record?.address,
        state: peer.state,
        tls: { enabled: peer.record?.tls.enabled ?? false, serverName: peer.record?.tls.serverName },
        ...(peer.status ? { uptimeNs: peer.status.uptimeNs, numFlows: peer.status.numFlows, maxFlows: peer.status.maxFlows, seenFlows: peer.status.seenFlows } : {}),
      }));
  }

  async namespaces(): Promise<ObserverNamespace[]> {
    const answers = await Promise.all(
      this.#connected().map(async (peer) => {
        const client = peer.client!;
        try {
          return (await client.getNamespaces()).namespaces ?? [];
        } catch (error) {
          this.#failed(peer, client, error);
          return [];
        }
      }),
    );
    const merged = new Map(answers.flat().map((n) => [`${n.cluster ?? ''}/${n.namespace ?? ''}`, { cluster: n.cluster, namespace: n.namespace }]));
    return [...merged.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([, n]) => n);
  }

  async *flows(request: GetFlowsRequest, signal: AbortSignal): AsyncGenerator<GetFlowsResponse> {
    // Refused here with the field named, as an agent would, rather than once per node.
    const query = parseFlowsRequest(request);
    await this.#checkAll();
    const unavailable = this.#unavailableNames();
    if (this.#connected().length === 0 && !query.follow) {
      throw new ObserverError('ERR_OBSERVER_UNAVAILABLE', `relay: no node's Observer API answers (unavailable: ${unavailable.join(', ') || 'no nodes known'})`);
    }
    if (unavailable.length > 0) yield nodeStatus('NODE_UNAVAILABLE', unavailable, 'not answering; their flows are missing');
    if (query.follow) yield* this.#follow(request, signal);
    else yield* this.#collect(request, query.number, query.first, signal);
  }

  /** Every node's answer, merged by time; `number` then keeps the first or last that many of all. */
  async *#collect(request: GetFlowsRequest, number: number, first: boolean, signal: AbortSignal): AsyncGenerator<GetFlowsResponse> {
    const failed: string[] = [];
    const answers = await Promise.all(
      this.#connected().map(async (peer) => {
        const client = peer.client!;
        const stream = client.getFlows(request);
        const cancel = () => stream.cancel();
        signal.addEventListener('abort', cancel);
        const out: GetFlowsResponse[] = [];
        try {
          for await (const response of stream) out.push({ ...response, nodeName: response.nodeName || peer.name });
        } catch (error) {
          failed.push(peer.name);
          this.#failed(peer, client, error);
        } finally {
          signal.removeEventListener('abort', cancel);
        }
        return out;
      }),
    );
    if (failed.length > 0) yield nodeStatus('NODE_UNAVAILABLE', failed.sort(), 'failed while answering; their flows are missing');
    const merged = answers.flat().sort(byTime);
    const flows = merged.filter((r) => r.flow);
    // Lost events are kept beside the flows they fall among, not counted towards `number`.
    const kept = number === 0 ? flows : first ? flows.slice(0, number) : flows.slice(-number);
    if (kept.length === 0) return yield* merged.filter((r) => !r.flow);
    const keep = new Set(kept);
    const from = responseNs(kept[0]);
    const to = responseNs(kept.at(-1)!);
    for (const response of merged) {
      if (signal.aborted) return;
      if (response.flow ? keep.has(response) : responseNs(response) >= from && responseNs(response) <= to) yield response;
    }
  }

  /**
   * Every connected node's live stream through one sort buffer: a response goes out once it has
   * waited the sort window (earlier flows of a slower node can still overtake it) or the buffer is
   * full. A node that returns is followed again from the last flow seen of it.
   */
  async *#follow(request: GetFlowsRequest, signal: AbortSignal): AsyncGenerator<GetFlowsResponse> {
    const buffer: { response: GetFlowsResponse; arrived: number }[] = [];
    let wake: (() => void) | undefined;
    const ring = () => {
      wake?.();
      wake = undefined;
    };
    const push = (response: GetFlowsResponse) => {
      const item = { response, arrived: Date.now() };
      let at = buffer.length;
      while (at > 0 && byTime(buffer[at - 1].response, response) > 0) at--;
      buffer.splice(at, 0, item);
      ring();
    };
    const followed = new Map<string, ObserverClient>();
    const lastSeen = new Map<string, bigint>();
    const startedNs = nowNs();
    const attach = (peer: Peer) => {
      const client = peer.client;
      if (!client || followed.get(peer.name) === client || signal.aborted) return;
      followed.set(peer.name, client);
      const since = lastSeen.get(peer.name);
      // A returning node gives what it has since we last heard of it, not its last `number` again.
      const resumed: GetFlowsRequest = since === undefined ? request : { ...request, number: 0, since: timestampFromNs(since + 1n) };
      const stream = client.getFlows(resumed);
      const cancel = () => stream.cancel();
      signal.addEventListener('abort', cancel);
      void (async () => {
        let failure: unknown = new Error('the node ended the stream');
        try {
          for await (const response of stream) {
            const ns = responseNs(response);
            if (ns > (lastSeen.get(peer.name) ?? 0n)) lastSeen.set(peer.name, ns);
            push({ ...response, nodeName: response.nodeName || peer.name });
          }
        } catch (error) {
          failure = error;
        } finally {
          // A follow has no end of its own: whatever ends it, short of our cancel, is the node going away.
          if (!signal.aborted) {
            push(nodeStatus('NODE_UNAVAILABLE', [peer.name], `${(failure as { details?: string }).details || (failure as Error).message}`));
            this.#failed(peer, client, failure);
          }
          signal.removeEventListener('abort', cancel);
          if (followed.get(peer.name) === client) followed.delete(peer.name);
          if (!lastSeen.has(peer.name)) lastSeen.set(peer.name, startedNs);
        }
      })();
    };
    const onConnected = (peer: Peer) => {
      if (!followed.has(peer.name)) push(nodeStatus('NODE_CONNECTED', [peer.name], 'following again'));
      attach(peer);
    };
    this.#followers.add(onConnected);
    signal.addEventListener('abort', ring);
    try {
      for (const peer of this.#connected()) attach(peer);
      while (!signal.aborted) {
        const now = Date.now();
        while (buffer.length > 0 && (buffer.length > this.#options.sortBufferLength || buffer[0].arrived + this.#options.sortWindowMs <= now)) {
          yield buffer.shift()!.response;
          if (signal.aborted) return;
        }
        const waitMs = buffer.length > 0 ? buffer[0].arrived + this.#options.sortWindowMs - Date.now() : undefined;
        await new Promise<void>((resolve) => {
          const timer = waitMs === undefined ? undefined : setTimeout(resolve, Math.max(0, waitMs));
          wake = () => {
            clearTimeout(timer);
            resolve();
          };
          if (signal.aborted) wake();
        });
      }
    } finally {
      this.#followers.delete(onConnected);
      signal.removeEventListener('abort', ring);
    }
  }
}

function nodeStatus(stateChange: PeerState, nodeNames: string[], message: string): GetFlowsResponse {
  return { nodeStatus: { stateChange, nodeNames, message }, time: timestampFromNs(nowNs()) };
}

/** The nodes' losses by stage, as one agent reports its own: a total per source. */
function sumLost(events: LostEvent[]): LostEvent[] {
  const totals = new Map<LostEvent['source'], bigint>();
  for (const e of events) totals.set(e.source, (totals.get(e.source) ?? 0n) + BigInt(e.numEventsLost || 0));
  return [...totals].map(([source, lost]) => ({ source, numEventsLost: String(lost) }));
}
