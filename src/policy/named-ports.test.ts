/**
 * Named ports (`port: http`): read from NetworkPolicy and Cilium policies as Kubernetes port names,
 * and resolved per endpoint by the engine: an ingress rule by the selected endpoint's own ports, an
 * egress rule by the ports of every endpoint known.
 * @module
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { dnsVerdict, parsePolicyYaml, PolicyEngine, POD_NAMESPACE_LABEL, PolicyValidationError, policyKeyString, reservedIdentityInfos, type EndpointNamedPort, type PolicyMapEntry } from './index.ts';

const NS = POD_NAMESPACE_LABEL;
const web = { 'k8s:app': 'web', [NS]: 'shop' };
const client = { 'k8s:app': 'client', [NS]: 'shop' };
const ID = { web: 300, client: 301 };
const EP = { web: 1, web2: 2, client: 3 };
const keysOf = (entries: Iterable<PolicyMapEntry>) => [...entries].map((e) => policyKeyString(e.key)).sort();

const knp = (ports: string) => `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports:
${ports}`;

/** A CiliumNetworkPolicy in namespace shop selecting app=`subject`, with `rules` (YAML lines of spec). */
const cnp = (name: string, subject: string, rules: string) =>
  parsePolicyYaml(`apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: ${name}, namespace: shop}\nspec:\n  endpointSelector: {matchLabels: {app: ${subject}}}\n${rules}`, { file: `${name}.yaml` });

test('parse: a NetworkPolicy port name is kept by name, TCP by default, with the protocol given', () => {
  const [rule] = parsePolicyYaml(knp('    - port: http\n    - {port: dns-udp, protocol: UDP}\n    - port: "8080"'), { file: 'np.yaml' });
  assert.deepEqual(rule.ingress[0].ports, [
    { port: 0, protocol: 'TCP', name: 'http' },
    { port: 0, protocol: 'UDP', name: 'dns-udp' },
    { port: 8080, protocol: 'TCP' },
  ]);
});

test('parse: a Cilium toPorts port name (ANY by default), with HTTP rules; 15 characters and digits are fine', () => {
  const [rule] = cnp(
    'cnp',
    'web',
    `  ingress:
  - toPorts:
    - ports: [{port: http}]
      rules: {http: [{method: GET}]}
    - ports: [{port: 0x50}, {port: a-1234567890123, protocol: TCP}]
  egress:
  - toPorts: [{ports: [{port: dns, protocol: UDP}]}]`,
  );
  const ports = rule.ingress[0].ports!;
  assert.deepEqual(ports.map((p) => [p.name, p.port, p.protocol]), [
    ['http', 0, 'ANY'],
    // YAML reads 0x50 as the number 80.
    [undefined, 80, 'ANY'],
    ['a-1234567890123', 0, 'TCP'],
  ]);
  assert.deepEqual(ports[0].l7?.http, [{ method: 'GET' }]);
  assert.deepEqual(rule.egress[0].ports, [{ port: 0, protocol: 'UDP', name: 'dns' }]);
});

test('parse: a bad name is named by file, field and reason, and nothing of the file is taken', () => {
  let error: unknown;
  try {
    parsePolicyYaml(knp('    - port: Http\n    - port: http\n      endPort: 90'), { file: 'np.yaml' });
  } catch (e) {
    error = e;
  }
  assert.ok(PolicyValidationError.is(error));
  assert.deepEqual(
    error.issues.map((i) => `${i.file}: ${i.path}: ${i.reason}`),
    [
      'np.yaml: spec.ingress[0].ports[0].port: "Http" is neither a port number nor a port name: a port name must be lower case letters, digits and -',
      'np.yaml: spec.ingress[0].ports[1].endPort: may not be specified with a named port ("http"); give the range by number',
    ],
  );
});

function engine(): PolicyEngine {
  const e = new PolicyEngine({ identities: [...reservedIdentityInfos(), { id: ID.web, labels: web }, { id: ID.client, labels: client }] });
  return e;
}

const http = (port: number, protocol: EndpointNamedPort['protocol'] = 'TCP'): EndpointNamedPort[] => [{ name: 'http', port, protocol }];

