import { test } from 'node:test';
import assert from 'node:assert/strict';
import { compileFilters } from './filter.ts';
import { compileFieldFilters } from './grpc.ts';
import { parseEventFilters } from './export.ts';
import { RuntimeError } from './errors.ts';
import type { TetragonEvent, TetragonProcess } from './types.ts';

function proc(pid: number, binary: string, extra: Partial<TetragonProcess> = {}): TetragonProcess {
  return { exec_id: `id${pid}`, pid, uid: 0, binary, flags: 'execve', start_time: '2026-01-01T00:00:00Z', auid: 4294967295, tid: pid, ...extra };
}
const exec = (process: TetragonProcess, parent?: TetragonProcess): TetragonEvent => ({ process_exec: { process, parent }, node_name: 'n', time: '2026-01-01T00:00:00Z' });
const exit = (process: TetragonProcess): TetragonEvent => ({ process_exit: { process, status: 1 }, node_name: 'n', time: '2026-01-01T00:00:00Z' });

const curlInPod = exec(proc(10, '/usr/bin/curl', { arguments: 'https://ebpf.io', pod: { namespace: 'default', name: 'xwing', pod_labels: { app: 'xwing' } } }));
const shOnHost = exec(proc(11, '/bin/sh', { arguments: '-c true' }));

test('fields of one filter are ANDed, filters ORed, and deny wins', () => {
  assert.equal(compileFilters([{ binary_regex: ['curl$'], namespace: ['default'] }])(curlInPod), true);
  assert.equal(compileFilters([{ binary_regex: ['curl$'], namespace: ['kube-system'] }])(curlInPod), false);
  assert.equal(compileFilters([{ namespace: ['kube-system'] }, { pod_regex: ['^xw'] }])(curlInPod), true);
  assert.equal(compileFilters([{ binary_regex: ['.'] }], [{ labels: ['app=xwing'] }])(curlInPod), false);
  assert.equal(compileFilters([], [{ labels: ['app=xwing'] }])(shOnHost), true);
  assert.equal(compileFilters([{}])(shOnHost), true, "tetra's empty allow filter passes everything");
});

test('namespace "" selects host processes; event_set, pid and arguments_regex select as Tetragon does', () => {
  assert.equal(compileFilters([{ namespace: [''] }])(shOnHost), true);
  assert.equal(compileFilters([{ namespace: [''] }])(curlInPod), false);
  assert.equal(compileFilters([{ event_set: ['PROCESS_EXIT'] }])(shOnHost), false);
  assert.equal(compileFilters([{ event_set: ['PROCESS_EXIT'] }])(exit(proc(11, '/bin/sh'))), true);
  assert.equal(compileFilters([{ event_set: [5] }])(exit(proc(11, '/bin/sh'))), true, 'numbers as the wire sends them');
  assert.equal(compileFilters([{ pid: [11] }])(shOnHost), true);
  assert.equal(compileFilters([{ arguments_regex: ['ebpf\\.io'] }])(curlInPod), true);
});

test('pid_set follows children of the set', () => {
  const pass = compileFilters([{ pid_set: [100] }]);
  assert.equal(pass(exec(proc(101, '/bin/sh'), proc(100, '/bin/bash'))), true);
  assert.equal(pass(exec(proc(102, '/bin/true'), proc(101, '/bin/sh'))), true, 'a grandchild, through its remembered parent');
  assert.equal(pass(exec(proc(200, '/bin/true'), proc(1, '/sbin/init'))), false);
});

test('a bad regex, label selector or event type is refused naming the field', () => {
  assert.throws(() => compileFilters([{ binary_regex: ['('] }]), (e: unknown) => RuntimeError.is(e, 'ERR_RUNTIME_FILTER') && /allow_list\[0\]\.binary_regex\[0\]/.test((e as Error).message));
  assert.throws(() => compileFilters([], [{ labels: ['a in (b)'] }]), /deny_list\[0\]\.labels\[0\]/);
  assert.throws(() => compileFilters([{ event_set: ['PROCESS_NOPE' as never] }]), /unknown event type PROCESS_NOPE/);
  assert.throws(() => compileFilters([{ arguments_regex: ['a'.repeat(1025)] }]), /arguments_regex\[0\]: 1025 characters, at most 1024/);
  assert.throws(() => compileFilters([{ binary_regex: Array.from({ length: 65 }, () => 'x') }]), /binary_regex: 65 patterns, at most 64/);
});

test('field filters keep or drop paths inside the event', () => {
  const include = compileFieldFilters([{ fields: { paths: ['process.binary', 'process.pid'] }, action: 'INCLUDE' }]);
  assert.deepEqual(include(curlInPod), { process_exec: { process: { binary: '/usr/bin/curl', pid: 10 } }, node_name: 'n', time: '2026-01-01T00:00:00Z' });
  const drop = compileFieldFilters([{ event_set: ['PROCESS_EXIT'], fields: { paths: ['process.pod'] }, action: 'EXCLUDE' }]);
  assert.ok('process_exec' in drop(curlInPod) && (drop(curlInPod) as { process_exec: { process: TetragonProcess } }).process_exec.process.pod, 'only exit events are shaped');
});

test("export allow/deny lists are Tetragon's JSON lines, refused with the setting and field named", () => {
  assert.deepEqual(parseEventFilters('{"event_set":["PROCESS_EXEC"]}\n{"binary_regex":["curl"]}', 'runtimeExportAllowlist'), [{ event_set: ['PROCESS_EXEC'] }, { binary_regex: ['curl'] }]);
  assert.deepEqual(parseEventFilters('', 'x'), []);
  assert.throws(() => parseEventFilters('{"binary":["curl"]}', 'runtimeExportDenylist'), /runtimeExportDenylist\[0\]\.binary: unknown filter field/);
  assert.throws(() => parseEventFilters('{"binary_regex":"curl"}', 'runtimeExportDenylist'), /want a list/);
  assert.throws(() => parseEventFilters('{"binary_regex":["("]}', 'runtimeExportAllowlist'), /runtimeExportAllowlist: filter field allow_list\[0\]\.binary_regex\[0\]/);
});
