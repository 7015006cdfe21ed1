/**
 * BpfObject.load on the real kernel: .rodata constants, verifier errors, pins shared between
 * loads, per-map overrides, partial loads, and BPF_PROG_TEST_RUN on crafted packets.
 * @module
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { BpfObject, type LoadOptions } from './object.ts';
import { BpfError, VerifierError } from './errors.ts';
import { enableRunStats } from './program.ts';
import { u32, u64 } from './codec.ts';
import { MapType, ProgramType } from './internal/constants.ts';
import { objectPath, pinDir, uniqueId } from './internal/testutils.ts';

const SLOT_TC = 0;
const SLOT_TAG = 7;
const TC_ACT_SHOT = 2;
const TC_ACT_UNSPEC = -1;

function load(t: TestContext, options: LoadOptions = {}) {
  const obj = BpfObject.load(objectPath('net'), options);
  t.after(() => obj.close());
  return {
    obj,
    counters: obj.map('counters').withCodecs(u32, u64),
    config: obj.map('net_config').withCodecs(u32, u32),
  };
}

/** A 64-byte Ethernet + IPv4 + UDP frame, 10.0.0.1:1000 -> 10.0.0.2:2000. */
function udpPacket(): Buffer {
  const packet = Buffer.alloc(64);
  Buffer.from('02000000000202000000000108004500', 'hex').copy(packet, 0); // MACs, ETH_P_IP, version/IHL
  packet.writeUInt16BE(64 - 14, 16); // IP total length
  packet[22] = 64; // TTL
  packet[23] = 17; // UDP
  Buffer.from([10, 0, 0, 1, 10, 0, 0, 2]).copy(packet, 26);
  packet.writeUInt16BE(1000, 34);
  packet.writeUInt16BE(2000, 36);
  packet.writeUInt16BE(64 - 34, 38); // UDP length
  return packet;
}

const hasCode = (code: string, pattern?: RegExp) => (error: unknown) =>
  BpfError.is(error) && error.code === code && (pattern === undefined || pattern.test(error.message));

test('constants written into .rodata before load are what the program reads', (t) => {
  const tag = 0xc0ffee42;
  const { obj, counters } = load(t, { constants: { TAG: tag } });
  assert.equal(counters.lookup(SLOT_TAG), 0n);
  const result = obj.program('count_tc').testRun({ data: udpPacket() });
  assert.equal(result.returnValue, TC_ACT_UNSPEC);
  assert.equal(counters.lookup(SLOT_TC), 1n);
  assert.equal(counters.lookup(SLOT_TAG), BigInt(tag));
  assert.equal(result.data.length, 64, 'the packet comes back');

  // Another load of the same file with another value: one object serves many endpoints.
  const other = load(t, { constants: { TAG: 7 } });
  other.obj.program('count_tc').testRun({ data: udpPacket() });
  assert.equal(other.counters.lookup(SLOT_TAG), 7n);
  assert.equal(counters.lookup(SLOT_TAG), BigInt(tag), 'the first object keeps its own maps');

  // Booleans and bigints are accepted where they fit.
  const fromBigint = load(t, { constants: { TAG: 0xffffffffn } });
  fromBigint.obj.program('count_tc').testRun({ data: udpPacket() });
  assert.equal(fromBigint.counters.lookup(SLOT_TAG), 0xffffffffn);
});

test('constants: an unknown name is an error naming it; a value that does not fit is ERR_CODEC', () => {
  const path = objectPath('net');
  assert.throws(
    () => BpfObject.load(path, { constants: { NO_SUCH_CONSTANT: 1 } }),
    hasCode('ERR_NOT_FOUND', /NO_SUCH_CONSTANT.*have TAG/),
  );
  assert.throws(() => BpfObject.load(path, { constants: { TAG: 2 ** 32 } }), hasCode('ERR_CODEC', /TAG/));
  assert.throws(() => BpfObject.load(path, { constants: { TAG: 1n << 40n } }), hasCode('ERR_CODEC', /TAG/));
  assert.throws(() => BpfObject.load(path, { constants: { TAG: -(2 ** 31) - 1 } }), hasCode('ERR_CODEC', /TAG/));
  assert.throws(() => BpfObject.load(path, { constants: { TAG: 1.5 } }), hasCode('ERR_CODEC', /TAG/));
  assert.throws(() => BpfObject.load(path, { constants: { TAG: Buffer.alloc(8) } }), hasCode('ERR_CODEC', /TAG/));
});

