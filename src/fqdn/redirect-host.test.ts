/**
 * The DNS redirect worker on loopback, with a real map of original destinations as the datapath
 * would fill it: queries are answered from the worker's thread; a change of what the agent answers
 * is obeyed by the very next query once the agent invalidates; addresses already allowed do not
 * hold answers up; and a worker that dies is started again and answers again.
 * @module
 */
import assert from 'node:assert/strict';
import { createSocket, type RemoteInfo } from 'node:dgram';
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test, type TestContext } from 'node:test';
import { decode, encode } from 'dns-packet';
import pino from 'pino';
import { serveDns } from '../../test/support/dns-server.ts';
import { IPPROTO_UDP, proxy4Key, proxy4Value } from '../datapath/index.ts';
import { BpfMap, MapType } from '../ebpf/index.ts';
import { pinDir } from '../ebpf/internal/testutils.ts';
import type { DnsVerdict } from '../policy/index.ts';
import { freePort } from '../store/etcd-testing.ts';
import { DnsRedirectWorker, type AnswerAddress, type HandledQuery } from './index.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * A resolver on loopback, a pinned map of original destinations as the datapath would fill it for
 * one client socket, and a worker judging with `verdict()`: `ask(id)` sends one query and waits.
 */
async function setUp(t: TestContext, options: { fastPath: boolean; endpointRateLimit?: number; realtimeBudget?: number }) {
  const records: Record<string, { a: string[]; ttl: number }> = { 'api.example.com': { a: ['192.0.2.10'], ttl: 300 } };
  const server = await serveDns('127.0.0.1', 0, records);
  t.after(() => server.close());
  const pins = pinDir(t);
  const origins = BpfMap.create({ type: MapType.HASH, keySize: proxy4Key.size, valueSize: proxy4Value.size, maxEntries: 16, name: 'test_proxy4' }, proxy4Key, proxy4Value);
  t.after(() => origins.close());
  origins.pin(join(pins, 'proxy4'));

  const client = createSocket('udp4');
  t.after(() => client.close());
  await new Promise<void>((r) => client.bind(0, '127.0.0.1', r));
  // As bpf_lxc notes a redirected datagram: where this client's datagram was going.
  origins.update({ saddr: '127.0.0.1', sport: client.address().port, nexthdr: IPPROTO_UDP }, { orig_daddr: '127.0.0.1', orig_dport: server.port, handoff_port: 0, identity: 4242 });

  const state = { verdict: { allowed: true, allNames: true, ruleKeys: [] } as DnsVerdict };
  const learnedCalls: AnswerAddress[][] = [];
  const handled: HandledQuery[] = [];
  const worker = new DnsRedirectWorker({
    port: await freePort(),
    endpointRateLimit: options.endpointRateLimit ?? 0,
    rejectResponseCode: 'refused',
    forwardTimeoutMs: 2000,
    maxInFlight: 64,
    minTtl: 0,
    proxy4Pin: join(pins, 'proxy4'),
    fastPath: options.fastPath,
    fastPathRealtimeBudget: options.realtimeBudget ?? 50,
    endpoint: (address) => (address === '127.0.0.1' ? { id: 5, identity: 4242 } : undefined),
    verdict: () => state.verdict,
    learned: async (_endpoint, addresses) => void learnedCalls.push(addresses),
    handled: (queries) => handled.push(...queries),
    log: pino({ level: 'silent' }),
  });
  t.after(() => worker.close());
  await worker.start();
  assert.equal(worker.listening, true, worker.failure);

  const answers = new Map<number, { bytes: Buffer; from: RemoteInfo }>();
  client.on('message', (bytes, from) => answers.set(decode(bytes).id ?? -1, { bytes, from }));
  const send = (id: number) => client.send(encode({ type: 'query', id, flags: 1 << 8, questions: [{ type: 'A', name: 'api.example.com' }] }), worker.port, '127.0.0.1');
  const ask = async (id: number) => {
    send(id);
    for (let i = 0; i < 150 && !answers.has(id); i++) await sleep(20);
    const answer = answers.get(id);
    assert.ok(answer, `query ${id} was answered`);
    return { rcode: (decode(answer.bytes).flags ?? 0) & 0xf, from: answer.from.port, ips: decode(answer.bytes).answers?.map((a) => ('data' in a ? a.data : undefined)) };
  };
  return { records, server, state, learnedCalls, handled, worker, answers, send, ask };
}

