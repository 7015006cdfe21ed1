/**
 * The DNS proxy against a real DNS server on loopback: allowed names forwarded and their answers
 * learned before they are returned, others refused without reaching the server, answers that do
 * not match the query ignored, a silent resolver answered with SERVFAIL.
 * @module
 */
import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { test } from 'node:test';
import { decode, encode } from 'dns-packet';
import { serveDns } from '../../test/support/dns-server.ts';
import { DnsProxy, RCODE, answerDetails, presentationName, type AnswerAddress } from './index.ts';

const query = (name: string, id = 4242) => encode({ type: 'query', id, flags: 1 << 8, questions: [{ type: 'A', name }] });
const rcodeOf = (bytes: Buffer) => (decode(bytes).flags ?? 0) & 0xf;

test('allowed names are forwarded to the resolver the query was sent to, learned, then answered; others refused', async (t) => {
  const server = await serveDns('127.0.0.1', 0, { 'api.example.com': { a: ['192.0.2.10', '192.0.2.11'], ttl: 30 }, 'www.example.com': { cname: 'edge.cdn.net', ttl: 60 }, 'edge.cdn.net': { a: ['192.0.2.20'], ttl: 20 }, 'evil.example.org': { a: ['203.0.113.66'], ttl: 30 } });
  t.after(() => server.close());
  const learned: Array<[number, AnswerAddress[]]> = [];
  const order: string[] = [];
  const proxy = new DnsProxy({
    allows: (endpoint, resolver, protocol, name) => endpoint === 7 && resolver.port === server.port && protocol === 'UDP' && name.endsWith('example.com'),
    learned: async (endpoint, addresses) => {
      learned.push([endpoint, addresses]);
      await new Promise((r) => setTimeout(r, 20));
      order.push('learned');
    },
  });
  t.after(() => proxy.close());
  const resolver = { address: '127.0.0.1', port: server.port };

  const ok = await proxy.handle({ endpoint: 7, resolver, protocol: 'UDP', payload: query('API.example.com') });
  order.push('answered');
  assert.equal(ok.verdict, 'forwarded');
  assert.equal(ok.rcode, RCODE.NOERROR);
  assert.deepEqual(decode(ok.response!).answers?.map((a) => ('data' in a ? a.data : undefined)), ['192.0.2.10', '192.0.2.11'], "the resolver's answer, unchanged");
  assert.equal(decode(ok.response!).id, 4242);
  assert.deepEqual(learned, [[7, [{ name: 'api.example.com', ip: '192.0.2.10', ttl: 30 }, { name: 'api.example.com', ip: '192.0.2.11', ttl: 30 }]]]);
  assert.deepEqual(order, ['learned', 'answered'], 'the answer waits until its addresses are learned');

  const viaCname = await proxy.handle({ endpoint: 7, resolver, protocol: 'UDP', payload: query('www.example.com') });
  assert.deepEqual(viaCname.learned, [{ name: 'www.example.com', ip: '192.0.2.20', ttl: 20 }, { name: 'edge.cdn.net', ip: '192.0.2.20', ttl: 20 }], 'learned under the question and the CNAME target');

  // Two endpoints' queries with the same id at once share the resolver's socket: neither gets the other's answer.
  const [a, b] = await Promise.all([
    proxy.handle({ endpoint: 7, resolver, protocol: 'UDP', payload: query('api.example.com', 7) }),
    proxy.handle({ endpoint: 7, resolver, protocol: 'UDP', payload: query('www.example.com', 7) }),
  ]);
  assert.deepEqual([decode(a.response!).id, decode(a.response!).questions?.[0].name, a.learned.map((l) => l.ip)], [7, 'api.example.com', ['192.0.2.10', '192.0.2.11']]);
  assert.deepEqual([decode(b.response!).id, decode(b.response!).questions?.[0].name, b.learned.map((l) => l.ip)], [7, 'www.example.com', ['192.0.2.20', '192.0.2.20']]);

  const denied = await proxy.handle({ endpoint: 7, resolver, protocol: 'UDP', payload: query('evil.example.org', 99) });
  assert.equal(denied.verdict, 'denied');
  assert.equal(rcodeOf(denied.response!), RCODE.REFUSED);
  assert.equal(decode(denied.response!).id, 99);
  assert.equal(decode(denied.response!).questions?.[0].name, 'evil.example.org');
  const other = await proxy.handle({ endpoint: 8, resolver, protocol: 'UDP', payload: query('api.example.com') });
  assert.equal(other.verdict, 'denied', 'another endpoint has other rules');
  assert.deepEqual(server.queries.slice(0, 2), ['api.example.com', 'www.example.com']);
  assert.equal(server.queries.length, 4, 'refused queries never reach the resolver');

  const nx = new DnsProxy({ allows: () => false, learned: () => undefined, rejectResponseCode: 'nameError' });
  assert.equal(rcodeOf((await nx.handle({ endpoint: 7, resolver, protocol: 'UDP', payload: query('x.example.org') })).response!), RCODE.NXDOMAIN);

  const garbage = await proxy.handle({ endpoint: 7, resolver, protocol: 'UDP', payload: Buffer.from('not dns') });
  assert.equal(garbage.verdict, 'error');
  assert.equal(garbage.response, undefined);
  const two = encode({ type: 'query', id: 1, questions: [{ type: 'A', name: 'a.example.com' }, { type: 'A', name: 'b.example.com' }] });
  assert.equal(rcodeOf((await proxy.handle({ endpoint: 7, resolver, protocol: 'UDP', payload: two })).response!), RCODE.FORMERR);
  assert.deepEqual(proxy.stats, { forwarded: 4, denied: 2, errors: 2, inFlight: 0 });
});

