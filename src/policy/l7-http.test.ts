import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  L7_PROXY_PORT,
  PolicyDirection,
  compileHttpRule,
  encodeEntry,
  applyHeaderEdits,
  httpRuleMatch,
  httpRuleMatches,
  loadPolicyFileSync,
  lookupPolicy,
  parsePolicyYaml,
  PolicyEngine,
  resolveEndpointPolicy,
  PolicyVerdict,
  SelectorCache,
} from './index.ts';
import { BpfPolicyLookup } from './testdata/bpf-lookup.ts';

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
/** A CiliumNetworkPolicy of the Death Star with these ingress rules (YAML list items). */
const deathstarIngress = (name: string, ingress: string) =>
  parsePolicyYaml(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: ${name}}
spec:
  endpointSelector: {matchLabels: {org: empire, class: deathstar}}
  ingress:
${ingress}`);

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

test('HTTP rules on a port range (endPort), as Cilium takes them: every port of the range goes to the proxy with the rules, a narrower allow without L7 rules wins where it applies (real BPF lookup)', () => {
  const fromEmpire = '  - fromEndpoints: [{matchLabels: {org: empire}}]\n';
  const rules = [
    ...deathstarIngress('range', `${fromEmpire}    toPorts: [{ports: [{port: "8000", endPort: 8100, protocol: TCP}], rules: {http: [{method: GET, path: /}]}}]\n`),
    ...deathstarIngress('metrics', `${fromEmpire}    toPorts: [{ports: [{port: "8080", protocol: TCP}]}]\n`),
  ];
  const http = [{ method: 'GET', path: '/' }];
  assert.deepEqual(rules[0].ingress[0].ports, [{ port: 8000, endPort: 8100, protocol: 'TCP', l7: { http } }]);
  const entries = resolveEndpointPolicy(DEATHSTAR, rules, cache()).entries;
  const at = (port: number) => lookupPolicy(entries, EMPIRE, PolicyDirection.INGRESS, 6, port);
  for (const port of [8000, 8063, 8064, 8081, 8096, 8100]) {
    assert.deepEqual(at(port).entry?.l7, [{ ruleKey: 'CiliumNetworkPolicy/default/range', http }], `port ${port} is judged by the proxy`);
    assert.equal(encodeEntry(at(port).entry!).proxy_port, L7_PROXY_PORT);
  }
  assert.equal(at(8080).entry?.l7, undefined, 'the exact 8080 allow has no HTTP rules: every request on 8080');
  for (const port of [7999, 8101]) assert.equal(at(port).entry, undefined, `port ${port} is outside the range`);
  assert.equal(lookupPolicy(entries, ALLIANCE, PolicyDirection.INGRESS, 6, 8050).entry, undefined, 'the Alliance is dropped at L3/L4');

  using bpf = new BpfPolicyLookup();
  bpf.load(entries.values());
  for (const port of [8000, 8050, 8080, 8100]) {
    const r = bpf.query(EMPIRE, PolicyDirection.INGRESS, 6, port);
    assert.equal(r.verdict, PolicyVerdict.ALLOWED, `port ${port}`);
    assert.equal(r.prefixLen, at(port).entry!.key.prefixLen, `port ${port}: the datapath picks the entry the proxy judges by`);
  }
  for (const port of [7999, 8101]) assert.equal(bpf.query(EMPIRE, PolicyDirection.INGRESS, 6, port).verdict, PolicyVerdict.DENIED_DEFAULT, `port ${port}`);
});

test('HTTP rules are ORed with every allow that covers their key, as Cilium\'s proxy judges by every rule on the port: every peer\'s HTTP rules join, an allow without L7 rules allows all', () => {
  const policy = (body: string) => deathstarIngress('p', body);
  const fromEmpireGetA = `  - fromEndpoints: [{matchLabels: {org: empire}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET, path: /a}]}}]
