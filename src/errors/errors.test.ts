import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CodedError, codedErrorFamily, errorFamily } from './index.ts';
import { BpfError, errorFromErrno } from '../ebpf/errors.ts';
import { Errno } from '../ebpf/internal/constants.ts';
import { StoreConflictError, StoreError } from '../store/errors.ts';
import { IdentityError, InvalidLabelsError } from '../identity/errors.ts';
import { IpamError, IpamExhaustedError } from '../ipam/errors.ts';
import { PolicyError, PolicyValidationError } from '../policy/errors.ts';
import { CniError, CniErrorCode } from '../cni/errors.ts';
import { NetlinkError } from '../datapath/netlink/index.ts';
import { NodeRoutingError } from '../datapath/node-routing.ts';
import { ConfigError } from '../agent/config.ts';
import { AgentApiError } from '../agent/client.ts';
import { RequestError } from '../agent/api-errors.ts';
import { EndpointError, NamespaceError, NodeError } from '../agent/errors.ts';

/** One error of every family, each with a code another family has or nearly has. */
function oneOfEach(): Record<string, unknown> {
  return {
    bpf: errorFromErrno('looking up map x', Errno.ENOENT),
    store: new StoreConflictError('put a', [{ key: 'a', expectedRevision: 1, actualRevision: 2 }]),
    identity: new InvalidLabelsError('k8s:a b', 'bad'),
    ipam: new IpamExhaustedError('10.0.0.0/30', 1, 1, 'n1'),
    policy: new PolicyValidationError([{ file: 'f', document: 1, path: '', reason: 'r' }]),
    cni: new CniError(CniErrorCode.IO_FAILURE, 'x'),
    netlink: new NetlinkError('creating veth lxc1', 17),
    'node-routing': new NodeRoutingError('node routing: x'),
    config: new ConfigError('x'),
    'agent-api': new AgentApiError(404, 'ERR_NOT_FOUND', 'no API route'),
    request: new RequestError('ERR_NOT_FOUND', 'no API route GET /v1/x'),
    endpoint: new EndpointError('ERR_ENDPOINT_NOT_FOUND', 'no endpoint 4'),
    namespace: new NamespaceError('ERR_BAD_NAMESPACE', 'namespace X: bad'),
    node: new NodeError('ERR_BAD_REQUEST', 'node delete: bad name'),
  };
}

const CHECKS: Record<string, (value: unknown) => boolean> = {
  bpf: (v) => BpfError.is(v),
  store: (v) => StoreError.is(v),
  identity: (v) => IdentityError.is(v),
  ipam: (v) => IpamError.is(v),
  policy: (v) => PolicyError.is(v),
  cni: (v) => CniError.is(v),
  netlink: (v) => NetlinkError.is(v),
  'node-routing': (v) => NodeRoutingError.is(v),
  config: (v) => ConfigError.is(v),
  'agent-api': (v) => AgentApiError.is(v),
  request: (v) => RequestError.is(v),
  endpoint: (v) => EndpointError.is(v),
  namespace: (v) => NamespaceError.is(v),
  node: (v) => NodeError.is(v),
};

test('each family recognises its own errors and no other family’s', () => {
  const errors = oneOfEach();
  assert.deepEqual(Object.keys(CHECKS).sort(), Object.keys(errors).sort(), 'a check per family');
  for (const [family, check] of Object.entries(CHECKS)) {
    for (const [other, error] of Object.entries(errors)) {
      assert.equal(check(error), family === other, `${family}.is(${other} error ${(error as Error).name})`);
    }
    assert.equal(errorFamily(errors[family]), family);
    assert.ok(CodedError.is(errors[family]), `${family}: a coded error`);
  }
});

test('a like code is no family membership: the old prefix checks are gone', () => {
  const apiNotFound = new RequestError('ERR_NOT_FOUND', 'no API route GET /v1/x');
  assert.equal(BpfError.is(apiNotFound, 'ERR_NOT_FOUND'), false, 'the API’s 404 is no BpfError');
  assert.equal(BpfError.is(new AgentApiError(404, 'ERR_NOT_FOUND', 'x')), false);
  assert.equal(StoreError.is(new IpamError('ERR_IPAM_CONFLICT', 'ipam: x')), false);
  // Plain errors that merely carry a family's code.
  const lookalike = Object.assign(new Error('store: put a: conflict'), { code: 'ERR_STORE_CONFLICT' });
  assert.equal(StoreError.is(lookalike), false);
  assert.equal(StoreError.is(lookalike, 'ERR_STORE_CONFLICT'), false);
  assert.equal(CodedError.is(lookalike), false);
  assert.equal(BpfError.is(Object.assign(new Error('x'), { code: 'ERR_NOT_FOUND' })), false);
  for (const value of [undefined, null, 'ERR_STORE_CONFLICT', 42, { code: 'ERR_STORE_CONFLICT' }]) {
    assert.equal(StoreError.is(value), false, String(value));
    assert.equal(CodedError.is(value), false, String(value));
  }
});