test('a program the verifier rejects throws VerifierError carrying the verifier log', () => {
  const path = objectPath('verifier_reject');
  let caught: unknown;
  try {
    BpfObject.load(path).close();
  } catch (error) {
    caught = error;
  }
  assert.ok(caught instanceof VerifierError, `want VerifierError, got ${String(caught)}`);
  assert.equal(caught.code, 'ERR_VERIFIER');
  assert.match(caught.log, /invalid access to packet/);
  assert.match(caught.message, /unchecked_read/, 'the message names the program');
  assert.match(caught.message, /invalid access to packet/, 'and ends with the verifier explanation');
  assert.match(caught.program, /unchecked_read/);
  assert.ok(caught.errno !== undefined && caught.errno > 0);
});

test('a missing object file is ERR_ELF naming the path', () => {
  const path = objectPath(`does_not_exist_${uniqueId()}`);
  assert.throws(() => BpfObject.load(path), (error: unknown) => {
    assert.ok(BpfError.is(error, 'ERR_ELF'), String(error));
    assert.ok(error.message.includes(path), error.message);
    return true;
  });
});

test('pinned maps are created on the first load and reused by the next', (t) => {
  const dir = pinDir(t);
  const pin = { dir, maps: ['counters'] };
  const first = load(t, { pin });
  first.counters.update(5, 55n);
  const second = load(t, { pin });
  assert.equal(second.counters.lookup(5), 55n, 'a value written through the first load is seen through the second');
  assert.equal(second.obj.map('counters').info().id, first.obj.map('counters').info().id, 'the same kernel map');
  assert.notEqual(
    second.obj.map('net_config').info().id,
    first.obj.map('net_config').info().id,
    'maps that are not pinned are per load',
  );

  // Programs of both loads write into the shared map.
  first.obj.program('count_tc').testRun({ data: udpPacket() });
  second.obj.program('count_tc').testRun({ data: udpPacket() });
  assert.equal(first.counters.lookup(SLOT_TC), 2n);

  // The pin outlives both objects.
  first.obj.close();
  second.obj.close();
  const third = load(t, { pin });
  assert.equal(third.counters.lookup(5), 55n);

  assert.throws(() => BpfObject.load(objectPath('net'), { pin: { dir, maps: ['nope'] } }), hasCode('ERR_NOT_FOUND', /nope/));
});

test('a pinned map of another shape fails the load naming what differs, or is made anew when the loader says so', (t) => {
  const dir = pinDir(t);
  const older = load(t, { pin: { dir, maps: ['counters'] }, maxEntries: { counters: 3 } });
  const olderId = older.obj.map('counters').info().id;
  older.counters.update(1, 11n);
  older.obj.close();

  assert.throws(() => BpfObject.load(objectPath('net'), { pin: { dir, maps: ['counters'] } }), hasCode('ERR_PIN_MISMATCH', /counters.*maxEntries 3 pinned, \d+ wanted/));
  const told: string[] = [];
  const newer = load(t, { pin: { dir, maps: ['counters'], onIncompatible: (map, reason) => told.push(`${map}: ${reason}`) } });
  assert.deepEqual(told.length, 1);
  assert.match(told[0]!, /^counters: maxEntries 3 pinned, \d+ wanted$/);
  assert.notEqual(newer.obj.map('counters').info().id, olderId, 'a new kernel map behind the pin');
  assert.equal(newer.counters.lookup(1), 0n, 'the old entries are gone, as the loader was told');
  const again = load(t, { pin: { dir, maps: ['counters'], onIncompatible: () => assert.fail('the new pin fits') } });
  assert.equal(again.obj.map('counters').info().id, newer.obj.map('counters').info().id);
});