`;
  const grants = (rules: ReturnType<typeof parsePolicyYaml>, identity: number, port = 80) =>
    lookupPolicy(resolveEndpointPolicy(DEATHSTAR, rules, cache()).entries, identity, PolicyDirection.INGRESS, 6, port).entry?.l7?.flatMap((g) => g.http.map((h) => h.path));

  // Every peer may GET /b: so may the Empire, beside its own GET /a (cilium/cilium#3509).
  const everyPeerGetB = '  - toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET, path: /b}]}}]\n';
  assert.deepEqual(grants(policy(fromEmpireGetA + everyPeerGetB), EMPIRE), ['/a', '/b']);
  assert.deepEqual(grants(policy(fromEmpireGetA + everyPeerGetB), ALLIANCE), ['/b']);
  // Every peer may use port 80 at L4: the Empire's HTTP rules restrict nothing, no redirect.
  const everyPeer80 = '  - toPorts: [{ports: [{port: "80", protocol: TCP}]}]\n';
  assert.equal(grants(policy(fromEmpireGetA + everyPeer80), EMPIRE), undefined);
  // The Empire may use every port (L3 only), or a range holding 80: the same.
  assert.equal(grants(policy(fromEmpireGetA + '  - fromEndpoints: [{matchLabels: {org: empire}}]\n'), EMPIRE), undefined);
  const empireRange = '  - fromEndpoints: [{matchLabels: {org: empire}}]\n    toPorts: [{ports: [{port: "64", endPort: 127, protocol: TCP}]}]\n';
  assert.equal(grants(policy(fromEmpireGetA + empireRange), EMPIRE), undefined);
  // A range with HTTP rules for every peer joins the Empire's rules on 80, and only there.
  const everyPeerRangeGetC = '  - toPorts: [{ports: [{port: "64", endPort: 127, protocol: TCP}], rules: {http: [{method: GET, path: /c}]}}]\n';
  assert.deepEqual(grants(policy(fromEmpireGetA + everyPeerRangeGetC), EMPIRE), ['/a', '/c']);
  assert.deepEqual(grants(policy(fromEmpireGetA + everyPeerRangeGetC), EMPIRE, 81), ['/c']);

  // Every peer's HTTP rules on a narrower key than the Empire's own allow would win the Empire's
  // lookups there: the Empire gets its own entry, with both allows' rules, or none.
  const empireRangeGetA = '  - fromEndpoints: [{matchLabels: {org: empire}}]\n    toPorts: [{ports: [{port: "64", endPort: 127, protocol: TCP}], rules: {http: [{method: GET, path: /a}]}}]\n';
  assert.deepEqual(grants(policy(empireRangeGetA + everyPeerGetB), EMPIRE), ['/a', '/b']);
  assert.deepEqual(grants(policy(empireRangeGetA + everyPeerGetB), EMPIRE, 81), ['/a']);
  const empireEverything = '  - fromEndpoints: [{matchLabels: {org: empire}}]\n';
  const rules = policy(empireEverything + everyPeerGetB);
  assert.equal(grants(rules, EMPIRE), undefined, 'the Empire may do anything anywhere, port 80 included');
  assert.deepEqual(grants(rules, ALLIANCE), ['/b']);
  using bpf = new BpfPolicyLookup();
  const entries = resolveEndpointPolicy(DEATHSTAR, rules, cache()).entries;
  bpf.load(entries.values());
  const empire80 = bpf.query(EMPIRE, PolicyDirection.INGRESS, 6, 80);
  assert.equal(empire80.prefixLen, 64, 'the datapath picks the Empire\'s own port-80 entry');
  assert.equal(encodeEntry(lookupPolicy(entries, EMPIRE, PolicyDirection.INGRESS, 6, 80).entry!).proxy_port, 0, 'and it does not redirect');

  // An identity that appears later (the engine's incremental path) gets what a full resolve gives.
  for (const [body, expected] of [
    [fromEmpireGetA + everyPeerGetB, ['/a', '/b']],
    [empireRangeGetA + everyPeerGetB, ['/a', '/b']],
    [empireEverything + everyPeerGetB, undefined],
  ] as const) {
    const engine = new PolicyEngine({ identities: [] });
    engine.upsertRules(policy(body));
    engine.upsertEndpoint(1, DEATHSTAR);
    engine.upsertIdentity(EMPIRE, { 'k8s:org': 'empire', 'k8s:io.kubernetes.pod.namespace': 'default' });
    const incremental = lookupPolicy(engine.endpointPolicy(1)!.entries, EMPIRE, PolicyDirection.INGRESS, 6, 80).entry?.l7;
    assert.deepEqual(incremental?.flatMap((g) => g.http.map((h) => h.path)), expected);
  }
});

test('an identity relabelled in place gets the HTTP rules of its new labels, though its map entry does not change: the old ones are not kept', () => {
  const engine = new PolicyEngine({ identities: [{ id: EMPIRE, labels: { 'k8s:org': 'empire', 'k8s:io.kubernetes.pod.namespace': 'default' } }] });
  engine.upsertRules(
    parsePolicyYaml(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingress:
  - fromEndpoints: [{matchLabels: {org: empire}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET, path: /plans}]}}]
  - fromEndpoints: [{matchLabels: {rank: officer}}]
    toPorts: [{ports: [{port: "80", protocol: TCP}], rules: {http: [{method: GET, path: /mess}]}}]
`),
  );
  engine.upsertEndpoint(1, DEATHSTAR);
  const paths = () => lookupPolicy(engine.endpointPolicy(1)!.entries, EMPIRE, PolicyDirection.INGRESS, 6, 80).entry?.l7?.flatMap((g) => g.http.map((h) => h.path));
  assert.deepEqual(paths(), ['/plans']);
  const both = engine.upsertIdentity(EMPIRE, { 'k8s:org': 'empire', 'k8s:rank': 'officer', 'k8s:io.kubernetes.pod.namespace': 'default' });
  assert.equal(both.endpoints.size, 0, 'the map entry is the same: nothing to write');
  assert.deepEqual(paths(), ['/plans', '/mess']);
  engine.upsertIdentity(EMPIRE, { 'k8s:rank': 'officer', 'k8s:io.kubernetes.pod.namespace': 'default' });
  assert.deepEqual(paths(), ['/mess'], 'no longer of the Empire: no longer GET /plans');
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

