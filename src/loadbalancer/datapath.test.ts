/**
 * The LB maps reconciler on the real kernel: frontends become slot 0 plus one slot per backend,
 * backends are shared by id, and a change writes only the entries it touches (compared as whole
 * map dumps before and after). A restarted reconciler adopts the maps and writes nothing for an
 * unchanged frontend; Maglev tables in the kernel equal the TS reference.
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { BpfMap, u16, u32 } from '../ebpf/index.ts';
import { pinDir } from '../ebpf/internal/testutils.ts';
import { Table } from '../statedb/index.ts';
import { LbDatapath } from './datapath.ts';
import { maglevSeed, maglevTable, DEFAULT_MAGLEV_HASH_SEED } from './maglev.ts';
import { BackendFlag, LB_MAGLEV_CHUNK, LB_MAGLEV_LUT_SIZE, LbMapName, ServiceFlag, lb4Backend, lb4Key, lb4Service, lb4BackendKey, lbAffinityMatch, readMaglevInner } from './maps.ts';
import { u8 } from '../ebpf/index.ts';
import { backendName, frontendKey, type Frontend } from './service.ts';

const log = pino({ level: 'silent' });
const seed = maglevSeed(DEFAULT_MAGLEV_HASH_SEED);

function frontend(vip: string, port: number, ips: string[], targetPort = 8080): Frontend {
  return { key: frontendKey(vip, port, 'TCP'), service: 'default/web', kind: 'ClusterIP', vip, port, protocol: 'TCP', backends: ips.map((ip) => ({ ip, port: targetPort, protocol: 'TCP' })) };
}

function setup(t: TestContext, algorithm: 'random' | 'maglev' = 'random', bpfRoot = pinDir(t), refreshIntervalMs?: number, maglevTableSize?: number) {
  const frontends = new Table<Frontend>('frontends', (f) => f.key, { equals: (a, b) => JSON.stringify(a) === JSON.stringify(b) });
  const lb = new LbDatapath({ bpfRoot, frontends, algorithm, maglevSeed: seed, log, refreshIntervalMs, maglevTableSize });
  lb.start();
  t.after(() => lb.stop());
  const services = BpfMap.openPinned(`${bpfRoot}/maps/${LbMapName.SERVICES}`, lb4Key, lb4Service);
  const backends = BpfMap.openPinned(`${bpfRoot}/maps/${LbMapName.BACKENDS}`, lb4BackendKey, lb4Backend);
  t.after(() => {
    services.close();
    backends.close();
  });
  const dump = () => ({
    services: new Map([...services.entries()].map(([k, v]) => [`${k.address}:${k.dport}/${k.proto}#${k.backend_slot}`, JSON.stringify(v)])),
    backends: new Map([...backends.entries()].map(([k, v]) => [k, `${v.address}:${v.port}`])),
  });
  const apply = async (f: Frontend | string) => {
    if (typeof f === 'string') frontends.delete(f);
    else frontends.upsert(f);
    await lb.synced();
  };
  return { lb, frontends, dump, apply, bpfRoot, backends };
}

/** Keys whose value differs between two dumps, added or removed. */
function changed<K, V>(a: Map<K, V>, b: Map<K, V>): K[] {
  const keys = new Set([...a.keys(), ...b.keys()]);
  return [...keys].filter((k) => a.get(k) !== b.get(k));
}

