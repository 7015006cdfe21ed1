import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { loadPolicyFileSync } from './load.ts';
import { PolicyEngine } from './engine.ts';
import { reservedIdentityInfos, cidrIdentityLabels, SelectorCache } from './selector-cache.ts';
import { diffEntries, resolveEndpointPolicy } from './resolve.ts';
import { PolicyVerdict, policyKeyString, type PolicyMapEntry } from './policy-map.ts';
import { POD_NAMESPACE_LABEL, type PolicyRule } from './types.ts';
import { BpfPolicyLookup } from './testdata/bpf-lookup.ts';

const fixture = (name: string) => join(import.meta.dirname, 'testdata', name);
const NS = POD_NAMESPACE_LABEL;
const deathstar = { 'k8s:org': 'empire', 'k8s:class': 'deathstar', [NS]: 'default' };
const tiefighter = { 'k8s:org': 'empire', 'k8s:class': 'tiefighter', [NS]: 'default' };
const xwing = { 'k8s:org': 'alliance', 'k8s:class': 'xwing', [NS]: 'default' };
const ID = { tiefighter: 260, xwing: 261, deathstar: 262 };
const EP = { deathstar: 1, tiefighter: 2, xwing: 3 };

function starWars(): PolicyEngine {
  const engine = new PolicyEngine({
    identities: [
      ...reservedIdentityInfos(),
      { id: ID.tiefighter, labels: tiefighter },
      { id: ID.xwing, labels: xwing },
      { id: ID.deathstar, labels: deathstar },
    ],
  });
  engine.upsertEndpoint(EP.deathstar, deathstar);
  engine.upsertEndpoint(EP.tiefighter, tiefighter);
  engine.upsertEndpoint(EP.xwing, xwing);
  engine.upsertRules(loadPolicyFileSync(fixture('sw-l3-l4-policy.yaml')));
  return engine;
}

const keysOf = (entries: Iterable<PolicyMapEntry>) => [...entries].map((e) => policyKeyString(e.key)).sort();

test('Star Wars: only the empire reaches the deathstar on 80/TCP (real BPF lookup)', () => {
  const engine = starWars();
  const policy = engine.endpointPolicy(EP.deathstar)!;
  assert.equal(policy.ingressEnforced, true);
  assert.equal(policy.egressEnforced, false);
  // tiefighter and the deathstar itself are org=empire; egress is allow-all.
  assert.deepEqual([...policy.entries.keys()].sort(), ['0/1/0/0/40', '260/0/6/80/64', '262/0/6/80/64']);
  using bpf = new BpfPolicyLookup();
  bpf.load(policy.entries.values());
  assert.equal(bpf.query(ID.tiefighter, 0, 6, 80).verdict, PolicyVerdict.ALLOWED);
  assert.equal(bpf.query(ID.tiefighter, 0, 6, 80).cookie, engine.ruleId('CiliumNetworkPolicy/default/rule1'));
  assert.equal(bpf.query(ID.xwing, 0, 6, 80).verdict, PolicyVerdict.DENIED_DEFAULT);
  assert.equal(bpf.query(ID.tiefighter, 0, 6, 81).verdict, PolicyVerdict.DENIED_DEFAULT);
  assert.equal(bpf.query(ID.tiefighter, 0, 17, 80).verdict, PolicyVerdict.DENIED_DEFAULT);
  // Unselected endpoints stay allow-all both ways.
  assert.deepEqual([...engine.endpointPolicy(EP.xwing)!.entries.keys()].sort(), ['0/0/0/0/40', '0/1/0/0/40']);
});

