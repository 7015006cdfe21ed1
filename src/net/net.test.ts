/**
 * src/net: strict parsing, canonical formatting, containment and ordering, and a differential
 * check against node:net (isIPv4/isIPv6, BlockList) over generated cases.
 * @module
 */
import assert from 'node:assert/strict';
import { BlockList, isIPv4, isIPv6, SocketAddress } from 'node:net';
import { test } from 'node:test';
import { Addr, formatIpv4, ipv4Mask, NetParseError, parseIpv4, Prefix } from './index.ts';

/** A seeded generator, so a failure names a case that reproduces. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

test('net: IPv4 parses strictly and round-trips, extremes included', () => {
  for (const text of ['0.0.0.0', '10.244.1.2', '192.168.255.254', '255.255.255.255', '1.0.0.9']) {
    const a = Addr.parse(text);
    assert.equal(a.toString(), text);
    assert.ok(a.is4() && !a.is6());
    assert.equal(a.bitLength, 32);
  }
  assert.equal(Addr.parse('255.255.255.255').toUint32(), 0xffffffff);
  assert.equal(Addr.parse('10.244.1.2').toUint32(), 0x0af40102);
  assert.equal(parseIpv4('10.244.1.2'), 0x0af40102);
  assert.equal(formatIpv4(0x0af40102), '10.244.1.2');
  const bad = ['', '1.2.3', '1.2.3.4.5', '256.1.1.1', '1.2.3.-1', '01.2.3.4', '1.2.3.04', '00.0.0.0', '1.2.3.4 ', ' 1.2.3.4', 'a.b.c.d', '1..2.3', '1.2.3.1e2', '1.2.3.', '.1.2.3', '1.2.3.4/32', '1000.1.1.1', '0x1.1.1.1', '1.2.3.٣'];
  for (const text of bad) {
    assert.equal(Addr.tryParse(text), undefined, text);
    assert.equal(parseIpv4(text), undefined, text);
    assert.throws(() => Addr.parse(text), (e: unknown) => NetParseError.is(e, 'ERR_NET_INVALID_ADDRESS') && e.input === text && e.message.includes(JSON.stringify(text)), text);
  }
  assert.equal(Addr.tryParse(42 as unknown as string), undefined);
});

test('net: IPv6 parses every RFC 4291 form and formats per RFC 5952', () => {
  const cases: [string, string][] = [
    ['::', '::'],
    ['::1', '::1'],
    ['1::', '1::'],
    ['2001:DB8::1', '2001:db8::1'],
    ['2001:0db8:0000:0000:0000:0000:0000:0001', '2001:db8::1'],
    ['2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1'], // the first of two equal runs
    ['2001:db8:0:1:1:1:1:1', '2001:db8:0:1:1:1:1:1'], // a single zero group is not compressed
    ['2001:0:0:1:0:0:0:1', '2001:0:0:1::1'], // the longest run wins
    ['1:2:3:4:5:6:7::', '1:2:3:4:5:6:7:0'],
    ['::2:3:4:5:6:7:8', '0:2:3:4:5:6:7:8'],
    ['fe80::1:2', 'fe80::1:2'],
    ['::ffff:10.0.0.1', '::ffff:a00:1'],
    ['::1.2.3.4', '::102:304'],
    ['1:2:3:4:5:6:1.2.3.4', '1:2:3:4:5:6:102:304'],
    ['ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff', 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff'],
  ];
  for (const [text, canonical] of cases) {
    const a = Addr.parse(text);
    assert.ok(a.is6(), text);
    assert.equal(a.toString(), canonical, text);
    assert.ok(Addr.parse(canonical).equals(a), canonical);
  }
  assert.equal(Addr.parse('::ffff:10.0.0.1').toBigInt(), 0xffff0a000001n);
  const bad = [':', ':::', '1:2', '1::2::3', ':1::', '1::2:', '1:2:3:4:5:6:7:8:9', '1:2:3:4:5:6:7:8::', '::1:2:3:4:5:6:7:8', '12345::', 'g::', 'fe80::1%eth0', '::1.2.3', '::1.2.3.04', '1:2:3:4:5:6:7:1.2.3.4', '::1.2.3.4:5', '1.2.3.4::', ' ::1', '::1 '];
  for (const text of bad) {
    assert.equal(Addr.tryParse(text), undefined, text);
    assert.throws(() => Addr.parse(text), (e: unknown) => NetParseError.is(e, 'ERR_NET_INVALID_ADDRESS') && /IPv6/.test(e.message), text);
  }
});

test('net: bytes, numbers and bigints convert both ways', () => {
  assert.deepEqual(Addr.parse('10.1.2.3').toBytes(), Uint8Array.of(10, 1, 2, 3));
  assert.equal(Addr.fromBytes(Uint8Array.of(255, 0, 0, 1)).toString(), '255.0.0.1');
  const v6 = Addr.parse('2001:db8::ff01');
  assert.equal(Buffer.from(v6.toBytes()).toString('hex'), '20010db800000000000000000000ff01');
  assert.ok(Addr.fromBytes(v6.toBytes()).equals(v6));
  assert.equal(Addr.fromUint32(0xc0000207).toString(), '192.0.2.7');
  assert.equal(Addr.fromBigInt(6, 1n).toString(), '::1');
  assert.equal(Addr.fromBigInt(4, 0x0a000001n).toUint32(), 0x0a000001);
  assert.throws(() => Addr.fromUint32(2 ** 32), RangeError);
  assert.throws(() => Addr.fromUint32(-1), RangeError);
  assert.throws(() => Addr.fromBigInt(6, 1n << 128n), RangeError);
  assert.throws(() => Addr.fromBytes(new Uint8Array(5)), RangeError);
  assert.throws(() => v6.toUint32(), TypeError);
  assert.equal(JSON.stringify({ a: Addr.parse('::1') }), '{"a":"::1"}');
});

test('net: compare orders IPv4 before IPv6, then by value; next/prev stop at the ends', () => {
  const sorted = ['0.0.0.0', '9.255.255.255', '10.0.0.0', '255.255.255.255', '::', '::1', '::ffff:0.0.0.0', '2001:db8::', 'ffff::'].map((t) => Addr.parse(t));
  const shuffled = [...sorted].reverse();
  shuffled.sort((a, b) => a.compare(b));
  assert.deepEqual(shuffled.map(String), sorted.map(String));
  assert.equal(Addr.parse('10.0.0.1').compare(Addr.parse('10.0.0.1')), 0);
  assert.ok(Addr.parse('10.0.0.1').equals(Addr.parse('10.0.0.1')));
  assert.ok(!Addr.parse('0.0.0.0').equals(Addr.parse('::')), 'same value, other family');
  assert.equal(Addr.parse('10.0.0.255').next()?.toString(), '10.0.1.0');
  assert.equal(Addr.parse('10.0.1.0').prev()?.toString(), '10.0.0.255');
  assert.equal(Addr.parse('255.255.255.255').next(), undefined);
  assert.equal(Addr.parse('0.0.0.0').prev(), undefined);
  assert.equal(Addr.parse('::ffff').next()?.toString(), '::1:0');
  assert.equal(Addr.parse('ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff').next(), undefined);
  assert.equal(Addr.parse('::').prev(), undefined);
});

test('net: prefixes parse strictly; host bits are rejected or masked as the caller asks', () => {
  const p = Prefix.parse('10.244.0.0/16');
  assert.equal(p.toString(), '10.244.0.0/16');
  assert.equal(p.bits, 16);
  assert.equal(p.family, 4);
  assert.equal(p.size(), 65536);
  assert.equal(p.first().toString(), '10.244.0.0');
  assert.equal(p.last().toString(), '10.244.255.255');
  assert.equal(Prefix.parse('0.0.0.0/0').last().toString(), '255.255.255.255');
  assert.equal(Prefix.parse('0.0.0.0/0').size(), 2 ** 32);
  assert.equal(Prefix.parse('2001:db8::/32').last().toString(), '2001:db8:ffff:ffff:ffff:ffff:ffff:ffff');
  assert.equal(Prefix.parse('::/0').size(), 2 ** 128);
  assert.equal(Prefix.parse('2001:DB8::/32').toString(), '2001:db8::/32');
  assert.equal(Prefix.parse('10.1.2.3/8', { hostBits: 'mask' }).toString(), '10.0.0.0/8');
  assert.equal(Prefix.parse('fd00::1/8', { hostBits: 'mask' }).toString(), 'fd00::/8');
  assert.equal(Prefix.parse('192.0.2.7', { bareAddress: true }).toString(), '192.0.2.7/32');
  assert.equal(Prefix.parse('::1', { bareAddress: true }).toString(), '::1/128');
  assert.ok(Prefix.parse('::1', { bareAddress: true }).isSingleAddress());
  assert.equal(Prefix.tryParse('10.1.0.0/16')?.toString(), '10.1.0.0/16');
  const unmasked = Prefix.of(Addr.parse('10.1.2.3'), 8);
  assert.equal(unmasked.toString(), '10.1.2.3/8', 'of() keeps host bits');
  assert.ok(!unmasked.isMasked());
  assert.equal(unmasked.masked().toString(), '10.0.0.0/8');
  assert.throws(() => Prefix.of(Addr.parse('10.0.0.0'), 33), RangeError);

  const cases: [string, Parameters<typeof Prefix.parse>[1], string, string][] = [
    ['10.244.1.0/16', {}, 'host-bits', 'host bits are set (did you mean 10.244.0.0/16?)'],
    ['2001:db8::1/32', {}, 'host-bits', 'host bits are set (did you mean 2001:db8::/32?)'],
    ['10.0.0.0', {}, 'missing-length', 'missing prefix length (expected address/n)'],
    ['10.0.0.0/33', {}, 'length', 'prefix length must be 0–32'],
    ['::/129', {}, 'length', 'prefix length must be 0–128'],
    ['10.0.0.0/', {}, 'length', 'prefix length must be 0–32'],
    ['10.0.0.0/-1', {}, 'length', 'prefix length must be 0–32'],
    ['10.0.0.0/08', {}, 'length', 'prefix length must be 0–32'],
    ['10.0.0.0/8/8', {}, 'length', 'prefix length must be 0–32'],
    ['10.0.0/8', {}, 'syntax', "not an IPv4 address before the '/'"],
    ['1:2:3/64', {}, 'syntax', "not an IPv6 address before the '/'"],
    ['2001:db8::/32', { family: 4 }, 'family', 'not an IPv4 prefix'],
    ['10.0.0.0/8', { family: 6 }, 'family', 'not an IPv6 prefix'],
  ];
  for (const [text, options, problem, reason] of cases) {
    assert.equal(Prefix.tryParse(text, options), undefined, text);
    assert.throws(
      () => Prefix.parse(text, options),
      (e: unknown) => NetParseError.is(e, 'ERR_NET_INVALID_PREFIX') && e.problem === problem && e.reason === reason && e.message === `invalid IP prefix ${JSON.stringify(text)}: ${reason}`,
      text,
    );
  }
});

test('net: contains, overlaps and compare on prefixes', () => {
  const p = (t: string) => Prefix.parse(t);
  const a = (t: string) => Addr.parse(t);
  assert.ok(p('10.0.0.0/8').contains(a('10.255.255.255')));
  assert.ok(!p('10.0.0.0/8').contains(a('11.0.0.0')));
  assert.ok(p('0.0.0.0/0').contains(a('255.255.255.255')));
  assert.ok(p('240.0.0.0/4').contains(a('255.255.255.255')));
  assert.ok(!p('0.0.0.0/0').contains(a('::')), 'families never contain each other');
  assert.ok(!p('::/0').contains(a('10.0.0.1')));
  assert.ok(p('::/0').contains(a('ffff::1')));
  assert.ok(p('10.0.0.0/8').contains(p('10.96.0.0/12')));
  assert.ok(p('10.0.0.0/8').contains(p('10.0.0.0/8')));
  assert.ok(!p('10.96.0.0/12').contains(p('10.0.0.0/8')));
  assert.ok(!p('0.0.0.0/0').contains(p('2001:db8::/32')));
  assert.ok(p('2001:db8::/32').contains(p('2001:db8:1::/48')));
  assert.ok(p('10.0.0.0/8').overlaps(p('10.1.0.0/16')) && p('10.1.0.0/16').overlaps(p('10.0.0.0/8')));
  assert.ok(!p('10.0.0.0/9').overlaps(p('10.128.0.0/9')));
  assert.ok(p('10.0.0.0/8').compare(p('10.0.0.0/16')) < 0);
  assert.ok(p('10.0.0.0/16').compare(p('10.1.0.0/16')) < 0);
  assert.ok(p('255.0.0.0/8').compare(p('::/0')) < 0);
  assert.ok(p('10.0.0.0/8').equals(Prefix.parse('10.1.0.0/8', { hostBits: 'mask' })));
  assert.ok(!p('10.0.0.0/8').equals(p('10.0.0.0/9')));
  assert.equal(ipv4Mask(0), 0);
  assert.equal(ipv4Mask(32), 0xffffffff);
  assert.equal(ipv4Mask(12), 0xfff00000);
});

/** Text that is sometimes an address and often nearly one: mutations of valid addresses. */
function candidates(seed: number, count: number): string[] {
  const r = rng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)];
  const out: string[] = [];
  const alphabet = ['0', '1', '9', 'a', 'f', 'F', 'g', ':', ':', '.', '.', '::', '00', '255', '256', '%', ' ', '-'];
  for (let i = 0; i < count; i++) {
    let text: string;
    if (r() < 0.5) {
      text = formatIpv4(Math.floor(r() * 2 ** 32));
    } else {
      const groups = Array.from({ length: 8 }, () => (r() < 0.4 ? 0 : Math.floor(r() * 0x10000)));
      const style = r();
      text = groups.map((g) => (style < 0.3 ? g.toString(16).padStart(4, '0') : style < 0.6 ? g.toString(16).toUpperCase() : g.toString(16))).join(':');
      if (r() < 0.5) text = Addr.parse(text).toString();
      if (r() < 0.15) text = `${text.slice(0, text.lastIndexOf(':', text.lastIndexOf(':') - 1))}:${formatIpv4(Math.floor(r() * 2 ** 32))}`;
    }
    const mutations = r() < 0.3 ? 0 : 1 + Math.floor(r() * 2);
    for (let m = 0; m < mutations; m++) {
      const at = Math.floor(r() * (text.length + 1));
      const kind = r();
      if (kind < 0.4) text = text.slice(0, at) + pick(alphabet) + text.slice(at);
      else if (kind < 0.8) text = text.slice(0, at) + text.slice(at + 1);
      else text = text.slice(0, at) + pick(alphabet) + text.slice(at + 1);
    }
    out.push(text);
  }
  return out;
}