test('a frontend is its slot 0 and one slot per backend; a change writes only what it touches', async (t) => {
  const { lb, dump, apply } = setup(t);
  await apply(frontend('10.96.0.10', 80, ['10.244.0.1', '10.244.0.2', '10.244.0.3']));
  await apply(frontend('10.96.0.11', 443, ['10.244.0.1', '10.244.0.9'], 8443));
  let now = dump();
  assert.equal(now.services.size, 4 + 3, 'two slot-0 entries and five slots');
  assert.equal(now.backends.size, 5, '10.244.0.1:8080, .2, .3, and 10.244.0.1 and .9 on 8443');
  const [web] = lb.entries().filter((e) => e.frontend === '10.96.0.10:80/TCP');
  assert.deepEqual(web.backends.map((b) => b.address), ['10.244.0.1:8080', '10.244.0.2:8080', '10.244.0.3:8080']);

  // One backend added: its backend entry, its slot and slot 0's count. Nothing of the other service.
  let before = now;
  await apply(frontend('10.96.0.10', 80, ['10.244.0.1', '10.244.0.2', '10.244.0.3', '10.244.0.4']));
  now = dump();
  assert.deepEqual(changed(before.services, now.services).sort(), ['10.96.0.10:80/6#0', '10.96.0.10:80/6#4']);
  assert.equal(changed(before.backends, now.backends).length, 1);

  // One backend removed from the middle: the last slot's backend takes its slot.
  before = now;
  await apply(frontend('10.96.0.10', 80, ['10.244.0.1', '10.244.0.3', '10.244.0.4']));
  now = dump();
  assert.deepEqual(changed(before.services, now.services).sort(), ['10.96.0.10:80/6#0', '10.96.0.10:80/6#2', '10.96.0.10:80/6#4']);
  assert.deepEqual([...changed(before.backends, now.backends)].map((id) => before.backends.get(id)), ['10.244.0.2:8080'], 'its backend entry is gone');
  const [after] = lb.entries().filter((e) => e.frontend === '10.96.0.10:80/TCP');
  assert.deepEqual(after.backends.map((b) => b.address), ['10.244.0.1:8080', '10.244.0.4:8080', '10.244.0.3:8080']);

  // Deleting a service removes its entries; a backend another service still lists stays.
  before = now;
  await apply('10.96.0.10:80/TCP');
  now = dump();
  assert.deepEqual([...now.services.keys()].filter((k) => k.startsWith('10.96.0.10:')), []);
  assert.deepEqual([...now.backends.values()].sort(), ['10.244.0.1:8443', '10.244.0.9:8443']);
  assert.deepEqual(changed(before.services, now.services).filter((k) => !k.startsWith('10.96.0.10:')), []);
});

test('a restarted reconciler adopts the maps and rewrites nothing that is as wanted', async (t) => {
  const first = setup(t);
  const web = frontend('10.96.0.10', 80, ['10.244.0.1', '10.244.0.2']);
  await first.apply(web);
  await first.lb.stop();
  const before = first.dump();
  const second = setup(t, 'random', first.bpfRoot);
  await second.apply(web);
  assert.deepEqual(second.dump(), before, 'nothing rewritten, same ids');
  // And a change after adoption still touches only its entries.
  await second.apply(frontend('10.96.0.10', 80, ['10.244.0.1']));
  const after = second.dump();
  assert.deepEqual(changed(before.services, after.services).sort(), ['10.96.0.10:80/6#0', '10.96.0.10:80/6#2']);
  assert.deepEqual([...after.backends.values()], ['10.244.0.1:8080']);
});

/** The kernel's Maglev table of the only frontend, and the TS reference's for its backends at `size`. */
function maglevTables(lb: LbDatapath, bpfRoot: string, ips: readonly string[], size: number) {
  const [entry] = lb.entries();
  assert.equal(entry.algorithm, 'maglev');
  using outer = BpfMap.openPinned(`${bpfRoot}/maps/${LbMapName.MAGLEV}`, u16, u32);
  assert.ok(outer.lookup(entry.revNat), 'the service has a Maglev table');
  // The inner map by id is what the datapath reads: read it through its id.
  using inner = BpfMap.fromId(outer.lookup(entry.revNat)!);
  const idOf = new Map(entry.backends.map((b) => [`${b.address}/TCP`, b.id]));
  const reference = maglevTable(ips.map((ip) => ({ id: idOf.get(backendName({ ip, port: 8080, protocol: 'TCP' }))!, name: backendName({ ip, port: 8080, protocol: 'TCP' }) })), size, seed);
  return { kernel: readMaglevInner(inner), reference, innerEntries: inner.info().maxEntries };
}

test('the kernel\'s Maglev table of a service is the TS reference\'s for the same backends, at every configured size', async (t) => {
  const ips = Array.from({ length: 7 }, (_, i) => `10.244.1.${i + 1}`);
  for (const size of [LB_MAGLEV_LUT_SIZE, 251, 4093]) {
    const { lb, apply, bpfRoot } = setup(t, 'maglev', pinDir(t), undefined, size === LB_MAGLEV_LUT_SIZE ? undefined : size);
    await apply(frontend('10.96.0.20', 80, ips));
    const { kernel, reference, innerEntries } = maglevTables(lb, bpfRoot, ips, size);
    assert.equal(innerEntries, Math.ceil((size + 1) / LB_MAGLEV_CHUNK), `size ${size}: its length and its slots, in chunks`);
    assert.deepEqual(kernel, reference, `size ${size}`);
  }
});

