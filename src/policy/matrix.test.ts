/**
 * Differential test: the engine's policy map entries, evaluated by the REAL datapath lookup
 * (bpf/lib/policy.h through BPF_PROG_TEST_RUN over a real LPM trie), against a deliberately naive
 * evaluator written here straight from the rule model — for pods × identities × ports × both
 * directions, over CNP, CCNP and Kubernetes NetworkPolicy fixtures.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { loadPolicyFileSync } from './load.ts';
import { selectorMatches } from './selector.ts';
import { parseCidr, type Cidr } from './cidr.ts';
import { POD_NAMESPACE_LABEL, type Entity, type PeerRule, type PolicyRule } from './types.ts';
import { PolicyEngine } from './engine.ts';
import { reservedIdentityInfos, cidrIdentityLabels, type IdentityInfo } from './selector-cache.ts';
import { PolicyVerdict, lookupPolicy, encodeKey } from './policy-map.ts';
import { BpfPolicyLookup } from './testdata/bpf-lookup.ts';

const fixture = (name: string) => join(import.meta.dirname, 'testdata', name);
const NS = POD_NAMESPACE_LABEL;
const TEAM = 'k8s:io.cilium.k8s.namespace.labels.team';

// ---- the world: pods (endpoints and identities), reserved and CIDR identities ----

function pod(ns: string, labels: Record<string, string>, nsLabels: Record<string, string> = {}): Record<string, string> {
  const out: Record<string, string> = { [NS]: ns };
  for (const [k, v] of Object.entries(labels)) out[`k8s:${k}`] = v;
  for (const [k, v] of Object.entries(nsLabels)) out[`k8s:io.cilium.k8s.namespace.labels.${k}`] = v;
  return out;
}

const PODS: Record<string, string>[] = [
  pod('prod', { app: 'web' }),
  pod('prod', { app: 'web', tier: 'canary' }),
  pod('prod', { app: 'frontend' }),
  pod('prod', { app: 'frontend', role: 'attacker' }),
  pod('prod', { app: 'db', role: 'db' }),
  pod('prod', { app: 'legacy' }),
  pod('prod', { app: 'open' }),
  pod('prod', { role: 'backend' }),
  pod('prod', { role: 'frontend' }),
  pod('default', { org: 'empire', class: 'deathstar' }),
  pod('default', { org: 'empire', class: 'tiefighter' }),
  pod('default', { org: 'alliance', class: 'xwing' }),
  pod('default', { app: 'myService' }),
  pod('default', { role: 'public' }),
  pod('default', { role: 'db' }),
  pod('default', { role: 'frontend' }),
  pod('default', { app: 'a' }),
  pod('default', { app: 'b' }),
  pod('default', { app: 'c' }),
  pod('default', { app: 'd' }),
  pod('default', { app: 'e' }),
  pod('default', { app: 'web' }),
  pod('kube-system', { 'k8s-app': 'kube-dns' }),
  pod('team-a', { app: 'api' }),
  pod('team-a', { app: 'other' }),
  pod('ops', { app: 'tool' }, { team: 'ops' }),
  pod('shop', { app: 'web' }, { team: 'payments' }),
  pod('shop', { app: 'api', tier: 'debug' }),
  pod('monitoring', { app: 'prometheus' }),
  pod('monitoring', { app: 'metrics' }),
  pod('prod', { app: 'open' }, { team: 'ops' }),
];

const CIDRS = [
  '10.0.0.0/8', '10.0.0.0/24', '10.1.0.0/16', '10.1.2.3/32', '10.2.3.4/32', '10.96.0.0/12', '192.0.2.0/24',
  '192.0.2.7/32', '192.0.2.8/32', '20.1.1.1/32', '172.17.0.0/16', '172.17.1.0/24', '172.17.2.0/24', '8.8.8.8/32',
  '2001:db8::/32', '2001:db8:1::/48',
];

function world(): IdentityInfo[] {
  const out: IdentityInfo[] = [...reservedIdentityInfos()];
  PODS.forEach((labels, i) => out.push({ id: 256 + i, labels }));
  CIDRS.forEach((c, i) => out.push({ id: (1 << 24) | (i + 1), labels: cidrIdentityLabels(c) }));
  return out;
}

// protocol number, port
const PROBES: [number, number][] = [
  [6, 22], [6, 53], [17, 53], [132, 53], [6, 80], [6, 81], [17, 80], [132, 80], [6, 443], [6, 400], [6, 500], [6, 501], [6, 1050], [17, 1099],
  [6, 1101], [6, 5432], [6, 5978], [6, 6379], [17, 5005], [17, 5011], [6, 8000], [6, 8079], [6, 8080], [6, 8090],
  [6, 8091], [6, 8100], [6, 8101], [6, 8443], [6, 9090], [17, 9090], [1, 8], [1, 0], [58, 128],
];

// ---- the naive evaluator: the rule model's semantics, written out flat ----

const CLUSTER_IDS = new Set([1, 3, 4, 5, 6, 7, 8]);
const ENTITY_IDS: Partial<Record<Entity, number[]>> = {
  host: [1],
  'remote-node': [6, 7],
  'kube-apiserver': [7],
  ingress: [8],
  init: [5],
  health: [4],
  unmanaged: [3],
};

interface Remote {
  id: number;
  labels: Record<string, string>;
}

function remoteCidr(r: Remote): { family: 4 | 6; network: bigint; prefixLength: number } | undefined {
  const key = Object.keys(r.labels).find((k) => k.startsWith('cidr:'));
  if (!key) return undefined;
  const c = parseCidr(key.slice(5).replaceAll('-', ':'));
  return 'error' in c ? undefined : reference(c);
}

/** The fields this model's own arithmetic works on, so it does not share src/net's. */
function reference(c: Cidr): { family: 4 | 6; network: bigint; prefixLength: number } {
  return { family: c.family, network: c.addr.toBigInt(), prefixLength: c.bits };
}

