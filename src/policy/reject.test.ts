/**
 * Rejections: every out-of-scope or invalid field is reported with file, document, path and
 * reason, and a file with any problem yields no rules.
 * @module
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { loadPolicyFile, loadPolicyFileSync, parsePolicyYaml, PolicyValidationError, type PolicyIssue } from './index.ts';

const dir = join(import.meta.dirname, 'testdata', 'reject');
const file = (name: string) => join(dir, name);

/** Loads a file that must be rejected; returns the issues without `file`, after checking it. */
function rejected(name: string): Array<Omit<PolicyIssue, 'file'>> {
  const path = file(name);
  let error: unknown;
  try {
    loadPolicyFileSync(path);
  } catch (e) {
    error = e;
  }
  assert.ok(error instanceof PolicyValidationError, `${name} was not rejected`);
  assert.ok(PolicyValidationError.is(error));
  assert.equal(error.code, 'ERR_POLICY_INVALID');
  for (const issue of error.issues) assert.equal(issue.file, path);
  return error.issues.map(({ file: _file, ...rest }) => rest);
}

test('reject: L7 rules the proxy cannot enforce, each named by field and reason', () => {
  const issue = (path: string, reason: string) => ({ document: 1, policy: 'CiliumNetworkPolicy default/rule1', path, reason });
  assert.deepEqual(rejected('l7-rules.yaml'), [
    issue('spec.ingress[0].toPorts[0].rules.http[0].path', '"/v1/(request-landing" is not a valid regular expression: /^(?:/v1/(request-landing)$/: Unterminated group'),
    issue('spec.ingress[0].toPorts[0].rules.http[1].method', 'unknown HTTP method "FETCH"'),
    issue('spec.ingress[0].toPorts[0].rules.http[2].method', 'methods are upper case: GET, got "get"'),
    issue('spec.ingress[0].toPorts[0].rules.http[3].path', '"/(a)\\1": backreferences are not RE2 syntax'),
    issue('spec.ingress[0].toPorts[0].rules.http[4].headerMatches[0].value', 'mismatch ADD sets the header to its value: give one'),
    issue('spec.ingress[0].toPorts[1].ports[0]', 'HTTP rules need TCP, got UDP'),
    issue('spec.ingress[0].toPorts[2].rules.kafka', 'Kafka rules (rules.kafka) are not supported: Ciliate has no Kafka proxy (Cilium itself deprecated them); remove rules to allow the port at L4'),
  ]);
});

test('reject: Kafka rules, saying that Kafka is not supported', () => {
  assert.deepEqual(rejected('kafka-rules.yaml'), [
    {
      document: 1,
      policy: 'CiliumNetworkPolicy default/secure-empire-kafka',
      path: 'spec.ingress[0].toPorts[0].rules.kafka',
      reason: 'Kafka rules (rules.kafka) are not supported: Ciliate has no Kafka proxy (Cilium itself deprecated them); remove rules to allow the port at L4',
    },
  ]);
});

test('reject: unknown field, with a suggestion', () => {
  assert.deepEqual(rejected('unknown-field.yaml'), [
    { document: 1, policy: 'CiliumNetworkPolicy default/typo', path: 'spec.ingress[0].fromEndpoint', reason: 'unknown field "fromEndpoint" (did you mean "fromEndpoints"?)' },
  ]);
});

test('reject: bad port in document 2 rejects the whole file, message names file/document/policy/path', async () => {
  assert.deepEqual(rejected('bad-port.yaml'), [
    { document: 2, policy: 'CiliumNetworkPolicy default/allow-web', path: 'spec.ingress[0].toPorts[0].ports[0].port', reason: 'must be 1–65535 (or 0 for every port), got 70000' },
  ]);
  await assert.rejects(loadPolicyFile(file('bad-port.yaml')), (error: unknown) => {
    assert.ok(error instanceof PolicyValidationError);
    assert.equal(
      error.message,
      `${file('bad-port.yaml')}: document 2 (CiliumNetworkPolicy default/allow-web): spec.ingress[0].toPorts[0].ports[0].port: must be 1–65535 (or 0 for every port), got 70000`,
    );
    return true;
  });
});

