import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SelectorCache, reservedIdentityInfos, cidrIdentityLabels, entityMatches, peerSelectorKey, type PeerSelector } from './selector-cache.ts';
import type { Entity } from './types.ts';

const sel = (matchLabels: Record<string, string>): PeerSelector => ({ kind: 'endpoints', selector: { matchLabels, matchExpressions: [] } });
const CIDR = (n: number) => (1 << 24) | n;

function cache(): SelectorCache {
  return new SelectorCache([
    ...reservedIdentityInfos(),
    { id: 256, labels: { 'k8s:app': 'web', 'k8s:io.kubernetes.pod.namespace': 'prod' } },
    { id: 257, labels: { 'container:app': 'web' } },
    { id: CIDR(1), labels: cidrIdentityLabels('10.0.0.0/8') },
    { id: CIDR(2), labels: cidrIdentityLabels('10.1.0.0/16') },
    { id: CIDR(3), labels: cidrIdentityLabels('2001:db8::/32') },
    { id: CIDR(4), labels: cidrIdentityLabels('192.0.2.1/32', { dualStack: true }) },
  ]);
}

test('entities select by reserved labels; cluster = reserved cluster identities + pods', () => {
  const c = cache();
  const of = (entity: Entity) => c.selectionsOf({ kind: 'entity', entity }).sort((a, b) => a - b);
  assert.deepEqual(of('all'), [0]);
  assert.deepEqual(of('none'), []);
  assert.deepEqual(of('host'), [1]);
  assert.deepEqual(of('remote-node'), [6, 7]);
  assert.deepEqual(of('world'), [2, 9, 10, CIDR(1), CIDR(2), CIDR(3), CIDR(4)]);
  assert.deepEqual(of('world-ipv4'), [2, 9, CIDR(1), CIDR(2), CIDR(4)]);
  assert.deepEqual(of('world-ipv6'), [2, 10, CIDR(3)]);
  assert.deepEqual(of('cluster'), [1, 3, 4, 5, 6, 7, 8, 256, 257]);
  assert.equal(entityMatches('cluster', { 'reserved:encrypted-overlay': '' }), false);
});

test('CIDR peers select CIDR identities inside the prefix and outside the excepts, world only for /0', () => {
  const c = cache();
  const cidr = (cidr: string, except: string[] = []) => c.selectionsOf({ kind: 'cidr', cidr: { cidr, except } }).sort((a, b) => a - b);
  assert.deepEqual(cidr('10.0.0.0/8'), [CIDR(1), CIDR(2)]);
  assert.deepEqual(cidr('10.0.0.0/8', ['10.1.0.0/16']), [CIDR(1)]);
  assert.deepEqual(cidr('10.1.0.0/16'), [CIDR(2)]);
  assert.deepEqual(cidr('0.0.0.0/0'), [2, 9, CIDR(1), CIDR(2), CIDR(4)]);
  assert.deepEqual(cidr('::/0'), [2, 10, CIDR(3)]);
  assert.deepEqual(cidr('2001:db8::/16'), [CIDR(3)]);
});

test('endpoint selectors: any: matches every source, empty selector is the wildcard', () => {
  const c = cache();
  assert.deepEqual(c.selectionsOf(sel({ 'any:app': 'web' })).sort(), [256, 257]);
  assert.deepEqual(c.selectionsOf(sel({ 'k8s:app': 'web' })), [256]);
  assert.deepEqual(c.selectionsOf(sel({ 'reserved:host': '' })), [1]);
  assert.deepEqual(c.selectionsOf(sel({})), [0]);
  assert.equal(peerSelectorKey(sel({ b: '1', a: '2' })), peerSelectorKey(sel({ a: '2', b: '1' })));
});

test('identity changes report exactly the selectors that changed', () => {
  const c = cache();
  const web = c.acquire(sel({ 'any:app': 'web' }));
  const world = c.acquire({ kind: 'entity', entity: 'world' });
  const ten = c.acquire({ kind: 'cidr', cidr: { cidr: '10.0.0.0/8', except: ['10.1.0.0/16'] } });
  assert.deepEqual(c.upsertIdentity(300, { 'k8s:app': 'web' }), [{ selector: web.key, added: [300], removed: [] }]);
  assert.deepEqual(c.upsertIdentity(300, { 'k8s:app': 'web' }), [], 'same labels: no change');
  assert.deepEqual(c.upsertIdentity(300, { 'k8s:app': 'db' }), [{ selector: web.key, added: [], removed: [300] }]);
  assert.deepEqual(c.upsertIdentity(301, { 'k8s:app': 'db' }), []);
  const added = c.upsertIdentity(CIDR(9), cidrIdentityLabels('10.2.0.0/16'));
  assert.deepEqual(added.map((x) => x.selector).sort(), [world.key, ten.key].sort());
  const inExcept = c.upsertIdentity(CIDR(10), cidrIdentityLabels('10.1.2.3/32'));
  assert.deepEqual(inExcept.map((x) => x.selector), [world.key]);
  assert.deepEqual(c.deleteIdentity(CIDR(9)).map((x) => x.removed), [[CIDR(9)], [CIDR(9)]]);
  assert.equal(c.identityForIp('10.1.2.3'), CIDR(10));
  assert.equal(c.identityForIp('10.200.0.1'), CIDR(1));
  assert.equal(c.identityForIp('203.0.113.1'), 2);
  c.release(web.key);
  assert.equal(c.getByKey(web.key), undefined);
});

test('ruleCidrPrefixes lists the prefixes that need CIDR identities', async () => {
  const { ruleCidrPrefixes } = await import('./resolve.ts');
  const { loadPolicyFileSync } = await import('./load.ts');
  const rules = loadPolicyFileSync(new URL('./testdata/knp.yaml', import.meta.url).pathname);
  assert.deepEqual(ruleCidrPrefixes(rules).slice(0, 3), ['10.0.0.0/24', '172.17.0.0/16', '172.17.1.0/24']);
});
