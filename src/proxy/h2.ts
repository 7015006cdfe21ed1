/**
 * HTTP/2 in the node proxy (cleartext with prior knowledge, as gRPC inside a cluster speaks it):
 * telling an HTTP/2 connection from an HTTP/1.1 one by its first bytes, the headers a stream
 * forwards and answers with, and the upstream sessions, one per client identity and destination,
 * whose connections carry the identity's mark as the HTTP/1.1 ones do.
 * @module
 */
import http2 from 'node:http2';
import net from 'node:net';
import type { HeaderEdit } from '../policy/index.ts';
import { markedTcpSocket } from './libc.ts';

/** What every HTTP/2 connection starts with (RFC 9113 3.4). */
const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
/** A connection that has not said what it speaks by then is closed. */
const SNIFF_TIMEOUT_MS = 15_000;

/**
 * Reads a new connection's first bytes and hands it to `h2` when they are HTTP/2's preface, to
 * `h1` otherwise, with those bytes. The HTTP/1.1 parser reads the socket's handle itself, so its
 * bytes are fed as a data event; the HTTP/2 session takes them back from the socket's buffer.
 */
export function routeConnection(socket: net.Socket, h1: net.Server, h2: net.Server): void {
  let seen: Buffer = Buffer.alloc(0);
  socket.setTimeout(SNIFF_TIMEOUT_MS, () => socket.destroy());
  socket.on('error', () => socket.destroy());
  const onData = (chunk: Buffer) => {
    seen = seen.length === 0 ? chunk : Buffer.concat([seen, chunk]);
    const n = Math.min(seen.length, PREFACE.length);
    const isH2 = seen.subarray(0, n).equals(PREFACE.subarray(0, n));
    if (isH2 && seen.length < PREFACE.length) return;
    socket.off('data', onData);
    socket.setTimeout(0);
    socket.pause();
    if (isH2) {
      socket.unshift(seen);
      h2.emit('connection', socket);
    } else {
      h1.emit('connection', socket);
      socket.emit('data', seen);
      socket.resume();
    }
  };
  socket.on('data', onData);
  socket.resume();
}

/** Connection-specific fields HTTP/2 forbids (RFC 9113 8.2.2); `te: trailers` is the exception. */
const CONNECTION_SPECIFIC = new Set(['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'host']);

/**
 * A stream's request headers as forwarded: the pseudo-headers of a request and every other field
 * but the connection-specific ones, then the rule's mismatch edits.
 */
export function h2RequestHeaders(headers: http2.IncomingHttpHeaders, edits: readonly HeaderEdit[]): http2.OutgoingHttpHeaders {
  const out: http2.OutgoingHttpHeaders = {};
  for (const name of Object.keys(headers)) {
    if (CONNECTION_SPECIFIC.has(name) || (name === 'te' && headers.te !== 'trailers')) continue;
    if (name.startsWith(':') && name !== ':method' && name !== ':path' && name !== ':authority' && name !== ':scheme') continue;
    out[name] = headers[name];
  }
  for (const edit of edits) {
    if (edit.action === 'DELETE') delete out[edit.name];
    else if (edit.action === 'REPLACE') out[edit.name] = edit.value;
    else {
      const had = out[edit.name];
      out[edit.name] = had === undefined ? edit.value : [...(Array.isArray(had) ? had : [String(had)]), edit.value];
    }
  }
  return out;
}

/** A response's (or trailers') fields as passed back: `:status` and the rest, no connection-specific ones. */
export function h2ResponseHeaders(headers: http2.IncomingHttpHeaders): http2.OutgoingHttpHeaders {
  const out: http2.OutgoingHttpHeaders = {};
  for (const name of Object.keys(headers)) {
    if (CONNECTION_SPECIFIC.has(name) || (name.startsWith(':') && name !== ':status')) continue;
    out[name] = headers[name];
  }
  return out;
}

/** Upstream HTTP/2 sessions, one per (mark, destination), kept while they live. */
export class H2Upstreams {
  readonly #sessions = new Map<string, http2.ClientHttp2Session>();

  session(mark: number, address: string, port: number): http2.ClientHttp2Session {
    const key = `${mark}|${address}|${port}`;
    const found = this.#sessions.get(key);
    if (found && !found.closed && !found.destroyed) return found;
    const session = http2.connect(`http://${address}:${port}`, {
      createConnection: () => new net.Socket({ fd: markedTcpSocket(mark), readable: true, writable: true }).connect(port, address),
    });
    const forget = () => {
      if (this.#sessions.get(key) === session) this.#sessions.delete(key);
    };
    session.on('close', forget);
    session.on('goaway', forget);
    session.on('error', forget);
    this.#sessions.set(key, session);
    return session;
  }

  close(): void {
    for (const session of this.#sessions.values()) session.destroy();
    this.#sessions.clear();
  }
}
