/**
 * Policy files as they are found in the wild: clusterwide policies written with a namespace,
 * policies exported with the labels Cilium derives, application manifests that hold policies next
 * to Deployments and Services, and the mistakes users make, answered with what they meant.
 * @module
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { formatIssue, formatSkipped, parsePolicyFile, PolicyValidationError, ruleKey, type ParsedPolicyFile } from './index.ts';

const dir = join(import.meta.dirname, 'testdata', 'real-world');
const load = (name: string): ParsedPolicyFile => parsePolicyFile(readFileSync(join(dir, name), 'utf8'), { file: name });
function refused(name: string): string[] {
  try {
    load(name);
  } catch (error) {
    assert.ok(PolicyValidationError.is(error), String(error));
    return error.issues.map(formatIssue);
  }
  assert.fail(`${name} was accepted`);
}

test('a clusterwide policy with metadata.namespace is accepted, the namespace dropped with a warning', () => {
  const { rules, warnings, skipped } = load('ccnp-with-namespace.yaml');
  assert.deepEqual(rules.map(ruleKey), ['CiliumClusterwideNetworkPolicy/allow-dns-everywhere']);
  assert.equal(rules[0].namespace, undefined, 'clusterwide: no namespace');
  assert.equal(rules[0].labels['k8s:io.cilium.k8s.policy.namespace'], undefined);
  assert.deepEqual(rules[0].endpointSelector, { matchLabels: {}, matchExpressions: [] }, 'selects endpoints of every namespace, not only kube-system');
  assert.deepEqual(warnings.map(formatIssue), [
    'ccnp-with-namespace.yaml: document 1 (CiliumClusterwideNetworkPolicy allow-dns-everywhere): metadata.namespace: CiliumClusterwideNetworkPolicy is cluster-scoped: namespace "kube-system" is ignored (as Kubernetes drops it); remove metadata.namespace',
  ]);
  assert.deepEqual(skipped, []);
});

test("specs[].labels holding Cilium's own io.cilium.k8s.policy.* labels are accepted as Cilium accepts them", () => {
  const { rules, warnings } = load('exported-specs-labels.yaml');
  assert.deepEqual(rules.map(ruleKey), ['CiliumNetworkPolicy/default/multi-rules#0', 'CiliumNetworkPolicy/default/multi-rules#1']);
  assert.deepEqual(rules[0].labels, {
    'k8s:io.cilium.k8s.policy.derived-from': 'CiliumNetworkPolicy',
    'k8s:io.cilium.k8s.policy.name': 'multi-rules',
    'k8s:io.cilium.k8s.policy.namespace': 'default',
    'k8s:io.cilium.k8s.policy.uid': '4a0a4bbd-8b1d-4a37-9c0a-1e0c8a5a9f11',
    'unspec:team': 'payments',
  });
  // A derived label that contradicts the metadata cannot move the policy: the metadata wins, aloud.
  assert.equal(rules[1].labels['k8s:io.cilium.k8s.policy.namespace'], 'default');
  assert.deepEqual(warnings.map((w) => `${w.path}: ${w.reason}`), [
    'specs[1].labels: label k8s:io.cilium.k8s.policy.namespace=staging is ignored: Cilium derives k8s:io.cilium.k8s.policy.namespace=default from the policy metadata',
  ]);
});

test('a description beside spec or in metadata (where Kubernetes drops it) is ignored with a warning; one that is not text is refused', () => {
  const { rules, warnings } = load('description-outside-spec.yaml');
  assert.deepEqual(rules.map(ruleKey), ['CiliumNetworkPolicy/default/outpost-reads', 'CiliumNetworkPolicy/default/cross-cluster']);
  assert.equal(rules[0].description, undefined, 'not moved into the rule: Cilium never sees it either');
  assert.equal(rules[0].ingress[0].ports?.[0]?.port, 8080, 'the rule itself is read as written');
  assert.deepEqual(warnings.map(formatIssue), [
    'description-outside-spec.yaml: document 1 (CiliumNetworkPolicy default/outpost-reads): description: the top level of a CiliumNetworkPolicy has no description field: Kubernetes drops it (kubectl --validate=strict refuses it), so it is ignored; write it as spec.description',
    'description-outside-spec.yaml: document 2 (CiliumNetworkPolicy default/cross-cluster): metadata.description: metadata has no description field: Kubernetes drops it (kubectl --validate=strict refuses it), so it is ignored; write it as spec.description',
  ]);
  const text = 'apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, description: {text: deny}}\nspec: {podSelector: {}}';
  assert.throws(
    () => parsePolicyFile(text, { file: 'x.yaml' }),
    (error: unknown) => PolicyValidationError.is(error) && error.issues.map((i) => `${i.path}: ${i.reason}`).join('\n') === 'metadata.description: unknown field "description" (metadata has none), holding a mapping',
  );
});

test('a policy repeated word for word in one file is kept once with a warning (as kubectl apply leaves one object); a repeat that differs is refused', () => {
  const { rules, warnings, skipped } = load('repeated-policy.yaml');
  assert.deepEqual(rules.map(ruleKey), ['CiliumNetworkPolicy/default/echo-public']);
  assert.deepEqual(rules[0].ingress[0].ports, [{ port: 8080, protocol: 'TCP', l7: { http: [{ method: 'GET', path: '/public$' }] } }]);
  assert.equal(rules[0].sourceFile, 'repeated-policy.yaml');
  assert.deepEqual(skipped.map(formatSkipped), ['Deployment echo (apps/v1), document 2']);
  assert.deepEqual(warnings.map(formatIssue), ['repeated-policy.yaml: document 3 (CiliumNetworkPolicy default/echo-public): metadata.name: repeats document 1 exactly: kept once']);
  const changed = readFileSync(join(dir, 'repeated-policy.yaml'), 'utf8').replace('{path: /public$, method: GET}', '{path: /private$, method: GET}');
  assert.throws(
    () => parsePolicyFile(changed, { file: 'x.yaml' }),
    (error: unknown) => PolicyValidationError.is(error) && error.issues.map(formatIssue).join('\n') === 'x.yaml: document 3 (CiliumNetworkPolicy default/echo-public): metadata.name: duplicate policy: document 1 defines it too, differently',
  );
});

test('a file that also holds a ConfigMap, a Deployment and a Service imports its policies and lists what it skipped', () => {
  const { rules, skipped, warnings } = load('app-with-policies.yaml');
  assert.deepEqual(rules.map(ruleKey), ['CiliumNetworkPolicy/shop/web-from-frontend', 'NetworkPolicy/shop/web-default-deny-egress']);
  assert.deepEqual(skipped.map(formatSkipped), ['ConfigMap shop/web-config (v1), document 1', 'Deployment shop/web (apps/v1), document 2', 'Service shop/web (v1), document 3']);
  assert.deepEqual(warnings, []);
});

test('a malformed policy among other kinds still refuses the whole file', () => {
  assert.deepEqual(refused('app-with-bad-policy.yaml'), [
    'app-with-bad-policy.yaml: document 4 (CiliumNetworkPolicy shop/web-from-frontend): spec.ingress[0].toPorts[0].ports[0].port: must be 1–65535 (or 0 for every port), got 80800',
  ]);
});

test('common mistakes are answered with the field meant: apiversion, podSelector, auth, case, a plural kind', () => {
  assert.deepEqual(refused('common-mistakes.yaml'), [
    'common-mistakes.yaml: document 1 (CiliumNetworkPolicy default/lower-case-apiversion): apiVersion: is required (found "apiversion": field names are case-sensitive; write "apiVersion")',
    'common-mistakes.yaml: document 2 (CiliumNetworkPolicy default/pod-selector): spec.podSelector: unknown field "podSelector": a Cilium policy selects its endpoints with endpointSelector (podSelector is NetworkPolicy\'s)',
    'common-mistakes.yaml: document 2 (CiliumNetworkPolicy default/pod-selector): spec.endpointSelector: is required ({} selects every endpoint)',
    'common-mistakes.yaml: document 2 (CiliumNetworkPolicy default/pod-selector): spec.ingress[0].auth: unknown field "auth": Cilium\'s field is authentication (mutual authentication, not supported yet)',
    'common-mistakes.yaml: document 3 (CiliumNetworkPolicy default/case): spec.endpointselector: unknown field "endpointselector": field names are case-sensitive; write "endpointSelector"',
    'common-mistakes.yaml: document 3 (CiliumNetworkPolicy default/case): spec.endpointSelector: is required ({} selects every endpoint)',
    'common-mistakes.yaml: document 3 (CiliumNetworkPolicy default/case): spec.egress[0].toports: unknown field "toports": field names are case-sensitive; write "toPorts"',
    'common-mistakes.yaml: document 4 (CiliumNetworkPolicies default/plural): kind: unsupported kind "CiliumNetworkPolicies" (did you mean "CiliumNetworkPolicy"?) (expected CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, NetworkPolicy or List)',
  ]);
});

test('a network policy of a kind not supported is refused, never skipped', () => {
  const text = 'apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {name: a}\nspec: {}\n---\napiVersion: cilium.io/v2\nkind: ciliumnetworkpolicy\nmetadata: {name: b}\nspec: {}';
  assert.throws(
    () => parsePolicyFile(text, { file: 'x.yaml' }),
    (error: unknown) =>
      PolicyValidationError.is(error) &&
      error.issues.map((i) => `${i.document} ${i.reason}`).join('\n') ===
        '1 unsupported kind "AdminNetworkPolicy" (expected CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, NetworkPolicy or List)\n2 unsupported kind "ciliumnetworkpolicy": kinds are case-sensitive; write "CiliumNetworkPolicy" (expected CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, NetworkPolicy or List)',
  );
});
