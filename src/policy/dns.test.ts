/**
 * DNS-based policy as written: `rules.dns` and `toFQDNs` read and validated, and names matched
 * with Cilium's matchName/matchPattern semantics (cases from Cilium's matchpattern tests).
 * @module
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  DNS_PROXY_PORT,
  dnsVerdict,
  dnsVerdictAllows,
  encodeEntry,
  fqdnSelectorMatches,
  lookupPolicy,
  parsePolicyFile,
  PolicyDirection,
  PolicyEngine,
  PolicyValidationError,
  reservedIdentityInfos,
  resolveEndpointPolicy,
  SelectorCache,
} from './index.ts';

test('matchPattern: * stays within one label, a leading **. spans labels, stars alone match every name', () => {
  const cases: Array<[string, string, boolean]> = [
    ['*.cilium.io', 'api.cilium.io', true],
    ['*.cilium.io', 'API.Cilium.IO.', true],
    ['*.cilium.io', 'a.b.cilium.io', false],
    ['*.cilium.io', 'cilium.io', false],
    ['*.cilium.io', 'api.cilium.io.evil.com', false],
    ['*cilium.io', 'cilium.io', true],
    ['*cilium.io', 'sub.cilium.io', false],
    ['api-*.cilium.io', 'api-v1.cilium.io', true],
    ['api-*.cilium.io', 'api-.cilium.io', true],
    ['api-*.cilium.io', 'api.cilium.io', false],
    ['**.cilium.io', 'a.b.cilium.io', true],
    ['**.cilium.io', 'api.cilium.io', true],
    ['**.cilium.io', 'cilium.io', false],
    ['***.cilium.io', 'a.b.c.cilium.io', true],
    ['sub.**.cilium.io', 'sub.a.cilium.io', true],
    ['sub.**.cilium.io', 'sub.a.b.cilium.io', false],
    ['*', 'anything.at.all', true],
    ['*', 'localhost', true],
    ['**', 'a.b', true],
    ['cilium.io', 'cilium.io', true],
    ['cilium.io', 'xcilium.io', false],
    ['cilium.io', 'cilium.iox', false],
  ];
  for (const [matchPattern, name, want] of cases) assert.equal(fqdnSelectorMatches({ matchPattern }, name), want, `${matchPattern} ~ ${name}`);
  assert.equal(fqdnSelectorMatches({ matchName: 'cilium.io' }, 'Cilium.IO.'), true);
  assert.equal(fqdnSelectorMatches({ matchName: 'cilium.io' }, 'www.cilium.io'), false);
});

const egress = (body: string) => `apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: t, namespace: app}\nspec:\n  endpointSelector: {matchLabels: {app: client}}\n  egress:\n${body}`;

test('rules.dns and toFQDNs are read and normalised', () => {
  const { rules, warnings } = parsePolicyFile(
    egress(`  - toEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system, k8s-app: kube-dns}}]
    toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules:
        dns:
        - matchName: API.GitHub.com.
        - matchPattern: "*.cilium.io"
  - toFQDNs:
    - matchName: api.github.com
    - matchPattern: "**.cilium.io"
    toPorts:
    - ports: [{port: "443", protocol: TCP}]`),
    { file: 'fqdn.yaml' },
  );
  const [dns, fqdn] = rules[0].egress;
  assert.deepEqual(dns.ports, [{ port: 53, protocol: 'ANY', l7: { dns: [{ matchName: 'api.github.com' }, { matchPattern: '*.cilium.io' }] } }]);
  assert.deepEqual(fqdn.fqdns, [{ matchName: 'api.github.com' }, { matchPattern: '**.cilium.io' }]);
  assert.equal(fqdn.endpoints, undefined, 'a toFQDNs rule with ports is not a rule for every peer');
  assert.equal(fqdn.cidrs, undefined);
  assert.deepEqual(warnings, [], 'DNS rules are enforced: nothing to warn about');
});

test('bad DNS rules and toFQDNs are refused with the field and the reason', () => {
  const problems = (body: string): string[] => {
    try {
      parsePolicyFile(body, { file: 'bad.yaml' });
    } catch (error) {
      assert.ok(PolicyValidationError.is(error));
      return error.issues.map((i) => `${i.path}: ${i.reason}`);
    }
    assert.fail('accepted');
  };
  assert.deepEqual(problems(egress('  - toFQDNs: [{matchName: "*.github.com"}]')), [`spec.egress[0].toFQDNs[0].matchName: "*.github.com" is not a DNS name (letters, digits, '-', '_' and '.'; use matchPattern for wildcards)`]);
  assert.deepEqual(problems(egress('  - toFQDNs: [{matchPattern: "[a-z].github.com"}]')), [`spec.egress[0].toFQDNs[0].matchPattern: "[a-z].github.com": only letters, digits, '-', '_', '.' and '*' are allowed`]);
  assert.deepEqual(problems(egress('  - toFQDNs: [{matchName: a.com, matchPattern: "*.a.com"}]')), ['spec.egress[0].toFQDNs[0]: matchName and matchPattern may not be combined in one selector; make them separate selectors']);
  assert.deepEqual(problems(egress('  - toFQDNs: [{}]')), ['spec.egress[0].toFQDNs[0]: must have matchName or matchPattern']);
  assert.deepEqual(problems(egress('  - toFQDNs: [{matchName: a.com}]\n    toCIDR: [10.0.0.0/8]')), ['spec.egress[0].toFQDNs: may not be combined with toCIDR in one rule; make them separate egress rules']);
  assert.deepEqual(problems(egress(`  - toFQDNs: [{matchName: "${'a'.repeat(256)}"}]`)), ['spec.egress[0].toFQDNs[0].matchName: must be at most 255 characters']);
  const ingressDns = `apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: t}\nspec:\n  endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: [{port: "53"}], rules: {dns: [{matchPattern: "*"}]}}]`;
  assert.deepEqual(problems(ingressDns), ['spec.ingress[0].toPorts[0].rules.dns: DNS rules are egress only (they select the names an endpoint may ask for)']);
  assert.deepEqual(problems(egress('  - toPorts: [{ports: [{port: "53"}], rules: {dns: [{matchPattern: "*"}], http: [{method: GET}]}}]')), [
    'spec.egress[0].toPorts[0].rules: one kind of L7 rule per toPorts entry, found http and dns; make them separate toPorts entries',
  ]);
  assert.deepEqual(problems(egress('  - toPorts: [{ports: [{port: "53"}], rules: {}}]')), [
    'spec.egress[0].toPorts[0].rules: has no L7 rules (expected one of dns, http, kafka, l7proto), got a mapping without them; remove rules to allow the port at L4',
  ]);
});

test("the DNS proxy's question: the rules of the entry the datapath picks decide, per resolver and port, as Cilium merges L7 rules", () => {
  const NS = 'k8s:io.kubernetes.pod.namespace';
  const client = { 'k8s:app': 'client', [NS]: 'app' };
  const other = { 'k8s:app': 'other', [NS]: 'app' };
  const kubeDns = { 'k8s:k8s-app': 'kube-dns', [NS]: 'kube-system' };
  const corpDns = { 'k8s:k8s-app': 'corp-dns', [NS]: 'kube-system' };
  const ID = { client: 300, other: 301, kubeDns: 302, corpDns: 303 };
  const engine = new PolicyEngine({
    identities: [...reservedIdentityInfos(), { id: ID.client, labels: client }, { id: ID.other, labels: other }, { id: ID.kubeDns, labels: kubeDns }, { id: ID.corpDns, labels: corpDns }],
  });
  engine.upsertEndpoint(1, client);
  engine.upsertEndpoint(2, other);
  const policy = () =>
    parsePolicyFile(
      egress(`  - toEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system, k8s-app: kube-dns}}]
    toPorts:
    - ports: [{port: "53", protocol: UDP}]
      rules:
        dns: [{matchName: api.github.com}, {matchPattern: "*.cilium.io"}]
  - toEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system, k8s-app: corp-dns}}]
    toPorts:
    - ports: [{port: "53", protocol: UDP}]
  - toEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system, k8s-app: kube-dns}}]
    toPorts:
    - ports: [{port: "8053", protocol: UDP}]`),
      { file: 'p.yaml' },
    ).rules;
  engine.upsertRules(policy());
  const asks = (endpoint: number, resolver: number, port: number, name: string) => dnsVerdictAllows(dnsVerdict(engine, endpoint, resolver, port, 'UDP'), name);

  assert.equal(asks(1, ID.kubeDns, 53, 'api.github.com'), true);
  assert.equal(asks(1, ID.kubeDns, 53, 'docs.cilium.io'), true);
  assert.equal(asks(1, ID.kubeDns, 53, 'evil.example.com'), false, 'a name no DNS rule lists (the same resolver allowed at L4 on another port opens no name on this one)');
  assert.equal(asks(1, ID.kubeDns, 8053, 'evil.example.com'), true, 'the port allowed at L4 only: every name');
  assert.equal(asks(1, ID.kubeDns, 5353, 'api.github.com'), false, 'a port the policy does not allow at all');
  assert.deepEqual(dnsVerdict(engine, 1, ID.kubeDns, 5353, 'UDP').allowed, false);
  assert.equal(asks(1, ID.corpDns, 53, 'evil.example.com'), true, 'a peer whose port has no DNS rules: every name');
  assert.equal(asks(1, 2, 53, 'api.github.com'), false, 'a resolver the policy does not allow (world)');
  assert.equal(asks(2, ID.kubeDns, 53, 'evil.example.com'), true, 'an endpoint no egress policy selects: every name');
  assert.equal(asks(9, ID.kubeDns, 53, 'api.github.com'), false, 'an unknown endpoint');

  // Another rule allowing the same resolver and port at L4 only: Cilium's merge opens every name.
  engine.upsertRules([
    ...parsePolicyFile(
      egress('  - toEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system, k8s-app: kube-dns}}]\n    toPorts: [{ports: [{port: "53", protocol: UDP}]}]').replace('name: t,', 'name: l4-only,'),
      { file: 'q.yaml' },
    ).rules,
  ]);
  assert.equal(asks(1, ID.kubeDns, 53, 'evil.example.com'), true);
});

test('a port with DNS rules sends UDP and TCP to the DNS proxy; an L4 allow of the same key turns the redirect off', () => {
  const KUBE_DNS = 302;
  const cache = new SelectorCache([{ id: KUBE_DNS, labels: { 'k8s:k8s-app': 'kube-dns', 'k8s:io.kubernetes.pod.namespace': 'kube-system' } }]);
  const client = { 'k8s:app': 'client', 'k8s:io.kubernetes.pod.namespace': 'app' };
  const toKubeDns = '  - toEndpoints: [{matchLabels: {"k8s:io.kubernetes.pod.namespace": kube-system, k8s-app: kube-dns}}]\n    toPorts:\n';
  const dnsRule = egress(`${toKubeDns}    - ports: [{port: "53", protocol: ANY}]\n      rules:\n        dns: [{matchPattern: "*"}]`);
  const entryOf = (rules: string[], protocol: number) => {
    const parsed = rules.flatMap((text, i) => parsePolicyFile(text.replace('name: t,', `name: t${i},`), { file: `p${i}.yaml` }).rules);
    return lookupPolicy(resolveEndpointPolicy(client, parsed, cache).entries, KUBE_DNS, PolicyDirection.EGRESS, protocol, 53).entry;
  };
  for (const protocol of [17, 6]) {
    const entry = entryOf([dnsRule], protocol);
    assert.equal(entry?.dns, true, `protocol ${protocol}`);
    assert.equal(encodeEntry(entry!).proxy_port, DNS_PROXY_PORT, 'the map entry carries the DNS proxy\'s port');
  }
  const l4Only = egress(`${toKubeDns}    - ports: [{port: "53", protocol: UDP}]`);
  const merged = entryOf([dnsRule, l4Only], 17);
  assert.equal(merged?.dns, undefined, 'another rule allows every query on 53/UDP');
  assert.equal(encodeEntry(merged!).proxy_port, 0);
  assert.equal(entryOf([l4Only, dnsRule], 17)?.dns, undefined, 'whichever comes first');
  assert.equal(entryOf([dnsRule, l4Only], 6)?.dns, true, '53/TCP is still DNS rules only');
});

test('DNS rules on a rule with ports and no peer (every resolver on that port) name the names allowed there', () => {
  const NS = 'k8s:io.kubernetes.pod.namespace';
  const client = { 'k8s:app': 'client', [NS]: 'app' };
  const kubeDns = { 'k8s:k8s-app': 'kube-dns', [NS]: 'kube-system' };
  const engine = new PolicyEngine({ identities: [...reservedIdentityInfos(), { id: 300, labels: client }, { id: 302, labels: kubeDns }] });
  engine.upsertEndpoint(1, client);
  engine.upsertRules(
    parsePolicyFile(
      egress(`  - toPorts:
    - ports: [{port: "53", protocol: UDP}]
      rules:
        dns: [{matchPattern: "*.cilium.io"}]`),
      { file: 'p.yaml' },
    ).rules,
  );
  // A resolver pod and one outside the cluster (world) alike: the rule's peer is every identity.
  for (const resolver of [302, 2]) {
    const verdict = dnsVerdict(engine, 1, resolver, 53, 'UDP');
    assert.equal(dnsVerdictAllows(verdict, 'docs.cilium.io'), true, `resolver ${resolver}: ${JSON.stringify(verdict)}`);
    assert.equal(dnsVerdictAllows(verdict, 'evil.example.com'), false);
  }
});
