/**
 * The Observer gRPC service: GetFlows, ServerStatus, GetNodes and GetNamespaces over a backend
 * (an agent's FlowObserver, or the relay's merge of many), served on a root-only Unix socket and
 * on TCP (with TLS when given certificates). A malformed request is INVALID_ARGUMENT naming the field.
 * @module
 */
import { once } from 'node:events';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { GrpcListeners } from '../grpc/index.ts';
import { InvalidRequestError, ObserverError } from './errors.ts';
import { parseFlowsRequest, type FlowObserver } from './observer.ts';
import { healthServiceDefinition, observerServiceDefinition, type ObserverNode } from './proto.ts';
import type { ServerTlsMaterial } from './tls.ts';
import { timestampFromNs, type GetFlowsRequest, type GetFlowsResponse, type ServerStatusResponse } from './types.ts';

export interface ObserverServerOptions {
  observer: FlowObserver;
  nodeName: string;
  nodeAddress: string;
  version: string;
  /** Namespaces of the pods this node knows (local and remote). */
  namespaces(): string[];
  log: Logger;
}

export interface ObserverNamespace {
  cluster?: string;
  namespace?: string;
}

/**
 * What answers the Observer API: one agent's flow buffer, or a relay merging many. `flows` ends
 * when the request is answered (or, following, when `signal` aborts); what it throws becomes the
 * call's status.
 */
export interface ObserverBackend {
  flows(request: GetFlowsRequest, signal: AbortSignal): AsyncIterable<GetFlowsResponse>;
  serverStatus(): ServerStatusResponse | Promise<ServerStatusResponse>;
  nodes(): ObserverNode[] | Promise<ObserverNode[]>;
  namespaces(): ObserverNamespace[] | Promise<ObserverNamespace[]>;
}

const nowNs = () => BigInt(Date.now()) * 1_000_000n;

function statusOf(error: unknown): grpc.StatusObject {
  if (InvalidRequestError.is(error)) return { code: grpc.status.INVALID_ARGUMENT, details: (error as Error).message, metadata: new grpc.Metadata() };
  if (ObserverError.is(error) && (error as ObserverError).code === 'ERR_OBSERVER_UNAVAILABLE') return { code: grpc.status.UNAVAILABLE, details: (error as Error).message, metadata: new grpc.Metadata() };
  return { code: grpc.status.INTERNAL, details: (error as Error)?.message ?? String(error), metadata: new grpc.Metadata() };
}

function unary<T>(answer: () => T | Promise<T>): (call: unknown, callback: grpc.sendUnaryData<T>) => void {
  return (_call, callback) => {
    Promise.resolve()
      .then(answer)
      .then(
        (response) => callback(null, response),
        (error: unknown) => callback(statusOf(error)),
      );
  };
}