test('reject: bad CIDR', () => {
  assert.deepEqual(rejected('bad-cidr.yaml'), [
    {
      document: 1,
      policy: 'CiliumNetworkPolicy default/cidr',
      path: 'spec.egress[0].toCIDR[0]',
      reason: '"10.0.0.256/24" is not a CIDR (expected a.b.c.d/n or an IPv6 prefix such as 2001:db8::/32)',
    },
  ]);
});

test('reject: bad protocol', () => {
  assert.deepEqual(rejected('bad-protocol.yaml'), [
    { document: 1, policy: 'CiliumNetworkPolicy default/proto', path: 'spec.egress[0].toPorts[0].ports[0].protocol', reason: 'must be one of TCP, UDP, SCTP, ANY, got "DNS"' },
  ]);
});

test('reject: missing metadata.name', () => {
  assert.deepEqual(rejected('missing-name.yaml'), [{ document: 1, policy: 'CiliumNetworkPolicy', path: 'metadata.name', reason: 'is required' }]);
});

test('reject: wrong apiVersion', () => {
  assert.deepEqual(rejected('wrong-apiversion.yaml'), [
    { document: 1, policy: 'CiliumNetworkPolicy default/old', path: 'apiVersion', reason: 'must be cilium.io/v2 for kind CiliumNetworkPolicy, got "cilium.io/v1"' },
  ]);
});

test('reject: wrong kind', () => {
  assert.deepEqual(rejected('wrong-kind.yaml'), [
    {
      document: 1,
      path: '',
      reason: 'holds no policy (CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy or NetworkPolicy); skipped: Deployment web (apps/v1), document 1',
    },
  ]);
});

test('reject: a named port that is no Kubernetes port name, or names a range, in a NetworkPolicy', () => {
  const issue = (path: string, reason: string) => ({ document: 1, policy: 'NetworkPolicy shop/named', path: `spec.ingress[0].ports${path}`, reason });
  assert.deepEqual(rejected('named-port.yaml'), [
    issue('[1].port', '"HTTP" is neither a port number nor a port name: a port name must be lower case letters, digits and -'),
    issue('[2].port', '"-http" is neither a port number nor a port name: a port name must be lower case letters, digits and -'),
    issue('[3].port', '"web--1" is neither a port number nor a port name: a port name must contain a letter and no "--"'),
    issue('[4].port', '"a-very-long-name-x" is neither a port number nor a port name: a port name must be at most 15 characters'),
    issue('[5].port', '"http_alt" is neither a port number nor a port name: a port name must be lower case letters, digits and -'),
    issue('[6].endPort', 'may not be specified with a named port ("http"); give the range by number'),
  ]);
});

test('reject: every problem of every document is listed', () => {
  const issues = rejected('many.yaml');
  assert.deepEqual(
    issues.map((i) => `${i.document} ${i.path}: ${i.reason}`),
    [
      '1 spec.nodeSelector: not supported yet (host policies); select endpoints with endpointSelector',
      '2 spec.endpointSelector: a CiliumNetworkPolicy in namespace default only selects endpoints of default; it cannot select namespace "other"',
      '2 spec.egress[0].toServices[0].k8sService.serviceName: required: the name of the service',
      '2 spec.egress[0].toEntities[0]: unknown entity "planet" (one of all, world, world-ipv4, world-ipv6, cluster, host, remote-node, kube-apiserver, ingress, init, health, unmanaged, none)',
      '2 spec.egress[1].toPorts[0].ports[0].endPort: must be at least port (1000), got 999',
      '2 spec.egress[1].icmps[0].fields[0].type: must be an ICMP type 0–255 or one of its names (e.g. EchoRequest, DestinationUnreachable), got number 300',
      '2 spec.egressDeny[0].toPorts[0].rules: deny rules accept only ports',
      '2 spec.egressDeny[0].toPorts[0].ports[0].protocol: must be upper case: TCP, got "tcp"',
      '3 spec.podSelector.matchLabels.version: label value must be a string, got number 2 (quote it)',
      '3 spec.ingress: has rules but policyTypes does not list Ingress (Kubernetes would ignore them); add Ingress to policyTypes or remove the rules',
      '3 spec.ingress[0].from[0].ipBlock: may not be combined with podSelector or namespaceSelector in one peer; make them separate peers',
      '3 spec.ingress[1].from[0]: must set podSelector, namespaceSelector or ipBlock',
    ],
  );
  assert.deepEqual(
    [...new Set(issues.map((i) => i.policy))],
    ['CiliumClusterwideNetworkPolicy ccnp', 'CiliumNetworkPolicy default/deny-l7', 'NetworkPolicy default/knp'],
  );
});

