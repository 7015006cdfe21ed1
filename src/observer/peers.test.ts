import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ObserverError } from './errors.ts';
import { bindAddress, peerNameOfKey, peerStoreKey, publishedAddress } from './peers.ts';

test('a wildcard listener is bound on every address and published at the node IP; a named host is published as given', () => {
  assert.equal(bindAddress(':4244'), '0.0.0.0:4244');
  assert.equal(bindAddress('localhost:4244'), 'localhost:4244');
  assert.equal(publishedAddress(':4244', '192.168.100.1'), '192.168.100.1:4244');
  assert.equal(publishedAddress('0.0.0.0:4244', '10.0.0.7'), '10.0.0.7:4244');
  assert.equal(publishedAddress('[::]:4244', '10.0.0.7'), '10.0.0.7:4244');
  assert.equal(publishedAddress('192.168.100.9:4244', '192.168.100.1'), '192.168.100.9:4244');
  assert.equal(publishedAddress('[fd00::1]:4244', '192.168.100.1'), '[fd00::1]:4244');
  assert.equal(peerNameOfKey(peerStoreKey('n1')), 'n1');
  assert.throws(() => bindAddress('4244'), (error: unknown) => ObserverError.is(error) && /listen address "4244": .*no port/.test((error as Error).message));
});
