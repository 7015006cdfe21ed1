/**
 * The proxy's L7 records survive the IPC batch form whole: every field of every kind of record,
 * optional ones absent where they were, strings shared across records.
 * @module
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { L7HttpRecord } from '../observer/index.ts';
import { readWireRecords, WireRecordsWriter } from './protocol.ts';

const base = {
  source: { address: '10.0.1.5', port: 41234, identity: 300 },
  destination: { address: '10.0.1.9', port: 80, identity: 301 },
  method: 'GET',
  url: 'http://svc/api/items',
  protocol: 'HTTP/1.1',
} as const;

const records: L7HttpRecord[] = [
  { kind: 'REQUEST', timeNs: '1733306400123456789', verdict: 'FORWARDED', ruleKeys: ['r1', 'r2'], ...base, source: { ...base.source } },
  { kind: 'RESPONSE', timeNs: '1733306400123556789', verdict: 'FORWARDED', code: 200, latencyNs: 100_000, ...base, source: { ...base.source } },
  { kind: 'REQUEST', timeNs: '1733306400200000000', verdict: 'DROPPED', code: 403, ...base, source: { ...base.source, port: 41235 }, method: 'DELETE', url: 'http://svc/other' },
  { kind: 'REQUEST', timeNs: '1733306400300000000', verdict: 'FORWARDED', ruleKeys: ['e1'], direction: 'EGRESS', ingressRuleKeys: ['r1'], ...base, source: { ...base.source }, protocol: 'HTTP/2' },
  { kind: 'RESPONSE', timeNs: '1733306400300000001', verdict: 'FORWARDED', code: 503, latencyNs: 1, direction: 'EGRESS', ...base, source: { ...base.source }, protocol: 'HTTP/2' },
];

test('L7 records cross the IPC channel as rows over one string table and come back as they were emitted', () => {
  const writer = new WireRecordsWriter();
  for (const r of records) writer.add(r);
  assert.equal(writer.size, records.length);
  const wire = JSON.parse(JSON.stringify(writer.take()));
  assert.deepStrictEqual(readWireRecords(wire), records);
  // Each string once: 2 addresses, 2 methods, 2 URLs, 2 protocols, 3 rule keys.
  assert.equal(wire.strings.length, new Set(wire.strings).size);
  assert.equal(wire.strings.length, 11);
  // The writer starts a new batch once taken.
  assert.equal(writer.size, 0);
  writer.add(records[2]);
  assert.deepStrictEqual(readWireRecords(writer.take()), [records[2]]);
});
