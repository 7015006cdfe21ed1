/**
 * `ciliate observe`'s flags into the GetFlowsRequest hubble would send (no agent needed).
 * @module
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { buildRequest, parseTime, type ObserveOptions } from './observe.ts';

const none: ObserveOptions = {
  verdict: [], pod: [], fromPod: [], toPod: [], namespace: [], ip: [], fromIp: [], toIp: [], label: [], fromLabel: [], toLabel: [],
  identity: [], fromIdentity: [], toIdentity: [], workload: [], fromWorkload: [], toWorkload: [], protocol: [], port: [], fromPort: [], toPort: [], type: [], dropReasonDesc: [],
  tcpFlags: [], trafficDirection: [], nodeName: [], output: 'compact', socket: '/x/ciliate.sock',
};

test('one-sided flags make one filter; either-side flags make one filter per side, ORed', () => {
  assert.deepEqual(buildRequest({ ...none, fromPod: ['xwing'], verdict: ['dropped'], toPort: ['80'] }).whitelist, [
    { verdict: ['DROPPED'], sourcePod: ['default/xwing'], destinationPort: ['80'] },
  ]);
  assert.deepEqual(buildRequest({ ...none, pod: ['kube-system/dns'], namespace: ['prod'], protocol: ['tcp'], identity: ['world'] }).whitelist, [
    { protocol: ['tcp'], sourcePod: ['kube-system/dns', 'prod/'], sourceIdentity: [2] },
    { protocol: ['tcp'], destinationPod: ['kube-system/dns', 'prod/'], destinationIdentity: [2] },
  ]);
  assert.deepEqual(buildRequest({ ...none, type: ['trace:to-endpoint', 'drop'], tcpFlags: ['syn,ack'] }).whitelist, [
    { eventType: [{ type: 4, matchSubType: true, subType: 0 }, { type: 1 }], tcpFlags: [{ SYN: true, ACK: true }] },
  ]);
  assert.deepEqual(buildRequest(none).whitelist, []);
});

test('ranges: the last 20 by default, none with --all, --since or --follow alone', () => {
  assert.equal(buildRequest(none).number, 20);
  assert.equal(buildRequest({ ...none, last: 5, follow: true }).number, 5);
  assert.equal(buildRequest({ ...none, follow: true }).number, 0);
  assert.equal(buildRequest({ ...none, all: true }).number, 0);
  assert.equal(buildRequest({ ...none, since: '1m' }).number, 0);
  assert.throws(() => buildRequest({ ...none, first: true, follow: true }), /--first and --follow/);
  assert.throws(() => buildRequest({ ...none, verdict: ['maybe'] }), /--verdict "maybe"/);
  assert.throws(() => buildRequest({ ...none, type: ['trace:nowhere'] }), /unknown sub-type/);
});

test('--since takes Go durations and RFC 3339 times', () => {
  const now = Date.UTC(2026, 0, 1, 12, 0, 0);
  assert.deepEqual(parseTime('since', '1m30s', now), { seconds: String(now / 1000 - 90), nanos: 0 });
  assert.deepEqual(parseTime('since', '2026-01-01T11:00:00.5Z', now), { seconds: String(now / 1000 - 3600), nanos: 500_000_000 });
  assert.throws(() => parseTime('until', 'yesterday', now), /--until "yesterday"/);
});

test("workload flags as hubble reads them: name, Kind/name or Kind/, one filter per side for --workload", () => {
  assert.deepEqual(buildRequest({ ...none, toWorkload: ['Deployment/deathstar'], fromWorkload: ['tiefighter'] }).whitelist, [
    { sourceWorkload: [{ name: 'tiefighter' }], destinationWorkload: [{ kind: 'Deployment', name: 'deathstar' }] },
  ]);
  assert.deepEqual(buildRequest({ ...none, workload: ['StatefulSet/'] }).whitelist, [{ sourceWorkload: [{ kind: 'StatefulSet' }] }, { destinationWorkload: [{ kind: 'StatefulSet' }] }]);
});
