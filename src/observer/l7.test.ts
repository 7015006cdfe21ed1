import assert from 'node:assert/strict';
import { test } from 'node:test';
import { flowMetricInput } from '../metrics/index.ts';
import { L7FlowEntry, compileFilter, flowSummary, flowType, type FlowNames, type L7DnsRecord, type L7HttpRecord } from './index.ts';

const names: FlowNames = {
  nodeName: 'n1',
  endpointByAddress: (a) => (a === '10.0.0.1' ? { id: 1, identity: 300, namespace: 'default', podName: 'tiefighter' } : a === '10.0.0.2' ? { id: 2, identity: 301, namespace: 'default', podName: 'deathstar' } : undefined),
  endpointById: () => undefined,
  identityLabels: (id) => (id === 300 ? ['k8s:org=empire'] : undefined),
  policyForCookie: () => undefined,
};
const base = {
  source: { address: '10.0.0.1', port: 40000, identity: 300 },
  destination: { address: '10.0.0.2', port: 80, identity: 301 },
  method: 'POST',
  url: 'http://deathstar/v1/request-landing',
  protocol: 'HTTP/1.1',
};

test('an L7 entry: its Flow as Hubble shows it, built when read, and the metrics read the same without it', () => {
  const request: L7HttpRecord = { kind: 'REQUEST', timeNs: '1700000000000000000', verdict: 'FORWARDED', ruleKeys: ['CiliumNetworkPolicy/default/rule1'], ...base };
  const response: L7HttpRecord = { kind: 'RESPONSE', timeNs: '1700000000001000000', verdict: 'FORWARDED', code: 200, latencyNs: 1_000_000, ...base };
  const denied: L7HttpRecord = { kind: 'REQUEST', timeNs: '1700000000002000000', verdict: 'DROPPED', ...base, method: 'PUT' };
  const policy = (key: string) => ({ name: key.split('/').at(-1), namespace: 'default', kind: 'CiliumNetworkPolicy' });
  const [req, res, drop] = [request, response, denied].map((r) => new L7FlowEntry(r, names, policy));
  assert.equal(req.timeNs, 1700000000000000000n);
  assert.deepEqual(req.flow.l7, { type: 'REQUEST', latencyNs: undefined, http: { code: undefined, method: 'POST', url: base.url, protocol: 'HTTP/1.1' } });
  assert.deepEqual(req.flow.ingressAllowedBy, [{ name: 'rule1', namespace: 'default', kind: 'CiliumNetworkPolicy' }]);
  assert.equal(req.flow, req.flow, 'built once');
  assert.deepEqual([res.flow.source?.podName, res.flow.destination?.podName, res.flow.isReply?.value], ['deathstar', 'tiefighter', true], 'a response goes from the server');
  assert.equal(res.flow.Summary, 'HTTP/1.1 200 1ms (POST http://deathstar/v1/request-landing)');
  assert.deepEqual([drop.flow.verdict, drop.flow.dropReasonDesc], ['DROPPED', 'POLICY_DENIED']);
  for (const entry of [req, res, drop]) assert.deepEqual(entry.metricInput(), flowMetricInput(entry.flow));
});

test('a DNS proxy record: its flows as Cilium reports them (egress from the pod, an answer from the resolver), and the metrics read the same', () => {
  const dnsNames: FlowNames = {
    ...names,
    endpointById: (id) => (id === 1 ? { id: 1, identity: 300, address: '10.0.0.1', namespace: 'default', podName: 'tiefighter' } : undefined),
  };
  const query = { endpoint: 1, sourcePort: 40000, resolver: { address: '198.51.100.2', port: 53 }, protocol: 'UDP' as const };
  const question = { query: 'example.com.', qtypes: ['A'] };
  const request: L7DnsRecord = { ...query, kind: 'REQUEST', timeNs: '1700000000000000000', verdict: 'FORWARDED', dns: { ...question, rcode: 0, ips: [], ttl: 0, cnames: [], rrtypes: [] } };
  const answer: L7DnsRecord = { ...query, kind: 'RESPONSE', timeNs: '1700000000001000000', verdict: 'FORWARDED', dns: { ...question, rcode: 0, ips: ['1.2.3.4'], ttl: 30, cnames: [], rrtypes: ['A'] } };
  const refused: L7DnsRecord = { ...answer, dns: { ...answer.dns, rcode: 5, ips: [], rrtypes: [] } };
  const denied: L7DnsRecord = { ...request, verdict: 'DROPPED' };
  const [req, res, ref, drop] = [request, answer, refused, denied].map((r) => new L7FlowEntry(r, dnsNames, () => undefined));
  assert.deepEqual([req.flow.IP, req.flow.l4, req.flow.source?.podName, req.flow.destination?.identity, req.flow.trafficDirection, req.flow.Type], [
    { source: '10.0.0.1', destination: '198.51.100.2', ipVersion: 'IPv4' },
    { UDP: { sourcePort: 40000, destinationPort: 53 } },
    'tiefighter',
    2,
    'EGRESS',
    'L7',
  ]);
  assert.equal(req.flow.Summary, 'DNS Query example.com. A');
  assert.deepEqual([res.flow.IP?.source, res.flow.destination?.podName, res.flow.isReply?.value], ['198.51.100.2', 'tiefighter', true], 'an answer goes from the resolver');
  assert.deepEqual(res.flow.l7, { type: 'RESPONSE', dns: { ...answer.dns, observationSource: 'proxy' } });
  assert.equal(res.flow.Summary, 'DNS Answer "1.2.3.4" TTL: 30 (Proxy example.com. A)');
  assert.equal(ref.flow.Summary, 'DNS Answer RCode: REFUSED (Proxy example.com. A)');
  assert.deepEqual([drop.flow.verdict, drop.flow.dropReasonDesc], ['DROPPED', 'POLICY_DENIED']);
  assert.equal(flowSummary(res.flow), res.flow.Summary, "the printer's summary is the flow's");
  assert.deepEqual([flowType(req.flow), flowType(res.flow)], ['dns-request', 'dns-response']);
  for (const entry of [req, res, ref, drop]) assert.deepEqual(entry.metricInput(), flowMetricInput(entry.flow));
  // As hubble's --protocol dns and a dns_query filter (a regex on the question).
  assert.deepEqual([compileFilter({ protocol: ['dns'] }, 'f')(req.flow), compileFilter({ protocol: ['http'] }, 'f')(req.flow)], [true, false]);
  assert.deepEqual([compileFilter({ dnsQuery: ['^example\\.com\\.$'] }, 'f')(res.flow), compileFilter({ dnsQuery: ['^other'] }, 'f')(res.flow)], [true, false]);
  assert.throws(() => compileFilter({ dnsQuery: ['('] }, 'f'), /f\.dns_query\[0\]: Invalid regular expression/);
});