/** The Observer service (and gRPC health) over any backend, on Unix sockets and TCP. */
export class ObserverGrpcServer {
  readonly #server = new grpc.Server();
  readonly #backend: ObserverBackend;
  readonly #listeners = new GrpcListeners(
    this.#server,
    (address, error) => new ObserverError('ERR_OBSERVER_LISTEN', `serving the Observer API on ${address}: ${error.message}`, { cause: error }),
  );

  constructor(backend: ObserverBackend) {
    this.#backend = backend;
    this.#server.addService(observerServiceDefinition(), {
      GetFlows: (call: grpc.ServerWritableStream<GetFlowsRequest, GetFlowsResponse>) => void this.#getFlows(call),
      ServerStatus: unary(() => backend.serverStatus()),
      GetNodes: unary(async () => ({ nodes: await backend.nodes() })),
      GetNamespaces: unary(async () => ({ namespaces: await backend.namespaces() })),
    });
    // Serving at all means serving: the observer has no state in which it answers but is unwell.
    const serving = { status: 'SERVING' };
    this.#server.addService(healthServiceDefinition(), {
      Check: (_call: grpc.ServerUnaryCall<object, object>, callback: grpc.sendUnaryData<object>) => callback(null, serving),
      Watch: (call: grpc.ServerWritableStream<object, object>) => call.write(serving),
    });
  }

  async #getFlows(call: grpc.ServerWritableStream<GetFlowsRequest, GetFlowsResponse>): Promise<void> {
    const abort = new AbortController();
    const cancel = () => abort.abort();
    call.on('cancelled', cancel);
    call.on('close', cancel);
    try {
      for await (const response of this.#backend.flows(call.request, abort.signal)) {
        // A slow client holds the reader back; the buffer overwriting under it is counted as loss.
        if (!call.write(response)) await Promise.race([once(call, 'drain'), once(abort.signal, 'abort')]);
        if (abort.signal.aborted) break;
      }
      if (!abort.signal.aborted) call.end();
    } catch (error) {
      // grpc-js turns an 'error' on a server stream into the call's status.
      if (!abort.signal.aborted) call.emit('error', Object.assign(new Error(statusOf(error).details), statusOf(error)));
    } finally {
      abort.abort();
    }
  }

  /** Serves on a Unix socket only root can open (a stale socket file is replaced). */
  listenUnix(path: string): Promise<void> {
    return this.#listeners.listenUnix(path);
  }

  /**
   * Serves on `host:port`; with `tls`, over TLS only (read with readServerTls), and with its
   * client CAs only to clients presenting a certificate they signed. Returns the port bound.
   */
  listenTcp(address: string, tls?: ServerTlsMaterial): Promise<number> {
    const credentials = tls
      ? grpc.ServerCredentials.createSsl(tls.clientCa ?? null, [{ cert_chain: tls.cert, private_key: tls.key }], tls.clientCa !== undefined)
      : grpc.ServerCredentials.createInsecure();
    return this.#listeners.bind(address, credentials);
  }

  /** Stops serving: open streams are cancelled rather than waited for (a follow never ends). */
  async close(): Promise<void> {
    this.#listeners.close();
  }
}

/** One agent's Observer API: its flow buffer, its node, its namespaces. */
export class ObserverServer extends ObserverGrpcServer {
  readonly #options: ObserverServerOptions;

  constructor(options: ObserverServerOptions) {
    const node = (): ObserverNode => {
      const stats = options.observer.stats();
      return {
        name: options.nodeName,
        version: options.version,
        address: options.nodeAddress,
        state: 'NODE_CONNECTED',
        uptimeNs: String(process.hrtime.bigint() - options.observer.startedAt),
        numFlows: String(stats.numFlows),
        maxFlows: String(stats.maxFlows),
        seenFlows: String(stats.seenFlows),
      };
    };
    super({
      flows: (request, signal) => localFlows(options, request, signal),
      serverStatus: () => localStatus(options),
      nodes: () => [node()],
      namespaces: () => options.namespaces().map((namespace) => ({ namespace })),
    });
    this.#options = options;
  }

  serverStatus(): ServerStatusResponse {
    return localStatus(this.#options);
  }
}

function localStatus(options: ObserverServerOptions): ServerStatusResponse {
  const stats = options.observer.stats();
  return {
    numFlows: String(stats.numFlows),
    maxFlows: String(stats.maxFlows),
    seenFlows: String(stats.seenFlows),
    uptimeNs: String(process.hrtime.bigint() - options.observer.startedAt),
    numConnectedNodes: { value: 1 },
    numUnavailableNodes: { value: 0 },
    version: options.version,
    flowsRate: options.observer.flowsRate(nowNs()),
    ciliateLostEvents: options.observer.lostEvents(),
  };
}

async function* localFlows(options: ObserverServerOptions, request: GetFlowsRequest, signal: AbortSignal): AsyncGenerator<GetFlowsResponse> {
  const query = parseFlowsRequest(request);
  for await (const entry of options.observer.flows(query, signal)) {
    const flow = entry.flow;
    yield flow ? { flow, nodeName: options.nodeName, time: flow.time } : { lostEvents: entry.lost, nodeName: options.nodeName, time: timestampFromNs(entry.timeNs) };
  }
}
