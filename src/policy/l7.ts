/**
 * The `rules` of a `toPorts` entry (Cilium's `L7Rules`): one kind per entry (`http`, `dns`,
 * `kafka`, or `l7proto` with `l7`). HTTP rules (src/policy/l7-http.ts) and DNS rules are read here;
 * the kinds Ciliate does not enforce are refused by name, saying which kind was found, never ignored.
 * @module
 */
import { checkFields, describe, join, readObj, type Ctx } from './context.ts';
import { readFqdnSelectors } from './dns.ts';
import { readHttpRules } from './l7-http.ts';
import type { L7Rules } from './types.ts';

const KINDS = ['http', 'dns', 'kafka', 'l7proto', 'l7'] as const;

const REFUSED: Record<string, string> = {
  kafka:
    'Kafka rules (rules.kafka) are not supported: Ciliate has no Kafka proxy (Cilium itself deprecated them); remove rules to allow the port at L4',
  l7proto: 'rules.l7proto (an Envoy L7 parser by name) is not supported: Ciliate has no Envoy; remove rules to allow the port at L4',
  l7: 'rules.l7 (generic key-value L7 rules for an Envoy parser) is not supported: Ciliate has no Envoy; remove rules to allow the port at L4',
};

/**
 * Reads `toPorts[].rules`; undefined when it is absent or wrong (reported). `direction` is where
 * the rule is: DNS rules are egress only, as in Cilium (a pod's queries, not its answers).
 */
export function readL7Rules(ctx: Ctx, path: string, value: unknown, direction: 'ingress' | 'egress'): L7Rules | undefined {
  const obj = readObj(ctx, path, value);
  if (obj === undefined) return undefined;
  const before = ctx.issues.length;
  // `l7` is l7proto's list of rules: with it, the refusal of l7proto says all.
  const withProto = obj.l7proto !== undefined;
  checkFields(ctx, path, obj, withProto ? ['dns', 'http', 'l7'] : ['dns', 'http'], REFUSED);
  const present = KINDS.filter((k) => obj[k] !== undefined && obj[k] !== null && k !== 'l7');
  if (present.length > 1) ctx.add(path, `one kind of L7 rule per toPorts entry, found ${present.join(' and ')}; make them separate toPorts entries`);
  if (present.length === 0 && ctx.issues.length === before) {
    ctx.add(path, `has no L7 rules (expected one of dns, http, kafka, l7proto), got ${describe(obj)} without them; remove rules to allow the port at L4`);
  }
  const rules: L7Rules = {};
  if (obj.http !== undefined && obj.http !== null) {
    const httpPath = join(path, 'http');
    const http = readHttpRules(ctx, httpPath, obj.http);
    if (http !== undefined) rules.http = http;
  }
  if (obj.dns !== undefined && obj.dns !== null) {
    const dnsPath = join(path, 'dns');
    if (direction === 'ingress') ctx.add(dnsPath, 'DNS rules are egress only (they select the names an endpoint may ask for)');
    else {
      const dns = readFqdnSelectors(ctx, dnsPath, obj.dns);
      if (dns !== undefined) rules.dns = dns;
    }
  }
  return ctx.issues.length === before ? rules : undefined;
}