test('net: differential against node:net — acceptance and value agree on generated text', () => {
  let v4 = 0;
  let v6 = 0;
  for (const text of candidates(1, 20_000)) {
    // node accepts zones (fe80::1%eth0); we refuse them by design.
    if (text.includes('%')) continue;
    const ours = Addr.tryParse(text);
    assert.equal(ours?.is4() ?? false, isIPv4(text), `IPv4 acceptance of ${JSON.stringify(text)}`);
    assert.equal(ours?.is6() ?? false, isIPv6(text), `IPv6 acceptance of ${JSON.stringify(text)}`);
    if (ours === undefined) continue;
    if (ours.is4()) v4++;
    else v6++;
    // Same value: node's own canonical form of the text and of ours are the same address.
    const family = ours.is4() ? 'ipv4' : 'ipv6';
    assert.equal(new SocketAddress({ address: ours.toString(), family }).address, new SocketAddress({ address: text, family }).address, text);
    assert.ok(Addr.parse(ours.toString()).equals(ours), `canonical form of ${text} parses back`);
  }
  assert.ok(v4 > 1000 && v6 > 1000, `enough valid cases of each family (${v4} IPv4, ${v6} IPv6)`);
});

test('net: differential against node:net BlockList — prefix containment agrees', () => {
  const r = rng(2);
  for (let i = 0; i < 3000; i++) {
    const six = r() < 0.5;
    const base = six ? Addr.fromBigInt(6, (BigInt(Math.floor(r() * 2 ** 32)) << 96n) | BigInt(Math.floor(r() * 2 ** 32))) : Addr.fromUint32(Math.floor(r() * 2 ** 32));
    const bits = Math.floor(r() * (base.bitLength + 1));
    const prefix = Prefix.of(base, bits).masked();
    const list = new BlockList();
    list.addSubnet(prefix.addr.toString(), bits, six ? 'ipv6' : 'ipv4');
    // Probe near the prefix (flip one bit of the base) so both answers occur often.
    const flip = Math.floor(r() * base.bitLength);
    const probe = six ? Addr.fromBigInt(6, base.toBigInt() ^ (1n << BigInt(127 - flip))) : Addr.fromUint32((base.toUint32() ^ (1 << (31 - flip))) >>> 0);
    for (const addr of [base, probe, prefix.first(), prefix.last()]) {
      assert.equal(prefix.contains(addr), list.check(addr.toString(), six ? 'ipv6' : 'ipv4'), `${prefix} contains ${addr}`);
    }
    assert.equal(prefix.contains(probe), flip < bits ? false : true, `${prefix} vs ${probe}`);
  }
});