function inside(outer: { family: number; network: bigint; prefixLength: number }, inner: { family: number; network: bigint; prefixLength: number }): boolean {
  if (outer.family !== inner.family || inner.prefixLength < outer.prefixLength) return false;
  const bits = BigInt(outer.family === 4 ? 32 : 128);
  const shift = bits - BigInt(outer.prefixLength);
  return inner.network >> shift === outer.network >> shift;
}

function entityOk(e: Entity, r: Remote): boolean {
  const c = remoteCidr(r);
  switch (e) {
    case 'all':
      return true;
    case 'none':
      return false;
    case 'world':
      return [2, 9, 10].includes(r.id) || c !== undefined;
    case 'world-ipv4':
      return r.id === 2 || r.id === 9 || c?.family === 4;
    case 'world-ipv6':
      return r.id === 2 || r.id === 10 || c?.family === 6;
    case 'cluster':
      return CLUSTER_IDS.has(r.id) || (r.id >= 12 && r.id < 1 << 24);
    default:
      return ENTITY_IDS[e]!.includes(r.id);
  }
}

function cidrOk(rule: { cidr: string; except: string[] }, r: Remote): boolean {
  const parsed = parseCidr(rule.cidr);
  if ('error' in parsed) throw new Error(parsed.error);
  const c = reference(parsed);
  const own = remoteCidr(r);
  if (!own) return c.prefixLength === 0 && (r.id === 2 || r.id === (c.family === 4 ? 9 : 10));
  if (!inside(c, own)) return false;
  return !rule.except.some((e) => {
    const x = parseCidr(e);
    return !('error' in x) && inside(reference(x), own);
  });
}

const PROTO: Record<string, number> = { TCP: 6, UDP: 17, SCTP: 132, ICMP: 1, ICMPV6: 58 };

function peerOk(peer: PeerRule, r: Remote, proto: number, port: number): boolean {
  const l3 =
    (peer.endpoints ?? []).some((s) => selectorMatches(s, r.labels)) ||
    (peer.entities ?? []).some((e) => entityOk(e, r)) ||
    (peer.cidrs ?? []).some((c) => cidrOk(c, r));
  if (!l3) return false;
  if (!peer.ports || peer.ports.length === 0) return true;
  return peer.ports.some((p) => {
    if (p.protocol === 'ICMP' || p.protocol === 'ICMPV6') return proto === PROTO[p.protocol] && port === p.port;
    if (p.protocol === 'ANY') {
      if (p.port === 0) return true;
      if (![6, 17, 132].includes(proto)) return false;
    } else if (proto !== PROTO[p.protocol]) return false;
    return p.port === 0 || (port >= p.port && port <= (p.endPort ?? p.port));
  });
}