test('maxEntries overrides the size in the ELF', (t) => {
  const { obj, counters } = load(t, { maxEntries: { counters: 64 } });
  assert.equal(obj.map('counters').info().maxEntries, 64);
  assert.equal(obj.map('counters').maxEntries, 64);
  assert.equal(obj.map('net_config').info().maxEntries, 2, 'others keep their size');
  counters.update(63, 1n);
  assert.equal(counters.lookup(63), 1n);
  assert.equal(counters.lookup(64), undefined);
});

test('programs: only the named programs are loaded', (t) => {
  const { obj } = load(t, { programs: ['count_tc', 'refuse_connect4'] });
  assert.deepEqual([...obj.programs.keys()].sort(), ['count_tc', 'refuse_connect4']);
  assert.equal(obj.program('count_tc').type, ProgramType.SCHED_CLS);
  assert.equal(obj.program('refuse_connect4').type, ProgramType.CGROUP_SOCK_ADDR);
  assert.equal(obj.program('count_tc').section, 'tc');
  assert.throws(() => obj.program('count_xdp'), hasCode('ERR_NOT_FOUND', /count_xdp/));
  assert.equal(obj.map('counters').type, MapType.ARRAY, 'maps are all there');

  assert.throws(
    () => BpfObject.load(objectPath('net'), { programs: ['count_tc', 'count_tcc'] }),
    hasCode('ERR_NOT_FOUND', /count_tcc/),
    'a misspelt program name is an error, not a silently missing program',
  );

  const all = load(t);
  assert.deepEqual(
    [...all.obj.programs.keys()].sort(),
    ['count_getpeername4', 'count_recvmsg4', 'count_sendmsg4', 'count_tc', 'count_tc_second', 'count_xdp', 'refuse_connect4'],
  );
});

test('BPF_PROG_TEST_RUN returns the verdict and runs repeat times', (t) => {
  const { obj, counters, config } = load(t);
  const prog = obj.program('count_tc');
  assert.equal(prog.testRun({ data: udpPacket() }).returnValue, TC_ACT_UNSPEC);
  config.update(0, 1);
  const dropped = prog.testRun({ data: udpPacket() });
  assert.equal(dropped.returnValue, TC_ACT_SHOT, 'with net_config[0]=1 the program drops');
  assert.equal(counters.lookup(SLOT_TC), 2n);

  const repeated = prog.testRun({ data: udpPacket(), repeat: 100 });
  assert.equal(repeated.returnValue, TC_ACT_SHOT);
  assert.equal(counters.lookup(SLOT_TC), 102n, 'the program ran 100 more times');
  assert.ok(repeated.durationNs >= 0);

  const xdp = obj.program('count_xdp').testRun({ data: udpPacket() });
  assert.equal(xdp.returnValue, 1, 'XDP_DROP');
  config.update(0, 0);
  assert.equal(obj.program('count_xdp').testRun({ data: udpPacket() }).returnValue, 2, 'XDP_PASS');

  assert.throws(() => prog.testRun({ data: Buffer.alloc(4) }), hasCode('ERR_INVALID_ARGUMENT', /count_tc/), 'shorter than an Ethernet header');
});

test('with run statistics on, a program counts its runs and their time', (t) => {
  const { obj } = load(t);
  const prog = obj.program('count_tc');
  const stats = enableRunStats();
  t.after(() => stats.close());
  const before = prog.info();
  prog.testRun({ data: udpPacket(), repeat: 100 });
  const after = prog.info();
  // Exactly: nothing else runs this program (statistics may be on for others too, not for it).
  assert.equal(after.runCount - before.runCount, 100n);
  assert.ok(after.runTimeNs > before.runTimeNs, `run time ${before.runTimeNs} → ${after.runTimeNs}`);
  stats.close();
  stats.close();
});
