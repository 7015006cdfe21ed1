import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EventExporter, parseEventFilters } from './export.ts';
import type { TetragonEvent } from './types.ts';

function event(pid: number, binary: string): TetragonEvent {
  return {
    process_exec: { process: { exec_id: `id${pid}`, pid, uid: 0, binary, arguments: 'x'.repeat(200), flags: 'execve', start_time: '2026-12-03T00:00:00Z', auid: 4294967295, tid: pid } },
    node_name: 'n',
    time: '2026-12-03T00:00:00.000000001Z',
  };
}

test('the export writes one GetEventsResponse a line, after the allow and deny lists, rotating by size', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'ciliate-runtime-export-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const path = join(dir, 'tetragon.log');
  const exporter = new EventExporter({
    path,
    maxSizeBytes: 4096,
    maxBackups: 2,
    allowlist: parseEventFilters('{"binary_regex":["curl$"]}\n{"binary_regex":["wget$"]}', 'allow'),
    denylist: parseEventFilters('{"pid":[13]}', 'deny'),
  });
  await exporter.open();
  for (let pid = 0; pid < 60; pid++) exporter.write(event(pid, pid % 3 === 0 ? '/usr/bin/curl' : pid % 3 === 1 ? '/usr/bin/wget' : '/bin/sh'));
  await exporter.close();
  const files = readdirSync(dir).sort();
  assert.ok(files.includes('tetragon.log'));
  assert.equal(files.length, 3, `the file and at most 2 rotated ones: ${files.join(', ')}`);
  assert.ok(exporter.stats().rotations >= 2);
  const lines = readFileSync(path, 'utf8').split('\n').filter(Boolean);
  const events = lines.map((line) => JSON.parse(line) as TetragonEvent & { process_exec: { process: { binary: string; pid: number } } });
  assert.ok(events.length > 0);
  assert.ok(events.every((e) => /(curl|wget)$/.test(e.process_exec.process.binary) && e.process_exec.process.pid !== 13));
  // 39 pass (the 40 curl and wget events, less pid 13); the last ones are in the newest file, in order.
  assert.equal(exporter.stats().written, 39);
  assert.equal(events.at(-1)!.process_exec.process.pid, 58);
});
