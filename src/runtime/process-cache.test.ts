import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ProcessCache, execIdOf } from './process-cache.ts';
import { NAMESPACES, type ExecRecord, type NamespaceName } from './events.ts';

const ns = Object.fromEntries(NAMESPACES.map((n, i) => [n, 4026531830 + i])) as Record<NamespaceName, number>;
const caps = { effective: 0n, permitted: 0n, inheritable: 0n };

function exec(pid: number, ppid: number, ktime: bigint, binary = '/bin/true'): ExecRecord {
  return { type: 'exec', pid, tid: pid, ppid, ktime, uid: 0, euid: 0, gid: 0, auid: 4294967295, caps, cgroupId: 1n, nspid: pid, ns, binary, args: [], cwd: '/', flags: 0, argsSize: 0 };
}

function cacheWithInit(options: { maxEntries?: number; graceMs?: number; now?: () => number } = {}) {
  const cache = new ProcessCache({ nodeName: 'node-a', ...options });
  cache.addSnapshot({ pid: 1, ppid: 0, ktime: 1_000n, binary: '/sbin/init', args: [], cwd: '/', uid: 0, auid: 4294967295, caps, ns });
  return cache;
}

test("exec_id is Tetragon's base64 of node:ktime:pid", () => {
  const id = execIdOf('gke-john-632-default-pool-7041cac0-9s95', 13548674321373n, 52699);
  assert.equal(Buffer.from(id, 'base64').toString(), 'gke-john-632-default-pool-7041cac0-9s95:13548674321373:52699');
});

test('a fork then exec links the child to its parent, flags it clone, and the parent counts the reference', () => {
  const cache = cacheWithInit();
  const init = cache.byPid(1)!;
  cache.fork({ type: 'fork', pid: 10, ppid: 1, ktime: 2_000n });
  const child = cache.exec(exec(10, 1, 3_000n, '/usr/bin/curl'));
  assert.equal(child.execId, execIdOf('node-a', 3_000n, 10));
  assert.equal(child.parentExecId, init.execId);
  assert.deepEqual(child.flags, ['execve', 'rootcwd', 'clone']);
  assert.equal(init.refcnt, 2, 'init holds itself and its one live child');
});

test('an exited parent stays while a child lives and is collected after the child and the grace period', () => {
  let now = 0;
  const cache = cacheWithInit({ graceMs: 100, now: () => now });
  const parent = cache.exec(exec(20, 1, 2_000n, '/bin/sh'));
  const child = cache.exec(exec(21, 20, 3_000n, '/bin/sleep'));
  cache.exit({ type: 'exit', pid: 20, tid: 20, ppid: 1, ktime: 4_000n, exitCode: 0 });
  now = 1_000;
  cache.collect();
  assert.equal(cache.byExecId(parent.execId), parent, 'the child still references its exited parent');
  assert.equal(cache.parentOf(child), parent);
  cache.exit({ type: 'exit', pid: 21, tid: 21, ppid: 20, ktime: 5_000n, exitCode: 0 });
  now = 1_050;
  assert.equal(cache.collect(), 0, 'within the grace period nothing goes');
  now = 1_200;
  assert.equal(cache.collect(), 2);
  assert.equal(cache.byExecId(parent.execId), undefined);
  assert.equal(cache.byExecId(child.execId), undefined);
  assert.equal(cache.size, 1, 'only init is left');
});

test('the cache never grows past its bound: unreferenced entries go first, then the oldest, counted as evictions', () => {
  const cache = cacheWithInit({ maxEntries: 100, graceMs: 60_000 });
  // 1000 short-lived children: their entries are unreferenced but within the grace period.
  for (let i = 0; i < 1000; i++) {
    const pid = 1000 + i;
    cache.exec(exec(pid, 1, BigInt(10_000 + i)));
    cache.exit({ type: 'exit', pid, tid: pid, ppid: 1, ktime: BigInt(20_000 + i), exitCode: 0 });
    assert.ok(cache.size <= 100);
  }
  assert.equal(cache.stats().evictions, 0, 'only unreferenced entries had to go');
  // 200 live processes: more than the bound, so live ones are evicted (and counted).
  for (let i = 0; i < 200; i++) cache.exec(exec(5000 + i, 1, BigInt(50_000 + i)));
  const stats = cache.stats();
  assert.equal(stats.size, 100);
  assert.ok(stats.evictions >= 100, `evictions: ${stats.evictions}`);
  assert.ok(cache.byPid(5199), 'the newest process is kept');
});

test('ancestors run from the grandparent up to the oldest known process', () => {
  const cache = cacheWithInit();
  cache.exec(exec(30, 1, 2_000n, '/usr/sbin/sshd'));
  cache.exec(exec(31, 30, 3_000n, '/bin/bash'));
  const curl = cache.exec(exec(32, 31, 4_000n, '/usr/bin/curl'));
  assert.deepEqual(cache.ancestorsOf(curl).map((a) => a.binary), ['/usr/sbin/sshd', '/sbin/init']);
  assert.equal(cache.parentOf(curl)?.binary, '/bin/bash');
});
