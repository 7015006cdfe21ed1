import { test } from 'node:test';
import { existsSync } from 'node:fs';
import assert from 'node:assert/strict';
import { BpfObject } from '../object.ts';
import { attachTcx, attachTcxAsync, queryTcx } from './tcx.ts';
import { attachXdp } from './xdp.ts';
import { Link, unpinLink, unpinLinkAsync } from './link.ts';
import { inNetns } from '../netns.ts';
import { u32, u64 } from '../codec.ts';
import { LinkType } from '../internal/constants.ts';
import { netnsPair, objectPath, ping, pinDir, run } from '../internal/testutils.ts';
import { BpfError, NotSupportedError } from '../errors.ts';
import { probeFeature } from '../features.ts';
import { attachNetkit } from './netkit.ts';
import { BpfMap } from '../map.ts';

const SLOT_TC = 0;
const SLOT_XDP = 2;
const SLOT_TAG = 7;

function load(tag = 0) {
  const obj = BpfObject.load(objectPath('net'), { constants: { TAG: tag } });
  return { obj, counters: obj.map('counters').withCodecs(u32, u64), config: obj.map('net_config').withCodecs(u32, u32) };
}

test('TCX ingress program sees real packets, drops them on demand, and detaches on close', (t) => {
  const net = netnsPair(t);
  const { obj, counters, config } = load(42);
  t.after(() => obj.close());
  const link = inNetns(net.pathB, () => attachTcx(obj.program('count_tc'), { interface: net.ifB, direction: 'ingress' }));
  assert.equal(link.info().type, LinkType.TCX);
  assert.ok(ping(net.a, net.addrB, 2), 'ping passes with the counting program attached');
  assert.ok(counters.lookup(SLOT_TC)! >= 2n);
  assert.equal(counters.lookup(SLOT_TAG), 42n, 'the .rodata constant set before load is what the program reads');

  config.update(0, 1);
  assert.equal(ping(net.a, net.addrB, 1), false, 'the program drops everything once told to');
  link.close();
  assert.ok(ping(net.a, net.addrB, 1), 'closing the link detaches the program');
});

test('TCX orders programs with before/after and rejects a stale revision', (t) => {
  const net = netnsPair(t);
  const { obj } = load();
  t.after(() => obj.close());
  inNetns(net.pathB, () => {
    const first = attachTcx(obj.program('count_tc'), { interface: net.ifB, direction: 'ingress' });
    t.after(() => first.close());
    const before = queryTcx(net.ifB, 'ingress');
    const second = attachTcx(obj.program('count_tc_second'), { interface: net.ifB, direction: 'ingress', before: first, expectedRevision: before.revision });
    t.after(() => second.close());
    const after = queryTcx(net.ifB, 'ingress');
    assert.deepEqual(after.linkIds, [second.info().id, first.info().id]);
    assert.ok(after.revision > before.revision);
    assert.throws(
      () => attachTcx(obj.program('count_tc_second'), { interface: net.ifB, direction: 'egress', expectedRevision: 999n }),
      (error: unknown) => BpfError.is(error, 'ERR_STALE_REVISION'),
    );
  });
});

test('a pinned TCX link keeps the program attached after every fd is closed, and unpinLink detaches it', (t) => {
  const net = netnsPair(t);
  const pins = pinDir(t);
  const { obj, counters } = load();
  const link = inNetns(net.pathB, () => attachTcx(obj.program('count_tc'), { interface: net.ifB, direction: 'ingress' }));
  link.pin(`${pins}/link`);
  obj.map('counters').pin(`${pins}/counters`);
  link.close();
  obj.close();
  counters.close();

  const reopened = Link.openPinned(`${pins}/link`);
  assert.equal(reopened.info().type, LinkType.TCX);
  reopened.close();
  assert.ok(ping(net.a, net.addrB, 2));
  const pinnedCounters = BpfMap.openPinned(`${pins}/counters`, u32, u64);
  t.after(() => pinnedCounters.close());
  assert.ok(pinnedCounters.lookup(SLOT_TC)! >= 2n, 'the program kept counting with nobody holding it');
  unpinLink(`${pins}/link`);
  const seen = pinnedCounters.lookup(SLOT_TC)!;
  assert.ok(ping(net.a, net.addrB, 1));
  assert.equal(pinnedCounters.lookup(SLOT_TC), seen, 'detached: no more counting');
});

test('XDP in native and generic mode on veth', (t) => {
  const net = netnsPair(t);
  const { obj, counters, config } = load();
  t.after(() => obj.close());
  for (const mode of ['native', 'generic'] as const) {
    const link = inNetns(net.pathB, () => attachXdp(obj.program('count_xdp'), { interface: net.ifB, mode }));
    const before = counters.lookup(SLOT_XDP)!;
    assert.ok(ping(net.a, net.addrB, 2), `${mode}: passes`);
    assert.ok(counters.lookup(SLOT_XDP)! >= before + 2n, `${mode}: counted`);
    config.update(0, 1);
    assert.equal(ping(net.a, net.addrB, 1), false, `${mode}: drops`);
    config.update(0, 0);
    link.close();
  }
});

