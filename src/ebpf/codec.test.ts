/**
 * Codec tests: C struct layout rules, the network-order and string codecs, ERR_CODEC on bad
 * input, and a codec checked against the BTF of testdata/layout.c (build/bpf/layout.o).
 * @module
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { Btf, checkLayout } from './btf.ts';
import {
  array,
  be16,
  be32,
  bytes,
  cstring,
  decode,
  encode,
  i32,
  i8,
  ipv4,
  mac,
  pad,
  struct,
  u16,
  u32,
  u64,
  u64n,
  u8,
  type Codec,
} from './codec.ts';
import { BpfError } from './errors.ts';
import { objectPath } from './internal/testutils.ts';

const isCodecError = (error: unknown): boolean => BpfError.is(error, 'ERR_CODEC');

function roundTrip<T>(codec: Codec<T>, value: T): { bytes: Buffer; back: T } {
  const buffer = encode(codec, value);
  assert.equal(buffer.length, codec.size);
  return { bytes: buffer, back: decode(codec, buffer) };
}

test('struct: fields take their natural alignment and the size is rounded to the struct alignment', () => {
  const s = struct('s', { a: u8, b: u32, c: u16 });
  assert.deepEqual(s.offsets, { a: 0, b: 4, c: 8 });
  assert.equal(s.size, 12, 'tail padding after c up to alignof(u32)');
  assert.equal(s.align, 4);

  const wide = struct('wide', { a: u8, b: u64 });
  assert.deepEqual(wide.offsets, { a: 0, b: 8 });
  assert.equal(wide.size, 16);
  assert.equal(wide.align, 8);

  const tail = struct('tail', { a: u64, b: u8 });
  assert.equal(tail.size, 16, 'sizeof rounds up so arrays of it stay aligned');

  const packed = struct('packed', { a: u8, b: u8, c: u16, d: u32 });
  assert.deepEqual(packed.offsets, { a: 0, b: 1, c: 2, d: 4 });
  assert.equal(packed.size, 8);

  const bytesOnly = struct('bytes_only', { m: mac, x: u8 });
  assert.equal(bytesOnly.size, 7, 'alignment 1: no tail padding');
  assert.equal(bytesOnly.align, 1);

  // A nested struct is aligned as a whole; an array of structs is sizeof * n.
  const outer = struct('outer', { flag: u8, inner: tail, n: u16 });
  assert.deepEqual(outer.offsets, { flag: 0, inner: 8, n: 24 });
  assert.equal(outer.size, 32);
  const arr = array(s, 3);
  assert.equal(arr.size, 36);
  assert.equal(arr.align, 4);
});

test('struct: holes and pad fields are written as zeros and pad fields are not part of the value', () => {
  const key = struct('k', { proto: u8, _pad: pad(1), port: be16, addr: ipv4, cookie: u64 });
  assert.deepEqual(key.offsets, { proto: 0, _pad: 1, port: 2, addr: 4, cookie: 8 });
  const buffer = Buffer.alloc(key.size + 4, 0xff);
  key.encode({ proto: 6, port: 443, addr: '10.0.0.1', cookie: 7n }, buffer, 2);
  assert.deepEqual(
    [...buffer],
    [0xff, 0xff, 6, 0, 0x01, 0xbb, 10, 0, 0, 1, 7, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff],
    'pad byte zeroed, nothing written outside the struct',
  );
  assert.deepEqual(key.decode(buffer, 2), { proto: 6, port: 443, addr: '10.0.0.1', cookie: 7n });

  const holes = struct('h', { a: u8, b: u32, c: u8 });
  const dirty = Buffer.alloc(holes.size, 0xee);
  holes.encode({ a: 1, b: 2, c: 3 }, dirty, 0);
  assert.deepEqual([...dirty], [1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0], 'implicit holes and tail padding zeroed');
});

test('ipv4, be16, be32, mac, cstring, bytes and arrays round-trip with the bytes C expects', () => {
  const ip = roundTrip(ipv4, '192.168.1.254');
  assert.deepEqual([...ip.bytes], [192, 168, 1, 254], 'network order: first octet first');
  assert.equal(ip.back, '192.168.1.254');
  assert.equal(roundTrip(ipv4, '0.0.0.0').back, '0.0.0.0');
  assert.equal(roundTrip(ipv4, '255.255.255.255').back, '255.255.255.255');

  const port = roundTrip(be16, 8080);
  assert.deepEqual([...port.bytes], [0x1f, 0x90]);
  assert.equal(port.back, 8080);
  assert.deepEqual([...roundTrip(be32, 0x0a000001).bytes], [10, 0, 0, 1]);
  assert.deepEqual([...roundTrip(u16, 0x1234).bytes], [0x34, 0x12], 'plain integers are little-endian');

  const m = roundTrip(mac, 'AA:bb:0c:00:11:ff');
  assert.deepEqual([...m.bytes], [0xaa, 0xbb, 0x0c, 0x00, 0x11, 0xff]);
  assert.equal(m.back, 'aa:bb:0c:00:11:ff');

  const name = cstring(8);
  const s = roundTrip(name, 'eth0');
  assert.deepEqual([...s.bytes], [0x65, 0x74, 0x68, 0x30, 0, 0, 0, 0]);
  assert.equal(s.back, 'eth0');
  assert.equal(roundTrip(name, 'abcdefg').back, 'abcdefg', 'size - 1 bytes plus the NUL');
  assert.equal(roundTrip(name, '').back, '');
  assert.equal(roundTrip(name, 'né').back, 'né');
  // Reusing a buffer: the old, longer string must not show through.
  const reused = encode(name, 'longer1');
  name.encode('ab', reused, 0);
  assert.equal(name.decode(reused, 0), 'ab');
  // A full char[] without NUL (as the kernel may leave comm) decodes to its size.
  assert.equal(name.decode(Buffer.from('12345678abc'), 0), '12345678');

  const raw = roundTrip(bytes(3), Buffer.from([1, 2, 3]));
  assert.deepEqual([...raw.back], [1, 2, 3]);
  assert.deepEqual(roundTrip(array(u32, 3), [1, 2, 0xffffffff]).back, [1, 2, 0xffffffff]);
  assert.equal(roundTrip(u64, 0xffffffffffffffffn).back, 0xffffffffffffffffn);
  assert.equal(roundTrip(u64n, 2 ** 40).back, 2 ** 40);
  assert.equal(roundTrip(i32, -5).back, -5);
  assert.equal(roundTrip(i8, -128).back, -128);
  // u32 takes what C's conversion from int takes: JS bitwise results with bit 31 set.
  assert.equal(roundTrip(u32, 1 << 31).back, 0x80000000);
});

test('bad input throws BpfError ERR_CODEC naming the problem', () => {
  const cases: Array<[string, () => unknown]> = [
    ['ipv4 with three octets', () => encode(ipv4, '10.0.0')],
    ['ipv4 octet 256', () => encode(ipv4, '10.0.0.256')],
    ['ipv4 empty octet', () => encode(ipv4, '10..0.1')],
    ['ipv4 letters', () => encode(ipv4, '10.0.0.a')],
    ['ipv4 hex octet', () => encode(ipv4, '10.0.0.0x1')],
    ['ipv4 signed octet', () => encode(ipv4, '10.0.0.-1')],
    ['mac with five octets', () => encode(mac, 'aa:bb:cc:dd:ee')],
    ['mac non-hex', () => encode(mac, 'aa:bb:cc:dd:ee:zz')],
    ['mac octet over 255', () => encode(mac, 'aa:bb:cc:dd:ee:1ff')],
    ['mac empty octet', () => encode(mac, 'aa:bb::dd:ee:ff')],
    ['cstring too long', () => encode(cstring(4), 'abcd')],
    ['bytes of wrong length', () => encode(bytes(4), Buffer.alloc(3))],
    ['array of wrong length', () => encode(array(u8, 2), [1])],
    ['struct missing field', () => encode(struct('m', { a: u8, b: u16 }), { a: 1 } as never)],
    ['decode past the end', () => decode(u64, Buffer.alloc(7))],
    ['u8 out of range', () => encode(u8, 256)],
    ['u16 negative', () => encode(u16, -1)],
    ['u32 too large', () => encode(u32, 2 ** 32)],
    ['u32 fraction', () => encode(u32, 1.5)],
    ['u32 NaN', () => encode(u32, Number.NaN)],
    ['be16 too large', () => encode(be16, 70000)],
    ['be32 too large', () => encode(be32, 2 ** 33)],
    ['i32 too large', () => encode(i32, 2 ** 31)],
    ['u64 negative', () => encode(u64, -1n)],
    ['u64n fraction', () => encode(u64n, 0.5)],
  ];
  for (const [what, run] of cases) {
    assert.throws(run, (error: unknown) => {
      assert.ok(isCodecError(error), `${what}: want ERR_CODEC, got ${String(error)}`);
      return true;
    });
  }
  assert.throws(() => encode(ipv4, '10.0.0.256'), /10\.0\.0\.256/);
  assert.throws(() => encode(cstring(4), 'abcd'), /abcd/);
  assert.throws(() => encode(struct('m', { a: u8, b: u16 }), { a: 1 } as never), /struct m: field b is missing/);
});

// struct layout_test_key of testdata/layout.c, with C's implicit holes written out as pads.
const layoutTestKey = struct('layout_test_key', {
  proto: u8,
  _pad0: pad(1),
  sport: be16,
  addr: ipv4,
  cookie: u64,
  mac,
  _pad1: pad(2),
  ids: array(u32, 3),
  _pad2: pad(4),
});

// The same struct with the holes left to the alignment rules.
const layoutTestKeyImplicit = struct('layout_test_key', {
  proto: u8,
  sport: be16,
  addr: ipv4,
  cookie: u64,
  mac,
  ids: array(u32, 3),
});

test('a codec written beside the C struct matches its BTF (build/bpf/layout.o)', () => {
  const path = objectPath('layout');
  assert.ok(existsSync(path), `${path} is missing: run bash scripts/build-bpf.sh`);
  const btf = Btf.fromElf(path);
  assert.deepEqual(checkLayout(layoutTestKey, btf), []);
  assert.deepEqual(checkLayout(layoutTestKeyImplicit, btf), []);
  assert.equal(layoutTestKey.size, btf.structLayout('layout_test_key').size);

  const value = { proto: 17, sport: 53, addr: '10.1.2.3', cookie: 1n << 40n, mac: '02:00:00:00:00:01', ids: [1, 2, 3] };
  const explicit = encode(layoutTestKey, value);
  assert.deepEqual(explicit, encode(layoutTestKeyImplicit, value), 'explicit pads and implicit holes give the same bytes');
  assert.deepEqual(decode(layoutTestKey, explicit), value);

  // A codec that forgets C's alignment is caught.
  const wrong = struct('layout_test_key', { proto: u8, sport: be16, addr: ipv4, cookie: u32, mac, ids: array(u32, 3) });
  const problems = checkLayout(wrong, btf);
  assert.ok(problems.some((p) => p.includes('cookie') && p.includes('size 4 in codec, 8 in C')), problems.join('\n'));
  assert.ok(problems.some((p) => p.includes('field mac is at offset 12 in codec, 16 in C')), problems.join('\n'));
});
