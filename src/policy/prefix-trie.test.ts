import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseCidr, type Cidr } from './cidr.ts';
import { PrefixTrie } from './prefix-trie.ts';

const c = (text: string): Cidr => {
  const parsed = parseCidr(text);
  if ('error' in parsed) throw new Error(parsed.error);
  return parsed;
};

function trie(...prefixes: string[]): PrefixTrie<string> {
  const t = new PrefixTrie<string>();
  for (const p of prefixes) t.add(c(p), p);
  return t;
}

const containing = (t: PrefixTrie<string>, p: string) => t.containing(c(p)).map(([length, values]) => `${length}:${[...values].sort().join('+')}`);

test('containing: every stored prefix on the way down, shortest first, per family', () => {
  const t = trie('0.0.0.0/0', '10.0.0.0/8', '10.1.0.0/16', '10.1.2.3/32', '11.0.0.0/8', '::/0', '2001:db8::/32');
  assert.deepEqual(containing(t, '10.1.2.3/32'), ['0:0.0.0.0/0', '8:10.0.0.0/8', '16:10.1.0.0/16', '32:10.1.2.3/32']);
  assert.deepEqual(containing(t, '10.1.0.0/16'), ['0:0.0.0.0/0', '8:10.0.0.0/8', '16:10.1.0.0/16']);
  assert.deepEqual(containing(t, '10.2.0.0/16'), ['0:0.0.0.0/0', '8:10.0.0.0/8']);
  assert.deepEqual(containing(t, '0.0.0.0/0'), ['0:0.0.0.0/0']);
  assert.deepEqual(containing(t, '2001:db8::1/128'), ['0:::/0', '32:2001:db8::/32']);
});

test('within: the prefix and everything below it; values share a prefix', () => {
  const t = trie('10.0.0.0/8', '10.1.0.0/16', '10.1.2.3/32', '10.128.0.0/9', '11.0.0.0/8', '2001:db8::/32', '2001:db8:1::/48');
  t.add(c('10.1.0.0/16'), 'other');
  assert.deepEqual(t.within(c('10.0.0.0/8')).sort(), ['10.0.0.0/8', '10.1.0.0/16', '10.1.2.3/32', '10.128.0.0/9', 'other']);
  assert.deepEqual(t.within(c('10.1.0.0/16')).sort(), ['10.1.0.0/16', '10.1.2.3/32', 'other']);
  assert.deepEqual(t.within(c('10.1.2.0/24')), ['10.1.2.3/32']);
  assert.deepEqual(t.within(c('12.0.0.0/8')), []);
  assert.deepEqual(t.within(c('0.0.0.0/0')).length, 6);
  assert.deepEqual(t.within(c('::/0')).sort(), ['2001:db8:1::/48', '2001:db8::/32']);
});

test('delete: removes one value, prunes empty branches, reports what was not there', () => {
  const t = trie('10.1.2.3/32', '10.1.0.0/16');
  assert.equal(t.delete(c('10.1.2.3/32'), 'nope'), false);
  assert.equal(t.delete(c('10.1.2.4/32'), '10.1.2.3/32'), false);
  assert.equal(t.delete(c('10.1.2.3/32'), '10.1.2.3/32'), true);
  assert.equal(t.delete(c('10.1.2.3/32'), '10.1.2.3/32'), false);
  assert.deepEqual(t.within(c('10.0.0.0/8')), ['10.1.0.0/16']);
  assert.deepEqual(containing(t, '10.1.2.3/32'), ['16:10.1.0.0/16']);
  assert.equal(t.delete(c('10.1.0.0/16'), '10.1.0.0/16'), true);
  assert.deepEqual(t.within(c('0.0.0.0/0')), []);
  t.add(c('10.1.2.3/32'), 'again');
  assert.deepEqual(containing(t, '10.1.2.3/32'), ['32:again']);
});
