import assert from 'node:assert/strict';
import { test } from 'node:test';
import { flowMetricInput } from '../metrics/index.ts';
import { L7FlowEntry, type FlowNames, type L7HttpRecord } from './index.ts';

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