test('Star Wars: tracePolicy explains each verdict', () => {
  const engine = starWars();
  const ok = engine.trace({ src: { endpoint: EP.tiefighter }, dst: { endpoint: EP.deathstar }, dport: 80, protocol: 'TCP' });
  assert.equal(ok.allowed, true);
  assert.equal(ok.decidedBy, 'ingress');
  assert.deepEqual(ok.ruleKeys, ['CiliumNetworkPolicy/default/rule1']);
  assert.equal(ok.egress?.reason, 'no rule selects the source for egress: allow-all');
  assert.match(ok.ingress!.reason, /^allowed by default\/rule1 \(L3-L4 match: identity 260 on 80\/TCP\)$/);

  const no = engine.trace({ src: { labels: xwing }, dst: { labels: deathstar }, dport: 80 });
  assert.equal(no.allowed, false);
  assert.equal(no.verdict, 'denied');
  assert.equal(no.decidedBy, 'ingress');
  assert.equal(no.reason, 'ingress: denied by default: destination is selected by default/rule1 but no ingress rule allows identity 261 on 80/TCP');

  const port81 = engine.trace({ src: { identity: ID.tiefighter }, dst: { endpoint: EP.deathstar }, dport: 81 });
  assert.equal(port81.allowed, false);
  assert.match(port81.reason, /no ingress rule allows identity 260 on 81\/TCP/);

  // Labels no identity has yet: traced through a placeholder identity.
  const newShip = engine.trace({ src: { labels: { ...tiefighter, 'k8s:class': 'tiebomber' } }, dst: { endpoint: EP.deathstar }, dport: 80 });
  assert.equal(newShip.allowed, true);
  assert.equal(engine.cache.identityCount, 11 + 3, 'the placeholder identity is gone');

  // Explicit deny: a CCNP denying world, traced from an external address.
  engine.upsertRules([
    {
      name: 'deny-world',
      namespace: 'default',
      kind: 'CiliumNetworkPolicy',
      endpointSelector: { matchLabels: { 'any:class': 'deathstar' }, matchExpressions: [] },
      ingress: [],
      egress: [],
      ingressDeny: [{ entities: ['world'] }],
      egressDeny: [],
      enableDefaultDeny: {},
      labels: {},
    },
  ]);
  const world = engine.trace({ src: { cidr: '203.0.113.9' }, dst: { endpoint: EP.deathstar }, dport: 80 });
  assert.equal(world.srcIdentity, 2);
  assert.equal(world.egress, undefined);
  assert.equal(world.allowed, false);
  assert.deepEqual(world.ruleKeys, ['CiliumNetworkPolicy/default/deny-world']);
  assert.match(world.reason, /^ingress: explicitly denied by default\/deny-world/);
});

test('incremental: a new identity matching an existing selector adds only its entries', () => {
  const engine = starWars();
  using bpf = new BpfPolicyLookup();
  bpf.load(engine.endpointPolicy(EP.deathstar)!.entries.values());
  const rev = engine.revision;
  const update = engine.upsertIdentity(263, { 'k8s:org': 'empire', 'k8s:class': 'tiebomber', [NS]: 'default' });
  assert.equal(update.revision, rev + 1);
  assert.deepEqual([...update.endpoints.keys()], [EP.deathstar]);
  const diff = update.endpoints.get(EP.deathstar)!;
  assert.deepEqual(keysOf(diff.upserts), ['263/0/6/80/64']);
  assert.deepEqual(diff.deletes, []);
  assert.equal(bpf.query(263, 0, 6, 80).verdict, PolicyVerdict.DENIED_DEFAULT);
  bpf.apply(diff);
  assert.equal(bpf.query(263, 0, 6, 80).verdict, PolicyVerdict.ALLOWED);

  // An identity no selector picks changes nothing.
  assert.equal(engine.upsertIdentity(264, { 'k8s:org': 'rebels', [NS]: 'default' }).endpoints.size, 0);
  // Relabelling 263 out of the empire removes exactly its entry.
  const out = engine.upsertIdentity(263, { 'k8s:org': 'rebels', [NS]: 'default' }).endpoints.get(EP.deathstar)!;
  assert.deepEqual(out.upserts, []);
  assert.deepEqual(out.deletes.map(policyKeyString), ['263/0/6/80/64']);
  // Deleting an identity deletes its entries.
  const del = engine.deleteIdentity(ID.tiefighter).endpoints.get(EP.deathstar)!;
  assert.deepEqual(del.deletes.map(policyKeyString), ['260/0/6/80/64']);
  assert.ok(engine.revision > rev + 3);
});

