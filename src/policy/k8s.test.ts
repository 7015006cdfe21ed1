/**
 * Kubernetes NetworkPolicy → rule model, as Cilium's pkg/k8s/network_policy.go translates it.
 * @module
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { loadPolicyFileSync, ruleKey, selectorMatches, type PolicyRule } from './index.ts';

const rules = loadPolicyFileSync(join(import.meta.dirname, 'testdata', 'knp.yaml'));
const wildcard = { matchLabels: {}, matchExpressions: [] };

function byName(name: string): PolicyRule {
  const rule = rules.find((r) => r.name === name);
  assert.ok(rule, `rule ${name} not found`);
  return rule;
}

test('knp: the Kubernetes docs example (podSelector, ipBlock/except, namespaceSelector, podSelector, ports, policyTypes)', () => {
  const rule = byName('test-network-policy');
  assert.equal(rule.kind, 'NetworkPolicy');
  assert.equal(rule.namespace, 'default');
  assert.equal(ruleKey(rule), 'NetworkPolicy/default/test-network-policy');
  assert.deepEqual(rule.endpointSelector, { matchLabels: { 'k8s:role': 'db', 'k8s:io.kubernetes.pod.namespace': 'default' }, matchExpressions: [] });
  const port = [{ port: 6379, protocol: 'TCP' }];
  // one PeerRule per peer, each with the rule's ports
  assert.deepEqual(rule.ingress, [
    { cidrs: [{ cidr: '172.17.0.0/16', except: ['172.17.1.0/24'] }], ports: port },
    { endpoints: [{ matchLabels: { 'k8s:io.cilium.k8s.namespace.labels.project': 'myproject' }, matchExpressions: [] }], ports: port },
    { endpoints: [{ matchLabels: { 'k8s:role': 'frontend', 'k8s:io.kubernetes.pod.namespace': 'default' }, matchExpressions: [] }], ports: port },
  ]);
  assert.deepEqual(rule.egress, [{ cidrs: [{ cidr: '10.0.0.0/24', except: [] }], ports: [{ port: 5978, protocol: 'TCP' }] }]);
  assert.deepEqual(rule.ingressDeny, []);
  assert.deepEqual(rule.egressDeny, []);
  assert.deepEqual(rule.enableDefaultDeny, {});
  assert.deepEqual(rule.labels, {
    'k8s:io.cilium.k8s.policy.derived-from': 'NetworkPolicy',
    'k8s:io.cilium.k8s.policy.name': 'test-network-policy',
    'k8s:io.cilium.k8s.policy.namespace': 'default',
  });
  // namespaceSelector matches the namespace labels Cilium puts on endpoints
  const nsPeer = rule.ingress[1].endpoints![0];
  assert.equal(selectorMatches(nsPeer, { 'k8s:io.cilium.k8s.namespace.labels.project': 'myproject', 'k8s:io.kubernetes.pod.namespace': 'p1' }), true);
  assert.equal(selectorMatches(nsPeer, { 'k8s:project': 'myproject' }), false);
});

test('knp: policyTypes without rules → default deny ([{}]) for that direction', () => {
  const rule = byName('default-deny-ingress');
  assert.deepEqual(rule.endpointSelector, { matchLabels: { 'k8s:io.kubernetes.pod.namespace': 'team-a' }, matchExpressions: [] });
  assert.deepEqual(rule.ingress, [{}]);
  assert.deepEqual(rule.egress, []);
});

test('knp: egress [{}] (no to) → every peer; policyTypes [Egress] → no ingress rules', () => {
  const rule = byName('allow-all-egress');
  assert.deepEqual(rule.egress, [{ endpoints: [wildcard] }]);
  assert.deepEqual(rule.ingress, []);
});

test('knp: port ranges (endPort)', () => {
  const rule = byName('multi-port-egress');
  assert.deepEqual(rule.egress, [{ cidrs: [{ cidr: '10.0.0.0/24', except: [] }], ports: [{ port: 32000, endPort: 32768, protocol: 'TCP' }] }]);
});

test('knp: namespaceSelector AND podSelector; empty namespaceSelector = all namespaces; port-less entry = all ports; policyTypes absent → Ingress', () => {
  const rule = byName('ns-and-pod');
  assert.equal(rule.namespace, 'team-b');
  assert.deepEqual(rule.endpointSelector, {
    matchLabels: { 'k8s:io.kubernetes.pod.namespace': 'team-b' },
    matchExpressions: [{ key: 'k8s:app', operator: 'Exists', values: [] }],
  });
  const ports = [
    { port: 0, protocol: 'UDP' },
    { port: 8080, protocol: 'TCP' },
  ];
  assert.deepEqual(rule.ingress, [
    { endpoints: [{ matchLabels: { 'k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name': 'frontend', 'k8s:app': 'web' }, matchExpressions: [] }], ports },
    { endpoints: [{ matchLabels: {}, matchExpressions: [{ key: 'k8s:io.kubernetes.pod.namespace', operator: 'Exists', values: [] }] }], ports },
  ]);
  assert.deepEqual(rule.egress, []);
});
