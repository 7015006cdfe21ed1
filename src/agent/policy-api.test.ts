/**
 * Trace peers given as addresses and CIDRs: local pod addresses resolve to their endpoint, any
 * other address or CIDR of either family to the world as its CIDR identity would see it.
 * @module
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { httpStatus } from './api-errors.ts';
import { EndpointError } from './errors.ts';
import type { Endpoint } from './endpoint.ts';
import type { EndpointManager } from './endpoint-manager.ts';
import { resolveTracePeer } from './policy-api.ts';

const pod = { id: 7, ipv4: '10.244.1.5', podName: 'web', namespace: 'default' } as Endpoint;
const endpoints = {
  list: () => [pod],
  get: (id: string) => (id === '7' ? pod : undefined),
} as unknown as EndpointManager;

test('trace peer: a local pod address (bare or /32) is that endpoint', () => {
  assert.deepEqual(resolveTracePeer('10.244.1.5', endpoints), { endpoint: 7 });
  assert.deepEqual(resolveTracePeer(' 10.244.1.5/32 ', endpoints), { endpoint: 7 });
});

test('trace peer: other addresses and CIDRs of either family become canonical CIDRs', () => {
  assert.deepEqual(resolveTracePeer('192.0.2.1', endpoints), { cidr: '192.0.2.1/32' });
  assert.deepEqual(resolveTracePeer('10.244.1.5/24', endpoints), { cidr: '10.244.1.0/24' }, 'host bits cleared, not the pod');
  assert.deepEqual(resolveTracePeer('2001:DB8::1', endpoints), { cidr: '2001:db8::1/128' });
  assert.deepEqual(resolveTracePeer('2001:db8::/32', endpoints), { cidr: '2001:db8::/32' });
});

test('trace peer: text that only looks like an address is looked up as a pod, and not found', () => {
  for (const spec of ['999.1.1.1', '10.0.0.1/33', '010.0.0.1']) {
    assert.throws(
      () => resolveTracePeer(spec, endpoints),
      (e: unknown) => EndpointError.is(e, 'ERR_ENDPOINT_NOT_FOUND') && httpStatus(e) === 404 && e.message.includes(JSON.stringify(spec)),
      spec,
    );
  }
});