test('incremental: changing one rule touches only its entries', () => {
  const engine = starWars();
  const rule2: PolicyRule = {
    name: 'rule2',
    namespace: 'default',
    kind: 'CiliumNetworkPolicy',
    endpointSelector: { matchLabels: { 'any:class': 'deathstar', [NS]: 'default' }, matchExpressions: [] },
    ingress: [{ endpoints: [{ matchLabels: { 'any:org': 'alliance', [NS]: 'default' }, matchExpressions: [] }], ports: [{ port: 443, protocol: 'TCP' }] }],
    egress: [],
    ingressDeny: [],
    egressDeny: [],
    enableDefaultDeny: {},
    labels: {},
  };
  const add = engine.upsertRules([rule2]);
  assert.deepEqual([...add.endpoints.keys()], [EP.deathstar]);
  assert.deepEqual(keysOf(add.endpoints.get(EP.deathstar)!.upserts), ['261/0/6/443/64']);
  const before = new Map(engine.endpointPolicy(EP.deathstar)!.entries);

  const changed = engine.upsertRules([{ ...rule2, ingress: [{ ...rule2.ingress[0], ports: [{ port: 8443, endPort: 8444, protocol: 'TCP' }] }] }]);
  const diff = changed.endpoints.get(EP.deathstar)!;
  assert.deepEqual(keysOf(diff.upserts), ['261/0/6/8443/64', '261/0/6/8444/64']);
  assert.deepEqual(diff.deletes.map(policyKeyString), ['261/0/6/443/64']);
  // rule1's entries are untouched, with the same cookie.
  for (const k of ['260/0/6/80/64', '262/0/6/80/64']) assert.deepEqual(engine.endpointPolicy(EP.deathstar)!.entries.get(k), before.get(k));
  // Re-applying the same rule is a no-op diff; the revision still counts the call.
  const rev = engine.revision;
  const same = engine.upsertRules([{ ...rule2, ingress: [{ ...rule2.ingress[0], ports: [{ port: 8443, endPort: 8444, protocol: 'TCP' }] }] }]);
  assert.equal(same.endpoints.size, 0);
  assert.equal(same.revision, rev + 1);

  // Deleting rule1 turns nothing back to allow-all (rule2 still selects), drops its entries only.
  const del = engine.deleteRules(['CiliumNetworkPolicy/default/rule1']);
  assert.deepEqual(del.endpoints.get(EP.deathstar)!.deletes.map(policyKeyString).sort(), ['260/0/6/80/64', '262/0/6/80/64']);
  assert.deepEqual(del.endpoints.get(EP.deathstar)!.upserts, []);
  // Deleting the last rule: ingress back to allow-all.
  const last = engine.deleteRules(['CiliumNetworkPolicy/default/rule2']).endpoints.get(EP.deathstar)!;
  assert.deepEqual(keysOf(last.upserts), ['0/0/0/0/40']);
  assert.equal(engine.cache.selectorCount, 0, 'selectors of deleted rules are released');
});

test('incremental: endpoint label change re-evaluates which rules select it', () => {
  const engine = starWars();
  const update = engine.upsertEndpoint(EP.xwing, { ...xwing, 'k8s:org': 'empire', 'k8s:class': 'deathstar' });
  const diff = update.endpoints.get(EP.xwing)!;
  assert.deepEqual(keysOf(diff.upserts), ['260/0/6/80/64', '262/0/6/80/64']);
  assert.deepEqual(diff.deletes.map(policyKeyString), ['0/0/0/0/40']);
  assert.equal(engine.endpointPolicy(EP.xwing)!.ingressEnforced, true);
  // Half a match (class only) is not selected by rule1: back to allow-all.
  const back = engine.upsertEndpoint(EP.xwing, { ...xwing, 'k8s:class': 'deathstar' }).endpoints.get(EP.xwing)!;
  assert.deepEqual(keysOf(back.upserts), ['0/0/0/0/40']);
  assert.equal(back.deletes.length, 2);
});

