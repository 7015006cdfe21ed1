/**
 * fromRequires / toRequires: parsing (scoping, errors) and enforcement (requirements of every
 * rule selecting an endpoint narrow the endpoint peers of every rule of that kind and direction).
 * @module
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parsePolicyYaml, PolicyValidationError } from './index.ts';
import { PolicyEngine } from './engine.ts';
import { reservedIdentityInfos } from './selector-cache.ts';
import { POD_NAMESPACE_LABEL as NS, type PolicyRule } from './types.ts';
import type { PolicyMapEntry } from './policy-map.ts';

const cnp = (name: string, spec: string, kind = 'CiliumNetworkPolicy') =>
  `apiVersion: cilium.io/v2\nkind: ${kind}\nmetadata: {name: ${name}${kind === 'CiliumNetworkPolicy' ? ', namespace: default' : ''}}\nspec:\n${spec}`;
const parse = (yaml: string): PolicyRule[] => parsePolicyYaml(yaml, { file: 'inline.yaml' });

function problems(yaml: string): string[] {
  try {
    parse(yaml);
  } catch (error) {
    assert.ok(error instanceof PolicyValidationError);
    return error.issues.map((i) => `${i.path}: ${i.reason}`);
  }
  assert.fail('not rejected');
}

test('requires: parsed into PeerRule.requires, scoped like fromEndpoints/toEndpoints', () => {
  const [rule] = parse(
    cnp(
      'r',
      [
        '  endpointSelector: {matchLabels: {app: server}}',
        '  ingress:',
        '  - fromRequires: [{matchLabels: {env: prod}}, {matchLabels: {"reserved:host": ""}}]',
        '  egress:',
        '  - toRequires: [{matchExpressions: [{key: env, operator: In, values: [prod]}]}]',
        '    toEndpoints: [{matchLabels: {app: db}}]',
        '  ingressDeny:',
        '  - fromRequires: [{matchLabels: {env: dev}}]',
        '    fromEndpoints: [{}]',
        '  egressDeny:',
        '  - toRequires: [{matchLabels: {io.kubernetes.pod.namespace: other, env: dev}}]',
        '    toEndpoints: [{}]',
      ].join('\n'),
    ),
  );
  assert.deepEqual(rule.ingress[0].requires, [
    { matchLabels: { 'any:env': 'prod', [NS]: 'default' }, matchExpressions: [] },
    // Unlike a peer selector, a requirement on reserved labels is scoped too (as in Cilium).
    { matchLabels: { 'reserved:host': '', [NS]: 'default' }, matchExpressions: [] },
  ]);
  assert.equal(rule.ingress[0].endpoints, undefined);
  assert.deepEqual(rule.egress[0].requires, [{ matchLabels: { [NS]: 'default' }, matchExpressions: [{ key: 'any:env', operator: 'In', values: ['prod'] }] }]);
  assert.deepEqual(rule.ingressDeny[0].requires, [{ matchLabels: { 'any:env': 'dev', [NS]: 'default' }, matchExpressions: [] }]);
  assert.deepEqual(rule.egressDeny[0].requires, [{ matchLabels: { 'any:io.kubernetes.pod.namespace': 'other', 'any:env': 'dev' }, matchExpressions: [] }]);

  const [cw] = parse(cnp('c', '  endpointSelector: {}\n  ingress:\n  - fromRequires: [{matchLabels: {env: prod}}]', 'CiliumClusterwideNetworkPolicy'));
  assert.deepEqual(cw.ingress[0].requires, [{ matchLabels: { 'any:env': 'prod' }, matchExpressions: [{ key: NS, operator: 'Exists', values: [] }] }]);

  // A ports-only rule's implied wildcard is marked: requirements do not narrow it.
  const [portsOnly] = parse(cnp('p', '  endpointSelector: {}\n  ingress:\n  - fromRequires: [{matchLabels: {env: prod}}]\n    toPorts: [{ports: [{port: "80"}]}]'));
  assert.equal(portsOnly.ingress[0].portsOnly, true);
  assert.deepEqual(portsOnly.ingress[0].endpoints, [{ matchLabels: {}, matchExpressions: [] }]);
});

test('requires: malformed requirements are reported by file and field, and nothing is applied', () => {
  assert.deepEqual(problems(cnp('r', '  endpointSelector: {}\n  ingress:\n  - fromRequires: [{matchExpressions: [{key: env, operator: in, values: [prod]}]}]')), [
    'spec.ingress[0].fromRequires[0].matchExpressions[0].operator: must be one of In, NotIn, Exists, DoesNotExist, got "in" (operators are case-sensitive; write "In")',
  ]);
  assert.deepEqual(problems(cnp('r', '  endpointSelector: {}\n  egress:\n  - toRequires: [null]')), ['spec.egress[0].toRequires[0]: must be a selector ({} selects everything), got null']);
  const notList = problems(cnp('r', '  endpointSelector: {}\n  ingress:\n  - fromRequires: {matchLabels: {env: prod}}'));
  assert.equal(notList.length, 1);
  assert.match(notList[0], /^spec\.ingress\[0\]\.fromRequires: /);
  // Egress has toRequires, not fromRequires.
  const wrongSide = problems(cnp('r', '  endpointSelector: {}\n  egress:\n  - fromRequires: [{}]'));
  assert.equal(wrongSide.length, 1);
  assert.match(wrongSide[0], /^spec\.egress\[0\]\.fromRequires: unknown field/);
  // The whole file is refused, the valid policy in it too.
  try {
    parsePolicyYaml(`${cnp('ok', '  endpointSelector: {}\n  ingress:\n  - fromEndpoints: [{}]')}\n---\n${cnp('bad', '  endpointSelector: {}\n  ingress:\n  - fromRequires: [{matchLabels: {"": x}}]')}`, {
      file: 'two.yaml',
    });
    assert.fail('not rejected');
  } catch (error) {
    assert.ok(error instanceof PolicyValidationError);
    assert.equal(error.issues.length, 1);
    assert.equal(error.issues[0].file, 'two.yaml');
    assert.match(error.issues[0].path, /^spec\.ingress\[0\]\.fromRequires\[0\]/);
  }
});

const pod = (labels: Record<string, string>) => Object.fromEntries([...Object.entries(labels).map(([k, v]) => [`k8s:${k}`, v]), [NS, 'default']]);
const LABELS = {
  server: pod({ app: 'server' }),
  clientProd: pod({ app: 'client', env: 'prod' }),
  clientDev: pod({ app: 'client', env: 'dev' }),
  dbProd: pod({ app: 'db', env: 'prod' }),
  dbDev: pod({ app: 'db', env: 'dev' }),
};
const ID = { server: 300, clientProd: 301, clientDev: 302, dbProd: 303, dbDev: 304 };
const EP = { server: 1, clientProd: 2, clientDev: 3 };

function engineWith(...yamls: string[]): PolicyEngine {
  const engine = new PolicyEngine({ identities: [...reservedIdentityInfos(), ...Object.entries(ID).map(([k, id]) => ({ id, labels: LABELS[k as keyof typeof ID] }))] });
  engine.upsertEndpoint(EP.server, LABELS.server);
  engine.upsertEndpoint(EP.clientProd, LABELS.clientProd);
  engine.upsertEndpoint(EP.clientDev, LABELS.clientDev);
  for (const y of yamls) engine.upsertRules(parse(y));
  return engine;
}

const requireProd = cnp('require-prod', '  endpointSelector: {matchLabels: {app: server}}\n  ingress:\n  - fromRequires: [{matchLabels: {env: prod}}]');
const allowClients = cnp(
  'allow-clients',
  '  endpointSelector: {matchLabels: {app: server}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: client}}]\n    toPorts: [{ports: [{port: "80", protocol: TCP}]}]',
);
const toServer = (engine: PolicyEngine, from: number, dport = 80) => engine.trace({ src: { identity: from }, dst: { endpoint: EP.server }, dport }).allowed;

test('requires: a requirement of one policy narrows the allows of another for the same endpoint', () => {
  const engine = engineWith(requireProd, allowClients);
  assert.equal(toServer(engine, ID.clientProd), true);
  assert.equal(toServer(engine, ID.clientDev), false);
  assert.match(engine.trace({ src: { identity: ID.clientDev }, dst: { endpoint: EP.server }, dport: 80 }).reason, /denied by default/);
  assert.deepEqual([...engine.endpointPolicy(EP.server)!.entries.keys()].sort(), ['0/1/0/0/40', `${ID.clientProd}/0/6/80/64`]);
  // Without the requirement both clients get in.
  const without = engineWith(allowClients);
  assert.equal(toServer(without, ID.clientDev), true);
  // Deleting the requiring policy lifts the requirement.
  engine.deleteRules(['CiliumNetworkPolicy/default/require-prod']);
  assert.equal(toServer(engine, ID.clientDev), true);
});

test('requires: a requirement alone allows nothing (it turns default deny on)', () => {
  const engine = engineWith(requireProd);
  const policy = engine.endpointPolicy(EP.server)!;
  assert.equal(policy.ingressEnforced, true);
  assert.deepEqual([...policy.entries.keys()], ['0/1/0/0/40']);
  assert.equal(toServer(engine, ID.clientProd), false);
  // A requirement beside ports in the same rule narrows nothing there: Cilium adds the implied
  // wildcard of a ports-only rule after the requirements.
  const ports = engineWith(cnp('r', '  endpointSelector: {matchLabels: {app: server}}\n  ingress:\n  - fromRequires: [{matchLabels: {env: prod}}]\n    toPorts: [{ports: [{port: "80", protocol: TCP}]}]'));
  assert.equal(toServer(ports, ID.clientDev), true);
});

test('requires: toRequires narrows egress allows the same way', () => {
  const egress = cnp(
    'egress',
    [
      '  endpointSelector: {matchLabels: {app: client}}',
      '  egress:',
      '  - toRequires: [{matchLabels: {env: prod}}]',
      '  - toEndpoints: [{matchLabels: {app: db}}]',
      '    toPorts: [{ports: [{port: "5432", protocol: TCP}]}]',
    ].join('\n'),
  );
  const engine = engineWith(egress);
  const toDb = (db: number) => engine.trace({ src: { endpoint: EP.clientDev }, dst: { identity: db }, dport: 5432 });
  assert.equal(toDb(ID.dbProd).allowed, true);
  const denied = toDb(ID.dbDev);
  assert.equal(denied.allowed, false);
  assert.equal(denied.decidedBy, 'egress');
  // The requirement alone: nothing else allowed.
  assert.equal(engine.trace({ src: { endpoint: EP.clientDev }, dst: { identity: ID.server }, dport: 5432 }).allowed, false);
});

test('requires: entities, CIDRs and ports-only rules are not narrowed; HTTP allows are', () => {
  const allowMore = cnp(
    'more',
    [
      '  endpointSelector: {matchLabels: {app: server}}',
      '  ingress:',
      '  - fromEntities: [world]',
      '  - fromCIDR: [192.0.2.0/24]',
      '  - toPorts: [{ports: [{port: "8080", protocol: TCP}]}]',
      '  - fromEndpoints: [{matchLabels: {app: client}}]',
      '    toPorts: [{ports: [{port: "81", protocol: TCP}], rules: {http: [{method: GET}]}}]',
    ].join('\n'),
  );
  const engine = engineWith(requireProd, allowMore);
  assert.equal(engine.trace({ src: { cidr: '198.51.100.1' }, dst: { endpoint: EP.server }, dport: 443 }).allowed, true);
  assert.equal(engine.trace({ src: { cidr: '192.0.2.7' }, dst: { endpoint: EP.server }, dport: 443 }).allowed, true);
  assert.equal(toServer(engine, ID.clientDev, 8080), true);
  assert.equal(toServer(engine, ID.clientDev, 81), false);
  const prod81 = engine.trace({ src: { identity: ID.clientProd }, dst: { endpoint: EP.server }, dport: 81 });
  assert.equal(prod81.allowed, true);
  assert.match(prod81.reason, /node proxy/);
});

test('requires: deny requirements narrow deny rules only; allow requirements leave denies alone', () => {
  const denyDevClients = cnp(
    'deny',
    [
      '  endpointSelector: {matchLabels: {app: server}}',
      '  ingressDeny:',
      '  - fromEndpoints: [{matchLabels: {app: client}}]',
      '    fromRequires: [{matchLabels: {env: dev}}]',
      '  ingress:',
      '  - fromEndpoints: [{matchLabels: {app: client}}]',
    ].join('\n'),
  );
  const engine = engineWith(denyDevClients);
  assert.equal(toServer(engine, ID.clientProd), true);
  const dev = engine.trace({ src: { identity: ID.clientDev }, dst: { endpoint: EP.server }, dport: 80 });
  assert.equal(dev.allowed, false);
  assert.match(dev.reason, /explicitly denied/);
  // An allow requirement does not narrow a deny: the deny of every client still denies prod.
  const both = engineWith(
    requireProd,
    cnp('deny-all-clients', '  endpointSelector: {matchLabels: {app: server}}\n  ingressDeny:\n  - fromEndpoints: [{matchLabels: {app: client}}]\n  ingress:\n  - fromEndpoints: [{}]'),
  );
  assert.match(both.trace({ src: { identity: ID.clientProd }, dst: { endpoint: EP.server }, dport: 80 }).reason, /explicitly denied/);
  assert.equal(toServer(both, ID.server), false, 'the server itself has no env=prod');
});

const sortedEntries = (entries: ReadonlyMap<string, PolicyMapEntry>) =>
  [...entries.values()].map((e) => `${e.key.identity}/${e.key.direction}/${e.key.protocol}/${e.key.port}/${e.key.prefixLen} ${e.deny ? 'deny' : 'allow'}`).sort();

test('requires: identity changes keep the map as a full recompute has it (a NetworkPolicy wildcard is narrowed too)', () => {
  // A NetworkPolicy without `from` lists the empty selector as its peer, which a requirement narrows.
  const knp = `apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: any, namespace: default}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  ingress:\n  - {}`;
  const engine = engineWith(requireProd, allowClients, knp);
  assert.equal(toServer(engine, ID.clientDev, 9000), false);
  assert.equal(toServer(engine, ID.clientProd, 9000), true);
  const check = () => {
    const fresh = new PolicyEngine({ identities: [...engine.cache.identities()].map(([id, labels]) => ({ id, labels })) });
    fresh.upsertEndpoint(EP.server, LABELS.server);
    fresh.upsertRules(engine.rules());
    assert.deepEqual(sortedEntries(engine.endpointPolicy(EP.server)!.entries), sortedEntries(fresh.endpointPolicy(EP.server)!.entries));
  };
  check();
  // dev becomes prod: now allowed, by the client rule and the NetworkPolicy's wildcard.
  const update = engine.upsertIdentity(ID.clientDev, pod({ app: 'client', env: 'prod' }));
  assert.ok(update.endpoints.has(EP.server));
  assert.equal(toServer(engine, ID.clientDev), true);
  assert.equal(toServer(engine, ID.clientDev, 9000), true);
  check();
  // A new prod identity gets in through the wildcard alone; a new dev one does not.
  engine.upsertIdentity(310, pod({ app: 'batch', env: 'prod' }));
  engine.upsertIdentity(311, pod({ app: 'batch', env: 'dev' }));
  assert.equal(toServer(engine, 310, 9000), true);
  assert.equal(toServer(engine, 311, 9000), false);
  check();
  // And back: prod loses its label.
  engine.upsertIdentity(ID.clientProd, pod({ app: 'client' }));
  assert.equal(toServer(engine, ID.clientProd), false);
  check();
  engine.deleteIdentity(310);
  check();
});