test('an answer with another id or question is ignored; a resolver that stays silent gets the endpoint SERVFAIL', async (t) => {
  // A resolver that first answers with the wrong id, then a wrong question, then right.
  const liar = createSocket('udp4');
  t.after(() => liar.close());
  await new Promise<void>((r) => liar.bind(0, '127.0.0.1', r));
  liar.on('message', (bytes, from) => {
    const q = decode(bytes);
    const send = (id: number, name: string, ip: string) =>
      liar.send(encode({ type: 'response', id, questions: [{ type: 'A', name }], answers: [{ type: 'A', name, ttl: 60, data: ip }] }), from.port, from.address);
    send(q.id! + 1, 'api.example.com', '203.0.113.1');
    send(q.id!, 'other.example.com', '203.0.113.2');
    setTimeout(() => send(q.id!, 'api.example.com', '192.0.2.10'), 20);
  });
  const learned: AnswerAddress[] = [];
  const proxy = new DnsProxy({ allows: () => true, learned: (_e, a) => void learned.push(...a), forwardTimeoutMs: 300 });
  t.after(() => proxy.close());
  const result = await proxy.handle({ endpoint: 1, resolver: { address: '127.0.0.1', port: liar.address().port }, protocol: 'UDP', payload: query('api.example.com') });
  assert.equal(result.verdict, 'forwarded');
  assert.deepEqual(learned.map((a) => a.ip), ['192.0.2.10'], 'only the matching answer is learned');

  const silent = createSocket('udp4');
  t.after(() => silent.close());
  await new Promise<void>((r) => silent.bind(0, '127.0.0.1', r));
  const began = Date.now();
  const timedOut = await proxy.handle({ endpoint: 1, resolver: { address: '127.0.0.1', port: silent.address().port }, protocol: 'UDP', payload: query('api.example.com') });
  assert.equal(timedOut.verdict, 'error');
  assert.equal(rcodeOf(timedOut.response!), RCODE.SERVFAIL);
  assert.ok(Date.now() - began >= 290, 'waited for the timeout');
});

test("a flow's names: fully qualified, a pod's control bytes escaped so it cannot forge an observe line; an answer's details follow the CNAME chain only", () => {
  assert.equal(presentationName('example.com'), 'example.com.');
  assert.equal(presentationName('a\nb 1\\é.example.com'), 'a\\010b\\0321\\092\\195\\169.example.com.');
  const details = answerDetails('www.example.com', [
    { type: 'CNAME', name: 'www.example.com', ttl: 300, data: 'edge.example.net' },
    { type: 'A', name: 'edge.example.net', ttl: 20, data: '192.0.2.7' },
    { type: 'AAAA', name: 'edge.example.net', ttl: 40, data: '2001:db8::7' },
    // Not of the question's chain: neither shown nor counted.
    { type: 'A', name: 'evil.example.org', ttl: 1, data: '203.0.113.9' },
  ]);
  assert.deepEqual(details, { ips: ['192.0.2.7', '2001:db8::7'], cnames: ['edge.example.net.'], rrtypes: ['CNAME', 'A', 'AAAA'], ttl: 20 });
});

test('a pod flooding a silent resolver fills only its own share of forwards: another pod still resolves', async (t) => {
  const server = await serveDns('127.0.0.1', 0, { 'api.example.com': { a: ['192.0.2.10'], ttl: 30 } });
  t.after(() => server.close());
  const silent = createSocket('udp4');
  t.after(() => silent.close());
  await new Promise<void>((r) => silent.bind(0, '127.0.0.1', r));
  const proxy = new DnsProxy({ allows: () => true, learned: () => undefined, forwardTimeoutMs: 500, maxInFlight: 8 });
  t.after(() => proxy.close());
  const blackhole = { address: '127.0.0.1', port: silent.address().port };
  const flood = Array.from({ length: 4 }, (_, i) => proxy.handle({ endpoint: 1, resolver: blackhole, protocol: 'UDP', payload: query('api.example.com', i) }));
  const turnedAway = await proxy.handle({ endpoint: 1, resolver: blackhole, protocol: 'UDP', payload: query('api.example.com', 9) });
  assert.equal(rcodeOf(turnedAway.response!), RCODE.SERVFAIL, 'past its share (a quarter of 8), at once');
  assert.equal(turnedAway.reason, '2 queries of endpoint 1 in flight');
  const other = await proxy.handle({ endpoint: 2, resolver: { address: '127.0.0.1', port: server.port }, protocol: 'UDP', payload: query('api.example.com') });
  assert.equal(other.verdict, 'forwarded', 'another endpoint is not starved');
  await Promise.all(flood);
  assert.equal(proxy.stats.inFlight, 0);
});

test('an answer whose addresses the policy cannot take is SERVFAIL, not an answer the pod could not use (nor a crash)', async (t) => {
  const server = await serveDns('127.0.0.1', 0, { 'api.example.com': { a: ['192.0.2.10'], ttl: 30 } });
  t.after(() => server.close());
  const proxy = new DnsProxy({
    allows: () => true,
    learned: () => {
      throw new Error('policy map full');
    },
  });
  t.after(() => proxy.close());
  const outcome = await proxy.handle({ endpoint: 1, resolver: { address: '127.0.0.1', port: server.port }, protocol: 'UDP', payload: query('api.example.com') });
  assert.deepEqual([outcome.verdict, outcome.rcode, rcodeOf(outcome.response!)], ['error', RCODE.SERVFAIL, RCODE.SERVFAIL]);
  assert.match(outcome.reason ?? '', /policy map full/);
});
