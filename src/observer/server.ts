/**
 * The Observer gRPC service over a FlowObserver: GetFlows, ServerStatus, GetNodes and
 * GetNamespaces, served on a root-only Unix socket and on TCP (with TLS when given
 * certificates). A malformed request is INVALID_ARGUMENT naming the field.
 * @module
 */
import { once } from 'node:events';
import { chmodSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { dirname } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { InvalidRequestError, ObserverError } from './errors.ts';
import { parseFlowsRequest, type FlowObserver } from './observer.ts';
import { healthServiceDefinition, observerServiceDefinition, type ObserverNode } from './proto.ts';
import { timestampFromNs, type GetFlowsRequest, type GetFlowsResponse, type ServerStatusResponse } from './types.ts';

export interface ObserverTls {
  certFile: string;
  keyFile: string;
  /** CAs whose client certificates are accepted; none: clients are not asked for one. */
  clientCaFiles: string[];
}

export interface ObserverServerOptions {
  observer: FlowObserver;
  nodeName: string;
  nodeAddress: string;
  version: string;
  /** Namespaces of the pods this node knows (local and remote). */
  namespaces(): string[];
  log: Logger;
}

const nowNs = () => BigInt(Date.now()) * 1_000_000n;

function statusOf(error: unknown): grpc.StatusObject {
  if (InvalidRequestError.is(error)) return { code: grpc.status.INVALID_ARGUMENT, details: (error as Error).message, metadata: new grpc.Metadata() };
  return { code: grpc.status.INTERNAL, details: (error as Error)?.message ?? String(error), metadata: new grpc.Metadata() };
}

export class ObserverServer {
  readonly #server = new grpc.Server();
  readonly #options: ObserverServerOptions;
  readonly #sockets: string[] = [];

  constructor(options: ObserverServerOptions) {
    this.#options = options;
    this.#server.addService(observerServiceDefinition(), {
      GetFlows: (call: grpc.ServerWritableStream<GetFlowsRequest, GetFlowsResponse>) => void this.#getFlows(call),
      ServerStatus: (_call: grpc.ServerUnaryCall<object, ServerStatusResponse>, callback: grpc.sendUnaryData<ServerStatusResponse>) =>
        callback(null, this.serverStatus()),
      GetNodes: (_call: grpc.ServerUnaryCall<object, { nodes: ObserverNode[] }>, callback: grpc.sendUnaryData<{ nodes: ObserverNode[] }>) =>
        callback(null, { nodes: [this.#node()] }),
      GetNamespaces: (_call: grpc.ServerUnaryCall<object, object>, callback: grpc.sendUnaryData<object>) =>
        callback(null, { namespaces: this.#options.namespaces().map((namespace) => ({ namespace })) }),
    });
    // Serving at all means serving: the observer has no state in which it answers but is unwell.
    const serving = { status: 'SERVING' };
    this.#server.addService(healthServiceDefinition(), {
      Check: (_call: grpc.ServerUnaryCall<object, object>, callback: grpc.sendUnaryData<object>) => callback(null, serving),
      Watch: (call: grpc.ServerWritableStream<object, object>) => call.write(serving),
    });
  }

  serverStatus(): ServerStatusResponse {
    const stats = this.#options.observer.stats();
    return {
      numFlows: String(stats.numFlows),
      maxFlows: String(stats.maxFlows),
      seenFlows: String(stats.seenFlows),
      uptimeNs: String(process.hrtime.bigint() - this.#options.observer.startedAt),
      numConnectedNodes: { value: 1 },
      numUnavailableNodes: { value: 0 },
      version: this.#options.version,
      flowsRate: this.#options.observer.flowsRate(nowNs()),
      ciliateLostEvents: this.#options.observer.lostEvents(),
    };
  }

  #node(): ObserverNode {
    const stats = this.#options.observer.stats();
    return {
      name: this.#options.nodeName,
      version: this.#options.version,
      address: this.#options.nodeAddress,
      state: 'NODE_CONNECTED',
      uptimeNs: String(process.hrtime.bigint() - this.#options.observer.startedAt),
      numFlows: String(stats.numFlows),
      maxFlows: String(stats.maxFlows),
      seenFlows: String(stats.seenFlows),
    };
  }

  async #getFlows(call: grpc.ServerWritableStream<GetFlowsRequest, GetFlowsResponse>): Promise<void> {
    const abort = new AbortController();
    const cancel = () => abort.abort();
    call.on('cancelled', cancel);
    call.on('close', cancel);
    try {
      const query = parseFlowsRequest(call.request);
      for await (const entry of this.#options.observer.flows(query, abort.signal)) {
        const response: GetFlowsResponse = entry.flow
          ? { flow: entry.flow, nodeName: this.#options.nodeName, time: entry.flow.time }
          : { lostEvents: entry.lost, nodeName: this.#options.nodeName, time: timestampFromNs(entry.timeNs) };
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
  async listenUnix(path: string): Promise<void> {
    mkdirSync(dirname(path), { recursive: true });
    rmSync(path, { force: true });
    await this.#bind(`unix:${path}`, grpc.ServerCredentials.createInsecure());
    chmodSync(path, 0o600);
    this.#sockets.push(path);
  }

  /** Serves on `host:port`; with `tls`, over TLS. Returns the port bound (useful with port 0). */
  async listenTcp(address: string, tls?: ObserverTls): Promise<number> {
    const credentials = tls
      ? grpc.ServerCredentials.createSsl(
          tls.clientCaFiles.length > 0 ? Buffer.concat(tls.clientCaFiles.map((f) => readFileSync(f))) : null,
          [{ cert_chain: readFileSync(tls.certFile), private_key: readFileSync(tls.keyFile) }],
          tls.clientCaFiles.length > 0,
        )
      : grpc.ServerCredentials.createInsecure();
    return this.#bind(address, credentials);
  }

  #bind(address: string, credentials: grpc.ServerCredentials): Promise<number> {
    return new Promise((resolve, reject) =>
      this.#server.bindAsync(address, credentials, (error, port) =>
        error ? reject(new ObserverError('ERR_OBSERVER_LISTEN', `serving the Observer API on ${address}: ${error.message}`, { cause: error })) : resolve(port),
      ),
    );
  }

  /** Stops serving: open streams are cancelled rather than waited for (a follow never ends). */
  async close(): Promise<void> {
    this.#server.forceShutdown();
    for (const path of this.#sockets) rmSync(path, { force: true });
  }
}
