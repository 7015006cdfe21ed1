/**
 * What Ciliate's gRPC APIs (Hubble's Observer, Tetragon's) share around @grpc/grpc-js: binding a
 * server on TCP and on a root-only Unix socket, and a client's server stream that a caller can end
 * without its iteration failing.
 * @module
 */
import { chmodSync, mkdirSync, rmSync } from 'node:fs';
import { dirname } from 'node:path';
import * as grpc from '@grpc/grpc-js';

/** A grpc.Server's listeners: it binds addresses and removes the Unix sockets it made on close. */
export class GrpcListeners {
  readonly #server: grpc.Server;
  readonly #sockets: string[] = [];
  readonly #bindError: (address: string, error: Error) => Error;

  /** `bindError` turns a failed bind into the API's own error, naming the address. */
  constructor(server: grpc.Server, bindError: (address: string, error: Error) => Error) {
    this.#server = server;
    this.#bindError = bindError;
  }

  /** Binds `address` (`host:port` or `unix:/path`); returns the port bound (useful with port 0). */
  bind(address: string, credentials: grpc.ServerCredentials = grpc.ServerCredentials.createInsecure()): Promise<number> {
    return new Promise((resolve, reject) =>
      this.#server.bindAsync(address, credentials, (error, port) => (error ? reject(this.#bindError(address, error)) : resolve(port))),
    );
  }

  /** Serves on a Unix socket only root can open (a stale socket file is replaced). */
  async listenUnix(path: string): Promise<void> {
    mkdirSync(dirname(path), { recursive: true });
    rmSync(path, { force: true });
    await this.bind(`unix:${path}`);
    chmodSync(path, 0o600);
    this.#sockets.push(path);
  }

  /** Stops serving: open streams are cancelled rather than waited for (a follow never ends). */
  close(): void {
    this.#server.forceShutdown();
    for (const path of this.#sockets.splice(0)) rmSync(path, { force: true });
  }
}

export interface CancellableStream<T> extends AsyncIterable<T> {
  /** Ends the stream from this side; iteration then ends without an error. */
  cancel(): void;
}

/** A client's server stream as messages `map` keeps (undefined skips one), ended by cancel(). */
export function cancellableStream<Wire, T>(call: grpc.ClientReadableStream<Wire>, map: (wire: Wire) => T | undefined): CancellableStream<T> {
  let cancelled = false;
  return {
    cancel() {
      cancelled = true;
      call.cancel();
    },
    async *[Symbol.asyncIterator]() {
      try {
        for await (const wire of call) {
          const message = map(wire as Wire);
          if (message !== undefined) yield message;
        }
      } catch (error) {
        if (cancelled && (error as grpc.ServiceError).code === grpc.status.CANCELLED) return;
        throw error;
      }
    },
  };
}

type UnaryMethod = (request: object, options: grpc.CallOptions, callback: (error: grpc.ServiceError | null, response: unknown) => void) => void;

/** Calls unary `method` of a client made from a loaded package definition. */
export function unaryCall<T>(client: grpc.Client & Record<string, unknown>, method: string, request: object = {}, options: grpc.CallOptions = {}): Promise<T> {
  return new Promise<T>((resolve, reject) =>
    (client[method] as UnaryMethod).call(client, request, options, (error, response) => (error ? reject(error) : resolve(response as T))),
  );
}