test('reject: YAML syntax errors and duplicate keys, per document', () => {
  const issues = rejected('yaml-syntax.yaml');
  assert.ok(issues.length >= 2);
  for (const issue of issues) {
    assert.equal(issue.document, 2);
    assert.equal(issue.path, '');
    assert.match(issue.reason, /^YAML syntax error: /);
  }
  assert.match(issues[0].reason, /Map keys must be unique at line 12/);
});

/** Parses inline YAML that must be rejected; returns `path: reason` lines. */
function problems(yaml: string): string[] {
  try {
    parsePolicyYaml(yaml, { file: 'inline.yaml' });
  } catch (error) {
    assert.ok(error instanceof PolicyValidationError);
    return error.issues.map((i) => `${i.path}: ${i.reason}`);
  }
  assert.fail('not rejected');
}

const cnp = (spec: string) => `apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: t}\nspec:\n${spec}`;

test('reject: other out-of-scope fields are named, never ignored', () => {
  const cases: Array<[string, string]> = [
    ['  endpointSelector: {}\n  egress:\n  - toGroups: [{aws: {securityGroupsIds: [sg-1]}}]', 'spec.egress[0].toGroups'],
    ['  endpointSelector: {}\n  ingress:\n  - fromNodes: [{}]', 'spec.ingress[0].fromNodes'],
    ['  endpointSelector: {}\n  ingress:\n  - fromEndpoints: [{}]\n    authentication: {mode: required}', 'spec.ingress[0].authentication'],
    ['  endpointSelector: {}\n  egress:\n  - toPorts: [{ports: [{port: "443"}], serverNames: [a.com]}]', 'spec.egress[0].toPorts[0].serverNames'],
    ['  endpointSelector: {}\n  egress:\n  - toPorts: [{ports: [{port: "443"}], originatingTLS: {secret: {name: s}}}]', 'spec.egress[0].toPorts[0].originatingTLS'],
    ['  endpointSelector: {}\n  egress:\n  - toPorts: [{ports: [{port: "443"}], terminatingTLS: {secret: {name: s}}}]', 'spec.egress[0].toPorts[0].terminatingTLS'],
    ['  endpointSelector: {}\n  egress:\n  - toPorts: [{ports: [{port: "443"}], listener: {name: l, envoyConfig: {name: c}}}]', 'spec.egress[0].toPorts[0].listener'],
    ['  endpointSelector: {}\n  egress:\n  - toCIDRSet: [{cidrGroupRef: my-group}]', 'spec.egress[0].toCIDRSet[0].cidrGroupRef'],
    ['  endpointSelector: {}\n  egressDeny:\n  - toFQDNs: [{matchName: a.com}]', 'spec.egressDeny[0].toFQDNs'],
    ['  endpointSelector: {}\n  egress:\n  - toPorts: [{ports: [{port: "8080"}], rules: {l7proto: envoy.filters.network.x, l7: [{a: b}]}}]', 'spec.egress[0].toPorts[0].rules.l7proto'],
    ['  endpointSelector: {}\n  log: {value: x}', 'spec.log'],
  ];
  for (const [spec, path] of cases) {
    const found = problems(cnp(spec));
    assert.equal(found.length, 1, `${path}: ${found.join(' | ')}`);
    assert.ok(found[0].startsWith(`${path}: `), found[0]);
    assert.match(found[0], /not supported|not allowed|deprecated/);
  }
});

