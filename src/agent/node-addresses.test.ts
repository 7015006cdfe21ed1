/**
 * NodeAddresses against the real kernel, in a network namespace of its own: the addresses there
 * at start, then additions and removals as they happen, an address on two interfaces counted
 * once, and nothing after stop(). Needs root and `npm run build` (the rtnetlink addon).
 * @module
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { pino } from 'pino';
import { NodeAddresses } from './node-addresses.ts';

const ipIn = (netns: string, args: string[]) => execFileSync('ip', ['-n', netns, ...args], { stdio: 'ignore' });

test('node addresses: those present at start, then additions and removals, an address on two interfaces held until both lose it', async (t) => {
  const netns = `nat${randomBytes(4).toString('hex')}`;
  execFileSync('ip', ['netns', 'add', netns]);
  t.after(() => execFileSync('ip', ['netns', 'del', netns]));
  ipIn(netns, ['link', 'add', 'a0', 'type', 'veth', 'peer', 'name', 'a1']);
  ipIn(netns, ['link', 'set', 'lo', 'up']);
  ipIn(netns, ['addr', 'add', '10.90.0.1/24', 'dev', 'a0']);

  const log: string[] = [];
  let changed: (() => void) | undefined;
  const addresses = new NodeAddresses(
    {
      added: (address) => (log.push(`+${address}`), changed?.()),
      removed: (address) => (log.push(`-${address}`), changed?.()),
    },
    pino({ level: 'silent' }),
    { netns: `/run/netns/${netns}` },
  );
  t.after(() => addresses.stop());
  const until = async (entry: string): Promise<void> => {
    const deadline = Date.now() + 5000;
    while (!log.includes(entry)) {
      if (Date.now() > deadline) assert.fail(`no ${entry} within 5 s; saw ${log.join(' ')}`);
      await new Promise<void>((resolve) => {
        changed = resolve;
        setTimeout(resolve, 100);
      });
    }
  };

  await addresses.start();
  assert.deepEqual(log, ['+10.90.0.1'], 'the listing; loopback addresses are not reported');

  ipIn(netns, ['addr', 'add', '10.90.1.1/32', 'dev', 'a1']);
  await until('+10.90.1.1');
  ipIn(netns, ['addr', 'add', '10.90.1.1/32', 'dev', 'a0']);
  ipIn(netns, ['addr', 'del', '10.90.1.1/32', 'dev', 'a1']);
  ipIn(netns, ['addr', 'del', '10.90.0.1/24', 'dev', 'a0']);
  await until('-10.90.0.1');
  assert.deepEqual(addresses.list(), ['10.90.1.1'], 'still on a0');
  ipIn(netns, ['addr', 'del', '10.90.1.1/32', 'dev', 'a0']);
  await until('-10.90.1.1');
  assert.deepEqual(log, ['+10.90.0.1', '+10.90.1.1', '-10.90.0.1', '-10.90.1.1']);

  addresses.stop();
  ipIn(netns, ['addr', 'add', '10.90.2.1/32', 'dev', 'a0']);
  await new Promise((resolve) => setTimeout(resolve, 200));
  assert.deepEqual(addresses.list(), [], 'nothing followed after stop()');
  assert.equal(log.length, 4);
});
