/**
 * Destinations by identity and service: the values users write (refused whole, by field and
 * reason, when bad) and the sets they become, from the identities and services an agent knows.
 * The kernel side runs in test/runtime-netpolicy.test.ts against a real agent.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RuntimeError } from './errors.ts';
import { destinationEntries, parseIdentityValue, parseServiceValue, seAddrKey, seIdentityKey, type DestinationFrontend, type SocketDestinations } from './socket-destinations.ts';
import { compileSocketPolicy } from './socket-policy.ts';
import type { PolicyProblem } from './tracing-policy.ts';

function identity(value: unknown): ReturnType<typeof parseIdentityValue> | string {
  const problems: PolicyProblem[] = [];
  const out = parseIdentityValue(value, 'v', problems);
  return problems.length > 0 ? problems.map((p) => p.reason).join('; ') : out;
}

test('DIdentity values: label selectors (ANDed, any source without one), entities, reserved identities by name or number', () => {
  assert.deepEqual(identity('k8s:app=db'), { kind: 'labels', text: 'k8s:app=db', selector: { matchLabels: { 'k8s:app': 'db' }, matchExpressions: [] } });
  assert.deepEqual(identity('app=db, k8s:io.kubernetes.pod.namespace=prod'), {
    kind: 'labels',
    text: 'app=db, k8s:io.kubernetes.pod.namespace=prod',
    selector: { matchLabels: { 'any:app': 'db', 'k8s:io.kubernetes.pod.namespace': 'prod' }, matchExpressions: [] },
  });
  assert.deepEqual(identity('reserved:host'), { kind: 'labels', text: 'reserved:host', selector: { matchLabels: { 'reserved:host': '' }, matchExpressions: [] } });
  assert.deepEqual(identity('world'), { kind: 'entity', text: 'world', entity: 'world' });
  assert.deepEqual(identity('remote-node'), { kind: 'entity', text: 'remote-node', entity: 'remote-node' });
  assert.deepEqual(identity('1'), { kind: 'id', text: '1', id: 1 });
});

test('bad DIdentity and DService values are refused with the reason', () => {
  assert.match(String(identity('')), /empty selector/);
  assert.match(String(identity('  ')), /empty selector/);
  assert.match(String(identity('k8s:app')), /want source:key=value/);
  assert.match(String(identity('pod:app=db')), /unknown source "pod"/);
  assert.match(String(identity('k8s:app=db,')), /empty label/);
  assert.match(String(identity('k8s:a p=db')), /malformed key/);
  assert.match(String(identity('k8s:app=d b')), /malformed value/);
  assert.match(String(identity('k8s:app=db,k8s:app=web')), /given twice/);
  assert.match(String(identity('reserved:nobody')), /unknown reserved identity/);
  assert.match(String(identity('12345')), /only reserved identities \(1 to 11\) by number/);
  assert.match(String(identity({ app: 'db' })), /want a label selector/);
  const service = (value: unknown) => {
    const problems: PolicyProblem[] = [];
    return parseServiceValue(value, 'v', problems) ?? problems[0].reason;
  };
  assert.equal(service('default/db'), 'default/db');
  for (const bad of ['db', 'Default/db', 'default/db/x', 'default/', '/db', 'default/-db', 7]) assert.match(service(bad), /want a service as namespace\/name/, String(bad));
});

const policy = (operator: string, values: unknown[], call = 'sys_connect') => `apiVersion: cilium.io/v1alpha1
kind: TracingPolicy
metadata: {name: dest}
spec:
  kprobes:
  - call: ${call}
    args: [{index: 1, type: sockaddr}]
    selectors:
    - matchArgs: [{index: 1, operator: ${operator}, values: ${JSON.stringify(values)}}]
      matchActions: [{action: Override, argError: -1}]
`;

function problems(text: string, destinations: boolean): Record<string, string> {
  try {
    compileSocketPolicy(text, 0, { destinations });
  } catch (error) {
    assert.ok(RuntimeError.is(error, 'ERR_RUNTIME_POLICY'), String(error));
    return Object.fromEntries((error.details as PolicyProblem[]).map((p) => [p.field, p.reason]));
  }
  return {};
}

test('a policy with a bad destination is refused whole, naming each value; without the full agent the operator is', () => {
  const at = 'spec.kprobes[0].selectors[0].matchArgs[0]';
  assert.deepEqual(Object.keys(problems(policy('DIdentity', ['k8s:app=db', '', 'k8s:app']), true)), [`${at}.values[1]`, `${at}.values[2]`]);
  assert.deepEqual(Object.keys(problems(policy('NotDService', ['default/db', 'db']), true)), [`${at}.values[1]`]);
  assert.match(problems(policy('DIdentity', ['k8s:app=db']), false)[`${at}.operator`], /full agent.*--runtime-only/);
  assert.match(problems(policy('DService', ['default/db']), false)[`${at}.operator`], /needs the services of the full agent/);
  assert.match(problems(policy('DIdentity', ['k8s:app=db'], 'sys_bind'), true)[`${at}.operator`], /bind's sockaddr is the local address/);
  const ok = compileSocketPolicy(policy('NotDIdentity', ['k8s:app=db', 'world']), 0, { destinations: true });
  assert.equal(ok?.rules[0].selectors[0].args[0].identities?.length, 2);
  // Only the socket hooks know a destination's identity: a policy that merely posts goes there too.
  const post = compileSocketPolicy(policy('DIdentity', ['k8s:app=db']).replace('Override, argError: -1', 'Post'), 0, { destinations: true });
  assert.equal(post?.rules[0].selectors[0].action, 'POST');
});

/** What an agent knows, as plain data: identities, the ipcache's answers and services. */
function source(frontends: DestinationFrontend[]): SocketDestinations {
  const identities: { id: number; labels: Record<string, string> }[] = [
    { id: 1, labels: { 'reserved:host': '' } },
    { id: 2, labels: { 'reserved:world': '' } },
    { id: 300, labels: { 'k8s:app': 'db', 'k8s:io.kubernetes.pod.namespace': 'default' } },
    { id: 301, labels: { 'k8s:app': 'db', 'k8s:io.kubernetes.pod.namespace': 'other' } },
    { id: 302, labels: { 'k8s:app': 'web', 'k8s:io.kubernetes.pod.namespace': 'default' } },
  ];
  const ips: Record<string, number> = { '10.244.0.10': 300, '10.244.0.11': 301, '10.244.0.20': 302 };
  return { ipcachePinDir: '', identities: () => identities, hasService: () => true, frontends: () => frontends, identityOf: (ip) => ips[ip] ?? 2, subscribe: () => () => undefined };
}

