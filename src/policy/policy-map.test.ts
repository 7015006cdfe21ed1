import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Btf, checkLayout } from '../ebpf/index.ts';
import {
  PREFIX_DIR,
  PREFIX_FULL,
  PREFIX_PROTO,
  PolicyMatch,
  PolicyVerdict,
  createPolicyMap,
  applyPolicyDiff,
  keyCovers,
  lookupPolicy,
  policyEntryCodec,
  policyKeyCodec,
  policyKeyString,
  policyResultCodec,
  portRangePrefixes,
  portRuleKeys,
  type PolicyKey,
  type PolicyMapEntry,
} from './policy-map.ts';
import { BpfPolicyLookup, POLICY_LOOKUP_OBJECT } from './testdata/bpf-lookup.ts';

const btf = Btf.fromElf(POLICY_LOOKUP_OBJECT);

test('policy map codecs match bpf/lib/policy.h (BTF)', () => {
  assert.deepEqual(checkLayout(policyKeyCodec, btf), []);
  assert.deepEqual(checkLayout(policyEntryCodec, btf), []);
  assert.deepEqual(checkLayout(policyResultCodec, btf), []);
  assert.equal(policyKeyCodec.size, 12);
  assert.equal(policyEntryCodec.size, 12);
});

/** Expands prefixes back to the port set, for checking coverage and minimality. */
function expand(blocks: { port: number; bits: number }[]): number[] {
  return blocks.flatMap((b) => Array.from({ length: 1 << (16 - b.bits) }, (_, i) => b.port + i));
}

test('port ranges become the minimal aligned prefix blocks', () => {
  assert.deepEqual(portRangePrefixes(80), [{ port: 80, bits: 16 }]);
  assert.deepEqual(portRangePrefixes(0), [{ port: 0, bits: 0 }]);
  assert.deepEqual(portRangePrefixes(8080, 8095), [{ port: 8080, bits: 12 }]);
  assert.deepEqual(portRangePrefixes(1, 3), [
    { port: 1, bits: 16 },
    { port: 2, bits: 15 },
  ]);
  assert.deepEqual(portRangePrefixes(1, 65535).length, 16);
  assert.deepEqual(portRangePrefixes(1024, 65535), [
    { port: 1024, bits: 6 },
    { port: 2048, bits: 5 },
    { port: 4096, bits: 4 },
    { port: 8192, bits: 3 },
    { port: 16384, bits: 2 },
    { port: 32768, bits: 1 },
  ]);
  // Exhaustive-ish: random ranges are covered exactly, blocks aligned, count ≤ 2·16.
  let seed = 7;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff), seed);
  for (let i = 0; i < 300; i++) {
    const lo = 1 + (rnd() % 65535);
    const hi = Math.min(65535, lo + (rnd() % (i % 3 === 0 ? 70000 : 300)));
    const blocks = portRangePrefixes(lo, hi);
    const ports = expand(blocks);
    assert.equal(ports.length, hi - lo + 1, `${lo}-${hi}`);
    assert.equal(ports[0], lo);
    assert.equal(ports.at(-1), hi);
    for (const b of blocks) assert.equal(b.port % (1 << (16 - b.bits)), 0);
    assert.ok(blocks.length <= 30);
    // Minimal: no two neighbouring blocks of equal size that could merge into an aligned one.
    for (let j = 1; j < blocks.length; j++) {
      const a = blocks[j - 1];
      const b = blocks[j];
      if (a.bits === b.bits && a.bits > 0) assert.notEqual(a.port % (1 << (17 - a.bits)), 0, `${lo}-${hi} not minimal`);
    }
  }
});

test('protocol ANY: wildcard only without a port, else TCP+UDP+SCTP', () => {
  assert.deepEqual(portRuleKeys({ port: 0, protocol: 'ANY' }), [{ protocol: 0, port: 0, prefixLen: PREFIX_DIR }]);
  assert.deepEqual(
    portRuleKeys({ port: 53, protocol: 'ANY' }).map((k) => k.protocol),
    [6, 17, 132],
  );
  assert.deepEqual(portRuleKeys({ port: 0, protocol: 'UDP' }), [{ protocol: 17, port: 0, prefixLen: PREFIX_PROTO }]);
  assert.deepEqual(portRuleKeys({ port: 0, protocol: 'ICMP' }), [{ protocol: 1, port: 0, prefixLen: PREFIX_FULL }]);
  assert.deepEqual(portRuleKeys({ port: 8000, endPort: 8001, protocol: 'TCP' }), [{ protocol: 6, port: 8000, prefixLen: 63 }]);
});

test('keyCovers follows the LPM prefix', () => {
  const k = (protocol: number, port: number, prefixLen: number, identity = 5): PolicyKey => ({ identity, direction: 0, protocol, port, prefixLen });
  assert.ok(keyCovers(k(0, 0, 40), k(6, 80, 64)));
  assert.ok(keyCovers(k(6, 0, 48), k(6, 80, 64)));
  assert.ok(!keyCovers(k(17, 0, 48), k(6, 80, 64)));
  assert.ok(keyCovers(k(6, 8080, 60), k(6, 8090, 64)));
  assert.ok(!keyCovers(k(6, 8080, 60), k(6, 8096, 64)));
  assert.ok(!keyCovers(k(6, 80, 64), k(6, 80, 64, 6)));
});

