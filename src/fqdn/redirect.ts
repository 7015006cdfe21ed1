/**
 * Where the datapath hands pod DNS traffic to the DNS proxy (bpf/lib/proxy.h): a UDP socket and a
 * TCP listener on 127.0.0.1 at the DNS proxy's port, in the node's network namespace.
 *
 * UDP: each datagram the datapath assigned to the socket arrives from the pod's own address and
 * port; where it was going (the resolver) the datapath noted in ciliate_proxy4, read through
 * `originalDestination`. The answer goes back from the resolver's address and port, as the pod
 * expects, on a raw socket (a Node socket sends only from what it is bound to). TCP: the listener
 * is IP_TRANSPARENT, so an accepted connection's local address is the resolver the pod dialled.
 *
 * Everything arriving here is hostile: a sender that is no local endpoint is ignored, TCP
 * messages are framed and bounded, connections are capped in number, in queries in flight and
 * in idle time.
 * @module
 */
import { createSocket, type RemoteInfo, type Socket as UdpSocket } from 'node:dgram';
import { createServer, type Server, type Socket } from 'node:net';
import { buildIpv4Frame, ETH_HLEN } from '../datapath/index.ts';
import { Addr } from '../net/index.ts';
import { decode, encode, TRUNCATED_RESPONSE } from 'dns-packet';
import { closeDescriptor, makeDatagramSocketTransparent, makeListenerTransparent, publishListener, rawIpv4Socket, sendIpv4Packet, SocketOptionError } from '../proxy/index.ts';
import { countDown, tcpFrame, type DnsOutcome, type DnsQuery, type Resolver } from './proxy.ts';

export interface DnsRedirectOptions {
  /** 127.0.0.1:port, UDP and TCP. */
  port: number;
  host?: string;
  /** The local endpoint whose address this is; undefined: not a local endpoint, the message is ignored. */
  endpointOf(address: string): number | undefined | Promise<number | undefined>;
  /** Where the datagram from this address and port was going, as the datapath noted it. */
  originalDestination(address: string, port: number): Resolver | undefined;
  /** Judges and answers a query (the DNS proxy, with its flows). */
  answer(query: DnsQuery, sourcePort: number, sourceAddress: string): Promise<DnsOutcome>;
  /**
   * The UDP side is the DNS fast path's (fast-path.ts), which owns the port: the listener's UDP
   * socket is then an ephemeral one on 127.0.0.1 taking what the fast path hands over, framed as
   * [sender IPv4 (4)][sender port (2)][datagram], from the fast path's socket only (`handoffFrom`).
   */
  udpHandoff?: boolean;
  /** Connections at once over TCP; past it new ones are closed at once. */
  maxConnections?: number;
  /** Seconds a TCP connection may stay idle. */
  idleTimeoutSeconds?: number;
  /**
   * Queries one endpoint may send a second (a token bucket holding one second's worth); past it
   * its queries are dropped before any parsing. Each query costs the agent tens of microseconds:
   * without a bound one flooding pod would take the agent's whole CPU. 0: no bound.
   */
  endpointRateLimit?: number;
  /** The datapath's ciliate_proxy_listeners pin, for the TCP listener (src/proxy/listeners.ts). */
  listeners?: string;
}

/** What the listener ignored, by reason: none of it is answered. */
export interface DnsRedirectStats {
  datagrams: number;
  connections: number;
  notAnEndpoint: number;
  noOriginalDestination: number;
  unanswered: number;
  sendFailures: number;
  /** TCP connections closed at once: their endpoint had MAX_TCP_CONNECTIONS_PER_ENDPOINT open. */
  refusedConnections: number;
  /** Queries dropped because their endpoint was past its rate limit. */
  rateLimited: number;
  /** UDP answers too big for the path, sent truncated (TC) so the pod asks again over TCP. */
  truncated: number;
}

const DEFAULT_MAX_CONNECTIONS = 1024;
const DEFAULT_IDLE_TIMEOUT_S = 10;
/** TCP connections of one endpoint at once: a pod holding many open starves only itself. */
export const MAX_TCP_CONNECTIONS_PER_ENDPOINT = 64;
/** Queries of one TCP connection in flight at once; past it the connection stops being read. */
const MAX_TCP_IN_FLIGHT = 16;
const IPV4_HEADER = 20;
const IPPROTO_UDP_HEADER = 8;
const EMSGSIZE = 90;

/** A response cut to its header and question with TC set (RFC 1035 4.1.1); undefined if it is no DNS response. */
function truncatedAnswer(response: Buffer): Buffer | undefined {
  try {
    const packet = decode(response);
    return encode({ type: 'response', id: packet.id, flags: (packet.flags ?? 0) | TRUNCATED_RESPONSE, questions: packet.questions });
  } catch {
    return undefined;
  }
}

