/**
 * The plugin's HTTP/1.1 exchange over a Unix socket, against node:http's server (what the agent
 * runs): bodies by content-length and chunked, errors with the socket's code, and the idle timeout.
 * @module
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type RequestListener } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { parseResponse, UnixHttpError, unixHttpRequest } from './unix-http.ts';

async function serve(t: TestContext, handler: RequestListener): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), 'ciliate-unix-http-'));
  const socketPath = join(dir, 'api.sock');
  const server = createServer(handler);
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  t.after(async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
    rmSync(dir, { recursive: true, force: true });
  });
  return socketPath;
}

test('a request carries its method, path and JSON body, and the answer comes back whole', async (t) => {
  const big = 'x'.repeat(300_000);
  const socketPath = await serve(t, (req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      const text = JSON.stringify({ method: req.method, url: req.url, body: Buffer.concat(chunks).toString(), big });
      res.writeHead(201, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
      res.end(text);
    });
  });
  const response = await unixHttpRequest({ socketPath, method: 'POST', path: '/v1/endpoints?x=1', body: '{"é":1}', timeoutMs: 5000 });
  assert.equal(response.status, 201);
  assert.deepEqual(JSON.parse(response.text), { method: 'POST', url: '/v1/endpoints?x=1', body: '{"é":1}', big });
});

test('a chunked answer is decoded', async (t) => {
  const socketPath = await serve(t, (_req, res) => {
    res.writeHead(404, { 'content-type': 'application/json' });
    res.write('{"error":');
    setTimeout(() => res.end('{"code":"ERR_NOT_FOUND"}}'), 10);
  });
  const response = await unixHttpRequest({ socketPath, method: 'GET', path: '/nope', timeoutMs: 5000 });
  assert.deepEqual([response.status, JSON.parse(response.text)], [404, { error: { code: 'ERR_NOT_FOUND' } }]);
});

test('no listener is ENOENT, a silent server times out, a cut-off answer is ERR_BAD_RESPONSE', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ciliate-unix-http-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  await assert.rejects(unixHttpRequest({ socketPath: join(dir, 'none.sock'), method: 'GET', path: '/', timeoutMs: 5000 }), (e) => e instanceof UnixHttpError && e.code === 'ENOENT');

  const silent = await serve(t, () => {});
  await assert.rejects(unixHttpRequest({ socketPath: silent, method: 'GET', path: '/', timeoutMs: 100 }), (e) => e instanceof UnixHttpError && e.code === 'ETIMEDOUT');

  assert.throws(() => parseResponse(Buffer.from('HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{}')), (e) => e instanceof UnixHttpError && /after 2 of 10 bytes/.test(e.message));
  assert.throws(() => parseResponse(Buffer.from('HTTP/1.1 200 OK\r\ncontent-le')), (e) => e instanceof UnixHttpError && e.code === 'ERR_BAD_RESPONSE');
  assert.throws(() => parseResponse(Buffer.from('SSH-2.0-OpenSSH\r\n\r\n')), (e) => e instanceof UnixHttpError && /not an HTTP\/1.x status line/.test(e.message));
});