test('reject: field-level validation', () => {
  const cases: Array<[string, string]> = [
    ['  ingress: []', 'spec.endpointSelector: is required ({} selects every endpoint)'],
    ['  endpointSelector: {matchLabels: {app: web}, matchExpression: []}', 'spec.endpointSelector.matchExpression: unknown field "matchExpression" (did you mean "matchExpressions"?)'],
    ['  endpointSelector: {matchExpressions: [{key: a, operator: in, values: [x]}]}', 'spec.endpointSelector.matchExpressions[0].operator: must be one of In, NotIn, Exists, DoesNotExist, got "in" (operators are case-sensitive; write "In")'],
    ['  endpointSelector: {matchExpressions: [{key: a, operator: In}]}', 'spec.endpointSelector.matchExpressions[0].values: must list at least one value for operator In'],
    ['  endpointSelector: {matchExpressions: [{key: a, operator: Exists, values: [x]}]}', 'spec.endpointSelector.matchExpressions[0].values: must be empty for operator Exists'],
    ['  endpointSelector: {}\n  ingress:\n  - fromEndpoints: []', 'spec.ingress[0].fromEndpoints: an empty list selects no peer (Cilium then ignores the whole rule); remove the field, or use [{}]'],
    ['  endpointSelector: {}\n  ingress:\n  - fromEndpoints:\n    -', 'spec.ingress[0].fromEndpoints[0]: must be a selector ({} selects everything), got null'],
    ['  endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: [{port: "0x5_0"}]}]', 'spec.ingress[0].toPorts[0].ports[0].port: "0x5_0" is neither a port number (1–65535) nor a port name: a port name must be lower case letters, digits and -'],
    ['  endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: [{port: "-1"}]}]', 'spec.ingress[0].toPorts[0].ports[0].port: "-1" is neither a port number (1–65535) nor a port name: a port name must be lower case letters, digits and -'],
    ['  endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: [{port: "80-"}]}]', 'spec.ingress[0].toPorts[0].ports[0].port: "80-" is neither a port number (1–65535) nor a port name: a port name must be lower case letters, digits and -'],
    ['  endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: [{port: ""}]}]', 'spec.ingress[0].toPorts[0].ports[0].port: "" is neither a port number (1–65535) nor a port name: a port name must not be empty'],
    ['  endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: [{port: http, endPort: 90}]}]', 'spec.ingress[0].toPorts[0].ports[0].endPort: may not be specified with a named port ("http"); give the range by number'],
    ['  endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: [{port: "080"}]}]', 'spec.ingress[0].toPorts[0].ports[0].port: "080": a port number must not have leading zeros'],
    ['  endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: [{port: 80, protocol: ICMP}]}]', 'spec.ingress[0].toPorts[0].ports[0].protocol: ICMP is matched with icmps (e.g. icmps: [{fields: [{type: 8}]}]), not with a port protocol'],
    ['  endpointSelector: {}\n  ingress:\n  - toPorts: [{ports: [{port: 0, endPort: 10}]}]', 'spec.ingress[0].toPorts[0].ports[0].endPort: needs a non-zero port to start the range'],
    ['  endpointSelector: {}\n  ingress:\n  - toPorts: [{}]', 'spec.ingress[0].toPorts[0].ports: must list at least one port'],
    ['  endpointSelector: {}\n  ingress:\n  - fromCIDR: [10.0.0.0/33]', 'spec.ingress[0].fromCIDR[0]: "10.0.0.0/33": prefix length must be 0–32'],
    ['  endpointSelector: {}\n  ingress:\n  - fromCIDRSet: [{except: [10.0.0.0/8]}]', 'spec.ingress[0].fromCIDRSet[0].cidr: is required'],
    ['  endpointSelector: {}\n  ingress:\n  - fromCIDRSet: [{cidr: "2001:db8::/32", except: [10.0.0.0/8]}]', 'spec.ingress[0].fromCIDRSet[0].except[0]: 10.0.0.0/8 is not inside 2001:db8::/32'],
    ['  endpointSelector: {}\n  enableDefaultDeny: {ingress: "yes"}', 'spec.enableDefaultDeny.ingress: must be true or false, got "yes"'],
    ['  endpointSelector: {}\n  icmps: []', 'spec.icmps: unknown field "icmps"'],
  ];
  for (const [spec, expected] of cases) assert.deepEqual(problems(cnp(spec)), [expected]);
});