test('headerMatches with a mismatch action: the rule matches anyway, and the request is forwarded with the header logged, added, deleted or replaced', () => {
  const rules = parsePolicyYaml(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: headers, namespace: default}
spec:
  endpointSelector: {matchLabels: {class: deathstar}}
  ingress:
  - toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - method: GET
          headerMatches:
          - {name: X-Required, value: yes}
          - {name: X-Audit, value: on, mismatch: LOG}
          - {name: X-Team, value: empire, mismatch: ADD}
          - {name: X-Debug, mismatch: DELETE}
          - {name: X-Env, value: prod, mismatch: REPLACE}
`);
  const http = rules[0].ingress[0].ports![0].l7!.http!;
  assert.deepEqual(http[0].headers, ['X-Required: yes'], 'without an action a headerMatch is a header the rule requires');
  assert.deepEqual(http[0].headerMatches?.map((m) => m.mismatch), ['LOG', 'ADD', 'DELETE', 'REPLACE']);
  const rule = compileHttpRule(http[0]);
  assert.equal(httpRuleMatch(rule, view('GET', '/', { 'x-team': 'empire' })), undefined, 'a required header still fails the rule');
  const match = httpRuleMatch(rule, view('GET', '/', { 'x-required': 'yes', 'x-team': 'rebels', 'x-env': 'dev' }));
  assert.deepEqual(match, {
    logged: ['x-audit'],
    // X-Debug is absent, which is a mismatch too: its DELETE then removes nothing.
    edits: [
      { action: 'ADD', name: 'x-team', value: 'empire' },
      { action: 'DELETE', name: 'x-debug' },
      { action: 'REPLACE', name: 'x-env', value: 'prod' },
    ],
  });
  const raw = ['Host', 'deathstar', 'X-Team', 'rebels', 'X-Env', 'dev', 'x-env', 'staging', 'X-Debug', '1'];
  assert.deepEqual(applyHeaderEdits(raw, match!.edits), ['Host', 'deathstar', 'X-Team', 'rebels', 'x-team', 'empire', 'x-env', 'prod']);
  const satisfied = httpRuleMatch(rule, view('GET', '/', { 'x-required': 'yes', 'x-audit': 'on', 'x-team': 'empire', 'x-debug': 'x', 'x-env': 'prod' }));
  assert.deepEqual(satisfied, { logged: [], edits: [] }, 'every header as the rule wants it: nothing to do');
});

test('bad mismatch actions are refused with the field and the reason', () => {
  const problems = (match: string): string[] => {
    try {
      parsePolicyYaml(`apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: bad, namespace: default}
spec:
  endpointSelector: {}
  ingress:
  - toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - headerMatches: [${match}]
`);
    } catch (error) {
      return (error as { issues: { path: string; reason: string }[] }).issues.map((i) => `${i.path}: ${i.reason}`);
    }
    return [];
  };
  const at = 'spec.ingress[0].toPorts[0].rules.http[0].headerMatches[0]';
  assert.deepEqual(problems('{name: X-A, value: b, mismatch: DROP}'), [`${at}.mismatch: must be one of LOG, ADD, DELETE, REPLACE (or absent: a mismatch fails the rule), got "DROP"`]);
  assert.deepEqual(problems('{name: X-A, mismatch: REPLACE}'), [`${at}.value: mismatch REPLACE sets the header to its value: give one`]);
  assert.deepEqual(problems('{name: X-A, value: "a\\r\\nX-Evil: 1", mismatch: ADD}'), [`${at}.value: a header value cannot hold CR, LF or NUL`]);
});
