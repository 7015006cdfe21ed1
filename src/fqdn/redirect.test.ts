/**
 * The listener the datapath hands pod DNS to, on loopback: a datagram is answered from the
 * resolver's address and port (a raw packet the client's unconnected socket takes as the
 * resolver's), a sender that is no endpoint is ignored, and one endpoint cannot hold more than its
 * share of TCP connections.
 * @module
 */
import assert from 'node:assert/strict';
import { createSocket, type RemoteInfo } from 'node:dgram';
import { connect, type Socket } from 'node:net';
import { test } from 'node:test';
import { decode, encode } from 'dns-packet';
import { serveDns } from '../../test/support/dns-server.ts';
import { freePort } from '../store/etcd-testing.ts';
import { DnsProxy, DnsRedirectListener, MAX_TCP_CONNECTIONS_PER_ENDPOINT } from './index.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('a datagram is judged, forwarded to the resolver the datapath noted, and answered from that resolver\'s address and port; a stranger is ignored', async (t) => {
  const server = await serveDns('127.0.0.1', 0, { 'api.example.com': { a: ['192.0.2.10'], ttl: 30 } });
  t.after(() => server.close());
  const proxy = new DnsProxy({ allows: (_e, _r, _p, name) => name === 'api.example.com', learned: () => undefined });
  t.after(() => proxy.close());
  let endpointAddress = '127.0.0.1';
  const listener = new DnsRedirectListener({
    port: await freePort(),
    endpointOf: (address) => (address === endpointAddress ? 5 : undefined),
    originalDestination: () => ({ address: '127.0.0.1', port: server.port }),
    answer: (query) => proxy.handle(query),
  });
  await listener.listen();
  t.after(() => listener.close());

  const client = createSocket('udp4');
  t.after(() => client.close());
  await new Promise<void>((r) => client.bind(0, '127.0.0.1', r));
  const answers: Array<{ bytes: Buffer; from: RemoteInfo }> = [];
  client.on('message', (bytes, from) => answers.push({ bytes, from }));
  const ask = (name: string, id: number) => client.send(encode({ type: 'query', id, flags: 1 << 8, questions: [{ type: 'A', name }] }), listener.port, '127.0.0.1');

  ask('api.example.com', 11);
  ask('evil.example.org', 12);
  for (let i = 0; i < 100 && answers.length < 2; i++) await sleep(20);
  const byId = new Map(answers.map((a) => [decode(a.bytes).id, a]));
  assert.deepEqual(byId.get(11)?.from && [byId.get(11)!.from.address, byId.get(11)!.from.port], ['127.0.0.1', server.port], 'from the resolver, as the pod expects');
  assert.deepEqual(decode(byId.get(11)!.bytes).answers?.map((a) => ('data' in a ? a.data : undefined)), ['192.0.2.10']);
  assert.equal((decode(byId.get(12)!.bytes).flags ?? 0) & 0xf, 5, 'REFUSED, from the resolver too');
  assert.deepEqual(server.queries, ['api.example.com'], 'the refused name never reached the resolver');

  endpointAddress = '192.0.2.99';
  ask('api.example.com', 13);
  await sleep(200);
  assert.equal(answers.length, 2, 'a sender that is no local endpoint gets nothing');
  assert.equal(listener.stats.notAnEndpoint, 1);
});

test(`one endpoint holds at most ${MAX_TCP_CONNECTIONS_PER_ENDPOINT} TCP connections: the next is closed at once, and a slot freed is taken again`, async (t) => {
  const listener = new DnsRedirectListener({
    port: await freePort(),
    endpointOf: () => 5,
    originalDestination: () => undefined,
    answer: () => Promise.reject(new Error('no query is sent in this test')),
  });
  await listener.listen();
  t.after(() => listener.close());
  const open = (): Promise<{ socket: Socket; closed: Promise<void> }> =>
    new Promise((resolve, reject) => {
      const socket = connect({ host: '127.0.0.1', port: listener.port });
      const closed = new Promise<void>((r) => socket.once('close', () => r()));
      socket.once('connect', () => resolve({ socket, closed }));
      socket.once('error', reject);
    });
  const held: Socket[] = [];
  t.after(() => held.forEach((s) => s.destroy()));
  for (let i = 0; i < MAX_TCP_CONNECTIONS_PER_ENDPOINT; i++) held.push((await open()).socket);
  for (let i = 0; i < 100 && listener.stats.connections < MAX_TCP_CONNECTIONS_PER_ENDPOINT; i++) await sleep(20);
  const extra = await open();
  await Promise.race([extra.closed, sleep(2000).then(() => assert.fail('the connection past the share stays open'))]);
  assert.equal(listener.stats.refusedConnections, 1);
  assert.ok(held.every((s) => !s.destroyed), 'the held ones stay');
  held.pop()!.destroy();
  await sleep(100);
  const again = await open();
  held.push(again.socket);
  const outcome = await Promise.race([again.closed.then(() => 'closed'), sleep(300).then(() => 'open')]);
  assert.equal(outcome, 'open', 'a freed slot is taken again');
});

test('an endpoint past its query rate has its queries dropped unread; another endpoint is served', async (t) => {
  const server = await serveDns('127.0.0.1', 0, { 'api.example.com': { a: ['192.0.2.10'], ttl: 30 } });
  t.after(() => server.close());
  const proxy = new DnsProxy({ allows: () => true, learned: () => undefined });
  t.after(() => proxy.close());
  let sender = 5;
  const listener = new DnsRedirectListener({
    port: await freePort(),
    endpointOf: () => sender,
    originalDestination: () => ({ address: '127.0.0.1', port: server.port }),
    answer: (query) => proxy.handle(query),
    endpointRateLimit: 10,
  });
  await listener.listen();
  t.after(() => listener.close());
  const client = createSocket('udp4');
  t.after(() => client.close());
  await new Promise<void>((r) => client.bind(0, '127.0.0.1', r));
  let answered = 0;
  client.on('message', () => answered++);
  const ask = (id: number) => client.send(encode({ type: 'query', id, flags: 1 << 8, questions: [{ type: 'A', name: 'api.example.com' }] }), listener.port, '127.0.0.1');
  for (let i = 0; i < 40; i++) ask(i);
  await sleep(300);
  assert.ok(answered >= 10 && answered <= 14, `a burst of 40 gets about a second's worth (10) answered, got ${answered}`);
  assert.equal(listener.stats.rateLimited, 40 - answered);
  assert.equal(server.queries.length, answered, 'the dropped ones never reached the resolver');
  sender = 6;
  const before = answered;
  ask(100);
  await sleep(200);
  assert.equal(answered, before + 1, 'another endpoint has its own bucket');
});
