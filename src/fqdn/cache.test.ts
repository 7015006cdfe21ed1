/**
 * The FQDN cache: TTLs with a minimum, the cap of addresses per name per endpoint, selection over
 * every endpoint's names, and persistence across a restart (a real file, written whole).
 * @module
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { FqdnCache } from './index.ts';

function clock(start = 1_000_000) {
  let now = start;
  return { now: () => now, advance: (ms: number) => (now += ms) };
}

test('an address lives for the answer\'s TTL, at least the minimum TTL, and a pattern selects it by name', () => {
  const c = clock();
  const cache = new FqdnCache({ now: c.now, minTtl: 10 });
  assert.equal(cache.learn(1, [{ name: 'API.example.com.', ip: '192.0.2.10', ttl: 2 }, { name: 'db.example.com', ip: '192.0.2.20', ttl: 60 }]), true);
  assert.equal(cache.learn(1, [{ name: 'api.example.com', ip: '192.0.2.10', ttl: 2 }]), false, 'a known address is no change');
  assert.deepEqual(cache.addresses({ matchName: 'api.example.com' }), ['192.0.2.10']);
  assert.deepEqual(cache.addresses({ matchPattern: '*.example.com' }), ['192.0.2.10', '192.0.2.20']);
  c.advance(9_000);
  assert.equal(cache.expire(), false, 'the minimum TTL (10 s) holds the 2 s answer');
  c.advance(1_000);
  assert.equal(cache.expire(), true);
  assert.deepEqual(cache.addresses({ matchPattern: '*.example.com' }), ['192.0.2.20']);
  assert.equal(cache.learn(1, [{ name: 'x.example.com', ip: 'not-an-ip', ttl: 5 }]), false, 'garbage is not learned');
});

test('at most maxIpsPerName addresses per name per endpoint: those expiring first go; other endpoints keep theirs', () => {
  const c = clock();
  const cache = new FqdnCache({ now: c.now, maxIpsPerName: 3 });
  cache.learn(1, [1, 2, 3].map((i) => ({ name: 'cdn.example.com', ip: `198.51.100.${i}`, ttl: 100 + i })));
  cache.learn(2, [{ name: 'cdn.example.com', ip: '198.51.100.1', ttl: 5 }]);
  cache.learn(1, [4, 5].map((i) => ({ name: 'cdn.example.com', ip: `198.51.100.${i}`, ttl: 300 })));
  assert.deepEqual(
    cache.list().filter((e) => e.endpoint === 1).map((e) => e.ip),
    ['198.51.100.3', '198.51.100.4', '198.51.100.5'],
  );
  assert.deepEqual(cache.addresses({ matchName: 'cdn.example.com' }), ['198.51.100.1', '198.51.100.3', '198.51.100.4', '198.51.100.5'], 'endpoint 2 still has .1');
});

test('at most maxNamesPerEndpoint names per endpoint: a pod asking for random names cannot grow the cache without end', () => {
  const c = clock();
  const cache = new FqdnCache({ now: c.now, maxNamesPerEndpoint: 100 });
  cache.learn(1, [{ name: 'api.example.com', ip: '192.0.2.1', ttl: 3600 }]);
  for (let i = 0; i < 1000; i++) cache.learn(1, [{ name: `r${i}.random.example`, ip: '203.0.113.1', ttl: 60 }]);
  const names = new Set(cache.list().map((e) => e.name));
  assert.equal(names.size, 100);
  assert.ok(names.has('api.example.com'), 'the long-lived name stays; the ones expiring first went');
  cache.learn(2, [{ name: 'api.example.com', ip: '192.0.2.2', ttl: 60 }]);
  assert.deepEqual(cache.addresses({ matchName: 'api.example.com' }), ['192.0.2.1', '192.0.2.2'], 'another endpoint has its own budget');
});

test('the cache survives a restart through its file, without what expired meanwhile; a torn file is refused', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ciliate-fqdn-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'state', 'fqdn-cache.json');
  const c = clock();
  const before = new FqdnCache({ now: c.now, file });
  before.learn(7, [{ name: 'short.example.com', ip: '192.0.2.1', ttl: 5 }, { name: 'long.example.com', ip: '192.0.2.2', ttl: 3600 }]);
  before.save();
  c.advance(6_000);
  const after = new FqdnCache({ now: c.now, file });
  assert.equal(after.load(), 1);
  assert.deepEqual(after.list().map((e) => [e.endpoint, e.name, e.ip]), [[7, 'long.example.com', '192.0.2.2']]);
  assert.equal(after.list()[0].expiresAt, 1_000_000 + 3_600_000, 'the remaining TTL, not a fresh one');
  assert.deepEqual(JSON.parse(readFileSync(file, 'utf8')).version, 1);
  assert.equal(new FqdnCache({ file: join(dir, 'missing.json') }).load(), 0, 'no file: an empty cache');
  writeFileSync(file, '{"version":1,"entries":[');
  assert.throws(() => new FqdnCache({ file }).load());
});

test('addresses the caps make room for are reported as evicted; expiry and a longer life are not', () => {
  let evictions = 0;
  const cache = new FqdnCache({ maxIpsPerName: 1, maxNamesPerEndpoint: 1, now: () => 1_000_000 });
  cache.onEvict = () => evictions++;
  cache.learn(1, [{ name: 'a.example.com', ip: '192.0.2.1', ttl: 60 }]);
  cache.learn(1, [{ name: 'a.example.com', ip: '192.0.2.1', ttl: 600 }]);
  assert.equal(evictions, 0);
  cache.learn(1, [{ name: 'a.example.com', ip: '192.0.2.2', ttl: 60 }]);
  assert.equal(evictions, 1, 'a second address over maxIpsPerName 1');
  cache.learn(1, [{ name: 'b.example.com', ip: '192.0.2.3', ttl: 60 }]);
  assert.equal(evictions, 2, 'a second name over maxNamesPerEndpoint 1');
});
