/**
 * Tests of the IPv4 arithmetic, including the edges (/0, /32, 255.255.255.255) where signed
 * 32-bit bitwise operators go wrong.
 * @module
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  cidrSize,
  contains,
  containsCidr,
  formatCidr,
  formatIpv4,
  lastAddress,
  nthAddress,
  nthSubnet,
  offsetOf,
  overlaps,
  parseCidr,
  parseIpv4,
  prefixMask,
  split,
  subnetCount,
  subnetIndex,
  tryParseIpv4,
} from './cidr.ts';
import { IpamError } from './errors.ts';

test('cidr: parse and format IPv4 round-trip, including the extremes', () => {
  for (const text of ['0.0.0.0', '10.244.1.2', '192.168.255.254', '255.255.255.255']) {
    assert.equal(formatIpv4(parseIpv4(text)), text);
  }
  assert.equal(parseIpv4('255.255.255.255'), 0xffffffff);
  assert.equal(parseIpv4('10.244.1.2'), 0x0af40102);
  for (const bad of ['', '1.2.3', '1.2.3.4.5', '256.1.1.1', '1.2.3.-1', '01.2.3.4', '1.2.3.4 ', 'a.b.c.d', '1..2.3', '1.2.3.1e2']) {
    assert.equal(tryParseIpv4(bad), undefined, bad);
  }
  assert.throws(() => parseIpv4('10.0.0.256', 'router address'), (e: IpamError) => {
    assert.equal(e.code, 'ERR_IPAM_INVALID_CIDR');
    assert.equal(e.message, "ipam: router address '10.0.0.256': not an IPv4 address (expected a.b.c.d, each 0–255)");
    return true;
  });
});

test('cidr: parse CIDRs with clear errors for bad prefix lengths and host bits', () => {
  assert.deepEqual(parseCidr('10.244.0.0/16'), { address: 0x0af40000, prefixLength: 16 });
  assert.deepEqual(parseCidr('0.0.0.0/0'), { address: 0, prefixLength: 0 });
  assert.deepEqual(parseCidr('255.255.255.255/32'), { address: 0xffffffff, prefixLength: 32 });
  const cases: [string, string][] = [
    ['10.0.0.0/33', "ipam: cluster CIDR '10.0.0.0/33': prefix length must be 0–32"],
    ['10.0.0.0/-1', "ipam: cluster CIDR '10.0.0.0/-1': prefix length must be 0–32"],
    ['10.0.0.0/', "ipam: cluster CIDR '10.0.0.0/': prefix length must be 0–32"],
    ['10.0.0.0', "ipam: cluster CIDR '10.0.0.0': missing prefix length (expected a.b.c.d/n)"],
    ['10.0.0/8', "ipam: cluster CIDR '10.0.0/8': not an IPv4 address (expected a.b.c.d/n, each octet 0–255)"],
    ['10.244.1.0/16', "ipam: cluster CIDR '10.244.1.0/16': host bits are set (did you mean 10.244.0.0/16?)"],
  ];
  for (const [text, message] of cases) {
    assert.throws(() => parseCidr(text, 'cluster CIDR'), (e: IpamError) => e.code === 'ERR_IPAM_INVALID_CIDR' && e.message === message, text);
  }
});

test('cidr: masks, sizes, contains and overlaps', () => {
  assert.equal(prefixMask(0), 0);
  assert.equal(prefixMask(1), 0x80000000);
  assert.equal(prefixMask(24), 0xffffff00);
  assert.equal(prefixMask(32), 0xffffffff);
  const pool = parseCidr('10.244.1.0/24');
  assert.equal(cidrSize(pool), 256);
  assert.equal(cidrSize(parseCidr('0.0.0.0/0')), 2 ** 32);
  assert.equal(formatIpv4(lastAddress(pool)), '10.244.1.255');
  assert.equal(formatIpv4(lastAddress(parseCidr('255.255.255.0/24'))), '255.255.255.255');
  assert.ok(contains(pool, parseIpv4('10.244.1.0')));
  assert.ok(contains(pool, parseIpv4('10.244.1.255')));
  assert.ok(!contains(pool, parseIpv4('10.244.2.0')));
  assert.ok(!contains(pool, parseIpv4('10.244.0.255')));
  // High addresses: a signed comparison would fail here.
  assert.ok(contains(parseCidr('240.0.0.0/4'), parseIpv4('255.255.255.255')));
  assert.ok(contains(parseCidr('0.0.0.0/0'), parseIpv4('255.255.255.255')));
  assert.ok(containsCidr(parseCidr('10.244.0.0/16'), pool));
  assert.ok(!containsCidr(pool, parseCidr('10.244.0.0/16')));
  assert.ok(overlaps(pool, parseCidr('10.244.0.0/16')) && overlaps(parseCidr('10.244.0.0/16'), pool));
  assert.ok(!overlaps(pool, parseCidr('10.244.2.0/24')));
  assert.ok(overlaps(pool, pool));
});

test('cidr: nth address, offsets and splitting', () => {
  const pool = parseCidr('10.244.1.0/24');
  assert.equal(formatIpv4(nthAddress(pool, 0)), '10.244.1.0');
  assert.equal(formatIpv4(nthAddress(pool, 1)), '10.244.1.1');
  assert.equal(formatIpv4(nthAddress(pool, 255)), '10.244.1.255');
  assert.throws(() => nthAddress(pool, 256), RangeError);
  assert.throws(() => nthAddress(pool, -1), RangeError);
  assert.equal(offsetOf(pool, parseIpv4('10.244.1.7')), 7);
  assert.equal(offsetOf(pool, parseIpv4('10.244.2.7')), -1);

  const cluster = parseCidr('10.244.0.0/16');
  assert.equal(subnetCount(cluster, 24), 256);
  assert.equal(subnetCount(cluster, 16), 1);
  assert.equal(formatCidr(nthSubnet(cluster, 24, 0)), '10.244.0.0/24');
  assert.equal(formatCidr(nthSubnet(cluster, 24, 255)), '10.244.255.0/24');
  assert.equal(formatCidr(nthSubnet(cluster, 26, 5)), '10.244.1.64/26');
  assert.equal(subnetIndex(cluster, parseCidr('10.244.1.64/26')), 5);
  assert.equal(subnetIndex(cluster, parseCidr('10.245.0.0/24')), -1);
  assert.throws(() => nthSubnet(cluster, 24, 256), RangeError);
  assert.throws(() => subnetCount(cluster, 15), RangeError);
  assert.throws(() => subnetCount(cluster, 33), RangeError);
  assert.deepEqual([...split(parseCidr('10.0.0.0/22'), 24)].map(formatCidr), ['10.0.0.0/24', '10.0.1.0/24', '10.0.2.0/24', '10.0.3.0/24']);
  assert.equal(formatCidr(nthSubnet(parseCidr('0.0.0.0/0'), 1, 1)), '128.0.0.0/1');
  assert.equal(subnetCount(parseCidr('0.0.0.0/0'), 32), 2 ** 32);
  // Splitting is exact: subnets tile the CIDR without gaps or overlaps.
  const parts = [...split(parseCidr('10.0.0.0/24'), 27)];
  for (let i = 0; i < parts.length; i++) {
    assert.equal(parts[i].address, parseIpv4('10.0.0.0') + i * 32);
    for (let j = i + 1; j < parts.length; j++) assert.ok(!overlaps(parts[i], parts[j]));
  }
});