function naive(rules: readonly PolicyRule[], ep: Record<string, string>, dir: 'ingress' | 'egress', r: Remote, proto: number, port: number): 'allow' | 'deny' {
  const denyField = dir === 'ingress' ? 'ingressDeny' : 'egressDeny';
  const selecting = rules.filter((rule) => selectorMatches(rule.endpointSelector, ep));
  if (selecting.some((rule) => rule[denyField].some((p) => peerOk(p, r, proto, port)))) return 'deny';
  const enforced = selecting.some((rule) => rule.enableDefaultDeny[dir] ?? (rule[dir].length > 0 || rule[denyField].length > 0));
  if (!enforced) return 'allow';
  return selecting.some((rule) => rule[dir].some((p) => peerOk(p, r, proto, port))) ? 'allow' : 'deny';
}

// ---- the comparison ----

interface Stats {
  checks: number;
  allowed: number;
  denied: number;
  explicit: number;
}

function compare(
  rules: readonly PolicyRule[],
  identities: Iterable<IdentityInfo>,
  endpoints: [number, Record<string, string>][],
  bpfFor: (ep: number) => BpfPolicyLookup,
  engine: PolicyEngine,
): Stats {
  const stats: Stats = { checks: 0, allowed: 0, denied: 0, explicit: 0 };
  const remotes = [...identities];
  const mismatches: string[] = [];
  for (const [epId, labels] of endpoints) {
    const bpf = bpfFor(epId);
    const entries = engine.endpointPolicy(epId)!.entries;
    for (const r of remotes) {
      for (const dir of [0, 1] as const) {
        const dirName = dir === 0 ? 'ingress' : 'egress';
        for (const [proto, port] of PROBES) {
          const want = naive(rules, labels, dirName, r, proto, port);
          const got = bpf.query(r.id, dir, proto, port);
          const gotAllow = got.verdict === PolicyVerdict.ALLOWED ? 'allow' : 'deny';
          stats.checks++;
          if (gotAllow === 'allow') stats.allowed++;
          else stats.denied++;
          if (got.verdict === PolicyVerdict.DENIED) stats.explicit++;
          const ts = lookupPolicy(entries, r.id, dir, proto, port);
          if (gotAllow !== want || ts.verdict !== got.verdict || ts.cookie !== got.cookie || ts.match !== got.match) {
            if (mismatches.length < 15) {
              mismatches.push(
                `ep ${epId} ${JSON.stringify(labels)} ${dirName} remote ${r.id} ${JSON.stringify(r.labels)} ${port}/${proto}: ` +
                  `naive ${want}, bpf ${got.verdict}/${got.match}/${got.cookie}, ts ${ts.verdict}/${ts.match}/${ts.cookie}`,
              );
            }
          }
        }
      }
    }
  }
  assert.deepEqual(mismatches, []);
  return stats;
}

function scenario(name: string, files: string[]): void {
  test(`verdict matrix: ${name}`, () => {
    const rules = files.flatMap((f) => loadPolicyFileSync(fixture(f)));
    const ids = world();
    const engine = new PolicyEngine({ identities: ids });
    engine.upsertRules(rules);
    const endpoints: [number, Record<string, string>][] = PODS.map((labels, i) => [i + 1, labels]);
    for (const [id, labels] of endpoints) engine.upsertEndpoint(id, labels);
    using bpf = new BpfPolicyLookup();
    let loaded = -1;
    const t0 = performance.now();
    const stats = compare(engine.rules(), ids, endpoints, (ep) => {
      if (loaded !== ep) {
        bpf.load(engine.endpointPolicy(ep)!.entries.values());
        loaded = ep;
      }
      return bpf;
    }, engine);
    const ms = performance.now() - t0;
    console.log(`matrix ${name}: ${rules.length} rules, ${stats.checks} checks (${stats.allowed} allowed, ${stats.denied} denied, ${stats.explicit} by deny entries) in ${ms.toFixed(0)} ms`);
    assert.ok(stats.allowed > stats.checks / 10 && stats.denied > stats.checks / 10, 'the matrix exercises both verdicts');
    assert.ok(stats.explicit > 0);
  });
}