test('attachTcxAsync attaches off the event loop, in parallel, in the namespace it is given or called from; unpinLinkAsync detaches', async (t) => {
  const net = netnsPair(t);
  const { obj, counters, config } = load();
  t.after(() => obj.close());
  const ifindexB = (JSON.parse(run('ip', ['-n', net.b, '-j', 'link', 'show', 'dev', net.ifB])) as { ifindex: number }[])[0].ifindex;
  // By path: the pool thread enters namespace B; this thread never leaves its own.
  let ticks = 0;
  const timer = setInterval(() => ticks++, 0);
  const [ingress, egress] = await Promise.all([
    attachTcxAsync(obj.program('count_tc'), { interface: ifindexB, direction: 'ingress', netns: net.pathB }),
    attachTcxAsync(obj.program('count_tc_second'), { interface: net.ifB, direction: 'egress', netns: net.pathB }),
  ]);
  clearInterval(timer);
  t.after(() => {
    ingress.close();
    egress.close();
  });
  assert.ok(ticks > 0, 'the event loop ran while the attaches waited in the kernel');
  assert.deepEqual([ingress.info().ifindex, egress.info().ifindex], [ifindexB, ifindexB]);
  assert.deepEqual(inNetns(net.pathB, () => queryTcx(net.ifB, 'ingress').linkIds), [ingress.info().id]);
  assert.deepEqual(inNetns(net.pathB, () => queryTcx(net.ifB, 'egress').linkIds), [egress.info().id]);
  assert.ok(ping(net.a, net.addrB, 2));
  assert.ok(counters.lookup(SLOT_TC)! >= 2n, 'the ingress program runs on B');

  // Without a path: the namespace of the calling thread when the call is made, though the
  // promise settles after the thread has left it.
  const pending = inNetns(net.pathA, () => attachTcxAsync(obj.program('count_tc'), { interface: net.ifA, direction: 'ingress' }));
  const onA = await pending;
  t.after(() => onA.close());
  assert.deepEqual(inNetns(net.pathA, () => queryTcx(net.ifA, 'ingress').linkIds), [onA.info().id]);
  config.update(0, 1);
  assert.equal(ping(net.b, net.addrA, 1), false, 'the program on A drops once told to');
  config.update(0, 0);

  // Pinned, then unpinned with the detach off the event loop too.
  const pins = pinDir(t);
  ingress.pin(`${pins}/ingress`);
  ingress.close();
  await unpinLinkAsync(`${pins}/ingress`);
  assert.equal(existsSync(`${pins}/ingress`), false, 'the pin is gone');
  assert.deepEqual(inNetns(net.pathB, () => queryTcx(net.ifB, 'ingress').linkIds), [], 'and the program detached');
  await unpinLinkAsync(`${pins}/ingress`);

  // Typed errors, as attachTcx's.
  await assert.rejects(
    attachTcxAsync(obj.program('count_tc'), { interface: ifindexB, direction: 'ingress', netns: net.pathB, expectedRevision: 999n }),
    (error: unknown) => BpfError.is(error, 'ERR_STALE_REVISION'),
  );
  await assert.rejects(
    attachTcxAsync(obj.program('count_tc'), { interface: 999_999, direction: 'ingress', netns: net.pathB }),
    (error: unknown) => BpfError.is(error) && /attaching count_tc to TCX ingress of interface 999999/.test((error as Error).message),
  );
});

test('Link.update swaps the program of a pinned TCX link in place', (t) => {
  const net = netnsPair(t);
  const pins = pinDir(t);
  const { obj, counters } = load();
  t.after(() => obj.close());
  const link = inNetns(net.pathB, () => attachTcx(obj.program('count_tc'), { interface: net.ifB, direction: 'ingress' }));
  t.after(() => link.close());
  link.pin(`${pins}/link`);
  const id = link.info().id;
  assert.ok(ping(net.a, net.addrB, 1));
  const second = counters.lookup(1) ?? 0n;
  link.update(obj.program('count_tc_second'));
  assert.equal(link.info().id, id, 'same link');
  assert.equal(link.info().programId, obj.program('count_tc_second').info().id, 'new program');
  assert.ok(ping(net.a, net.addrB, 2));
  assert.ok(counters.lookup(1)! >= second + 2n, 'the new program runs');
});

const netkitPresent = probeFeature('netkit').status === 'supported';

test('netkit links on a kernel without netkit: NotSupportedError, before any device is looked up', { skip: netkitPresent && 'this kernel has netkit' }, (t) => {
  const obj = BpfObject.load(objectPath('net'), { programs: ['count_tc'] });
  t.after(() => obj.close());
  for (const peer of [false, true]) {
    assert.throws(
      () => attachNetkit(obj.program('count_tc'), { interface: 'no-such-netkit0', peer }),
      (error: unknown) => error instanceof NotSupportedError && error.feature === 'netkit' && /^not supported on this kernel: netkit/.test(error.message),
    );
  }
});
