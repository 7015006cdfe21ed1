/**
 * One HTTP/1.1 request over a Unix socket, on node:net alone.
 *
 * Why not node:http: each CLI command is a short-lived process, and loading node:http (its
 * parser, agents, outgoing-message machinery) costs one about 16 MB of RSS and 30 ms on its
 * own. The agent's API answers every
 * non-streaming request with a content-length (src/agent/api-server.ts), and we send
 * `connection: close`, so a response is "the bytes until the server closes": no keep-alive,
 * pipelining or upgrade to handle. Chunked bodies are still decoded, so that a server that
 * streams its answer is read correctly rather than misread.
 * @module
 */
import { codedErrorFamily } from '../errors/index.ts';
import { connect } from 'node:net';

export interface UnixHttpResponse {
  status: number;
  /** The body, decoded as UTF-8 (chunked transfer coding removed). */
  text: string;
}

/** Why an exchange failed: a socket error (with its errno code), a timeout, or a malformed response. */
export class UnixHttpError extends codedErrorFamily<string>('unix-http') {}

export interface UnixHttpRequest {
  socketPath: string;
  method: string;
  path: string;
  /** A JSON body, already serialized. */
  body?: string;
  /** Idle time after which the exchange fails with code ETIMEDOUT. */
  timeoutMs: number;
}

/** Bodies larger than this ask before they are sent (Expect: 100-continue). */
const EXPECT_CONTINUE_BYTES = 64 * 1024;

/** Sends one request and resolves with the whole response once the server has closed. */
export function unixHttpRequest(request: UnixHttpRequest): Promise<UnixHttpResponse> {
  return new Promise<UnixHttpResponse>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let settled = false;
    const fail = (error: UnixHttpError): void => {
      if (settled) return;
      settled = true;
      socket.destroy();
      reject(error);
    };
    const socket = connect(request.socketPath);
    socket.setTimeout(request.timeoutMs, () => fail(new UnixHttpError('ETIMEDOUT', `no answer within ${request.timeoutMs} ms`)));
    socket.on('error', (error: NodeJS.ErrnoException) => fail(new UnixHttpError(error.code ?? 'ESOCKET', error.message)));
    // A large body waits for the server's "100 Continue" (Expect: 100-continue): a server that
    // refuses it (over its limit) answers at once instead, and the body is never sent into a
    // connection the server is closing.
    let awaitingContinue = false;
    socket.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      if (!awaitingContinue) return;
      const received = Buffer.concat(chunks);
      const headEnd = received.indexOf('\r\n\r\n');
      if (headEnd < 0) return;
      awaitingContinue = false;
      if (/^HTTP\/1\.[01] 100\b/.test(received.subarray(0, headEnd).toString('latin1'))) {
        chunks.length = 0;
        if (headEnd + 4 < received.length) chunks.push(received.subarray(headEnd + 4));
        socket.write(body!);
      }
    });
    socket.on('end', () => {
      if (settled) return;
      settled = true;
      socket.destroy();
      try {
        resolve(parseResponse(Buffer.concat(chunks)));
      } catch (error) {
        reject(error);
      }
    });
    const body = request.body === undefined ? undefined : Buffer.from(request.body, 'utf8');
    const head = [
      `${request.method} ${request.path} HTTP/1.1`,
      'host: localhost',
      'connection: close',
      ...(body ? ['content-type: application/json', `content-length: ${body.length}`] : []),
      ...(body && body.length > EXPECT_CONTINUE_BYTES ? ['expect: 100-continue'] : []),
      '',
      '',
    ].join('\r\n');
    socket.write(head);
    if (body && body.length > EXPECT_CONTINUE_BYTES) awaitingContinue = true;
    else if (body) socket.write(body);
  });
}

/** Parses a complete HTTP/1.1 response (status line, headers, body up to the connection's close). */
export function parseResponse(raw: Buffer): UnixHttpResponse {
  const headEnd = raw.indexOf('\r\n\r\n');
  if (headEnd < 0) throw new UnixHttpError('ERR_BAD_RESPONSE', `response ended inside its headers (${raw.length} bytes)`);
  const lines = raw.subarray(0, headEnd).toString('latin1').split('\r\n');
  const status = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0])?.[1];
  if (!status) throw new UnixHttpError('ERR_BAD_RESPONSE', `not an HTTP/1.x status line: ${JSON.stringify(lines[0].slice(0, 100))}`);
  const headers = new Map<string, string>();
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    if (colon > 0) headers.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim());
  }
  let body = raw.subarray(headEnd + 4);
  if (/\bchunked\b/i.test(headers.get('transfer-encoding') ?? '')) body = dechunk(body);
  else {
    const length = headers.get('content-length');
    if (length !== undefined) {
      const expected = Number(length);
      if (body.length < expected) throw new UnixHttpError('ERR_BAD_RESPONSE', `response body ended after ${body.length} of ${expected} bytes`);
      body = body.subarray(0, expected);
    }
  }
  return { status: Number(status), text: body.toString('utf8') };
}

function dechunk(body: Buffer): Buffer {
  const parts: Buffer[] = [];
  let at = 0;
  for (;;) {
    const lineEnd = body.indexOf('\r\n', at);
    if (lineEnd < 0) throw new UnixHttpError('ERR_BAD_RESPONSE', 'chunked response ended before its last chunk');
    const size = Number.parseInt(body.subarray(at, lineEnd).toString('latin1'), 16);
    if (!Number.isFinite(size)) throw new UnixHttpError('ERR_BAD_RESPONSE', 'chunked response has a malformed chunk size');
    if (size === 0) return Buffer.concat(parts);
    const start = lineEnd + 2;
    if (start + size > body.length) throw new UnixHttpError('ERR_BAD_RESPONSE', 'chunked response ended inside a chunk');
    parts.push(body.subarray(start, start + size));
    at = start + size + 2;
  }
}
