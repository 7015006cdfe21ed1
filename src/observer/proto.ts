/**
 * The Observer API's .proto files (written for Ciliate from Hubble's published field numbers),
 * loaded at run time with @grpc/proto-loader: no generated code to keep in step, and the
 * objects both ends handle are the plain ones in types.ts.
 * @module
 */
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { cancellableStream, unaryCall, type CancellableStream } from '../grpc/index.ts';
import type { GetFlowsRequest, GetFlowsResponse, ServerStatusResponse } from './types.ts';

/** Where observer/observer.proto, flow/flow.proto and relay/relay.proto live. */
export const PROTO_DIR = join(import.meta.dirname, 'proto');

/** Field names in lowerCamelCase, enums by name, 64-bit numbers as strings, oneof cases named. */
const LOADER_OPTIONS: protoLoader.Options = { keepCase: false, longs: String, enums: String, defaults: false, oneofs: true, includeDirs: [PROTO_DIR] };

let definition: protoLoader.PackageDefinition | undefined;

function packageDefinition(): protoLoader.PackageDefinition {
  definition ??= protoLoader.loadSync(['observer/observer.proto', 'grpc/health/v1/health.proto'], LOADER_OPTIONS);
  return definition;
}

/** The standard `grpc.health.v1.Health` service, which `hubble status` checks first. */
export function healthServiceDefinition(): grpc.ServiceDefinition {
  return packageDefinition()['grpc.health.v1.Health'] as grpc.ServiceDefinition;
}

/** Asks a server's `grpc.health.v1.Health/Check` (the overall service, ''). */
export function checkHealth(target: string): Promise<string> {
  const proto = grpc.loadPackageDefinition(packageDefinition()) as unknown as { grpc: { health: { v1: { Health: grpc.ServiceClientConstructor } } } };
  const client = new proto.grpc.health.v1.Health(target, grpc.credentials.createInsecure()) as grpc.Client & Record<string, unknown>;
  return unaryCall<{ status?: string }>(client, 'Check', { service: '' })
    .then((response) => response.status ?? 'UNKNOWN')
    .finally(() => client.close());
}

/** The `observer.Observer` service, for grpc.Server.addService. */
export function observerServiceDefinition(): grpc.ServiceDefinition {
  return packageDefinition()['observer.Observer'] as grpc.ServiceDefinition;
}

export interface ObserverNode {
  name: string;
  version?: string;
  address?: string;
  state?: string;
  tls?: { enabled?: boolean; serverName?: string };
  uptimeNs?: string;
  numFlows?: string;
  maxFlows?: string;
  seenFlows?: string;
}

export type FlowStream = CancellableStream<GetFlowsResponse>;

/** A client of the Observer API (an agent's, or anything that speaks it). */
export interface ObserverClient {
  getFlows(request: GetFlowsRequest): FlowStream;
  serverStatus(): Promise<ServerStatusResponse>;
  getNodes(): Promise<{ nodes?: ObserverNode[] }>;
  getNamespaces(): Promise<{ namespaces?: { cluster?: string; namespace?: string }[] }>;
  close(): void;
}

export interface ObserverClientOptions {
  /** TLS towards the server (also implied by `tlsCa`); without a CA the system's roots verify it. */
  tls?: boolean;
  /** PEM CA to verify a TLS server with; turns TLS on. */
  tlsCa?: Buffer;
  /** PEM certificate and key to present to a server that asks for one. */
  tlsCert?: Buffer;
  tlsKey?: Buffer;
  tlsServerName?: string;
  /** TLS without verifying the server's certificate (hubble's --tls-allow-insecure): encrypted, but to whoever answers. */
  tlsAllowInsecure?: boolean;
  /** Unary calls fail with DEADLINE_EXCEEDED after this long (default: no deadline). */
  callTimeoutMs?: number;
  /** Longest wait between reconnection attempts (gRPC's default: 120 s). */
  maxReconnectBackoffMs?: number;
}


/**
 * Connects to an Observer API at `target`: `unix:/path/to/hubble.sock` or `host:port`.
 *
 * @example
 * const client = connectObserver('unix:/var/run/ciliate/hubble.sock');
 * for await (const response of client.getFlows({ number: 20 })) console.log(response.flow);
 */
export function connectObserver(target: string, options: ObserverClientOptions = {}): ObserverClient {
  const proto = grpc.loadPackageDefinition(packageDefinition()) as unknown as { observer: { Observer: grpc.ServiceClientConstructor } };
  const insecure: grpc.VerifyOptions = { rejectUnauthorized: false, checkServerIdentity: () => undefined };
  const credentials =
    options.tls || options.tlsCa
      ? grpc.credentials.createSsl(options.tlsCa ?? null, options.tlsKey ?? null, options.tlsCert ?? null, options.tlsAllowInsecure ? insecure : undefined)
      : grpc.credentials.createInsecure();
  const channelOptions: grpc.ChannelOptions = {
    ...(options.tlsServerName ? { 'grpc.ssl_target_name_override': options.tlsServerName } : {}),
    ...(options.maxReconnectBackoffMs !== undefined ? { 'grpc.initial_reconnect_backoff_ms': Math.min(1000, options.maxReconnectBackoffMs), 'grpc.max_reconnect_backoff_ms': options.maxReconnectBackoffMs } : {}),
  };
  const client = new proto.observer.Observer(target, credentials, channelOptions) as grpc.Client & Record<string, unknown>;
  const callOptions = (): grpc.CallOptions => (options.callTimeoutMs !== undefined ? { deadline: Date.now() + options.callTimeoutMs } : {});
  const unary = <T>(method: string) => unaryCall<T>(client, method, {}, callOptions());
  return {
    getFlows(request) {
      const call = (client.GetFlows as (request: object) => grpc.ClientReadableStream<GetFlowsResponse>).call(client, request);
      return cancellableStream(call, (response) => response);
    },
    serverStatus: () => unary<ServerStatusResponse>('ServerStatus'),
    getNodes: () => unary('GetNodes'),
    getNamespaces: () => unary('GetNamespaces'),
    close: () => client.close(),
  };
}

export { status as GrpcStatus } from '@grpc/grpc-js';
