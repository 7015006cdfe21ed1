import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  L7_PROXY_PORT,
  PolicyDirection,
  compileHttpRule,
  encodeEntry,
  httpRuleMatches,
  loadPolicyFileSync,
  lookupPolicy,
  parsePolicyYaml,
  PolicyEngine,
  resolveEndpointPolicy,
  SelectorCache,
} from './index.ts';

const STARWARS_L7 = join(import.meta.dirname, '..', '..', 'test', 'policies', 'starwars-l7.yaml');
const DEATHSTAR = { 'k8s:org': 'empire', 'k8s:class': 'deathstar', 'k8s:io.kubernetes.pod.namespace': 'default' };
const EMPIRE = 300;
const ALLIANCE = 301;
const cache = () =>
  new SelectorCache([
    { id: EMPIRE, labels: { 'k8s:org': 'empire', 'k8s:io.kubernetes.pod.namespace': 'default' } },
    { id: ALLIANCE, labels: { 'k8s:org': 'alliance', 'k8s:io.kubernetes.pod.namespace': 'default' } },
  ]);
const view = (method: string, path: string, headers: Record<string, string> = {}, host = 'deathstar') => ({ method, path, host, headers });

test('the Star Wars L7 policy: the Empire on 80/TCP goes to the proxy with its HTTP rule, the Alliance has no entry', () => {
  const rules = loadPolicyFileSync(STARWARS_L7);
  assert.deepEqual(rules[0].ingress[0].ports, [{ port: 80, protocol: 'TCP', l7: { http: [{ method: 'POST', path: '/v1/request-landing' }] } }]);
  const policy = resolveEndpointPolicy(DEATHSTAR, rules, cache());
  const empire = lookupPolicy(policy.entries, EMPIRE, PolicyDirection.INGRESS, 6, 80);
  assert.deepEqual(empire.entry?.l7, [{ ruleKey: 'CiliumNetworkPolicy/default/rule1', http: [{ method: 'POST', path: '/v1/request-landing' }] }]);
  assert.equal(encodeEntry(empire.entry!).proxy_port, L7_PROXY_PORT, 'the map entry carries the proxy port');
  assert.equal(lookupPolicy(policy.entries, ALLIANCE, PolicyDirection.INGRESS, 6, 80).entry, undefined, 'the xwing is dropped at L3/L4');
});

test('an allow without L7 rules on the same key allows every request (the allows are ORed): no redirect', () => {
  const rules = parsePolicyYaml(`
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: a}
spec:
  endpointSelector: {matchLabels: {org: empire, class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {org: empire}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET}]}}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: b}
spec:
  endpointSelector: {matchLabels: {org: empire, class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {org: empire}}]
    toPorts: [{ports: [{port: "80"}]}]
`);
  const entries = resolveEndpointPolicy(DEATHSTAR, rules, cache()).entries;
  const e = lookupPolicy(entries, EMPIRE, PolicyDirection.INGRESS, 6, 80).entry!;
  assert.equal(e.l7, undefined);
  assert.equal(encodeEntry(e).proxy_port, 0);
  // Protocol ANY with L7 rules: TCP through the proxy; the other protocols are not allowed by it.
  const anyOnly = resolveEndpointPolicy(DEATHSTAR, [rules[0]], cache()).entries;
  assert.ok(lookupPolicy(anyOnly, EMPIRE, PolicyDirection.INGRESS, 6, 80).entry?.l7);
  assert.equal(lookupPolicy(anyOnly, EMPIRE, PolicyDirection.INGRESS, 17, 80).entry, undefined);
});

test('HTTP rules match as Cilium matches: whole-value regular expressions, headers by presence and value', () => {
  const landing = compileHttpRule({ method: 'POST', path: '/v1/request-landing' });
  assert.ok(httpRuleMatches(landing, view('POST', '/v1/request-landing')));
  assert.ok(!httpRuleMatches(landing, view('PUT', '/v1/exhaust-port')));
  assert.ok(!httpRuleMatches(landing, view('POST', '/v1/request-landing/x')), 'the path is matched whole');
  assert.ok(!httpRuleMatches(landing, view('POSTX', '/v1/request-landing')), 'the method is matched whole');
  const regex = compileHttpRule({ method: 'GET|HEAD', path: '/public/.*', host: '.*\\.empire\\.gov' });
  assert.ok(httpRuleMatches(regex, view('HEAD', '/public/plans', {}, 'www.empire.gov')));
  assert.ok(!httpRuleMatches(regex, view('HEAD', '/public/plans', {}, 'www.empire.gov.evil')));
  const headers = compileHttpRule({ headers: ['X-Has-Force', 'X-Rank: Sith'] });
  assert.ok(httpRuleMatches(headers, view('GET', '/', { 'x-has-force': '', 'x-rank': 'Sith' })));
  assert.ok(!httpRuleMatches(headers, view('GET', '/', { 'x-rank': 'Sith' })), 'a required header missing');
  assert.ok(!httpRuleMatches(headers, view('GET', '/', { 'x-has-force': '1', 'x-rank': 'Jedi' })), 'a header with another value');
  assert.ok(httpRuleMatches(compileHttpRule({}), view('DELETE', '/anything')), 'an empty rule allows every request');
});

test('policy trace says when the node proxy decides per request', () => {
  const engine = new PolicyEngine({ identities: [{ id: EMPIRE, labels: { 'k8s:org': 'empire', 'k8s:io.kubernetes.pod.namespace': 'default' } }] });
  engine.upsertRules(loadPolicyFileSync(STARWARS_L7));
  const trace = engine.trace({ src: { identity: EMPIRE }, dst: { labels: DEATHSTAR }, dport: 80 });
  assert.equal(trace.allowed, true);
  assert.match(trace.reason, /through the node proxy: only HTTP requests that 1 HTTP rule\(s\) of default\/rule1 allow/);
});