test('a restart with another Maglev table size rewrites every table at the new size, ids and slots kept', async (t) => {
  const ips = ['10.244.1.1', '10.244.1.2', '10.244.1.3'];
  const first = setup(t, 'maglev', pinDir(t), undefined, 1021);
  await first.apply(frontend('10.96.0.20', 80, ips));
  const slots = first.dump().services;
  await first.lb.stop();
  const second = setup(t, 'maglev', first.bpfRoot, undefined, 509);
  await second.apply(frontend('10.96.0.20', 80, ips));
  const { kernel, reference } = maglevTables(second.lb, second.bpfRoot, ips, 509);
  assert.equal(kernel?.length, 509);
  assert.deepEqual(kernel, reference);
  assert.deepEqual(second.dump().services, slots, 'the slots are as they were');
});

test('ClientIP affinity: slot 0 carries the flag and timeout, and the match map exactly the service\'s backends', async (t) => {
  const { lb, apply, bpfRoot } = setup(t);
  const sticky = (ips: string[], affinityTimeout?: number): Frontend => ({ ...frontend('10.96.0.30', 80, ips), ...(affinityTimeout ? { affinityTimeout } : {}) });
  using services = BpfMap.openPinned(`${bpfRoot}/maps/${LbMapName.SERVICES}`, lb4Key, lb4Service);
  using match = BpfMap.openPinned(`${bpfRoot}/maps/${LbMapName.AFFINITY_MATCH}`, lbAffinityMatch, u8);
  const slot0 = () => services.lookup({ address: '10.96.0.30', dport: 80, backend_slot: 0, proto: 6, scope: 0 })!;
  const matched = () => [...match.keys()].map((k) => k.backend_id).sort((a, b) => a - b);
  const ids = () => lb.entries()[0].backends.map((b) => b.id).sort((a, b) => a - b);

  await apply(sticky(['10.244.0.1', '10.244.0.2', '10.244.0.3'], 60));
  assert.equal(slot0().flags & ServiceFlag.AFFINITY, ServiceFlag.AFFINITY);
  assert.equal(slot0().backend_id, 60, 'slot 0 holds the timeout');
  assert.equal(lb.entries()[0].affinityTimeout, 60);
  assert.deepEqual(matched(), ids());
  await apply(sticky(['10.244.0.1', '10.244.0.3'], 60));
  assert.deepEqual(matched(), ids(), 'a backend gone from the service is gone from the match map');
  await apply(sticky(['10.244.0.1', '10.244.0.3']));
  assert.equal(slot0().flags & ServiceFlag.AFFINITY, 0, 'affinity off');
  assert.deepEqual(matched(), []);
  await apply(sticky(['10.244.0.1', '10.244.0.3'], 5));
  await apply('10.96.0.30:80/TCP');
  assert.deepEqual(matched(), [], 'a deleted service leaves no match entries');
});

test('drift in the LB maps is repaired and strays are pruned by the refresh', async (t) => {
  const { lb, dump, apply, bpfRoot } = setup(t, 'random', undefined, 100);
  await apply(frontend('10.96.0.40', 80, ['10.244.0.1', '10.244.0.2']));
  const want = dump();
  using services = BpfMap.openPinned(`${bpfRoot}/maps/${LbMapName.SERVICES}`, lb4Key, lb4Service);
  using backends = BpfMap.openPinned(`${bpfRoot}/maps/${LbMapName.BACKENDS}`, lb4BackendKey, lb4Backend);
  // Behind the reconciler's back: a slot gone, a backend rewritten, a frontend nobody wants.
  services.delete({ address: '10.96.0.40', dport: 80, backend_slot: 2, proto: 6, scope: 0 });
  const [firstId] = [...backends.keys()];
  backends.update(firstId, { address: '10.9.9.9', port: 1, proto: 6, flags: 0 });
  services.update({ address: '10.96.9.9', dport: 80, backend_slot: 0, proto: 6, scope: 0 }, { backend_id: 0, count: 0, rev_nat_index: 999, flags: 0, algorithm: 1 });
  const repairsBefore = lb.health().repairs;
  for (let i = 0; i < 50 && (lb.health().repairs === repairsBefore || lb.health().prunes === 0); i++) await new Promise((r) => setTimeout(r, 50));
  await lb.synced();
  const now = dump();
  assert.deepEqual([...now.services.keys()].filter((k) => k.startsWith('10.96.9.9')), [], 'the stray frontend is pruned');
  assert.deepEqual(new Set(now.backends.values()), new Set(want.backends.values()), 'the backends are as wanted again');
  assert.equal(now.services.size, want.services.size, 'the slot is back');
  assert.ok(lb.health().repairs > repairsBefore && lb.health().prunes > 0, JSON.stringify(lb.health()));
});

