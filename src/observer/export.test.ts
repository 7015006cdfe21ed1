/**
 * The exporter's parts on real files, without an agent: loss when the file cannot keep up
 * (counted and written into the file), rotation and pruning, field masks, FlowFilters as JSON
 * and flow-logs files refused field by field. The whole path against a real agent and real
 * traffic is in test/flow-export.test.ts.
 * @module
 */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { FieldMask, FlowExporter, FlowRing, InvalidRequestError, parseFlowFilters, parseFlowLogsConfig, RotatingFile, timestampFromNs, type Flow } from './index.ts';

const log = pino({ level: 'silent' });

function tempDir(t: TestContext): string {
  const dir = mkdtempSync(join(tmpdir(), 'ciliate-export-unit-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

function flow(i: number): Flow {
  return {
    time: timestampFromNs(1_700_000_000_000_000_000n + BigInt(i)),
    uuid: `flow-${i}`,
    verdict: i % 2 ? 'DROPPED' : 'FORWARDED',
    source: { identity: 1000 + i, podName: `pod-${i}`, namespace: 'default', labels: ['k8s:app=a'] },
    destination: { identity: 2000, podName: 'server' },
    isReply: { value: false },
    nodeName: 'n1',
  };
}

function lines(path: string): Record<string, unknown>[] {
  return readFileSync(path, 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
}

test('a file that cannot keep up: flows beyond the queue are dropped, counted, and the file says how many', async (t) => {
  const dir = tempDir(t);
  const ring = new FlowRing(4096);
  const exporter = new FlowExporter({ name: 'x', filePath: join(dir, 'x.log'), nodeName: 'n1', maxSizeBytes: 1 << 30, maxBackups: 0, queueSize: 16, log });
  await exporter.open();
  // One turn of the event loop, as the observer hands over a decoded batch: no write can run in between.
  for (let i = 0; i < 1000; i++) exporter.offer(ring.push(BigInt(i), { flow: flow(i) }));
  exporter.offer(ring.push(1000n, { lost: { source: 'PERF_EVENT_RING_BUFFER', numEventsLost: '3' } }));
  assert.equal(exporter.stats().queued, 16);
  await exporter.close();
  const written = lines(join(dir, 'x.log'));
  assert.deepEqual(written.slice(0, 16).map((l) => (l.flow as { uuid: string }).uuid), Array.from({ length: 16 }, (_, i) => `flow-${i}`), 'the queued flows, in order');
  assert.deepEqual(
    written.slice(16).map((l) => l.lost_events),
    [
      { source: 'PERF_EVENT_RING_BUFFER', num_events_lost: '3' },
      { source: 'UNKNOWN_LOST_EVENT_SOURCE', num_events_lost: '984' },
    ],
    "then the observer's loss report that found the queue full, and the count of what was dropped here",
  );
  const stats = exporter.stats();
  assert.equal(stats.flowsWritten + stats.dropped, 1000, 'every flow is written or counted');
  assert.equal(stats.dropped, 984);
  assert.equal(stats.lostEventsWritten, 2);
});

test('lines are the GetFlowsResponse JSON of `observe -o json`; the observer\'s loss markers pass every filter', async (t) => {
  const dir = tempDir(t);
  const ring = new FlowRing(16);
  const exporter = new FlowExporter({ name: 'x', filePath: join(dir, 'x.log'), nodeName: 'n1', allowlist: [{ verdict: ['DROPPED'] }], fieldMask: ['time', 'source.pod_name', 'verdict', 'is_reply'], maxSizeBytes: 1 << 20, maxBackups: 1, log });
  for (let i = 0; i < 4; i++) exporter.offer(ring.push(BigInt(i), { flow: flow(i) }));
  exporter.offer(ring.push(5_000_000_000n, { lost: { source: 'OBSERVER_EVENTS_QUEUE', numEventsLost: '7' } }));
  await exporter.close();
  assert.deepEqual(lines(join(dir, 'x.log')), [
    { flow: { time: '2023-11-14T22:13:20.000000001Z', verdict: 'DROPPED', source: { pod_name: 'pod-1' }, is_reply: false }, node_name: 'n1', time: '2023-11-14T22:13:20.000000001Z' },
    { flow: { time: '2023-11-14T22:13:20.000000003Z', verdict: 'DROPPED', source: { pod_name: 'pod-3' }, is_reply: false }, node_name: 'n1', time: '2023-11-14T22:13:20.000000003Z' },
    { lost_events: { source: 'OBSERVER_EVENTS_QUEUE', num_events_lost: '7' }, node_name: 'n1', time: '1970-01-01T00:00:05Z' },
  ]);
  assert.equal(exporter.stats().filtered, 2);
  assert.equal(ring.at(1)?.flow?.source?.labels?.length, 1, 'the mask copies; the buffer\'s flow is untouched');
});

test('rotation: between lines, at the size, oldest backups pruned to maxBackups, names in time order; reopening appends', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'events.log');
  // Lines of one length, so that ten fill a file.
  const line = (i: number) => `${JSON.stringify({ n: String(i).padStart(3, '0'), pad: 'x'.repeat(80) })}\n`;
  const size = Buffer.byteLength(line(0)) * 10 + 5;
  const file = new RotatingFile(path, { maxSizeBytes: size, maxBackups: 3 });
  for (let i = 0; i < 100; i += 7) await file.write(Array.from({ length: Math.min(7, 100 - i) }, (_, j) => line(i + j)));
  await file.close();
  const backups = await file.backups();
  assert.equal(backups.length, 3);
  assert.ok(file.rotations >= 9, `rotated ${file.rotations} times`);
  for (const b of backups) assert.match(b, /events-\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}\.\d{3}\.log$/);
  const kept = [...backups, path].flatMap((p) => {
    assert.ok(statSync(p).size <= size, `${p} within the size`);
    return readFileSync(p, 'utf8').split('\n').filter(Boolean).map((l) => Number((JSON.parse(l) as { n: string }).n));
  });
  assert.deepEqual(kept, Array.from({ length: kept.length }, (_, i) => 100 - kept.length + i), 'the newest lines, whole and in order, across the kept files');
  assert.equal(kept.length, 40, 'three full backups and the current file');

  const again = new RotatingFile(path, { maxSizeBytes: size, maxBackups: 3 });
  await again.open();
  assert.equal(again.size, statSync(path).size, 'an existing file is appended to, its size counted');
  await again.close();

  const all = new RotatingFile(join(dir, 'all.log'), { maxSizeBytes: 10, maxBackups: 0 });
  for (let i = 0; i < 5; i++) await all.write([line(i)]);
  await all.close();
  assert.equal(readdirSync(dir).filter((n) => n.startsWith('all-')).length, 4, 'maxBackups 0 keeps every backup; a line longer than the size gets a file to itself');
});

test('field masks and filters as JSON are checked against flow.proto, naming what is wrong', () => {
  const refused = (fn: () => unknown, field: RegExp, reason: RegExp) =>
    assert.throws(fn, (error: unknown) => InvalidRequestError.is(error) && field.test((error as InvalidRequestError).field) && reason.test((error as Error).message));
  assert.deepEqual(FieldMask.compile(['l4.TCP.flags', 'IP.ipVersion'], 'm').apply({ ...flow(1), l4: { TCP: { sourcePort: 1, flags: { SYN: true } } }, IP: { source: '10.0.0.1', ipVersion: 'IPv4' } }), {
    l4: { TCP: { flags: { SYN: true } } },
    IP: { ipVersion: 'IPv4' },
  });
  refused(() => FieldMask.compile(['time', 'sauce.identity'], 'hubbleExportFieldmask'), /^hubbleExportFieldmask\[1\]$/, /Flow has no field "sauce"/);
  refused(() => FieldMask.compile(['egress_allowed_by.name'], 'm'), /^m\[0\]$/, /cannot select inside egress_allowed_by \(repeated\)/);
  refused(() => FieldMask.compile(['time.seconds'], 'm'), /^m\[0\]$/, /cannot select inside time \(google\.protobuf\.Timestamp\)/);

  assert.deepEqual(parseFlowFilters('{"verdict":["DROPPED"]} {"source_pod":["kube-system/"], "event_type":[{"type":1,"match_sub_type":true}]}', 'a'), [
    { verdict: ['DROPPED'] },
    { sourcePod: ['kube-system/'], eventType: [{ type: 1, matchSubType: true }] },
  ]);
  assert.deepEqual(parseFlowFilters('[{"destinationPort":["80"]}]', 'a'), [{ destinationPort: ['80'] }]);
  assert.deepEqual(parseFlowFilters('', 'a'), []);
  refused(() => parseFlowFilters('{"verdict":["DROPPED"}', 'hubbleExportAllowlist'), /^hubbleExportAllowlist$/, /not JSON/);
  refused(() => parseFlowFilters('verdict=DROPPED', 'hubbleExportDenylist'), /^hubbleExportDenylist$/, /expected a FlowFilter object/);
  refused(() => parseFlowFilters('{"verdict":"DROPPED"}', 'a'), /^a\[0\]\.verdict$/, /expected a list/);
  refused(() => parseFlowFilters('{"source_identity":["x"]}', 'a'), /^a\[0\]\.source_identity\[0\]$/, /expected uint32/);
});

test('a flow-logs file is refused whole, naming the field', (t) => {
  const dir = tempDir(t);
  const ok = parseFlowLogsConfig(`flowLogs:\n  - name: a\n    filePath: ${dir}/a.log\n    end: "2030-01-01T00:00:00Z"\n    includeFilters: [{verdict: [DROPPED]}]\n`);
  assert.deepEqual(ok, [{ name: 'a', filePath: `${dir}/a.log`, fieldMask: [], includeFilters: [{ verdict: ['DROPPED'] }], excludeFilters: [], endMs: Date.parse('2030-01-01T00:00:00Z'), fileMaxSizeMb: undefined, fileMaxBackups: undefined }]);
  assert.deepEqual(parseFlowLogsConfig(''), [], 'an empty file: no flow logs');
  const refused = (text: string, field: string, reason: RegExp) =>
    assert.throws(() => parseFlowLogsConfig(text, [`${dir}/static.log`]), (error: unknown) => InvalidRequestError.is(error) && (error as InvalidRequestError).field === field && reason.test((error as Error).message), field);
  refused('flowLogs: [', '(file)', /not valid YAML/);
  refused(`flowLogs:\n  - name: a\n    filePath: ${dir}/a.log\n    includeFilter: []\n`, 'flowLogs[0]', /includeFilter/);
  refused(`flowLogs:\n  - name: a\n    filePath: a.log\n`, 'flowLogs[0].filePath', /absolute/);
  refused(`flowLogs:\n  - {name: a, filePath: ${dir}/a.log}\n  - {name: a, filePath: ${dir}/b.log}\n`, 'flowLogs[1].name', /used twice/);
  refused(`flowLogs:\n  - {name: a, filePath: ${dir}/a.log}\n  - {name: b, filePath: ${dir}/a.log}\n`, 'flowLogs[1].filePath', /another exporter/);
  refused(`flowLogs:\n  - {name: a, filePath: ${dir}/static.log}\n`, 'flowLogs[0].filePath', /another exporter/);
  refused(`flowLogs:\n  - {name: a, filePath: ${dir}/a.log, end: soon}\n`, 'flowLogs[0].end', /RFC 3339/);
  refused(`flowLogs:\n  - {name: a, filePath: ${dir}/a.log, excludeFilters: [{source_ip: [10.0.0.300]}]}\n`, 'flowLogs[0].excludeFilters[0].source_ip[0]', /not an IP address/);
  refused(`flowLogs:\n  - {name: a, filePath: ${dir}/a.log, fieldMask: [verdikt]}\n`, 'flowLogs[0].fieldMask[0]', /no field "verdikt"/);
});

test("a flow log past its `end` exports nothing more and says it is inactive", async (t) => {
  const dir = tempDir(t);
  const ring = new FlowRing(16);
  const ended = new FlowExporter({ name: 'old', filePath: join(dir, 'old.log'), nodeName: 'n1', maxSizeBytes: 1 << 20, maxBackups: 1, endMs: Date.now() - 1, log });
  const running = new FlowExporter({ name: 'new', filePath: join(dir, 'new.log'), nodeName: 'n1', maxSizeBytes: 1 << 20, maxBackups: 1, endMs: Date.now() + 60_000, log });
  await Promise.all([ended.open(), running.open()]);
  for (const exporter of [ended, running]) exporter.offer(ring.push(1n, { flow: flow(1) }));
  await Promise.all([ended.close(), running.close()]);
  assert.equal(readFileSync(join(dir, 'old.log'), 'utf8'), '');
  assert.equal(lines(join(dir, 'new.log')).length, 1);
  assert.equal(ended.stats().active, false);
  assert.equal(running.stats().flowsWritten, 1);
});