test('reject: hints for mistakes of published examples (a lost indent, a retired apiVersion, a protocol without ports)', () => {
  const cases: Array<[string, string[]]> = [
    // The label fell out of an empty matchLabels; Kubernetes would drop it and leave {}.
    [
      '  endpointSelector: {}\n  ingress:\n  - fromEndpoints:\n    - matchLabels:\n      role: frontend',
      ['spec.ingress[0].fromEndpoints[0].role: unknown field "role": matchLabels is empty; indent the label "role" under it (dropped, it would leave {}, which selects everything)'],
    ],
    ['  endpointSelector: {app: web}', ['spec.endpointSelector.app: unknown field "app": a label goes under matchLabels']],
    // No "port is required" beside it: VRRP has no ports, and the protocol is what is refused.
    ['  endpointSelector: {}\n  egress:\n  - toPorts: [{ports: [{protocol: VRRP}]}]', ['spec.egress[0].toPorts[0].ports[0].protocol: VRRP is not supported yet (IP protocols without ports)']],
    ['  endpointSelector: {}\n  egress:\n  - toPorts: [{ports: [{protocol: TCP}]}]', ['spec.egress[0].toPorts[0].ports[0].port: is required (use 0 with a protocol for every port)']],
  ];
  for (const [spec, expected] of cases) assert.deepEqual(problems(cnp(spec)), expected);
  assert.deepEqual(problems('apiVersion: extensions/v1beta1\nkind: NetworkPolicy\nmetadata: {name: a}\nspec: {podSelector: {}}'), [
    'apiVersion: must be networking.k8s.io/v1 for kind NetworkPolicy, got "extensions/v1beta1" (Kubernetes 1.16 removed it; the fields are the same, change only apiVersion)',
  ]);
});

test('reject: metadata and document shape', () => {
  assert.deepEqual(problems('apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: Bad_Name}\nspec: {endpointSelector: {}}'), [
    `metadata.name: "Bad_Name" is not a valid name (lower-case letters, digits, '-' and '.', at most 253)`,
  ]);
  assert.deepEqual(problems('apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a}'), ['spec: is required (or a non-empty specs list)']);
  // path '' = the whole document
  assert.deepEqual(problems('- a\n- b'), [': must be a policy object (a mapping with apiVersion and kind), got a list']);
  assert.deepEqual(problems('kind: CiliumNetworkPolicy\nmetadata: {name: a}'), ['apiVersion: is required']);
  assert.deepEqual(problems('apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a}\nspec: {}\nextra: 1'), ['extra: unknown field "extra"']);
  assert.deepEqual(
    problems('apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a}\nspec: {endpointSelector: {}}\n---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a, namespace: default}\nspec: {endpointSelector: {matchLabels: {app: b}}}'),
    ['metadata.name: duplicate policy: document 1 defines it too, differently'],
  );
  assert.deepEqual(problems('apiVersion: v1\nkind: List\nitems:\n- apiVersion: apps/v1\n  kind: Deployment\n  metadata: {name: a}'), [
    ': holds no policy (CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy or NetworkPolicy); skipped: Deployment a (apps/v1), document 1 items[0]',
  ]);
});

test('reject: NetworkPolicy field validation', () => {
  const knp = (spec: string) => `apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: t, namespace: ns}\nspec:\n${spec}`;
  const cases: Array<[string, string]> = [
    ['  podSelector: {}\n  ingress:\n  - ports: [{protocol: ICMP}]', 'spec.ingress[0].ports[0].protocol: must be one of TCP, UDP, SCTP, got "ICMP"'],
    ['  podSelector: {}\n  ingress:\n  - ports: [{port: 0}]', 'spec.ingress[0].ports[0].port: must be 1–65535, got 0'],
    ['  podSelector: {}\n  ingress:\n  - ports: [{endPort: 90}]', 'spec.ingress[0].ports[0].endPort: may not be specified without port'],
    ['  podSelector: {}\n  policyTypes: [Ingres]', 'spec.policyTypes[0]: must be Ingress or Egress, got "Ingres"'],
    ['  podSelector: {matchLabels: {"k8s:app": web}}', 'spec.podSelector.matchLabels.k8s:app: label key "k8s:app": name must be at most 63 characters of [A-Za-z0-9-_.], alphanumeric at both ends'],
    ['  podSelector: {}\n  egress:\n  - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [192.168.0.0/16]}}]', 'spec.egress[0].to[0].ipBlock.except[0]: 192.168.0.0/16 is not inside 10.0.0.0/8'],
    ['  podSelector: {}\n  ingress:\n  - from: [{podSelector: {}}]\n    port: 80', 'spec.ingress[0].port: unknown field "port" (did you mean "ports"?)'],
  ];
  for (const [spec, expected] of cases) assert.deepEqual(problems(knp(spec)), [expected]);
});