test('a terminating backend keeps its entry, flagged, in no slot; removed, its entry goes', async (t) => {
  const { lb, apply, backends } = setup(t, 'maglev');
  const web = (active: string[], terminating: string[] = []): Frontend => ({
    ...frontend('10.96.0.50', 80, active),
    ...(terminating.length ? { terminating: terminating.map((ip) => ({ ip, port: 8080, protocol: 'TCP' as const })) } : {}),
  });
  const byAddress = () => new Map([...backends.entries()].map(([id, b]) => [`${b.address}:${b.port}`, { id, flags: b.flags }]));
  await apply(web(['10.244.0.1', '10.244.0.2', '10.244.0.3']));
  // Another service shares .2 and keeps it active.
  await apply(frontend('10.96.0.51', 80, ['10.244.0.2']));
  const idOf = byAddress();

  await apply(web(['10.244.0.1', '10.244.0.3'], ['10.244.0.2', '10.244.0.3']));
  let [entry] = lb.entries().filter((e) => e.frontend === '10.96.0.50:80/TCP');
  assert.deepEqual(entry.backends.map((b) => b.address).sort(), ['10.244.0.1:8080', '10.244.0.3:8080'], 'an address both active and terminating is active');
  assert.deepEqual(entry.terminating?.map((b) => b.address), ['10.244.0.2:8080']);
  assert.equal(byAddress().get('10.244.0.2:8080')?.id, idOf.get('10.244.0.2:8080')?.id, 'same entry, same id');
  assert.equal(byAddress().get('10.244.0.2:8080')?.flags, 0, 'the other service still has it active: not flagged');

  await apply('10.96.0.51:80/TCP');
  assert.equal(byAddress().get('10.244.0.2:8080')?.flags, BackendFlag.TERMINATING, 'terminating for every holder: flagged');
  // Its Maglev table names only the active backends.
  const maglevIds = new Set(entry.backends.map((b) => b.id));
  [entry] = lb.entries();
  assert.ok(!maglevIds.has(idOf.get('10.244.0.2:8080')!.id));

  await apply(web(['10.244.0.1', '10.244.0.2', '10.244.0.3']));
  assert.equal(byAddress().get('10.244.0.2:8080')?.flags, 0, 'active again');
  assert.equal(lb.entries()[0].backends.length, 3);
  await apply(web(['10.244.0.1', '10.244.0.3'], ['10.244.0.2']));
  await apply(web(['10.244.0.1', '10.244.0.3']));
  assert.equal(byAddress().has('10.244.0.2:8080'), false, 'removed: its entry is gone');
  assert.equal(lb.entries()[0].terminating, undefined);
});

test('a restarted reconciler keeps a terminating backend its frontend still lists and drops the rest', async (t) => {
  const first = setup(t);
  const web = (terminating: string[]): Frontend => ({ ...frontend('10.96.0.60', 80, ['10.244.0.1']), terminating: terminating.map((ip) => ({ ip, port: 8080, protocol: 'TCP' as const })) });
  await first.apply(web(['10.244.0.2', '10.244.0.3']));
  await first.lb.stop();
  const before = first.dump();
  const second = setup(t, 'random', first.bpfRoot);
  await second.apply(web(['10.244.0.2']));
  second.lb.releaseOrphans();
  const after = second.dump();
  assert.deepEqual([...after.backends.values()].sort(), ['10.244.0.1:8080', '10.244.0.2:8080']);
  assert.deepEqual([...after.backends.keys()].sort(), [...before.backends.entries()].filter(([, v]) => v !== '10.244.0.3:8080').map(([k]) => k).sort(), 'same ids');
  assert.deepEqual(second.lb.entries()[0].terminating?.map((b) => b.address), ['10.244.0.2:8080']);
});
