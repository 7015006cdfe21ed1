/**
 * Tests of the fixed part of the identity space: reserved numbers and labels, names, scopes,
 * cluster ranges, label sets that map to reserved identities, and well-known identities.
 * @module
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { IdentityError, InvalidLabelsError } from './errors.ts';
import { Labels } from './labels.ts';
import {
  LOCAL_IDENTITY_FLAG,
  RESERVED_IDENTITY,
  clusterIdentityRange,
  identityName,
  identityScope,
  isReservedIdentity,
  reservedIdentities,
  reservedIdentity,
  reservedIdentityForLabels,
  wellKnownIdentities,
} from './reserved.ts';

test('reserved: numbers, names and labels match Cilium', () => {
  const table = reservedIdentities().map((r) => [r.id, r.name, r.labels.canonical]);
  assert.deepEqual(table, [
    [1, 'host', 'reserved:host'],
    [2, 'world', 'reserved:world'],
    [3, 'unmanaged', 'reserved:unmanaged'],
    [4, 'health', 'reserved:health'],
    [5, 'init', 'reserved:init'],
    [6, 'remote-node', 'reserved:remote-node'],
    [7, 'kube-apiserver', 'reserved:kube-apiserver;reserved:remote-node'],
    [8, 'ingress', 'reserved:ingress'],
    [9, 'world-ipv4', 'reserved:world-ipv4'],
    [10, 'world-ipv6', 'reserved:world-ipv6'],
    [11, 'encrypted-overlay', 'reserved:encrypted-overlay'],
  ]);
  assert.equal(RESERVED_IDENTITY.host, 1);
  assert.equal(reservedIdentity(4)?.name, 'health');
  assert.equal(reservedIdentity(12), undefined);
  assert.equal(identityName(0), 'unknown');
  assert.equal(identityName(1), 'host');
  assert.equal(identityName(2), 'world');
  assert.equal(identityName(102), 'ID:102');
  assert.equal(identityName(48213), 'ID:48213');
  assert.equal(identityName(LOCAL_IDENTITY_FLAG | 5), 'ID:16777221');
});

test('reserved: scopes and cluster ranges', () => {
  assert.equal(identityScope(0), 'unknown');
  assert.equal(identityScope(2), 'reserved');
  assert.equal(identityScope(104), 'well-known');
  assert.equal(identityScope(200), 'user-reserved');
  assert.equal(identityScope(256), 'cluster');
  assert.equal(identityScope(65535), 'cluster');
  assert.equal(identityScope((1 << 24) | 1), 'local');
  assert.equal(identityScope((2 << 24) | 1), 'remote-node');
  assert.equal(identityScope(-1), 'invalid');
  assert.equal(identityScope(1.5), 'invalid');
  assert.ok(isReservedIdentity(1) && isReservedIdentity(255) && !isReservedIdentity(256) && !isReservedIdentity(0));
  assert.deepEqual(clusterIdentityRange(0), { min: 256, max: 65535 });
  assert.deepEqual(clusterIdentityRange(1), { min: 65536, max: 131071 });
  assert.deepEqual(clusterIdentityRange(255), { min: 255 << 16, max: (256 << 16) - 1 });
  assert.throws(() => clusterIdentityRange(256), (e: unknown) => IdentityError.is(e, 'ERR_IDENTITY_INVALID_ARGUMENT') && /cluster id 256/.test(e.message));
});

test('reserved: label sets that map to reserved identities, and mixtures that are refused', () => {
  const of = (...labels: string[]): number | undefined => reservedIdentityForLabels(Labels.parse(labels));
  assert.equal(of('reserved:host'), 1);
  assert.equal(of('reserved:host', 'k8s:node-role.kubernetes.io/control-plane='), 1, 'host carries node labels');
  assert.equal(of('reserved:world'), 2);
  assert.equal(of('reserved:health'), 4);
  assert.equal(of('reserved:remote-node'), 6);
  assert.equal(of('reserved:kube-apiserver', 'reserved:remote-node'), 7);
  assert.equal(of('reserved:kube-apiserver'), 7);
  assert.equal(of('reserved:world-ipv6'), 10);
  assert.equal(of('app=web'), undefined);
  assert.equal(of('cidr:10.0.0.0/8', 'reserved:world'), undefined, 'a CIDR identity, not world');
  assert.throws(
    () => of('reserved:health', 'app=web'),
    (e: unknown) => e instanceof InvalidLabelsError && e.label === 'reserved:health' && /cannot be combined with "k8s:app=web"/.test(e.reason),
  );
  assert.throws(() => of('cidr:10.0.0.0/8', 'reserved:health'), (e: unknown) => e instanceof InvalidLabelsError && /other than world cannot be combined with cidr/.test(e.reason));
});

test('reserved: well-known identities 100–115 with cluster and namespace', () => {
  const all = wellKnownIdentities();
  assert.deepEqual(
    all.map((w) => w.id).sort((a, b) => a - b),
    Array.from({ length: 16 }, (_, i) => 100 + i),
  );
  const kubeDns = all.find((w) => w.id === 102)!;
  assert.equal(kubeDns.name, 'kube-dns');
  assert.deepEqual(kubeDns.labels.toStrings(), [
    'k8s:io.cilium.k8s.policy.cluster=default',
    'k8s:io.cilium.k8s.policy.serviceaccount=kube-dns',
    'k8s:io.kubernetes.pod.namespace=kube-system',
    'k8s:k8s-app=kube-dns',
  ]);
  assert.equal(all.find((w) => w.id === 104)?.name, 'coredns');
  assert.equal(all.find((w) => w.id === 105)?.name, 'cilium-operator');
  assert.ok(all.find((w) => w.id === 110)!.labels.has('io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name'));
  const custom = wellKnownIdentities({ clusterName: 'c2', ciliumNamespace: 'cilium' });
  assert.equal(custom.find((w) => w.id === 105)!.labels.namespace, 'cilium');
  assert.equal(custom.find((w) => w.id === 105)!.labels.get('io.cilium.k8s.policy.cluster')?.value, 'c2');
});