for (const fastPath of [true, false]) {
test(`the redirect worker answers from its own thread${fastPath ? ' and its fast path' : ''}, obeys a changed verdict at the next query, and is started again when it dies`, async (t) => {
  const { records, server, state, learnedCalls, handled, worker, ask } = await setUp(t, { fastPath });
  assert.deepEqual(await ask(1), { rcode: 0, from: server.port, ips: ['192.0.2.10'] });
  assert.deepEqual(await ask(2), { rcode: 0, from: server.port, ips: ['192.0.2.10'] });
  assert.equal(learnedCalls.length, 1, 'an address already allowed for minutes does not hold the second answer for the agent');
  for (let i = 0; i < 50 && handled.length < 2; i++) await sleep(20);
  assert.deepEqual(handled.map((h) => [h.endpoint, h.outcome.verdict, h.outcome.name, h.outcome.answer?.ips]), [[5, 'forwarded', 'api.example.com', ['192.0.2.10']], [5, 'forwarded', 'api.example.com', ['192.0.2.10']]]);
  // The second, judged and learned already in this epoch, was the fast path's alone.
  if (fastPath) assert.deepEqual([worker.stats().fastForwarded, worker.stats().handedOff, worker.stats().forwarded], [1, 1, 1]);

  if (fastPath) {
    // The resolver answers a new address: the fast path never lets an answer through whose
    // addresses the agent has not taken; the proxy asks again and holds it until the agent has.
    records['api.example.com'] = { a: ['192.0.2.11'], ttl: 300 };
    const before = worker.stats().fastForwarded;
    assert.deepEqual(await ask(21), { rcode: 0, from: server.port, ips: ['192.0.2.11'] });
    assert.deepEqual(learnedCalls.at(-1)?.map((a) => a.ip), ['192.0.2.11'], 'the new address was told to the agent before the answer went out');
    assert.equal(worker.stats().fastForwarded, before);
    records['api.example.com'] = { a: ['192.0.2.10'], ttl: 300 };
    assert.deepEqual(await ask(22), { rcode: 0, from: server.port, ips: ['192.0.2.10'] });
    for (let i = 0; i < 50 && handled.length < 4; i++) await sleep(20);
    handled.splice(2);
  }

  // Rules narrowed: once the agent says so, the next query is refused, never the kept verdict.
  state.verdict = { allowed: true, allNames: false, selectors: [{ matchName: 'other.example.com' }], ruleKeys: [] };
  worker.invalidate();
  assert.equal((await ask(3)).rcode, 5, 'REFUSED');
  assert.equal(server.queries.length, fastPath ? 5 : 2, 'the refused query never reached the resolver');

  // Rules widened again: judged anew, but the address the agent was told of stays told (a
  // change of policy does not make the agent forget what it learned), so nothing waits for it.
  state.verdict = { allowed: true, allNames: true, ruleKeys: [] };
  worker.invalidate();
  const told = learnedCalls.length;
  assert.deepEqual(await ask(5), { rcode: 0, from: server.port, ips: ['192.0.2.10'] });
  assert.equal(learnedCalls.length, told);

  // A dead worker is started again, and answers again.
  await worker.restart();
  for (let i = 0; i < 250 && !worker.listening; i++) await sleep(20);
  assert.deepEqual([worker.listening, worker.restarts], [true, 1]);
  assert.deepEqual(await ask(4), { rcode: 0, from: server.port, ips: ['192.0.2.10'] });
  // Counts run on across the restart: four datagrams (three forwarded) before it, one after. With
  // the fast path, what it had kept went with the epoch and with the worker: only the second
  // query was its own.
  const expected = fastPath ? { fastDatagrams: 7, handedOff: 5, fastForwarded: 2, datagrams: 5, forwarded: 4, denied: 1 } : { fastDatagrams: 0, handedOff: 0, fastForwarded: 0, datagrams: 5, forwarded: 4, denied: 1 };
  for (let i = 0; i < 50 && worker.stats().forwarded < expected.forwarded; i++) await sleep(20);
  const stats = worker.stats();
  assert.deepEqual(Object.fromEntries(Object.keys(expected).map((k) => [k, stats[k as keyof typeof expected]])), expected);
});
}