test('resolveEndpointPolicy: deny beats allow, covered allows are dropped, CIDR identities', () => {
  const cache = new SelectorCache([
    ...reservedIdentityInfos(),
    { id: 300, labels: { 'k8s:app': 'a', [NS]: 'default' } },
    { id: (1 << 24) | 1, labels: cidrIdentityLabels('10.0.0.0/8') },
    { id: (1 << 24) | 2, labels: cidrIdentityLabels('10.96.0.0/12') },
  ]);
  const rule: PolicyRule = {
    name: 'r',
    namespace: 'default',
    kind: 'CiliumNetworkPolicy',
    endpointSelector: { matchLabels: {}, matchExpressions: [] },
    ingress: [{ endpoints: [{ matchLabels: { 'any:app': 'a' }, matchExpressions: [] }], ports: [{ port: 80, protocol: 'TCP' }] }],
    egress: [{ cidrs: [{ cidr: '10.0.0.0/8', except: ['10.96.0.0/12'] }] }, { entities: ['cluster'], ports: [{ port: 53, protocol: 'ANY' }] }],
    ingressDeny: [{ endpoints: [{ matchLabels: { 'any:app': 'a' }, matchExpressions: [] }], ports: [{ port: 0, protocol: 'TCP' }] }],
    egressDeny: [],
    enableDefaultDeny: {},
    labels: {},
  };
  const p = resolveEndpointPolicy({ 'k8s:app': 'x' }, [rule], cache);
  const e = (k: string) => p.entries.get(k);
  assert.equal(e('300/0/6/80/64'), undefined, 'allow under a broader deny of the same identity is dropped');
  assert.equal(e('300/0/6/0/48')?.deny, true);
  assert.ok(e(`${(1 << 24) | 1}/1/0/0/40`));
  assert.equal(e(`${(1 << 24) | 2}/1/0/0/40`), undefined, 'except');
  assert.ok(e('300/1/17/53/64') && e('1/1/132/53/64') && e('6/1/6/53/64'));
  assert.equal(e('2/1/6/53/64'), undefined, 'world is not in the cluster');
  const again = resolveEndpointPolicy({ 'k8s:app': 'x' }, [rule], cache);
  assert.deepEqual(diffEntries(p.entries, again.entries), { upserts: [], deletes: [] });
});