const backend = (ip: string) => ({ ip, port: 8080, protocol: 'TCP' });

test('identity sets hold the selected identities; a frontend is in a DIdentity set when any backend is, in a NotDIdentity set when every one is', () => {
  const frontends: DestinationFrontend[] = [
    { service: 'default/db', vip: '10.96.0.1', port: 80, protocol: 'TCP', backends: [backend('10.244.0.10'), backend('10.244.0.11')] },
    { service: 'default/mixed', vip: '10.96.0.2', port: 80, protocol: 'TCP', backends: [backend('10.244.0.10'), backend('10.244.0.20')] },
    { service: 'default/empty', vip: '10.96.0.3', port: 80, protocol: 'TCP', backends: [] },
    { service: 'default/db', vip: '0.0.0.0', port: 30080, protocol: 'TCP', backends: [backend('10.244.0.10')] },
  ];
  const selector = parseIdentityValue('k8s:app=db', 'v', []);
  const out = destinationEntries(
    [
      { set: 1, negated: false, identities: [selector!] },
      { set: 2, negated: true, identities: [selector!] },
    ],
    source(frontends),
  );
  const ids = [...out.identities.values()].map((k) => seIdentityKey.decode(k, 0)).map((k) => `${k.set}:${k.identity}`).sort();
  assert.deepEqual(ids, ['1:300', '1:301', '2:300', '2:301']);
  const addrs = Object.fromEntries([...out.addrs.values()].map(({ key, value }) => {
    const k = seAddrKey.decode(key, 0);
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(k.hi);
    return [`${k.set} ${[...b.subarray(4)].join('.')}:${k.port}/${k.protocol}`, value];
  }));
  assert.deepEqual(addrs, {
    '1 10.96.0.1:80/6': 1,
    '1 10.96.0.2:80/6': 1,
    '1 10.96.0.3:80/6': 0,
    '2 10.96.0.1:80/6': 1,
    '2 10.96.0.2:80/6': 0,
    '2 10.96.0.3:80/6': 0,
  });
});

test('service sets hold every frontend (not the NodePort wildcard) and every backend of the named services', () => {
  const frontends: DestinationFrontend[] = [
    { service: 'default/db', vip: '10.96.0.1', port: 80, protocol: 'TCP', backends: [backend('10.244.0.10')] },
    { service: 'default/db', vip: '192.0.2.1', port: 30080, protocol: 'TCP', backends: [backend('10.244.0.10')] },
    { service: 'default/db', vip: '0.0.0.0', port: 30080, protocol: 'TCP', backends: [backend('10.244.0.10')] },
    { service: 'default/web', vip: '10.96.0.2', port: 53, protocol: 'UDP', backends: [backend('10.244.0.20')] },
  ];
  const out = destinationEntries([{ set: 7, negated: false, services: ['default/db'] }], source(frontends));
  assert.equal(out.identities.size, 0);
  const keys = [...out.addrs.values()].map(({ key }) => seAddrKey.decode(key, 0)).map((k) => `${k.port}/${k.protocol}`).sort();
  assert.deepEqual(keys, ['30080/6', '80/6', '8080/6'], 'the ClusterIP, the node address, the backend (once)');
});
