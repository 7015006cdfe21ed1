import { test } from 'node:test';
import assert from 'node:assert/strict';
import { compactLine } from './printer.ts';
import type { TetragonProcess } from './types.ts';

const echo: TetragonProcess = { exec_id: 'x', pid: 1, uid: 0, binary: '/bin/echo', arguments: 'same-check', flags: 'execve', start_time: '2026-12-03T16:23:27Z', auid: 0, tid: 1, cap: { effective: ['CAP_CHOWN', 'CAP_SYS_ADMIN'] } };

// Lines a stock tetra v0.11.0 (`getevents -o compact`) printed for root's `/bin/echo same-check`,
// byte for byte (root holds CAP_SYS_ADMIN, which tetra flags).
const TETRA_EXEC = '🚀 process vm /bin/echo same-check                                                                      🛑 CAP_SYS_ADMIN';
const TETRA_EXIT = '💥 exit    vm /bin/echo same-check 0                                                                    🛑 CAP_SYS_ADMIN';

test("compact lines are tetra's, caps trailer column included", () => {
  assert.equal(compactLine({ process_exec: { process: echo }, node_name: 'vm', time: '' }), TETRA_EXEC);
  assert.equal(compactLine({ process_exit: { process: echo }, node_name: 'vm', time: '' }), TETRA_EXIT);
});

test('a pod names the source as namespace/pod; a signal replaces the status; no CAP_SYS_ADMIN, no trailer', () => {
  const curl: TetragonProcess = { ...echo, binary: '/usr/bin/curl', arguments: 'https://ebpf.io/applications/#tetragon', cap: undefined, pod: { namespace: 'default', name: 'xwing' } };
  assert.equal(compactLine({ process_exec: { process: curl }, node_name: 'vm', time: '' }), '🚀 process default/xwing /usr/bin/curl https://ebpf.io/applications/#tetragon');
  assert.equal(compactLine({ process_exit: { process: curl, signal: 'SIGKILL' }, node_name: 'vm', time: '' }), '💥 exit    default/xwing /usr/bin/curl https://ebpf.io/applications/#tetragon SIGKILL');
  assert.equal(compactLine({ process_exit: { process: curl, status: 7 }, node_name: 'vm', time: '' }), '💥 exit    default/xwing /usr/bin/curl https://ebpf.io/applications/#tetragon 7');
});

test("control characters from a process's arguments cannot drive the reader's terminal", () => {
  const hostile: TetragonProcess = { ...echo, cap: undefined, binary: '/tmp/x\x1b]0;pwned\x07', arguments: 'a\x1b[2Jb\nc\u009b' };
  const line = compactLine({ process_exec: { process: hostile }, node_name: 'vm', time: '' });
  assert.equal(line, '🚀 process vm /tmp/x\\x1b]0;pwned\\x07 a\\x1b[2Jb\\x0ac\\x9b');
  assert.doesNotMatch(line, /[\x00-\x1f\x7f-\x9f]/);
});