test('is(value, code) matches the code exactly, subclasses included', () => {
  const conflict = new StoreConflictError('put a', [{ key: 'a', expectedRevision: 1, actualRevision: 0 }]);
  assert.ok(StoreError.is(conflict, 'ERR_STORE_CONFLICT'));
  assert.equal(StoreError.is(conflict, 'ERR_STORE_LOCKED'), false);
  assert.ok(BpfError.is(errorFromErrno('x', Errno.ENOENT), 'ERR_NOT_FOUND'));
  assert.equal(BpfError.is(errorFromErrno('x', Errno.ENOENT), 'ERR_KEY_NOT_EXIST'), false);
  assert.ok(PolicyValidationError.is(new PolicyValidationError([])));
  assert.equal(PolicyValidationError.is(new PolicyError('ERR_POLICY_NOT_FOUND', 'no policy x')), false);
  assert.ok(CodedError.is(conflict, 'ERR_STORE_CONFLICT'));
  assert.equal(CodedError.is(conflict, 'ERR_IPAM_CONFLICT'), false);
});

test('name is the concrete class, and cause and details are kept', () => {
  const cause = new Error('root');
  const error = new EndpointError('ERR_BAD_LABELS', 'endpoint labels: bad', { cause, details: { label: 'a b' } });
  assert.equal(error.name, 'EndpointError');
  assert.equal(error.cause, cause);
  assert.deepEqual(error.details, { label: 'a b' });
  assert.equal(new StoreConflictError('put a', []).name, 'StoreConflictError');
  assert.equal(new InvalidLabelsError('a', 'b').name, 'InvalidLabelsError');
  assert.equal(new CniError(CniErrorCode.IO_FAILURE, 'x').name, 'CniError');
  assert.equal(new StoreError('ERR_STORE_IO', 'x').cause, undefined);
  assert.equal(Object.keys(error).includes('cause'), false, 'cause stays the standard non-enumerable property');
});

test('families are recognised across two copies of their modules', async () => {
  // A second instance of each module (another URL), as a bundle next to the agent's copy would be.
  const store = (await import(`../store/errors.ts?copy=${Date.now()}`)) as typeof import('../store/errors.ts');
  const ebpf = (await import(`../ebpf/errors.ts?copy=${Date.now()}`)) as typeof import('../ebpf/errors.ts');
  const base = (await import(`./index.ts?copy=${Date.now()}`)) as typeof import('./index.ts');
  assert.notEqual(store.StoreError, StoreError, 'really a second copy');
  assert.notEqual(base.CodedError, CodedError, 'really a second copy');

  const copied = new store.StoreError('ERR_STORE_LOCKED', 'store: locked');
  assert.equal(copied instanceof StoreError, false, 'instanceof cannot tell');
  assert.ok(StoreError.is(copied, 'ERR_STORE_LOCKED'));
  assert.ok(store.StoreError.is(new StoreError('ERR_STORE_LOCKED', 'x')));
  assert.equal(IpamError.is(copied), false);
  assert.ok(BpfError.is(new ebpf.BpfError('ERR_NOT_FOUND', 'x'), 'ERR_NOT_FOUND'));
  assert.equal(ebpf.BpfError.is(new RequestError('ERR_NOT_FOUND', 'x')), false);

  // A family built on another copy of the base is the same family.
  class OtherStoreError extends base.codedErrorFamily<'ERR_STORE_IO'>('store') {}
  assert.ok(StoreError.is(new OtherStoreError('ERR_STORE_IO', 'x'), 'ERR_STORE_IO'));
  assert.ok(CodedError.is(new OtherStoreError('ERR_STORE_IO', 'x')));
  assert.ok(base.CodedError.is(new IpamError('ERR_IPAM_IN_USE', 'x')));
});

test('the family mark is on the prototype only: instances stay plain to serialise', () => {
  class ProbeError extends codedErrorFamily<'ERR_PROBE'>('probe') {}
  const error = new ProbeError('ERR_PROBE', 'x');
  assert.equal(errorFamily(error), 'probe');
  assert.deepEqual(Object.getOwnPropertySymbols(error), []);
  assert.deepEqual(JSON.parse(JSON.stringify(error)), { name: 'ProbeError', code: 'ERR_PROBE' });
});