test('the fast path takes the per-endpoint rate limit before anything else: a burst past it is dropped unread', async (t) => {
  const { worker, answers, send, ask } = await setUp(t, { fastPath: true, endpointRateLimit: 10 });
  await ask(1);
  for (let id = 100; id < 140; id++) send(id);
  await sleep(500);
  const stats = worker.stats();
  const answered = [...answers.keys()].filter((id) => id >= 100).length;
  assert.ok(answered <= 10 && answered >= 5, `${answered} of the burst of 40 answered`);
  assert.equal(stats.fastRateLimited, 40 - answered, JSON.stringify(stats));
});

/** The scheduling policy of this process's thread named `name` (/proc stat field 41): 0 ordinary, 1 SCHED_FIFO. */
function threadPolicy(name: string): number | undefined {
  for (const tid of readdirSync('/proc/self/task')) {
    try {
      if (readFileSync(`/proc/self/task/${tid}/comm`, 'utf8').trim() !== name) continue;
      const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
      return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[38]);
    } catch {
      // The thread ended between the listing and the read.
    }
  }
  return undefined;
}

/** Whether this machine lets a root process run SCHED_FIFO (a container may not: then the fast path must stay ordinary). */
const realtimeAllowed = spawnSync('chrt', ['-f', '1', 'true']).status === 0;

test('the fast path\'s thread runs realtime so pod DNS does not wait for a CPU, and past its CPU budget it is an ordinary thread for a while', async (t) => {
  // A budget of 1 % of one CPU: a burst of queries goes past it.
  const { worker, send, ask } = await setUp(t, { fastPath: true, realtimeBudget: 1 });
  await ask(1);
  if (!realtimeAllowed) {
    // Refused realtime, it answers all the same as an ordinary thread and says so.
    assert.deepEqual([threadPolicy('dns-fastpath'), worker.stats().fastRealtime], [0, 0]);
    assert.equal((await ask(2)).rcode, 0);
    return;
  }
  assert.equal(threadPolicy('dns-fastpath'), 1, 'SCHED_FIFO');
  assert.deepEqual([worker.stats().fastRealtime, worker.stats().fastRealtimeBackoffs], [1, 0]);
  for (let round = 0; round < 20 && worker.stats().fastRealtimeBackoffs === 0; round++) {
    for (let id = 1000; id < 1300; id++) send(id);
    await sleep(50);
  }
  assert.ok(worker.stats().fastRealtimeBackoffs >= 1, `past its budget the thread backed off: ${JSON.stringify(worker.stats())}`);
  // Idle again, it is realtime again after its second as an ordinary thread.
  for (let i = 0; i < 100 && threadPolicy('dns-fastpath') !== 1; i++) await sleep(50);
  assert.equal(threadPolicy('dns-fastpath'), 1);
});

test('with a realtime budget of 0 the fast path\'s thread is an ordinary one', async (t) => {
  const { worker, ask } = await setUp(t, { fastPath: true, realtimeBudget: 0 });
  await ask(1);
  assert.equal(threadPolicy('dns-fastpath'), 0);
  assert.equal(worker.stats().fastRealtime, 0);
});
