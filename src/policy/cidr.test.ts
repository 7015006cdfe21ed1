/**
 * CIDR parsing of policy peers: IPv4 and IPv6, canonical output, containment.
 * @module
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { cidrContains, formatCidr, ipInCidr, parseCidr, type Cidr } from './index.ts';

function canon(text: string): string {
  const c = parseCidr(text);
  if ('error' in c) throw new Error(c.error);
  return formatCidr(c);
}

function parsed(text: string): Cidr {
  const c = parseCidr(text);
  if ('error' in c) throw new Error(c.error);
  return c;
}

test('cidr: IPv4 canonical forms, bare address, host bits cleared', () => {
  assert.equal(canon('10.0.0.0/8'), '10.0.0.0/8');
  assert.equal(canon('192.0.2.7'), '192.0.2.7/32');
  assert.equal(canon('10.1.2.3/8'), '10.0.0.0/8');
  assert.equal(canon('0.0.0.0/0'), '0.0.0.0/0');
  assert.equal(canon('255.255.255.255/32'), '255.255.255.255/32');
});

test('cidr: IPv6 canonical forms (RFC 5952)', () => {
  assert.equal(canon('2001:DB8::/32'), '2001:db8::/32');
  assert.equal(canon('2001:0db8:0000:0000:0000:0000:0000:0001/128'), '2001:db8::1/128');
  assert.equal(canon('::/0'), '::/0');
  assert.equal(canon('::1'), '::1/128');
  assert.equal(canon('2001:db8:0:0:1:0:0:1'), '2001:db8::1:0:0:1/128');
  assert.equal(canon('fd00::1/8'), 'fd00::/8');
  assert.equal(canon('::ffff:10.0.0.1'), '::ffff:a00:1/128');
});

test('cidr: rejects malformed input', () => {
  for (const bad of ['', '10.0.0.256/24', '10.0.0/8', '10.0.0.0/33', '10.0.0.0/', '010.0.0.0/8', 'a.b.c.d/8', '2001:db8::/129', '1::2::3', 'fe80::1%eth0', '10.0.0.0/08', 'example.com']) {
    assert.ok('error' in parseCidr(bad), bad);
  }
});

test('cidr: containment and address membership', () => {
  assert.equal(cidrContains(parsed('10.0.0.0/8'), parsed('10.96.0.0/12')), true);
  assert.equal(cidrContains(parsed('10.0.0.0/8'), parsed('10.0.0.0/8')), true);
  assert.equal(cidrContains(parsed('10.96.0.0/12'), parsed('10.0.0.0/8')), false);
  assert.equal(cidrContains(parsed('10.0.0.0/8'), parsed('11.0.0.0/16')), false);
  assert.equal(cidrContains(parsed('0.0.0.0/0'), parsed('2001:db8::/32')), false);
  assert.equal(cidrContains(parsed('2001:db8::/32'), parsed('2001:db8:1::/48')), true);
  assert.equal(ipInCidr('10.96.1.1', '10.96.0.0/12'), true);
  assert.equal(ipInCidr('10.112.0.0', '10.96.0.0/12'), false);
  assert.equal(ipInCidr('2001:db8::5', '2001:db8::/32'), true);
});
