import { test } from 'node:test';
import assert from 'node:assert/strict';
import { z } from 'zod';
import { errorBody, httpStatus, parseRequest, RequestError, type HttpStatus } from './api-errors.ts';
import { EndpointError, NamespaceError, NodeError } from './errors.ts';
import { ConfigError } from './config.ts';
import { AgentApiError } from './client.ts';
import { BpfError, errorFromErrno } from '../ebpf/errors.ts';
import { Errno } from '../ebpf/internal/constants.ts';
import { IdentityError } from '../identity/errors.ts';
import { IpamError, IpamExhaustedError } from '../ipam/errors.ts';
import { PolicyError, PolicyValidationError } from '../policy/errors.ts';
import { StoreError, StoreLockedError } from '../store/errors.ts';
import { NetlinkError } from '../datapath/netlink/index.ts';
import { NodeRoutingError } from '../datapath/node-routing.ts';

/**
 * The statuses clients see, family by family, written out independently of the table. The
 * first four families' statuses predate the table (the CLI, the CNI plugin and tests rely on
 * them); the others follow its rule.
 */
const EXPECTED: [string, Error, HttpStatus][] = [
  ['request: bad request', new RequestError('ERR_BAD_REQUEST', 'x'), 400],
  ['request: bad JSON', new RequestError('ERR_BAD_JSON', 'x'), 400],
  ['request: too large', new RequestError('ERR_TOO_LARGE', 'x'), 413],
  ['request: no route', new RequestError('ERR_NOT_FOUND', 'x'), 404],
  ['endpoint: exists', new EndpointError('ERR_ENDPOINT_EXISTS', 'x'), 409],
  ['endpoint: not found', new EndpointError('ERR_ENDPOINT_NOT_FOUND', 'x'), 404],
  ['endpoint: bad netns', new EndpointError('ERR_BAD_NETNS', 'x'), 400],
  ['endpoint: bad labels', new EndpointError('ERR_BAD_LABELS', 'x'), 400],
  ['endpoint: exhausted', new EndpointError('ERR_ENDPOINTS_EXHAUSTED', 'x'), 507],
  ['endpoint: datapath', new EndpointError('ERR_DATAPATH', 'x'), 500],
  ['namespace: bad', new NamespaceError('ERR_BAD_NAMESPACE', 'x'), 400],
  ['node: not found', new NodeError('ERR_NODE_NOT_FOUND', 'x'), 404],
  ['node: self', new NodeError('ERR_NODE_IS_SELF', 'x'), 409],
  ['node: conflict', new NodeError('ERR_NODE_CONFLICT', 'x'), 409],
  ['node: bad name', new NodeError('ERR_BAD_REQUEST', 'x'), 400],
  ['policy: invalid', new PolicyValidationError([]), 400],
  ['policy: not found', new PolicyError('ERR_POLICY_NOT_FOUND', 'x'), 404],
  ['policy: wait timed out', new PolicyError('ERR_TIMEOUT', 'x'), 504],
  ['identity: invalid labels', new IdentityError('ERR_IDENTITY_INVALID_LABELS', 'x'), 400],
  ['identity: invalid CIDR', new IdentityError('ERR_IDENTITY_INVALID_CIDR', 'x'), 400],
  ['identity: invalid argument', new IdentityError('ERR_IDENTITY_INVALID_ARGUMENT', 'x'), 400],
  ['identity: exhausted', new IdentityError('ERR_IDENTITY_EXHAUSTED', 'x'), 507],
  ['identity: not referenced', new IdentityError('ERR_IDENTITY_NOT_REFERENCED', 'x'), 409],
  ['identity: conflict', new IdentityError('ERR_IDENTITY_CONFLICT', 'x'), 409],
  ['identity: not found', new IdentityError('ERR_IDENTITY_NOT_FOUND', 'x'), 404],
  ['ipam: exhausted', new IpamExhaustedError('10.0.0.0/30', 1, 1, 'n1'), 507],
  ['ipam: duplicate owner', new IpamError('ERR_IPAM_DUPLICATE_OWNER', 'x'), 409],
  ['ipam: address in use', new IpamError('ERR_IPAM_ADDRESS_IN_USE', 'x'), 409],
  ['ipam: reserved', new IpamError('ERR_IPAM_RESERVED', 'x'), 400],
  ['ipam: out of range', new IpamError('ERR_IPAM_OUT_OF_RANGE', 'x'), 400],
  ['ipam: invalid CIDR', new IpamError('ERR_IPAM_INVALID_CIDR', 'x'), 400],
  ['ipam: invalid config', new IpamError('ERR_IPAM_INVALID_CONFIG', 'x'), 500],
  ['ipam: invalid argument', new IpamError('ERR_IPAM_INVALID_ARGUMENT', 'x'), 400],
  ['ipam: conflict', new IpamError('ERR_IPAM_CONFLICT', 'x'), 409],
  ['ipam: CIDR in use', new IpamError('ERR_IPAM_IN_USE', 'x'), 409],
  ['store: conflict', new StoreError('ERR_STORE_CONFLICT', 'x'), 409],
  ['store: locked', new StoreLockedError('/var/lib/ciliate', 1), 503],
  ['store: compacted', new StoreError('ERR_STORE_COMPACTED', 'x'), 500],
  ['store: corrupt', new StoreError('ERR_STORE_CORRUPT', 'x'), 500],
  ['store: closed', new StoreError('ERR_STORE_CLOSED', 'x'), 503],
  ['store: invalid argument', new StoreError('ERR_STORE_INVALID_ARGUMENT', 'x'), 400],
  ['store: io', new StoreError('ERR_STORE_IO', 'x'), 500],
  ['store: unavailable', new StoreError('ERR_STORE_UNAVAILABLE', 'x'), 503],
  ['config', new ConfigError('x'), 500],
  ['netlink', new NetlinkError('creating veth lxc1', 17), 500],
  ['node routing', new NodeRoutingError('x'), 500],
];

