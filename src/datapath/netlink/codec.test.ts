/**
 * The rtnetlink byte forms without a kernel: addresses both ways, attribute padding and nesting,
 * message headers, and what malformed input is refused.
 * @module
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { attr, attrBe16, attrString, attrU32, ipBytes, ipText, macBytes, macText, message, nested, parseAttrs, parseMessages, parsePrefix, TCM_IFINDEX_MAGIC_BLOCK, tcmsg, TCMSG_LEN } from './codec.ts';

test('IPv4 and IPv6 addresses round-trip through their bytes, IPv6 printed with the longest zero run as ::', () => {
  for (const [text, hex] of [
    ['10.244.1.7', '0af40107'],
    ['::', '0'.repeat(32)],
    ['::1', `${'0'.repeat(31)}1`],
    ['fe80::1', `fe80${'0'.repeat(27)}1`],
    ['2001:db8::8:800:200c:417a', '20010db80000000000080800200c417a'],
    ['1:2:3:4:5:6:7:8', '00010002000300040005000600070008'],
    ['1::', `0001${'0'.repeat(28)}`],
  ] as const) {
    assert.equal(ipBytes(text).toString('hex'), hex, text);
    assert.equal(ipText(ipBytes(text)), text, text);
  }
  assert.equal(ipBytes('::ffff:10.1.2.3').toString('hex'), '00000000000000000000ffff0a010203');
  assert.throws(() => ipBytes('10.1.2'), TypeError);
});

test('prefixes: a missing length is a host, bad lengths are refused', () => {
  assert.deepEqual(parsePrefix('10.0.0.0/8'), { address: '10.0.0.0', length: 8, family: 4 });
  assert.deepEqual(parsePrefix('10.0.0.1'), { address: '10.0.0.1', length: 32, family: 4 });
  assert.deepEqual(parsePrefix('fd00::/64'), { address: 'fd00::', length: 64, family: 6 });
  for (const bad of ['10.0.0.0/33', '10.0.0.0/', '10.0.0.0/8/1', 'fd00::/129', 'x/8']) assert.throws(() => parsePrefix(bad), TypeError, bad);
});

test('attributes are padded to 4 bytes and nest; messages carry their true length', () => {
  const name = attrString(3, 'eth0');
  assert.equal(name.readUInt16LE(0), 9, 'the length counts the NUL but not the padding');
  assert.equal(name.length, 12);
  assert.equal(attrBe16(15, 8472).subarray(4, 6).toString('hex'), '2118', 'network order');
  const outer = nested(18, [attrString(1, 'veth'), attrU32(4, 1400)]);
  const inner = parseAttrs(parseAttrs(outer).get(18)!);
  assert.equal(inner.get(1)?.toString(), 'veth\0');
  assert.equal(inner.get(4)?.readUInt32LE(0), 1400);
  const msg = message(16, 0x5, 42, Buffer.alloc(16), [name, attr(4, Buffer.from([1, 2]))]);
  const [parsed] = parseMessages(Buffer.concat([msg, msg]));
  assert.equal(msg.readUInt32LE(0), 16 + 16 + 12 + 8, 'the padding of an attribute is part of the message');
  assert.deepEqual([parsed.type, parsed.flags, parsed.seq, parsed.payload.length], [16, 5, 42, 36]);
  assert.equal(parseMessages(Buffer.concat([msg, msg])).length, 2);
  assert.equal(parseMessages(msg.subarray(0, 20)).length, 0, 'a truncated message is not read past its end');
});

test('MAC addresses', () => {
  assert.equal(macText(macBytes('0A:1b:2c:3d:4e:5f')), '0a:1b:2c:3d:4e:5f');
  assert.throws(() => macBytes('0a:1b:2c:3d:4e'), TypeError);
});

test('struct tcmsg: family, ifindex, handle, parent, info at their offsets; a block is named by the magic ifindex', () => {
  const b = tcmsg({ ifindex: TCM_IFINDEX_MAGIC_BLOCK, handle: 1, parent: 0x43494c40, info: (1 << 16) | 0x0300 });
  assert.equal(b.length, TCMSG_LEN);
  assert.equal(TCMSG_LEN, 20, 'sizeof(struct tcmsg)');
  assert.deepEqual([b.readUInt8(0), b.readUInt32LE(4), b.readUInt32LE(8), b.readUInt32LE(12), b.readUInt32LE(16)], [0, 0xffffffff, 1, 0x43494c40, 0x00010300]);
});