test('ingress: the name is each selected endpoint\'s own port; an endpoint without it gets nothing, not every port', () => {
  const e = engine();
  e.upsertRules(parsePolicyYaml(knp('    - port: http'), { file: 'np.yaml' }));
  e.upsertEndpoint(EP.web, web, http(8080));
  e.upsertEndpoint(EP.web2, web, [{ name: 'http', port: 9090, protocol: 'TCP' }, { name: 'metrics', port: 9100, protocol: 'TCP' }]);
  const bare = 4;
  e.upsertEndpoint(bare, web);
  assert.deepEqual(keysOf(e.endpointPolicy(EP.web)!.entries.values()), ['0/1/0/0/40', `${ID.client}/0/6/8080/64`]);
  assert.deepEqual(keysOf(e.endpointPolicy(EP.web2)!.entries.values()), ['0/1/0/0/40', `${ID.client}/0/6/9090/64`]);
  // Selected, so ingress is enforced, and the name stands for nothing: nothing is allowed in.
  assert.equal(e.endpointPolicy(bare)!.ingressEnforced, true);
  assert.deepEqual(keysOf(e.endpointPolicy(bare)!.entries.values()), ['0/1/0/0/40']);
  assert.equal(e.trace({ src: { identity: ID.client }, dst: { endpoint: EP.web }, dport: 8080 }).allowed, true);
  assert.equal(e.trace({ src: { identity: ID.client }, dst: { endpoint: EP.web }, dport: 9090 }).allowed, false);
  assert.equal(e.trace({ src: { identity: ID.client }, dst: { endpoint: bare }, dport: 8080 }).allowed, false);
});

test('ingress: the protocol must match the named port\'s (TCP by default; ANY takes the port\'s own)', () => {
  const e = engine();
  e.upsertEndpoint(EP.web, web, [{ name: 'dns', port: 53, protocol: 'UDP' }]);
  e.upsertRules(parsePolicyYaml(knp('    - port: dns'), { file: 'np.yaml' }));
  assert.deepEqual(keysOf(e.endpointPolicy(EP.web)!.entries.values()), ['0/1/0/0/40'], 'TCP "dns" is no port of the pod');
  e.upsertRules(parsePolicyYaml(knp('    - {port: dns, protocol: UDP}'), { file: 'np.yaml' }));
  assert.deepEqual(keysOf(e.endpointPolicy(EP.web)!.entries.values()), ['0/1/0/0/40', `${ID.client}/0/17/53/64`]);
  e.upsertRules(cnp('np', 'web', '  ingress:\n  - fromEndpoints: [{matchLabels: {app: client}}]\n    toPorts: [{ports: [{port: dns}]}]'));
  assert.deepEqual(keysOf(e.endpointPolicy(EP.web)!.entries.values()).filter((k) => k.startsWith(`${ID.client}/`)), [`${ID.client}/0/17/53/64`], 'ANY: only the port\'s own protocol');
});

test('ingress: a change of the endpoint\'s ports recomputes its policy; L7 rules ride on the resolved port', () => {
  const e = engine();
  e.upsertRules(cnp('l7', 'web', '  ingress:\n  - fromEndpoints: [{matchLabels: {app: client}}]\n    toPorts: [{ports: [{port: http, protocol: TCP}], rules: {http: [{method: GET}]}}]'));
  e.upsertEndpoint(EP.web, web, http(8080));
  const entry = e.endpointPolicy(EP.web)!.entries.get(`${ID.client}/0/6/8080/64`);
  assert.deepEqual(entry?.l7?.map((g) => g.http), [[{ method: 'GET' }]]);
  const update = e.upsertEndpoint(EP.web, web, http(8081));
  const diff = update.endpoints.get(EP.web)!;
  assert.deepEqual(keysOf(diff.upserts), [`${ID.client}/0/6/8081/64`]);
  assert.deepEqual(diff.deletes.map((k) => policyKeyString(k)), [`${ID.client}/0/6/8080/64`]);
});

const egressNp = `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: out, namespace: shop}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: http}]`;

