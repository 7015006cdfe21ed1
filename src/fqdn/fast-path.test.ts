/**
 * The DNS fast path's contracts with the rest: the datapath's ciliate_proxy4 layout and its flow
 * records as the worker reads them, and the listener's handoff socket, which takes datagrams only
 * from the fast path's own socket (any other local sender could claim to be any pod).
 * @module
 */
import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { test } from 'node:test';
import { proxy4Key, proxy4Value } from '../datapath/index.ts';
import { DnsFastPath, FLOW_HEADER_SIZE } from './fast-path.ts';
import { DnsRedirectListener } from './redirect.ts';
import { freePort } from '../store/etcd-testing.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('the fast path reads ciliate_proxy4 and writes flow records in the layouts the TypeScript side uses', () => {
  assert.deepEqual(DnsFastPath.layout(), { proxy4Key: proxy4Key.size, proxy4Value: proxy4Value.size, flowHeader: FLOW_HEADER_SIZE });
});

test('the handoff socket takes framed datagrams from the fast path\'s port only', async (t) => {
  const answered: string[] = [];
  const listener = new DnsRedirectListener({
    port: await freePort(),
    udpHandoff: true,
    endpointOf: (address) => (address === '10.1.2.3' ? 7 : undefined),
    originalDestination: () => ({ address: '10.96.0.10', port: 53 }),
    answer: async (query, sourcePort, sourceAddress) => {
      answered.push(`${sourceAddress}:${sourcePort} ${query.endpoint}`);
      return { verdict: 'denied', rcode: 5, learned: [] };
    },
  });
  await listener.listen();
  t.after(() => listener.close());
  const genuine = createSocket('udp4');
  const intruder = createSocket('udp4');
  t.after(() => {
    genuine.close();
    intruder.close();
  });
  await new Promise<void>((r) => genuine.bind(0, '127.0.0.1', r));
  await new Promise<void>((r) => intruder.bind(0, '127.0.0.1', r));
  listener.handoffFrom = genuine.address().port;
  const frame = Buffer.concat([Buffer.from([10, 1, 2, 3, 0x9c, 0x40]), Buffer.from('query')]);
  intruder.send(frame, listener.udpPort, '127.0.0.1');
  genuine.send(Buffer.from([10, 1, 2]), listener.udpPort, '127.0.0.1');
  genuine.send(frame, listener.udpPort, '127.0.0.1');
  for (let i = 0; i < 100 && answered.length === 0; i++) await sleep(10);
  await sleep(50);
  assert.deepEqual(answered, ['10.1.2.3:40000 7'], 'the intruder\'s frame and the short one were ignored');
});