scenario('CNP/CCNP/NetworkPolicy mix (matrix.yaml)', ['matrix.yaml']);
scenario('docs examples (cilium-docs, ccnp, knp, star wars)', ['cilium-docs.yaml', 'ccnp.yaml', 'knp.yaml', 'sw-l3-l4-policy.yaml']);
scenario('everything at once', ['matrix.yaml', 'cilium-docs.yaml', 'ccnp.yaml', 'knp.yaml', 'sw-l3-l4-policy.yaml']);

test('verdict matrix: maps kept only by incremental diffs match a naive evaluation', () => {
  const all = world();
  const reserved = all.filter((i) => i.id < 256);
  const later = all.filter((i) => i.id >= 256);
  const engine = new PolicyEngine({ identities: reserved });
  const identities = new Map(reserved.map((i) => [i.id, i]));
  const endpoints: [number, Record<string, string>][] = PODS.map((labels, i) => [i + 1, labels]);
  const maps = new Map<number, BpfPolicyLookup>();
  const apply = (u: ReturnType<PolicyEngine['upsertRules']>) => {
    for (const [ep, diff] of u.endpoints) {
      let m = maps.get(ep);
      if (!m) maps.set(ep, (m = new BpfPolicyLookup()));
      m.apply(diff);
    }
  };
  try {
    for (const [id, labels] of endpoints) apply(engine.upsertEndpoint(id, labels));
    // Rules first, identities after: every identity arrives through SelectorCache updates.
    for (const f of ['matrix.yaml', 'cilium-docs.yaml', 'ccnp.yaml', 'knp.yaml', 'sw-l3-l4-policy.yaml']) apply(engine.upsertRules(loadPolicyFileSync(fixture(f))));
    for (const i of later) {
      apply(engine.upsertIdentity(i.id, i.labels));
      identities.set(i.id, i);
    }
    // A rule change, a rule deletion, an identity relabel and removal, an endpoint relabel.
    const web = engine.rules().find((r) => r.name === 'web-ingress')!;
    apply(engine.upsertRules([{ ...web, ingress: web.ingress.map((p) => ({ ...p, ports: p.ports?.map((x) => ({ ...x, port: x.port === 80 ? 81 : x.port })) })) }]));
    apply(engine.deleteRules(['CiliumNetworkPolicy/prod/legacy']));
    const relabel = { id: 256 + 2, labels: pod('prod', { app: 'frontend', role: 'attacker' }) };
    apply(engine.upsertIdentity(relabel.id, relabel.labels));
    identities.set(relabel.id, relabel);
    apply(engine.deleteIdentity((1 << 24) | 4));
    identities.delete((1 << 24) | 4);
    endpoints[0][1] = pod('prod', { app: 'db', role: 'db' });
    apply(engine.upsertEndpoint(1, endpoints[0][1]));

    // The maps hold exactly the engine's entries…
    for (const [ep] of endpoints) {
      const m = maps.get(ep)!;
      const want = [...engine.endpointPolicy(ep)!.entries.values()].map((e) => JSON.stringify(encodeKey(e.key))).sort();
      const got = [...m.map.keys()].map((k) => JSON.stringify(k)).sort();
      assert.deepEqual(got, want, `endpoint ${ep}`);
    }
    // …the same entries (deny bit, rules) a from-scratch engine computes…
    const fresh = new PolicyEngine({ identities: identities.values() });
    fresh.upsertRules(engine.rules());
    for (const [ep, labels] of endpoints) {
      fresh.upsertEndpoint(ep, labels);
      const view = (e: PolicyEngine) =>
        [...e.endpointPolicy(ep)!.entries].map(([k, v]) => `${k} ${v.deny ? 'deny' : 'allow'} ${[...v.ruleKeys].sort().join(',')}`).sort();
      assert.deepEqual(view(engine), view(fresh), `endpoint ${ep}: incremental vs from scratch`);
    }
    // …and decide as the naive evaluator does.
    const stats = compare(engine.rules(), identities.values(), endpoints, (ep) => maps.get(ep)!, engine);
    console.log(`matrix incremental: revision ${engine.revision}, ${stats.checks} checks (${stats.allowed} allowed, ${stats.denied} denied)`);
  } finally {
    for (const m of maps.values()) m.close();
  }
});