test('the table answers each family’s codes with their status', () => {
  for (const [what, error, status] of EXPECTED) assert.equal(httpStatus(error), status, what);
});

test('a code shared by two families answers with each family’s own status', () => {
  // ERR_NOT_FOUND: the API's "no route" is a 404, the kernel's ENOENT is the agent's fault.
  assert.equal(httpStatus(new RequestError('ERR_NOT_FOUND', 'no API route GET /v1/x')), 404);
  assert.equal(httpStatus(errorFromErrno('opening pinned map ct4', Errno.ENOENT)), 500);
  // A client-side error the agent relays is not re-mapped from its code.
  assert.equal(httpStatus(new AgentApiError(404, 'ERR_ENDPOINT_NOT_FOUND', 'x')), 500);
});

test('anything the table does not know is a 500', () => {
  for (const error of [new Error('boom'), new TypeError('x'), Object.assign(new Error('x'), { code: 'ERR_ENDPOINT_NOT_FOUND' }), 'thrown string', undefined]) {
    assert.equal(httpStatus(error), 500, String(error));
  }
  assert.equal(httpStatus(new BpfError('ERR_KEY_EXIST', 'x')), 500);
});

test('the error body keeps the code, message and details clients read', () => {
  const invalid = new PolicyValidationError([{ file: 'f.yaml', document: 2, path: 'spec', reason: 'unknown field' }]);
  assert.deepEqual(errorBody(invalid), {
    error: { code: 'ERR_POLICY_INVALID', message: 'f.yaml: document 2: spec: unknown field', details: { issues: invalid.issues } },
  });
  assert.deepEqual(errorBody(new EndpointError('ERR_ENDPOINT_NOT_FOUND', 'no endpoint 4')), { error: { code: 'ERR_ENDPOINT_NOT_FOUND', message: 'no endpoint 4' } });
  assert.deepEqual(errorBody(errorFromErrno('updating map x', Errno.E2BIG)), { error: { code: 'ERR_MAP_FULL', message: 'updating map x: map is full (E2BIG)' } });
  assert.deepEqual(errorBody(new Error('boom')), { error: { code: 'ERR_INTERNAL', message: 'boom' } });
  assert.deepEqual(errorBody('boom'), { error: { code: 'ERR_INTERNAL', message: 'boom' } });
});

test('parseRequest returns the parsed value, or a 400 that names what was asked and the field path', () => {
  const Body = z.object({ name: z.string(), ports: z.array(z.object({ port: z.number().int() })) }).strict();
  assert.deepEqual(parseRequest(Body, { name: 'a', ports: [{ port: 80 }] }, 'thing'), { name: 'a', ports: [{ port: 80 }] });
  const reject = (value: unknown, message: RegExp) =>
    assert.throws(
      () => parseRequest(Body, value, 'thing request'),
      (error: unknown) => RequestError.is(error, 'ERR_BAD_REQUEST') && httpStatus(error) === 400 && message.test(error.message) && error.cause instanceof z.ZodError,
      message.source,
    );
  reject({ name: 'a', ports: [{ port: 'eighty' }] }, /^thing request: field ports\.0\.port: /);
  reject({ ports: [] }, /^thing request: field name: /);
  reject(undefined, /^thing request: field \(body\): /);
  reject({ name: 'a', ports: [], extra: 1 }, /^thing request: field \(body\): .*extra/);
});