test('reject: a YAML alias bomb is refused while it expands, naming the file, the document and the limit', () => {
  let bomb = 'a: &a [x, x, x, x, x, x, x, x, x]\n';
  for (let i = 0, previous = 'a'; i < 9; previous = `b${i}`, i++) bomb += `b${i}: &b${i} [${Array(9).fill(`*${previous}`).join(', ')}]\n`;
  const text = `apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: { name: ok }\nspec: { endpointSelector: {} }\n---\n${bomb}`;
  const began = performance.now();
  assert.throws(
    () => parsePolicyYaml(text, { file: 'bomb.yaml' }),
    (error: unknown) =>
      PolicyValidationError.is(error) &&
      error.issues.length === 1 &&
      error.issues[0].file === 'bomb.yaml' &&
      error.issues[0].document === 2 &&
      /aliases expand past the limit of 100/.test(error.issues[0].reason),
  );
  assert.ok(performance.now() - began < 1000, 'refused before expanding');
});

test('toServices: a service by name or by label, scoped to the policy\'s namespace unless named', () => {
  const [rule] = parsePolicyYaml(
    `apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: t, namespace: shop}\nspec:\n  endpointSelector: {}\n  egress:\n  - toServices:\n    - k8sService: {serviceName: web}\n    - k8sService: {serviceName: db, namespace: data}\n    - k8sServiceSelector: {selector: {matchLabels: {tier: front}}}\n    toPorts: [{ports: [{port: "7000", protocol: TCP}]}]`,
    { file: 'inline.yaml' },
  );
  assert.deepEqual(rule.egress[0].services, [
    { namespace: 'shop', name: 'web' },
    { namespace: 'data', name: 'db' },
    { namespace: 'shop', selector: { matchLabels: { 'any:tier': 'front' }, matchExpressions: [] } },
  ]);
  assert.equal(rule.egress[0].endpoints, undefined, 'ports with toServices are not ports to every peer');
  assert.deepEqual(rule.egress[0].ports, [{ port: 7000, protocol: 'TCP' }]);
});

test('reject: bad toServices items name the field and the reason', () => {
  const egress = (item: string) => cnp(`  endpointSelector: {}\n  egress:\n  - toServices:\n    - ${item}`);
  assert.deepEqual(problems(egress('k8sService: {namespace: default}')), ['spec.egress[0].toServices[0].k8sService.serviceName: required: the name of the service']);
  assert.deepEqual(problems(egress('k8sService: {serviceName: Web_1}')), ['spec.egress[0].toServices[0].k8sService.serviceName: "Web_1" is not a service name (a DNS label)']);
  assert.deepEqual(problems(egress('{}')), ['spec.egress[0].toServices[0]: must have k8sService (a service by name) or k8sServiceSelector (services by label)']);
  assert.deepEqual(problems(egress('{k8sService: {serviceName: a}, k8sServiceSelector: {selector: {}}}')), [
    'spec.egress[0].toServices[0]: k8sService and k8sServiceSelector may not be combined in one item; make them separate items',
  ]);
  assert.deepEqual(problems(egress('k8sServiceSelector: {namespace: default}')), ['spec.egress[0].toServices[0].k8sServiceSelector.selector: required: the labels of the services ({} selects every service)']);
  assert.deepEqual(problems(cnp('  endpointSelector: {}\n  egress:\n  - toServices: []')), ['spec.egress[0].toServices: an empty list selects no service; remove the field or name a service']);
  const ccnp = `apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: t}\nspec:\n  endpointSelector: {}\n  egress:\n  - toServices:\n    - k8sService: {serviceName: web}`;
  assert.deepEqual(problems(ccnp), ['spec.egress[0].toServices[0].k8sService.namespace: required in a clusterwide policy: the namespace of the service']);
  const ingress = cnp('  endpointSelector: {}\n  ingress:\n  - toServices: [{k8sService: {serviceName: web}}]');
  assert.equal(problems(ingress).length, 1);
  assert.match(problems(ingress)[0], /^spec\.ingress\[0\]\.toServices: /);
});
