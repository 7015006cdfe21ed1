/**
 * The proxy process on its own (no agent, no datapath): a connection to its listener is judged
 * as if the datapath had redirected it, with 127.0.0.1 standing for both the client and the
 * original destination. Root (IP_TRANSPARENT, SO_MARK); loopback only.
 * @module
 */
import assert from 'node:assert/strict';
import http from 'node:http';
import { test } from 'node:test';
import pino from 'pino';
import type { L7HttpRecord } from '../observer/index.ts';
import { PolicyDirection, type PolicyMapEntry } from '../policy/index.ts';
import net from 'node:net';
import { HttpProxy, ProxySupervisor } from './index.ts';

const PORT = 20000 + Math.floor(Math.random() * 20000);
const IDENTITY = 4242;

function entry(http: { method?: string; path?: string }[]): PolicyMapEntry {
  return { key: { identity: IDENTITY, direction: PolicyDirection.INGRESS, protocol: 6, port: PORT, prefixLen: 64 }, deny: false, cookie: 1, ruleKeys: ['r'], l7: [{ ruleKey: 'r', http }] };
}

function get(path: string, agent?: http.Agent): Promise<{ status?: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port: PORT, path, agent, timeout: 5000 }, (res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode, body }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

test('the proxy process: denies with 403 Access denied, matches in linear time on hostile paths, and comes back with its policy after a crash', async (t) => {
  const records: L7HttpRecord[] = [];
  const proxy = new ProxySupervisor({ port: PORT, log: pino({ level: 'silent' }), onRecords: (r) => records.push(...r) });
  t.after(() => proxy.stop());
  proxy.setState({ revision: 1, identities: [['127.0.0.1', IDENTITY]], policies: [{ address: '127.0.0.1', entries: [entry([{ path: '/(a+)+b' }])] }] });
  await proxy.start();

  assert.deepEqual(await get('/x'), { status: 403, body: 'Access denied\r\n' });
  // (a+)+b backtracks exponentially on a's without a b: seconds at 28 characters, years at 60.
  const started = Date.now();
  assert.deepEqual(await get(`/${'a'.repeat(60)}`), { status: 403, body: 'Access denied\r\n' });
  assert.ok(Date.now() - started < 2000, `a hostile path took ${Date.now() - started} ms`);
  // Each request of a kept-alive connection is judged.
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  t.after(() => agent.destroy());
  assert.equal((await get('/y', agent)).status, 403);
  assert.equal((await get('/z', agent)).status, 403);
  for (let i = 0; i < 40 && records.length < 4; i++) await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(records.map((r) => [r.kind, r.verdict, r.method, r.url, r.source.identity]).slice(0, 2), [
    ['REQUEST', 'DROPPED', 'GET', `http://127.0.0.1:${PORT}/x`, IDENTITY],
    ['REQUEST', 'DROPPED', 'GET', `http://127.0.0.1:${PORT}/${'a'.repeat(60)}`, IDENTITY],
  ]);

  const pid = proxy.pid!;
  process.kill(pid, 'SIGKILL');
  await new Promise((r) => setTimeout(r, 50));
  await proxy.whenReady(10_000);
  assert.notEqual(proxy.pid, pid);
  assert.equal(proxy.status().restarts, 1);
  assert.deepEqual(await get('/x'), { status: 403, body: 'Access denied\r\n' }, 'the new process has the policy');
});

test('closing the proxy closes every client connection, whatever it speaks or before it has said: a stop never waits on a client', async () => {
  const proxy = new HttpProxy({ port: 0, emit: () => undefined });
  proxy.setState({ revision: 1, identities: [], policies: [] });
  const port = await proxy.listen();
  const open = (first?: string) =>
    new Promise<net.Socket>((resolve) => {
      const socket = net.connect(port, '127.0.0.1', () => {
        if (first) socket.write(first);
        resolve(socket);
      });
      socket.on('data', () => undefined);
      socket.on('error', () => undefined);
    });
  const clients = [await open('GET / HTTP/1.1\r\nHost: x\r\n\r\n'), await open('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), await open()];
  await new Promise((resolve) => setTimeout(resolve, 200));
  const closed = Promise.all(clients.map((c) => new Promise((resolve) => (c.destroyed ? resolve(undefined) : c.once('close', resolve)))));
  const outcome = await Promise.race([proxy.close().then(() => 'closed'), new Promise((resolve) => setTimeout(() => resolve('still waiting after 3 s'), 3000))]);
  assert.equal(outcome, 'closed');
  await closed;
});

test('a connection the proxy answered for the last time (a denied upgrade) is dropped if its client never closes it: no client holds one of its connections for ever', async () => {
  const proxy = new HttpProxy({ port: 0, emit: () => undefined, lingerMs: 300 });
  proxy.setState({ revision: 1, identities: [], policies: [] });
  const port = await proxy.listen();
  // A client that does not close its side when the proxy closes its own.
  const socket = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  let answer = '';
  const errored = new Promise<string>((resolve) => socket.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? String(e))));
  socket.on('data', (d) => (answer += d));
  const ended = new Promise((resolve) => socket.once('end', resolve));
  socket.write('GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n');
  await ended;
  assert.match(answer, /^HTTP\/1\.1 403 Forbidden\r\n/);
  // The client keeps its side open. Past the linger the proxy has let its socket go, so what the
  // client sends then is answered with a reset by the kernel (seen at the next write), not
  // swallowed by the proxy.
  await new Promise((resolve) => setTimeout(resolve, 600));
  socket.write('still here');
  await new Promise((resolve) => setTimeout(resolve, 100));
  socket.write('and here');
  const outcome = await Promise.race([errored, new Promise((resolve) => setTimeout(() => resolve('no reset: the proxy still holds the connection'), 1000))]);
  socket.destroy();
  await proxy.close();
  assert.match(String(outcome), /^(ECONNRESET|EPIPE)$/);
});