export class DnsRedirectListener {
  readonly #options: DnsRedirectOptions;
  readonly #udp: UdpSocket;
  readonly #tcp: Server;
  #raw = -1;
  readonly #connections = new Set<Socket>();
  readonly #connectionsByEndpoint = new Map<number, number>();
  /** Per endpoint: tokens left and when they were last topped up (ms). */
  readonly #buckets = new Map<number, { tokens: number; at: number }>();
  readonly #stats: DnsRedirectStats = { datagrams: 0, connections: 0, notAnEndpoint: 0, noOriginalDestination: 0, unanswered: 0, sendFailures: 0, refusedConnections: 0, rateLimited: 0, truncated: 0 };

  constructor(options: DnsRedirectOptions) {
    this.#options = options;
    this.#udp = createSocket({ type: 'udp4', reuseAddr: false });
    // A query that fails on the way is not answered (the pod's library asks again); it never
    // becomes an unhandled rejection that would end the agent.
    this.#udp.on('message', (bytes, from) => {
      const datagram = options.udpHandoff ? this.#unframe(bytes, from) : { bytes, from };
      if (datagram !== undefined) void this.#onDatagram(datagram.bytes, datagram.from).catch(() => this.#stats.unanswered++);
    });
    this.#tcp = createServer({ pauseOnConnect: false }, (socket) => this.#onConnection(socket));
    this.#tcp.maxConnections = options.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
  }

  get port(): number {
    return this.#options.port;
  }

  /** The handoff socket's port (udpHandoff), once listening. */
  get udpPort(): number {
    return this.#udp.address().port;
  }

  /** The only port on 127.0.0.1 handoffs are taken from (udpHandoff): any other local sender could claim to be any pod. */
  handoffFrom = 0;

  #unframe(frame: Buffer, from: RemoteInfo): { bytes: Buffer; from: RemoteInfo } | undefined {
    if (from.address !== '127.0.0.1' || from.port !== this.handoffFrom || this.handoffFrom === 0 || frame.length < 6) return undefined;
    const address = Addr.fromBytes(frame.subarray(0, 4)).toString();
    const bytes = frame.subarray(6);
    return { bytes, from: { address, family: 'IPv4', port: frame.readUInt16BE(4), size: bytes.length } };
  }

  get stats(): Readonly<DnsRedirectStats> {
    return { ...this.#stats };
  }

  async listen(): Promise<void> {
    const host = this.#options.host ?? '127.0.0.1';
    this.#raw = rawIpv4Socket();
    const handoff = this.#options.udpHandoff === true;
    await new Promise<void>((resolve, reject) => {
      this.#udp.once('error', reject);
      this.#udp.bind({ address: handoff ? '127.0.0.1' : host, port: handoff ? 0 : this.#options.port, exclusive: true }, () => {
        this.#udp.off('error', reject);
        resolve();
      });
    });
    // The kernel hands a datagram the datapath assigned to a socket only to a transparent one.
    if (!handoff) makeDatagramSocketTransparent(this.#udp);
    // Later errors of a bound socket (ICMP unreachable on a send) leave it working.
    this.#udp.on('error', () => undefined);
    await new Promise<void>((resolve, reject) => {
      this.#tcp.once('error', reject);
      this.#tcp.listen({ host, port: this.#options.port, exclusive: true }, () => {
        this.#tcp.off('error', reject);
        resolve();
      });
    });
    makeListenerTransparent(this.#tcp);
    if (this.#options.listeners !== undefined) publishListener(this.#options.listeners, this.#tcp, this.#options.port);
  }

  async close(): Promise<void> {
    for (const socket of this.#connections) socket.destroy();
    await Promise.all([new Promise<void>((resolve) => this.#tcp.close(() => resolve())), new Promise<void>((resolve) => this.#udp.close(() => resolve()))]).catch(() => undefined);
    if (this.#raw >= 0) closeDescriptor(this.#raw);
    this.#raw = -1;
  }

  /** Takes one of the endpoint's tokens; false when it has none left. */
  #withinRate(endpoint: number): boolean {
    const rate = this.#options.endpointRateLimit ?? 0;
    if (rate <= 0) return true;
    const now = performance.now();
    let bucket = this.#buckets.get(endpoint);
    if (bucket === undefined) {
      // Forgotten endpoints' buckets go when the map grows past any node's endpoint count.
      if (this.#buckets.size >= 65_536) this.#buckets.clear();
      this.#buckets.set(endpoint, (bucket = { tokens: rate, at: now }));
    } else {
      bucket.tokens = Math.min(rate, bucket.tokens + ((now - bucket.at) * rate) / 1000);
      bucket.at = now;
    }
    if (bucket.tokens < 1) {
      this.#stats.rateLimited++;
      return false;
    }
    bucket.tokens -= 1;
    return true;
  }

  async #onDatagram(bytes: Buffer, from: RemoteInfo): Promise<void> {
    this.#stats.datagrams++;
    const known = this.#options.endpointOf(from.address);
    const endpoint = typeof known === 'object' ? await known : known;
    if (endpoint === undefined) {
      this.#stats.notAnEndpoint++;
      return;
    }
    if (!this.#withinRate(endpoint)) return;
    const resolver = this.#options.originalDestination(from.address, from.port);
    if (resolver === undefined) {
      this.#stats.noOriginalDestination++;
      return;
    }
    const outcome = await this.#options.answer({ endpoint, resolver, protocol: 'UDP', payload: bytes }, from.port, from.address);
    if (outcome.response === undefined) {
      this.#stats.unanswered++;
      return;
    }
    this.#sendAsResolver(resolver, from, outcome.response);
  }

  /**
   * The answer as a datagram from the resolver to the pod, checksums and all. One too big for the
   * path (a raw packet is never fragmented) goes as its header and question with TC set, which
   * sends the pod's resolver library to TCP, as a resolver truncates.
   */
  #sendAsResolver(resolver: Resolver, to: RemoteInfo, payload: Buffer): void {
    const send = (bytes: Buffer) => {
      const packet = buildIpv4Frame({ src: resolver.address, dst: to.address, udp: { sport: resolver.port, dport: to.port }, payload: bytes }).subarray(ETH_HLEN);
      sendIpv4Packet(this.#raw, packet, Addr.parse(to.address).toUint32());
    };
    if (this.#raw < 0) {
      this.#stats.sendFailures++;
      return;
    }
    try {
      if (IPV4_HEADER + IPPROTO_UDP_HEADER + payload.length > 0xffff) throw new SocketOptionError('an answer over 64 KiB', EMSGSIZE);
      send(payload);
    } catch (error) {
      const truncated = error instanceof SocketOptionError && error.errno === EMSGSIZE ? truncatedAnswer(payload) : undefined;
      try {
        if (truncated === undefined) throw error;
        send(truncated);
        this.#stats.truncated++;
      } catch {
        // A full socket buffer or a pod gone: the pod's resolver library asks again.
        this.#stats.sendFailures++;
      }
    }
  }

  #onConnection(socket: Socket): void {
    this.#stats.connections++;
    const known = socket.remoteAddress === undefined ? undefined : this.#options.endpointOf(socket.remoteAddress.replace(/^::ffff:/, ''));
    if (typeof known !== 'object') return this.#serve(socket, known);
    // Nothing is read before the sender is known.
    socket.pause();
    known.then(
      (endpoint) => this.#serve(socket, endpoint),
      () => socket.destroy(),
    );
  }

  #serve(socket: Socket, endpoint: number | undefined): void {
    const resolverAddress = socket.localAddress?.replace(/^::ffff:/, '');
    if (endpoint === undefined || resolverAddress === undefined || socket.localPort === undefined || socket.remotePort === undefined) {
      this.#stats.notAnEndpoint++;
      socket.destroy();
      return;
    }
    const open = this.#connectionsByEndpoint.get(endpoint) ?? 0;
    if (open >= MAX_TCP_CONNECTIONS_PER_ENDPOINT) {
      this.#stats.refusedConnections++;
      socket.destroy();
      return;
    }
    this.#connectionsByEndpoint.set(endpoint, open + 1);
    const resolver: Resolver = { address: resolverAddress, port: socket.localPort };
    const sourcePort = socket.remotePort;
    this.#connections.add(socket);
    socket.setTimeout((this.#options.idleTimeoutSeconds ?? DEFAULT_IDLE_TIMEOUT_S) * 1000, () => socket.destroy());
    socket.on('close', () => {
      this.#connections.delete(socket);
      countDown(this.#connectionsByEndpoint, endpoint);
    });
    socket.on('error', () => socket.destroy());
    let buffered: Buffer = Buffer.alloc(0);
    let inFlight = 0;
    const drain = () => {
      while (buffered.length >= 2 && buffered.length >= 2 + buffered.readUInt16BE(0) && inFlight < MAX_TCP_IN_FLIGHT) {
        const length = buffered.readUInt16BE(0);
        const payload = Buffer.from(buffered.subarray(2, 2 + length));
        buffered = buffered.subarray(2 + length);
        if (!this.#withinRate(endpoint)) continue;
        inFlight++;
        void this.#options
          .answer({ endpoint, resolver, protocol: 'TCP', payload }, sourcePort, socket.remoteAddress?.replace(/^::ffff:/, '') ?? '')
          .catch(() => ({ response: undefined }) as Pick<DnsOutcome, 'response'>)
          .then((outcome) => {
            if (outcome.response === undefined) {
              // Too broken to answer: a stream that sends it is not worth keeping.
              this.#stats.unanswered++;
              socket.destroy();
              return;
            }
            if (!socket.destroyed) socket.write(tcpFrame(outcome.response));
          })
          .finally(() => {
            inFlight--;
            if (socket.isPaused() && !socket.destroyed) socket.resume();
            drain();
          });
      }
      if (inFlight >= MAX_TCP_IN_FLIGHT) socket.pause();
    };
    socket.on('data', (chunk: Buffer) => {
      buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk]);
      drain();
    });
    socket.resume();
  }
}