test('scale: 10k identities/endpoints and 1k policies', () => {
  const identities = [...reservedIdentityInfos()];
  const labelsOf = (ns: number, app: number, v: number) => ({ 'k8s:app': `a${app}`, 'k8s:version': `v${v}`, [NS]: `ns${ns}` });
  let id = 256;
  for (let ns = 0; ns < 100; ns++) for (let app = 0; app < 10; app++) for (let v = 0; v < 10; v++) identities.push({ id: id++, labels: labelsOf(ns, app, v) });
  const sel = (ns: number, app: number) => ({ matchLabels: { 'any:app': `a${app}`, [NS]: `ns${ns}` }, matchExpressions: [] });
  const rules: PolicyRule[] = [];
  for (let ns = 0; ns < 100; ns++) {
    for (let app = 0; app < 10; app++) {
      rules.push({
        name: `p${app}`,
        namespace: `ns${ns}`,
        kind: 'CiliumNetworkPolicy',
        endpointSelector: sel(ns, app),
        ingress: [{ endpoints: [sel(ns, (app + 1) % 10)], ports: [{ port: 80, protocol: 'TCP' }, { port: 8000, endPort: 8099, protocol: 'TCP' }] }],
        egress: [{ endpoints: [sel(ns, (app + 2) % 10)] }, { entities: ['world'], ports: [{ port: 443, protocol: 'TCP' }] }],
        ingressDeny: [{ entities: ['world'] }],
        egressDeny: [],
        enableDefaultDeny: {},
        labels: {},
      });
    }
  }
  assert.equal(identities.length - 11, 10_000);
  assert.equal(rules.length, 1000);
  const t0 = performance.now();
  const engine = new PolicyEngine({ identities });
  engine.upsertRules(rules);
  let entries = 0;
  for (const i of identities) {
    if (i.id < 256) continue;
    const u = engine.upsertEndpoint(i.id, i.labels);
    entries += u.endpoints.get(i.id)?.upserts.length ?? 0;
  }
  const t1 = performance.now();
  // One more identity in ns0/a1 lands in 10 endpoints' ingress (a0 allows a1) and egress of a9.
  const inc = engine.upsertIdentity(99_999, labelsOf(0, 1, 99));
  const t2 = performance.now();
  // A CIDR identity is world: every endpoint's 443 egress (and ingress deny) gains it.
  const cidr = engine.upsertIdentity((1 << 24) | 1, cidrIdentityLabels('203.0.113.0/24'));
  const t3 = performance.now();
  // One rule changed (ns7/p3 moves 80 to 81): only the 10 endpoints it selects, 10 entries out, 10 in.
  const r = rules[73];
  const ruleChange = engine.upsertRules([{ ...r, ingress: [{ ...r.ingress[0], ports: [{ port: 81, protocol: 'TCP' }, r.ingress[0].ports![1]] }] }]);
  const t4 = performance.now();
  // The other order: endpoints first, then all rules in one call.
  const engine2 = new PolicyEngine({ identities });
  for (const i of identities) if (i.id >= 256) engine2.upsertEndpoint(i.id, i.labels);
  const t5 = performance.now();
  const bulk = engine2.upsertRules(rules);
  const t6 = performance.now();
  console.log(
    `scale: 10000 identities + 10000 endpoints + 1000 policies → ${entries} map entries in ${(t1 - t0).toFixed(0)} ms ` +
      `(endpoints first, then 1000 rules in one call: ${(t6 - t5).toFixed(0)} ms); ` +
      `one pod identity added → ${inc.endpoints.size} endpoints updated in ${(t2 - t1).toFixed(1)} ms; ` +
      `one CIDR identity → ${cidr.endpoints.size} endpoints in ${(t3 - t2).toFixed(0)} ms; ` +
      `one rule changed → ${ruleChange.endpoints.size} endpoints in ${(t4 - t3).toFixed(1)} ms`,
  );
  assert.equal(cidr.endpoints.size, 10_000);
  for (const d of cidr.endpoints.values()) assert.deepEqual(keysOf(d.upserts), [`${(1 << 24) | 1}/0/0/0/40`, `${(1 << 24) | 1}/1/6/443/64`]);
  assert.equal(ruleChange.endpoints.size, 10);
  for (const d of ruleChange.endpoints.values()) {
    assert.equal(d.upserts.length, 10);
    assert.ok(d.upserts.every((e) => e.key.port === 81));
    assert.ok(d.deletes.length === 10 && d.deletes.every((k) => k.port === 80));
  }
  let bulkEntries = 0;
  for (const d of bulk.endpoints.values()) bulkEntries += d.upserts.length - d.deletes.length;
  assert.equal(bulkEntries + 10_000 * 2, entries, 'same entries either way (less the allow-all pairs each endpoint had before)');
  assert.ok(t6 - t5 < 5000);
  // Per endpoint: ingress 10 peers × (80 + 3 blocks of 8000-8099), egress 10 peers, world
  // (identities 2, 9, 10) × 443 out and denied in.
  assert.equal(entries, 10_000 * (10 * 4 + 10 + 3 + 3));
  assert.equal(inc.endpoints.size, 20);
  for (const d of inc.endpoints.values()) assert.ok(d.upserts.every((e) => e.key.identity === 99_999) && d.deletes.length === 0);
  // Target < 2 s (printed above); the assert is generous so a loaded CI machine does not flake.
  assert.ok(t1 - t0 < 5000, `computed in ${(t1 - t0).toFixed(0)} ms, want < 2000 (bound 5000)`);
});

test('the generation counts every change a computed result could depend on: rules, identities, endpoints', () => {
  const engine = starWars();
  const steps: [string, () => void][] = [
    ['a rule', () => engine.upsertRules(loadPolicyFileSync(fixture('sw-l3-l4-policy.yaml')))],
    ['an identity', () => engine.upsertIdentity(300, { 'k8s:org': 'empire', [NS]: 'default' })],
    ['its deletion', () => engine.deleteIdentity(300)],
    ['an endpoint', () => engine.upsertEndpoint(9, xwing)],
    ['its deletion', () => engine.deleteEndpoint(9)],
    ['a rule deleted', () => engine.deleteRules(engine.rules().map((r) => r))],
  ];
  for (const [what, change] of steps) {
    const before = engine.generation;
    change();
    assert.ok(engine.generation > before, `${what} moves the generation`);
  }
  const quiet = engine.generation;
  engine.endpointPolicy(EP.deathstar);
  engine.rules();
  assert.equal(engine.generation, quiet, 'reads do not');
});