test('egress: the name is every known endpoint\'s port of that name, local or another node\'s; changes recompute the rule\'s endpoints', () => {
  const e = engine();
  e.upsertRules(parsePolicyYaml(egressNp, { file: 'out.yaml' }));
  e.upsertEndpoint(EP.client, client);
  const egressKeys = () => keysOf(e.endpointPolicy(EP.client)!.entries.values()).filter((k) => k.startsWith(`${ID.web}/1/`));
  assert.deepEqual(egressKeys(), [], 'no endpoint has the name yet: nothing');
  // A local endpoint with the name: the client's egress gets its port.
  let update = e.upsertEndpoint(EP.web, web, http(8080));
  assert.deepEqual(keysOf(update.endpoints.get(EP.client)!.upserts), [`${ID.web}/1/6/8080/64`]);
  // Another node's endpoint with another number: both.
  update = e.setPeerPorts('endpoints/node2/c9/eth0', http(9090));
  assert.deepEqual(keysOf(update.endpoints.get(EP.client)!.upserts), [`${ID.web}/1/6/9090/64`]);
  assert.deepEqual(egressKeys(), [`${ID.web}/1/6/8080/64`, `${ID.web}/1/6/9090/64`]);
  assert.deepEqual(e.namedPorts('http', 'egress').map((p) => p.port).sort(), [8080, 9090]);
  // A second endpoint with a number already known changes nothing; nobody is recomputed.
  update = e.setPeerPorts('endpoints/node2/c10/eth0', http(8080));
  assert.equal(update.endpoints.size, 0);
  // UDP "http" is no TCP port.
  update = e.setPeerPorts('endpoints/node2/c11/eth0', http(7070, 'UDP'));
  assert.equal(update.endpoints.size, 0);
  assert.deepEqual(egressKeys(), [`${ID.web}/1/6/8080/64`, `${ID.web}/1/6/9090/64`]);
  // The local endpoint goes: 8080 stays while node2's c10 has it; 9090 goes with c9.
  e.deleteEndpoint(EP.web);
  assert.deepEqual(egressKeys(), [`${ID.web}/1/6/8080/64`, `${ID.web}/1/6/9090/64`]);
  update = e.setPeerPorts('endpoints/node2/c9/eth0', undefined);
  assert.deepEqual(update.endpoints.get(EP.client)!.deletes.map((k) => policyKeyString(k)), [`${ID.web}/1/6/9090/64`]);
  e.setPeerPorts('endpoints/node2/c10/eth0', undefined);
  assert.deepEqual(egressKeys(), []);
  // Egress trace reads the same resolution.
  e.setPeerPorts('endpoints/node2/c12/eth0', http(8443));
  assert.equal(e.trace({ src: { endpoint: EP.client }, dst: { identity: ID.web }, dport: 8443 }).egress?.allowed, true);
  assert.equal(e.trace({ src: { endpoint: EP.client }, dst: { identity: ID.web }, dport: 8080 }).egress?.allowed, false);
});

test('egress: a rule changed to another name follows the new name only', () => {
  const e = engine();
  e.upsertRules(parsePolicyYaml(egressNp, { file: 'out.yaml' }));
  e.upsertEndpoint(EP.client, client);
  e.upsertRules(parsePolicyYaml(egressNp.replace('port: http', 'port: api'), { file: 'out.yaml' }));
  assert.equal(e.setPeerPorts('p1', http(8080)).endpoints.size, 0, 'http is no longer named by the rule');
  const update = e.setPeerPorts('p2', [{ name: 'api', port: 7000, protocol: 'TCP' }]);
  assert.deepEqual(keysOf(update.endpoints.get(EP.client)!.upserts), [`${ID.web}/1/6/7000/64`]);
});

test('egress: a DNS rule on a named port asks the DNS proxy only on the ports the name stands for', () => {
  const e = engine();
  e.upsertRules(cnp('dns', 'client', '  egress:\n  - toEndpoints: [{matchLabels: {app: web}}]\n    toPorts: [{ports: [{port: dns, protocol: UDP}], rules: {dns: [{matchPattern: "*.shop"}]}}]'));
  e.upsertEndpoint(EP.client, client);
  e.upsertEndpoint(EP.web, web, [{ name: 'dns', port: 5353, protocol: 'UDP' }]);
  const verdict = dnsVerdict(e, EP.client, ID.web, 5353, 'UDP');
  assert.ok(verdict.allowed && !verdict.allNames);
  assert.deepEqual(verdict.selectors, [{ matchPattern: '*.shop' }]);
  assert.equal(dnsVerdict(e, EP.client, ID.web, 53, 'UDP').allowed, false);
});
