/**
 * CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy translation, from docs.cilium.io examples
 * in testdata/, asserted field by field.
 * @module
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { loadPolicyFile, loadPolicyFileSync, parsePolicyObjects, parsePolicyYaml, policyKey, ruleKey, selectorMatches, type PolicyRule } from './index.ts';

const dir = join(import.meta.dirname, 'testdata');
const file = (name: string) => join(dir, name);
const wildcard = { matchLabels: {}, matchExpressions: [] };

function byName(rules: PolicyRule[], name: string, specIndex?: number): PolicyRule {
  const rule = rules.find((r) => r.name === name && r.specIndex === specIndex);
  assert.ok(rule, `rule ${name} not found`);
  return rule;
}

test('cilium: Star Wars rule1 (L3/L4): endpointSelector org=empire,class=deathstar; ingress from org=empire on 80/TCP', async () => {
  const rules = await loadPolicyFile(file('sw-l3-l4-policy.yaml'));
  assert.equal(rules.length, 1);
  const [rule] = rules;
  assert.equal(rule.name, 'rule1');
  assert.equal(rule.namespace, 'default');
  assert.equal(rule.kind, 'CiliumNetworkPolicy');
  assert.equal(rule.sourceFile, file('sw-l3-l4-policy.yaml'));
  assert.equal(rule.specIndex, undefined);
  assert.equal(rule.description, 'L3-L4 policy to restrict deathstar access to empire ships only');
  assert.deepEqual(rule.endpointSelector, {
    matchLabels: { 'any:org': 'empire', 'any:class': 'deathstar', 'k8s:io.kubernetes.pod.namespace': 'default' },
    matchExpressions: [],
  });
  assert.deepEqual(rule.ingress, [
    {
      endpoints: [{ matchLabels: { 'any:org': 'empire', 'k8s:io.kubernetes.pod.namespace': 'default' }, matchExpressions: [] }],
      ports: [{ port: 80, protocol: 'TCP' }],
    },
  ]);
  assert.deepEqual(rule.egress, []);
  assert.deepEqual(rule.ingressDeny, []);
  assert.deepEqual(rule.egressDeny, []);
  assert.deepEqual(rule.enableDefaultDeny, {});
  assert.deepEqual(rule.labels, {
    'k8s:io.cilium.k8s.policy.derived-from': 'CiliumNetworkPolicy',
    'k8s:io.cilium.k8s.policy.name': 'rule1',
    'k8s:io.cilium.k8s.policy.namespace': 'default',
  });
  assert.equal(ruleKey(rule), 'CiliumNetworkPolicy/default/rule1');

  // Who it selects, with the labels Cilium gives the demo pods.
  const deathstar = { 'k8s:org': 'empire', 'k8s:class': 'deathstar', 'k8s:io.kubernetes.pod.namespace': 'default' };
  const tiefighter = { 'k8s:org': 'empire', 'k8s:class': 'tiefighter', 'k8s:io.kubernetes.pod.namespace': 'default' };
  const xwing = { 'k8s:org': 'alliance', 'k8s:class': 'xwing', 'k8s:io.kubernetes.pod.namespace': 'default' };
  assert.equal(selectorMatches(rule.endpointSelector, deathstar), true);
  assert.equal(selectorMatches(rule.endpointSelector, tiefighter), false);
  const peer = rule.ingress[0].endpoints![0];
  assert.equal(selectorMatches(peer, tiefighter), true);
  assert.equal(selectorMatches(peer, xwing), false);
  assert.equal(selectorMatches(peer, { ...tiefighter, 'k8s:io.kubernetes.pod.namespace': 'other' }), false, 'peer is scoped to the policy namespace');
});

test('cilium: L3 fromEndpoints in an explicit namespace', () => {
  const rule = byName(loadPolicyFileSync(file('cilium-docs.yaml')), 'l3-rule');
  assert.equal(rule.namespace, 'prod');
  assert.deepEqual(rule.endpointSelector.matchLabels, { 'any:role': 'backend', 'k8s:io.kubernetes.pod.namespace': 'prod' });
  assert.deepEqual(rule.ingress, [{ endpoints: [{ matchLabels: { 'any:role': 'frontend', 'k8s:io.kubernetes.pod.namespace': 'prod' }, matchExpressions: [] }] }]);
  assert.deepEqual(rule.egress, []);
});

test('cilium: L4-only rule applies to every peer; port as number or string; endPort; protocol defaults to ANY', () => {
  const rule = byName(loadPolicyFileSync(file('cilium-docs.yaml')), 'l4-rule');
  assert.deepEqual(rule.egress, [
    {
      endpoints: [wildcard],
      portsOnly: true,
      ports: [
        { port: 80, protocol: 'TCP' },
        { port: 8000, endPort: 8100, protocol: 'ANY' },
      ],
    },
  ]);
  assert.deepEqual(rule.ingress, []);
});

test('cilium: fromEntities / toEntities', () => {
  const rule = byName(loadPolicyFileSync(file('cilium-docs.yaml')), 'from-world-to-role-public');
  assert.deepEqual(rule.ingress, [{ entities: ['world', 'remote-node'] }]);
  assert.deepEqual(rule.egress, [{ entities: ['kube-apiserver', 'host'] }]);
});

test('cilium: toCIDR (bare address → /32) and toCIDRSet with except, IPv6 accepted', () => {
  const rule = byName(loadPolicyFileSync(file('cilium-docs.yaml')), 'cidr-rule');
  assert.deepEqual(rule.egress, [
    {
      cidrs: [
        { cidr: '20.1.1.1/32', except: [] },
        { cidr: '192.0.2.7/32', except: [] },
      ],
    },
    {
      cidrs: [
        { cidr: '10.0.0.0/8', except: ['10.96.0.0/12'] },
        { cidr: '2001:db8::/32', except: [] },
      ],
    },
  ]);
});

test('cilium: deny rules (external-lockdown) and an L4-only egress deny', () => {
  const rule = byName(loadPolicyFileSync(file('cilium-docs.yaml')), 'external-lockdown');
  assert.deepEqual(rule.endpointSelector, { matchLabels: { 'k8s:io.kubernetes.pod.namespace': 'default' }, matchExpressions: [] });
  assert.deepEqual(rule.ingressDeny, [{ entities: ['world'] }]);
  assert.deepEqual(rule.ingress, [{ entities: ['all'] }]);
  assert.deepEqual(rule.egressDeny, [{ endpoints: [wildcard], portsOnly: true, ports: [{ port: 22, protocol: 'TCP' }] }]);
  assert.deepEqual(rule.egress, []);
});

test('cilium: matchExpressions, namespace scoping exceptions, icmps, enableDefaultDeny, labels, deny-all {}', () => {
  const rule = byName(loadPolicyFileSync(file('cilium-docs.yaml')), 'mixed');
  assert.equal(rule.namespace, 'shop');
  assert.deepEqual(rule.endpointSelector, {
    matchLabels: { 'k8s:io.kubernetes.pod.namespace': 'shop' },
    matchExpressions: [
      { key: 'any:app', operator: 'In', values: ['web', 'api'] },
      { key: 'k8s:tier', operator: 'NotIn', values: ['debug'] },
    ],
  });
  assert.deepEqual(rule.enableDefaultDeny, { egress: false });
  assert.equal(rule.ingress.length, 3);
  assert.deepEqual(rule.ingress[0], {
    endpoints: [
      // names a namespace: left alone
      { matchLabels: { 'k8s:io.kubernetes.pod.namespace': 'monitoring', 'any:app': 'prometheus' }, matchExpressions: [] },
      // selects namespace labels: left alone (cross-namespace by namespace labels)
      { matchLabels: { 'any:io.cilium.k8s.namespace.labels.team': 'payments' }, matchExpressions: [] },
      // {} in a namespaced policy: every pod of the policy's namespace
      { matchLabels: { 'k8s:io.kubernetes.pod.namespace': 'shop' }, matchExpressions: [] },
    ],
    ports: [{ port: 9090, protocol: 'ANY' }],
  });
  // reserved labels: no namespace added
  assert.deepEqual(rule.ingress[1], { endpoints: [{ matchLabels: { 'reserved:host': '' }, matchExpressions: [] }] });
  // icmps: types by number and by name; no peer → every peer
  assert.deepEqual(rule.ingress[2], {
    endpoints: [wildcard],
    portsOnly: true,
    ports: [
      { port: 8, protocol: 'ICMP' },
      { port: 0, protocol: 'ICMP' },
    ],
  });
  // egress: [{}] allows nothing (default deny on egress, here explicitly disabled)
  assert.deepEqual(rule.egress, [{}]);
  assert.deepEqual(rule.labels, {
    'k8s:io.cilium.k8s.policy.derived-from': 'CiliumNetworkPolicy',
    'k8s:io.cilium.k8s.policy.name': 'mixed',
    'k8s:io.cilium.k8s.policy.namespace': 'shop',
    'k8s:io.cilium.k8s.policy.uid': '3f1c2a9e-0000-4000-8000-000000000001',
    'unspec:team': 'payments',
    'k8s:env': 'prod',
  });
  assert.equal(selectorMatches(rule.endpointSelector, { 'k8s:app': 'web', 'k8s:io.kubernetes.pod.namespace': 'shop' }), true);
  assert.equal(selectorMatches(rule.endpointSelector, { 'k8s:app': 'web', 'k8s:tier': 'debug', 'k8s:io.kubernetes.pod.namespace': 'shop' }), false);
  assert.equal(selectorMatches(rule.endpointSelector, { 'k8s:app': 'db', 'k8s:io.kubernetes.pod.namespace': 'shop' }), false);
});

test('cilium: spec plus specs → one rule per entry, keyed apart', () => {
  const rules = loadPolicyFileSync(file('cilium-docs.yaml')).filter((r) => r.name === 'multi');
  assert.deepEqual(
    rules.map((r) => [ruleKey(r), policyKey(r), r.specIndex]),
    [
      ['CiliumNetworkPolicy/default/multi', 'CiliumNetworkPolicy/default/multi', undefined],
      ['CiliumNetworkPolicy/default/multi#0', 'CiliumNetworkPolicy/default/multi', 0],
      ['CiliumNetworkPolicy/default/multi#1', 'CiliumNetworkPolicy/default/multi', 1],
    ],
  );
  assert.deepEqual(rules[1].egress, [{ endpoints: [{ matchLabels: { 'any:app': 'd', 'k8s:io.kubernetes.pod.namespace': 'default' }, matchExpressions: [] }] }]);
  assert.deepEqual(rules[2].ingressDeny, [{ cidrs: [{ cidr: '0.0.0.0/0', except: [] }] }]);
});

test('cilium: every document of the docs file is read, in order', () => {
  const rules = loadPolicyFileSync(file('cilium-docs.yaml'));
  assert.deepEqual(
    rules.map((r) => ruleKey(r)),
    [
      'CiliumNetworkPolicy/prod/l3-rule',
      'CiliumNetworkPolicy/default/l4-rule',
      'CiliumNetworkPolicy/default/from-world-to-role-public',
      'CiliumNetworkPolicy/default/cidr-rule',
      'CiliumNetworkPolicy/default/external-lockdown',
      'CiliumNetworkPolicy/shop/mixed',
      'CiliumNetworkPolicy/default/multi',
      'CiliumNetworkPolicy/default/multi#0',
      'CiliumNetworkPolicy/default/multi#1',
    ],
  );
});

test('ccnp: cluster-scoped, no namespace; peers without a namespace are limited to pods (namespace Exists)', () => {
  const rules = loadPolicyFileSync(file('ccnp.yaml'));
  assert.equal(rules.length, 2);
  const health = byName(rules, 'cilium-health-checks');
  assert.equal(health.kind, 'CiliumClusterwideNetworkPolicy');
  assert.equal(health.namespace, undefined);
  assert.equal(ruleKey(health), 'CiliumClusterwideNetworkPolicy/cilium-health-checks');
  assert.deepEqual(health.endpointSelector, { matchLabels: { 'reserved:health': '' }, matchExpressions: [] });
  assert.deepEqual(health.ingress, [{ entities: ['remote-node'] }]);
  assert.deepEqual(health.egress, [{ entities: ['remote-node'] }]);
  assert.deepEqual(health.labels, {
    'k8s:io.cilium.k8s.policy.derived-from': 'CiliumClusterwideNetworkPolicy',
    'k8s:io.cilium.k8s.policy.name': 'cilium-health-checks',
  });

  const dns = byName(rules, 'allow-dns-from-all');
  assert.deepEqual(dns.endpointSelector, wildcard, 'clusterwide {} selects every endpoint');
  assert.deepEqual(dns.egress, [
    {
      endpoints: [{ matchLabels: { 'k8s:io.kubernetes.pod.namespace': 'kube-system', 'k8s:k8s-app': 'kube-dns' }, matchExpressions: [] }],
      ports: [{ port: 53, protocol: 'UDP' }],
    },
    {
      endpoints: [{ matchLabels: { 'any:app': 'metrics' }, matchExpressions: [{ key: 'k8s:io.kubernetes.pod.namespace', operator: 'Exists', values: [] }] }],
    },
  ]);
});

test('list: kind List with CNP and KNP items; kubectl metadata and status accepted', () => {
  const rules = loadPolicyFileSync(file('list.yaml'));
  assert.deepEqual(
    rules.map((r) => ruleKey(r)),
    ['CiliumNetworkPolicy/ns1/a', 'NetworkPolicy/ns1/b'],
  );
  assert.equal(rules[0].labels['k8s:io.cilium.k8s.policy.uid'], '11111111-2222-3333-4444-555555555555');
  assert.deepEqual(rules[0].ingress, [{ endpoints: [{ matchLabels: { 'k8s:io.kubernetes.pod.namespace': 'ns1' }, matchExpressions: [] }] }]);
  assert.deepEqual(rules[1].ingress, [{}]);
});

test('parse: empty documents are skipped; text without a file name; decoded objects', () => {
  const text = '---\n# nothing\n---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x, namespace: n}\nspec: {endpointSelector: {}}\n---\n';
  const rules = parsePolicyYaml(text);
  assert.equal(rules.length, 1);
  assert.equal(rules[0].sourceFile, undefined);
  assert.deepEqual(rules[0].ingress, []);
  const fromJson = parsePolicyObjects([{ apiVersion: 'cilium.io/v2', kind: 'CiliumNetworkPolicy', metadata: { name: 'x', namespace: 'n' }, spec: { endpointSelector: {} } }], { file: 'api' });
  assert.deepEqual(fromJson, [{ ...rules[0], sourceFile: 'api' }]);
  assert.deepEqual(parsePolicyYaml(''), []);
});