function entry(identity: number, direction: 0 | 1, protocol: number, port: number, prefixLen: number, deny: boolean, cookie: number): PolicyMapEntry {
  return { key: { identity, direction, protocol, port, prefixLen }, deny, cookie, ruleKeys: [`r${cookie}`] };
}

test('policy_can_access in the kernel: two lookups, deny wins, then the longer prefix, then L3', () => {
  using lookup = new BpfPolicyLookup();
  const entries = [
    entry(260, 0, 6, 80, 64, false, 1), // L3-L4
    entry(261, 0, 0, 0, 40, false, 2), // L3-only
    entry(0, 0, 6, 443, 64, false, 3), // L4-only
    entry(262, 0, 6, 443, 64, true, 4), // deny beats the L4-only allow
    entry(0, 0, 17, 0, 48, false, 5), // proto-only: all UDP
    entry(263, 0, 17, 0, 48, false, 6), // L3-proto, same prefix as 5: L3 wins the tie
    entry(264, 0, 6, 8080, 60, false, 7), // range 8080-8095
    entry(0, 1, 0, 0, 40, false, 0), // egress allow-all
    entry(265, 1, 6, 22, 64, true, 8), // but deny 22 to 265
  ];
  lookup.load(entries);
  const map = new Map(entries.map((e) => [policyKeyString(e.key), e]));
  const cases: [number, 0 | 1, number, number, number, number, number][] = [
    // identity, dir, proto, port → verdict, match, cookie
    [260, 0, 6, 80, PolicyVerdict.ALLOWED, PolicyMatch.L3_L4, 1],
    [260, 0, 6, 81, PolicyVerdict.DENIED_DEFAULT, PolicyMatch.NONE, 0],
    [260, 0, 17, 80, PolicyVerdict.ALLOWED, PolicyMatch.PROTO_ONLY, 5],
    [261, 0, 1, 8, PolicyVerdict.ALLOWED, PolicyMatch.L3_ONLY, 2],
    [261, 0, 6, 443, PolicyVerdict.ALLOWED, PolicyMatch.L4_ONLY, 3],
    [999, 0, 6, 443, PolicyVerdict.ALLOWED, PolicyMatch.L4_ONLY, 3],
    [262, 0, 6, 443, PolicyVerdict.DENIED, PolicyMatch.L3_L4, 4],
    [263, 0, 17, 53, PolicyVerdict.ALLOWED, PolicyMatch.L3_PROTO, 6],
    [264, 0, 6, 8080, PolicyVerdict.ALLOWED, PolicyMatch.L3_L4, 7],
    [264, 0, 6, 8095, PolicyVerdict.ALLOWED, PolicyMatch.L3_L4, 7],
    [264, 0, 6, 8096, PolicyVerdict.DENIED_DEFAULT, PolicyMatch.NONE, 0],
    [264, 0, 6, 8079, PolicyVerdict.DENIED_DEFAULT, PolicyMatch.NONE, 0],
    [265, 1, 6, 22, PolicyVerdict.DENIED, PolicyMatch.L3_L4, 8],
    [265, 1, 6, 23, PolicyVerdict.ALLOWED, PolicyMatch.ALL, 0],
    [260, 1, 1, 0, PolicyVerdict.ALLOWED, PolicyMatch.ALL, 0],
  ];
  for (const [id, dir, proto, port, verdict, match, cookie] of cases) {
    const got = lookup.query(id, dir, proto, port);
    assert.deepEqual([got.verdict, got.match, got.cookie], [verdict, match, cookie], `kernel ${id} dir ${dir} ${port}/${proto}`);
    const ts = lookupPolicy(map, id, dir, proto, port);
    assert.deepEqual([ts.verdict, ts.match, ts.cookie], [verdict, match, cookie], `TS ${id} dir ${dir} ${port}/${proto}`);
  }
});

test('createPolicyMap makes a per-endpoint LPM map that takes diffs', () => {
  const map = createPolicyMap(42, 64);
  try {
    const e = entry(260, 0, 6, 80, 64, false, 1);
    applyPolicyDiff(map, { upserts: [e], deletes: [] });
    assert.deepEqual(map.lookup({ prefixlen: 64, sec_label: 260, egress: 0, protocol: 6, dport: 80 })?.cookie, 1);
    // LPM: a lookup at full length finds the range entry.
    applyPolicyDiff(map, { upserts: [entry(260, 0, 6, 8080, 60, false, 2)], deletes: [e.key] });
    assert.equal(map.lookup({ prefixlen: 64, sec_label: 260, egress: 0, protocol: 6, dport: 8085 })?.cookie, 2);
    assert.equal(map.lookup({ prefixlen: 64, sec_label: 260, egress: 0, protocol: 6, dport: 80 }), undefined);
  } finally {
    map.close();
  }
});
